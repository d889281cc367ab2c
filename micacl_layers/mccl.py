"""Multiscale Category-aware Contrastive Learning loss (MCCL), MICACL Eq. 7-12.

Each anchor is pulled towards the other samples of its class and pushed from the rest, at several
scales of the feature (adaptive average pooling then a learned projection, Eq. 8), with a
temperature set from the class distribution (Eq. 10), and weighted towards rare classes and hard
samples (Eq. 7). Numerics: similarities and log-sum-exp run in float32 (or wider) whatever the
input dtype; masked entries use the dtype's own ``finfo.min``, never ``inf``; an anchor without a
positive contributes an exact, graph-connected zero.

Speed and memory: each scale's contrastive term runs in :class:`_ContrastiveCore`, whose only
``(B, M)`` float buffer holds the exp-similarities shifted by the row maximum and becomes the
gradient in place in the backward: never the masked copies of a straightforward formulation.
Small buffers (up to ``_KEEP_ENTRIES``, 16 MB) are kept for the backward, one per scale; larger
ones are recomputed there, so one is alive at a time. The positive mask is built a block of rows
at a time; without a memory bank only the upper block triangle of the symmetric ``A A^T`` is
multiplied, and its backward is one product, ``(G + G^T) A``. A scale whose projection is a
plain linear layer at least twice as wide as its pooled input (scales 2 and 4 of the defaults:
``512 -> 1024``, ``256 -> 1024``) never forms the ``(B, P)`` embeddings when no memory bank
needs them: :class:`_ProjectedContrastiveCore` gets the same similarities from ``x' M x'^T``
with the small ``M = W'^T W'``, forward and backward, with products of inner size ``D / s``
instead of ``P``. The straightforward formulation (:func:`_contrastive_reference`) runs under
``torch.compile``, for a temperature that needs a gradient, and for double backward; both agree
to float32 rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from micacl_layers._linear import FastLinear, mm_t
from micacl_layers._validation import (
    check_class_counts,
    check_floating,
    check_logits_targets,
    check_ndim,
    check_positive_int,
    check_same_batch,
    describe,
)
from micacl_layers.distributed import gather_with_grad, gather_without_grad, is_distributed
from micacl_layers.memory import ContrastMemory

__all__ = [
    "MCCLOutput",
    "MCCLoss",
    "MultiscaleCategoryAwareContrastiveLoss",
    "adaptive_temperature",
    "category_aware_weights",
    "multiscale_category_aware_contrastive_loss",
    "pool_features",
    "supervised_contrastive_per_anchor",
]

Form = Literal["ratio", "log"]
TemperatureMode = Literal["class_mean", "batch_mean", "fixed"]
Reduction = Literal["mean", "sum", "none"]
_FORMS = ("ratio", "log")
_TEMPERATURES = ("class_mean", "batch_mean", "fixed")
_REDUCTIONS = ("mean", "sum", "none")


class MCCLOutput(NamedTuple):
    """Breakdown returned with ``return_breakdown=True``.

    Attributes:
        loss: The reduced loss (as without the breakdown).
        per_scale: The loss of each scale, ``(S,)``, reduced like ``loss``
            (``(S, B)`` for ``reduction="none"``).
        weights: Category-aware weights :math:`W_c(i)` of the anchors, ``(B,)``.
        temperature: The temperature :math:`\\tau` used (a scalar tensor).
        has_positive: Which anchors had at least one positive, ``(B,)`` bool.
    """

    loss: torch.Tensor
    per_scale: torch.Tensor
    weights: torch.Tensor
    temperature: torch.Tensor
    has_positive: torch.Tensor


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    # Similarities, softmax and log-sum-exp never run below float32.
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _norm_eps(dtype: torch.dtype) -> float:
    # sqrt(tiny) keeps cosine defined for feature norms down to ~1e-19 in float32.
    return torch.finfo(dtype).tiny ** 0.5


def category_aware_weights(
    logits: torch.Tensor,
    targets: torch.Tensor,
    class_counts: torch.Tensor,
    *,
    class_weighting: bool = True,
    difficulty: bool = True,
    detach_difficulty: bool = True,
) -> torch.Tensor:
    r"""Category-aware anchor weights, Eq. 7: :math:`W_c(i) \propto \frac{1}{n_{y_i}} (1 - p_i)`.

    The class factor is normalised so that its mean over the ``K`` classes is 1,
    :math:`\frac{1/n_k}{\frac{1}{K}\sum_j 1/n_j}`: the paper's raw reciprocals (about 1e-4 on DFEW)
    would make the loss, and its gradients, vanish next to cross-entropy. The difficulty factor
    :math:`1 - p_i` (:math:`p_i` the predicted probability of the true class) is detached by
    default: left attached, minimising the (negative) ratio form would push :math:`p_i` *down*,
    working against the classifier.

    Args:
        logits: Classifier logits :math:`y_p`.
        targets: Class indices.
        class_counts: Samples per class :math:`n_c`, ``(K,)``; zeros are treated as 1.
        class_weighting: Use the class factor (``False``: 1 for every class).
        difficulty: Use the difficulty factor (``False``: 1 for every sample).
        detach_difficulty: Stop gradients through the difficulty factor.

    Returns:
        Weights in float32 (float64 for float64 logits).

    Shape:
        - logits: :math:`(B, K)`
        - targets: :math:`(B,)`
        - Output: :math:`(B,)`

    Example:
        >>> w = category_aware_weights(torch.zeros(3, 2), torch.tensor([0, 0, 1]),
        ...                            torch.tensor([30.0, 10.0]))
        >>> w
        tensor([0.2500, 0.2500, 0.7500])
    """
    dtype = _compute_dtype(logits)
    weights = torch.ones(targets.shape[0], dtype=dtype, device=logits.device)
    if class_weighting:
        inv = 1.0 / class_counts.to(device=logits.device, dtype=dtype).clamp_min(1.0)
        weights = weights * (inv / inv.mean())[targets]
    if difficulty:
        p_true = logits.to(dtype).softmax(dim=-1).gather(1, targets[:, None]).squeeze(1)
        hard = 1.0 - p_true
        weights = weights * (hard.detach() if detach_difficulty else hard)
    return weights


def adaptive_temperature(
    class_counts: torch.Tensor,
    tau0: float,
    *,
    mode: TemperatureMode = "class_mean",
    targets: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Temperature of Eq. 10, :math:`\tau = \tau_0 \frac{1}{K}\sum_k (1 + n_k / \max n)`.

    Modes: ``"class_mean"`` is Eq. 10 (a mean over the ``K`` classes, independent of the batch);
    ``"batch_mean"`` is the public code's variant, a mean over the batch's targets (so
    :math:`\tau` changes with the batch composition); ``"fixed"`` returns :math:`\tau_0`.
    :math:`\tau` lies in :math:`[\tau_0, 2\tau_0]`.

    Args:
        class_counts: Samples per class, ``(K,)``.
        tau0: Base temperature :math:`\tau_0 > 0`.
        mode: ``"class_mean"``, ``"batch_mean"`` or ``"fixed"``.
        targets: The batch's class indices, needed for ``"batch_mean"``.

    Returns:
        A float64 scalar tensor.

    Shape:
        - class_counts: :math:`(K,)`
        - targets: :math:`(B,)`
        - Output: :math:`()`

    Example:
        >>> adaptive_temperature(torch.tensor([100.0, 50.0]), 0.1)
        tensor(0.1750, dtype=torch.float64)
    """
    if mode not in _TEMPERATURES:
        raise ValueError(f"`temperature` must be one of {_TEMPERATURES}, got {mode!r}.")
    if not tau0 > 0:
        raise ValueError(f"`tau0` must be > 0, got {tau0!r}.")
    counts = class_counts.to(torch.float64)
    if mode == "fixed":
        return torch.tensor(float(tau0), dtype=torch.float64, device=counts.device)
    ratio = counts / counts.max().clamp_min(1.0)
    if mode == "batch_mean":
        if targets is None:
            raise ValueError("`targets` is required for temperature='batch_mean'.")
        ratio = ratio[targets.to(counts.device)]
    return tau0 * (1.0 + ratio).mean()


