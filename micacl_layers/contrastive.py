r"""Supervised contrastive term of one anchor against its candidates, MICACL Eq. 9 and 11.

With cosine similarities :math:`S_{ij} = \cos(z_i, z_j) / \tau` (Eq. 9), an anchor's positives
:math:`P(i)` (same class) and candidates :math:`A(i)`: the share of its similarity mass on the
positives (Eq. 11 as printed) or SupCon's log form. MCCL (:mod:`micacl_layers.mccl`) applies it
at every scale. Written here in plain autograd (:func:`_contrastive_reference`); a kernel with
one ``(B, M)`` buffer may replace it, as :mod:`micacl_layers.config` decides.
"""

from __future__ import annotations

from typing import Literal

import torch

from micacl_layers._fast import contrastive as _fast
from micacl_layers._validation import (
    check_bool,
    check_floating,
    check_ndim,
    check_same_batch,
    check_same_device,
    check_targets,
    check_tensor,
    describe,
    has_values,
    is_real,
    no_autocast,
)

__all__ = ["supervised_contrastive_per_anchor"]

Form = Literal["ratio", "log"]
_FORMS = ("ratio", "log")


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    # Similarities, softmax and log-sum-exp never run below float32.
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _norm_eps(dtype: torch.dtype) -> float:
    # Bounds the norm of a row from below where rows are not first divided by _row_scale
    # (the projected kernel's |W' x'|, which may be of any size).
    return torch.finfo(dtype).tiny ** 0.5


# Bounds the norm of a row divided by its _row_scale (0.5, kept beside the kernels that use it
# too). Its largest entry lies in [1, 2), so its norm is at least 1 and only an all-zero row is
# clamped: that row normalises to zero, with the gradient of the unit vector over
# eps * scale = 1/4. With tiny ** 0.5 that factor was 1e19 in float32 and 1e154 in float64, inf
# once cast back to float16 features.
_SCALED_NORM_EPS = _fast.SCALED_NORM_EPS


def _row_scale(z: torch.Tensor) -> torch.Tensor:
    """A power of two per row, ``(B, 1)``, with ``max |z_i| / scale_i`` in ``[1, 2)`` (detached).

    Dividing a row by it leaves its direction, so its cosine similarities, unchanged, and keeps
    the norm of the result in ``[1, 2 sqrt(P))``: the norm can neither overflow (features of
    1e20 in float32) nor underflow (features of 1e-30), whatever the magnitude. A power of two
    makes the division exact, so for ordinary magnitudes the values are bit for bit those
    without it; as a constant factor inside a scale-invariant function it also leaves the
    gradient exact. All-zero rows get 1.
    """
    amax = z.detach().abs().amax(dim=-1, keepdim=True)
    _, exponent = torch.frexp(amax)  # amax = m * 2**exponent, m in [0.5, 1); 0 -> exponent 0
    # 2**(exponent - 1) <= amax: never overflows, even for amax near finfo.max.
    return torch.ldexp(torch.ones_like(amax), exponent - 1)


def _normalize(z: torch.Tensor, eps: float) -> torch.Tensor:
    """``F.normalize(z, dim=-1, eps=eps)`` for rows of any finite magnitude (see _row_scale).

    The same ops, except that the norm of an all-zero row is never differentiated (it is
    ``eps``): torch's second derivative of a norm at 0 is NaN, which a double backward (a
    gradient penalty) spread to every row.
    """
    scaled = z / _row_scale(z)
    zero = (scaled == 0).all(dim=-1, keepdim=True)
    norm = torch.linalg.vector_norm(torch.where(zero, 1.0, scaled), dim=-1, keepdim=True)
    return scaled / torch.where(zero, eps, norm.clamp_min(eps))


def _check_temperature(temperature: object) -> torch.Tensor | float:
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1 or not temperature.is_floating_point():
            raise ValueError(
                f"`temperature` must be a positive finite float or a one-element "
                f"floating tensor, got {describe(temperature)}."
            )
        if has_values(temperature):
            value = float(temperature.detach())
            if not 0.0 < value < float("inf"):
                raise ValueError(f"`temperature` must be positive and finite, got {value!r}.")
        return temperature
    if not is_real(temperature) or not 0.0 < temperature < float("inf"):
        raise ValueError(f"`temperature` must be a positive finite float, got {temperature!r}.")
    return float(temperature)


