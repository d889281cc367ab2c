"""Synthetic long-tailed face-clip data sets in the DFEW and FERV39k on-disk layouts.

DFEW and FERV39k are licence-gated, so demos, tests and CI use this generator instead. It draws
a cartoon face (head ellipse, eyes, brows, mouth) whose features move over the clip, writes each
frame as a small JPEG in the **real** layout (so :class:`~micacl_layers.data.dfew.DFEW` and
:class:`~micacl_layers.data.ferv39k.FERV39k` read it unchanged) and writes the split files.

The seven classes differ by **temporal dynamics**, not by a single pose, so a model has to look
at how the face moves (time ``u`` runs from 0 at the first frame to 1 at the last)::

    happy     smile grows (monotone onset) at a random time in the first 2/3, then holds
    sad       slow, late frown: mouth corners and brows sink over the second half
    neutral   no expression; only the slow drift and blinks every class has
    angry     brows flick up, then drop hard and hold, with a brow tremor; mouth pressed
    surprise  brows up + mouth open in one short pulse EARLY (u ~ 0.15-0.35)
    disgust   the same pulse LATE (u ~ 0.65-0.85): only its timing tells it from surprise
    fear      mouth opens and closes 2-3 times (oscillation) under raised brows

Every clip also gets nuisance variation: face position, size, tilt and slow drift, per-frame
shake, skin/background colours, brightness and flicker, pixel noise, random blinks, a random
expression strength (0.7-1), timing and speed, and a small drift of every feature. Class sizes
follow DFEW fold-1 training proportions (disgust, the tail, is ~18x rarer than neutral), and a
few clips are shorter than 16 frames, as in DFEW.

Run ``python -m micacl_layers.data.synthetic --out DIR`` to write a data set from the shell.
"""

from __future__ import annotations

import argparse
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._frames import expand_root, require_pil
from .dfew import DFEW_CLASSES
from .ferv39k import FERV39K_CLASSES

__all__ = [
    "DFEW_TRAIN_FOLD1_COUNTS",
    "SyntheticClip",
    "SyntheticInfo",
    "make_synthetic_dfew",
    "make_synthetic_ferv39k",
    "render_clip",
]

#: DFEW fold-1 training clips per class (happy, sad, neutral, angry, surprise, disgust, fear),
#: from the official split; the synthetic class sizes are these, scaled down.
DFEW_TRAIN_FOLD1_COUNTS: tuple[int, ...] = (1956, 1515, 2135, 1738, 1175, 116, 721)

_NUM_GROUPS = 5  # DFEW's 5 folds: each clip is in the test split of exactly one fold.
_SHORT = 16  # MICACL samples 16 frames; shorter clips exercise the stretching path.


@dataclass(frozen=True)
class SyntheticClip:
    """One generated clip.

    Attributes:
        clip_id: DFEW: the 5-digit folder name; FERV39k: ``scene/emotion/id``.
        label: 0-based label in the data set's class order.
        num_frames: Number of frames written.
        test_group: Cross-validation group 0..4; DFEW fold ``k`` tests on group ``k - 1``,
            FERV39k tests on group 0.

    Example:
        >>> import tempfile
        >>> info = make_synthetic_dfew(tempfile.mkdtemp(), total_clips=14, frames=(6, 8),
        ...                            image_size=16, min_clips_per_class=2)
        >>> clip = info.clips[0]
        >>> len(clip.clip_id), 6 <= clip.num_frames <= 8, clip.test_group in range(5)
        (5, True, True)
    """

    clip_id: str
    label: int
    num_frames: int
    test_group: int


