"""A cross-batch memory of past embeddings, extra contrast candidates for small batches.

DFER batches are small (8-32 clips for 7 classes), so most anchors of the rare classes find no
positive in their own batch and contribute nothing to a contrastive loss. A first-in-first-out
queue of the last ``size`` (detached) embeddings and labels gives them positives from earlier
batches (as in cross-batch memory, Wang et al., CVPR 2020). Stored embeddings were produced by
earlier weights; keep the queue short relative to how fast the projection changes (a few
batches' worth is typical), or :meth:`ContrastMemory.reset` it after large updates.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from micacl_layers._validation import (
    check_floating,
    check_ndim,
    check_parameter_dtype,
    check_positive_int,
    check_targets,
    describe,
    has_values,
    integer_value,
    torchscript_unsupported,
)

__all__ = ["ContrastMemory"]


class ContrastMemory(nn.Module):
    """A FIFO queue of embeddings (one slot per scale) and their labels, saved in the state_dict.

    Args:
        size: Number of past samples kept.
        dims: Embedding size of each scale.
        device: Buffer device.
        dtype: Buffer dtype (float32 by default).

    Shape:
        - push: embeddings ``[(B, dims[s]) for s]``, targets :math:`(B,)`
        - get: embeddings ``[(M, dims[s]) for s]`` and targets :math:`(M,)`, ``M <= size``

    Example:
        >>> mem = ContrastMemory(4, dims=(3,))
        >>> mem.push([torch.randn(2, 3)], torch.tensor([0, 1]))
        >>> feats, targets = mem.get()
        >>> feats[0].shape, targets.tolist()
        (torch.Size([2, 3]), [0, 1])
    """

    targets: torch.Tensor  # (buffers: typed for the checker)
    pointer: torch.Tensor

    @classmethod
    def optional(
        cls,
        size: object,
        dims: Sequence[int],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> ContrastMemory | None:
        """A memory of ``size`` samples, or ``None`` for an integer 0 (a loss's ``memory_size``).

        An integer is an int, a NumPy integer or a 0-d integer tensor, as for every size
        argument; a float or NumPy float zero is refused as any other size that is no int.
        """
        # Only an integer 0 means "no memory": `size == 0` alone also let 0.0, a NumPy float
        # zero or np.False_ through, while 5.0 is refused as no int.
        number = integer_value(size)
        if number == 0:
            return None
        if number is None:
            # (not "must be >= 0": 0.0 or a meta tensor breaks no bound, only the type)
            raise ValueError(
                f"`memory_size` must be an int >= 0 (0 disables the memory), got {size!r}."
            )
        if number < 0:
            raise ValueError(f"`memory_size` must be >= 0 (0 disables the memory), got {size!r}.")
        return cls(number, list(dims), device=device, dtype=dtype)

    def __init__(
        self,
        size: int,
        dims: tuple[int, ...] | list[int],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.size = check_positive_int("memory_size", size)
        try:
            dims = tuple(dims)
        except TypeError:
            raise TypeError(
                f"`dims` must be a sequence of positive ints (one embedding size "
                f"per scale), got {dims!r}."
            ) from None
        if not dims:
            raise ValueError("`dims` must hold at least one embedding size, got ().")
        self.dims = tuple(check_positive_int("dims", d) for d in dims)
        check_parameter_dtype(dtype, of="the stored embeddings", complex_ok=False)
        for i, d in enumerate(self.dims):
            self.register_buffer(
                f"features_{i}", torch.zeros(size, d, device=device, dtype=dtype or torch.float32)
            )
        # -1 marks an empty slot; int64 buffers survive model.half().
        self.register_buffer("targets", torch.full((size,), -1, dtype=torch.long, device=device))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long, device=device))

    def _features(self, i: int) -> torch.Tensor:
        return getattr(self, f"features_{i}")

    __prepare_scriptable__ = torchscript_unsupported

    @torch.no_grad()
    def push(self, embeddings: list[torch.Tensor], targets: torch.Tensor) -> None:
        """Enqueue a batch (detached), overwriting the oldest entries.

        Samples with a negative target (``ignore_index``, e.g. -100) are not stored: they take
        no slot, so they never push out a valid older entry. On ``meta`` nothing is stored.

        Args:
            embeddings: One ``(B, dims[s])`` floating tensor per scale.
            targets: ``(B,)`` class indices (any integer dtype).

        Raises:
            TypeError: ``embeddings`` is not a list/tuple of floating tensors, or ``targets``
                are not integer.
            ValueError: A count or shape does not match ``dims`` or the targets.
        """
        if not isinstance(embeddings, (list, tuple)) or len(embeddings) != len(self.dims):
            got = len(embeddings) if isinstance(embeddings, (list, tuple)) else describe(embeddings)
            raise ValueError(
                f"`embeddings` must be a list holding one tensor per scale "
                f"({len(self.dims)}), got {got}."
            )
        targets = check_targets("targets", targets)
        n = targets.shape[0]
        for i, (emb, dim) in enumerate(zip(embeddings, self.dims, strict=True)):
            emb = check_floating(f"embeddings[{i}]", emb)
            check_ndim(f"embeddings[{i}]", emb, 2, "(B, dims[s])")
            if tuple(emb.shape) != (n, dim):
                raise ValueError(
                    f"`embeddings[{i}]` must have shape (B, dims[{i}])=({n}, {dim}) "
                    f"(B from `targets`), got {describe(emb)}."
                )
        if has_values(self.targets):
            # Torch would copy nothing out of a meta tensor, or fail inside the copy.
            for name, t in [("targets", targets)] + [
                (f"embeddings[{i}]", emb) for i, emb in enumerate(embeddings)
            ]:
                if not has_values(t):
                    raise ValueError(
                        f"`{name}` ({describe(t)}) is on meta and holds no values; this "
                        f"ContrastMemory on {self.targets.device} stores values."
                    )
        if n == 0 or not has_values(targets) or not has_values(self.targets):
            return
        # Ignored samples (negative targets) take no slot: the queue never loses a valid
        # entry to them.
        valid = targets >= 0
        if not bool(valid.all()):
            targets = targets[valid]
            embeddings = [emb[valid.to(emb.device)] for emb in embeddings]
            n = targets.shape[0]
            if n == 0:
                return
        # With a batch larger than the queue only its newest `size` samples fit.
        keep = min(n, self.size)
        start = int(self.pointer)
        slots = (torch.arange(keep, device=self.targets.device) + start) % self.size
        for i, emb in enumerate(embeddings):
            buf = self._features(i)
            buf[slots] = emb[-keep:].detach().to(device=buf.device, dtype=buf.dtype)
        self.targets[slots] = targets[-keep:].to(self.targets.device)
        self.pointer.fill_((start + keep) % self.size)

    def get(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The filled entries: one embedding tensor per scale, and their labels."""
        filled = self.targets >= 0
        return [self._features(i)[filled] for i in range(len(self.dims))], self.targets[filled]

    def __len__(self) -> int:
        if not has_values(self.targets):  # meta: shapes only, nothing stored
            return 0
        return int((self.targets >= 0).sum())

    @torch.no_grad()
    def reset(self) -> None:
        """Empty the queue."""
        self.targets.fill_(-1)
        self.pointer.zero_()
        for i in range(len(self.dims)):
            self._features(i).zero_()

    def reset_parameters(self) -> None:
        """Empty the queue (:meth:`reset`), for the usual walk after ``to_empty()``."""
        self.reset()

    def extra_repr(self) -> str:
        """Options shown in ``repr()``."""
        return f"size={self.size}, dims={self.dims}"
