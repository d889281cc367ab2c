"""Two switches: the optional fast paths, and an opt-in check for NaN and inf.

Every layer and loss computes its equations in plain autograd (:mod:`micacl_layers.mccl`,
:mod:`micacl_layers.wian`). A few of them also have a hand-written fast path (private, in
``micacl_layers._fast``) that computes the same values with less time or memory. Which one
runs is decided here, by one setting:

- ``"auto"`` (the default): a fast path runs only where ``benchmarks/run.py`` measured that it
  pays, on that device and dtype, and only through public PyTorch operators. Today that is
  CPU float32 for :class:`~micacl_layers.WIAN`'s fused layer and MCCL's one-buffer contrastive
  core; everything else (CUDA, half precision, float64) runs the plain autograd path.
- ``"off"``: the plain autograd path everywhere; no custom ``autograd.Function`` runs.
- ``"on"``: every fast path wherever it applies, on any device, including the products through
  oneDNN's private linear kernel on CPU float32 (checked against the installed torch version,
  with the public product as the fallback) and MCCL's projected similarity path, which is faster
  but less accurate for ill-conditioned projections. For benchmarking and for users who have
  measured it on their own machine.

The setting starts from the environment variable ``MICACL_FAST_PATHS`` (read once, at import)
and can be changed with :func:`set_fast_paths` or, for a block, :func:`fast_paths`. Either way
the values agree to float32 rounding (``tests/test_fast_paths.py``); the docs page "Internals"
says which path runs where.

The second switch, :func:`set_check_finite` / :func:`check_finite` (environment variable
``MICACL_CHECK_FINITE=1``), works like ``torch.autograd.set_detect_anomaly``: while it is on,
every layer and loss checks that its floating-point inputs (features, logits, instance weights,
adjacencies) and its own parameters hold no NaN or inf, and raises a ``ValueError`` naming the
argument and the first bad index. It is **off** by default because the check reads a flag back
from the device (a synchronisation on CUDA) at every call; with it off, a NaN or inf in an
input propagates into the outputs (usually a NaN loss) as it would in plain torch.

Example:
    >>> from micacl_layers import config
    >>> with config.fast_paths("off"):  # plain autograd inside the block
    ...     config.get_fast_paths()
    'off'
    >>> with config.check_finite():
    ...     config.get_check_finite()
    True
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Literal

import torch

__all__ = [
    "CHECK_FINITE_ENV_VAR",
    "ENV_VAR",
    "FastPaths",
    "check_finite",
    "fast_paths",
    "get_check_finite",
    "get_fast_paths",
    "set_check_finite",
    "set_fast_paths",
]

FastPaths = Literal["auto", "on", "off"]
ENV_VAR = "MICACL_FAST_PATHS"
CHECK_FINITE_ENV_VAR = "MICACL_CHECK_FINITE"
_MODES = ("auto", "on", "off")

# (kernel, device type, dtype) that "auto" enables: each was measured to pay by
# benchmarks/run.py (fast vs plain path, side by side; see docs/benchmarks.md).
_MEASURED_TO_PAY = frozenset(
    {
        ("wian", "cpu", torch.float32),
        ("contrastive", "cpu", torch.float32),
    }
)
# Kernels that "auto" never enables: private torch operators, or less accurate than the formula.
_ONLY_WHEN_ON = frozenset({"onednn", "projected_contrastive"})


def _check_mode(mode: object, name: str) -> FastPaths:
    if mode not in _MODES:
        raise ValueError(f"`{name}` must be one of {_MODES}, got {mode!r}.")
    return mode  # type: ignore[return-value]


def _from_environment() -> FastPaths:
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    return _check_mode(value, ENV_VAR)


_mode: FastPaths = _from_environment()

_TRUE = ("1", "true", "on", "yes")
_FALSE = ("", "0", "false", "off", "no")


def _check_finite_from_environment() -> bool:
    value = os.environ.get(CHECK_FINITE_ENV_VAR, "").strip().lower()
    if value not in _TRUE + _FALSE:
        raise ValueError(
            f"`{CHECK_FINITE_ENV_VAR}` must be one of {_TRUE + _FALSE[1:]}, got {value!r}."
        )
    return value in _TRUE


_check_finite: bool = _check_finite_from_environment()


def get_fast_paths() -> FastPaths:
    """The current setting.

    Returns:
        ``"auto"``, ``"on"`` or ``"off"``.

    Example:
        >>> get_fast_paths() in ("auto", "on", "off")
        True
    """
    return _mode


def set_fast_paths(mode: FastPaths) -> None:
    """Set which paths run from now on (see the module docstring).

    Args:
        mode: ``"auto"``, ``"on"`` or ``"off"``.

    Raises:
        ValueError: For any other value.

    Example:
        >>> previous = get_fast_paths()
        >>> set_fast_paths("off")
        >>> get_fast_paths()
        'off'
        >>> set_fast_paths(previous)
    """
    global _mode
    _mode = _check_mode(mode, "mode")


@contextlib.contextmanager
def fast_paths(mode: FastPaths) -> Iterator[None]:
    """Context manager: :func:`set_fast_paths` for a block, the previous setting restored after.

    Args:
        mode: ``"auto"``, ``"on"`` or ``"off"``.

    Returns:
        A context manager; the setting applies inside its block.

    Example:
        >>> with fast_paths("off"):
        ...     get_fast_paths()
        'off'
    """
    global _mode
    previous = _mode
    set_fast_paths(mode)
    try:
        yield
    finally:
        _mode = previous


def _check_flag(enabled: object) -> bool:
    if not isinstance(enabled, bool):
        raise TypeError(f"`enabled` must be a bool, got {enabled!r}.")
    return enabled


def get_check_finite() -> bool:
    """Whether layers and losses check their inputs for NaN and inf (see the module docstring).

    Returns:
        ``True`` while the check is on.

    Example:
        >>> get_check_finite() in (True, False)
        True
    """
    return _check_finite


def set_check_finite(enabled: bool) -> None:
    """Turn the NaN/inf check of every layer and loss on or off from now on.

    Args:
        enabled: ``True`` to check. Off by default: the check synchronises with the device.

    Raises:
        TypeError: For anything but a bool.

    Example:
        >>> previous = get_check_finite()
        >>> set_check_finite(True)
        >>> import torch
        >>> from micacl_layers import IntensityAwareLoss
        >>> nan_logits = torch.tensor([[0.0, float("nan")]])
        >>> IntensityAwareLoss()(nan_logits, torch.tensor([0]))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        ValueError: `logits` holds nan at index (0, 1) (shape=(1, 2), dtype=torch.float32); ...
        >>> set_check_finite(previous)
    """
    global _check_finite
    _check_finite = _check_flag(enabled)


@contextlib.contextmanager
def check_finite(enabled: bool = True) -> Iterator[None]:
    """Context manager: :func:`set_check_finite` for a block, the previous setting restored after.

    Args:
        enabled: ``True`` (the default) to check inside the block.

    Returns:
        A context manager; the setting applies inside its block.

    Example:
        >>> with check_finite():
        ...     get_check_finite()
        True
    """
    global _check_finite
    previous = _check_finite
    set_check_finite(enabled)
    try:
        yield
    finally:
        _check_finite = previous


def _functorch_transform_active() -> bool:
    # Under torch.func.grad / jacrev / vmap an autograd.Function must define setup_context,
    # which the kernels do not: they step aside, as under torch.compile. torch has no public
    # query for an active transform; where this one is missing, none is taken to be active.
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return active is not None and bool(active())


def enabled(kernel: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the fast path ``kernel`` may run for tensors on ``device`` of ``dtype``.

    The setting is consulted here, and no kernel runs under ``torch.compile``,
    ``torch.jit.trace`` (the tracer fails on the kernels' in-place buffers and private
    operators; it records the plain path) or a ``torch.func`` transform; each kernel adds its
    own conditions (no double backward, ...).
    """
    if (
        _mode == "off"
        or torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or _functorch_transform_active()
    ):
        return False
    if _mode == "on":
        return True
    if kernel in _ONLY_WHEN_ON:
        return False
    return (kernel, device.type, dtype) in _MEASURED_TO_PAY
