"""ClipBatchColorJitter / clip_batch_color_jitter: the batched, on-device colour jitter.

Checked against ClipColorJitter applied clip by clip with the same seed (the statistics the
loaders had), and against a textbook per-clip loop in float64 that shares no code with either.
"""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from micacl_layers.data import ClipBatchColorJitter, ClipColorJitter, clip_batch_color_jitter

STRENGTHS = [(0.4, 0.4, 0.4), (0.4, 0.0, 0.4), (0.0, 0.4, 0.0), (0.0, 0.0, 0.0), (0.9, 0.9, 0.9)]
# The CUDA case runs where a GPU is at hand (scripts/gpu_check.sh runs the tests named cuda).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
LUMA = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _batch(b=6, t=3, h=5, w=4, seed=0, dtype=torch.uint8):
    clips = torch.randint(0, 256, (b, 3, t, h, w), generator=_gen(seed), dtype=torch.uint8)
    return clips if dtype == torch.uint8 else clips.to(dtype) / 255


def _per_clip(clips, strengths, seed):
    """ClipColorJitter on each (T, 3, H, W) clip in turn, one generator for the batch."""
    jitter = ClipColorJitter(*strengths, generator=_gen(seed))
    x = clips.double() / 255 if clips.dtype == torch.uint8 else clips
    return torch.stack([jitter(c.transpose(0, 1)).transpose(0, 1) for c in x])


def _textbook(clips, order, factors, enabled=(True, True, True)):
    """One clip at a time, in float64: x <- clamp(a x + (1 - a) ref, 0, 1) per enabled op."""
    out = []
    for clip, ops, f in zip(clips.double(), order.tolist(), factors.double(), strict=True):
        x = clip / 255 if clips.dtype == torch.uint8 else clip
        for op in ops:
            if not enabled[op]:
                continue
            grey = torch.einsum("c,cthw->thw", LUMA, x)
            ref = (0.0, grey.mean(), grey)[op]
            x = (f[op] * x + (1 - f[op]) * ref).clamp(0, 1)
        out.append(x)
    return torch.stack(out)


# --------------------------------------------------------------------------- same as per clip
@pytest.mark.parametrize("strengths", STRENGTHS)
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_matches_clip_color_jitter_with_equal_seeds(strengths, seed, dtype):
    clips = _batch(seed=seed + 10, dtype=dtype)
    gen = _gen(seed)
    out = ClipBatchColorJitter(*strengths, generator=gen)(clips)
    ref = _per_clip(clips, strengths, seed)
    assert out.dtype == torch.float32 and out.shape == clips.shape
    torch.testing.assert_close(out, ref.float(), atol=2e-6, rtol=0)
    # The same stream: both generators have drawn exactly the same numbers.
    ref_gen = _gen(seed)
    jitter = ClipColorJitter(*strengths)
    for _ in range(len(clips)):
        jitter.get_params(ref_gen)
    assert torch.equal(gen.get_state(), ref_gen.get_state())


@pytest.mark.parametrize("seed", range(3))
def test_matches_the_loaders_uint8_path(seed):
    # The loaders' fast path: ClipColorJitter on 0..255 values with the /255 folded in.
    clips = _batch(seed=seed)
    out = ClipBatchColorJitter(generator=_gen(seed))(clips)
    jitter = ClipColorJitter(generator=_gen(seed))
    ref = [
        jitter._jitter(c.transpose(0, 1).float(), None, inplace=True, scale=1 / 255) for c in clips
    ]
    torch.testing.assert_close(out, torch.stack(ref).transpose(1, 2), atol=2e-6, rtol=0)


def test_batch_of_one_and_call_time_generator():
    clips = _batch(b=1)
    jitter = ClipBatchColorJitter(generator=_gen(99))
    out = jitter(clips, generator=_gen(3))  # the call-time generator wins
    torch.testing.assert_close(out, _per_clip(clips, (0.4, 0.4, 0.4), 3).float(), atol=2e-6, rtol=0)
    assert not torch.allclose(out, _per_clip(clips, (0.4, 0.4, 0.4), 99).float())


def test_global_rng_when_no_generator():
    clips = _batch(b=3)
    torch.manual_seed(5)
    out = ClipBatchColorJitter()(clips)
    torch.manual_seed(5)
    jitter = ClipColorJitter()
    ref = torch.stack([jitter(c.transpose(0, 1) / 255).transpose(0, 1) for c in clips])
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=0)


