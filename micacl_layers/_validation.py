"""Input checks shared by every public layer and loss.

Each check raises before any tensor arithmetic, with a message that names the argument, what it
got (shape and dtype) and what was expected, so a wrong call never surfaces as a NaN or as an
error from deep inside torch.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import TypeGuard

import torch
from torch import nn

from micacl_layers import config

__all__ = [
    "call_named",
    "check_bool",
    "check_class_counts",
    "check_device",
    "check_device_of",
    "check_finite",
    "check_finite_parameters",
    "check_floating",
    "check_generator",
    "check_ignore_index",
    "check_index_dtype",
    "check_logits_targets",
    "check_ndim",
    "check_parameter_dtype",
    "check_positive_int",
    "check_same_batch",
    "check_same_device",
    "check_targets",
    "describe",
    "has_values",
    "integer_value",
    "is_real",
    "no_autocast",
    "to_parameter_dtype",
    "values_on_cpu",
    "warn_at_caller",
]


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep


def warn_at_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` reported at the first frame outside this package and torch.

    A fixed ``stacklevel`` is right for one call path only: the same check runs from a
    constructor, from ``from_preset`` and from a ``forward`` behind ``nn.Module.__call__``.
    """
    frame, level = sys._getframe(1), 2
    while frame.f_back is not None and frame.f_code.co_filename.startswith(
        (_PACKAGE_DIR, _TORCH_DIR)
    ):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def describe(t: object) -> str:
    """A short ``shape=(..), dtype=..`` description of a tensor (or the type of anything else)."""
    if isinstance(t, torch.Tensor):
        return f"shape={tuple(t.shape)}, dtype={t.dtype}"
    return f"a {type(t).__name__}"


def has_values(t: torch.Tensor) -> bool:
    """Whether ``t`` holds data that can be read (not a ``meta`` tensor, which has shapes only).

    Checks of values (ranges, NaN) are skipped on ``meta``, where only shapes are checked.
    """
    return not t.is_meta


def no_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """``torch.autocast(device_type, enabled=False)``, or nothing where autocast does not exist.

    ``torch.autocast`` raises for a device type without autocast support (``meta``).
    """
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def to_parameter_dtype(x: torch.Tensor, parameter: torch.Tensor | None) -> torch.Tensor:
    """``x`` cast to the floating dtype of ``parameter``, as ``torch.autocast`` would cast it.

    Mixed dtypes (features of float16/bfloat16 leaving an autocast region, float64 data) then
    meet float32 parameters without torch's "must have the same dtype" errors. Under an active
    autocast of ``x``'s device the cast is left to autocast.
    """
    if (
        parameter is None
        or x.dtype == parameter.dtype
        or not parameter.is_floating_point()
        or torch.is_autocast_enabled(x.device.type)
    ):
        return x
    return x.to(parameter.dtype)


def check_finite(name: str, t: torch.Tensor | None) -> None:
    """With :func:`micacl_layers.config.check_finite` on: no NaN or inf in ``t``.

    Raises a ``ValueError`` naming the argument, the first bad index and its value. Off by
    default (the check synchronises with the device); integer tensors and ``meta`` tensors
    always pass.
    """
    if (
        not config.get_check_finite()
        or t is None
        or not isinstance(t, torch.Tensor)
        or not (t.is_floating_point() or t.is_complex())
        or not has_values(t)
    ):
        return
    bad = ~torch.isfinite(t.detach())
    if not bool(bad.any()):
        return
    index = tuple(int(i) for i in torch.nonzero(bad)[0])
    value = t.detach()[index].item()
    raise ValueError(
        f"`{name}` holds {value} at index {index} ({describe(t)}); every value must be finite "
        f"(micacl_layers.config.check_finite is on)."
    )


def check_finite_parameters(module: nn.Module) -> None:
    """:func:`check_finite` on every parameter of ``module`` (named ``Class.parameter``)."""
    if not config.get_check_finite():
        return
    for name, parameter in module.named_parameters():
        check_finite(f"{type(module).__name__}.{name}", parameter)


