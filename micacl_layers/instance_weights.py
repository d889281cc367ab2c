"""Instance weights for WIAN from GEIIM features (MICACL Eq. 4 and documented alternatives).

Eq. 4 takes :math:`w_t = \\mathrm{Softmax}(H_t, \\dim=-1)`: a softmax over the ``C`` channels of
each instance. Its entries average ``1/C``, so with ``C = 512`` the dynamic gate of Eq. 3 shrinks
WIAN's candidate cell about 512-fold and starves the recurrence (the public code's hidden states
sit near 5e-5). The alternatives keep Eq. 4's *relative* emphasis but restore a mean weight of 1.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from micacl_layers._validation import (
    check_device,
    check_device_of,
    check_finite_parameters,
    check_floating,
    check_ndim,
    check_padding_mask,
    check_parameter_dtype,
    check_positive_int,
    describe,
    to_parameter_dtype,
    torchscript_unsupported,
)

__all__ = ["WEIGHT_MODES", "InstanceWeights", "instance_weights"]

WeightMode = Literal["channel_softmax", "scaled_channel_softmax", "instance_softmax"]
WEIGHT_MODES: tuple[str, ...] = ("channel_softmax", "scaled_channel_softmax", "instance_softmax")


def instance_weights(
    h: torch.Tensor,
    *,
    mode: WeightMode = "instance_softmax",
    padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Turn instance features into the instance weights :math:`w_t` of Eq. 3.

    Modes:
        - ``"channel_softmax"``: Eq. 4 as written, softmax over channels; mean weight ``1/C``.
        - ``"scaled_channel_softmax"``: Eq. 4 times ``C``; same ranking of channels, mean 1.
        - ``"instance_softmax"``: for each channel, a softmax over the ``T`` instances times
          ``T``; mean 1 over instances, so the weights rank *instances* (the stated purpose of
          :math:`w_t`: "highlighting key instances") and stay bounded by ``T``.

    Padded instances get weight 0 and, in ``"instance_softmax"``, take no share of the softmax.
    The softmax runs in float32 (or wider) so low-precision inputs stay normalised.

    Args:
        h: GEIIM output :math:`H`.
        mode: One of :data:`WEIGHT_MODES`.
        padding_mask: Optional, ``True`` marks padded instances.

    Returns:
        Weights with the shape and dtype of ``h``.

    Shape:
        - h: :math:`(B, T, C)`
        - padding_mask: :math:`(B, T)`
        - Output: :math:`(B, T, C)`

    Example:
        >>> w = instance_weights(torch.randn(2, 4, 8), mode="instance_softmax")
        >>> bool(torch.allclose(w.mean(dim=1), torch.ones(2, 8)))
        True
    """
    h = check_floating("h", h)
    check_ndim("h", h, 3, "(B, T, C)")
    if mode not in WEIGHT_MODES:
        raise ValueError(f"`mode` must be one of {WEIGHT_MODES}, got {mode!r}.")
    if padding_mask is not None:
        check_padding_mask(padding_mask, *h.shape[:2])
        check_device_of("padding_mask", padding_mask, "h", h.device)
    work = h.float() if h.dtype in (torch.float16, torch.bfloat16) else h
    if mode == "instance_softmax":
        if padding_mask is not None:
            work = work.masked_fill(padding_mask.unsqueeze(-1), torch.finfo(work.dtype).min)
            real = (~padding_mask).sum(dim=1, keepdim=True).unsqueeze(-1).to(work.dtype)
        else:
            real = work.shape[1]  # type: ignore[assignment]
        w = work.softmax(dim=1) * real
    else:
        if padding_mask is not None:
            # A padded row's weight is set to 0 below, but the softmax's backward would still
            # multiply its zero gradient by whatever it holds (NaN from torch.empty padding).
            work = work.masked_fill(padding_mask.unsqueeze(-1), 0)
        w = work.softmax(dim=-1)
        if mode == "scaled_channel_softmax":
            w = w * work.shape[-1]
    if padding_mask is not None:
        w = w.masked_fill(padding_mask.unsqueeze(-1), 0.0)
    return w.to(h.dtype)


class InstanceWeights(nn.Module):
    r"""Module form of :func:`instance_weights`, with an optional projection to WIAN's size.

    Eq. 3 multiplies :math:`w_t` element-wise with an ``H``-sized gate, so channel weights need
    ``C == H``. If ``hidden_size`` differs from ``in_features``, a linear map ``C -> H`` is applied
    before the softmax (our addition; Eq. 4 assumes equal sizes, as in the paper's C = H = 512).

    Args:
        in_features: Channels ``C`` of the GEIIM output.
        hidden_size: WIAN hidden size ``H``; ``None`` means ``C``.
        mode: One of :data:`WEIGHT_MODES`.
        device: Parameter device.
        dtype: Parameter dtype.

    Shape:
        - h: :math:`(B, T, C)`
        - padding_mask: :math:`(B, T)`
        - Output: :math:`(B, T, H)`

    Example:
        >>> iw = InstanceWeights(16, hidden_size=8)
        >>> iw(torch.randn(2, 4, 16)).shape
        torch.Size([2, 4, 8])
    """

    def __init__(
        self,
        in_features: int,
        hidden_size: int | None = None,
        *,
        mode: WeightMode = "instance_softmax",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)
        self.hidden_size = (
            in_features if hidden_size is None else check_positive_int("hidden_size", hidden_size)
        )
        if mode not in WEIGHT_MODES:
            raise ValueError(f"`mode` must be one of {WEIGHT_MODES}, got {mode!r}.")
        self.mode = mode
        dtype = check_parameter_dtype(dtype)  # (checked with or without the projection)
        self.proj = (
            nn.Linear(in_features, self.hidden_size, device=device, dtype=dtype)
            if self.hidden_size != in_features
            else nn.Identity()
        )

    __prepare_scriptable__ = torchscript_unsupported

    def forward(self, h: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Compute the weights; see :func:`instance_weights`."""
        h = check_floating("h", h)
        check_ndim("h", h, 3, "(B, T, C)")
        if h.shape[-1] != self.in_features:
            raise ValueError(
                f"`h` must have shape (B, T, C) with C={self.in_features}, got {describe(h)}."
            )
        # (With config.check_finite on: a NaN in the projection would be reported as one
        # in the projected `h`, a tensor the caller never passed.)
        check_finite_parameters(self)
        if isinstance(self.proj, nn.Linear):  # another dtype runs in the projection's
            check_device("h", h, self.proj.weight.device, "InstanceWeights")
            h = to_parameter_dtype(h, self.proj.weight)
            if padding_mask is not None:
                # As in instance_weights: the projection's weight gradient would read the
                # padding (0 * NaN is NaN) though its weight is 0.
                check_padding_mask(padding_mask, *h.shape[:2])
                check_device_of("padding_mask", padding_mask, "h", h.device)
                h = h.masked_fill(padding_mask.unsqueeze(-1), 0)
        return instance_weights(self.proj(h), mode=self.mode, padding_mask=padding_mask)

    def extra_repr(self) -> str:
        """Options shown in ``repr()``."""
        return f"{self.in_features}, hidden_size={self.hidden_size}, mode={self.mode!r}"