# --------------------------------------------------------------------------- the vectorised step
def test_every_order_occurs():
    order, factors = ClipBatchColorJitter(0.4, 0.4, 0.4).get_params(600, _gen(0))
    assert order.dtype == torch.int64 and factors.dtype == torch.float64
    counts = {p: 0 for p in itertools.permutations(range(3))}
    for row in order.tolist():
        counts[tuple(row)] += 1
    assert all(60 <= n <= 140 for n in counts.values()), counts  # 100 expected each
    # Factors uniform in [0.6, 1.4]: range and mean.
    assert 0.6 <= factors.min() and factors.max() <= 1.4
    torch.testing.assert_close(
        factors.mean(0), torch.ones(3, dtype=torch.float64), atol=0.03, rtol=0
    )


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float64])
def test_mixed_orders_in_one_batch_match_the_textbook_loop(dtype):
    # All six orders in one batch, strong factors (contrast, saturation and clamping all bite).
    order = torch.tensor(list(itertools.permutations(range(3))))
    factors = torch.rand(6, 3, generator=_gen(1), dtype=torch.float64) * 2
    clips = _batch(b=6, t=4, h=6, w=6, seed=2, dtype=dtype)
    out = clip_batch_color_jitter(clips, order, factors, out_dtype=torch.float64)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, _textbook(clips, order, factors), atol=1e-12, rtol=0)
    # Each clip is jittered on its own: the batch equals its clips one at a time.
    for i in range(6):
        one = clip_batch_color_jitter(clips[i : i + 1], order[i : i + 1], factors[i : i + 1])
        torch.testing.assert_close(out[i : i + 1].float(), one, atol=1e-6, rtol=0)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    enabled=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    uint8=st.booleans(),
    b=st.integers(1, 5),
)
def test_random_orders_factors_and_enabled_match_the_textbook_loop(seed, enabled, uint8, b):
    g = _gen(seed)
    order = torch.stack([torch.randperm(3, generator=g) for _ in range(b)])
    factors = torch.rand(b, 3, generator=g, dtype=torch.float64) * 3
    clips = _batch(b=b, t=2, h=3, w=3, seed=seed, dtype=torch.uint8 if uint8 else torch.float64)
    out = clip_batch_color_jitter(clips, order, factors, enabled=enabled, out_dtype=torch.float64)
    torch.testing.assert_close(out, _textbook(clips, order, factors, enabled), atol=1e-12, rtol=0)
    assert 0 <= out.min() and out.max() <= 1


def test_output_range_with_extreme_factors():
    clips = _batch(b=4, seed=3)
    order = torch.tensor([[0, 1, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]])
    for factors in (torch.zeros(4, 3), torch.full((4, 3), 8.0), torch.rand(4, 3) * 10):
        out = clip_batch_color_jitter(clips, order, factors)
        assert out.dtype == torch.float32
        assert 0 <= out.min() and out.max() <= 1


def test_disabled_adjustments_are_skipped():
    # Float input a little outside [0, 1]: nothing is clamped when nothing is applied, and a
    # disabled op is not an identity step with a clamp.
    clips = torch.linspace(-0.2, 1.2, 2 * 3 * 2 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2, 2)
    order = torch.tensor([[2, 1, 0], [1, 0, 2]])
    factors = torch.full((2, 3), 0.5)
    out = clip_batch_color_jitter(clips, order, factors, enabled=(False, False, False))
    assert torch.equal(out, clips)
    out = clip_batch_color_jitter(clips, order, factors, enabled=(True, False, False))
    torch.testing.assert_close(out, (clips * 0.5).clamp(0, 1))
    raw = torch.arange(2 * 3 * 2 * 2 * 2, dtype=torch.uint8).view(2, 3, 2, 2, 2) * 7
    out = clip_batch_color_jitter(raw, order, factors, enabled=(False, False, False))
    torch.testing.assert_close(out, raw.float() / 255, atol=0, rtol=0)


def test_input_is_not_modified():
    for clips in (_batch(dtype=torch.float32), _batch(dtype=torch.float64), _batch()):
        before = clips.clone()
        ClipBatchColorJitter(0.9, 0.9, 0.9, generator=_gen(0))(clips)
        assert torch.equal(clips, before)


# --------------------------------------------------------------------------- dtypes, devices
def test_float64_in_float64_out():
    clips = _batch(dtype=torch.float64)
    out = ClipBatchColorJitter(generator=_gen(4))(clips, out_dtype=torch.float64)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, _per_clip(clips, (0.4, 0.4, 0.4), 4), atol=1e-12, rtol=0)


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_half_precision_output(out_dtype, dtype):
    clips = _batch(dtype=dtype)
    out = ClipBatchColorJitter(generator=_gen(6))(clips, out_dtype=out_dtype)
    assert out.dtype == out_dtype
    assert bool(torch.isfinite(out).all()) and 0 <= out.min() and out.max() <= 1
    # Computed in float32, rounded once at the end.
    full = ClipBatchColorJitter(generator=_gen(6))(clips)
    assert torch.equal(out, full.to(out_dtype))


