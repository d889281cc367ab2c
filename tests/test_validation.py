"""Bad inputs raise ValueError/TypeError with a message that names the offending argument."""

from __future__ import annotations

import re

import numpy as np
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
    LogitAdjustedLoss,
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
    args = {
        "features": feats(B, D),
        "logits": feats(B, K),
        "targets": targets(),
        "class_counts": [5, 3, 2],
    }
    args.update(kw)
    return multiscale_category_aware_contrastive_loss(**args)


head = nn.Linear(D, K)

CASES = [
    # ---- MCCLoss: features / logits / targets -------------------------------------------------
    ("mccl-features-1d", lambda: call_mccl(features=feats(D)), ValueError, "`features`"),
    ("mccl-features-3d", lambda: call_mccl(features=feats(B, 2, D)), ValueError, "`features`"),
    (
        "mccl-features-wrong-D",
        lambda: call_mccl(features=feats(B, D + 1)),
        ValueError,
        "feature_dim",
    ),
    (
        "mccl-features-int",
        lambda: call_mccl(features=torch.ones(B, D, dtype=torch.long)),
        TypeError,
        "`features`",
    ),
    (
        "mccl-features-not-tensor",
        lambda: call_mccl(features=[[0.0] * D] * B),
        TypeError,
        "`features`",
    ),
    ("mccl-logits-1d", lambda: call_mccl(logits=feats(K)), ValueError, "`logits`"),
    ("mccl-logits-3d", lambda: call_mccl(logits=feats(B, K, 1)), ValueError, "`logits`"),
    ("mccl-logits-wrong-K", lambda: call_mccl(logits=feats(B, K + 1)), ValueError, "num_classes"),
    (
        "mccl-logits-int",
        lambda: call_mccl(logits=torch.zeros(B, K, dtype=torch.long)),
        TypeError,
        "`logits`",
    ),
    ("mccl-targets-float", lambda: call_mccl(y=torch.zeros(B)), TypeError, "`targets`"),
    (
        "mccl-targets-bool",
        lambda: call_mccl(y=torch.zeros(B, dtype=torch.bool)),
        TypeError,
        "`targets`",
    ),
    (
        "mccl-targets-2d",
        lambda: call_mccl(y=torch.zeros(B, 1, dtype=torch.long)),
        ValueError,
        "`targets`",
    ),
    ("mccl-targets-negative", lambda: call_mccl(y=targets(0, -1, 2, 0)), ValueError, "`targets`"),
    ("mccl-targets-too-big", lambda: call_mccl(y=targets(0, 3, 2, 0)), ValueError, "`targets`"),
    (
        "mccl-batch-features-vs-logits",
        lambda: call_mccl(features=feats(B + 1, D)),
        ValueError,
        "`features`.*`logits`|`logits`.*`features`",
    ),
    (
        "mccl-batch-logits-vs-targets",
        lambda: call_mccl(logits=feats(B + 1, K)),
        ValueError,
        "`logits`.*`targets`",
    ),
    ("mccl-fn-batch", lambda: call_mccl_fn(targets=targets(0, 1, 2)), ValueError, "`targets`"),
    # ---- MCCLoss: class_counts ---------------------------------------------------------------
    ("mccl-counts-short", lambda: MCCLoss(K, D, [5, 3]), ValueError, "class_counts"),
    ("mccl-counts-long", lambda: MCCLoss(K, D, [5, 3, 2, 1]), ValueError, "class_counts"),
    ("mccl-counts-2d", lambda: MCCLoss(K, D, [[5, 3, 2]]), ValueError, "class_counts"),
    ("mccl-counts-zero", lambda: MCCLoss(K, D, [5, 0, 2]), ValueError, "class_counts"),
    ("mccl-counts-negative", lambda: MCCLoss(K, D, [5, -3, 2]), ValueError, "class_counts"),
    ("mccl-counts-nan", lambda: MCCLoss(K, D, [5, float("nan"), 2]), ValueError, "class_counts"),
    ("mccl-counts-inf", lambda: MCCLoss(K, D, [5, float("inf"), 2]), ValueError, "class_counts"),
    ("mccl-fn-counts-short", lambda: call_mccl_fn(class_counts=[1, 2]), ValueError, "class_counts"),
    (
        "mccl-fn-counts-zero",
        lambda: call_mccl_fn(class_counts=[1, 0, 2]),
        ValueError,
        "class_counts",
    ),
    (
        "mccl-fn-counts-negative",
        lambda: call_mccl_fn(class_counts=[1, -2, 2]),
        ValueError,
        "class_counts",
    ),
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
    ("mccl-fn-reduction", lambda: call_mccl_fn(reduction="batchmean"), ValueError, "reduction"),
    ("mccl-tau0-zero", lambda: mccl(tau0=0.0), ValueError, "tau0"),
    ("mccl-tau0-negative", lambda: call_mccl_fn(tau0=-0.1), ValueError, "tau0"),
    ("mccl-num-classes", lambda: MCCLoss(0, D), ValueError, "num_classes"),
    ("mccl-feature-dim", lambda: MCCLoss(K, 0), ValueError, "feature_dim"),
    ("mccl-projection-dim", lambda: MCCLoss(K, D, projection_dim=0), ValueError, "projection_dim"),
    (
        "mccl-projections-count",
        lambda: call_mccl_fn(scales=(1, 2), projections=[nn.Identity()]),
        ValueError,
        "projections",
    ),
    (
        "temperature-batch-mean-needs-targets",
        lambda: adaptive_temperature(torch.tensor([1.0, 2.0]), 0.1, mode="batch_mean"),
        ValueError,
        "targets",
    ),
    (
        "temperature-mode",
        lambda: adaptive_temperature(torch.tensor([1.0]), 0.1, mode="x"),
        ValueError,
        "temperature",
    ),
    # ---- IAL ---------------------------------------------------------------------------------
    ("ial-reduction", lambda: IntensityAwareLoss(reduction="avg"), ValueError, "reduction"),
    (
        "ial-fn-reduction",
        lambda: intensity_aware_loss(feats(B, K), targets(), reduction="x"),
        ValueError,
        "reduction",
    ),
    (
        "ial-one-class",
        lambda: intensity_aware_loss(feats(B, 1), torch.zeros(B, dtype=torch.long)),
        ValueError,
        "`logits`",
    ),
    ("ial-logits-1d", lambda: intensity_aware_loss(feats(K), targets(0)), ValueError, "`logits`"),
    (
        "ial-logits-int",
        lambda: intensity_aware_loss(torch.zeros(B, K, dtype=torch.long), targets()),
        TypeError,
        "`logits`",
    ),
    (
        "ial-targets-float",
        lambda: intensity_aware_loss(feats(B, K), torch.zeros(B)),
        TypeError,
        "`targets`",
    ),
    (
        "ial-targets-bool",
        lambda: intensity_aware_loss(feats(B, K), torch.ones(B, dtype=bool)),
        TypeError,
        "`targets`",
    ),
    (
        "ial-targets-range",
        lambda: intensity_aware_loss(feats(B, K), targets(0, 1, 2, 3)),
        ValueError,
        "`targets`",
    ),
    (
        "ial-targets-negative",
        lambda: intensity_aware_loss(feats(B, K), targets(0, 1, -1, 2)),
        ValueError,
        "`targets`",
    ),
    (
        "ial-batch",
        lambda: intensity_aware_loss(feats(B, K), targets(0, 1)),
        ValueError,
        "`logits`.*`targets`",
    ),
    # ---- CET ---------------------------------------------------------------------------------
    (
        "cet-aug-needs-classifier",
        lambda: ClassificationEnhancementTerm(aug_weight=0.1)(
            feats(B, K), targets(), features=feats(B, D)
        ),
        ValueError,
        "classifier",
    ),
    (
        "cet-aug-needs-features",
        lambda: ClassificationEnhancementTerm(aug_weight=0.1)(
            feats(B, K), targets(), classifier=head
        ),
        ValueError,
        "features",
    ),
    (
        "cet-ial-weight",
        lambda: classification_enhancement_term(
            feats(B, K), targets(), ial_weight=-1.0, aug_weight=0
        ),
        ValueError,
        "ial_weight",
    ),
    (
        "cet-aug-weight",
        lambda: classification_enhancement_term(feats(B, K), targets(), aug_weight=-0.5),
        ValueError,
        "aug_weight",
    ),
    (
        "cet-label-smoothing",
        lambda: classification_enhancement_term(
            feats(B, K), targets(), label_smoothing=1.5, aug_weight=0
        ),
        ValueError,
        "label_smoothing",
    ),
    (
        "cet-features-batch",
        lambda: classification_enhancement_term(
            feats(B, K), targets(), features=feats(B + 1, D), classifier=head
        ),
        ValueError,
        "`features`",
    ),
    (
        "cet-features-int",
        lambda: classification_enhancement_term(
            feats(B, K), targets(), features=torch.zeros(B, D, dtype=torch.long), classifier=head
        ),
        TypeError,
        "`features`",
    ),
    (
        "cet-targets-range",
        lambda: classification_enhancement_term(feats(B, K), targets(0, 1, 2, 5), aug_weight=0),
        ValueError,
        "`targets`",
    ),
    (
        "aug-noise-std",
        lambda: feature_augmentation_loss(feats(B, D), targets(), head, noise_std=-1.0),
        ValueError,
        "noise_std",
    ),
    (
        "aug-features-3d",
        lambda: feature_augmentation_loss(feats(B, 1, D), targets(), head),
        ValueError,
        "`features`",
    ),
    # ---- MICACLLoss --------------------------------------------------------------------------
    ("criterion-mc-weight", lambda: MICACLLoss(K, D, mc_weight=-1.0), ValueError, "mc_weight"),
    ("criterion-preset", lambda: MICACLLoss.from_preset("paperz", K, D), ValueError, "name"),
    ("criterion-counts", lambda: MICACLLoss(K, D, [1, 2]), ValueError, "class_counts"),
    (
        "criterion-features",
        lambda: MICACLLoss(K, D, aug_weight=0)(feats(B, D + 2), feats(B, K), targets()),
        ValueError,
        "feature_dim",
    ),
    (
        "criterion-targets",
        lambda: MICACLLoss(K, D, aug_weight=0)(feats(B, D), feats(B, K), torch.zeros(B)),
        TypeError,
        "`targets`",
    ),
    # ---- GEIIM -------------------------------------------------------------------------------
    ("geiim-T", lambda: GEIIM(4, D)(feats(2, 5, D)), ValueError, "num_instances"),
    ("geiim-C", lambda: GEIIM(4, D)(feats(2, 4, D - 1)), ValueError, "dim"),
    ("geiim-x-2d", lambda: GEIIM(4, D)(feats(4, D)), ValueError, "`x`"),
    ("geiim-x-int", lambda: GEIIM(4, D)(torch.zeros(2, 4, D, dtype=torch.long)), TypeError, "`x`"),
    (
        "geiim-mask-dtype",
        lambda: GEIIM(4, D)(feats(2, 4, D), torch.zeros(2, 4)),
        TypeError,
        "padding_mask",
    ),
    (
        "geiim-mask-shape",
        lambda: GEIIM(4, D)(feats(2, 4, D), torch.zeros(2, 5, dtype=bool)),
        ValueError,
        "padding_mask",
    ),
    (
        "geiim-mask-all-padded",
        lambda: GEIIM(4, D)(feats(2, 4, D), torch.tensor([[True] * 4, [False] * 4])),
        ValueError,
        "padding_mask",
    ),
    ("geiim-alpha", lambda: GEIIM(4, D, alpha_init=1.5), ValueError, "alpha_init"),
    ("geiim-kernel-even", lambda: GEIIM(4, D, kernel_sizes=(1, 2)), ValueError, "kernel_sizes"),
    ("geiim-kernel-zero", lambda: GEIIM(4, D, kernel_sizes=(0,)), ValueError, "kernel_sizes"),
    ("geiim-num-instances", lambda: GEIIM(0, D), ValueError, "num_instances"),
    ("geiim-node-dim", lambda: GEIIM(4, D, node_dim=0), ValueError, "node_dim"),
    # ---- WIANCell / WIAN ---------------------------------------------------------------------
    ("cell-x-3d", lambda: WIANCell(3, 4)(feats(2, 1, 3)), ValueError, "`input`"),
    ("cell-x-size", lambda: WIANCell(3, 4)(feats(2, 5)), ValueError, "`input`"),
    (
        "cell-x-int",
        lambda: WIANCell(3, 4)(torch.zeros(2, 3, dtype=torch.long)),
        TypeError,
        "`input`",
    ),
    (
        "cell-hx-shape",
        lambda: WIANCell(3, 4)(feats(2, 3), (feats(2, 5), feats(2, 4))),
        ValueError,
        re.escape("hx[0]"),
    ),
    ("cell-hx-type", lambda: WIANCell(3, 4)(feats(2, 3), feats(2, 4)), TypeError, "`hx`"),
    (
        "cell-weight-shape",
        lambda: WIANCell(3, 4)(feats(2, 3), weight=feats(2, 3)),
        ValueError,
        "`weight`",
    ),
    (
        "cell-weight-int",
        lambda: WIANCell(3, 4)(feats(2, 3), weight=torch.ones(2, 4, dtype=torch.long)),
        TypeError,
        "`weight`",
    ),
    ("cell-hidden-size", lambda: WIANCell(3, 0), ValueError, "hidden_size"),
    ("cell-from-lstm", lambda: WIANCell.from_lstm_cell(nn.GRUCell(3, 4)), TypeError, "`cell`"),
    ("wian-x-4d", lambda: WIAN(3, 4)(feats(2, 5, 3, 1)), ValueError, "`input`"),
    ("wian-x-1d", lambda: WIAN(3, 4)(feats(3)), ValueError, "`input`"),
    ("wian-x-size", lambda: WIAN(3, 4)(feats(2, 5, 2)), ValueError, "`input`"),
    (
        "wian-x-int",
        lambda: WIAN(3, 4)(torch.zeros(2, 5, 3, dtype=torch.long)),
        TypeError,
        "`input`",
    ),
    (
        "wian-weights-not-packed",
        lambda: WIAN(3, 4)(nn.utils.rnn.pack_sequence([feats(2, 3)]), weights=feats(2, 1)),
        TypeError,
        "`weights` must be a PackedSequence",
    ),
    (
        "wiancell-x-packed",
        lambda: WIANCell(3, 4)(nn.utils.rnn.pack_sequence([feats(2, 3)])),
        TypeError,
        "PackedSequence",
    ),
    (
        "wian-weights-shape",
        lambda: WIAN(3, 4, batch_first=True)(feats(2, 5, 3), weights=feats(2, 4, 1)),
        ValueError,
        "`weights`",
    ),
    (
        "wian-weights-time-major",
        lambda: WIAN(3, 4)(feats(5, 2, 3), weights=feats(2, 5, 1)),
        ValueError,
        "`weights`",
    ),
    (
        "wian-weights-int",
        lambda: WIAN(3, 4)(feats(2, 5, 3), weights=torch.ones(2, 5, 1, dtype=int)),
        TypeError,
        "`weights`",
    ),
    (
        "wian-hx-shape",
        lambda: WIAN(3, 4, num_layers=2, batch_first=True)(
            feats(2, 5, 3), hx=(feats(1, 2, 4), feats(2, 2, 4))
        ),
        ValueError,
        re.escape("hx[0]"),
    ),
    ("wian-hx-type", lambda: WIAN(3, 4)(feats(2, 5, 3), hx=feats(1, 2, 4)), TypeError, "`hx`"),
    ("wian-num-layers", lambda: WIAN(3, 4, num_layers=0), ValueError, "num_layers"),
    ("wian-input-size", lambda: WIAN(0, 4), ValueError, "input_size"),
    ("wian-dropout", lambda: WIAN(3, 4, dropout=1.5), ValueError, "dropout"),
    ("wian-proj-size", lambda: WIAN(3, 4, proj_size=2), ValueError, "proj_size"),
    (
        "wian-from-lstm-proj",
        lambda: WIAN.from_lstm(nn.LSTM(3, 4, proj_size=2)),
        ValueError,
        "proj_size",
    ),
    ("wian-from-lstm-type", lambda: WIAN.from_lstm(nn.GRU(3, 4)), TypeError, "`lstm`"),
    # ---- InstanceWeights / attention ---------------------------------------------------------
    ("iw-mode", lambda: InstanceWeights(4, mode="softmax"), ValueError, "mode"),
    ("iw-fn-mode", lambda: instance_weights(feats(2, 3, 4), mode="x"), ValueError, "mode"),
    ("iw-h-2d", lambda: InstanceWeights(4)(feats(3, 4)), ValueError, "`h`"),
    ("iw-h-size", lambda: InstanceWeights(4)(feats(2, 3, 5)), ValueError, "`h`"),
    (
        "iw-h-int",
        lambda: InstanceWeights(4)(torch.zeros(2, 3, 4, dtype=torch.long)),
        TypeError,
        "`h`",
    ),
    (
        "iw-mask",
        lambda: InstanceWeights(4)(feats(2, 3, 4), torch.zeros(2, 4, dtype=bool)),
        ValueError,
        "padding_mask",
    ),
    (
        "iw-mask-dtype",
        lambda: instance_weights(feats(2, 3, 4), padding_mask=torch.zeros(2, 3)),
        TypeError,
        "padding_mask",
    ),
    ("iw-in-features", lambda: InstanceWeights(0), ValueError, "in_features"),
    ("attn-heads", lambda: InstanceSelfAttention(10, num_heads=3), ValueError, "num_heads"),
    (
        "attn-x-size",
        lambda: InstanceSelfAttention(8, num_heads=2)(feats(2, 3, 6)),
        ValueError,
        "`x`",
    ),
    ("attn-x-2d", lambda: InstanceSelfAttention(8, num_heads=2)(feats(3, 8)), ValueError, "`x`"),
]


