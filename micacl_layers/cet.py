"""Classification Enhancement Term (CET) of MICACL Eq. 13.

The paper defines CET only as "feature augmentation regularization and intensity-aware loss"
(its appendix was never published). The public code used label-smoothed cross-entropy and a
"regulariser" ``mse(f, f + 0.1 * noise) * 0.1``, which does not depend on the parameters at all
(its gradient is exactly zero). Ours, every term with a gradient:

.. math::
    \\mathcal{L}_{CET} = \\mathrm{CE}_{\\epsilon}(z, y) + \\lambda_{IAL}\\, \\mathrm{IAL}(z, y)
    + \\lambda_{aug}\\, \\mathrm{CE}_{\\epsilon}(g(f + \\sigma\\, \\mathrm{rms}(f)\\, \\xi), y)

where :math:`g` is the classifier that produced :math:`z = g(f)` and :math:`\\xi \\sim N(0, I)`:
the augmented features must still be classified correctly, which widens the margins around each
class in feature space (the intent of "feature augmentation regularization").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from micacl_layers._validation import (
    call_named,
    check_bool,
    check_class_counts,
    check_floating,
    check_generator,
    check_ignore_index,
    check_logits_targets,
    check_ndim,
    check_nonnegative_float,
    check_same_batch,
    check_unit_interval,
    describe,
    has_values,
    to_parameter_dtype,
    torchscript_unsupported,
)
from micacl_layers.contrastive import _row_scale
from micacl_layers.ial import intensity_aware_loss
from micacl_layers.logit_adjustment import (
    _logit_adjusted_cross_entropy,
    _warn_if_smoothing_overturns,
)

__all__ = [
    "CETOutput",
    "ClassificationEnhancementTerm",
    "classification_enhancement_term",
    "feature_augmentation_loss",
]

Classifier = Callable[[torch.Tensor], torch.Tensor]


class CETOutput(NamedTuple):
    """Breakdown of the CET: the total and each weighted-before term (unweighted values).

    Attributes:
        loss: The total CET.
        ce: Label-smoothed cross-entropy.
        ial: Intensity-aware loss (0 when its weight is 0).
        aug: Feature-augmentation term (0 when its weight is 0).

    Example:
        >>> cet = ClassificationEnhancementTerm(aug_weight=0.0)
        >>> out = cet(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), return_breakdown=True)
        >>> out._fields
        ('loss', 'ce', 'ial', 'aug')
        >>> bool(torch.isclose(out.loss, out.ce + cet.ial_weight * out.ial)), out.aug.item() == 0
        (True, True)
    """

    loss: torch.Tensor
    ce: torch.Tensor
    ial: torch.Tensor
    aug: torch.Tensor


def _work(t: torch.Tensor) -> torch.Tensor:
    return t.double() if t.dtype == torch.float64 else t.float()


def _all_ignored(targets: torch.Tensor, ignore_index: int) -> bool:
    # (Not decidable on meta, where only shapes exist: computed as if some target counted.)
    return has_values(targets) and bool((targets == ignore_index).all())


def feature_augmentation_loss(
    features: torch.Tensor,
    targets: torch.Tensor,
    classifier: Classifier,
    *,
    noise_std: float = 0.1,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Cross-entropy of the classifier on Gaussian-augmented features.

    :math:`\mathrm{CE}(g(f + \sigma\,\mathrm{rms}(f)\,\xi), y)`, with the noise scaled by each
    feature vector's (detached) root-mean-square so ``noise_std`` is relative. Gradients reach both
    the features and the classifier. Features of another floating dtype than an ``nn.Module``
    classifier's parameters (float16/bfloat16 that left an autocast region) are cast to that
    dtype first, as ``torch.autocast`` would.

    Args:
        features: Features fed to the classifier.
        targets: Class indices.
        classifier: The callable ``g`` mapping features to logits (e.g. the model's last layer).
        noise_std: Relative noise level :math:`\sigma \ge 0`.
        label_smoothing: Label smoothing of the cross-entropy.
        ignore_index: Target value to ignore.
        generator: Random generator for the noise (reproducibility).

    Returns:
        A scalar loss in float32 (float64 for float64 features).

    Shape:
        - features: :math:`(B, D)`
        - targets: :math:`(B,)`
        - Output: :math:`()`

    Example:
        >>> head = torch.nn.Linear(16, 3)
        >>> f = torch.randn(4, 16, requires_grad=True)
        >>> loss = feature_augmentation_loss(f, torch.tensor([0, 1, 2, 0]), head)
        >>> loss.backward(); bool(f.grad.abs().sum() > 0)
        True
    """
    return _feature_augmentation_loss(
        features,
        targets,
        classifier,
        noise_std=noise_std,
        label_smoothing=label_smoothing,
        ignore_index=ignore_index,
        generator=generator,
        num_classes=None,
    )


