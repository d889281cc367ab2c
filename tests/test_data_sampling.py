from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from micacl_layers.data.sampling import segment_indices


def _segments(n, s):
    return [(i * n // s, (i + 1) * n // s) for i in range(s)]


@pytest.mark.parametrize("num_frames", [5, 11, 15, 16, 17, 71, 847])
@pytest.mark.parametrize("train", [True, False])
def test_length_range_and_order(num_frames, train):
    g = torch.Generator().manual_seed(3)
    idx = segment_indices(num_frames, 16, train=train, generator=g)
    assert len(idx) == 16
    assert all(isinstance(i, int) for i in idx)
    assert all(0 <= i < num_frames for i in idx)
    assert idx == sorted(idx)
    if num_frames >= 16:
        assert len(set(idx)) == 16  # strictly increasing: no frame used twice
    else:
        assert set(idx) == set(range(num_frames))  # short clip: every frame kept


@pytest.mark.parametrize("num_frames", [16, 17, 71, 847])
@pytest.mark.parametrize("train", [True, False])
def test_one_index_per_segment(num_frames, train):
    idx = segment_indices(num_frames, 16, train=train, generator=torch.Generator().manual_seed(0))
    for i, (start, end) in zip(idx, _segments(num_frames, 16), strict=True):
        assert start <= i < end


def test_short_clip_is_stretched_in_order():
    # Hand-computed: index i -> ((2i + 1) * 5) // 32.
    expected = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert segment_indices(5, 16, train=False) == expected
    # Short clips do not depend on the mode or on randomness.
    assert segment_indices(5, 16, train=True, generator=torch.Generator().manual_seed(9)) == (
        expected
    )
    assert segment_indices(11, 16, train=False) == [((2 * i + 1) * 11) // 32 for i in range(16)]
    assert segment_indices(1, 16, train=True) == [0] * 16


def test_test_mode_centres_and_determinism():
    idx = segment_indices(71, 16, train=False)
    # Segment 0 is [0, 4) -> 2; segment 15 is [66, 71) -> 68.
    assert idx[0] == 2 and idx[-1] == 68
    assert idx == [s + (e - s) // 2 for s, e in _segments(71, 16)]
    torch.manual_seed(0)
    a = segment_indices(847, 16, train=False)
    torch.manual_seed(1)
    assert segment_indices(847, 16, train=False) == a
    assert segment_indices(32, 4, train=False) == [4, 12, 20, 28]


def test_train_reproducible_with_generator_and_varies_with_seed():
    a = segment_indices(847, 16, train=True, generator=torch.Generator().manual_seed(7))
    b = segment_indices(847, 16, train=True, generator=torch.Generator().manual_seed(7))
    c = segment_indices(847, 16, train=True, generator=torch.Generator().manual_seed(8))
    assert a == b
    assert a != c


def test_generator_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    segment_indices(847, 16, train=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.rand(3), expected)


def test_train_draws_cover_each_segment_uniformly():
    g = torch.Generator().manual_seed(0)
    draws = torch.tensor([segment_indices(71, 16, train=True, generator=g) for _ in range(3000)])
    for k, (start, end) in enumerate(_segments(71, 16)):
        values, counts = draws[:, k].unique(return_counts=True)
        assert values.tolist() == list(range(start, end))
        # Each of the 4-5 frames should get ~1/len of the draws.
        share = counts.double() / counts.sum()
        assert torch.allclose(share, torch.full_like(share, 1 / (end - start)), atol=0.05)


@pytest.mark.parametrize("bad", [0, -3])
def test_num_frames_below_one_raises(bad):
    with pytest.raises(ValueError, match="num_frames"):
        segment_indices(bad, 16, train=False)


def test_bad_arguments_named():
    with pytest.raises(ValueError, match="num_segments"):
        segment_indices(10, 0, train=True)
    with pytest.raises(TypeError, match="num_frames"):
        segment_indices(10.0, 16, train=True)
    with pytest.raises(TypeError, match="num_frames"):
        segment_indices(True, 16, train=True)
    with pytest.raises(TypeError):
        segment_indices(10, 16)  # train is required and keyword-only


def test_accepts_integer_like():
    assert segment_indices(torch.tensor(32), 4, train=False) == [4, 12, 20, 28]


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 2000),
    s=st.integers(1, 64),
    train=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_properties(n, s, train, seed):
    idx = segment_indices(n, s, train=train, generator=torch.Generator().manual_seed(seed))
    assert len(idx) == s
    assert idx == sorted(idx)
    assert 0 <= idx[0] and idx[-1] < n
    if n >= s:
        assert len(set(idx)) == s
    else:
        assert set(idx) == set(range(n))


@pytest.mark.parametrize("num_frames", range(1, 16))
def test_a_short_clips_frames_are_repeated_evenly_as_documented(num_frames):
    # docs/data.md said "each repeated 1-2 times" next to a 5-frame example repeating each
    # frame 3-4 times: the count is 16 // N or one more (1-2 only for clips of 8-15 frames).
    counts = torch.bincount(torch.tensor(segment_indices(num_frames, 16, train=False)))
    assert set(counts.tolist()) <= {16 // num_frames, -(-16 // num_frames)}
    docs = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()
    assert "each repeated `16 // N` or `16 // N + 1` times" in " ".join(docs.split())