@pytest.mark.parametrize(
    ("make", "exc", "match"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
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
    classification_enhancement_term(feats(B, K), targets(), features=feats(B, D), classifier=head)
    GEIIM(4, D)(feats(2, 4, D), torch.tensor([[False, True, True, True], [False] * 4]))
    WIANCell(3, 4)(feats(2, 3), (feats(2, 4), feats(2, 4)), weight=feats(2, 1))
    WIAN(3, 4, num_layers=2, batch_first=True)(
        feats(2, 5, 3), (feats(2, 2, 4), feats(2, 2, 4)), weights=feats(2, 5, 1)
    )
    WIAN(3, 4)(feats(5, 2, 3), weights=feats(5, 2, 1))
    InstanceWeights(4)(feats(2, 3, 4), torch.zeros(2, 3, dtype=bool))
    InstanceSelfAttention(8, num_heads=2)(feats(2, 3, 8))
    MICACLLoss(K, D, aug_weight=0)(feats(B, D), feats(B, K), targets())


# ============================================================================================
# Issue 14: the holes an independent adversarial suite found, one block per family. Each test
# reproduces the example (which failed on the code before the fix).
# ============================================================================================
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from micacl_layers import config  # noqa: E402
from micacl_layers.checkpoint import (  # noqa: E402
    CheckpointError,
    load_state_dict_checked,
    save_checkpoint,
)
from micacl_layers.functional import (  # noqa: E402
    category_aware_weights,
    graph_propagate,
    instance_adjacency,
    pool_features,
    supervised_contrastive_per_anchor,
)
from micacl_layers.memory import ContrastMemory  # noqa: E402
from micacl_layers.metrics import ConfusionMatrix  # noqa: E402
from micacl_layers.models import MICACL, MICACLHead  # noqa: E402

INT_DTYPES = (
    torch.int8,
    torch.int16,
    torch.int32,
    torch.uint8,
    torch.uint16,
    torch.uint32,
    torch.uint64,
)
COUNTS = [5, 3, 2]


def _batch(seed=0, b=6, d=D, k=K):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, d, generator=g), torch.randn(b, k, generator=g), torch.arange(b) % k)