@dataclass(frozen=True)
class SyntheticInfo:
    """What a generator wrote.

    Attributes:
        root: Root folder to pass to the data set class.
        dataset: ``"dfew"`` or ``"ferv39k"``.
        classes: Class names in label order.
        clips: Every clip written.
        class_counts: Clips per class (all splits together).

    Example:
        >>> import tempfile
        >>> info = make_synthetic_dfew(tempfile.mkdtemp(), total_clips=14, frames=(6, 8),
        ...                            image_size=16, min_clips_per_class=2)
        >>> info.dataset, list(info.classes[:2]), sum(info.class_counts) == len(info.clips)
        ('dfew', ['happy', 'sad'], True)
    """

    root: Path
    dataset: str
    classes: tuple[str, ...]
    clips: list[SyntheticClip] = field(repr=False)
    class_counts: list[int]


# ----------------------------------------------------------------------------- dynamics


def _ramp(u: np.ndarray, centre: float, width: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(u - centre) / width))


def _pulse(u: np.ndarray, centre: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((u - centre) / width) ** 2)


def _curves(name: str, u: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Expression curves over normalised time ``u`` for class ``name`` (lower-case DFEW name).

    Returns ``mouth`` opening in [0, 1], ``smile`` (+ corners up, - down), ``brow`` (+ raised)
    and ``eye`` openness (1 = normal).
    """
    zero = np.zeros_like(u)
    mouth, smile, brow, eye = zero.copy(), zero.copy(), zero.copy(), np.ones_like(u)
    amp = rng.uniform(0.7, 1.0)
    if name == "happy":
        r = _ramp(u, rng.uniform(0.15, 0.6), rng.uniform(0.03, 0.1))
        smile = amp * r
        mouth = 0.25 * amp * r
        eye = 1.0 - 0.3 * amp * r
    elif name == "sad":
        r = _ramp(u, rng.uniform(0.5, 0.75), rng.uniform(0.08, 0.15))
        smile = -amp * r
        brow = -0.5 * amp * r
    elif name == "neutral":
        pass
    elif name == "angry":
        c = rng.uniform(0.15, 0.35)
        w = rng.uniform(0.04, 0.07)
        brow = amp * (0.7 * _pulse(u, c - 2 * w, w) - _ramp(u, c, w / 2))
        brow += 0.2 * amp * np.sin(2 * np.pi * rng.uniform(3, 5) * u + rng.uniform(0, 6.3))
        smile = -0.3 * amp * _ramp(u, c, w)
        eye = 1.0 - 0.3 * amp * _ramp(u, c, w)
    elif name in ("surprise", "disgust"):
        centre = rng.uniform(0.15, 0.35) if name == "surprise" else rng.uniform(0.65, 0.85)
        p = _pulse(u, centre, rng.uniform(0.07, 0.11))
        brow = amp * p
        mouth = amp * p
        eye = 1.0 + 0.35 * amp * p
    elif name == "fear":
        cycles = rng.uniform(2.0, 3.0)
        mouth = 0.8 * amp * 0.5 * (1 - np.cos(2 * np.pi * cycles * u + rng.uniform(-0.5, 0.5)))
        brow = 0.6 * amp * np.ones_like(u)
        eye = 1.0 + 0.25 * amp * np.ones_like(u)
    else:  # pragma: no cover - guarded by the callers
        raise ValueError(f"unknown synthetic class {name!r}")
    # A slow wander of every feature, so "neutral" is not a perfectly still face.
    for key, arr in (("mouth", mouth), ("smile", smile), ("brow", brow)):
        phase, freq = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 1.2)
        arr += 0.1 * np.sin(2 * np.pi * freq * u + phase)
        if key == "mouth":
            mouth = np.clip(arr, 0.0, 1.0)
    return {"mouth": mouth, "smile": smile, "brow": brow, "eye": eye}


def _blinks(num_frames: int, rng: np.random.Generator) -> np.ndarray:
    eye = np.ones(num_frames)
    for _ in range(rng.integers(0, 3)):
        t = rng.integers(0, num_frames)
        eye[t] = 0.1
        if t + 1 < num_frames:
            eye[t + 1] = 0.5
    return eye


def _soft(dist: np.ndarray, pixel: float) -> np.ndarray:
    # Signed distance -> coverage; a one-pixel ramp keeps sub-pixel motion visible.
    out = dist * np.float32(-1.0 / pixel)
    out += np.float32(0.5)
    return np.clip(out, 0.0, 1.0, out=out)


def render_clip(
    class_name: str,
    num_frames: int,
    *,
    image_size: int = 64,
    rng: np.random.Generator,
) -> np.ndarray:
    """Render one synthetic face clip.

    Args:
        class_name: A DFEW class name (``"happy"``, ... ``"fear"``; case-insensitive).
        num_frames: Number of frames (>= 1).
        image_size: Frame height and width in pixels (>= 8).
        rng: Source of all randomness (the clip is a pure function of its state).

    Returns:
        uint8 RGB frames.

    Shape:
        - Output: :math:`(T, H, W, 3)` with ``T = num_frames``, ``H = W = image_size``.

    Raises:
        ValueError: If ``class_name`` is unknown, or ``num_frames`` is not an int >= 1 or
            ``image_size`` not an int >= 8.
        TypeError: If ``rng`` is not a ``numpy.random.Generator``.

    Example:
        >>> clip = render_clip("surprise", 20, image_size=32, rng=np.random.default_rng(0))
        >>> clip.shape, clip.dtype
        ((20, 32, 32, 3), dtype('uint8'))
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {rng!r}"
        )
    name = class_name.lower() if isinstance(class_name, str) else None
    if name not in DFEW_CLASSES:
        raise ValueError(f"class_name must be one of {DFEW_CLASSES}, got {class_name!r}")
    # (int() of 2.5 frames or of True would silently give 2 or 1.)
    t_count = _check_int("num_frames", num_frames, 1)
    size = _check_int("image_size", image_size, 8)
    u = np.linspace(0.0, 1.0, t_count) if t_count > 1 else np.full(1, 0.5)
    cur = _curves(name, u, rng)
    eye_open = np.clip(cur["eye"] * _blinks(t_count, rng), 0.05, 1.6)

    # Head pose: position, size, tilt, slow drift and per-frame shake.
    radius = size * rng.uniform(0.34, 0.42)
    drift = rng.uniform(-0.03, 0.03, size=2) * size
    shake = rng.normal(0.0, 0.006 * size, size=(2, t_count))
    cx = size / 2 + rng.uniform(-0.05, 0.05) * size + drift[0] * (u - 0.5) + shake[0]
    cy = size / 2 + rng.uniform(-0.04, 0.04) * size + drift[1] * (u - 0.5) + shake[1]
    tilt = rng.uniform(-0.15, 0.15) + 0.05 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * u)

    # float32 throughout: rendering is most of the generator's time.
    f32 = np.float32
    grid = np.arange(size, dtype=f32) + f32(0.5)
    gx = grid[None, None, :] - cx[:, None, None].astype(f32)
    gy = grid[None, :, None] - cy[:, None, None].astype(f32)
    cos, sin = np.cos(tilt).astype(f32)[:, None, None], np.sin(tilt).astype(f32)[:, None, None]
    x = (cos * gx + sin * gy) / f32(radius)
    y = (-sin * gx + cos * gy) / f32(radius)
    ax = np.abs(x)
    pixel = 1.0 / radius

    def col(values: np.ndarray) -> np.ndarray:
        return values.astype(f32)[:, None, None]

    face = _soft((np.sqrt((x / f32(0.78)) ** 2 + y**2) - 1) * f32(0.78), pixel)
    eye_b = col(0.1 * eye_open)
    ex = (ax - f32(0.32)) / f32(0.15)
    eyes = _soft((np.sqrt(ex**2 + ((y + f32(0.2)) / eye_b) ** 2) - 1) * eye_b, pixel)
    brow_y = col(-0.5 - 0.22 * cur["brow"])
    bdx = np.maximum(np.maximum(ax - f32(0.52), f32(0.12) - ax), f32(0))
    brows = _soft(np.sqrt(bdx**2 + (y - brow_y) ** 2) - f32(0.045), pixel)
    half_w = col(0.32 + 0.06 * cur["smile"])
    rel = np.minimum((x / half_w) ** 2, f32(1))
    centre_y = f32(0.48) + col(0.2 * cur["smile"]) * (f32(1 / 3) - rel)
    half_h = f32(0.035) + col(0.3 * cur["mouth"]) * (1 - rel)
    mouth = _soft(np.maximum(np.abs(y - centre_y) - half_h, ax - half_w), pixel)
    features = np.maximum(np.maximum(eyes, brows), mouth) * face

    # Colours: background with a gradient, skin tone, darker features; then gain and noise.
    bg = rng.uniform(0.05, 0.6, size=3)
    grad = rng.uniform(-0.2, 0.2, size=3)
    skin = (rng.uniform(0.5, 0.9) * rng.uniform(0.8, 1.1, size=3)).clip(0, 1).astype(f32)
    ink = skin * f32(rng.uniform(0.1, 0.3))
    ramp_x = (np.arange(size) + 0.5) / size - 0.5
    bg_row = np.clip(bg + grad * ramp_x[:, None], 0.0, 1.0).astype(f32)  # (W, 3)
    gain = col(rng.uniform(0.7, 1.2) * (1.0 + rng.normal(0.0, 0.02, size=t_count)))
    # Grey (luminance) noise, shared by the channels: per-channel noise triples its cost.
    noise = rng.standard_normal((t_count, size, size), dtype=f32)
    noise *= f32(rng.uniform(0.01, 0.04))
    out = np.empty((t_count, size, size, 3), dtype=np.uint8)
    # Channel by channel: numpy is slow on arrays whose innermost axis has length 3.
    for c in range(3):
        img = bg_row[:, c] * (1 - face) + skin[c] * face
        img += (ink[c] - img) * features
        img *= gain
        img += noise
        np.clip(img, 0.0, 1.0, out=img)
        img *= f32(255)
        img += f32(0.5)
        out[..., c] = img
    return out


