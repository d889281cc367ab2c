"""Classification metrics of DFER papers: confusion matrix, per-class recall, WAR and UAR.

DFEW and FERV39k results are reported as WAR (weighted average recall, which is plain accuracy:
each class's recall weighted by its share of the samples) and UAR (unweighted average recall:
the mean of the per-class recalls, so the tail class counts as much as the head). On a
long-tailed test set the two can differ by 10+ points; MICACL's Tables I-III report both.

Classes absent from the targets have no recall (0 / 0): :func:`per_class_recall` gives ``nan``
for them and :func:`uar` averages over the classes that **do** occur, as scikit-learn's
``balanced_accuracy_score`` does. A class that occurs but is never predicted correctly counts
with recall 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from micacl_layers._validation import (
    check_finite,
    check_index_dtype,
    check_positive_int,
    describe,
    has_values,
    integer_value,
)

__all__ = ["ConfusionMatrix", "confusion_matrix", "per_class_recall", "uar", "war"]


def _check_has_values(t: torch.Tensor, name: str) -> None:
    # Sparse tensors have no min, argmax or comparison in torch: refused here, by name.
    if t.layout != torch.strided:
        kind = str(t.layout).removeprefix("torch.")
        raise ValueError(
            f"`{name}` ({describe(t)}) is a {kind} tensor; metrics count dense tensors: "
            "pass it with .to_dense()"
        )
    # Counting needs values; a meta tensor has shapes only (torch's own error comes from deep
    # inside the range check, naming no argument).
    if not has_values(t):
        raise ValueError(
            f"`{name}` ({describe(t)}) is a meta tensor, which holds no values to count; "
            "metrics need real class indices or scores"
        )


def _check_labels(t: object, name: str, num_classes: int) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D class indices (B,), got {describe(t)}")
    check_index_dtype(name, t)  # (TypeError, with the losses' message)
    _check_has_values(t, name)
    labels = t.long()  # (torch has no min/max for uint16-uint64)
    if t.numel() > 0:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            if bad < 0 and t.dtype == torch.uint64:  # wrapped by .long(): a huge index
                bad += 2**64
            raise ValueError(
                f"`{name}` ({describe(t)}) holds class index {bad}, expected indices in "
                f"[0, {num_classes - 1}] for num_classes={num_classes}"
            )
    return labels


def _check_cm(cm: object) -> torch.Tensor:
    if not isinstance(cm, torch.Tensor):
        raise TypeError(f"`cm` must be a torch.Tensor, got {type(cm).__name__}")
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] == 0:
        raise ValueError(f"`cm` must be a square (K, K) matrix with K >= 1, got {describe(cm)}")
    if cm.is_complex() or cm.dtype == torch.bool:
        raise ValueError(f"`cm` must hold counts (integer or float), got {describe(cm)}")
    _check_has_values(cm, "cm")
    if cm.is_floating_point() and not bool(torch.isfinite(cm).all()):
        raise ValueError(f"`cm` ({describe(cm)}) holds NaN or inf counts")
    # (Unsigned counts cannot be negative, and torch has no comparison for uint16-uint64.)
    if cm.dtype.is_signed and bool((cm < 0).any()):
        raise ValueError(f"`cm` ({describe(cm)}) holds negative counts")
    return cm


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Count (true class, predicted class) pairs.

    Args:
        preds: Predicted class indices (use ``logits.argmax(-1)`` for scores).
        targets: True class indices.
        num_classes: Number of classes ``K``.

    Returns:
        ``cm`` with ``cm[i, j]`` = number of samples of true class ``i`` predicted as ``j``
        (rows are true classes), int64, on the inputs' device.

    Shape:
        - preds: :math:`(B,)`, integer.
        - targets: :math:`(B,)`, integer.
        - Output: :math:`(K, K)`.

    Raises:
        TypeError: If an input is not a tensor, or not of an integer dtype (as the losses
            raise for float or bool targets).
        ValueError: If shapes differ or are not 1-D, an index is outside ``[0, K)``, an input
            is a ``meta`` tensor (no values to count), or ``num_classes`` is not a positive int.

    Example:
        >>> confusion_matrix(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]), 3)
        tensor([[1, 0, 0],
                [0, 1, 0],
                [0, 1, 1]])
    """
    k = check_positive_int("num_classes", num_classes)
    p = _check_labels(preds, "preds", k)
    t = _check_labels(targets, "targets", k)
    if p.shape != t.shape:
        raise ValueError(
            f"`preds` ({describe(p)}) and `targets` ({describe(t)}) must have the same length"
        )
    if p.device != t.device:
        raise ValueError(f"`preds` is on {p.device} but `targets` is on {t.device}")
    return _count_pairs(p, t, k)


