"""Shared hypothesis profile, strategies and helpers for the core test suite."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# --------------------------------------------------------------------------------------------
# Hypothesis profiles: "ci" (default) keeps the whole core suite well under two minutes on two
# CPU cores; derandomised when the CI environment variable is set so CI runs are reproducible.
# "thorough" is for local bug hunting: HYPOTHESIS_PROFILE=thorough pytest ...
# --------------------------------------------------------------------------------------------
settings.register_profile(
    "ci",
    deadline=None,
    max_examples=25,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "thorough",
    parent=settings.get_profile("ci"),
    max_examples=300,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# --------------------------------------------------------------------------------------------
# Docstring examples that need an optional package skip, with the reason, where it is missing
# (the suite also runs in an environment without torchvision: `make test-oldest`).
# --------------------------------------------------------------------------------------------
DOCTESTS_NEEDING = {"micacl_layers.models.backbones.r3d18_backbone": "torchvision"}


@pytest.fixture(autouse=True)
def _restore_fast_paths():
    """A test that changes the fast-path switch cannot leak it into the next one."""
    from micacl_layers import config

    mode, check = config.get_fast_paths(), config.get_check_finite()
    yield
    config.set_fast_paths(mode)
    config.set_check_finite(check)  # the NaN/inf check likewise


def pytest_collection_modifyitems(config, items):
    for item in items:
        package = DOCTESTS_NEEDING.get(item.name)
        if package and importlib.util.find_spec(package) is None:
            item.add_marker(pytest.mark.skip(reason=f"the example needs {package}"))


# --------------------------------------------------------------------------------------------
# dtypes and tolerances
# --------------------------------------------------------------------------------------------
DTYPES = (torch.float32, torch.float64, torch.bfloat16)
dtypes = st.sampled_from(DTYPES)
seeds = st.integers(min_value=0, max_value=2**31 - 1)


def tol(dtype: torch.dtype) -> dict[str, float]:
    """Absolute/relative tolerances for comparisons of computations done in ``dtype``."""
    return {
        torch.float64: {"atol": 1e-10, "rtol": 1e-10},
        torch.float32: {"atol": 1e-5, "rtol": 1e-5},
        torch.bfloat16: {"atol": 5e-2, "rtol": 5e-2},
    }[dtype]


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(int(seed))


def randn(
    *shape: int,
    seed: int,
    dtype: torch.dtype = torch.float32,
    scale: float = 1.0,
    requires_grad: bool = False,
) -> torch.Tensor:
    """Standard-normal tensor drawn in float64 (so every dtype sees the same values), then cast."""
    t = (torch.randn(*shape, generator=generator(seed), dtype=torch.float64) * scale).to(dtype)
    return t.requires_grad_(requires_grad)


def rand(
    *shape: int, seed: int, dtype: torch.dtype = torch.float32, low: float = 0.0, high: float = 1.0
) -> torch.Tensor:
    """Uniform tensor in ``[low, high)``, drawn in float64 then cast."""
    t = torch.rand(*shape, generator=generator(seed), dtype=torch.float64)
    return (low + (high - low) * t).to(dtype)


def randint_targets(batch: int, num_classes: int, *, seed: int) -> torch.Tensor:
    """Random int64 class indices of shape ``(batch,)`` in ``[0, num_classes)``."""
    return torch.randint(0, num_classes, (batch,), generator=generator(seed))


def random_padding_mask(batch: int, steps: int, *, seed: int) -> torch.Tensor:
    """A bool ``(B, T)`` padding mask (True = padded) that keeps >= 1 real instance per row."""
    mask = torch.rand(batch, steps, generator=generator(seed)) < 0.4
    first_real = torch.randint(0, steps, (batch,), generator=generator(seed + 1))
    mask[torch.arange(batch), first_real] = False
    return mask


def assert_finite(*tensors: torch.Tensor | None) -> None:
    """Every given tensor exists and holds only finite values."""
    for i, t in enumerate(tensors):
        assert t is not None, f"tensor #{i} is None"
        assert bool(torch.isfinite(t).all()), f"tensor #{i} is not finite: {t}"


def assert_grads_finite(*modules: torch.nn.Module, allow_none: bool = False) -> None:
    """Every parameter of the modules got a finite gradient."""
    for module in modules:
        for name, p in module.named_parameters():
            if p.grad is None:
                assert allow_none, f"parameter {name} received no gradient"
                continue
            assert bool(torch.isfinite(p.grad).all()), f"gradient of {name} is not finite"


@pytest.fixture
def gen() -> torch.Generator:
    """A freshly seeded CPU generator."""
    return generator(0)


@pytest.fixture(autouse=True)
def _restore_rng():
    """Tests that seed the global RNG do not leak their state into other tests."""
    with torch.random.fork_rng(devices=[]):
        yield


# --------------------------------------------------------------------------------------------
# Degenerate batches shared by the loss tests (K = 3 classes, D = 8 features).
# --------------------------------------------------------------------------------------------
EDGE_NUM_CLASSES = 3
EDGE_FEATURE_DIM = 8
EDGE_CASES = (
    "batch_of_one",
    "one_class",
    "anchor_without_positive",
    "no_anchor_has_positive",
    "huge_logits",
    "tiny_features",
    "zero_features",
    "empty_batch",
)


def edge_case(
    name: str, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(features, logits, targets)`` for one degenerate case; features/logits are leaves that
    require grad, in ``dtype``."""
    g = generator(1234)
    batch = {"batch_of_one": 1, "no_anchor_has_positive": 3, "empty_batch": 0}.get(name, 6)
    features = torch.randn(batch, EDGE_FEATURE_DIM, generator=g, dtype=torch.float64)
    logits = torch.randn(batch, EDGE_NUM_CLASSES, generator=g, dtype=torch.float64)
    targets = torch.tensor([0, 0, 1, 1, 2, 2][:batch], dtype=torch.long)
    if name == "batch_of_one":
        targets = torch.tensor([1])
    elif name == "one_class":
        targets = torch.zeros(batch, dtype=torch.long)
    elif name == "anchor_without_positive":
        targets = torch.tensor([0, 0, 0, 1, 1, 2])  # anchor 5 has no positive
    elif name == "no_anchor_has_positive":
        targets = torch.tensor([0, 1, 2])
    elif name == "huge_logits":
        logits = torch.where(logits > 0, 1e4, -1e4).to(torch.float64)
    elif name == "tiny_features":
        features = 1e-12 * features / features.norm(dim=1, keepdim=True)
    elif name == "zero_features":
        features = torch.zeros_like(features)
    return (features.to(dtype).requires_grad_(), logits.to(dtype).requires_grad_(), targets)


