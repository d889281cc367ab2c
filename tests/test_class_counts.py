"""class_counts as frequencies or ratios (issue 15): only the ratios between classes matter."""

from __future__ import annotations

import pytest
import torch

from micacl_layers import LogitAdjustedLoss, MCCLoss, MICACLLoss
from micacl_layers.functional import multiscale_category_aware_contrastive_loss

COUNTS = [1956, 1515, 2135, 1738, 1175, 116, 721]  # DFEW fold 1


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(12, 16, generator=g),
        torch.randn(12, 7, generator=g),
        torch.randint(0, 7, (12,), generator=g),
    )


def _pair(given):
    torch.manual_seed(0)
    ref = MCCLoss(7, 16, COUNTS, projection_dim=8)
    other = MCCLoss(7, 16, given, projection_dim=8)
    other.projections.load_state_dict(ref.projections.state_dict())
    return ref, other


@pytest.mark.parametrize("scale", ["frequencies", "percent", "ratios_to_max"])
@pytest.mark.parametrize("temperature", ["class_mean", "batch_mean"])
def test_frequencies_give_the_loss_of_counts(scale, temperature):
    total = sum(COUNTS)
    given = {
        "frequencies": [c / total for c in COUNTS],
        "percent": [100 * c / total for c in COUNTS],
        "ratios_to_max": [c / max(COUNTS) for c in COUNTS],
    }[scale]
    torch.manual_seed(0)
    ref = MCCLoss(7, 16, COUNTS, projection_dim=8, temperature=temperature)
    other = MCCLoss(7, 16, given, projection_dim=8, temperature=temperature)
    other.projections.load_state_dict(ref.projections.state_dict())
    f, z, y = _batch()
    torch.testing.assert_close(other(f, z, y), ref(f, z, y), atol=1e-6, rtol=1e-6)
    # The functional form takes them too.
    got = multiscale_category_aware_contrastive_loss(f, z, y, given, projections=None)
    want = multiscale_category_aware_contrastive_loss(f, z, y, COUNTS, projections=None)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_whole_counts_stay_int64_and_frequencies_float64():
    ref, other = _pair([0.3] * 6 + [0.2])
    assert ref.class_counts.dtype == torch.int64
    assert other.class_counts.dtype == torch.float64
    # Stored rescaled so that the smallest is 1 (ratios kept).
    torch.testing.assert_close(
        other.class_counts, torch.tensor([1.5] * 6 + [1.0], dtype=torch.float64)
    )
    # Frequencies that rescale to whole numbers are whole counts.
    assert MCCLoss(3, 4, [0.5, 0.25, 0.25]).class_counts.tolist() == [2, 1, 1]
    assert MCCLoss(3, 4, None).class_counts.dtype == torch.int64  # running counts


@pytest.mark.parametrize("convert", ["half", "bfloat16", "to_float16", "double"])
def test_half_never_rounds_the_counts(convert):
    given = [c / sum(COUNTS) for c in COUNTS]
    loss = MICACLLoss(7, 16, class_counts=given, projection_dim=8)
    before = loss.mccl.class_counts.clone()
    if convert == "to_float16":
        loss.to(torch.float16)
    else:
        getattr(loss, convert)()
    after = loss.mccl.class_counts
    assert after.dtype == torch.float64
    torch.testing.assert_close(after, before, atol=0, rtol=0)
    assert loss.mccl.projections[0].weight.dtype != torch.float32  # the parameters did convert


def test_state_dict_round_trip_of_frequencies():
    given = [c / sum(COUNTS) for c in COUNTS]
    a = MCCLoss(7, 16, given, projection_dim=8)
    b = MCCLoss(7, 16, [1.0 / 7] * 6 + [0.5], projection_dim=8)
    state = a.state_dict()
    assert state["class_counts"].dtype == torch.float64
    b.load_state_dict(state)
    torch.testing.assert_close(b.class_counts, a.class_counts, atol=0, rtol=0)
    f, z, y = _batch(1)
    torch.testing.assert_close(b(f, z, y), a(f, z, y), atol=0, rtol=0)