def test_half_precision_input():
    clips = _batch(dtype=torch.float16)
    out = ClipBatchColorJitter(generator=_gen(7))(clips)
    assert out.dtype == torch.float32
    ref = _per_clip(clips.float(), (0.4, 0.4, 0.4), 7)
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_a_cpu_seed_gives_the_same_jitter_on_every_device(device):
    clips = _batch(b=4, t=4, h=16, w=16)
    ref = _per_clip(clips, (0.4, 0.4, 0.4), 8).float()
    on_device = clips.to(device)
    if device == "cuda":  # an error if the call waits for the GPU (e.g. a blocking copy)
        torch.cuda.set_sync_debug_mode("error")
    try:
        out = ClipBatchColorJitter(generator=_gen(8))(on_device)
    finally:
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    assert out.device.type == device and out.dtype == torch.float32
    torch.testing.assert_close(out.cpu(), ref, atol=1e-5, rtol=0)


def test_output_follows_the_clips_device():
    # The parameters are drawn on the CPU and copied to the batch's device: here `meta`
    # (shapes only), the CPU stand-in for a GPU in this test suite.
    clips = torch.empty(3, 3, 2, 4, 4, dtype=torch.uint8, device="meta")
    out = ClipBatchColorJitter()(clips)
    assert out.device.type == "meta" and out.shape == clips.shape and out.dtype == torch.float32


def test_parameters_on_the_device():
    # The function takes order and factors on any device (here `meta`, as clips); their values
    # are then not checked, since that would read them back.
    clips = torch.empty(2, 3, 2, 4, 4, dtype=torch.uint8, device="meta")
    order = torch.empty(2, 3, dtype=torch.int64, device="meta")
    factors = torch.empty(2, 3, device="meta")
    out = clip_batch_color_jitter(clips, order, factors, out_dtype=torch.bfloat16)
    assert out.device.type == "meta" and out.shape == clips.shape and out.dtype == torch.bfloat16


# --------------------------------------------------------------------------- edges and errors
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_empty_batch(dtype):
    gen = _gen(0)
    state = gen.get_state()
    out = ClipBatchColorJitter(generator=gen)(torch.zeros(0, 3, 4, 5, 5, dtype=dtype))
    assert out.shape == (0, 3, 4, 5, 5) and out.dtype == torch.float32
    assert torch.equal(gen.get_state(), state)  # nothing drawn


def test_module_has_no_state_and_a_repr():
    jitter = ClipBatchColorJitter(0.4, 0.0, 0.25)
    assert list(jitter.parameters()) == [] and list(jitter.buffers()) == []
    assert jitter.state_dict() == {}
    assert repr(jitter) == "ClipBatchColorJitter(brightness=0.4, contrast=0.0, saturation=0.25)"


@pytest.mark.parametrize(
    ("clips", "error", "words"),
    [
        (
            torch.zeros(3, 3, 4, 4, dtype=torch.uint8),
            ValueError,
            ["`clips`", "(3, 3, 4, 4)", "(B, 3, T, H, W)"],
        ),
        (
            torch.zeros(2, 2, 3, 4, 4, dtype=torch.uint8),
            ValueError,
            ["`clips`", "(2, 2, 3, 4, 4)", "size 3 at dim 1"],
        ),
        (
            torch.zeros(2, 3, 3, 4, 4, dtype=torch.int64),
            TypeError,
            ["`clips`", "torch.int64", "uint8"],
        ),
        ([[0.0]], TypeError, ["`clips`", "torch.Tensor", "list"]),
    ],
)
def test_bad_clips(clips, error, words):
    for call in (
        lambda: ClipBatchColorJitter()(clips),
        lambda: clip_batch_color_jitter(clips, torch.tensor([[0, 1, 2]]), torch.ones(1, 3)),
    ):
        with pytest.raises(error) as info:
            call()
        for word in words:
            assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation"])
@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf"), "0.4"])
def test_bad_strengths(name, value):
    with pytest.raises(ValueError, match=f"`{name}` must be >= 0"):
        ClipBatchColorJitter(**{name: value})


