"""MCCL's balanced options (class averaging, class complements, batch weight norm), the logit
adjustment of the CET, and the "balanced" preset."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from micacl_layers import MCCLOptions, MCCLoss, MICACLLoss
from micacl_layers.functional import (
    classification_enhancement_term,
    logit_adjusted_cross_entropy,
    pool_features,
    supervised_contrastive_per_anchor,
)
from micacl_layers.mccl import multiscale_category_aware_contrastive_loss as mccl_loss

COUNTS = torch.tensor([50.0, 20.0, 5.0, 1.0])
TARGETS = torch.tensor([0, 0, 0, 0, 1, 1, 2, 0, 1, 0])
K, D = 4, 16


def _loop_class_average(z, targets, cands, cand_t, tau, form):
    """BCL Eq. 5 one anchor and one candidate at a time (self excluded)."""
    z = F.normalize(z, dim=1)
    cands = F.normalize(cands, dim=1)
    out = []
    for i in range(z.shape[0]):
        idx = [k for k in range(cands.shape[0]) if k != i]
        count = {c: sum(1 for k in idx if int(cand_t[k]) == c) for c in set(cand_t.tolist())}
        den = sum(math.exp(float(z[i] @ cands[k]) / tau) / count[int(cand_t[k])] for k in idx)
        pos = [k for k in idx if int(cand_t[k]) == int(targets[i])]
        if not pos:
            out.append(0.0)
        elif form == "log":
            out.append(math.log(den) - sum(float(z[i] @ cands[k]) / tau for k in pos) / len(pos))
        else:
            num = sum(math.exp(float(z[i] @ cands[k]) / tau) / count[int(cand_t[k])] for k in pos)
            out.append(-num / den)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("form", ["log", "ratio"])
@pytest.mark.parametrize("with_memory", [False, True])
def test_class_average_matches_a_loop(form, with_memory):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(10, 6, generator=g, dtype=torch.float64)
    mem = torch.randn(5, 6, generator=g, dtype=torch.float64) if with_memory else None
    mem_t = torch.tensor([3, 3, 1, 0, 2]) if with_memory else None
    loss, has = supervised_contrastive_per_anchor(
        z, TARGETS, 0.2, form=form, memory_z=mem, memory_targets=mem_t, class_average=True
    )
    cands = z if mem is None else torch.cat([z, mem])
    cand_t = TARGETS if mem is None else torch.cat([TARGETS, mem_t])
    torch.testing.assert_close(loss, _loop_class_average(z, TARGETS, cands, cand_t, 0.2, form))
    # Class averaging changes the value wherever classes are unequally represented.
    plain, _ = supervised_contrastive_per_anchor(
        z, TARGETS, 0.2, form=form, memory_z=mem, memory_targets=mem_t
    )
    assert not torch.allclose(loss[has], plain[has])


def test_class_complements_are_pooled_projected_candidates():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(10, D, generator=g, dtype=torch.float64)
    logits = torch.randn(10, K, generator=g, dtype=torch.float64)
    protos = torch.randn(K, D, generator=g, dtype=torch.float64)
    projs = [torch.nn.Linear(D // s, 8).double() for s in (1, 2)]
    got = mccl_loss(
        feats,
        logits,
        TARGETS,
        COUNTS,
        scales=(1, 2),
        projections=projs,
        form="log",
        class_complements=True,
        prototypes=protos,
        return_breakdown=True,
    )
    memory = ([projs[i](pool_features(protos, s)) for i, s in enumerate((1, 2))], torch.arange(K))
    want = mccl_loss(
        feats, logits, TARGETS, COUNTS, scales=(1, 2), projections=projs, form="log", memory=memory
    )
    torch.testing.assert_close(got.loss, want)
    # Every anchor has a positive now, the single sample of class 2 too.
    assert bool(got.has_positive.all())


def test_batch_weight_norm_has_mean_one_over_counted_anchors():
    logits = torch.randn(10, K)
    out = mccl_loss(
        torch.randn(10, D), logits, TARGETS, COUNTS, weight_norm="batch", return_breakdown=True
    )
    assert not bool(out.has_positive[6])  # class 2 occurs once: no positive, not counted
    torch.testing.assert_close(out.weights[out.has_positive].mean(), torch.tensor(1.0))
    # The paper's normalisation over classes leaves the mean far from 1 on such a batch.
    paper = mccl_loss(torch.randn(10, D), logits, TARGETS, COUNTS, return_breakdown=True)
    assert abs(float(paper.weights[paper.has_positive].mean()) - 1.0) > 0.2
    # Same direction as the paper's weights: only the scale differs.
    ratio = out.weights / paper.weights
    torch.testing.assert_close(ratio, ratio[0].expand_as(ratio))


OPTION_SETS = [
    {"class_average": True},
    {"class_complements": True},
    {"weight_norm": "batch"},
    {"class_average": True, "class_complements": True, "weight_norm": "batch"},
]


@pytest.mark.parametrize("options", OPTION_SETS)
@pytest.mark.parametrize("form", ["log", "ratio"])
def test_gradcheck_float64(options, form):
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    # Logits only feed the detached difficulty factor: a numerical gradient would see it.
    logits = torch.randn(8, 3, generator=g, dtype=torch.float64)
    protos = torch.randn(3, 8, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 0, 1, 1, 2, 0, 0, 1])
    projs = [torch.nn.Linear(8 // s, 5).double() for s in (1, 2)]
    use_p = options.get("class_complements", False)

    def f(x, p):
        return mccl_loss(
            x,
            logits,
            targets,
            [30.0, 10.0, 2.0],
            scales=(1, 2),
            projections=projs,
            form=form,
            prototypes=p if use_p else None,
            **options,
        )

    assert torch.autograd.gradcheck(f, (feats, protos))


@pytest.mark.parametrize("options", OPTION_SETS)
def test_edge_batches_are_finite(options):
    use_p = options.get("class_complements", False)
    mccl = MCCLoss(K, D, COUNTS.long().tolist(), (1, 2), projection_dim=8, form="log", **options)
    protos = torch.randn(K, D, requires_grad=True)
    cases = {
        "no positive": torch.tensor([0, 1, 2, 3]),
        "single class": torch.tensor([2, 2, 2, 2, 2]),
        "single sample": torch.tensor([3]),
    }
    for name, targets in cases.items():
        feats = torch.randn(len(targets), D, requires_grad=True)
        loss = mccl(
            feats, torch.randn(len(targets), K), targets, prototypes=protos if use_p else None
        )
        assert torch.isfinite(loss), name
        loss.backward()
        assert torch.isfinite(feats.grad).all(), name
        if name == "no positive" and not use_p:
            assert loss.item() == 0.0  # nothing to contrast: an exact zero
    for dtype in (torch.float16, torch.bfloat16):
        low = MCCLoss(
            K,
            D,
            COUNTS.long().tolist(),
            (1, 2),
            projection_dim=8,
            form="log",
            dtype=dtype,
            **options,
        )
        feats = (torch.randn(10, D) * 100).to(dtype).requires_grad_(True)
        logits = torch.randn(10, K).to(dtype)
        p = protos.detach().to(dtype) if use_p else None
        loss = low(feats, logits, TARGETS, prototypes=p)
        assert loss.dtype == torch.float32 and torch.isfinite(loss), dtype
        loss.backward()
        assert torch.isfinite(feats.grad.float()).all(), dtype


def test_all_zero_weights_stay_zero_under_batch_norm():
    # Every sample predicted with certainty: difficulty 0 everywhere, no 0 / 0.
    logits = torch.full((4, 2), -1e4)
    logits[torch.arange(4), torch.tensor([0, 0, 1, 1])] = 1e4
    loss = mccl_loss(
        torch.randn(4, 8), logits, torch.tensor([0, 0, 1, 1]), [2.0, 2.0], weight_norm="batch"
    )
    assert loss.item() == 0.0


def test_default_options_are_the_paper():
    opts = MCCLOptions()
    assert (opts.class_average, opts.class_complements, opts.weight_norm) == (
        False,
        False,
        "classes",
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weight_norm": "mean"}, "weight_norm"),
        ({"class_average": 1}, "class_average"),
        ({"class_complements": "yes"}, "class_complements"),
    ],
)
def test_bad_options_name_the_argument(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        MCCLoss(K, D, COUNTS.long().tolist(), **kwargs)


def test_prototypes_are_checked():
    feats, logits = torch.randn(10, D), torch.randn(10, K)
    with pytest.raises(ValueError, match="prototypes.*required"):
        mccl_loss(feats, logits, TARGETS, COUNTS, class_complements=True)
    with pytest.raises(ValueError, match=r"prototypes.*\(K, D\)=\(4, 16\).*shape=\(3, 16\)"):
        mccl_loss(
            feats, logits, TARGETS, COUNTS, class_complements=True, prototypes=torch.randn(3, D)
        )
    with pytest.raises(ValueError, match="class_complements=False"):
        mccl_loss(feats, logits, TARGETS, COUNTS, prototypes=torch.randn(K, D))


def test_cet_logit_adjustment_is_menon_ce():
    logits, targets = torch.randn(10, K), TARGETS
    got = classification_enhancement_term(
        logits,
        targets,
        label_smoothing=0.1,
        ial_weight=0.0,
        aug_weight=0.0,
        logit_adjustment=0.7,
        class_counts=COUNTS,
    )
    torch.testing.assert_close(
        got, logit_adjusted_cross_entropy(logits, targets, COUNTS, tau=0.7, label_smoothing=0.1)
    )
    with pytest.raises(ValueError, match="class_counts.*logit_adjustment"):
        classification_enhancement_term(logits, targets, aug_weight=0.0, logit_adjustment=1.0)
    with pytest.raises(ValueError, match="logit_adjustment"):
        classification_enhancement_term(logits, targets, aug_weight=0.0, logit_adjustment=-1.0)


def test_balanced_preset():
    torch.manual_seed(0)
    crit = MICACLLoss.from_preset("balanced", K, D, COUNTS.long().tolist(), projection_dim=8)
    m = crit.mccl
    assert (m.form, m.class_average, m.class_complements, m.weight_norm) == (
        "log",
        True,
        True,
        "batch",
    )
    assert crit.cet.logit_adjustment == 1.0 and crit.mc_weight == 0.3
    head = torch.nn.Linear(D, K)
    feats = torch.randn(10, D)
    logits = head(feats)
    out = crit(feats, logits, TARGETS, classifier=head, return_breakdown=True)
    torch.testing.assert_close(out.ce, logit_adjusted_cross_entropy(logits, TARGETS, COUNTS))
    torch.testing.assert_close(out.loss, out.ce + 0.3 * out.mccl)
    out.loss.backward()
    assert head.weight.grad is not None and torch.isfinite(head.weight.grad).all()
    with pytest.raises(ValueError, match="classifier.*class_complements"):
        crit(feats, logits, TARGETS)
    # The paper's preset is unchanged by the new options.
    paper = MICACLLoss.from_preset("paper", K, D, COUNTS.long().tolist(), projection_dim=8)
    assert (
        paper.mccl.class_average,
        paper.mccl.class_complements,
        paper.mccl.weight_norm,
        paper.cet.logit_adjustment,
    ) == (False, False, "classes", 0.0)


def test_option_combinations_build():
    for ca, cc, wn in itertools.product((False, True), (False, True), ("classes", "batch")):
        m = MCCLoss(
            K,
            D,
            COUNTS.long().tolist(),
            class_average=ca,
            class_complements=cc,
            weight_norm=wn,
            projection_dim=4,
        )
        assert f"class_average={ca}" in repr(m)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_prototypes_of_another_dtype_meet_the_projections_in_theirs(dtype):
    """A classifier kept in another dtype (`.half()`, `.double()`) gave torch's "mat1 and mat2
    must have the same dtype"; its weight rows are cast like the features, as autocast would."""
    torch.manual_seed(0)
    m = MCCLoss(K, D, COUNTS.long().tolist(), projection_dim=8, class_complements=True)
    feats, logits = torch.randn(10, D), torch.randn(10, K)
    protos = torch.randn(K, D).to(dtype).requires_grad_(True)
    got = m(feats, logits, TARGETS, prototypes=protos)
    want = m(feats, logits, TARGETS, prototypes=protos.detach().float())
    torch.testing.assert_close(got, want)
    got.backward()
    assert protos.grad is not None and protos.grad.dtype == dtype
    assert torch.isfinite(protos.grad.float()).all()
    # The "balanced" preset with a float64 classifier and float32 features.
    crit = MICACLLoss.from_preset("balanced", K, D, COUNTS.long().tolist(), projection_dim=8)
    head = torch.nn.Linear(D, K).to(dtype)
    loss = crit(feats, head(feats.to(dtype)).float(), TARGETS, classifier=head)
    assert torch.isfinite(loss)


