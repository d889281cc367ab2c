"""WIAN / WIANCell as drop-ins for nn.LSTM / nn.LSTMCell (issue 15).

Constructor arguments and defaults, forward(input, hx) with hx as a tuple or list, shapes for
batch_first both ways, batched and unbatched, 1-3 layers, one or two directions; from_lstm /
from_lstm_cell equal to the LSTM; (B, T) instance weights; inputs of another dtype; meta device;
the fused kernel under autocast.
"""

from __future__ import annotations

import inspect
import itertools
import warnings

import pytest
import torch
from torch import nn

from micacl_layers import WIAN, WIANCell, config

F32 = {"atol": 1e-6, "rtol": 0.0}
SWEEP = list(itertools.product([False, True], [1, 2, 3], [False, True]))  # batch_first, L, bidir


def _ids(case):
    batch_first, layers, bidir = case
    return f"bf{int(batch_first)}-L{layers}-D{2 if bidir else 1}"


def _input(
    batch_first: bool,
    unbatched: bool,
    batch: int = 3,
    steps: int = 5,
    size: int = 4,
    dtype=torch.float32,
):
    if unbatched:
        return torch.randn(steps, size, dtype=dtype)
    return torch.randn(*((batch, steps) if batch_first else (steps, batch)), size, dtype=dtype)


def _hx(layers: int, dirs: int, unbatched: bool, kind: str, batch: int = 3, hidden: int = 6):
    if kind == "none":
        return None
    lead = (layers * dirs,) if unbatched else (layers * dirs, batch)
    pair = [torch.randn(*lead, hidden), torch.randn(*lead, hidden)]
    return tuple(pair) if kind == "tuple" else pair


# ------------------------------------------------------------------------------------------
# Constructor
# ------------------------------------------------------------------------------------------


def _defaults(fn, skip=("self", "mode")):
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if k not in skip}


def test_constructor_signature_and_defaults_match_lstm():
    # nn.LSTM takes *args, **kwargs and hands them to RNNBase after `mode`.
    assert _defaults(WIAN.__init__) == _defaults(nn.modules.rnn.RNNBase.__init__)
    assert list(_defaults(WIAN.__init__)) == list(_defaults(nn.modules.rnn.RNNBase.__init__))
    assert _defaults(WIANCell.__init__) == _defaults(nn.LSTMCell.__init__)
    assert list(_defaults(WIANCell.__init__)) == list(_defaults(nn.LSTMCell.__init__))


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((4, 6), {}),
        ((4, 6, 2), {}),
        ((4, 6, 2, False, True, 0.25, True), {}),  # every option positionally, as nn.LSTM allows
        (
            (4, 6),
            {
                "num_layers": 3,
                "bias": False,
                "batch_first": True,
                "dropout": 0.5,
                "bidirectional": True,
                "proj_size": 0,
            },
        ),
        ((), {"input_size": 4, "hidden_size": 6, "dtype": torch.float64, "device": "cpu"}),
    ],
)
def test_constructor_attributes_match_lstm(args, kwargs):
    wian, lstm = WIAN(*args, **kwargs), nn.LSTM(*args, **kwargs)
    for attr in (
        "input_size",
        "hidden_size",
        "num_layers",
        "bias",
        "batch_first",
        "dropout",
        "bidirectional",
        "proj_size",
    ):
        assert getattr(wian, attr) == getattr(lstm, attr), attr
    assert wian.weight_ih_l0.dtype == lstm.weight_ih_l0.dtype
    # The same parameter names; WIAN's have five gates where nn.LSTM's have four.
    lstm_params = dict(lstm.named_parameters())
    for name, p in wian.named_parameters():
        q = lstm_params.pop(name)
        assert p.shape == (q.shape[0] * 5 // 4, *q.shape[1:]), name
    assert not lstm_params


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {
            "num_layers": 3,
            "bias": False,
            "batch_first": True,
            "dropout": 0.5,
            "bidirectional": True,
        },
    ],
)
def test_repr_matches_lstm(kwargs):
    assert repr(WIAN(4, 6, **kwargs)).replace("WIAN", "LSTM") == repr(nn.LSTM(4, 6, **kwargs))


