r"""The category-aware parts of MCCL, from the class counts: Eq. 7's weights, Eq. 10's temperature.

- Eq. 7, anchor weights: :math:`W_c(i) \propto \frac{1}{n_{y_i}} (1 - p_i)`, a rare class and a
  badly classified sample weigh more (:func:`category_aware_weights`).
- Eq. 10, temperature: :math:`\tau = \tau_0 \frac{1}{K}\sum_k (1 + n_k / \max n)`
  (:func:`adaptive_temperature`).

:func:`~micacl_layers.mccl.multiscale_category_aware_contrastive_loss` uses both.
"""

from __future__ import annotations

from typing import Literal

import torch

from micacl_layers._validation import (
    _counts_tensor,
    check_bool,
    check_logits_targets,
    check_targets,
    describe,
    has_values,
    is_real,
)
from micacl_layers.contrastive import _compute_dtype

__all__ = ["adaptive_temperature", "category_aware_weights"]

TemperatureMode = Literal["class_mean", "batch_mean", "fixed"]
WeightNorm = Literal["classes", "batch"]
_WEIGHT_NORMS = ("classes", "batch")
_TEMPERATURES = ("class_mean", "batch_mean", "fixed")


def category_aware_weights(
    logits: torch.Tensor,
    targets: torch.Tensor,
    class_counts: torch.Tensor,
    *,
    class_weighting: bool = True,
    difficulty: bool = True,
    detach_difficulty: bool = True,
    weight_norm: WeightNorm = "classes",
) -> torch.Tensor:
    r"""Category-aware anchor weights, Eq. 7: :math:`W_c(i) \propto \frac{1}{n_{y_i}} (1 - p_i)`.

    The class factor is normalised so that its mean over the ``K`` classes is 1,
    :math:`\frac{1/n_k}{\frac{1}{K}\sum_j 1/n_j}`: the paper's raw reciprocals (about 1e-4 on DFEW)
    would make the loss, and its gradients, vanish next to cross-entropy. The difficulty factor
    :math:`1 - p_i` (:math:`p_i` the predicted probability of the true class) is detached by
    default: left attached, minimising the (negative) ratio form would push :math:`p_i` *down*,
    working against the classifier.

    ``weight_norm="batch"`` divides the weights by their (detached) mean over the batch, so that
    it is exactly 1 and the loss keeps its scale next to cross-entropy whatever the batch's class
    mix: normalised over classes, the mean anchor weight of a batch drawn with DFEW's class
    frequencies is 0.40, and lower still with the difficulty factor. Not in the paper.

    Args:
        logits: Classifier logits :math:`y_p`.
        targets: Class indices.
        class_counts: Samples per class :math:`n_c`, ``(K,)``; zeros are treated as 1.
            Frequencies are rescaled so that the smallest non-zero one is 1.
        class_weighting: Use the class factor (``False``: 1 for every class).
        difficulty: Use the difficulty factor (``False``: 1 for every sample).
        detach_difficulty: Stop gradients through the difficulty factor.
        weight_norm: ``"classes"`` (mean of the class factor over the classes is 1) or
            ``"batch"`` (mean of the weights over the batch is 1).

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
    logits, targets = check_logits_targets(logits, targets)
    class_counts = _check_counts(class_counts, logits.shape[1])
    if weight_norm not in _WEIGHT_NORMS:
        raise ValueError(f"`weight_norm` must be one of {_WEIGHT_NORMS}, got {weight_norm!r}.")
    for name, value in (
        ("class_weighting", class_weighting),
        ("difficulty", difficulty),
        ("detach_difficulty", detach_difficulty),
    ):
        check_bool(name, value)
    return _category_aware_weights(
        logits,
        targets,
        class_counts,
        class_weighting=class_weighting,
        difficulty=difficulty,
        detach_difficulty=detach_difficulty,
        weight_norm=weight_norm,
    )


def _category_aware_weights(
    logits,
    targets,
    class_counts,
    *,
    class_weighting,
    difficulty,
    detach_difficulty,
    weight_norm="classes",
):
    dtype = _compute_dtype(logits)
    weights = torch.ones(targets.shape[0], dtype=dtype, device=logits.device)
    if class_weighting:
        inv = 1.0 / class_counts.to(device=logits.device, dtype=dtype).clamp_min(1.0)
        weights = weights * (inv / inv.mean())[targets]
    if difficulty:
        # 1 - p_y as the softmax mass of the other classes, exp(lse_{k != y} - lse_k): the same
        # value, without the cancellation of 1 - p_y (an exact 0 once p_y rounds to 1, 2e-9
        # as it is at a margin of 20 in float32). (finfo.min, not -inf: K = 1 keeps its gradient.)
        work = logits.to(dtype)
        others = work.scatter(1, targets[:, None], torch.finfo(dtype).min)
        hard = (others.logsumexp(dim=-1) - work.logsumexp(dim=-1)).exp()
        weights = weights * (hard.detach() if detach_difficulty else hard)
    if weight_norm == "batch" and weights.numel():
        # An all-zero batch (every sample predicted with certainty) stays zero, not NaN.
        weights = weights / weights.detach().mean().clamp_min(torch.finfo(dtype).tiny)
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
    :math:`\tau` changes with the batch composition; an empty batch gets Eq. 10's value);
    ``"fixed"`` returns :math:`\tau_0`.
    :math:`\tau` lies in :math:`[\tau_0, 2\tau_0]`.

    Args:
        class_counts: Samples per class, ``(K,)`` (or frequencies, as for
            :func:`category_aware_weights`).
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
    tau0 = _check_tau0(tau0)
    class_counts = _check_counts(class_counts, None)
    if mode == "batch_mean" and targets is not None:
        targets = check_targets("targets", targets, class_counts.shape[-1])
    return _adaptive_temperature(class_counts, tau0, mode=mode, targets=targets)


def _check_counts(class_counts: object, num_classes: int | None) -> torch.Tensor:
    """Counts for the functional forms: ``(K,)`` finite numbers >= 0 (zeros count as 1).

    Non-whole counts (frequencies) come back rescaled so that the smallest non-zero one is 1.
    """
    if not isinstance(class_counts, torch.Tensor):
        class_counts = _counts_tensor(class_counts)  # (bools, a mask, are a TypeError)
    if class_counts.is_complex() or class_counts.dtype == torch.bool:
        raise TypeError(f"`class_counts` must hold real numbers, got {describe(class_counts)}.")
    expected = "(K,)" if num_classes is None else f"({num_classes},)"
    if (
        class_counts.dim() != 1
        or not class_counts.numel()
        or (num_classes is not None and class_counts.shape[0] != num_classes)
    ):
        raise ValueError(
            f"`class_counts` must have shape {expected} (one count per class), "
            f"got {describe(class_counts)}."
        )
    if has_values(class_counts) and class_counts.numel():
        bad = ~torch.isfinite(class_counts) | (class_counts < 0)
        if bool(bad.any()):
            raise ValueError(
                f"`class_counts` must be finite and >= 0, got {class_counts.tolist()}."
            )
        # Only the ratios matter, but "a count of 0 counts as 1" would flatten frequencies
        # (all < 1) to ones: as the losses do, non-whole counts are rescaled so that the
        # smallest non-zero one is 1.
        nonzero = class_counts[class_counts > 0]
        if nonzero.numel() and not bool((class_counts == class_counts.round()).all()):
            class_counts = class_counts / nonzero.min()
    return class_counts


def _check_tau0(tau0: object) -> float:
    if not is_real(tau0) or not 0 < tau0 < float("inf"):
        raise ValueError(f"`tau0` must be a positive float (finite), got {tau0!r}.")
    return float(tau0)


def _adaptive_temperature(class_counts, tau0, *, mode, targets):
    counts = class_counts.to(torch.float64)
    if mode == "fixed":
        return torch.tensor(float(tau0), dtype=torch.float64, device=counts.device)
    ratio = counts / counts.max().clamp_min(1.0)
    if mode == "batch_mean":
        if targets is None:
            raise ValueError("`targets` is required for temperature='batch_mean'.")
        if targets.numel():  # (an empty batch has no mean: Eq. 10's mean over the classes)
            ratio = ratio[targets.to(counts.device)]
    return tau0 * (1.0 + ratio).mean()