def test_running_counts_stay_integer():
    loss = MCCLoss(7, 16, None, projection_dim=8).train()
    f, z, y = _batch(2)
    loss(f, z, y)
    assert loss.class_counts.dtype == torch.int64
    assert int(loss.class_counts.sum()) == 12
    loss.half()
    assert loss.class_counts.dtype == torch.int64


@pytest.mark.parametrize("bad", [[0.5, 0.0, 0.5], [0.5, -0.1, 0.6], [0.5, float("nan"), 0.5]])
def test_non_positive_frequencies_still_a_clear_error(bad):
    with pytest.raises(ValueError, match="`class_counts` must be finite and > 0"):
        MCCLoss(3, 8, bad)


def _garbage(module):
    # What to_empty() may leave in a buffer: uninitialised memory, here made explicit.
    for buf in module.buffers():
        buf.fill_(7 if not buf.is_floating_point() else float("nan"))


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ([5, 3, 1], torch.tensor([5, 3, 1])),
        ([0.5, 0.3, 0.1], torch.tensor([5.0, 3.0, 1.0], dtype=torch.float64)),
        (None, torch.zeros(3, dtype=torch.long)),
    ],
)
@pytest.mark.parametrize("how", ["device", "context"])
def test_reset_parameters_restores_a_loss_built_on_meta(counts, expected, how):
    kwargs = {"projection_dim": 4, "memory_size": 4}
    if how == "device":
        mccl = MCCLoss(3, 8, counts, device="meta", **kwargs)
    else:
        with torch.device("meta"):
            mccl = MCCLoss(3, 8, counts, **kwargs)
    assert mccl.class_counts.device.type == "meta"
    mccl = mccl.to_empty(device="cpu")
    _garbage(mccl)
    mccl.reset_parameters()
    assert mccl.class_counts.dtype == expected.dtype
    assert torch.allclose(mccl.class_counts, expected)
    assert len(mccl.memory) == 0 and int(mccl.memory.pointer) == 0
    assert all(bool(p.isfinite().all()) for p in mccl.parameters())
    f, z, y = torch.randn(4, 8), torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    ref = MCCLoss(3, 8, counts, **kwargs)
    ref.load_state_dict(mccl.state_dict())
    assert torch.equal(mccl(f, z, y), ref(f, z, y))


def test_reset_parameters_restores_logit_adjusted_counts_built_on_meta():
    with torch.device("meta"):
        loss = LogitAdjustedLoss([5, 3, 1])
    loss = loss.to_empty(device="cpu")
    _garbage(loss)
    loss.reset_parameters()
    assert torch.equal(loss.class_counts, torch.tensor([5, 3, 1]))


def test_counts_given_as_a_tensor_stay_on_its_device():
    meta = torch.tensor([5, 3, 1], device="meta")
    assert MCCLoss(3, 8, meta).class_counts.device.type == "meta"
    assert LogitAdjustedLoss(meta).class_counts.device.type == "meta"
    assert MCCLoss(3, 8, [5, 3, 1]).class_counts.device.type == "cpu"


@pytest.mark.parametrize(
    "build",
    [
        lambda c: MCCLoss(3, 8, c),
        lambda c: MICACLLoss(3, 8, c).mccl,
        lambda c: LogitAdjustedLoss(c),
        lambda c: LogitAdjustedLoss(c, label_smoothing=0.1),
    ],
    ids=["MCCLoss", "MICACLLoss", "LogitAdjustedLoss", "smoothing"],
)
def test_meta_counts_stay_on_meta_inside_a_default_device_block(build):
    # torch.as_tensor takes the block's device for a tensor too: it copied the meta counts to
    # the CPU, which fails ("Cannot copy out of meta tensor"), where without a block they stay.
    meta = torch.tensor([5, 3, 1], device="meta")
    outside = build(meta).class_counts
    with torch.device("cpu"):
        inside = build(meta).class_counts
    assert torch.empty(0).device.type == "cpu"
    assert (inside.device.type, inside.dtype, inside.shape) == ("meta", torch.long, (3,))
    assert (inside.device, inside.dtype, inside.shape) == (
        outside.device,
        outside.dtype,
        outside.shape,
    )