# --------------------------------------------------------------------------------------------
# Multi-process runs: gloo's worker threads can abort a process while it tears down its
# process group, after all the work is done (SIGABRT, "terminate called without an active
# exception"; a PyTorch teardown race, see pytorch/pytorch#179291). Tests check that the work
# finished on every rank, then tolerate that abort and nothing else.
# --------------------------------------------------------------------------------------------
GLOO_TEARDOWN_ABORT = "terminate called without an active exception"


def torchrun_succeeded(returncode: int, stderr: str, *, work_finished: bool) -> bool:
    """A torchrun exit status, accepting the gloo teardown abort once the work is done."""
    return returncode == 0 or (work_finished and GLOO_TEARDOWN_ABORT in stderr)


# --------------------------------------------------------------------------------------------
# WIAN reference: nn.LSTM-style loop of WIANCells (used by test_wian and test_fast_paths)
# --------------------------------------------------------------------------------------------


def reference_wian(
    wian,
    x: torch.Tensor,
    weights: torch.Tensor | None,
    hx: tuple[torch.Tensor, torch.Tensor] | None,
):
    """Naive loop over layers, directions and steps, one WIANCell call per step.

    The cells share ``wian``'s parameters (gradients reach them). ``x`` is (B, T, I) and
    ``weights`` broadcastable to (B, T, H) whatever ``wian.batch_first``. The reverse direction
    reads the instances from last to first and, at each, uses the weight of the instance it
    reads.
    """
    from micacl_layers import WIANCell

    batch, steps, _ = x.shape
    hidden, dirs = wian.hidden_size, wian.num_directions
    if weights is not None:
        weights = weights.expand(batch, steps, hidden)
    if hx is None:
        zeros = x.new_zeros(dirs * wian.num_layers, batch, hidden)
        hx = (zeros, zeros)
    layer_input = x
    h_n, c_n = [], []
    for layer in range(wian.num_layers):
        outputs = []
        for d, suffix in enumerate(("", "_reverse")[:dirs]):
            cell = WIANCell(layer_input.shape[-1], hidden, bias=wian.bias, dtype=x.dtype)
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")[: 4 if wian.bias else 2]:
                setattr(cell, kind, getattr(wian, f"{kind}_l{layer}{suffix}"))
            h, c = hx[0][layer * dirs + d], hx[1][layer * dirs + d]
            out = [None] * steps
            order = range(steps) if d == 0 else range(steps - 1, -1, -1)
            for t in order:
                w_t = None if weights is None else weights[:, t]
                h, c = cell(layer_input[:, t], (h, c), weight=w_t)
                out[t] = h
            outputs.append(torch.stack(out, dim=1))
            h_n.append(h)
            c_n.append(c)
        layer_input = torch.cat(outputs, dim=-1)
    return layer_input, (torch.stack(h_n), torch.stack(c_n))


def load_script(path: Path, name: str) -> ModuleType:
    """Import a script that is not part of the package (examples/, benchmarks/, scripts/)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
