"""GEIIM (Eq. 1-2 plus the multiscale temporal stage)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from micacl_layers import GEIIM
from micacl_layers.functional import graph_propagate, instance_adjacency
from tests.conftest import assert_finite, dtypes, randn, random_padding_mask, seeds, tol

kernel_choices = st.sampled_from([(), (1,), (3,), (1, 3, 5), (5, 3)])


def _randomise(geiim: GEIIM, seed: int) -> GEIIM:
    """Give the (zero-initialised) fusion layer random weights so the conv stage matters."""
    torch.manual_seed(seed)
    if geiim.fuse is not None:
        with torch.no_grad():
            geiim.fuse.weight.normal_(std=0.3)
            geiim.fuse.bias.normal_(std=0.3)
    return geiim


# ------------------------------------------------------------------------------------------
# shapes
# ------------------------------------------------------------------------------------------


@given(
    batch=st.integers(0, 4),
    steps=st.integers(1, 6),
    dim=st.integers(1, 8),
    node_dim=st.integers(1, 5),
    kernels=kernel_choices,
    masked=st.booleans(),
    learn_alpha=st.booleans(),
    dtype=dtypes,
    seed=seeds,
)
def test_shapes_and_finite(batch, steps, dim, node_dim, kernels, masked, learn_alpha, dtype, seed):
    torch.manual_seed(seed)
    geiim = _randomise(
        GEIIM(
            steps,
            dim,
            node_dim=node_dim,
            kernel_sizes=kernels,
            learn_alpha=learn_alpha,
            dtype=dtype,
        ),
        seed,
    )
    x = randn(batch, steps, dim, seed=seed, dtype=dtype)
    mask = random_padding_mask(batch, steps, seed=seed) if masked else None
    y, adj = geiim(x, mask, return_adjacency=True)
    assert y.shape == (batch, steps, dim)
    assert y.dtype == dtype
    assert adj.shape == ((batch, steps, steps) if masked else (steps, steps))
    assert_finite(y, adj)
    y.float().sum().backward()
    for name, p in geiim.named_parameters():
        assert p.grad is not None, name
        assert_finite(p.grad)


# ------------------------------------------------------------------------------------------
# Eq. 1: adjacency
# ------------------------------------------------------------------------------------------


@given(
    steps=st.integers(1, 7),
    node_dim=st.integers(1, 6),
    scale=st.floats(0.01, 30.0),
    dtype=dtypes,
    seed=seeds,
)
def test_adjacency_is_row_stochastic(steps, node_dim, scale, dtype, seed):
    torch.manual_seed(seed)
    geiim = GEIIM(steps, 3, node_dim=node_dim, dtype=dtype)
    with torch.no_grad():
        geiim.node_src.mul_(scale)
    adj = geiim.adjacency()
    assert adj.shape == (steps, steps)
    assert bool((adj >= 0).all())
    torch.testing.assert_close(
        adj.double().sum(-1), torch.ones(steps, dtype=torch.float64), **tol(dtype)
    )
    # Eq. 1 written out independently.
    ref = torch.softmax(
        torch.clamp(geiim.node_src.double() @ geiim.node_dst.double(), min=0), dim=1
    )
    torch.testing.assert_close(adj.double(), ref, **tol(dtype))


@given(batch=st.integers(1, 4), steps=st.integers(2, 6), seed=seeds)
def test_masked_adjacency_ignores_padded_columns(batch, steps, seed):
    torch.manual_seed(seed)
    geiim = GEIIM(steps, 3, dtype=torch.float64)
    mask = random_padding_mask(batch, steps, seed=seed)
    adj = geiim.adjacency(mask)
    assert adj.shape == (batch, steps, steps)
    torch.testing.assert_close(adj.sum(-1), torch.ones(batch, steps, dtype=torch.float64))
    # Padded instances send no message: their columns are exactly zero.
    assert bool((adj.permute(0, 2, 1)[mask] == 0).all())
    # On the real instances it is the softmax restricted to real columns.
    scores = torch.relu(geiim.node_src @ geiim.node_dst)
    for b in range(batch):
        real = (~mask[b]).nonzero().squeeze(1)
        ref = torch.softmax(scores[:, real], dim=1)
        torch.testing.assert_close(adj[b][:, real], ref)


def test_instance_adjacency_functional_matches_module():
    torch.manual_seed(0)
    geiim = GEIIM(5, 4)
    torch.testing.assert_close(
        instance_adjacency(geiim.node_src, geiim.node_dst), geiim.adjacency()
    )


# ------------------------------------------------------------------------------------------
# Eq. 2 and alpha
# ------------------------------------------------------------------------------------------


@given(
    batch=st.integers(1, 3),
    steps=st.integers(1, 6),
    dim=st.integers(1, 6),
    masked=st.booleans(),
    dtype=dtypes,
    seed=seeds,
)
def test_alpha_one_without_multiscale_is_identity(batch, steps, dim, masked, dtype, seed):
    torch.manual_seed(seed)
    geiim = GEIIM(steps, dim, alpha_init=1.0, learn_alpha=False, kernel_sizes=(), dtype=dtype)
    x = randn(batch, steps, dim, seed=seed, dtype=dtype)
    mask = random_padding_mask(batch, steps, seed=seed) if masked else None
    torch.testing.assert_close(geiim(x, mask), x, atol=0, rtol=0)


@given(
    batch=st.integers(1, 3),
    steps=st.integers(1, 5),
    dim=st.integers(1, 5),
    alpha=st.floats(0.0, 1.0),
    learn=st.booleans(),
    seed=seeds,
)
def test_eq2_without_multiscale(batch, steps, dim, alpha, learn, seed):
    torch.manual_seed(seed)
    geiim = GEIIM(
        steps, dim, alpha_init=alpha, learn_alpha=learn, kernel_sizes=(), dtype=torch.float64
    )
    x = randn(batch, steps, dim, seed=seed, dtype=torch.float64)
    a = geiim.adjacency().detach()
    expected = alpha * x + (1 - alpha) * torch.einsum("ij,bjc->bic", a, x)
    torch.testing.assert_close(geiim(x).detach(), expected)
    torch.testing.assert_close(graph_propagate(x, a, alpha), expected)


@pytest.mark.parametrize("alpha", [1.5, -0.1, float("nan")])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_graph_propagate_rejects_alpha_outside_unit_interval(alpha, as_tensor):
    x = torch.randn(2, 4, 3)
    value = torch.tensor([alpha]) if as_tensor else alpha
    with pytest.raises(ValueError, match=r"`alpha` must .*\[0, 1\]"):
        graph_propagate(x, torch.eye(4), value)


def test_graph_propagate_accepts_meta_alpha_tensor():
    x = torch.randn(2, 4, 3, device="meta")
    out = graph_propagate(x, torch.eye(4, device="meta"), torch.tensor(0.3, device="meta"))
    assert out.shape == (2, 4, 3) and out.is_meta


@pytest.mark.parametrize("logit", [-1e4, -50.0, -3.0, 0.0, 2.0, 50.0, 1e4])
def test_alpha_stays_in_unit_interval(logit):
    geiim = GEIIM(3, 2)
    with torch.no_grad():
        geiim.alpha_logit.fill_(logit)
    a = float(geiim.alpha.detach())
    assert 0.0 <= a <= 1.0
    assert_finite(geiim(torch.randn(2, 3, 2)))


@pytest.mark.parametrize("alpha_init", [0.0, 0.3, 0.7, 1.0])
def test_alpha_init_is_respected(alpha_init):
    geiim = GEIIM(3, 2, alpha_init=alpha_init)
    assert float(geiim.alpha.detach()) == pytest.approx(alpha_init, abs=1e-6)
    assert torch.isfinite(geiim.alpha_logit).all()


@pytest.mark.parametrize("learn", [True, False])
def test_deferred_initialisation_restores_alpha(learn):
    """Built on meta, given storage by to_empty (which holds garbage), reset: as __init__."""
    want = GEIIM(4, 8, alpha_init=0.3, learn_alpha=learn)
    geiim = GEIIM(4, 8, alpha_init=0.3, learn_alpha=learn, device="meta").to_empty(device="cpu")
    with torch.no_grad():
        for t in [*geiim.parameters(), *geiim.buffers()]:
            t.fill_(float("nan"))
    geiim.reset_parameters()
    for name, t in [*geiim.named_parameters(), *geiim.named_buffers()]:
        assert bool(torch.isfinite(t).all()), name
    assert torch.equal(geiim.alpha, want.alpha)  # the very value, not only close


def test_alpha_receives_gradient_when_learnable():
    torch.manual_seed(0)
    geiim = GEIIM(4, 3, kernel_sizes=())
    x = torch.randn(2, 4, 3)
    (geiim(x) ** 2).sum().backward()
    assert geiim.alpha_logit.grad is not None
    assert float(geiim.alpha_logit.grad.abs()) > 0
    names = {n for n, _ in geiim.named_parameters()}
    assert "alpha_logit" in names


def test_alpha_is_a_buffer_when_fixed():
    geiim = GEIIM(4, 3, learn_alpha=False, alpha_init=0.4)
    assert "alpha_logit" not in dict(geiim.named_parameters())
    assert "alpha_fixed" in dict(geiim.named_buffers())
    assert float(geiim.alpha.detach()) == pytest.approx(0.4)


def test_fusion_starts_at_zero_so_module_is_eq2_at_init():
    torch.manual_seed(0)
    geiim = GEIIM(4, 3, kernel_sizes=(1, 3))
    x = torch.randn(2, 4, 3)
    alpha = geiim.alpha.detach()
    expected = graph_propagate(x, geiim.adjacency().detach(), alpha)
    torch.testing.assert_close(geiim(x).detach(), expected)


def test_multiscale_stage_changes_output_once_trained():
    torch.manual_seed(0)
    geiim = _randomise(GEIIM(4, 3, kernel_sizes=(1, 3)), 0)
    x = torch.randn(2, 4, 3)
    plain = graph_propagate(x, geiim.adjacency().detach(), geiim.alpha.detach())
    assert not torch.allclose(geiim(x).detach(), plain)


# ------------------------------------------------------------------------------------------
# padding
# ------------------------------------------------------------------------------------------


@given(
    batch=st.integers(1, 4),
    steps=st.integers(2, 6),
    dim=st.integers(1, 5),
    kernels=kernel_choices,
    seed=seeds,
)
def test_padded_instances_pass_through_and_do_not_leak(batch, steps, dim, kernels, seed):
    torch.manual_seed(seed)
    geiim = _randomise(GEIIM(steps, dim, kernel_sizes=kernels, dtype=torch.float64), seed)
    mask = random_padding_mask(batch, steps, seed=seed)
    x = randn(batch, steps, dim, seed=seed, dtype=torch.float64)
    y = geiim(x, mask)
    # Padded instances come out unchanged.
    torch.testing.assert_close(y[mask], x[mask], atol=0, rtol=0)
    # Changing what sits in the padded slots changes nothing for the real instances.
    x2 = x.clone()
    x2[mask] = randn(int(mask.sum()), dim, seed=seed + 7, dtype=torch.float64, scale=100.0)
    y2 = geiim(x2, mask)
    torch.testing.assert_close(y2[~mask], y[~mask], atol=1e-12, rtol=0)
    torch.testing.assert_close(y2[mask], x2[mask], atol=0, rtol=0)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("kernels", [(), (1, 3, 5)])
def test_non_finite_padded_instances_do_not_reach_real_ones(value, kernels):
    # Padding from torch.empty or a NaN sentinel: 0 * NaN is NaN, so a padded instance must be
    # left out of the propagation and the convolutions, not multiplied by a zero weight.
    torch.manual_seed(0)
    geiim = _randomise(GEIIM(5, 3, kernel_sizes=kernels, dtype=torch.float64), 0)
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    mask = torch.tensor([[False, True, False, False, True], [False] * 5])
    x2 = x.clone()
    x2[mask] = value
    y, y2 = geiim(x, mask), geiim(x2, mask)
    torch.testing.assert_close(y2[~mask], y[~mask], atol=1e-12, rtol=0)
    torch.testing.assert_close(y2[mask], x2[mask], atol=0, rtol=0, equal_nan=True)


def test_real_instances_do_influence_each_other():
    # Guards the test above against passing vacuously.
    torch.manual_seed(0)
    geiim = _randomise(GEIIM(4, 3, kernel_sizes=(3,), dtype=torch.float64), 0)
    x = torch.randn(1, 4, 3, dtype=torch.float64)
    mask = torch.tensor([[False, False, False, True]])
    x2 = x.clone()
    x2[0, 1] += 5.0
    assert not torch.allclose(geiim(x, mask)[0, 0], geiim(x2, mask)[0, 0])


def test_mask_without_padding_equals_no_mask():
    torch.manual_seed(0)
    geiim = _randomise(GEIIM(4, 3, dtype=torch.float64), 0)
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(geiim(x, torch.zeros(2, 4, dtype=torch.bool)), geiim(x))


# ------------------------------------------------------------------------------------------
# gradcheck, state_dict, errors
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("kernels", [(), (1, 3)])
def test_gradcheck(masked, kernels):
    torch.manual_seed(0)
    geiim = _randomise(GEIIM(3, 2, node_dim=2, kernel_sizes=kernels, dtype=torch.float64), 0)
    x = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[False, True, False], [False, False, False]]) if masked else None
    assert torch.autograd.gradcheck(lambda inp: geiim(inp, mask), (x,))


def test_gradcheck_node_embeddings_and_alpha():
    torch.manual_seed(0)
    geiim = GEIIM(3, 2, node_dim=2, kernel_sizes=(), dtype=torch.float64)
    x = torch.randn(2, 3, 2, dtype=torch.float64)
    names = ("node_src", "node_dst", "alpha_logit")
    params = tuple(getattr(geiim, n).detach().clone().requires_grad_() for n in names)

    def fn(*ps):
        return torch.func.functional_call(geiim, dict(zip(names, ps, strict=True)), (x,))

    assert torch.autograd.gradcheck(fn, params)


def test_state_dict_round_trip():
    torch.manual_seed(0)
    a = _randomise(GEIIM(4, 3, kernel_sizes=(1, 3)), 0)
    torch.manual_seed(1)
    b = GEIIM(4, 3, kernel_sizes=(1, 3))
    x = torch.randn(2, 4, 3)
    assert not torch.allclose(a(x), b(x))
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b(x), a(x), atol=0, rtol=0)


def test_wrong_num_instances_raises():
    geiim = GEIIM(4, 3)
    with pytest.raises(ValueError, match="num_instances"):
        geiim(torch.randn(2, 5, 3))


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda x: graph_propagate(x, torch.eye(4, device="meta"), 0.3), "adjacency"),
        (lambda x: graph_propagate(x, torch.eye(4), torch.tensor(0.3, device="meta")), "alpha"),
        (
            lambda x: instance_adjacency(torch.randn(4, 8), torch.randn(8, 4, device="meta")),
            "node_dst",
        ),
        (
            lambda x: instance_adjacency(
                torch.randn(4, 8),
                torch.randn(8, 4),
                padding_mask=torch.zeros(2, 4, dtype=torch.bool, device="meta"),
            ),
            "padding_mask",
        ),
        (
            lambda x: GEIIM(4, 8).adjacency(torch.zeros(2, 4, dtype=torch.bool, device="meta")),
            "padding_mask",
        ),
    ],
)
def test_arguments_on_another_device_raise_naming_them(call, name):
    # A meta adjacency or node embedding used to give a CPU result of no real values; a meta
    # alpha or mask, torch's own error from inside an operator.
    with pytest.raises(ValueError, match=f"`{name}` must be on the device"):
        call(torch.randn(2, 4, 8))


def test_cpu_scalar_alpha_with_features_elsewhere_is_accepted():
    x = torch.randn(2, 4, 3, device="meta")
    out = graph_propagate(x, torch.eye(4, device="meta"), torch.tensor(0.3))
    assert out.shape == (2, 4, 3) and out.is_meta