def test_forward_takes_meta_counts_inside_a_default_device_block():
    from micacl_layers import ClassificationEnhancementTerm
    from micacl_layers.functional import log_prior, logit_adjusted_cross_entropy

    meta = torch.tensor([5, 3, 1], device="meta")
    logits, y = torch.randn(4, 3, device="meta"), torch.zeros(4, dtype=torch.long, device="meta")
    options = {"label_smoothing": 0.1, "ial_weight": 0.0, "aug_weight": 0.0}
    outside = [
        logit_adjusted_cross_entropy(logits, y, meta),
        ClassificationEnhancementTerm(logit_adjustment=1.0, **options)(
            logits, y, class_counts=meta
        ),
    ]
    with torch.device("cpu"):
        inside = [
            logit_adjusted_cross_entropy(logits, y, meta),
            # (its once-only smoothing check reads the counts apart from the loss)
            ClassificationEnhancementTerm(logit_adjustment=1.0, **options)(
                logits, y, class_counts=meta
            ),
        ]
        prior = log_prior(meta)
    assert [(t.device, t.shape) for t in inside] == [(t.device, t.shape) for t in outside]
    assert (prior.device.type, prior.shape) == ("meta", (3,))


def test_the_reset_parameters_walk_restores_every_module_built_on_meta():
    # The FAQ's recipe for deferred initialisation, over the layers and the losses.
    from micacl_layers import GEIIM, WIAN
    from micacl_layers.models import MICACLHead

    with torch.device("meta"):
        built = [
            WIAN(8, 6),
            GEIIM(4, 8),
            LogitAdjustedLoss([5, 3, 1]),
            MICACLLoss(3, 8, [5, 3, 1], projection_dim=4, memory_size=4),
            MICACLHead(8, 3, num_instances=4, hidden_size=8),
        ]
    for module in built:
        module = module.to_empty(device="cpu")
        _garbage(module)
        for p in module.parameters():  # (uninitialised memory is often finite by chance)
            p.data.fill_(float("nan"))
        for part in module.modules():
            if hasattr(part, "reset_parameters"):
                part.reset_parameters()
        floats = [t for t in [*module.parameters(), *module.buffers()] if t.is_floating_point()]
        assert all(bool(t.isfinite().all()) for t in floats), type(module).__name__
        for name, buf in module.named_buffers():
            if name.endswith("class_counts"):
                assert buf.tolist() == [5, 3, 1], type(module).__name__


@pytest.mark.parametrize("scale", [1 / sum(COUNTS), 1 / max(COUNTS), 100 / sum(COUNTS)])
@pytest.mark.parametrize("mode", ["class_mean", "batch_mean"])
def test_public_weight_and_temperature_functions_take_frequencies(scale, mode):
    # Their "a count of 0 counts as 1" guard must not turn frequencies (all < 1) into ones.
    from micacl_layers.functional import adaptive_temperature, category_aware_weights

    given = torch.tensor([c * scale for c in COUNTS], dtype=torch.float64)
    counts = torch.tensor(COUNTS, dtype=torch.float64)
    _, z, y = _batch()
    torch.testing.assert_close(
        category_aware_weights(z, y, given), category_aware_weights(z, y, counts)
    )
    torch.testing.assert_close(
        adaptive_temperature(given, 0.1, mode=mode, targets=y),
        adaptive_temperature(counts, 0.1, mode=mode, targets=y),
    )


def test_public_functions_rescale_frequencies_by_the_smallest_nonzero_count():
    # Zeros stay legal there (a class absent from a running count) and still count as 1.
    from micacl_layers.functional import category_aware_weights

    z, y = torch.zeros(3, 3), torch.tensor([0, 1, 2])
    got = category_aware_weights(z, y, torch.tensor([0.5, 0.25, 0.0]))
    torch.testing.assert_close(got, category_aware_weights(z, y, torch.tensor([2.0, 1.0, 0.0])))


