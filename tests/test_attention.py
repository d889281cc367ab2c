"""InstanceSelfAttention (pre-norm residual multi-head self-attention over instances)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from micacl_layers import InstanceSelfAttention
from tests.conftest import assert_finite, dtypes, randn, random_padding_mask, seeds


@given(
    batch=st.integers(1, 4),
    steps=st.integers(1, 6),
    head_dim=st.integers(1, 4),
    num_heads=st.integers(1, 4),
    masked=st.booleans(),
    dtype=dtypes,
    seed=seeds,
)
def test_shapes_and_finite(batch, steps, head_dim, num_heads, masked, dtype, seed):
    torch.manual_seed(seed)
    embed = head_dim * num_heads
    attn = InstanceSelfAttention(embed, num_heads=num_heads, dtype=dtype)
    x = randn(batch, steps, embed, seed=seed, dtype=dtype, requires_grad=True)
    mask = random_padding_mask(batch, steps, seed=seed) if masked else None
    y = attn(x, mask)
    assert y.shape == (batch, steps, embed)
    assert y.dtype == dtype
    assert_finite(y)
    y.float().sum().backward()
    assert_finite(x.grad)


def test_equals_prenorm_residual_mha():
    torch.manual_seed(0)
    attn = InstanceSelfAttention(8, num_heads=2, dtype=torch.float64).eval()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    mask = torch.tensor([[False] * 5, [False, False, True, True, False], [True] + [False] * 4])
    y = attn.norm(x)
    ref = x + attn.attn(y, y, y, key_padding_mask=mask)[0]
    out = attn(x, mask)
    torch.testing.assert_close(out[~mask], ref[~mask])
    torch.testing.assert_close(out[mask], x[mask], atol=0, rtol=0)  # padding comes out unchanged


def test_non_finite_padding_gives_no_nan_gradient():
    # Zeroing padded keys and values after the LayerNorm kept the forward finite, but the
    # norm's backward multiplied a zero gradient by the NaN row: NaN gradients for the norm,
    # the projections and the padding itself.
    torch.manual_seed(0)
    attn = InstanceSelfAttention(8, num_heads=2, dtype=torch.float64)
    mask = torch.tensor([[False, True, False, False], [False] * 4])
    x = torch.randn(2, 4, 8, dtype=torch.float64)
    x[mask] = float("nan")
    x.requires_grad_()
    out = attn(x, mask)
    out[~mask].sum().backward()
    assert bool((x.grad[mask] == 0).all()) and bool(x.grad.isfinite().all())
    for name, p in attn.named_parameters():
        assert p.grad is not None and bool(p.grad.isfinite().all()), name


@pytest.mark.parametrize("batch, instances", [(0, 4), (3, 0)])
def test_empty_input_with_padding_mask_gives_an_empty_output(batch, instances):
    # nn.MultiheadAttention without attention weights cannot reshape an empty mask: neither an
    # empty batch's nor a (B, 0) one (no instances).
    attn = InstanceSelfAttention(8, num_heads=2)
    x = torch.randn(batch, instances, 8, requires_grad=True)
    y = attn(x, torch.zeros(batch, instances, dtype=torch.bool))
    assert y.shape == (batch, instances, 8)
    y.sum().backward()
    assert x.grad.shape == (batch, instances, 8)


def test_padded_keys_do_not_influence_real_queries():
    torch.manual_seed(0)
    attn = InstanceSelfAttention(8, num_heads=2, dtype=torch.float64).eval()
    x = torch.randn(1, 4, 8, dtype=torch.float64)
    mask = torch.tensor([[False, False, True, False]])
    x2 = x.clone()
    x2[0, 2] = torch.randn(8, dtype=torch.float64) * 50
    torch.testing.assert_close(attn(x, mask)[0, ~mask[0]], attn(x2, mask)[0, ~mask[0]])


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_padded_instances_do_not_reach_real_queries(value):
    # A padded value still enters the attention's values: a zero weight times NaN is NaN.
    torch.manual_seed(0)
    attn = InstanceSelfAttention(8, num_heads=2, dtype=torch.float64).eval()
    x = torch.randn(2, 4, 8, dtype=torch.float64)
    mask = torch.tensor([[False, False, True, False], [False] * 4])
    x2 = x.clone()
    x2[0, 2] = value
    torch.testing.assert_close(attn(x2, mask)[~mask], attn(x, mask)[~mask])


def test_residual_keeps_tiny_inputs():
    """The public code's attention + LayerNorm (no residual) loses inputs near 5e-5 in size."""
    torch.manual_seed(0)
    attn = InstanceSelfAttention(8, num_heads=2)
    with torch.no_grad():
        attn.attn.out_proj.weight.zero_()
        attn.attn.out_proj.bias.zero_()
    x = torch.randn(2, 4, 8) * 5e-5
    torch.testing.assert_close(attn(x), x)


def test_gradcheck():
    torch.manual_seed(0)
    attn = InstanceSelfAttention(4, num_heads=2, dtype=torch.float64)
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: attn(t), (x,))
