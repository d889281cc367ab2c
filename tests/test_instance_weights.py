"""InstanceWeights / instance_weights (Eq. 4 and the documented alternatives)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from micacl_layers import WEIGHT_MODES, InstanceWeights
from micacl_layers.functional import instance_weights
from tests.conftest import assert_finite, dtypes, randn, random_padding_mask, seeds, tol

modes = st.sampled_from(WEIGHT_MODES)


def test_modes_listed():
    assert set(WEIGHT_MODES) == {"channel_softmax", "scaled_channel_softmax", "instance_softmax"}


@given(
    batch=st.integers(1, 4),
    steps=st.integers(1, 6),
    in_features=st.integers(1, 8),
    hidden=st.one_of(st.none(), st.integers(1, 8)),
    mode=modes,
    masked=st.booleans(),
    scale=st.sampled_from([1e-3, 1.0, 30.0]),
    dtype=dtypes,
    seed=seeds,
)
def test_shapes_and_finite(batch, steps, in_features, hidden, mode, masked, scale, dtype, seed):
    torch.manual_seed(seed)
    iw = InstanceWeights(in_features, hidden_size=hidden, mode=mode, dtype=dtype)
    h = randn(batch, steps, in_features, seed=seed, dtype=dtype, scale=scale)
    mask = random_padding_mask(batch, steps, seed=seed) if masked else None
    w = iw(h, mask)
    out = in_features if hidden is None else hidden
    assert w.shape == (batch, steps, out)
    assert w.dtype == dtype
    assert_finite(w)
    assert bool((w >= 0).all())
    if mask is not None:
        assert bool((w[mask] == 0).all())


@given(
    batch=st.integers(1, 3),
    steps=st.integers(1, 6),
    channels=st.integers(1, 8),
    masked=st.booleans(),
    scale=st.sampled_from([1e-3, 1.0, 30.0]),
    dtype=dtypes,
    seed=seeds,
)
def test_mode_normalisations(batch, steps, channels, masked, scale, dtype, seed):
    h = randn(batch, steps, channels, seed=seed, dtype=dtype, scale=scale)
    mask = random_padding_mask(batch, steps, seed=seed) if masked else None
    real = torch.ones(batch, steps, dtype=torch.bool) if mask is None else ~mask
    t = tol(dtype)

    # Eq. 4 as printed: a softmax over the channels of each instance (sums to 1).
    w = instance_weights(h, mode="channel_softmax", padding_mask=mask).double()
    ref = torch.softmax(h.double(), dim=-1)
    torch.testing.assert_close(w[real], ref[real], **t)

    # Scaled: the same times C (mean 1 over the channels).
    w = instance_weights(h, mode="scaled_channel_softmax", padding_mask=mask).double()
    torch.testing.assert_close(w[real], channels * ref[real], **t)

    # Instance softmax: per channel, softmax over the real instances times their number.
    w = instance_weights(h, mode="instance_softmax", padding_mask=mask).double()
    for b in range(batch):
        idx = real[b].nonzero().squeeze(1)
        expect = torch.softmax(h[b, idx].double(), dim=0) * idx.numel()
        torch.testing.assert_close(w[b, idx], expect, **t)
        torch.testing.assert_close(
            w[b, idx].mean(0), torch.ones(channels, dtype=torch.float64), **t
        )


def test_projection_only_when_sizes_differ():
    assert not list(InstanceWeights(8).parameters())
    iw = InstanceWeights(8, hidden_size=4)
    assert sum(p.numel() for p in iw.parameters()) == 8 * 4 + 4
    h = torch.randn(2, 3, 8)
    torch.testing.assert_close(iw(h), instance_weights(iw.proj(h), mode=iw.mode))


@pytest.mark.parametrize("mode", WEIGHT_MODES)
def test_gradients_flow(mode):
    torch.manual_seed(0)
    iw = InstanceWeights(4, hidden_size=3, mode=mode, dtype=torch.float64)
    h = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: iw(x), (h,))
    (iw(h) * torch.randn(2, 3, 3, dtype=torch.float64)).sum().backward()
    assert_finite(iw.proj.weight.grad, h.grad)


def test_default_mode_is_instance_softmax():
    assert InstanceWeights(4).mode == "instance_softmax"


@pytest.mark.parametrize("mode", WEIGHT_MODES)
@pytest.mark.parametrize("hidden", [6, 8])
def test_non_finite_padding_gives_no_nan_gradient(mode, hidden):
    # A padded row's weight is set to 0 after the projection and the softmax, but their
    # backward multiplies its zero gradient by the NaN it holds (torch.empty padding, a NaN
    # sentinel): the projection, and the padding itself, got NaN gradients.
    torch.manual_seed(0)
    module = InstanceWeights(8, hidden_size=hidden, mode=mode, dtype=torch.float64)
    mask = torch.tensor([[False, True, False, True], [False] * 4])
    clean = torch.randn(2, 4, 8, dtype=torch.float64)
    h = clean.clone()
    h[mask] = float("nan")
    h.requires_grad_()
    w = module(h, mask)
    torch.testing.assert_close(w, module(clean, mask))
    (w * torch.randn_like(w)).sum().backward()
    assert bool((h.grad[mask] == 0).all()) and bool(h.grad.isfinite().all())
    for name, p in module.named_parameters():
        assert bool(p.grad.isfinite().all()), name
