"""WIANCell / WIAN (Eq. 3, 5, 6) against nn.LSTMCell / nn.LSTM and a naive step-by-step loop."""

from __future__ import annotations

import sys
import typing

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from micacl_layers import WIAN, WIANCell, config
from micacl_layers.functional import wian_cell
from tests.conftest import assert_finite, dtypes, rand, randn, reference_wian, seeds

SATURATE = 50.0  # sigmoid(50 +- a few) == 1.0 exactly in float64 (1 - 2e-22 rounds to 1)


def _weights(
    kind: str,
    batch: int,
    steps: int,
    hidden: int,
    *,
    seed: int,
    dtype: torch.dtype,
    batch_first: bool = True,
) -> torch.Tensor | None:
    """Instance weights of layout (B, T, *) (or (T, B, *) if not batch_first)."""
    if kind == "none":
        return None
    last = hidden if kind == "full" else 1
    shape = (batch, steps, last) if batch_first else (steps, batch, last)
    return rand(*shape, seed=seed, dtype=dtype, low=0.0, high=2.0)


weight_kinds = st.sampled_from(["none", "full", "single"])


def _saturate_dynamic_gate(module: nn.Module, hidden: int) -> None:
    """Push the dynamic weight gate's bias to +SATURATE so that sigma(.) == 1 exactly."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("bias_ih"):
                p[4 * hidden :] = SATURATE
            elif name.startswith("bias_hh"):
                p[4 * hidden :] = 0.0


# ------------------------------------------------------------------------------------------
# WIANCell
# ------------------------------------------------------------------------------------------


@given(
    batch=st.integers(0, 4),
    in_size=st.integers(1, 6),
    hidden=st.integers(1, 6),
    weight_kind=st.sampled_from(["none", "full", "single", "scalar"]),
    with_hx=st.booleans(),
    bias=st.booleans(),
    dtype=dtypes,
    seed=seeds,
)
def test_cell_shapes(batch, in_size, hidden, weight_kind, with_hx, bias, dtype, seed):
    """batch == 0 stands for an unbatched input."""
    torch.manual_seed(seed)
    cell = WIANCell(in_size, hidden, bias=bias, dtype=dtype)
    lead = (batch,) if batch else ()
    x = randn(*lead, in_size, seed=seed, dtype=dtype)
    hx = None
    if with_hx:
        hx = (
            randn(*lead, hidden, seed=seed + 1, dtype=dtype),
            randn(*lead, hidden, seed=seed + 2, dtype=dtype),
        )
    weight = {
        "none": None,
        "full": rand(*lead, hidden, seed=seed + 3, dtype=dtype),
        "single": rand(*lead, 1, seed=seed + 3, dtype=dtype),
        "scalar": torch.tensor(0.5, dtype=dtype),
    }[weight_kind]
    h, c = cell(x, hx, weight=weight)
    assert h.shape == c.shape == (*lead, hidden)
    assert h.dtype == c.dtype == dtype
    assert_finite(h, c)
    assert bool((h.abs() <= 1).all())


@pytest.mark.parametrize("weight", ["none", "ones"])
@pytest.mark.parametrize("bias", [True, False])
def test_cell_equals_lstmcell_when_gate_saturated(weight, bias):
    torch.manual_seed(0)
    in_size, hidden, batch = 5, 4, 3
    lstm = nn.LSTMCell(in_size, hidden, bias=bias, dtype=torch.float64)
    cell = WIANCell(in_size, hidden, bias=bias, dtype=torch.float64)
    with torch.no_grad():
        cell.weight_ih[: 4 * hidden] = lstm.weight_ih
        cell.weight_hh[: 4 * hidden] = lstm.weight_hh
        if bias:
            cell.bias_ih[: 4 * hidden] = lstm.bias_ih
            cell.bias_hh[: 4 * hidden] = lstm.bias_hh
            _saturate_dynamic_gate(cell, hidden)
        else:
            # No bias to saturate with: make the gate's pre-activation large through the input.
            cell.weight_ih[4 * hidden :] = 0.0
            cell.weight_hh[4 * hidden :] = 0.0
            cell.weight_ih[4 * hidden :, 0] = SATURATE
    x = torch.randn(batch, in_size, dtype=torch.float64)
    if not bias:
        x[:, 0] = 1.0
    hx = (
        torch.randn(batch, hidden, dtype=torch.float64),
        torch.randn(batch, hidden, dtype=torch.float64),
    )
    w = None if weight == "none" else torch.ones(batch, hidden, dtype=torch.float64)
    h, c = cell(x, hx, weight=w)
    h_ref, c_ref = lstm(x, hx)
    torch.testing.assert_close(h, h_ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(c, c_ref, atol=1e-12, rtol=0)


def test_cell_follows_eq3_5_6():
    """Each gate written out by hand, with non-trivial instance weights."""
    torch.manual_seed(0)
    in_size, hidden, batch = 3, 4, 2
    cell = WIANCell(in_size, hidden, dtype=torch.float64)
    x = torch.randn(batch, in_size, dtype=torch.float64)
    h0 = torch.randn(batch, hidden, dtype=torch.float64)
    c0 = torch.randn(batch, hidden, dtype=torch.float64)
    w = torch.rand(batch, hidden, dtype=torch.float64)

    def gate(k):
        rows = slice(k * hidden, (k + 1) * hidden)
        return (
            x @ cell.weight_ih[rows].T
            + h0 @ cell.weight_hh[rows].T
            + cell.bias_ih[rows]
            + cell.bias_hh[rows]
        )

    i, f, o = torch.sigmoid(gate(0)), torch.sigmoid(gate(1)), torch.sigmoid(gate(3))
    cand = torch.tanh(gate(2))
    d = torch.sigmoid(gate(4)) * w  # Eq. 3
    c = f * c0 + i * cand * d  # Eq. 5
    h = o * torch.tanh(c)  # Eq. 6
    h_got, c_got = cell(x, (h0, c0), weight=w)
    torch.testing.assert_close(h_got, h)
    torch.testing.assert_close(c_got, c)


def test_cell_zero_weight_keeps_cell_state_decaying_only():
    torch.manual_seed(0)
    cell = WIANCell(3, 4, dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64)
    c0 = torch.randn(2, 4, dtype=torch.float64)
    h0 = torch.randn(2, 4, dtype=torch.float64)
    _, c = cell(x, (h0, c0), weight=torch.zeros(2, 1, dtype=torch.float64))
    f = torch.sigmoid(
        x @ cell.weight_ih[4:8].T
        + h0 @ cell.weight_hh[4:8].T
        + cell.bias_ih[4:8]
        + cell.bias_hh[4:8]
    )
    torch.testing.assert_close(c, f * c0)


def test_cell_unbatched_equals_batch_of_one():
    torch.manual_seed(0)
    cell = WIANCell(3, 4)
    x, w = torch.randn(3), torch.rand(4)
    hx = (torch.randn(4), torch.randn(4))
    h, c = cell(x, hx, weight=w)
    hb, cb = cell(x[None], (hx[0][None], hx[1][None]), weight=w[None])
    torch.testing.assert_close(h, hb[0])
    torch.testing.assert_close(c, cb[0])


def test_functional_cell_matches_module():
    torch.manual_seed(0)
    cell = WIANCell(3, 4)
    x, h0, c0, w = torch.randn(2, 3), torch.randn(2, 4), torch.randn(2, 4), torch.rand(2, 1)
    gates = x @ cell.weight_ih.T + h0 @ cell.weight_hh.T + cell.bias_ih + cell.bias_hh
    h, c = wian_cell(gates, c0, w)
    h2, c2 = cell(x, (h0, c0), weight=w)
    torch.testing.assert_close(h, h2)
    torch.testing.assert_close(c, c2)


@pytest.mark.parametrize("name", ["c_prev", "weight"])
def test_functional_cell_rejects_an_argument_on_another_device(name):
    # It used to fail inside torch's sigmoid or multiply, naming neither argument.
    args = {"gates": torch.randn(2, 20), "c_prev": torch.randn(2, 4), "weight": torch.rand(2, 1)}
    args[name] = args[name].to("meta")
    with pytest.raises(ValueError, match=f"`{name}` must be on the device of `gates` \\(cpu\\)"):
        wian_cell(**args)


def test_cell_gradcheck():
    torch.manual_seed(0)
    cell = WIANCell(3, 2, dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    w = torch.rand(2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c, d: cell(a, (b, c), weight=d), (x, h0, c0, w))


# ------------------------------------------------------------------------------------------
# WIAN
# ------------------------------------------------------------------------------------------


@given(
    batch=st.integers(0, 3),
    steps=st.integers(1, 5),
    in_size=st.integers(1, 5),
    hidden=st.integers(1, 5),
    num_layers=st.integers(1, 3),
    bidirectional=st.booleans(),
    batch_first=st.booleans(),
    weight_kind=weight_kinds,
    with_hx=st.booleans(),
    dtype=dtypes,
    seed=seeds,
)
def test_wian_shapes(
    batch,
    steps,
    in_size,
    hidden,
    num_layers,
    bidirectional,
    batch_first,
    weight_kind,
    with_hx,
    dtype,
    seed,
):
    """batch == 0 stands for an unbatched (T, I) input."""
    torch.manual_seed(seed)
    wian = WIAN(
        in_size,
        hidden,
        num_layers=num_layers,
        bidirectional=bidirectional,
        batch_first=batch_first,
        dtype=dtype,
    )
    dirs = 2 if bidirectional else 1
    unbatched = batch == 0
    b = 1 if unbatched else batch
    x = randn(b, steps, in_size, seed=seed, dtype=dtype)
    w = _weights(weight_kind, b, steps, hidden, seed=seed + 1, dtype=dtype)
    hx = None
    if with_hx:
        hx = tuple(randn(dirs * num_layers, b, hidden, seed=seed + k, dtype=dtype) for k in (2, 3))
    if not batch_first:
        x = x.transpose(0, 1)
        w = None if w is None else w.transpose(0, 1)
    if unbatched:
        x = x.squeeze(0 if batch_first else 1)
        w = None if w is None else w.squeeze(0 if batch_first else 1)
        hx = None if hx is None else tuple(t.squeeze(1) for t in hx)
    out, (h_n, c_n) = wian(x, hx, weights=w)
    if unbatched:
        assert out.shape == (steps, dirs * hidden)
        assert h_n.shape == c_n.shape == (dirs * num_layers, hidden)
    else:
        expected = (b, steps, dirs * hidden) if batch_first else (steps, b, dirs * hidden)
        assert out.shape == expected
        assert h_n.shape == c_n.shape == (dirs * num_layers, b, hidden)
    assert out.dtype == h_n.dtype == c_n.dtype == dtype
    assert_finite(out, h_n, c_n)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("weight", ["none", "ones"])
def test_wian_equals_lstm_when_gate_saturated(bidirectional, batch_first, num_layers, weight):
    torch.manual_seed(0)
    in_size, hidden, batch, steps = 5, 4, 3, 6
    lstm = nn.LSTM(
        in_size,
        hidden,
        num_layers=num_layers,
        bidirectional=bidirectional,
        batch_first=batch_first,
        dtype=torch.float64,
    )
    wian = WIAN(
        in_size,
        hidden,
        num_layers=num_layers,
        bidirectional=bidirectional,
        batch_first=batch_first,
        dtype=torch.float64,
    )
    wian_params = dict(wian.named_parameters())
    lstm_params = dict(lstm.named_parameters())
    assert set(wian_params) == set(lstm_params)
    with torch.no_grad():
        for name, p in lstm_params.items():
            assert wian_params[name].shape[0] == 5 * hidden
            assert wian_params[name].shape[1:] == p.shape[1:]
            wian_params[name][: 4 * hidden] = p
    _saturate_dynamic_gate(wian, hidden)
    dirs = 2 if bidirectional else 1
    x = torch.randn(batch, steps, in_size, dtype=torch.float64)
    if not batch_first:
        x = x.transpose(0, 1)
    h0 = torch.randn(dirs * num_layers, batch, hidden, dtype=torch.float64)
    c0 = torch.randn(dirs * num_layers, batch, hidden, dtype=torch.float64)
    w = None
    if weight == "ones":
        w = torch.ones(batch, steps, 1, dtype=torch.float64)
        w = w if batch_first else w.transpose(0, 1)
    out, (h_n, c_n) = wian(x, (h0, c0), weights=w)
    out_ref, (h_ref, c_ref) = lstm(x, (h0, c0))
    torch.testing.assert_close(out, out_ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(h_n, h_ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(c_n, c_ref, atol=1e-12, rtol=0)


@given(
    batch=st.integers(1, 3),
    steps=st.integers(1, 5),
    in_size=st.integers(1, 4),
    hidden=st.integers(1, 4),
    num_layers=st.integers(1, 3),
    bidirectional=st.booleans(),
    batch_first=st.booleans(),
    weight_kind=weight_kinds,
    with_hx=st.booleans(),
    bias=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=seeds,
)
def test_wian_equals_naive_cell_loop(
    batch,
    steps,
    in_size,
    hidden,
    num_layers,
    bidirectional,
    batch_first,
    weight_kind,
    with_hx,
    bias,
    dtype,
    seed,
):
    torch.manual_seed(seed)
    wian = WIAN(
        in_size,
        hidden,
        num_layers=num_layers,
        bidirectional=bidirectional,
        batch_first=batch_first,
        bias=bias,
        dtype=dtype,
    )
    with torch.no_grad():  # wider than the default init, so the gates are far from linear
        for p in wian.parameters():
            p.mul_(3.0)
    dirs = 2 if bidirectional else 1
    x = randn(batch, steps, in_size, seed=seed, dtype=dtype)
    w = _weights(weight_kind, batch, steps, hidden, seed=seed + 1, dtype=dtype)
    hx = None
    if with_hx:
        hx = tuple(
            randn(dirs * num_layers, batch, hidden, seed=seed + k, dtype=dtype) for k in (2, 3)
        )
    out_ref, (h_ref, c_ref) = reference_wian(wian, x, w, hx)
    if not batch_first:
        x = x.transpose(0, 1)
        w = None if w is None else w.transpose(0, 1)
    out, (h_n, c_n) = wian(x, hx, weights=w)
    if not batch_first:
        out = out.transpose(0, 1)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(out, out_ref, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(h_n, h_ref, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(c_n, c_ref, atol=tolerance, rtol=tolerance)


def test_reverse_direction_uses_weight_of_instance_it_reads():
    """Zeroing the weight of the last instance changes the reverse direction's first step."""
    torch.manual_seed(0)
    wian = WIAN(3, 2, bidirectional=True, batch_first=True, dtype=torch.float64)
    x = torch.randn(1, 4, 3, dtype=torch.float64)
    w = torch.ones(1, 4, 1, dtype=torch.float64)
    w[0, 3] = 0.0
    out, _ = wian(x, weights=w)
    # The reverse direction reads instance 3 first, from a zero state: with w_3 = 0 its cell
    # stays 0, so its hidden state at t=3 is exactly 0; the forward one at t=3 is not.
    assert torch.equal(out[0, 3, 2:], torch.zeros(2, dtype=torch.float64))
    assert bool((out[0, 3, :2] != 0).all())


