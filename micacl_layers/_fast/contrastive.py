"""MCCL's contrastive term with one ``(B, M)`` buffer, and without forming projections (private).

The fast paths of :func:`micacl_layers.mccl.supervised_contrastive_per_anchor`; the switch in
:mod:`micacl_layers.config` decides when they run (kernels ``"contrastive"`` and
``"projected_contrastive"``).

:class:`_ContrastiveCore`: the only ``(B, M)`` float buffer holds the exp-similarities shifted
by the row maximum and becomes the gradient in place in the backward: never the masked copies
of the straightforward formulation. Small buffers (up to ``_KEEP_ENTRIES``, 16 MB) are kept for
the backward, one per scale; larger ones are recomputed there, so one is alive at a time. The
positive mask is built a block of rows at a time; without a memory bank only the upper block
triangle of the symmetric ``A A^T`` is multiplied, and its backward is one product,
``(G + G^T) A``.

:class:`_ProjectedContrastiveCore` (switch ``"on"`` only): for a plain linear projection at
least twice as wide as its input, the similarities come from ``x' M x'^T`` with the small
``M = W'^T W'``, forward and backward, with products of inner size ``D / s`` instead of ``P``.
It is less accurate than projecting first when ``|W'| |x'| / |z|`` is large (a projection that
cancels a feature offset, or an ill-conditioned one), which is why ``"auto"`` never runs it.

Both take the plain formulation (``reference``, :func:`micacl_layers.mccl.contrastive_reference`)
as an argument, and differentiate it for a double backward.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from micacl_layers import config
from micacl_layers._fast.onednn import FastLinear, differentiate_reference, dual, mm_t

__all__: list[str] = []

# Element-wise work on the (B, M) similarities runs over blocks of rows of about this many
# entries, so that masks and temporaries stay small next to the one full-size buffer.
_BLOCK_ENTRIES = 1 << 20
# Up to this many entries (16 MB in float32, e.g. B = M = 2048) the forward's exp-similarities
# are kept for the backward, one buffer per scale, which saves recomputing a product; above it
# they are recomputed, so that a single (B, M) buffer is ever alive.
_KEEP_ENTRIES = 1 << 22
# Rows per strip of the symmetric A A^T (only the upper block triangle is computed).
_GRAM_BLOCK = 256
# The eps of the plain path's normalisation (micacl_layers.contrastive reads it from here) of
# rows divided by _row_scale: their norms are then at least 1, so only an all-zero row is
# clamped, and, its scale being 1/2, it is divided by SCALED_NORM_EPS / 2.
SCALED_NORM_EPS = 0.5


def no_autocast(device_type: str) -> contextlib.AbstractContextManager[None]:
    """``torch.autocast(device_type, enabled=False)``, or nothing where autocast does not exist.

    (``torch.autocast`` raises for a device type without autocast, e.g. ``meta``; the public
    modules have the same helper in ``micacl_layers._validation``, which this private package
    does not import.)
    """
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


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
        out[i + block :, rows] = strip[:, block:].t()
    return out


def _gram(a: torch.Tensor) -> torch.Tensor:
    """``a @ a^T``: strips of the upper block triangle, mirrored.

    About half the multiply-adds of a full product for large ``B``.
    """
    return _projected_gram(a, a)


def _similarities(
    anchors: torch.Tensor, mem: torch.Tensor | None, temperature: torch.Tensor, exclude_self: bool
) -> torch.Tensor:
    """``S = A C^T / tau`` with ``C = [A; mem]``, self entries set to ``finfo.min``."""
    if mem is None:
        sim = _gram(anchors)
    else:
        sim = mm_t(anchors, torch.cat([anchors, mem], dim=0))
    sim.div_(temperature)
    if exclude_self:
        sim[:, : anchors.shape[0]].diagonal().fill_(torch.finfo(sim.dtype).min)
    return sim


def _row_blocks(rows: int, cols: int) -> list[tuple[int, int]]:
    step = max(1, _BLOCK_ENTRIES // max(cols, 1))
    return [(start, min(start + step, rows)) for start in range(0, rows, step)]


def _positive_block(
    targets: torch.Tensor, cand_targets: torch.Tensor, start: int, stop: int, exclude_self: bool
) -> torch.Tensor:
    """Rows ``start:stop`` of the positive mask ``P`` (same class, minus self)."""
    mask = targets[start:stop, None] == cand_targets[None, :]
    if exclude_self:
        mask[:, start:stop].diagonal().fill_(False)
    return mask


def _positive_counts(
    targets: torch.Tensor, cand_targets: torch.Tensor, exclude_self: bool
) -> torch.Tensor:
    """``|P(i)|`` without a ``(B, M)`` mask: how often each anchor's class occurs."""
    ordered = cand_targets.sort().values
    # (searchsorted warns about a non-contiguous query, e.g. labels that are a strided view.)
    targets = targets.contiguous()
    counts = torch.searchsorted(ordered, targets, right=True) - torch.searchsorted(ordered, targets)
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


