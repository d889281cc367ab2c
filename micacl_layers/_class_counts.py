"""Class counts a loss holds as a buffer: fixed at construction or counted like running stats."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from micacl_layers._validation import (
    _counts_tensor,
    check_class_counts,
    has_values,
    values_on_cpu,
)


def checked_loaded_counts(
    state_dict: dict, key: str, num_classes: int, *, running: bool, whole: bool = False
) -> torch.Tensor | None:
    """The counts at ``state_dict[key]`` as a loss would hold them, or ``None`` to leave to torch.

    A ``load_state_dict`` copies a buffer as it is: bad counts (0, negative, NaN) would load and
    surface as an inf loss or a clamp, frequencies would be truncated into an int64 buffer. Here
    they get the checks of construction: fixed counts finite and > 0 (frequencies rescaled so
    that the smallest is 1; ``whole``: whole numbers only), running counts whole and >= 0. A
    missing key, another shape (torch's own error names both) and ``meta`` are left to torch.
    """
    given = state_dict.get(key)
    if not isinstance(given, torch.Tensor) or given.shape != (num_classes,) or given.is_meta:
        return None
    try:
        if running:
            counts = _counts_tensor(given)
            if not bool(torch.isfinite(counts).all()) or bool(
                ((counts < 0) | (counts != counts.round())).any()
            ):
                raise ValueError(
                    f"running counts must be whole numbers >= 0, got {counts.tolist()}."
                )
            return given.long()
        counts = check_class_counts(given, num_classes)
        if whole and not bool((counts == counts.round()).all()):
            raise ValueError(f"`class_counts` must be whole numbers, got {counts.tolist()}.")
    except (TypeError, ValueError) as err:
        raise type(err)(f"state_dict[{key!r}]: {err}") from None
    return counts.long() if bool((counts == counts.round()).all()) else counts


class RunningClassCounts(nn.Module):
    """Base for a loss with a ``class_counts`` buffer (``(K,)``, saved in the ``state_dict``).

    Fixed counts (e.g. a data set's ``class_counts``) are stored as int64 when whole and as
    float64 when they are frequencies (rescaled so that the smallest is 1), so that
    ``model.half()`` or ``.double()`` never round them. ``None`` counts the targets seen in
    training mode, like BatchNorm's running statistics.
    """

    class_counts: torch.Tensor  # (a buffer: typed for the checker)

    def _init_class_counts(
        self,
        class_counts: torch.Tensor | Sequence[float] | None,
        num_classes: int,
        device: torch.device | str | None,
    ) -> None:
        self.track_class_counts = class_counts is None
        # The counts as built, kept on the CPU for reset_parameters: a module built on meta and
        # materialised with to_empty() holds uninitialised memory in its buffers.
        self._built_counts: torch.Tensor | None = None
        if class_counts is None:
            counts = torch.zeros(num_classes, dtype=torch.long, device=device)
        else:
            # (a list is read on the CPU even inside a `with torch.device("meta")` block, so
            # that it keeps its values; a tensor stays where it is)
            with values_on_cpu(class_counts):
                checked = check_class_counts(class_counts, num_classes)  # frequencies: min -> 1
            # (meta counts have no values: stored as whole counts, shapes only)
            whole = not has_values(checked) or bool((checked == checked.round()).all())
            dtype = torch.long if whole else torch.float64
            if has_values(checked):
                self._built_counts = checked.to(device="cpu", dtype=dtype)
            # (device None: a tensor's own device; a list's the default one, or that of a
            # `with torch.device(...)` block)
            if device is None and not isinstance(class_counts, torch.Tensor):
                device = torch.empty(0).device
            counts = checked.to(device=device, dtype=dtype)
        self.register_buffer("class_counts", counts)

    @torch.no_grad()
    def _reset_class_counts_buffer(self) -> None:
        """``class_counts`` as built: the given counts again, or zero running counts.

        Counts given as a ``meta`` tensor have no values to restore; load a ``state_dict``.
        """
        if self.track_class_counts:
            self.class_counts.zero_()
        elif self._built_counts is not None:
            self.class_counts.copy_(self._built_counts)

    @torch.no_grad()
    def _apply(self, fn, recurse=True):
        # .half(), .to(dtype) etc. convert floating buffers: fixed non-integer counts (given as
        # frequencies) keep their float64 values and only follow the device.
        counts = self.class_counts
        result = super()._apply(fn, recurse)
        if counts.is_floating_point() and self.class_counts.dtype != torch.float64:
            self.class_counts = counts.to(self.class_counts.device)
        return result

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "class_counts"
        counts = checked_loaded_counts(
            state_dict, key, self.class_counts.shape[0], running=self.track_class_counts
        )
        if counts is not None:
            state_dict[key] = counts  # (the loader's own copy of the caller's dict)
            if counts.dtype != self.class_counts.dtype:
                # Whole counts int64, frequencies float64, as at construction.
                self.class_counts = self.class_counts.to(counts.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def update_class_counts(self, targets: torch.Tensor) -> None:
        """Add a batch of labels to the running counts (done by ``forward`` in training mode)."""
        if not has_values(targets):  # meta: shapes only, nothing to count
            return
        self.class_counts += torch.bincount(
            targets.to(self.class_counts.device), minlength=self.class_counts.shape[0]
        )

    def reset_class_counts(self) -> None:
        """Zero the running class counts (only meaningful with ``class_counts=None``)."""
        if not self.track_class_counts:
            raise RuntimeError("class counts were fixed at construction; nothing to reset.")
        self.class_counts.zero_()

    def _counts_for_loss(self, targets: torch.Tensor) -> torch.Tensor:
        """Count ``targets`` when tracking in training mode; the counts a loss should use."""
        if self.track_class_counts and self.training:
            self.update_class_counts(targets)
        # A class not seen yet counts as one sample, so its weight stays finite.
        return self.class_counts.clamp_min(1) if self.track_class_counts else self.class_counts
