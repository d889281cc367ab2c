"""The loaders' fast path: decode a clip straight at the size its transform needs.

The plain path (:func:`~micacl_layers.data._frames.load_frames`, then the transform) decodes
every frame at full size, converts it to float32 and crops, resizes and flips in float. Most of
that work is thrown away: a 224x224 frame becomes a 112x112 crop. This module does the same
job in a cheaper order, for transforms it can look into (``ClipCompose`` chains whose leading
steps are this package's ``ClipRandomResizedCrop``, ``ClipResize`` and
``ClipRandomHorizontalFlip``):

1. :func:`plan_geometry` draws the geometric steps' random parameters **before** decoding, with
   the same generator calls in the same order as the transforms themselves would make, and
   folds them into one crop box, one output size and one flip;
2. :func:`decode_planned` decodes each frame, with Pillow's JPEG *draft* mode (DCT scaling by
   1/2, 1/4 or 1/8, no full-size decode) where the data set's ``draft`` rule allows it
   (:func:`_draft_request`: by default only when the output is at most half the crop, so that
   the smaller frame still has at least the output's resolution); it keeps only the crop, in
   uint8, and resizes the clip in one uint8 call (antialiased bilinear, the filter of
   ``ClipResize``);
3. :func:`to_float_clip` flips in uint8, converts to float32 in ``[0, 1]`` once, and the rest of
   the chain (colour jitter, normalisation, anything else) runs on the small float clip; or,
   for a data set with ``output_dtype=torch.uint8`` (a chain of geometric steps only),
   :func:`to_uint8_clip` flips and hands the clip out in uint8, for the colour steps to run on
   the device (:mod:`~micacl_layers.data.batch_transforms`).

Same frames, same labels, same random parameters as the plain path; the pixels differ by
uint8 rounding without draft mode, and by the resolution draft mode gives up with it
(``docs/data.md`` has the measured figures; under ``draft="frame"`` the crop box also moves by
up to a pixel onto the smaller frame's grid). ``fast_decode=False`` on the data sets selects
the plain path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .transforms import (
    ClipColorJitter,
    ClipCompose,
    ClipNormalize,
    ClipRandomHorizontalFlip,
    ClipRandomResizedCrop,
    ClipResize,
    ClipTransform,
)

__all__ = [
    "DRAFT_RULES",
    "GeometryPlan",
    "decode_planned",
    "non_geometric_step",
    "open_frame",
    "plan_geometry",
    "to_float_clip",
    "to_uint8_clip",
]


@dataclass
class GeometryPlan:
    """The geometric steps of a transform, folded into one crop, one resize and one flip.

    Attributes:
        box: ``(left, top, right, bottom)`` of the crop in full-frame pixels.
        size: Output ``(height, width)``; ``None`` keeps the crop's size (no resampling).
        flip: Whether the clip is flipped left-right (after the crop).
        rest: The transforms still to apply, to the float clip, in order.
    """

    box: tuple[int, int, int, int]
    size: tuple[int, int] | None
    flip: bool
    rest: list[Any] = field(default_factory=list)


def _is(step: object, cls: type) -> bool:
    # A subclass that overrides __call__ may do anything: only the stock behaviour is planned.
    return isinstance(step, cls) and type(step).__call__ is cls.__call__


def _flatten(transform: object) -> list[object]:
    if _is(transform, ClipCompose):
        return [s for t in transform.transforms for s in _flatten(t)]  # type: ignore[attr-defined]
    return [transform]


def plan_geometry(
    transform: ClipTransform, height: int, width: int, generator: torch.Generator | None
) -> GeometryPlan:
    """Draw the leading geometric steps of ``transform`` for a ``height`` x ``width`` clip.

    Steps are taken from the front of the (flattened) chain while they are a flip, or the
    first crop or resize; the first other step, or a second crop or resize, ends the plan and
    it and everything after it go to ``rest``. Random parameters are drawn exactly as the
    steps' own ``__call__`` would draw them, so the generator ends in the same state.

    Args:
        transform: A ``ClipTransform`` (usually a ``ClipCompose``).
        height: Frame height in pixels.
        width: Frame width in pixels.
        generator: The generator the data set would pass to ``transform``.

    Returns:
        The plan; a transform with no leading geometric step gives the whole frame, no
        resampling, no flip, and the whole chain in ``rest``.

    Example:
        >>> from micacl_layers.data.transforms import train_transform
        >>> plan = plan_geometry(train_transform(112), 224, 224, torch.Generator().manual_seed(0))
        >>> plan.size, [type(t).__name__ for t in plan.rest]
        ((112, 112), ['ClipColorJitter'])
    """
    steps = _flatten(transform)
    box = (0, 0, width, height)
    size: tuple[int, int] | None = None
    flip = False
    for i, step in enumerate(steps):
        if _is(step, ClipRandomHorizontalFlip):
            # As ClipRandomHorizontalFlip.__call__: one draw, whatever p is.
            if step._uniform(0.0, 1.0, generator) < step.p:  # type: ignore[attr-defined]
                flip = not flip
            continue
        if size is None and _is(step, ClipRandomResizedCrop):
            top, left, h, w = step.get_params(height, width, generator)  # type: ignore[attr-defined]
            if flip:  # a crop of the flipped frame is the mirrored crop of the frame, flipped
                left = width - left - w
            box = (left, top, left + w, top + h)
            size = step.size  # type: ignore[attr-defined]
            continue
        if size is None and _is(step, ClipResize):
            size = step.size  # type: ignore[attr-defined]
            continue
        return GeometryPlan(box, size, flip, list(steps[i:]))
    return GeometryPlan(box, size, flip, [])


DRAFT_RULES = ("crop", "frame", "never")


def _draft_request(
    plan: GeometryPlan, height: int, width: int, rule: str = "crop"
) -> tuple[int, int] | None:
    """The ``(width, height)`` to ask Pillow's draft mode for, or ``None`` to decode in full.

    ``rule`` (one of :data:`DRAFT_RULES`) says when a frame is decoded smaller:

    - ``"crop"``: only when the output is at most half the crop in both directions. Pillow
      then decodes at the largest of 1/2, 1/4, 1/8 of the frame whose crop is still at least
      the output size, so the resize never has less resolution to work from than the output
      needs (``ClipResize(112)`` of a 224x224 frame decodes at 112x112). A random crop
      smaller than twice the output is decoded in full.
    - ``"frame"``: whenever the output is at most half the *frame*, at the smallest scale whose
      frame is still at least the output size. A random crop is then cut from the smaller
      frame and enlarged from fewer pixels than a full decode has: faster, softer.
    - ``"never"``: always in full.
    """
    if plan.size is None or rule == "never":
        return None
    out_h, out_w = plan.size
    if rule == "frame":
        if 2 * out_h > height or 2 * out_w > width:
            return None
        return out_w, out_h
    left, top, right, bottom = plan.box
    crop_h, crop_w = bottom - top, right - left
    if 2 * out_h > crop_h or 2 * out_w > crop_w:
        return None
    # ceil: the frame size at which the crop is still >= the output
    return -(-out_w * width // crop_w), -(-out_h * height // crop_h)


def _corrupt(path: str | Path, err: BaseException) -> OSError:
    # Local import: _frames imports this module.
    from ._frames import CorruptFrameError

    return CorruptFrameError(f"cannot decode frame {str(path)!r} (corrupt or not an image): {err}")


def open_frame(path: str | Path, image_mod: ModuleType) -> Any:
    """``PIL.Image.open(path)`` (header only), with ``load_frames``'s errors.

    Raises:
        FileNotFoundError: If the file does not exist (naming it).
        CorruptFrameError: If it is not an image Pillow can open (naming it).
    """
    try:
        return image_mod.open(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"frame file {str(path)!r} does not exist") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise _corrupt(path, err) from err


def _snap(
    box: tuple[int, int, int, int], scale: float, size: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Move a full-frame box onto the pixels of the frame decoded at ``scale`` (1/2, 1/4, 1/8).

    Each edge moves to the nearest multiple of ``1 / scale`` full-frame pixels (at most half a
    small pixel: one full pixel at 1/2), so the small frame's crop needs no resampling between
    its pixels. Two corner cases move further: the box is kept at least one small pixel wide,
    and inside the frame's whole small pixels (a side that is not a multiple of the step loses
    its last, partial small pixel). ``size`` is the full frame's ``(width, height)``.
    """
    step = round(1 / scale)
    # Whole small pixels only: of a frame whose side is not a multiple of the step, the last
    # small pixel covers less than `step` full ones.
    small_w, small_h = size[0] // step, size[1] // step
    left, top = min(round(box[0] * scale), small_w - 1), min(round(box[1] * scale), small_h - 1)
    right = min(max(round(box[2] * scale), left + 1), small_w)
    bottom = min(max(round(box[3] * scale), top + 1), small_h)
    return left * step, top * step, right * step, bottom * step


