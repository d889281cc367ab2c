"""Colour jitter for a whole batch of clips at once, on the device the batch is on.

The clip loaders can hand out ``uint8`` clips, so a worker does not spend its time converting
full-size frames to float and jittering them one clip at a time. The float conversion and the
colour jitter then run in the training loop, **batched, on the device** (what that costs on
a GPU is measured by ``benchmarks/run.py --device cuda --only data``): collate the clips to
``(B, 3, T, H, W)``, move the batch, and call :class:`ClipBatchColorJitter`.

Same statistics as :class:`~micacl_layers.data.transforms.ClipColorJitter`: each clip gets its
own random order of brightness, contrast and saturation and its own three factors, the
contrast reference is the mean grey level of the whole clip, the values are clamped to
``[0, 1]`` after each adjustment, and an adjustment of strength 0 is skipped. The per-clip
parameters are drawn **on the host**, clip after clip, exactly as ``ClipColorJitter`` draws
them, from a CPU ``torch.Generator`` (or torch's global CPU RNG): the same seed gives the same
jitter whether the batch is on a CPU or a GPU, and the same jitter as ``ClipColorJitter``
applied to each clip in turn (up to float rounding). Only the ``(B, 3)`` order and factor
tensors are copied to the device, and nothing is read back from it.

On a CPU this is **slower** than ``ClipColorJitter`` in the workers (8x for 16 clips of
``16 x 112 x 112`` on one core of an AMD EPYC: one clip stays in the CPU's cache through all
three steps, a batch does not, and the workers run in parallel), so CPU-only training keeps the
jitter in the loader; this module is for a batch on a GPU.

:func:`clip_batch_color_jitter` is the deterministic part: given each clip's order and
factors, it runs the three steps for the whole batch, every clip doing its own adjustment at
each step.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import nn

from micacl_layers._validation import (
    check_generator,
    check_ndim,
    check_same_batch,
    check_size,
    check_tensor,
    describe,
    torchscript_unsupported,
)

from .transforms import ClipColorJitter, _grey

__all__ = ["ClipBatchColorJitter", "clip_batch_color_jitter"]

_LAYOUT = "(B, 3, T, H, W)"


def _check_clips(clips: object) -> torch.Tensor:
    clips = check_tensor("clips", clips)
    check_ndim("clips", clips, 5, f"{_LAYOUT} (a collated batch of (C, T, H, W) clips)")
    check_size("clips", clips, 1, 3, f"{_LAYOUT} (RGB channels in dim 1)")
    if clips.dtype != torch.uint8 and not clips.is_floating_point():
        raise TypeError(
            f"`clips` must be uint8 in [0, 255] or floating-point in [0, 1], got {describe(clips)}."
        )
    return clips


def _check_out_dtype(out_dtype: object) -> torch.dtype:
    if not isinstance(out_dtype, torch.dtype) or not out_dtype.is_floating_point:
        raise TypeError(f"`out_dtype` must be a floating-point torch.dtype, got {out_dtype!r}.")
    return out_dtype


def _check_params(order: object, factors: object, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    order = check_tensor("order", order)
    factors = check_tensor("factors", factors)
    if order.is_floating_point() or order.is_complex() or order.dtype == torch.bool:
        raise TypeError(
            f"`order` must be an integer tensor (e.g. torch.int64) of adjustment indices "
            f"0=brightness, 1=contrast, 2=saturation, got {describe(order)}."
        )
    if not factors.is_floating_point():
        raise TypeError(f"`factors` must be a floating-point tensor, got {describe(factors)}.")
    for name, t in (("order", order), ("factors", factors)):
        check_ndim(name, t, 2, "(B, 3)")
        check_size(name, t, 1, 3, "(B, 3)")
    check_same_batch(clips=torch.empty(batch, 0), order=order, factors=factors)
    if order.device != factors.device:
        raise ValueError(
            f"`order` and `factors` must be on one device, got {order.device} and {factors.device}."
        )
    order = order.long()
    # The values are checked only where that reads nothing back from a device (the Module's
    # parameters are valid by construction); on a GPU a bad order fails inside `gather`.
    if order.device.type == "cpu" and order.numel():
        bad = (order.sort(dim=1).values != torch.arange(3, device="cpu")).any(dim=1)
        if bool(bad.any()):
            raise ValueError(
                f"`order` must hold one permutation of [0, 1, 2] per clip, got {describe(order)} "
                f"with row {int(bad.nonzero()[0])} = {order[bad][0].tolist()}."
            )
    if factors.device.type == "cpu" and factors.numel():
        if not bool(torch.isfinite(factors).all()) or bool((factors < 0).any()):
            raise ValueError(
                f"`factors` must be finite and >= 0, got {describe(factors)} with values in "
                f"[{factors.min().item()}, {factors.max().item()}]."
            )
    return order, factors


def _step_coefficients(
    order: torch.Tensor, factors: torch.Tensor, enabled: tuple[bool, bool, bool], scale: float
) -> torch.Tensor:
    """Per step and clip, ``(a, w_grey, w_mean)`` with step output ``a x + w_grey g + w_mean m``.

    Returns a ``(steps, 3, B)`` tensor, ``steps`` the number of enabled adjustments.
    """
    # Every clip's enabled adjustments moved to the front in their drawn order (a stable sort
    # on "disabled"), so that step k runs the k-th enabled adjustment of every clip and a
    # disabled one costs no pass and no clamp, as in ClipColorJitter.
    disabled = torch.zeros_like(order, dtype=torch.bool)  # built on order's device, no copy
    for op, on in enumerate(enabled):
        if not on:
            disabled |= order == op
    first = torch.sort(disabled.to(torch.uint8), dim=1, stable=True).indices
    steps = order.gather(1, first)[:, : sum(enabled)]
    a = factors.gather(1, steps)
    rest = 1 - a  # the weight of the reference: 0 (brightness), the mean or the pixel's grey
    coef = torch.stack([a, rest * (steps == 2), rest * (steps == 1)]).permute(2, 0, 1).contiguous()
    # The /255 of uint8 input, folded into the first step (one pass less).
    coef[:1] *= scale
    return coef


def clip_batch_color_jitter(
    clips: torch.Tensor,
    order: torch.Tensor,
    factors: torch.Tensor,
    *,
    enabled: Sequence[bool] = (True, True, True),
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Brightness, contrast and saturation with per-clip order and factors, for a whole batch.

    Clip ``i`` gets the adjustments ``order[i]`` in turn, each of the form
    ``x <- clamp(a * x + (1 - a) * ref, 0, 1)``: brightness with ``a = factors[i, 0]`` and
    ``ref = 0``, contrast with ``a = factors[i, 1]`` and ``ref`` the mean grey level (BT.601
    luma) of the whole clip, saturation with ``a = factors[i, 2]`` and ``ref`` each pixel's grey
    level. The three steps are computed for all clips at once (no loop over clips). An
    adjustment that ``enabled`` turns off is skipped wherever it falls in the order (no
    arithmetic, no clamp), as :class:`~micacl_layers.data.transforms.ClipColorJitter` skips an
    adjustment of strength 0. ``uint8`` input is divided by 255 inside the first step.

    Nothing is read back from the device. The values of ``order`` and ``factors`` are checked
    only when they are CPU tensors (checking a GPU tensor's values would wait for the GPU).

    Args:
        clips: The batch, ``uint8`` in ``[0, 255]`` or floating-point in ``[0, 1]``.
        order: Per clip, a permutation of ``[0, 1, 2]`` (0 = brightness, 1 = contrast,
            2 = saturation), any integer dtype, on any device.
        factors: Per clip, the brightness, contrast and saturation factors (>= 0; 1 leaves the
            clip unchanged), floating-point, on any device.
        enabled: Whether brightness, contrast and saturation are applied (three bools).
        out_dtype: Floating dtype of the result. float16 and bfloat16 are computed in float32
            and rounded once at the end.

    Returns:
        The jittered batch in ``[0, 1]``, on the device of ``clips``. With every adjustment
        disabled it is ``clips`` converted (and divided by 255 if ``uint8``); that may be
        ``clips`` itself when it already has ``out_dtype``.

    Shape:
        - clips: :math:`(B, 3, T, H, W)`.
        - order, factors: :math:`(B, 3)`.
        - Output: :math:`(B, 3, T, H, W)`.

    Raises:
        TypeError: If a tensor has the wrong dtype, or ``out_dtype`` is not floating-point.
        ValueError: If a shape is wrong, the batch sizes differ, or (CPU tensors) a row of
            ``order`` is not a permutation or a factor is negative or not finite.

    Example:
        >>> clips = torch.full((2, 3, 4, 8, 8), 200, dtype=torch.uint8)
        >>> order = torch.tensor([[0, 1, 2], [2, 1, 0]])
        >>> factors = torch.tensor([[0.5, 1.0, 1.0], [1.0, 1.0, 1.0]])
        >>> out = clip_batch_color_jitter(clips, order, factors)
        >>> out.shape, out.dtype
        (torch.Size([2, 3, 4, 8, 8]), torch.float32)
        >>> [round(v, 4) for v in out[:, 0, 0, 0, 0].tolist()]  # 200 / 255 * 0.5, 200 / 255
        [0.3922, 0.7843]
    """
    clips = _check_clips(clips)
    out_dtype = _check_out_dtype(out_dtype)
    flags = tuple(enabled) if isinstance(enabled, Sequence) else ()
    if len(flags) != 3 or not all(isinstance(f, bool) for f in flags):
        raise TypeError(
            f"`enabled` must be three bools (brightness, contrast, saturation), got {enabled!r}."
        )
    on: tuple[bool, bool, bool] = (flags[0], flags[1], flags[2])
    order, factors = _check_params(order, factors, len(clips))
    return _jitter(clips, order, factors, on, out_dtype)


