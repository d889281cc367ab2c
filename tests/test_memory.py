"""Cross-batch memory for MCCLoss: positives for small batches, state_dict, FIFO behaviour."""

from __future__ import annotations

import re
from fractions import Fraction

import numpy as np
import pytest
import torch

from micacl_layers import MCCLoss
from micacl_layers.memory import ContrastMemory

K, D = 7, 16


def _batch(targets, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = len(targets)
    return torch.randn(n, D, generator=g), torch.randn(n, K, generator=g), torch.tensor(targets)


def test_every_anchor_of_a_seen_class_has_a_positive_with_batch_4():
    mccl = MCCLoss(K, D, [10] * K, projection_dim=8, memory_size=32)
    seen: set[int] = set()
    stream = [[0, 1, 2, 3], [4, 5, 6, 0], [1, 3, 5, 6], [2, 2, 4, 0]]
    for step, targets in enumerate(stream):
        out = mccl(*_batch(targets, step), return_breakdown=True)
        for label, has_pos in zip(targets, out.has_positive.tolist(), strict=True):
            if label in seen:
                assert has_pos, (step, label)
        seen.update(targets)
    # Without the memory the same stream leaves most anchors without positives.
    plain = MCCLoss(K, D, [10] * K, projection_dim=8)
    out = plain(*_batch(stream[1], 1), return_breakdown=True)
    assert not out.has_positive.any()


def test_memory_changes_the_loss_and_only_in_training():
    mccl = MCCLoss(K, D, [10] * K, projection_dim=8, memory_size=16, form="log")
    mccl(*_batch([0, 1, 2, 3], 0))
    batch = _batch([0, 1, 4, 4], 1)
    with_memory = mccl(*batch)
    assert len(mccl.memory) == 8
    mccl.eval()
    without = mccl(*batch)
    assert len(mccl.memory) == 8  # eval neither uses nor fills the queue
    assert not torch.allclose(with_memory, without)


def test_memory_survives_a_state_dict_round_trip():
    a = MCCLoss(K, D, None, projection_dim=8, memory_size=10)
    for step in range(3):
        a(*_batch([0, 1, 2, 3], step))
    b = MCCLoss(K, D, None, projection_dim=8, memory_size=10)
    b.load_state_dict(a.state_dict())
    assert "memory.targets" in a.state_dict() and "memory.features_0" in a.state_dict()
    fa, ta = a.memory.get()
    fb, tb = b.memory.get()
    assert torch.equal(ta, tb) and all(torch.equal(x, y) for x, y in zip(fa, fb, strict=True))
    batch = _batch([0, 5, 1, 1], 9)
    torch.testing.assert_close(a(*batch), b(*batch))


def test_reset_memory():
    mccl = MCCLoss(K, D, [10] * K, projection_dim=8, memory_size=10)
    mccl(*_batch([0, 1, 2, 3]))
    assert len(mccl.memory) == 4
    mccl.reset_memory()
    assert len(mccl.memory) == 0


def test_fifo_overwrites_the_oldest_entries():
    mem = ContrastMemory(5, dims=(2,))
    for i in range(3):
        mem.push([torch.full((2, 2), float(i))], torch.tensor([i, i]))
    _, targets = mem.get()
    assert len(mem) == 5
    # Six labels pushed into five slots: only the very first (a 0) was overwritten.
    assert sorted(targets.tolist()) == [0, 1, 1, 2, 2]
    # A batch larger than the queue keeps only its newest entries.
    mem.push([torch.arange(14.0).view(7, 2)], torch.arange(7))
    assert sorted(mem.get()[1].tolist()) == [2, 3, 4, 5, 6]


def test_memory_gradients_flow_only_through_the_batch():
    mccl = MCCLoss(K, D, [10] * K, projection_dim=8, memory_size=8)
    mccl(*_batch([0, 1, 2, 3], 0))
    f, z, y = _batch([0, 1, 2, 3], 1)
    f.requires_grad_()
    mccl(f, z, y).backward()
    assert torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0
    assert not any(t.requires_grad for t in mccl.memory.get()[0])


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, "float32"])
def test_non_floating_dtype_is_refused(dtype):
    # An integer buffer was accepted and push then truncated every embedding to an integer.
    with pytest.raises(TypeError, match="`dtype` .* must be a floating torch.dtype"):
        ContrastMemory(4, (3,), dtype=dtype)


@pytest.mark.parametrize("size", [0, np.int64(0), np.int32(0), np.uint8(0)])
def test_an_integer_zero_disables_the_memory(size):
    assert ContrastMemory.optional(size, (4,)) is None
    assert MCCLoss(3, 8, [5, 3, 1], projection_dim=4, memory_size=size).memory is None


def test_a_0d_integer_tensor_zero_disables_the_memory_as_other_integer_zeros():
    # A 0-d integer tensor is an int to every size argument (tensor(4) gives a memory of 4),
    # so tensor(0) was refused as "must be >= 0 ..., got tensor(0)", a rule it keeps.
    assert ContrastMemory.optional(torch.tensor(0), (4,)) is None
    assert ContrastMemory.optional(torch.tensor(0, dtype=torch.int32), (4,)) is None
    loss = MCCLoss(3, 8, [5, 3, 1], projection_dim=4, memory_size=torch.tensor(0))
    assert loss.memory is None


@pytest.mark.parametrize(
    "size",
    [
        *(0.0, -0.0, np.float64(0.0), np.float32(0.0), Fraction(0), False, np.bool_(False)),
        *(torch.tensor(0.0), torch.tensor([0]), torch.tensor(0, device="meta")),
        torch.tensor(False),
    ],
)
def test_a_zero_that_is_no_int_is_refused_as_no_int(size):
    # `size == 0` let a float 0.0 through as "no memory" while a float 5.0 was refused as no
    # int: the zero case, too, takes integers only. The message says so: "must be >= 0, got
    # 0.0" named a rule that 0.0 keeps.
    rule = re.escape("`memory_size` must be an int >= 0 (0 disables the memory)")
    message = rf"{rule}, got {re.escape(repr(size))}"
    with pytest.raises(ValueError, match=message):
        ContrastMemory.optional(size, (4,))
    with pytest.raises(ValueError, match=message):
        MCCLoss(3, 8, [5, 3, 1], projection_dim=4, memory_size=size)


@pytest.mark.parametrize("size", [-1, np.int64(-3), torch.tensor(-1)])
def test_a_negative_int_size_keeps_the_negative_message(size):
    message = rf"`memory_size` must be >= 0 \(0 disables the memory\), got {re.escape(repr(size))}"
    with pytest.raises(ValueError, match=message):
        ContrastMemory.optional(size, (4,))
    with pytest.raises(ValueError, match=message):
        MCCLoss(3, 8, [5, 3, 1], projection_dim=4, memory_size=size)
