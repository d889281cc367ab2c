"""ClassificationEnhancementTerm: smoothed CE + IAL + feature-augmentation CE, with gradients."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from micacl_layers import CETOutput, ClassificationEnhancementTerm, MICACLLoss
from micacl_layers.functional import (
    classification_enhancement_term,
    feature_augmentation_loss,
    intensity_aware_loss,
)
from tests.conftest import (
    EDGE_CASES,
    EDGE_FEATURE_DIM,
    EDGE_NUM_CLASSES,
    assert_finite,
    assert_grads_finite,
    dtypes,
    edge_case,
    generator,
    randint_targets,
    randn,
    seeds,
)


@given(
    batch=st.integers(1, 6),
    num_classes=st.integers(2, 5),
    dim=st.integers(1, 6),
    label_smoothing=st.floats(0.0, 0.5),
    ial_weight=st.sampled_from([0.0, 0.1, 1.0]),
    aug_weight=st.sampled_from([0.0, 0.1, 1.0]),
    dtype=dtypes,
    seed=seeds,
)
def test_shapes_and_finite(
    batch, num_classes, dim, label_smoothing, ial_weight, aug_weight, dtype, seed
):
    torch.manual_seed(seed)
    head = nn.Linear(dim, num_classes, dtype=dtype)
    features = randn(batch, dim, seed=seed, dtype=dtype, requires_grad=True)
    targets = randint_targets(batch, num_classes, seed=seed + 1)
    cet = ClassificationEnhancementTerm(
        label_smoothing=label_smoothing, ial_weight=ial_weight, aug_weight=aug_weight
    )
    out = cet(head(features), targets, features=features, classifier=head, return_breakdown=True)
    assert isinstance(out, CETOutput)
    for value in out:
        assert value.shape == ()
        assert value.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_finite(*out)
    out.loss.backward()
    assert_finite(features.grad)
    assert_grads_finite(head)


def _expected_cet(
    logits, targets, features, head, *, label_smoothing, ial_weight, aug_weight, noise_std, seed
):
    """Eq. 13's CET as documented, rebuilt from torch primitives in float64."""
    z = logits.double()
    ce = F.cross_entropy(z, targets, label_smoothing=label_smoothing)
    # IAL written out: softplus(max_{k != y} z_k - z_y).
    other = z.clone()
    other[torch.arange(len(targets)), targets] = -torch.inf
    ial = F.softplus(other.amax(1) - z[torch.arange(len(targets)), targets]).mean()
    if ial_weight == 0:
        ial = torch.zeros_like(ial)  # documented: the breakdown reports 0 for a disabled term
    xi = torch.randn(features.shape, generator=generator(seed), dtype=features.dtype)
    rms = features.detach().pow(2).mean(1, keepdim=True).sqrt()
    aug = F.cross_entropy(
        head(features + noise_std * rms * xi).double(), targets, label_smoothing=label_smoothing
    )
    return ce + ial_weight * ial + aug_weight * aug, ce, ial, aug


@given(
    batch=st.integers(1, 6),
    num_classes=st.integers(2, 5),
    dim=st.integers(1, 6),
    label_smoothing=st.floats(0.0, 0.5),
    ial_weight=st.floats(0.0, 2.0),
    aug_weight=st.floats(0.01, 2.0),
    noise_std=st.floats(0.0, 1.0),
    seed=seeds,
)
def test_matches_documented_formula(
    batch, num_classes, dim, label_smoothing, ial_weight, aug_weight, noise_std, seed
):
    torch.manual_seed(seed)
    head = nn.Linear(dim, num_classes, dtype=torch.float64)
    features = randn(batch, dim, seed=seed, dtype=torch.float64)
    targets = randint_targets(batch, num_classes, seed=seed + 1)
    logits = head(features)
    got = classification_enhancement_term(
        logits,
        targets,
        features=features,
        classifier=head,
        label_smoothing=label_smoothing,
        ial_weight=ial_weight,
        aug_weight=aug_weight,
        aug_noise_std=noise_std,
        generator=generator(seed + 2),
        return_breakdown=True,
    )
    expected = _expected_cet(
        logits,
        targets,
        features,
        head,
        label_smoothing=label_smoothing,
        ial_weight=ial_weight,
        aug_weight=aug_weight,
        noise_std=noise_std,
        seed=seed + 2,
    )
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)