def _jitter(
    clips: torch.Tensor,
    order: torch.Tensor,
    factors: torch.Tensor,
    on: tuple[bool, bool, bool],
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """:func:`clip_batch_color_jitter` on checked arguments (``order`` int64)."""
    # Half-precision outputs are computed in float32: one rounding at the end instead of one
    # per step, and the contrast mean of a large clip is not summed in 8 or 11 bits.
    compute = torch.promote_types(out_dtype, torch.float32)
    scale = 1 / 255 if clips.dtype == torch.uint8 else 1.0
    x = clips.to(compute)
    owned = x is not clips  # a new tensor can be updated in place; the caller's never is
    if not any(on) or not len(clips):
        if scale != 1.0:  # uint8: x is a new tensor
            x = x.div_(255)
        return x.to(out_dtype)

    coef = _step_coefficients(order, factors, on, scale)
    # One copy to the device, non-blocking: a blocking host-to-device copy would wait for the
    # GPU to finish its queue.
    coef = coef.to(device=clips.device, dtype=compute, non_blocking=True)
    coef = coef.view(*coef.shape, 1, 1, 1, 1)
    for a, w_grey, w_mean in coef:
        # The references come from this step's input, before it is updated in place.
        grey = _grey(x) if on[2] else None
        if on[1]:
            mean = _grey(x.mean(dim=(2, 3, 4), keepdim=True))  # each clip's mean grey
            x = (x.mul_(a) if owned else x * a).add_(w_mean * mean)
        else:
            x = x.mul_(a) if owned else x * a
        if grey is not None:
            x.addcmul_(grey, w_grey)
        x.clamp_(0.0, 1.0)
        owned = True
    return x.to(out_dtype)


class ClipBatchColorJitter(nn.Module):
    """Per-clip random brightness, contrast and saturation for a batch, on its device.

    Draws, for clip ``i = 0 .. B-1`` in turn, what
    :meth:`ClipColorJitter.get_params <micacl_layers.data.transforms.ClipColorJitter.get_params>`
    draws (a random order, then the three factors, each uniform in ``[max(0, 1 - v), 1 + v]``)
    from a CPU generator, and applies them with :func:`clip_batch_color_jitter`. With equal
    seeds the result equals ``ClipColorJitter`` applied to each clip in turn, up to float
    rounding, for input in ``[0, 1]`` (float input outside it is clamped after every
    adjustment here, where ``ClipColorJitter`` skips the clamp after a brightness factor <= 1).
    No parameters and no buffers.

    Args:
        brightness: Brightness jitter strength (>= 0, finite); 0 disables it.
        contrast: Contrast jitter strength (>= 0, finite); 0 disables it.
        saturation: Saturation jitter strength (>= 0, finite); 0 disables it.
        generator: Default source of randomness, a CPU ``torch.Generator``; ``None`` uses
            torch's global RNG.

    Shape:
        - Input: :math:`(B, 3, T, H, W)`, ``uint8`` in ``[0, 255]`` or floating in ``[0, 1]``.
        - Output: :math:`(B, 3, T, H, W)`, ``out_dtype`` (float32) in ``[0, 1]``.

    Raises:
        ValueError: If a strength is negative or not finite, or the batch has the wrong shape.
        TypeError: If the batch is neither ``uint8`` nor floating-point.

    Example:
        >>> batch = torch.randint(0, 256, (4, 3, 8, 16, 16), dtype=torch.uint8)
        >>> jitter = ClipBatchColorJitter(generator=torch.Generator().manual_seed(0))
        >>> out = jitter(batch)
        >>> out.shape, out.dtype
        (torch.Size([4, 3, 8, 16, 16]), torch.float32)
        >>> # The same as ClipColorJitter on each (T, 3, H, W) clip, with the same seed:
        >>> per_clip = ClipColorJitter(generator=torch.Generator().manual_seed(0))
        >>> ref = [per_clip(c.transpose(0, 1) / 255).transpose(0, 1) for c in batch]
        >>> torch.allclose(out, torch.stack(ref), atol=1e-5)
        True
    """

    __prepare_scriptable__ = torchscript_unsupported

    def __init__(
        self,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        # The one definition of the draws and of the strengths' checks; its own generator
        # stays None, ours is passed in.
        self._params = ClipColorJitter(brightness, contrast, saturation)
        self.brightness = self._params.brightness
        self.contrast = self._params.contrast
        self.saturation = self._params.saturation
        self.generator = check_generator(generator, cpu=True)

    def get_params(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw every clip's order and factors on the host, clip after clip.

        Args:
            batch_size: Number of clips.
            generator: Overrides the construction-time generator (CPU).

        Returns:
            ``(order, factors)``: an int64 ``(B, 3)`` tensor of permutations and a float64
            ``(B, 3)`` tensor of brightness, contrast and saturation factors, on the CPU.

        Raises:
            ValueError: If ``batch_size`` is not an int >= 0.

        Example:
            >>> order, factors = ClipBatchColorJitter().get_params(2)
            >>> order.shape, factors.dtype
            (torch.Size([2, 3]), torch.float64)
        """
        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, numbers.Integral)
            or batch_size < 0
        ):
            raise ValueError(f"`batch_size` must be an int >= 0, got {batch_size!r}.")
        gen = check_generator(generator, cpu=True) if generator is not None else self.generator
        drawn = [self._params.get_params(gen) for _ in range(batch_size)]
        # On the host, as documented, whatever torch.set_default_device says.
        order = torch.tensor([d[0] for d in drawn], dtype=torch.int64, device="cpu")
        factors = torch.tensor([d[1:] for d in drawn], dtype=torch.float64, device="cpu")
        order, factors = order.view(batch_size, 3), factors.view(batch_size, 3)
        return order, factors

    def forward(
        self,
        clips: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        out_dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Jitter every clip of ``clips`` with its own parameters.

        Args:
            clips: The batch, ``uint8`` in ``[0, 255]`` or floating-point in ``[0, 1]``.
            generator: Overrides the construction-time generator (CPU).
            out_dtype: Floating dtype of the result.

        Returns:
            The jittered batch in ``[0, 1]``, on the device of ``clips``.
        """
        # Checked before anything is drawn, so a bad call leaves the generator as it was.
        clips = _check_clips(clips)
        out_dtype = _check_out_dtype(out_dtype)
        order, factors = self.get_params(len(clips), generator)  # valid by construction
        on = (self.brightness > 0, self.contrast > 0, self.saturation > 0)
        return _jitter(clips, order, factors, on, out_dtype)

    def extra_repr(self) -> str:
        """The strengths, shown in ``repr()`` as ``ClipColorJitter`` shows them."""
        return (
            f"brightness={self.brightness!r}, contrast={self.contrast!r}, "
            f"saturation={self.saturation!r}"
        )
