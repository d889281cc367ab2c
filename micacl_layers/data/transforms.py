"""Clip-consistent augmentation for video clips, in plain torch.

Every transform here works on a whole clip ``(T, C, H, W)`` of floats in ``[0, 1]`` and draws its
random parameters **once per clip**: the same crop, the same flip and the same colour factors are
applied to every frame. Augmenting frames independently would add frame-to-frame jitter that
does not exist in the video, which is exactly the temporal signal a DFER model must learn from.

Random transforms take an optional ``torch.Generator`` at construction or at call time (the call
time one wins); without one they use torch's global RNG, which ``DataLoader`` seeds differently
in each worker.

The recipe of the MICACL code base (``train_transform`` / ``test_transform``) does **not**
normalise with a mean and std: clips stay in ``[0, 1]`` and the model applies the Kinetics
normalisation itself. ``ClipNormalize`` is there for models that expect normalised input.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from typing import TypeGuard

import torch
import torch.nn.functional as F

from micacl_layers._validation import (
    check_bool,
    check_generator,
    check_nonnegative_float,
    check_positive_int,
    is_real,
)

__all__ = [
    "ClipColorJitter",
    "ClipCompose",
    "ClipNormalize",
    "ClipRandomHorizontalFlip",
    "ClipRandomResizedCrop",
    "ClipResize",
    "ClipTransform",
    "test_transform",
    "train_transform",
]

# ITU-R BT.601 luma weights, the same as PIL's "L" conversion.
_LUMA = (0.299, 0.587, 0.114)

# Brightness, contrast and saturation strengths of the MICACL training recipe.
_TRAIN_JITTER = (0.4, 0.4, 0.4)


def _check_clip(
    clip: torch.Tensor, name: str = "clip", *, rgb: bool = False, pixels: bool = False
) -> None:
    """A float ``(T, C, H, W)`` clip; ``rgb``: 3 channels; ``pixels``: ``H, W >= 1`` (to scale)."""
    if not isinstance(clip, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (T, C, H, W), got {type(clip)}")
    if clip.ndim != 4:
        raise ValueError(
            f"{name} must have shape (T, C, H, W), got shape {tuple(clip.shape)} ({clip.ndim} dims)"
        )
    if not clip.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor with values in [0, 1], got dtype "
            f"{clip.dtype}; convert with clip.float() / 255"
        )
    if pixels and min(clip.shape[2:]) == 0:
        raise ValueError(
            f"{name} must have H, W >= 1 to be cropped or resized, got shape {tuple(clip.shape)}"
        )
    if rgb and clip.shape[1] != 3:
        raise ValueError(
            f"{name} must have 3 (RGB) channels in dim 1 of (T, C, H, W), got shape "
            f"{tuple(clip.shape)}"
        )


def _is_int(value: object) -> TypeGuard[numbers.Integral]:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
    # numbers.Integral takes NumPy integers (a size read from an array or a config), as the
    # data sets' `fold` does; a bool is not a size.
    if _is_int(size):
        pair = (int(size), int(size))
    elif isinstance(size, Sequence) and len(size) == 2 and all(_is_int(s) for s in size):
        pair = (int(size[0]), int(size[1]))
    else:
        raise TypeError(f"{name} must be an int or a (height, width) pair of ints, got {size!r}")
    if min(pair) < 1:
        raise ValueError(f"{name} must be positive, got {size!r}")
    return pair


def _real_pair(value: object) -> tuple[float, float] | None:
    """``value`` as two floats if it is two real numbers, else ``None``.

    It is read once, so a one-shot iterator is checked and kept, not consumed by the check.
    """
    if not isinstance(value, Iterable):
        return None
    pair = tuple(value)
    if len(pair) != 2 or not all(is_real(v) for v in pair):
        return None
    return float(pair[0]), float(pair[1])


def _grey(clip: torch.Tensor) -> torch.Tensor:
    """Luma of an RGB ``(T, 3, H, W)`` clip, ``(T, 1, H, W)``."""
    grey = clip[:, 0:1] * _LUMA[0]
    grey.add_(clip[:, 1:2], alpha=_LUMA[1])
    return grey.add_(clip[:, 2:3], alpha=_LUMA[2])


def _grey_mean(clip: torch.Tensor) -> torch.Tensor:
    """Mean luma of a whole RGB clip, a 0-dim tensor (no host sync on a GPU)."""
    means = clip.mean(dim=(0, 2, 3))
    return means[0] * _LUMA[0] + means[1] * _LUMA[1] + means[2] * _LUMA[2]


def _resize(clip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(clip.shape[-2:]) == size:
        return clip
    # torch has no antialiased bilinear kernel for float16/bfloat16 on the CPU.
    half_on_cpu = clip.device.type == "cpu" and clip.dtype in (torch.float16, torch.bfloat16)
    x = clip.float() if half_on_cpu else clip
    # antialias matters when shrinking 224 -> 112: without it bilinear aliases fine texture.
    out = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return out.clamp_(0.0, 1.0).to(clip.dtype)


class ClipTransform:
    """Base class of the clip transforms: a callable ``(T, C, H, W) -> (T, C, H, W)``.

    Subclasses implement ``__call__(clip, *, generator=None)``. Datasets of this package pass
    their own ``generator`` to a ``ClipTransform`` at call time, and plain callables are called
    with the clip alone.

    Args:
        generator: Default source of randomness for random transforms (a CPU
            ``torch.Generator``, or ``None`` for torch's global RNG).

    Shape:
        - clip: :math:`(T, C, H, W)`, floating point in ``[0, 1]``.
        - Output: :math:`(T, C, H', W')`.

    Raises:
        TypeError: If ``generator`` (here or at call time) is not a CPU ``torch.Generator``.

    Example:
        >>> class ClipInvert(ClipTransform):
        ...     def __call__(self, clip, *, generator=None):
        ...         return 1.0 - clip
        >>> t = ClipCompose([ClipResize(8), ClipInvert()])
        >>> t(torch.zeros(4, 3, 16, 16)).shape, t(torch.zeros(4, 3, 16, 16)).min().item()
        (torch.Size([4, 3, 8, 8]), 1.0)
    """

    def __init__(self, *, generator: torch.Generator | None = None) -> None:
        self.generator = check_generator(generator, cpu=True)

    def _gen(self, generator: torch.Generator | None) -> torch.Generator | None:
        return check_generator(generator, cpu=True) if generator is not None else self.generator

    def _uniform(self, low: float, high: float, generator: torch.Generator | None) -> float:
        # On the CPU whatever torch.set_default_device says: the generator is a CPU one.
        gen = self._gen(generator)
        u = torch.rand((), generator=gen, dtype=torch.float64, device="cpu").item()
        return low + (high - low) * u

    def __call__(
        self, clip: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Apply the transform (implemented by subclasses)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        opts = ", ".join(
            f"{k}={v!r}" for k, v in vars(self).items() if k != "generator" and k[0] != "_"
        )
        return f"{type(self).__name__}({opts})"


class ClipRandomResizedCrop(ClipTransform):
    """Crop one random area/aspect box, shared by all frames, and resize it.

    Like torchvision's ``RandomResizedCrop``: up to 10 tries to draw an area fraction from
    ``scale`` and a log-uniform aspect ratio from ``ratio`` that fits in the frame; otherwise a
    centre crop with the aspect ratio clamped to ``ratio``.

    Args:
        size: Output ``(height, width)``, or an int for a square output.
        scale: Range of the crop's area as a fraction of the frame's.
        ratio: Range of the crop's width / height.
        generator: Default source of randomness.

    Shape:
        - Input: :math:`(T, C, H, W)`, float in ``[0, 1]``.
        - Output: :math:`(T, C, size_h, size_w)`.

    Raises:
        ValueError: If ``scale`` or ``ratio`` is not an increasing positive pair of numbers, or
            if the clip has the wrong shape.

    Example:
        >>> clip = torch.rand(16, 3, 64, 64)
        >>> crop = ClipRandomResizedCrop(32, generator=torch.Generator().manual_seed(0))
        >>> crop(clip).shape
        torch.Size([16, 3, 32, 32])
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(generator=generator)
        self.size = _pair(size, "size")
        # (A bool is not a number here: (True, True) would mean (1.0, 1.0).)
        scale_pair, ratio_pair = _real_pair(scale), _real_pair(ratio)
        if scale_pair is None or not 0 < scale_pair[0] <= scale_pair[1] <= 1:
            raise ValueError(
                f"scale must be (low, high) numbers with 0 < low <= high <= 1, got {scale!r}"
            )
        if ratio_pair is None or not 0 < ratio_pair[0] <= ratio_pair[1] < math.inf:
            raise ValueError(
                f"ratio must be (low, high) numbers with 0 < low <= high (finite), got {ratio!r}"
            )
        self.scale = scale_pair
        self.ratio = ratio_pair

    def get_params(
        self, height: int, width: int, generator: torch.Generator | None = None
    ) -> tuple[int, int, int, int]:
        """Draw a crop box for a frame of ``height`` x ``width``.

        Args:
            height: Frame height in pixels.
            width: Frame width in pixels.
            generator: Overrides the construction-time generator.

        Returns:
            ``(top, left, crop_height, crop_width)``.

        Raises:
            ValueError: If ``height`` or ``width`` is not a positive int (a 0-pixel side
                divided by zero, or gave a box 0 pixels wide).
            TypeError: If either is not an integer.
        """
        height = check_positive_int("height", height, type_error=True)
        width = check_positive_int("width", width, type_error=True)
        area = height * width
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target_area = area * self._uniform(*self.scale, generator)
            aspect = math.exp(self._uniform(log_lo, log_hi, generator))
            w = round(math.sqrt(target_area * aspect))
            h = round(math.sqrt(target_area / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(self._uniform(0, height - h + 1, generator))
                left = int(self._uniform(0, width - w + 1, generator))
                return min(top, height - h), min(left, width - w), h, w
        # Fallback: the largest centred box whose aspect ratio lies within `ratio`.
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            h, w = height, round(height * self.ratio[1])
        else:
            h, w = height, width
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(
        self, clip: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Crop and resize every frame of ``clip`` with one shared box.

        Args:
            clip: Clip of shape ``(T, C, H, W)``.
            generator: Overrides the construction-time generator.

        Returns:
            The cropped clip of shape ``(T, C, *size)``.
        """
        _check_clip(clip, pixels=True)
        top, left, h, w = self.get_params(clip.shape[-2], clip.shape[-1], generator)
        return _resize(clip[..., top : top + h, left : left + w], self.size)


class ClipRandomHorizontalFlip(ClipTransform):
    """Flip the whole clip left-right with probability ``p``.

    Args:
        p: Flip probability in ``[0, 1]``.
        generator: Default source of randomness.

    Shape:
        - Input: :math:`(T, C, H, W)`.
        - Output: same shape.

    Raises:
        ValueError: If ``p`` is not a number in ``[0, 1]``.

    Example:
        >>> clip = torch.arange(4.0).view(1, 1, 1, 4) / 4
        >>> ClipRandomHorizontalFlip(p=1.0)(clip).flatten().tolist()
        [0.75, 0.5, 0.25, 0.0]
    """

    def __init__(self, p: float = 0.5, *, generator: torch.Generator | None = None) -> None:
        super().__init__(generator=generator)
        if not (is_real(p) and 0.0 <= p <= 1.0):  # a bool is not a probability
            raise ValueError(f"p must be a number in [0, 1], got {p!r}")
        self.p = float(p)

    def __call__(
        self, clip: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Flip ``clip`` along its width, or return it unchanged.

        Args:
            clip: Clip of shape ``(T, C, H, W)``.
            generator: Overrides the construction-time generator.

        Returns:
            The (possibly) flipped clip.
        """
        _check_clip(clip)
        # Always draw, even for p in {0, 1}, so the generator's stream does not depend on p.
        if self._uniform(0.0, 1.0, generator) < self.p:
            return clip.flip(-1)
        return clip


class ClipColorJitter(ClipTransform):
    """Random brightness, contrast and saturation with one set of factors per clip.

    Each factor is drawn uniformly from ``[max(0, 1 - v), 1 + v]`` and the three adjustments are
    applied in a random order, as in torchvision's ``ColorJitter``. Two deliberate differences
    keep the transform identical on every frame: the contrast reference is the mean grey level
    of the **whole clip** (torchvision uses each image's own mean), and there is no hue jitter.
    Results are clamped to ``[0, 1]``.

    Args:
        brightness: Brightness jitter strength (>= 0, finite); 0 disables it.
        contrast: Contrast jitter strength (>= 0, finite).
        saturation: Saturation jitter strength (>= 0, finite).
        generator: Default source of randomness.

    Shape:
        - Input: :math:`(T, 3, H, W)`, RGB float in ``[0, 1]``.
        - Output: same shape.

    Raises:
        ValueError: If a strength is negative, not finite or a ``(min, max)`` pair (the other
            form torchvision takes), or the clip is not RGB.

    Example:
        >>> frame = torch.rand(1, 3, 8, 8)
        >>> clip = frame.expand(4, 3, 8, 8)
        >>> out = ClipColorJitter(generator=torch.Generator().manual_seed(1))(clip)
        >>> bool((out == out[:1]).all())
        True
    """

    def __init__(
        self,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(generator=generator)
        for name, value in (
            ("brightness", brightness),
            ("contrast", contrast),
            ("saturation", saturation),
        ):
            if isinstance(value, (tuple, list)):  # torchvision's other form, refused by name
                raise ValueError(
                    f"`{name}` must be one strength v >= 0 (factors drawn from "
                    f"[max(0, 1 - v), 1 + v]); torchvision's (min, max) form is not taken, "
                    f"got {value!r}"
                )
        # NaN would pass a plain `value < 0` test and make every factor NaN.
        self.brightness = check_nonnegative_float("brightness", brightness)
        self.contrast = check_nonnegative_float("contrast", contrast)
        self.saturation = check_nonnegative_float("saturation", saturation)

    def get_params(
        self, generator: torch.Generator | None = None
    ) -> tuple[list[int], float, float, float]:
        """Draw the order of the adjustments and the three factors.

        Args:
            generator: Overrides the construction-time generator.

        Returns:
            ``(order, brightness_factor, contrast_factor, saturation_factor)`` where ``order`` is
            a permutation of ``[0, 1, 2]`` (brightness, contrast, saturation).
        """
        order = torch.randperm(3, generator=self._gen(generator), device="cpu").tolist()
        factors = [
            self._uniform(max(0.0, 1.0 - v), 1.0 + v, generator)
            for v in (self.brightness, self.contrast, self.saturation)
        ]
        return order, factors[0], factors[1], factors[2]

    def __call__(
        self, clip: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Jitter the colours of ``clip``.

        Args:
            clip: RGB clip of shape ``(T, 3, H, W)``.
            generator: Overrides the construction-time generator.

        Returns:
            The jittered clip.
        """
        _check_clip(clip, rgb=True)
        return self._jitter(clip, generator, inplace=False)

    def _jitter(
        self,
        clip: torch.Tensor,
        generator: torch.Generator | None,
        *,
        inplace: bool,
        scale: float = 1.0,
    ) -> torch.Tensor:
        # With inplace=False the first adjustment makes a new tensor and later ones update it
        # in place, so the caller's clip is never modified; the loaders' fast path owns its
        # clip and passes inplace=True, with its 0..255 values and scale=1/255 folded into the
        # first adjustment (one pass less). Fewer passes over the clip than the textbook form
        # `(c * x + (1 - c) * m).clamp(0, 1)`, same values up to float rounding.
        order, b, c, s = self.get_params(generator)
        out = clip
        owned = inplace
        for op in order:
            if op == 0 and self.brightness > 0:
                out = out.mul_(b * scale) if owned else out.mul(b * scale)
                if b <= 1 and scale == 1.0:  # x * b <= x <= 1 exactly: nothing to clamp
                    owned = True
                    continue
            elif op == 1 and self.contrast > 0:
                mean = _grey_mean(out)
                out = out.mul_(c * scale) if owned else out.mul(c * scale)
                out.add_(mean, alpha=(1 - c) * scale)
            elif op == 2 and self.saturation > 0:
                grey = _grey(out)
                out = out.mul_(s * scale) if owned else out.mul(s * scale)
                out.add_(grey, alpha=(1 - s) * scale)
            else:
                continue
            out.clamp_(0.0, 1.0)
            owned = True
            scale = 1.0
        if scale != 1.0:  # every strength was 0
            out = out.mul_(scale) if owned else out.mul(scale)
        return out


class ClipResize(ClipTransform):
    """Resize every frame to a fixed size (bilinear, antialiased).

    Unlike torchvision's ``Resize(int)``, an int gives a square ``size x size`` output (DFEW
    frames are square; clips must share a size to be batched).

    Args:
        size: Output ``(height, width)``, or an int for a square output.

    Shape:
        - Input: :math:`(T, C, H, W)`.
        - Output: :math:`(T, C, size_h, size_w)`.

    Example:
        >>> ClipResize(112)(torch.rand(16, 3, 224, 224)).shape
        torch.Size([16, 3, 112, 112])
    """

    def __init__(self, size: int | Sequence[int]) -> None:
        super().__init__()
        self.size = _pair(size, "size")

    def __call__(
        self, clip: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Resize ``clip``.

        Args:
            clip: Clip of shape ``(T, C, H, W)``.
            generator: Ignored (deterministic transform).

        Returns:
            The resized clip.
        """
        _check_clip(clip, pixels=True)
        return _resize(clip, self.size)


class ClipNormalize(ClipTransform):
    """Subtract a per-channel mean and divide by a per-channel std.

    Not part of the default recipe: MICACL models normalise internally. Use it only for a model
    that expects normalised input.

    Args:
        mean: Per-channel means.
        std: Per-channel standard deviations (all > 0 and finite).

    Shape:
        - Input: :math:`(T, C, H, W)` with ``C == len(mean)``.
        - Output: same shape.

    Raises:
        TypeError: If ``mean`` or ``std`` is not a sequence of numbers (bools are not).
        ValueError: If ``mean`` and ``std`` differ in length, a mean is not finite, a std is
            not positive and finite or rounds to 0 in the clip's dtype, or the clip's channel
            count does not match.

    Example:
        >>> norm = ClipNormalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
        >>> norm(torch.ones(2, 3, 4, 4)).unique().tolist()
        [1.0]
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        for name, values in (("mean", mean), ("std", std)):
            if isinstance(values, (str, bytes)) or not all(is_real(v) for v in values):
                raise TypeError(f"`{name}` must be a sequence of numbers, got {values!r}")
        if len(mean) != len(std):
            raise ValueError(f"mean and std must have the same length, got {mean} and {std}")
        if not all(math.isfinite(v) for v in mean):
            raise ValueError(f"mean must be finite, got {mean}")
        if not all(0 < v < math.inf for v in std):
            raise ValueError(f"std must be positive and finite, got {std}")
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)

    def __call__(
        self, clip: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Normalise ``clip``.

        Args:
            clip: Clip of shape ``(T, C, H, W)``.
            generator: Ignored (deterministic transform).

        Returns:
            The normalised clip.
        """
        _check_clip(clip)
        if clip.shape[1] != len(self.mean):
            raise ValueError(
                f"clip has {clip.shape[1]} channels (shape {tuple(clip.shape)}) but mean/std "
                f"have {len(self.mean)}"
            )
        # (Rounded on the CPU: no read-back from the clip's device.)
        std_cpu = torch.tensor(self.std, dtype=clip.dtype, device="cpu")
        if clip.is_floating_point() and bool((std_cpu == 0).any()):
            raise ValueError(
                f"std {self.std} is too small for a {clip.dtype} clip: it rounds to 0 there, "
                f"where dividing by it gives inf"
            )
        mean = clip.new_tensor(self.mean).view(1, -1, 1, 1)
        std = clip.new_tensor(self.std).view(1, -1, 1, 1)
        return (clip - mean) / std


def _nested_steps(step: object) -> list[object]:
    if isinstance(step, ClipCompose):
        return [s for t in step.transforms for s in _nested_steps(t)]
    return [step]


def _first_step_of(step: object, kinds: type | tuple[type, ...]) -> str | None:
    """How to name ``step`` if it is, or (a ClipCompose) holds, one of ``kinds``."""
    sub = next((s for s in _nested_steps(step) if isinstance(s, kinds)), None)
    if sub is None:
        return None
    what = type(sub).__name__
    return what if sub is step else f"{type(step).__name__} holding {what}"


def _check_normalize_comes_last(steps: Sequence[object]) -> None:
    # The resize, the crop's resize and the jitter clamp to [0, 1], the range they take, so
    # after ClipNormalize they would silently cut every value below 0 (about half of them).
    # Nested ClipComposes count by their steps: ClipNormalize before a ready-made recipe
    # (test_transform(112)) cuts as much. (Each nested one has checked its own order.)
    found = ((i, _first_step_of(step, ClipNormalize)) for i, step in enumerate(steps))
    norm, norm_what = next(((i, what) for i, what in found if what is not None), (None, None))
    if norm is None:
        return
    for i in range(norm + 1, len(steps)):
        what = _first_step_of(steps[i], (ClipResize, ClipRandomResizedCrop, ClipColorJitter))
        if what is not None:
            raise ValueError(
                f"`transforms[{i}]` ({what}) takes a clip in [0, 1] and clamps to it, so it "
                f"cannot come after `transforms[{norm}]` ({norm_what}): put ClipNormalize last"
            )


class ClipCompose(ClipTransform):
    """Chain clip transforms, handing each the call-time generator.

    Args:
        transforms: Transforms applied in order. ``ClipTransform`` instances receive the
            ``generator``; any other callable is called with the clip alone.

    Shape:
        - clip: :math:`(T, C, H, W)`.
        - Output: what the last step returns, :math:`(T, C, H', W')` for this package's steps.

    Raises:
        TypeError: If ``transforms`` is not a sequence or a step is not callable (or is a
            class, not an instance).
        ValueError: If a ``ClipResize``, ``ClipRandomResizedCrop`` or ``ClipColorJitter``
            comes after a ``ClipNormalize`` (also where either is inside a nested
            ``ClipCompose``): they clamp to ``[0, 1]``, which would cut the normalised values.

    Example:
        >>> t = ClipCompose([ClipResize(32), ClipRandomHorizontalFlip()])
        >>> t(torch.rand(8, 3, 64, 64), generator=torch.Generator().manual_seed(0)).shape
        torch.Size([8, 3, 32, 32])
    """

    def __init__(
        self, transforms: Sequence[ClipTransform | Callable[[torch.Tensor], torch.Tensor]]
    ) -> None:
        super().__init__()
        if not isinstance(transforms, Iterable):
            raise TypeError(
                "`transforms` must be a sequence of callables on a (T, C, H, W) clip, got "
                f"{transforms!r}"
            )
        self.transforms = list(transforms)
        for i, step in enumerate(self.transforms):
            # A class is callable too: called on a clip it would read the clip as its first
            # option, at the first clip, in a loader's worker.
            if isinstance(step, type):
                raise TypeError(
                    f"`transforms[{i}]` is the class {step.__name__}, not one of its instances: "
                    f"write {step.__name__}(...)"
                )
            if not callable(step):  # else it fails at the first clip, in a loader's worker
                raise TypeError(
                    f"`transforms[{i}]` must be callable on a (T, C, H, W) clip, got {step!r}"
                )
        _check_normalize_comes_last(self.transforms)

    def __call__(
        self, clip: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Apply every transform in turn.

        Args:
            clip: Clip of shape ``(T, C, H, W)``.
            generator: Passed to every ``ClipTransform`` in the chain.

        Returns:
            The transformed clip.
        """
        for t in self.transforms:
            clip = t(clip, generator=generator) if isinstance(t, ClipTransform) else t(clip)
        return clip

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"ClipCompose([{inner}\n])"


def train_transform(
    image_size: int = 112,
    *,
    generator: torch.Generator | None = None,
    color_jitter: bool = True,
) -> ClipCompose:
    """The MICACL training augmentation.

    One random-resized crop for the whole clip (area 0.08-1, aspect 3/4-4/3) to
    ``image_size``, a horizontal flip with p = 0.5, and colour jitter 0.4 (brightness, contrast,
    saturation), all clip-consistent. No mean/std normalisation: the model does it.

    Args:
        image_size: Output height and width.
        generator: Default source of randomness for all three random steps.
        color_jitter: ``False`` leaves the colour jitter out: the chain a data set with
            ``output_dtype=torch.uint8`` needs, with the jitter run on the device by
            :class:`~micacl_layers.data.batch_transforms.ClipBatchColorJitter` (same
            strengths, same statistics).

    Returns:
        The composed transform, for clips ``(T, 3, H, W)`` in ``[0, 1]``.

    Raises:
        TypeError: If ``color_jitter`` is not a bool, or ``generator`` not a CPU generator.

    Example:
        >>> t = train_transform(56, generator=torch.Generator().manual_seed(0))
        >>> t(torch.rand(16, 3, 64, 64)).shape
        torch.Size([16, 3, 56, 56])
        >>> len(train_transform(56, color_jitter=False).transforms)
        2
    """
    check_bool("color_jitter", color_jitter)
    steps: list[ClipTransform] = [
        ClipRandomResizedCrop(image_size, generator=generator),
        ClipRandomHorizontalFlip(0.5, generator=generator),
    ]
    if color_jitter:
        steps.append(ClipColorJitter(*_TRAIN_JITTER, generator=generator))
    return ClipCompose(steps)


def test_transform(image_size: int = 112) -> ClipCompose:
    """The MICACL test-time transform: resize to ``image_size`` (no normalisation).

    Args:
        image_size: Output height and width.

    Returns:
        The composed (deterministic) transform.

    Example:
        >>> test_transform(112)(torch.rand(16, 3, 224, 224)).shape
        torch.Size([16, 3, 112, 112])
    """
    return ClipCompose([ClipResize(image_size)])


# The name starts with "test"; keep pytest from collecting it when a test module imports it.
test_transform.__test__ = False  # type: ignore[attr-defined]
