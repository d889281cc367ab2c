"""MICACLLoss: Eq. 13, L_all = L_CET + lambda_MC * L_MC, and its presets."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from micacl_layers import (
    PRESETS,
    ClassificationEnhancementTerm,
    MCCLoss,
    MICACLLoss,
    MICACLLossOutput,
)
from micacl_layers.functional import logit_adjusted_cross_entropy
from tests.conftest import (
    EDGE_CASES,
    EDGE_FEATURE_DIM,
    EDGE_NUM_CLASSES,
    assert_finite,
    assert_grads_finite,
    dtypes,
    edge_case,
    randint_targets,
    randn,
    seeds,
)


def _seeded(fn, seed=0):
    """Run ``fn`` with the global RNG (the aug term's noise) seeded, leaving the RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn()


@given(
    batch=st.integers(1, 6),
    num_classes=st.integers(2, 4),
    dim=st.integers(1, 8),
    scales=st.sampled_from([(1,), (1, 2), (1, 2, 4)]),
    mc_weight=st.sampled_from([0.0, 1.0, 30.0]),
    aug_weight=st.sampled_from([0.0, 0.1]),
    form=st.sampled_from(["ratio", "log"]),
    fixed_counts=st.booleans(),
    dtype=dtypes,
    seed=seeds,
)
def test_shapes_and_finite(
    batch, num_classes, dim, scales, mc_weight, aug_weight, form, fixed_counts, dtype, seed
):
    scales = tuple(s for s in scales if s <= dim)
    torch.manual_seed(seed)
    head = nn.Linear(dim, num_classes, dtype=dtype)
    counts = list(range(1, num_classes + 1)) if fixed_counts else None
    criterion = MICACLLoss(
        num_classes,
        dim,
        counts,
        scales,
        mc_weight=mc_weight,
        aug_weight=aug_weight,
        form=form,
        projection_dim=3,
        dtype=dtype,
    )
    features = randn(batch, dim, seed=seed, dtype=dtype, requires_grad=True)
    targets = randint_targets(batch, num_classes, seed=seed + 1)
    out = criterion(features, head(features), targets, classifier=head, return_breakdown=True)
    assert isinstance(out, MICACLLossOutput)
    for value in out:
        assert value.shape == ()
    assert_finite(*out)
    out.loss.backward()
    assert_finite(features.grad)
    assert_grads_finite(head)
    assert_grads_finite(criterion, allow_none=mc_weight == 0)


def test_total_is_cet_plus_weighted_mccl():
    torch.manual_seed(0)
    head = nn.Linear(16, 3)
    criterion = MICACLLoss(
        3,
        16,
        [30, 10, 5],
        (1, 2),
        mc_weight=7.0,
        label_smoothing=0.2,
        ial_weight=0.3,
        aug_weight=0.4,
        aug_noise_std=0.2,
        projection_dim=8,
        form="log",
        tau0=0.1,
    )
    f = torch.randn(8, 16)
    z, y = head(f), torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    out = _seeded(lambda: criterion(f, z, y, classifier=head, return_breakdown=True))
    cet = ClassificationEnhancementTerm(
        label_smoothing=0.2, ial_weight=0.3, aug_weight=0.4, aug_noise_std=0.2
    )
    expected_cet = _seeded(lambda: cet(z, y, features=f, classifier=head, return_breakdown=True))
    mccl = MCCLoss(3, 16, [30, 10, 5], (1, 2), projection_dim=8, form="log", tau0=0.1)
    mccl.load_state_dict(criterion.mccl.state_dict())
    expected_mccl = mccl(f, z, y)
    torch.testing.assert_close(out.cet, expected_cet.loss)
    torch.testing.assert_close(out.ce, expected_cet.ce)
    torch.testing.assert_close(out.ial, expected_cet.ial)
    torch.testing.assert_close(out.aug, expected_cet.aug)
    torch.testing.assert_close(out.mccl, expected_mccl)
    torch.testing.assert_close(out.loss, expected_cet.loss + 7.0 * expected_mccl)
    plain = _seeded(lambda: criterion(f, z, y, classifier=head))
    torch.testing.assert_close(plain, out.loss)


def test_zero_mc_weight_skips_mccl():
    criterion = MICACLLoss(3, 8, [3, 2, 1], mc_weight=0.0, aug_weight=0.0, projection_dim=4)
    z = torch.randn(4, 3)
    out = criterion(torch.randn(4, 8), z, torch.tensor([0, 1, 2, 0]), return_breakdown=True)
    assert float(out.mccl) == 0.0
    torch.testing.assert_close(out.loss, out.cet)


def test_zero_mc_weight_still_counts_running_class_counts():
    # The logit adjustment reads .mccl's running counts: skipping MCCL must not freeze them at
    # zero (uniform prior, an adjustment that does nothing).
    torch.manual_seed(0)
    y = torch.tensor([0, 0, 0, 1, 1, 2])
    on, off = (
        MICACLLoss(3, 8, None, (1,), projection_dim=4, mc_weight=w, logit_adjustment=1.0)
        for w in (1.0, 0.0)
    )
    for criterion in (on, off):
        for _ in range(2):
            f = torch.randn(6, 8)
            criterion(f, torch.randn(6, 3), y, classifier=nn.Linear(8, 3))
    assert off.mccl.class_counts.tolist() == on.mccl.class_counts.tolist() == [6, 4, 2]
    off.eval()
    off(torch.randn(6, 8), torch.randn(6, 3), y, classifier=nn.Linear(8, 3))
    assert off.mccl.class_counts.tolist() == [6, 4, 2]  # eval mode counts nothing
    off.train()
    ignored = torch.tensor([0, -100, 2, -100, 1, 1])  # the CET's ignore_index is not counted
    off(torch.randn(6, 8), torch.randn(6, 3), ignored, classifier=nn.Linear(8, 3))
    assert off.mccl.class_counts.tolist() == [7, 6, 3]


@pytest.mark.parametrize("dtype", ["uint8", "int16", "int32", "uint16", "uint32", "uint64"])
@pytest.mark.parametrize("mc_weight", [1.0, 0.0])
def test_running_counts_take_targets_of_any_integer_dtype(dtype, mc_weight):
    # The CET takes any integer dtype (and MCCL converts them); the counting added for
    # mc_weight=0 handed the raw targets to torch.bincount, which has no kernel for
    # uint16/uint32/uint64 ("bincount_cpu" not implemented).
    dtype = getattr(torch, dtype, None)
    if dtype is None:
        pytest.skip("this torch has no such dtype")
    criterion = MICACLLoss(3, 8, None, (1,), projection_dim=4, mc_weight=mc_weight, aug_weight=0)
    y = torch.tensor([0, 1, 2, 1, 1, 0])
    criterion(torch.randn(6, 8), torch.randn(6, 3), y.to(dtype))
    assert criterion.mccl.class_counts.tolist() == [2, 3, 1]


@pytest.mark.parametrize("preset", ["paper", "paper_logit_adjusted", "balanced"])
def test_ignored_targets_are_left_out_of_mccl_too(preset):
    # The CET ignores its ignore_index (-100); MCCL refused it, so a batch with ignored
    # samples failed whenever MCCL ran (and trained with mc_weight=0).
    torch.manual_seed(0)
    head = nn.Linear(8, 3, dtype=torch.float64)
    full = MICACLLoss.from_preset(preset, 3, 8, class_counts=[5, 3, 1], projection_dim=4)
    full = full.double()
    sub = MICACLLoss.from_preset(preset, 3, 8, class_counts=[5, 3, 1], projection_dim=4)
    sub = sub.double()
    sub.load_state_dict(full.state_dict())
    features = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, -100, 2, 1, -100, 1])
    keep = targets != -100
    got = _seeded(
        lambda: full(features, head(features), targets, classifier=head, return_breakdown=True)
    )
    want = _seeded(
        lambda: sub(
            features[keep],
            head(features[keep]),
            targets[keep],
            classifier=head,
            return_breakdown=True,
        )
    )
    torch.testing.assert_close(got.mccl, want.mccl)
    torch.testing.assert_close(got.ce, want.ce)
    (grad,) = torch.autograd.grad(got.mccl, features)
    assert grad[~keep].abs().max() == 0 and grad[keep].abs().max() > 0
    # Every sample ignored: MCCL has no anchors, a graph-connected 0.
    none = full(
        features, head(features), torch.full((6,), -100), classifier=head, return_breakdown=True
    )
    assert none.mccl.item() == 0 and none.mccl.requires_grad