def _decode_one(
    img: Any,
    path: str,
    plan: GeometryPlan,
    request: tuple[int, int] | None,
    rule: str,
    image_mod: ModuleType,
    clip_scale: float | None,
) -> tuple[np.ndarray, float]:
    """Decode an opened frame and cut out the plan's box: ``(h, w, 4)`` uint8 (RGB, padding).

    Returns the pixels and the scale the frame was decoded at. ``request`` is the clip's
    :func:`_draft_request`; ``clip_scale`` the scale of the clip's first frame (``None`` for
    the first frame itself): a frame that draft mode could not shrink as far (not a JPEG,
    whatever its name) is reduced to that scale by Pillow, so that every frame of the clip is
    cut at one scale.

    With draft mode the box is cut from the smaller frame. A box whose edges fall between that
    frame's pixels is resampled to the output size here, by Pillow, under the ``"crop"`` rule
    (exact, and rare: the crop is at least twice the output). Under ``"frame"`` the plan's box
    is first moved onto the small frame's pixels (:func:`_snap`; ``plan.box`` is updated, so
    the returned plan says which box was cut), because resampling every frame in Pillow costs
    more than the smaller decode saves.
    """
    width, height = img.size
    try:
        scale = 1.0
        if request is not None and img.format == "JPEG":
            drafted = img.draft("RGB", request)
            if drafted is not None:
                scale = drafted[1][2] / width  # draft box: (0, 0, W / s, H / s)
        rgb = img if img.mode == "RGB" else img.convert("RGB")
        if clip_scale is not None and scale != clip_scale:
            rgb = rgb.reduce(round(scale / clip_scale))
            scale = clip_scale
        if rule == "frame" and scale != 1.0 and clip_scale is None:  # once, at the first frame
            plan.box = _snap(plan.box, scale, (width, height))
        box = tuple(v * scale for v in plan.box)
        if plan.size is not None and any(v != int(v) for v in box):
            # The box falls between the small frame's pixels: Pillow resamples a fractional
            # box directly (rounding it would shift the crop by up to a pixel).
            rgb = rgb.resize((plan.size[1], plan.size[0]), image_mod.Resampling.BILINEAR, box=box)
        elif box != (0, 0, *rgb.size):
            left, top, right, bottom = (int(v) for v in box)
            if scale != 1.0:
                # A small frame is cheaper to export whole and slice (the stack copies the
                # slice) than to crop in Pillow first; a full-size one is not.
                return _rgbx(rgb)[top:bottom, left:right], scale
            rgb = rgb.crop((left, top, right, bottom))
        return _rgbx(rgb), scale
    except (OSError, SyntaxError, ValueError) as err:
        raise _corrupt(path, err) from err


