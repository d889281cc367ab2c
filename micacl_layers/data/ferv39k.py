"""FERV39k clip data set.

Wang et al., "FERV39k: A Large-Scale Multi-Scene Dataset for Facial Expression Recognition in
Videos", CVPR 2022. The layout read here is the official release::

    root/
      2_ClipsforFaceCrop/<scene>/<emotion>/<id>/*.jpg    face-cropped frames, sorted by name
      4_setups/All_scenes/train_All.csv
      4_setups/All_scenes/test_All.csv

Split files have no header; each line is ``<scene>/<emotion>/<id> <label name>``, e.g.
``Action/Sad/0010 Sad``. Classes are alphabetical: Angry, Disgust, Fear, Happy, Neutral, Sad,
Surprise (a different order from DFEW's).
"""

from __future__ import annotations

import os
import re
import warnings
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

__all__ = ["FERV39K_CLASSES", "FERV39k", "parse_ferv39k_split"]

FERV39K_CLASSES: tuple[str, ...] = (
    "Angry",
    "Disgust",
    "Fear",
    "Happy",
    "Neutral",
    "Sad",
    "Surprise",
)

# Path, then the label name, separated by whitespace (official) or a comma.
_LINE = re.compile(r"^(?P<path>\S+?)\s*[\s,]\s*(?P<label>[^\s,]+)$")


def parse_ferv39k_split(path: str | os.PathLike[str]) -> list[tuple[str, int, int]]:
    """Parse a FERV39k split file.

    Args:
        path: ``train_All.csv`` or ``test_All.csv`` (or a per-scene file of the same form).

    Returns:
        ``(relative_clip_path, label, line_number)`` per clip in file order, with the path as
        ``scene/emotion/id`` and ``label`` the 0-based index into ``FERV39K_CLASSES``. Label
        names are matched case-insensitively. The label column is the label; where the clip's
        emotion folder names another class, one ``UserWarning`` lists those lines (a split
        file with its columns from another file), as training on them would be silent label
        noise.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: ``path:line: ...`` for a malformed line, a clip path that is not
            ``scene/emotion/id``, an unknown label name, or a repeated clip.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "train_All.csv"
        >>> _ = p.write_text("Action/Sad/0010 Sad\\nDaily/Happy/0003 Happy\\n")
        >>> parse_ferv39k_split(p)
        [('Action/Sad/0010', 5, 1), ('Daily/Happy/0003', 3, 2)]
    """
    path = Path(path)
    by_name = {name.lower(): i for i, name in enumerate(FERV39K_CLASSES)}
    entries: list[tuple[str, int, int]] = []
    seen: dict[str, int] = {}
    disagree: list[str] = []
    for line, text in read_split_lines(path, "FERV39k"):
        match = _LINE.match(text.strip())
        if match is None:
            raise split_error(
                path, line, f"expected '<scene>/<emotion>/<id> <label>', got {text!r}"
            )
        parts = re.split(r"[/\\]", match["path"])
        if len(parts) != 3 or any(p in ("", ".", "..") for p in parts):
            raise split_error(
                path,
                line,
                f"clip path must be '<scene>/<emotion>/<id>', got {match['path']!r}",
            )
        label = by_name.get(match["label"].lower())
        if label is None:
            raise split_error(
                path,
                line,
                f"unknown label {match['label']!r}; expected one of {', '.join(FERV39K_CLASSES)}",
            )
        rel = "/".join(parts)
        if rel in seen:
            raise split_error(
                path, line, f"clip {rel!r} is listed twice (first on line {seen[rel]})"
            )
        seen[rel] = line
        folder = by_name.get(parts[1].lower())
        if folder is not None and folder != label:
            disagree.append(f"line {line}: {text.strip()!r}")
        entries.append((rel, label, line))
    if disagree:
        warnings.warn(
            f"{path}: {len(disagree)} of {len(entries)} clips have a label that differs from "
            f"their emotion folder; the label column is used: {'; '.join(disagree[:10])}"
            + (f"; and {len(disagree) - 10} more" if len(disagree) > 10 else ""),
            UserWarning,
            stacklevel=2,
        )
    return entries