def test_presets():
    crit = MICACLLoss.from_preset("public_code", 7, 64, projection_dim=32)
    assert crit.mc_weight == 30.0
    assert crit.cet.label_smoothing == 0.1
    assert crit.mccl.tau0 == 0.07
    assert crit.mccl.form == "log"
    assert crit.mccl.temperature == "batch_mean"
    assert crit.cet.ial_weight == 0.0
    assert crit.cet.aug_weight == 0.0
    paper = MICACLLoss.from_preset("paper", 7, 64, projection_dim=32)
    assert paper.mc_weight == 1.0
    assert paper.cet.ial_weight == PRESETS["paper"]["ial_weight"] > 0
    assert paper.cet.aug_weight == PRESETS["paper"]["aug_weight"] > 0
    overridden = MICACLLoss.from_preset("public_code", 7, 64, projection_dim=32, mc_weight=2.0)
    assert overridden.mc_weight == 2.0
    with pytest.raises(ValueError, match="name"):
        MICACLLoss.from_preset("nope", 7, 64)


def test_parameters_are_the_projections_and_get_gradients():
    torch.manual_seed(0)
    criterion = MICACLLoss(3, 16, None, (1, 2, 4), projection_dim=8, aug_weight=0.0)
    assert len(list(criterion.parameters())) == 6
    assert {id(p) for p in criterion.parameters()} == {id(p) for p in criterion.mccl.parameters()}
    f = torch.randn(8, 16)
    criterion(f, torch.randn(8, 3), torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])).backward()
    for name, p in criterion.named_parameters():
        assert p.grad is not None, name
        assert bool(p.grad.abs().sum() > 0), name