def torchscript_unsupported(module: nn.Module) -> nn.Module:
    """``__prepare_scriptable__`` of our Modules: TorchScript is not supported, say so clearly."""
    raise RuntimeError(
        f"{type(module).__name__} does not support TorchScript (torch.jit.script cannot compile "
        f"its Python control flow and keyword-only options); torch.compile is the supported "
        f"compiler: `torch.compile(module)`."
    )


def check_tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}.")
    return t


def check_floating(name: str, t: object) -> torch.Tensor:
    """A floating-point tensor (and, with the NaN/inf check on, a finite one)."""
    t = check_tensor(name, t)
    if not t.is_floating_point():
        raise TypeError(
            f"`{name}` must be a floating-point tensor, got {describe(t)}; cast it with `.float()`."
        )
    check_finite(name, t)
    return t


def _check_on_device(name: str, t: torch.Tensor, device: torch.device, where: str) -> None:
    if t.device != device:
        raise ValueError(
            f"`{name}` must be on the device of {where} ({device}), got {describe(t)} on "
            f"{t.device}; move it with `.to({str(device)!r})`."
        )


def check_device(name: str, t: torch.Tensor, device: torch.device, owner: str) -> None:
    """``t`` on ``device``, where ``owner``'s parameters are.

    Torch's own errors for a tensor on another device come from deep inside an operator
    (or, for a ``meta`` tensor, as a ``NotImplementedError`` about copying); this one names the
    argument and both devices.
    """
    _check_on_device(name, t, device, f"the {owner}'s parameters")


def check_device_of(name: str, t: torch.Tensor, other: str, device: torch.device) -> None:
    """``t`` on ``device``, where the argument ``other`` is (for functions without parameters).

    Torch mixes a ``meta`` operand into a CPU result that holds no real values, or fails inside
    an operator; this names the argument and both devices.
    """
    _check_on_device(name, t, device, f"`{other}`")


def check_ndim(name: str, t: torch.Tensor, ndims: int | Sequence[int], layout: str) -> None:
    allowed = (ndims,) if isinstance(ndims, int) else tuple(ndims)
    if t.dim() not in allowed:
        raise ValueError(f"`{name}` must have shape {layout}, got {describe(t)}.")


def check_size(name: str, t: torch.Tensor, dim: int, expected: int, layout: str) -> None:
    if t.shape[dim] != expected:
        raise ValueError(
            f"`{name}` must have shape {layout} with size {expected} at dim {dim}, "
            f"got {describe(t)}."
        )


def check_same_batch(**tensors: torch.Tensor) -> None:
    """All named tensors must agree in their first (batch) dimension."""
    # int(): under torch.jit.trace the sizes are traced tensors, which a set never merges.
    sizes = {name: int(t.shape[0]) for name, t in tensors.items()}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"`{n}` has {s}" for n, s in sizes.items())
        raise ValueError(f"batch sizes differ: {listed}; they must be equal.")


def check_same_device(**tensors: torch.Tensor) -> None:
    """All named tensors on one device.

    torch's own error for a mix ("Tensor on device meta is not on the expected device cpu!", or
    "Cannot copy out of meta tensor") comes from inside an operator and names no argument.
    """
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"`{n}` ({describe(t)}) is on {t.device}" for n, t in tensors.items())
        raise ValueError(f"{listed}; they must be on one device.")


def check_index_dtype(name: str, t: torch.Tensor) -> None:
    """``t`` of an integer dtype, as class indices are: a ``TypeError`` otherwise.

    Shared by the losses and the metrics, so that one mistake (float or bool labels) is one
    exception type and one message wherever the labels go.
    """
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(
            f"`{name}` must hold integer class indices (any integer dtype, e.g. torch.int64), "
            f"got {describe(t)}."
        )


