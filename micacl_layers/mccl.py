r"""Multiscale Category-aware Contrastive Learning loss (MCCL), MICACL Eq. 7-12.

For clip features :math:`X'` ``(B, D)``, classifier logits :math:`y_p` and labels :math:`y`,
Eq. 12 combines the other equations, each in its own module:

.. math::
    \mathcal{L}_{MC} = \frac{1}{|S|}\sum_s \frac{1}{|\mathcal{A}|}
    \sum_{i \in \mathcal{A}} W_c(i)\, \ell_i^s

- :math:`s` runs over the scales of Eq. 8, :math:`X'_s = \mathrm{Proj}_s(\mathrm{Pool}_s(X'))`
  (:mod:`micacl_layers.multiscale`);
- :math:`\ell_i^s`, Eq. 9 and 11, is anchor ``i``'s share of similarity mass on its positives
  at scale ``s`` (:func:`supervised_contrastive_per_anchor`, :mod:`micacl_layers.contrastive`),
  at the temperature of Eq. 10 (:func:`adaptive_temperature`);
- :math:`W_c(i) \propto \frac{1}{n_{y_i}} (1 - p_i)`, Eq. 7 (:func:`category_aware_weights`,
  :mod:`micacl_layers.category_aware`);
- :math:`\mathcal{A}` are the anchors with at least one positive.

Everything is plain autograd, in float32 or wider whatever the input dtype; the per-anchor term
may run as a faster kernel with the same values, as :mod:`micacl_layers.config` decides (see the
"Internals" docs page). The options are one :class:`MCCLOptions`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import cast

import torch
from torch import nn

from micacl_layers._class_counts import RunningClassCounts
from micacl_layers._validation import (
    call_named,
    check_bool,
    check_class_counts,
    check_device,
    check_features_logits,
    check_finite_parameters,
    check_floating,
    check_ndim,
    check_parameter_dtype,
    check_positive_int,
    check_same_batch,
    check_targets,
    describe,
    to_parameter_dtype,
    torchscript_unsupported,
)
from micacl_layers.balanced import _batch_normalised, _checked_prototypes, _with_complements
from micacl_layers.category_aware import (
    TemperatureMode,
    WeightNorm,
    _adaptive_temperature,
    _category_aware_weights,
    adaptive_temperature,
    category_aware_weights,
)
from micacl_layers.contrastive import (
    Form,
    _check_temperature_fits,
    _compute_dtype,
    _projected_fast,
    contrastive_per_anchor,
    supervised_contrastive_per_anchor,
)
from micacl_layers.distributed import gather_with_grad, gather_without_grad, is_distributed
from micacl_layers.mccl_options import MCCLOptions, MCCLOutput, Reduction, _expose_options
from micacl_layers.memory import ContrastMemory
from micacl_layers.multiscale import _pool_features, pool_features, scale_projections

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


def _reduce(per_anchor: torch.Tensor, has_positive: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_anchor
    total = per_anchor.sum(dim=-1)
    if reduction == "sum":
        return total
    # Mean over anchors that have a positive: anchors without one carry no signal, and
    # dividing by B would make the loss scale with how many of them a batch happened to hold.
    return total / has_positive.sum().clamp_min(1)


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
            already-projected embeddings per scale and their ``(M,)`` labels, class indices in
            ``[0, K)`` (e.g. a :class:`~micacl_layers.memory.ContrastMemory`'s ``get()``); they
            are never anchors.
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
    options = MCCLOptions._from_arguments(locals())
    return_breakdown = check_bool("return_breakdown", return_breakdown)
    features, logits, targets = check_features_logits(features, logits, targets)
    counts = check_class_counts(class_counts, logits.shape[1])
    result, _ = _multiscale_loss(
        features,
        logits,
        targets,
        counts,
        options,
        projections=projections,
        memory=_checked_memory(memory, len(options.scales), logits.shape[1]),
        return_breakdown=return_breakdown,
        need_embeddings=False,
        prototypes=prototypes,
    )
    return result


def _checked_memory(
    memory: object, num_scales: int, num_classes: int
) -> tuple[list[torch.Tensor], torch.Tensor] | None:
    """The functional form's ``memory``: one floating ``(M, P_s)`` per scale, ``(M,)`` labels.

    The labels are class indices of the batch's classes (``[0, K)``), as those of a
    :class:`~micacl_layers.memory.ContrastMemory`. Each ``P_s`` is checked against the scale's
    embeddings once they are formed (``_check_memory_size``).
    """
    if memory is None:
        return None
    if not isinstance(memory, (tuple, list)) or len(memory) != 2:
        raise TypeError(
            f"`memory` must be a pair (embeddings, targets): one (M, P_s) tensor per scale and "
            f"their (M,) labels, got {_what(memory)}."
        )
    embeddings, labels = memory
    if not isinstance(embeddings, (tuple, list)) or len(embeddings) != num_scales:
        got = len(embeddings) if isinstance(embeddings, (tuple, list)) else describe(embeddings)
        raise ValueError(
            f"`memory` must hold one embedding tensor per scale ({num_scales}), got {got}."
        )
    labels = check_targets("memory[1]", labels, num_classes)
    checked = []
    for i, emb in enumerate(embeddings):
        name = f"memory[0][{i}]"
        emb = check_floating(name, emb)
        check_ndim(name, emb, 2, "(M, P_s)")
        check_same_batch(**{name: emb, "memory[1]": labels})
        checked.append(emb)
    return checked, labels


def _what(value: object) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return describe(value)


def _check_memory_size(mem_z: torch.Tensor, z: torch.Tensor, idx: int) -> None:
    """Memory embeddings of scale ``idx`` must have the size of that scale's embeddings."""
    if mem_z.shape[1] != z.shape[1]:
        raise ValueError(
            f"`memory[0][{idx}]` must have shape (M, P)=(M, {z.shape[1]}) like the embeddings "
            f"of scales[{idx}] ({describe(z)}), got {describe(mem_z)}."
        )


