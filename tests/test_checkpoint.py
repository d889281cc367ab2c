"""Atomic checkpoint writes and safe loads."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from torch import nn

from micacl_layers.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_state_dict_checked,
    save_checkpoint,
)


def test_round_trip(tmp_path):
    path = save_checkpoint(
        {"w": torch.arange(3.0), "epoch": 4, "nested": {"a": [1, 2]}}, tmp_path / "sub" / "c.pt"
    )
    got = load_checkpoint(path)
    assert torch.equal(got["w"], torch.arange(3.0))
    assert got["epoch"] == 4 and got["nested"] == {"a": [1, 2]}
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["c.pt"]  # no temporary left


class Custom:
    """Any non-allow-listed class: unpickling it would run arbitrary code."""


def test_load_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"obj": Custom()}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)


def test_truncated_file_gives_a_clear_error(tmp_path):
    path = save_checkpoint({"w": torch.randn(1000)}, tmp_path / "c.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="could not load"):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")


def test_incompatible_state_dict_names_the_problem():
    with pytest.raises(CheckpointError, match="shape mismatches.*weight"):
        load_state_dict_checked(nn.Linear(2, 3), nn.Linear(2, 4).state_dict())
    with pytest.raises(CheckpointError, match="missing keys"):
        load_state_dict_checked(nn.Linear(2, 3), {"weight": torch.zeros(3, 2)})


def test_killed_writer_leaves_previous_checkpoint_loadable(tmp_path):
    target = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1, "w": torch.ones(4)}, target)
    # A child process keeps overwriting the checkpoint with a large payload; we SIGKILL it
    # while a temporary file is being written, i.e. in the middle of a save.
    script = textwrap.dedent(f"""
        import torch
        from micacl_layers.checkpoint import save_checkpoint
        big = torch.randn(40_000_000)
        epoch = 2
        while True:
            save_checkpoint({{"epoch": epoch, "w": big}}, {str(target)!r})
            epoch += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if any(p.name.endswith(".tmp") for p in tmp_path.iterdir()):
                break
            time.sleep(0.005)
        else:
            pytest.fail("the writer never started a save")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    got = load_checkpoint(target)
    assert got["epoch"] >= 1
    assert got["w"].numel() in (4, 40_000_000)
    if os.name == "posix":
        # The killed save's temporary (160 MB) was left behind for good; the next save removes it.
        assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
        save_checkpoint({"epoch": 0}, target)
        assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.skipif(os.name != "posix", reason="writers are checked with os.kill(pid, 0)")
