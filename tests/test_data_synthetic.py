import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from micacl_layers.data import DFEW, DFEW_CLASSES, FERV39K_CLASSES, FERV39k, segment_indices
from micacl_layers.data import synthetic as S

SMALL = {"frames": (6, 20), "image_size": 16}


def _tree_digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_allocation_follows_dfew_proportions():
    counts = S._allocate(9356, S.DFEW_TRAIN_FOLD1_COUNTS, 10)
    assert counts == list(S.DFEW_TRAIN_FOLD1_COUNTS)
    counts = S._allocate(1000, S.DFEW_TRAIN_FOLD1_COUNTS, 10)
    assert sum(counts) == 1000
    expected = 1000 * np.array(S.DFEW_TRAIN_FOLD1_COUNTS) / 9356
    assert np.abs(np.array(counts) - expected).max() < 1
    # The floor lifts the tail only.
    assert S._allocate(100, S.DFEW_TRAIN_FOLD1_COUNTS, 5) == [21, 16, 23, 19, 12, 5, 8]


def test_dfew_layout_read_by_loader_with_dfew_proportions(tmp_path):
    info = S.make_synthetic_dfew(tmp_path, total_clips=150, folds=(1, 2), **SMALL)
    counts = info.class_counts
    assert info.classes == DFEW_CLASSES
    # DFEW order: neutral is the head, disgust the tail.
    assert counts.index(max(counts)) == DFEW_CLASSES.index("neutral")
    assert counts.index(min(counts)) == DFEW_CLASSES.index("disgust")
    assert min(counts) == 10  # lifted to min_clips_per_class
    unfloored = S._allocate(150, S.DFEW_TRAIN_FOLD1_COUNTS, 0)
    assert unfloored[5] < 10
    assert len(info.clips) == sum(counts) == 150 + 10 - unfloored[5]
    for fold in (1, 2):
        train = DFEW(tmp_path, fold, "train")
        test = DFEW(tmp_path, fold, "test")
        ids_train = {p.name for p, _ in train.samples}
        ids_test = {p.name for p, _ in test.samples}
        assert not ids_train & ids_test
        assert len(ids_train | ids_test) == len(info.clips)
        assert [a + b for a, b in zip(train.class_counts, test.class_counts, strict=True)] == (
            counts
        )
        assert min(train.class_counts) >= 8 and min(test.class_counts) >= 2
        assert abs(len(test) / len(info.clips) - 0.2) < 0.03
    # Folds test on disjoint groups.
    t1 = {p.name for p, _ in DFEW(tmp_path, 1, "test").samples}
    t2 = {p.name for p, _ in DFEW(tmp_path, 2, "test").samples}
    assert not t1 & t2
    # Split files write ids without leading zeros (exercising the loader's padding).
    line = (tmp_path / "EmoLabel_DataSplit" / "train(single-labeled)" / "set_1.csv").read_text()
    assert line.splitlines()[0] == "video_name,label"
    assert not line.splitlines()[1].startswith("0")
    labels = {c.clip_id: c.label for c in info.clips}
    assert all(labels[p.name] == y for p, y in train.samples)
    clip, _ = train[0]
    assert clip.shape == (3, 16, 16, 16)


def test_clip_lengths_vary_and_include_short_clips(tmp_path):
    info = S.make_synthetic_dfew(
        tmp_path, total_clips=60, min_clips_per_class=5, frames=(8, 30), image_size=8
    )
    lengths = [c.num_frames for c in info.clips]
    assert min(lengths) >= 8 and max(lengths) <= 30
    short = [c for c in info.clips if c.num_frames < 16]
    assert 1 <= len(short) <= 0.1 * len(info.clips)
    n_files = len(list((tmp_path / "Clip" / "clip_224x224" / short[0].clip_id).glob("*.jpg")))
    assert n_files == short[0].num_frames
    ds = DFEW(tmp_path, 1, "test" if short[0].test_group == 0 else "train", train=False)
    index = [p.name for p, _ in ds.samples].index(short[0].clip_id)
    assert ds[index][0].shape[1] == 16  # stretched, not dropped


