"""Frame-folder clip reading shared by the DFEW and FERV39k loaders.

Both data sets store a clip as a folder of JPEG frames and list clips in a split file. This
module holds everything the two loaders share: finding and decoding frames, turning split-file
problems into errors that name the file and line, checking every clip folder up front, and the
``ClipFolderDataset`` base class that samples, decodes and augments a clip.
"""

from __future__ import annotations

import codecs
import io
import operator
import os
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from micacl_layers._validation import check_generator, check_positive_int

from ._decode import (
    DRAFT_RULES,
    decode_planned,
    non_geometric_step,
    plan_geometry,
    to_float_clip,
    to_uint8_clip,
)
from .sampling import segment_indices
from .transforms import ClipCompose, ClipTransform

__all__ = [
    "ClipFolderDataset",
    "CorruptFrameError",
    "SkippedClip",
    "SkippedClipsWarning",
    "check_clip_options",
    "list_frames",
    "load_frames",
    "read_split_lines",
    "require_pil",
    "split_error",
]

JPEG_SUFFIXES = (".jpg", ".jpeg")
# A wrong root makes every clip "missing"; listing thousands of folders helps nobody.
_MAX_LISTED = 20


def require_pil() -> ModuleType:
    """Import ``PIL.Image``, or explain how to install it.

    Returns:
        The ``PIL.Image`` module.

    Raises:
        ImportError: If Pillow is not installed.
    """
    try:
        from PIL import Image
    except ImportError as err:
        raise ImportError(
            "micacl_layers.data needs Pillow to read and write JPEG frames: "
            "pip install micacl-layers[data]"
        ) from err
    return Image


class CorruptFrameError(OSError):
    """A frame file exists but cannot be decoded as an image."""


class SkippedClipsWarning(UserWarning):
    """Clips listed in a split file were skipped because their frame folders are unusable."""


class SkippedClip(NamedTuple):
    """A clip left out by ``skip_bad_clips=True``.

    Attributes:
        frame_dir: The clip's frame folder.
        label: Its 0-based label.
        reason: Why it was skipped (``"missing"``, ``"not a directory"``, ``"no JPEG frames"``).
        line: Line number of the clip in the split file.

    Example:
        >>> import shutil, tempfile, warnings
        >>> from micacl_layers.data import DFEW, make_synthetic_dfew
        >>> root = make_synthetic_dfew(tempfile.mkdtemp(), total_clips=14, frames=(6, 8),
        ...                            image_size=16, min_clips_per_class=2).root
        >>> shutil.rmtree(Path(root) / "Clip" / "clip_224x224" / "00001")
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")  # the SkippedClipsWarning that lists them
        ...     splits = [DFEW(root, 1, s, skip_bad_clips=True) for s in ("train", "test")]
        >>> [(c.frame_dir.name, c.reason) for ds in splits for c in ds.skipped]
        [('00001', 'missing')]
    """

    frame_dir: Path
    label: int
    reason: str
    line: int


def _natural_key(name: str) -> list[int | str]:
    # DFEW names frames 00001.jpg...; a numeric compare also keeps 2.jpg before 10.jpg. The
    # split puts the digit runs at the odd positions; part.isdigit() would also pick out "²",
    # which is not a decimal digit and which int() refuses.
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", name))]


def _is_jpeg(name: str) -> bool:
    return name.lower().endswith(JPEG_SUFFIXES)


def list_frames(frame_dir: str | os.PathLike[str]) -> list[Path]:
    """List a clip's JPEG frames in temporal order.

    Frames are sorted by file name, comparing runs of digits numerically (so ``2.jpg`` comes
    before ``10.jpg``; zero-padded names sort as plain text would). ``.jpg`` and ``.jpeg`` in any
    case count as frames; other files, folders, and hidden names (starting with ``.``, such as
    the ``._00001.jpg`` metadata files macOS leaves on copied drives) are ignored.

    Args:
        frame_dir: The clip's folder.

    Returns:
        The frame paths; empty if the folder holds no JPEG.

    Raises:
        FileNotFoundError: If ``frame_dir`` does not exist.
        NotADirectoryError: If ``frame_dir`` is not a directory.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> for name in ["10.jpg", "2.jpg", "notes.txt", "1.JPG", "._1.jpg"]:
        ...     _ = (d / name).write_bytes(b"")
        >>> [p.name for p in list_frames(d)]
        ['1.JPG', '2.jpg', '10.jpg']
    """
    frame_dir = Path(frame_dir)
    return [frame_dir / name for name in _frame_names(frame_dir)]


