"""The clip loader as it was before the fast path (commit bfb3b80), kept as a speed reference.

``benchmarks/run.py --only data`` times it next to today's loader in the same run. What it
reproduces, step by step, of ``ClipFolderDataset.__getitem__`` at bfb3b80: list the clip's
folder on every call, sample, decode the sampled frames at full size to float32
(``load_frames``, unchanged since), then the float transforms; the crop, resize and flip code
is unchanged since, the colour jitter is the old one (three full-clip passes per adjustment,
copied below). Not part of the library.
"""

from __future__ import annotations

import torch

from micacl_layers.data import (
    ClipColorJitter,
    ClipCompose,
    ClipRandomHorizontalFlip,
    ClipRandomResizedCrop,
    list_frames,
    load_frames,
    segment_indices,
    test_transform,
)
from micacl_layers.data._frames import ClipFolderDataset

_LUMA = (0.299, 0.587, 0.114)


class LegacyColorJitter(ClipColorJitter):
    """``ClipColorJitter.__call__`` as of bfb3b80 (same parameters, the old arithmetic)."""

    def __call__(
        self, clip: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        order, b, c, s = self.get_params(generator)
        luma = clip.new_tensor(_LUMA).view(1, 3, 1, 1)
        out = clip
        for op in order:
            if op == 0 and self.brightness > 0:
                out = (out * b).clamp(0.0, 1.0)
            elif op == 1 and self.contrast > 0:
                mean = (out * luma).sum(dim=1).mean()
                out = (c * out + (1 - c) * mean).clamp(0.0, 1.0)
            elif op == 2 and self.saturation > 0:
                grey = (out * luma).sum(dim=1, keepdim=True)
                out = (s * out + (1 - s) * grey).clamp(0.0, 1.0)
        return out


def legacy_train_transform(image_size: int = 112) -> ClipCompose:
    """``train_transform`` with the old colour jitter."""
    return ClipCompose(
        [
            ClipRandomResizedCrop(image_size),
            ClipRandomHorizontalFlip(0.5),
            LegacyColorJitter(0.4, 0.4, 0.4),
        ]
    )


def legacy_test_transform(image_size: int = 112) -> ClipCompose:
    """``test_transform`` (unchanged)."""
    return test_transform(image_size)


def legacy_getitem(
    ds: ClipFolderDataset, transform: ClipCompose, index: int
) -> tuple[torch.Tensor, int]:
    """One item of ``ds`` the old way, with ``transform`` in place of ``ds.transform``."""
    frame_dir, label = ds.samples[index]
    frames = list_frames(frame_dir)
    idx = segment_indices(len(frames), ds.num_frames, train=ds.train, generator=ds.generator)
    clip = load_frames([frames[i] for i in idx])
    clip = transform(clip, generator=ds.generator)
    return clip.permute(1, 0, 2, 3).contiguous(), label