def test_loaded_frequencies_keep_their_values_in_a_loss_built_with_counts():
    # The buffer takes the loaded counts' kind, as at construction: int64 would truncate them.
    source = MCCLoss(3, 8, [0.5, 0.3, 0.2], projection_dim=4)
    target = MCCLoss(3, 8, [5, 3, 2], projection_dim=4)
    target.load_state_dict(source.state_dict())
    assert target.class_counts.dtype == torch.float64
    torch.testing.assert_close(target.class_counts, source.class_counts)
    f, z, y = torch.randn(4, 8), torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    torch.testing.assert_close(target(f, z, y), source(f, z, y))
    # ... and whole counts loaded into a loss built with frequencies are int64 again.
    source.load_state_dict(MCCLoss(3, 8, [5, 3, 2], projection_dim=4).state_dict())
    assert source.class_counts.dtype == torch.int64
    assert source.class_counts.tolist() == [5, 3, 2]


@pytest.mark.parametrize(
    ("counts", "built", "match"),
    [
        (torch.tensor([5, -3, 1]), [5, 3, 1], "must be finite and > 0"),
        (torch.tensor([5, 0, 1]), [5, 3, 1], "must be finite and > 0"),
        (torch.tensor([5.0, float("nan"), 1.0]), [5, 3, 1], "must be finite and > 0"),
        (torch.tensor([5, -1, 0]), None, "running counts must be whole numbers >= 0"),
        (torch.tensor([5.5, 1.0, 0.0]), None, "running counts must be whole numbers >= 0"),
        (torch.tensor([True, False, True]), [5, 3, 1], "must hold real numbers"),
    ],
)
def test_bad_counts_in_a_state_dict_are_refused_by_name(counts, built, match):
    loss = MCCLoss(3, 8, built, projection_dim=4)
    state = loss.state_dict()
    before = loss.class_counts.clone()
    state["class_counts"] = counts
    error = TypeError if counts.dtype == torch.bool else ValueError
    with pytest.raises(error, match=rf"state_dict\['class_counts'\].*{match}"):
        loss.load_state_dict(state)
    assert torch.equal(loss.class_counts, before)


def test_bad_counts_in_a_nested_state_dict_name_the_key():
    crit = MICACLLoss(3, 8, [5, 3, 1], projection_dim=4, aug_weight=0.0)
    state = crit.state_dict()
    state["mccl.class_counts"] = torch.tensor([5, 0, 1])
    with pytest.raises(ValueError, match=r"state_dict\['mccl.class_counts'\]"):
        crit.load_state_dict(state)


@pytest.mark.parametrize("counts", [torch.tensor([5, 0, 1]), torch.tensor([5.5, 3.0, 1.0])])
def test_logit_adjusted_loss_refuses_bad_loaded_counts(counts):
    loss = LogitAdjustedLoss([5, 3, 1])
    state = loss.state_dict()
    state["class_counts"] = counts
    with pytest.raises(ValueError, match=r"state_dict\['class_counts'\]"):
        loss.load_state_dict(state)
    assert loss.class_counts.tolist() == [5, 3, 1]


def test_good_loaded_counts_still_load_with_assign_and_on_meta():
    source = MCCLoss(3, 8, [7, 2, 1], projection_dim=4)
    target = MCCLoss(3, 8, [5, 3, 1], projection_dim=4)
    target.load_state_dict(source.state_dict(), assign=True)
    assert target.class_counts.tolist() == [7, 2, 1]
    running = MCCLoss(3, 8, None, projection_dim=4)
    state = {**running.state_dict(), "class_counts": torch.tensor([4.0, 0.0, 2.0])}
    running.load_state_dict(state)
    assert running.class_counts.dtype == torch.int64
    assert running.class_counts.tolist() == [4, 0, 2]
    assert state["class_counts"].dtype == torch.float32  # the caller's dict is left as it was
    with torch.device("meta"):
        late = MCCLoss(3, 8, [5, 3, 1], projection_dim=4)
    late.load_state_dict(source.state_dict(), assign=True)
    assert late.class_counts.tolist() == [7, 2, 1]