def _count_pairs(preds: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    # Checked int64 indices in [0, k), one length, one device.
    return torch.bincount(targets * k + preds, minlength=k * k).reshape(k, k)


def per_class_recall(cm: torch.Tensor) -> torch.Tensor:
    """Recall of every class: ``cm[i, i] / cm[i].sum()``.

    Args:
        cm: Confusion matrix, rows = true classes.

    Returns:
        float64 recalls; ``nan`` for a class with no samples (recall undefined).

    Shape:
        - cm: :math:`(K, K)`.
        - Output: :math:`(K,)`.

    Raises:
        ValueError: If ``cm`` is not a square non-negative matrix (or is a ``meta`` tensor).

    Example:
        >>> per_class_recall(torch.tensor([[3, 1, 0], [0, 2, 2], [0, 0, 0]]))
        tensor([0.7500, 0.5000,    nan], dtype=torch.float64)
    """
    cm = _check_cm(cm).double()
    support = cm.sum(dim=1)
    # 0/0 -> nan on purpose: "no samples" must not look like "all wrong".
    return cm.diagonal() / support


def war(cm: torch.Tensor) -> float:
    """Weighted average recall: overall accuracy, ``trace(cm) / cm.sum()``.

    Args:
        cm: Confusion matrix, rows = true classes.

    Returns:
        WAR in ``[0, 1]``.

    Shape:
        - cm: :math:`(K, K)`.

    Raises:
        ValueError: If ``cm`` is malformed or counts no sample.

    Example:
        >>> war(torch.tensor([[3, 1], [2, 4]]))
        0.7
    """
    cm = _check_cm(cm).double()
    total = float(cm.sum())
    if total == 0:
        raise ValueError("cm counts no sample; WAR is undefined")
    return float(cm.diagonal().sum()) / total


def uar(cm: torch.Tensor) -> float:
    """Unweighted average recall: mean per-class recall over the classes present.

    Classes with no sample in the targets (an all-zero row) are left out of the mean, since
    their recall is undefined; every class that occurs counts equally.

    Args:
        cm: Confusion matrix, rows = true classes.

    Returns:
        UAR in ``[0, 1]``.

    Shape:
        - cm: :math:`(K, K)`.

    Raises:
        ValueError: If ``cm`` is malformed or counts no sample.

    Example:
        >>> uar(torch.tensor([[3, 1], [2, 4]]))  # (3/4 + 4/6) / 2
        0.7083333333333333
        >>> uar(torch.tensor([[2, 0, 0], [0, 0, 0], [1, 0, 1]]))  # class 1 absent
        0.75
    """
    recall = per_class_recall(cm)
    present = ~recall.isnan()
    if not bool(present.any()):
        raise ValueError("cm counts no sample; UAR is undefined")
    return float(recall[present].mean())


class ConfusionMatrix:
    """Accumulate a confusion matrix over batches and read WAR / UAR from it.

    ``update`` takes either logits/scores ``(B, K)`` (the arg-max is the prediction) or
    predicted indices ``(B,)``. Counts live on the CPU (a ``K x K`` int64 tensor; inputs on
    another device are copied there); for distributed evaluation, ``all_reduce`` a copy of
    ``compute()`` moved to the device. ``state_dict()`` and ``load_state_dict()`` checkpoint
    the counts, as an optimizer's or ``torch.amp.GradScaler``'s do: a run stopped mid-epoch
    saves ``metric.state_dict()`` beside the model's and resumes its counts. It is no
    ``nn.Module``, so a model holding one neither saves nor moves it, and DDP does not
    broadcast it (which would copy rank 0's counts over every other rank's).

    Args:
        num_classes: Number of classes ``K``.

    Shape:
        - preds_or_logits: :math:`(B, K)` floating scores or :math:`(B,)` integer indices.
        - targets: :math:`(B,)` integer.

    Raises:
        ValueError: If ``num_classes`` is not a positive int.

    Example:
        >>> metric = ConfusionMatrix(3)
        >>> metric.update(torch.tensor([[2.0, 0.1, 0.3], [0.1, 0.2, 3.0]]), torch.tensor([0, 1]))
        >>> metric.update(torch.tensor([2]), torch.tensor([2]))
        >>> metric.war, metric.uar
        (0.6666666666666666, 0.6666666666666666)
        >>> metric.compute()[1].tolist()
        [0, 0, 1]
        >>> resumed = ConfusionMatrix(3)
        >>> resumed.load_state_dict(metric.state_dict())
        >>> resumed.num_samples
        3
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = check_positive_int("num_classes", num_classes)
        k = self.num_classes
        # (On the CPU under any default device: a meta matrix could count nothing.)
        self._cm = torch.zeros(k, k, dtype=torch.int64, device="cpu")

    @torch.no_grad()
    def update(self, preds_or_logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch.

        Args:
            preds_or_logits: ``(B, K)`` floating scores, or ``(B,)`` integer predictions.
            targets: ``(B,)`` integer true classes.

        Raises:
            TypeError: If an input is not a tensor, or of the wrong dtype (integer scores,
                floating or bool indices), as the losses raise for float targets.
            ValueError: If shapes or class indices are not as expected (the message names the
                argument, its shape and dtype), or the metric is on ``meta``.
        """
        p = given = preds_or_logits
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"`preds_or_logits` must be a torch.Tensor, got {type(p).__name__}")
        _check_has_values(p, "preds_or_logits")
        k = self.num_classes
        if p.ndim == 2:
            if not p.is_floating_point():
                raise TypeError(
                    f"`preds_or_logits` with 2 dims must be floating scores (B, {k}), got "
                    f"{describe(p)}"
                )
            if p.shape[1] != k:
                raise ValueError(
                    f"`preds_or_logits` ({describe(p)}) must have {k} scores per row "
                    f"(num_classes={k})"
                )
            # (A NaN score would silently win the arg-max; checked with config.check_finite.)
            check_finite("preds_or_logits", p)
            p = p.argmax(dim=1)
        elif p.ndim == 1:
            if p.is_floating_point():
                raise TypeError(
                    f"`preds_or_logits` with 1 dim must be integer class indices (B,), got "
                    f"{describe(p)}; pass (B, {k}) logits for scores"
                )
            p = _check_labels(p, "preds_or_logits", k)
        else:
            raise ValueError(
                f"`preds_or_logits` must be (B, {k}) scores or (B,) indices, got {describe(p)}"
            )
        t = _check_labels(targets, "targets", k)
        if t.shape[0] != given.shape[0]:
            # (Named here: confusion_matrix would name the arg-max `preds`, shaped (B,).)
            raise ValueError(
                f"`preds_or_logits` ({describe(given)}) and `targets` ({describe(targets)}) "
                "must hold as many samples"
            )
        # Both checked above: counted without confusion_matrix's second pass over them.
        self._cm += _count_pairs(p.detach().cpu(), t.detach().cpu(), k)

    def compute(self) -> torch.Tensor:
        """The accumulated matrix (a copy), rows = true classes, shape ``(K, K)``, int64."""
        return self._cm.clone()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self._cm.zero_()

    def state_dict(self) -> dict[str, Any]:
        """``{"num_classes": K, "counts": (K, K) int64}``, a copy of the running counts.

        ``torch.save`` it; ``torch.load(..., weights_only=True)`` reads it back.
        """
        return {"num_classes": self.num_classes, "counts": self.compute()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Take the counts of a :meth:`state_dict`, after checking they fit this metric.

        Raises:
            TypeError: ``state_dict`` is no mapping, or its counts are no integer tensor.
            ValueError: Its ``num_classes`` or the counts' shape is another ``K``, or a count
                is negative. A refused state leaves the counts as they were.
        """
        if not isinstance(state_dict, Mapping) or not isinstance(
            state_dict.get("counts"), torch.Tensor
        ):
            raise TypeError(
                "`state_dict` must be a ConfusionMatrix.state_dict() (a mapping with a "
                f"'counts' tensor), got {describe(state_dict)}"
            )
        k = self.num_classes
        given_k = state_dict.get("num_classes", k)
        # (integer_value: "3" or 3.0 is no num_classes, though 3.0 == 3)
        if integer_value(given_k) != k:
            raise ValueError(
                f"state_dict['num_classes'] is {given_k!r}; this ConfusionMatrix has "
                f"num_classes={k} (an int)"
            )
        self._cm = _checked_loaded_counts(state_dict["counts"], "counts", k).to("cpu", copy=True)

    @property
    def num_samples(self) -> int:
        """Number of samples accumulated."""
        return int(self._cm.sum())

    @property
    def war(self) -> float:
        """Weighted average recall (accuracy) so far; see :func:`war`."""
        return war(self._cm)

    @property
    def uar(self) -> float:
        """Unweighted average recall so far; see :func:`uar`."""
        return uar(self._cm)

    @property
    def per_class_recall(self) -> torch.Tensor:
        """Recall per class so far, ``nan`` for classes not seen; see :func:`per_class_recall`."""
        return per_class_recall(self._cm)

    def __repr__(self) -> str:
        return f"ConfusionMatrix(num_classes={self.num_classes}, num_samples={self.num_samples})"


def _checked_loaded_counts(given: torch.Tensor, key: str, k: int) -> torch.Tensor:
    """``state_dict[key]`` as this metric holds its counts: ``(k, k)``, integer, none negative."""
    if given.layout != torch.strided:  # (torch has no comparison for them: its own error)
        kind = str(given.layout).removeprefix("torch.")
        raise ValueError(
            f"state_dict[{key!r}] ({describe(given)}) is a {kind} tensor; ConfusionMatrix "
            "loads dense counts: pass it with .to_dense()"
        )
    if not has_values(given):
        raise ValueError(f"state_dict[{key!r}] ({describe(given)}) holds no values to load")
    if given.ndim == 2 and given.shape[0] == given.shape[1] and given.shape[0] != k:
        raise ValueError(
            f"state_dict[{key!r}] ({describe(given)}) is a confusion matrix of "
            f"num_classes={given.shape[0]}; this ConfusionMatrix has num_classes={k} and "
            f"expects shape ({k}, {k})"
        )
    if tuple(given.shape) != (k, k):
        raise ValueError(
            f"state_dict[{key!r}] ({describe(given)}) is no confusion matrix: expected shape "
            f"({k}, {k}) for num_classes={k}"
        )
    if given.is_floating_point() or given.is_complex() or given.dtype == torch.bool:
        raise TypeError(
            f"state_dict[{key!r}] must hold integer counts (int64, as ConfusionMatrix saves "
            f"them), got {describe(given)}"
        )
    # Checked as int64: a uint64 count from 2**63 on wraps to a negative one there (and torch
    # has no comparison for uint16-uint64).
    counts = given.long()
    if bool((counts < 0).any()):
        raise ValueError(
            f"state_dict[{key!r}] ({describe(given)}) holds negative counts (or, unsigned, "
            "counts past int64)"
        )
    return counts
