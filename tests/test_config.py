"""The fast-path switch: settings, scope, what runs under each, and accuracy of the default."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from micacl_layers import GEIIM, WIAN, IntensityAwareLoss, MCCLoss, MICACLLoss, WIANCell, config
from micacl_layers.models import MICACLHead


def test_default_is_auto_and_context_manager_restores():
    assert config.get_fast_paths() in ("auto", "on", "off")
    before = config.get_fast_paths()
    with config.fast_paths("off"):
        assert config.get_fast_paths() == "off"
        with config.fast_paths("on"):
            assert config.get_fast_paths() == "on"
        assert config.get_fast_paths() == "off"
    assert config.get_fast_paths() == before


def test_context_manager_restores_after_an_error():
    before = config.get_fast_paths()
    with pytest.raises(RuntimeError), config.fast_paths("off"):
        raise RuntimeError("boom")
    assert config.get_fast_paths() == before


@pytest.mark.parametrize("bad", ["fast", "", None, True, "AUTO"])
def test_bad_setting_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="`mode` must be one of"):
        config.set_fast_paths(bad)


@pytest.mark.parametrize(("value", "expected"), [("off", "off"), (" On ", "on"), ("", "auto")])
def test_environment_variable_gives_the_start_value(value, expected, monkeypatch):
    monkeypatch.setenv(config.ENV_VAR, value)
    assert config._from_environment() == expected


def test_bad_environment_variable_names_it(monkeypatch):
    monkeypatch.setenv(config.ENV_VAR, "sometimes")
    with pytest.raises(ValueError, match=config.ENV_VAR):
        config._from_environment()


def test_import_reads_the_environment_variable():
    env = {**os.environ, config.ENV_VAR: "off"}
    code = "from micacl_layers import config; print(config.get_fast_paths())"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "off"


def test_auto_enables_only_what_was_measured():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    with config.fast_paths("auto"):
        assert config.enabled("wian", cpu, torch.float32)
        assert config.enabled("contrastive", cpu, torch.float32)
        assert not config.enabled("wian", cuda, torch.float32)  # never measured there
        assert not config.enabled("wian", cpu, torch.float64)
        assert not config.enabled("onednn", cpu, torch.float32)  # a private torch operator
        assert not config.enabled("projected_contrastive", cpu, torch.float32)
    with config.fast_paths("off"):
        assert not config.enabled("wian", cpu, torch.float32)
    with config.fast_paths("on"):
        assert config.enabled("onednn", cpu, torch.float32)
        assert config.enabled("wian", cuda, torch.bfloat16)


@pytest.mark.parametrize("switch", ["auto", "on"])
def test_kernels_step_aside_under_torch_func_transforms(switch):
    """torch.func.grad and jacrev work on nn.LSTM; an autograd.Function without setup_context
    (the kernels) raised under them, so the kernels step aside and autograd's values come out."""
    torch.manual_seed(0)
    wian = WIAN(4, 6, bidirectional=True)
    mccl = MCCLoss(3, 8, [5, 3, 1], projection_dim=None)
    x, w = torch.randn(5, 3, 4), torch.rand(5, 3)
    f, z, y = torch.randn(6, 8), torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])

    def wian_loss(x):
        return wian(x, weights=w)[0].square().sum()

    with config.fast_paths(switch):
        grad_x = torch.func.grad(wian_loss)(x)
        grad_f = torch.func.grad(lambda f: mccl(f, z, y))(f)
        jac = torch.func.jacrev(lambda x: wian(x)[1][0].sum(dim=(0, 1)))(x)
    with config.fast_paths("off"):
        xr, fr = x.clone().requires_grad_(), f.clone().requires_grad_()
        (want_x,) = torch.autograd.grad(wian_loss(xr), xr)
        (want_f,) = torch.autograd.grad(mccl(fr, z, y), fr)
        want_jac = torch.autograd.functional.jacobian(lambda x: wian(x)[1][0].sum(dim=(0, 1)), x)
    torch.testing.assert_close(grad_x, want_x)
    torch.testing.assert_close(grad_f, want_f)
    torch.testing.assert_close(jac, want_jac)


# ------------------------------------------------------------------------------------------
# Switch off: no custom autograd Function anywhere in the graph
# ------------------------------------------------------------------------------------------


def _custom_functions(*outputs: torch.Tensor) -> set[str]:
    """Names of the custom autograd Functions (``BackwardCFunction`` nodes) in the graph."""
    found, seen = set(), set()
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            found.add(type(node).__name__)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return found


