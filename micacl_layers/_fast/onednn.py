"""Dense products through oneDNN on CPU, shared by the WIAN and MCCL fast paths (private).

Runs only with ``micacl_layers.config.set_fast_paths("on")``: the kernel is a private PyTorch
operator, so the default never calls it. On CPU in float32, PyTorch's ``nn.LSTM`` and convolutions
run on oneDNN, while ``torch.mm`` and ``F.linear`` run on the default BLAS. On many CPUs (the AMD
EPYC of our benchmarks among them) oneDNN's products are clearly faster for the small row counts of
a time loop and somewhat faster for large ones. These helpers call oneDNN's linear kernel where it
exists, is enabled (``torch.backends.mkldnn``) and the operands are CPU float32, and fall back to
the plain PyTorch product everywhere else (other devices and dtypes, builds without oneDNN). The
kernel is reached through ``torch.ops.mkldnn``, whose presence and the torch version (the releases
CI tests, ``_TESTED_TORCH``) are checked once at import: on another release, or if a release drops
the operator, the fallback runs and nothing else changes.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwad
import torch.nn.functional as F
from torch import nn

from micacl_layers import config

__all__: list[str] = []

# The torch releases (major, minor) whose private oneDNN operators CI has run these products on.
_TESTED_TORCH = ((2, 13), (2, 14))


def _torch_release() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


_HAS_ONEDNN_LINEAR = (
    _torch_release() in _TESTED_TORCH
    and torch.backends.mkldnn.is_available()
    and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
)


def onednn_usable(t: torch.Tensor) -> bool:
    """Whether products with ``t`` run through oneDNN's linear kernel (switch ``"on"`` only)."""
    # (oneDNN cannot describe a product with an empty operand: an empty batch falls back.)
    return (
        _HAS_ONEDNN_LINEAR
        and t.device.type == "cpu"
        and t.dtype == torch.float32
        and t.numel() > 0
        and bool(torch.backends.mkldnn.enabled)
        and config.enabled("onednn", t.device, t.dtype)
    )


def _onednn_operands(x: torch.Tensor, y: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether ``x @ y^T (+ bias)`` can run through oneDNN's linear kernel."""
    return onednn_usable(x) and onednn_usable(y) and (bias is None or bias.dtype == x.dtype)


def dual(*tensors: torch.Tensor | None) -> bool:
    """Whether any tensor carries a forward-mode AD tangent (the fast cores have no ``jvp``)."""
    return any(t is not None and fwad.unpack_dual(t).tangent is not None for t in tensors)


def differentiate_reference(*grads: torch.Tensor | None) -> bool:
    """Whether a kernel's backward, given ``grads``, should differentiate the plain formulation.

    For a double backward (``create_graph=True``: grad mode is on in the backward), under a
    ``torch.func`` transform, and for batched gradients (``torch.autograd.grad`` with
    ``is_grads_batched=True`` vmaps the backward), which the in-place backwards cannot write
    into their unbatched buffers.
    """
    return (
        torch.is_grad_enabled()
        or config._functorch_transform_active()
        or any(g is not None and _is_legacy_batched(g) for g in grads)
    )


def _is_legacy_batched(t: torch.Tensor) -> bool:
    # (is_grads_batched runs the backward under torch's older vmap, which no query reports.)
    check = getattr(torch._C._functorch, "is_legacy_batchedtensor", None)
    return check is not None and bool(check(t))


def mm_t(x: torch.Tensor, y: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ y^T (+ bias)`` for 2-D ``x`` ``(M, K)``, ``y`` ``(N, K)``; views are fine."""
    if _onednn_operands(x, y, bias):
        return torch.ops.mkldnn._linear_pointwise(x, y, bias, "none", [], "")
    return x @ y.t() if bias is None else torch.addmm(bias, x, y.t())


class Products:
    """``x[k] @ weights[k]^T (+ add[k])`` for every direction ``k``; each weight ``(N, K)``.

    Through oneDNN where :func:`onednn_usable`; weights may be transposed views (no copy). With
    ``pack_rows`` the weights are first reordered into oneDNN's blocked layout for products of
    that many rows, which pays off over a time loop. Elsewhere: batched matmuls.
    """

    def __init__(self, weights: list[torch.Tensor], pack_rows: int | None = None) -> None:
        self.onednn = onednn_usable(weights[0])
        if not self.onednn:
            self.weights_t = torch.stack(weights).transpose(1, 2)  # (D, K, N)
        elif pack_rows is not None:
            self.weights = [
                torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), pack_rows) for w in weights
            ]
        else:
            self.weights = weights

    def each(
        self, x: torch.Tensor, add: torch.Tensor | list[torch.Tensor] | None = None
    ) -> list[torch.Tensor]:
        """One ``(rows, N)`` product per direction; ``add[k]`` is ``(rows, N)`` or ``(N,)``."""
        if not self.onednn:
            if isinstance(add, list):
                add = torch.stack(add)
            return list(self(x, add).unbind(0))
        linear = torch.ops.mkldnn._linear_pointwise
        if add is None:
            return [linear(x[k], w, None, "none", [], "") for k, w in enumerate(self.weights)]
        if add[0].dim() == 1:
            return [linear(x[k], w, add[k], "none", [], "") for k, w in enumerate(self.weights)]
        return [linear.binary(x[k], add[k], w, None, "add") for k, w in enumerate(self.weights)]

    def summed(self, x: torch.Tensor) -> torch.Tensor:
        """``sum_k x[k] @ weights[k]^T`` as one ``(rows, N)`` tensor (no per-direction copy)."""
        if not self.onednn:
            return torch.bmm(x, self.weights_t).sum(dim=0)
        total = None
        for k, w in enumerate(self.weights):
            total = (
                torch.ops.mkldnn._linear_pointwise(x[k], w, None, "none", [], "")
                if total is None
                else torch.ops.mkldnn._linear_pointwise.binary(x[k], total, w, None, "add")
            )
        assert total is not None  # (there is at least one direction)
        return total

    def __call__(self, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        """All directions' products as one ``(D, rows, N)`` tensor."""
        if self.onednn:
            return torch.stack(self.each(x, add))
        if add is None:
            return torch.bmm(x, self.weights_t)
        return torch.baddbmm(add if add.dim() == 3 else add.unsqueeze(1), x, self.weights_t)


class _LinearFunction(torch.autograd.Function):
    """``F.linear`` on 2-D input, all three products through :func:`mm_t`.

    The forward, the input gradient and the weight gradient.
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return mm_t(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiable ops
            grad_x = grad @ weight if ctx.needs_input_grad[0] else None
            grad_w = grad.t() @ x if ctx.needs_input_grad[1] else None
        else:
            grad_x = mm_t(grad, weight.t()) if ctx.needs_input_grad[0] else None
            grad_w = mm_t(grad.t(), x.t()) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(dim=0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` (same values and gradients), faster on CPU in float32 for 2-D input.

    Falls back to ``F.linear`` for other shapes, devices and dtypes, under autocast (whose
    casts it leaves to ``F.linear``), under ``torch.compile`` and for forward-mode AD.
    """
    if (
        x.dim() == 2
        and _onednn_operands(x, weight, bias)
        and not torch.is_autocast_enabled(x.device.type)
        and not torch.compiler.is_compiling()
        and not dual(x, weight, bias)
    ):
        return _LinearFunction.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class FastLinear(nn.Linear):
    """``nn.Linear`` whose 2-D forward runs through :func:`linear`.

    Same parameters and ``state_dict`` as ``nn.Linear``; hooks run as usual.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return linear(input, self.weight, self.bias)