def test_all_zero_weights_give_zero_output():
    torch.manual_seed(0)
    wian = WIAN(3, 4, num_layers=2, bidirectional=True, batch_first=True)
    out, (h_n, c_n) = wian(torch.randn(2, 5, 3), weights=torch.zeros(2, 5, 1))
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.equal(h_n, torch.zeros_like(h_n))
    assert torch.equal(c_n, torch.zeros_like(c_n))


def test_weights_broadcast_and_ones_equal_none():
    torch.manual_seed(0)
    wian = WIAN(3, 4, num_layers=2, bidirectional=True, batch_first=True, dtype=torch.float64)
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    w1 = torch.rand(2, 5, 1, dtype=torch.float64)
    torch.testing.assert_close(wian(x, weights=w1)[0], wian(x, weights=w1.expand(2, 5, 4))[0])
    torch.testing.assert_close(
        wian(x, weights=torch.ones(2, 5, 4, dtype=torch.float64))[0], wian(x)[0]
    )


@pytest.mark.parametrize("switch", ["on", "off"])
@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("batch_first", [True, False])
def test_wian_empty_batch_like_lstm(batch_first, bidirectional, switch):
    """A batch of zero clips: empty outputs and zero-size gradients, as nn.LSTM gives."""
    with config.fast_paths(switch):
        _check_empty_batch(batch_first, bidirectional)