def _feature_augmentation_loss(
    features,
    targets,
    classifier,
    *,
    noise_std,
    label_smoothing,
    ignore_index,
    generator,
    num_classes,
):
    """:func:`feature_augmentation_loss`; ``num_classes``: the ``K`` the classifier must give."""
    features = check_floating("features", features)
    check_ndim("features", features, 2, "(B, D)")
    if not callable(classifier):
        raise TypeError(
            f"`classifier` must be a callable mapping features to logits, "
            f"got {type(classifier).__name__}."
        )
    check_nonnegative_float("noise_std", noise_std)
    label_smoothing = check_unit_interval("label_smoothing", label_smoothing)
    ignore_index = check_ignore_index(ignore_index)
    generator = check_generator(generator)
    if isinstance(classifier, nn.Module):
        # Features that left an autocast region (float16/bfloat16) meet a float32 classifier
        # outside it here: cast them to its parameters' dtype, as autocast would.
        parameter = next((p for p in classifier.parameters() if p.is_floating_point()), None)
        features = to_parameter_dtype(features, parameter)
    # Each row divided by a power of two near its largest entry first (exact), so the square
    # can neither overflow (|f| > 256 in float16, 1.8e19 in float32) nor underflow to no noise.
    scale = _row_scale(features)
    rms = (features.detach() / scale).pow(2).mean(dim=1, keepdim=True).sqrt() * scale
    noise = (
        torch.randn(
            features.shape, generator=generator, device=features.device, dtype=features.dtype
        )
        if generator is not None
        else torch.randn_like(features)
    )
    augmented = features + noise_std * rms * noise
    logits = call_named(
        "classifier",
        classifier,
        augmented,
        "the input is the augmented `features`; pass the classifier that produced `logits` and "
        "the features it saw",
    )
    if (
        not isinstance(logits, torch.Tensor)
        or logits.dim() != 2
        or (num_classes is not None and logits.shape[1] != num_classes)
    ):
        expected = "(B, K)" if num_classes is None else f"(B, K) with K={num_classes}"
        raise ValueError(
            f"`classifier` must map `features` {describe(features)} to logits {expected} "
            f"(the classifier that produced `logits`), got {describe(logits)}."
        )
    logits, targets = check_logits_targets(logits, targets, ignore_index=ignore_index)
    check_same_batch(features=features, targets=targets)
    if _all_ignored(targets, ignore_index):
        return _work(logits).sum() * 0.0
    return F.cross_entropy(
        _work(logits), targets, label_smoothing=label_smoothing, ignore_index=ignore_index
    )


