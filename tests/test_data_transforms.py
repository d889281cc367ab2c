import math

import pytest
import torch

from micacl_layers.data import transforms as T


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _identical_clip(t=8, h=40, w=40, seed=0):
    frame = torch.rand(1, 3, h, w, generator=_gen(seed))
    return frame.repeat(t, 1, 1, 1)


@pytest.mark.parametrize("seed", range(10))
def test_train_transform_keeps_identical_frames_identical(seed):
    clip = _identical_clip(seed=seed)
    out = T.train_transform(24)(clip, generator=_gen(seed))
    assert out.shape == (8, 3, 24, 24)
    assert out.dtype == torch.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert torch.equal(out, out[:1].expand_as(out))


@pytest.mark.parametrize("seed", range(5))
def test_crop_is_the_same_box_for_every_frame(seed):
    # Frame t is the base image scaled by (t + 1) / T; crop+bilinear resize is linear, so the
    # outputs must keep that relation only if every frame got the same box.
    base = torch.rand(1, 3, 50, 50, generator=_gen(seed))
    scale = torch.arange(1, 7, dtype=torch.float32).view(6, 1, 1, 1) / 6
    out = T.ClipRandomResizedCrop(20, generator=_gen(seed))(base * scale)
    torch.testing.assert_close(out, out[-1:] * scale, atol=1e-5, rtol=1e-5)


def test_flip_is_all_or_nothing():
    clip = torch.rand(6, 3, 5, 7)
    flips = 0
    for seed in range(20):
        out = T.ClipRandomHorizontalFlip(0.5)(clip, generator=_gen(seed))
        if torch.equal(out, clip.flip(-1)):
            flips += 1
        else:
            assert torch.equal(out, clip)
    assert 0 < flips < 20
    assert torch.equal(T.ClipRandomHorizontalFlip(1.0)(clip), clip.flip(-1))
    assert torch.equal(T.ClipRandomHorizontalFlip(0.0)(clip), clip)


def test_color_jitter_is_one_pixel_map_for_the_whole_clip():
    # Frame 1 equals frame 0 except in a band; pixels equal in both frames must stay equal
    # (a per-frame contrast mean would break this).
    f0 = torch.rand(3, 16, 16, generator=_gen(0))
    f1 = f0.clone()
    f1[:, :, :6] = torch.rand(3, 16, 6, generator=_gen(1))
    clip = torch.stack([f0, f1])
    for seed in range(5):
        out = T.ClipColorJitter(0.4, 0.4, 0.4)(clip, generator=_gen(seed))
        assert not torch.equal(out, clip)
        torch.testing.assert_close(out[0, :, :, 6:], out[1, :, :, 6:], atol=0, rtol=0)


def test_color_jitter_zero_strength_is_identity():
    clip = torch.rand(4, 3, 8, 8)
    assert torch.equal(T.ClipColorJitter(0, 0, 0)(clip, generator=_gen(0)), clip)


