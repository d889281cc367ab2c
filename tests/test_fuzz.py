"""Property-based fuzzing of the public API with bad and edge inputs (issue 14).

Every exported Module and function of ``micacl_layers`` and ``micacl_layers.functional`` is an
*entry*: a valid call, and the role of each argument. A *mutation* changes one argument (or,
for ``meta``, the device of all of them) into one of the issue's families crossed with dtypes:

- legal ones, which must work and agree with the unmutated call: another integer dtype for
  the targets, another floating dtype for a float input (computed in the parameters' dtype),
  a power-of-two scale of a scale-free input (cosine similarities), the ``meta`` device
  (shapes only) and, where there is one, CUDA;
- bad ones, which must raise *our* error: a ``TypeError``/``ValueError`` raised from inside
  ``micacl_layers`` (not from torch) whose message names an argument in backticks: NaN/inf
  with ``config.check_finite`` on, integer or non-tensor features, a dropped or widened
  dimension, bool/float/out-of-range/short/2-D targets, fully padded or malformed masks.

With the NaN check off a NaN input may propagate (documented), but must not end in a
torch-internal error either. Valid calls (base and legal mutations) must give finite outputs:
no silent NaN. ``test_every_entry_and_mutation`` runs every pair once; the hypothesis test
draws pairs with random data, batch sizes and check settings.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import traceback
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import micacl_layers
from micacl_layers import (
    GEIIM,
    WIAN,
    ClassificationEnhancementTerm,
    InstanceSelfAttention,
    InstanceWeights,
    IntensityAwareLoss,
    LogitAdjustedLoss,
    MCCLOptions,
    MCCLoss,
    MICACLLoss,
    WIANCell,
    config,
    functional,
)
from micacl_layers.checkpoint import CheckpointError
from micacl_layers.memory import ContrastMemory
from micacl_layers.metrics import ConfusionMatrix, confusion_matrix
from micacl_layers.models import MICACLHead

K, D, T = 3, 8, 4
COUNTS = [5.0, 3.0, 2.0]
PACKAGE_DIR = os.path.dirname(micacl_layers.__file__)


@dataclasses.dataclass
class Case:
    """One valid call: ``call(args, device)`` and what each argument is.

    roles: argument -> ``"float"`` (every size fixed), ``"float_free"`` (last size free),
    ``"float_broadcast"`` (broadcast against the others: fewer dimensions are legal),
    ``"targets"``, ``"mask"`` or ``"mask_any_batch"``. ``num_classes`` bounds the targets
    (``None``: any label); ``negative_ok``: negative targets are legal (ignored or free labels);
    ``batch_free``: arguments whose batch size is free.
    """

    call: Callable[[dict[str, Any], torch.device], Any]
    args: dict[str, Any]
    roles: dict[str, str]
    num_classes: int | None = K
    negative_ok: bool = False
    scale_free: tuple[str, ...] = ()
    deterministic: bool = True
    meta: bool = True
    dtype_mix: tuple[str, ...] | None = None  # float args that may have another dtype (None: all)
    nan_checked: tuple[str, ...] | None = None  # float args checked for NaN (None: all)
    all_padded_ok: bool = False
    batch_free: tuple[str, ...] = ()


def _module(factory, device):
    torch.manual_seed(0)
    return factory(device)


def _seeded(fn):
    def call(args, device):
        torch.manual_seed(1)
        return fn(args, device)

    return call


def _targets(g, b):
    return torch.randint(0, K, (b,), generator=g)


def _mask(g, b):
    mask = torch.rand(b, T, generator=g) < 0.4
    mask[:, 0] = False  # every clip keeps a real instance
    return mask


# ---- the entries ---------------------------------------------------------------------------


def _mccl_module(g, b):
    return Case(
        lambda a, dev: _module(lambda d: MCCLoss(K, D, COUNTS, projection_dim=4, device=d), dev)(
            a["features"], a["logits"], a["targets"]
        ),
        {
            "features": torch.randn(b, D, generator=g),
            "logits": torch.randn(b, K, generator=g),
            "targets": _targets(g, b),
        },
        {"features": "float", "logits": "float", "targets": "targets"},
    )


def _mccl_identity(g, b):
    case = _mccl_module(g, b)
    case.call = lambda a, dev: _module(
        lambda d: MCCLoss(K, D, COUNTS, projection_dim=None, scales=(1, 2), device=d), dev
    )(a["features"], a["logits"], a["targets"])
    case.scale_free = ("features",)
    return case


def _mccl_functional(g, b):
    case = _mccl_module(g, b)
    case.call = lambda a, dev: functional.mccl_loss(
        a["features"], a["logits"], a["targets"], COUNTS, scales=(1, 2)
    )
    case.scale_free = ("features",)
    case.roles["features"] = "float_free"  # no projections: any D
    return case


def _scpa(g, b):
    return Case(
        lambda a, dev: functional.supervised_contrastive_per_anchor(
            a["z"], a["targets"], 0.1, memory_z=a["memory_z"], memory_targets=a["memory_targets"]
        ),
        {
            "z": torch.randn(b, D, generator=g),
            "targets": _targets(g, b),
            "memory_z": torch.randn(3, D, generator=g),
            "memory_targets": _targets(g, 3),
        },
        {"z": "float_free", "targets": "targets", "memory_z": "float", "memory_targets": "targets"},
        num_classes=None,
        negative_ok=True,
        scale_free=("z", "memory_z"),
    )


def _weights(g, b):
    return Case(
        lambda a, dev: functional.category_aware_weights(
            a["logits"], a["targets"], torch.tensor(COUNTS, device=dev)
        ),
        {"logits": torch.randn(b, K, generator=g), "targets": _targets(g, b)},
        {"logits": "float", "targets": "targets"},
    )


def _temperature(g, b):
    return Case(
        lambda a, dev: functional.adaptive_temperature(
            torch.tensor(COUNTS, device=dev), 0.1, mode="batch_mean", targets=a["targets"]
        ),
        {"targets": _targets(g, b)},
        {"targets": "targets"},
        batch_free=("targets",),
    )


def _pool(g, b):
    return Case(
        lambda a, dev: functional.pool_features(a["features"], 2),
        {"features": torch.randn(b, D, generator=g)},
        {"features": "float_free"},
        num_classes=None,
    )


def _ial(g, b):
    return Case(
        lambda a, dev: IntensityAwareLoss()(a["logits"], a["targets"]),
        {"logits": torch.randn(b, K, generator=g), "targets": _targets(g, b)},
        {"logits": "float_free", "targets": "targets"},
    )  # any K >= 2


def _ial_functional(g, b):
    case = _ial(g, b)
    case.call = lambda a, dev: functional.intensity_aware_loss(
        a["logits"], a["targets"], reduction="none"
    )
    return case


def _logit_adjusted(g, b):
    return Case(
        lambda a, dev: _module(lambda d: LogitAdjustedLoss(COUNTS).to(d), dev)(
            a["logits"], a["targets"]
        ),
        {"logits": torch.randn(b, K, generator=g), "targets": _targets(g, b)},
        {"logits": "float", "targets": "targets"},
    )


def _logit_adjusted_functional(g, b):
    case = _logit_adjusted(g, b)
    case.call = lambda a, dev: functional.logit_adjusted_cross_entropy(
        a["logits"], a["targets"], COUNTS, tau=0.5, reduction="none"
    )
    return case


def _logit_adjusted_balanced(g, b):
    case = _logit_adjusted(g, b)
    case.call = lambda a, dev: _module(
        lambda d: LogitAdjustedLoss(COUNTS, label_smoothing=0.1, balanced_smoothing=True).to(d),
        dev,
    )(a["logits"], a["targets"])
    return case


def _cet(g, b):
    def call(a, dev):
        head = _module(lambda d: nn.Linear(D, K, device=d), dev)
        return ClassificationEnhancementTerm()(
            a["logits"], a["targets"], features=a["features"], classifier=head
        )

    return Case(
        _seeded(call),
        {
            "logits": torch.randn(b, K, generator=g),
            "targets": _targets(g, b),
            "features": torch.randn(b, D, generator=g),
        },
        {"logits": "float", "targets": "targets", "features": "float"},
        deterministic=False,
    )


def _cet_functional(g, b):
    case = _cet(g, b)

    def call(a, dev):
        head = _module(lambda d: nn.Linear(D, K, device=d), dev)
        return functional.classification_enhancement_term(
            a["logits"],
            a["targets"],
            features=a["features"],
            classifier=head,
            return_breakdown=True,
        )

    case.call = _seeded(call)
    return case


def _augmentation(g, b):
    def call(a, dev):
        head = _module(lambda d: nn.Linear(D, K, device=d), dev)
        return functional.feature_augmentation_loss(a["features"], a["targets"], head)

    return Case(
        _seeded(call),
        {"features": torch.randn(b, D, generator=g), "targets": _targets(g, b)},
        {"features": "float", "targets": "targets"},
        deterministic=False,
    )


def _criterion(g, b):
    def call(a, dev):
        head = _module(lambda d: nn.Linear(D, K, device=d), dev)
        crit = _module(lambda d: MICACLLoss(K, D, COUNTS, projection_dim=4, device=d), dev)
        return crit(
            a["features"], a["logits"], a["targets"], classifier=head, return_breakdown=True
        )

    case = _cet(g, b)
    case.call = _seeded(call)
    return case


def _geiim(g, b):
    return Case(
        lambda a, dev: _module(lambda d: GEIIM(T, D, device=d), dev)(a["x"], a["padding_mask"]),
        {"x": torch.randn(b, T, D, generator=g), "padding_mask": _mask(g, b)},
        {"x": "float", "padding_mask": "mask"},
        num_classes=None,
    )


def _graph(g, b):
    return Case(
        lambda a, dev: functional.graph_propagate(a["x"], a["adjacency"], 0.3),
        {
            "x": torch.randn(b, T, D, generator=g),
            "adjacency": torch.rand(T, T, generator=g).softmax(-1),
        },
        {"x": "float_free", "adjacency": "float"},
        num_classes=None,
    )


def _adjacency(g, b):
    return Case(
        lambda a, dev: functional.instance_adjacency(
            a["node_src"], a["node_dst"], padding_mask=a["padding_mask"]
        ),
        {
            "node_src": torch.randn(T, 5, generator=g),
            "node_dst": torch.randn(5, T, generator=g),
            "padding_mask": _mask(g, b),
        },
        {"node_src": "float", "node_dst": "float", "padding_mask": "mask_any_batch"},
        num_classes=None,
    )


def _instance_weights(g, b):
    return Case(
        lambda a, dev: _module(lambda d: InstanceWeights(D, 6, device=d), dev)(
            a["h"], a["padding_mask"]
        ),
        {"h": torch.randn(b, T, D, generator=g), "padding_mask": _mask(g, b)},
        {"h": "float", "padding_mask": "mask"},
        num_classes=None,
        all_padded_ok=True,
    )


def _instance_weights_functional(g, b):
    case = _instance_weights(g, b)
    case.call = lambda a, dev: functional.instance_weights(a["h"], padding_mask=a["padding_mask"])
    case.roles = {"h": "float_free", "padding_mask": "mask"}
    return case


def _attention(g, b):
    return Case(
        lambda a, dev: _module(lambda d: InstanceSelfAttention(D, 2, device=d).eval(), dev)(
            a["x"], a["padding_mask"]
        ),
        {"x": torch.randn(b, T, D, generator=g), "padding_mask": _mask(g, b)},
        {"x": "float", "padding_mask": "mask"},
        num_classes=None,
    )


def _head(aggregator):
    def build(g, b):
        return Case(
            lambda a, dev: _module(
                lambda d: _on(
                    MICACLHead(D, K, num_instances=T, hidden_size=8, aggregator=aggregator), d
                ).eval(),
                dev,
            )(a["x"], a["padding_mask"]),
            {"x": torch.randn(b, T, D, generator=g), "padding_mask": _mask(g, b)},
            {"x": "float", "padding_mask": "mask"},
            num_classes=None,
        )

    return build


def _on(module, device):
    return module.to(device)


def _memory(g, b):
    def call(a, dev):
        mem = ContrastMemory(8, dims=(D, 4), device=dev)
        mem.push([a["embeddings[0]"], a["embeddings[1]"]], a["targets"])
        return mem.get()

    return Case(
        call,
        {
            "embeddings[0]": torch.randn(b, D, generator=g),
            "embeddings[1]": torch.randn(b, 4, generator=g),
            "targets": _targets(g, b),
        },
        {"embeddings[0]": "float", "embeddings[1]": "float", "targets": "targets"},
        num_classes=None,
        negative_ok=True,
        meta=False,
    )


def _confusion(g, b):
    def call(a, dev):
        m = ConfusionMatrix(K)
        m.update(a["preds_or_logits"], a["targets"])
        return m.compute()

    return Case(
        call,
        {"preds_or_logits": torch.randn(b, K, generator=g), "targets": _targets(g, b)},
        {"preds_or_logits": "float", "targets": "targets"},
        meta=False,
    )


def _confusion_functional(g, b):
    return Case(
        lambda a, dev: confusion_matrix(a["preds"], a["targets"], K),
        {"preds": _targets(g, b), "targets": _targets(g, b)},
        {"preds": "targets", "targets": "targets"},
        meta=False,
    )


def _wian(g, b):
    return Case(
        lambda a, dev: _module(lambda d: WIAN(D, 6, batch_first=True, device=d), dev)(
            a["input"], weights=a["weights"]
        ),
        {"input": torch.randn(b, T, D, generator=g), "weights": torch.rand(b, T, 1, generator=g)},
        {"input": "float", "weights": "float_broadcast"},
        num_classes=None,
    )


def _wian_cell(g, b):
    return Case(
        lambda a, dev: _module(lambda d: WIANCell(D, 6, device=d), dev)(
            a["input"], weight=a["weight"]
        ),
        {"input": torch.randn(b, D, generator=g), "weight": torch.rand(b, 6, generator=g)},
        {"input": "float", "weight": "float_broadcast"},
        num_classes=None,
    )


def _wian_cell_functional(g, b):
    # (a function of its arguments: no parameters, so no dtype to compute in)
    return Case(
        lambda a, dev: functional.wian_cell(a["gates"], a["c_prev"], a["weight"]),
        {
            "gates": torch.randn(b, 5 * 6, generator=g),
            "c_prev": torch.randn(b, 6, generator=g),
            "weight": torch.rand(b, 1, generator=g),
        },
        {"gates": "float", "c_prev": "float", "weight": "float_broadcast"},
        num_classes=None,
        dtype_mix=(),
    )


ENTRIES: dict[str, Callable[[torch.Generator, int], Case]] = {
    "MCCLoss": _mccl_module,
    "MCCLoss(projection_dim=None)": _mccl_identity,
    "multiscale_category_aware_contrastive_loss": _mccl_functional,
    "supervised_contrastive_per_anchor": _scpa,
    "category_aware_weights": _weights,
    "adaptive_temperature": _temperature,
    "pool_features": _pool,
    "IntensityAwareLoss": _ial,
    "intensity_aware_loss": _ial_functional,
    "LogitAdjustedLoss": _logit_adjusted,
    "logit_adjusted_cross_entropy": _logit_adjusted_functional,
    "LogitAdjustedLoss(balanced_smoothing=True)": _logit_adjusted_balanced,
    "ClassificationEnhancementTerm": _cet,
    "classification_enhancement_term": _cet_functional,
    "feature_augmentation_loss": _augmentation,
    "MICACLLoss": _criterion,
    "GEIIM": _geiim,
    "graph_propagate": _graph,
    "instance_adjacency": _adjacency,
    "InstanceWeights": _instance_weights,
    "instance_weights": _instance_weights_functional,
    "InstanceSelfAttention": _attention,
    "MICACLHead(wian)": _head("wian"),
    "MICACLHead(lstm)": _head("lstm"),
    "MICACLHead(conv1d)": _head("conv1d"),
    "ContrastMemory.push": _memory,
    "ConfusionMatrix.update": _confusion,
    "confusion_matrix": _confusion_functional,
    "WIAN": _wian,
    "WIANCell": _wian_cell,
    "wian_cell": _wian_cell_functional,
}
# Exported callables fuzzed elsewhere or not at all, with the reason.
NOT_FUZZED_HERE = {
    "MCCLOptions": "options: test_constructor_options_are_checked",
    "log_prior": "no batch input, only class counts: tests/test_logit_adjustment.py",
}


# ---- the mutations -------------------------------------------------------------------------

LEGAL, BAD, NAN = "legal", "bad", "nan"


def _mutations(case: Case) -> list[tuple[str, str, str]]:
    """``(argument, mutation, kind)`` for every mutation that applies to ``case``."""
    out = []
    for name, role in case.roles.items():
        if role in ("float", "float_free", "float_broadcast"):
            if case.dtype_mix is None or name in case.dtype_mix:
                out += [(name, f"dtype:{d}", LEGAL) for d in ("float16", "bfloat16", "float64")]
            if case.nan_checked is None or name in case.nan_checked:
                out += [(name, "nan", NAN), (name, "inf", NAN)]
            out += [(name, "int_tensor", BAD), (name, "not_tensor", BAD), (name, "add_dim", BAD)]
            if role != "float_broadcast":
                out.append((name, "drop_dim", BAD))
            if role == "float":
                out.append((name, "widen", BAD))
            if name in case.scale_free:
                out += [(name, f"scale:{k}", LEGAL) for k in (-100, -40, 40, 100)]
        elif role == "targets":
            out += [(name, f"int:{d}", LEGAL) for d in ("int8", "int16", "int32", "uint8")]
            out += [(name, m, BAD) for m in ("bool", "float_targets", "2d")]
            if name not in case.batch_free:
                out.append((name, "short", BAD))
            if case.num_classes is not None:
                out.append((name, "out_of_range", BAD))
            out.append((name, "negative", LEGAL if case.negative_ok else BAD))
        elif role in ("mask", "mask_any_batch"):
            out += [
                (name, "all_padded", LEGAL if case.all_padded_ok else BAD),
                (name, "float_mask", BAD),
                (name, "mask_3d", BAD),
            ]
            if role == "mask":
                out.append((name, "mask_short", BAD))
    if case.meta:
        out.append(("*", "meta", LEGAL))
    if torch.cuda.is_available():
        out.append(("*", "cuda", LEGAL))
    return out


def _mutate(value: torch.Tensor, mutation: str, case: Case) -> Any:
    kind, _, param = mutation.partition(":")
    if kind in ("dtype", "int"):
        return value.to(getattr(torch, param))
    if kind == "scale":
        return value * 2.0 ** int(param)
    if kind in ("nan", "inf"):
        bad = value.clone()
        bad.view(-1)[bad.numel() // 2] = float(kind)
        return bad
    if kind == "int_tensor":
        return value.long()
    if kind == "not_tensor":
        return value.tolist()
    if kind == "drop_dim":
        return value[0]
    if kind == "add_dim":
        return value.unsqueeze(0)
    if kind == "widen":
        return torch.cat([value, value[..., :1]], dim=-1)
    if kind == "bool":
        return value > 0
    if kind == "float_targets":
        return value.float()
    if kind == "short":
        return value[:-1]
    if kind == "2d":
        return value[:, None]
    if kind == "out_of_range":
        bad = value.clone()
        bad[-1] = case.num_classes
        return bad
    if kind == "negative":
        bad = value.clone()
        bad[-1] = -100 if case.negative_ok else -1
        return bad
    if kind == "all_padded":
        bad = value.clone()
        bad[-1] = True
        return bad
    if kind == "float_mask":
        return value.float()
    if kind == "mask_3d":
        return value[..., None]
    if kind == "mask_short":
        return value[:, :-1]
    raise AssertionError(mutation)


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _tensors(item)]
    return []


def _our_error(err: BaseException) -> str | None:
    """Why ``err`` is not one of our clear errors (``None`` if it is)."""
    if not isinstance(err, (TypeError, ValueError, CheckpointError)):
        return f"{type(err).__name__} is not TypeError/ValueError"
    frames = traceback.extract_tb(err.__traceback__)
    raised_in = frames[-1].filename if frames else ""
    if not raised_in.startswith(PACKAGE_DIR):
        return f"raised inside {raised_in}, not by our checks"
    if "`" not in str(err):
        return "the message names no argument in backticks"
    return None


def _close(got: list[torch.Tensor], want: list[torch.Tensor], mutation: str) -> str | None:
    if [t.shape for t in got] != [t.shape for t in want]:
        return f"shapes {[tuple(t.shape) for t in got]} != {[tuple(t.shape) for t in want]}"
    if mutation == "meta":
        return None
    loose = mutation.startswith("dtype:")
    for a, b in zip(got, want, strict=True):
        if not (a.is_floating_point() or b.is_floating_point()):
            if not torch.equal(a.long().cpu(), b.long().cpu()):
                return "integer outputs differ"
            continue
        a64, b64 = a.detach().double().cpu(), b.detach().double().cpu()
        tol = 5e-2 if loose else 1e-4
        if not bool(((a64 - b64).abs() <= tol * (1 + b64.abs())).all()):
            return f"values differ: max gap {float((a64 - b64).abs().max()):.3g}"
    return None


_BASE: dict[tuple[str, int, int], list[torch.Tensor]] = {}


def _run(entry: str, mutation_index: int | None, seed: int, batch: int, check: bool) -> str | None:
    """Run one (entry, mutation); the reason it misbehaved, or ``None``."""
    g = torch.Generator().manual_seed(seed)
    case = ENTRIES[entry](g, batch)
    cpu = torch.device("cpu")
    key = (entry, seed, batch)
    if key not in _BASE:  # the unmutated call, with the NaN check on
        with config.check_finite(True):
            _BASE[key] = [t.detach() for t in _tensors(case.call(dict(case.args), cpu))]
    base_tensors = _BASE[key]
    if not all(bool(torch.isfinite(t).all()) for t in base_tensors if t.is_floating_point()):
        return f"{entry}: the valid call gave a non-finite output"
    if mutation_index is None:
        return None
    mutations = _mutations(case)
    name, mutation, kind = mutations[mutation_index % len(mutations)]
    args, device = dict(case.args), cpu
    if mutation in ("meta", "cuda"):
        device = torch.device(mutation)
        args = {k: v.to(device) for k, v in args.items()}
    else:
        args[name] = _mutate(args[name], mutation, case)
    label = f"{entry}: `{name}` {mutation} (check_finite={check})"
    try:
        with config.check_finite(check):
            out = case.call(args, device)
    except Exception as err:
        if kind == LEGAL:
            return f"{label}: legal input raised {type(err).__name__}: {err}"
        why = _our_error(err)
        if why is not None:
            return f"{label}: {why}: {type(err).__name__}: {err}"
        if kind == NAN and check and f"`{name}` holds" not in str(err):
            return f"{label}: the NaN check named another argument: {err}"
        return None
    if kind == BAD or (kind == NAN and check):
        return f"{label}: silently accepted"
    got = _tensors(out)
    if kind == LEGAL and mutation != "meta":
        if not all(bool(torch.isfinite(t).all()) for t in got if t.is_floating_point()):
            return f"{label}: silent non-finite output"
        # (Negative labels and padding change what is computed: finite is all they promise.)
        same_inputs = mutation not in ("negative", "all_padded")
        if case.deterministic and same_inputs:
            why = _close(got, base_tensors, mutation)
            if why is not None:
                return f"{label}: {why}"
    elif mutation == "meta":
        why = _close(got, base_tensors, mutation)
        if why is not None:
            return f"{label}: {why}"
    return None


# ---- the tests -----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _one_thread():
    # The tensors here are tiny: one thread avoids oversubscribing a shared CI machine, where
    # intra-op threads waiting on each other made the suite several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _exported_callables() -> set[str]:
    names = set()
    for name in micacl_layers.__all__:
        obj = getattr(micacl_layers, name)
        if inspect.isclass(obj) and issubclass(obj, nn.Module):
            names.add(obj.__name__)
        if inspect.isclass(obj) and dataclasses.is_dataclass(obj):
            names.add(obj.__name__)
    names |= set(functional.__all__)
    return names


def test_every_exported_module_and_function_is_fuzzed():
    fuzzed = {name.split("(")[0] for name in ENTRIES} | set(NOT_FUZZED_HERE)
    fuzzed.add("MultiscaleCategoryAwareContrastiveLoss")  # = MCCLoss
    fuzzed.add("mccl_loss")  # = multiscale_category_aware_contrastive_loss
    missing = _exported_callables() - fuzzed
    assert not missing, f"exported but not fuzzed: {sorted(missing)}"


def test_every_entry_and_mutation():
    """Each (entry, mutation) pair once, with the NaN check on and off."""
    failures = []
    for entry in ENTRIES:
        case = ENTRIES[entry](torch.Generator().manual_seed(0), 5)
        for index, (_, _, kind) in enumerate(_mutations(case)):
            checks = (True, False) if kind == NAN else (True,)
            for check in checks:
                why = _run(entry, index, seed=0, batch=5, check=check)
                if why is not None:
                    failures.append(why)
    assert not failures, "\n".join(failures)


@settings(max_examples=400)
@given(
    entry=st.sampled_from(sorted(ENTRIES)),
    index=st.integers(0, 10_000),
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(2, 9),
    check=st.booleans(),
)
def test_fuzz_public_api(entry, index, seed, batch, check):
    why = _run(entry, index, seed, batch, check)
    assert why is None, why


# ---- constructor options -------------------------------------------------------------------

BAD_OPTIONS: dict[str, tuple[Callable[..., Any], dict[str, list[Any]]]] = {
    "MCCLoss": (
        lambda **kw: MCCLoss(K, D, COUNTS, **kw),
        {
            "projection_dim": [0, -1, 2.5, "8"],
            "tau0": [0, -0.1, math.inf, math.nan, "0.1"],
            "scales": [(), (0,), (1, 16), (1.5,), 3],
            "form": ["exp", None],
            "temperature": ["x"],
            "reduction": ["avg"],
            "memory_size": [-1, 1.5],
            "weight_norm": ["mean"],
            "class_average": [1, "yes"],
            "class_complements": [1],
            "exclude_self": ["no", None],
            "class_weighting": [2],
            "difficulty": ["x"],
            "detach_difficulty": [None],
            "gather_distributed": ["yes"],
            "dtype": [torch.int64, "float32"],
        },
    ),
    "MCCLOptions": (
        MCCLOptions,
        {"tau0": [0, math.inf, math.nan, True], "scales": [(), (-1,)], "form": ["x"]},
    ),
    "IntensityAwareLoss": (
        IntensityAwareLoss,
        {"reduction": ["avg", None], "ignore_index": [None, 1.5, True]},
    ),
    "LogitAdjustedLoss": (
        lambda **kw: LogitAdjustedLoss(COUNTS, **kw),
        {
            "tau": [-1, math.nan, "1", True, math.inf],
            "label_smoothing": [-0.1, 1.5, math.nan],
            "balanced_smoothing": [1, None, "yes"],
            "reduction": ["avg"],
            "ignore_index": [None, 1.5],
        },
    ),
    "ClassificationEnhancementTerm": (
        ClassificationEnhancementTerm,
        {
            "label_smoothing": [1.5, math.nan, True, "0.1"],
            "ial_weight": [-1, math.nan],
            "aug_weight": [math.inf],
            "aug_noise_std": [-1, math.nan],
            "logit_adjustment": [math.inf, math.nan],
            "balanced_smoothing": [0, None],
            "ignore_index": [None, 1.5],
        },
    ),
    "MICACLLoss": (
        lambda **kw: MICACLLoss(K, D, COUNTS, **kw),
        {
            "mc_weight": [-1, math.inf, math.nan, "1"],
            "label_smoothing": [1.5],
            "ial_weight": [-1],
            "aug_noise_std": [-1],
            "logit_adjustment": [math.inf],
        },
    ),
    "GEIIM": (
        lambda **kw: GEIIM(T, D, **kw),
        {
            "alpha_init": [-0.1, 1.5, math.nan],
            "kernel_sizes": [(2,), (0,), (1.0,)],
            "node_dim": [0, -2],
        },
    ),
    "InstanceWeights": (
        lambda **kw: InstanceWeights(D, **kw),
        {"hidden_size": [0, -1], "mode": ["softmax"]},
    ),
    "InstanceSelfAttention": (
        lambda **kw: InstanceSelfAttention(D, **kw),
        {"num_heads": [0, 3, -2]},
    ),
    "MICACLHead": (
        lambda **kw: MICACLHead(D, K, **kw),
        {"num_instances": [0], "hidden_size": [0], "aggregator": ["gru"]},
    ),
    "ContrastMemory": (
        lambda **kw: ContrastMemory(**{"size": 4, "dims": (3,), **kw}),
        {"size": [0, -1], "dims": [(), (0,), 3]},
    ),
    "ConfusionMatrix": (
        lambda **kw: ConfusionMatrix(**{"num_classes": 3, **kw}),
        {"num_classes": [0, True, 2.0]},
    ),
}


@pytest.mark.parametrize(
    ("cls", "option", "value"),
    [
        (cls, option, value)
        for cls, (_, options) in BAD_OPTIONS.items()
        for option, values in options.items()
        for value in values
    ],
)
def test_constructor_options_are_checked(cls, option, value):
    """A bad option is never silently accepted, and the error is ours and names it."""
    make = BAD_OPTIONS[cls][0]
    with pytest.raises((TypeError, ValueError)) as info:
        make(**{option: value})
    assert _our_error(info.value) is None, f"{info.value!r}"
    assert f"`{option}`" in str(info.value) or option in str(info.value)