def classification_enhancement_term(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    features: torch.Tensor | None = None,
    classifier: Classifier | None = None,
    label_smoothing: float = 0.1,
    ial_weight: float = 0.1,
    aug_weight: float = 0.1,
    aug_noise_std: float = 0.1,
    ignore_index: int = -100,
    generator: torch.Generator | None = None,
    return_breakdown: bool = False,
    logit_adjustment: float = 0.0,
    class_counts: torch.Tensor | Sequence[float] | None = None,
    balanced_smoothing: bool = False,
) -> torch.Tensor | CETOutput:
    r"""Classification Enhancement Term: smoothed CE + :math:`\lambda_{IAL}` IAL + feature aug.

    With ``logit_adjustment`` :math:`= \tau > 0` the (smoothed) cross-entropy is the
    logit-adjusted one of Menon et al. (ICLR 2021), on :math:`z + \tau \log \pi` with
    :math:`\pi` the training class prior from ``class_counts``
    (:func:`~micacl_layers.logit_adjustment.logit_adjusted_cross_entropy`); predict with the raw
    logits. Not in the paper; IAL and the feature-augmentation term stay as they are.

    Args:
        logits: Classifier logits :math:`z`.
        targets: Class indices.
        features: Features the classifier saw; needed when ``aug_weight > 0``.
        classifier: The classifier :math:`g`; needed when ``aug_weight > 0``.
        label_smoothing: Label smoothing of both cross-entropies (0.1 as the public code).
        ial_weight: Weight of the intensity-aware loss (0.1 as the IAL paper's code).
        aug_weight: Weight of the feature-augmentation term; 0 disables it.
        aug_noise_std: Relative noise level of the feature augmentation.
        ignore_index: Target value to ignore.
        generator: Random generator for the augmentation noise.
        return_breakdown: Return a :class:`CETOutput`.
        logit_adjustment: :math:`\tau \ge 0` of the logit adjustment (0: plain CE).
        class_counts: Training samples per class ``(K,)``, needed when
            ``logit_adjustment > 0`` (checked whenever given).
        balanced_smoothing: With ``logit_adjustment > 0``, smooth the target of the raw
            posterior rather than of the adjusted one
            (:func:`~micacl_layers.logit_adjustment.logit_adjusted_cross_entropy`), so that the
            smoothing cannot overturn a head sample's prediction. Not in the paper.

    Returns:
        A scalar loss (float32 or wider), or a :class:`CETOutput`.

    Shape:
        - logits: :math:`(B, K)`
        - targets: :math:`(B,)`
        - features: :math:`(B, D)`
        - Output: :math:`()`

    Example:
        >>> head = torch.nn.Linear(16, 3)
        >>> f = torch.randn(4, 16)
        >>> loss = classification_enhancement_term(head(f), torch.tensor([0, 1, 2, 0]),
        ...                                        features=f, classifier=head)
        >>> loss.shape
        torch.Size([])
    """
    logits, targets = check_logits_targets(
        logits, targets, ignore_index=ignore_index, min_classes=2
    )
    for name, value in (
        ("ial_weight", ial_weight),
        ("aug_weight", aug_weight),
        ("logit_adjustment", logit_adjustment),
    ):
        check_nonnegative_float(name, value)
    label_smoothing = check_unit_interval("label_smoothing", label_smoothing)
    balanced_smoothing = check_bool("balanced_smoothing", balanced_smoothing)
    ignore_index = check_ignore_index(ignore_index)
    check_nonnegative_float("aug_noise_std", aug_noise_std)
    return_breakdown = check_bool("return_breakdown", return_breakdown)
    generator = check_generator(generator)
    # Checked whenever given, so that wrong counts never pass unseen while logit_adjustment is 0
    # or every target is ignored (and once: the adjusted CE below takes them checked).
    counts = None if class_counts is None else check_class_counts(class_counts, logits.shape[1])
    work = _work(logits)
    zero = work.sum() * 0.0
    if _all_ignored(targets, ignore_index):
        ce = zero
    elif logit_adjustment:
        if counts is None:
            raise ValueError(
                f"`class_counts` is required when logit_adjustment > 0 (got "
                f"logit_adjustment={logit_adjustment}): pass the training split's "
                f"samples per class, or set logit_adjustment=0."
            )
        ce = _logit_adjusted_cross_entropy(
            logits,
            targets,
            counts,
            tau=logit_adjustment,
            label_smoothing=label_smoothing,
            balanced_smoothing=balanced_smoothing,
            reduction="mean",
            ignore_index=ignore_index,
        )
    else:
        ce = F.cross_entropy(
            work, targets, label_smoothing=label_smoothing, ignore_index=ignore_index
        )
    ial = intensity_aware_loss(logits, targets, ignore_index=ignore_index) if ial_weight else zero
    if aug_weight:
        if features is None or classifier is None:
            missing = "`features`" if features is None else "`classifier`"
            raise ValueError(
                f"{missing} is required when aug_weight > 0 (got aug_weight={aug_weight}): pass "
                f"the features and the classifier that produced `logits`, or set aug_weight=0."
            )
        features = check_floating("features", features)
        check_same_batch(logits=logits, features=features)
        aug = _feature_augmentation_loss(
            features,
            targets,
            classifier,
            noise_std=aug_noise_std,
            label_smoothing=label_smoothing,
            ignore_index=ignore_index,
            generator=generator,
            num_classes=logits.shape[1],
        )
    else:
        aug = zero
    total = ce + ial_weight * ial + aug_weight * aug
    if return_breakdown:
        return CETOutput(total, ce, ial, aug)
    return total