def test_transforms_reproducible_with_generator():
    clip = torch.rand(8, 3, 40, 40, generator=_gen(5))
    t = T.train_transform(24)
    a = t(clip, generator=_gen(11))
    b = t(clip, generator=_gen(11))
    c = t(clip, generator=_gen(12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # Construction-time generator, and the call-time one wins over it.
    a1 = T.train_transform(24, generator=_gen(11))(clip)
    assert torch.equal(a1, a)
    a2 = T.train_transform(24, generator=_gen(99))(clip, generator=_gen(11))
    assert torch.equal(a2, a)


def test_random_resized_crop_params_in_bounds():
    crop = T.ClipRandomResizedCrop(10, scale=(0.2, 0.6), ratio=(0.5, 2.0))
    g = _gen(0)
    for _ in range(300):
        top, left, h, w = crop.get_params(30, 50, generator=g)
        assert 0 <= top and top + h <= 30
        assert 0 <= left and left + w <= 50
        assert 0.15 <= h * w / 1500 <= 0.65
        assert 0.4 <= w / h <= 2.5


def test_random_resized_crop_fallback_is_centred_and_clamped():
    crop = T.ClipRandomResizedCrop(8, scale=(0.5, 1.0), ratio=(10.0, 20.0))  # never fits
    top, left, h, w = crop.get_params(40, 40, generator=_gen(0))
    assert (top, left, h, w) == (18, 0, 4, 40)


def test_resize_and_test_transform():
    clip = torch.rand(16, 3, 64, 48)
    assert T.ClipResize(32)(clip).shape == (16, 3, 32, 32)
    assert T.ClipResize((20, 30))(clip).shape == (16, 3, 20, 30)
    out = T.test_transform(32)(clip)
    assert torch.equal(out, T.test_transform(32)(clip))
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert T.test_transform.__test__ is False


def test_normalize():
    clip = torch.full((2, 3, 4, 4), 0.5)
    out = T.ClipNormalize([0.25, 0.5, 0.75], [0.5, 0.5, 0.25])(clip)
    assert out[:, 0].unique().tolist() == [0.5]
    assert out[:, 1].unique().tolist() == [0.0]
    assert out[:, 2].unique().tolist() == [-1.0]
    with pytest.raises(ValueError, match="channels"):
        T.ClipNormalize([0.5], [0.5])(clip)
    with pytest.raises(ValueError, match="std"):
        T.ClipNormalize([0.5], [0.0])


def test_compose_passes_generator_and_accepts_plain_callables():
    clip = torch.rand(4, 3, 20, 20)
    t = T.ClipCompose([T.ClipRandomHorizontalFlip(), lambda c: c * 0.5])
    a = t(clip, generator=_gen(3))
    assert torch.equal(a, t(clip, generator=_gen(3)))
    assert a.max() <= 0.5
    assert "ClipRandomHorizontalFlip" in repr(t)


def test_input_validation_names_the_argument():
    with pytest.raises(ValueError, match=r"clip must have shape \(T, C, H, W\).*\(3, 8, 8\)"):
        T.ClipResize(4)(torch.rand(3, 8, 8))
    with pytest.raises(TypeError, match=r"floating-point.*uint8"):
        T.ClipRandomHorizontalFlip()(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="3 \\(RGB\\) channels"):
        T.ClipColorJitter()(torch.rand(2, 1, 4, 4))
    with pytest.raises(ValueError, match="scale"):
        T.ClipRandomResizedCrop(8, scale=(0.9, 0.1))
    with pytest.raises(TypeError, match="size"):
        T.ClipResize(3.5)
    with pytest.raises(ValueError, match="brightness"):
        T.ClipColorJitter(brightness=-0.1)
    with pytest.raises(ValueError, match="p must be"):
        T.ClipRandomHorizontalFlip(1.5)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -0.1])
@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation"])
def test_color_jitter_rejects_non_finite_strengths(name, bad):
    # NaN passes a plain `< 0` check and would turn every pixel of the clip into NaN.
    with pytest.raises(ValueError, match=f"`{name}` must be >= 0 \\(finite\\)"):
        T.ClipColorJitter(**{name: bad})


@pytest.mark.parametrize(
    ("mean", "std", "match"),
    [
        ([math.nan, 0.5, 0.5], [0.5] * 3, "mean must be finite"),
        ([0.5] * 3, [math.nan, 0.5, 0.5], "std must be positive and finite"),
        ([0.5] * 3, [math.inf, 0.5, 0.5], "std must be positive and finite"),
    ],
)
def test_normalize_rejects_non_finite_statistics(mean, std, match):
    with pytest.raises(ValueError, match=match):
        T.ClipNormalize(mean, std)


def test_random_resized_crop_rejects_an_infinite_ratio():
    with pytest.raises(ValueError, match=r"ratio must be .*finite.*inf"):
        T.ClipRandomResizedCrop(8, ratio=(1.0, math.inf))