def test_aug_term_has_gradient_unlike_public_code_regulariser():
    torch.manual_seed(0)
    head = nn.Linear(8, 3)
    features = torch.randn(6, 8, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    aug = feature_augmentation_loss(features, targets, head, generator=generator(0))
    aug.backward()
    assert float(features.grad.abs().sum()) > 0
    assert float(head.weight.grad.abs().sum()) > 0
    assert float(head.bias.grad.abs().sum()) > 0

    # The public code's "regulariser": mse(f, f + 0.1 * noise) does not depend on f at all.
    f = torch.randn(6, 8, requires_grad=True)
    public = F.mse_loss(f, f + 0.1 * torch.randn(6, 8)) * 0.1
    public.backward()
    assert torch.equal(f.grad, torch.zeros_like(f))


def test_noise_free_aug_term_is_the_clean_cross_entropy():
    torch.manual_seed(0)
    head = nn.Linear(8, 3, dtype=torch.float64)
    features = torch.randn(5, 8, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 2, 1])
    torch.testing.assert_close(
        feature_augmentation_loss(features, targets, head, noise_std=0.0, label_smoothing=0.1),
        F.cross_entropy(head(features), targets, label_smoothing=0.1),
    )


def test_noise_is_relative_to_feature_scale():
    """Scaling a linear classifier's input scales its noise too: the same augmented features."""
    head = nn.Linear(4, 3, bias=False, dtype=torch.float64)
    features = torch.randn(5, 4, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 2, 1])
    a = feature_augmentation_loss(features, targets, head, generator=generator(0))
    head_scaled = nn.Linear(4, 3, bias=False, dtype=torch.float64)
    with torch.no_grad():
        head_scaled.weight.copy_(head.weight / 1e3)
    b = feature_augmentation_loss(features * 1e3, targets, head_scaled, generator=generator(0))
    torch.testing.assert_close(a, b)


def test_generator_makes_aug_reproducible():
    head = nn.Linear(8, 3)
    features = torch.randn(6, 8)
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    a = feature_augmentation_loss(features, targets, head, generator=generator(5))
    b = feature_augmentation_loss(features, targets, head, generator=generator(5))
    c = feature_augmentation_loss(features, targets, head, generator=generator(6))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.equal(a, c)


def test_aug_without_classifier_or_features_raises():
    logits, targets, features = torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), torch.randn(4, 8)
    with pytest.raises(ValueError, match="classifier"):
        classification_enhancement_term(logits, targets, features=features, aug_weight=0.1)
    with pytest.raises(ValueError, match="features"):
        classification_enhancement_term(logits, targets, classifier=nn.Linear(8, 3), aug_weight=0.1)
    with pytest.raises(ValueError, match="classifier"):
        ClassificationEnhancementTerm(aug_weight=0.5)(logits, targets, features=features)
    # Without the aug term neither is needed.
    assert_finite(classification_enhancement_term(logits, targets, aug_weight=0.0))


def test_gradcheck_with_aug_term():
    """gradcheck w.r.t. logits and the classifier's weights, the aug term on.

    Not w.r.t. the features: the noise is scaled by the *detached* rms of the features (a
    documented stop-gradient), so autograd differentiates that surrogate, not the full function;
    ``test_feature_gradient_is_that_of_the_stop_gradient_formula`` checks the features instead.
    """
    torch.manual_seed(0)
    head = nn.Linear(4, 3, dtype=torch.float64)
    features = torch.randn(5, 4, dtype=torch.float64)
    logits = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    weight = head.weight.detach().clone().requires_grad_()
    bias = head.bias.detach().clone().requires_grad_()
    targets = torch.tensor([0, 1, 2, 2, 0])

    def fn(z, w, b):
        return classification_enhancement_term(
            z,
            targets,
            features=features,
            classifier=lambda x: F.linear(x, w, b),
            ial_weight=0.5,
            aug_weight=0.7,
            generator=torch.Generator().manual_seed(0),
        )

    assert torch.autograd.gradcheck(fn, (logits, weight, bias))


def test_gradcheck_features_noise_free_aug_term():
    torch.manual_seed(0)
    head = nn.Linear(4, 3, dtype=torch.float64)
    features = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 2, 0])

    def fn(f):
        return classification_enhancement_term(
            head(f),
            targets,
            features=f,
            classifier=head,
            ial_weight=0.5,
            aug_weight=0.7,
            aug_noise_std=0.0,
            generator=torch.Generator().manual_seed(0),
        )

    assert torch.autograd.gradcheck(fn, (features,))


def test_feature_gradient_is_that_of_the_stop_gradient_formula():
    """Central differences of CE(g(f + sigma * rms(f0) * xi)) (rms frozen at f0) equal the
    library's autograd gradient w.r.t. the features."""
    torch.manual_seed(0)
    head = nn.Linear(4, 3, dtype=torch.float64)
    f0 = torch.randn(5, 4, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 2, 0])
    xi = torch.randn(f0.shape, generator=generator(0), dtype=torch.float64)
    frozen_noise = 0.3 * f0.pow(2).mean(1, keepdim=True).sqrt() * xi

    def surrogate(f):
        return F.cross_entropy(head(f + frozen_noise), targets, label_smoothing=0.1)

    f = f0.clone().requires_grad_()
    feature_augmentation_loss(
        f, targets, head, noise_std=0.3, label_smoothing=0.1, generator=generator(0)
    ).backward()
    numeric = torch.zeros_like(f0)
    step = 1e-6
    with torch.no_grad():
        for idx in range(f0.numel()):
            e = torch.zeros(f0.numel(), dtype=torch.float64)
            e[idx] = step
            e = e.view_as(f0)
            numeric.view(-1)[idx] = (surrogate(f0 + e) - surrogate(f0 - e)) / (2 * step)
    torch.testing.assert_close(f.grad, numeric, atol=1e-7, rtol=1e-6)


