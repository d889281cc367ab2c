r"""The scales of MCCL, MICACL Eq. 8: :math:`X'_s = \mathrm{Proj}_s(\mathrm{Pool}_s(X'))`.

Each pooling factor ``s`` averages the clip feature down to ``D // s`` values
(:func:`pool_features`) and a learned ``Linear(D // s, P)`` projects it
(:func:`scale_projections`); MCCL's contrastive term runs at every scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from micacl_layers._fast.onednn import FastLinear
from micacl_layers._validation import check_floating, check_ndim, check_positive_int, describe

__all__ = ["check_scales", "pool_features", "scale_projections"]


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
    scale = check_positive_int("scale", scale)
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


def check_scales(scales: object, *, feature_dim: int | None = None) -> tuple[int, ...]:
    """Eq. 8's pooling factors: a non-empty sequence of positive ints (at most ``feature_dim``).

    Shared by the loss's options and :func:`scale_projections`, so both refuse the same
    values with the same words.

    Args:
        scales: The factors ``s``.
        feature_dim: Feature size ``D``; when given, every ``s`` must leave ``D // s >= 1``.

    Returns:
        The factors as a tuple of ``int``.

    Raises:
        TypeError: ``scales`` is not a sequence.
        ValueError: Empty, a factor that is not a positive int, or one above ``feature_dim``.

    Example:
        >>> check_scales([1, 2, 4], feature_dim=32)
        (1, 2, 4)
    """
    try:
        values: tuple[object, ...] = tuple(scales)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"`scales` must be a sequence of ints, got {scales!r}.") from None
    try:
        checked = tuple(check_positive_int("scales", s) for s in values)
    except ValueError:
        checked = ()
    if not checked:
        raise ValueError(f"`scales` must be a non-empty sequence of positive ints, got {values!r}.")
    if feature_dim is not None and max(checked) > feature_dim:
        raise ValueError(
            f"`scales` must be a non-empty sequence of ints in [1, feature_dim={feature_dim}], "
            f"got {checked!r}."
        )
    return checked


def scale_projections(
    feature_dim: int,
    scales: Sequence[int],
    projection_dim: int | None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> nn.ModuleList | None:
    r"""Eq. 8's :math:`\mathrm{Proj}_s`: one ``Linear(feature_dim // s, projection_dim)`` per scale.

    Args:
        feature_dim: Feature size ``D``.
        scales: Pooling factors ``s``.
        projection_dim: Output size ``P`` of every projection; ``None`` for none (identity).
        device: Parameter device.
        dtype: Parameter dtype.

    Returns:
        The projections, in the order of ``scales``; ``None`` without ``projection_dim``.

    Shape:
        - Input of projection ``k``: :math:`(B, \lfloor D / s_k \rfloor)`
        - Output: :math:`(B, P)`

    Example:
        >>> [p.in_features for p in scale_projections(32, (1, 2, 4), 16)]
        [32, 16, 8]
    """
    if projection_dim is None:
        return None
    projection_dim = check_positive_int("projection_dim", projection_dim)
    feature_dim = check_positive_int("feature_dim", feature_dim)
    scales = check_scales(scales, feature_dim=feature_dim)
    # FastLinear is nn.Linear (same parameters and values) with an optional faster product.
    return nn.ModuleList(
        FastLinear(feature_dim // s, projection_dim, device=device, dtype=dtype) for s in scales
    )