def _row_scale(z: torch.Tensor) -> torch.Tensor:
    """A power of two per row with ``max |z_i| / scale_i`` in ``[1, 2)``, ``(B, 1)``.

    The same as ``micacl_layers.contrastive._row_scale`` (kept here so that the private kernels
    import nothing from the public modules): dividing by it keeps the norm finite and non-zero
    for every finite magnitude, exactly, without changing the direction.
    """
    amax = z.abs().amax(dim=-1, keepdim=True)
    _, exponent = torch.frexp(amax)
    return torch.ldexp(torch.ones_like(amax), exponent - 1)


def _normalize(z: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of ``z`` as unit vectors, and ``(B, 2)`` of ``(clamped norm, scale)``.

    The same ops as the plain path's ``F.normalize(z / scale, dim=-1, eps=eps)``, with
    ``scale`` from :func:`_row_scale`; both factors are kept for the backward.
    """
    scale = _row_scale(z)
    scaled = z / scale
    denom = torch.linalg.vector_norm(scaled, dim=-1, keepdim=True).clamp_min(eps)
    return scaled.div_(denom), torch.cat([denom, scale], dim=1)


def _normalize_backward(
    grad: torch.Tensor, unit: torch.Tensor, norms: torch.Tensor, eps: float
) -> torch.Tensor:
    """Gradient through :func:`_normalize`, in place of ``grad``: ``(g - u (u . g)) / |z|``.

    With ``|z| = denom * scale`` applied as two divisions (their product may overflow). Where
    the norm was clamped to ``eps`` the map ``z / eps`` is linear: ``g / eps``.
    """
    denom, scale = norms[:, :1], norms[:, 1:]
    radial = (unit * grad).sum(dim=-1, keepdim=True)
    radial.masked_fill_(denom <= eps, 0.0)
    return grad.sub_(unit * radial).div_(denom).div_(scale)


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


def _similarity_grad(
    ctx, grad_loss, recompute, targets, cand_targets, temperature, maxes, total, aux, has_positive
):
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
    the masked log-sum-exps of the plain formulation. The backward turns ``E`` into
    ``dL/dS`` in place and, without a memory bank, uses ``dL/dA = (G + G^T) A`` (one product
    instead of two). ``E`` is kept for the backward only up to ``_KEEP_ENTRIES`` entries (and
    handed over, not saved: a second backward with ``retain_graph`` recomputes it); above that
    the backward recomputes it, so that one ``(B, M)`` buffer is alive at a time.
    """

    @staticmethod
    def forward(
        ctx, z, mem, targets, cand_targets, temperature, form, exclude_self, eps, reference
    ):
        ctx.reference = reference
        anchors, denom = _normalize(z, eps)
        mem_unit = mem_denom = None
        if mem is not None:
            mem_unit, mem_denom = _normalize(mem, eps)
        num_pos = _positive_counts(targets, cand_targets, exclude_self)
        sim = _similarities(anchors, mem_unit, temperature, exclude_self)
        loss, has_positive, stats = _loss_from_similarities(
            ctx, sim, targets, cand_targets, form, exclude_self, num_pos
        )
        ctx.eps = eps
        ctx.save_for_backward(
            z,
            mem,
            anchors,
            denom,
            mem_unit,
            mem_denom,
            targets,
            cand_targets,
            temperature,
            *stats,
            has_positive,
        )
        return loss, has_positive

    @staticmethod
    def backward(ctx, grad_loss, _grad_has_positive):
        (
            z,
            mem,
            anchors,
            denom,
            mem_unit,
            mem_denom,
            targets,
            cand_targets,
            temperature,
            maxes,
            total,
            aux,
            has_positive,
        ) = ctx.saved_tensors
        if differentiate_reference(grad_loss):
            # create_graph=True (double backward) or batched gradients: differentiate the
            # reference formulation.
            with torch.enable_grad():
                loss, _ = ctx.reference(
                    z, mem, targets, cand_targets, temperature, ctx.form, ctx.exclude_self, ctx.eps
                )
            inputs = [t for t in (z, mem) if t is not None and t.requires_grad]
            found = iter(
                torch.autograd.grad(loss, inputs, grad_loss, create_graph=True, allow_unused=True)
            )
            return (
                next(found) if z.requires_grad else None,
                next(found) if mem is not None and mem.requires_grad else None,
                None,
                None,
                None,
                None,
                None,
                None,
                None,
            )
        with no_autocast(z.device.type):
            grad = _similarity_grad(
                ctx,
                grad_loss,
                lambda: _similarities(anchors, mem_unit, temperature, ctx.exclude_self),
                targets,
                cand_targets,
                temperature,
                maxes,
                total,
                aux,
                has_positive,
            )
            grad_anchors, grad_mem = _ContrastiveCore._products(ctx, grad, anchors, mem_unit)
        grad_z = grad_m = None
        if grad_anchors is not None:
            grad_z = _normalize_backward(grad_anchors, anchors, denom, ctx.eps)
        if grad_mem is not None:
            grad_m = _normalize_backward(grad_mem, mem_unit, mem_denom, ctx.eps)
        return grad_z, grad_m, None, None, None, None, None, None, None

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
    def forward(ctx, x, weight, bias, targets, temperature, form, exclude_self, eps, reference):
        ctx.reference = reference
        if bias is None:
            xa, wa = x, weight
        else:
            xa = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)
            wa = torch.cat([weight, bias.unsqueeze(1)], dim=1)
        # cos(z_i, z_j) does not change when x'_i is divided by a constant (z_i = W' x'_i is
        # divided by it too); a power of two per row keeps |z| finite for any finite x, and
        # dL/dx' is dL/d(x' / scale) / scale (dL/dW' is unchanged: scale is a constant).
        scale = _row_scale(xa)
        xa = xa / scale
        gram = mm_t(wa.t(), wa.t())  # M = W'^T W'
        q = xa @ gram
        # |z_i| from x'_i M x'_i; rounding can take an exact zero slightly below 0.
        denom = (q * xa).sum(dim=1).clamp_min(0).sqrt().clamp_min(eps)
        num_pos = _positive_counts(targets, targets, exclude_self)
        sim = _ProjectedContrastiveCore._similarities(q, xa, denom, temperature, exclude_self)
        loss, has_positive, stats = _loss_from_similarities(
            ctx, sim, targets, targets, form, exclude_self, num_pos
        )
        ctx.eps, ctx.has_bias = eps, bias is not None
        ctx.save_for_backward(
            x,
            weight,
            bias,
            xa,
            wa,
            gram,
            q,
            denom,
            scale,
            targets,
            temperature,
            *stats,
            has_positive,
        )
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
    def backward(ctx, grad_loss, _grad_has_positive):
        (
            x,
            weight,
            bias,
            xa,
            wa,
            gram,
            q,
            denom,
            scale,
            targets,
            temperature,
            maxes,
            total,
            aux,
            has_positive,
        ) = ctx.saved_tensors
        if differentiate_reference(grad_loss):
            # create_graph=True (double backward) or batched gradients: differentiate the
            # reference formulation.
            inputs = [t for t in (x, weight, bias) if t is not None and t.requires_grad]
            with torch.enable_grad():
                z = F.linear(x, weight, bias)
                loss, _ = ctx.reference(
                    z,
                    None,
                    targets,
                    targets,
                    temperature,
                    ctx.form,
                    ctx.exclude_self,
                    SCALED_NORM_EPS,
                )
            found = iter(
                torch.autograd.grad(loss, inputs, grad_loss, create_graph=True, allow_unused=True)
            )
            grads = [
                next(found) if t is not None and t.requires_grad else None
                for t in (x, weight, bias)
            ]
            return (*grads, None, None, None, None, None, None)
        with no_autocast(x.device.type):
            grad = _similarity_grad(
                ctx,
                grad_loss,
                lambda: _ProjectedContrastiveCore._similarities(
                    q, xa, denom, temperature, ctx.exclude_self
                ),
                targets,
                targets,
                temperature,
                maxes,
                total,
                aux,
                has_positive,
            )
            # dL/dA = G_s A with G_s = G + G^T and A = z / |z|; through the normalisation,
            # dL/dz = H z with H = N^-1 G_s N^-1 - diag(r / |z|^2), N = diag(|z|) and
            # r_i = A_i . (G_s A)_i (zero where the norm was clamped, as there z / eps is
            # linear). With u = G_s N^-1 x' (so that (G_s A)_i = u_i W'^T / |z_i|):
            # r_i = (q_i . u_i) / |z_i|, and H x' = u / |z| - (r / |z|^2) x'.
            inv = denom.reciprocal()
            u = mm_t(_add_transpose_(grad), (xa * inv[:, None]).t())
            del grad
            radial = (q * u).sum(dim=1).mul_(inv)
            clamped = denom <= ctx.eps
            radial.masked_fill_(clamped, 0.0)
            # A clamped row (z = 0) gets the plain path's gradient: dL/dA over SCALED_NORM_EPS / 2,
            # in the units of x' / scale.
            row_inv = torch.where(clamped, scale[:, 0] / (SCALED_NORM_EPS / 2), inv)
            hx = u.mul_(row_inv[:, None]).sub_(xa * (radial * inv * inv)[:, None])
        needs = ctx.needs_input_grad
        grad_x = grad_w = grad_b = None
        if needs[0]:
            grad_x = (hx @ gram)[:, : x.shape[1]].div_(scale)
        if needs[1] or needs[2]:
            grad_wa = wa @ mm_t(xa.t(), hx.t())  # W' (x'^T H x')
            grad_w = grad_wa[:, : x.shape[1]] if needs[1] else None
            grad_b = grad_wa[:, -1] if ctx.has_bias and needs[2] else None
        return grad_x, grad_w, grad_b, None, None, None, None, None, None


