import codecs
import collections.abc
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from micacl_layers.data import (
    DFEW,
    DFEW_CLASSES,
    FERV39K_CLASSES,
    CorruptFrameError,
    FERV39k,
    SkippedClipsWarning,
    _frames,
    list_frames,
    load_frames,
    segment_indices,
)
from micacl_layers.data import transforms as T
from micacl_layers.data.ferv39k import parse_ferv39k_split

DFEW_HEADER = "video_name,label\n"


def write_clip(folder, num_frames, *, size=8, start_grey=0, step=10, names=None):
    """Frame k is a flat grey of value start_grey + step * k (flat JPEGs decode ~exactly)."""
    folder.mkdir(parents=True)
    names = names or [f"{k + 1:05d}.jpg" for k in range(num_frames)]
    for k, name in enumerate(names):
        grey = start_grey + step * k
        Image.new("RGB", (size, size), (grey, grey, grey)).save(folder / name, quality=95)


def dfew_tree(root, rows, *, split="train", fold=1, frames=None, header=True):
    """rows: list of (id_as_written, label_as_written); frames: {5-digit id: num_frames}."""
    split_dir = root / "EmoLabel_DataSplit" / f"{split}(single-labeled)"
    split_dir.mkdir(parents=True, exist_ok=True)
    text = (DFEW_HEADER if header else "") + "".join(f"{i},{lab}\n" for i, lab in rows)
    path = split_dir / f"set_{fold}.csv"
    path.write_text(text)
    clips = root / "Clip" / "clip_224x224"
    clips.mkdir(parents=True, exist_ok=True)
    for clip_id, n in (frames or {}).items():
        write_clip(clips / clip_id, n)
    return path


def ferv_tree(root, lines, *, split="train", frames=None):
    setups = root / "4_setups" / "All_scenes"
    setups.mkdir(parents=True, exist_ok=True)
    path = setups / f"{split}_All.csv"
    path.write_text("".join(line + "\n" for line in lines))
    base = root / "2_ClipsforFaceCrop"
    base.mkdir(parents=True, exist_ok=True)
    for rel, n in (frames or {}).items():
        write_clip(base.joinpath(*rel.split("/")), n)
    return path


# ----------------------------------------------------------------------------- DFEW


def test_dfew_parses_labels_and_pads_ids(tmp_path):
    dfew_tree(
        tmp_path,
        [("1", 1), ("00002", 7), ("345", 3), ("12345", 6)],
        frames={"00001": 20, "00002": 5, "00345": 30, "12345": 17},
    )
    ds = DFEW(tmp_path, fold=1, split="train")
    frames_root = tmp_path / "Clip" / "clip_224x224"
    assert ds.samples == [
        (frames_root / "00001", 0),
        (frames_root / "00002", 6),
        (frames_root / "00345", 2),
        (frames_root / "12345", 5),
    ]
    assert (
        ds.classes
        == list(DFEW_CLASSES)
        == ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"]
    )
    assert ds.class_counts == [1, 0, 1, 0, 0, 1, 1]
    assert ds.targets == [0, 6, 2, 5]
    assert len(ds) == 4
    assert ds.train is True and ds.skipped == []