def _check_empty_batch(batch_first, bidirectional):
    torch.manual_seed(0)
    wian = WIAN(4, 3, num_layers=2, bidirectional=bidirectional, batch_first=batch_first)
    lstm = nn.LSTM(4, 3, num_layers=2, bidirectional=bidirectional, batch_first=batch_first)
    shape = (0, 5, 4) if batch_first else (5, 0, 4)
    x = torch.randn(shape, requires_grad=True)
    weights = torch.rand((*shape[:2], 1), requires_grad=True)
    out, (h_n, c_n) = wian(x, weights=weights)
    want, (h_want, c_want) = lstm(x)
    assert out.shape == want.shape and h_n.shape == h_want.shape and c_n.shape == c_want.shape
    (out.sum() + h_n.sum() + c_n.sum()).backward()
    assert x.grad.shape == x.shape and weights.grad.shape == weights.shape
    for p in wian.parameters():
        assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p))


@pytest.mark.parametrize("batch_first", [True, False])
def test_wian_unbatched_equals_batch_of_one(batch_first):
    torch.manual_seed(0)
    wian = WIAN(
        3, 4, num_layers=2, bidirectional=True, batch_first=batch_first, dtype=torch.float64
    )
    x = torch.randn(5, 3, dtype=torch.float64)
    w = torch.rand(5, 4, dtype=torch.float64)
    hx = (torch.randn(4, 4, dtype=torch.float64), torch.randn(4, 4, dtype=torch.float64))
    out, (h_n, c_n) = wian(x, hx, weights=w)
    dim = 0 if batch_first else 1
    out_b, (h_b, c_b) = wian(
        x.unsqueeze(dim), (hx[0].unsqueeze(1), hx[1].unsqueeze(1)), weights=w.unsqueeze(dim)
    )
    torch.testing.assert_close(out, out_b.squeeze(dim))
    torch.testing.assert_close(h_n, h_b.squeeze(1))
    torch.testing.assert_close(c_n, c_b.squeeze(1))


