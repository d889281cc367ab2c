"""Input checks shared by every public layer and loss.

Each check raises before any tensor arithmetic, with a message that names the argument, what it
got (shape and dtype) and what was expected, so a wrong call never surfaces as a NaN or as an
error from deep inside torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "check_class_counts",
    "check_floating",
    "check_logits_targets",
    "check_ndim",
    "check_positive_int",
    "check_same_batch",
    "describe",
]


def describe(t: torch.Tensor) -> str:
    """A short ``shape=(..), dtype=..`` description of a tensor for error messages."""
    return f"shape={tuple(t.shape)}, dtype={t.dtype}"


def check_tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}.")
    return t


def check_floating(name: str, t: object) -> torch.Tensor:
    t = check_tensor(name, t)
    if not t.is_floating_point():
        raise TypeError(
            f"`{name}` must be a floating-point tensor, got {describe(t)}; "
            f"cast it with `.float()`."
        )
    return t


def check_ndim(name: str, t: torch.Tensor, ndims: int | Sequence[int], layout: str) -> None:
    allowed = (ndims,) if isinstance(ndims, int) else tuple(ndims)
    if t.dim() not in allowed:
        raise ValueError(f"`{name}` must have shape {layout}, got {describe(t)}.")


def check_size(name: str, t: torch.Tensor, dim: int, expected: int, layout: str) -> None:
    if t.shape[dim] != expected:
        raise ValueError(
            f"`{name}` must have shape {layout} with size {expected} at dim {dim}, "
            f"got {describe(t)}."
        )


def check_same_batch(**tensors: torch.Tensor) -> None:
    """All named tensors must agree in their first (batch) dimension."""
    sizes = {name: t.shape[0] for name, t in tensors.items()}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"`{n}` has {s}" for n, s in sizes.items())
        raise ValueError(f"batch sizes differ: {listed}; they must be equal.")


def check_targets(name: str, targets: object, num_classes: int, *, ignore_index: int | None = None
                  ) -> torch.Tensor:
    """Integer class indices of shape ``(B,)`` inside ``[0, num_classes)``."""
    targets = check_tensor(name, targets)
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(
            f"`{name}` must hold integer class indices (torch.int64), got {describe(targets)}."
        )
    check_ndim(name, targets, 1, "(B,)")
    valid = targets if ignore_index is None else targets[targets != ignore_index]
    if valid.numel() and (bool((valid < 0).any()) or bool((valid >= num_classes).any())):
        lo, hi = int(valid.min()), int(valid.max())
        extra = "" if ignore_index is None else f" (or ignore_index={ignore_index})"
        raise ValueError(
            f"`{name}` must lie in [0, {num_classes - 1}]{extra}, got values in [{lo}, {hi}]."
        )
    return targets


def check_logits_targets(logits: object, targets: object, *, ignore_index: int | None = None,
                         min_classes: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits`` ``(B, K)`` floating and ``targets`` ``(B,)`` integer in range."""
    logits = check_floating("logits", logits)
    check_ndim("logits", logits, 2, "(B, K)")
    if logits.shape[1] < min_classes:
        raise ValueError(
            f"`logits` must have at least {min_classes} classes (B, K>={min_classes}), "
            f"got {describe(logits)}."
        )
    targets = check_targets("targets", targets, logits.shape[1], ignore_index=ignore_index)
    check_same_batch(logits=logits, targets=targets)
    return logits, targets


def check_padding_mask(mask: object, batch: int, num_instances: int,
                       name: str = "padding_mask") -> torch.Tensor:
    """Check a bool ``(B, T)`` padding mask.

    ``TypeError`` for anything but a bool tensor, ``ValueError`` for a wrong shape.
    """
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = describe(mask) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"`{name}` must be a bool tensor of shape (B, T), got {got}.")
    if tuple(mask.shape) != (batch, num_instances):
        raise ValueError(f"`{name}` must have shape (B, T)=({batch}, {num_instances}), "
                         f"got {describe(mask)}.")
    return mask


def check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    return value


def check_class_counts(class_counts: object, num_classes: int) -> torch.Tensor:
    """Per-class sample counts: ``num_classes`` finite, strictly positive numbers, float64.

    Only the ratios between classes matter, so frequencies or ratios are accepted too: counts
    that are not all whole numbers are rescaled so that the smallest is 1 (whole counts are
    returned as they are), which keeps the losses' "a count of 0 counts as 1" guards inert.
    """
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    if counts.dim() != 1 or counts.numel() != num_classes:
        raise ValueError(
            f"`class_counts` must have shape ({num_classes},) (one count per class), "
            f"got shape={tuple(counts.shape)}."
        )
    if not bool(torch.isfinite(counts).all()) or bool((counts <= 0).any()):
        raise ValueError(
            f"`class_counts` must be finite and > 0 for every class, got {counts.tolist()}; "
            f"a class with no samples cannot be weighted by 1/n_c."
        )
    if not bool((counts == counts.round()).all()):
        counts = counts / counts.min()
    return counts