def test_dfew_item_shape_dtype_and_frame_order(tmp_path):
    dfew_tree(tmp_path, [("7", 2)], split="test", frames={"00007": 5})
    ds = DFEW(tmp_path, fold=1, split="test")
    assert ds.train is False
    clip, label = ds[0]
    assert isinstance(label, int) and label == 1
    assert clip.shape == (3, 16, 8, 8) and clip.dtype == torch.float32
    # 5 frames stretched to 16 in order: grey levels 0, 10, ..., 40 at indices (2i+1)*5//32.
    grey = clip[0, :, 4, 4] * 255
    expected = torch.tensor([10.0 * ((2 * i + 1) * 5 // 32) for i in range(16)])
    torch.testing.assert_close(grey, expected, atol=3, rtol=0)


def test_dfew_test_sampling_is_deterministic_train_sampling_seeded(tmp_path):
    dfew_tree(tmp_path, [("1", 1)], frames={"00001": 20})
    test_mode = DFEW(tmp_path, 1, "train", train=False)
    assert torch.equal(test_mode[0][0], test_mode[0][0])
    a = DFEW(tmp_path, 1, "train", generator=torch.Generator().manual_seed(0))
    b = DFEW(tmp_path, 1, "train", generator=torch.Generator().manual_seed(0))
    draws_a = [a[0][0] for _ in range(4)]
    draws_b = [b[0][0] for _ in range(4)]
    assert all(torch.equal(x, y) for x, y in zip(draws_a, draws_b, strict=True))
    assert not all(torch.equal(draws_a[0], x) for x in draws_a[1:])


def test_dfew_passes_generator_to_clip_transforms(tmp_path):
    dfew_tree(tmp_path, [("1", 1)], frames={"00001": 20})

    def make():
        return DFEW(
            tmp_path,
            1,
            "train",
            transform=T.train_transform(6),
            generator=torch.Generator().manual_seed(4),
        )

    clip_a, _ = make()[0]
    clip_b, _ = make()[0]
    assert clip_a.shape == (3, 16, 6, 6)
    assert torch.equal(clip_a, clip_b)


def test_plain_callable_transform_and_bad_output(tmp_path):
    dfew_tree(tmp_path, [("1", 1)], frames={"00001": 20})
    ds = DFEW(tmp_path, 1, "train", transform=lambda c: c[:, :1])
    assert ds[0][0].shape == (1, 16, 8, 8)
    bad = DFEW(tmp_path, 1, "train", transform=lambda c: c[0])
    with pytest.raises(ValueError, match=r"transform must return a \(T, C, H, W\)"):
        bad[0]


def test_dfew_argument_validation(tmp_path):
    with pytest.raises(ValueError, match="fold"):
        DFEW(tmp_path, 0, "train")
    with pytest.raises(ValueError, match="fold"):
        DFEW(tmp_path, 6, "train")
    with pytest.raises(ValueError, match="split"):
        DFEW(tmp_path, 1, "val")
    # The data set's name leads, as in its other option errors, and the fix is named.
    with pytest.raises(TypeError, match=r"^DFEW: `generator` must be a CPU .* seed one with"):
        DFEW(tmp_path, 1, "train", generator=0)
    dfew_tree(tmp_path, [("1", 1)], frames={"00001": 20})
    with pytest.raises(ValueError, match="num_frames"):
        DFEW(tmp_path, 1, "train", num_frames=0)


def test_dfew_fold_may_be_a_numpy_integer(tmp_path):
    import numpy as np

    dfew_tree(tmp_path, [("1", 1)], frames={"00001": 20})
    ds = DFEW(tmp_path, np.int64(1), "train")
    assert type(ds.fold) is int and ds.fold == 1 and len(ds) == 1
    with pytest.raises(ValueError, match="fold must be an int in 1..5, got 2.0"):
        DFEW(tmp_path, 2.0, "train")
    with pytest.raises(ValueError, match="fold must be an int in 1..5"):
        DFEW(tmp_path, np.int64(6), "train")


def test_missing_split_file_named(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        DFEW(tmp_path, 3, "test")
    assert str(tmp_path / "EmoLabel_DataSplit" / "test(single-labeled)" / "set_3.csv") in str(
        err.value
    )


def test_missing_header_named(tmp_path):
    path = dfew_tree(tmp_path, [("1", 1), ("2", 2)], header=False, frames={"00001": 3})
    with pytest.raises(ValueError, match="header") as err:
        DFEW(tmp_path, 1, "train")
    assert f"{path}:1:" in str(err.value)


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        (("3", 8), "label 8 is out of range 1..7"),
        (("3", 0), "label 0 is out of range"),
        (("3", "happy"), "label must be an integer"),
        # int() reads "0_3" as 3 and "1_0" as 10: not how a CSV writes a label.
        (("3", "0_3"), "label must be an integer 1..7, got '0_3'"),
        (("x3", 1), "clip id must be a number"),
        (("123456", 1), "clip id must be a number of at most 5 digits"),
        (("1", 1), "listed twice (first on line 2)"),
    ],
)
def test_bad_split_line_names_file_and_line(tmp_path, row, needle):
    path = dfew_tree(tmp_path, [("1", 1), row], frames={"00001": 3})
    with pytest.raises(ValueError) as err:
        DFEW(tmp_path, 1, "train")
    assert str(err.value).startswith(f"{path}:3: ")
    assert needle in str(err.value)


def test_one_column_line_and_header_only(tmp_path):
    path = dfew_tree(tmp_path, [], frames={})
    with pytest.raises(ValueError, match="lists no clips") as err:
        DFEW(tmp_path, 1, "train")
    assert f"{path}:1:" in str(err.value)
    path.write_text(DFEW_HEADER + "1,1\n\n42\n")
    with pytest.raises(ValueError, match="expected 'clip_id,label'") as err:
        DFEW(tmp_path, 1, "train")
    assert f"{path}:4:" in str(err.value)  # blank line 3 is skipped but still counted
    path.write_text("")
    with pytest.raises(ValueError, match="empty"):
        DFEW(tmp_path, 1, "train")


def test_missing_and_empty_clip_folders_fail_at_construction(tmp_path):
    dfew_tree(tmp_path, [("1", 1), ("2", 2), ("3", 3)], frames={"00001": 4})
    empty = tmp_path / "Clip" / "clip_224x224" / "00003"
    empty.mkdir()
    (empty / "readme.txt").write_text("not a frame")
    with pytest.raises(FileNotFoundError) as err:
        DFEW(tmp_path, 1, "train")
    msg = str(err.value)
    assert "2 of 3 clips" in msg
    assert f"{tmp_path / 'Clip' / 'clip_224x224' / '00002'}' (missing, line 3)" in msg
    assert f"{empty}' (no JPEG frames, line 4)" in msg
    assert "skip_bad_clips=True" in msg


def test_missing_frame_root_named(tmp_path):
    dfew_tree(tmp_path, [("1", 1)])
    (tmp_path / "Clip" / "clip_224x224").rmdir()
    with pytest.raises(FileNotFoundError, match="frame folder root") as err:
        DFEW(tmp_path, 1, "train", skip_bad_clips=True)
    assert str(tmp_path / "Clip" / "clip_224x224") in str(err.value)


def test_skip_bad_clips_warns_once_listing_every_clip(tmp_path):
    dfew_tree(
        tmp_path,
        [("1", 1), ("2", 2), ("3", 3), ("4", 6)],
        frames={"00001": 4, "00004": 9},
    )
    (tmp_path / "Clip" / "clip_224x224" / "00003").mkdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = DFEW(tmp_path, 1, "train", skip_bad_clips=True)
    assert len(caught) == 1
    warning = caught[0]
    assert issubclass(warning.category, SkippedClipsWarning)
    assert warning.filename == __file__  # points at the caller, not the library
    msg = str(warning.message)
    assert "skipped 2 of 4 clips" in msg
    assert str(tmp_path / "Clip" / "clip_224x224" / "00002") in msg
    assert str(tmp_path / "Clip" / "clip_224x224" / "00003") in msg
    assert [(s.frame_dir.name, s.label, s.reason, s.line) for s in ds.skipped] == [
        ("00002", 1, "missing", 3),
        ("00003", 2, "no JPEG frames", 4),
    ]
    assert len(ds) == 2 and ds.class_counts == [1, 0, 0, 0, 0, 1, 0]
    assert "skipped=2" in repr(ds)


def test_skip_bad_clips_with_nothing_left_raises(tmp_path):
    dfew_tree(tmp_path, [("1", 1)])
    with pytest.raises(FileNotFoundError, match="all 1 clips"):
        DFEW(tmp_path, 1, "train", skip_bad_clips=True)


def test_many_bad_clips_message_is_truncated(tmp_path):
    dfew_tree(tmp_path, [(str(i), 1) for i in range(1, 31)])
    with pytest.raises(FileNotFoundError, match="and 10 more"):
        DFEW(tmp_path, 1, "train")


@pytest.mark.parametrize("corruption", ["garbage", "truncated"])
def test_corrupt_jpeg_named_at_load(tmp_path, corruption):
    dfew_tree(tmp_path, [("1", 1)], frames={"00001": 3})
    bad = tmp_path / "Clip" / "clip_224x224" / "00001" / "00002.jpg"
    data = bad.read_bytes()
    bad.write_bytes(b"this is not a jpeg" if corruption == "garbage" else data[: len(data) // 2])
    ds = DFEW(tmp_path, 1, "train")
    with pytest.raises(CorruptFrameError) as err:
        ds[0]
    assert str(bad) in str(err.value)
    assert isinstance(err.value, OSError)


def test_frames_of_different_sizes_named(tmp_path):
    dfew_tree(tmp_path, [("1", 1)], frames={"00001": 3})
    odd = tmp_path / "Clip" / "clip_224x224" / "00001" / "00003.jpg"
    Image.new("RGB", (9, 8)).save(odd)
    with pytest.raises(ValueError, match="9x8") as err:
        DFEW(tmp_path, 1, "train", train=False)[0]
    assert str(odd) in str(err.value)


def test_folder_emptied_after_construction(tmp_path):
    dfew_tree(tmp_path, [("1", 1)], frames={"00001": 3})
    ds = DFEW(tmp_path, 1, "train")
    for f in (tmp_path / "Clip" / "clip_224x224" / "00001").iterdir():
        f.unlink()
    with pytest.raises(FileNotFoundError, match="00001"):
        ds[0]


# ----------------------------------------------------------------------------- FERV39k


def test_ferv39k_parses_lines(tmp_path):
    ferv_tree(
        tmp_path,
        ["Action/Sad/0010 Sad", "Daily/Angry/0001  angry", "Action/Surprise/0002,Surprise"],
        frames={"Action/Sad/0010": 9, "Daily/Angry/0001": 20, "Action/Surprise/0002": 16},
    )
    ds = FERV39k(tmp_path, "train")
    base = tmp_path / "2_ClipsforFaceCrop"
    assert (
        ds.classes
        == list(FERV39K_CLASSES)
        == ["Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"]
    )
    assert ds.samples == [
        (base / "Action" / "Sad" / "0010", 5),
        (base / "Daily" / "Angry" / "0001", 0),
        (base / "Action" / "Surprise" / "0002", 6),
    ]
    assert ds.class_counts == [1, 0, 0, 0, 0, 1, 1]
    clip, label = ds[0]
    assert clip.shape == (3, 16, 8, 8) and label == 5 and ds.train


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("Action/Sad/0010 Contempt", "unknown label 'Contempt'"),
        ("Sad/0010 Sad", "clip path must be '<scene>/<emotion>/<id>'"),
        ("Action/../0010 Sad", "clip path must be"),
        ("Action/Sad/0010", "expected '<scene>/<emotion>/<id> <label>'"),
        ("Action/Sad/0010 Sad extra", "expected"),
        ("Action/Sad/0001 Sad", "listed twice (first on line 1)"),
    ],
)
def test_ferv39k_bad_lines_name_file_and_line(tmp_path, line, needle):
    path = ferv_tree(tmp_path, ["Action/Sad/0001 Sad", line])
    with pytest.raises(ValueError) as err:
        FERV39k(tmp_path, "train")
    assert str(err.value).startswith(f"{path}:2: ")
    assert needle in str(err.value)


def test_ferv39k_label_that_contradicts_its_folder_is_reported(tmp_path):
    lines = ["Action/Sad/0001 Sad", "Action/Sad/0002 Happy", "Daily/Fear/0003 angry"]
    frames = {"Action/Sad/0001": 4, "Action/Sad/0002": 4, "Daily/Fear/0003": 4}
    path = ferv_tree(tmp_path, lines, frames=frames)
    with pytest.warns(
        UserWarning, match=r"2 of 3 clips .* line 2: 'Action/Sad/0002 Happy'; line 3"
    ):
        ds = FERV39k(tmp_path, "train")
    assert [label for _, label in ds.samples] == [5, 3, 0]  # the label column is the label
    with pytest.warns(UserWarning, match=re.escape(str(path))):
        parse_ferv39k_split(path)


def test_ferv39k_missing_split_and_missing_clip(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"test_All.csv"):
        FERV39k(tmp_path, "test")
    ferv_tree(
        tmp_path,
        ["Action/Sad/0001 Sad", "Action/Fear/0002 Fear"],
        split="test",
        frames={"Action/Sad/0001": 4},
    )
    with pytest.raises(FileNotFoundError) as err:
        FERV39k(tmp_path, "test")
    assert str(tmp_path / "2_ClipsforFaceCrop" / "Action" / "Fear" / "0002") in str(err.value)
    with pytest.warns(SkippedClipsWarning, match="skipped 1 of 2"):
        ds = FERV39k(tmp_path, "test", skip_bad_clips=True)
    assert len(ds) == 1 and ds.skipped[0].label == 2
    with pytest.raises(ValueError, match="split"):
        FERV39k(tmp_path, "val")


# ----------------------------------------------------------------------------- frame helpers


def test_list_frames_natural_order_and_jpeg_only(tmp_path):
    names = ["10.jpg", "2.jpeg", "1.JPG", "frame_3.jpg", "x.png"]
    write_clip(tmp_path / "c", len(names), names=names)
    assert [p.name for p in list_frames(tmp_path / "c")] == [
        "1.JPG",
        "2.jpeg",
        "10.jpg",
        "frame_3.jpg",
    ]


def test_load_frames_decodes_repeats_once_and_converts_grey(tmp_path, monkeypatch):
    (tmp_path / "c").mkdir()
    Image.new("L", (4, 3), 200).save(tmp_path / "c" / "1.jpg")
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda p: opened.append(p) or real_open(p))
    clip = load_frames([tmp_path / "c" / "1.jpg"] * 3)
    assert clip.shape == (3, 3, 3, 4)
    assert len(opened) == 1
    torch.testing.assert_close(clip, torch.full_like(clip, 200 / 255), atol=2 / 255, rtol=0)
    with pytest.raises(FileNotFoundError, match=r"2.jpg"):
        load_frames([tmp_path / "c" / "2.jpg"])
    with pytest.raises(ValueError, match="at least one"):
        load_frames([])
    # One path is a string of characters: it was read as the frames "/", "t", ... and failed
    # with "cannot decode frame '/'".
    for one in (tmp_path / "c" / "1.jpg", str(tmp_path / "c" / "1.jpg")):
        with pytest.raises(TypeError, match=r"`paths` must be a sequence of frame paths.*1.jpg"):
            load_frames(one)


def test_missing_pillow_gives_install_hint(tmp_path, monkeypatch):
    dfew_tree(tmp_path, [("1", 1)], frames={"00001": 3})
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r"pip install micacl-layers\[data\]"):
        _frames.require_pil()
    with pytest.raises(ImportError, match=r"pip install micacl-layers\[data\]"):
        DFEW(tmp_path, 1, "train")