def check_targets(
    name: str, targets: object, num_classes: int | None = None, *, ignore_index: int | None = None
) -> torch.Tensor:
    """Integer class indices of shape ``(B,)`` inside ``[0, num_classes)``, returned as int64.

    Any integer dtype is accepted (int8 to int64, uint8) and converted to int64 after the
    checks; bool (a mask, not indices), floating and complex tensors are a ``TypeError``.
    ``num_classes=None`` checks the dtype and shape only (labels of a contrastive loss).
    """
    targets = check_tensor(name, targets)
    check_index_dtype(name, targets)
    check_ndim(name, targets, 1, "(B,)")
    # From 2**63 on a uint64 index wraps to a negative int64 (read as ignored, or as -2**63).
    if (
        targets.dtype == torch.uint64
        and has_values(targets)
        and bool((targets.view(torch.int64) < 0).any())
    ):
        raise ValueError(
            f"`{name}` must be class indices, got a value of 2**63 or more ({describe(targets)})."
        )
    targets = targets.long()
    if num_classes is None or not targets.numel() or not has_values(targets):
        return targets
    bad = (targets < 0) | (targets >= num_classes)
    if ignore_index is not None:
        bad &= targets != ignore_index
    if bool(bad.any()):  # one read-back from the device, only the error path reads more
        valid = targets if ignore_index is None else targets[targets != ignore_index]
        lo, hi = int(valid.min()), int(valid.max())
        extra = "" if ignore_index is None else f" (or ignore_index={ignore_index})"
        raise ValueError(
            f"`{name}` must lie in [0, {num_classes - 1}]{extra}, got values in [{lo}, {hi}]."
        )
    return targets