def test_gradcheck_features_and_logits():
    """Aug term on with zero noise: its gradient w.r.t. the features goes through the classifier
    (the rms that scales the noise is a documented stop-gradient, so a noisy aug term is checked
    w.r.t. the logits and the parameters below)."""
    torch.manual_seed(0)
    head = nn.Linear(4, 3, dtype=torch.float64)
    criterion = MICACLLoss(
        3,
        4,
        [5, 3, 2],
        (1, 2),
        mc_weight=2.0,
        ial_weight=0.5,
        aug_weight=0.5,
        aug_noise_std=0.0,
        projection_dim=3,
        detach_difficulty=False,
        dtype=torch.float64,
    )
    features = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 0, 1, 2, 2])
    assert torch.autograd.gradcheck(
        lambda f, z: criterion(f, z, targets, classifier=head), (features, logits)
    )


@pytest.mark.parametrize("form", ["ratio", "log"])
def test_gradcheck_logits_and_parameters_with_noisy_aug(form):
    torch.manual_seed(0)
    head = nn.Linear(4, 3, dtype=torch.float64)
    criterion = MICACLLoss(
        3,
        4,
        [5, 3, 2],
        (1, 2),
        mc_weight=2.0,
        aug_weight=0.5,
        projection_dim=2,
        form=form,
        detach_difficulty=False,
        dtype=torch.float64,
    )
    features = torch.randn(5, 4, dtype=torch.float64)
    logits = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 0, 1, 2, 2])
    names = [n for n, _ in criterion.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in criterion.parameters()]
    w = head.weight.detach().clone().requires_grad_()
    b = head.bias.detach().clone().requires_grad_()

    def fn(z, hw, hb, *ps):
        return _seeded(
            lambda: torch.func.functional_call(
                criterion,
                dict(zip(names, ps, strict=True)),
                (features, z, targets),
                {"classifier": lambda x: nn.functional.linear(x, hw, hb)},
            )
        )

    assert torch.autograd.gradcheck(fn, (logits, w, b, *params))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("form", ["ratio", "log"])