def test_deterministic_per_seed(tmp_path):
    a = S.make_synthetic_dfew(
        tmp_path / "a", total_clips=20, min_clips_per_class=2, seed=3, **SMALL
    )
    b = S.make_synthetic_dfew(
        tmp_path / "b", total_clips=20, min_clips_per_class=2, seed=3, **SMALL
    )
    S.make_synthetic_dfew(tmp_path / "c", total_clips=20, min_clips_per_class=2, seed=4, **SMALL)
    assert a.clips == b.clips
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    assert _tree_digest(tmp_path / "a") != _tree_digest(tmp_path / "c")


def test_refuses_to_write_over_existing_data(tmp_path):
    S.make_synthetic_dfew(tmp_path, total_clips=14, min_clips_per_class=2, **SMALL)
    with pytest.raises(FileExistsError, match="Clip"):
        S.make_synthetic_dfew(tmp_path, total_clips=14, min_clips_per_class=2, **SMALL)


def test_argument_validation(tmp_path):
    with pytest.raises(ValueError, match="frames"):
        S.make_synthetic_dfew(tmp_path, frames=(10, 5))
    with pytest.raises(ValueError, match="clips_per_class"):
        S.make_synthetic_dfew(tmp_path, clips_per_class=[3] * 6)
    with pytest.raises(ValueError, match="folds"):
        S.make_synthetic_dfew(tmp_path, total_clips=14, min_clips_per_class=2, folds=(6,), **SMALL)
    with pytest.raises(ValueError, match="min_clips_per_class"):
        S.make_synthetic_dfew(tmp_path, min_clips_per_class=1)
    with pytest.raises(ValueError, match="scenes"):
        S.make_synthetic_ferv39k(tmp_path, scenes=("a/b",))


def test_clips_per_class_overrides_total(tmp_path):
    info = S.make_synthetic_dfew(tmp_path, clips_per_class=[2, 3, 2, 2, 2, 4, 2], **SMALL)
    assert info.class_counts == [2, 3, 2, 2, 2, 4, 2]
    assert DFEW(tmp_path, 1, "train").class_counts == [
        sum(1 for c in info.clips if c.label == k and c.test_group != 0) for k in range(7)
    ]


def test_ferv39k_layout_read_by_loader(tmp_path):
    info = S.make_synthetic_ferv39k(
        tmp_path, total_clips=40, min_clips_per_class=3, scenes=("Action", "Daily"), **SMALL
    )
    assert info.classes == FERV39K_CLASSES
    train, test = FERV39k(tmp_path, "train"), FERV39k(tmp_path, "test")
    assert len(train) + len(test) == len(info.clips) == sum(info.class_counts)
    assert min(test.class_counts) >= 1 and min(train.class_counts) >= 1
    # FERV39k's alphabetical order, with DFEW's proportions by name: Neutral biggest.
    assert info.class_counts.index(max(info.class_counts)) == FERV39K_CLASSES.index("Neutral")
    lines = (tmp_path / "4_setups" / "All_scenes" / "train_All.csv").read_text().splitlines()
    scene, emotion, rest = lines[0].split("/")
    number, label = rest.split(" ")
    assert scene in ("Action", "Daily") and emotion == label and len(number) == 4
    assert train[0][0].shape == (3, 16, 16, 16)


