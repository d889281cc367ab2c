"""Mixed precision: every module and loss stays finite under torch.autocast.

bfloat16 runs on the CPU everywhere; float16 and bfloat16 on CUDA run when a GPU is present.
"""

from __future__ import annotations

import pytest
import torch

from micacl_layers import (
    GEIIM,
    WIAN,
    InstanceSelfAttention,
    InstanceWeights,
    IntensityAwareLoss,
    MCCLoss,
    MICACLLoss,
    WIANCell,
)
from micacl_layers.models import MICACLHead

DEVICES = [("cpu", torch.bfloat16)]
if torch.cuda.is_available():
    DEVICES += [("cuda", torch.float16), ("cuda", torch.bfloat16)]

TARGETS = [0, 0, 1, 1, 2, 2, 0, 1]


def _finite_grads(module, *tensors):
    grads = [t.grad for t in tensors] + [
        p.grad for p in module.parameters() if p.requires_grad and p.grad is not None
    ]
    assert grads, "no gradient reached anything"
    for g in grads:
        assert torch.isfinite(g).all()


def _cases():
    # (name, module factory, input factory, call)
    return [
        (
            "geiim",
            lambda: GEIIM(4, 16),
            lambda d: (torch.randn(3, 4, 16, device=d),),
            lambda m, x: m(x),
        ),
        (
            "wian",
            lambda: WIAN(16, 8, 2, batch_first=True, bidirectional=True),
            lambda d: (torch.randn(3, 4, 16, device=d), torch.rand(3, 4, 1, device=d)),
            lambda m, x, w: m(x, weights=w)[0],
        ),
        (
            "wian_cell",
            lambda: WIANCell(16, 8),
            lambda d: (torch.randn(3, 16, device=d),),
            lambda m, x: m(x)[0],
        ),
        (
            "instance_weights",
            lambda: InstanceWeights(16, 8),
            lambda d: (torch.randn(3, 4, 16, device=d),),
            lambda m, x: m(x),
        ),
        (
            "attention",
            lambda: InstanceSelfAttention(16, 4),
            lambda d: (torch.randn(3, 4, 16, device=d),),
            lambda m, x: m(x),
        ),
        (
            "head",
            lambda: MICACLHead(16, 3, num_instances=4, hidden_size=8),
            lambda d: (torch.randn(3, 4, 16, device=d),),
            lambda m, x: m(x)[0],
        ),
        (
            "head_lstm",
            lambda: MICACLHead(16, 3, num_instances=4, hidden_size=8, aggregator="lstm"),
            lambda d: (torch.randn(3, 4, 16, device=d),),
            lambda m, x: m(x)[0],
        ),
    ]


def test_head_runs_its_lstm_outside_cpu_autocast():
    # torch 2.13-2.14 raise for nn.LSTM under CPU bfloat16 autocast on CPUs without AVX-512
    # (the ablation's LSTM baseline crashed there); it now runs in float32, as WIAN's kernel.
    torch.manual_seed(0)
    head = MICACLHead(16, 3, num_instances=4, hidden_size=8, aggregator="lstm")
    seen = []
    head.aggregator.register_forward_hook(lambda m, args, out: seen.append(out[0].dtype))
    x = torch.randn(3, 4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = head(x)
    assert seen == [torch.float32] and torch.isfinite(logits.float()).all()
    assert logits.dtype == torch.bfloat16  # the classifier around it still runs in bfloat16


@pytest.mark.parametrize(("device", "dtype"), DEVICES)
@pytest.mark.parametrize("case", _cases(), ids=lambda c: c[0])
def test_layers_finite_under_autocast(device, dtype, case):
    _, make, inputs, call = case
    torch.manual_seed(0)
    module = make().to(device)
    xs = [x.requires_grad_() for x in inputs(device)]
    with torch.autocast(device, dtype=dtype):
        out = call(module, *xs)
    assert torch.isfinite(out.float()).all()
    out.float().square().mean().backward()
    _finite_grads(module, *xs)


@pytest.mark.parametrize(("device", "dtype"), DEVICES)
@pytest.mark.parametrize("form", ["ratio", "log"])
@pytest.mark.parametrize("scale", [1.0, 1e-12, 1e4])
def test_mccl_finite_under_autocast(device, dtype, form, scale):
    torch.manual_seed(0)
    mccl = MCCLoss(3, 32, [50, 30, 5], projection_dim=16, form=form).to(device)
    feats = (torch.randn(8, 32, device=device) * scale).requires_grad_()
    logits = torch.randn(8, 3, device=device, requires_grad=True)
    with torch.autocast(device, dtype=dtype):
        out = mccl(feats, logits, torch.tensor(TARGETS, device=device), return_breakdown=True)
    # The similarity and log-sum-exp ran in float32 whatever autocast chose for the matmuls.
    assert out.loss.dtype == torch.float32
    assert torch.isfinite(out.loss)
    out.loss.backward()
    _finite_grads(mccl, feats)


@pytest.mark.parametrize(("device", "dtype"), DEVICES)
def test_full_criterion_and_ial_finite_under_autocast(device, dtype):
    torch.manual_seed(0)
    head = MICACLHead(16, 3, num_instances=4, hidden_size=8).to(device)
    crit = MICACLLoss(3, head.feature_dim, [50, 30, 5], projection_dim=8).to(device)
    x = torch.randn(8, 4, 16, device=device)
    targets = torch.tensor(TARGETS, device=device)
    with torch.autocast(device, dtype=dtype):
        logits, feature = head(x)
        loss = crit(feature, logits, targets, classifier=head.classifier)
        ial = IntensityAwareLoss()(logits * 1e4, targets)
    assert torch.isfinite(loss) and torch.isfinite(ial)
    (loss + ial).backward()
    _finite_grads(head)
    _finite_grads(crit)