def test_gradcheck_classifier_weights_through_aug_term():
    torch.manual_seed(0)
    head = nn.Linear(4, 3, dtype=torch.float64)
    features = torch.randn(5, 4, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 2, 0])
    params = (
        head.weight.detach().clone().requires_grad_(),
        head.bias.detach().clone().requires_grad_(),
    )

    def fn(w, b):
        return feature_augmentation_loss(
            features,
            targets,
            lambda x: F.linear(x, w, b),
            generator=torch.Generator().manual_seed(0),
        )

    assert torch.autograd.gradcheck(fn, params)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("case", EDGE_CASES)
def test_degenerate_batches_are_finite(case, dtype):
    torch.manual_seed(0)
    features, logits, targets = edge_case(case, dtype)
    head = nn.Linear(EDGE_FEATURE_DIM, EDGE_NUM_CLASSES, dtype=dtype)
    cet = ClassificationEnhancementTerm(ial_weight=0.5, aug_weight=0.5)
    loss = cet(logits, targets, features=features, classifier=head)
    assert_finite(loss)
    loss.backward()
    assert_finite(features.grad, logits.grad)
    assert_grads_finite(head)


@pytest.mark.parametrize("reduction_case", ["all_ignored", "some_ignored"])
def test_ignore_index(reduction_case):
    head = nn.Linear(4, 3)
    features = torch.randn(4, 4, requires_grad=True)
    logits = head(features)
    targets = (
        torch.full((4,), -100)
        if reduction_case == "all_ignored"
        else torch.tensor([0, -100, 2, -100])
    )
    out = classification_enhancement_term(
        logits,
        targets,
        features=features,
        classifier=head,
        return_breakdown=True,
        generator=generator(0),
    )
    assert_finite(*out)
    out.loss.backward()
    assert_finite(features.grad)
    if reduction_case == "all_ignored":
        assert all(float(v.detach()) == 0.0 for v in out)
    else:
        keep = targets != -100
        torch.testing.assert_close(
            out.ce, F.cross_entropy(logits[keep], targets[keep], label_smoothing=0.1)
        )
        torch.testing.assert_close(out.ial, intensity_aware_loss(logits[keep], targets[keep]))


def test_module_equals_functional():
    head = nn.Linear(8, 4)
    features = torch.randn(6, 8)
    logits, targets = head(features), torch.tensor([0, 1, 2, 3, 3, 0])
    options = {"label_smoothing": 0.2, "ial_weight": 0.3, "aug_weight": 0.4, "aug_noise_std": 0.5}
    module = ClassificationEnhancementTerm(**options)
    torch.manual_seed(3)
    a = module(logits, targets, features=features, classifier=head, return_breakdown=True)
    torch.manual_seed(3)
    b = classification_enhancement_term(
        logits, targets, features=features, classifier=head, return_breakdown=True, **options
    )
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=0, rtol=0)
    torch.testing.assert_close(a.loss, a.ce + 0.3 * a.ial + 0.4 * a.aug)


def test_module_warns_once_when_smoothing_overturns_at_its_first_counts():
    """The counts come with forward: the module checks them once, at the first call that has
    them, when the smoothed, adjusted CE is its whole CET (the bound for 2 classes at 0.1 is 19).
    """
    z, y = torch.randn(4, 2), torch.tensor([0, 1, 0, 1])
    alone = {"logit_adjustment": 1.0, "ial_weight": 0.0, "aug_weight": 0.0}
    cet = ClassificationEnhancementTerm(**alone)
    with pytest.warns(UserWarning, match=r"prior ratio 20 exceeds 19"):
        cet(z, y, class_counts=[20, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cet(z, y, class_counts=[20, 1])  # once per module
        ClassificationEnhancementTerm(**alone)(z, y, class_counts=[18, 1])  # below the bound
        ClassificationEnhancementTerm(**alone, balanced_smoothing=True)(z, y, class_counts=[20, 1])
        with_raw_terms = ClassificationEnhancementTerm(logit_adjustment=1.0, aug_weight=0.0)
        with_raw_terms(z, y, class_counts=[20, 1])
        meta = ClassificationEnhancementTerm(**alone)
        meta(z.to("meta"), y.to("meta"), class_counts=torch.tensor([20, 1], device="meta"))
    # MICACLLoss checks its counts when built and not again at forward.
    with pytest.warns(UserWarning, match="prior ratio 20") as record:
        crit = MICACLLoss(2, 4, [20, 1], projection_dim=2, **alone)
        crit(torch.randn(4, 4), z, y)
    assert len(record) == 1