def test_wian_gradcheck_input_and_weights():
    torch.manual_seed(0)
    wian = WIAN(2, 2, num_layers=2, bidirectional=True, batch_first=True, dtype=torch.float64)
    x = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)
    w = torch.rand(2, 3, 2, dtype=torch.float64, requires_grad=True)

    def fn(inp, weights):
        out, (h_n, c_n) = wian(inp, weights=weights)
        return out, h_n, c_n

    assert torch.autograd.gradcheck(fn, (x, w))


def test_wian_gradcheck_initial_state():
    torch.manual_seed(0)
    wian = WIAN(2, 2, num_layers=2, bidirectional=True, batch_first=False, dtype=torch.float64)
    x = torch.randn(3, 2, 2, dtype=torch.float64)
    w = torch.rand(3, 2, 1, dtype=torch.float64)
    h0 = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: wian(x, (a, b), weights=w)[0], (h0, c0))


def test_wian_gradients_reach_every_parameter():
    torch.manual_seed(0)
    wian = WIAN(3, 4, num_layers=3, bidirectional=True, batch_first=True)
    out, (h_n, c_n) = wian(torch.randn(2, 5, 3), weights=torch.rand(2, 5, 4))
    (out.sum() + h_n.sum() + c_n.sum()).backward()
    for name, p in wian.named_parameters():
        assert p.grad is not None, name
        assert bool(p.grad.abs().sum() > 0), name


