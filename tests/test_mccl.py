"""MCCLoss (Eq. 7-12): brute force, SupCon parity, invariances, numerics, module plumbing."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from pytorch_metric_learning.losses import SupConLoss

from micacl_layers import MCCLoss, MCCLOutput, MultiscaleCategoryAwareContrastiveLoss
from micacl_layers.functional import (
    adaptive_temperature,
    category_aware_weights,
    mccl_loss,
    multiscale_category_aware_contrastive_loss,
    pool_features,
    supervised_contrastive_per_anchor,
)
from tests.conftest import (
    EDGE_CASES,
    EDGE_FEATURE_DIM,
    EDGE_NUM_CLASSES,
    assert_finite,
    dtypes,
    edge_case,
    generator,
    randint_targets,
    randn,
    seeds,
)

FORMS = ("ratio", "log")
TEMPERATURES = ("class_mean", "batch_mean", "fixed")
REDUCTIONS = ("mean", "sum", "none")


@st.composite
def mccl_problems(draw, max_batch=8, max_classes=4, max_dim=8):
    """A random (B, K, D, scales, class_counts) problem."""
    batch = draw(st.integers(1, max_batch))
    num_classes = draw(st.integers(1, max_classes))
    dim = draw(st.integers(1, max_dim))
    scales = tuple(draw(st.lists(st.integers(1, dim), min_size=1, max_size=3, unique=True)))
    counts = draw(st.lists(st.integers(1, 60), min_size=num_classes, max_size=num_classes))
    return batch, num_classes, dim, scales, counts


# ------------------------------------------------------------------------------------------
# shapes
# ------------------------------------------------------------------------------------------


@given(
    problem=mccl_problems(),
    projection_dim=st.one_of(st.none(), st.integers(1, 5)),
    form=st.sampled_from(FORMS),
    temperature=st.sampled_from(TEMPERATURES),
    reduction=st.sampled_from(REDUCTIONS),
    fixed_counts=st.booleans(),
    scale=st.sampled_from([1e-6, 1.0, 1e3]),
    dtype=dtypes,
    seed=seeds,
)
def test_shapes_and_finite(
    problem, projection_dim, form, temperature, reduction, fixed_counts, scale, dtype, seed
):
    batch, num_classes, dim, scales, counts = problem
    torch.manual_seed(seed)
    mccl = MCCLoss(
        num_classes,
        dim,
        counts if fixed_counts else None,
        scales,
        projection_dim=projection_dim,
        form=form,
        temperature=temperature,
        reduction=reduction,
        dtype=dtype,
    )
    features = randn(batch, dim, seed=seed, dtype=dtype, scale=scale, requires_grad=True)
    logits = randn(batch, num_classes, seed=seed + 1, dtype=dtype)
    targets = randint_targets(batch, num_classes, seed=seed + 2)
    out = mccl(features, logits, targets, return_breakdown=True)
    assert isinstance(out, MCCLOutput)
    loss_shape = (batch,) if reduction == "none" else ()
    assert out.loss.shape == loss_shape
    assert out.per_scale.shape == (len(scales), *loss_shape)
    assert out.weights.shape == (batch,)
    assert out.temperature.shape == ()
    assert out.has_positive.shape == (batch,)
    assert out.has_positive.dtype == torch.bool
    expected_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert out.loss.dtype == expected_dtype
    assert_finite(out.loss, out.per_scale, out.weights, out.temperature)
    plain = mccl.eval()(features, logits, targets)
    assert plain.shape == loss_shape
    plain.sum().backward()
    assert_finite(features.grad)


# ------------------------------------------------------------------------------------------
# brute force of Eq. 7-12
# ------------------------------------------------------------------------------------------


def brute_force_mccl(
    features,
    logits,
    targets,
    counts,
    *,
    scales,
    projections,
    tau0,
    temperature,
    form,
    exclude_self,
    class_weighting,
    difficulty,
    reduction,
):
    """Eq. 7-12 with plain Python floats and loops.

    ``projections`` is None or one (weight rows, bias) pair of nested lists per scale. Class
    factor normalised to mean 1 over the K classes; difficulty 1 - p_true; anchors without a
    positive count 0 and are left out of the mean.
    """
    f = features.tolist()
    lg = logits.tolist()
    y = targets.tolist()
    n = [float(c) for c in counts]
    batch, dim, num_classes = len(f), len(f[0]), len(n)

    # Eq. 7: category-aware weights.
    inv = [1.0 / c for c in n]
    mean_inv = sum(inv) / num_classes
    weights = []
    for i in range(batch):
        w = 1.0
        if class_weighting:
            w *= inv[y[i]] / mean_inv
        if difficulty:
            m = max(lg[i])
            exps = [math.exp(v - m) for v in lg[i]]
            w *= 1.0 - exps[y[i]] / sum(exps)
        weights.append(w)

    # Eq. 10: temperature.
    biggest = max(n)
    if temperature == "class_mean":
        tau = tau0 * sum(1.0 + c / biggest for c in n) / num_classes
    elif temperature == "batch_mean":
        tau = tau0 * sum(1.0 + n[y[i]] / biggest for i in range(batch)) / batch
    else:
        tau = tau0

    per_scale = []
    for idx, s in enumerate(scales):
        # Eq. 8: adaptive average pooling to D // s bins, then the projection.
        out = dim // s
        z = []
        for i in range(batch):
            pooled = []
            for o in range(out):
                start, end = (o * dim) // out, -((-(o + 1) * dim) // out)
                pooled.append(sum(f[i][start:end]) / (end - start))
            if projections is not None:
                w_rows, bias = projections[idx]
                pooled = [
                    sum(wr[k] * pooled[k] for k in range(out)) + bias[r]
                    for r, wr in enumerate(w_rows)
                ]
            z.append(pooled)
        norms = [math.sqrt(sum(v * v for v in zi)) for zi in z]
        # Eq. 9: cosine similarity over tau.
        sim = [
            [
                sum(a * b for a, b in zip(z[i], z[j], strict=True)) / (norms[i] * norms[j]) / tau
                for j in range(batch)
            ]
            for i in range(batch)
        ]
        # Eq. 11 per anchor.
        per_anchor, num_with_pos = [], 0
        for i in range(batch):
            cands = [k for k in range(batch) if not (exclude_self and k == i)]
            pos = [j for j in cands if y[j] == y[i]]
            if not pos:
                per_anchor.append(0.0)
                continue
            num_with_pos += 1
            denom = sum(math.exp(sim[i][k]) for k in cands)
            if form == "ratio":
                ell = -sum(math.exp(sim[i][j]) for j in pos) / denom
            else:
                ell = -sum(sim[i][j] - math.log(denom) for j in pos) / len(pos)
            per_anchor.append(weights[i] * ell)
        if reduction == "none":
            per_scale.append(per_anchor)
        elif reduction == "sum":
            per_scale.append(sum(per_anchor))
        else:
            per_scale.append(sum(per_anchor) / max(num_with_pos, 1))
    # Eq. 12: mean over the scales.
    if reduction == "none":
        return [sum(ps[i] for ps in per_scale) / len(scales) for i in range(batch)]
    return sum(per_scale) / len(scales)


@given(
    problem=mccl_problems(max_batch=7),
    projection_dim=st.one_of(st.none(), st.integers(1, 4)),
    form=st.sampled_from(FORMS),
    temperature=st.sampled_from(TEMPERATURES),
    reduction=st.sampled_from(REDUCTIONS),
    exclude_self=st.booleans(),
    class_weighting=st.booleans(),
    difficulty=st.booleans(),
    tau0=st.floats(0.05, 1.0),
    seed=seeds,
)
def test_matches_brute_force(
    problem,
    projection_dim,
    form,
    temperature,
    reduction,
    exclude_self,
    class_weighting,
    difficulty,
    tau0,
    seed,
):
    batch, num_classes, dim, scales, counts = problem
    torch.manual_seed(seed)
    mccl = MCCLoss(
        num_classes,
        dim,
        counts,
        scales,
        projection_dim=projection_dim,
        tau0=tau0,
        form=form,
        temperature=temperature,
        reduction=reduction,
        exclude_self=exclude_self,
        class_weighting=class_weighting,
        difficulty=difficulty,
        dtype=torch.float64,
    )
    features = randn(batch, dim, seed=seed, dtype=torch.float64)
    logits = randn(batch, num_classes, seed=seed + 1, dtype=torch.float64)
    targets = randint_targets(batch, num_classes, seed=seed + 2)
    projections = None
    if mccl.projections is not None:
        projections = [(p.weight.tolist(), p.bias.tolist()) for p in mccl.projections]
    expected = brute_force_mccl(
        features,
        logits,
        targets,
        counts,
        scales=scales,
        projections=projections,
        tau0=tau0,
        temperature=temperature,
        form=form,
        exclude_self=exclude_self,
        class_weighting=class_weighting,
        difficulty=difficulty,
        reduction=reduction,
    )
    got = mccl(features, logits, targets).detach()
    torch.testing.assert_close(
        got, torch.tensor(expected, dtype=torch.float64), atol=1e-8, rtol=1e-8
    )


def test_brute_force_is_sensitive():
    """The brute force tells the forms, the self exclusion and the weights apart."""
    features = randn(6, 4, seed=0, dtype=torch.float64)
    logits = randn(6, 3, seed=1, dtype=torch.float64)
    targets = torch.tensor([0, 0, 1, 1, 2, 0])
    base = {
        "scales": (1,),
        "projections": None,
        "tau0": 0.1,
        "temperature": "class_mean",
        "form": "ratio",
        "exclude_self": True,
        "class_weighting": True,
        "difficulty": True,
        "reduction": "mean",
    }
    ref = brute_force_mccl(features, logits, targets, [5, 2, 9], **base)
    for key, value in [
        ("form", "log"),
        ("exclude_self", False),
        ("class_weighting", False),
        ("difficulty", False),
        ("temperature", "fixed"),
    ]:
        other = brute_force_mccl(features, logits, targets, [5, 2, 9], **{**base, key: value})
        assert abs(other - ref) > 1e-6, key


# ------------------------------------------------------------------------------------------
# parity with pytorch-metric-learning's SupConLoss
# ------------------------------------------------------------------------------------------


def _supcon_config(num_classes, dim, tau):
    return MCCLoss(
        num_classes,
        dim,
        None,
        scales=(1,),
        projection_dim=None,
        tau0=tau,
        temperature="fixed",
        form="log",
        class_weighting=False,
        difficulty=False,
        dtype=torch.float64,
    )


def _compare_with_supcon(features, targets, num_classes, tau):
    # PML's SupConLoss (read from its source): cosine similarity / temperature; positives are
    # same-label pairs with the diagonal removed; the denominator runs over positives and
    # negatives, so self is excluded; -mean log-prob over positives per anchor; the default
    # AvgNonZeroReducer averages the strictly positive per-anchor losses, i.e. exactly the
    # anchors that have a positive (an anchor with positives has loss > 0 when the batch holds
    # a negative). It returns 0 outright when the batch has no positive pair or no negative
    # pair, so every batch here holds at least two classes.
    assert targets.unique().numel() >= 2
    f1 = features.detach().clone().requires_grad_()
    f2 = features.detach().clone().requires_grad_()
    mccl = _supcon_config(num_classes, features.shape[1], tau)
    logits = torch.zeros(features.shape[0], num_classes, dtype=torch.float64)
    ours = mccl(f1, logits, targets)
    theirs = SupConLoss(temperature=tau)(f2, targets)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(f1.grad, f2.grad, atol=1e-6, rtol=1e-6)


@given(
    batch=st.integers(2, 12),
    num_classes=st.integers(2, 5),
    dim=st.integers(2, 10),
    tau=st.floats(0.05, 1.0),
    seed=seeds,
)
def test_equals_pml_supcon(batch, num_classes, dim, tau, seed):
    targets = randint_targets(batch, num_classes, seed=seed + 1)
    assume(targets.unique().numel() >= 2)
    features = randn(batch, dim, seed=seed, dtype=torch.float64)
    _compare_with_supcon(features, targets, num_classes, tau)


@pytest.mark.parametrize(
    "targets",
    [
        [0, 0, 1, 2, 2, 3],  # anchors 2 and 5 lack positives
        [0, 1, 1, 1, 2],  # anchors 0 and 4 lack positives
        [3, 0, 0, 0, 0, 0, 0, 1],  # two singletons among a big class
        [0, 1, 0, 1, 0, 1],  # every anchor has positives
    ],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_pml_supcon_with_lonely_anchors(targets, seed):
    targets = torch.tensor(targets)
    features = randn(len(targets), 6, seed=seed, dtype=torch.float64)
    _compare_with_supcon(features, targets, 4, 0.07)


# ------------------------------------------------------------------------------------------
# invariances and reductions
# ------------------------------------------------------------------------------------------


@given(
    problem=mccl_problems(),
    projection_dim=st.one_of(st.none(), st.integers(1, 4)),
    form=st.sampled_from(FORMS),
    temperature=st.sampled_from(TEMPERATURES),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=seeds,
)
def test_permutation_invariance(problem, projection_dim, form, temperature, dtype, seed):
    batch, num_classes, dim, scales, counts = problem
    torch.manual_seed(seed)
    mccl = MCCLoss(
        num_classes,
        dim,
        counts,
        scales,
        projection_dim=projection_dim,
        form=form,
        temperature=temperature,
        dtype=dtype,
    )
    features = randn(batch, dim, seed=seed, dtype=dtype)
    logits = randn(batch, num_classes, seed=seed + 1, dtype=dtype)
    targets = randint_targets(batch, num_classes, seed=seed + 2)
    perm = torch.randperm(batch, generator=generator(seed + 3))
    t = {"atol": 1e-6, "rtol": 1e-6} if dtype == torch.float64 else {"atol": 1e-5, "rtol": 1e-5}
    with torch.no_grad():
        torch.testing.assert_close(
            mccl(features[perm], logits[perm], targets[perm]), mccl(features, logits, targets), **t
        )
        mccl.reduction = "none"
        per_anchor = mccl(features, logits, targets)
        torch.testing.assert_close(
            mccl(features[perm], logits[perm], targets[perm]), per_anchor[perm], **t
        )


def test_reductions_agree():
    torch.manual_seed(0)
    features, logits = torch.randn(7, 8), torch.randn(7, 3)
    targets = torch.tensor([0, 0, 1, 1, 2, 0, 1])
    kwargs = {"class_counts": [4, 3, 1], "scales": (1, 2), "projection_dim": None}
    none = MCCLoss(3, 8, reduction="none", **kwargs)(features, logits, targets)
    total = MCCLoss(3, 8, reduction="sum", **kwargs)(features, logits, targets)
    mean = MCCLoss(3, 8, reduction="mean", **kwargs)(features, logits, targets)
    torch.testing.assert_close(total, none.sum())
    # Anchor 4 (class 2) has no positive: exactly 0, and left out of the mean.
    assert float(none[4]) == 0.0
    assert bool((none[[0, 1, 2, 3, 5, 6]] != 0).all())
    torch.testing.assert_close(mean, none.sum() / 6)


def test_no_positive_anywhere_gives_graph_connected_zero():
    features = torch.randn(3, 8, requires_grad=True)
    mccl = MCCLoss(3, 8, [1, 1, 1], projection_dim=4)
    loss = mccl(features, torch.randn(3, 3), torch.tensor([0, 1, 2]))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.equal(features.grad, torch.zeros_like(features))
    for p in mccl.parameters():
        assert p.grad is not None


def test_breakdown_is_consistent():
    torch.manual_seed(0)
    counts = torch.tensor([40, 7, 13])
    mccl = MCCLoss(3, 8, counts, (1, 2, 4), projection_dim=4, temperature="batch_mean")
    features, logits = torch.randn(6, 8), torch.randn(6, 3)
    targets = torch.tensor([0, 0, 1, 1, 2, 1])
    out = mccl(features, logits, targets, return_breakdown=True)
    torch.testing.assert_close(out.loss, out.per_scale.mean(0))
    torch.testing.assert_close(out.loss, mccl(features, logits, targets))
    torch.testing.assert_close(out.weights, category_aware_weights(logits, targets, counts))
    torch.testing.assert_close(
        out.temperature.double(),
        adaptive_temperature(counts, 0.07, mode="batch_mean", targets=targets),
    )
    assert out.has_positive.tolist() == [True, True, True, True, False, True]


def test_batch_mean_temperature_of_an_empty_batch_is_eq10():
    """The mean over no targets was NaN (in the breakdown of an empty batch's loss)."""
    counts = torch.tensor([40, 7, 13])
    empty = torch.zeros(0, dtype=torch.long)
    eq10 = adaptive_temperature(counts, 0.07)
    got = adaptive_temperature(counts, 0.07, mode="batch_mean", targets=empty)
    torch.testing.assert_close(got, eq10)
    mccl = MCCLoss(3, 8, counts, projection_dim=4, temperature="batch_mean")
    out = mccl(torch.randn(0, 8), torch.randn(0, 3), empty, return_breakdown=True)
    assert float(out.loss.detach()) == 0.0 and out.loss.grad_fn is not None
    torch.testing.assert_close(out.temperature.double(), eq10)


# ------------------------------------------------------------------------------------------
# building blocks
# ------------------------------------------------------------------------------------------


def test_category_aware_weights_normalisation_and_detach():
    counts = torch.tensor([100.0, 10.0, 1.0])
    targets = torch.tensor([0, 1, 2])
    w = category_aware_weights(torch.zeros(3, 3), targets, counts, difficulty=False)
    inv = torch.tensor([0.01, 0.1, 1.0])
    torch.testing.assert_close(w, inv / inv.mean())
    torch.testing.assert_close(w.mean(), torch.tensor(1.0))  # mean over the K classes
    logits = torch.randn(3, 3, requires_grad=True)
    p = logits.softmax(-1)[torch.arange(3), targets]
    torch.testing.assert_close(
        category_aware_weights(logits, targets, counts, class_weighting=False), 1 - p
    )
    assert not category_aware_weights(logits, targets, counts).requires_grad
    attached = category_aware_weights(logits, targets, counts, detach_difficulty=False)
    assert attached.requires_grad


@given(
    counts=st.lists(st.integers(1, 10_000), min_size=1, max_size=8),
    tau0=st.floats(0.01, 1.0),
    seed=seeds,
)
def test_adaptive_temperature(counts, tau0, seed):
    c = torch.tensor(counts, dtype=torch.float64)
    tau = float(adaptive_temperature(c, tau0))
    assert tau == pytest.approx(tau0 * sum(1 + n / max(counts) for n in counts) / len(counts))
    assert tau0 - 1e-12 <= tau <= 2 * tau0 + 1e-12
    assert float(adaptive_temperature(c, tau0, mode="fixed")) == tau0
    targets = randint_targets(5, len(counts), seed=seed)
    tb = float(adaptive_temperature(c, tau0, mode="batch_mean", targets=targets))
    assert tb == pytest.approx(
        tau0 * sum(1 + counts[t] / max(counts) for t in targets.tolist()) / 5
    )


@given(batch=st.integers(1, 3), dim=st.integers(1, 12), scale=st.integers(1, 12), seed=seeds)
def test_pool_features_is_adaptive_avg_pool(batch, dim, scale, seed):
    assume(scale <= dim)
    x = randn(batch, dim, seed=seed, dtype=torch.float64)
    ref = torch.nn.functional.adaptive_avg_pool1d(x[:, None], dim // scale)[:, 0]
    torch.testing.assert_close(pool_features(x, scale), ref)


def test_supervised_contrastive_memory_candidates():
    """Memory entries add candidates and positives but are never anchors."""
    torch.manual_seed(0)
    z, mem = torch.randn(3, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    targets, mem_t = torch.tensor([0, 1, 2]), torch.tensor([0, 1])
    loss, has_pos = supervised_contrastive_per_anchor(
        z, targets, 0.5, form="log", memory_z=mem, memory_targets=mem_t
    )
    assert has_pos.tolist() == [True, True, False]
    zn = torch.nn.functional.normalize(torch.cat([z, mem]), dim=1)
    sim = zn[:3] @ zn.T / 0.5
    lse0 = torch.logsumexp(sim[0, [1, 2, 3, 4]], 0)
    torch.testing.assert_close(loss[0], lse0 - sim[0, 3])
    assert float(loss[2]) == 0.0


# ------------------------------------------------------------------------------------------
# gradients and numerics
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck_features(form, reduction):
    torch.manual_seed(0)
    mccl = MCCLoss(
        3,
        4,
        [5, 3, 1],
        (1, 2),
        projection_dim=3,
        form=form,
        reduction=reduction,
        dtype=torch.float64,
    )
    features = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(5, 3, dtype=torch.float64)
    targets = torch.tensor([0, 0, 1, 1, 2])
    assert torch.autograd.gradcheck(lambda f: mccl(f, logits, targets), (features,))


@pytest.mark.parametrize("form", FORMS)
def test_gradcheck_features_and_logits_attached_difficulty(form):
    torch.manual_seed(0)
    mccl = MCCLoss(
        3,
        4,
        [5, 3, 1],
        (1, 3),
        projection_dim=2,
        form=form,
        detach_difficulty=False,
        dtype=torch.float64,
    )
    features = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 2, 1, 1, 2])
    assert torch.autograd.gradcheck(lambda f, z: mccl(f, z, targets), (features, logits))


@pytest.mark.parametrize("form", FORMS)
def test_gradcheck_projection_parameters(form):
    torch.manual_seed(0)
    mccl = MCCLoss(2, 4, [3, 2], (1, 2), projection_dim=2, form=form, dtype=torch.float64)
    features = torch.randn(4, 4, dtype=torch.float64)
    logits = torch.randn(4, 2, dtype=torch.float64)
    targets = torch.tensor([0, 0, 1, 1])
    names = [n for n, _ in mccl.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in mccl.parameters())

    def fn(*ps):
        return torch.func.functional_call(
            mccl, dict(zip(names, ps, strict=True)), (features, logits, targets)
        )

    assert torch.autograd.gradcheck(fn, params)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("projection_dim", [None, 4])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("case", EDGE_CASES)
def test_degenerate_batches_are_finite(case, form, projection_dim, dtype):
    torch.manual_seed(0)
    features, logits, targets = edge_case(case, dtype)
    for detach in (True, False):
        mccl = MCCLoss(
            EDGE_NUM_CLASSES,
            EDGE_FEATURE_DIM,
            [10, 5, 1],
            (1, 2, 4),
            projection_dim=projection_dim,
            form=form,
            detach_difficulty=detach,
            dtype=dtype,
        )
        features.grad = logits.grad = None
        loss = mccl(features, logits, targets)
        assert_finite(loss)
        loss.backward()
        assert_finite(features.grad)
        if detach:
            assert logits.grad is None or bool(torch.isfinite(logits.grad).all())
        else:
            assert_finite(logits.grad)
        for name, p in mccl.named_parameters():
            assert p.grad is not None, name
            assert_finite(p.grad)


# ------------------------------------------------------------------------------------------
# module plumbing
# ------------------------------------------------------------------------------------------


def test_alias():
    assert MCCLoss is MultiscaleCategoryAwareContrastiveLoss
    assert mccl_loss is multiscale_category_aware_contrastive_loss


def test_projections_are_parameters_and_get_gradients():
    torch.manual_seed(0)
    mccl = MCCLoss(3, 16, [5, 3, 2], (1, 2, 4), projection_dim=6)
    expected = sum((16 // s) * 6 + 6 for s in (1, 2, 4))
    assert sum(p.numel() for p in mccl.parameters()) == expected
    assert len(list(mccl.parameters())) == 6
    features = torch.randn(8, 16)
    loss = mccl(features, torch.randn(8, 3), torch.tensor([0, 0, 1, 1, 2, 2, 0, 1]))
    loss.backward()
    for name, p in mccl.named_parameters():
        assert p.grad is not None, name
        assert bool(p.grad.abs().sum() > 0), name
    assert not list(MCCLoss(3, 16, [1, 1, 1], projection_dim=None).parameters())


def test_projections_are_fixed_across_calls():
    """The public code re-created random projections on every call; ours are deterministic."""
    torch.manual_seed(0)
    mccl = MCCLoss(3, 16, [5, 3, 2], projection_dim=6)
    f, z, y = torch.randn(6, 16), torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2])
    torch.testing.assert_close(mccl(f, z, y), mccl(f, z, y), atol=0, rtol=0)


def test_running_counts_update_in_train_mode_only():
    mccl = MCCLoss(4, 8, None, projection_dim=None)
    assert mccl.class_counts.dtype == torch.long
    assert mccl.class_counts.tolist() == [0, 0, 0, 0]
    f, z = torch.randn(5, 8), torch.randn(5, 4)
    mccl(f, z, torch.tensor([0, 0, 1, 3, 3]))
    assert mccl.class_counts.tolist() == [2, 1, 0, 2]
    mccl(f, z, torch.tensor([1, 1, 1, 3, 0]))
    assert mccl.class_counts.tolist() == [3, 4, 0, 3]
    mccl.eval()
    mccl(f, z, torch.tensor([2, 2, 2, 2, 2]))
    assert mccl.class_counts.tolist() == [3, 4, 0, 3]
    mccl.train()
    mccl.reset_class_counts()
    assert mccl.class_counts.tolist() == [0, 0, 0, 0]


def test_fixed_counts_never_change():
    mccl = MCCLoss(3, 8, [5, 3, 2], projection_dim=None)
    mccl(torch.randn(4, 8), torch.randn(4, 3), torch.tensor([0, 1, 2, 2]))
    assert mccl.class_counts.tolist() == [5, 3, 2]
    with pytest.raises(RuntimeError):
        mccl.reset_class_counts()


def test_running_counts_feed_the_loss():
    f, z, y = torch.randn(6, 8), torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2])
    tracked = MCCLoss(3, 8, None, projection_dim=None)
    tracked.class_counts.copy_(torch.tensor([40, 2, 9]))
    tracked.eval()
    fixed = MCCLoss(3, 8, [40, 2, 9], projection_dim=None)
    torch.testing.assert_close(tracked(f, z, y), fixed(f, z, y))