# ----------------------------------------------------------------------------- layout


def _allocate(total: int, weights: Sequence[float], minimum: int) -> list[int]:
    """Split ``total`` in proportion to ``weights`` (largest remainder), at least ``minimum``."""
    w = np.asarray(weights, dtype=np.float64)
    exact = total * w / w.sum()
    counts = np.floor(exact).astype(np.int64)
    short = total - int(counts.sum())
    counts[np.argsort(-(exact - counts), kind="stable")[:short]] += 1
    return [max(int(c), minimum) for c in counts]


def _lengths(n: int, frames: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    lo, hi = frames
    lengths = rng.integers(max(lo, _SHORT), hi + 1, size=n) if hi >= _SHORT else None
    if lengths is None:
        return rng.integers(lo, hi + 1, size=n)
    if lo < _SHORT:
        # ~3% short clips, at least one: DFEW has a handful, FERV39k ~10%.
        n_short = max(1, round(0.03 * n))
        idx = rng.choice(n, size=min(n_short, n), replace=False)
        lengths[idx] = rng.integers(lo, _SHORT, size=idx.size)
    return lengths


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    # numbers.Integral takes numpy ints; a float or a bool would be truncated or mean 1.
    expected = f">= {low}" if high is None else f"in {low}..{high}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int {expected}, got {value!r}")
    number = int(value)
    if number < low or (high is not None and number > high):
        raise ValueError(f"{name} must be an int {expected}, got {value!r}")
    return number