def _rgbx(rgb: Any) -> np.ndarray:
    """An RGB image's pixels as ``(h, w, 4)`` uint8, the fourth channel padding.

    Pillow keeps RGB pixels in 4 bytes, so this export is a copy where the 3-byte one repacks
    every pixel, and torch's uint8 resize works on 4 channels natively: both are faster with
    the padding, which is dropped in the one copy to the clip's final layout.
    """
    width, height = rgb.size
    return np.frombuffer(rgb.tobytes("raw", "RGBX"), np.uint8).reshape(height, width, 4)


def decode_planned(
    paths: Sequence[str | os.PathLike[str]],
    make_plan: Callable[[int, int], GeometryPlan],
    image_mod: ModuleType,
    *,
    draft: str = "crop",
) -> tuple[torch.Tensor, GeometryPlan]:
    """Decode frames straight to their plan's crop and size, in uint8.

    The plan is made from the first frame's size, read from its header, before any frame is
    decoded. Repeated paths are decoded once, as in ``load_frames``, and the same errors are
    raised. The crop is resized with the antialiased bilinear filter of ``ClipResize``, on
    uint8.

    Args:
        paths: Frame files in the order wanted (non-empty).
        make_plan: ``make_plan(height, width)``, e.g. :func:`plan_geometry` for the clip's
            transform and generator.
        image_mod: ``PIL.Image``.
        draft: When to decode in JPEG draft mode, one of :data:`DRAFT_RULES` (see
            :func:`_draft_request`).

    Returns:
        ``(frames, plan)``: the uint8 clip, a view of channels-last memory with a fourth,
        padding channel (see :func:`_rgbx`), and the plan.

    Shape:
        - Output: :math:`(T, 3, H, W)` with ``T = len(paths)`` and ``(H, W)`` the plan's size
          (or its box's size without resampling).

    Raises:
        FileNotFoundError: If a frame file has disappeared (naming it).
        CorruptFrameError: If a frame cannot be decoded (naming it).
        ValueError: If frames differ in size (naming the odd file).
    """
    decoded: dict[str, np.ndarray] = {}
    arrays = []
    first: tuple[str, tuple[int, int]] | None = None
    plan: GeometryPlan | None = None
    clip_scale: float | None = None
    for raw in paths:
        path = os.fspath(raw)
        if path not in decoded:
            with open_frame(path, image_mod) as img:
                if first is None:
                    first = (path, img.size)
                    plan = make_plan(img.size[1], img.size[0])
                    request = _draft_request(plan, img.size[1], img.size[0], draft)
                elif img.size != first[1]:
                    (w, h), (w0, h0) = img.size, first[1]
                    raise ValueError(
                        f"frame {path!r} is {w}x{h} but {first[0]!r} in the same clip is "
                        f"{w0}x{h0}; all frames of a clip must have one size"
                    )
                assert plan is not None  # made from the first frame
                decoded[path], scale = _decode_one(
                    img, path, plan, request, draft, image_mod, clip_scale
                )
                if clip_scale is None:
                    clip_scale = scale
                    if scale == 1.0:  # the first frame is full size: so is every other one
                        request = None
        arrays.append(decoded[path])
    assert plan is not None, "paths must not be empty"
    frames = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    if plan.size is not None and tuple(frames.shape[-2:]) != plan.size:
        frames = F.interpolate(
            frames, size=plan.size, mode="bilinear", align_corners=False, antialias=True
        )
    return frames[:, :3], plan


