"""Balanced Contrastive Learning's additions to MCCL (Zhu et al., CVPR 2022). Not in the paper.

Long-tailed batches make SupCon-style losses weak for the tail: the head classes fill the
denominators, and a class seen once in a batch has no positive. BCL's remedies, as options of
:class:`~micacl_layers.mccl.MCCLoss` (see :class:`~micacl_layers.mccl_options.MCCLOptions`):

- class-averaged sums (``class_average``), in :mod:`micacl_layers.contrastive`;
- class complements (``class_complements``): one prototype per class, pooled and projected like
  the features, joins every batch as a candidate (``_with_complements``);
- anchor weights whose mean over the batch is 1 (``weight_norm="batch"``,
  ``_batch_normalised``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from micacl_layers._validation import check_floating, describe, has_values


def _checked_prototypes(
    prototypes: object, class_complements: bool, num_classes: int, features: torch.Tensor
) -> torch.Tensor | None:
    """The ``(K, D)`` prototypes ``class_complements`` needs, or ``None`` without it."""
    if not class_complements:
        if prototypes is not None:
            raise ValueError(
                "`prototypes` were given but class_complements=False; set "
                "class_complements=True to use them, or drop them."
            )
        return None
    if prototypes is None:
        raise ValueError(
            "`prototypes` (K, D) are required with class_complements=True, e.g. "
            "the classifier's weight rows (`classifier.weight`)."
        )
    protos = check_floating("prototypes", prototypes)
    if protos.dim() != 2 or tuple(protos.shape) != (num_classes, features.shape[1]):
        raise ValueError(
            f"`prototypes` must have shape (K, D)=({num_classes}, "
            f"{features.shape[1]}), got {describe(protos)}."
        )
    return protos


def _anchors_with_positive(
    targets: torch.Tensor,
    memory: tuple[Sequence[torch.Tensor], torch.Tensor] | None,
    protos: torch.Tensor | None,
    exclude_self: bool,
) -> torch.Tensor:
    """Which anchors have a candidate of their class: batch, memory and prototypes together."""
    labels = [targets]
    if memory is not None:
        labels.append(memory[1].to(targets.device))
    if protos is not None:
        labels.append(torch.arange(protos.shape[0], device=targets.device))
    cands = torch.cat(labels)
    if targets.numel() == 0:
        return targets.new_zeros(0, dtype=torch.bool)
    per_class = torch.bincount(cands, minlength=int(cands.max()) + 1)
    return per_class[targets] > (1 if exclude_self else 0)


def _batch_normalised(
    weights: torch.Tensor,
    targets: torch.Tensor,
    memory: tuple[Sequence[torch.Tensor], torch.Tensor] | None,
    protos: torch.Tensor | None,
    exclude_self: bool,
) -> torch.Tensor:
    """Divide the weights by their (detached) mean over the anchors Eq. 12 averages over."""
    if not (has_values(weights) and has_values(targets)):  # meta: shapes only
        return weights
    counted = _anchors_with_positive(targets, memory, protos, exclude_self)
    if not bool(counted.any()):
        return weights
    return weights / weights.detach()[counted].mean().clamp_min(torch.finfo(weights.dtype).tiny)


def _with_complements(
    protos: torch.Tensor,
    pool: Callable[[torch.Tensor], torch.Tensor],
    projection: Callable[[torch.Tensor], torch.Tensor] | None,
    memory_z: torch.Tensor | None,
    memory_targets: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The class prototypes of one scale, appended to the memory's candidates (never anchors)."""
    z = pool(protos)
    z = z if projection is None else projection(z)
    labels = torch.arange(protos.shape[0], device=z.device)
    if memory_z is None or memory_targets is None:
        return z, labels
    return torch.cat([memory_z.to(z.dtype), z]), torch.cat([memory_targets.to(z.device), labels])