def test_class_average_takes_any_labels():
    """bincount raised on negative labels and tried to allocate 8 TB for a label of 1e12; the
    labels of the contrastive term are free, and only their equality matters."""
    torch.manual_seed(0)
    z, mem = torch.randn(10, D), torch.randn(5, D)
    mem_t = torch.tensor([0, 1, 2, 3, 0])
    relabel = torch.tensor([-7, 10**12, -1, 4])  # class k -> relabel[k]
    for form in ("ratio", "log"):
        want = supervised_contrastive_per_anchor(
            z, TARGETS, 0.1, form=form, memory_z=mem, memory_targets=mem_t, class_average=True
        )
        got = supervised_contrastive_per_anchor(
            z,
            relabel[TARGETS],
            0.1,
            form=form,
            memory_z=mem,
            memory_targets=relabel[mem_t],
            class_average=True,
        )
        torch.testing.assert_close(got[0], want[0])
        assert torch.equal(got[1], want[1])
    # ... and the values are BCL Eq. 5's (the loop), whatever the labels.
    z64, labels = z.double(), relabel[TARGETS]
    loop = _loop_class_average(z64, labels, z64, labels, 0.1, "log")
    got, _ = supervised_contrastive_per_anchor(z64, labels, 0.1, form="log", class_average=True)
    torch.testing.assert_close(got, loop)