def check_logits_targets(
    logits: object, targets: object, *, ignore_index: int | None = None, min_classes: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits`` ``(B, K)`` floating and ``targets`` ``(B,)`` integer in range."""
    if ignore_index is not None:
        ignore_index = check_ignore_index(ignore_index)
    logits = check_floating("logits", logits)
    check_ndim("logits", logits, 2, "(B, K)")
    if logits.shape[1] < min_classes:
        raise ValueError(
            f"`logits` must have at least {min_classes} classes (B, K>={min_classes}), "
            f"got {describe(logits)}."
        )
    targets = check_tensor("targets", targets)
    check_same_device(logits=logits, targets=targets)
    targets = check_targets("targets", targets, logits.shape[1], ignore_index=ignore_index)
    check_same_batch(logits=logits, targets=targets)
    return logits, targets


def check_padding_mask(
    mask: object, batch: int, num_instances: int, name: str = "padding_mask"
) -> torch.Tensor:
    """Check a bool ``(B, T)`` padding mask.

    ``TypeError`` for anything but a bool tensor, ``ValueError`` for a wrong shape.
    """
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = describe(mask) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"`{name}` must be a bool tensor of shape (B, T), got {got}.")
    if tuple(mask.shape) != (batch, num_instances):
        raise ValueError(
            f"`{name}` must have shape (B, T)=({batch}, {num_instances}), got {describe(mask)}."
        )
    return mask


def check_some_real_instance(mask: torch.Tensor, name: str = "padding_mask") -> torch.Tensor:
    """A checked padding mask must leave every sample at least one real (unpadded) instance.

    A sample with every instance padded has nothing to attend to or pool: NaN downstream.
    """
    if has_values(mask) and mask.numel() and bool(mask.all(dim=1).any()):
        raise ValueError(
            f"`{name}` marks every instance of some sample as padded; "
            f"each sample needs at least one real instance."
        )
    return mask


def integer_value(value: object) -> int | None:
    """``value`` as an ``int`` where it is one: an int, a NumPy integer or a 0-d integer tensor.

    ``None`` for anything else: a bool (or bool tensor), a float, a tensor of more than one
    dimension, of a floating dtype or without values (meta).
    """
    if isinstance(value, torch.Tensor):
        real = not (value.is_floating_point() or value.is_complex())
        if value.dim() == 0 and real and value.dtype != torch.bool and has_values(value):
            return int(value.item())
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return None


def check_positive_int(name: str, value: object, *, type_error: bool = False) -> int:
    """A positive integer, returned as ``int``: an int, a NumPy integer or a 0-d integer tensor.

    A bool (or bool tensor), a float, a tensor of more than one dimension or of a floating
    dtype, or one without values (meta) is not an integer. Raises ``ValueError``; with
    ``type_error=True`` a value that is no integer at all raises ``TypeError`` instead, as the
    frame samplers always have.
    """
    number = integer_value(value)
    if number is None or number < 1:
        error = TypeError if number is None and type_error else ValueError
        raise error(f"`{name}` must be a positive int, got {value!r}.")
    return number


def values_on_cpu(value: object) -> contextlib.AbstractContextManager:
    """Where a list of numbers becomes a tensor: on the CPU, even in a ``torch.device`` block.

    Inside ``with torch.device("meta")`` a list would become a meta tensor and lose its values
    (which ``reset_parameters`` restores after ``to_empty()``); a tensor keeps its device.
    """
    return contextlib.nullcontext() if isinstance(value, torch.Tensor) else torch.device("cpu")


def call_named(
    name: str, fn: Callable[[torch.Tensor], object], x: torch.Tensor, hint: str
) -> object:
    """``fn(x)`` for the caller's callable ``name``: a failure inside it names ``name``.

    torch's own message (say, "shapes cannot be multiplied") does not say whose callable failed.
    Running out of memory is not the caller's mistake and passes through unchanged.
    """
    try:
        return fn(x)
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as err:
        raise ValueError(f"`{name}` failed on its input ({describe(x)}); {hint}: {err}") from err


def is_real(value: object) -> TypeGuard[float]:
    """A real number of Python, NumPy (``np.float32(0.1)``) or the like; a bool is not one."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_bool(name: str, value: object) -> bool:
    """A switch: a ``bool`` (``0``, ``"no"`` or ``None`` would silently mean something)."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool, got {value!r}.")
    return value


def check_unit_interval(name: str, value: object) -> float:
    """A real number in ``[0, 1]`` (a probability: dropout, label smoothing), as a ``float``.

    ``nn.Dropout`` takes ``True`` or NaN as a probability; ``F.cross_entropy`` fails inside
    its kernel on a string. This names the argument instead.
    """
    # Compared before float(): an int too large for a float would raise OverflowError there.
    if not is_real(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"`{name}` must be a number in [0, 1], got {value!r}.")
    return float(value)


def check_generator(
    value: object, *, cpu: bool = False, owner: str | None = None
) -> torch.Generator | None:
    """A random generator, or ``None`` (``cpu``: on the CPU, where the data pipeline draws).

    A wrong object would otherwise be kept and fail inside ``torch.rand`` at its first use,
    with torch's list of overloads. ``owner``, when given, starts the message (a data set's
    name, as its other option errors do).
    """
    if value is not None and not (
        isinstance(value, torch.Generator) and (not cpu or value.device.type == "cpu")
    ):
        got = value.device if isinstance(value, torch.Generator) else repr(value)
        kind = "a CPU torch.Generator" if cpu else "a torch.Generator"
        prefix = f"{owner}: " if owner else ""
        raise TypeError(
            f"{prefix}`generator` must be {kind} or None, got {got}; seed one with "
            f"`torch.Generator().manual_seed(seed)`."
        )
    return value


def check_parameter_dtype(
    dtype: object, *, of: str = "the parameters", complex_ok: bool = True
) -> torch.dtype | None:
    """A Module's ``dtype`` (of ``of``): floating (or, ``complex_ok``, complex, as torch allows).

    Torch's own error for an integer dtype comes from inside ``nn.Parameter`` and names no
    argument; a buffer of an integer dtype would silently truncate what it stores.
    """
    if dtype is None or (
        isinstance(dtype, torch.dtype)
        and (dtype.is_floating_point or (complex_ok and dtype.is_complex))
    ):
        return dtype
    raise TypeError(f"`dtype` (of {of}) must be a floating torch.dtype or None, got {dtype!r}.")


def check_ignore_index(value: object) -> int:
    """The target value to ignore: an int (e.g. -100), returned as ``int``; a bool is not one."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"`ignore_index` must be an int (the target value to ignore, e.g. -100), got {value!r}."
        )
    return int(value)


def check_nonnegative_float(name: str, value: object) -> float:
    """A finite number >= 0 (a weight, a noise level), returned as ``float``; bool is rejected."""
    if not is_real(value) or not 0 <= value < math.inf:
        raise ValueError(f"`{name}` must be >= 0 (finite), got {value!r}.")
    return float(value)


