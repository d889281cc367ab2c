#!/usr/bin/env python
"""Would Pillow's draft mode make the *train* loader fast enough? An experiment for issue 16.

The loader decodes a random crop of ``train_transform(112)`` at full size: every such crop of a
224x224 frame is smaller than 224, so decoding at 1/2 would enlarge it from fewer pixels.
This script measures what drafting every train clip anyway would give, side by side in one
process of one thread (a ``DataLoader`` worker's share):

- speed, ms per clip: today's loader, the same loader drafting every clip at 1/2 (the private
  ``_draft_request`` patched for the run), and the draft-decode floor of
  ``benchmarks/run.py --only data`` (Pillow ``draft`` + ``load`` of the same 16 frames);
- pixels: PSNR of the drafted clip against the full decode (``fast_decode=False``), same
  clips, same generator seeds, 3 seeds per clip.

On two kinds of generated frames: the synthetic faces rendered at 224 (with their per-pixel
noise at 224), and the same faces rendered at 112 and upscaled to 224 (bicubic), as DFEW's
face crops mostly are (faces in film frames are smaller than 224). Not part of the library;
nothing here is tuned.

Usage::

    python benchmarks/draft_train_crops.py
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from micacl_layers.data import DFEW, _decode, segment_indices, train_transform  # noqa: E402
from micacl_layers.data.synthetic import make_synthetic_dfew  # noqa: E402


def _tree(root: Path, *, upscaled: bool) -> Path:
    info = make_synthetic_dfew(
        root,
        total_clips=14,
        min_clips_per_class=2,
        frames=(30, 60),
        image_size=112 if upscaled else 224,
        seed=0,
    )
    if upscaled:  # a face from a smaller source, upscaled to the frame size
        for path in sorted(Path(info.root).rglob("*.jpg")):
            with Image.open(path) as img:
                big = img.convert("RGB").resize((224, 224), Image.Resampling.BICUBIC)
            big.save(path, quality=90)
    return Path(info.root)


def _always_draft(plan: _decode.GeometryPlan, height: int, width: int) -> tuple[int, int] | None:
    # Decode at half the frame whenever the output is at most half the frame, whatever the crop.
    if plan.size is None or 2 * plan.size[0] > height or 2 * plan.size[1] > width:
        return None
    return -(-width // 2), -(-height // 2)


class _Drafting:
    """Patch the loader's draft decision for the duration of a ``with`` block."""

    def __enter__(self) -> None:
        self.real = _decode._draft_request
        _decode._draft_request = _always_draft  # type: ignore[assignment]

    def __exit__(self, *exc: object) -> None:
        _decode._draft_request = self.real  # type: ignore[assignment]


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def measure(root: Path) -> dict[str, float]:
    ds = DFEW(root, 1, "train", transform=train_transform(112))
    psnr = []
    for index in range(len(ds)):
        for seed in range(3):
            with _Drafting():
                g = torch.Generator().manual_seed(1000 * seed + index)
                drafted, _ = DFEW(root, 1, "train", transform=train_transform(112), generator=g)[
                    index
                ]
            g = torch.Generator().manual_seed(1000 * seed + index)
            full, _ = DFEW(
                root, 1, "train", transform=train_transform(112), generator=g, fast_decode=False
            )[index]
            psnr.append(_psnr(drafted, full))
    clips = []
    for frame_dir, _ in ds.samples:
        names = ds._frames(frame_dir)
        idx = sorted(set(segment_indices(len(names), 16, train=False)))
        clips.append([os.path.join(frame_dir, names[i]) for i in idx])

    def loader() -> None:
        for i in range(len(ds)):
            ds[i]

    def drafted_loader() -> None:
        with _Drafting():
            loader()

    def floor() -> None:
        for paths in clips:
            for path in paths:
                with Image.open(path) as img:
                    img.draft("RGB", (112, 112))
                    img.load()

    cases: dict[str, Callable[[], None]] = {
        "loader": loader,
        "loader, always draft": drafted_loader,
        "draft floor": floor,
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(9):  # interleaved rounds: the ratios survive a busy machine
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) / len(ds) * 1e3)
    out = {name: statistics.median(v) for name, v in times.items()}
    out["psnr_min"], out["psnr_median"] = min(psnr), statistics.median(psnr)
    out["psnr_ok"] = sum(p >= 35 for p in psnr) / len(psnr)
    return out


def main() -> None:
    torch.set_num_threads(1)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread")
    print(
        "| frames | loader ms | always-draft ms | draft floor ms | loader / floor "
        "| always-draft / floor | PSNR draft vs full: min / median | clips >= 35 dB |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---:|")
    for upscaled in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            r = measure(_tree(Path(tmp), upscaled=upscaled))
        what = "rendered at 112, upscaled to 224" if upscaled else "rendered at 224"
        print(
            f"| {what} | {r['loader']:.2f} | {r['loader, always draft']:.2f} | "
            f"{r['draft floor']:.2f} | {r['loader'] / r['draft floor']:.2f}x | "
            f"{r['loader, always draft'] / r['draft floor']:.2f}x | "
            f"{r['psnr_min']:.1f} / {r['psnr_median']:.1f} dB | {100 * r['psnr_ok']:.0f} % |"
        )


if __name__ == "__main__":
    main()
