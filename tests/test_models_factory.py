"""MICACLHead and MICACL take ``device=``/``dtype=`` as every torch layer and our parts do."""

from __future__ import annotations

import pytest
import torch

from micacl_layers.models import MICACL, MICACLHead, TinyVideoBackbone

AGGREGATORS = ["wian", "lstm", "conv1d"]


def _head(**options):
    return MICACLHead(8, 3, num_instances=4, hidden_size=4, **options)


def _tiny(**options):
    return MICACL(
        7, backbone="tiny", num_frames=4, num_instances=2, tiny_dim=8, hidden_size=4, **options
    )


def _floating_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # (BatchNorm's num_batches_tracked is a long counter in torch's own layers too.)
    tensors = dict(module.named_parameters()) | dict(module.named_buffers())
    return {name: t for name, t in tensors.items() if t.is_floating_point()}


@pytest.mark.parametrize("aggregator", AGGREGATORS)
def test_head_built_in_float64_runs_float64(aggregator):
    head = _head(aggregator=aggregator, dtype=torch.float64)
    tensors = _floating_tensors(head)
    assert tensors and {t.dtype for t in tensors.values()} == {torch.float64}
    # Every parameter is floating, so none was left out of the check above.
    assert set(dict(head.named_parameters())) <= set(tensors)
    logits, feature = head(torch.randn(2, 4, 8, dtype=torch.float64))
    assert logits.dtype == feature.dtype == torch.float64
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()


@pytest.mark.parametrize("aggregator", AGGREGATORS)
def test_head_built_on_meta_has_every_parameter_there(aggregator):
    head = _head(aggregator=aggregator, device="meta")
    assert all(t.is_meta for t in [*head.parameters(), *head.buffers()])
    logits, feature = head(torch.randn(2, 4, 8, device="meta"))
    assert logits.is_meta and logits.shape == (2, 3)
    assert feature.shape == (2, head.feature_dim)


@pytest.mark.parametrize("aggregator", AGGREGATORS)
def test_head_defaults_draw_the_same_parameters(aggregator):
    # device=None/dtype=None (and the default device and dtype spelled out) consume the RNG as
    # the head built without them did: seeded experiments keep their parameters.
    states, rngs = [], []
    for factory in ({}, {"device": None, "dtype": None}, {"device": "cpu", "dtype": torch.float32}):
        torch.manual_seed(0)
        states.append(_head(aggregator=aggregator, **factory).state_dict())
        rngs.append(torch.get_rng_state())
    for state in states[1:]:
        assert state.keys() == states[0].keys()
        assert all(torch.equal(state[k], states[0][k]) for k in state)
    assert all(torch.equal(rng, rngs[0]) for rng in rngs[1:])


def test_head_names_a_dtype_that_is_not_floating():
    # It failed inside nn.Parameter for some parts, and built integer buffers for others.
    with pytest.raises(TypeError, match=r"`dtype` \(of the parameters\) must be a floating"):
        _head(dtype=torch.long)


def test_micacl_tiny_built_in_float64_runs_float64():
    model = _tiny(dtype=torch.float64)
    tensors = _floating_tensors(model)
    assert {"mean", "std"} <= set(tensors)
    assert {t.dtype for t in tensors.values()} == {torch.float64}
    assert set(dict(model.named_parameters())) <= set(tensors)
    logits, feature = model(torch.rand(2, 3, 4, 8, 8, dtype=torch.float64))
    assert logits.dtype == feature.dtype == torch.float64 and logits.shape == (2, 7)


def test_micacl_tiny_built_on_meta_has_every_tensor_there():
    model = _tiny(device="meta")
    assert all(t.is_meta for t in [*model.parameters(), *model.buffers()])
    logits, _ = model(torch.rand(2, 3, 4, 8, 8, device="meta"))
    assert logits.is_meta and logits.shape == (2, 7)


def test_micacl_tiny_defaults_draw_the_same_parameters():
    states, rngs = [], []
    for factory in ({}, {"device": None, "dtype": None}):
        torch.manual_seed(0)
        states.append(_tiny(**factory).state_dict())
        rngs.append(torch.get_rng_state())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert torch.equal(rngs[0], rngs[1])


def test_tiny_backbone_takes_device_and_dtype():
    net = TinyVideoBackbone(8, width=4, dtype=torch.float64)
    assert {t.dtype for t in _floating_tensors(net).values()} == {torch.float64}
    assert net(torch.rand(2, 3, 4, 8, 8, dtype=torch.float64)).dtype == torch.float64
    assert all(p.is_meta for p in TinyVideoBackbone(8, width=4, device="meta").parameters())


def test_micacl_r3d18_is_moved_to_the_device_and_dtype():
    # torchvision's R3D-18 takes no factory keywords: it is built, then moved. (torchvision is
    # an extra: CI's torch 2.13 leg runs without it, as a user of the base install would.)
    pytest.importorskip("torchvision")
    model = MICACL(7, backbone="r3d_18", hidden_size=4, device="meta", dtype=torch.float64)
    tensors = [*model.parameters(), *model.buffers()]
    assert all(t.is_meta for t in tensors)
    assert {t.dtype for t in tensors if t.is_floating_point()} == {torch.float64}
    logits, _ = model(torch.rand(1, 3, 16, 32, 32, device="meta", dtype=torch.float64))
    assert logits.is_meta and logits.shape == (1, 7) and logits.dtype == torch.float64