def contrastive_applies(z: torch.Tensor, temperature: torch.Tensor) -> bool:
    """Whether :func:`contrastive` may replace the plain formulation for these inputs.

    Not for a temperature that needs a gradient (the core treats it as a constant), an empty
    batch (nothing to save), forward-mode AD, or where the switch says no.
    """
    return (
        not torch.jit.is_scripting()
        and not temperature.requires_grad
        and z.shape[0] > 0
        and config.enabled("contrastive", z.device, z.dtype)
        and not dual(z)
    )


def contrastive(z, mem, targets, cand_targets, temperature, form, exclude_self, eps, reference):
    """:class:`_ContrastiveCore` (the arguments of the plain formulation, then the formulation)."""
    return _ContrastiveCore.apply(
        z, mem, targets, cand_targets, temperature, form, exclude_self, eps, reference
    )


def projected_applies(projection: object, x: torch.Tensor, tau: torch.Tensor) -> bool:
    """Whether :func:`projected_contrastive` applies to ``projection(x)`` and saves work.

    Only where the switch allows it (``"on"``), for exactly ``nn.Linear`` /
    :class:`~micacl_layers._fast.onednn.FastLinear` without hooks of its own (whose output would
    be bypassed), outside autocast (where the projection itself would run in half precision),
    ``torch.compile``, learned temperatures and forward-mode AD, and when the input is at most
    half as wide as the output (below that it costs more than it saves).
    """
    if type(projection) not in (nn.Linear, FastLinear) or not isinstance(projection, nn.Linear):
        return False
    if not config.enabled("projected_contrastive", x.device, x.dtype):
        return False
    if projection._forward_hooks or projection._forward_pre_hooks:
        return False
    if torch.jit.is_scripting() or torch.is_autocast_enabled(x.device.type) or tau.requires_grad:
        return False
    if not (x.is_floating_point() and x.dtype == projection.weight.dtype):
        return False
    if x.shape[0] == 0:  # nothing to save; the general path returns the empty loss
        return False
    if dual(x, projection.weight, projection.bias):
        return False
    return 2 * (x.shape[1] + 1) <= projection.out_features


def projected_contrastive(x, projection, targets, temperature, form, exclude_self, eps, reference):
    """The contrastive term of ``projection(x)`` without forming it (``x`` in compute dtype)."""
    weight = projection.weight.to(x.dtype)
    bias = None if projection.bias is None else projection.bias.to(x.dtype)
    with no_autocast(x.device.type):
        return _ProjectedContrastiveCore.apply(
            x, weight, bias, targets, temperature, form, exclude_self, eps, reference
        )