@pytest.mark.parametrize("case", EDGE_CASES)
def test_degenerate_batches_are_finite(case, form, dtype):
    torch.manual_seed(0)
    features, logits, targets = edge_case(case, dtype)
    head = nn.Linear(EDGE_FEATURE_DIM, EDGE_NUM_CLASSES, dtype=dtype)
    criterion = MICACLLoss(
        EDGE_NUM_CLASSES,
        EDGE_FEATURE_DIM,
        None,
        (1, 2, 4),
        mc_weight=30.0,
        ial_weight=0.5,
        aug_weight=0.5,
        projection_dim=4,
        form=form,
        detach_difficulty=False,
        dtype=dtype,
    )
    out = criterion(features, logits, targets, classifier=head, return_breakdown=True)
    assert_finite(*out)
    out.loss.backward()
    assert_finite(features.grad, logits.grad)
    assert_grads_finite(head, criterion)


def test_state_dict_round_trip():
    torch.manual_seed(0)
    head = nn.Linear(8, 3)
    a = MICACLLoss(3, 8, None, (1, 2), projection_dim=4)
    for _ in range(2):
        f = torch.randn(6, 8)
        a(f, head(f), torch.randint(0, 3, (6,)), classifier=head)
    torch.manual_seed(1)
    b = MICACLLoss(3, 8, None, (1, 2), projection_dim=4)
    b.load_state_dict(a.state_dict())
    assert int(b.mccl.class_counts.sum()) == 12
    a.eval()
    b.eval()
    f, y = torch.randn(6, 8), torch.tensor([0, 0, 1, 1, 2, 2])
    out_a = _seeded(lambda: a(f, head(f), y, classifier=head))
    out_b = _seeded(lambda: b(f, head(f), y, classifier=head))
    torch.testing.assert_close(out_a, out_b, atol=0, rtol=0)


PRESET_COUNTS = [9, 4, 1]  # EDGE_NUM_CLASSES classes, long-tailed


def _preset(name, dtype=torch.float32, **overrides):
    return MICACLLoss.from_preset(
        name,
        EDGE_NUM_CLASSES,
        EDGE_FEATURE_DIM,
        PRESET_COUNTS,
        projection_dim=4,
        dtype=dtype,
        **overrides,
    )


# Every preset, and the options of the CET that no preset sets, on top of the preset they
# modify.
PRESET_CASES = [pytest.param(name, {}, id=name) for name in PRESETS] + [
    pytest.param(
        "paper_logit_adjusted",
        {"balanced_smoothing": True},
        id="paper_logit_adjusted-balanced_smoothing",
    )
]


def _breakdowns_on_shared_projections(criterion, other):
    """Both breakdowns on one batch, ``other`` given ``criterion``'s projections and the same
    augmentation noise."""
    other.load_state_dict(criterion.state_dict())
    torch.manual_seed(0)
    head = nn.Linear(EDGE_FEATURE_DIM, EDGE_NUM_CLASSES)
    features = torch.randn(6, EDGE_FEATURE_DIM)
    logits = head(features)
    targets = torch.tensor([0, 0, 0, 1, 1, 2])
    out = [
        _seeded(lambda c=c: c(features, logits, targets, classifier=head, return_breakdown=True))
        for c in (criterion, other)
    ]
    return out[0], out[1], logits, targets


