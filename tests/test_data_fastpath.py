"""The loaders' fast path (decode at the transform's size) against the plain path."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from micacl_layers.data import (
    DFEW,
    ClipColorJitter,
    ClipCompose,
    ClipNormalize,
    ClipRandomHorizontalFlip,
    ClipRandomResizedCrop,
    ClipResize,
    CorruptFrameError,
    _decode,
    _frames,
    render_clip,
    segment_indices,
    test_transform,
    train_transform,
)
from tests.test_data_datasets import dfew_tree, write_clip

FRAMES = "Clip/clip_224x224"


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _psnr(a, b):
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def _face_tree(root, *, clips=3, size=224, frames=20, seed=0, upscale_to=None):
    """DFEW layout whose clips are the synthetic renderer's faces (head, features, shading,
    pixel noise), at ``size`` pixels: natural-looking content, not flat test patterns.
    ``upscale_to`` enlarges each frame (bicubic) before saving, as DFEW's face crops from film
    frames mostly are."""
    rng = np.random.default_rng(seed)
    dfew_tree(root, [(str(i + 1), i % 7 + 1) for i in range(clips)])
    for i in range(clips):
        folder = root / FRAMES / f"{i + 1:05d}"
        folder.mkdir(parents=True)
        video = render_clip("surprise", frames, image_size=size, rng=rng)
        for t, frame in enumerate(video):
            image = Image.fromarray(frame)
            if upscale_to is not None:
                image = image.resize((upscale_to, upscale_to), Image.Resampling.BICUBIC)
            image.save(folder / f"{t + 1:05d}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    return _face_tree(tmp_path_factory.mktemp("faces"))


def _pair(root, transform, *, seed, index=0, train=True, **options):
    """(fast item, plain item, generator states after each) with the same seed; ``options``
    go to both data sets."""
    g_fast, g_plain = _gen(seed), _gen(seed)
    fast = DFEW(root, 1, "train", transform=transform, train=train, generator=g_fast, **options)
    plain = DFEW(
        root,
        1,
        "train",
        transform=transform,
        train=train,
        generator=g_plain,
        fast_decode=False,
        **options,
    )
    a, la = fast[index]
    b, lb = plain[index]
    assert la == lb
    return a, b, g_fast.get_state(), g_plain.get_state()


# ----------------------------------------------------------------------------- same clip


@pytest.mark.parametrize("seed", range(6))
def test_train_transform_without_draft_matches_plain_path_within_rounding(faces, seed):
    # 224 -> 112 random crops are smaller than 224, so no draft: only uint8 rounding differs.
    a, b, state_a, state_b = _pair(faces, train_transform(112), seed=seed, index=seed % 3)
    assert a.shape == b.shape == (3, 16, 112, 112) and a.dtype == b.dtype == torch.float32
    assert a.is_contiguous()
    assert torch.equal(state_a, state_b)  # same draws: frames, crop, flip, jitter
    assert (a - b).abs().max().item() <= 3 / 255
    assert _psnr(a, b) >= 45


def test_test_transform_uses_draft_and_stays_close(faces, monkeypatch):
    requests = []
    real = _decode._draft_request
    monkeypatch.setattr(
        _decode, "_draft_request", lambda *a: requests.append(real(*a)) or requests[-1]
    )
    for index in range(3):
        a, b, _, _ = _pair(faces, test_transform(112), seed=0, index=index, train=False)
        assert a.shape == b.shape == (3, 16, 112, 112)
        # DCT scaling by 1/2 against an antialiased bilinear resize of the full decode.
        assert _psnr(a, b) >= 35
    assert requests and all(r == (112, 112) for r in requests)


@pytest.mark.parametrize("seed", range(4))
def test_random_crop_with_draft_stays_close(faces, seed):
    # Crops of at least half the frame to 56 pixels: every one is at least twice the output.
    transform = ClipCompose(
        [ClipRandomResizedCrop(56, scale=(0.5, 1.0)), ClipRandomHorizontalFlip(), ClipColorJitter()]
    )
    a, b, state_a, state_b = _pair(faces, transform, seed=seed, index=seed % 3)
    assert torch.equal(state_a, state_b)
    assert _psnr(a, b) >= 35


def test_no_draft_when_the_crop_is_less_than_twice_the_output():
    plan = _decode.GeometryPlan((0, 0, 223, 224), (112, 112), False)
    assert _decode._draft_request(plan, 224, 224) is None
    plan = _decode.GeometryPlan((0, 0, 224, 224), (112, 112), False)
    assert _decode._draft_request(plan, 224, 224) == (112, 112)
    plan = _decode.GeometryPlan((10, 20, 130, 140), (56, 56), False)  # 120x120 crop
    assert _decode._draft_request(plan, 224, 224) == (105, 105)  # ceil(56 * 224 / 120)
    assert _decode._draft_request(_decode.GeometryPlan((0, 0, 8, 8), None, True), 8, 8) is None


@pytest.mark.parametrize(
    "steps",
    [
        # flip before the crop: the crop box is mirrored
        lambda: [ClipRandomHorizontalFlip(1.0), ClipRandomResizedCrop(12), ClipColorJitter()],
        # a second resize and a plain callable run on the float clip, after the plan
        lambda: [ClipResize(20), ClipRandomHorizontalFlip(), ClipResize(10), lambda c: c * 0.5],
        # nested compositions are flattened
        lambda: [
            ClipCompose([ClipRandomResizedCrop(16, scale=(0.3, 0.6))]),
            ClipCompose([ClipRandomHorizontalFlip(), ClipColorJitter(0.2, 0.8, 0.0)]),
        ],
        # colour first: nothing to plan, the whole chain runs on the full float clip
        lambda: [ClipColorJitter(), ClipRandomResizedCrop(16)],
    ],
)
@pytest.mark.parametrize("seed", range(3))
def test_other_chains_match_plain_path(tmp_path, steps, seed):
    dfew_tree(tmp_path, [("1", 1)])
    folder = tmp_path / FRAMES / "00001"
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for t, frame in enumerate(render_clip("fear", 18, image_size=24, rng=rng)):
        Image.fromarray(frame).save(folder / f"{t + 1:05d}.jpg", quality=95)
    a, b, state_a, state_b = _pair(tmp_path, ClipCompose(steps()), seed=seed)
    assert a.shape == b.shape
    assert torch.equal(state_a, state_b)
    assert (a - b).abs().max().item() <= 3 / 255


def test_other_transforms_get_a_contiguous_clip(tmp_path):
    seen = []

    def needs_contiguous(clip):
        seen.append(clip.is_contiguous())
        return clip.view(-1).view(clip.shape)  # view(-1) fails on a non-contiguous clip

    dfew_tree(tmp_path, [("1", 1)], frames={"00001": 6})
    ds = DFEW(tmp_path, 1, "train", transform=ClipCompose([ClipResize(4), needs_contiguous]))
    assert ds[0][0].shape == (3, 16, 4, 4) and seen == [True]


def test_transform_subclass_with_its_own_call_is_not_planned(tmp_path):
    class Stretch(ClipResize):
        def __call__(self, clip, *, generator=None):
            return torch.nn.functional.interpolate(clip, size=(4, 8))

    dfew_tree(tmp_path, [("1", 1)], frames={"00001": 6})
    plan = _decode.plan_geometry(ClipCompose([Stretch(5)]), 8, 8, None)
    assert plan.size is None and isinstance(plan.rest[0], Stretch)
    a, b, _, _ = _pair(tmp_path, ClipCompose([Stretch(5)]), seed=0)
    assert a.shape == (3, 16, 4, 8)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


# ----------------------------------------------------------------------------- statistics


def test_plan_draws_exactly_what_the_transforms_draw():
    crop = ClipRandomResizedCrop(112)
    flip = ClipRandomHorizontalFlip(0.5)
    chain = ClipCompose([crop, flip, ClipColorJitter()])
    for seed in range(200):
        plan = _decode.plan_geometry(chain, 224, 200, _gen(seed))
        g = _gen(seed)
        top, left, h, w = crop.get_params(224, 200, g)
        flipped = torch.rand((), generator=g, dtype=torch.float64).item() < 0.5
        assert plan.box == (left, top, left + w, top + h)
        assert plan.flip == flipped and plan.size == (112, 112)
        assert plan.rest == chain.transforms[2:]


def test_augmentation_statistics_of_the_fast_path():
    # The distributions the recipe promises (area 0.08-1, aspect 3/4-4/3, flip p = 0.5, colour
    # factors in [0.6, 1.4]), checked on what the fast path actually draws.
    chain = train_transform(112)
    g = _gen(123)
    n = 3000
    areas, aspects, flips = [], [], 0
    for _ in range(n):
        plan = _decode.plan_geometry(chain, 224, 224, g)
        left, top, right, bottom = plan.box
        areas.append((right - left) * (bottom - top) / 224**2)
        aspects.append((right - left) / (bottom - top))
        flips += plan.flip
        order, *factors = plan.rest[0].get_params(g)
        assert sorted(order) == [0, 1, 2]
        assert all(0.6 <= f <= 1.4 for f in factors)
    areas_t = torch.tensor(areas)
    assert 0.075 <= areas_t.min() and areas_t.max() <= 1.0
    assert 0.70 <= min(aspects) and max(aspects) <= 1.40
    # Boxes that do not fit are redrawn, so the accepted areas are not uniform: compare with
    # an independent simulation of the recipe (torchvision's RandomResizedCrop algorithm).
    rng = np.random.default_rng(0)
    ref = []
    while len(ref) < n:
        for _ in range(10):
            area = rng.uniform(0.08, 1.0) * 224**2
            ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            w, h = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if 0 < w <= 224 and 0 < h <= 224:
                ref.append(w * h / 224**2)
                break
        else:
            ref.append(1.0)
    # Means of 3000 draws of a spread-0.26 quantity: 0.025 is > 3 standard errors apart.
    assert abs(areas_t.mean().item() - float(np.mean(ref))) <= 0.025
    assert abs(torch.quantile(areas_t, 0.1).item() - float(np.quantile(ref, 0.1))) <= 0.03
    assert abs(flips / n - 0.5) <= 0.035  # > 3 standard deviations of a fair coin


@pytest.mark.parametrize(
    "strengths",
    [(0.4, 0.4, 0.4), (0.9, 0.0, 0.0), (0.0, 0.7, 0.0), (0.0, 0.0, 0.8), (0.0, 0.0, 0.0)],
)
def test_in_place_jitter_of_the_fast_path_equals_the_public_call(strengths):
    raw = torch.randint(0, 256, (4, 3, 10, 10), generator=_gen(0)).float()  # uint8 values
    clip = raw / 255
    jitter = ClipColorJitter(*strengths)
    for seed in range(20):
        expected = jitter(clip, generator=_gen(seed))
        assert 0 <= expected.min() and expected.max() <= 1
        out = jitter._jitter(clip.clone(), _gen(seed), inplace=True)
        torch.testing.assert_close(out, expected, atol=0, rtol=0)
        # The fast path's form: 0..255 values, the division folded into the first step.
        out = jitter._jitter(raw.clone(), _gen(seed), inplace=True, scale=1 / 255)
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
        assert 0 <= out.min() and out.max() <= 1


# ------------------------------------------------------------------------ uint8 clips, draft rules


@pytest.fixture(scope="module")
def film_faces(tmp_path_factory):
    return _face_tree(tmp_path_factory.mktemp("film_faces"), size=112, upscale_to=224)


@pytest.mark.parametrize("seed", range(4))
def test_uint8_clips_are_the_float_clips_before_the_division(faces, seed):
    geometric = train_transform(112, color_jitter=False)
    g_u8, g_f = _gen(seed), _gen(seed)
    u8 = DFEW(faces, 1, "train", transform=geometric, generator=g_u8, output_dtype=torch.uint8)
    f32 = DFEW(faces, 1, "train", transform=geometric, generator=g_f)
    a, la = u8[seed % 3]
    b, lb = f32[seed % 3]
    assert la == lb and a.dtype == torch.uint8 and a.shape == b.shape == (3, 16, 112, 112)
    assert a.is_contiguous()
    assert torch.equal(g_u8.get_state(), g_f.get_state())  # same frames, crop and flip
    torch.testing.assert_close(a.float() / 255, b, atol=0, rtol=0)


@pytest.mark.parametrize("seed", range(3))
def test_uint8_clips_of_the_plain_path_round_its_float_pixels(faces, seed):
    a, b, state_a, state_b = _pair(
        faces, train_transform(112, color_jitter=False), seed=seed, output_dtype=torch.uint8
    )
    assert a.dtype == b.dtype == torch.uint8 and a.shape == b.shape
    assert torch.equal(state_a, state_b)
    assert (a.int() - b.int()).abs().max().item() <= 3


def test_uint8_clips_without_a_transform_are_the_stored_frames(faces):
    ds = DFEW(faces, 1, "train", train=False, output_dtype=torch.uint8)
    plain = DFEW(faces, 1, "train", train=False)
    clip, _ = ds[0]
    assert clip.dtype == torch.uint8 and clip.shape == (3, 16, 224, 224)
    torch.testing.assert_close(clip.float() / 255, plain[0][0], atol=0, rtol=0)


@pytest.mark.parametrize(
    ("transform", "named"),
    [
        (lambda: train_transform(16), "ClipColorJitter"),
        (lambda: ClipCompose([ClipResize(8), ClipResize(4)]), "ClipResize"),
        (
            lambda: ClipCompose([ClipResize(8), ClipNormalize([0.5] * 3, [0.2] * 3)]),
            "ClipNormalize",
        ),
        (lambda: lambda clip: clip, "lambda"),
    ],
)
def test_uint8_clips_refuse_a_transform_that_needs_float_pixels(faces, transform, named):
    with pytest.raises(ValueError, match=f"output_dtype=torch.uint8 .* got the step .*{named}"):
        DFEW(faces, 1, "train", transform=transform(), output_dtype=torch.uint8)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (
            {"output_dtype": torch.float64},
            "output_dtype must be torch.float32 or torch.uint8, got torch.float64",
        ),
        ({"draft": "always"}, "draft must be one of \\('crop', 'frame', 'never'\\), got 'always'"),
        ({"draft": None}, "draft must be one of .* got None"),
    ],
)
def test_bad_draft_or_output_dtype_is_named(faces, options, match):
    with pytest.raises(ValueError, match=match):
        DFEW(faces, 1, "train", **options)


@pytest.mark.parametrize("value", ["uint8", None, np.uint8])
def test_an_output_dtype_that_is_no_torch_dtype_is_a_type_error(faces, value):
    with pytest.raises(TypeError, match="output_dtype must be a torch.dtype .* got "):
        DFEW(faces, 1, "train", output_dtype=value)


def test_draft_rules():
    crop = _decode.GeometryPlan((10, 20, 130, 140), (112, 112), False)  # 120x120 crop
    full = _decode.GeometryPlan((0, 0, 224, 224), (112, 112), False)
    assert _decode._draft_request(crop, 224, 224, "crop") is None
    assert _decode._draft_request(crop, 224, 224, "frame") == (112, 112)
    assert _decode._draft_request(crop, 200, 224, "frame") is None  # 112 > half of 200
    assert _decode._draft_request(full, 224, 224, "crop") == (112, 112)
    assert _decode._draft_request(full, 224, 224, "never") is None
    assert _decode._draft_request(crop, 224, 224) is None  # "crop" is the default rule


def _sampled_paths(root, index):
    ds = DFEW(root, 1, "train")
    folder, _ = ds.samples[index]
    names = ds._frames(folder)
    return [str(folder / names[i]) for i in segment_indices(len(names), 16, train=False)]


@pytest.mark.parametrize("seed", range(8))
def test_draft_frame_train_crops_stay_within_the_documented_psnr(faces, film_faces, seed):
    # A random crop cut from the half-size frame, against the full decode of the same box.
    # Faces enlarged from 112 (as film face crops are) keep their detail at half size; faces
    # rendered at 224 lose their per-pixel noise (docs/data.md gives both figures).
    for root, floor in ((film_faces, 35), (faces, 28)):
        paths = _sampled_paths(root, seed % 3)
        plan = _decode.plan_geometry(train_transform(112), 224, 224, _gen(seed))
        drawn = plan.box
        small, snapped = _decode.decode_planned(paths, lambda h, w, p=plan: p, Image, draft="frame")
        assert (
            max(abs(a - b) for a, b in zip(drawn, snapped.box, strict=True)) <= 1
        )  # one full pixel
        assert all(v % 2 == 0 for v in snapped.box)
        full, _ = _decode.decode_planned(paths, lambda h, w, p=snapped: p, Image, draft="never")
        assert small.shape == full.shape == (16, 3, 112, 112)
        assert _psnr(small.float() / 255, full.float() / 255) >= floor


@pytest.mark.parametrize("seed", range(3))
def test_draft_frame_makes_the_same_draws(faces, seed):
    a, b, state_a, state_b = _pair(faces, train_transform(112), seed=seed, draft="frame")
    assert a.shape == b.shape == (3, 16, 112, 112) and a.dtype == torch.float32
    assert torch.equal(state_a, state_b)  # frames, crop, flip and jitter: the same draws


def test_snapped_boxes_stay_inside_the_frame_and_on_the_small_grid():
    for scale, size in ((0.5, (224, 224)), (0.5, (225, 223)), (0.25, (300, 200))):
        step = round(1 / scale)
        for box in [(0, 0, *size), (1, 1, size[0] - 1, size[1] - 1), (size[0] - 1, 0, *size)]:
            left, top, right, bottom = _decode._snap(box, scale, size)
            assert all(v % step == 0 for v in (left, top, right, bottom))
            assert 0 <= left < right <= size[0] and 0 <= top < bottom <= size[1]
            assert (
                max(abs(a - b) for a, b in zip(box, (left, top, right, bottom), strict=True))
                <= step
            )


def test_draft_frame_cuts_edge_boxes_inside_the_small_frame(faces):
    paths = _sampled_paths(faces, 0)[:2]
    for box in [(0, 0, 224, 224), (1, 1, 223, 223), (223, 0, 224, 3), (0, 221, 5, 224)]:
        plan = _decode.GeometryPlan(box, (112, 112), False)
        frames, _ = _decode.decode_planned(paths, lambda h, w, p=plan: p, Image, draft="frame")
        assert frames.shape == (2, 3, 112, 112) and frames.dtype == torch.uint8


@pytest.mark.parametrize("odd", ["00001.jpg", "00010.jpg"])
@pytest.mark.parametrize(
    ("transform", "draft", "floor"),
    [
        (lambda: test_transform(112), "crop", 35),
        (lambda: train_transform(112, color_jitter=False), "frame", 20),
    ],
)
def test_a_png_frame_under_a_jpeg_name_is_cut_at_the_clip_scale(
    tmp_path, odd, transform, draft, floor
):
    # Draft mode shrinks only JPEGs: a PNG among them (first frame or not) is reduced to the
    # scale of the clip's first frame, so every frame is cut at one scale.
    root = _face_tree(tmp_path, clips=1, frames=16)
    path = root / FRAMES / "00001" / odd
    with Image.open(path) as img:
        png = img.convert("RGB")
    png.save(path, format="PNG")
    options = {"train": False, "draft": draft, "output_dtype": torch.uint8}
    a, b, _, _ = _pair(root, transform(), seed=0, **options)
    assert a.shape == b.shape == (3, 16, 112, 112)
    assert _psnr(a.float() / 255, b.float() / 255) >= floor


def test_draft_never_decodes_the_test_resize_in_full(faces):
    a, b, _, _ = _pair(faces, test_transform(112), seed=0, train=False, draft="never")
    assert (a - b).abs().max().item() <= 3 / 255


# ----------------------------------------------------------------------------- listing, errors


def test_frames_are_listed_once_at_construction(tmp_path, monkeypatch):
    dfew_tree(tmp_path, [("1", 1), ("2", 2)], frames={"00001": 20, "00002": 7})
    ds = DFEW(tmp_path, 1, "train", transform=train_transform(6))

    def no_listing(_):
        raise AssertionError("listed a clip folder in __getitem__")

    monkeypatch.setattr(_frames, "_frame_names", no_listing)
    for index in (0, 1, 0, 1):
        assert ds[index][0].shape == (3, 16, 6, 6)


def test_frame_order_is_numeric_for_same_pattern_and_mixed_names(tmp_path):
    rng = np.random.default_rng(0)
    for case, names in enumerate(
        [
            [f"{k:03d}.jpg" for k in rng.permutation(120)],  # same pattern: sorted as text
            [f"img_{k:04d}_b.jpeg" for k in rng.permutation(50)],
            [f"{k}.jpg" for k in rng.permutation(120)],  # unpadded: 2 before 10
            ["frame2.jpg", "frame10.jpg", "frame1.JPG", "Frame3.jpg"],
        ]
    ):
        folder = tmp_path / str(case)
        folder.mkdir()
        for name in names:
            (folder / name).write_bytes(b"")
        got = [p.name for p in _frames.list_frames(folder)]
        assert got == sorted(names, key=_frames._natural_key)
        assert len(got) == len(names)


@pytest.mark.parametrize("fast", [True, False])
def test_removed_frames_are_resampled_and_an_emptied_folder_is_named(tmp_path, fast):
    dfew_tree(tmp_path, [("1", 1)], frames={"00001": 8})
    ds = DFEW(tmp_path, 1, "train", transform=test_transform(8), train=False, fast_decode=fast)
    folder = tmp_path / FRAMES / "00001"
    for k in range(5, 9):
        (folder / f"{k:05d}.jpg").unlink()
    clip, _ = ds[0]
    # Re-listed: 4 frames (grey 0, 10, 20, 30) stretched to 16.
    grey = clip[0, :, 4, 4] * 255
    expected = torch.tensor([10.0 * ((2 * i + 1) * 4 // 32) for i in range(16)])
    torch.testing.assert_close(grey, expected, atol=3, rtol=0)
    for f in folder.iterdir():
        f.unlink()
    with pytest.raises(FileNotFoundError, match="holds no JPEG frames any more") as err:
        ds[0]
    assert str(folder) in str(err.value)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("corruption", ["garbage", "truncated"])
def test_corrupt_frame_named_with_a_planned_transform(tmp_path, fast, corruption):
    dfew_tree(tmp_path, [("1", 1)], frames={"00001": 3})
    bad = tmp_path / FRAMES / "00001" / ("00002.jpg" if corruption == "truncated" else "00001.jpg")
    data = bad.read_bytes()
    bad.write_bytes(b"this is not a jpeg" if corruption == "garbage" else data[: len(data) // 2])
    ds = DFEW(tmp_path, 1, "train", transform=train_transform(4), fast_decode=fast)
    with pytest.raises(CorruptFrameError, match="corrupt or not an image") as err:
        ds[0]
    assert str(bad) in str(err.value)


@pytest.mark.parametrize("fast", [True, False])
def test_frames_of_different_sizes_named_with_a_planned_transform(tmp_path, fast):
    dfew_tree(tmp_path, [("1", 1)], frames={"00001": 3})
    odd = tmp_path / FRAMES / "00001" / "00003.jpg"
    Image.new("RGB", (9, 8)).save(odd)
    ds = DFEW(tmp_path, 1, "train", transform=test_transform(4), train=False, fast_decode=fast)
    with pytest.raises(ValueError, match="is 9x8 but .* is 8x8") as err:
        ds[0]
    assert str(odd) in str(err.value)


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grey_and_cmyk_frames_become_rgb(tmp_path, mode):
    dfew_tree(tmp_path, [("1", 1)])
    folder = tmp_path / FRAMES / "00001"
    write_clip(folder, 5, size=32)
    for path in folder.iterdir():
        Image.open(path).convert(mode).save(path, quality=95)
    a, b, _, _ = _pair(tmp_path, test_transform(16), seed=0, train=False)
    assert a.shape == (3, 16, 16, 16)
    assert (a - b).abs().max().item() <= 3 / 255 if mode == "L" else _psnr(a, b) >= 35
