"""Checks of WIAN's arguments in ``nn.LSTM``'s layouts, with errors that name the argument."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from micacl_layers._validation import (
    check_device,
    check_finite,
    check_floating,
    check_unit_interval,
    describe,
)


def check_weight(
    weight: torch.Tensor,
    target_shape: tuple[int, ...],
    name: str,
    layout: str,
    *,
    given: torch.Tensor | None = None,
    per_instance: str = "",
    unbatched_dim: int | None = None,
) -> torch.Tensor:
    """``weight`` broadcast to ``target_shape``.

    Errors describe ``given`` (what the caller passed, before a trailing 1 or a batch
    dimension was added) and mention the ``per_instance`` layout. For an unbatched input,
    ``unbatched_dim`` is the batch dimension added to ``target_shape``: the error shows the
    shape without it, in the unbatched ``layout`` the caller passed.
    """
    given = weight if given is None else given
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"`{name}` must be a tensor or None, got {type(weight).__name__}.")
    if not weight.is_floating_point():
        raise TypeError(f"`{name}` must be floating point, got {describe(given)}.")
    check_finite(name, given if isinstance(given, torch.Tensor) else weight)
    try:
        return weight.broadcast_to(target_shape)
    except RuntimeError:
        shown, where = target_shape, layout
        if unbatched_dim is not None:
            shown = target_shape[:unbatched_dim] + target_shape[unbatched_dim + 1 :]
            where = f"unbatched {layout}"
        also = f" or of shape {per_instance} (one weight per instance)" if per_instance else ""
        raise ValueError(
            f"`{name}` must be broadcastable to {where}={shown}{also}, got {describe(given)}."
        ) from None


def check_dropout(dropout: object, num_layers: int) -> float:
    # The checks and the warning of nn.LSTM, with a message naming the argument.
    p = check_unit_interval("dropout", dropout)
    if p > 0 and num_layers == 1:
        warnings.warn(
            "dropout option adds dropout after all but last recurrent layer, so "
            f"non-zero dropout expects num_layers greater than 1, but got "
            f"dropout={dropout} and num_layers={num_layers}",
            UserWarning,
            stacklevel=3,
        )
    return p


def check_input(input: object, parameter: torch.Tensor, owner: str) -> torch.Tensor:
    """``input`` as a floating tensor on ``parameter``'s device, in ``parameter``'s dtype."""
    if isinstance(input, nn.utils.rnn.PackedSequence):  # (WIAN unpacks before this check)
        raise TypeError(
            f"`input` must be a tensor: {owner} takes one step, not a PackedSequence (as "
            "nn.LSTMCell); WIAN takes a PackedSequence."
        )
    x = check_floating("input", input)
    check_device("input", x, parameter.device, owner)
    dtype = parameter.dtype
    # Computed in the parameters' dtype, as autocast would cast it (nn.LSTM raises instead).
    return x if x.dtype == dtype else x.to(dtype)


def check_state(
    hx: object,
    shape: tuple[int, ...],
    unbatched: bool,
    unbatched_dim: int,
    layout: str,
    parameter: torch.Tensor,
    owner: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``hx`` as ``(h_0, c_0)`` of ``shape`` on ``parameter``'s device, in its dtype.

    ``hx`` is a tuple or list of two tensors.
    """
    dtype = parameter.dtype
    if (
        not isinstance(hx, (tuple, list))
        or len(hx) != 2
        or not all(isinstance(t, torch.Tensor) for t in hx)
    ):
        raise TypeError(
            f"`hx` must be a tuple (h_0, c_0) of two tensors or None, got {type(hx).__name__}."
        )
    out = []
    for name, t in (("hx[0]", hx[0]), ("hx[1]", hx[1])):
        t = check_floating(name, t)
        want = shape[:unbatched_dim] + shape[unbatched_dim + 1 :] if unbatched else shape
        if tuple(t.shape) != want:
            # (unbatched: the layout without B; "(H,)" as a tuple of one)
            unbatched_layout = layout.replace("B, ", "").replace("(H)", "(H,)")
            what, where = ("unbatched ", unbatched_layout) if unbatched else ("", layout)
            raise ValueError(f"`{name}` must have {what}shape {where}={want}, got {describe(t)}.")
        check_device(name, t, parameter.device, owner)
        t = t.unsqueeze(unbatched_dim) if unbatched else t
        out.append(t if t.dtype == dtype else t.to(dtype))
    return out[0], out[1]


def per_instance(weights: object, name: str, input_dim: int) -> torch.Tensor:
    """Weights with one dimension fewer than the input: one per instance, a trailing 1 added."""
    if not isinstance(weights, torch.Tensor):
        raise TypeError(f"`{name}` must be a tensor or None, got {type(weights).__name__}.")
    return weights.unsqueeze(-1) if weights.dim() == input_dim - 1 else weights
