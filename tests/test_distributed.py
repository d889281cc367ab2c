"""MCCLoss(gather_distributed=True) across two CPU processes (gloo) equals one process, alone
and inside the whole MICACLLoss objective."""

from __future__ import annotations

import os
import signal
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from micacl_layers import MCCLoss, MICACLLoss
from micacl_layers.distributed import gather_with_grad, gather_without_grad

pytestmark = pytest.mark.slow  # end-to-end runs and process groups: not in the fast tier

B, D, K = 12, 16, 3


def _data(options=None):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, 8, generator=g)
    targets = torch.tensor([0, 1, 2, 0, 0, 1, 2, 2, 0, 1, 1, 0])
    for row in (options or {}).get("ignored", ()):
        targets[row] = -100  # the CET's ignore_index
    return x, targets


# The balanced options (not in the paper); the class complements are the head's weight rows.
BALANCED = {"class_average": True, "class_complements": True, "weight_norm": "batch"}


def _models(options):
    torch.manual_seed(1)
    net = torch.nn.Linear(8, D).double()
    head = torch.nn.Linear(D, K).double()
    options = {k: v for k, v in options.items() if k not in ("ignored", "mccl_part")}
    preset = options.pop("preset", None)
    if preset is not None:
        # The whole objective: the CET is per sample, only its MCCL gathers. The augmentation's
        # noise would differ between ranks and one process, so it is off (its CE stays).
        crit = MICACLLoss.from_preset(
            preset, K, D, [40, 20, 5], projection_dim=6, aug_noise_std=0.0, **options
        )
        return net, head, crit.double()
    mccl = MCCLoss(K, D, [40, 20, 5], projection_dim=6, form="log", **options).double()
    return net, head, mccl


def _mccl(criterion):
    return criterion.mccl if isinstance(criterion, MICACLLoss) else criterion


def _params(net, head, criterion, mccl_part=False):
    # The head only feeds the detached difficulty factor of Eq. 7, so it gets no gradient from
    # MCCL, unless its weight rows are the class complements; the CET trains all of it.
    if isinstance(criterion, MICACLLoss) and not mccl_part:
        head_params = list(head.parameters())
    else:
        head_params = [head.weight] if _mccl(criterion).class_complements else []
    return [*net.parameters(), *head_params, *criterion.parameters()]


def _loss(criterion, head, features, targets, mccl_part=False):
    if isinstance(criterion, MICACLLoss):
        out = criterion(features, head(features), targets, classifier=head, return_breakdown=True)
        return out.mccl if mccl_part else out.loss
    prototypes = head.weight if criterion.class_complements else None
    return criterion(features, head(features), targets, prototypes=prototypes)


def _single_process(options):
    x, targets = _data(options)
    net, head, mccl = _models(options)
    features = net(x.double())
    part = options.get("mccl_part", False)
    loss = _loss(mccl, head, features, targets, part)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in _params(net, head, mccl, part)]


def _worker(rank, world, port, sizes, queue, options):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x, targets = _data(options)
        net, head, mccl = _models(options)
        _mccl(mccl).gather_distributed = True
        start = sum(sizes[:rank])
        local = slice(start, start + sizes[rank])
        features = net(x[local].double())
        loss = _loss(mccl, head, features, targets[local], options.get("mccl_part", False))
        loss.backward()
        grads = []
        for p in _params(net, head, mccl, options.get("mccl_part", False)):
            # What DDP does: average the gradients over ranks.
            g = p.grad.clone()
            dist.all_reduce(g)
            grads.append(g / world)
        # The helpers themselves: rank order, unequal sizes, no grad for labels.
        gathered = gather_without_grad(targets[local])
        ok_gather = torch.equal(gathered, targets)
        y = gather_with_grad(
            torch.ones(sizes[rank], 2, dtype=torch.double, requires_grad=True) * (rank + 1)
        )
        ok_rows = y.shape == (B, 2)
        # Plain values, not tensors: tensors travel as shared-memory handles that die with
        # this process, which may exit before the parent reads them.
        queue.put((rank, loss.item(), [g.tolist() for g in grads], ok_gather, ok_rows))
        # A rank that tears down while the other is still in a collective aborts both.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(sizes, options):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [
        ctx.Process(target=_worker, args=(r, 2, port, sizes, queue, options)) for r in range(2)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        # Every result is in: a SIGABRT now can only be the gloo teardown abort (conftest).
        assert p.exitcode in (0, -signal.SIGABRT)
    return sorted(results, key=lambda r: r[0])


def _check(sizes, options=None):
    options = options or {}
    ref_loss, ref_grads = _single_process(options)
    results = _run(sizes, options)
    if "preset" in options and not options.get("mccl_part"):
        # A CET mean over each rank's shard: equal shards average to the batch's mean.
        assert len(set(sizes)) == 1
        mean = sum(r[1] for r in results) / len(results)
        torch.testing.assert_close(
            torch.tensor(mean, dtype=torch.float64), ref_loss, rtol=0, atol=1e-6
        )
    for _rank, loss, grads, ok_gather, ok_rows in results:
        assert ok_gather and ok_rows
        if "preset" not in options or options.get("mccl_part"):
            torch.testing.assert_close(
                torch.tensor(loss, dtype=torch.float64), ref_loss, rtol=0, atol=1e-6
            )
        assert len(grads) == len(ref_grads)
        for g, r in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(torch.tensor(g, dtype=torch.float64), r, rtol=0, atol=1e-6)


def test_gather_matches_single_process_equal_shards():
    _check([6, 6])


def test_gather_matches_single_process_unequal_shards():
    _check([5, 7])


def test_gather_matches_single_process_balanced_options():
    _check([5, 7], BALANCED)


@pytest.mark.parametrize("preset", ["paper_logit_adjusted", "paper"])
def test_whole_objective_preset_matches_single_process(preset):
    _check([6, 6], {"preset": preset})


def test_whole_objective_with_balanced_smoothing_matches_single_process():
    _check([6, 6], {"preset": "paper_logit_adjusted", "balanced_smoothing": True})


@pytest.mark.parametrize("ignored", [(0, 1, 3, 5), (0, 1, 2, 3, 4, 5)])
def test_ignored_targets_leave_the_gathered_mccl_as_one_process(ignored):
    # MICACLLoss drops ignore_index samples before MCCL gathers: rank 0 keeps two of its six,
    # or none (unequal shards into the gather, one of them empty), and MCCL's part equals one
    # process's on the batch.
    _check([6, 6], {"preset": "paper", "ignored": ignored, "mccl_part": True})


def test_gather_is_a_no_op_without_a_process_group():
    mccl = MCCLoss(K, D, [4, 2, 1], projection_dim=4, gather_distributed=True)
    f, z = torch.randn(5, D), torch.randn(5, K)
    y = torch.tensor([0, 1, 2, 0, 1])
    plain = MCCLoss(K, D, [4, 2, 1], projection_dim=4)
    plain.load_state_dict(mccl.state_dict())
    torch.testing.assert_close(mccl(f, z, y), plain(f, z, y))


@pytest.mark.parametrize("gather", [gather_with_grad, gather_without_grad])
def test_gather_rejects_a_non_tensor_or_a_scalar_even_in_one_process(gather):
    # One process returned them unchanged; with a process group they failed inside torch.
    with pytest.raises(TypeError, match="`tensor` must be a torch.Tensor, got int"):
        gather(5)
    with pytest.raises(ValueError, match=r"`tensor` must have shape \(B_r, \*\)"):
        gather(torch.tensor(1.0))