_DIGITS_TO_ZERO = str.maketrans("0123456789", "0000000000")


def _frame_names(frame_dir: Path) -> list[str]:
    with os.scandir(frame_dir) as entries:
        # Hidden "._*.jpg" files are macOS metadata, not frames (they sort first and do not
        # decode). A dangling link is kept: it is a missing frame, named when it is read, not
        # a clip silently one frame shorter.
        names = [
            e.name
            for e in entries
            if _is_jpeg(e.name) and not e.name.startswith(".") and not e.is_dir()
        ]
    # Names that differ only in their digits (00001.jpg, 00002.jpg, ...: every clip of DFEW
    # and FERV39k) sort the same as text and numerically; plain sorting them is ~20x cheaper,
    # which matters when construction lists 39k folders.
    pattern = names[0].translate(_DIGITS_TO_ZERO) if names else ""
    if all(name.translate(_DIGITS_TO_ZERO) == pattern for name in names):
        names.sort()
    else:
        # The name breaks ties ("1.jpg" and "01.jpg" have one key): else the order, hence the
        # sampled frames, would follow the file system's listing order, which differs between
        # machines.
        names.sort(key=lambda name: (_natural_key(name), name))
    return names


# A clip's frame names, joined by NUL (which no file name contains): one str per clip instead
# of one object per frame, so DataLoader workers forked from the data set do not copy a million
# reference-counted objects on first touch.
_SEP = "\0"


def _list_clip(frame_dir: Path) -> tuple[str, str | None]:
    """A clip folder's frame names in order (NUL-joined), and why it is unusable, if it is."""
    try:
        names = _frame_names(frame_dir)  # names only: no Path object per frame
    except FileNotFoundError:
        return "", "missing"
    except NotADirectoryError:
        return "", "not a directory"
    if not names:
        return "", "no JPEG frames"
    return _SEP.join(names), None


def load_frames(paths: Iterable[str | os.PathLike[str]]) -> torch.Tensor:
    """Decode JPEG frames into a clip tensor.

    Repeated paths (a short clip stretched to 16 frames) are decoded once. Greyscale or CMYK
    frames are converted to RGB.

    Args:
        paths: Frame files in the order wanted (a sequence, or any iterable of them).

    Returns:
        float32 clip with values in ``[0, 1]``.

    Shape:
        - Output: :math:`(T, 3, H, W)` with ``T = len(paths)``.

    Raises:
        ImportError: If Pillow is missing.
        TypeError: If ``paths`` is a single path rather than a sequence (or other iterable)
            of them, or is not iterable.
        ValueError: If ``paths`` is empty, or frames differ in size (naming the odd file).
        FileNotFoundError: If a frame file has disappeared (naming it).
        CorruptFrameError: If a frame cannot be decoded (naming it).

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> d = Path(tempfile.mkdtemp())
        >>> Image.new("RGB", (8, 6), (255, 0, 0)).save(d / "1.jpg")
        >>> clip = load_frames([d / "1.jpg", d / "1.jpg"])
        >>> clip.shape, clip.dtype
        (torch.Size([2, 3, 6, 8]), torch.float32)
    """
    if isinstance(paths, (str, bytes, os.PathLike)):  # else read as one frame per character
        raise TypeError(
            f"`paths` must be a sequence of frame paths, got the single path {paths!r}; "
            "wrap it in a list"
        )
    if not isinstance(paths, Iterable):
        raise TypeError(
            f"`paths` must be a sequence of frame paths, got {paths!r} of type "
            f"{type(paths).__name__}"
        )
    paths = list(paths)  # a generator expression has no len()
    if len(paths) == 0:
        raise ValueError("paths must name at least one frame, got an empty sequence")
    image_mod = require_pil()
    decoded: dict[Path, np.ndarray] = {}
    arrays = []
    first: Path | None = None
    for raw in paths:
        path = Path(raw)
        if path not in decoded:
            try:
                with image_mod.open(path) as img:
                    decoded[path] = np.asarray(img.convert("RGB"))
            except FileNotFoundError:
                raise FileNotFoundError(f"frame file {str(path)!r} does not exist") from None
            except (OSError, SyntaxError, ValueError) as err:
                raise CorruptFrameError(
                    f"cannot decode frame {str(path)!r} (corrupt or not an image): {err}"
                ) from err
            if first is None:
                first = path
            elif decoded[path].shape != decoded[first].shape:
                h, w = decoded[path].shape[:2]
                h0, w0 = decoded[first].shape[:2]
                raise ValueError(
                    f"frame {str(path)!r} is {w}x{h} but {str(first)!r} in the same clip is "
                    f"{w0}x{h0}; all frames of a clip must have one size"
                )
        arrays.append(decoded[path])
    clip = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return clip.to(torch.float32).div_(255.0).contiguous()