def test_state_dict_round_trip_with_running_counts():
    torch.manual_seed(0)
    a = MCCLoss(3, 8, None, (1, 2), projection_dim=4)
    for _ in range(3):
        a(torch.randn(6, 8), torch.randn(6, 3), torch.randint(0, 3, (6,)))
    torch.manual_seed(1)
    b = MCCLoss(3, 8, None, (1, 2), projection_dim=4)
    state = a.state_dict()
    assert "class_counts" in state
    assert int(state["class_counts"].sum()) == 18
    b.load_state_dict(state)
    assert torch.equal(b.class_counts, a.class_counts)
    a.eval()
    b.eval()
    f, z, y = torch.randn(6, 8), torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2])
    torch.testing.assert_close(b(f, z, y), a(f, z, y), atol=0, rtol=0)


def test_counts_survive_dtype_casts():
    mccl = MCCLoss(3, 8, [100_000_001, 3, 2], projection_dim=4)
    mccl.double()
    assert mccl.class_counts.dtype == torch.long
    assert int(mccl.class_counts[0]) == 100_000_001
    assert mccl.projections[0].weight.dtype == torch.float64


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("form", FORMS)
def test_module_equals_functional(form, reduction):
    torch.manual_seed(0)
    mccl = MCCLoss(
        3,
        8,
        [9, 4, 1],
        (1, 2, 4),
        projection_dim=5,
        form=form,
        reduction=reduction,
        temperature="batch_mean",
        detach_difficulty=False,
    )
    f, z, y = torch.randn(6, 8), torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 0])
    got = mccl(f, z, y, return_breakdown=True)
    ref = multiscale_category_aware_contrastive_loss(
        f,
        z,
        y,
        torch.tensor([9, 4, 1]),
        scales=(1, 2, 4),
        projections=mccl.projections,
        form=form,
        reduction=reduction,
        temperature="batch_mean",
        detach_difficulty=False,
        return_breakdown=True,
    )
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_torch_compile_smoke():
    """Dynamo + AOTAutograd (no C++ codegen); graph breaks at the input checks are fine."""
    torch.manual_seed(0)
    mccl = MCCLoss(3, 8, [5, 3, 2], (1, 2), projection_dim=4)
    compiled = torch.compile(mccl, backend="aot_eager")
    f, z, y = torch.randn(6, 8), torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2])
    torch.testing.assert_close(compiled(f, z, y), mccl(f, z, y))