def _listed(value: Any) -> Any:
    # A 1-D NumPy array (np.bincount(...), np.array([8, 48])) is no Sequence, though it holds
    # just the counts asked for: as a list of Python numbers, the checks judge its values.
    return value.tolist() if isinstance(value, np.ndarray) and value.ndim == 1 else value


def _check_args(
    total_clips: int,
    clips_per_class: Sequence[int] | None,
    frames: tuple[int, int],
    image_size: int,
    min_clips_per_class: int,
    seed: int,
    jpeg_quality: int,
) -> None:
    if clips_per_class is None:
        _check_int("total_clips", total_clips, 1)
    else:
        if (
            isinstance(clips_per_class, (str, bytes))
            or not isinstance(clips_per_class, Sequence)
            or len(clips_per_class) != 7
            or any(
                isinstance(c, bool) or not isinstance(c, numbers.Integral) or c < 1
                for c in clips_per_class
            )
        ):
            raise ValueError(
                f"clips_per_class must give 7 positive int counts, got {clips_per_class!r}"
            )
    if (
        not isinstance(frames, Sequence)
        or len(frames) != 2
        or not all(isinstance(f, numbers.Integral) and not isinstance(f, bool) for f in frames)
        or not 1 <= frames[0] <= frames[1]
    ):
        raise ValueError(f"frames must be (low, high) ints with 1 <= low <= high, got {frames!r}")
    _check_int("image_size", image_size, 8)
    if not (isinstance(min_clips_per_class, numbers.Integral) and min_clips_per_class >= 2):
        raise ValueError(
            f"min_clips_per_class must be >= 2 (one train and one test clip), got "
            f"{min_clips_per_class!r}"
        )
    _check_int("seed", seed, 0)  # numpy's SeedSequence takes non-negative ints only
    _check_int("jpeg_quality", jpeg_quality, 1, 100)


