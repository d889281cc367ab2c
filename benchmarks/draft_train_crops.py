#!/usr/bin/env python
"""What ``draft="frame"`` buys the *train* loader, and what it costs in pixels.

With the default ``draft="crop"`` a random crop of ``train_transform(112)`` on a 224x224 frame
is decoded at full size (every such crop but the whole frame is smaller than twice the
output). ``draft="frame"`` decodes the frame at half size instead, moves the crop box onto the
half-size frame's pixels (each edge by at most one full-frame pixel) and enlarges the crop
from there. This script measures, in one process of one thread (a ``DataLoader`` worker's
share), on two kinds of generated frames:

- speed, ms per clip, interleaved: the uint8 train loader
  (``output_dtype=torch.uint8``, ``train_transform(112, color_jitter=False)``) with
  ``draft="crop"`` and with ``draft="frame"``, and the Pillow decode floors of
  ``benchmarks/run.py --only data`` (``load`` of the same 16 frames, in full and in draft mode);
- pixels, 3 seeds a clip: the ``draft="frame"`` clip against the full decode of the **same**
  box (what the smaller decode loses), and against the full decode of the box as drawn
  (that loss plus the box's move).

The frames: the synthetic faces rendered at 224 (with their per-pixel noise at 224), and the
same faces rendered at 112 and upscaled to 224 (bicubic), as DFEW's face crops mostly are
(faces in film frames are smaller than 224). Not part of the library; nothing here is tuned.

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


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.double() - b.double()) ** 2).item() / 255**2
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def _decode_with(paths: list[str], plan: _decode.GeometryPlan, draft: str) -> torch.Tensor:
    frames, _ = _decode.decode_planned(paths, lambda h, w: plan, Image, draft=draft)
    return frames


def measure(root: Path) -> dict[str, float]:
    geometric = train_transform(112, color_jitter=False)
    loaders = {
        rule: DFEW(root, 1, "train", transform=geometric, output_dtype=torch.uint8, draft=rule)
        for rule in ("crop", "frame")
    }
    ds = loaders["crop"]
    clips = []
    for frame_dir, _ in ds.samples:
        names = ds._frames(frame_dir)
        idx = sorted(set(segment_indices(len(names), 16, train=False)))
        clips.append([os.path.join(frame_dir, names[i]) for i in idx])

    same_box, drawn_box = [], []
    for index, paths in enumerate(clips):
        for seed in range(3):
            g = torch.Generator().manual_seed(1000 * seed + index)
            plan = _decode.plan_geometry(geometric, 224, 224, g)
            drawn = _decode.GeometryPlan(plan.box, plan.size, False)
            small = _decode_with(paths, plan, "frame")  # moves plan.box onto the small grid
            moved = _decode.GeometryPlan(plan.box, plan.size, False)
            same_box.append(_psnr(small, _decode_with(paths, moved, "never")))
            drawn_box.append(_psnr(small, _decode_with(paths, drawn, "never")))

    def epoch(loader: DFEW) -> Callable[[], None]:
        def fn() -> None:
            for i in range(len(loader)):
                loader[i]

        return fn

    def floor(draft: bool) -> Callable[[], None]:
        def fn() -> None:
            for paths in clips:
                for path in paths:
                    with Image.open(path) as img:
                        if draft:
                            img.draft("RGB", (112, 112))
                        img.load()

        return fn

    cases: dict[str, Callable[[], None]] = {
        "crop": epoch(loaders["crop"]),
        "frame": epoch(loaders["frame"]),
        "full floor": floor(False),
        "draft floor": floor(True),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(9):  # interleaved rounds: the ratios survive a busy machine
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) / len(ds) * 1e3)
    out = {name: statistics.median(v) for name, v in times.items()}
    out["same_min"], out["same_median"] = min(same_box), statistics.median(same_box)
    out["same_ok"] = sum(p >= 35 for p in same_box) / len(same_box)
    out["drawn_min"], out["drawn_median"] = min(drawn_box), statistics.median(drawn_box)
    return out


def main() -> None:
    torch.set_num_threads(1)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread")
    print(
        "| frames | uint8, draft='crop' ms | uint8, draft='frame' ms | full floor ms "
        "| draft floor ms | 'crop' / draft floor | 'frame' / draft floor "
        "| PSNR, same box: min / median (>= 35 dB) | PSNR, box as drawn: min / median |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|---|")
    for upscaled in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            r = measure(_tree(Path(tmp), upscaled=upscaled))
        what = "rendered at 112, upscaled to 224" if upscaled else "rendered at 224"
        print(
            f"| {what} | {r['crop']:.2f} | {r['frame']:.2f} | {r['full floor']:.2f} | "
            f"{r['draft floor']:.2f} | {r['crop'] / r['draft floor']:.2f}x | "
            f"{r['frame'] / r['draft floor']:.2f}x | "
            f"{r['same_min']:.1f} / {r['same_median']:.1f} dB ({100 * r['same_ok']:.0f} %) | "
            f"{r['drawn_min']:.1f} / {r['drawn_median']:.1f} dB |"
        )


if __name__ == "__main__":
    main()
