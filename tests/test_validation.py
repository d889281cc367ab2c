"""Bad inputs raise ValueError/TypeError with a message that names the offending argument."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from micacl_layers import (
    GEIIM,
    WIAN,
    ClassificationEnhancementTerm,
    InstanceSelfAttention,
    InstanceWeights,
    IntensityAwareLoss,
    MCCLoss,
    MICACLLoss,
    WIANCell,
)
from micacl_layers.functional import (
    adaptive_temperature,
    classification_enhancement_term,
    feature_augmentation_loss,
    instance_weights,
    intensity_aware_loss,
    multiscale_category_aware_contrastive_loss,
)

K, D, B = 3, 8, 4


def feats(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


def targets(*values):
    return torch.tensor(values or [0, 1, 2, 0])


def mccl(**kw):
    return MCCLoss(K, D, [5, 3, 2], projection_dim=4, **kw)


def call_mccl(features=None, logits=None, y=None):
    f = feats(B, D) if features is None else features
    z = feats(B, K) if logits is None else logits
    return mccl()(f, z, targets() if y is None else y)


def call_mccl_fn(**kw):
    args = {"features": feats(B, D), "logits": feats(B, K), "targets": targets(),
            "class_counts": [5, 3, 2]}
    args.update(kw)
    return multiscale_category_aware_contrastive_loss(**args)


head = nn.Linear(D, K)

CASES = [
    # ---- MCCLoss: features / logits / targets -------------------------------------------------
    ("mccl-features-1d", lambda: call_mccl(features=feats(D)), ValueError, "`features`"),
    ("mccl-features-3d", lambda: call_mccl(features=feats(B, 2, D)), ValueError, "`features`"),
    ("mccl-features-wrong-D", lambda: call_mccl(features=feats(B, D + 1)), ValueError,
     "feature_dim"),
    ("mccl-features-int", lambda: call_mccl(features=torch.ones(B, D, dtype=torch.long)),
     TypeError, "`features`"),
    ("mccl-features-not-tensor", lambda: call_mccl(features=[[0.0] * D] * B), TypeError,
     "`features`"),
    ("mccl-logits-1d", lambda: call_mccl(logits=feats(K)), ValueError, "`logits`"),
    ("mccl-logits-3d", lambda: call_mccl(logits=feats(B, K, 1)), ValueError, "`logits`"),
    ("mccl-logits-wrong-K", lambda: call_mccl(logits=feats(B, K + 1)), ValueError,
     "num_classes"),
    ("mccl-logits-int", lambda: call_mccl(logits=torch.zeros(B, K, dtype=torch.long)),
     TypeError, "`logits`"),
    ("mccl-targets-float", lambda: call_mccl(y=torch.zeros(B)), TypeError, "`targets`"),
    ("mccl-targets-bool", lambda: call_mccl(y=torch.zeros(B, dtype=torch.bool)), TypeError,
     "`targets`"),
    ("mccl-targets-2d", lambda: call_mccl(y=torch.zeros(B, 1, dtype=torch.long)), ValueError,
     "`targets`"),
    ("mccl-targets-negative", lambda: call_mccl(y=targets(0, -1, 2, 0)), ValueError,
     "`targets`"),
    ("mccl-targets-too-big", lambda: call_mccl(y=targets(0, 3, 2, 0)), ValueError,
     "`targets`"),
    ("mccl-batch-features-vs-logits", lambda: call_mccl(features=feats(B + 1, D)), ValueError,
     "`features`.*`logits`|`logits`.*`features`"),
    ("mccl-batch-logits-vs-targets", lambda: call_mccl(logits=feats(B + 1, K)), ValueError,
     "`logits`.*`targets`"),
    ("mccl-fn-batch", lambda: call_mccl_fn(targets=targets(0, 1, 2)), ValueError, "`targets`"),
    # ---- MCCLoss: class_counts ---------------------------------------------------------------
    ("mccl-counts-short", lambda: MCCLoss(K, D, [5, 3]), ValueError, "class_counts"),
    ("mccl-counts-long", lambda: MCCLoss(K, D, [5, 3, 2, 1]), ValueError, "class_counts"),
    ("mccl-counts-2d", lambda: MCCLoss(K, D, [[5, 3, 2]]), ValueError, "class_counts"),
    ("mccl-counts-zero", lambda: MCCLoss(K, D, [5, 0, 2]), ValueError, "class_counts"),
    ("mccl-counts-negative", lambda: MCCLoss(K, D, [5, -3, 2]), ValueError, "class_counts"),
    ("mccl-counts-nan", lambda: MCCLoss(K, D, [5, float("nan"), 2]), ValueError,
     "class_counts"),
    ("mccl-counts-inf", lambda: MCCLoss(K, D, [5, float("inf"), 2]), ValueError, "class_counts"),
    ("mccl-fn-counts-short", lambda: call_mccl_fn(class_counts=[1, 2]), ValueError,
     "class_counts"),
    ("mccl-fn-counts-zero", lambda: call_mccl_fn(class_counts=[1, 0, 2]), ValueError,
     "class_counts"),
    ("mccl-fn-counts-negative", lambda: call_mccl_fn(class_counts=[1, -2, 2]), ValueError,
     "class_counts"),
    # ---- MCCLoss: options --------------------------------------------------------------------
    ("mccl-scales-empty", lambda: MCCLoss(K, D, scales=()), ValueError, "scales"),
    ("mccl-scales-zero", lambda: MCCLoss(K, D, scales=(1, 0)), ValueError, "scales"),
    ("mccl-scales-negative", lambda: MCCLoss(K, D, scales=(-2,)), ValueError, "scales"),
    ("mccl-scales-too-big", lambda: MCCLoss(K, D, scales=(1, D + 1)), ValueError, "scales"),
    ("mccl-scales-float", lambda: MCCLoss(K, D, scales=(1, 2.0)), ValueError, "scales"),
    ("mccl-scales-bool", lambda: MCCLoss(K, D, scales=(True,)), ValueError, "scales"),
    ("mccl-scales-not-seq", lambda: MCCLoss(K, D, scales=3), TypeError, "scales"),
    ("mccl-fn-scales", lambda: call_mccl_fn(scales=(0,)), ValueError, "scales"),
    ("mccl-form", lambda: mccl(form="sum"), ValueError, "form"),
    ("mccl-fn-form", lambda: call_mccl_fn(form="Ratio"), ValueError, "form"),
    ("mccl-temperature", lambda: mccl(temperature="adaptive"), ValueError, "temperature"),
    ("mccl-fn-temperature", lambda: call_mccl_fn(temperature="x"), ValueError, "temperature"),
    ("mccl-reduction", lambda: mccl(reduction="avg"), ValueError, "reduction"),
    ("mccl-fn-reduction", lambda: call_mccl_fn(reduction="batchmean"), ValueError,
     "reduction"),
    ("mccl-tau0-zero", lambda: mccl(tau0=0.0), ValueError, "tau0"),
    ("mccl-tau0-negative", lambda: call_mccl_fn(tau0=-0.1), ValueError, "tau0"),
    ("mccl-num-classes", lambda: MCCLoss(0, D), ValueError, "num_classes"),
    ("mccl-feature-dim", lambda: MCCLoss(K, 0), ValueError, "feature_dim"),
    ("mccl-projection-dim", lambda: MCCLoss(K, D, projection_dim=0), ValueError,
     "projection_dim"),
    ("mccl-projections-count", lambda: call_mccl_fn(scales=(1, 2), projections=[nn.Identity()]),
     ValueError, "projections"),
    ("temperature-batch-mean-needs-targets",
     lambda: adaptive_temperature(torch.tensor([1.0, 2.0]), 0.1, mode="batch_mean"),
     ValueError, "targets"),
    ("temperature-mode", lambda: adaptive_temperature(torch.tensor([1.0]), 0.1, mode="x"),
     ValueError, "temperature"),
    # ---- IAL ---------------------------------------------------------------------------------
    ("ial-reduction", lambda: IntensityAwareLoss(reduction="avg"), ValueError, "reduction"),
    ("ial-fn-reduction", lambda: intensity_aware_loss(feats(B, K), targets(), reduction="x"),
     ValueError, "reduction"),
    ("ial-one-class", lambda: intensity_aware_loss(feats(B, 1), torch.zeros(B, dtype=torch.long)),
     ValueError, "`logits`"),
    ("ial-logits-1d", lambda: intensity_aware_loss(feats(K), targets(0)), ValueError,
     "`logits`"),
    ("ial-logits-int", lambda: intensity_aware_loss(torch.zeros(B, K, dtype=torch.long),
                                                    targets()), TypeError, "`logits`"),
    ("ial-targets-float", lambda: intensity_aware_loss(feats(B, K), torch.zeros(B)), TypeError,
     "`targets`"),
    ("ial-targets-bool", lambda: intensity_aware_loss(feats(B, K), torch.ones(B, dtype=bool)),
     TypeError, "`targets`"),
    ("ial-targets-range", lambda: intensity_aware_loss(feats(B, K), targets(0, 1, 2, 3)),
     ValueError, "`targets`"),
    ("ial-targets-negative", lambda: intensity_aware_loss(feats(B, K), targets(0, 1, -1, 2)),
     ValueError, "`targets`"),
    ("ial-batch", lambda: intensity_aware_loss(feats(B, K), targets(0, 1)), ValueError,
     "`logits`.*`targets`"),
    # ---- CET ---------------------------------------------------------------------------------
    ("cet-aug-needs-classifier",
     lambda: ClassificationEnhancementTerm(aug_weight=0.1)(feats(B, K), targets(),
                                                            features=feats(B, D)),
     ValueError, "classifier"),
    ("cet-aug-needs-features",
     lambda: ClassificationEnhancementTerm(aug_weight=0.1)(feats(B, K), targets(),
                                                            classifier=head),
     ValueError, "features"),
    ("cet-ial-weight", lambda: classification_enhancement_term(feats(B, K), targets(),
                                                               ial_weight=-1.0, aug_weight=0),
     ValueError, "ial_weight"),
    ("cet-aug-weight", lambda: classification_enhancement_term(feats(B, K), targets(),
                                                               aug_weight=-0.5),
     ValueError, "aug_weight"),
    ("cet-label-smoothing", lambda: classification_enhancement_term(
        feats(B, K), targets(), label_smoothing=1.5, aug_weight=0), ValueError,
     "label_smoothing"),
    ("cet-features-batch", lambda: classification_enhancement_term(
        feats(B, K), targets(), features=feats(B + 1, D), classifier=head), ValueError,
     "`features`"),
    ("cet-features-int", lambda: classification_enhancement_term(
        feats(B, K), targets(), features=torch.zeros(B, D, dtype=torch.long), classifier=head),
     TypeError, "`features`"),
    ("cet-targets-range", lambda: classification_enhancement_term(
        feats(B, K), targets(0, 1, 2, 5), aug_weight=0), ValueError, "`targets`"),
    ("aug-noise-std", lambda: feature_augmentation_loss(feats(B, D), targets(), head,
                                                        noise_std=-1.0), ValueError,
     "noise_std"),
    ("aug-features-3d", lambda: feature_augmentation_loss(feats(B, 1, D), targets(), head),
     ValueError, "`features`"),
    # ---- MICACLLoss --------------------------------------------------------------------------
    ("criterion-mc-weight", lambda: MICACLLoss(K, D, mc_weight=-1.0), ValueError, "mc_weight"),
    ("criterion-preset", lambda: MICACLLoss.from_preset("paperz", K, D), ValueError, "name"),
    ("criterion-counts", lambda: MICACLLoss(K, D, [1, 2]), ValueError, "class_counts"),
    ("criterion-features", lambda: MICACLLoss(K, D, aug_weight=0)(feats(B, D + 2), feats(B, K),
                                                                   targets()),
     ValueError, "feature_dim"),
    ("criterion-targets", lambda: MICACLLoss(K, D, aug_weight=0)(feats(B, D), feats(B, K),
                                                                  torch.zeros(B)),
     TypeError, "`targets`"),
    # ---- GEIIM -------------------------------------------------------------------------------
    ("geiim-T", lambda: GEIIM(4, D)(feats(2, 5, D)), ValueError, "num_instances"),
    ("geiim-C", lambda: GEIIM(4, D)(feats(2, 4, D - 1)), ValueError, "dim"),
    ("geiim-x-2d", lambda: GEIIM(4, D)(feats(4, D)), ValueError, "`x`"),
    ("geiim-x-int", lambda: GEIIM(4, D)(torch.zeros(2, 4, D, dtype=torch.long)), TypeError,
     "`x`"),
    ("geiim-mask-dtype", lambda: GEIIM(4, D)(feats(2, 4, D), torch.zeros(2, 4)), TypeError,
     "padding_mask"),
    ("geiim-mask-shape", lambda: GEIIM(4, D)(feats(2, 4, D), torch.zeros(2, 5, dtype=bool)),
     ValueError, "padding_mask"),
    ("geiim-mask-all-padded",
     lambda: GEIIM(4, D)(feats(2, 4, D), torch.tensor([[True] * 4, [False] * 4])), ValueError,
     "padding_mask"),
    ("geiim-alpha", lambda: GEIIM(4, D, alpha_init=1.5), ValueError, "alpha_init"),
    ("geiim-kernel-even", lambda: GEIIM(4, D, kernel_sizes=(1, 2)), ValueError, "kernel_sizes"),
    ("geiim-kernel-zero", lambda: GEIIM(4, D, kernel_sizes=(0,)), ValueError, "kernel_sizes"),
    ("geiim-num-instances", lambda: GEIIM(0, D), ValueError, "num_instances"),
    ("geiim-node-dim", lambda: GEIIM(4, D, node_dim=0), ValueError, "node_dim"),
    # ---- WIANCell / WIAN ---------------------------------------------------------------------
    ("cell-x-3d", lambda: WIANCell(3, 4)(feats(2, 1, 3)), ValueError, "`input`"),
    ("cell-x-size", lambda: WIANCell(3, 4)(feats(2, 5)), ValueError, "`input`"),
    ("cell-x-int", lambda: WIANCell(3, 4)(torch.zeros(2, 3, dtype=torch.long)), TypeError,
     "`input`"),
    ("cell-hx-shape", lambda: WIANCell(3, 4)(feats(2, 3), (feats(2, 5), feats(2, 4))),
     ValueError, re.escape("hx[0]")),
    ("cell-hx-type", lambda: WIANCell(3, 4)(feats(2, 3), feats(2, 4)), TypeError, "`hx`"),
    ("cell-weight-shape", lambda: WIANCell(3, 4)(feats(2, 3), weight=feats(2, 3)), ValueError,
     "`weight`"),
    ("cell-weight-int", lambda: WIANCell(3, 4)(feats(2, 3),
                                               weight=torch.ones(2, 4, dtype=torch.long)),
     TypeError, "`weight`"),
    ("cell-hidden-size", lambda: WIANCell(3, 0), ValueError, "hidden_size"),
    ("cell-from-lstm", lambda: WIANCell.from_lstm_cell(nn.GRUCell(3, 4)), TypeError, "`cell`"),
    ("wian-x-4d", lambda: WIAN(3, 4)(feats(2, 5, 3, 1)), ValueError, "`input`"),
    ("wian-x-1d", lambda: WIAN(3, 4)(feats(3)), ValueError, "`input`"),
    ("wian-x-size", lambda: WIAN(3, 4)(feats(2, 5, 2)), ValueError, "`input`"),
    ("wian-x-int", lambda: WIAN(3, 4)(torch.zeros(2, 5, 3, dtype=torch.long)), TypeError,
     "`input`"),
    ("wian-x-packed", lambda: WIAN(3, 4)(nn.utils.rnn.pack_sequence([feats(2, 3)])), TypeError,
     "PackedSequence"),
    ("wian-weights-shape", lambda: WIAN(3, 4, batch_first=True)(feats(2, 5, 3),
                                                                weights=feats(2, 4, 1)),
     ValueError, "`weights`"),
    ("wian-weights-time-major", lambda: WIAN(3, 4)(feats(5, 2, 3), weights=feats(2, 5, 1)),
     ValueError, "`weights`"),
    ("wian-weights-int", lambda: WIAN(3, 4)(feats(2, 5, 3),
                                            weights=torch.ones(2, 5, 1, dtype=int)),
     TypeError, "`weights`"),
    ("wian-hx-shape", lambda: WIAN(3, 4, num_layers=2, batch_first=True)(
        feats(2, 5, 3), hx=(feats(1, 2, 4), feats(2, 2, 4))), ValueError, re.escape("hx[0]")),
    ("wian-hx-type", lambda: WIAN(3, 4)(feats(2, 5, 3), hx=feats(1, 2, 4)), TypeError, "`hx`"),
    ("wian-num-layers", lambda: WIAN(3, 4, num_layers=0), ValueError, "num_layers"),
    ("wian-input-size", lambda: WIAN(0, 4), ValueError, "input_size"),
    ("wian-dropout", lambda: WIAN(3, 4, dropout=1.5), ValueError, "dropout"),
    ("wian-proj-size", lambda: WIAN(3, 4, proj_size=2), ValueError, "proj_size"),
    ("wian-from-lstm-proj", lambda: WIAN.from_lstm(nn.LSTM(3, 4, proj_size=2)), ValueError,
     "proj_size"),
    ("wian-from-lstm-type", lambda: WIAN.from_lstm(nn.GRU(3, 4)), TypeError, "`lstm`"),
    # ---- InstanceWeights / attention ---------------------------------------------------------
    ("iw-mode", lambda: InstanceWeights(4, mode="softmax"), ValueError, "mode"),
    ("iw-fn-mode", lambda: instance_weights(feats(2, 3, 4), mode="x"), ValueError, "mode"),
    ("iw-h-2d", lambda: InstanceWeights(4)(feats(3, 4)), ValueError, "`h`"),
    ("iw-h-size", lambda: InstanceWeights(4)(feats(2, 3, 5)), ValueError, "`h`"),
    ("iw-h-int", lambda: InstanceWeights(4)(torch.zeros(2, 3, 4, dtype=torch.long)), TypeError,
     "`h`"),
    ("iw-mask", lambda: InstanceWeights(4)(feats(2, 3, 4), torch.zeros(2, 4, dtype=bool)),
     ValueError, "padding_mask"),
    ("iw-mask-dtype", lambda: instance_weights(feats(2, 3, 4), padding_mask=torch.zeros(2, 3)),
     TypeError, "padding_mask"),
    ("iw-in-features", lambda: InstanceWeights(0), ValueError, "in_features"),
    ("attn-heads", lambda: InstanceSelfAttention(10, num_heads=3), ValueError, "num_heads"),
    ("attn-x-size", lambda: InstanceSelfAttention(8, num_heads=2)(feats(2, 3, 6)), ValueError,
     "`x`"),
    ("attn-x-2d", lambda: InstanceSelfAttention(8, num_heads=2)(feats(3, 8)), ValueError, "`x`"),
]


@pytest.mark.parametrize(("make", "exc", "match"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_raises_named_error(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_case_ids_are_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


def test_error_message_describes_what_was_given():
    with pytest.raises(ValueError, match=r"shape=\(2, 5, 8\), dtype=torch.float32"):
        GEIIM(4, D)(feats(2, 5, D))
    with pytest.raises(ValueError, match=r"got values in \[-1, 2\]"):
        intensity_aware_loss(feats(B, K), targets(0, 1, -1, 2))


def test_good_inputs_pass():
    """The valid counterparts of the cases above run (guards against over-eager checks)."""
    call_mccl()
    call_mccl_fn()
    intensity_aware_loss(feats(B, K), targets())
    classification_enhancement_term(feats(B, K), targets(), features=feats(B, D),
                                    classifier=head)
    GEIIM(4, D)(feats(2, 4, D), torch.tensor([[False, True, True, True], [False] * 4]))
    WIANCell(3, 4)(feats(2, 3), (feats(2, 4), feats(2, 4)), weight=feats(2, 1))
    WIAN(3, 4, num_layers=2, batch_first=True)(feats(2, 5, 3), (feats(2, 2, 4), feats(2, 2, 4)),
                                               weights=feats(2, 5, 1))
    WIAN(3, 4)(feats(5, 2, 3), weights=feats(5, 2, 1))
    InstanceWeights(4)(feats(2, 3, 4), torch.zeros(2, 3, dtype=bool))
    InstanceSelfAttention(8, num_heads=2)(feats(2, 3, 8))
    MICACLLoss(K, D, aug_weight=0)(feats(B, D), feats(B, K), targets())