def test_paper_logit_adjusted_is_paper_with_la_ce():
    """The preset differs from "paper" only in the CET's cross-entropy: on the same projections
    its breakdown equals "paper"'s but for the CE term, which is the logit-adjusted one."""
    assert {**PRESETS["paper"], "logit_adjustment": 1.0} == PRESETS["paper_logit_adjusted"]
    got, ref, logits, targets = _breakdowns_on_shared_projections(
        _preset("paper_logit_adjusted"), _preset("paper")
    )
    torch.testing.assert_close(got.mccl, ref.mccl)
    torch.testing.assert_close(got.ial, ref.ial)
    prior = torch.tensor(PRESET_COUNTS, dtype=torch.float32)
    want_ce = nn.functional.cross_entropy(
        logits + (prior / prior.sum()).log(), targets, label_smoothing=0.1
    )
    torch.testing.assert_close(got.ce, want_ce)
    assert not torch.allclose(got.ce, ref.ce)


def test_balanced_smoothing_changes_only_the_adjusted_cross_entropy():
    """On the same projections, balanced_smoothing=True changes the CE term (to the function's
    balanced form) and leaves IAL, the augmentation and MCCL as they were."""
    bal = _preset("paper_logit_adjusted", balanced_smoothing=True)
    assert bal.cet.balanced_smoothing and "balanced_smoothing=True" in repr(bal.cet)
    got, ref, logits, targets = _breakdowns_on_shared_projections(
        bal, _preset("paper_logit_adjusted")
    )
    for term in ("mccl", "ial", "aug"):
        torch.testing.assert_close(getattr(got, term), getattr(ref, term))
    want_ce = logit_adjusted_cross_entropy(
        logits, targets, PRESET_COUNTS, label_smoothing=0.1, balanced_smoothing=True
    )
    torch.testing.assert_close(got.ce, want_ce)
    assert not torch.allclose(got.ce, ref.ce)


@pytest.mark.parametrize(("name", "overrides"), PRESET_CASES)
def test_every_preset_gradchecks_in_float64(name, overrides):
    """Features always; logits too (with Eq. 7's difficulty not detached, else the numerical
    gradient would see it) unless the preset divides the weights by their batch mean, a
    documented stop-gradient."""
    through_logits = PRESETS[name].get("weight_norm") != "batch"
    torch.manual_seed(0)
    criterion = MICACLLoss.from_preset(
        name,
        3,
        4,
        [5, 3, 2],
        scales=(1, 2),
        projection_dim=3,
        aug_noise_std=0.0,  # the noise's rms is a documented stop-gradient
        detach_difficulty=not through_logits,
        dtype=torch.float64,
        **overrides,
    )
    head = nn.Linear(4, 3, dtype=torch.float64)
    features = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(5, 3, dtype=torch.float64, requires_grad=through_logits)
    targets = torch.tensor([0, 0, 1, 2, 2])
    assert torch.autograd.gradcheck(
        lambda f, z: criterion(f, z, targets, classifier=head), (features, logits)
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("case", EDGE_CASES)
@pytest.mark.parametrize(("name", "overrides"), PRESET_CASES)
def test_every_preset_on_degenerate_batches_is_finite(name, overrides, case, dtype):
    torch.manual_seed(0)
    features, logits, targets = edge_case(case, dtype)
    head = nn.Linear(EDGE_FEATURE_DIM, EDGE_NUM_CLASSES, dtype=dtype)
    criterion = _preset(name, dtype, **overrides)
    out = criterion(features, logits, targets, classifier=head, return_breakdown=True)
    assert_finite(*out)
    out.loss.backward()
    assert_finite(features.grad, logits.grad)
    assert_grads_finite(criterion)
    # The head feeds only the augmentation term and the class complements, which some
    # presets leave off.
    assert_grads_finite(head, allow_none=True)