def check_class_counts(class_counts: object, num_classes: int) -> torch.Tensor:
    """Per-class sample counts: ``num_classes`` finite, strictly positive numbers, float64.

    Only the ratios between classes matter, so frequencies or ratios are accepted too: counts
    that are not all whole numbers are rescaled so that the smallest is 1 (whole counts are
    returned as they are), which keeps the losses' "a count of 0 counts as 1" guards inert.
    Counts (after that rescaling) must be at most 2**53, where float64 stops holding every whole
    number; bools and complex numbers are not counts. On ``meta`` only the shape is checked.
    """
    counts = _counts_tensor(class_counts)
    if counts.dim() != 1 or counts.numel() != num_classes:
        raise ValueError(
            f"`class_counts` must have shape ({num_classes},) (one count per class), "
            f"got shape={tuple(counts.shape)}."
        )
    if not has_values(counts):  # meta: shapes only
        return counts
    if not bool(torch.isfinite(counts).all()) or bool((counts <= 0).any()):
        raise ValueError(
            f"`class_counts` must be finite and > 0 for every class, got {counts.tolist()}; "
            f"a class with no samples cannot be weighted by 1/n_c."
        )
    if not bool((counts == counts.round()).all()):
        counts = counts / counts.min()
    # Beyond 2**53 a count is no longer a whole float64 and its int64 buffer overflows (to a
    # negative count); frequencies this unequal rescale to such counts, or to inf.
    if bool((counts > _MAX_COUNT).any()):
        raise ValueError(
            f"`class_counts` must be at most 2**53 (and, as frequencies, the largest at most "
            f"2**53 times the smallest), got {counts.tolist()}."
        )
    return counts


_MAX_COUNT = 2.0**53


def _counts_tensor(class_counts: object) -> torch.Tensor:
    """``class_counts`` as a float64 tensor; bools (a mask) and complex values are rejected."""
    if isinstance(class_counts, (str, bytes)) or class_counts is None:
        raise TypeError(
            f"`class_counts` must be a sequence of numbers or a tensor, got {class_counts!r}."
        )
    try:
        # A tensor's or an array's dtype says what it holds; a list is converted as it is.
        # (A tensor is not passed through as_tensor, which takes the device of a `with
        # torch.device(...)` block or set_default_device: it would copy meta counts, and fail,
        # or move counts off the device they were given on.)
        if isinstance(class_counts, torch.Tensor):
            raw: torch.Tensor | None = class_counts
        else:
            raw = torch.as_tensor(class_counts) if hasattr(class_counts, "dtype") else None
        if raw is not None and (raw.dtype == torch.bool or raw.is_complex()):
            got = describe(raw)
        elif isinstance(class_counts, Sequence) and any(isinstance(c, bool) for c in class_counts):
            got = repr(class_counts)
        else:
            if raw is not None:
                return raw.to(torch.float64)
            return torch.as_tensor(class_counts, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            f"`class_counts` must be a sequence of numbers or a tensor, "
            f"got {class_counts!r} ({err})."
        ) from None
    raise TypeError(f"`class_counts` must hold real numbers (samples per class), got {got}.")


def check_features_logits(
    features: object,
    logits: object,
    targets: object,
    *,
    feature_dim: int | None = None,
    num_classes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check one batch's clip features ``(B, D)``, logits ``(B, K)`` and targets ``(B,)``.

    ``feature_dim`` and ``num_classes``, where given, are the sizes a Module was built for.
    """
    features = check_floating("features", features)
    check_ndim("features", features, 2, "(B, D)")
    if feature_dim is not None and features.shape[1] != feature_dim:
        raise ValueError(
            f"`features` must have shape (B, D) with D={feature_dim} "
            f"(feature_dim), got {describe(features)}."
        )
    if num_classes is not None:
        logits = check_floating("logits", logits)
        # K first: with too few logit columns the targets would look out of range instead.
        if logits.dim() != 2 or logits.shape[1] != num_classes:
            raise ValueError(
                f"`logits` must have shape (B, K) with K={num_classes} "
                f"(num_classes), got {describe(logits)}."
            )
    logits, targets = check_logits_targets(logits, targets)
    check_same_device(features=features, logits=logits)
    check_same_batch(features=features, logits=logits, targets=targets)
    return features, logits, targets