@pytest.mark.parametrize("bias", [True, False])
def test_cell_repr_matches_lstm_cell(bias):
    # nn.LSTMCell shows the bias only when it is not the default.
    got = repr(WIANCell(4, 6, bias=bias)).replace("WIANCell", "LSTMCell")
    assert got == repr(nn.LSTMCell(4, 6, bias=bias))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bias": None},
        {"bias": 0},
        {"batch_first": 1},
        {"dropout": 1.5},
        {"dropout": -0.1},
        {"dropout": True},
        {"num_layers": 0},
        {"hidden_size": 0},
        {"no_such_option": 1},
    ],
)
def test_invalid_constructor_arguments_raise_like_lstm(kwargs):
    args = {"input_size": 4, "hidden_size": 6, **kwargs}
    with pytest.raises(Exception) as lstm_error:
        nn.LSTM(**args)
    with pytest.raises(lstm_error.type):
        WIAN(**args)


def test_dropout_with_one_layer_warns_like_lstm():
    for cls in (nn.LSTM, WIAN):
        with pytest.warns(UserWarning, match="num_layers greater than 1"):
            cls(4, 6, dropout=0.5)


def test_proj_size_is_a_clear_error():
    with pytest.raises(ValueError, match="`proj_size` must be 0"):
        WIAN(4, 6, proj_size=3)
    with pytest.raises(ValueError, match="proj_size"):
        WIAN.from_lstm(nn.LSTM(4, 6, proj_size=3))