def _target_calls():
    """Every public entry that takes class indices: name -> f(targets) -> output."""
    f, z, _ = _batch()
    lin = nn.Linear(D, K)

    def seeded(fn):
        def call(y):
            torch.manual_seed(0)
            return fn(y)

        return call

    return {
        "MCCLoss": lambda y: mccl()(f, z, y),
        "mccl_loss": lambda y: multiscale_category_aware_contrastive_loss(f, z, y, COUNTS),
        "IntensityAwareLoss": lambda y: IntensityAwareLoss()(z, y),
        "CET": seeded(lambda y: ClassificationEnhancementTerm()(z, y, features=f, classifier=lin)),
        "MICACLLoss": seeded(
            lambda y: MICACLLoss(K, D, COUNTS, projection_dim=4)(f, z, y, classifier=lin)
        ),
        "supervised_contrastive_per_anchor": lambda y: supervised_contrastive_per_anchor(f, y, 0.1)[
            0
        ],
        "category_aware_weights": lambda y: category_aware_weights(z, y, torch.tensor(COUNTS)),
        "adaptive_temperature": lambda y: adaptive_temperature(
            torch.tensor([5.0, 3.0, 2.0]), 0.1, mode="batch_mean", targets=y
        ),
        "ContrastMemory.push": lambda y: _pushed(f, y),
        "ConfusionMatrix": lambda y: _confusion(z, y),
    }