def test_dropout_only_in_training():
    torch.manual_seed(0)
    wian = WIAN(3, 4, num_layers=2, batch_first=True, dropout=0.5)
    x = torch.randn(2, 5, 3)
    wian.eval()
    torch.testing.assert_close(wian(x)[0], wian(x)[0], atol=0, rtol=0)
    wian.train()
    torch.manual_seed(1)
    a = wian(x)[0]
    torch.manual_seed(2)
    b = wian(x)[0]
    assert not torch.allclose(a, b)


def test_wian_state_dict_round_trip():
    torch.manual_seed(0)
    a = WIAN(3, 4, num_layers=2, bidirectional=True, batch_first=True)
    torch.manual_seed(1)
    b = WIAN(3, 4, num_layers=2, bidirectional=True, batch_first=True)
    x, w = torch.randn(2, 5, 3), torch.rand(2, 5, 1)
    assert not torch.allclose(a(x, weights=w)[0], b(x, weights=w)[0])
    b.load_state_dict(a.state_dict())
    for ya, yb in zip(
        a(x, weights=w)[1] + (a(x, weights=w)[0],),
        b(x, weights=w)[1] + (b(x, weights=w)[0],),
        strict=True,
    ):
        torch.testing.assert_close(ya, yb, atol=0, rtol=0)


def test_torch_compile_smoke():
    """Dynamo + AOTAutograd (no C++ codegen, so it takes about a second on CPU)."""
    torch.manual_seed(0)
    wian = WIAN(3, 4, num_layers=2, bidirectional=True, batch_first=True)
    compiled = torch.compile(wian, backend="aot_eager")
    x = torch.randn(2, 5, 3, requires_grad=True)
    w = torch.rand(2, 5, 1)
    out = compiled(x, weights=w)[0]
    torch.testing.assert_close(out, wian(x, weights=w)[0])
    out.sum().backward()
    assert_finite(x.grad)