class ClassificationEnhancementTerm(nn.Module):
    r"""Module form of :func:`classification_enhancement_term`, the CET of Eq. 13.

    Args:
        label_smoothing: Label smoothing of the cross-entropies.
        ial_weight: Weight :math:`\lambda_{IAL}` of the intensity-aware loss.
        aug_weight: Weight :math:`\lambda_{aug}` of the feature-augmentation term.
        aug_noise_std: Relative noise level :math:`\sigma`.
        ignore_index: Target value to ignore.
        logit_adjustment: :math:`\tau` of the logit-adjusted CE (Menon et al. 2021; 0: plain
            CE); ``forward`` then needs ``class_counts``. Not in the paper.
        balanced_smoothing: Smooth the raw posterior's target under the logit adjustment (see
            :func:`classification_enhancement_term`). Not in the paper.

    Shape:
        - logits: :math:`(B, K)`
        - targets: :math:`(B,)`
        - features: :math:`(B, D)`
        - Output: :math:`()`

    Example:
        >>> cet = ClassificationEnhancementTerm()
        >>> head = torch.nn.Linear(16, 7)
        >>> f = torch.randn(4, 16)
        >>> cet(head(f), torch.tensor([0, 1, 2, 6]), features=f, classifier=head).shape
        torch.Size([])
    """

    def __init__(
        self,
        *,
        label_smoothing: float = 0.1,
        ial_weight: float = 0.1,
        aug_weight: float = 0.1,
        aug_noise_std: float = 0.1,
        ignore_index: int = -100,
        logit_adjustment: float = 0.0,
        balanced_smoothing: bool = False,
    ) -> None:
        super().__init__()
        # Checked here, not at the first forward (the functional form checks them again).
        self.logit_adjustment = check_nonnegative_float("logit_adjustment", logit_adjustment)
        self.balanced_smoothing = check_bool("balanced_smoothing", balanced_smoothing)
        self.label_smoothing = check_unit_interval("label_smoothing", label_smoothing)
        self.ial_weight = check_nonnegative_float("ial_weight", ial_weight)
        self.aug_weight = check_nonnegative_float("aug_weight", aug_weight)
        self.aug_noise_std = check_nonnegative_float("aug_noise_std", aug_noise_std)
        self.ignore_index = check_ignore_index(ignore_index)
        # The class counts arrive at forward, so the smoothing-overturn check runs at the first
        # forward that has them (MICACLLoss, which checks its counts at construction, sets it).
        self._smoothing_checked = False

    __prepare_scriptable__ = torchscript_unsupported

    def forward(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        *,
        features: torch.Tensor | None = None,
        classifier: Classifier | None = None,
        class_counts: torch.Tensor | Sequence[float] | None = None,
        return_breakdown: bool = False,
    ) -> torch.Tensor | CETOutput:
        """Compute the CET; see :func:`classification_enhancement_term`.

        Warns:
            UserWarning: Once, at the first call with ``class_counts``, if the smoothed,
                logit-adjusted cross-entropy is the whole CET (``ial_weight`` and
                ``aug_weight`` 0) and the counts' largest prior ratio is past the bound of
                :class:`~micacl_layers.LogitAdjustedLoss`, where a head sample fitted
                exactly is predicted as the rarest class.
        """
        out = classification_enhancement_term(
            logits,
            targets,
            features=features,
            classifier=classifier,
            label_smoothing=self.label_smoothing,
            ial_weight=self.ial_weight,
            aug_weight=self.aug_weight,
            aug_noise_std=self.aug_noise_std,
            ignore_index=self.ignore_index,
            return_breakdown=return_breakdown,
            logit_adjustment=self.logit_adjustment,
            class_counts=class_counts,
            balanced_smoothing=self.balanced_smoothing,
        )
        if class_counts is not None and not self._smoothing_checked:
            self._check_smoothing(class_counts)
        return out

    def _check_smoothing(self, class_counts: torch.Tensor | Sequence[float]) -> None:
        """The overturn warning, once; the counts were validated by the call before."""
        self._smoothing_checked = True
        if self.ial_weight or self.aug_weight:
            return  # terms on the raw logits pull the over-correction back
        # (a tensor as it is: as_tensor would copy meta counts to a default device, and fail)
        if isinstance(class_counts, torch.Tensor):
            counts = class_counts
        else:
            counts = torch.as_tensor(class_counts)
        if has_values(counts):  # one host copy of K numbers, once
            _warn_if_smoothing_overturns(
                counts,
                self.logit_adjustment,
                self.label_smoothing,
                balanced=self.balanced_smoothing,
            )

    def extra_repr(self) -> str:
        """Options shown in ``repr()``."""
        return (
            f"label_smoothing={self.label_smoothing}, ial_weight={self.ial_weight}, "
            f"aug_weight={self.aug_weight}, aug_noise_std={self.aug_noise_std}, "
            f"logit_adjustment={self.logit_adjustment}, "
            f"balanced_smoothing={self.balanced_smoothing}"
        )
