"""Data loading for DFER: DFEW/FERV39k clip data sets, frame sampling, clip augmentation.

The clip transforms run per clip in the loader; ``ClipBatchColorJitter`` is the colour jitter
for a collated ``uint8`` batch on the device.

Needs Pillow for reading and writing JPEG frames (``pip install micacl-layers[data]``); sampling
and transforms are plain torch. Pillow is imported only when frames are read or written, and a
missing Pillow raises an ``ImportError`` that says how to install it. Nothing here imports
torchvision.
"""

from typing import Any

from ._frames import CorruptFrameError, SkippedClip, SkippedClipsWarning, list_frames, load_frames
from .batch_transforms import ClipBatchColorJitter, clip_batch_color_jitter
from .dfew import DFEW, DFEW_CLASSES
from .ferv39k import FERV39K_CLASSES, FERV39k
from .sampling import segment_indices
from .transforms import (
    ClipColorJitter,
    ClipCompose,
    ClipNormalize,
    ClipRandomHorizontalFlip,
    ClipRandomResizedCrop,
    ClipResize,
    ClipTransform,
    test_transform,
    train_transform,
)

__all__ = [
    "DFEW",
    "DFEW_CLASSES",
    "FERV39K_CLASSES",
    "ClipBatchColorJitter",
    "ClipColorJitter",
    "ClipCompose",
    "ClipNormalize",
    "ClipRandomHorizontalFlip",
    "ClipRandomResizedCrop",
    "ClipResize",
    "ClipTransform",
    "CorruptFrameError",
    "FERV39k",
    "SkippedClip",
    "SkippedClipsWarning",
    "clip_batch_color_jitter",
    "list_frames",
    "load_frames",
    "make_synthetic_dfew",
    "make_synthetic_ferv39k",
    "render_clip",
    "segment_indices",
    "test_transform",
    "train_transform",
]

# Imported on first use so `python -m micacl_layers.data.synthetic` does not find its own
# module already imported by this package (runpy warns about that).
_SYNTHETIC = ("make_synthetic_dfew", "make_synthetic_ferv39k", "render_clip")


def __getattr__(name: str) -> Any:
    if name in _SYNTHETIC:
        from . import synthetic

        return getattr(synthetic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
