r"""Multiscale Category-aware Contrastive Learning loss (MCCL), MICACL Eq. 7-12.

For clip features :math:`X'` ``(B, D)``, classifier logits :math:`y_p` and labels :math:`y`:

- Eq. 8, scales: :math:`X'_s = \mathrm{Proj}_s(\mathrm{Pool}_s(X'))` for each pooling factor
  ``s`` (:func:`pool_features`, then a learned ``Linear(D // s, P)``).
- Eq. 9, similarities: :math:`S_{ij} = \cos(z_i, z_j) / \tau` on the embeddings of one scale.
- Eq. 10, temperature: :math:`\tau = \tau_0 \frac{1}{K}\sum_k (1 + n_k / \max n)`
  (:func:`adaptive_temperature`).
- Eq. 11, per-anchor term: the share of an anchor's similarity mass that falls on its
  positives, :math:`\ell_i = -\sum_{j \in P(i)} e^{S_{ij}} / \sum_{k \in A(i)} e^{S_{ik}}`, or
  SupCon's log form (:func:`supervised_contrastive_per_anchor`).
- Eq. 7, weights: :math:`W_c(i) \propto \frac{1}{n_{y_i}} (1 - p_i)`
  (:func:`category_aware_weights`).
- Eq. 12, the loss: :math:`\mathcal{L}_{MC} = \frac{1}{|S|}\sum_s \frac{1}{|\mathcal{A}|}
  \sum_{i \in \mathcal{A}} W_c(i)\, \ell_i^s` over the anchors :math:`\mathcal{A}` that have a
  positive (:func:`multiscale_category_aware_contrastive_loss`, :class:`MCCLoss`).

Numerics: similarities and log-sum-exp run in float32 (or wider) whatever the input dtype;
masked entries use the dtype's own ``finfo.min``, never ``inf``; an anchor without a positive
contributes an exact, graph-connected zero. Everything is plain autograd; the per-anchor term
(:mod:`micacl_layers.contrastive`) may run as a faster kernel with the same values, as
:mod:`micacl_layers.config` decides (see the "Internals" docs page).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from micacl_layers._fast import contrastive as _fast
from micacl_layers._fast.onednn import FastLinear
from micacl_layers._validation import (
    check_class_counts,
    check_finite_parameters,
    check_floating,
    check_logits_targets,
    check_ndim,
    check_positive_int,
    check_same_batch,
    check_targets,
    describe,
    has_values,
    to_parameter_dtype,
    torchscript_unsupported,
)
from micacl_layers.contrastive import (
    Form,
    _compute_dtype,
    _contrastive_reference,
    _norm_eps,
    contrastive_per_anchor,
    supervised_contrastive_per_anchor,
)
from micacl_layers.distributed import gather_with_grad, gather_without_grad, is_distributed
from micacl_layers.memory import ContrastMemory

__all__ = [
    "MCCLOptions",
    "MCCLOutput",
    "MCCLoss",
    "MultiscaleCategoryAwareContrastiveLoss",
    "adaptive_temperature",
    "category_aware_weights",
    "multiscale_category_aware_contrastive_loss",
    "pool_features",
    "supervised_contrastive_per_anchor",
]

TemperatureMode = Literal["class_mean", "batch_mean", "fixed"]
WeightNorm = Literal["classes", "batch"]
_WEIGHT_NORMS = ("classes", "batch")
Reduction = Literal["mean", "sum", "none"]
_FORMS = ("ratio", "log")  # (the forms of micacl_layers.contrastive)
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
        p_true = logits.to(dtype).softmax(dim=-1).gather(1, targets[:, None]).squeeze(1)
        hard = 1.0 - p_true
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
    _check_tau0(tau0)
    class_counts = _check_counts(class_counts, None)
    if mode == "batch_mean" and targets is not None:
        targets = check_targets("targets", targets, class_counts.shape[-1])
    return _adaptive_temperature(class_counts, tau0, mode=mode, targets=targets)


def _check_counts(class_counts: object, num_classes: int | None) -> torch.Tensor:
    """Counts for the functional forms: ``(K,)`` finite numbers >= 0 (zeros count as 1)."""
    if not isinstance(class_counts, torch.Tensor):
        if isinstance(class_counts, (str, bytes)):
            raise TypeError(
                f"`class_counts` must be a sequence of numbers or a tensor, got {class_counts!r}."
            )
        try:
            class_counts = torch.as_tensor(class_counts, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"`class_counts` must be a sequence of numbers or a tensor, got {class_counts!r}."
            ) from None
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
    return class_counts


def _check_tau0(tau0: object) -> None:
    if isinstance(tau0, bool) or not isinstance(tau0, (int, float)) or not 0 < tau0 < float("inf"):
        raise ValueError(f"`tau0` must be a positive float (finite), got {tau0!r}.")


def _adaptive_temperature(class_counts, tau0, *, mode, targets):
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
    features = check_floating("features", features)
    check_ndim("features", features, 2, "(B, D)")
    check_positive_int("scale", scale)
    if scale > features.shape[1]:
        raise ValueError(
            f"`scale` must lie in [1, D={features.shape[1]}] so that D // scale "
            f"features remain, got {scale!r} for `features` of "
            f"{describe(features)}."
        )
    return _pool_features(features, scale)


def _pool_features(features: torch.Tensor, scale: int) -> torch.Tensor:
    if scale == 1:
        return features
    batch, dim = features.shape
    if dim % scale == 0:
        # Same values as adaptive_avg_pool1d when the bins are equal, without its overhead.
        return features.view(batch, dim // scale, scale).mean(dim=-1)
    return F.adaptive_avg_pool1d(features.unsqueeze(1), dim // scale).squeeze(1)


def _reduce(per_anchor: torch.Tensor, has_positive: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_anchor
    total = per_anchor.sum(dim=-1)
    if reduction == "sum":
        return total
    # Mean over anchors that have a positive: anchors without one carry no signal, and
    # dividing by B would make the loss scale with how many of them a batch happened to hold.
    return total / has_positive.sum().clamp_min(1)


def _check_scales(scales: object) -> tuple[int, ...]:
    try:
        values: tuple[object, ...] = tuple(scales)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"`scales` must be a sequence of ints, got {scales!r}.") from None
    if not values or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in values):
        raise ValueError(f"`scales` must be a non-empty sequence of positive ints, got {values!r}.")
    return cast(tuple[int, ...], values)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")


@dataclasses.dataclass(frozen=True)
class MCCLOptions:
    r"""The options of MCCL (Eq. 7-12), validated once when built.

    :class:`MCCLoss` keeps one (``.options``; its attributes of the same names read and replace
    it); :func:`multiscale_category_aware_contrastive_loss` builds one from its keywords.

    Attributes:
        scales: Pooling factors ``s`` (Eq. 8); each gives ``D // s`` pooled features.
        tau0: Base temperature :math:`\tau_0 > 0` (finite).
        temperature: ``"class_mean"`` (Eq. 10), ``"batch_mean"`` (public code) or ``"fixed"``.
        form: ``"ratio"`` (Eq. 11 as printed) or ``"log"`` (SupCon).
        exclude_self: Exclude each anchor from its own positives and denominator.
        class_weighting: Use the class factor of Eq. 7.
        difficulty: Use the difficulty factor of Eq. 7.
        detach_difficulty: Stop gradients through the difficulty factor.
        reduction: ``"mean"`` (over anchors with positives), ``"sum"`` or ``"none"``.
        class_average: Balanced Contrastive Learning's class-averaged sums (Zhu et al., CVPR
            2022, Eq. 5): each class's contribution is divided by its number of candidates
            (:func:`supervised_contrastive_per_anchor`). Not in the paper.
        class_complements: BCL's class complements: one prototype per class (e.g. the
            classifier's weight rows, passed as ``prototypes``), pooled and projected like the
            features at every scale, joins every batch as a candidate, so that every class is
            contrasted and every anchor has a positive. Not in the paper.
        weight_norm: ``"classes"`` (as the paper's Eq. 7, normalised over classes) or
            ``"batch"``: the weights are divided by their (detached) mean over the anchors that
            have a positive, the anchors Eq. 12 averages over, so that it is 1 and the loss
            keeps its scale next to cross-entropy whatever the batch's class mix (see
            :func:`category_aware_weights`). Not in the paper.

    Example:
        >>> MCCLOptions(scales=(1, 2), form="log").form
        'log'
        >>> MCCLOptions(tau0=0.0)
        Traceback (most recent call last):
            ...
        ValueError: `tau0` must be a positive float (finite), got 0.0.
    """

    scales: Sequence[int] = (1, 2, 4)  # (stored as a tuple)
    tau0: float = 0.07
    temperature: TemperatureMode = "class_mean"
    form: Form = "ratio"
    exclude_self: bool = True
    class_weighting: bool = True
    difficulty: bool = True
    detach_difficulty: bool = True
    reduction: Reduction = "mean"
    class_average: bool = False
    class_complements: bool = False
    weight_norm: WeightNorm = "classes"

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", _check_scales(self.scales))
        _check_tau0(self.tau0)
        object.__setattr__(self, "tau0", float(self.tau0))
        _check_choice("temperature", self.temperature, _TEMPERATURES)
        _check_choice("form", self.form, _FORMS)
        _check_choice("reduction", self.reduction, _REDUCTIONS)
        _check_choice("weight_norm", self.weight_norm, _WEIGHT_NORMS)
        for name in ("class_average", "class_complements"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"`{name}` must be a bool, got {getattr(self, name)!r}.")

    def check_feature_dim(self, feature_dim: int) -> None:
        """Every scale must leave at least one pooled feature of ``feature_dim``."""
        if max(self.scales) > feature_dim:
            raise ValueError(
                f"`scales` must be a non-empty sequence of ints in "
                f"[1, feature_dim={feature_dim}], got {self.scales!r}."
            )


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
    class_average: bool = False,
    class_complements: bool = False,
    weight_norm: WeightNorm = "classes",
    prototypes: torch.Tensor | None = None,
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
        targets: Class indices (any integer dtype).
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
        class_average: Class-averaged sums (BCL); see :class:`MCCLOptions`.
        class_complements: Class prototypes as candidates (BCL); needs ``prototypes``.
        weight_norm: ``"classes"`` (Eq. 7) or ``"batch"``; see :class:`MCCLOptions`.
        prototypes: One prototype per class in the feature space, ``(K, D)`` (e.g.
            ``classifier.weight``), for ``class_complements``.

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
    options = MCCLOptions(
        scales=scales,
        tau0=tau0,
        temperature=temperature,
        form=form,
        exclude_self=exclude_self,
        class_weighting=class_weighting,
        difficulty=difficulty,
        detach_difficulty=detach_difficulty,
        reduction=reduction,
        class_average=class_average,
        class_complements=class_complements,
        weight_norm=weight_norm,
    )
    features, logits, targets = _check_inputs(features, logits, targets)
    counts = check_class_counts(class_counts, logits.shape[1])
    result, _ = _multiscale_loss(
        features,
        logits,
        targets,
        counts,
        options,
        projections=projections,
        memory=memory,
        return_breakdown=return_breakdown,
        need_embeddings=False,
        prototypes=prototypes,
    )
    return result


def _check_prototypes(
    prototypes: object, options: MCCLOptions, num_classes: int, features: torch.Tensor
) -> torch.Tensor | None:
    if not options.class_complements:
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


def _check_inputs(
    features: object, logits: object, targets: object
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    features = check_floating("features", features)
    check_ndim("features", features, 2, "(B, D)")
    logits, targets = check_logits_targets(logits, targets)
    check_same_batch(features=features, logits=logits, targets=targets)
    return features, logits, targets


def _multiscale_loss(
    features: torch.Tensor,
    logits: torch.Tensor,
    targets: torch.Tensor,
    counts: torch.Tensor,
    options: MCCLOptions,
    *,
    projections: Sequence[Callable[[torch.Tensor], torch.Tensor]] | nn.ModuleList | None,
    memory: tuple[Sequence[torch.Tensor], torch.Tensor] | None,
    return_breakdown: bool,
    need_embeddings: bool,
    prototypes: torch.Tensor | None = None,
) -> tuple[torch.Tensor | MCCLOutput, list[torch.Tensor | None]]:
    """Eq. 12 on checked inputs; also returns each scale's embeddings (for a memory bank).

    A scale whose embeddings a fast kernel never formed (``micacl_layers._fast.contrastive``'s
    projected path, only with a linear projection, no memory and ``need_embeddings=False``) has
    ``None`` in the returned list.
    """
    scales = options.scales
    options.check_feature_dim(features.shape[1])
    if projections is not None and len(projections) != len(scales):
        raise ValueError(
            f"`projections` must hold one callable per scale ({len(scales)}), "
            f"got {len(projections)}."
        )
    if memory is not None and len(memory[0]) != len(scales):
        raise ValueError(
            f"`memory` must hold one embedding tensor per scale ({len(scales)}), "
            f"got {len(memory[0])}."
        )

    protos = _check_prototypes(prototypes, options, logits.shape[1], features)
    weights = _category_aware_weights(  # Eq. 7
        logits,
        targets,
        counts,
        class_weighting=options.class_weighting,
        difficulty=options.difficulty,
        detach_difficulty=options.detach_difficulty,
    )
    if options.weight_norm == "batch":
        # Mean 1 over the anchors that enter the mean of Eq. 12 (those with a positive).
        counted = _anchors_with_positive(targets, memory, protos, options.exclude_self)
        if bool(counted.any()):
            scale = weights.detach()[counted].mean().clamp_min(torch.finfo(weights.dtype).tiny)
            weights = weights / scale
    tau = _adaptive_temperature(
        counts,
        options.tau0,
        mode=options.temperature,  # Eq. 10
        targets=targets,
    )
    per_scale: list[torch.Tensor] = []
    embeddings: list[torch.Tensor | None] = []
    has_positive = targets.new_zeros(0, dtype=torch.bool)
    for idx, s in enumerate(scales):
        z = _pool_features(features, s)  # Eq. 8: Pool_s ...
        projection = None if projections is None else projections[idx]
        if (
            memory is None
            and protos is None
            and not need_embeddings
            and not options.class_average
            and _fast.projected_applies(projection, z, tau)
        ):
            dtype = _compute_dtype(z)
            embeddings.append(None)
            loss_s, has_positive = _fast.projected_contrastive(
                z.to(dtype),
                projection,
                targets,
                tau.to(dtype),
                options.form,
                options.exclude_self,
                _norm_eps(dtype),
                _contrastive_reference,
            )
        else:
            if projection is not None:
                z = projection(z)  # ... then Proj_s
            embeddings.append(z)
            mem_z, mem_t = (None, None) if memory is None else (memory[0][idx], memory[1])
            if protos is not None:  # class complements: candidates (never anchors) as a memory
                p = _pool_features(protos, s)
                p = p if projection is None else projection(p)
                labels = torch.arange(protos.shape[0], device=targets.device)
                mem_z = p if mem_z is None else torch.cat([mem_z.to(p.dtype), p])
                mem_t = labels if mem_t is None else torch.cat([mem_t.to(targets.device), labels])
            loss_s, has_positive = contrastive_per_anchor(  # Eq. 9, 11
                z,
                targets,
                tau,
                form=options.form,
                exclude_self=options.exclude_self,
                memory_z=mem_z,
                memory_targets=mem_t,
                class_average=options.class_average,
            )
        per_scale.append(_reduce(loss_s * weights, has_positive, options.reduction))
    stacked = torch.stack(per_scale)
    loss = stacked.mean(dim=0)  # Eq. 12: the mean over scales
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

    Dtypes: features of another floating dtype than the projections (float16/bfloat16 features
    that left an autocast region, float64 data) are cast to the projections' dtype before they
    are projected, as ``torch.autocast`` would cast them (under an active autocast, autocast
    decides); the similarities then run in float32 (float64 for float64 parameters). Targets
    may have any integer dtype. TorchScript is not supported (``torch.jit.script`` raises a
    ``RuntimeError`` that says so); ``torch.compile`` is.

    Args:
        num_classes: Number of classes ``K``.
        feature_dim: Feature size ``D`` of the clip features.
        class_counts: Samples per class ``(K,)``, all > 0, or ``None`` to count running labels.
            Only ratios matter: frequencies or ratios are accepted and stored rescaled so that
            the smallest is 1, in a float64 buffer that ``.half()`` and ``.to(dtype)`` leave
            as it is (whole counts: int64).
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
        class_average: Class-averaged sums (Balanced Contrastive Learning, Zhu et al. 2022);
            see :class:`MCCLOptions`. Not in the paper.
        class_complements: Class prototypes in every batch (BCL); ``forward`` then needs
            ``prototypes``. Not in the paper.
        weight_norm: ``"classes"`` (Eq. 7) or ``"batch"`` (weights' batch mean 1). Not in the
            paper.
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
        - targets: :math:`(B,)`, any integer dtype
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

    class_counts: torch.Tensor  # (a buffer: typed for the checker)
    projections: nn.ModuleList | None
    memory: ContrastMemory | None

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
        class_average: bool = False,
        class_complements: bool = False,
        weight_norm: WeightNorm = "classes",
        memory_size: int = 0,
        gather_distributed: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.feature_dim = check_positive_int("feature_dim", feature_dim)
        self.options = MCCLOptions(
            scales=scales,
            tau0=tau0,
            temperature=temperature,
            form=form,
            exclude_self=exclude_self,
            class_weighting=class_weighting,
            difficulty=difficulty,
            detach_difficulty=detach_difficulty,
            reduction=reduction,
            class_average=class_average,
            class_complements=class_complements,
            weight_norm=weight_norm,
        )
        self.options.check_feature_dim(feature_dim)
        if projection_dim is not None:
            check_positive_int("projection_dim", projection_dim)
        self.projection_dim = projection_dim
        self.track_class_counts = class_counts is None
        if class_counts is None:
            counts = torch.zeros(num_classes, dtype=torch.long, device=device)
        else:
            checked = check_class_counts(class_counts, num_classes)  # frequencies: min -> 1
            whole = bool((checked == checked.round()).all())
            counts = checked.to(device=device, dtype=torch.long if whole else torch.float64)
        # int64 (or float64 for frequencies, kept so by _apply) so that model.half() or
        # .double() never round the counts.
        self.register_buffer("class_counts", counts)
        if projection_dim is None:
            self.projections = None
        else:
            self.projections = nn.ModuleList(
                FastLinear(feature_dim // s, projection_dim, device=device, dtype=dtype)
                for s in self.options.scales
            )
        if isinstance(memory_size, bool) or not isinstance(memory_size, int) or memory_size < 0:
            raise ValueError(
                f"`memory_size` must be >= 0 (0 disables the memory), got {memory_size!r}."
            )
        self.gather_distributed = gather_distributed
        dims = [projection_dim or feature_dim // s for s in self.options.scales]
        self.memory = ContrastMemory(memory_size, dims, device=device) if memory_size else None

    __prepare_scriptable__ = torchscript_unsupported

    def reset_memory(self) -> None:
        """Empty the cross-batch memory (no-op without one)."""
        if self.memory is not None:
            self.memory.reset()

    @torch.no_grad()
    def _apply(self, fn, recurse=True):
        # .half(), .to(dtype) etc. convert floating buffers: fixed non-integer counts (given as
        # frequencies) keep their float64 values and only follow the device.
        counts = self.class_counts
        result = super()._apply(fn, recurse)
        if counts.is_floating_point() and self.class_counts.dtype != torch.float64:
            self.class_counts = counts.to(self.class_counts.device)
        return result

    def update_class_counts(self, targets: torch.Tensor) -> None:
        """Add a batch of labels to the running counts (done by ``forward`` in training mode)."""
        if not has_values(targets):  # meta: shapes only, nothing to count
            return
        self.class_counts += torch.bincount(
            targets.to(self.class_counts.device), minlength=self.num_classes
        )

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
        prototypes: torch.Tensor | None = None,
        return_breakdown: bool = False,
    ) -> torch.Tensor | MCCLOutput:
        """Compute the loss; see :func:`multiscale_category_aware_contrastive_loss`.

        Args:
            features: Clip features.
            logits: Classifier logits.
            targets: Class indices.
            prototypes: ``(K, D)`` class prototypes for ``class_complements`` (e.g.
                ``classifier.weight``); the same on every rank under DDP, so never gathered.
            return_breakdown: Return an :class:`MCCLOutput`.

        Returns:
            The loss, or an :class:`MCCLOutput`.
        """
        features = check_floating("features", features)
        check_ndim("features", features, 2, "(B, D)")
        if features.shape[1] != self.feature_dim:
            raise ValueError(
                f"`features` must have shape (B, D) with D={self.feature_dim} "
                f"(feature_dim), got {describe(features)}."
            )
        logits = check_floating("logits", logits)
        # K first: with too few logit columns the targets would look out of range instead.
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"`logits` must have shape (B, K) with K={self.num_classes} "
                f"(num_classes), got {describe(logits)}."
            )
        logits, targets = check_logits_targets(logits, targets)
        check_same_batch(features=features, logits=logits, targets=targets)
        check_finite_parameters(self)
        if self.projections is not None:
            # Features from an autocast region (float16/bfloat16) or float64 data meet the
            # projections in their dtype, as autocast would cast them.
            features = to_parameter_dtype(features, cast(nn.Linear, self.projections[0]).weight)
        if self.gather_distributed and is_distributed():
            # Every rank computes the loss of the global batch; see micacl_layers.distributed
            # for why DDP then needs no gradient rescaling.
            features, logits = gather_with_grad(features), gather_with_grad(logits)
            targets = gather_without_grad(targets)
        if self.track_class_counts and self.training:
            self.update_class_counts(targets)
        # A class not seen yet counts as one sample, so its weight stays finite.
        counts = self.class_counts.clamp_min(1) if self.track_class_counts else self.class_counts
        bank = self.memory if self.training else None
        memory = bank.get() if bank is not None and len(bank) else None
        result, embeddings = _multiscale_loss(
            features,
            logits,
            targets,
            counts,
            self.options,
            projections=self.projections,
            memory=memory,
            return_breakdown=return_breakdown,
            need_embeddings=bank is not None,
            prototypes=prototypes,
        )
        if bank is not None:  # (need_embeddings: every scale's embeddings were formed)
            bank.push(cast(list[torch.Tensor], embeddings), targets)
        return result

    def extra_repr(self) -> str:
        """Options shown in ``repr()``."""
        return (
            f"num_classes={self.num_classes}, feature_dim={self.feature_dim}, "
            f"scales={self.scales}, projection_dim={self.projection_dim}, tau0={self.tau0}, "
            f"temperature={self.temperature!r}, form={self.form!r}, "
            f"class_average={self.class_average}, "
            f"class_complements={self.class_complements}, "
            f"weight_norm={self.weight_norm!r}, "
            f"track_class_counts={self.track_class_counts}, "
            f"memory_size={0 if self.memory is None else self.memory.size}, "
            f"gather_distributed={self.gather_distributed}"
        )


def _option_attribute(name: str) -> property:
    # Reading ``mccl.form`` reads the options; assigning it builds validated new options.
    def get(self: MultiscaleCategoryAwareContrastiveLoss) -> object:
        return getattr(self.options, name)

    def set_(self: MultiscaleCategoryAwareContrastiveLoss, value: object) -> None:
        changes: dict[str, Any] = {name: value}
        self.options = dataclasses.replace(self.options, **changes)
        self.options.check_feature_dim(self.feature_dim)

    return property(get, set_, doc=f"``options.{name}`` (see :class:`MCCLOptions`).")


for _field in dataclasses.fields(MCCLOptions):
    setattr(MultiscaleCategoryAwareContrastiveLoss, _field.name, _option_attribute(_field.name))
del _field

MCCLoss = MultiscaleCategoryAwareContrastiveLoss