class FERV39k(ClipFolderDataset):
    """FERV39k clips of one split (all scenes).

    Behaves exactly like :class:`~micacl_layers.data.dfew.DFEW` (same sampling, transforms,
    checks, errors and ``skip_bad_clips``); only the layout and class order differ. 3,257 of
    its 31,088 training clips are shorter than 16 frames: they are stretched, never dropped.

    Args:
        root: FERV39k root folder (holding ``2_ClipsforFaceCrop/`` and ``4_setups/``); a
            leading ``~`` is the home folder.
        split: ``"train"`` or ``"test"``.
        num_frames: Frames sampled per clip (MICACL: 16).
        transform: Callable on a float ``(T, C, H, W)`` clip in ``[0, 1]``.
        train: Random (``True``) or centre (``False``) frame sampling; defaults to
            ``split == "train"``.
        skip_bad_clips: Skip clips whose folder is missing or empty, with one warning listing
            them; ``.skipped`` holds them.
        generator: Randomness for frame sampling and for this package's clip transforms.
        fast_decode: As for :class:`~micacl_layers.data.dfew.DFEW`.
        draft: As for :class:`~micacl_layers.data.dfew.DFEW`.
        output_dtype: As for :class:`~micacl_layers.data.dfew.DFEW`.

    Attributes:
        classes: ``list(FERV39K_CLASSES)``.
        samples: ``(frame_dir, label)`` per usable clip, in split-file order.
        skipped: The :class:`SkippedClip` entries left out.
        class_counts: Clips per class in class order.

    Shape:
        - Item: ``(clip, label)``; clip :math:`(C, T, H, W)` = ``(3, num_frames, H, W)``,
          float32 in ``[0, 1]`` (uint8 in ``0..255`` with ``output_dtype=torch.uint8``); label
          an int in ``0..6``.

    Raises:
        ValueError: For a bad ``split``/``num_frames``/``draft``/``output_dtype``, a transform
            that cannot give uint8 clips, or a bad split-file line.
        TypeError: If ``output_dtype`` is not a ``torch.dtype``, ``root`` is not a path,
            ``transform`` is not callable (or is a class, not an instance),
            ``train``/``skip_bad_clips``/``fast_decode`` is not a bool, or ``generator`` is not
            a CPU ``torch.Generator``.
        FileNotFoundError: If the split file, the frame root or a clip folder is missing or a
            clip folder is empty (the latter two unless ``skip_bad_clips``).
        ImportError: If Pillow is missing (``pip install micacl-layers[data]``).

    Example:
        >>> import tempfile
        >>> from micacl_layers.data.synthetic import make_synthetic_ferv39k
        >>> root = make_synthetic_ferv39k(tempfile.mkdtemp(), total_clips=21, frames=(6, 10),
        ...                               image_size=16, min_clips_per_class=3).root
        >>> ds = FERV39k(root, "train", num_frames=8)
        >>> clip, label = ds[0]
        >>> clip.shape, ds.classes[:3]
        (torch.Size([3, 8, 16, 16]), ['Angry', 'Disgust', 'Fear'])
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
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
            "FERV39k",
            root=root,
            transform=transform,
            train=train,
            skip_bad_clips=skip_bad_clips,
            generator=generator,
            fast_decode=fast_decode,
        )
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.root = expand_root(root)
        self.split = split
        split_file = self.root / "4_setups" / "All_scenes" / f"{split}_All.csv"
        frames_root = self.root / "2_ClipsforFaceCrop"
        entries = [
            (frames_root.joinpath(*rel.split("/")), label, line)
            for rel, label, line in parse_ferv39k_split(split_file)
        ]
        super().__init__(
            name="FERV39k",
            classes=FERV39K_CLASSES,
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
