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
import torch.nn.functional as F

from micacl_layers._fast import contrastive as _fast

__all__ = ["supervised_contrastive_per_anchor"]

Form = Literal["ratio", "log"]
_FORMS = ("ratio", "log")


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    # Similarities, softmax and log-sum-exp never run below float32.
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _norm_eps(dtype: torch.dtype) -> float:
    # sqrt(tiny) keeps cosine defined for feature norms down to ~1e-19 in float32.
    return torch.finfo(dtype).tiny ** 0.5


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
    if _fast.contrastive_applies(z, temperature):
        return _fast.contrastive(z, mem, targets, cand_targets, temperature, form,
                                 exclude_self, eps, _contrastive_reference)
    return _contrastive_reference(z, mem, targets, cand_targets, temperature, form,
                                  exclude_self, eps)


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
    """Eq. 9 and 11 for anchors ``z`` and candidates ``[z; mem]``, in plain autograd.

    ``cand_targets`` are the candidates' labels; ``eps`` bounds the norms from below. The
    fast kernel (``micacl_layers._fast.contrastive``) computes the same values.
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
