"""Gathering a batch across processes with gradients, for contrastive losses under DDP.

A contrastive loss wants every sample of the global batch as a candidate. With
``torch.distributed`` each rank holds a slice; :func:`gather_with_grad` concatenates the slices
of all ranks (in rank order) and keeps the autograd graph, so every rank computes the *same*
loss as one process on the concatenated batch would.

Gradient scaling under DDP, made explicit: the backward of the gather **sums** over ranks the
gradients that each rank's (identical) loss sends to a slice, so rank ``r`` receives
``world_size x dL/d(slice_r)``. DDP then **averages** parameter gradients over ranks, dividing by
``world_size`` again. The two cancel: the optimizer sees exactly the gradient of the
single-process loss on the global batch, and the loss needs no ``x world_size`` correction.
Outside DDP (a plain ``all_reduce`` of gradients with ``SUM``), divide by ``world_size``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from micacl_layers._validation import check_tensor, describe

__all__ = ["gather_with_grad", "gather_without_grad", "is_distributed"]


def is_distributed() -> bool:
    """``True`` when a process group with more than one rank is initialised.

    Returns:
        ``False`` without ``torch.distributed``, without an initialised process group, or with
        a world size of 1.

    Example:
        >>> is_distributed()
        False
    """
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 (equal sizes); backward sums the gradients of every rank."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.world = dist.get_rank(), dist.get_world_size()
        ctx.size = tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(ctx.world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.size : (ctx.rank + 1) * ctx.size]


def _check_gatherable(tensor: object) -> torch.Tensor:
    tensor = check_tensor("tensor", tensor)
    if tensor.dim() == 0:
        raise ValueError(
            f"`tensor` must have shape (B_r, *) (rows to concatenate), got {describe(tensor)}."
        )
    return tensor


def _gather_sizes(tensor: torch.Tensor) -> list[int]:
    size = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s) for s in sizes]


def _pad_to(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    if tensor.shape[0] == rows:
        return tensor
    pad = tensor.new_zeros((rows - tensor.shape[0], *tensor.shape[1:]))
    return torch.cat([tensor, pad], dim=0)


def _unpad(gathered: torch.Tensor, sizes: list[int], rows: int) -> torch.Tensor:
    if all(s == rows for s in sizes):
        return gathered
    return torch.cat([gathered[i * rows : i * rows + s] for i, s in enumerate(sizes)], dim=0)


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, differentiably.

    Ranks may hold different batch sizes (they are padded for the collective and trimmed
    after). Without an initialised multi-rank process group this returns ``tensor`` unchanged.

    Args:
        tensor: This rank's slice.

    Returns:
        The concatenation over ranks, in rank order.

    Shape:
        - tensor: :math:`(B_r, *)`
        - Output: :math:`(\\sum_r B_r, *)`

    Example:
        >>> x = torch.randn(3, 4)
        >>> gather_with_grad(x) is x  # single process: a no-op
        True
    """
    tensor = _check_gatherable(tensor)
    if not is_distributed():
        return tensor
    sizes = _gather_sizes(tensor)
    rows = max(sizes)
    gathered = _GatherWithGrad.apply(_pad_to(tensor, rows))
    return _unpad(gathered, sizes, rows)


@torch.no_grad()
def gather_without_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (e.g. labels) from every rank along dim 0, without autograd.

    Args:
        tensor: This rank's slice.

    Returns:
        The concatenation over ranks, in rank order (``tensor`` itself when not distributed).

    Shape:
        - tensor: :math:`(B_r, *)`
        - Output: :math:`(\\sum_r B_r, *)`

    Example:
        >>> gather_without_grad(torch.tensor([1, 2])).tolist()
        [1, 2]
    """
    tensor = _check_gatherable(tensor)
    if not is_distributed():
        return tensor
    sizes = _gather_sizes(tensor)
    rows = max(sizes)
    padded = _pad_to(tensor, rows).contiguous()
    parts = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, padded)
    return _unpad(torch.cat(parts, dim=0), sizes, rows)
