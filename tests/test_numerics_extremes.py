"""Numerics at the edges of each dtype: zero rows, huge and tiny magnitudes, confident logits.

Each test here failed before the fix it guards; the values they compare against are computed in
float64 (or in closed form), and the tolerances are those of the dtype under test.
"""

from __future__ import annotations

import copy

import pytest
import torch

from micacl_layers import MCCLoss, config
from micacl_layers.functional import (
    category_aware_weights,
    feature_augmentation_loss,
    graph_propagate,
    mccl_loss,
    supervised_contrastive_per_anchor,
)

TARGETS = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
COUNTS = [50.0, 30.0, 5.0]


@pytest.mark.parametrize("fast", ["auto", "off"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_zero_feature_row_has_a_bounded_gradient(dtype, fast):
    # A zero row normalises to zero (no NaN); its gradient used to be the unit vector's over
    # finfo(compute dtype).tiny ** 0.5: 4e17 in float32, 3e152 in float64, inf in float16
    # (so a GradScaler skipped every step of a batch holding one such row).
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(8, 32, generator=gen)
    base[0] = 0.0
    logits = torch.randn(8, 3, generator=gen)
    features = base.to(dtype).requires_grad_(True)
    with config.fast_paths(fast):
        loss = mccl_loss(features, logits, TARGETS, COUNTS, scales=(1, 2))
        loss.backward()
    grad = features.grad.double()
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    others = grad[1:].abs().max()
    # The zero row's gradient is of the size of the other rows' (4x the unit vector's).
    assert grad[0].abs().max() <= 1e3 * others


def _linear(weight: torch.Tensor) -> torch.nn.Linear:
    head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype)
    with torch.no_grad():
        head.weight.copy_(weight)
    return head


@pytest.mark.parametrize(
    ("dtype", "exponent"),
    [
        (torch.float16, 9),  # |f| ~ 500: its square overflowed float16
        (torch.bfloat16, 70),  # ~1e21: its square overflowed bfloat16 and float32
        (torch.float32, 70),
        (torch.float32, -80),  # ~1e-24: its square underflowed, so no noise was added
        (torch.float64, 520),  # ~1e156: its square overflowed float64
    ],
)
def test_feature_augmentation_noise_follows_any_feature_magnitude(dtype, exponent):
    # The noise is relative to each row's rms: features scaled by 2**k through a classifier
    # scaled by 2**-k give the same logits, so the same loss, with the same noise draw.
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(6, 16, generator=gen).to(dtype)
    weight = torch.randn(3, 16, generator=gen).to(dtype)
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    expected = feature_augmentation_loss(
        features,
        targets,
        _linear(weight),
        noise_std=0.5,
        generator=torch.Generator().manual_seed(1),
    )
    scaled = (features * 2.0**exponent).requires_grad_(True)
    loss = feature_augmentation_loss(
        scaled,
        targets,
        _linear(weight * 2.0**-exponent),
        noise_std=0.5,
        generator=torch.Generator().manual_seed(1),
    )
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(scaled.grad).all()
    tol = {torch.float16: 1e-2, torch.bfloat16: 5e-2}.get(dtype, 1e-5)
    assert loss.item() == pytest.approx(expected.item(), rel=tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_difficulty_of_confident_samples_keeps_its_relative_precision(dtype):
    # 1 - p_y was computed as 1 - softmax: 0 in float32 for a margin above ~17 (in float64
    # above ~37), where 1 - p_y = sum_{k != y} p_k is a representable 2e-9 or 1e-20; under
    # weight_norm="batch" a batch of such samples then lost the whole loss (0 / tiny).
    margins = torch.tensor([20.0, 25.0, 45.0, 2.0])
    logits = torch.stack([margins, torch.zeros(4)], dim=1).to(dtype)
    targets = torch.zeros(4, dtype=torch.long)
    counts = torch.tensor([1.0, 1.0])
    work = logits.double()  # the closed form, from the logits as rounded to `dtype`
    expected = torch.sigmoid(work[:, 1] - work[:, 0])
    weights = category_aware_weights(logits, targets, counts, class_weighting=False)
    assert weights.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    eps = torch.finfo(weights.dtype).eps
    torch.testing.assert_close(weights.double(), expected, rtol=16 * eps, atol=0.0)
    batch = category_aware_weights(
        logits, targets, counts, class_weighting=False, weight_norm="batch"
    )
    torch.testing.assert_close(batch.double(), expected / expected.mean(), rtol=16 * eps, atol=0)


def test_temperature_too_small_for_float32_similarities_is_named():
    # Below about 1 / finfo(float32).max, cos / tau overflowed and the loss was a silent NaN.
    gen = torch.Generator().manual_seed(0)
    features, logits = torch.randn(8, 16, generator=gen), torch.randn(8, 3, generator=gen)
    with pytest.raises(ValueError, match=r"`tau0`.*float32"):
        mccl_loss(features, logits, TARGETS, COUNTS, tau0=1e-40, scales=(1,))
    with pytest.raises(ValueError, match=r"`temperature`.*float32"):
        supervised_contrastive_per_anchor(features.half(), TARGETS, 1e-40)
    # float64 similarities take it: the ratio form stays a share of similarity mass.
    loss = mccl_loss(features.double(), logits, TARGETS, COUNTS, tau0=1e-40, scales=(1,))
    assert torch.isfinite(loss)
    per_anchor, _ = supervised_contrastive_per_anchor(features.double(), TARGETS, 1e-40)
    assert bool(((per_anchor >= -1) & (per_anchor <= 0)).all())
    # The smallest normal float32 still gives a finite loss.
    smallest = torch.finfo(torch.float32).tiny
    assert torch.isfinite(mccl_loss(features, logits, TARGETS, COUNTS, tau0=smallest, scales=(1,)))


@pytest.mark.parametrize("shape", [(1,), (1, 1, 1, 1)])
def test_graph_propagate_one_element_alpha_keeps_dtype_and_shape(shape):
    # A one-element alpha that is not 0-d took part in type promotion (a float64 (1,) alpha made
    # a float32 result float64) and in broadcasting (a (1, 1, 1, 1) alpha made it 4-d).
    x = torch.randn(2, 4, 8)
    adjacency = torch.full((4, 4), 0.25)
    alpha = torch.full(shape, 0.3, dtype=torch.float64)
    out = graph_propagate(x, adjacency, alpha)
    assert out.dtype == x.dtype and out.shape == x.shape
    torch.testing.assert_close(out, graph_propagate(x, adjacency, 0.3))


@pytest.mark.parametrize("fast", ["on", "off"])
def test_zero_feature_row_double_backward_is_finite(fast):
    # A gradient penalty through MCCL: the norm's second derivative at an all-zero row is NaN
    # in torch (F.normalize), and it spread to every row's gradient of the gradient.
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(8, 32, generator=gen, dtype=torch.float64)
    features[0] = 0.0
    features.requires_grad_(True)
    logits = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    with config.fast_paths(fast):
        loss = mccl_loss(features, logits, TARGETS, COUNTS, scales=(1, 2))
        (grad,) = torch.autograd.grad(loss, features, create_graph=True)
        (grad_of_grad,) = torch.autograd.grad(grad.pow(2).sum(), features)
    assert torch.isfinite(grad).all() and torch.isfinite(grad_of_grad).all()


def test_memory_of_a_float64_loss_keeps_float64_embeddings():
    # MCCLoss(dtype=torch.float64) kept its memory bank in float32: past embeddings were rounded
    # to 1e-7 in a float64 loss (the same loss converted with .double() kept them exactly).
    torch.manual_seed(0)
    built = MCCLoss(3, 16, [5, 3, 1], projection_dim=8, memory_size=32, dtype=torch.float64)
    converted = copy.deepcopy(built).double()
    gen = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(8, 16, generator=gen, dtype=torch.float64), torch.randn(8, 3, generator=gen))
        for _ in range(2)
    ]
    losses = []
    for loss in (built, converted):
        for features, logits in batches:
            value = loss(features, logits.double(), TARGETS)
        losses.append(value)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-14, atol=0.0)
    assert built.memory.features_0.dtype == torch.float64