def _check_temperature_fits(name: str, value: float | None, dtype: torch.dtype) -> None:
    """``cos / tau`` stays finite in ``dtype``: ``tau`` at least its smallest normal number.

    (``1 / tiny`` is below ``finfo.max`` in every floating dtype; a subnormal ``tau`` makes the
    similarities overflow to inf, and the loss NaN.)
    """
    smallest = torch.finfo(dtype).tiny
    if value is not None and value < smallest:
        raise ValueError(
            f"`{name}` must be at least {smallest:.4g} (finfo({dtype}).tiny) for {dtype} "
            f"similarities, which cos / {name} would overflow, got {value!r}; pass float64 "
            f"embeddings for a smaller one."
        )


def supervised_contrastive_per_anchor(
    z: torch.Tensor,
    targets: torch.Tensor,
    temperature: torch.Tensor | float,
    *,
    form: Form = "ratio",
    exclude_self: bool = True,
    memory_z: torch.Tensor | None = None,
    memory_targets: torch.Tensor | None = None,
    class_average: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per-anchor supervised contrastive term at one scale (Eq. 9 and 11).

    With cosine similarities :math:`S_{ij} = \cos(z_i, z_j) / \tau` (Eq. 9), the positives
    :math:`P(i)` (same class) and the candidates :math:`A(i)` (all, minus ``i`` itself if
    ``exclude_self``):

    - ``"ratio"`` (Eq. 11 as printed): :math:`\ell_i = -\sum_{j \in P(i)} e^{S_{ij}} /
      \sum_{k \in A(i)} e^{S_{ik}}`, computed as :math:`-\exp(\mathrm{lse}_{P} - \mathrm{lse}_{A})`;
    - ``"log"`` (SupCon): :math:`\ell_i = -\frac{1}{|P(i)|}\sum_{j \in P(i)}
      (S_{ij} - \mathrm{lse}_{k \in A(i)} S_{ik})`.

    With ``class_average=True`` (Balanced Contrastive Learning, Zhu et al., CVPR 2022, Eq. 5),
    each candidate's term :math:`e^{S_{ik}}` in both sums is divided by the number of
    candidates of its class in :math:`A(i)`, so that every class weighs the same in the
    denominator however many samples it has in the batch: without it the head classes make up
    most of the negatives. Not in the MICACL paper.

    Anchors without a positive get an exact 0 that stays connected to the graph (an empty
    batch gives empty outputs).

    Cosine similarities do not depend on the magnitude of the embeddings, over the whole finite
    range of their dtype: each row is first divided by a power of two near its largest entry,
    so its norm can neither overflow nor underflow.

    Args:
        z: Anchor embeddings (need not be normalised).
        targets: Anchor class indices (any integer dtype).
        temperature: :math:`\tau > 0`, finite.
        form: ``"ratio"`` or ``"log"``.
        exclude_self: Drop :math:`j = i` from positives and candidates.
        memory_z: Extra candidates (e.g. a cross-batch memory), never anchors.
        memory_targets: Their class indices; required with ``memory_z``.
        class_average: Class-averaged sums (BCL); see above.

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
    z = check_floating("z", z)
    check_ndim("z", z, 2, "(B, P)")
    targets = check_tensor("targets", targets)
    check_same_device(z=z, targets=targets)
    targets = check_targets("targets", targets)
    check_same_batch(z=z, targets=targets)
    temperature = _check_temperature(temperature)
    # (A tensor was already read back by _check_temperature; a meta one has no value.)
    value: float | None = None
    if not isinstance(temperature, torch.Tensor):
        value = temperature
    elif has_values(temperature):
        value = float(temperature.detach())
    _check_temperature_fits("temperature", value, _compute_dtype(z))
    if (memory_z is None) != (memory_targets is None):
        missing, given = (
            ("memory_targets", "memory_z")
            if memory_targets is None
            else ("memory_z", "memory_targets")
        )
        raise ValueError(
            f"`{missing}` is required with `{given}`: pass both (the extra "
            f"candidates and their labels) or neither."
        )
    if memory_z is not None:
        memory_z = check_floating("memory_z", memory_z)
        check_ndim("memory_z", memory_z, 2, "(M, P)")
        if memory_z.shape[1] != z.shape[1]:
            raise ValueError(
                f"`memory_z` must have shape (M, P) with P={z.shape[1]} like `z`, "
                f"got {describe(memory_z)}."
            )
        memory_targets = check_targets("memory_targets", memory_targets)
        check_same_device(z=z, memory_z=memory_z, memory_targets=memory_targets)
        check_same_batch(memory_z=memory_z, memory_targets=memory_targets)
    if form not in _FORMS:
        raise ValueError(f"`form` must be one of {_FORMS}, got {form!r}.")
    check_bool("exclude_self", exclude_self)
    check_bool("class_average", class_average)
    return contrastive_per_anchor(
        z,
        targets,
        temperature,
        form=form,
        exclude_self=exclude_self,
        memory_z=memory_z,
        memory_targets=memory_targets,
        class_average=class_average,
    )


def contrastive_per_anchor(
    z, targets, temperature, *, form, exclude_self, memory_z, memory_targets, class_average=False
):
    """:func:`supervised_contrastive_per_anchor` on checked inputs (MCCL's inner call)."""
    # Under torch.autocast the matmul below would run in float16/bfloat16 again: the
    # similarities and their log-sum-exp must stay in float32, so autocast is off here.
    with no_autocast(z.device.type):
        dtype = _compute_dtype(z)
        eps = _SCALED_NORM_EPS
        z = z.to(dtype)
        mem, cand_targets = None, targets
        if memory_z is not None:
            mem = memory_z.to(device=z.device, dtype=dtype)
            cand_targets = torch.cat([targets, memory_targets.to(targets.device)], dim=0)
        temperature = torch.as_tensor(temperature, dtype=dtype, device=z.device)
        if z.shape[0] == 0:  # no anchors: nothing to contrast, an empty loss still on the graph
            return z.sum(dim=1), targets.new_zeros(0, dtype=torch.bool)
        args = (z, mem, targets, cand_targets, temperature, form, exclude_self, eps)
        if not class_average and _fast.contrastive_applies(z, temperature):
            return _fast.contrastive(*args, _contrastive_reference)
        return _contrastive_reference(*args, class_average=class_average)


def _projected_fast(z, projection, targets, temperature, *, form, exclude_self):
    """The term of ``projection(z)`` by the fast kernel that never forms it, or ``None``.

    ``None`` where :mod:`micacl_layers.config` does not enable that kernel (the default) or it
    does not apply (see ``_fast.contrastive.projected_applies``): project, then call
    :func:`contrastive_per_anchor`.
    """
    if not _fast.projected_applies(projection, z, temperature):
        return None
    dtype = _compute_dtype(z)
    return _fast.projected_contrastive(
        z.to(dtype),
        projection,
        targets,
        temperature.to(dtype),
        form,
        exclude_self,
        _norm_eps(dtype),
        _contrastive_reference,
    )


def _label_counts(labels: torch.Tensor) -> torch.Tensor:
    """For each entry of ``labels`` ``(M,)``, how many entries share its label, ``(M,)``.

    By ``torch.unique``, not ``bincount``: the labels of a contrastive loss are free (negative
    ones or ``10**12`` are labels too, and ``bincount`` would fail on the one and allocate a
    bin per integer up to the other). On ``meta`` (shapes only) every count is 1.
    """
    if not has_values(labels):
        return torch.ones_like(labels)
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    return counts[inverse]


def _contrastive_reference(
    z: torch.Tensor,
    mem: torch.Tensor | None,
    targets: torch.Tensor,
    cand_targets: torch.Tensor,
    temperature: torch.Tensor,
    form: str,
    exclude_self: bool,
    eps: float,
    class_average: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 9 and 11 for anchors ``z`` and candidates ``[z; mem]``, in plain autograd.

    ``cand_targets`` are the candidates' labels; ``eps`` bounds the norms from below. The
    fast kernel (``micacl_layers._fast.contrastive``) computes the same values (it has no
    ``class_average``, which always runs here).
    """
    anchors = _normalize(z, eps)
    cands = anchors
    if mem is not None:
        cands = torch.cat([anchors, _normalize(mem, eps)], dim=0)
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
        is_self = None
        lse_all = sim.logsumexp(dim=1)
    num_pos = positive.sum(dim=1)
    has_positive = num_pos > 0
    weighted = sim
    if class_average:
        # log(1 / count of the candidate's class among the anchor's candidates), self excluded.
        count = _label_counts(cand_targets)[None, :].expand(batch, -1).to(sim.dtype)
        if exclude_self:
            count = count - (targets[:, None] == cand_targets[None, :]).to(sim.dtype)
        weighted = sim - count.clamp_min(1.0).log()
        lse_all = (weighted if is_self is None else weighted.masked_fill(is_self, fill)).logsumexp(
            dim=1
        )
    if form == "ratio":
        lse_pos = weighted.masked_fill(~positive, fill).logsumexp(dim=1)
        loss = -torch.exp(lse_pos - lse_all)
    else:
        mean_pos = (sim * positive).sum(dim=1) / num_pos.clamp_min(1)
        loss = lse_all - mean_pos
    return torch.where(has_positive, loss, torch.zeros_like(loss)), has_positive