def _project(
    projection: Callable[[torch.Tensor], torch.Tensor], pooled: torch.Tensor, idx: int
) -> torch.Tensor:
    """``projections[idx](pooled)``, with an error that names it if it fails or gives no (B, P)."""
    z = call_named(
        f"projections[{idx}]",
        projection,
        pooled,
        f"the input is the features pooled by scales[{idx}]; it must map (B, D // s) to (B, P)",
    )
    if (
        not isinstance(z, torch.Tensor)
        or not z.is_floating_point()
        or z.dim() != 2
        or z.shape[0] != pooled.shape[0]
    ):
        raise ValueError(
            f"`projections[{idx}]` must map the pooled features ({describe(pooled)}) to a "
            f"floating (B, P) tensor, got {describe(z)}."
        )
    return z


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
    options._check_per_scale("projections", projections, "callable")
    for idx, projection in enumerate(projections or ()):
        if not callable(projection):
            raise TypeError(
                f"`projections[{idx}]` must be a callable (e.g. nn.Linear(D // s, P)), "
                f"got {type(projection).__name__}."
            )
    options._check_per_scale("memory", None if memory is None else memory[0], "embedding tensor")
    protos = _checked_prototypes(prototypes, options.class_complements, logits.shape[1], features)
    weights = _category_aware_weights(  # Eq. 7
        logits,
        targets,
        counts,
        class_weighting=options.class_weighting,
        difficulty=options.difficulty,
        detach_difficulty=options.detach_difficulty,
    )
    if options.weight_norm == "batch":
        weights = _batch_normalised(weights, targets, memory, protos, options.exclude_self)
    tau = _adaptive_temperature(counts, options.tau0, mode=options.temperature, targets=targets)
    per_scale: list[torch.Tensor] = []
    embeddings: list[torch.Tensor | None] = []
    has_positive = targets.new_zeros(0, dtype=torch.bool)
    for idx, s in enumerate(scales):
        z = _pool_features(features, s)  # Eq. 8: Pool_s ...
        projection = None if projections is None else projections[idx]
        fused = None
        if memory is None and protos is None and not (need_embeddings or options.class_average):
            # (tau >= tau0 in every mode: checked without reading tau back from the device)
            _check_temperature_fits("tau0", options.tau0, _compute_dtype(z))
            fused = _projected_fast(  # (None unless the switch enables that kernel)
                z, projection, targets, tau, form=options.form, exclude_self=options.exclude_self
            )
        if fused is not None:
            loss_s, has_positive = fused
            embeddings.append(None)
        else:
            z = z if projection is None else _project(projection, z, idx)  # ... then Proj_s
            _check_temperature_fits("tau0", options.tau0, _compute_dtype(z))
            embeddings.append(z)
            mem_z, mem_t = (None, None) if memory is None else (memory[0][idx], memory[1])
            if mem_z is not None:
                _check_memory_size(mem_z, z, idx)
            if protos is not None:
                pool = functools.partial(_pool_features, scale=s)
                project = (
                    None if projection is None else functools.partial(_project, projection, idx=idx)
                )
                mem_z, mem_t = _with_complements(protos, pool, project, mem_z, mem_t)
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


