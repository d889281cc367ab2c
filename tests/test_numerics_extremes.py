"""Numerics at the edges of each dtype: zero rows, huge and tiny magnitudes, confident logits.

Each test here failed before the fix it guards; the values they compare against are computed in
float64 (or in closed form), and the tolerances are those of the dtype under test.
"""

from __future__ import annotations

import pytest
import torch

from micacl_layers import config
from micacl_layers.functional import mccl_loss

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