@pytest.mark.parametrize("switch", ["auto", "on"])
def test_forward_mode_ad_under_every_switch(switch):
    # The fused kernel has no jvp: with a dual input (or weight) it steps aside for the plain
    # path, which forward AD goes through (it raised NotImplementedError).
    import torch.autograd.forward_ad as fwad

    torch.manual_seed(0)
    wian = WIAN(3, 4, num_layers=2, bidirectional=True)
    x, dx = torch.randn(5, 2, 3), torch.randn(5, 2, 3)
    w, dw = torch.rand(5, 2), torch.randn(5, 2)

    def tangent(mode):
        with config.fast_paths(mode), fwad.dual_level():
            out = wian(fwad.make_dual(x, dx), weights=fwad.make_dual(w, dw))[0]
            return fwad.unpack_dual(out).tangent

    want = tangent("off")
    assert bool(want.abs().sum() > 0)
    torch.testing.assert_close(tangent(switch), want, atol=0, rtol=0)


@pytest.mark.parametrize("switch", ["auto", "on"])
@pytest.mark.parametrize("use_reentrant", [False, True])
def test_activation_checkpointing_under_every_switch(switch, use_reentrant):
    # The fused kernel's backward read ctx.saved_tensors twice, which non-reentrant
    # checkpointing (torch's recommended mode) refuses: CheckpointError.
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    wian = WIAN(3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 3, requires_grad=True)
    w = torch.rand(5, 2, requires_grad=True)

    def grads(mode, checkpointed):
        for t in (x, w, *wian.parameters()):
            t.grad = None
        with config.fast_paths(mode):
            if checkpointed:
                out = checkpoint(
                    lambda a, b: wian(a, weights=b)[0], x, w, use_reentrant=use_reentrant
                )
            else:
                out = wian(x, weights=w)[0]
            out.square().sum().backward()
        return [t.grad.clone() for t in (x, w, *wian.parameters())]

    want = grads("off", False)
    for got, ref in zip(grads(switch, True), want, strict=True):
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="typing.get_overloads is new in 3.11")
def test_forward_overloads_pair_tensor_and_packed_like_lstm():
    # nn.LSTM.forward is typed with overloads, so a checker sees a tensor out for a tensor in.
    hints = [typing.get_type_hints(f) for f in typing.get_overloads(WIAN.forward)]
    packed = torch.nn.utils.rnn.PackedSequence
    pairs = {(h["input"], h["return"].__args__[0]) for h in hints}
    assert pairs == {(torch.Tensor, torch.Tensor), (packed, packed)}


@pytest.mark.parametrize("strict", [True, False])
def test_lstm_state_dict_into_wian_names_the_conversion(strict):
    # A swapped model loading its old nn.LSTM checkpoint gets told how to convert it, not just
    # torch's "size mismatch" between 4H and 5H rows.
    model = nn.Sequential(WIAN(8, 6, num_layers=2, bidirectional=True))
    old = nn.Sequential(nn.LSTM(8, 6, num_layers=2, bidirectional=True)).state_dict()
    with pytest.raises(RuntimeError) as info:
        model.load_state_dict(old, strict=strict)
    message = str(info.value)
    assert "`state_dict['0.weight_ih_l0']` has 24 rows" in message
    assert "WIAN has 30" in message
    assert "WIAN.from_lstm(lstm)" in message
    assert "size mismatch" not in message  # (one clear message, not one per tensor)


@pytest.mark.parametrize("strict", [True, False])
def test_lstm_cell_state_dict_into_wian_cell_names_the_conversion(strict):
    with pytest.raises(RuntimeError) as info:
        WIANCell(8, 6).load_state_dict(nn.LSTMCell(8, 6).state_dict(), strict=strict)
    message = str(info.value)
    assert "`state_dict['weight_ih']` has 24 rows" in message
    assert "WIANCell has 30" in message
    assert "WIANCell.from_lstm_cell(cell)" in message


def test_other_size_mismatches_keep_torchs_message():
    # Only the 4H-versus-5H signature of an LSTM checkpoint gets the hint.
    with pytest.raises(RuntimeError, match="size mismatch") as info:
        WIAN(8, 6).load_state_dict(WIAN(8, 5).state_dict())
    assert "from_lstm" not in str(info.value)
