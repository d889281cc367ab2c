import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from micacl_layers import ClassificationEnhancementTerm, LogitAdjustedLoss, MICACLLoss
from micacl_layers.functional import log_prior, logit_adjusted_cross_entropy

COUNTS = torch.tensor([500.0, 60.0, 7.0, 1.0])


def _batch(seed=0, b=9, k=4, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, k, generator=g, dtype=dtype) * 3, torch.randint(0, k, (b,), generator=g))


def test_tau_zero_is_plain_cross_entropy():
    logits, targets = _batch()
    for ls in (0.0, 0.1):
        got = logit_adjusted_cross_entropy(logits, targets, COUNTS, tau=0.0, label_smoothing=ls)
        torch.testing.assert_close(got, F.cross_entropy(logits, targets, label_smoothing=ls))


def test_equals_balanced_softmax_at_tau_one():
    # Ren et al. 2020: -log(n_y exp(z_y) / sum_k n_k exp(z_k)), written out by hand.
    logits, targets = _batch(dtype=torch.float64)
    weighted = COUNTS.double() * logits.exp()
    expected = -(weighted.gather(1, targets[:, None]).squeeze(1) / weighted.sum(1)).log()
    got = logit_adjusted_cross_entropy(logits, targets, COUNTS, reduction="none")
    torch.testing.assert_close(got, expected)


def test_tau_scales_the_log_prior():
    logits, targets = _batch()
    got = logit_adjusted_cross_entropy(logits, targets, COUNTS, tau=1.7, reduction="sum")
    prior = (COUNTS / COUNTS.sum()).log()
    torch.testing.assert_close(got, F.cross_entropy(logits + 1.7 * prior, targets, reduction="sum"))


def test_minimiser_is_the_balanced_predictor():
    # Labels drawn with the training prior and a free logit vector: plain CE learns the prior
    # (argmax = head class), the logit-adjusted loss learns uniform raw logits (Menon et al. 2021).
    counts = torch.tensor([80.0, 15.0, 5.0])
    targets = torch.repeat_interleave(torch.arange(3), counts.long())
    for tau, expect_uniform in ((1.0, True), (0.0, False)):
        z = torch.zeros(1, 3, requires_grad=True)
        opt = torch.optim.LBFGS([z], max_iter=200, line_search_fn="strong_wolfe")

        def closure(z=z, opt=opt, tau=tau):
            opt.zero_grad()
            loss = logit_adjusted_cross_entropy(z.expand(len(targets), 3), targets, counts, tau=tau)
            loss.backward()
            return loss

        opt.step(closure)
        p = z.detach().softmax(1).squeeze(0)
        if expect_uniform:
            torch.testing.assert_close(p, torch.full((3,), 1 / 3), atol=1e-4, rtol=0)
        else:
            torch.testing.assert_close(p, counts / counts.sum(), atol=1e-4, rtol=0)


def test_gradcheck_float64():
    logits, targets = _batch(dtype=torch.float64)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda z: logit_adjusted_cross_entropy(z, targets, COUNTS, tau=0.8, label_smoothing=0.1),
        (logits,),
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_logits_are_finite_and_float32(dtype):
    # A one-sample class among 568: log prior ~ -6.3, and logits near float16's range.
    logits = torch.tensor([[60000.0, -60000.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]], dtype=dtype)
    logits.requires_grad_(True)
    loss = logit_adjusted_cross_entropy(logits, torch.tensor([1, 3]), COUNTS)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad.float()).all()


def test_ignore_index_and_all_ignored():
    logits, targets = _batch()
    targets[:3] = -100
    got = logit_adjusted_cross_entropy(logits, targets, COUNTS)
    keep = targets != -100
    torch.testing.assert_close(
        got, logit_adjusted_cross_entropy(logits[keep], targets[keep], COUNTS)
    )
    z = logits.clone().requires_grad_(True)
    zero = logit_adjusted_cross_entropy(z, torch.full((9,), -100), COUNTS)
    assert zero.item() == 0.0
    zero.backward()  # still on the graph
    assert (z.grad == 0).all()