def _pushed(f, y):
    mem = ContrastMemory(8, dims=(D,))
    mem.push([f], y)
    return mem.get()[1]


def _confusion(z, y):
    m = ConfusionMatrix(K)
    m.update(z, y)
    return m.compute()


@pytest.mark.parametrize("dtype", INT_DTYPES, ids=str)
@pytest.mark.parametrize("name", list(_target_calls()))
def test_family1_any_integer_dtype_is_a_class_index(name, dtype):
    """Issue example: `t.short()` raised IndexError, `t.to(torch.uint8)` was read as a mask."""
    call = _target_calls()[name]
    _, _, y = _batch()
    torch.manual_seed(0)
    expected = call(y)
    torch.manual_seed(0)
    got = call(y.to(dtype))
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("name", list(_target_calls()))
def test_family1_bool_targets_are_rejected(name):
    _, _, y = _batch()
    with pytest.raises(TypeError, match="`targets` must hold integer class indices"):
        _target_calls()[name](y.bool())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_family2_mccl_features_of_another_dtype_run_in_the_projections_dtype(dtype):
    """Issue example: fp16/bf16/fp64 features into float32 projections raised torch's
    "mat1 and mat2 must have the same dtype" (features from an autocast region)."""
    f, z, y = _batch()
    loss_fn = mccl()
    x = f.to(dtype).requires_grad_()
    loss = loss_fn(x, z, y)
    reference = loss_fn(x.detach().float(), z, y)
    torch.testing.assert_close(loss, reference)
    loss.backward()
    assert x.grad.dtype == dtype and bool(torch.isfinite(x.grad.float()).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_family2_layers_compute_in_their_parameters_dtype(dtype):
    torch.manual_seed(0)
    x = torch.randn(2, 4, D)
    mask = torch.tensor([[False, False, True, True], [False] * 4])
    head = MICACLHead(D, K, num_instances=4, hidden_size=8).eval()
    lin = nn.Linear(D, K)
    cases = [
        (GEIIM(4, D), (mask,)),
        (InstanceWeights(D, hidden_size=6), (mask,)),
        (InstanceSelfAttention(D, num_heads=2), (mask,)),
        (head, (mask,)),
    ]
    for module, extra in cases:
        got = module(x.to(dtype), *extra)
        want = module(x.to(dtype).float(), *extra)
        torch.testing.assert_close(got, want, msg=type(module).__name__)
    f, _, y = _batch()
    torch.manual_seed(1)
    got = feature_augmentation_loss(f.to(dtype), y, lin)
    torch.manual_seed(1)
    want = feature_augmentation_loss(f.to(dtype).float(), y, lin)
    torch.testing.assert_close(got, want, atol=1e-2, rtol=1e-2)


def _relative_gap(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("mode", ["off", "auto", "on"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_family3_cosine_similarity_is_independent_of_scale(mode, dtype):
    """Issue example: mm(f), mm(f * 1e20), mm(f * 1e-30) gave -0.0766, -0.1359, -0.1359."""
    f, z, y = _batch()
    f = f.to(dtype)
    loss_fn = MCCLoss(K, D, COUNTS, projection_dim=None)
    tiny, huge = torch.finfo(dtype).tiny, torch.finfo(dtype).max
    scales = [1e20, 1e-30, 2.0**100, huge / float(f.abs().max()) / 2, tiny * 4]
    with config.fast_paths(mode):
        expected = loss_fn(f, z, y)
        for s in scales:
            got = loss_fn(f * s, z, y)
            assert _relative_gap(got, expected) < 1e-5, (s, got, expected)
        # The per-anchor term and its gradient: d loss(s f) / d(s f) = grad(f) / s.
        x = f.clone().requires_grad_()
        supervised_contrastive_per_anchor(x, y, 0.1)[0].sum().backward()
        for s in (2.0**70, 2.0**-70):
            xs = (f * s).requires_grad_()
            supervised_contrastive_per_anchor(xs, y, 0.1)[0].sum().backward()
            assert _relative_gap(xs.grad * s, x.grad) < 1e-5


@pytest.mark.parametrize("mode", ["off", "on"])
def test_family3_rescaled_cosine_keeps_exact_gradients(mode):
    g = torch.Generator().manual_seed(3)
    # (At unit scale: gradcheck's finite differences use an absolute step; the scale relation
    # itself is checked in test_family3_cosine_similarity_is_independent_of_scale.)
    z = torch.randn(5, 4, generator=g, dtype=torch.float64).requires_grad_()
    mem = torch.randn(3, 4, generator=g, dtype=torch.float64).requires_grad_()
    y, my = torch.tensor([0, 0, 1, 1, 2]), torch.tensor([0, 1, 2])
    with config.fast_paths(mode):
        assert torch.autograd.gradcheck(
            lambda a, m: supervised_contrastive_per_anchor(
                a, y, 0.2, memory_z=m, memory_targets=my
            )[0],
            (z, mem),
        )
        assert torch.autograd.gradcheck(
            lambda a: supervised_contrastive_per_anchor(a, y, 0.2, form="log")[0], (z,)
        )


def test_family3_projected_path_is_scale_free_too():
    # (With a projection bias the loss itself depends on the scale of the features; what must
    # hold is that the projected kernel, whose |z|^2 = x' M x' overflowed from |x| ~ 1e19,
    # agrees with the plain path there.)
    f, z, y = _batch(b=8)
    loss_fn = MCCLoss(K, D, COUNTS, projection_dim=32, scales=(1, 2))
    for s in (1e25, 1e-25, 1.0):
        with config.fast_paths("off"):
            expected = loss_fn(f * s, z, y)
        with config.fast_paths("on"):
            x = (f * s).requires_grad_()
            got = loss_fn(x, z, y)
            got.backward()
        assert _relative_gap(got, expected) < 1e-4, (s, got, expected)
        assert bool(torch.isfinite(x.grad).all())


def _nan_calls():
    """(call, argument name) pairs: each call gets a NaN in that argument."""
    f, z, y = _batch()
    x = torch.randn(2, 4, D)
    lin = nn.Linear(D, K)
    nan_f = f.clone()
    nan_f[1, 2] = float("nan")
    nan_z = z.clone()
    nan_z[2, 0] = float("inf")
    nan_x = x.clone()
    nan_x[1, 3, 0] = float("nan")
    return [
        ("MCCLoss-features", lambda: mccl()(nan_f, z, y), "features", (1, 2)),
        ("MCCLoss-logits", lambda: mccl()(f, nan_z, y), "logits", (2, 0)),
        (
            "mccl_loss",
            lambda: multiscale_category_aware_contrastive_loss(nan_f, z, y, COUNTS),
            "features",
            (1, 2),
        ),
        ("IAL", lambda: IntensityAwareLoss()(nan_z, y), "logits", (2, 0)),
        (
            "CET",
            lambda: ClassificationEnhancementTerm()(z, y, features=nan_f, classifier=lin),
            "features",
            (1, 2),
        ),
        (
            "MICACLLoss",
            lambda: MICACLLoss(K, D, COUNTS, projection_dim=4)(f, nan_z, y, classifier=lin),
            "logits",
            (2, 0),
        ),
        ("scpa", lambda: supervised_contrastive_per_anchor(nan_f, y, 0.1), "z", (1, 2)),
        ("pool_features", lambda: pool_features(nan_f, 2), "features", (1, 2)),
        ("GEIIM", lambda: GEIIM(4, D)(nan_x), "x", (1, 3, 0)),
        ("graph_propagate", lambda: graph_propagate(nan_x, torch.eye(4), 0.5), "x", (1, 3, 0)),
        ("InstanceWeights", lambda: InstanceWeights(D)(nan_x), "h", (1, 3, 0)),
        ("attention", lambda: InstanceSelfAttention(D, 2)(nan_x), "x", (1, 3, 0)),
        (
            "MICACLHead",
            lambda: MICACLHead(D, K, num_instances=4, hidden_size=8)(nan_x),
            "x",
            (1, 3, 0),
        ),
        ("ConfusionMatrix", lambda: ConfusionMatrix(K).update(nan_z, y), "preds_or_logits", (2, 0)),
    ]


@pytest.mark.parametrize(
    ("call", "name", "index"), [c[1:] for c in _nan_calls()], ids=[c[0] for c in _nan_calls()]
)
def test_family4_check_finite_names_the_argument_and_first_bad_index(call, name, index):
    """Issue example: a NaN or inf in features, logits or weights gave a silent NaN."""
    with config.check_finite(), pytest.raises(ValueError) as info:
        call()
    assert f"`{name}` holds" in str(info.value) and f"at index {index}" in str(info.value)
    assert not config.get_check_finite()  # the context manager restored the default


def test_family4_check_finite_is_off_by_default_and_checks_parameters():
    f, z, y = _batch()
    nan_f = f.clone()
    nan_f[0, 0] = float("nan")
    assert not config.get_check_finite()
    assert bool(torch.isnan(mccl()(nan_f, z, y)))  # documented: off, NaN propagates
    geiim = GEIIM(4, D)
    with torch.no_grad():
        geiim.node_src[2, 1] = float("inf")
    with (
        config.check_finite(),
        pytest.raises(
            ValueError,
            match=r"`GEIIM.node_src` holds inf "
            r"at index \(2, 1\)",
        ),
    ):
        geiim(torch.randn(2, 4, D))
    previous = config.get_check_finite()
    config.set_check_finite(True)
    try:
        with pytest.raises(ValueError, match="`logits` holds"):
            IntensityAwareLoss()(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]))
    finally:
        config.set_check_finite(previous)
    with pytest.raises(TypeError, match="`enabled` must be a bool"):
        config.set_check_finite("yes")


@pytest.mark.parametrize(
    ("make", "call", "name"),
    [
        (lambda: WIAN(D, 6), lambda m: m(torch.randn(3, 2, D)), "WIAN.weight_hh_l0"),
        (lambda: WIANCell(D, 6), lambda m: m(torch.randn(2, D)), "WIANCell.weight_hh"),
        (
            lambda: InstanceWeights(D, 6),
            lambda m: m(torch.randn(2, 4, D)),
            "InstanceWeights.proj.weight",
        ),
    ],
    ids=["WIAN", "WIANCell", "InstanceWeights"],
)
def test_family4_check_finite_checks_the_recurrent_layers_parameters(make, call, name):
    """With the check on, a NaN parameter of these layers gave a silent NaN output (WIAN,
    WIANCell) or was reported in a tensor the caller never passed (InstanceWeights' `h`)."""
    module = make()
    parameter = dict(module.named_parameters())[name.split(".", 1)[1]]
    with torch.no_grad():
        parameter.view(-1)[1] = float("nan")
    with config.check_finite(), pytest.raises(ValueError, match=f"`{name}` holds nan"):
        call(module)


@pytest.mark.parametrize(
    ("value", "expected"), [("1", True), ("true", True), (" On ", True), ("0", False), ("", False)]
)
def test_family4_environment_variable_gives_the_start_value(value, expected, monkeypatch):
    monkeypatch.setenv(config.CHECK_FINITE_ENV_VAR, value)
    assert config._check_finite_from_environment() is expected
    monkeypatch.setenv(config.CHECK_FINITE_ENV_VAR, "maybe")
    with pytest.raises(ValueError, match=config.CHECK_FINITE_ENV_VAR):
        config._check_finite_from_environment()


def test_family4_import_reads_the_environment_variable():
    env = {**os.environ, config.CHECK_FINITE_ENV_VAR: "1"}
    code = "from micacl_layers import config; print(config.get_check_finite())"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "True"


def _meta_cases():
    meta = torch.device("meta")
    f, z, y = (t.to(meta) for t in _batch())
    x = torch.randn(2, 4, D, device=meta)
    mask = torch.zeros(2, 4, dtype=torch.bool, device=meta)
    lin = nn.Linear(D, K, device=meta)
    return [
        ("MCCLoss", lambda: MCCLoss(K, D, COUNTS, projection_dim=4, device=meta)(f, z, y), ()),
        (
            "MCCLoss-running-counts-memory",
            lambda: MCCLoss(K, D, projection_dim=4, memory_size=8, device=meta)(f, z, y),
            (),
        ),
        ("IAL", lambda: IntensityAwareLoss()(z, y), ()),
        ("CET", lambda: ClassificationEnhancementTerm()(z, y, features=f, classifier=lin), ()),
        (
            "MICACLLoss",
            lambda: MICACLLoss(K, D, COUNTS, projection_dim=4, device=meta)(
                f, z, y, classifier=lin
            ),
            (),
        ),
        ("GEIIM", lambda: GEIIM(4, D, device=meta)(x, mask), (2, 4, D)),
        ("InstanceWeights", lambda: InstanceWeights(D, 6, device=meta)(x, mask), (2, 4, 6)),
        ("attention", lambda: InstanceSelfAttention(D, 2, device=meta)(x, mask), (2, 4, D)),
        ("scpa", lambda: supervised_contrastive_per_anchor(f, y, 0.1)[0], (6,)),
        # The balanced options read values (class sizes, the weights' batch mean): skipped on
        # meta, where `.item()` and bincount's size raised.
        (
            "scpa-class-average",
            lambda: supervised_contrastive_per_anchor(f, y, 0.1, class_average=True)[0],
            (6,),
        ),
        *(
            (
                f"MCCLoss-{name}",
                lambda options=options: MCCLoss(
                    K, D, COUNTS, projection_dim=4, device=meta, **options
                )(f, z, y, prototypes=lin.weight if options.get("class_complements") else None),
                (),
            )
            for name, options in (
                ("class-average", {"class_average": True}),
                ("weight-norm-batch", {"weight_norm": "batch"}),
                (
                    "bcl",
                    {"class_average": True, "class_complements": True, "weight_norm": "batch"},
                ),
            )
        ),
        (
            "MICACLLoss-balanced-preset",
            lambda: MICACLLoss.from_preset("balanced", K, D, COUNTS, projection_dim=4, device=meta)(
                f, z, y, classifier=lin
            ),
            (),
        ),
        (
            "mccl-fn-meta-counts",
            lambda: call_mccl_fn(
                features=f, logits=z, targets=y, class_counts=torch.tensor(COUNTS, device=meta)
            ),
            (),
        ),
        (
            "LogitAdjustedLoss-meta-counts",
            lambda: LogitAdjustedLoss(torch.tensor([5, 3, 2], device=meta))(z, y),
            (),
        ),
    ]


@pytest.mark.parametrize(
    ("call", "shape"), [c[1:] for c in _meta_cases()], ids=[c[0] for c in _meta_cases()]
)
def test_family5_meta_device_forward_gives_shapes(call, shape):
    """Issue example: `.item()` on meta, "unknown device type for autocast", `nonzero`."""
    out = call()
    assert out.is_meta and tuple(out.shape) == shape


@pytest.mark.parametrize("aggregator", ["lstm", "conv1d"])
def test_family5_meta_head(aggregator):
    with torch.device("meta"):
        head = MICACLHead(D, K, num_instances=4, hidden_size=8, aggregator=aggregator)
        logits, feature = head(torch.randn(2, 4, D), torch.zeros(2, 4, dtype=torch.bool))
    assert logits.is_meta and tuple(logits.shape) == (2, K) and feature.shape[0] == 2


@pytest.mark.parametrize("aggregator", ["wian", "lstm", "conv1d"])
def test_family6_head_without_geiim_rejects_a_fully_padded_clip(aggregator):
    """Issue example: MICACLHead(use_geiim=False) with a fully padded clip gave NaN logits."""
    head = MICACLHead(
        D, K, num_instances=4, hidden_size=8, use_geiim=False, aggregator=aggregator
    ).eval()
    x = torch.randn(2, 4, D)
    with pytest.raises(ValueError, match="`padding_mask` marks every instance"):
        head(x, torch.tensor([[True] * 4, [False] * 4]))
    logits, _ = head(x, torch.tensor([[True, True, True, False], [False] * 4]))
    assert bool(torch.isfinite(logits).all())


def test_family7_micacl_loss_checks_features_before_calling_the_classifier():
    """Issue example: MICACLLoss ran the classifier first (torch's matmul error)."""
    calls = []

    def classifier(t):
        calls.append(t.shape)
        return nn.functional.linear(t, torch.zeros(K, D))

    f, z, y = _batch()
    with pytest.raises(ValueError, match="`features` must have shape .* D=8"):
        MICACLLoss(K, D, COUNTS, projection_dim=4)(f[:, :6], z, y, classifier=classifier)
    assert calls == []


def test_family7_cet_classifier_with_another_class_count_and_tau0_inf():
    f, z, y = _batch()
    with pytest.raises(ValueError, match="`classifier` must map `features`.*K=3"):
        ClassificationEnhancementTerm()(z, y, features=f, classifier=nn.Linear(D, 5))
    for make in (
        lambda: MCCLoss(K, D, tau0=float("inf")),
        lambda: adaptive_temperature(torch.tensor([1.0, 2.0]), float("inf")),
        lambda: call_mccl_fn(tau0=float("inf")),
        lambda: MCCLoss(K, D, tau0=float("nan")),
    ):
        with pytest.raises(ValueError, match="`tau0` must be a positive float"):
            make()


FUNCTIONAL_CASES = [
    (
        "scpa-temperature-0",
        lambda: supervised_contrastive_per_anchor(feats(B, D), targets(), 0.0),
        ValueError,
        "`temperature`",
    ),
    (
        "scpa-temperature-negative",
        lambda: supervised_contrastive_per_anchor(feats(B, D), targets(), -1.0),
        ValueError,
        "`temperature`",
    ),
    (
        "scpa-temperature-tensor-nan",
        lambda: supervised_contrastive_per_anchor(
            feats(B, D), targets(), torch.tensor(float("nan"))
        ),
        ValueError,
        "`temperature`",
    ),
    (
        "scpa-float-targets",
        lambda: supervised_contrastive_per_anchor(feats(B, D), targets().float(), 0.1),
        TypeError,
        "`targets`",
    ),
    (
        "scpa-memory-without-targets",
        lambda: supervised_contrastive_per_anchor(
            feats(B, D), targets(), 0.1, memory_z=feats(3, D)
        ),
        ValueError,
        "`memory_targets`",
    ),
    (
        "scpa-memory-size",
        lambda: supervised_contrastive_per_anchor(
            feats(B, D), targets(), 0.1, memory_z=feats(3, D + 1), memory_targets=targets(0, 1, 2)
        ),
        ValueError,
        "`memory_z`",
    ),
    (
        "scpa-batch",
        lambda: supervised_contrastive_per_anchor(feats(B, D), targets(0, 1), 0.1),
        ValueError,
        "batch sizes differ",
    ),
    ("pool-scale-too-big", lambda: pool_features(feats(2, 4), 8), ValueError, "`scale`"),
    ("pool-scale-zero", lambda: pool_features(feats(2, 4), 0), ValueError, "`scale`"),
    ("pool-features-1d", lambda: pool_features(feats(4), 2), ValueError, "`features`"),
    (
        "graph-adjacency-size",
        lambda: graph_propagate(feats(2, 4, D), torch.eye(3), 0.3),
        ValueError,
        "`adjacency`",
    ),
    (
        "graph-alpha",
        lambda: graph_propagate(feats(2, 4, D), torch.eye(4), 1.5),
        ValueError,
        "`alpha`",
    ),
    (
        "adjacency-all-padded",
        lambda: instance_adjacency(
            feats(4, 3), feats(3, 4), padding_mask=torch.ones(2, 4, dtype=torch.bool)
        ),
        ValueError,
        "`padding_mask` marks every instance",
    ),
    (
        "adjacency-shapes",
        lambda: instance_adjacency(feats(4, 3), feats(4, 3)),
        ValueError,
        "`node_dst`",
    ),
    (
        "weights-counts-shape",
        lambda: category_aware_weights(feats(B, K), targets(), torch.tensor([1.0, 2.0])),
        ValueError,
        "`class_counts`",
    ),
    (
        "weights-counts-string",
        lambda: category_aware_weights(feats(B, K), targets(), "abc"),
        TypeError,
        "`class_counts`",
    ),
    (
        "temperature-counts-nan",
        lambda: adaptive_temperature(torch.tensor([1.0, float("nan")]), 0.1),
        ValueError,
        "`class_counts`",
    ),
    (
        "aug-classifier-not-callable",
        lambda: feature_augmentation_loss(feats(B, D), targets(), 3),
        TypeError,
        "`classifier`",
    ),
]


@pytest.mark.parametrize(
    ("make", "exc", "match"),
    [c[1:] for c in FUNCTIONAL_CASES],
    ids=[c[0] for c in FUNCTIONAL_CASES],
)
def test_family8_functional_forms_check_like_the_modules(make, exc, match):
    """Issue example: temperature 0 gave NaN, pool_features(x, 8) on 4 features an empty
    tensor, a wrong-sized adjacency torch's bmm error, ..."""
    with pytest.raises(exc, match=match):
        make()


def test_family9_contrast_memory_push_checks_and_never_loses_a_valid_entry():
    mem = ContrastMemory(4, dims=(3,))
    with pytest.raises(ValueError, match=r"`embeddings\[0\]` must have shape"):
        mem.push([torch.randn(1, 3)], torch.tensor([0, 1]))  # was copied twice
    with pytest.raises(ValueError, match="`dims` must be a positive int"):
        ContrastMemory(4, dims=(0,))
    with pytest.raises(TypeError, match="`targets` must hold integer"):
        mem.push([torch.randn(2, 3)], torch.tensor([0.0, 1.0]))
    mem = ContrastMemory(2, dims=(3,))
    first = torch.randn(2, 3)
    mem.push([first], torch.tensor([0, 1]))
    mem.push([torch.randn(1, 3)], torch.tensor([-100]))  # was: wrote over entry 0
    feats_, labels = mem.get()
    assert labels.tolist() == [0, 1] and torch.equal(feats_[0], first)
    mem.push([torch.randn(3, 3)], torch.tensor([2, -100, 1]))
    assert sorted(mem.get()[1].tolist()) == [1, 2] and len(mem) == 2


def test_family10_small_ones(tmp_path):
    with pytest.raises(TypeError, match="`obj` must be a mapping"):
        save_checkpoint([1, 2], tmp_path / "a.pt")
    assert not list(tmp_path.iterdir())
    with pytest.raises(CheckpointError, match=r"must be tensors but are not: \['weight: int'\]"):
        load_state_dict_checked(nn.Linear(2, 3), {"weight": 1, "bias": torch.zeros(3)})
    with pytest.raises(TypeError, match="`class_counts` must be a sequence of numbers"):
        MCCLoss(K, D, class_counts="abc")
    with pytest.raises(TypeError, match="`class_counts` must be a sequence of numbers"):
        MCCLoss(K, D, class_counts=[1, "x", 2])


@pytest.mark.parametrize(
    "make",
    [
        lambda: mccl(),
        lambda: GEIIM(4, D),
        lambda: MICACLLoss(K, D),
        lambda: ClassificationEnhancementTerm(),
        lambda: ContrastMemory(4, dims=(3,)),
        lambda: MICACLHead(D, K, num_instances=4, hidden_size=8),
        lambda: WIAN(D, 4),
        lambda: WIANCell(D, 4),
        # (these four and the bare head gave TorchScript's own error, or a NotSupportedError
        # that is no RuntimeError, before they said so themselves)
        lambda: InstanceWeights(D, 4),
        lambda: InstanceSelfAttention(D, num_heads=2),
        lambda: LogitAdjustedLoss([5] * K),
        lambda: IntensityAwareLoss(),
        lambda: MICACLHead(
            D,
            K,
            num_instances=4,
            hidden_size=8,
            use_geiim=False,
            aggregator="lstm",
            attention_heads=0,
        ),
        lambda: MICACL(K, backbone="tiny", tiny_dim=8, hidden_size=4),
    ],
    ids=[
        "MCCLoss",
        "GEIIM",
        "MICACLLoss",
        "CET",
        "ContrastMemory",
        "MICACLHead",
        "WIAN",
        "WIANCell",
        "InstanceWeights",
        "InstanceSelfAttention",
        "LogitAdjustedLoss",
        "IntensityAwareLoss",
        "MICACLHead-bare",
        "MICACL",
    ],
)
def test_family10_torchscript_raises_our_clear_error(make):
    with pytest.raises(RuntimeError, match="does not support TorchScript.*torch.compile"):
        torch.jit.script(make())


def test_shared_positive_int_and_describe():
    from micacl_layers._validation import check_positive_int, describe
    from micacl_layers.metrics import confusion_matrix

    assert check_positive_int("n", torch.tensor(3).numpy()[()]) == 3  # a NumPy integer
    for bad in (0, -1, True, 2.0, "3"):
        with pytest.raises(ValueError, match="`n` must be a positive int"):
            check_positive_int("n", bad)
    assert describe(torch.zeros(2, 3)) == "shape=(2, 3), dtype=torch.float32"
    with pytest.raises(ValueError, match="`num_classes` must be a positive int, got 0"):
        confusion_matrix(targets(), targets(), 0)


def test_positive_int_takes_zero_dim_integer_tensors_only():
    from micacl_layers._validation import check_positive_int

    assert check_positive_int("n", torch.tensor(3)) == 3
    assert type(check_positive_int("n", torch.tensor(3, dtype=torch.uint8))) is int
    bad = [
        torch.tensor(True),
        torch.tensor([3]),
        torch.tensor([[3]]),
        torch.tensor(3.0),
        torch.tensor(0),
        torch.empty((), dtype=torch.long, device="meta"),
    ]
    for value in bad:
        with pytest.raises(ValueError, match="`n` must be a positive int"):
            check_positive_int("n", value)
    # The samplers' convention: a value that is no integer is a TypeError, a small one is not.
    for value in (2.0, True, torch.tensor([3]), "3"):
        with pytest.raises(TypeError, match="`n` must be a positive int"):
            check_positive_int("n", value, type_error=True)
    with pytest.raises(ValueError, match="`n` must be a positive int"):
        check_positive_int("n", 0, type_error=True)


def test_integer_arguments_are_stored_as_int_whatever_integer_type_was_given():
    from micacl_layers import MCCLoss
    from micacl_layers.attention import InstanceSelfAttention
    from micacl_layers.models import MICACL

    att = InstanceSelfAttention(torch.tensor(8), torch.tensor(2))
    assert type(att.embed_dim) is int
    mccl = MCCLoss(3, 8, projection_dim=torch.tensor(4), memory_size=torch.tensor(4).numpy()[()])
    assert type(mccl.projection_dim) is int and mccl.memory is not None
    assert mccl.memory.size == 4 and type(mccl.memory.size) is int
    assert MCCLoss(3, 8, scales=(torch.tensor(1).numpy()[()], 2)).scales == (1, 2)
    model = MICACL(
        7, backbone="tiny", num_frames=torch.tensor(8), num_instances=torch.tensor(2), tiny_dim=16
    )
    assert type(model.num_frames) is int


def test_mccl_checks_projection_dim_before_class_counts():
    from micacl_layers import MCCLoss

    with pytest.raises(ValueError, match="`projection_dim` must be a positive int"):
        MCCLoss(3, 8, class_counts=[1, 2], projection_dim=0)


def test_mccl_option_keywords_match_the_options_fields():
    # MCCLoss and the functional form build MCCLOptions from their keywords of the same names:
    # every field must be a keyword of both, with the field's default.
    import dataclasses
    import inspect

    from micacl_layers.mccl import MCCLOptions, MCCLoss, multiscale_category_aware_contrastive_loss

    for fn in (MCCLoss.__init__, multiscale_category_aware_contrastive_loss):
        params = inspect.signature(fn).parameters
        for field in dataclasses.fields(MCCLOptions):
            assert field.name in params, (fn, field.name)
            assert params[field.name].default == field.default, (fn, field.name)


@pytest.mark.parametrize("value", [0, 1, 0.25, np.float32(0.5)])
def test_check_unit_interval_returns_a_float(value):
    from micacl_layers._validation import check_unit_interval

    got = check_unit_interval("dropout", value)
    assert type(got) is float and got == float(value)


@pytest.mark.parametrize(
    "value",
    [
        *(True, float("nan"), "0.1", -0.1, 1.5, None, float("inf")),
        pytest.param(10**400, id="huge-int"),
        pytest.param(-(10**400), id="huge-negative-int"),
    ],
)
def test_check_unit_interval_names_the_argument(value):
    # (An int too large for a float raised OverflowError from float(), naming nothing; the
    # label_smoothing checks it replaced compared it as it is.)
    from micacl_layers._validation import check_unit_interval

    with pytest.raises(ValueError, match=r"^`label_smoothing` must be a number in \[0, 1\], got "):
        check_unit_interval("label_smoothing", value)


def test_batch_check_under_jit_trace_compares_the_sizes_as_numbers():
    # Traced sizes are tensors, which a set never merges: tracing MCCLoss raised "batch sizes
    # differ: `logits` has 6, `targets` has 6".
    import warnings

    mccl = MCCLoss(3, 8, [5, 3, 1], projection_dim=4)
    f, z, y = torch.randn(6, 8), torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's TracerWarnings
        traced = torch.jit.trace(mccl, (f, z, y))
    torch.testing.assert_close(traced(f, z, y), mccl(f, z, y))
