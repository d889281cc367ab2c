"""Segment-based frame sampling for video clips.

A clip of ``num_frames`` frames is cut into ``num_segments`` equal segments and one frame is
taken from each (the TSN-style sparse sampling used by DFEW/FERV39k training code): a uniformly
random frame per segment while training, the segment centre at test time. MICACL then groups
the 16 sampled frames into 4 instances of 4 consecutive frames, so the returned indices are
always in temporal order.

Clips shorter than ``num_segments`` frames (11 in DFEW fold-1 train, 3,257 in FERV39k train) are
*stretched*, never dropped: every frame is used, each repeated in order until ``num_segments``
indices are filled.
"""

from __future__ import annotations

import torch

from micacl_layers._validation import check_bool, check_generator, check_positive_int

__all__ = ["segment_indices"]


def segment_indices(
    num_frames: int,
    num_segments: int = 16,
    *,
    train: bool,
    generator: torch.Generator | None = None,
) -> list[int]:
    """Pick one frame index per temporal segment of a clip.

    With ``N = num_frames`` and ``S = num_segments``:

    * ``N >= S``: segment ``i`` covers frames ``[i*N//S, (i+1)*N//S)`` (every segment holds at
      least one frame). Training draws one frame uniformly from each segment; testing takes
      ``start + (end - start) // 2``, the (upper) middle frame. Indices are strictly increasing.
    * ``N < S``: the clip is stretched: index ``i`` is ``((2*i + 1) * N) // (2*S)``, the frame
      under the centre of the ``i``-th of ``S`` equal slices of the clip. Every frame appears at
      least once, in order; no frame is dropped. The same indices are used in train and test
      mode (there is nothing to choose between).

    Args:
        num_frames: Number of frames in the clip (>= 1).
        num_segments: Number of indices to return (>= 1). MICACL uses 16.
        train: ``True`` for random sampling within segments, ``False`` for the deterministic
            segment centres.
        generator: Source of randomness for ``train=True``. ``None`` uses torch's global RNG
            (which ``DataLoader`` seeds differently in each worker); a shared ``Generator``
            object is copied into every worker, so reseed it per worker yourself.

    Returns:
        ``num_segments`` frame indices in ``[0, num_frames)``, non-decreasing.

    Raises:
        ValueError: If ``num_frames`` or ``num_segments`` is < 1.
        TypeError: If either is not an integer, ``train`` is not a bool, or ``generator`` is
            not a CPU ``torch.Generator`` (or ``None``).

    Example:
        >>> segment_indices(32, 4, train=False)
        [4, 12, 20, 28]
        >>> segment_indices(3, 8, train=False)
        [0, 0, 0, 1, 1, 2, 2, 2]
        >>> g = torch.Generator().manual_seed(0)
        >>> idx = segment_indices(100, 16, train=True, generator=g)
        >>> len(idx), idx == sorted(idx), 0 <= idx[0] < 6
        (16, True, True)
    """
    n = check_positive_int("num_frames", num_frames, type_error=True)
    s = check_positive_int("num_segments", num_segments, type_error=True)
    check_bool("train", train)  # None or "false" would silently pick a mode
    check_generator(generator, cpu=True)
    if n < s:
        return [((2 * i + 1) * n) // (2 * s) for i in range(s)]
    # Plain Python ints: a dozen tiny tensor ops cost more than decoding a frame would.
    starts = [i * n // s for i in range(s + 1)]
    lengths = [starts[i + 1] - starts[i] for i in range(s)]
    if train:
        # One uniform draw per segment; floor(u * len) is uniform over the segment's frames
        # (float64 products, as the tensor form computed them). On the CPU whatever the default
        # device: the generator is a CPU one, and None means the CPU RNG a DataLoader seeds.
        u = torch.rand(s, generator=generator, dtype=torch.float64, device="cpu").tolist()
        offsets = [min(int(x * length), length - 1) for x, length in zip(u, lengths, strict=True)]
    else:
        offsets = [length // 2 for length in lengths]
    return [starts[i] + offsets[i] for i in range(s)]