def test_empty_batch_mean_is_zero():
    z = torch.zeros(0, 4, requires_grad=True)
    loss = logit_adjusted_cross_entropy(z, torch.zeros(0, dtype=torch.long), COUNTS)
    assert loss.item() == 0.0 and loss.requires_grad


def test_single_class_batch():
    logits = torch.randn(5, 4, requires_grad=True)
    loss = logit_adjusted_cross_entropy(logits, torch.full((5,), 3), COUNTS)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_log_prior():
    torch.testing.assert_close(
        log_prior([1, 3]), torch.tensor([math.log(0.25), math.log(0.75)], dtype=torch.float64)
    )


def test_module_matches_function_and_state():
    with pytest.warns(UserWarning, match="label_smoothing"):  # a prior ratio of 500 overturns
        crit = LogitAdjustedLoss([500, 60, 7, 1], tau=1.5, label_smoothing=0.05)
    logits, targets = _batch()
    torch.testing.assert_close(
        crit(logits, targets),
        logit_adjusted_cross_entropy(logits, targets, COUNTS, tau=1.5, label_smoothing=0.05),
    )
    crit.half()
    assert crit.class_counts.dtype == torch.long
    assert crit.state_dict()["class_counts"].tolist() == [500, 60, 7, 1]
    assert "tau=1.5" in repr(crit)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: logit_adjusted_cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1]), [1, 2]),
            r"class_counts.*\(3,\)",
        ),
        (
            lambda: logit_adjusted_cross_entropy(
                torch.zeros(2, 3), torch.tensor([0, 1]), [1, 0, 2]
            ),
            "class_counts.*> 0",
        ),
        (
            lambda: logit_adjusted_cross_entropy(
                torch.zeros(2, 3), torch.tensor([0, 1]), [1, 1, 1], tau=-1.0
            ),
            "tau",
        ),
        (
            lambda: logit_adjusted_cross_entropy(
                torch.zeros(2, 3), torch.tensor([0, 1]), [1, 1, 1], label_smoothing=1.5
            ),
            "label_smoothing",
        ),
        (
            lambda: logit_adjusted_cross_entropy(
                torch.zeros(2, 3), torch.tensor([0, 1]), [1, 1, 1], reduction="avg"
            ),
            "reduction",
        ),
        (
            lambda: logit_adjusted_cross_entropy(
                torch.zeros(2, 3), torch.tensor([0, 3]), [1, 1, 1]
            ),
            "targets",
        ),
        (lambda: LogitAdjustedLoss([1.5, 2.0]), "whole numbers"),
        (lambda: LogitAdjustedLoss([[1, 2]]), r"class_counts.*\(K,\)"),
        (
            lambda: LogitAdjustedLoss([3, 1])(torch.zeros(2, 3), torch.tensor([0, 1])),
            r"logits.*K=2.*shape=\(2, 3\)",
        ),
    ],
)
def test_bad_inputs_name_the_argument(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_integer_logits_are_rejected():
    with pytest.raises(TypeError, match="logits.*floating"):
        logit_adjusted_cross_entropy(
            torch.zeros(2, 3, dtype=torch.long), torch.tensor([0, 1]), [1, 1, 1]
        )


def test_smoothing_past_the_prior_ratio_bound_warns():
    """Smoothing eps with K classes overturns a perfectly fitted head sample once the prior
    ratio exceeds b = (1 - eps + eps/K) / (eps/K) (to the power 1/tau); at the bound's edge the
    prediction flips, which the warning says."""
    eps, k = 0.1, 2
    b = (1 - eps + eps / k) / (eps / k)  # 19
    # The claim itself: fit the smoothed target exactly on the adjusted logits.
    for ratio, flips in ((b * 1.01, True), (b * 0.99, False)):
        log_prior = torch.log(torch.tensor([ratio, 1.0]) / (ratio + 1.0))
        target = torch.tensor([1 - eps + eps / k, eps / k])
        raw = target.log() - log_prior  # adjusted logits log(target), minus the adjustment
        assert (int(raw.argmax()) == 1) is flips
    with pytest.warns(UserWarning, match=r"label_smoothing=0\.1 .*prior ratio 20 exceeds 19"):
        LogitAdjustedLoss([20, 1], label_smoothing=eps)
    with pytest.warns(UserWarning, match="label_smoothing"):
        MICACLLoss(2, 4, [20, 1], logit_adjustment=1.0, ial_weight=0.0, aug_weight=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LogitAdjustedLoss([18, 1], label_smoothing=eps)  # below the bound
        LogitAdjustedLoss([20, 1])  # no smoothing
        LogitAdjustedLoss([20, 1], label_smoothing=eps, tau=0.5)  # bound 19 ** 2
        # With IAL and the augmentation on the raw logits (the presets) it stays quiet.
        MICACLLoss.from_preset("paper_logit_adjusted", 2, 4, [20, 1])


# ----------------------------------------------------------------------------- balanced smoothing
def _balanced_target(targets, counts, tau, eps):
    """The soft target written out: pi^tau * ((1 - eps) one-hot + eps / K), renormalised."""
    k = len(counts)
    raw = (1 - eps) * F.one_hot(targets, k).double() + eps / k
    weighted = raw * (counts.double() / counts.sum()) ** tau
    return weighted / weighted.sum(1, keepdim=True)


def test_balanced_smoothing_written_out():
    logits, targets = _batch(dtype=torch.float64)
    for tau in (1.0, 0.6):
        got = logit_adjusted_cross_entropy(
            logits,
            targets,
            COUNTS,
            tau=tau,
            label_smoothing=0.1,
            balanced_smoothing=True,
            reduction="none",
        )
        adjusted = logits + tau * (COUNTS.double() / COUNTS.sum()).log()
        want = -(_balanced_target(targets, COUNTS, tau, 0.1) * adjusted.log_softmax(1)).sum(1)
        torch.testing.assert_close(got, want)
        uniform = logit_adjusted_cross_entropy(
            logits, targets, COUNTS, tau=tau, label_smoothing=0.1, reduction="none"
        )
        assert not torch.allclose(got, uniform)


def test_balanced_smoothing_is_the_default_without_tau_or_smoothing():
    logits, targets = _batch()
    for tau, eps in ((0.0, 0.1), (1.0, 0.0)):
        options = {"tau": tau, "label_smoothing": eps}
        torch.testing.assert_close(
            logit_adjusted_cross_entropy(
                logits, targets, COUNTS, balanced_smoothing=True, **options
            ),
            logit_adjusted_cross_entropy(logits, targets, COUNTS, **options),
        )


def test_balanced_smoothing_keeps_the_class_past_the_overturn_bound():
    """One free logit vector fitted to head-class samples at a prior ratio of 500, far past
    the bound (b = 37 for 4 classes at 0.1): uniform smoothing of the adjusted target predicts
    another class; balanced smoothing's raw softmax is the uniformly smoothed one-hot."""
    eps, k = 0.1, 4
    targets = torch.zeros(4, dtype=torch.long)
    for balanced in (True, False):
        z = torch.zeros(1, k, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS(
            [z],
            max_iter=500,
            tolerance_grad=1e-12,
            tolerance_change=1e-15,
            line_search_fn="strong_wolfe",
        )

        def closure(z=z, opt=opt, balanced=balanced):
            opt.zero_grad()
            loss = logit_adjusted_cross_entropy(
                z.expand(4, k),
                targets,
                COUNTS,
                label_smoothing=eps,
                balanced_smoothing=balanced,
            )
            loss.backward()
            return loss

        opt.step(closure)
        p = z.detach().softmax(1).squeeze(0)
        if balanced:
            want = torch.full((k,), eps / k, dtype=torch.float64)
            want[0] += 1 - eps
            torch.testing.assert_close(p, want, atol=1e-6, rtol=0)
        else:
            assert int(p.argmax()) != 0


def test_balanced_smoothing_gradcheck_float64():
    logits, targets = _batch(dtype=torch.float64)
    logits.requires_grad_(True)
    targets[0] = -100
    assert torch.autograd.gradcheck(
        lambda z: logit_adjusted_cross_entropy(
            z, targets, COUNTS, tau=0.8, label_smoothing=0.1, balanced_smoothing=True
        ),
        (logits,),
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_balanced_smoothing_low_precision_is_finite_and_float32(dtype):
    logits = torch.tensor([[60000.0, -60000.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]], dtype=dtype)
    logits.requires_grad_(True)
    loss = logit_adjusted_cross_entropy(
        logits, torch.tensor([1, 3]), COUNTS, label_smoothing=0.1, balanced_smoothing=True
    )
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad.float()).all()


def test_balanced_smoothing_degenerate_batches():
    options = {"label_smoothing": 0.1, "balanced_smoothing": True}
    logits, targets = _batch()
    targets[:3] = -100
    keep = targets != -100
    torch.testing.assert_close(
        logit_adjusted_cross_entropy(logits, targets, COUNTS, **options),
        logit_adjusted_cross_entropy(logits[keep], targets[keep], COUNTS, **options),
    )
    z = logits.clone().requires_grad_(True)
    zero = logit_adjusted_cross_entropy(z, torch.full((9,), -100), COUNTS, **options)
    zero.backward()
    assert zero.item() == 0.0 and (z.grad == 0).all()
    empty = torch.zeros(0, 4, requires_grad=True)
    loss = logit_adjusted_cross_entropy(empty, torch.zeros(0, dtype=torch.long), COUNTS, **options)
    assert loss.item() == 0.0 and loss.requires_grad
    one = torch.randn(1, 4, requires_grad=True)  # one sample, one class
    loss = logit_adjusted_cross_entropy(one, torch.tensor([3]), COUNTS, **options)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(one.grad).all()
    meta = logit_adjusted_cross_entropy(
        torch.zeros(3, 4, device="meta"),
        torch.zeros(3, dtype=torch.long, device="meta"),
        COUNTS.to("meta"),
        **options,
    )
    assert meta.device.type == "meta" and meta.shape == ()


def test_balanced_smoothing_module_and_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        crit = LogitAdjustedLoss([500, 60, 7, 1], label_smoothing=0.1, balanced_smoothing=True)
        MICACLLoss(
            4,
            4,
            [500, 60, 7, 1],
            logit_adjustment=1.0,
            ial_weight=0.0,
            aug_weight=0.0,
            balanced_smoothing=True,
        )
    logits, targets = _batch()
    torch.testing.assert_close(
        crit(logits, targets),
        logit_adjusted_cross_entropy(
            logits, targets, COUNTS, label_smoothing=0.1, balanced_smoothing=True
        ),
    )
    assert "balanced_smoothing=True" in repr(crit)
    with pytest.raises(TypeError, match="balanced_smoothing"):
        LogitAdjustedLoss([3, 1], balanced_smoothing=1)
    with pytest.raises(TypeError, match="balanced_smoothing"):
        logit_adjusted_cross_entropy(logits, targets, COUNTS, balanced_smoothing="yes")


def test_the_overturn_warning_points_at_the_callers_line():
    # Reported from inside the package (criterion.py, cet.py) it told the user nothing of where
    # their own call was; each path, direct, nested or through nn.Module.__call__, names it.
    z, y = torch.randn(4, 2), torch.tensor([0, 1, 0, 1])
    alone = {"logit_adjustment": 1.0, "ial_weight": 0.0, "aug_weight": 0.0}
    cet = ClassificationEnhancementTerm(**alone)
    calls = [
        lambda: LogitAdjustedLoss([20, 1], label_smoothing=0.1),
        lambda: MICACLLoss(2, 4, [20, 1], projection_dim=2, **alone),
        lambda: MICACLLoss.from_preset("paper_logit_adjusted", 2, 4, [20, 1], **alone),
        lambda: cet(z, y, class_counts=[20, 1]),
    ]
    for call in calls:
        with pytest.warns(UserWarning, match="prior ratio 20") as record:
            call()
        assert [w.filename for w in record] == [__file__]