@pytest.mark.parametrize("bias", [True, False])
def test_all_weights_are_laid_out_as_in_lstm(bias):
    wian = WIAN(4, 6, 2, bias=bias, bidirectional=True)
    lstm = nn.LSTM(4, 6, 2, bias=bias, bidirectional=True)
    got = [[p.shape for p in group] for group in wian.all_weights]
    want = [[(q.shape[0] * 5 // 4, *q.shape[1:]) for q in group] for group in lstm.all_weights]
    assert got == want
    # The very parameters, not copies: what is written through all_weights is trained.
    assert wian.all_weights[3][1] is wian.weight_hh_l1_reverse


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_flat_weights_names_as_in_lstm(bias, bidirectional):
    wian = WIAN(4, 6, 3, bias=bias, bidirectional=bidirectional)
    lstm = nn.LSTM(4, 6, 3, bias=bias, bidirectional=bidirectional)
    assert wian._all_weights == lstm._all_weights
    assert wian._flat_weights_names == lstm._flat_weights_names
    params = dict(wian.named_parameters())
    assert all(params[n] is getattr(wian, n) for n in wian._flat_weights_names)


def test_flatten_parameters_is_a_no_op():
    torch.manual_seed(0)
    wian = WIAN(4, 6, 2, bidirectional=True)
    before = {k: v.clone() for k, v in wian.state_dict().items()}
    x = torch.randn(5, 3, 4)
    out = wian(x)[0]
    assert wian.flatten_parameters() is None
    for k, v in wian.state_dict().items():
        assert torch.equal(v, before[k]), k
    torch.testing.assert_close(wian(x)[0], out, atol=0, rtol=0)


# ------------------------------------------------------------------------------------------
# forward: shapes and hx against nn.LSTM (independent init), values via from_lstm
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", SWEEP, ids=_ids)
@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
@pytest.mark.parametrize("hx_kind", ["none", "tuple", "list"])
def test_forward_matches_lstm(case, unbatched, hx_kind):
    batch_first, layers, bidir = case
    torch.manual_seed(0)
    kwargs = {"num_layers": layers, "batch_first": batch_first, "bidirectional": bidir}
    lstm = nn.LSTM(4, 6, **kwargs)
    wian = WIAN(4, 6, **kwargs)
    x = _input(batch_first, unbatched)
    hx = _hx(layers, 2 if bidir else 1, unbatched, hx_kind)
    want, (h_want, c_want) = lstm(x, hx)
    got, (h_got, c_got) = wian(x, hx)
    assert got.shape == want.shape and h_got.shape == h_want.shape
    assert c_got.shape == c_want.shape
    # The same values once WIAN holds the LSTM's gates: the recurrence runs over the same axis.
    got, (h_got, c_got) = WIAN.from_lstm(lstm)(x, hx)
    torch.testing.assert_close(got, want, **F32)
    torch.testing.assert_close(h_got, h_want, **F32)
    torch.testing.assert_close(c_got, c_want, **F32)


@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
@pytest.mark.parametrize("hx_kind", ["none", "tuple", "list"])
@pytest.mark.parametrize("bias", [True, False])
def test_cell_matches_lstm_cell(unbatched, hx_kind, bias):
    torch.manual_seed(0)
    lstm_cell = nn.LSTMCell(4, 6, bias=bias)
    cell = WIANCell(4, 6, bias=bias)
    x = torch.randn(4) if unbatched else torch.randn(3, 4)
    hx = None
    if hx_kind != "none":
        lead = () if unbatched else (3,)
        pair = [torch.randn(*lead, 6), torch.randn(*lead, 6)]
        hx = tuple(pair) if hx_kind == "tuple" else pair
    h_want, c_want = lstm_cell(x, hx)
    h_got, c_got = cell(x, hx)
    assert h_got.shape == h_want.shape and c_got.shape == c_want.shape
    h_got, c_got = WIANCell.from_lstm_cell(lstm_cell)(x, hx)
    torch.testing.assert_close(h_got, h_want, **F32)
    torch.testing.assert_close(c_got, c_want, **F32)


# ------------------------------------------------------------------------------------------
# from_lstm
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", SWEEP, ids=_ids)
@pytest.mark.parametrize("bias", [True, False])
def test_from_lstm_equals_lstm_with_unit_weights(case, bias):
    batch_first, layers, bidir = case
    torch.manual_seed(1)
    lstm = nn.LSTM(5, 7, num_layers=layers, bias=bias, batch_first=batch_first, bidirectional=bidir)
    with torch.no_grad():  # wider than the default init: gates far from their linear range
        for p in lstm.parameters():
            p.mul_(3.0)
    wian = WIAN.from_lstm(lstm)
    x = _input(batch_first, False, batch=4, steps=9, size=5) * 2
    want, (h_want, c_want) = lstm(x)
    ones = torch.ones(x.shape[:2])
    for weights in (None, ones, ones.unsqueeze(-1)):
        got, (h_got, c_got) = wian(x, weights=weights)
        torch.testing.assert_close(got, want, **F32)
        torch.testing.assert_close(h_got, h_want, **F32)
        torch.testing.assert_close(c_got, c_want, **F32)


@pytest.mark.parametrize("switch", ["auto", "off", "on"])
def test_from_lstm_under_every_switch_and_float64(switch):
    torch.manual_seed(2)
    lstm = nn.LSTM(5, 7, num_layers=2, bidirectional=True, dtype=torch.float64)
    wian = WIAN.from_lstm(lstm)
    assert wian.weight_ih_l0.dtype == torch.float64
    x = torch.randn(6, 3, 5, dtype=torch.float64)
    with config.fast_paths(switch):
        got = wian(x)[0]
    torch.testing.assert_close(got, lstm(x)[0], atol=1e-12, rtol=0)


def test_from_lstm_copies_options_and_saturates_the_gate():
    lstm = nn.LSTM(5, 7, num_layers=3, batch_first=True, dropout=0.25, bidirectional=True)
    lstm.eval()
    wian = WIAN.from_lstm(lstm)
    assert (wian.num_layers, wian.batch_first, wian.dropout, wian.bidirectional) == (
        3,
        True,
        0.25,
        True,
    )
    assert not wian.training
    assert WIAN.from_lstm(lstm.train()).training
    h = 7
    for name, p in wian.named_parameters():
        if name.startswith("bias_ih"):
            gate = p[4 * h :]
            assert bool((torch.sigmoid(gate) == 1.0).all()), name
        else:
            assert bool((p[4 * h :] == 0).all()), name
        lstm_p = getattr(lstm, name)
        assert torch.equal(p[: 4 * h], lstm_p), name
    # The copies are parameters of their own: training the WIAN leaves the LSTM as it was.
    assert wian.weight_ih_l0.data_ptr() != lstm.weight_ih_l0.data_ptr()


def test_from_lstm_then_trains_with_instance_weights():
    torch.manual_seed(3)
    lstm = nn.LSTM(4, 6, batch_first=True)
    wian = WIAN.from_lstm(lstm)
    x, w = torch.randn(2, 5, 4), torch.rand(2, 5, requires_grad=True)
    out, _ = wian(x, weights=w)
    assert not torch.allclose(out, lstm(x)[0])  # the instance weights act at once
    out.square().sum().backward()
    assert bool(w.grad.abs().sum() > 0)
    assert bool(wian.weight_ih_l0.grad[:24].abs().sum() > 0)


def test_from_lstm_gate_bias_option():
    lstm = nn.LSTM(4, 6)
    wian = WIAN.from_lstm(lstm, gate_bias=3.0)
    assert bool((wian.bias_ih_l0[24:] == 3.0).all())
    x = torch.randn(5, 2, 4)
    assert not torch.allclose(wian(x)[0], lstm(x)[0], atol=1e-4)


def test_from_lstm_rejects_other_modules():
    with pytest.raises(TypeError, match="`lstm` must be a torch.nn.LSTM"):
        WIAN.from_lstm(nn.GRU(4, 6))
    with pytest.raises(TypeError, match="`cell` must be a torch.nn.LSTMCell"):
        WIANCell.from_lstm_cell(nn.LSTM(4, 6))


def test_from_lstm_keeps_the_device_meta():
    lstm = nn.LSTM(4, 6, num_layers=2, device="meta")
    wian = WIAN.from_lstm(lstm)
    assert wian.weight_ih_l1.device.type == "meta"


def test_saturating_bias_values_documented():
    from micacl_layers._lstm_conversion import saturating_bias as _saturating_bias

    for dtype, smallest in ((torch.float32, 17), (torch.float64, 37)):
        assert torch.sigmoid(torch.tensor(float(smallest), dtype=dtype)).item() == 1.0
        assert torch.sigmoid(torch.tensor(float(smallest - 1), dtype=dtype)).item() < 1.0
        assert _saturating_bias(dtype) == smallest + 1


# ------------------------------------------------------------------------------------------
# Instance weights of one per instance
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("switch", ["auto", "off"])
def test_per_instance_weights_broadcast(batch_first, switch):
    torch.manual_seed(4)
    # B == T == H: a (B, T) tensor must not be read as broadcasting over (T, H).
    wian = WIAN(3, 4, num_layers=2, batch_first=batch_first, bidirectional=True)
    x = _input(batch_first, False, batch=4, steps=4, size=3)
    w = torch.rand(x.shape[:2])
    with config.fast_paths(switch):
        got = wian(x, weights=w)[0]
        want = wian(x, weights=w.unsqueeze(-1).expand(4, 4, 4))[0]
        torch.testing.assert_close(got, want, atol=0, rtol=0)
        # unbatched: (T,)
        x1 = x[0] if batch_first else x[:, 0]
        w1 = w[0] if batch_first else w[:, 0]
        got1 = wian(x1, weights=w1)[0]
        torch.testing.assert_close(got1, want[0] if batch_first else want[:, 0], **F32)


def test_cell_per_sample_weight():
    torch.manual_seed(5)
    cell = WIANCell(3, 3)
    x, w = torch.randn(3, 3), torch.rand(3)
    torch.testing.assert_close(
        cell(x, weight=w)[0], cell(x, weight=w.unsqueeze(-1))[0], atol=0, rtol=0
    )


# ------------------------------------------------------------------------------------------
# dtypes, meta
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_input_of_another_dtype_is_computed_in_the_parameters_dtype(dtype):
    torch.manual_seed(6)
    wian = WIAN(3, 4, num_layers=2, bidirectional=True)
    cell = WIANCell(3, 4)
    x = torch.randn(5, 2, 3).to(dtype)
    hx = (torch.randn(4, 2, 4).to(dtype), torch.randn(4, 2, 4).to(dtype))
    w = torch.rand(5, 2).to(dtype)
    out, (h_n, _) = wian(x, hx, weights=w)
    assert out.dtype == torch.float32 and h_n.dtype == torch.float32
    want, _ = wian(x.float(), (hx[0].float(), hx[1].float()), weights=w.float())
    torch.testing.assert_close(out, want, atol=0, rtol=0)
    h, _ = cell(x[0], (hx[0][0], hx[1][0]), weight=w[0])
    torch.testing.assert_close(
        h,
        cell(x[0].float(), (hx[0][0].float(), hx[1][0].float()), weight=w[0].float())[0],
        atol=0,
        rtol=0,
    )


@pytest.mark.parametrize("switch", ["auto", "off", "on"])
def test_meta_device_forward_gives_shapes(switch):
    wian = WIAN(3, 4, num_layers=2, bidirectional=True, batch_first=True, device="meta")
    cell = WIANCell(3, 4, device="meta")
    x = torch.empty(2, 5, 3, device="meta")
    with config.fast_paths(switch):
        out, (h_n, c_n) = wian(x, weights=torch.empty(2, 5, device="meta"))
        h, _ = cell(x[:, 0])
    assert out.shape == (2, 5, 8) and out.device.type == "meta"
    assert h_n.shape == c_n.shape == (4, 2, 4)
    assert h.shape == (2, 4)


# ------------------------------------------------------------------------------------------
# autocast: the fused kernel in float32 with one cast, close to the plain path under autocast
# ------------------------------------------------------------------------------------------


def _fwd_bwd(wian, x, w, grad):
    for p in wian.parameters():
        p.grad = None
    x = x.detach().requires_grad_()
    out, (h_n, _) = wian(x, weights=w)
    (out.float() * grad).sum().add(h_n.float().sum()).backward()
    return [out.float(), h_n.float(), x.grad.float(), *[p.grad.float() for p in wian.parameters()]]


@pytest.mark.parametrize("bidirectional", [False, True])
def test_fused_kernel_under_cpu_autocast(bidirectional):
    torch.manual_seed(7)
    wian = WIAN(8, 6, num_layers=2, batch_first=True, bidirectional=bidirectional)
    x, w = torch.randn(3, 5, 8), torch.rand(3, 5)
    grad = torch.randn(3, 5, 6 * (2 if bidirectional else 1))
    with config.fast_paths("auto"):  # (whatever MICACL_FAST_PATHS says)
        float32 = _fwd_bwd(wian, x, w, grad)
    with torch.autocast("cpu", dtype=torch.bfloat16), config.fast_paths("auto"):
        fused = _fwd_bwd(wian, x, w, grad)  # "auto": the fused kernel, autocast off inside
        with config.fast_paths("off"):
            plain = _fwd_bwd(wian, x, w, grad)  # the plain path with autocast's casts
        out_dtype = wian(x, weights=w)[0].dtype
    assert out_dtype == torch.float32
    for a, b, c in zip(fused, float32, plain, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)  # float32 math
        # ... and close to what autocast's bfloat16 products give (8 significant bits).
        torch.testing.assert_close(
            a, c, atol=0.05 * float(c.detach().abs().max()) + 1e-3, rtol=0.05
        )


def test_autocast_kernel_only_where_the_switch_enables_it():
    from micacl_layers._fast import wian_layer

    cpu = torch.device("cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16), config.fast_paths("auto"):
        assert wian_layer.dtype_under_autocast(cpu, torch.float32) == torch.float32
        assert wian_layer.dtype_under_autocast(cpu, torch.float64) is None  # plain path
        with config.fast_paths("off"):
            assert wian_layer.dtype_under_autocast(cpu, torch.float32) is None
        with config.fast_paths("on"):
            assert wian_layer.dtype_under_autocast(cpu, torch.float32) == torch.bfloat16
    assert wian_layer.dtype_under_autocast(cpu, torch.float32) is None  # no autocast


def test_fused_kernel_in_bfloat16_under_autocast_with_the_switch_on():
    torch.manual_seed(8)
    wian = WIAN(8, 6, num_layers=2, batch_first=True, bidirectional=True)
    x, w = torch.randn(3, 5, 8), torch.rand(3, 5)
    grad = torch.randn(3, 5, 12)
    float32 = _fwd_bwd(wian, x, w, grad)
    with torch.autocast("cpu", dtype=torch.bfloat16), config.fast_paths("on"):
        out, (h_n, _) = wian(x, weights=w)
        assert out.dtype == h_n.dtype == torch.bfloat16  # as nn.LSTM under autocast
        low = _fwd_bwd(wian, x, w, grad)
    assert all(p.grad.dtype == torch.float32 for p in wian.parameters())
    for a, b in zip(low, float32, strict=True):
        # bfloat16 throughout (8 significant bits, the cell state included).
        torch.testing.assert_close(
            a, b, atol=0.06 * float(b.detach().abs().max()) + 1e-3, rtol=0.06
        )


def test_no_warning_on_plain_construction():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        WIAN(4, 6, 2, dropout=0.5)
        WIAN.from_lstm(nn.LSTM(4, 6, dropout=0.0))


# ------------------------------------------------------------------------------------------
# PackedSequence
# ------------------------------------------------------------------------------------------

rnn = nn.utils.rnn


def _pack(lengths, size, *, enforce_sorted, dtype=torch.float32, scale=2.0):
    seqs = [torch.randn(n, size, dtype=dtype) * scale for n in lengths]
    return rnn.pack_sequence(seqs, enforce_sorted=enforce_sorted), seqs


def _same_structure(got, want):
    assert isinstance(got, rnn.PackedSequence)
    assert torch.equal(got.batch_sizes, want.batch_sizes)
    for name in ("sorted_indices", "unsorted_indices"):
        a, b = getattr(got, name), getattr(want, name)
        assert (a is None and b is None) or torch.equal(a, b), name


@pytest.mark.parametrize("case", SWEEP, ids=_ids)
@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("hx_kind", ["none", "tuple"])
def test_packed_sequence_matches_lstm(case, enforce_sorted, hx_kind):
    # As nn.LSTM: a packed input gives a packed output of the same structure, each sequence
    # read to its own length (the reverse direction starts at its last element), h_n / c_n at
    # each sequence's last element, hx and h_n in the batch order the sequences were given in.
    batch_first, layers, bidir = case
    torch.manual_seed(3)
    lstm = nn.LSTM(5, 7, num_layers=layers, batch_first=batch_first, bidirectional=bidir)
    with torch.no_grad():
        for p in lstm.parameters():
            p.mul_(3.0)
    wian = WIAN.from_lstm(lstm)
    lengths = [6, 6, 3, 1] if enforce_sorted else [3, 6, 1, 6]
    packed, _ = _pack(lengths, 5, enforce_sorted=enforce_sorted)
    hx = _hx(layers, 2 if bidir else 1, False, hx_kind, batch=4, hidden=7)
    want, (h_want, c_want) = lstm(packed, hx)
    got, (h_got, c_got) = wian(packed, hx)
    _same_structure(got, want)
    torch.testing.assert_close(got.data, want.data, **F32)
    torch.testing.assert_close(h_got, h_want, **F32)
    torch.testing.assert_close(c_got, c_want, **F32)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("weight_shape", ["per_instance", "trailing_1", "per_channel"])
def test_packed_sequence_with_weights_equals_each_sequence_alone(bidirectional, weight_shape):
    torch.manual_seed(4)
    wian = WIAN(4, 5, num_layers=2, bidirectional=bidirectional, dtype=torch.float64)
    lengths = (2, 5, 3)
    packed, seqs = _pack(lengths, 4, enforce_sorted=False, dtype=torch.float64)
    trail = {"per_instance": (), "trailing_1": (1,), "per_channel": (5,)}[weight_shape]
    ws = [torch.rand(n, *trail, dtype=torch.float64) * 2 for n in lengths]
    out, (h_n, c_n) = wian(packed, weights=rnn.pack_sequence(ws, enforce_sorted=False))
    padded, got_lengths = rnn.pad_packed_sequence(out)
    assert got_lengths.tolist() == list(lengths)
    for b, (seq, w) in enumerate(zip(seqs, ws, strict=True)):
        alone, (h_b, c_b) = wian(seq, weights=w)
        torch.testing.assert_close(padded[: lengths[b], b], alone, atol=1e-12, rtol=0)
        torch.testing.assert_close(h_n[:, b], h_b, atol=1e-12, rtol=0)
        torch.testing.assert_close(c_n[:, b], c_b, atol=1e-12, rtol=0)


@pytest.mark.parametrize("switch", ["auto", "off", "on"])
def test_packed_sequence_under_every_switch(switch):
    torch.manual_seed(5)
    lstm = nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    wian = WIAN.from_lstm(lstm)
    packed, _ = _pack([4, 2, 3], 3, enforce_sorted=False)
    with config.fast_paths(switch):
        got = wian(packed)[0]
    torch.testing.assert_close(got.data, lstm(packed)[0].data, **F32)


def test_packed_sequence_gradcheck():
    torch.manual_seed(6)
    wian = WIAN(2, 3, num_layers=2, bidirectional=True, dtype=torch.float64)
    packed, _ = _pack([3, 1, 2], 2, enforce_sorted=False, dtype=torch.float64, scale=1.0)
    weights = torch.rand(packed.data.shape[0], dtype=torch.float64)

    def run(data, w):
        inp = rnn.PackedSequence(
            data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices
        )
        wp = rnn.PackedSequence(
            w, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices
        )
        out, (h, c) = wian(inp, weights=wp)
        return out.data, h, c

    assert torch.autograd.gradcheck(
        run, (packed.data.clone().requires_grad_(), weights.requires_grad_())
    )


def test_packed_sequence_of_another_dtype_is_computed_in_the_parameters_dtype():
    wian = WIAN(3, 4)
    packed, _ = _pack([3, 2], 3, enforce_sorted=True, dtype=torch.float64)
    out, (h_n, _) = wian(packed)
    assert out.data.dtype == torch.float32 and h_n.dtype == torch.float32


@pytest.mark.parametrize(
    "weights, error, match",
    [
        (lambda p: torch.ones(2, 3), TypeError, "`weights` must be a PackedSequence"),
        (
            lambda p: rnn.pack_sequence([torch.ones(3), torch.ones(1)]),
            ValueError,
            "`weights` must be packed as `input`",
        ),
        (
            lambda p: rnn.pack_sequence([torch.ones(2, 3), torch.ones(3, 3)], enforce_sorted=False),
            ValueError,
            "`weights` must be packed as `input`",
        ),
        (
            lambda p: rnn.PackedSequence(torch.ones(p.data.shape[0], 2), p.batch_sizes),
            ValueError,
            "`weights`",
        ),
        # Described as passed, not as the padded (T, B, ...) tensor made from them.
        (
            lambda p: rnn.PackedSequence(torch.ones(p.data.shape[0], 3), p.batch_sizes),
            ValueError,
            r"`weights` \(a PackedSequence\) must hold data of shape \(N,\), \(N, 1\) or "
            r"\(N, H\) with H=4, got data shape=\(5, 3\)",
        ),
        (
            lambda p: rnn.PackedSequence(torch.ones(p.data.shape[0], 1, 1), p.batch_sizes),
            ValueError,
            r"got data shape=\(5, 1, 1\)",
        ),
        (
            lambda p: rnn.PackedSequence(
                torch.ones(p.data.shape[0], dtype=torch.long), p.batch_sizes
            ),
            TypeError,
            r"`weights` must be a floating-point tensor, got shape=\(5,\)",
        ),
    ],
)
def test_packed_sequence_weights_errors(weights, error, match):
    wian = WIAN(3, 4)
    packed, _ = _pack([3, 2], 3, enforce_sorted=True)
    with pytest.raises(error, match=match):
        wian(packed, weights=weights(packed))


def test_packed_sequence_input_errors():
    wian = WIAN(3, 4)
    with pytest.raises(ValueError, match="`input`.*I=3"):
        wian(_pack([3, 2], 2, enforce_sorted=True)[0])
    ints = rnn.pack_sequence([torch.ones(2, 3, dtype=torch.long)])
    with pytest.raises(TypeError, match="`input`"):
        wian(ints)
    # Another device is described as passed, not as the padded (T, B, I) tensor made from it.
    on_meta = rnn.pack_sequence([torch.empty(2, 3, device="meta")])
    with pytest.raises(ValueError, match=r"`input` must be on .*\(cpu\), got shape=\(2, 3\)"):
        wian(on_meta)
    packed, _ = _pack([3, 2], 3, enforce_sorted=True)
    with pytest.raises(ValueError, match=r"`weights` must be on .*\(cpu\), got shape=\(5,\)"):
        wian(packed, weights=packed._replace(data=torch.empty(5, device="meta")))


def test_packed_sequence_on_meta_gives_shapes():
    wian = WIAN(3, 4, num_layers=2, bidirectional=True, device="meta")
    seqs = [torch.empty(3, 3, device="meta"), torch.empty(1, 3, device="meta")]
    out, (h_n, c_n) = wian(rnn.pack_sequence(seqs))
    assert out.data.shape == (4, 8) and out.data.device.type == "meta"
    assert h_n.shape == c_n.shape == (4, 2, 4)


def test_packed_weights_sorted_or_not_are_one_packing_when_already_sorted():
    # pack_sequence(..., enforce_sorted=False) of sequences already in descending length gives
    # the identity sorted_indices, enforce_sorted=True gives None: the same packing, refused
    # before as "not packed as `input`".
    torch.manual_seed(8)
    wian = WIAN(3, 4, bidirectional=True, dtype=torch.float64)
    seqs = [torch.randn(n, 3, dtype=torch.float64) for n in (4, 2, 1)]
    ws = [torch.rand(n, dtype=torch.float64) for n in (4, 2, 1)]
    for input_sorted, weights_sorted in [(True, False), (False, True)]:
        packed = rnn.pack_sequence(seqs, enforce_sorted=input_sorted)
        want, (h_want, _) = wian(packed, weights=rnn.pack_sequence(ws, enforce_sorted=input_sorted))
        got, (h_got, _) = wian(packed, weights=rnn.pack_sequence(ws, enforce_sorted=weights_sorted))
        torch.testing.assert_close(got.data, want.data, atol=0, rtol=0)
        torch.testing.assert_close(h_got, h_want, atol=0, rtol=0)
    # Another order is still refused.
    packed = rnn.pack_sequence(seqs[::-1], enforce_sorted=False)
    with pytest.raises(ValueError, match="`weights` must be packed as `input`"):
        wian(packed, weights=rnn.pack_sequence(ws, enforce_sorted=True))


def test_forward_annotations_name_the_packed_sequence():
    # forward was annotated Tensor in, Tensor out: type checkers calling it and the API docs
    # (rendered from the annotations) said a packed input was a type error.
    import typing

    hints = typing.get_type_hints(WIAN.forward)
    assert rnn.PackedSequence in typing.get_args(hints["input"])
    assert rnn.PackedSequence in typing.get_args(hints["weights"])
    output = typing.get_args(hints["return"])[0]
    assert rnn.PackedSequence in typing.get_args(output)


def test_packed_sequence_under_another_default_device():
    # batch_sizes stay on the host: the index that repacks the output was built from aranges
    # on the default device, so torch.set_default_device("cuda") (here "meta", on any machine)
    # failed every packed call with a device mismatch.
    torch.manual_seed(9)
    wian = WIAN(3, 4, num_layers=2, bidirectional=True)
    packed, _ = _pack([3, 1, 2], 3, enforce_sorted=False)
    weights = packed._replace(data=torch.rand(packed.data.shape[0]))
    want, (h_want, c_want) = wian(packed, weights=weights)
    sorted_weights = rnn.pack_sequence([torch.rand(n) for n in (3, 2, 1)])
    sorted_input, _ = _pack([3, 2, 1], 3, enforce_sorted=False)
    with torch.device("meta"):
        got, (h_got, c_got) = wian(packed, weights=weights)
        wian(sorted_input, weights=sorted_weights)  # (None and identity orders compared)
    assert got.data.device.type == "cpu"
    torch.testing.assert_close(got.data, want.data, atol=0, rtol=0)
    torch.testing.assert_close(h_got, h_want, atol=0, rtol=0)
    torch.testing.assert_close(c_got, c_want, atol=0, rtol=0)