def test_out_of_memory_in_a_projection_or_classifier_is_not_reworded():
    # Shape errors of a user's callable are re-raised naming it; running out of memory is not
    # the caller's mistake and must reach them as torch's own OutOfMemoryError.
    from micacl_layers import ClassificationEnhancementTerm
    from micacl_layers.functional import multiscale_category_aware_contrastive_loss

    def oom(_):
        raise torch.OutOfMemoryError("out of memory")

    f, z, y = torch.randn(4, 8), torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    with pytest.raises(torch.OutOfMemoryError):
        multiscale_category_aware_contrastive_loss(
            f, z, y, [5, 3, 1], scales=(1,), projections=[oom]
        )
    with pytest.raises(torch.OutOfMemoryError):
        ClassificationEnhancementTerm(aug_weight=1.0)(z, y, features=f, classifier=oom)


@pytest.mark.parametrize(
    "kwargs", [{"projection_dim": 4}, {"projection_dim": None, "memory_size": 4}]
)
def test_scales_cannot_change_once_per_scale_parts_are_built(kwargs):
    # The projections (D // s inputs each) and the memory (one bank per scale) were built for
    # the scales: a new value would fail at the next forward, deep in a matmul.
    mccl = MCCLoss(3, 8, [5, 3, 1], scales=(1, 2), **kwargs)
    with pytest.raises(ValueError, match=r"`scales` cannot change .* built for scales=\(1, 2\)"):
        mccl.scales = (1, 4)
    assert mccl.scales == (1, 2)
    mccl.scales = [1, 2]  # the same scales are no change
    f, z, y = torch.randn(4, 8), torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    assert mccl(f, z, y).isfinite()


