"""Float options take any real number: a NumPy scalar (from a config or an array) as a float."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from micacl_layers import (
    GEIIM,
    WIAN,
    IntensityAwareLoss,
    LogitAdjustedLoss,
    MCCLoss,
    MICACLLoss,
)
from micacl_layers.functional import adaptive_temperature, supervised_contrastive_per_anchor
from micacl_layers.models import MICACLHead

# Values a float32 holds exactly, so that every kind of number gives the same result.
NUMBER_KINDS = [float, np.float32, np.float64]


@pytest.mark.parametrize("kind", NUMBER_KINDS)
def test_numpy_scalars_are_accepted_and_stored_as_floats(kind):
    half, quarter = kind(0.5), kind(0.25)
    built = [
        (
            LogitAdjustedLoss([5, 3, 1], tau=half, label_smoothing=quarter),
            ("tau", "label_smoothing"),
        ),
        (IntensityAwareLoss(label_smoothing=quarter), ("label_smoothing",)),
        (MICACLLoss(3, 8, [5, 3, 1], projection_dim=4, mc_weight=half), ("mc_weight",)),
        (WIAN(4, 6, 2, dropout=half), ("dropout",)),
        (GEIIM(4, 8, dropout=half), ()),
        (MICACLHead(8, 3, num_instances=4, hidden_size=8, dropout=half), ()),
    ]
    for module, attrs in built:
        for attr in attrs:
            assert type(getattr(module, attr)) is float, (module, attr)
    assert type(MCCLoss(3, 8, [5, 3, 1], tau0=quarter).options.tau0) is float


@pytest.mark.parametrize("kind", NUMBER_KINDS[1:])
def test_numpy_scalars_give_the_values_of_python_floats(kind):
    gen = torch.Generator().manual_seed(0)
    z, y = torch.randn(6, 4, generator=gen), torch.tensor([0, 1, 2, 0, 1, 2])
    logits = torch.randn(6, 3, generator=gen)
    per, _ = supervised_contrastive_per_anchor(z, y, kind(0.5))
    ref, _ = supervised_contrastive_per_anchor(z, y, 0.5)
    assert torch.equal(per, ref)
    counts = torch.tensor([5.0, 3.0, 1.0])
    assert torch.equal(adaptive_temperature(counts, kind(0.25)), adaptive_temperature(counts, 0.25))
    la = LogitAdjustedLoss([5, 3, 1], tau=kind(0.5))(logits, y)
    assert torch.equal(la, LogitAdjustedLoss([5, 3, 1], tau=0.5)(logits, y))


@pytest.mark.parametrize("bad", [np.bool_(True), True, "0.5", None])
def test_bools_and_strings_are_still_no_numbers(bad):
    with pytest.raises(ValueError, match="`tau` must be a number"):
        LogitAdjustedLoss([5, 3, 1], tau=bad)
    with pytest.raises(ValueError, match="`dropout` must be a number"):
        WIAN(4, 6, 2, dropout=bad)
