"""IntensityAwareLoss: cross-entropy over the target and the most confusing other logit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from micacl_layers import IntensityAwareLoss
from micacl_layers.functional import intensity_aware_loss
from tests.conftest import (
    EDGE_CASES,
    assert_finite,
    dtypes,
    edge_case,
    generator,
    randint_targets,
    randn,
    seeds,
)

REDUCTIONS = ("mean", "sum", "none")


def two_logit_ce(
    logits: torch.Tensor, targets: torch.Tensor, reduction: str, label_smoothing: float = 0.0
) -> torch.Tensor:
    """The explicit definition: CE of [z_target, z_maxother] with target 0 (Python max)."""
    rows = logits.double()
    z_target = torch.stack([rows[i, t] for i, t in enumerate(targets.tolist())])
    z_other = torch.stack(
        [
            max((rows[i, k] for k in range(rows.shape[1]) if k != t), key=float)
            for i, t in enumerate(targets.tolist())
        ]
    )
    pair = torch.stack([z_target, z_other], dim=1)
    return F.cross_entropy(
        pair,
        torch.zeros(len(targets), dtype=torch.long),
        reduction=reduction,
        label_smoothing=label_smoothing,
    )


@given(
    batch=st.integers(1, 8),
    num_classes=st.integers(2, 6),
    reduction=st.sampled_from(REDUCTIONS),
    scale=st.sampled_from([1e-3, 1.0, 50.0]),
    dtype=dtypes,
    seed=seeds,
)
def test_shapes_and_equals_two_logit_cross_entropy(
    batch, num_classes, reduction, scale, dtype, seed
):
    logits = randn(batch, num_classes, seed=seed, dtype=dtype, scale=scale, requires_grad=True)
    targets = randint_targets(batch, num_classes, seed=seed + 1)
    loss = IntensityAwareLoss(reduction=reduction)(logits, targets)
    assert loss.shape == ((batch,) if reduction == "none" else ())
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_finite(loss)
    # Computed on the very same (possibly rounded) logits, in float64.
    expected = two_logit_ce(logits.detach(), targets, reduction)
    t = {"atol": 1e-10, "rtol": 1e-10} if dtype == torch.float64 else {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(loss.double(), expected, **t)
    loss.sum().backward()
    assert_finite(logits.grad)


def test_two_classes_is_plain_cross_entropy():
    logits = torch.randn(9, 2, dtype=torch.float64)
    targets = torch.randint(0, 2, (9,))
    torch.testing.assert_close(
        intensity_aware_loss(logits, targets), F.cross_entropy(logits, targets)
    )


def test_only_runner_up_matters():
    logits = torch.tensor([[3.0, 1.0, -2.0, 0.5]])
    base = intensity_aware_loss(logits, torch.tensor([0]))
    lowered = logits.clone()
    lowered[0, 2] = -50.0  # not the runner-up: no change
    torch.testing.assert_close(intensity_aware_loss(lowered, torch.tensor([0])), base)
    raised = logits.clone()
    raised[0, 1] = 2.5  # the runner-up gets closer: larger loss
    assert float(intensity_aware_loss(raised, torch.tensor([0]))) > float(base)


@given(
    batch=st.integers(1, 8),
    num_classes=st.integers(2, 5),
    reduction=st.sampled_from(REDUCTIONS),
    ignore_index=st.sampled_from([-100, -1, 255]),
    seed=seeds,
)
def test_ignore_index(batch, num_classes, reduction, ignore_index, seed):
    logits = randn(batch, num_classes, seed=seed, dtype=torch.float64)
    targets = randint_targets(batch, num_classes, seed=seed + 1)
    drop = torch.rand(batch, generator=generator(seed + 2)) < 0.4
    targets[drop] = ignore_index
    loss = intensity_aware_loss(logits, targets, reduction=reduction, ignore_index=ignore_index)
    keep = ~drop
    if reduction == "none":
        assert bool((loss[drop] == 0).all())
        if keep.any():
            torch.testing.assert_close(
                loss[keep], two_logit_ce(logits[keep], targets[keep], "none")
            )
    elif not keep.any():
        assert float(loss) == 0.0
    else:
        torch.testing.assert_close(loss, two_logit_ce(logits[keep], targets[keep], reduction))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_ignored_is_finite_zero(reduction):
    logits = torch.randn(4, 3, requires_grad=True)
    targets = torch.full((4,), -100)
    loss = intensity_aware_loss(logits, targets, reduction=reduction)
    assert_finite(loss)
    assert bool((loss == 0).all())
    loss.sum().backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_gradcheck():
    logits = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 3, 1, 1, 2])
    assert torch.autograd.gradcheck(lambda z: intensity_aware_loss(z, targets), (logits,))
    assert torch.autograd.gradcheck(
        lambda z: intensity_aware_loss(z, targets, reduction="none"), (logits,)
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("case", EDGE_CASES)
def test_degenerate_batches_are_finite(case, dtype):
    _, logits, targets = edge_case(case, dtype)
    loss = IntensityAwareLoss()(logits, targets)
    assert_finite(loss)
    loss.backward()
    assert_finite(logits.grad)


def test_huge_logits_are_exact():
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]], requires_grad=True)
    loss = intensity_aware_loss(logits, torch.tensor([0, 0]), reduction="none")
    # softplus(-1e4) ~ 0 and softplus(2e4) = 2e4: no overflow, no NaN.
    torch.testing.assert_close(loss.detach(), torch.tensor([0.0, 2e4]))
    loss.sum().backward()
    assert_finite(logits.grad)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_module_equals_functional(reduction):
    logits, targets = torch.randn(6, 5), torch.tensor([0, 4, -1, 2, 2, 1])
    module = IntensityAwareLoss(reduction=reduction, ignore_index=-1)
    torch.testing.assert_close(
        module(logits, targets),
        intensity_aware_loss(logits, targets, reduction=reduction, ignore_index=-1),
        atol=0,
        rtol=0,
    )


@given(
    batch=st.integers(1, 8),
    num_classes=st.integers(2, 6),
    reduction=st.sampled_from(REDUCTIONS),
    smoothing=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    scale=st.sampled_from([1e-3, 1.0, 50.0]),
    seed=seeds,
)
def test_label_smoothing_equals_two_logit_cross_entropy(
    batch, num_classes, reduction, smoothing, scale, seed
):
    logits = randn(
        batch, num_classes, seed=seed, dtype=torch.float64, scale=scale, requires_grad=True
    )
    targets = randint_targets(batch, num_classes, seed=seed + 1)
    module = IntensityAwareLoss(reduction=reduction, label_smoothing=smoothing)
    loss = module(logits, targets)
    expected = two_logit_ce(logits.detach(), targets, reduction, label_smoothing=smoothing)
    torch.testing.assert_close(loss, expected, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(
        intensity_aware_loss(logits, targets, reduction=reduction, label_smoothing=smoothing),
        loss,
        atol=0,
        rtol=0,
    )
    loss.sum().backward()
    assert_finite(logits.grad)


def test_label_smoothing_changes_the_loss_and_ignores_ignored():
    logits = torch.tensor([[4.0, 0.0, -1.0], [0.0, 3.0, 1.0]])
    targets = torch.tensor([0, -100])
    plain = intensity_aware_loss(logits, targets)
    smooth = intensity_aware_loss(logits, targets, label_smoothing=0.1)
    # Only the first sample counts: 0.95 softplus(-4) + 0.05 softplus(4).
    want = 0.95 * F.softplus(torch.tensor(-4.0)) + 0.05 * F.softplus(torch.tensor(4.0))
    torch.testing.assert_close(smooth, want)
    assert float(smooth) > float(plain)
    assert "label_smoothing=0.1" in repr(IntensityAwareLoss(label_smoothing=0.1))


@pytest.mark.parametrize("bad", [-0.1, 1.5, True, "0.1"])
def test_label_smoothing_out_of_range_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="`label_smoothing` must be a number in"):
        IntensityAwareLoss(label_smoothing=bad)
    with pytest.raises(ValueError, match="`label_smoothing`"):
        intensity_aware_loss(torch.zeros(2, 3), torch.tensor([0, 1]), label_smoothing=bad)