def test_scales_can_change_without_projections_or_memory():
    mccl = MCCLoss(3, 8, [5, 3, 1], scales=(1, 2), projection_dim=None)
    mccl.scales = (1, 4)
    f, z, y = torch.randn(4, 8), torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    want = multiscale_category_aware_contrastive_loss(
        f, z, y, [5, 3, 1], scales=(1, 4), projections=None
    )
    torch.testing.assert_close(mccl(f, z, y), want)


def test_a_refused_option_leaves_the_options_as_they_were():
    mccl = MCCLoss(3, 8, [5, 3, 1], scales=(1, 2), projection_dim=None)
    with pytest.raises(ValueError, match="feature_dim=8"):
        mccl.scales = (1, 16)
    assert mccl.scales == (1, 2)


@pytest.mark.parametrize(
    ("feature_dim", "scales", "match"),
    [
        (32, (0,), "`scales` must be a non-empty sequence of positive ints"),
        (32, (1.5,), "`scales` must be a non-empty sequence of positive ints"),
        (32, (), "`scales` must be a non-empty sequence of positive ints"),
        (32, (64,), r"`scales` must be a non-empty sequence of ints in \[1, feature_dim=32\]"),
        (0, (1,), "`feature_dim` must be a positive int"),
    ],
)
def test_scale_projections_rejects_bad_sizes(feature_dim, scales, match):
    # They raised ZeroDivisionError, failed inside torch.empty, or built a Linear(0, P) (or,
    # for no scales, an empty list); the words are MCCLoss's for the same values.
    from micacl_layers.multiscale import scale_projections

    with pytest.raises(ValueError, match=match):
        scale_projections(feature_dim, scales, 16)
