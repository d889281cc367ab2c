"""Intensity-aware loss (IAL; Li et al., AAAI 2023), a term of MICACL's CET.

Cross-entropy restricted to two logits, the target and the most confusing non-target
class: :math:`\\mathrm{IAL} = \\mathrm{softplus}(z_{\\max\\,\\neg y} - z_y)`. It keeps pushing
low-intensity clips, whose runner-up class is close, after plain cross-entropy has become small.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from micacl_layers._validation import (
    check_ignore_index,
    check_logits_targets,
    check_unit_interval,
    torchscript_unsupported,
)

__all__ = ["IntensityAwareLoss", "intensity_aware_loss"]

_REDUCTIONS = ("mean", "sum", "none")


def intensity_aware_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    reduction: Literal["mean", "sum", "none"] = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    r"""Intensity-aware loss, :math:`\mathrm{softplus}(\max_{k \ne y} z_k - z_y)`.

    Equal to the cross-entropy of the two-logit problem ``[z_y, z_maxother]`` with target 0, but
    computed with ``softplus`` (stable for logits of any size) in float32 or wider. With
    ``label_smoothing`` :math:`\varepsilon` it is, as ``F.cross_entropy(label_smoothing=)`` of
    that two-logit problem, :math:`(1 - \varepsilon/2)\,\mathrm{softplus}(d) +
    \varepsilon/2\,\mathrm{softplus}(-d)` with :math:`d = \max_{k \ne y} z_k - z_y`: the
    smoothing mass goes to the runner-up class, the only other class IAL sees. Samples whose
    target equals ``ignore_index`` contribute 0 and are left out of the mean; if every sample is
    ignored the mean is a graph-connected 0 (``F.cross_entropy`` would give NaN).

    Args:
        logits: Classifier logits, ``K >= 2``.
        targets: Class indices.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        ignore_index: Target value to ignore.
        label_smoothing: :math:`\varepsilon \in [0, 1]`, as in ``F.cross_entropy`` (DFER code
            commonly trains with 0.1).

    Returns:
        The loss, float32 (float64 for float64 logits).

    Shape:
        - logits: :math:`(B, K)`
        - targets: :math:`(B,)`
        - Output: :math:`()`, or :math:`(B,)` for ``reduction="none"``

    Example:
        >>> intensity_aware_loss(torch.tensor([[2.0, 1.0, -1.0]]), torch.tensor([0]))
        tensor(0.3133)
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {_REDUCTIONS}, got {reduction!r}.")
    smoothing = check_unit_interval("label_smoothing", label_smoothing)
    ignore_index = check_ignore_index(ignore_index)
    logits, targets = check_logits_targets(
        logits, targets, ignore_index=ignore_index, min_classes=2
    )
    work = logits.double() if logits.dtype == torch.float64 else logits.float()
    valid = targets != ignore_index
    safe_targets = torch.where(valid, targets, torch.zeros_like(targets))
    is_target = F.one_hot(safe_targets, work.shape[1]).bool()
    z_target = work.gather(1, safe_targets[:, None]).squeeze(1)
    z_other = work.masked_fill(is_target, torch.finfo(work.dtype).min).amax(dim=1)
    margin = z_other - z_target
    loss = F.softplus(margin)
    if smoothing:  # the target distribution (1 - eps/2, eps/2) over (target, runner-up)
        loss = (1.0 - smoothing / 2) * loss + (smoothing / 2) * F.softplus(-margin)
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / valid.sum().clamp_min(1)


class IntensityAwareLoss(nn.Module):
    r"""Module form of :func:`intensity_aware_loss`.

    Args:
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        ignore_index: Target value to ignore.
        label_smoothing: :math:`\varepsilon \in [0, 1]`, as in ``nn.CrossEntropyLoss``.

    Shape:
        - logits: :math:`(B, K)`
        - targets: :math:`(B,)`
        - Output: :math:`()`, or :math:`(B,)` for ``reduction="none"``

    Example:
        >>> ial = IntensityAwareLoss(label_smoothing=0.1)
        >>> ial(torch.randn(4, 7), torch.tensor([0, 3, 6, 2])).shape
        torch.Size([])
    """

    def __init__(
        self,
        *,
        reduction: Literal["mean", "sum", "none"] = "mean",
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"`reduction` must be one of {_REDUCTIONS}, got {reduction!r}.")
        self.reduction = reduction
        self.ignore_index = check_ignore_index(ignore_index)
        self.label_smoothing = check_unit_interval("label_smoothing", label_smoothing)

    __prepare_scriptable__ = torchscript_unsupported

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Compute the loss; see :func:`intensity_aware_loss`."""
        return intensity_aware_loss(
            logits,
            targets,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
        )

    def extra_repr(self) -> str:
        """Options shown in ``repr()``."""
        s = f"reduction={self.reduction!r}, ignore_index={self.ignore_index}"
        if self.label_smoothing:
            s += f", label_smoothing={self.label_smoothing}"
        return s