def test_cli_writes_dataset_without_runpy_warning(tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run(
        [
            sys.executable,
            "-W",
            "error::RuntimeWarning",
            "-m",
            "micacl_layers.data.synthetic",
            "--out",
            str(out),
            "--total-clips",
            "14",
            "--min-clips-per-class",
            "2",
            "--frames",
            "4",
            "6",
            "--image-size",
            "8",
            "--folds",
            "1",
            "3",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    written = int(result.stdout.split()[1])  # "wrote N dfew clips ..."
    assert "dfew clips" in result.stdout and written >= 14
    assert len(DFEW(out, 3, "train")) + len(DFEW(out, 3, "test")) == written


def test_cli_main_ferv39k(tmp_path, capsys):
    S.main(
        [
            "--out",
            str(tmp_path),
            "--dataset",
            "ferv39k",
            "--total-clips",
            "14",
            "--min-clips-per-class",
            "2",
            "--frames",
            "4",
            "6",
            "--image-size",
            "8",
        ]
    )
    assert "ferv39k clips" in capsys.readouterr().out
    assert len(FERV39k(tmp_path, "train")) > 0


# ----------------------------------------------------------------------------- dynamics


def _curve(name, seed, n=64):
    u = np.linspace(0, 1, n)
    return u, S._curves(name, u, np.random.default_rng(seed))


@pytest.mark.parametrize("seed", range(20))
def test_class_dynamics_differ_in_time(seed):
    u, surprise = _curve("surprise", seed)
    _, disgust = _curve("disgust", seed)
    # Same pulse, different timing: only the order of events separates the two.
    assert u[surprise["mouth"].argmax()] < 0.45 < u[disgust["mouth"].argmax()]
    assert surprise["mouth"].max() > 0.5 and disgust["mouth"].max() > 0.5
    _, happy = _curve("happy", seed)
    assert happy["smile"][-8:].mean() - happy["smile"][:4].mean() > 0.4  # onset
    _, sad = _curve("sad", seed)
    assert sad["smile"][-8:].mean() - sad["smile"][:8].mean() < -0.4  # late frown
    _, fear = _curve("fear", seed)
    m = fear["mouth"]
    peaks = ((m[1:-1] > m[:-2]) & (m[1:-1] >= m[2:]) & (m[1:-1] > 0.4)).sum()
    assert peaks >= 2  # oscillation
    _, neutral = _curve("neutral", seed)
    assert max(np.abs(neutral[k]).max() for k in ("mouth", "smile", "brow")) < 0.15


def test_render_clip_shape_determinism_and_motion():
    a = S.render_clip("disgust", 30, image_size=24, rng=np.random.default_rng(1))
    b = S.render_clip("disgust", 30, image_size=24, rng=np.random.default_rng(1))
    assert a.shape == (30, 24, 24, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    # The rendered mouth follows the class's mouth curve: the lower face darkens as it opens.
    # render_clip draws the curves first, so the same seed reproduces them.
    for name in ("disgust", "surprise", "fear"):
        for seed in range(3):
            clip = S.render_clip(name, 30, image_size=24, rng=np.random.default_rng(seed))
            _, cur = _curve(name, seed, n=30)
            darkness = -clip[:, 13:22, 6:18].astype(float).mean(axis=(1, 2, 3))
            assert np.corrcoef(cur["mouth"], darkness)[0, 1] > 0.7
    with pytest.raises(ValueError, match="class_name"):
        S.render_clip("contempt", 4, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="num_frames"):
        S.render_clip("happy", 0, rng=np.random.default_rng(0))


def test_segment_sampling_sees_the_synthetic_pulse():
    # The 16 centre samples of a 40-frame surprise clip include its early mouth peak.
    _, cur = _curve("surprise", 0, n=40)
    idx = segment_indices(40, 16, train=False)
    sampled = torch.tensor(cur["mouth"][idx])
    assert sampled[:8].max() > 0.5 and sampled[8:].max() < 0.3


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        # Each was truncated silently (a float count, fold 1.7 -> 1), or failed deep inside
        # numpy, PIL or Python without naming the argument.
        ({"folds": 1}, "folds must be a non-empty sequence of ints in 1..5, got 1"),
        ({"folds": (1.7,)}, "folds must be a non-empty sequence of ints in 1..5"),
        ({"clips_per_class": [2.9] * 7}, "clips_per_class must give 7 positive int counts"),
        ({"total_clips": 14.9}, "total_clips must be an int >= 1, got 14.9"),
        ({"frames": 5}, "frames must be (low, high) ints"),
        ({"image_size": 8.5}, "image_size must be an int >= 8, got 8.5"),
        ({"seed": -1}, "seed must be an int >= 0, got -1"),
        ({"seed": 1.5}, "seed must be an int >= 0, got 1.5"),
        ({"jpeg_quality": 200}, "jpeg_quality must be an int in 1..100, got 200"),
    ],
)
def test_generator_arguments_are_checked_by_name(tmp_path, options, needle):
    kwargs = {"total_clips": 14, "min_clips_per_class": 2, **SMALL, **options}
    with pytest.raises(ValueError) as info:
        S.make_synthetic_dfew(tmp_path, **kwargs)
    assert needle in str(info.value)
    assert not (tmp_path / "Clip").exists()  # checked before anything is written


def test_ferv39k_scenes_the_loader_could_not_read_are_refused(tmp_path):
    # "Action Movie/Sad/0001 Sad" was written, and the split-file parser then refused it.
    for scenes in (("Action Movie",), ("a,b",), ("..",), "Action"):
        with pytest.raises(ValueError, match="scenes must be folder names"):
            S.make_synthetic_ferv39k(tmp_path, scenes=scenes, **SMALL)
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        S.render_clip("happy", 3, image_size=8, rng=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_frames": 2.5}, "num_frames must be an int >= 1, got 2.5"),
        ({"num_frames": True}, "num_frames must be an int >= 1, got True"),
        ({"num_frames": "2"}, "num_frames must be an int >= 1, got '2'"),
        ({"image_size": 8.9}, "image_size must be an int >= 8, got 8.9"),
        ({"class_name": None}, "class_name must be one of"),
    ],
)
def test_render_clip_rejects_non_int_sizes(kwargs, match):
    # 2.5 frames gave 2, True gave 1 and an image size of 8.9 gave 8, silently; a string or
    # None failed in a comparison or in .lower().
    args = {"class_name": "happy", "num_frames": 3, "image_size": 8} | kwargs
    with pytest.raises(ValueError, match=match):
        S.render_clip(**args, rng=np.random.default_rng(0))


def test_a_root_under_home_is_expanded_as_torchvision_does(tmp_path, monkeypatch):
    # "~/data" was taken literally: the generators wrote under ./~ in the working directory,
    # and the loaders looked there (torchvision's data sets expand it).
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    small = {"frames": (2, 3), "image_size": 8, "min_clips_per_class": 2}
    info = S.make_synthetic_dfew("~/dfew", total_clips=14, **small)
    assert info.root == tmp_path / "dfew" and not (tmp_path / "~").exists()
    assert DFEW("~/dfew", 1, "train").root == tmp_path / "dfew"
    S.make_synthetic_ferv39k("~/ferv", total_clips=14, **small)
    assert len(FERV39k("~/ferv", "test")) > 0 and not (tmp_path / "~").exists()


def test_a_root_starting_with_tilde_and_no_such_user_is_a_relative_folder(tmp_path, monkeypatch):
    # Path.expanduser() raises RuntimeError ("Could not determine home directory") for
    # "~name" with no such user, and for "~" without HOME or a password entry;
    # os.path.expanduser, as torchvision uses it, leaves such a path as it is.
    pwd = pytest.importorskip("pwd")  # (POSIX: where "~name" names a user)

    name = "~micacl_no_such_user_0"
    with pytest.raises(KeyError):
        pwd.getpwnam(name[1:])
    monkeypatch.chdir(tmp_path)
    small = {"frames": (2, 3), "image_size": 8, "min_clips_per_class": 2}
    info = S.make_synthetic_dfew(f"{name}/dfew", total_clips=14, **small)
    assert info.root.resolve() == tmp_path / name / "dfew"
    assert len(DFEW(f"{name}/dfew", 1, "train")) > 0
    S.make_synthetic_ferv39k(f"{name}/ferv", total_clips=14, **small)
    assert len(FERV39k(f"{name}/ferv", "test")) > 0


@pytest.mark.parametrize(
    ("make", "options", "needle"),
    [
        # Every class's one clip is in test group 1: fold 1's training split had no clip.
        (S.make_synthetic_dfew, {"clips_per_class": [1] * 7}, "train split of fold 1"),
        # A class's clips fill test groups 1..n: no class reaches group 4.
        (S.make_synthetic_dfew, {"clips_per_class": [3] * 7, "folds": (1, 4)}, "fold 4"),
        (S.make_synthetic_ferv39k, {"clips_per_class": [1] * 7}, "train split"),
    ],
)
def test_a_split_the_loaders_could_not_read_is_refused(tmp_path, make, options, needle):
    # The split file was written with a header and no clip, which DFEW and FERV39k refuse
    # ("lists no clips", "is empty"): the generator made a data set its loaders cannot read.
    with pytest.raises(ValueError, match=rf"{needle} would hold no clip"):
        make(tmp_path, **options, **SMALL)
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_counts_lengths_and_folds_may_be_numpy_arrays(tmp_path):
    # np.bincount(...) or np.array([8, 48]) were refused as "must give 7 positive int counts,
    # got array([...])", though they are just that (NumPy integers were taken one at a time).
    arrays = S.make_synthetic_dfew(
        tmp_path / "a",
        clips_per_class=np.array([2, 3, 2, 2, 2, 4, 2]),
        frames=np.array([2, 4]),
        folds=np.array([1, 2]),
        image_size=8,
    )
    lists = S.make_synthetic_dfew(
        tmp_path / "b",
        clips_per_class=[2, 3, 2, 2, 2, 4, 2],
        frames=(2, 4),
        folds=(1, 2),
        image_size=8,
    )
    assert arrays.clips == lists.clips and arrays.class_counts == lists.class_counts
    info = S.make_synthetic_ferv39k(tmp_path / "f", clips_per_class=np.full(7, 2), image_size=8)
    assert info.class_counts == [2] * 7
    with pytest.raises(ValueError, match="clips_per_class must give 7 positive int counts"):
        S.make_synthetic_dfew(tmp_path / "c", clips_per_class=np.full(7, 2.0))
    with pytest.raises(ValueError, match="frames must be"):
        S.make_synthetic_dfew(tmp_path / "c", frames=np.array([[2, 4]]))


def test_scenes_may_be_an_array_but_not_a_set(tmp_path):
    # An array raised numpy's "truth value of an array ... is ambiguous"; a set "'set' object
    # is not subscriptable" (and its order, hence the data, would change with the hash seed).
    small = {"total_clips": 14, "min_clips_per_class": 2, **SMALL}
    info = S.make_synthetic_ferv39k(tmp_path / "a", scenes=np.array(["Action", "Daily"]), **small)
    same = S.make_synthetic_ferv39k(tmp_path / "b", scenes=["Action", "Daily"], **small)
    assert info.clips == same.clips
    with pytest.raises(ValueError, match="scenes must be folder names.* in a list or tuple"):
        S.make_synthetic_ferv39k(tmp_path / "c", scenes={"Action", "Daily"}, **small)


def test_clip_lengths_as_documented_on_either_side_of_16():
    # The docs said "~3% shorter than 16 frames when frames[0] < 16", also of a range below
    # 16 (the docstring's own frames=(6, 12)), where every clip is shorter.
    plan = S._plan([40] * 7, (6, 12), seed=0)
    assert {t for _, t, _ in plan} == set(range(6, 13))
    plan = S._plan([40] * 7, (8, 48), seed=0)
    short = [t for _, t, _ in plan if t < 16]
    assert round(0.03 * len(plan)) == len(short) and min(short) >= 8
    assert all(16 <= t <= 48 for _, t, _ in plan if t >= 16)
    docs = " ".join((Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text().split())
    assert "~3% (at least one) uniform in `frames[0]..15` and the rest in `16..frames[1]`" in docs