def test_only_temporaries_of_gone_writers_are_removed(tmp_path):
    import socket

    host = socket.gethostname().replace(".", "_")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    names = {
        "stale": f".last.pt.{gone.pid}@{host}.0123456789abcdef.tmp",
        "live": f".last.pt.{os.getppid()}@{host}.0123456789abcdef.tmp",
        "other_host": f".last.pt.{gone.pid}@elsewhere.0123456789abcdef.tmp",
        "unknown": ".last.pt.partial.tmp",
        "other_file": f".best.pt.{gone.pid}@{host}.0123456789abcdef.tmp",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    save_checkpoint({"epoch": 1}, tmp_path / "last.pt")
    left = {p.name for p in tmp_path.iterdir()}
    assert names["stale"] not in left
    assert left == {"last.pt"} | {v for k, v in names.items() if k != "stale"}


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes and symbolic links")
def test_checkpoint_gets_a_plain_files_mode_and_writes_through_links(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    new = save_checkpoint({"epoch": 1}, tmp_path / "new.pt")
    # Was always 0o600 (mkstemp's): teammates could not read a run's checkpoints.
    assert stat.S_IMODE(new.stat().st_mode) == 0o666 & ~umask
    new.chmod(0o640)
    save_checkpoint({"epoch": 2}, new)
    assert stat.S_IMODE(new.stat().st_mode) == 0o640  # a replaced file keeps its mode
    # last.pt -> storage/last.pt: the link was replaced by a file, leaving storage's stale.
    (tmp_path / "storage").mkdir()
    real = tmp_path / "storage" / "last.pt"
    save_checkpoint({"epoch": 1}, real)
    link = tmp_path / "last.pt"
    link.symlink_to(real)
    save_checkpoint({"epoch": 2}, link)
    assert link.is_symlink() and load_checkpoint(real)["epoch"] == 2
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_a_link_into_a_missing_folder_is_named(tmp_path):
    # last.pt -> storage that is not there (not mounted): the error named a temporary file in
    # the missing folder, a path the caller never gave.
    link = tmp_path / "last.pt"
    link.symlink_to(tmp_path / "gone" / "last.pt")
    with pytest.raises(FileNotFoundError, match=r"last.pt' is a symbolic link to .*gone"):
        save_checkpoint({"epoch": 1}, link)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert link.is_symlink() and not (tmp_path / "gone").exists()


@pytest.mark.parametrize(
    ("value", "where", "kind"),
    [
        ({"war": np.float64(0.5)}, "obj['best']['war']", "numpy.float64"),
        ([1, np.arange(3)], "obj['best'][1]", "numpy.ndarray"),
        (
            np.random.get_state(),  # noqa: NPY002
            "obj['best'][1]",
            "numpy.ndarray",
        ),
        ({"dtype": np.dtype("f4")}, "obj['best']['dtype']", "numpy"),
        (frozenset([1]), "obj['best']", "frozenset"),
    ],
)
def test_save_refuses_what_load_cannot_read(tmp_path, value, where, kind):
    # numpy scalars and arrays were written, and the checkpoint then refused by load_checkpoint
    # (weights_only=True): a save that cannot be read back is lost data.
    target = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1}, target)
    with pytest.raises(TypeError, match=re.escape(where)) as info:
        save_checkpoint({"epoch": 2, "best": value}, target)
    assert kind in str(info.value) and "weights_only" in str(info.value)
    assert load_checkpoint(target) == {"epoch": 1}  # the previous checkpoint is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_save_accepts_everything_load_reads(tmp_path):
    from collections import Counter, OrderedDict

    obj = {
        "w": nn.Parameter(torch.ones(2)),
        "meta": (torch.Size([2, 3]), torch.float16, torch.device("cpu"), torch.strided),
        "plain": [None, True, 3, 2**80, 1.5, float("nan"), 1j, "s", b"b", bytearray(b"x")],
        "maps": OrderedDict(a=Counter("ab")),
        "keys": {0: {1, 2}, (1, "a"): []},
        "state": nn.Linear(2, 2).state_dict(),
    }
    obj["shared"] = [obj["plain"], obj["plain"]]  # a list reachable twice is walked once
    got = load_checkpoint(save_checkpoint(obj, tmp_path / "c.pt"))
    assert got["maps"] == obj["maps"] and got["keys"] == obj["keys"]
    assert got["meta"] == obj["meta"]


def test_save_accepts_types_registered_as_safe(tmp_path):
    with torch.serialization.safe_globals([np.dtype, type(np.dtype("f4"))]):
        path = save_checkpoint({"dtype": np.dtype("f4")}, tmp_path / "c.pt")
        assert load_checkpoint(path)["dtype"] == np.dtype("f4")


def test_a_file_where_the_folder_should_be_is_named(tmp_path):
    # mkdir's FileExistsError said the file "exists", as if the checkpoint itself did.
    blocker = tmp_path / "runs"
    blocker.write_bytes(b"not a folder")
    for path in (blocker / "last.pt", blocker / "fold1" / "last.pt"):
        with pytest.raises(NotADirectoryError, match=r"'.*runs' is a file, not a folder"):
            save_checkpoint({"epoch": 1}, path)
    assert blocker.read_bytes() == b"not a folder"


def test_an_empty_file_is_said_to_be_empty(tmp_path):
    # (A plain torch.save killed before writing, or a full disk.) The message ended in
    # "could not load checkpoint '...': " with no reason: torch's EOFError has no text.
    path = tmp_path / "last.pt"
    path.write_bytes(b"")
    with pytest.raises(
        CheckpointError,
        match=r"could not load checkpoint '.*last.pt': the file "
        r"is empty \(0 bytes\)",
    ):
        load_checkpoint(path)
