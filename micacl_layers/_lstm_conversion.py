"""Copying a trained ``nn.LSTM`` / ``nn.LSTMCell`` into WIAN's first four gates (``from_lstm``)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
from torch import nn


def saturating_bias(dtype: torch.dtype) -> float:
    """A dynamic-gate bias ``b`` with ``sigmoid(b) == 1.0`` exactly in ``dtype``.

    The smallest integer that saturates on the CPU kernel (float32: 17, float64: 37, float16: 9,
    bfloat16: 7 with torch 2.14), plus 1 as a margin for other devices' ``sigmoid``.
    """
    for b in range(1, 100):
        if torch.sigmoid(torch.tensor(float(b), dtype=dtype)).item() == 1.0:
            return float(b + 1)
    raise ValueError(f"no bias saturates sigmoid in {dtype}")  # pragma: no cover


def check_lstm_like(name: str, module: object, kind: type[nn.Module]) -> nn.Module:
    if not isinstance(module, kind):
        raise TypeError(
            f"`{name}` must be a torch.nn.{kind.__name__}, got {type(module).__name__}."
        )
    if getattr(module, "proj_size", 0):
        raise ValueError(
            f"`{name}.proj_size` must be 0: WIAN has no projection of the hidden "
            f"state (nn.LSTM's proj_size), got proj_size={module.proj_size}."
        )
    return module


def _check_gate_bias(gate_bias: object, dtype: torch.dtype) -> float:
    # A NaN bias makes every output NaN; an infinite one lasts only until weight decay
    # computes inf - inf. (Anything float() takes, a NumPy number or a 0-d tensor, is a number.)
    value = math.nan
    if not isinstance(gate_bias, (bool, str)):
        with contextlib.suppress(TypeError, ValueError, RuntimeError, NotImplementedError):
            value = float(gate_bias)  # type: ignore[arg-type]
    if not math.isfinite(value):
        raise ValueError(f"`gate_bias` must be a finite number or None, got {gate_bias!r}.")
    largest = torch.finfo(dtype).max  # (beyond it, fill_ fails deep inside torch)
    if abs(value) > largest:
        raise ValueError(
            f"`gate_bias` must be a finite number or None, got {gate_bias!r} (beyond the "
            f"largest {dtype}, {largest:g})."
        )
    return value


def copy_lstm_gates(
    target: nn.Module,
    source: nn.Module,
    suffixes: Sequence[str],
    hidden: int,
    gate_bias: float | None,
) -> nn.Module:
    """Copy LSTM gates into the first ``4H`` rows; the dynamic gate: zero weights, ``gate_bias``.

    ``gate_bias=None`` takes :func:`saturating_bias` of the target's dtype. Returns ``target``,
    in ``source``'s training mode.

    ``target`` and ``source`` name their parameters ``weight_ih{suffix}`` etc. A source without
    biases gives zero gate biases (its output is unchanged: it adds nothing).
    """
    rows = 4 * hidden
    dtype = next(target.parameters()).dtype
    gate_bias = saturating_bias(dtype) if gate_bias is None else _check_gate_bias(gate_bias, dtype)
    with torch.no_grad():
        for suffix in suffixes:
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                dst = getattr(target, kind + suffix)
                src = getattr(source, kind + suffix, None)
                if src is None:
                    dst[:rows].zero_()
                else:
                    dst[:rows].copy_(src)
                # sigma(b_ih + b_hh + 0 x + 0 h) = sigma(gate_bias) == 1.0 exactly.
                dst[rows:].fill_(gate_bias if kind == "bias_ih" else 0.0)
    return target.train(source.training)


def refusing_lstm_checkpoints(convert: str):
    """A ``_load_from_state_dict`` that refuses ``nn.LSTM``/``nn.LSTMCell`` state dicts by name.

    Such a checkpoint has ``4H`` gate rows where WIAN has ``5H``; torch would report one bare
    size mismatch per tensor. ``convert`` is the call that turns the loaded LSTM into the module.
    Assigned in the class body, as ``__prepare_scriptable__`` is.
    """

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        hidden = self.hidden_size
        for name, param in self.named_parameters(recurse=False):
            saved = state_dict.get(prefix + name)
            if (
                isinstance(saved, torch.Tensor)
                and saved.dim() == param.dim()
                and saved.shape[0] == 4 * hidden
                and param.shape[0] == 5 * hidden
                and saved.shape[1:] == param.shape[1:]
            ):
                # load_state_dict raises with it, strict or not.
                error_msgs.append(
                    f"`state_dict['{prefix}{name}']` has {4 * hidden} rows, an LSTM's four "
                    f"gates of hidden_size={hidden}; {type(self).__name__} has {5 * hidden} (the "
                    f"fifth, its dynamic weight gate). This is an nn.LSTM checkpoint: load it "
                    f"into the LSTM it was saved from, then convert with `{convert}`."
                )
                return
        nn.Module._load_from_state_dict(
            self,
            state_dict,
            prefix,
            local_metadata,
            strict,
            missing_keys,
            unexpected_keys,
            error_msgs,
        )

    return _load_from_state_dict