def _whole_library_graph() -> list[torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(6, 4, 16, requires_grad=True)
    w = torch.rand(6, 4, 1)
    out, (h_n, _) = WIAN(16, 8, num_layers=2, bidirectional=True, batch_first=True)(x, weights=w)
    h, _ = WIANCell(16, 8)(x[:, 0])
    geiim = GEIIM(4, 16)(x)
    head = MICACLHead(16, num_classes=3, num_instances=4, hidden_size=8)
    logits, feature = head(x)
    targets = torch.tensor([0, 0, 1, 1, 2, 2])
    mccl = MCCLoss(3, head.feature_dim, [5, 4, 3], projection_dim=64, memory_size=8)
    crit = MICACLLoss(3, head.feature_dim, class_counts=[5, 4, 3])
    losses = [
        mccl(feature, logits, targets),
        mccl(feature, logits, targets),
        crit(feature, logits, targets, classifier=head.classifier),
        IntensityAwareLoss()(logits, targets),
    ]
    return [out, h_n, h, geiim, *losses]


def test_switch_off_runs_no_custom_autograd_function():
    with config.fast_paths("off"):
        assert _custom_functions(*_whole_library_graph()) == set()


def test_graph_check_sees_the_fast_paths():
    """The check above can fail: with the switch on the same graph holds the kernels."""
    with config.fast_paths("on"):
        names = _custom_functions(*_whole_library_graph())
    assert {"_WIANLayerBackward", "_ContrastiveCoreBackward"} <= names


# ------------------------------------------------------------------------------------------
# Accuracy of the default path on ill-conditioned projections (against float64)
# ------------------------------------------------------------------------------------------


def _offset_case():
    """Features offset by 100 and a projection whose bias cancels that offset."""
    g = torch.Generator().manual_seed(0)
    dim, proj = 16, 64
    base = torch.randn(48, dim, generator=g, dtype=torch.float64)
    features = base + 100.0
    weight = torch.randn(proj, dim // 2, generator=g, dtype=torch.float64) / dim**0.5
    # Scale 2 pools pairs: the pooled offset is 100 in every column, cancelled by the bias.
    bias = -100.0 * weight.sum(dim=1)
    return features, weight, bias


def _ill_conditioned_case():
    """A projection of condition number 1e4 and features in its weak directions."""
    g = torch.Generator().manual_seed(1)
    dim, proj = 16, 64
    u, _ = torch.linalg.qr(torch.randn(proj, dim // 2, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(dim // 2, dim // 2, generator=g, dtype=torch.float64))
    sing = torch.logspace(0, -4, dim // 2, dtype=torch.float64)
    weight = u @ torch.diag(sing) @ v.t()
    weak = v[:, -2:]  # the two weakest right-singular directions
    coeffs = torch.randn(48, 2, generator=g, dtype=torch.float64)
    pooled = coeffs @ weak.t() + 1e-3 * torch.randn(48, dim // 2, generator=g, dtype=torch.float64)
    features = pooled.repeat_interleave(2, dim=1)  # pooling pairs gives `pooled` back
    return features, weight, torch.zeros(proj, dtype=torch.float64)


def _loss_and_feature_grad(features, weight, bias, dtype):
    mccl = MCCLoss(4, features.shape[1], [9, 7, 5, 3], scales=(2,), projection_dim=64, dtype=dtype)
    with torch.no_grad():
        mccl.projections[0].weight.copy_(weight)
        mccl.projections[0].bias.copy_(bias)
    f = features.to(dtype).requires_grad_(True)
    logits = torch.zeros(f.shape[0], 4, dtype=dtype)
    targets = torch.arange(f.shape[0]) % 4
    loss = mccl(f, logits, targets)
    (grad,) = torch.autograd.grad(loss, f)
    return loss.detach().double(), grad.double()


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("case", [_offset_case, _ill_conditioned_case])
def test_default_path_is_as_accurate_as_the_plain_float32_formula(case):
    features, weight, bias = case()
    with config.fast_paths("off"):
        loss64, grad64 = _loss_and_feature_grad(features, weight, bias, torch.float64)
        loss_plain, grad_plain = _loss_and_feature_grad(features, weight, bias, torch.float32)
    loss_def, grad_def = _loss_and_feature_grad(features, weight, bias, torch.float32)
    floor = 1e-7  # below this both are at float32 rounding of an O(1) number
    assert _rel(loss_def, loss64) <= 3 * max(_rel(loss_plain, loss64), floor)
    assert _rel(grad_def, grad64) <= 3 * max(_rel(grad_plain, grad64), floor)


@pytest.mark.parametrize("case", [_offset_case, _ill_conditioned_case])
def test_projected_path_is_less_accurate_which_is_why_auto_skips_it(case):
    """The accuracy check above can fail: the projected path (switch "on") does fail it."""
    features, weight, bias = case()
    with config.fast_paths("off"):
        _, grad64 = _loss_and_feature_grad(features, weight, bias, torch.float64)
        _, grad_plain = _loss_and_feature_grad(features, weight, bias, torch.float32)
    with config.fast_paths("on"):
        _, grad_on = _loss_and_feature_grad(features, weight, bias, torch.float32)
    assert _rel(grad_on, grad64) > 3 * _rel(grad_plain, grad64)