def pool_features(features: torch.Tensor, scale: int) -> torch.Tensor:
    r"""Adaptive average pooling over the feature axis to ``D // scale`` values (Eq. 8's Pool_s).

    Args:
        features: Input features.
        scale: Pooling factor ``s`` (1 returns the input).

    Returns:
        Pooled features.

    Shape:
        - features: :math:`(B, D)`
        - Output: :math:`(B, \lfloor D / s \rfloor)`

    Example:
        >>> pool_features(torch.arange(8.0)[None], 4)
        tensor([[1.5000, 5.5000]])
    """
    if scale == 1:
        return features
    batch, dim = features.shape
    if dim % scale == 0:
        # Same values as adaptive_avg_pool1d when the bins are equal, without its overhead.
        return features.view(batch, dim // scale, scale).mean(dim=-1)
    return F.adaptive_avg_pool1d(features.unsqueeze(1), dim // scale).squeeze(1)


def supervised_contrastive_per_anchor(
    z: torch.Tensor,
    targets: torch.Tensor,
    temperature: torch.Tensor | float,
    *,
    form: Form = "ratio",
    exclude_self: bool = True,
    memory_z: torch.Tensor | None = None,
    memory_targets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per-anchor supervised contrastive term at one scale (Eq. 9 and 11).

    With cosine similarities :math:`S_{ij} = \cos(z_i, z_j) / \tau` (Eq. 9), the positives
    :math:`P(i)` (same class) and the candidates :math:`A(i)` (all, minus ``i`` itself if
    ``exclude_self``):

    - ``"ratio"`` (Eq. 11 as printed): :math:`\ell_i = -\sum_{j \in P(i)} e^{S_{ij}} /
      \sum_{k \in A(i)} e^{S_{ik}}`, computed as :math:`-\exp(\mathrm{lse}_{P} - \mathrm{lse}_{A})`;
    - ``"log"`` (SupCon): :math:`\ell_i = -\frac{1}{|P(i)|}\sum_{j \in P(i)}
      (S_{ij} - \mathrm{lse}_{k \in A(i)} S_{ik})`.

    Anchors without a positive get an exact 0 that stays connected to the graph (an empty
    batch gives empty outputs).

    Args:
        z: Anchor embeddings (need not be normalised).
        targets: Anchor class indices.
        temperature: :math:`\tau`.
        form: ``"ratio"`` or ``"log"``.
        exclude_self: Drop :math:`j = i` from positives and candidates.
        memory_z: Extra candidates (e.g. a cross-batch memory), never anchors.
        memory_targets: Their class indices.

    Returns:
        ``(loss, has_positive)``: per-anchor losses in float32 (float64 for float64 input) and a
        bool mask of anchors with at least one positive.

    Shape:
        - z: :math:`(B, P)`
        - targets: :math:`(B,)`
        - memory_z: :math:`(M, P)`
        - Output: :math:`(B,)`, :math:`(B,)`

    Example:
        >>> z = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])
        >>> loss, has_pos = supervised_contrastive_per_anchor(z, torch.tensor([0, 0, 1]), 0.1)
        >>> has_pos.tolist()
        [True, True, False]
    """
    # Under torch.autocast the matmul below would run in float16/bfloat16 again: the
    # similarities and their log-sum-exp must stay in float32, so autocast is off here.
    with torch.autocast(z.device.type, enabled=False):
        return _contrastive_per_anchor(z, targets, temperature, form=form,
                                       exclude_self=exclude_self, memory_z=memory_z,
                                       memory_targets=memory_targets)


def _contrastive_per_anchor(z, targets, temperature, *, form, exclude_self, memory_z,
                            memory_targets):
    if form not in _FORMS:
        raise ValueError(f"`form` must be one of {_FORMS}, got {form!r}.")
    dtype = _compute_dtype(z)
    eps = _norm_eps(dtype)
    z = z.to(dtype)
    mem, cand_targets = None, targets
    if memory_z is not None:
        mem = memory_z.to(device=z.device, dtype=dtype)
        cand_targets = torch.cat([targets, memory_targets.to(targets.device)], dim=0)
    temperature = torch.as_tensor(temperature, dtype=dtype, device=z.device)
    if z.shape[0] == 0:  # no anchors: nothing to contrast, an empty loss still on the graph
        return z.sum(dim=1), targets.new_zeros(0, dtype=torch.bool)
    if torch.jit.is_scripting() or torch.compiler.is_compiling() or temperature.requires_grad:
        # torch.compile fuses the reference itself; a learned temperature needs its graph.
        return _contrastive_reference(z, mem, targets, cand_targets, temperature, form,
                                      exclude_self, eps)
    loss, has_positive = _ContrastiveCore.apply(z, mem, targets, cand_targets, temperature,
                                                form, exclude_self, eps)
    return loss, has_positive


def _contrastive_reference(
    z: torch.Tensor,
    mem: torch.Tensor | None,
    targets: torch.Tensor,
    cand_targets: torch.Tensor,
    temperature: torch.Tensor,
    form: str,
    exclude_self: bool,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The straightforward formulation (masked copies of the similarity matrix, autograd).

    Used under ``torch.compile``, for a temperature that needs a gradient, and for double
    backward; :class:`_ContrastiveCore` computes the same values with one ``(B, M)`` buffer.
    """
    anchors = F.normalize(z, dim=-1, eps=eps)
    cands = anchors
    if mem is not None:
        cands = torch.cat([anchors, F.normalize(mem, dim=-1, eps=eps)], dim=0)
    sim = (anchors @ cands.t()) / temperature
    batch = anchors.shape[0]
    positive = targets[:, None] == cand_targets[None, :]
    fill = torch.finfo(sim.dtype).min
    if exclude_self:
        is_self = torch.zeros_like(positive)
        is_self[:, :batch] = torch.eye(batch, dtype=torch.bool, device=sim.device)
        positive = positive & ~is_self
        lse_all = sim.masked_fill(is_self, fill).logsumexp(dim=1)
    else:
        lse_all = sim.logsumexp(dim=1)
    num_pos = positive.sum(dim=1)
    has_positive = num_pos > 0
    if form == "ratio":
        lse_pos = sim.masked_fill(~positive, fill).logsumexp(dim=1)
        loss = -torch.exp(lse_pos - lse_all)
    else:
        mean_pos = (sim * positive).sum(dim=1) / num_pos.clamp_min(1)
        loss = lse_all - mean_pos
    return torch.where(has_positive, loss, torch.zeros_like(loss)), has_positive


# Element-wise work on the (B, M) similarities runs over blocks of rows of about this many
# entries, so that masks and temporaries stay small next to the one full-size buffer.
_BLOCK_ENTRIES = 1 << 20
# Up to this many entries (16 MB in float32, e.g. B = M = 2048) the forward's exp-similarities
# are kept for the backward, one buffer per scale, which saves recomputing a product; above it
# they are recomputed, so that a single (B, M) buffer is ever alive.
_KEEP_ENTRIES = 1 << 22
# Rows per strip of the symmetric A A^T (only the upper block triangle is computed).
_GRAM_BLOCK = 256

def _projected_gram(q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``q @ x^T`` for a product known to be symmetric: the upper block triangle, mirrored."""
    n = x.shape[0]
    block = _GRAM_BLOCK
    if n <= block:
        return mm_t(q, x)
    out = x.new_empty(n, n)
    for i in range(0, n, block):
        rows = slice(i, min(i + block, n))
        strip = mm_t(q[rows], x[i:])
        out[rows, i:] = strip
        out[i + block:, rows] = strip[:, block:].t()
    return out


def _gram(a: torch.Tensor) -> torch.Tensor:
    """``a @ a^T``: strips of the upper block triangle, mirrored.

    About half the multiply-adds of a full product for large ``B``.
    """
    return _projected_gram(a, a)


def _similarities(anchors: torch.Tensor, mem: torch.Tensor | None, temperature: torch.Tensor,
                  exclude_self: bool) -> torch.Tensor:
    """``S = A C^T / tau`` with ``C = [A; mem]``, self entries set to ``finfo.min``."""
    if mem is None:
        sim = _gram(anchors)
    else:
        sim = mm_t(anchors, torch.cat([anchors, mem], dim=0))
    sim.div_(temperature)
    if exclude_self:
        sim[:, :anchors.shape[0]].diagonal().fill_(torch.finfo(sim.dtype).min)
    return sim


def _row_blocks(rows: int, cols: int) -> list[tuple[int, int]]:
    step = max(1, _BLOCK_ENTRIES // max(cols, 1))
    return [(start, min(start + step, rows)) for start in range(0, rows, step)]


def _positive_block(targets: torch.Tensor, cand_targets: torch.Tensor, start: int, stop: int,
                    exclude_self: bool) -> torch.Tensor:
    """Rows ``start:stop`` of the positive mask ``P`` (same class, minus self)."""
    mask = targets[start:stop, None] == cand_targets[None, :]
    if exclude_self:
        mask[:, start:stop].diagonal().fill_(False)
    return mask


def _positive_counts(targets: torch.Tensor, cand_targets: torch.Tensor,
                     exclude_self: bool) -> torch.Tensor:
    """``|P(i)|`` without a ``(B, M)`` mask: how often each anchor's class occurs."""
    ordered = cand_targets.sort().values
    counts = (torch.searchsorted(ordered, targets, right=True)
              - torch.searchsorted(ordered, targets))
    return counts - 1 if exclude_self else counts


def _add_transpose_(m: torch.Tensor, block: int = 512) -> torch.Tensor:
    """``m += m.T`` in place for a square matrix, one block pair at a time."""
    n = m.shape[0]
    for i in range(0, n, block):
        rows = slice(i, min(i + block, n))
        diag = m[rows, rows]
        diag.copy_(diag + diag.t())
        for j in range(i + block, n, block):
            cols = slice(j, min(j + block, n))
            pair = m[rows, cols] + m[cols, rows].t()
            m[rows, cols] = pair
            m[cols, rows] = pair.t()
    return m


def _normalize(z: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``F.normalize(z, dim=-1, eps=eps)`` (same ops) and the clamped norms ``(B, 1)``."""
    denom = torch.linalg.vector_norm(z, dim=-1, keepdim=True).clamp_min(eps)
    return z / denom, denom


def _normalize_backward(grad: torch.Tensor, unit: torch.Tensor, denom: torch.Tensor,
                        eps: float) -> torch.Tensor:
    """Gradient through :func:`_normalize`, in place of ``grad``: ``(g - u (u . g)) / |z|``.

    Where the norm was clamped to ``eps`` the map ``z / eps`` is linear: ``g / eps``.
    """
    radial = (unit * grad).sum(dim=-1, keepdim=True)
    radial.masked_fill_(denom <= eps, 0.0)
    return grad.sub_(unit * radial).div_(denom)


def _loss_from_similarities(ctx, sim, targets, cand_targets, form, exclude_self, num_pos):
    """Per-anchor loss from the scaled similarities ``sim`` ``(B, M)`` (self entries masked).

    Turns ``sim`` into ``E = exp(S - max)`` in place, a block of rows at a time, and keeps it on
    ``ctx`` for the backward when it is small enough. Returns ``(loss, has_positive)`` and the
    row statistics the backward needs.
    """
    batch = sim.shape[0]
    has_positive = num_pos > 0
    maxes = sim.amax(dim=1)
    total = sim.new_empty(batch)  # sum over candidates of exp(S - max)
    pos = sim.new_empty(batch)  # ratio: sum over positives of exp(S - max); log: of S
    for start, stop in _row_blocks(batch, sim.shape[1]):
        block = sim[start:stop]
        mask = _positive_block(targets, cand_targets, start, stop, exclude_self)
        if form == "log":
            torch.sum(torch.where(mask, block, 0), dim=1, out=pos[start:stop])
        block.sub_(maxes[start:stop, None]).exp_()
        torch.sum(block, dim=1, out=total[start:stop])
        if form == "ratio":
            torch.sum(torch.where(mask, block, 0), dim=1, out=pos[start:stop])
    keep = any(ctx.needs_input_grad[:3]) and sim.numel() <= _KEEP_ENTRIES
    ctx.exp_sim = sim if keep else None
    if form == "ratio":
        share = pos / total  # = exp(lse_P - lse_A)
        loss = -share
        aux = share
    else:
        aux = num_pos.clamp_min(1).to(pos.dtype)
        loss = total.log() + maxes - pos / aux
    loss = torch.where(has_positive, loss, torch.zeros_like(loss))
    ctx.form, ctx.exclude_self = form, exclude_self
    ctx.mark_non_differentiable(has_positive)
    return loss, has_positive, (maxes, total, aux)


def _similarity_grad(ctx, grad_loss, recompute, targets, cand_targets, temperature, maxes,
                     total, aux, has_positive):
    """``dL/dS`` ``(B, M)`` for ``S = A C^T``, the ``1 / tau`` folded in.

    Written into the buffer of ``exp(S / tau - max)`` that the forward kept (or that
    ``recompute()`` rebuilds).
    """
    batch = maxes.shape[0]
    # d loss_i / d S_ij:
    #   ratio: E_ij / total_i * (r_i - [j in P(i)]),  log: E_ij / total_i - [j in P(i)] / |P(i)|
    grad_loss = torch.where(has_positive, grad_loss, torch.zeros_like(grad_loss))
    scale = grad_loss / (total * temperature)
    if ctx.form == "ratio":
        on_pos, off_pos = scale * (aux - 1), scale * aux
    else:
        on_pos = grad_loss / (aux * temperature)
    grad, ctx.exp_sim = ctx.exp_sim, None  # E from the forward, consumed here
    fresh = grad is None
    if fresh:
        grad = recompute()
    for start, stop in _row_blocks(batch, grad.shape[1]):
        block = grad[start:stop]
        mask = _positive_block(targets, cand_targets, start, stop, ctx.exclude_self)
        if fresh:
            block.sub_(maxes[start:stop, None]).exp_()
        if ctx.form == "ratio":
            block.mul_(torch.where(mask, on_pos[start:stop, None], off_pos[start:stop, None]))
        else:
            block.mul_(scale[start:stop, None])
            block.sub_(torch.where(mask, on_pos[start:stop, None], 0))
    return grad


class _ContrastiveCore(torch.autograd.Function):
    """Per-anchor supervised contrastive loss with one ``(B, M)`` buffer alive at a time.

    Takes the raw embeddings ``z`` (and ``mem``) and normalises them itself. Forward: ``S = A
    C^T / tau`` (self masked; without a memory bank only the upper block triangle of the
    symmetric ``A A^T`` is multiplied), the row maxima, then ``E = exp(S - max)`` in place and
    per-row sums over all candidates and over the positives (the positive mask is built a block
    of rows at a time from the labels, never as a full-size float buffer): the ratio form is
    ``-sum_P E / sum_A E`` and the log form ``log sum_A E + max - mean_P S``, the same values as
    the masked log-sum-exps of :func:`_contrastive_reference`. The backward turns ``E`` into
    ``dL/dS`` in place and, without a memory bank, uses ``dL/dA = (G + G^T) A`` (one product
    instead of two). ``E`` is kept for the backward only up to ``_KEEP_ENTRIES`` entries (and
    handed over, not saved: a second backward with ``retain_graph`` recomputes it); above that
    the backward recomputes it, so that one ``(B, M)`` buffer is alive at a time.
    """

    @staticmethod
    def forward(ctx, z, mem, targets, cand_targets, temperature, form,  # type: ignore[override]
                exclude_self, eps):
        anchors, denom = _normalize(z, eps)
        mem_unit = mem_denom = None
        if mem is not None:
            mem_unit, mem_denom = _normalize(mem, eps)
        num_pos = _positive_counts(targets, cand_targets, exclude_self)
        sim = _similarities(anchors, mem_unit, temperature, exclude_self)
        loss, has_positive, stats = _loss_from_similarities(ctx, sim, targets, cand_targets,
                                                            form, exclude_self, num_pos)
        ctx.eps = eps
        ctx.save_for_backward(z, mem, anchors, denom, mem_unit, mem_denom, targets,
                              cand_targets, temperature, *stats, has_positive)
        return loss, has_positive

    @staticmethod
    def backward(ctx, grad_loss, _grad_has_positive):  # type: ignore[override]
        (z, mem, anchors, denom, mem_unit, mem_denom, targets, cand_targets, temperature,
         maxes, total, aux, has_positive) = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph=True (double backward): differentiate the reference formulation.
            with torch.enable_grad():
                loss, _ = _contrastive_reference(z, mem, targets, cand_targets, temperature,
                                                 ctx.form, ctx.exclude_self, ctx.eps)
            inputs = [t for t in (z, mem) if t is not None and t.requires_grad]
            found = iter(torch.autograd.grad(loss, inputs, grad_loss, create_graph=True,
                                             allow_unused=True))
            return (next(found) if z.requires_grad else None,
                    next(found) if mem is not None and mem.requires_grad else None,
                    None, None, None, None, None, None)
        with torch.autocast(z.device.type, enabled=False):
            grad = _similarity_grad(
                ctx, grad_loss,
                lambda: _similarities(anchors, mem_unit, temperature, ctx.exclude_self),
                targets, cand_targets, temperature, maxes, total, aux, has_positive)
            grad_anchors, grad_mem = _ContrastiveCore._products(ctx, grad, anchors, mem_unit)
        grad_z = grad_m = None
        if grad_anchors is not None:
            grad_z = _normalize_backward(grad_anchors, anchors, denom, ctx.eps)
        if grad_mem is not None:
            grad_m = _normalize_backward(grad_mem, mem_unit, mem_denom, ctx.eps)
        return grad_z, grad_m, None, None, None, None, None, None

    @staticmethod
    def _products(ctx, grad, anchors, mem):
        batch = anchors.shape[0]
        need_anchors, need_mem = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_anchors = grad_mem = None
        if mem is None:
            if need_anchors:
                grad_anchors = mm_t(_add_transpose_(grad), anchors.t())
        else:
            cands = torch.cat([anchors, mem], dim=0)
            grad_cands = mm_t(grad.t(), anchors.t())
            if need_anchors:
                grad_anchors = mm_t(grad, cands.t()).add_(grad_cands[:batch])
            if need_mem:
                grad_mem = grad_cands[batch:]
        return grad_anchors, grad_mem


class _ProjectedContrastiveCore(torch.autograd.Function):
    """:class:`_ContrastiveCore` of ``z = x W^T + b`` without forming ``z``.

    For a linear projection and no memory bank.

    With ``x' = [x, 1]`` and ``W' = [W, b]``, ``z z^T = x' M x'^T`` for the small
    ``M = W'^T W'`` (``(d + 1) x (d + 1)``), and ``|z_i|^2`` is its diagonal. When ``d`` is well
    below the projection size ``P`` (MCCL's coarser scales: ``d = D / s``) this replaces the
    ``B x P`` projection and the ``B x B x P`` similarity product by products of inner size
    ``d``, forward and backward: ``dL/dz = H z`` for a symmetric ``B x B`` matrix ``H`` built
    from ``dL/dS`` and the norms, so ``dL/dx' = (H x') M`` and ``dL/dW' = W' (x'^T H x')``.
    Same values as projecting and calling :class:`_ContrastiveCore`, to float32 rounding.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, targets, temperature, form,  # type: ignore[override]
                exclude_self, eps):
        if bias is None:
            xa, wa = x, weight
        else:
            xa = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)
            wa = torch.cat([weight, bias.unsqueeze(1)], dim=1)
        gram = mm_t(wa.t(), wa.t())  # M = W'^T W'
        q = xa @ gram
        # |z_i| from x'_i M x'_i; rounding can take an exact zero slightly below 0.
        denom = (q * xa).sum(dim=1).clamp_min(0).sqrt().clamp_min(eps)
        num_pos = _positive_counts(targets, targets, exclude_self)
        sim = _ProjectedContrastiveCore._similarities(q, xa, denom, temperature, exclude_self)
        loss, has_positive, stats = _loss_from_similarities(ctx, sim, targets, targets, form,
                                                            exclude_self, num_pos)
        ctx.eps, ctx.has_bias = eps, bias is not None
        ctx.save_for_backward(x, weight, bias, xa, wa, gram, q, denom, targets, temperature,
                              *stats, has_positive)
        return loss, has_positive

    @staticmethod
    def _similarities(q, xa, denom, temperature, exclude_self):
        sim = _projected_gram(q, xa)
        inv = denom.reciprocal()
        sim.mul_(inv[:, None]).mul_(inv[None, :]).div_(temperature)
        if exclude_self:
            sim.diagonal().fill_(torch.finfo(sim.dtype).min)
        return sim

    @staticmethod
    def backward(ctx, grad_loss, _grad_has_positive):  # type: ignore[override]
        (x, weight, bias, xa, wa, gram, q, denom, targets, temperature, maxes, total, aux,
         has_positive) = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph=True (double backward): differentiate the reference formulation.
            inputs = [t for t in (x, weight, bias) if t is not None and t.requires_grad]
            with torch.enable_grad():
                z = F.linear(x, weight, bias)
                loss, _ = _contrastive_reference(z, None, targets, targets, temperature,
                                                 ctx.form, ctx.exclude_self, ctx.eps)
            found = iter(torch.autograd.grad(loss, inputs, grad_loss, create_graph=True,
                                             allow_unused=True))
            grads = [next(found) if t is not None and t.requires_grad else None
                     for t in (x, weight, bias)]
            return (*grads, None, None, None, None, None)
        with torch.autocast(x.device.type, enabled=False):
            grad = _similarity_grad(
                ctx, grad_loss,
                lambda: _ProjectedContrastiveCore._similarities(q, xa, denom, temperature,
                                                                ctx.exclude_self),
                targets, targets, temperature, maxes, total, aux, has_positive)
            # dL/dA = G_s A with G_s = G + G^T and A = z / |z|; through the normalisation,
            # dL/dz = H z with H = N^-1 G_s N^-1 - diag(r / |z|^2), N = diag(|z|) and
            # r_i = A_i . (G_s A)_i (zero where the norm was clamped, as there z / eps is
            # linear). With u = G_s N^-1 x' (so that (G_s A)_i = u_i W'^T / |z_i|):
            # r_i = (q_i . u_i) / |z_i|, and H x' = u / |z| - (r / |z|^2) x'.
            inv = denom.reciprocal()
            u = mm_t(_add_transpose_(grad), (xa * inv[:, None]).t())
            del grad
            radial = (q * u).sum(dim=1).mul_(inv)
            radial.masked_fill_(denom <= ctx.eps, 0.0)
            hx = u.mul_(inv[:, None]).sub_(xa * (radial * inv * inv)[:, None])
        needs = ctx.needs_input_grad
        grad_x = grad_w = grad_b = None
        if needs[0]:
            grad_x = (hx @ gram)[:, :x.shape[1]]
        if needs[1] or needs[2]:
            grad_wa = wa @ mm_t(xa.t(), hx.t())  # W' (x'^T H x')
            grad_w = grad_wa[:, :x.shape[1]] if needs[1] else None
            grad_b = grad_wa[:, -1] if ctx.has_bias and needs[2] else None
        return grad_x, grad_w, grad_b, None, None, None, None, None


def _projected_path_pays(projection: object, x: torch.Tensor, tau: torch.Tensor) -> bool:
    """Whether :class:`_ProjectedContrastiveCore` applies to ``projection(x)`` and saves work.

    Only for exactly ``nn.Linear`` / :class:`~micacl_layers._linear.FastLinear` without hooks
    of its own (whose output would be bypassed), outside autocast (where the projection itself
    would run in half precision), ``torch.compile`` and learned temperatures, and when the
    input is at most half as wide as the output (below that it costs more than it saves).
    """
    if type(projection) not in (nn.Linear, FastLinear):
        return False
    if projection._forward_hooks or projection._forward_pre_hooks:
        return False
    if (torch.jit.is_scripting() or torch.compiler.is_compiling()
            or torch.is_autocast_enabled(x.device.type) or tau.requires_grad):
        return False
    if not (x.is_floating_point() and x.dtype == projection.weight.dtype):
        return False
    if x.shape[0] == 0:  # nothing to save; the general path returns the empty loss
        return False
    return 2 * (x.shape[1] + 1) <= projection.out_features


def _projected_contrastive(x, projection, targets, temperature, form, exclude_self):
    """:func:`supervised_contrastive_per_anchor` of ``projection(x)`` without forming it."""
    dtype = _compute_dtype(x)
    eps = _norm_eps(dtype)
    weight = projection.weight.to(dtype)
    bias = None if projection.bias is None else projection.bias.to(dtype)
    temperature = torch.as_tensor(temperature, dtype=dtype, device=x.device)
    return _ProjectedContrastiveCore.apply(x.to(dtype), weight, bias, targets, temperature,
                                           form, exclude_self, eps)


def _reduce(per_anchor: torch.Tensor, has_positive: torch.Tensor, reduction: str
            ) -> torch.Tensor:
    if reduction == "none":
        return per_anchor
    total = per_anchor.sum(dim=-1)
    if reduction == "sum":
        return total
    # Mean over anchors that have a positive: anchors without one carry no signal, and
    # dividing by B would make the loss scale with how many of them a batch happened to hold.
    return total / has_positive.sum().clamp_min(1)


def _check_scales(scales: object, feature_dim: int) -> tuple[int, ...]:
    try:
        scales = tuple(scales)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"`scales` must be a sequence of ints, got {scales!r}.") from None
    if not scales or any(isinstance(s, bool) or not isinstance(s, int) or s < 1
                         or s > feature_dim for s in scales):
        raise ValueError(
            f"`scales` must be a non-empty sequence of ints in [1, feature_dim={feature_dim}], "
            f"got {scales!r}."
        )
    return scales