def _plan(
    counts: Sequence[int],
    frames: tuple[int, int],
    seed: int,
) -> list[tuple[int, int, int]]:
    """(label, num_frames, test_group) per clip, in a seeded random order."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    plan: list[tuple[int, int, int]] = []
    for label, n in enumerate(counts):
        # Stratified groups: each class spreads evenly over the 5 test groups.
        groups = rng.permutation(np.arange(n) % _NUM_GROUPS)
        plan += [(label, 0, int(g)) for g in groups]
    order = rng.permutation(len(plan))
    plan = [plan[i] for i in order]
    lengths = _lengths(len(plan), frames, rng)
    return [(lab, int(t), g) for (lab, _, g), t in zip(plan, lengths, strict=True)]


def _check_splits(
    plan: Sequence[tuple[int, int, int]],
    test_groups: Sequence[tuple[str, int]],
    counts: Sequence[int],
    dataset: str,
) -> None:
    """Refuse a plan that leaves a split without clips: the loaders refuse such a split file.

    ``test_groups`` holds ``(where, group)`` per test group written (``where`` names it in the
    message, e.g. ``" of fold 2"``).
    """
    groups = [group for _, _, group in plan]
    for where, group in test_groups:
        tested = groups.count(group)
        for split, size in (("train", len(groups) - tested), ("test", tested)):
            if size == 0:
                raise ValueError(
                    f"the {split} split{where} would hold no clip with {list(counts)} clips per "
                    f"class, and {dataset} cannot read an empty split; a class's clips fill the "
                    "5 test groups in turn, so give more classes more clips"
                )


def _write_frames(folder: Path, frames: np.ndarray, quality: int) -> None:
    image_mod = require_pil()
    folder.mkdir(parents=True, exist_ok=False)
    for t, frame in enumerate(frames):
        image_mod.fromarray(frame).save(folder / f"{t + 1:05d}.jpg", quality=quality)


def _fresh(root: Path, *subdirs: str) -> None:
    for sub in subdirs:
        if (root / sub).exists():
            raise FileExistsError(
                f"{str(root / sub)!r} already exists; write synthetic data into a new folder so "
                "old clips cannot mix with new ones"
            )
    root.mkdir(parents=True, exist_ok=True)


def make_synthetic_dfew(
    root: str | os.PathLike[str],
    *,
    clips_per_class: Sequence[int] | None = None,
    total_clips: int = 1000,
    min_clips_per_class: int = 10,
    frames: tuple[int, int] = (8, 48),
    image_size: int = 64,
    folds: Sequence[int] = (1,),
    seed: int = 0,
    jpeg_quality: int = 90,
) -> SyntheticInfo:
    """Write a small long-tailed synthetic data set in DFEW's on-disk layout.

    Writes ``Clip/clip_224x224/<5-digit id>/<00001..>.jpg`` (the folder keeps DFEW's name
    although frames are ``image_size`` pixels) and, for each fold in ``folds``,
    ``EmoLabel_DataSplit/{train,test}(single-labeled)/set_<fold>.csv`` with a header row, ids
    **without** leading zeros (as some DFEW files have) and labels 1..7. Like DFEW, every clip
    belongs to one of 5 class-stratified groups and fold ``k`` tests on group ``k``, so each
    test split holds ~20% of every class. Classes and their dynamics: see the module docstring.

    Args:
        root: Output folder (created; its ``Clip/`` and ``EmoLabel_DataSplit/`` must not exist).
        clips_per_class: Clips per class in DFEW order (all splits together); overrides
            ``total_clips``.
        total_clips: Clips in all, split over the classes in DFEW fold-1 training proportions.
        min_clips_per_class: Floor for every class (the tail would otherwise get ~1% of
            ``total_clips``), so each test split holds at least ``min // 5`` clips per class.
            Raising a class to the floor adds clips beyond ``total_clips``.
        frames: Range of clip lengths ``(low, high)``, inclusive. When it straddles 16, about
            3% of the clips (at least one) are shorter than 16 frames; below 16, all are.
        image_size: Frame height and width in pixels.
        folds: Folds (1..5) whose split files are written.
        seed: Everything written is a function of ``seed`` (and of Pillow's JPEG encoder).
        jpeg_quality: JPEG quality 1..100 (Pillow advises at most 95).

    Returns:
        A :class:`SyntheticInfo` describing every clip.

    Raises:
        ValueError: For an invalid count, range, size or fold, or counts that leave a
            written split without clips (which ``DFEW`` would refuse).
        FileExistsError: If ``root`` already holds DFEW folders.
        ImportError: If Pillow is missing.

    Example:
        >>> import tempfile
        >>> info = make_synthetic_dfew(tempfile.mkdtemp(), total_clips=30, frames=(6, 12),
        ...                            image_size=16, min_clips_per_class=2)
        >>> info.class_counts  # happy, sad, neutral, angry, surprise, disgust, fear
        [6, 5, 7, 6, 4, 2, 2]
    """
    clips_per_class, frames = _listed(clips_per_class), _listed(frames)
    _check_args(
        total_clips, clips_per_class, frames, image_size, min_clips_per_class, seed, jpeg_quality
    )
    if clips_per_class is None:
        counts = _allocate(total_clips, DFEW_TRAIN_FOLD1_COUNTS, min_clips_per_class)
    else:
        counts = [int(c) for c in clips_per_class]
    folds = _listed(folds)
    if (
        isinstance(folds, (str, bytes))
        or not isinstance(folds, Sequence)
        or not folds
        or any(isinstance(f, bool) or not isinstance(f, numbers.Integral) for f in folds)
        or any(not 1 <= f <= _NUM_GROUPS for f in folds)
    ):
        raise ValueError(f"folds must be a non-empty sequence of ints in 1..5, got {folds!r}")
    folds = [int(f) for f in folds]
    plan = _plan(counts, frames, seed)
    _check_splits(plan, [(f" of fold {fold}", fold - 1) for fold in folds], counts, "DFEW")
    root = expand_root(root)  # as the loaders, which must find it there
    _fresh(root, "Clip", "EmoLabel_DataSplit")
    clips = []
    frames_root = root / "Clip" / "clip_224x224"
    for index, (label, length, group) in enumerate(plan):
        clip_id = f"{index + 1:05d}"
        rng = np.random.default_rng(np.random.SeedSequence([seed, 2, index]))
        video = render_clip(DFEW_CLASSES[label], length, image_size=image_size, rng=rng)
        _write_frames(frames_root / clip_id, video, jpeg_quality)
        clips.append(SyntheticClip(clip_id, label, length, group))
    for fold in folds:
        for split in ("train", "test"):
            folder = root / "EmoLabel_DataSplit" / f"{split}(single-labeled)"
            folder.mkdir(parents=True, exist_ok=True)
            rows = [
                f"{int(c.clip_id)},{c.label + 1}\n"
                for c in clips
                if (c.test_group == fold - 1) == (split == "test")
            ]
            (folder / f"set_{fold}.csv").write_text("video_name,label\n" + "".join(rows))
    return SyntheticInfo(root, "dfew", DFEW_CLASSES, clips, counts)


def make_synthetic_ferv39k(
    root: str | os.PathLike[str],
    *,
    clips_per_class: Sequence[int] | None = None,
    total_clips: int = 200,
    min_clips_per_class: int = 5,
    frames: tuple[int, int] = (8, 47),
    image_size: int = 64,
    scenes: Sequence[str] = ("Action", "Daily"),
    seed: int = 0,
    jpeg_quality: int = 90,
) -> SyntheticInfo:
    """Write a small synthetic data set in FERV39k's on-disk layout.

    Writes ``2_ClipsforFaceCrop/<scene>/<Emotion>/<4-digit id>/<00001..>.jpg`` and
    ``4_setups/All_scenes/{train,test}_All.csv`` with lines like ``Action/Sad/0003 Sad``
    (class-stratified, ~20% test). Classes are FERV39k's alphabetical ones; their sizes and
    dynamics follow the DFEW class of the same name (FERV39k's own class counts are not
    bundled here). Clips are spread over ``scenes`` at random.

    Args:
        root: Output folder (its ``2_ClipsforFaceCrop/`` and ``4_setups/`` must not exist).
        clips_per_class: Clips per class in FERV39k order; overrides ``total_clips``.
        total_clips: Clips in all, in DFEW fold-1 training proportions.
        min_clips_per_class: Floor for every class.
        frames: Range of clip lengths ``(low, high)``, inclusive (FERV39k: 8-47).
        image_size: Frame height and width in pixels.
        scenes: Scene folder names.
        seed: Everything written is a function of ``seed``.
        jpeg_quality: JPEG quality 1..100 (Pillow advises at most 95).

    Returns:
        A :class:`SyntheticInfo` describing every clip (``clip_id`` = ``scene/emotion/id``).

    Raises:
        ValueError: For an invalid count, range, size or scene list, or counts that leave a
            split without clips (which ``FERV39k`` would refuse).
        FileExistsError: If ``root`` already holds FERV39k folders.
        ImportError: If Pillow is missing.

    Example:
        >>> import tempfile
        >>> info = make_synthetic_ferv39k(tempfile.mkdtemp(), total_clips=21, frames=(6, 9),
        ...                               image_size=16, min_clips_per_class=2)
        >>> info.class_counts  # Angry, Disgust, Fear, Happy, Neutral, Sad, Surprise
        [4, 2, 2, 4, 5, 3, 3]
        >>> info.clips[0].clip_id
        'Daily/Angry/0001'
    """
    clips_per_class, frames = _listed(clips_per_class), _listed(frames)
    _check_args(
        total_clips, clips_per_class, frames, image_size, min_clips_per_class, seed, jpeg_quality
    )
    # A scene name is the first part of a split-file path, which ends at whitespace or a comma.
    # A sequence: a set's order, hence every clip's scene, would change with the hash seed.
    scenes = _listed(scenes)
    if (
        isinstance(scenes, str)
        or not isinstance(scenes, Sequence)
        or not scenes
        or any(
            not isinstance(s, str)
            or s in ("", ".", "..")
            or any(c.isspace() or c in "/\\," for c in s)
            for s in scenes
        )
    ):
        raise ValueError(
            f"scenes must be folder names without whitespace, '/', '\\' or ',', in a list or "
            f"tuple, got {scenes!r}"
        )
    dfew_index = [DFEW_CLASSES.index(name.lower()) for name in FERV39K_CLASSES]
    if clips_per_class is None:
        weights = [DFEW_TRAIN_FOLD1_COUNTS[i] for i in dfew_index]
        counts = _allocate(total_clips, weights, min_clips_per_class)
    else:
        counts = [int(c) for c in clips_per_class]
    plan = _plan(counts, frames, seed)
    _check_splits(plan, [("", 0)], counts, "FERV39k")
    root = expand_root(root)  # as the loaders, which must find it there
    _fresh(root, "2_ClipsforFaceCrop", "4_setups")
    scene_rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    next_id: dict[tuple[str, int], int] = {}
    clips = []
    for index, (label, length, group) in enumerate(plan):
        scene = scenes[int(scene_rng.integers(len(scenes)))]
        number = next_id.get((scene, label), 1)
        next_id[(scene, label)] = number + 1
        emotion = FERV39K_CLASSES[label]
        rel = f"{scene}/{emotion}/{number:04d}"
        rng = np.random.default_rng(np.random.SeedSequence([seed, 2, index]))
        video = render_clip(DFEW_CLASSES[dfew_index[label]], length, image_size=image_size, rng=rng)
        _write_frames(
            root / "2_ClipsforFaceCrop" / scene / emotion / f"{number:04d}", video, jpeg_quality
        )
        clips.append(SyntheticClip(rel, label, length, group))
    setups = root / "4_setups" / "All_scenes"
    setups.mkdir(parents=True)
    for split in ("train", "test"):
        rows = [
            f"{c.clip_id} {FERV39K_CLASSES[c.label]}\n"
            for c in clips
            if (c.test_group == 0) == (split == "test")
        ]
        (setups / f"{split}_All.csv").write_text("".join(rows))
    return SyntheticInfo(root, "ferv39k", FERV39K_CLASSES, clips, counts)


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: ``python -m micacl_layers.data.synthetic --out DIR``.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(
        prog="python -m micacl_layers.data.synthetic",
        description="Write a synthetic long-tailed face-clip data set in the DFEW or FERV39k "
        "layout.",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--dataset", choices=("dfew", "ferv39k"), default="dfew")
    parser.add_argument(
        "--total-clips",
        type=int,
        default=None,
        help="clips in all (default: 1000 for dfew, 200 for ferv39k)",
    )
    parser.add_argument("--min-clips-per-class", type=int, default=None)
    parser.add_argument(
        "--frames",
        type=int,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=None,
        help="range of clip lengths (default: 8 48 for dfew, 8 47 for ferv39k)",
    )
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--folds", type=int, nargs="+", default=[1], help="DFEW folds to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    options: dict[str, object] = {"image_size": args.image_size, "seed": args.seed}
    if args.total_clips is not None:
        options["total_clips"] = args.total_clips
    if args.min_clips_per_class is not None:
        options["min_clips_per_class"] = args.min_clips_per_class
    if args.frames is not None:
        options["frames"] = tuple(args.frames)
    if args.dataset == "dfew":
        info = make_synthetic_dfew(args.out, folds=args.folds, **options)  # type: ignore[arg-type]
    else:
        info = make_synthetic_ferv39k(args.out, **options)  # type: ignore[arg-type]
    counts = ", ".join(f"{c}={n}" for c, n in zip(info.classes, info.class_counts, strict=True))
    print(f"wrote {len(info.clips)} {info.dataset} clips to {info.root} ({counts})")


if __name__ == "__main__":
    main()