def test_importing_data_needs_neither_pillow_nor_torchvision():
    code = (
        "import sys, micacl_layers, micacl_layers.data, micacl_layers.metrics\n"
        "bad = [m for m in ('PIL', 'torchvision') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "assert 'micacl_layers.data.synthetic' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- adversarial pass


def test_split_file_not_utf8_is_named_utf16_is_read(tmp_path):
    path = dfew_tree(tmp_path, [("1", "3")], frames={"00001": 4})
    # Latin-1 (a spreadsheet's default export): was a bare UnicodeDecodeError naming no file.
    path.write_bytes(b"video_name,label\n1,3\n2,4 # caf\xe9\n")
    with pytest.raises(ValueError, match=r"set_1\.csv:3: DFEW split file is not UTF-8"):
        DFEW(tmp_path, 1, "train")
    # UTF-16 with its byte-order mark (spreadsheets' "Unicode text"): read as what it says.
    path.write_bytes("video_name,label\r\n1,3\r\n".encode("utf-16"))
    ds = DFEW(tmp_path, 1, "train")
    assert [label for _, label in ds.samples] == [2]
    # UTF-32 with its byte-order mark, whose little-endian mark starts with UTF-16's: it was
    # read as UTF-16 and refused for its NULs, "without its byte-order mark".
    for codec in ("utf-32", "utf-32-be"):
        text = "video_name,label\r\n1,3\r\n"
        raw = text.encode(codec) if codec == "utf-32" else codecs.BOM_UTF32_BE + text.encode(codec)
        path.write_bytes(raw)
        assert [label for _, label in DFEW(tmp_path, 1, "train").samples] == [2]
    ferv = ferv_tree(tmp_path / "f", ["Action/Sad/0010 Sad"], frames={"Action/Sad/0010": 3})
    ferv.write_bytes(b"Action/Sad/0010 Sad\n\xff\n")
    with pytest.raises(ValueError, match=r"train_All\.csv:2: FERV39k split file is not UTF-8"):
        FERV39k(tmp_path / "f", "train")


def test_list_frames_ignores_macos_metadata_and_keeps_dangling_links(tmp_path):
    clip = tmp_path / "c"
    write_clip(clip, 3)
    # macOS leaves "._<name>" metadata files on copied drives: they sorted first as frame 0,
    # shifting the sampling, and did not decode.
    (clip / "._00001.jpg").write_bytes(b"\x00\x05\x16\x07Mac OS X")
    (clip / ".hidden.jpg").write_bytes(b"")
    (clip / "00004.jpg").symlink_to(clip / "gone.jpg")  # a frame whose file is missing
    assert [p.name for p in list_frames(clip)] == [f"{k:05d}.jpg" for k in (1, 2, 3, 4)]
    with pytest.raises(FileNotFoundError, match=r"00004\.jpg"):
        load_frames(list_frames(clip))


def test_frame_order_does_not_depend_on_the_listing_order(tmp_path, monkeypatch):
    # "1.jpg" and "01.jpg" compare equal numerically: their order followed os.scandir's,
    # which differs between file systems (so a clip's sampled frames did too).
    write_clip(tmp_path / "c", 4, names=["1.jpg", "01.jpg", "2.jpg", "x10.jpg"])
    real = os.scandir

    class Reversed:
        def __init__(self, path):
            self.entries = list(real(path))[::-1]

        def __enter__(self):
            return iter(self.entries)

        def __exit__(self, *exc):
            return False

    forward = [p.name for p in list_frames(tmp_path / "c")]
    monkeypatch.setattr(os, "scandir", Reversed)
    assert (
        [p.name for p in list_frames(tmp_path / "c")]
        == forward
        == [
            "01.jpg",
            "1.jpg",
            "2.jpg",
            "x10.jpg",
        ]
    )


def test_list_frames_with_non_decimal_digit_characters(tmp_path):
    # "²" is str.isdigit() but not a decimal digit: int("²") raised "invalid literal for int()"
    # at construction, naming neither the folder nor the file.
    write_clip(tmp_path / "c", 3, names=["1²2.jpg", "2.jpg", "1.jpg"])
    assert [p.name for p in list_frames(tmp_path / "c")] == ["1.jpg", "1²2.jpg", "2.jpg"]


def test_item_index_must_be_one_int_in_range(tmp_path):
    dfew_tree(tmp_path, [("1", 1), ("2", 2)], frames={"00001": 3, "00002": 3})
    ds = DFEW(tmp_path, 1, "train")
    assert ds[-1][1] == ds[1][1] == 1  # negative indices count from the end, as in a list
    np = pytest.importorskip("numpy")
    assert ds[np.int64(1)][1] == ds[torch.tensor(1)][1] == 1
    # A slice unpacked two samples as (frame_dir, label) and failed inside os.scandir with
    # "path should be string ..., not tuple"; three failed with "too many values to unpack".
    for bad in (slice(0, 2), slice(0, 3), 1.0, "0", [0, 1]):
        with pytest.raises(TypeError, match=r"DFEW: `index` must be an int, got .*Subset"):
            ds[bad]
    # IndexError, as a list's: it also ends `for clip, label in ds`.
    for bad in (2, -3):
        with pytest.raises(IndexError, match=rf"DFEW: index {bad} is out of range for 2 clips"):
            ds[bad]
    assert len(list(ds)) == 2


def test_split_file_in_utf16_without_a_byte_order_mark_is_named(tmp_path):
    # UTF-16 without its BOM is valid UTF-8 (ASCII with NULs between): the error was about
    # the clip id '\x001\x00' or an unknown label '\x00S\x00a\x00d\x00', not the encoding.
    path = dfew_tree(tmp_path, [("1", "3")], frames={"00001": 4})
    for codec in ("utf-16-le", "utf-16-be"):
        path.write_bytes("video_name,label\n1,3\n".encode(codec))
        with pytest.raises(ValueError, match=r"set_1\.csv:1: .*NUL.*UTF-16.*save it as UTF-8"):
            DFEW(tmp_path, 1, "train")
    ferv = ferv_tree(tmp_path / "f", ["Action/Sad/0010 Sad"], frames={"Action/Sad/0010": 3})
    ferv.write_bytes("Action/Sad/0010 Sad\n".encode("utf-16-le"))
    with pytest.raises(ValueError, match=r"train_All\.csv:1: FERV39k split file holds a NUL"):
        FERV39k(tmp_path / "f", "train")


def test_split_line_the_csv_reader_refuses_is_named(tmp_path):
    # csv's own error ("field larger than field limit (131072)") named no file or line, and
    # is not a ValueError.
    path = dfew_tree(tmp_path, [("1", 1), ("7" * 200_000, 1)], frames={"00001": 3})
    with pytest.raises(ValueError, match=r"set_1\.csv:3: cannot read the line as CSV .*limit"):
        DFEW(tmp_path, 1, "train")
    path.write_text("x" * 200_000 + "\n1,1\n")
    with pytest.raises(ValueError, match=r"set_1\.csv:1: cannot read the line as CSV"):
        DFEW(tmp_path, 1, "train")


def _reseed_per_worker(worker_id):
    # The recipe of docs/data.md: the worker's own copy of the data set, whatever the start
    # method.
    torch.utils.data.get_worker_info().dataset.generator.manual_seed(1000 + worker_id)


@pytest.mark.slow  # two spawned workers import torch afresh
def test_per_worker_reseeding_recipe_works_under_spawn(tmp_path):
    # The recipe was `dataset.generator.manual_seed(...)`: under "spawn" (the default on macOS
    # and Windows) the name `dataset` in a worker is not the copy its DataLoader iterates (the
    # main module is imported afresh), so every worker kept drawing the same frames.
    docs = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()
    assert "get_worker_info().dataset.generator.manual_seed(base_seed + worker_id)" in docs
    dfew_tree(tmp_path, [("1", 1), ("2", 2)], frames={"00001": 40, "00002": 40})
    ds = DFEW(tmp_path, 1, "train", generator=torch.Generator().manual_seed(0))
    strategy = torch.multiprocessing.get_sharing_strategy()
    torch.multiprocessing.set_sharing_strategy("file_system")  # some sandboxes refuse shm fds
    try:
        loader = torch.utils.data.DataLoader(
            ds,
            batch_size=1,
            num_workers=2,
            multiprocessing_context="spawn",
            worker_init_fn=_reseed_per_worker,
        )
        got = [clip[0] for clip, _ in loader]
    finally:
        torch.multiprocessing.set_sharing_strategy(strategy)
    for index, clip in enumerate(got):  # item i is worker i's first
        ds.generator = torch.Generator().manual_seed(1000 + index)
        assert torch.equal(clip, ds[index][0])


def test_items_are_made_on_the_cpu_whatever_the_default_device(tmp_path):
    # The draws (torch.rand, torch.randperm) and the fast path's output buffer followed the
    # default device: with "cuda" a CPU generator failed inside torch ("Expected a 'cuda'
    # device type for generator"), a forked worker initialised CUDA, and the fast path handed
    # out clips on another device than the plain path's CPU ones.
    dfew_tree(tmp_path, [("1", 1), ("2", 2)], frames={"00001": 30, "00002": 4})
    runs = []
    for default in ("cpu", "meta"):
        # The default device as training scripts set it ("cuda"; "meta" stands in here),
        # scoped: set_default_device("cpu") afterwards would leave a device mode on, under
        # which torch.as_tensor copies a meta tensor to the CPU in later tests.
        with torch.device(default):
            run = _items_under_the_default_device(tmp_path)
        runs.append(run)
    assert runs[1][0] == runs[0][0]
    for on_meta, on_cpu in zip(runs[1][1:], runs[0][1:], strict=True):
        assert on_meta.device.type == "cpu"
        assert torch.equal(on_meta, on_cpu)


def _items_under_the_default_device(tmp_path):
    run = [segment_indices(30, 8, train=True, generator=torch.Generator().manual_seed(0))]
    for fast_decode in (True, False):
        for split, transform in (
            ("train", T.train_transform(4)),
            ("test", T.test_transform(4)),
        ):
            ds = DFEW(
                tmp_path,
                1,
                "train",
                train=split == "train",
                transform=T.ClipCompose([transform, T.ClipNormalize([0.5] * 3, [0.2] * 3)]),
                generator=torch.Generator().manual_seed(1),
                fast_decode=fast_decode,
            )
            run += [ds[i][0] for i in range(len(ds))]
    return run


def test_a_transform_class_instead_of_an_instance_is_named_at_construction(tmp_path):
    dfew_tree(tmp_path, [("1", 1)], frames={"00001": 3})
    with pytest.raises(TypeError, match=r"DFEW: `transform` is the class ClipResize, not one"):
        DFEW(tmp_path, 1, "train", transform=T.ClipResize)


def test_a_transform_set_after_construction_is_checked(tmp_path):
    # `ds.transform = ...` (as with torchvision's data sets, to swap the augmentation) skipped
    # the constructor's checks: a colour step on a uint8 data set failed an assert at the first
    # item (under python -O the jitter was silently not applied), and a non-callable failed
    # there too.
    dfew_tree(tmp_path, [("1", 1)], frames={"00001": 3})
    ds = DFEW(tmp_path, 1, "train", output_dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"output_dtype=torch.uint8 .*ClipColorJitter"):
        ds.transform = T.train_transform(4)
    with pytest.raises(TypeError, match=r"DFEW: `transform` must be callable"):
        ds.transform = "train"
    ds.transform = T.train_transform(4, color_jitter=False)
    assert ds[0][0].shape == (3, 16, 4, 4) and ds[0][0].dtype == torch.uint8
    ds.transform = None
    assert ds.transform is None and ds[0][0].shape == (3, 16, 8, 8)
    ds = DFEW(tmp_path, 1, "train", transform=T.train_transform(4))
    with pytest.raises(ValueError, match=r"output_dtype=torch.uint8 .*ClipColorJitter"):
        ds.output_dtype = torch.uint8
    with pytest.raises(ValueError, match=r"output_dtype must be torch.float32 or torch.uint8"):
        ds.output_dtype = torch.float16
    assert ds.output_dtype == torch.float32 and ds[0][0].dtype == torch.float32


@pytest.mark.parametrize("which", ["DFEW", "FERV39k"])
def test_a_draft_set_after_construction_is_checked(tmp_path, which, monkeypatch):
    # `transform` and `output_dtype` were checked when set later, `draft` was not: "bogus" was
    # kept and decoded as "crop" (the rule any value other than "frame"/"never" falls to).
    if which == "DFEW":
        dfew_tree(tmp_path, [("1", 1)], frames={"00001": 3})
        ds = DFEW(tmp_path, 1, "train", transform=T.test_transform(4))
    else:
        ferv_tree(tmp_path, ["Action/Sad/0010 Sad"], frames={"Action/Sad/0010": 3})
        ds = FERV39k(tmp_path, "train", transform=T.test_transform(4))
    for bad in ("bogus", None, "Frame"):
        with pytest.raises(ValueError, match=rf"{which}: draft must be one of .* got {bad!r}"):
            ds.draft = bad
        assert ds.draft == "crop"  # a refused value leaves the old one in place
    from micacl_layers.data import _frames

    seen = []
    real = _frames.decode_planned
    monkeypatch.setattr(
        _frames, "decode_planned", lambda *a, **k: seen.append(k["draft"]) or real(*a, **k)
    )
    ds.draft = "never"
    assert ds.draft == "never" and ds[0][0].shape == (3, 16, 4, 4) and seen == ["never"]


def test_load_frames_takes_any_iterable_of_paths_and_names_a_non_iterable(tmp_path):
    # A generator expression failed with "object of type 'generator' has no len()", and None
    # or 5 with the same bare message, naming no argument.
    write_clip(tmp_path / "c", 3)
    frames = list_frames(tmp_path / "c")
    torch.testing.assert_close(load_frames(p for p in frames), load_frames(frames))
    for bad in (None, 5):
        with pytest.raises(TypeError, match=r"`paths` must be a sequence of frame paths, got"):
            load_frames(bad)
    # The annotation says so too, or a type checker refuses the generator expression above.
    from typing import get_type_hints

    assert get_type_hints(load_frames)["paths"].__origin__ is collections.abc.Iterable


@pytest.mark.parametrize(
    "text",
    [
        # pandas' to_csv with its index: clip 00001 was read as clip 00000 with label 1, ...
        ",video_name,label\n0,00001,3\n1,00002,5\n",
        # the columns swapped: clip 3 with label 1
        "label,video_name\n3,1\n5,2\n",
    ],
)
def test_a_header_that_moves_the_label_column_is_refused(tmp_path, text):
    path = dfew_tree(tmp_path, [], frames={"00000": 3, "00001": 3, "00002": 3, "00003": 3})
    path.write_text(text)
    with pytest.raises(ValueError, match=r"set_1\.csv:1: the header .* puts 'label' in column"):
        DFEW(tmp_path, 1, "train")


def test_a_subclass_may_set_its_transform_before_the_base_init(tmp_path):
    # The checking setter read self.name, which the base __init__ had not set yet.
    class Mine(DFEW):
        def __init__(self, root):
            self.transform = T.test_transform(4)
            super().__init__(root, 1, "train", transform=self.transform)

    dfew_tree(tmp_path, [("1", 1)], frames={"00001": 3})
    assert Mine(tmp_path)[0][0].shape == (3, 16, 4, 4)


def test_dfew_split_file_is_the_official_layout_and_checks_its_arguments(tmp_path):
    import numpy as np

    from micacl_layers.data import DFEW

    path = DFEW.split_file_path(tmp_path, np.int64(3), "train")
    assert path == tmp_path / "EmoLabel_DataSplit" / "train(single-labeled)" / "set_3.csv"
    assert DFEW.split_file_path("~", 1, "test").parts[0] != "~"
    for fold, split in ((0, "train"), (True, "train"), (2.0, "test"), (1, "val")):
        with pytest.raises(ValueError, match="fold must be|split must be"):
            DFEW.split_file_path(tmp_path, fold, split)
