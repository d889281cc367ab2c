"""DFEW (Dynamic Facial Expressions in the Wild) clip data set.

Jiang et al., "DFEW: A Large-Scale Database for Recognizing Dynamic Facial Expressions in the
Wild", ACM MM 2020. The layout read here is the official release::

    root/
      Clip/clip_224x224/<5-digit clip id>/*.jpg          frames, sorted by name
      EmoLabel_DataSplit/train(single-labeled)/set_<fold>.csv
      EmoLabel_DataSplit/test(single-labeled)/set_<fold>.csv

Split files have a header row, the clip id in column 0 (leading zeros may be missing) and the
label 1..7 in column 1, in DFEW's order: happy, sad, neutral, angry, surprise, disgust, fear.
"""

from __future__ import annotations

import csv
import numbers
import os
from collections.abc import Callable
from pathlib import Path

import torch

from ._frames import (
    ClipFolderDataset,
    check_clip_options,
    expand_root,
    read_split_lines,
    split_error,
)

__all__ = ["DFEW", "DFEW_CLASSES", "parse_dfew_split"]

DFEW_CLASSES: tuple[str, ...] = (
    "happy",
    "sad",
    "neutral",
    "angry",
    "surprise",
    "disgust",
    "fear",
)


def _fields(text: str, path: Path, line: int) -> list[str]:
    try:
        row = next(csv.reader([text]))
    except csv.Error as err:  # e.g. a field over csv's size limit: not a ValueError, no line
        raise split_error(path, line, f"cannot read the line as CSV ({err})") from None
    return [field.strip() for field in row]


def _looks_like_data_row(fields: list[str]) -> bool:
    return len(fields) >= 2 and fields[0].isdigit() and fields[1].lstrip("+-").isdigit()


def parse_dfew_split(path: str | os.PathLike[str]) -> list[tuple[str, int, int]]:
    """Parse a DFEW split file.

    Args:
        path: A ``set_<fold>.csv`` file.

    Returns:
        ``(clip_id, label, line_number)`` per clip in file order, with ``clip_id`` zero-padded
        to 5 digits and ``label`` 0-based (file label - 1).

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: ``path:line: ...`` for a missing header or one that names a ``label``
            column other than the second, a malformed line, a clip id that is not a number of
            at most 5 digits, a label outside 1..7, a repeated clip id, or no clip at all.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "set_1.csv"
        >>> _ = p.write_text("video_name,label\\n1,3\\n00042,7\\n")
        >>> parse_dfew_split(p)
        [('00001', 2, 2), ('00042', 6, 3)]
    """
    path = Path(path)
    lines = read_split_lines(path, "DFEW")
    first_line, first_text = lines[0]
    header = _fields(first_text, path, first_line)
    if _looks_like_data_row(header):
        raise split_error(
            path,
            first_line,
            f"expected a header row (like 'video_name,label') before the clips, found the data "
            f"row {first_text!r}",
        )
    # The columns are read by position: a file whose header names the label elsewhere (pandas'
    # index column first, or the columns swapped) would be read as other clips' labels.
    names = [name.lower() for name in header]
    if "label" in names and names.index("label") != 1:
        raise split_error(
            path,
            first_line,
            f"the header {first_text!r} puts 'label' in column {names.index('label') + 1}; "
            "DFEW split files hold the clip id in column 1 and the label in column 2 "
            "('video_name,label')",
        )
    entries: list[tuple[str, int, int]] = []
    seen: dict[str, int] = {}
    n_classes = len(DFEW_CLASSES)
    for line, text in lines[1:]:
        fields = _fields(text, path, line)
        if len(fields) < 2:
            raise split_error(path, line, f"expected 'clip_id,label', got {text!r}")
        raw_id, raw_label = fields[0], fields[1]
        if not (raw_id.isascii() and raw_id.isdigit()) or len(str(int(raw_id))) > 5:
            raise split_error(
                path, line, f"clip id must be a number of at most 5 digits, got {raw_id!r}"
            )
        # Not int() alone: it also reads "0_3" (as 3) and non-ASCII digits.
        digits = raw_label[1:] if raw_label[:1] in "+-" else raw_label
        if not (digits.isascii() and digits.isdigit()):
            raise split_error(
                path, line, f"label must be an integer 1..{n_classes}, got {raw_label!r}"
            )
        label = int(raw_label)
        if not 1 <= label <= n_classes:
            raise split_error(
                path,
                line,
                f"label {label} is out of range 1..{n_classes} "
                f"({', '.join(f'{i + 1}={c}' for i, c in enumerate(DFEW_CLASSES))})",
            )
        clip_id = f"{int(raw_id):05d}"
        if clip_id in seen:
            raise split_error(
                path, line, f"clip {clip_id} is listed twice (first on line {seen[clip_id]})"
            )
        seen[clip_id] = line
        entries.append((clip_id, label - 1, line))
    if not entries:
        raise split_error(path, first_line, "the file has a header but lists no clips")
    return entries


