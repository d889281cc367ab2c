"""Checkpoints that survive crashes and load safely.

``save_checkpoint`` writes to a temporary file in the target's folder, flushes it to disk, then
renames it over the target (atomic on POSIX and Windows): a process killed mid-write leaves the
previous checkpoint intact, and its temporary is removed by the next save to the same path (a
temporary names its writer's process and host; one whose process is gone is stale). The rename is
made durable by syncing the folder too, where the system allows. The file gets the mode a plain
``torch.save`` would give it (the umask's for a new file, the old one's for a replaced file), and a
symbolic link is written through, not replaced. ``load_checkpoint`` always uses
``weights_only=True``, so a checkpoint can hold tensors, numbers, strings, lists, tuples and dicts,
but never runs pickled code. ``save_checkpoint`` refuses, before it writes anything, a value that
such a load would refuse (a numpy scalar or array, say), naming where it is: a checkpoint that
is written but cannot be read back would be lost.
"""

from __future__ import annotations

import glob
import os
import secrets
import socket
import stat
from collections import Counter, OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["CheckpointError", "load_checkpoint", "load_state_dict_checked", "save_checkpoint"]


class CheckpointError(RuntimeError):
    """A checkpoint could not be read, or does not fit the model it is loaded into."""


def save_checkpoint(obj: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Atomically write ``obj`` with ``torch.save``.

    Args:
        obj: What to save (tensors, state dicts, plain Python values).
        path: Target file; its folder is created if needed.

    Returns:
        The target path.

    Raises:
        TypeError: If ``obj`` is not a mapping or ``path`` not a path, or ``obj`` holds a value
            that ``load_checkpoint`` could not read back (a numpy scalar or array, any other
            class not allowed under ``weights_only=True``); nothing is written then.
        IsADirectoryError: If ``path`` is a directory or ends with a separator.
        NotADirectoryError: If a folder of ``path`` is a file.
        FileNotFoundError: If ``path`` is a symbolic link into a folder that does not exist.

    Example:
        >>> import tempfile, os
        >>> target = os.path.join(tempfile.mkdtemp(), "ckpt.pt")
        >>> _ = save_checkpoint({"epoch": 3}, target)
        >>> load_checkpoint(target)["epoch"]
        3
    """
    if not isinstance(obj, Mapping):
        raise TypeError(
            f"`obj` must be a mapping (e.g. a dict of state dicts and values), "
            f"got {type(obj).__name__}; wrap it, e.g. {{'data': obj}}."
        )
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a str or os.PathLike, got {type(path).__name__}.")
    # Path() drops a trailing separator: 'runs/last/' would become a file named 'last'.
    if os.fspath(path).endswith(("/", os.sep)):
        raise IsADirectoryError(
            f"checkpoint path '{os.fspath(path)}' names a folder (it ends with a separator); "
            f"pass a file in it, e.g. '{Path(path) / 'last.pt'}'"
        )
    _check_loadable(obj)
    path = Path(path)
    # mkdir's error for a file in the way says it "exists", as if the checkpoint did.
    for folder in (path.parent, *path.parent.parents):
        if folder.exists():
            if not folder.is_dir():
                raise NotADirectoryError(
                    f"checkpoint path '{path}': '{folder}' is a file, not a folder; move it, "
                    "or pass another path"
                )
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    # Through a symbolic link (last.pt -> a file on other storage), replace the file it points
    # to: replacing the link itself would leave the target stale.
    target = Path(os.path.realpath(path))
    if target.is_dir():
        raise IsADirectoryError(
            f"checkpoint path '{path}' is a directory; pass a file in it, e.g. '{path / 'last.pt'}'"
        )
    if not target.parent.is_dir():  # only through a link: path.parent was created above
        raise FileNotFoundError(
            f"checkpoint path '{path}' is a symbolic link to '{target}', whose folder does not "
            "exist; create it (or mount its storage), or remove the link"
        )
    _remove_stale_temporaries(target)
    tmp = os.path.join(target.parent, f".{target.name}.{_writer_tag()}.{secrets.token_hex(8)}.tmp")
    # os.open with 0o666 rather than mkstemp's 0o600: the checkpoint gets the mode any new
    # file gets under the umask (readable by the group on a shared cluster), as torch.save's.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(dict(obj), fh)
            fh.flush()
            os.fsync(fh.fileno())
        if target.is_file():  # an existing checkpoint keeps its mode, as an overwrite would
            os.chmod(tmp, stat.S_IMODE(target.stat().st_mode))
        os.replace(tmp, target)
        _sync_folder(target.parent)
    except BaseException:
        # Leave no half-written temporary behind; the previous checkpoint is untouched.
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


# What torch.load(weights_only=True) rebuilds, by exact type: a subclass (numpy.float64 is a
# float, an IntEnum an int) is pickled under its own class, which the load refuses.
_LEAVES = frozenset(
    {
        type(None),
        bool,
        int,
        float,
        complex,
        str,
        bytes,
        bytearray,
        torch.Size,
        torch.dtype,
        torch.device,
        torch.layout,
        torch.qscheme,
        torch.Tensor,
        nn.Parameter,
    }
)
_MAPPINGS = (dict, OrderedDict, Counter)
_SEQUENCES = (list, tuple, set)


def _check_loadable(obj: Mapping[str, Any]) -> None:
    """Raise ``TypeError`` naming the first value of ``obj`` that ``load_checkpoint`` would refuse.

    Types registered with ``torch.serialization.add_safe_globals`` (or inside ``safe_globals``)
    are accepted as they are, since the load accepts them too.
    """
    registered = {
        g[0] if isinstance(g, tuple) else g for g in torch.serialization.get_safe_globals()
    }
    seen: set[int] = set()  # containers reachable twice (shared lists) are walked once

    def walk(value: Any, where: str) -> None:
        kind = type(value)
        if kind in _LEAVES or kind in registered:
            return
        if kind in _MAPPINGS or kind in _SEQUENCES:
            if id(value) in seen:
                return
            seen.add(id(value))
            if kind in _MAPPINGS:
                for key, item in value.items():
                    walk(key, f"a key of {where}")
                    walk(item, f"{where}[{key!r}]")
                # A state dict's OrderedDict carries `_metadata` (module versions) along.
                for name, item in vars(value).items() if kind is OrderedDict else ():
                    walk(item, f"{where}.{name}")
            else:
                for i, item in enumerate(value):
                    walk(item, f"{where}[{i}]" if kind is not set else f"an element of {where}")
            return
        name = (
            kind.__qualname__
            if kind.__module__ == "builtins"
            else f"{kind.__module__}.{kind.__qualname__}"
        )
        raise TypeError(
            f"save_checkpoint: {where} is a {name}, which load_checkpoint (torch.load with "
            "weights_only=True) cannot read back, so nothing was written. Store tensors and "
            "plain Python values (a numpy scalar: x.item(); a numpy array: torch.from_numpy(x)), "
            "or register the type with torch.serialization.add_safe_globals."
        )

    for key, item in obj.items():
        walk(key, "a key of obj")
        walk(item, f"obj[{key!r}]")


def _host() -> str:
    # Dots would make a temporary's tag ambiguous to parse back; a host name may hold them.
    return socket.gethostname().replace(".", "_")


def _writer_tag() -> str:
    return f"{os.getpid()}@{_host()}"


def _remove_stale_temporaries(target: Path) -> None:
    """Delete the temporaries of earlier saves to ``target`` whose writer no longer runs.

    A save killed with SIGKILL (a preempted cluster job) cannot clean up, and each temporary is
    a whole checkpoint. Only this host's writers can be checked, and only on POSIX (on Windows
    ``os.kill(pid, 0)`` would signal the process): a temporary of a live process, of another
    host or of an unknown name is left alone, so a concurrent save is never disturbed.
    """
    if os.name != "posix":
        return
    host = _host()
    for tmp in glob.glob(
        os.path.join(glob.escape(str(target.parent)), f".{glob.escape(target.name)}.*.tmp")
    ):
        tag = os.path.basename(tmp)[len(target.name) + 2 : -len(".tmp")].split(".")[0]
        pid, _, tmp_host = tag.partition("@")
        if tmp_host != host or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            Path(tmp).unlink(missing_ok=True)
        except OSError:  # alive under another user (EPERM): not ours to delete
            continue


def _sync_folder(folder: Path) -> None:
    # After a power loss the rename may be lost unless the folder's entry is on disk too.
    # Windows cannot open a folder, and some file systems refuse to sync one: both are fine.
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike, *, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)``.

    Args:
        path: Checkpoint file.
        map_location: Passed to ``torch.load``.

    Returns:
        The saved dictionary.

    Raises:
        TypeError: ``path`` is not a path.
        FileNotFoundError: ``path`` does not exist.
        IsADirectoryError: ``path`` is a directory.
        CheckpointError: the file is truncated, corrupt, or holds objects that are not allowed
            under ``weights_only=True``.

    Example:
        >>> import tempfile, os
        >>> target = os.path.join(tempfile.mkdtemp(), "w.pt")
        >>> _ = save_checkpoint({"w": torch.ones(2)}, target)
        >>> load_checkpoint(target)["w"]
        tensor([1., 1.])
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a str or os.PathLike, got {type(path).__name__}.")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"checkpoint '{path}' is a directory; pass the checkpoint file in it (e.g. "
            f"'{path / 'last.pt'}')."
        )
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist.")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        # (torch's error for an empty file, an EOFError, has no text of its own.)
        reason = (
            "the file is empty (0 bytes)"
            if path.stat().st_size == 0
            else str(err) or type(err).__name__
        )
        raise CheckpointError(f"could not load checkpoint '{path}': {reason}") from err
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint '{path}' holds a {type(obj).__name__}, expected a dict.")
    return obj


def load_state_dict_checked(
    module: nn.Module, state: Mapping[str, Any], *, source: str = "checkpoint"
) -> None:
    """``module.load_state_dict(state)`` with an error that lists what does not fit.

    Args:
        module: The module to load into.
        state: Its state dict.
        source: Where the state comes from, for the message.

    Raises:
        CheckpointError: keys are missing or unexpected, a value that must be a tensor is not
            one, or a tensor's shape differs.

    Example:
        >>> load_state_dict_checked(nn.Linear(2, 3), nn.Linear(2, 3).state_dict())
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"`module` must be an nn.Module, got {type(module).__name__}.")
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"{source} holds a {type(state).__name__} where a state dict "
            f"(a mapping of names to tensors) was expected."
        )
    own = module.state_dict()
    not_tensors = sorted(
        f"{k}: {type(state[k]).__name__}"
        for k in own
        if k in state
        and isinstance(own[k], torch.Tensor)
        and not isinstance(state[k], torch.Tensor)
    )
    if not_tensors:
        raise CheckpointError(
            f"{source} does not fit {type(module).__name__}: these entries "
            f"must be tensors but are not: {not_tensors[:8]}."
        )
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k}: {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state
        and hasattr(state[k], "shape")
        and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{source} does not fit {type(module).__name__}: "
            f"missing keys {missing[:8]}, unexpected keys {unexpected[:8]}, "
            f"shape mismatches {mismatched[:8]}. Was it saved from a model with other options?"
        )
    module.load_state_dict(state)
