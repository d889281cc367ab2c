"""MCCL's options (Eq. 7-12 and the variants beside them), validated once, and its breakdown."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence, Sized
from typing import Any, Literal, NamedTuple

import torch

from micacl_layers._validation import check_bool
from micacl_layers.category_aware import (
    _TEMPERATURES,
    _WEIGHT_NORMS,
    TemperatureMode,
    WeightNorm,
    _check_tau0,
)
from micacl_layers.contrastive import _FORMS, Form
from micacl_layers.multiscale import check_scales

__all__ = ["MCCLOptions", "MCCLOutput"]

Reduction = Literal["mean", "sum", "none"]
_REDUCTIONS = ("mean", "sum", "none")
_SWITCHES = (
    "exclude_self",
    "class_weighting",
    "difficulty",
    "detach_difficulty",
    "class_average",
    "class_complements",
)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")


class MCCLOutput(NamedTuple):
    """Breakdown returned with ``return_breakdown=True``.

    Attributes:
        loss: The reduced loss (as without the breakdown).
        per_scale: The loss of each scale, ``(S,)``, reduced like ``loss``
            (``(S, B)`` for ``reduction="none"``).
        weights: Category-aware weights :math:`W_c(i)` of the anchors, ``(B,)``.
        temperature: The temperature :math:`\\tau` used (a scalar tensor).
        has_positive: Which anchors had at least one positive, ``(B,)`` bool.

    Example:
        >>> import torch
        >>> from micacl_layers import MCCLoss
        >>> mccl = MCCLoss(3, 8, class_counts=[5, 3, 1], scales=(1, 2), projection_dim=None)
        >>> out = mccl(torch.randn(4, 8), torch.randn(4, 3), torch.tensor([0, 0, 1, 2]),
        ...            return_breakdown=True)
        >>> out.per_scale.shape, out.has_positive.tolist()
        (torch.Size([2]), [True, True, False, False])
    """

    loss: torch.Tensor
    per_scale: torch.Tensor
    weights: torch.Tensor
    temperature: torch.Tensor
    has_positive: torch.Tensor


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
        object.__setattr__(self, "scales", check_scales(self.scales))
        object.__setattr__(self, "tau0", _check_tau0(self.tau0))
        _check_choice("temperature", self.temperature, _TEMPERATURES)
        _check_choice("form", self.form, _FORMS)
        _check_choice("reduction", self.reduction, _REDUCTIONS)
        _check_choice("weight_norm", self.weight_norm, _WEIGHT_NORMS)
        for name in _SWITCHES:
            check_bool(name, getattr(self, name))

    @classmethod
    def _from_arguments(cls, arguments: Mapping[str, Any]) -> MCCLOptions:
        """The options among a function's ``arguments`` (its ``locals()``), by field name.

        The functional form and :class:`MCCLoss` take every option as a keyword of the same
        name; this builds (and validates) the options from them without listing each twice.
        """
        return cls(**{f.name: arguments[f.name] for f in dataclasses.fields(cls)})

    def _check_per_scale(self, name: str, values: Sized | None, what: str) -> None:
        """``values`` (if given) must hold one ``what`` per scale."""
        if values is not None and len(values) != len(self.scales):
            raise ValueError(
                f"`{name}` must hold one {what} per scale ({len(self.scales)}), got {len(values)}."
            )

    def check_feature_dim(self, feature_dim: int) -> None:
        """Every scale must leave at least one pooled feature of ``feature_dim``."""
        check_scales(self.scales, feature_dim=feature_dim)


def _expose_options(cls: type) -> type:
    """Class decorator: one property per :class:`MCCLOptions` field, over ``self.options``.

    Reading ``mccl.form`` reads the options; assigning it builds new, validated options (and
    checks them against ``self.feature_dim``); a refused value leaves the options as they were.
    ``scales`` cannot change once ``self`` holds parts built per scale (projections, memory).
    """

    def attribute(name: str) -> property:
        def get(self: Any) -> object:
            return getattr(self.options, name)

        def set_(self: Any, value: object) -> None:
            changes: dict[str, Any] = {name: value}
            options = dataclasses.replace(self.options, **changes)
            options.check_feature_dim(self.feature_dim)
            built = [part for part in ("projections", "memory") if getattr(self, part) is not None]
            if options.scales != self.options.scales and built:
                raise ValueError(
                    f"`scales` cannot change after construction: the {' and '.join(built)} were "
                    f"built for scales={self.options.scales!r}, got {options.scales!r}; build a "
                    f"new loss with these scales."
                )
            self.options = options

        return property(get, set_, doc=f"``options.{name}`` (see :class:`MCCLOptions`).")

    for field in dataclasses.fields(MCCLOptions):
        setattr(cls, field.name, attribute(field.name))
    return cls
