"""The full MICACL criterion of Eq. 13.

:math:`\\mathcal{L}_{all} = \\mathcal{L}_{CET} + \\lambda_{MC} \\mathcal{L}_{MC}`.

The paper writes the two terms with weight 1; the public code trains with
``CE(label_smoothing=0.1) + 30 * MCCL``. Both are available: the defaults follow the paper's
structure with our sound CET, and :meth:`MICACLLoss.from_preset` gives ``"public_code"``.
``"paper_logit_adjusted"`` is ``"paper"`` with the CET's cross-entropy logit-adjusted, the
best configuration measured on the long-tail benchmark (docs/longtail.md). ``"balanced"`` is
not in the paper either: logit-adjusted CE plus a balanced MCCL, chosen on that benchmark's
validation splits in an earlier round and behind logit-adjusted CE on its test splits. The
defaults stay the paper's, so that the library's name keeps meaning the paper's loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from micacl_layers._validation import (
    check_bool,
    check_floating,
    check_ndim,
    check_nonnegative_float,
    check_positive_int,
    describe,
    has_values,
    torchscript_unsupported,
)
from micacl_layers.cet import ClassificationEnhancementTerm, Classifier
from micacl_layers.distributed import gather_without_grad, is_distributed
from micacl_layers.mccl import MultiscaleCategoryAwareContrastiveLoss

__all__ = ["PRESETS", "MICACLLoss", "MICACLLossOutput"]

# Eq. 13 with unit weights and every CET term active.
_PAPER: dict[str, Any] = {
    "mc_weight": 1.0,
    "label_smoothing": 0.1,
    "ial_weight": 0.1,
    "aug_weight": 0.1,
    "tau0": 0.07,
}
PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(_PAPER),
    # The public code's weights: CE with label smoothing 0.1 plus 30 x MCCL (log form, batch
    # temperature), no IAL and no (working) augmentation term. The MCCL bugs of that code
    # (self-pairs, random projections on each call, raw reciprocal weights) stay fixed.
    "public_code": {
        "mc_weight": 30.0,
        "label_smoothing": 0.1,
        "ial_weight": 0.0,
        "aug_weight": 0.0,
        "tau0": 0.07,
        "form": "log",
        "temperature": "batch_mean",
    },
    # "paper" with the CET's cross-entropy logit-adjusted (Menon et al. 2021, tau 1 on the
    # loss's class counts); the rest is Eq. 13 as in "paper". Chosen on the validation splits of
    # benchmarks/longtail.py and the best configuration on its test splits (docs/longtail.md).
    "paper_logit_adjusted": {**_PAPER, "logit_adjustment": 1.0},
    # Not in the paper; chosen on validation splits of benchmarks/longtail.py (docs/longtail.md):
    # logit-adjusted CE (Menon et al. 2021, tau 1) + 0.3 x MCCL in the log form with Balanced
    # Contrastive Learning's class-averaged denominators and class complements (Zhu et al. 2022)
    # and anchor weights of batch mean 1. ``forward`` needs ``classifier`` (its weight rows are
    # the class complements).
    "balanced": {
        "mc_weight": 0.3,
        "label_smoothing": 0.0,
        "ial_weight": 0.0,
        "aug_weight": 0.0,
        "logit_adjustment": 1.0,
        "tau0": 0.07,
        "form": "log",
        "class_average": True,
        "class_complements": True,
        "weight_norm": "batch",
    },
}


class MICACLLossOutput(NamedTuple):
    """Breakdown of :class:`MICACLLoss` (each term unweighted, the total weighted).

    Attributes:
        loss: :math:`\\mathcal{L}_{all}`.
        cet: :math:`\\mathcal{L}_{CET}`.
        mccl: :math:`\\mathcal{L}_{MC}`.
        ce: Label-smoothed cross-entropy part of the CET.
        ial: Intensity-aware part of the CET.
        aug: Feature-augmentation part of the CET.

    Example:
        >>> criterion = MICACLLoss(3, 8, class_counts=[5, 3, 2], projection_dim=4,
        ...                        aug_weight=0.0)
        >>> out = criterion(torch.randn(6, 8), torch.randn(6, 3),
        ...                 torch.tensor([0, 0, 1, 1, 2, 2]), return_breakdown=True)
        >>> out._fields
        ('loss', 'cet', 'mccl', 'ce', 'ial', 'aug')
        >>> bool(torch.isclose(out.loss, out.cet + criterion.mc_weight * out.mccl))
        True
    """

    loss: torch.Tensor
    cet: torch.Tensor
    mccl: torch.Tensor
    ce: torch.Tensor
    ial: torch.Tensor
    aug: torch.Tensor


class MICACLLoss(nn.Module):
    r"""The whole MICACL objective (Eq. 13) as one Module: CET plus weighted MCCL.

    Holds a :class:`~micacl_layers.ClassificationEnhancementTerm` (``.cet``) and a
    :class:`~micacl_layers.MCCLoss` (``.mccl``, with learnable projections: give the optimizer
    this module's parameters).

    Args:
        num_classes: Number of classes ``K`` (at least 2: the cross-entropy needs two).
        feature_dim: Clip feature size ``D``.
        class_counts: Samples per class, or ``None`` for running counts (of the targets seen
            in training mode, also with ``mc_weight=0``; held by ``.mccl``).
        scales: MCCL pooling scales.
        mc_weight: :math:`\lambda_{MC}`.
        label_smoothing: CET label smoothing.
        ial_weight: CET weight of the intensity-aware loss.
        aug_weight: CET weight of the feature-augmentation term (needs ``classifier``).
        aug_noise_std: Relative noise of the feature augmentation.
        logit_adjustment: :math:`\tau` of the CET's logit-adjusted cross-entropy (Menon et al.
            2021; 0: plain CE), with the class counts of ``.mccl``. Not in the paper.
        balanced_smoothing: With ``logit_adjustment``, smooth the raw posterior's target
            rather than the adjusted one's
            (:func:`~micacl_layers.logit_adjustment.logit_adjusted_cross_entropy`). Not in the
            paper.
        **mccl_options: Further keyword options of :class:`~micacl_layers.MCCLoss`
            (``projection_dim``, ``tau0``, ``temperature``, ``form``, ...).

    Shape:
        - features: :math:`(B, D)`
        - logits: :math:`(B, K)`
        - targets: :math:`(B,)`
        - Output: :math:`()`

    Example:
        >>> head = torch.nn.Linear(32, 3)
        >>> criterion = MICACLLoss(3, 32, class_counts=[50, 30, 5], projection_dim=16)
        >>> f = torch.randn(6, 32)
        >>> loss = criterion(f, head(f), torch.tensor([0, 0, 1, 1, 2, 2]), classifier=head)
        >>> loss.shape
        torch.Size([])
    """

    def __init__(
        self,
        num_classes: int,
        feature_dim: int,
        class_counts: torch.Tensor | Sequence[float] | None = None,
        scales: Sequence[int] = (1, 2, 4),
        *,
        mc_weight: float = 1.0,
        label_smoothing: float = 0.1,
        ial_weight: float = 0.1,
        aug_weight: float = 0.1,
        aug_noise_std: float = 0.1,
        logit_adjustment: float = 0.0,
        balanced_smoothing: bool = False,
        **mccl_options: Any,
    ) -> None:
        super().__init__()
        # The CET's cross-entropy needs two classes: fail here, not at every forward.
        if check_positive_int("num_classes", num_classes) < 2:
            raise ValueError(
                f"`num_classes` must be >= 2 for MICACLLoss (its cross-entropy needs two "
                f"classes), got {num_classes!r}."
            )
        self.mc_weight = check_nonnegative_float("mc_weight", mc_weight)
        reduction = mccl_options.get("reduction", "mean")
        if reduction != "mean":
            # The CET is a batch mean; per-anchor or summed MCCL terms added to it have no
            # meaning as one loss (and "none" broadcast to an undocumented (B,) shape).
            raise ValueError(
                f"`reduction` must be 'mean' for MICACLLoss (Eq. 13 is a batch mean), got "
                f"{reduction!r}; for per-sample terms use MCCLoss(reduction={reduction!r}) and "
                f"ClassificationEnhancementTerm separately."
            )
        self.cet = ClassificationEnhancementTerm(
            label_smoothing=label_smoothing,
            ial_weight=ial_weight,
            aug_weight=aug_weight,
            aug_noise_std=aug_noise_std,
            logit_adjustment=logit_adjustment,
            balanced_smoothing=balanced_smoothing,
        )
        self.mccl = MultiscaleCategoryAwareContrastiveLoss(
            num_classes, feature_dim, class_counts, scales, **mccl_options
        )
        # Only where the smoothed, adjusted CE is the whole CET: the IAL and augmentation terms
        # are on the raw logits and pull its over-correction back (docs/longtail.md).
        # (The MCCL's checked CPU copy: None for running counts or counts on meta.)
        built = self.mccl._built_counts
        if built is not None:
            # Now rather than at the CET's first forward, which then does not check again.
            self.cet._check_smoothing(built)

    __prepare_scriptable__ = torchscript_unsupported

    @classmethod
    def from_preset(
        cls,
        name: str,
        num_classes: int,
        feature_dim: int,
        class_counts: torch.Tensor | Sequence[float] | None = None,
        **overrides: Any,
    ) -> MICACLLoss:
        """Build the criterion from a named preset of :data:`PRESETS`.

        Args:
            name: ``"paper"``, ``"paper_logit_adjusted"``, ``"public_code"`` or
                ``"balanced"``.
            num_classes: Number of classes.
            feature_dim: Clip feature size.
            class_counts: Samples per class, or ``None``.
            **overrides: Options that replace the preset's.

        Returns:
            The configured criterion.

        Example:
            >>> crit = MICACLLoss.from_preset("public_code", 7, 64, projection_dim=32)
            >>> crit.mc_weight, crit.cet.ial_weight, crit.mccl.form
            (30.0, 0.0, 'log')
        """
        if name not in PRESETS:
            raise ValueError(f"`name` must be one of {tuple(PRESETS)}, got {name!r}.")
        options = {**PRESETS[name], **overrides}
        return cls(num_classes, feature_dim, class_counts, **options)

    def forward(
        self,
        features: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        *,
        classifier: Classifier | None = None,
        return_breakdown: bool = False,
    ) -> torch.Tensor | MICACLLossOutput:
        """Compute :math:`\\mathcal{L}_{all}`.

        Args:
            features: Clip features (the classifier's input).
            logits: Classifier logits.
            targets: Class indices; samples whose target is the CET's ``ignore_index`` (-100,
                as in ``F.cross_entropy``) are left out of every term, MCCL's included.
            classifier: The classifier, for the CET's feature augmentation and (its weight
                rows) MCCL's class complements.
            return_breakdown: Return a :class:`MICACLLossOutput`.

        Returns:
            The loss or its breakdown.
        """
        return_breakdown = check_bool("return_breakdown", return_breakdown)
        # The features' size first: the CET feeds them to `classifier`, whose own error for a
        # wrong size would come from inside torch.
        features = check_floating("features", features)
        check_ndim("features", features, 2, "(B, D)")
        feature_dim, num_classes = self.mccl.feature_dim, self.mccl.num_classes
        if features.shape[1] != feature_dim:
            raise ValueError(
                f"`features` must have shape (B, D) with D={feature_dim} "
                f"(feature_dim), got {describe(features)}."
            )
        logits = check_floating("logits", logits)
        if logits.dim() != 2 or logits.shape[1] != num_classes:
            raise ValueError(
                f"`logits` must have shape (B, K) with K={num_classes} "
                f"(num_classes), got {describe(logits)}."
            )
        counts = None
        if self.cet.logit_adjustment:
            # Before MCCL's forward updates running counts; an unseen class counts as one.
            counts = self.mccl.class_counts.clamp_min(1)
        cet = self.cet(
            logits,
            targets,
            features=features,
            classifier=classifier,
            class_counts=counts,
            return_breakdown=True,
        )
        if self.mc_weight:
            prototypes = None
            if self.mccl.class_complements:
                weight = getattr(classifier, "weight", None)
                if not isinstance(weight, torch.Tensor):
                    raise ValueError(
                        "`classifier` (a module with a (K, D) `weight`, e.g. "
                        "nn.Linear) is required with class_complements=True: its "
                        "weight rows are the class complements."
                    )
                prototypes = weight
            ignored = targets == self.cet.ignore_index  # (the CET has checked the targets)
            if has_values(targets) and bool(ignored.any()):
                # As the cross-entropy does, an ignored sample takes no part in the contrast:
                # neither an anchor nor a candidate, nor counted.
                keep = ~ignored
                features, logits, targets = features[keep], logits[keep], targets[keep]
            mccl = self.mccl(features, logits, targets, prototypes=prototypes)
        else:
            mccl = torch.zeros_like(cet.loss)
            if self.mccl.track_class_counts and self.mccl.training and has_values(targets):
                # MCCL's forward counts them otherwise; the logit adjustment reads these counts.
                # As int64, as MCCL counts them: bincount (and gloo's gather) have no kernel for
                # the uint16..uint64 targets the CET takes.
                targets = targets.long()
                if self.mccl.gather_distributed and is_distributed():
                    targets = gather_without_grad(targets)  # as MCCL would: the same on every rank
                # (the CET has checked them: classes, or its ignore_index, which is not counted)
                self.mccl.update_class_counts(targets[targets != self.cet.ignore_index])
        total = cet.loss + self.mc_weight * mccl
        if return_breakdown:
            return MICACLLossOutput(total, cet.loss, mccl, cet.ce, cet.ial, cet.aug)
        return total

    def extra_repr(self) -> str:
        """Options shown in ``repr()``."""
        return f"mc_weight={self.mc_weight}"