def split_error(path: str | os.PathLike[str], line: int, message: str) -> ValueError:
    """Build the error for a bad line of a split file.

    Args:
        path: The split file.
        line: 1-based line number.
        message: What is wrong.

    Returns:
        A ``ValueError`` whose message starts with ``path:line:`` (editors jump to it).

    Example:
        >>> str(split_error("set_1.csv", 3, "label 9 is out of range 1..7"))
        'set_1.csv:3: label 9 is out of range 1..7'
    """
    return ValueError(f"{os.fspath(path)}:{line}: {message}")


def read_split_lines(path: str | os.PathLike[str], dataset: str) -> list[tuple[int, str]]:
    """Read a split file's non-blank lines with their 1-based line numbers.

    The file is read as UTF-8 (a byte-order mark is ignored), or as UTF-16 or UTF-32 if it
    starts with that byte-order mark (spreadsheets' "Unicode text" is UTF-16); trailing
    whitespace is stripped.

    Args:
        path: The split file.
        dataset: Data set name for the error message.

    Returns:
        ``(line_number, text)`` for every non-blank line.

    Raises:
        FileNotFoundError: If the file does not exist (naming it).
        ValueError: If it holds no non-blank line, or is not UTF-8 text, or holds a NUL
            character (UTF-16 without its byte-order mark), naming the line.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "s.csv"
        >>> _ = p.write_text("a,b\\n\\n1,2\\n")
        >>> read_split_lines(p, "DFEW")
        [(1, 'a,b'), (3, '1,2')]
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{dataset} split file {str(path)!r} does not exist; check `root` and the data "
            "set's layout (see docs/data.md)"
        )
    raw = path.read_bytes()
    # A byte-order mark says what the text is; UTF-32's little-endian mark starts with UTF-16's,
    # so it is looked for first.
    if raw.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        codec = "UTF-32"
    elif raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        codec = "UTF-16"
    else:
        codec = "UTF-8"
    try:
        decoded = raw.decode("utf-8-sig" if codec == "UTF-8" else codec.lower())
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ValueError(
            f"{path}:{line}: {dataset} split file is not {codec} text (byte "
            f"{raw[err.start]:#04x} at offset {err.start}); save it as UTF-8"
        ) from None
    # newline="": lines end at \n, \r\n or \r, as when the file is iterated in text mode.
    numbered = list(enumerate(io.StringIO(decoded, newline=""), start=1))
    for i, text in numbered:
        # UTF-16 without its byte-order mark is valid UTF-8 (every other byte NUL), and would
        # fail later as a clip id or label name full of NULs, not as an encoding.
        if "\0" in text:
            raise ValueError(
                f"{path}:{i}: {dataset} split file holds a NUL character, as UTF-16 or UTF-32 "
                "text without its byte-order mark does; save it as UTF-8"
            )
    lines = [(i, text.rstrip()) for i, text in numbered if text.strip()]
    if not lines:
        raise ValueError(f"{path}:1: {dataset} split file is empty")
    return lines


def expand_root(root: str | os.PathLike[str]) -> Path:
    """A data root with a leading ``~`` expanded, as torchvision's data sets do.

    ``os.path.expanduser``, not ``Path.expanduser``: the latter raises ``RuntimeError`` for
    ``"~name"`` naming no user (then a relative folder), or for ``"~"`` where no home is known.
    """
    return Path(os.path.expanduser(root))


def _check_transform(name: str, transform: object) -> None:
    if isinstance(transform, type):  # callable, but it would read the clip as an option
        raise TypeError(
            f"{name}: `transform` is the class {transform.__name__}, not one of its instances: "
            f"write {transform.__name__}(...)"
        )
    if transform is not None and not callable(transform):
        raise TypeError(
            f"{name}: `transform` must be callable on a (T, C, H, W) clip, or None, got "
            f"{transform!r} of type {type(transform).__name__}"
        )


def check_clip_options(
    name: str,
    *,
    root: object,
    transform: object,
    train: object,
    skip_bad_clips: object,
    generator: object,
    fast_decode: object,
) -> None:
    """Check the options the DFEW and FERV39k loaders share, before any file is read.

    Args:
        name: Data set name for the messages.
        root: Must be a ``str`` or ``os.PathLike``.
        transform: ``None`` or a callable.
        train: ``None`` (from the split) or a ``bool``.
        skip_bad_clips: A ``bool``.
        generator: ``None`` or a CPU ``torch.Generator``.
        fast_decode: A ``bool``.

    Raises:
        TypeError: Naming the option, what it got and what it takes. (``train="false"`` or
            ``skip_bad_clips="no"`` were truthy; a bad ``generator`` or ``transform`` failed
            inside torch, or as "object is not callable", at the first item.)

    Example:
        >>> check_clip_options("DFEW", root="/data", transform=None, train=None,
        ...                    skip_bad_clips=False, generator=None, fast_decode=True)
    """
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"{name}: `root` must be a str or os.PathLike, got {root!r}")
    _check_transform(name, transform)
    if train is not None and not isinstance(train, bool):
        raise TypeError(f"{name}: `train` must be a bool or None (from the split), got {train!r}")
    for option, value in (("skip_bad_clips", skip_bad_clips), ("fast_decode", fast_decode)):
        if not isinstance(value, bool):
            raise TypeError(f"{name}: `{option}` must be a bool, got {value!r}")
    check_generator(generator, cpu=True, owner=name)


class ClipFolderDataset(Dataset[tuple[torch.Tensor, int]]):
    """A data set of clips stored as folders of JPEG frames.

    Subclasses parse their split file and pass the entries here. Every clip folder is checked
    at construction (a missing or empty folder fails now, not hours into training).

    Args:
        name: Data set name used in messages.
        classes: Class names in label order.
        split_file: The split file the entries come from (for messages).
        frames_root: Folder under which all clip folders live.
        entries: ``(frame_dir, label, line_number)`` per clip, in split-file order.
        num_frames: Frames sampled per clip.
        transform: Applied to each ``(T, C, H, W)`` clip in ``[0, 1]``.
        train: Random (``True``) or centre (``False``) frame sampling.
        skip_bad_clips: Skip unusable clip folders with one warning instead of raising.
        generator: Randomness for frame sampling and for ``ClipTransform`` transforms.
        fast_decode: Decode straight at the size the transform needs (see
            :mod:`~micacl_layers.data._decode`); ``False`` decodes every frame at full size in
            float and runs the transform on that (the plain path).
        draft: When the fast path decodes in JPEG draft mode: ``"crop"``, ``"frame"`` or
            ``"never"`` (see :func:`~micacl_layers.data._decode._draft_request`); the plain
            path (``fast_decode=False``) always decodes in full.
        output_dtype: ``torch.float32`` (values in ``[0, 1]``) or ``torch.uint8`` (``0..255``,
            for colour steps on the device; the transform may then hold only a crop or resize
            and flips).

    Raises:
        ImportError: If Pillow is missing.
        ValueError: If ``num_frames`` is not a positive int, ``draft`` or ``output_dtype`` is
            not one of its values, or a uint8 output is asked of a transform with a step that
            needs float pixels.
        TypeError: If ``output_dtype`` is not a ``torch.dtype``.
        FileNotFoundError: If ``frames_root`` is missing, if a clip folder is missing or has no
            JPEG (unless ``skip_bad_clips``), or if every clip was skipped.
    """

    def __init__(
        self,
        *,
        name: str,
        classes: Sequence[str],
        split_file: Path,
        frames_root: Path,
        entries: Sequence[tuple[Path, int, int]],
        num_frames: int,
        transform: Callable[[torch.Tensor], torch.Tensor] | None,
        train: bool,
        skip_bad_clips: bool,
        generator: torch.Generator | None,
        fast_decode: bool = True,
        draft: str = "crop",
        output_dtype: torch.dtype = torch.float32,
    ) -> None:
        require_pil()
        # (The shared options were checked by the subclass, with check_clip_options, before it
        # read its split file.)
        num_frames = check_positive_int("num_frames", num_frames)
        self.name = name
        self._transform: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.output_dtype = output_dtype  # the setters check these two, and against each other
        self.transform = transform
        self.classes = list(classes)
        self.split_file = split_file
        self.frames_root = frames_root
        self.num_frames = num_frames
        self.train = bool(train)
        self.generator = generator
        self.fast_decode = bool(fast_decode)
        self.draft = draft  # the setter checks it
        if not frames_root.is_dir():
            raise FileNotFoundError(
                f"{name}: frame folder root {str(frames_root)!r} does not exist (split file "
                f"{str(split_file)!r} lists {len(entries)} clips under it)"
            )
        good: list[tuple[Path, int]] = []
        bad: list[SkippedClip] = []
        # Every clip's frames are listed here, once: the check needs it anyway, and
        # __getitem__ then opens only the sampled files.
        self._frame_names: dict[Path, str] = {}
        for frame_dir, label, line in entries:
            names, problem = _list_clip(frame_dir)
            if problem is None:
                good.append((frame_dir, label))
                self._frame_names[frame_dir] = names
            else:
                bad.append(SkippedClip(frame_dir, label, problem, line))
        if bad:
            listing = "; ".join(
                f"{str(b.frame_dir)!r} ({b.reason}, line {b.line})" for b in bad[:_MAX_LISTED]
            )
            if len(bad) > _MAX_LISTED:
                listing += f"; ... and {len(bad) - _MAX_LISTED} more"
            listed = f"clips listed in {str(split_file)!r}"
            where = f"of {len(entries)} {listed}"
            if not skip_bad_clips:
                raise FileNotFoundError(
                    f"{name}: {len(bad)} {where} have a missing or empty frame folder: "
                    f"{listing}. Fix the data, or pass skip_bad_clips=True to skip them "
                    "(with a warning)"
                )
            if not good:
                raise FileNotFoundError(
                    f"{name}: all {len(bad)} {listed} have a missing or empty frame folder: "
                    f"{listing}"
                )
            every = "; ".join(f"{str(b.frame_dir)!r} ({b.reason}, line {b.line})" for b in bad)
            warnings.warn(
                f"{name}: skipped {len(bad)} {where} because their frame folders are missing "
                f"or hold no JPEG frames: {every}",
                SkippedClipsWarning,
                stacklevel=3,
            )
        self.samples: list[tuple[Path, int]] = good
        self.skipped: list[SkippedClip] = bad

    @property
    def transform(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The clip transform; setting it runs the constructor's checks again.

        (As with torchvision's data sets, code swaps it after construction; unchecked, a colour
        step on a uint8 data set failed an assert at the first item, or under ``python -O``
        was silently not applied.)

        Raises:
            TypeError: If set to something not callable, or to a class.
            ValueError: If set to a transform with a colour step on a data set with
                ``output_dtype=torch.uint8``.
        """
        return self._transform

    @transform.setter
    def transform(self, transform: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        _check_transform(self._who(), transform)
        self._check_uint8(transform, getattr(self, "_output_dtype", torch.float32))
        self._transform = transform

    @property
    def output_dtype(self) -> torch.dtype:
        """``torch.float32`` or ``torch.uint8``; setting it runs the constructor's checks again.

        Raises:
            TypeError: If set to something that is not a ``torch.dtype``.
            ValueError: If set to another dtype, or to ``torch.uint8`` while the transform has
                a colour step.
        """
        return self._output_dtype

    @output_dtype.setter
    def output_dtype(self, output_dtype: torch.dtype) -> None:
        name = self._who()
        if not isinstance(output_dtype, torch.dtype):
            raise TypeError(
                f"{name}: output_dtype must be a torch.dtype (torch.float32 or torch.uint8), "
                f"got {output_dtype!r} of type {type(output_dtype).__name__}"
            )
        if output_dtype not in (torch.float32, torch.uint8):
            raise ValueError(
                f"{name}: output_dtype must be torch.float32 or torch.uint8, got {output_dtype!r}"
            )
        self._check_uint8(getattr(self, "_transform", None), output_dtype)
        self._output_dtype = output_dtype

    @property
    def draft(self) -> str:
        """When the fast path decodes in JPEG draft mode; setting it runs the constructor's check.

        (Unchecked, a value such as ``"bogus"`` was kept and decoded as ``"crop"``, the rule
        that anything other than ``"frame"`` or ``"never"`` falls to.)

        Raises:
            ValueError: If set to anything but one of ``"crop"``, ``"frame"`` or ``"never"``.
        """
        return self._draft

    @draft.setter
    def draft(self, draft: str) -> None:
        # The str test first: `in` compares with ==, which a numpy array answers elementwise.
        if not isinstance(draft, str) or draft not in DRAFT_RULES:
            raise ValueError(f"{self._who()}: draft must be one of {DRAFT_RULES}, got {draft!r}")
        self._draft = draft

    def _who(self) -> str:
        # The setters run before __init__ has set `name` when a subclass sets its transform
        # first.
        return getattr(self, "name", type(self).__name__)

    def _check_uint8(self, transform: object, output_dtype: torch.dtype) -> None:
        if output_dtype != torch.uint8:
            return
        step = non_geometric_step(transform)
        if step is not None:
            raise ValueError(
                f"{self._who()}: output_dtype=torch.uint8 returns the clip before any colour "
                "step, so the transform may hold only one ClipRandomResizedCrop or ClipResize "
                f"and ClipRandomHorizontalFlip steps; got the step {step!r}. "
                "Run colour jitter and normalisation on the device, on the batch "
                "(ClipBatchColorJitter), or keep output_dtype=torch.float32"
            )

    @property
    def targets(self) -> list[int]:
        """The label of every sample, in sample order (for samplers)."""
        return [label for _, label in self.samples]

    @property
    def class_counts(self) -> list[int]:
        """Number of samples per class, in class order (skipped clips not counted).

        This is what ``MCCLoss(class_counts=...)`` and class-balanced samplers want. Without
        skipped clips it equals the split file's per-class counts.
        """
        counts = [0] * len(self.classes)
        for _, label in self.samples:
            counts[label] += 1
        return counts

    def __len__(self) -> int:
        return len(self.samples)

    def _frames(self, frame_dir: Path, *, refresh: bool = False) -> list[str]:
        names = None if refresh else self._frame_names.get(frame_dir)
        if names is None:  # re-listed, or a sample added to .samples after construction
            names, problem = _list_clip(frame_dir)
            if problem is not None:
                raise FileNotFoundError(
                    f"{self.name}: clip folder {str(frame_dir)!r} holds no JPEG frames any more "
                    "(it did when the data set was built)"
                )
            self._frame_names[frame_dir] = names
        return names.split(_SEP)

    def _check_output(self, clip: object) -> None:
        if not isinstance(clip, torch.Tensor) or clip.ndim != 4:
            got = tuple(clip.shape) if isinstance(clip, torch.Tensor) else type(clip)
            raise ValueError(f"{self.name}: transform must return a (T, C, H, W) tensor, got {got}")

    def _load(self, frame_dir: Path, names: list[str]) -> torch.Tensor:
        idx = segment_indices(
            len(names), self.num_frames, train=self.train, generator=self.generator
        )
        # Plain strings: building 16 Path objects per clip costs more than decoding a frame.
        folder = os.fspath(frame_dir)
        paths = [os.path.join(folder, names[i]) for i in idx]
        transform = self.transform
        uint8 = self.output_dtype == torch.uint8
        if uint8 and transform is None:
            transform = ClipCompose([])  # nothing to do: the fast path exports the frames as is
        if self.fast_decode and isinstance(transform, ClipTransform):
            chain = transform
            frames, plan = decode_planned(
                paths,
                lambda h, w: plan_geometry(chain, h, w, self.generator),
                require_pil(),
                draft=self.draft,
            )
            if uint8:
                return to_uint8_clip(frames, plan)
            return to_float_clip(frames, plan, self.generator, self._check_output)
        clip = load_frames(paths)
        if transform is not None:
            if isinstance(transform, ClipTransform):
                clip = transform(clip, generator=self.generator)
            else:
                clip = transform(clip)
            self._check_output(clip)
        if uint8:  # the plain path's float pixels, rounded as the fast path's uint8 ones
            clip = clip.mul(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8)
        return clip.permute(1, 0, 2, 3).contiguous()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Load, sample and transform one clip.

        The clip's frames were listed at construction. If one of them has gone since, the
        folder is listed again and the clip sampled from what is there now.

        Args:
            index: Sample index.

        Returns:
            ``(clip, label)``: clip of shape ``(C, T, H, W)`` (channel-first, for 3-D CNNs),
            float32 (or uint8 with ``output_dtype=torch.uint8``), and the 0-based label.

        Raises:
            TypeError: If ``index`` is not an integer (a slice, a float, a list).
            IndexError: If ``index`` is out of range (negative ones count from the end).
            FileNotFoundError: If the clip's folder lost its frames since construction.
            CorruptFrameError: If a sampled frame cannot be decoded (naming the file).
        """
        try:
            i = operator.index(index)
        except TypeError:
            # Else a slice of samples is unpacked as one (frame_dir, label) and fails deep in
            # os.scandir, or as "too many values to unpack".
            raise TypeError(
                f"{self.name}: `index` must be an int, got {index!r} of type "
                f"{type(index).__name__}; items are loaded one at a time "
                "(torch.utils.data.Subset selects several)"
            ) from None
        if not -len(self.samples) <= i < len(self.samples):
            # IndexError, as a list's: it is also what ends iteration over the data set.
            raise IndexError(f"{self.name}: index {i} is out of range for {len(self)} clips")
        frame_dir, label = self.samples[i]
        try:
            clip = self._load(frame_dir, self._frames(frame_dir))
        except FileNotFoundError:
            # The folder changed after construction: sample from what it holds now (or say
            # that it is empty), as if it had been listed for this call.
            clip = self._load(frame_dir, self._frames(frame_dir, refresh=True))
        return clip, label

    def __repr__(self) -> str:
        mode = "train" if self.train else "test"
        return (
            f"{type(self).__name__}({len(self)} clips, {len(self.classes)} classes, "
            f"split_file={str(self.split_file)!r}, num_frames={self.num_frames}, "
            f"sampling={mode!r}, skipped={len(self.skipped)})"
        )