@pytest.mark.parametrize(
    "make",
    [
        lambda g: T.ClipRandomResizedCrop(8, generator=g),
        lambda g: T.ClipRandomHorizontalFlip(generator=g),
        lambda g: T.ClipColorJitter(generator=g),
        lambda g: T.train_transform(8, generator=g),
    ],
)
def test_a_bad_generator_is_named_at_construction_and_at_call_time(make):
    # It used to be stored as is and fail inside torch.rand/randperm at the first clip.
    with pytest.raises(TypeError, match="`generator` must be a CPU torch.Generator or None, got 0"):
        make(0)
    with pytest.raises(TypeError, match="`generator` must be a CPU torch.Generator or None"):
        make(None)(torch.rand(2, 3, 16, 16), generator="seed")
    assert make(_gen(0))(torch.rand(2, 3, 16, 16)).shape[:2] == (2, 3)


@pytest.mark.parametrize("bad", ["no", "false", 0, None])
def test_train_transform_color_jitter_must_be_a_bool(bad):
    # "no" was truthy and kept the jitter: a uint8 data set then refused the chain, a float one
    # jittered silently.
    with pytest.raises(TypeError, match="`color_jitter` must be a bool"):
        T.train_transform(8, color_jitter=bad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "make", [lambda: T.ClipResize(8), lambda: T.ClipRandomResizedCrop(8, generator=_gen(1))]
)
def test_resizing_a_half_precision_clip(make, dtype):
    # torch has no antialiased bilinear kernel for half types on the CPU: this crashed inside
    # F.interpolate ("compute_index_ranges_weights" not implemented for 'Half').
    clip = torch.rand(2, 3, 16, 16, generator=_gen(0))
    out = make()(clip.to(dtype))
    assert out.dtype == dtype and out.shape == (2, 3, 8, 8)
    torch.testing.assert_close(out.float(), make()(clip), atol=1e-2, rtol=0)


@pytest.mark.parametrize("bad", [True, "0.5", None, math.nan])
def test_flip_probability_must_be_a_number(bad):
    # True was taken as p=1; a string or None failed in a comparison naming nothing.
    with pytest.raises(ValueError, match=r"p must be a number in \[0, 1\]"):
        T.ClipRandomHorizontalFlip(bad)


@pytest.mark.parametrize("name", ["scale", "ratio"])
@pytest.mark.parametrize("bad", [0.5, ("a", "b"), (True, True), (0.5,), None])
def test_crop_ranges_must_be_pairs_of_numbers(name, bad):
    # 0.5 failed in len() and ("a", "b") in a comparison, naming nothing; (True, True) was
    # taken as (1.0, 1.0).
    with pytest.raises(ValueError, match=f"{name} must be \\(low, high\\)"):
        T.ClipRandomResizedCrop(8, **{name: bad})


def test_compose_checks_its_steps_at_construction():
    # A non-callable step used to be stored and fail at the first clip ("'int' object is not
    # callable"), in a DataLoader worker; the data sets' own `transform` check passed it.
    with pytest.raises(TypeError, match=r"`transforms\[1\]` must be callable.*got 2"):
        T.ClipCompose([T.ClipResize(4), 2])
    with pytest.raises(TypeError, match="`transforms` must be a sequence of callables"):
        T.ClipCompose(T.ClipResize(4))
    with pytest.raises(TypeError, match="`transforms` must be a sequence of callables"):
        T.ClipCompose(None)


@pytest.mark.parametrize(
    "after", [T.ClipResize(4), T.ClipRandomResizedCrop(4), T.ClipColorJitter(0.4)]
)
def test_compose_refuses_a_clamping_step_after_normalize(after):
    # These steps clamp to [0, 1], the range they take: after ClipNormalize they silently cut
    # every normalised value below 0 (about half of them).
    norm = T.ClipNormalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    with pytest.raises(
        ValueError, match=r"`transforms\[1\]` \(Clip\w+\) .* after `transforms\[0\]`"
    ):
        T.ClipCompose([norm, after])
    T.ClipCompose([after, norm])  # the documented order
    T.ClipCompose([norm, T.ClipRandomHorizontalFlip()])  # a flip does not clamp