def test_bad_call_draws_nothing():
    gen = _gen(0)
    state = gen.get_state()
    with pytest.raises(TypeError, match="`out_dtype` must be a floating"):
        ClipBatchColorJitter(generator=gen)(_batch(b=2), out_dtype=torch.uint8)
    with pytest.raises(ValueError, match="`clips`"):
        ClipBatchColorJitter(generator=gen)(_batch(b=2)[:, :2])
    assert torch.equal(gen.get_state(), state)


@pytest.mark.parametrize("bad", [-1, True, 2.5, None])
def test_get_params_needs_a_batch_size(bad):
    # -1 returned an empty draw as if for an empty batch, True crashed inside Tensor.view and
    # 2.5 in range().
    gen = _gen(0)
    state = gen.get_state()
    with pytest.raises(ValueError, match="`batch_size` must be an int >= 0"):
        ClipBatchColorJitter(generator=gen).get_params(bad)
    assert torch.equal(gen.get_state(), state)
    assert ClipBatchColorJitter().get_params(0)[0].shape == (0, 3)


def test_bad_generator():
    with pytest.raises(TypeError, match="`generator` must be a CPU torch.Generator"):
        ClipBatchColorJitter(generator=0)
    with pytest.raises(TypeError, match="`generator` must be a CPU torch.Generator"):
        ClipBatchColorJitter()(_batch(b=1), generator="seed")


@pytest.mark.parametrize(
    ("order", "factors", "kwargs", "error", "match"),
    [
        (torch.tensor([[0, 1, 2]] * 2), torch.ones(2, 3), {}, ValueError, "batch sizes differ"),
        (
            torch.tensor([0, 1, 2]),
            torch.ones(3, 3),
            {},
            ValueError,
            r"`order` must have shape \(B, 3\)",
        ),
        (
            torch.tensor([[0, 1]] * 3),
            torch.ones(3, 3),
            {},
            ValueError,
            r"`order` must have shape \(B, 3\)",
        ),
        (torch.tensor([[0, 1, 1]] * 3), torch.ones(3, 3), {}, ValueError, "one permutation of"),
        (torch.tensor([[0, 1, 3]] * 3), torch.ones(3, 3), {}, ValueError, "one permutation of"),
        (torch.ones(3, 3), torch.ones(3, 3), {}, TypeError, "`order` must be an integer tensor"),
        (
            torch.tensor([[0, 1, 2]] * 3),
            torch.ones(3, 3, dtype=torch.long),
            {},
            TypeError,
            "`factors` must be a floating",
        ),
        (
            torch.tensor([[0, 1, 2]] * 3),
            -torch.ones(3, 3),
            {},
            ValueError,
            "`factors` must be finite and >= 0",
        ),
        (
            torch.tensor([[0, 1, 2]] * 3),
            torch.full((3, 3), float("nan")),
            {},
            ValueError,
            "`factors` must be finite",
        ),
        (
            torch.tensor([[0, 1, 2]] * 3),
            torch.ones(3, 2),
            {},
            ValueError,
            r"`factors` must have shape \(B, 3\)",
        ),
        (
            torch.tensor([[0, 1, 2]] * 3),
            torch.ones(3, 3),
            {"out_dtype": torch.int32},
            TypeError,
            "`out_dtype` must be a floating",
        ),
        (
            torch.tensor([[0, 1, 2]] * 3),
            torch.ones(3, 3),
            {"enabled": (True, True)},
            TypeError,
            "`enabled` must be three bools",
        ),
        (
            torch.tensor([[0, 1, 2]] * 3),
            torch.ones(3, 3, device="meta"),
            {},
            ValueError,
            "one device",
        ),
    ],
)
def test_bad_parameters(order, factors, kwargs, error, match):
    with pytest.raises(error, match=match):
        clip_batch_color_jitter(_batch(b=3), order, factors, **kwargs)


def test_params_are_drawn_on_the_host_whatever_the_default_device():
    # torch.tensor(...) of the drawn order and factors followed torch.set_default_device (set
    # to "cuda" by some training scripts; "meta" stands in here), against the docs' "on the
    # CPU", and the order check compared a CPU order with a default-device arange.
    clips = _batch(b=3)
    want = ClipBatchColorJitter(generator=_gen(5))(clips)
    # Scoped, not torch.set_default_device: setting "cpu" back would leave a device mode on
    # that changes later tests (torch.as_tensor of a meta tensor then copies it to the CPU).
    with torch.device("meta"):
        jitter = ClipBatchColorJitter(generator=_gen(5))
        order, factors = jitter.get_params(3)
        assert order.device.type == factors.device.type == "cpu"
        got = ClipBatchColorJitter(generator=_gen(5))(clips)
        direct = clip_batch_color_jitter(clips, order, factors)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(direct, want, rtol=0, atol=0)