class DFEW(ClipFolderDataset):
    """DFEW single-labelled clips of one fold and split.

    Every clip folder listed in the split file is checked at construction. Each item samples
    ``num_frames`` frames (one per equal segment: random in training, centre otherwise; short
    clips are stretched, never dropped), decodes them, applies ``transform`` to the
    ``(T, C, H, W)`` clip and returns it channel-first.

    Args:
        root: DFEW root folder (holding ``Clip/`` and ``EmoLabel_DataSplit/``); a leading
            ``~`` is the home folder.
        fold: Fold 1..5 (an ``int`` or a NumPy integer; stored as ``int``).
        split: ``"train"`` or ``"test"``.
        num_frames: Frames sampled per clip (MICACL: 16).
        transform: Callable on a float ``(T, C, H, W)`` clip in ``[0, 1]``, e.g.
            :func:`~micacl_layers.data.transforms.train_transform`. ``None`` returns frames at
            their stored size.
        train: Random (``True``) or deterministic centre (``False``) frame sampling; defaults to
            ``split == "train"``.
        skip_bad_clips: If ``True``, clips whose folder is missing or holds no JPEG are left
            out, with one ``SkippedClipsWarning`` listing all of them; ``.skipped`` holds them.
        generator: Randomness for frame sampling and for this package's clip transforms.
            ``None`` uses torch's global RNG (seeded per ``DataLoader`` worker). A generator
            object is copied into each worker as is: reseed it in ``worker_init_fn``, through
            ``torch.utils.data.get_worker_info().dataset.generator``.
        fast_decode: For this package's ``ClipTransform`` chains (``train_transform``,
            ``test_transform``, ...): draw the crop and flip first, then decode each sampled
            frame straight to the crop at the output size (JPEG draft mode where ``draft``
            allows), flip in uint8 and convert to float once, before the
            colour steps. Same frames and random parameters as ``False``, the plain path
            (full-size float decode, then the transform); pixels within rounding without
            draft mode (see ``docs/data.md`` for both figures). Plain callables always get the
            plain path.
        draft: When the fast path uses JPEG draft mode. ``"crop"`` (default): only when the
            output is at most half the crop, so no crop is decoded below the output's
            resolution (the test transform's 224 -> 112 resize is; ``train_transform``'s
            random crops of a 224x224 frame are not). ``"frame"``: whenever the output is at
            most half the frame, for speed: random crops are then cut from the half-size
            frame, softer than from a full decode (``docs/data.md`` has the PSNR).
            ``"never"``: always decode in full.
        output_dtype: ``torch.float32`` (default) or ``torch.uint8``. With uint8 the clip is
            returned in ``0..255`` straight after the crop, resize and flip, so ``transform``
            may hold only those steps (one ``ClipRandomResizedCrop`` or ``ClipResize``, and
            ``ClipRandomHorizontalFlip``; ``ValueError`` otherwise); convert and jitter the
            batch on the device with
            :class:`~micacl_layers.data.batch_transforms.ClipBatchColorJitter`. Moves a
            quarter of the bytes to the GPU, and leaves the worker only the decode.

    Attributes:
        classes: ``list(DFEW_CLASSES)``.
        samples: ``(frame_dir, label)`` per usable clip, in split-file order.
        skipped: The :class:`SkippedClip` entries left out.
        class_counts: Clips per class in class order (for ``MCCLoss(class_counts=...)``).

    Shape:
        - Item: ``(clip, label)``; clip :math:`(C, T, H, W)` = ``(3, num_frames, H, W)``,
          float32 in ``[0, 1]`` (unless ``transform`` normalises), or uint8 in ``0..255`` with
          ``output_dtype=torch.uint8``; label an int in ``0..6``.

    Raises:
        ValueError: For a bad ``fold``/``split``/``num_frames``/``draft``/``output_dtype``, a
            transform that cannot give uint8 clips, or a bad split-file line
            (``path:line: ...``).
        TypeError: If ``output_dtype`` is not a ``torch.dtype``, ``root`` is not a path,
            ``transform`` is not callable (or is a class, not an instance),
            ``train``/``skip_bad_clips``/``fast_decode`` is not a bool, or ``generator`` is not
            a CPU ``torch.Generator``.
        FileNotFoundError: If the split file, the frame root or a clip folder is missing or a
            clip folder is empty (the latter two unless ``skip_bad_clips``).
        ImportError: If Pillow is missing (``pip install micacl-layers[data]``).

    Example:
        >>> import tempfile
        >>> from micacl_layers.data.synthetic import make_synthetic_dfew
        >>> root = make_synthetic_dfew(tempfile.mkdtemp(), total_clips=24, frames=(6, 10),
        ...                            image_size=16, min_clips_per_class=3).root
        >>> ds = DFEW(root, fold=1, split="test")
        >>> clip, label = ds[0]
        >>> clip.shape, clip.dtype, ds.classes[label] in DFEW_CLASSES
        (torch.Size([3, 16, 16, 16]), torch.float32, True)
        >>> sum(ds.class_counts) == len(ds)
        True
    """

    @staticmethod
    def split_file_path(root: str | os.PathLike[str], fold: int, split: str) -> Path:
        """The split file of one fold and split under a DFEW ``root``, in the official layout.

        ``EmoLabel_DataSplit/<split>(single-labeled)/set_<fold>.csv``; whether it exists is
        not checked (a training script can check every fold it needs before it starts).

        Args:
            root: DFEW root folder; a leading ``~`` is expanded.
            fold: ``1``..``5``.
            split: ``"train"`` or ``"test"``.

        Raises:
            ValueError: For a ``fold`` that is no int in 1..5, or another ``split``.

        Example:
            >>> DFEW.split_file_path("/data/DFEW", 2, "test").as_posix()
            '/data/DFEW/EmoLabel_DataSplit/test(single-labeled)/set_2.csv'
        """
        # A fold read from a NumPy array or a sweep's config is a NumPy integer, not an int.
        if isinstance(fold, bool) or not isinstance(fold, numbers.Integral) or not 1 <= fold <= 5:
            raise ValueError(f"fold must be an int in 1..5, got {fold!r}")
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        layout = Path("EmoLabel_DataSplit", f"{split}(single-labeled)", f"set_{int(fold)}.csv")
        return expand_root(root) / layout

    def __init__(
        self,
        root: str | os.PathLike[str],
        fold: int,
        split: str,
        *,
        num_frames: int = 16,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        train: bool | None = None,
        skip_bad_clips: bool = False,
        generator: torch.Generator | None = None,
        fast_decode: bool = True,
        draft: str = "crop",
        output_dtype: torch.dtype = torch.float32,
    ) -> None:
        check_clip_options(
            "DFEW",
            root=root,
            transform=transform,
            train=train,
            skip_bad_clips=skip_bad_clips,
            generator=generator,
            fast_decode=fast_decode,
        )
        split_file = self.split_file_path(root, fold, split)
        self.root = expand_root(root)
        self.fold = int(fold)  # (checked by split_file_path)
        self.split = split
        frames_root = self.root / "Clip" / "clip_224x224"
        entries = [
            (frames_root / clip_id, label, line)
            for clip_id, label, line in parse_dfew_split(split_file)
        ]
        super().__init__(
            name="DFEW",
            classes=DFEW_CLASSES,
            split_file=split_file,
            frames_root=frames_root,
            entries=entries,
            num_frames=num_frames,
            transform=transform,
            train=split == "train" if train is None else train,
            skip_bad_clips=skip_bad_clips,
            generator=generator,
            fast_decode=fast_decode,
            draft=draft,
            output_dtype=output_dtype,
        )