@_expose_options
class MultiscaleCategoryAwareContrastiveLoss(RunningClassCounts):
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

    Dtypes: features (and prototypes) of another floating dtype than the projections are cast
    to it before the projections, as ``torch.autocast`` would (under autocast, autocast
    decides); similarities run in float32 (float64 for float64 parameters); targets may have
    any integer dtype.
    ``torch.jit.script`` raises a ``RuntimeError`` that points to ``torch.compile``, which works.

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
            scale as extra contrast candidates in training mode (an int; 0: none); see
            :class:`~micacl_layers.memory.ContrastMemory`. Saved in the ``state_dict``;
            :meth:`reset_memory` empties it.
        gather_distributed: Under ``torch.distributed``, gather features, logits and targets
            from all ranks with gradients, so every rank computes the loss of the global batch
            (a no-op when not distributed). Under DDP no gradient rescaling is needed; see
            :mod:`micacl_layers.distributed`. With ``reduction="none"`` the output covers the
            global batch, in rank order.
        device: Parameter device.
        dtype: Parameter dtype (also that of the memory bank; float32 when ``None``).

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
        # The keywords are the options (never rebound before this line); see the signature test.
        self.options = MCCLOptions._from_arguments(locals())
        self.options.check_feature_dim(feature_dim)
        check_parameter_dtype(dtype, of="the projections", complex_ok=False)
        if projection_dim is not None:  # (checked before the counts, as always)
            projection_dim = check_positive_int("projection_dim", projection_dim)
        self.projection_dim = projection_dim
        self._init_class_counts(class_counts, num_classes, device)
        self.projections = scale_projections(  # (None without a projection_dim)
            feature_dim, self.options.scales, projection_dim, device=device, dtype=dtype
        )
        self.gather_distributed = check_bool("gather_distributed", gather_distributed)
        dims = [projection_dim or feature_dim // s for s in self.options.scales]
        # (In the projections' dtype, as .to(dtype) would leave it: float64 embeddings are not
        # rounded to float32 in the bank.)
        self.memory = ContrastMemory.optional(memory_size, dims, device=device, dtype=dtype)

    __prepare_scriptable__ = torchscript_unsupported

    def reset_memory(self) -> None:
        """Empty the cross-batch memory (no-op without one)."""
        if self.memory is not None:
            self.memory.reset()

    def reset_parameters(self) -> None:
        """Re-initialise the projections, restore ``class_counts`` as built, empty the memory.

        For a loss built on the ``meta`` device and materialised with ``to_empty()``, whose
        buffers then hold uninitialised memory (``class_counts`` given as a ``meta`` tensor has
        no values to restore: load a ``state_dict`` instead).
        """
        for projection in self.projections or ():
            cast(nn.Linear, projection).reset_parameters()
        self._reset_class_counts_buffer()
        self.reset_memory()

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
        return_breakdown = check_bool("return_breakdown", return_breakdown)
        features, logits, targets = check_features_logits(
            features, logits, targets, feature_dim=self.feature_dim, num_classes=self.num_classes
        )
        check_finite_parameters(self)
        if self.projections is not None:
            # Features from an autocast region (float16/bfloat16) or float64 data meet the
            # projections in their dtype, as autocast would cast them; so do the prototypes
            # (the weight rows of a classifier kept in another dtype, e.g. after `.half()`).
            weight = cast(nn.Linear, self.projections[0]).weight
            check_device("features", features, weight.device, "MCCLoss")
            features = to_parameter_dtype(features, weight)
            if isinstance(prototypes, torch.Tensor) and prototypes.is_floating_point():
                prototypes = to_parameter_dtype(prototypes, weight)
        if self.gather_distributed and is_distributed():
            # Every rank computes the loss of the global batch; see micacl_layers.distributed
            # for why DDP then needs no gradient rescaling.
            features, logits = gather_with_grad(features), gather_with_grad(logits)
            targets = gather_without_grad(targets)
        counts = self._counts_for_loss(targets)
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
            f"class_average={self.class_average}, class_complements={self.class_complements}, "
            f"weight_norm={self.weight_norm!r}, track_class_counts={self.track_class_counts}, "
            f"memory_size={0 if self.memory is None else self.memory.size}, "
            f"gather_distributed={self.gather_distributed}"
        )


MCCLoss = MultiscaleCategoryAwareContrastiveLoss
