"""The fast paths (``micacl_layers._fast``) match the plain autograd formulations.

One oracle per formulation: the plain path is the same Module with the switch ``"off"``
(itself checked against the paper's equations in test_wian.py and test_mccl.py); WIAN is also
checked against a per-step loop of :class:`WIANCell` (``tests.conftest.reference_wian``).

- WIAN: the fused layer (one input projection for all steps and directions, hand-written
  backward; oneDNN products with the switch ``"on"``), and the naive per-gate module of
  ``benchmarks/naive.py`` (the benchmark's baseline) against it.
- The oneDNN linear (MCCL's projections with the switch ``"on"``) against ``F.linear``.
- MCCL: the one-buffer core and the projected path, with the blocks, the symmetric product and
  the recompute-in-backward branch all exercised.

Every test here runs with the switch ``"on"`` (so the kernels run on every dtype) unless it says
otherwise; the equivalence tests run under ``"auto"`` too. Values and gradients agree to 1e-5 in
float32 (1e-10 in float64).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import micacl_layers._fast.contrastive as contrastive_module
import micacl_layers._fast.onednn as linear_module
import micacl_layers._fast.wian_layer as wian_layer_module
import micacl_layers.contrastive as plain_contrastive
import micacl_layers.mccl as mccl_module
from micacl_layers import WIAN, MCCLoss, config
from tests.conftest import load_script, reference_wian

ROOT = Path(__file__).resolve().parents[1]
F32 = {"atol": 1e-5, "rtol": 1e-5}
F64 = {"atol": 1e-10, "rtol": 1e-10}


def _tol(dtype: torch.dtype) -> dict[str, float]:
    return F64 if dtype == torch.float64 else F32


@pytest.fixture(autouse=True)
def _fast_paths_on():
    with config.fast_paths("on"):
        yield


@pytest.fixture(params=["auto", "on"])
def switch(request):
    """The equivalence tests run under both settings that may take a fast path."""
    with config.fast_paths(request.param):
        yield request.param


# ------------------------------------------------------------------------------------------
# WIAN
# ------------------------------------------------------------------------------------------


def _wian_case(
    batch, steps, in_size, hidden, layers, bidirectional, weight_kind, with_hx, bias, dtype, seed=0
):
    torch.manual_seed(seed)
    wian = WIAN(
        in_size,
        hidden,
        layers,
        bidirectional=bidirectional,
        bias=bias,
        batch_first=True,
        dtype=dtype,
    )
    with torch.no_grad():  # wider than the default init: gates far from linear
        for p in wian.parameters():
            p.mul_(2.0)
    dirs = 2 if bidirectional else 1
    x = torch.randn(batch, steps, in_size, dtype=dtype, requires_grad=True)
    weights = None
    if weight_kind == "per_step":
        weights = torch.rand(batch, steps, 1, dtype=dtype, requires_grad=True)
    elif weight_kind == "full":
        weights = torch.rand(batch, steps, hidden, dtype=dtype, requires_grad=True)
    elif weight_kind == "constant":  # weights that need no gradient
        weights = torch.rand(batch, steps, 1, dtype=dtype)
    hx = None
    if with_hx:
        hx = tuple(
            torch.randn(dirs * layers, batch, hidden, dtype=dtype, requires_grad=True)
            for _ in range(2)
        )
    grads_out = (
        torch.randn(batch, steps, dirs * hidden, dtype=dtype),
        torch.randn(dirs * layers, batch, hidden, dtype=dtype),
        torch.randn(dirs * layers, batch, hidden, dtype=dtype),
    )
    return wian, x, weights, hx, grads_out


def _values_and_grads(wian, forward, x, weights, hx, grads_out):
    out, (h_n, c_n) = forward()
    inputs = [x, *list(wian.parameters())]
    if weights is not None and weights.requires_grad:
        inputs.append(weights)
    if hx is not None:
        inputs += list(hx)
    total = sum((o * g).sum() for o, g in zip((out, h_n, c_n), grads_out, strict=True))
    grads = torch.autograd.grad(total, inputs)
    return [out.detach(), h_n.detach(), c_n.detach(), *grads]


WIAN_CASES = [
    # batch, steps, in, hidden, layers, bidirectional, weights, hx, bias
    (3, 5, 7, 6, 1, True, "per_step", False, True),
    (4, 1, 3, 5, 2, True, None, True, True),
    (2, 6, 4, 3, 3, False, "full", True, False),
    (1, 4, 5, 5, 1, False, "constant", True, True),
    (5, 3, 6, 4, 2, True, "constant", False, False),
    (16, 12, 40, 24, 2, True, "per_step", False, True),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", WIAN_CASES)
def test_wian_fast_path_matches_cell_loop(case, dtype, switch, monkeypatch):
    wian, x, weights, hx, grads_out = _wian_case(*case, dtype=dtype)
    calls = []
    original = wian_layer_module._WIANLayer.apply
    monkeypatch.setattr(
        wian_layer_module._WIANLayer, "apply", lambda *args: calls.append(1) or original(*args)
    )
    fast = _values_and_grads(wian, lambda: wian(x, hx, weights=weights), x, weights, hx, grads_out)
    # The fast path did run wherever the switch allows it (auto: CPU float32 only).
    expected = wian.num_layers if config.enabled("wian", x.device, dtype) else 0
    assert len(calls) == expected
    ref = _values_and_grads(
        wian, lambda: reference_wian(wian, x, weights, hx), x, weights, hx, grads_out
    )
    for got, want in zip(fast, ref, strict=True):
        torch.testing.assert_close(got, want, **_tol(dtype))


@pytest.mark.parametrize("case", WIAN_CASES[:3] + WIAN_CASES[5:])
def test_wian_fast_path_matches_autograd_reference(case, switch):
    wian, x, weights, hx, grads_out = _wian_case(*case, dtype=torch.float32)
    fast = _values_and_grads(wian, lambda: wian(x, hx, weights=weights), x, weights, hx, grads_out)
    with config.fast_paths("off"):
        ref = _values_and_grads(
            wian, lambda: wian(x, hx, weights=weights), x, weights, hx, grads_out
        )
    for got, want in zip(fast, ref, strict=True):
        torch.testing.assert_close(got, want, **F32)


@pytest.mark.filterwarnings("ignore:TF32 acceleration")
def test_wian_fast_path_without_onednn_matches():
    """The batched-matmul fallback (other devices, or oneDNN disabled) agrees as well."""
    wian, x, weights, hx, grads_out = _wian_case(*WIAN_CASES[0], dtype=torch.float32)
    fast = _values_and_grads(wian, lambda: wian(x, hx, weights=weights), x, weights, hx, grads_out)
    with torch.backends.mkldnn.flags(enabled=False):
        plain = _values_and_grads(
            wian, lambda: wian(x, hx, weights=weights), x, weights, hx, grads_out
        )
    for got, want in zip(fast, plain, strict=True):
        torch.testing.assert_close(got, want, **F32)


def test_naive_per_gate_baseline_matches_wian():
    naive_module = load_script(ROOT / "benchmarks" / "naive.py", "bench_naive")
    torch.manual_seed(0)
    wian = WIAN(12, 8, 2, batch_first=True, bidirectional=True)
    naive = naive_module.NaivePerGateWIAN(12, 8, 2, bidirectional=True).load_from(wian)
    x, w = torch.randn(3, 6, 12), torch.rand(3, 6, 1)
    torch.testing.assert_close(naive(x, w), wian(x, weights=w)[0], **F32)


@pytest.mark.slow
@pytest.mark.parametrize("with_hx", [False, True])
def test_wian_double_backward(with_hx):
    """Double backward differentiates the reference formulation (gradgradcheck)."""
    torch.manual_seed(0)
    wian = WIAN(3, 4, num_layers=2, bidirectional=True, batch_first=True, dtype=torch.float64)
    x = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    w = torch.rand(2, 3, 1, dtype=torch.float64, requires_grad=True)
    if with_hx:
        h0 = torch.randn(4, 2, 4, dtype=torch.float64, requires_grad=True)
        c0 = torch.randn(4, 2, 4, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradgradcheck(
            lambda a, b, c, d: wian(a, (c, d), weights=b)[0], (x, w, h0, c0)
        )
    else:
        assert torch.autograd.gradgradcheck(lambda a, b: wian(a, weights=b)[0], (x, w))


@pytest.mark.parametrize("weight_kind", ["per_step", "full"])
def test_wian_fast_path_time_major_matches_batch_first(weight_kind):
    """``batch_first=False`` (weights handed over as (T, B, *) views): same values and grads."""
    wian, x, weights, hx, grads_out = _wian_case(
        4, 5, 6, 3, 2, True, weight_kind, True, True, dtype=torch.float64
    )
    time_major = WIAN(6, 3, 2, bidirectional=True, batch_first=False, dtype=torch.float64)
    time_major.load_state_dict(wian.state_dict())
    want = _values_and_grads(wian, lambda: wian(x, hx, weights=weights), x, weights, hx, grads_out)

    def forward():
        out, states = time_major(x.transpose(0, 1), hx, weights=weights.transpose(0, 1))
        return out.transpose(0, 1), states

    got = _values_and_grads(time_major, forward, x, weights, hx, grads_out)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **F64)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_wian_output_can_be_modified_in_place(batch_first, bidirectional, switch):
    # The plain path's output may be changed in place (an activation with inplace=True); the
    # kernel returned a view of its buffer, which autograd refuses to let change in place.
    torch.manual_seed(0)
    wian = WIAN(3, 4, 2, bidirectional=bidirectional, batch_first=batch_first)
    x = torch.randn(2, 3, 3, requires_grad=True)

    def grads(mode):
        with config.fast_paths(mode):
            out, (h_n, c_n) = wian(x)
            out.mul_(2)
            h_n.add_(1)
            c_n.mul_(3)
            total = out.pow(2).sum() + h_n.pow(2).sum() + c_n.pow(2).sum()
            return [out.detach(), *torch.autograd.grad(total, [x, *wian.parameters()])]

    for got, want in zip(grads(switch), grads("off"), strict=True):
        torch.testing.assert_close(got, want, **F32)


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("bad", ["weight_hh", "input"])
def test_wian_without_hx_propagates_nan_as_the_plain_path(bad, steps, switch):
    # Without hx the kernel skipped the first step's product h_0 W_hh^T of a zero state, which
    # adds exactly nothing, but 0 * inf and 0 * NaN are NaN: a non-finite W_hh gave the plain
    # path NaN at the first step and the kernel finite values (and likewise the first step's
    # share in dL/dW_hh, dL/dg^T h_0, for a non-finite gate gradient).
    torch.manual_seed(0)
    wian = WIAN(2, 3, 1, bidirectional=True, batch_first=True)
    x = torch.randn(2, steps, 2)
    with torch.no_grad():
        if bad == "weight_hh":
            wian.weight_hh_l0[1, 0] = float("inf")
            wian.weight_hh_l0_reverse[4, 2] = float("nan")
        else:
            x[0, 0, 1] = float("nan")
    x.requires_grad_(True)

    def run(mode):
        with config.fast_paths(mode):
            out, (h_n, c_n) = wian(x)
            total = out.sum() + h_n.sum() + c_n.sum()
            return [out, h_n, c_n, *torch.autograd.grad(total, [x, *wian.parameters()])]

    for got, want in zip(run(switch), run("off"), strict=True):
        torch.testing.assert_close(got, want, equal_nan=True, **F32)


def test_wian_backward_twice_with_retain_graph():
    wian, x, weights, hx, grads_out = _wian_case(*WIAN_CASES[0], dtype=torch.float32)
    out = wian(x, hx, weights=weights)[0]
    first = torch.autograd.grad(out, x, grads_out[0], retain_graph=True)[0]
    second = torch.autograd.grad(out, x, grads_out[0])[0]
    torch.testing.assert_close(first, second, atol=0, rtol=0)


def test_wian_torch_compile_aot_eager_values_and_gradients():
    """Dynamo + AOTAutograd (no C++ compiler involved: about a second on CPU)."""
    wian, x, weights, _, grads_out = _wian_case(
        2, 4, 3, 5, 2, True, "per_step", False, True, dtype=torch.float32
    )
    compiled = torch.compile(wian, backend="aot_eager")
    fast = _values_and_grads(wian, lambda: wian(x, weights=weights), x, weights, None, grads_out)
    got = _values_and_grads(wian, lambda: compiled(x, weights=weights), x, weights, None, grads_out)
    for a, b in zip(got, fast, strict=True):
        torch.testing.assert_close(a, b, **F32)


@pytest.mark.slow
def test_wian_torch_compile_inductor():
    """The default inductor backend; compiles C++ kernels (about 15 s on a 2-core CPU)."""
    wian, x, weights, _, grads_out = _wian_case(
        2, 3, 3, 4, 1, True, "per_step", False, True, dtype=torch.float32
    )
    compiled = torch.compile(wian)
    fast = _values_and_grads(wian, lambda: wian(x, weights=weights), x, weights, None, grads_out)
    got = _values_and_grads(wian, lambda: compiled(x, weights=weights), x, weights, None, grads_out)
    for a, b in zip(got, fast, strict=True):
        torch.testing.assert_close(a, b, **F32)


# ------------------------------------------------------------------------------------------
# MCCL
# ------------------------------------------------------------------------------------------


def plain_mccl(mccl: MCCLoss, features, logits, targets):
    """The same loss on the plain autograd path (the switch off)."""
    with config.fast_paths("off"):
        return mccl(features, logits, targets)


MCCL_CASES = [
    # batch, classes, dim, scales, projection_dim, form, exclude_self, reduction
    (1, 3, 8, (1, 2), 4, "ratio", True, "mean"),
    (2, 2, 8, (1,), None, "log", True, "mean"),
    (7, 3, 12, (1, 2, 4), 6, "ratio", True, "none"),
    (7, 3, 12, (1, 3), None, "log", False, "sum"),
    (64, 5, 32, (1, 2, 4), 16, "ratio", True, "mean"),
    (64, 5, 32, (1, 2, 4), 16, "log", True, "mean"),
    (300, 7, 24, (1, 2), 8, "ratio", True, "mean"),  # several strips of the symmetric product
    (300, 7, 24, (1, 2), 8, "log", False, "none"),
    # Projections at least twice as wide as their input: those scales skip forming z
    # (_ProjectedContrastiveCore, switch "on"); scale 1 of the last two does not.
    (64, 5, 32, (2, 4), 64, "ratio", True, "mean"),
    (300, 7, 24, (1, 2, 4), 48, "log", True, "mean"),
    (300, 7, 24, (1, 2, 4), 48, "ratio", False, "none"),
]
PROJECTED_CASES = MCCL_CASES[-3:]


def _mccl_case(
    batch, classes, dim, scales, projection_dim, form, exclude_self, reduction, dtype, seed=0
):
    torch.manual_seed(seed)
    counts = torch.randint(1, 60, (classes,)).tolist()
    mccl = MCCLoss(
        classes,
        dim,
        counts,
        scales,
        projection_dim=projection_dim,
        form=form,
        exclude_self=exclude_self,
        reduction=reduction,
        dtype=dtype,
    )
    features = torch.randn(batch, dim, dtype=dtype, requires_grad=True)
    logits = torch.randn(batch, classes, dtype=dtype)
    targets = torch.randint(0, classes, (batch,))
    return mccl, features, logits, targets


def _loss_and_grads(mccl, fn, features, logits, targets):
    loss = fn(mccl, features, logits, targets)
    # Per-anchor losses weighted to a mean, so gradients are O(1) whatever the reduction.
    grad_out = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).view(loss.shape)
    grad_out = grad_out / loss.numel()
    inputs = [features, *list(mccl.parameters())]
    grads = torch.autograd.grad((loss * grad_out).sum(), inputs)
    return [loss.detach(), *grads]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", MCCL_CASES)
def test_mccl_fast_path_matches_plain_mccl(case, dtype, switch):
    mccl, features, logits, targets = _mccl_case(*case, dtype=dtype)
    fast = _loss_and_grads(mccl, lambda m, *a: m(*a), features, logits, targets)
    ref = _loss_and_grads(mccl, plain_mccl, features, logits, targets)
    for got, want in zip(fast, ref, strict=True):
        torch.testing.assert_close(got, want, **_tol(dtype))


@pytest.mark.parametrize("case", [MCCL_CASES[4], MCCL_CASES[7], *PROJECTED_CASES[1:]])
def test_mccl_small_blocks_and_recompute_branch(case, monkeypatch):
    """Many row blocks, a small Gram strip, and E recomputed in the backward (as for big B)."""
    mccl, features, logits, targets = _mccl_case(*case, dtype=torch.float32)
    monkeypatch.setattr(contrastive_module, "_BLOCK_ENTRIES", 700)
    monkeypatch.setattr(contrastive_module, "_KEEP_ENTRIES", 0)
    monkeypatch.setattr(contrastive_module, "_GRAM_BLOCK", 24)
    fast = _loss_and_grads(mccl, lambda m, *a: m(*a), features, logits, targets)
    ref = _loss_and_grads(mccl, plain_mccl, features, logits, targets)
    for got, want in zip(fast, ref, strict=True):
        torch.testing.assert_close(got, want, **F32)


@pytest.mark.parametrize("form", ["ratio", "log"])
@pytest.mark.parametrize("exclude_self", [True, False])
def test_contrastive_core_with_memory_matches_reference(form, exclude_self):
    """Memory-bank candidates (not symmetric: two products in the backward)."""
    torch.manual_seed(0)
    z = torch.randn(40, 16, requires_grad=True)
    mem = torch.randn(25, 16, requires_grad=True)
    targets, mem_targets = torch.randint(0, 4, (40,)), torch.randint(0, 4, (25,))
    grad_out = torch.rand(40)

    def run(fn):
        loss, has_pos = fn()
        return [loss.detach(), has_pos, *torch.autograd.grad((loss * grad_out).sum(), (z, mem))]

    fast = run(
        lambda: mccl_module.supervised_contrastive_per_anchor(
            z,
            targets,
            0.1,
            form=form,
            exclude_self=exclude_self,
            memory_z=mem,
            memory_targets=mem_targets,
        )
    )
    cand_targets = torch.cat([targets, mem_targets])
    ref = run(
        lambda: plain_contrastive._contrastive_reference(
            z,
            mem,
            targets,
            cand_targets,
            torch.tensor(0.1),
            form,
            exclude_self,
            torch.finfo(torch.float32).tiny ** 0.5,
        )
    )
    for got, want in zip(fast, ref, strict=True):
        torch.testing.assert_close(got, want, **F32)


@pytest.mark.parametrize("with_memory", [False, True])
def test_contrastive_core_with_strided_targets_warns_as_the_plain_path(with_memory, switch):
    # Labels that are a strided view (every other entry of a longer tensor): the core's
    # torch.searchsorted warned (once per process) about a non-contiguous input, the plain
    # path warns nothing.
    import warnings

    torch.manual_seed(0)
    z = torch.randn(6, 4, requires_grad=True)
    targets = torch.tensor([0, 9, 1, 9, 0, 9, 2, 9, 1, 9, 0, 9])[::2]
    memory = {}
    if with_memory:
        memory = {"memory_z": torch.randn(3, 4), "memory_targets": torch.tensor([2, 0, 1])}
    previous = torch.is_warn_always_enabled()
    torch.set_warn_always(True)  # (torch warns "once per program" otherwise)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = mccl_module.supervised_contrastive_per_anchor(z, targets, 0.1, **memory)[0]
    finally:
        torch.set_warn_always(previous)
    with config.fast_paths("off"):
        want = mccl_module.supervised_contrastive_per_anchor(z, targets, 0.1, **memory)[0]
    torch.testing.assert_close(got, want, **F32)


def test_mccl_backward_twice_with_retain_graph():
    """The kept exp-similarities are consumed by the first backward; the second recomputes."""
    mccl, features, logits, targets = _mccl_case(*MCCL_CASES[4], dtype=torch.float32)
    loss = mccl(features, logits, targets)
    first = torch.autograd.grad(loss, features, retain_graph=True)[0]
    second = torch.autograd.grad(loss, features)[0]
    torch.testing.assert_close(first, second, **F32)


@pytest.mark.parametrize("form", ["ratio", "log"])
def test_mccl_double_backward(form):
    torch.manual_seed(0)
    mccl = MCCLoss(3, 8, [5, 9, 2], (1, 2), projection_dim=4, form=form, dtype=torch.float64)
    features = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(6, 3, dtype=torch.float64)
    targets = torch.tensor([0, 0, 1, 1, 2, 0])
    assert torch.autograd.gradgradcheck(lambda f: mccl(f, logits, targets), (features,))


def test_mccl_under_cpu_autocast_runs_in_float32():
    """The similarity and log-sum-exp stay in float32 under autocast (bfloat16 projections)."""
    mccl, features, logits, targets = _mccl_case(*MCCL_CASES[4], dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = mccl(features, logits, targets)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(features.grad).all()


def test_mccl_second_order_float32_matches_reference():
    """create_graph through the fast path (projections and core) in float32."""
    mccl, features, logits, targets = _mccl_case(*MCCL_CASES[4], dtype=torch.float32)

    def second_order(fn):
        loss = fn(mccl, features, logits, targets)
        (grad,) = torch.autograd.grad(loss, features, create_graph=True)
        return torch.autograd.grad(grad.square().sum(), [features, *mccl.parameters()])

    fast = second_order(lambda m, *a: m(*a))
    ref = second_order(plain_mccl)
    for got, want in zip(fast, ref, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------
# Shared fast linear (MCCL's projections)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_linear_matches_f_linear(bias, dtype):
    torch.manual_seed(0)
    x = torch.randn(37, 24, dtype=dtype, requires_grad=True)
    w = torch.randn(19, 24, dtype=dtype, requires_grad=True)
    b = torch.randn(19, dtype=dtype, requires_grad=True) if bias else None
    grad = torch.randn(37, 19, dtype=dtype)
    inputs = [t for t in (x, w, b) if t is not None]
    out = linear_module.linear(x, w, b)
    got = torch.autograd.grad(out, inputs, grad)
    want_out = F.linear(x, w, b)
    want = torch.autograd.grad(want_out, inputs, grad)
    torch.testing.assert_close(out, want_out, **_tol(dtype))
    for g, ref in zip(got, want, strict=True):
        torch.testing.assert_close(g, ref, **_tol(dtype))


@pytest.mark.filterwarnings("ignore:TF32 acceleration")
def test_fast_linear_takes_the_onednn_path_on_cpu_float32():
    x = torch.randn(5, 8, requires_grad=True)
    out = linear_module.linear(x, torch.randn(3, 8), None)
    expected = linear_module.onednn_usable(x)
    assert (type(out.grad_fn).__name__ == "_LinearFunctionBackward") == expected
    with torch.backends.mkldnn.flags(enabled=False):
        assert type(linear_module.linear(x, torch.randn(3, 8)).grad_fn).__name__ != (
            "_LinearFunctionBackward"
        )


def test_fast_linear_double_backward_matches():
    torch.manual_seed(1)
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(
        lambda *a: linear_module._LinearFunction.apply(*a), (x, w, b)
    )


def test_fast_linear_leaves_autocast_to_f_linear():
    x, w = torch.randn(4, 8), torch.randn(3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert linear_module.linear(x, w).dtype == F.linear(x, w).dtype == torch.bfloat16


def test_mccl_projections_keep_nn_linear_state_dict():
    loss = MCCLoss(3, 16, [5, 4, 3], projection_dim=8)
    plain = {
        f"projections.{k}.{n}": p
        for k, s in enumerate(loss.scales)
        for n, p in torch.nn.Linear(16 // s, 8).state_dict().items()
    }
    assert set(plain) <= set(loss.state_dict())
    loss.load_state_dict({**loss.state_dict(), **plain})
    assert all(isinstance(p, torch.nn.Linear) for p in loss.projections)


# ------------------------------------------------------------------------------------------
# MCCL: scales whose projection is much wider than its input (no embeddings formed)
# ------------------------------------------------------------------------------------------


def _count_projected(monkeypatch):
    calls = []
    original = contrastive_module._ProjectedContrastiveCore.apply
    monkeypatch.setattr(
        contrastive_module._ProjectedContrastiveCore,
        "apply",
        lambda *a: calls.append(a[0].shape[1]) or original(*a),
    )
    return calls


@pytest.mark.parametrize("case", PROJECTED_CASES)
def test_projected_path_is_taken_where_it_pays(case, monkeypatch):
    calls = _count_projected(monkeypatch)
    mccl, features, logits, targets = _mccl_case(*case, dtype=torch.float32)
    mccl(features, logits, targets)
    dim, scales, out = case[2], case[3], case[4]
    assert calls == [dim // s for s in scales if 2 * (dim // s + 1) <= out]
    assert calls


@pytest.mark.parametrize("setup", ["memory", "hook", "autocast", "callable"])
def test_projected_path_is_skipped_when_it_would_change_behaviour(setup, monkeypatch):
    calls = _count_projected(monkeypatch)
    torch.manual_seed(0)
    mccl = MCCLoss(
        3, 16, [5, 4, 3], scales=(4,), projection_dim=64, memory_size=32 if setup == "memory" else 0
    )
    features, logits = torch.randn(12, 16), torch.randn(12, 3)
    targets = torch.arange(12) % 3
    seen = []
    if setup == "hook":
        mccl.projections[0].register_forward_hook(lambda *a: seen.append(1))
    if setup == "callable":
        projection = mccl.projections[0]
        loss = mccl_module.multiscale_category_aware_contrastive_loss(
            features, logits, targets, [5, 4, 3], scales=(4,), projections=[lambda x: projection(x)]
        )
    elif setup == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = mccl(features, logits, targets)
    else:
        loss = mccl(features, logits, targets)
    assert torch.isfinite(loss)
    assert calls == []
    assert seen == ([1] if setup == "hook" else [])


def test_projected_path_with_zero_and_tiny_features_matches():
    """Rows whose projection has (near) zero norm: the clamped-norm branch, as the direct path."""
    torch.manual_seed(3)
    lin = torch.nn.Linear(6, 32, bias=False)
    x = torch.randn(10, 6)
    x[2] = 0.0
    x[5] *= 1e-20
    x.requires_grad_(True)
    targets = torch.tensor([0, 1, 0, 1, 2, 0, 1, 2, 2, 0])
    tau = torch.tensor(0.1)
    got = contrastive_module.projected_contrastive(
        x,
        lin,
        targets,
        tau,
        "ratio",
        True,
        torch.finfo(torch.float32).tiny ** 0.5,
        plain_contrastive._contrastive_reference,
    )[0]
    want = mccl_module.supervised_contrastive_per_anchor(lin(x), targets, tau)[0]
    torch.testing.assert_close(got, want, **F32)
    inputs = [x, lin.weight]
    g_got = torch.autograd.grad(got.sum(), inputs)
    g_want = torch.autograd.grad(want.sum(), inputs)
    for a, b in zip(g_got, g_want, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, **F32)


@pytest.mark.parametrize("form", ["ratio", "log"])
def test_projected_path_double_backward(form):
    torch.manual_seed(4)
    lin = torch.nn.Linear(3, 8).double()
    targets = torch.tensor([0, 1, 0, 1, 1])
    tau = torch.tensor(0.5, dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(
        lambda x, w, b: contrastive_module._ProjectedContrastiveCore.apply(
            x, w, b, targets, tau, form, True, 1e-150, plain_contrastive._contrastive_reference
        )[0],
        (x, lin.weight, lin.bias),
    )


def test_projected_path_backward_twice_with_retain_graph():
    mccl, features, logits, targets = _mccl_case(*PROJECTED_CASES[0], dtype=torch.float32)
    loss = mccl(features, logits, targets)
    first = torch.autograd.grad(loss, features, retain_graph=True)[0]
    second = torch.autograd.grad(loss, features)[0]
    torch.testing.assert_close(first, second, atol=0, rtol=0)


@pytest.mark.parametrize("switch", ["auto", "on"])
@pytest.mark.parametrize("projection_dim", [None, 32])
def test_contrastive_kernels_step_aside_for_forward_mode_ad(switch, projection_dim):
    # The contrastive cores have no jvp: with dual features (or projection weights) the plain
    # path runs, which forward AD goes through (they raised NotImplementedError).
    import torch.autograd.forward_ad as fwad

    from micacl_layers import MCCLoss

    torch.manual_seed(0)
    mccl = MCCLoss(3, 8, [5, 3, 1], projection_dim=projection_dim)
    f, df = torch.randn(6, 8), torch.randn(6, 8)
    z, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])

    def tangent(mode):
        with config.fast_paths(mode), fwad.dual_level():
            return fwad.unpack_dual(mccl(fwad.make_dual(f, df), z, y)).tangent

    want = tangent("off")
    assert bool(want.abs() > 0)
    torch.testing.assert_close(tangent(switch), want)


@pytest.mark.parametrize("kernel", ["wian", "contrastive", "onednn"])
def test_kernels_step_aside_under_torch_jit_trace(kernel, switch):
    # torch.jit.trace records the plain path (as torch.compile and TorchScript do): tracing a
    # kernel raised inside the tracer (an autograd.Function's in-place buffers, oneDNN's
    # private operator) where the plain path traces.
    import warnings

    torch.manual_seed(0)
    if kernel == "wian":
        module = WIAN(3, 4, 2, batch_first=True, bidirectional=True)
        fn, example = (lambda x: module(x)[0]), torch.randn(2, 3, 3)
    elif kernel == "onednn":
        module = linear_module.FastLinear(3, 4)
        fn, example = module, torch.randn(5, 3)
    else:
        module = torch.nn.Module()
        targets = torch.tensor([0, 0, 1, 1, 2])

        def fn(z):
            return plain_contrastive.contrastive_per_anchor(
                z, targets, 0.1, form="ratio", exclude_self=True, memory_z=None, memory_targets=None
            )[0]

        example = torch.randn(5, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the tracer's warnings about Python values)
        traced = torch.jit.trace(
            module if kernel != "contrastive" else fn, example, check_trace=False
        )
    x = torch.randn_like(example, requires_grad=True)
    got = traced(x)
    got = got[0] if kernel == "wian" else got
    with config.fast_paths("off"):
        want = fn(x)
    torch.testing.assert_close(got, want, **F32)
    inputs = [x, *module.parameters()]
    for a, b in zip(
        torch.autograd.grad(got.sum(), inputs), torch.autograd.grad(want.sum(), inputs), strict=True
    ):
        torch.testing.assert_close(a, b, **F32)


@pytest.mark.parametrize("batching", ["is_grads_batched", "vmap"])
@pytest.mark.parametrize("kernel", ["wian", "contrastive", "projected"])
def test_kernels_backward_with_batched_grads(kernel, batching, switch):
    # torch.autograd.grad(..., is_grads_batched=True) (jacobian(vectorize=True)), or
    # torch.func.vmap over torch.autograd.grad, runs the backward under vmap, where the
    # kernels' in-place backward failed ("vmap: aten::mul_ ... is not possible"): there they
    # differentiate the plain formulation, as the plain path does.
    torch.manual_seed(0)
    if kernel == "wian":
        module = WIAN(3, 4, 2, batch_first=True, bidirectional=True)
        x = torch.randn(2, 3, 3, requires_grad=True)
        weights = torch.rand(2, 3, 1)

        def fn():
            return module(x, weights=weights)[0]

    else:
        module = MCCLoss(
            3,
            8,
            [5, 4, 3],
            scales=(2,),
            projection_dim=16 if kernel == "projected" else 4,
            reduction="none",
        )
        x = torch.randn(6, 8, requires_grad=True)
        logits, targets = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 1])

        def fn():
            return module(x, logits, targets)

    inputs = [x, *module.parameters()]

    def grads(mode):
        with config.fast_paths(mode):
            out = fn()
            grad_outputs = torch.randn(3, *out.shape, generator=torch.Generator().manual_seed(1))
            if batching == "is_grads_batched":
                return torch.autograd.grad(out, inputs, grad_outputs, is_grads_batched=True)
            return torch.func.vmap(
                lambda v: torch.autograd.grad(out, inputs, v, retain_graph=True)
            )(grad_outputs)

    for got, want in zip(grads(switch), grads("off"), strict=True):
        torch.testing.assert_close(got, want, **F32)