def test_color_jitter_names_torchvision_range_form():
    # A (min, max) pair, as torchvision's ColorJitter takes, was refused as "must be >= 0".
    with pytest.raises(ValueError, match=r"`contrast` must be one strength .*\(min, max\) form"):
        T.ClipColorJitter(0.4, (0.6, 1.4))


def test_compose_refuses_a_clamping_step_after_normalize_inside_a_nested_compose():
    # ClipNormalize before a ready-made recipe (a ClipCompose holding ClipResize) cut the
    # normalised values as silently as a ClipResize next to it: the check read only the outer
    # list's own steps.
    norm = T.ClipNormalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    with pytest.raises(
        ValueError,
        match=r"`transforms\[1\]` \(ClipCompose holding ClipResize\) .* after `transforms\[0\]`",
    ):
        T.ClipCompose([norm, T.test_transform(4)])
    nested_norm = r"\(ClipResize\) .* after `transforms\[0\]` \(ClipCompose holding ClipNormalize\)"
    with pytest.raises(ValueError, match=nested_norm):
        T.ClipCompose([T.ClipCompose([T.ClipRandomHorizontalFlip(), norm]), T.ClipResize(4)])
    T.ClipCompose([T.test_transform(4), T.ClipCompose([norm, T.ClipRandomHorizontalFlip()])])


def test_sizes_may_be_numpy_integers():
    # A size read from a NumPy array or a sweep's config is a NumPy integer: it was refused as
    # "size must be an int ..., got np.int64(8)", where the data sets take one as `fold`.
    np = pytest.importorskip("numpy")
    assert T.ClipResize(np.int64(8)).size == (8, 8)
    crop = T.ClipRandomResizedCrop((np.int32(4), 6))
    assert crop.size == (4, 6) and all(type(s) is int for s in crop.size)
    assert T.train_transform(np.int64(8))(torch.rand(2, 3, 16, 16)).shape == (2, 3, 8, 8)
    assert T.test_transform(np.uint8(8)).transforms[0].size == (8, 8)
    for bad in (np.float64(8.0), np.bool_(True), (np.int64(4), 2.0)):
        with pytest.raises(TypeError, match="size must be an int"):
            T.ClipResize(bad)


def test_crop_ranges_may_be_any_iterable_of_two_numbers():
    # A one-shot iterator (a generator expression) was consumed by the check and then indexed:
    # "'generator' object is not subscriptable".
    crop = T.ClipRandomResizedCrop(8, scale=(s for s in (0.5, 1.0)), ratio=iter([0.5, 2]))
    assert crop.scale == (0.5, 1.0) and crop.ratio == (0.5, 2.0)
    with pytest.raises(ValueError, match=r"scale must be \(low, high\)"):
        T.ClipRandomResizedCrop(8, scale=iter([0.5, 1.0, 1.0]))


@pytest.mark.parametrize("bad", [(0, 10), (10, 0), (-5, 10), (2.5, 4), (True, 4)])
def test_crop_get_params_takes_a_frame_size_of_positive_ints(bad):
    # (0, 10) raised ZeroDivisionError, (-5, 10) "math domain error", and (10, 0) returned a
    # box 0 pixels wide; (2.5, 4) and (True, 4) gave boxes of a frame that cannot exist.
    with pytest.raises((TypeError, ValueError), match=r"`(height|width)` must be a positive int"):
        T.ClipRandomResizedCrop(4).get_params(*bad)
    np = pytest.importorskip("numpy")
    top, left, h, w = T.ClipRandomResizedCrop(4).get_params(np.int64(8), 8, _gen(0))
    assert 0 <= top <= 8 - h and 0 <= left <= 8 - w and all(type(v) is int for v in (h, w))


def test_a_transform_class_instead_of_an_instance_is_named():
    # Callable, so it passed: at the first clip ClipRandomHorizontalFlip(clip) read the clip as
    # `p` ("p must be a number in [0, 1], got tensor([[[[0.16, ...") in a loader's worker.
    with pytest.raises(TypeError, match=r"`transforms\[1\]` is the class ClipRandomHorizontalFlip"):
        T.ClipCompose([T.ClipResize(4), T.ClipRandomHorizontalFlip])