def _check_options(form: str, temperature: str, reduction: str, tau0: float) -> None:
    if form not in _FORMS:
        raise ValueError(f"`form` must be one of {_FORMS}, got {form!r}.")
    if temperature not in _TEMPERATURES:
        raise ValueError(f"`temperature` must be one of {_TEMPERATURES}, got {temperature!r}.")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {_REDUCTIONS}, got {reduction!r}.")
    if not (isinstance(tau0, (int, float)) and tau0 > 0):
        raise ValueError(f"`tau0` must be a positive float, got {tau0!r}.")


def multiscale_category_aware_contrastive_loss(
    features: torch.Tensor,
    logits: torch.Tensor,
    targets: torch.Tensor,
    class_counts: torch.Tensor | Sequence[float],
    *,
    scales: Sequence[int] = (1, 2, 4),
    projections: Sequence[Callable[[torch.Tensor], torch.Tensor]] | None = None,
    tau0: float = 0.07,
    temperature: TemperatureMode = "class_mean",
    form: Form = "ratio",
    exclude_self: bool = True,
    class_weighting: bool = True,
    difficulty: bool = True,
    detach_difficulty: bool = True,
    reduction: Reduction = "mean",
    return_breakdown: bool = False,
    memory: tuple[Sequence[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor | MCCLOutput:
    r"""Multiscale category-aware contrastive loss, Eq. 7-12 (functional form of :class:`MCCLoss`).

    .. math::
        \mathcal{L}_{MC} = \frac{1}{|S|}\sum_{s} \frac{1}{|\mathcal{A}|}
        \sum_{i \in \mathcal{A}} W_c(i)\, \ell_i^s, \qquad
        X'_s = \mathrm{Proj}_s(\mathrm{Pool}_s(X'))

    where :math:`\ell_i^s` is :func:`supervised_contrastive_per_anchor` on :math:`X'_s`,
    :math:`W_c` is :func:`category_aware_weights`, :math:`\tau` is :func:`adaptive_temperature`,
    and :math:`\mathcal{A}` are the anchors with at least one positive.

    Args:
        features: Clip features :math:`X'`.
        logits: Classifier logits :math:`y_p` (for the difficulty factor of Eq. 7).
        targets: Class indices (int64).
        class_counts: Samples per class :math:`n_c`, ``(K,)``, all > 0.
        scales: Pooling factors ``s``; each gives ``D // s`` pooled features.
        projections: One callable per scale (e.g. ``nn.Linear(D // s, P)``); ``None`` means
            identity at every scale.
        tau0: Base temperature :math:`\tau_0`.
        temperature: ``"class_mean"`` (Eq. 10), ``"batch_mean"`` (public code) or ``"fixed"``.
        form: ``"ratio"`` (Eq. 11 as printed) or ``"log"`` (SupCon).
        exclude_self: Exclude each anchor from its own positives and denominator.
        class_weighting: Use the class factor of Eq. 7.
        difficulty: Use the difficulty factor of Eq. 7.
        detach_difficulty: Stop gradients through the difficulty factor.
        reduction: ``"mean"`` (over anchors with positives), ``"sum"`` or ``"none"``.
        return_breakdown: Return an :class:`MCCLOutput` instead of the loss alone.
        memory: Extra contrast candidates ``(embeddings, targets)``: one ``(M, P_s)`` tensor of
            already-projected embeddings per scale and their ``(M,)`` labels (e.g. a
            :class:`~micacl_layers.memory.ContrastMemory`); they are never anchors.

    Returns:
        The loss (scalar, or ``(B,)`` for ``reduction="none"``), in float32 or wider; or an
        :class:`MCCLOutput`.

    Shape:
        - features: :math:`(B, D)`
        - logits: :math:`(B, K)`
        - targets: :math:`(B,)`
        - Output: :math:`()` or :math:`(B,)`

    Example:
        >>> feats, logits = torch.randn(8, 32), torch.randn(8, 3)
        >>> targets = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
        >>> loss = multiscale_category_aware_contrastive_loss(
        ...     feats, logits, targets, torch.tensor([50.0, 30.0, 5.0]), scales=(1, 2))
        >>> loss.shape
        torch.Size([])
    """
    result, _ = _multiscale_loss(
        features, logits, targets, class_counts, scales=scales, projections=projections,
        tau0=tau0, temperature=temperature, form=form, exclude_self=exclude_self,
        class_weighting=class_weighting, difficulty=difficulty,
        detach_difficulty=detach_difficulty, reduction=reduction,
        return_breakdown=return_breakdown, memory=memory, need_embeddings=False)
    return result


def _multiscale_loss(features, logits, targets, class_counts, *, scales, projections, tau0,
                     temperature, form, exclude_self, class_weighting, difficulty,
                     detach_difficulty, reduction, return_breakdown, memory, need_embeddings):
    """The loss and each scale's embeddings (which a memory bank stores).

    Without a memory bank and with ``need_embeddings=False``, a scale whose projection is a
    plain linear layer much wider than its input skips forming the embeddings
    (:class:`_ProjectedContrastiveCore`); its entry in the returned list is ``None``.
    """
    features = check_floating("features", features)
    check_ndim("features", features, 2, "(B, D)")
    logits, targets = check_logits_targets(logits, targets)
    check_same_batch(features=features, logits=logits, targets=targets)
    num_classes = logits.shape[1]
    counts = check_class_counts(class_counts, num_classes)
    scales = _check_scales(scales, features.shape[1])
    _check_options(form, temperature, reduction, tau0)
    if projections is not None and len(projections) != len(scales):
        raise ValueError(f"`projections` must hold one callable per scale ({len(scales)}), "
                         f"got {len(projections)}.")

    weights = category_aware_weights(logits, targets, counts, class_weighting=class_weighting,
                                     difficulty=difficulty, detach_difficulty=detach_difficulty)
    tau = adaptive_temperature(counts, float(tau0), mode=temperature, targets=targets)
    if memory is not None and len(memory[0]) != len(scales):
        raise ValueError(f"`memory` must hold one embedding tensor per scale ({len(scales)}), "
                         f"got {len(memory[0])}.")
    per_scale, embeddings, has_positive = [], [], None
    for idx, s in enumerate(scales):
        z = pool_features(features, s)
        projection = None if projections is None else projections[idx]
        if (memory is None and not need_embeddings
                and _projected_path_pays(projection, z, tau)):
            embeddings.append(None)
            with torch.autocast(z.device.type, enabled=False):
                loss_s, has_positive = _projected_contrastive(z, projection, targets, tau,
                                                              form, exclude_self)
        else:
            if projection is not None:
                z = projection(z)
            embeddings.append(z)
            mem_z, mem_t = (None, None) if memory is None else (memory[0][idx], memory[1])
            loss_s, has_positive = supervised_contrastive_per_anchor(
                z, targets, tau, form=form, exclude_self=exclude_self, memory_z=mem_z,
                memory_targets=mem_t)
        per_scale.append(_reduce(loss_s * weights, has_positive, reduction))
    stacked = torch.stack(per_scale)
    loss = stacked.mean(dim=0)
    if return_breakdown:
        return MCCLOutput(loss, stacked, weights, tau.to(loss.dtype), has_positive), embeddings
    return loss, embeddings


class MultiscaleCategoryAwareContrastiveLoss(nn.Module):
    r"""Multiscale Category-aware Contrastive Learning loss (MICACL Eq. 7-12). Alias: ``MCCLoss``.

    A loss **with parameters**: one learned projection ``Linear(D // s, projection_dim)`` per
    scale (Eq. 8's :math:`\mathrm{Proj}_s`), registered as sub-modules so they train, are saved in
    the ``state_dict`` and move with ``.to()``. Give the optimizer the loss's parameters too
    (``list(model.parameters()) + list(mccl.parameters())``).

    ``class_counts=None`` keeps running class counts of the targets seen in training mode, in the
    ``class_counts`` buffer (saved in the ``state_dict``), like BatchNorm's running statistics;
    with fixed counts (e.g. a data set's ``class_counts``) the buffer is constant. Counts feed
    Eq. 7's class factor and Eq. 10's temperature.

    See :func:`multiscale_category_aware_contrastive_loss` for the computation; every choice
    where the paper is ambiguous is documented on the "Paper to code" page.

    Args:
        num_classes: Number of classes ``K``.
        feature_dim: Feature size ``D`` of the clip features.
        class_counts: Samples per class ``(K,)``, all > 0, or ``None`` to count running labels.
        scales: Pooling factors (Eq. 8).
        projection_dim: Output size of each projection; ``None`` for identity (no parameters).
        tau0: Base temperature :math:`\tau_0` (0.07 as in the public code).
        temperature: ``"class_mean"`` (Eq. 10), ``"batch_mean"`` (public code) or ``"fixed"``.
        form: ``"ratio"`` (Eq. 11 as printed) or ``"log"`` (SupCon form, as the public code).
        exclude_self: Exclude each anchor from its own positives and denominator.
        class_weighting: Use Eq. 7's class factor.
        difficulty: Use Eq. 7's difficulty factor.
        detach_difficulty: Stop gradients through the difficulty factor.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        memory_size: Keep a FIFO queue of this many past (detached) embeddings and labels per
            scale as extra contrast candidates in training mode (0: none); see
            :class:`~micacl_layers.memory.ContrastMemory`. Saved in the ``state_dict``;
            :meth:`reset_memory` empties it.
        gather_distributed: Under ``torch.distributed``, gather features, logits and targets
            from all ranks with gradients, so every rank computes the loss of the global batch
            (a no-op when not distributed). Under DDP no gradient rescaling is needed; see
            :mod:`micacl_layers.distributed`. With ``reduction="none"`` the output covers the
            global batch, in rank order.
        device: Parameter device.
        dtype: Parameter dtype.

    Shape:
        - features: :math:`(B, D)`
        - logits: :math:`(B, K)`
        - targets: :math:`(B,)`, int64
        - Output: :math:`()`, or :math:`(B,)` for ``reduction="none"``

    Example:
        >>> mccl = MCCLoss(num_classes=3, feature_dim=32, class_counts=[50, 30, 5],
        ...                projection_dim=16)
        >>> feats, logits = torch.randn(8, 32), torch.randn(8, 3)
        >>> loss = mccl(feats, logits, torch.tensor([0, 0, 1, 1, 2, 2, 0, 1]))
        >>> loss.backward()
        >>> sum(p.numel() for p in mccl.parameters()) > 0
        True
    """

    def __init__(
        self,
        num_classes: int,
        feature_dim: int,
        class_counts: torch.Tensor | Sequence[float] | None = None,
        scales: Sequence[int] = (1, 2, 4),
        *,
        projection_dim: int | None = 1024,
        tau0: float = 0.07,
        temperature: TemperatureMode = "class_mean",
        form: Form = "ratio",
        exclude_self: bool = True,
        class_weighting: bool = True,
        difficulty: bool = True,
        detach_difficulty: bool = True,
        reduction: Reduction = "mean",
        memory_size: int = 0,
        gather_distributed: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.feature_dim = check_positive_int("feature_dim", feature_dim)
        self.scales = _check_scales(scales, feature_dim)
        _check_options(form, temperature, reduction, tau0)
        if projection_dim is not None:
            check_positive_int("projection_dim", projection_dim)
        self.projection_dim = projection_dim
        self.tau0 = float(tau0)
        self.temperature = temperature
        self.form = form
        self.exclude_self = exclude_self
        self.class_weighting = class_weighting
        self.difficulty = difficulty
        self.detach_difficulty = detach_difficulty
        self.reduction = reduction
        self.track_class_counts = class_counts is None
        if class_counts is None:
            counts = torch.zeros(num_classes, dtype=torch.long, device=device)
        else:
            checked = check_class_counts(class_counts, num_classes)
            if not bool((checked == checked.round()).all()):
                raise ValueError(f"`class_counts` must be whole numbers, got {checked.tolist()}.")
            counts = checked.to(device=device, dtype=torch.long)
        # int64 so that model.half()/.double() never round the counts.
        self.register_buffer("class_counts", counts)
        if projection_dim is None:
            self.projections = None
        else:
            self.projections = nn.ModuleList(
                FastLinear(feature_dim // s, projection_dim, device=device, dtype=dtype)
                for s in self.scales
            )
        if isinstance(memory_size, bool) or not isinstance(memory_size, int) or memory_size < 0:
            raise ValueError(f"`memory_size` must be >= 0 (0 disables the memory), "
                             f"got {memory_size!r}.")
        self.gather_distributed = gather_distributed
        dims = [projection_dim or feature_dim // s for s in self.scales]
        self.memory = ContrastMemory(memory_size, dims, device=device) if memory_size else None

    def reset_memory(self) -> None:
        """Empty the cross-batch memory (no-op without one)."""
        if self.memory is not None:
            self.memory.reset()

    @torch.no_grad()
    def update_class_counts(self, targets: torch.Tensor) -> None:
        """Add a batch of labels to the running counts (done by ``forward`` in training mode)."""
        self.class_counts += torch.bincount(targets.to(self.class_counts.device),
                                            minlength=self.num_classes)

    def reset_class_counts(self) -> None:
        """Zero the running class counts (only meaningful with ``class_counts=None``)."""
        if not self.track_class_counts:
            raise RuntimeError("class counts were fixed at construction; nothing to reset.")
        self.class_counts.zero_()

    def forward(
        self,
        features: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        *,
        return_breakdown: bool = False,
    ) -> torch.Tensor | MCCLOutput:
        """Compute the loss; see :func:`multiscale_category_aware_contrastive_loss`.

        Args:
            features: Clip features.
            logits: Classifier logits.
            targets: Class indices.
            return_breakdown: Return an :class:`MCCLOutput`.

        Returns:
            The loss, or an :class:`MCCLOutput`.
        """
        features = check_floating("features", features)
        check_ndim("features", features, 2, "(B, D)")
        if features.shape[1] != self.feature_dim:
            raise ValueError(f"`features` must have shape (B, D) with D={self.feature_dim} "
                             f"(feature_dim), got {describe(features)}.")
        logits = check_floating("logits", logits)
        # K first: with too few logit columns the targets would look out of range instead.
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"`logits` must have shape (B, K) with K={self.num_classes} "
                             f"(num_classes), got {describe(logits)}.")
        logits, targets = check_logits_targets(logits, targets)
        if self.gather_distributed and is_distributed():
            # Every rank computes the loss of the global batch; see micacl_layers.distributed
            # for why DDP then needs no gradient rescaling.
            check_same_batch(features=features, logits=logits, targets=targets)
            features, logits = gather_with_grad(features), gather_with_grad(logits)
            targets = gather_without_grad(targets)
        if self.track_class_counts and self.training:
            self.update_class_counts(targets)
        # A class not seen yet counts as one sample, so its weight stays finite.
        counts = self.class_counts.clamp_min(1) if self.track_class_counts else self.class_counts
        use_memory = self.memory is not None and self.training
        memory = self.memory.get() if use_memory and len(self.memory) else None
        result, embeddings = _multiscale_loss(
            features, logits, targets, counts,
            scales=self.scales, projections=self.projections, tau0=self.tau0,
            temperature=self.temperature, form=self.form, exclude_self=self.exclude_self,
            class_weighting=self.class_weighting, difficulty=self.difficulty,
            detach_difficulty=self.detach_difficulty, reduction=self.reduction,
            return_breakdown=return_breakdown, memory=memory, need_embeddings=use_memory,
        )
        if use_memory:
            self.memory.push(embeddings, targets)
        return result

    def extra_repr(self) -> str:
        """Options shown in ``repr()``."""
        return (f"num_classes={self.num_classes}, feature_dim={self.feature_dim}, "
                f"scales={self.scales}, projection_dim={self.projection_dim}, tau0={self.tau0}, "
                f"temperature={self.temperature!r}, form={self.form!r}, "
                f"track_class_counts={self.track_class_counts}, "
                f"memory_size={0 if self.memory is None else self.memory.size}, "
                f"gather_distributed={self.gather_distributed}")


MCCLoss = MultiscaleCategoryAwareContrastiveLoss
