"""Logit-adjusted cross-entropy (Menon et al., "Long-tail learning via logit adjustment", 2021).

Training adds :math:`\\tau \\log \\pi_k` (the log class prior of the training set) to each logit
before the softmax cross-entropy; the model is used with its **raw** logits at test time. The
adjustment makes a rare class pay a larger margin, so the classifier that minimises the loss is
(for :math:`\\tau = 1`) the one that minimises the *balanced* error: what UAR measures. With
:math:`\\tau = 1` it coincides with the balanced softmax of Ren et al. (NeurIPS 2020). On the
long-tailed sequence benchmark of this package (``docs/longtail.md``) it is the single largest
gain over plain cross-entropy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from micacl_layers._class_counts import checked_loaded_counts
from micacl_layers._validation import (
    _counts_tensor,
    check_bool,
    check_class_counts,
    check_floating,
    check_ignore_index,
    check_logits_targets,
    check_unit_interval,
    describe,
    has_values,
    is_real,
    torchscript_unsupported,
    values_on_cpu,
    warn_at_caller,
)

__all__ = ["LogitAdjustedLoss", "log_prior", "logit_adjusted_cross_entropy"]

Reduction = Literal["mean", "sum", "none"]
_REDUCTIONS = ("mean", "sum", "none")


def _check_options(tau: object, label_smoothing: object, reduction: object) -> tuple[float, float]:
    if not is_real(tau) or not 0 <= tau < math.inf:
        raise ValueError(
            f"`tau` must be a number >= 0 (finite; 0 is plain cross-entropy), got {tau!r}."
        )
    smoothing = check_unit_interval("label_smoothing", label_smoothing)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {_REDUCTIONS}, got {reduction!r}.")
    return float(tau), smoothing


def _warn_if_smoothing_overturns(
    class_counts: torch.Tensor, tau: float, label_smoothing: float, *, balanced: bool = False
) -> None:
    r"""Warn when label smoothing makes the adjusted cross-entropy predict the rarer class.

    A sample of class :math:`y` fitted exactly to the smoothed target has adjusted logits with
    :math:`a_y - a_c = \log b`, :math:`b = (1 - \varepsilon + \varepsilon/K) / (\varepsilon/K)`,
    so its raw logits differ by :math:`\log b - \tau \log (\pi_y / \pi_c)`: past a prior
    ratio of :math:`b^{1/\tau}` even that sample is predicted as the rarer class. Measured on the
    long-tail benchmark (``docs/longtail.md``): -9.7 UAR against no smoothing.

    Args:
        class_counts: Training samples per class, ``(K,)``, all > 0, with values (not meta).
        tau: Strength of the adjustment.
        label_smoothing: Label smoothing :math:`\varepsilon` of the cross-entropy.
        balanced: The smoothing is ``balanced_smoothing``'s, which cannot overturn.
    """
    num_classes = class_counts.numel()
    if balanced or not (tau > 0 and label_smoothing > 0 and num_classes >= 2):
        return
    share = label_smoothing / num_classes
    bound = math.log((1.0 - label_smoothing + share) / share) / tau
    counts = class_counts.detach().to("cpu", torch.float64)
    ratio = float(counts.max() / counts.min())
    if math.log(ratio) > bound:
        warn_at_caller(
            f"label_smoothing={label_smoothing} with logit adjustment tau={tau}: the class "
            f"counts' largest prior ratio {ratio:.4g} exceeds {math.exp(bound):.4g}, past which a "
            f"sample of the most frequent class that fits the smoothed target exactly is "
            f"predicted as the rarest class (docs/longtail.md measured -9.7 UAR on such data). "
            f"Use label_smoothing=0, or add terms on the raw logits (balanced_smoothing=True "
            f"cannot overturn, but under-corrects on that benchmark).",
        )


def _counts_of_any_length(class_counts: object) -> torch.Tensor:
    counts = _counts_tensor(class_counts)
    if counts.dim() != 1 or counts.numel() == 0:
        raise ValueError(
            f"`class_counts` must have shape (K,) with K >= 1 (one count per "
            f"class), got shape={tuple(counts.shape)}."
        )
    return check_class_counts(counts, counts.numel())


def log_prior(class_counts: torch.Tensor | Sequence[float]) -> torch.Tensor:
    r"""Log class prior :math:`\log \pi_k = \log (n_k / \sum_j n_j)` of the training set.

    Args:
        class_counts: Samples per class, all > 0.

    Returns:
        A float64 tensor.

    Shape:
        - class_counts: :math:`(K,)`
        - Output: :math:`(K,)`

    Example:
        >>> log_prior(torch.tensor([3.0, 1.0])).exp()
        tensor([0.7500, 0.2500], dtype=torch.float64)
    """
    counts = _counts_of_any_length(class_counts)
    return (counts / counts.sum()).log()


def logit_adjusted_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    class_counts: torch.Tensor | Sequence[float],
    *,
    tau: float = 1.0,
    label_smoothing: float = 0.0,
    balanced_smoothing: bool = False,
    reduction: Reduction = "mean",
    ignore_index: int = -100,
) -> torch.Tensor:
    r"""Cross-entropy on :math:`z_k + \tau \log \pi_k` (Menon et al. 2021, Eq. 10).

    Computed in float32 or wider whatever the logits' dtype (the log prior of a class with a
    single sample among thousands is below -8, beyond float16's comfortable range for a sum).
    Samples whose target is ``ignore_index`` are left out; if every sample is ignored the mean is
    a graph-connected 0 (``F.cross_entropy`` would give NaN). Predict with the raw logits.

    Args:
        logits: Classifier logits.
        targets: Class indices (int64).
        class_counts: Training samples per class :math:`n_k`, ``(K,)``, all > 0.
        tau: Strength :math:`\tau \ge 0` of the adjustment (1 in the paper; 0 is plain CE).
        label_smoothing: Label smoothing :math:`\varepsilon` of the cross-entropy, in
            ``[0, 1]``.
        balanced_smoothing: Smooth the target of the *raw* (balanced) posterior instead of the
            adjusted one: the adjusted softmax is fitted to
            :math:`q \propto \pi^\tau \odot ((1 - \varepsilon)\, e_y + \varepsilon / K)`, so
            its minimiser's raw softmax is the uniformly smoothed target and predicts :math:`y`
            at any prior ratio. With the default (``False``, what ``F.cross_entropy`` does) a
            prior ratio past :math:`((1 - \varepsilon + \varepsilon/K) / (\varepsilon/K))^{1/\tau}`
            turns a perfectly fitted head sample into a tail prediction
            (``docs/longtail.md``). Not in Menon et al.; the same as the default when
            ``tau`` or ``label_smoothing`` is 0. Measured there, it under-corrects instead
            (a rarest-class sample's target is mostly on the head classes, so at the start of
            training its gradient is a quarter to a third of plain logit adjustment's at
            imbalance 100): not recommended for UAR.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        ignore_index: Target value to ignore.

    Returns:
        The loss, float32 (float64 for float64 logits).

    Shape:
        - logits: :math:`(B, K)`
        - targets: :math:`(B,)`
        - class_counts: :math:`(K,)`
        - Output: :math:`()`, or :math:`(B,)` for ``reduction="none"``

    Example:
        >>> logits = torch.zeros(2, 2)
        >>> logit_adjusted_cross_entropy(logits, torch.tensor([0, 1]), [3.0, 1.0], tau=0.0)
        tensor(0.6931)
        >>> logit_adjusted_cross_entropy(logits, torch.tensor([0, 1]), [3.0, 1.0])
        tensor(0.8370)
    """
    tau, label_smoothing = _check_options(tau, label_smoothing, reduction)
    balanced_smoothing = check_bool("balanced_smoothing", balanced_smoothing)
    ignore_index = check_ignore_index(ignore_index)
    logits, targets = check_logits_targets(logits, targets, ignore_index=ignore_index)
    counts = check_class_counts(class_counts, logits.shape[1])
    return _logit_adjusted_cross_entropy(
        logits,
        targets,
        counts,
        tau=tau,
        label_smoothing=label_smoothing,
        balanced_smoothing=balanced_smoothing,
        reduction=reduction,
        ignore_index=ignore_index,
    )


def _logit_adjusted_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    counts: torch.Tensor,
    *,
    tau: float,
    label_smoothing: float,
    balanced_smoothing: bool,
    reduction: str,
    ignore_index: int,
) -> torch.Tensor:
    """On checked inputs; ``counts`` may live on any device (also ``meta``)."""
    work = logits.double() if logits.dtype == torch.float64 else logits.float()
    counts = counts.to(device=work.device, dtype=work.dtype)
    prior = (counts / counts.sum()).log()
    adjusted = work + float(tau) * prior
    valid = targets != ignore_index
    if balanced_smoothing and tau and label_smoothing:
        loss = _balanced_smoothed_cross_entropy(
            adjusted, targets, float(tau) * prior, label_smoothing, valid
        )
    else:
        loss = F.cross_entropy(
            adjusted,
            targets,
            label_smoothing=float(label_smoothing),
            reduction="none",
            ignore_index=ignore_index,
        )
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / valid.sum().clamp_min(1)


def _balanced_smoothed_cross_entropy(
    adjusted: torch.Tensor,
    targets: torch.Tensor,
    shift: torch.Tensor,
    label_smoothing: float,
    valid: torch.Tensor,
) -> torch.Tensor:
    """Per-sample CE of ``adjusted`` against ``softmax(log((1 - eps) e_y + eps / K) + shift)``.

    ``shift`` is ``tau * log(prior)``: the target of the raw posterior, uniformly smoothed, moved
    into the adjusted logits' space as the logits are. Ignored samples give 0.
    """
    num_classes = adjusted.shape[1]
    # scatter rather than one_hot: it needs no target values, so meta tensors pass through.
    safe = torch.where(valid, targets, 0)
    one_hot = torch.zeros_like(adjusted).scatter_(1, safe[:, None], 1.0)
    raw_target = (1.0 - label_smoothing) * one_hot + label_smoothing / num_classes
    target = (raw_target.log() + shift).softmax(dim=1)
    loss = -(target * adjusted.log_softmax(dim=1)).sum(dim=1)
    return torch.where(valid, loss, torch.zeros_like(loss))


class LogitAdjustedLoss(nn.Module):
    r"""Module form of :func:`logit_adjusted_cross_entropy`, holding the class counts.

    The counts live in an int64 buffer (saved in the ``state_dict``, moved by ``.to()``, never
    rounded by ``.half()``).

    Args:
        class_counts: Training samples per class, ``(K,)``, whole numbers > 0.
        tau: Strength of the adjustment (1 in the paper; 0 is plain cross-entropy).
        label_smoothing: Label smoothing of the cross-entropy.
        balanced_smoothing: Smooth the raw posterior's target, not the adjusted one's (see
            :func:`logit_adjusted_cross_entropy`); never overturns, so never warns.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        ignore_index: Target value to ignore.

    Warns:
        UserWarning: ``label_smoothing`` > 0 (``balanced_smoothing=False``) with a largest prior
            ratio above
            :math:`((1 - \varepsilon + \varepsilon/K) / (\varepsilon/K))^{1/\tau}` (19 for two
            classes at 0.1, 64 for seven): a head sample fitted exactly to the smoothed target
            is then predicted as the rarest class (``docs/longtail.md``).

    Shape:
        - logits: :math:`(B, K)`
        - targets: :math:`(B,)`
        - Output: :math:`()`, or :math:`(B,)` for ``reduction="none"``

    Example:
        >>> criterion = LogitAdjustedLoss([500, 50, 5])
        >>> loss = criterion(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
        >>> loss.shape
        torch.Size([])
    """

    def __init__(
        self,
        class_counts: torch.Tensor | Sequence[float],
        *,
        tau: float = 1.0,
        label_smoothing: float = 0.0,
        balanced_smoothing: bool = False,
        reduction: Reduction = "mean",
        ignore_index: int = -100,
    ) -> None:
        super().__init__()
        tau, label_smoothing = _check_options(tau, label_smoothing, reduction)
        balanced_smoothing = check_bool("balanced_smoothing", balanced_smoothing)
        with values_on_cpu(class_counts):
            counts = _counts_of_any_length(class_counts)
        if has_values(counts) and not bool((counts == counts.round()).all()):
            raise ValueError(f"`class_counts` must be whole numbers, got {counts.tolist()}.")
        self.class_counts: torch.Tensor
        # (a list's on the default device, or that of a `with torch.device(...)` block)
        device = class_counts.device if isinstance(class_counts, torch.Tensor) else None
        self.register_buffer("class_counts", counts.to(device or torch.empty(0).device, torch.long))
        # For reset_parameters after to_empty() (None: counts given on meta have no values).
        self._built_counts = counts.to(torch.long).cpu() if has_values(counts) else None
        if self._built_counts is not None:
            _warn_if_smoothing_overturns(
                self._built_counts, tau, label_smoothing, balanced=balanced_smoothing
            )
        self.tau = float(tau)
        self.label_smoothing = float(label_smoothing)
        self.balanced_smoothing = balanced_smoothing
        self.reduction = reduction
        self.ignore_index = check_ignore_index(ignore_index)

    __prepare_scriptable__ = torchscript_unsupported

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Restore ``class_counts`` as built (after ``to_empty()`` they are uninitialised)."""
        if self._built_counts is not None:
            self.class_counts.copy_(self._built_counts)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "class_counts"
        counts = checked_loaded_counts(
            state_dict, key, self.class_counts.shape[0], running=False, whole=True
        )
        if counts is not None:
            state_dict[key] = counts  # (the loader's own copy of the caller's dict)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Compute the loss; see :func:`logit_adjusted_cross_entropy`."""
        logits = check_floating("logits", logits)
        if logits.dim() == 2 and logits.shape[1] != self.class_counts.numel():
            raise ValueError(
                f"`logits` must have shape (B, K) with K={self.class_counts.numel()} "
                f"(len(class_counts)), got {describe(logits)}."
            )
        logits, targets = check_logits_targets(logits, targets, ignore_index=self.ignore_index)
        # The counts were checked at construction (and may be on the meta device now).
        return _logit_adjusted_cross_entropy(
            logits,
            targets,
            self.class_counts,
            tau=self.tau,
            label_smoothing=self.label_smoothing,
            balanced_smoothing=self.balanced_smoothing,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
        )

    def extra_repr(self) -> str:
        """Options shown in ``repr()``."""
        return (
            f"num_classes={self.class_counts.numel()}, tau={self.tau}, "
            f"label_smoothing={self.label_smoothing}, "
            f"balanced_smoothing={self.balanced_smoothing}, reduction={self.reduction!r}"
        )
