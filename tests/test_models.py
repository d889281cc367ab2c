"""MICACLHead, MICACL and the backbones: shapes, batch size 1, local weights, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from micacl_layers.models import MICACL, MICACLHead, TinyVideoBackbone, r3d18_backbone
from tests.conftest import randn, random_padding_mask, seeds

pytest.importorskip("torchvision")


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("aggregator", ["wian", "lstm", "conv1d"])
def test_head_shapes(batch, aggregator):
    head = MICACLHead(
        24,
        7,
        num_instances=4,
        hidden_size=8,
        aggregator=aggregator,
        use_geiim=aggregator != "conv1d",
        attention_heads=2,
    )
    logits, feature = head(torch.randn(batch, 4, 24))
    assert logits.shape == (batch, 7)
    assert feature.shape == (batch, head.feature_dim)
    assert head.classifier(feature).shape == (batch, 7)


@pytest.mark.parametrize("aggregator", ["wian", "lstm", "conv1d"])
def test_head_empty_batch_with_padding_mask(aggregator):
    head = MICACLHead(8, 3, num_instances=4, hidden_size=8, aggregator=aggregator).eval()
    logits, feature = head(torch.randn(0, 4, 8), torch.zeros(0, 4, dtype=torch.bool))
    assert logits.shape == (0, 3) and feature.shape == (0, head.feature_dim)


def test_head_padding_mask_excludes_padded_instances_from_the_clip_feature():
    torch.manual_seed(0)
    head = MICACLHead(
        16, 5, num_instances=4, hidden_size=8, bidirectional=False, attention_heads=0
    ).eval()
    x = torch.randn(2, 4, 16)
    mask = torch.tensor([[False, False, False, True], [False, False, False, False]])
    y = x.clone()
    y[0, 3] = 100.0  # a padded instance, changed
    # A unidirectional recurrence never lets the last step reach earlier ones, so with the
    # padded instance last and excluded from pooling the clip feature must not move.
    a = head(x, mask)[1]
    b = head(y, mask)[1]
    torch.testing.assert_close(a[0], b[0])


_PADDINGS = [
    [False, False, True, True],  # at the end
    [True, False, False, False],  # at the start
    [False, True, True, False],  # between real instances
    [True, False, True, False],  # scattered
]


@pytest.mark.parametrize("value", [100.0, math.nan])
@pytest.mark.parametrize("padded", _PADDINGS)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("aggregator", ["wian", "lstm", "conv1d"])
def test_head_padded_instances_never_reach_the_logits(aggregator, bidirectional, padded, value):
    # What the docs promise: whatever a padded instance holds (NaN from torch.empty included)
    # and wherever it sits, the logits and the clip feature do not move, and it gets no
    # gradient.
    torch.manual_seed(0)
    head = MICACLHead(
        16,
        5,
        num_instances=4,
        hidden_size=8,
        num_layers=2,
        aggregator=aggregator,
        bidirectional=bidirectional,
        dropout=0.0,
    ).eval()
    x = torch.randn(2, 4, 16)
    mask = torch.tensor([padded, [False] * 4])
    y = x.clone().requires_grad_()
    with torch.no_grad():
        y[0, torch.tensor(padded)] = value
    logits, feature = head(y, mask)
    expected = head(x, mask)
    torch.testing.assert_close(logits, expected[0])
    torch.testing.assert_close(feature, expected[1])
    logits.sum().backward()
    assert bool((y.grad[mask] == 0).all()) and bool(y.grad[~mask].abs().sum() > 0)


@pytest.mark.parametrize("hidden_size", [8, 16])  # 8: InstanceWeights projects 16 -> 8
@pytest.mark.parametrize("use_geiim", [False, True])
@pytest.mark.parametrize(
    "weight_mode", ["instance_softmax", "channel_softmax", "scaled_channel_softmax"]
)
def test_head_nan_padding_gives_no_nan_gradient(weight_mode, use_geiim, hidden_size):
    # The instance weights are computed from every slot: a NaN padded slot, though its weight
    # is masked to 0, made the gradient of the weights' projection (and, through the channel
    # softmax, of the padding itself) NaN, and one optimiser step would make the model NaN.
    torch.manual_seed(0)
    head = MICACLHead(
        16,
        5,
        num_instances=4,
        hidden_size=hidden_size,
        weight_mode=weight_mode,
        use_geiim=use_geiim,
        attention_heads=2,
    )
    mask = torch.tensor([[False, True, False, True], [False] * 4])
    x = torch.randn(2, 4, 16)
    x[mask] = math.nan
    x.requires_grad_()
    logits, feature = head(x, mask)
    (logits.sum() + feature.sum()).backward()
    assert bool((x.grad[mask] == 0).all()) and bool(x.grad[~mask].isfinite().all())
    for name, parameter in head.named_parameters():
        assert parameter.grad is not None and bool(parameter.grad.isfinite().all()), name


@given(
    batch=st.integers(1, 3),
    steps=st.integers(1, 6),
    aggregator=st.sampled_from(["wian", "lstm", "conv1d"]),
    bidirectional=st.booleans(),
    seed=seeds,
)
def test_head_is_blind_to_padding_property(batch, steps, aggregator, bidirectional, seed):
    torch.manual_seed(seed)
    head = MICACLHead(
        4,
        3,
        num_instances=steps,
        hidden_size=4,
        aggregator=aggregator,
        bidirectional=bidirectional,
        attention_heads=2,
    ).double()
    head.eval()  # (dropout)
    mask = random_padding_mask(batch, steps, seed=seed)
    x = randn(batch, steps, 4, seed=seed, dtype=torch.float64).requires_grad_()
    logits, feature = head(x, mask)
    x2 = x.detach().clone()
    x2[mask] = randn(int(mask.sum()), 4, seed=seed + 1, dtype=torch.float64, scale=100.0)
    torch.testing.assert_close(head(x2, mask)[0], logits)
    (logits.sum() + feature.sum()).backward()
    assert bool((x.grad[mask] == 0).all())


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("aggregator", ["wian", "lstm", "conv1d"])
def test_head_aggregator_reads_the_real_instances_alone_in_order(aggregator, bidirectional):
    # A padded clip is aggregated as the shorter clip of its real instances (as nn.LSTM does
    # with a PackedSequence), wherever the padding sits.
    torch.manual_seed(0)
    head = MICACLHead(
        6,
        3,
        num_instances=5,
        hidden_size=4,
        num_layers=2,
        aggregator=aggregator,
        bidirectional=bidirectional,
        use_geiim=False,
        attention_heads=0,
        dropout=0.0,
    ).double()
    x = torch.randn(3, 5, 6, dtype=torch.float64)
    mask = torch.tensor(
        [[False, True, False, True, False], [True, True, False, False, False], [False] * 5]
    )
    feature = head(x, mask)[1]
    for b in range(3):
        real = ~mask[b]
        clip = x[b : b + 1, real]
        if aggregator == "wian":
            weights = head.instance_weights(x, mask)[b : b + 1, real]
            seq = head.aggregator(clip, weights=weights)[0]
        elif aggregator == "lstm":
            seq = head.aggregator(clip)[0]
        else:
            seq = head.aggregator(clip)
        torch.testing.assert_close(feature[b], seq.mean(dim=1)[0])


def test_head_rejects_wrong_instances():
    head = MICACLHead(16, 5, num_instances=4, hidden_size=8)
    with pytest.raises(ValueError, match="num_instances|\\(B, 4, 16\\)"):
        head(torch.randn(2, 3, 16))


@pytest.mark.parametrize("batch", [1, 3])
def test_micacl_tiny_shapes(batch):
    model = MICACL(7, backbone="tiny", tiny_dim=16, hidden_size=8)
    logits, feature = model(torch.rand(batch, 3, 16, 24, 24))
    assert logits.shape == (batch, 7) and feature.shape == (batch, 16)
    logits.sum().backward()


@pytest.mark.parametrize("batch", [1, 3])
def test_micacl_r3d18_shapes(batch):
    model = MICACL(7, backbone="r3d_18", hidden_size=8).eval()
    with torch.no_grad():
        logits, feature = model(torch.rand(batch, 3, 16, 32, 32))
    assert logits.shape == (batch, 7) and feature.shape == (batch, 16)


def test_micacl_splits_frames_into_consecutive_instances():
    model = MICACL(7, backbone="tiny", tiny_dim=8, hidden_size=4, normalize=False)
    seen = []
    model.backbone = _Recorder(seen)
    clip = torch.arange(16.0).view(1, 1, 16, 1, 1).expand(1, 3, 16, 2, 2).contiguous()
    model.instance_features(clip)
    frames = seen[0][:, 0, :, 0, 0]  # (instances, frames per instance)
    assert frames.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]


class _Recorder(nn.Module):
    def __init__(self, seen):
        super().__init__()
        self.seen = seen

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return torch.zeros(x.shape[0], 8)


def test_micacl_normalises_with_kinetics_statistics():
    model = MICACL(7, backbone="tiny", tiny_dim=8, hidden_size=4)
    seen = []
    model.backbone = _Recorder(seen)
    mean = torch.tensor([0.43216, 0.394666, 0.37645]).view(1, 3, 1, 1, 1)
    model.instance_features(mean.expand(1, 3, 16, 2, 2).contiguous())
    assert seen[0].abs().max() < 1e-6


def test_r3d18_weights_load_from_a_local_file(tmp_path):
    torch.manual_seed(0)
    reference = r3d18_backbone()
    state = {f"{k}": v for k, v in reference.state_dict().items()}
    state["fc.weight"] = torch.randn(400, 512)  # the Kinetics classifier is present and ignored
    state["fc.bias"] = torch.randn(400)
    path = tmp_path / "r3d_18.pth"
    torch.save(state, path)
    torch.manual_seed(1)
    loaded = r3d18_backbone(path)
    ref_state, got_state = reference.state_dict(), loaded.state_dict()
    assert ref_state.keys() == got_state.keys()
    for name in ref_state:
        assert torch.equal(ref_state[name], got_state[name]), name
    model = MICACL(7, backbone="r3d_18", backbone_weights=path, hidden_size=8)
    torch.testing.assert_close(model.backbone.stem[0].weight, reference.stem[0].weight)


def test_r3d18_missing_weights_file_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="download.pytorch.org"):
        r3d18_backbone(tmp_path / "nope.pth")


def test_r3d18_rejects_a_foreign_state_dict(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(nn.Linear(3, 3).state_dict(), path)
    with pytest.raises(ValueError, match="not an R3D-18 state dict"):
        r3d18_backbone(path)


def test_tiny_backbone_shape():
    assert TinyVideoBackbone(12)(torch.randn(2, 3, 4, 16, 16)).shape == (2, 12)


def test_micacl_rejects_bad_options_and_inputs():
    with pytest.raises(ValueError, match="num_instances"):
        MICACL(7, backbone="tiny", num_frames=16, num_instances=5)
    with pytest.raises(ValueError, match="backbone"):
        MICACL(7, backbone="resnet")
    model = MICACL(7, backbone="tiny", tiny_dim=8, hidden_size=4)
    with pytest.raises(ValueError, match="clip"):
        model(torch.rand(1, 3, 8, 16, 16))


def test_micacl_empty_batch():
    # An empty batch failed in view(b, t, -1): a -1 is ambiguous with 0 elements.
    torch.manual_seed(0)
    model = MICACL(7, backbone="tiny", num_frames=4, num_instances=2, tiny_dim=16)
    logits, feature = model(torch.randn(0, 3, 4, 16, 16))
    assert logits.shape == (0, 7)
    assert feature.shape == (0, model.feature_dim)


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (
            lambda: MICACL(7, backbone="tiny", normalize="no"),
            TypeError,
            "`normalize` must be a bool",
        ),
        (lambda: MICACL(7, backbone="tiny", tiny_dim=16.0), ValueError, "`tiny_dim` must be"),
        (lambda: TinyVideoBackbone(0), ValueError, "`out_dim` must be a positive int"),
        (lambda: TinyVideoBackbone(8, width=0), ValueError, "`width` must be a positive int"),
        (
            lambda: TinyVideoBackbone(8, normalize_input="yes"),
            TypeError,
            "`normalize_input` must be a bool",
        ),
    ],
)
def test_models_reject_bad_options_by_name(build, error, match):
    # They were accepted silently ("no" is truthy, width=0 built empty layers) or failed in torch.
    with pytest.raises(error, match=match):
        build()


def test_micacl_runs_float64_and_float16_clips_in_its_parameter_dtype():
    # They failed inside conv3d ("expected scalar type Double but found Float"); the head
    # already ran other floating dtypes in its parameter dtype, as autocast would.
    torch.manual_seed(0)
    model = MICACL(7, backbone="tiny", num_frames=4, num_instances=2, tiny_dim=16).eval()
    clip = torch.rand(2, 3, 4, 16, 16)
    logits, _ = model(clip)
    logits64, _ = model(clip.double())
    assert logits64.dtype == torch.float32
    torch.testing.assert_close(logits64, logits)
    logits16, _ = model(clip.half())
    assert logits16.dtype == torch.float32
    torch.testing.assert_close(logits16, model(clip.half().float())[0])


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"bidirectional": "no"}, TypeError, "`bidirectional` must be a bool, got 'no'"),
        ({"bidirectional": 0.5, "aggregator": "lstm"}, TypeError, "`bidirectional` must be a bool"),
        ({"use_geiim": "no"}, TypeError, "`use_geiim` must be a bool, got 'no'"),
    ],
)
def test_head_rejects_non_bool_switches(options, error, match):
    # "no" is truthy: a bidirectional WIAN (or an nn.LSTM showing bidirectional=no) and a GEIIM
    # were built silently.
    with pytest.raises(error, match=match):
        MICACLHead(8, 3, num_instances=4, hidden_size=6, **options)


@pytest.mark.parametrize("hidden_size", [0, True, 2.0])
def test_head_conv1d_checks_hidden_size(hidden_size):
    # The conv1d aggregator never checked it: 0 built an empty Conv1d and a classifier on zero
    # features, True failed inside torch.empty.
    with pytest.raises(ValueError, match="`hidden_size` must be a positive int"):
        MICACLHead(8, 3, num_instances=4, hidden_size=hidden_size, aggregator="conv1d")


def test_micacl_names_a_clip_on_another_device():
    # It failed inside conv3d ("Tensor on device meta is not on the expected device cpu!").
    model = MICACL(7, backbone="tiny", num_frames=4, num_instances=2, tiny_dim=8, hidden_size=4)
    with pytest.raises(ValueError, match=r"`clip` must be on the device of the MICACL's"):
        model(torch.rand(1, 3, 4, 8, 8, device="meta"))
    with pytest.raises(ValueError, match=r"`clip` must be on the device of the MICACL's"):
        model.to("meta").instance_features(torch.rand(1, 3, 4, 8, 8))


@pytest.mark.parametrize(
    ("clip", "error", "match"),
    [
        (torch.rand(3, 4, 8, 8), ValueError, r"`x` must have shape \(N, 3, F, H, W\)"),
        (torch.rand(2, 1, 4, 8, 8), ValueError, r"`x` must have shape \(N, 3, F, H, W\)"),
        (torch.ones(2, 3, 4, 8, 8, dtype=torch.long), TypeError, "`x` must be a floating"),
        (torch.rand(2, 3, 4, 8, 8, device="meta"), ValueError, "`x` must be on the device"),
    ],
)
def test_tiny_backbone_names_bad_inputs(clip, error, match):
    # They failed inside batch_norm/conv3d ("expected 5D input", "not implemented for 'Long'").
    with pytest.raises(error, match=match):
        TinyVideoBackbone(8)(clip)


def test_tiny_backbone_runs_other_floating_dtypes_in_its_parameter_dtype():
    # A float32 clip into a float16 backbone failed in conv3d ("expected scalar type").
    torch.manual_seed(0)
    net = TinyVideoBackbone(8).eval()
    clip = torch.rand(2, 3, 4, 8, 8)
    out = net.double()(clip)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, net(clip.double()))


@pytest.mark.parametrize("num_layers", [0, "2", 1.5])
def test_head_conv1d_checks_num_layers(num_layers):
    # The conv1d aggregator ignores it, and nothing else checked it: any value was accepted.
    with pytest.raises(ValueError, match="`num_layers` must be a positive int"):
        MICACLHead(8, 3, num_instances=4, hidden_size=6, num_layers=num_layers, aggregator="conv1d")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"kernel_sizes": (2,)}, "`kernel_sizes` must hold odd positive ints"),
        ({"node_dim": 0}, "`node_dim` must be a positive int"),
    ],
)
def test_head_without_geiim_still_checks_its_options(options, match):
    # They were accepted silently with use_geiim=False (weight_mode is checked for every
    # aggregator, GEIIM's dropout without the stage it applies to).
    with pytest.raises(ValueError, match=match):
        MICACLHead(8, 3, num_instances=4, hidden_size=6, use_geiim=False, **options)