def non_geometric_step(transform: object) -> object | None:
    """The first step of ``transform`` that :func:`plan_geometry` would leave to ``rest``.

    ``None`` when the whole chain folds into one plan (crop or resize, and flips), as the
    uint8 output of the data sets requires; ``transform=None`` is an empty chain.
    """
    if transform is None:
        return None
    sized = False
    for step in _flatten(transform):
        if _is(step, ClipRandomHorizontalFlip):
            continue
        if not sized and (_is(step, ClipRandomResizedCrop) or _is(step, ClipResize)):
            sized = True
            continue
        return step
    return None


def to_uint8_clip(frames: torch.Tensor, plan: GeometryPlan) -> torch.Tensor:
    """Flip a clip from :func:`decode_planned` and make it channel-first, still uint8.

    Args:
        frames: uint8 ``(T, 3, H, W)``.
        plan: The clip's plan; its ``rest`` must be empty.

    Returns:
        uint8 clip ``(C, T, H, W)``, contiguous.
    """
    assert not plan.rest, "a uint8 clip's transform must fold into its plan"
    out = frames.numpy().transpose(1, 0, 2, 3)
    if plan.flip:
        out = out[..., ::-1]
    # One strided copy in NumPy does the flip and the transpose; torch.flip would be a second.
    return torch.from_numpy(np.ascontiguousarray(out))


def to_float_clip(
    frames: torch.Tensor,
    plan: GeometryPlan,
    generator: torch.Generator | None,
    check: Callable[[torch.Tensor], None],
) -> torch.Tensor:
    """Flip in uint8, convert to float once, run the rest of the chain; channel-first output.

    Args:
        frames: uint8 ``(T, 3, H, W)`` from :func:`decode_planned`.
        plan: The clip's plan.
        generator: Passed to every ``ClipTransform`` in ``plan.rest``.
        check: Called on the rest's ``(T, C, H, W)`` output (the data set's output check).

    Returns:
        float32 clip ``(C, T, H, W)``, values in ``[0, 1]`` unless ``rest`` normalises.
    """
    if plan.flip:
        frames = frames.flip(-1)
    t, c, h, w = frames.shape
    # device="cpu" throughout: the frames are CPU memory, and the plain path's clips are CPU
    # tensors whatever torch.set_default_device says.
    if not plan.rest:
        clip = torch.empty((c, t, h, w), dtype=torch.float32, device="cpu")
        clip.copy_(frames.transpose(0, 1)).div_(255.0)  # two fast kernels beat one slow one
        return clip
    jitter_first = _is(plan.rest[0], ClipColorJitter)
    if all(_is(step, ClipColorJitter) or _is(step, ClipNormalize) for step in plan.rest):
        # These work on any strides: give them a (T, C, H, W) view of the channel-first
        # buffer, so the result needs no final transpose.
        clip = torch.empty((c, t, h, w), dtype=torch.float32, device="cpu")
        clip.copy_(frames.transpose(0, 1))
        out = clip.transpose(0, 1)
    else:  # anything else gets a contiguous (T, C, H, W) clip, as on the plain path
        out = torch.empty((t, c, h, w), dtype=torch.float32, device="cpu")
        out.copy_(frames)
    if not jitter_first:
        out.div_(255.0)
    for i, step in enumerate(plan.rest):
        if i == 0 and jitter_first:
            # Nobody else holds the buffer; the jitter also does the division by 255.
            out = step._jitter(out, generator, inplace=True, scale=1 / 255)
        elif isinstance(step, ClipTransform):
            out = step(out, generator=generator)
        else:
            out = step(out)
    check(out)
    return out.permute(1, 0, 2, 3).contiguous()
