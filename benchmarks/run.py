#!/usr/bin/env python
"""MICACL benchmarks: every figure next to its baseline, measured in the same run.

Usage (``make bench`` runs the first)::

    python benchmarks/run.py                   # everything, CPU, 2 threads
    python benchmarks/run.py --quick           # fewer repeats and sizes (about two minutes)
    python benchmarks/run.py --only wian,mccl  # a subset: wian, mccl, model, data
    python benchmarks/run.py --only data       # does the clip loader keep up? (clips/s per worker)
    python benchmarks/run.py --device cuda     # on a GPU (adds AMP training throughput)
    python benchmarks/run.py --output docs/benchmarks-table.md

Candidates named ``... (off)`` / ``... (on)`` run under that setting of ``micacl_layers.config``
(plain autograd / every fast path incl. private oneDNN products); unmarked ones under the
default ``"auto"``. The ``auto`` vs ``off`` rows are the evidence behind what ``auto`` enables.

Method. Each benchmark times forward + backward of its candidates **interleaved** (A, B, C, A,
B, C, ...) after warm-up runs and reports medians, so that a load change on the machine hits
every candidate alike; the spread column is the interquartile range over the median, for the
noisier of the two figures of a row. Ratios are ``ours / baseline`` (lower is better) except
the ``speed-up`` rows (``baseline / ours``, higher is better). Peak memory: on CPU, every
(loss, batch) runs once in a fresh subprocess that resets the kernel's resident-set high-water
mark (``/proc/self/clear_refs``) right before the forward + backward and reads ``VmHWM``
afterwards: the figure is the peak growth of resident memory during that call (PyTorch's CPU
allocator returns big blocks to the OS, so this is what the call itself needed); on GPU,
``torch.cuda.max_memory_allocated`` over the call. FLOPs are counted two ways: see
:func:`thop_style_macs` and :func:`flop_counter_macs`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from naive import NaivePerGateWIAN, naive_multiscale_supcon  # noqa: E402

from micacl_layers import WIAN, MCCLoss, config  # noqa: E402

NUM_CLASSES = 7
FEATURE_DIM = 1024
# The paper's Table (FLOPs column) and what a thop-style count gives for bare R3D-18.
PAPER_GFLOPS = 1.69


# ------------------------------------------------------------------------------------------
# timing
# ------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    cases: dict[str, Callable[[], object]], repeats: int, warmup: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per call of every case, run A, B, C, A, B, C, ... after ``warmup`` rounds."""
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def _spread(samples: list[float]) -> float:
    """Interquartile range over the median."""
    if len(samples) < 4:
        return (max(samples) - min(samples)) / statistics.median(samples)
    q1, _, q3 = statistics.quantiles(samples, n=4)
    return (q3 - q1) / statistics.median(samples)


@dataclass
class Row:
    section: str
    config: str
    ours: str
    ours_ms: float
    baseline: str
    base_ms: float
    kind: str = "ratio"  # "ratio"/"share": ours / baseline; "speed-up": baseline / ours
    target: str = ""
    spread: float = 0.0
    ours_mb: float | None = None
    base_mb: float | None = None

    @property
    def value(self) -> float:
        if self.kind == "speed-up":
            return self.base_ms / self.ours_ms
        return self.ours_ms / self.base_ms

    def verdict(self) -> str:
        if not self.target:
            return ""
        op, bound = self.target.split()
        ok = self.value <= float(bound) if op == "<=" else self.value >= float(bound)
        return f"{'met' if ok else 'NOT met'} ({op.replace('<=', '≤').replace('>=', '≥')} {bound})"


def _row(
    section: str, config: str, ours: str, baseline: str, times: dict[str, list[float]], **kw: object
) -> Row:
    return Row(
        section,
        config,
        ours,
        _median_ms(times[ours]),
        baseline,
        _median_ms(times[baseline]),
        spread=max(_spread(times[ours]), _spread(times[baseline])),
        **kw,
    )


def _switched(mode: str, fn: Callable[[], None]) -> Callable[[], None]:
    """``fn`` run under ``config.fast_paths(mode)`` (auto, on or off)."""

    def run() -> None:
        with config.fast_paths(mode):  # type: ignore[arg-type]
            fn()

    return run


def _mode_of(case: str) -> str:
    """The switch setting named in a case label such as ``"WIAN (off)"`` (default auto)."""
    for mode in ("off", "on"):
        if case.endswith(f"({mode})"):
            return mode
    return "auto"


def _zero_grads(*modules_or_tensors: object) -> None:
    for m in modules_or_tensors:
        if isinstance(m, nn.Module):
            for p in m.parameters():
                p.grad = None
        elif isinstance(m, torch.Tensor):
            m.grad = None


# ------------------------------------------------------------------------------------------
# 1. WIAN
# ------------------------------------------------------------------------------------------


def _wian_cases(layers: int, device: torch.device) -> dict[str, Callable[[], None]]:
    """WIAN, ``nn.LSTM`` and the naive per-gate WIAN, forward + backward, same sizes."""
    batch, steps, size = 32, 16, 512
    torch.manual_seed(0)
    wian = WIAN(size, size, layers, batch_first=True, bidirectional=True).to(device)
    lstm = nn.LSTM(size, size, layers, batch_first=True, bidirectional=True).to(device)
    naive = NaivePerGateWIAN(size, size, layers, bidirectional=True).to(device)
    naive.load_from(wian)
    x = torch.randn(batch, steps, size, device=device, requires_grad=True)
    weights = torch.rand(batch, steps, 1, device=device)
    grad_out = torch.randn(batch, steps, 2 * size, device=device)
    with torch.no_grad():  # the baseline computes the same function
        torch.testing.assert_close(
            naive(x, weights), wian(x, weights=weights)[0], atol=1e-4, rtol=1e-4
        )

    def run(module: nn.Module, call: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def fn() -> None:
            _zero_grads(module, x)
            call().backward(grad_out)

        return fn

    fused = run(wian, lambda: wian(x, weights=weights)[0])

    # float32 parameters, bf16 autocast as in AMP code. "auto": the fused kernel in float32
    # inside; "off": the plain path with autocast's bf16 products; "on": the kernel in bf16.
    def under_autocast() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return wian(x, weights=weights)[0]

    autocast = run(wian, under_autocast)
    return {
        "WIAN": _switched("auto", fused),
        "WIAN (off)": _switched("off", fused),
        "WIAN (on)": _switched("on", fused),
        "WIAN bf16 autocast": _switched("auto", autocast),
        "WIAN bf16 autocast (off)": _switched("off", autocast),
        "WIAN bf16 autocast (on)": _switched("on", autocast),
        "nn.LSTM": run(lstm, lambda: lstm(x)[0]),
        "naive per-gate WIAN": run(naive, lambda: naive(x, weights)),
    }


def bench_wian(args: argparse.Namespace, device: torch.device) -> list[Row]:
    rows = []
    for layers in (1, 4):
        repeats = args.repeats or (7 if args.quick else 21)
        times = interleaved(_wian_cases(layers, device), repeats, warmup=2, device=device)
        config = f"B=32, T=16, I=H=512, bidir, {layers} layer{'s' * (layers > 1)}"
        one = layers == 1
        # "auto" enables the fused layer on CPU float32 only if this row shows that it pays.
        rows.append(
            _row(
                "WIAN",
                config,
                "WIAN",
                "WIAN (off)",
                times,
                kind="speed-up",
                target=">= 1.05" if one and device.type == "cpu" else "",
            )
        )
        rows.append(_row("WIAN", config, "WIAN (on)", "WIAN (off)", times, kind="speed-up"))
        rows.append(_row("WIAN", config, "WIAN", "nn.LSTM", times))
        rows.append(
            _row("WIAN", config, "WIAN (on)", "nn.LSTM", times, target="<= 1.4" if one else "")
        )
        rows.append(
            _row(
                "WIAN",
                config,
                "WIAN",
                "naive per-gate WIAN",
                times,
                kind="speed-up",
                target=">= 1.6" if one else "",
            )
        )
        # Issue 15: bf16 autocast within 1.5x of float32 (the fused kernel, float32 inside).
        rows.append(
            _row(
                "WIAN",
                config,
                "WIAN bf16 autocast",
                "WIAN",
                times,
                target="<= 1.5" if one and device.type == "cpu" else "",
            )
        )
        rows.append(
            _row(
                "WIAN",
                config,
                "WIAN bf16 autocast",
                "WIAN bf16 autocast (off)",
                times,
                kind="speed-up",
            )
        )
        rows.append(
            _row(
                "WIAN",
                config,
                "WIAN bf16 autocast (on)",
                "WIAN bf16 autocast (off)",
                times,
                kind="speed-up",
            )
        )
    return rows


# ------------------------------------------------------------------------------------------
# 2. MCCL
# ------------------------------------------------------------------------------------------

MCCL_CASES = (
    "MCCLoss",
    "MCCLoss (off)",
    "MCCLoss (on)",
    "MCCLoss (no projections)",
    "SupConLoss (pml)",
    "naive multi-scale loop",
)


def _mccl_setup(case: str, batch: int, device: torch.device) -> Callable[[], None]:
    """One forward + backward of ``case`` on fresh ``(B, 1024)`` features, as a closure."""
    torch.manual_seed(0)
    features = torch.randn(batch, FEATURE_DIM, device=device, requires_grad=True)
    logits = torch.randn(batch, NUM_CLASSES, device=device)
    targets = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    counts = [1956, 1515, 2135, 1738, 1175, 116, 721]  # DFEW fold 1
    if case.startswith("MCCLoss (o") or case in ("MCCLoss", "naive multi-scale loop"):
        loss = MCCLoss(NUM_CLASSES, FEATURE_DIM, counts, projection_dim=1024).to(device)
        if case != "naive multi-scale loop":

            def call() -> torch.Tensor:
                return loss(features, logits, targets)
        else:

            def call() -> torch.Tensor:
                return naive_multiscale_supcon(features, targets, loss.projections, loss.scales)
    elif case == "MCCLoss (no projections)":
        loss = MCCLoss(NUM_CLASSES, FEATURE_DIM, counts, projection_dim=None).to(device)

        def call() -> torch.Tensor:
            return loss(features, logits, targets)
    elif case == "SupConLoss (pml)":
        from pytorch_metric_learning.losses import SupConLoss

        loss = SupConLoss(temperature=0.07)

        def call() -> torch.Tensor:
            return loss(features, targets)
    else:
        raise ValueError(case)

    def fn() -> None:
        _zero_grads(loss, features)
        call().backward()

    return _switched(_mode_of(case), fn)


def _peak_memory_mb(
    case: str, batch: int, args: argparse.Namespace, device: torch.device
) -> float | None:
    if device.type == "cuda":
        fn = _mccl_setup(case, batch, device)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--probe-memory",
        f"{case}|{batch}",
        "--threads",
        str(args.threads),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in result.stdout.splitlines():
        if line.startswith("{"):
            return json.loads(line)["peak_mb"]
    print(f"memory probe failed for {case}, B={batch}: {result.stderr[-500:]}", file=sys.stderr)
    return None


def _read_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def probe_memory(spec: str) -> None:
    """Child process: peak resident-memory growth over one forward + backward (CPU)."""
    case, batch = spec.rsplit("|", 1)
    fn = _mccl_setup(case, int(batch), torch.device("cpu"))
    before = _read_status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    fn()
    peak = _read_status_kb("VmHWM")
    print(json.dumps({"peak_mb": (peak - before) / 1024}))


def bench_mccl(args: argparse.Namespace, device: torch.device) -> list[Row]:
    rows = []
    batches = (256, 1024) if args.quick else (256, 1024, 4096)
    for batch in batches:
        cases = {case: _mccl_setup(case, batch, device) for case in MCCL_CASES}
        repeats = args.repeats or (5 if args.quick else (7 if batch >= 4096 else 21))
        times = interleaved(cases, repeats, warmup=1, device=device)
        memory = {}
        if not args.no_memory:
            memory = {case: _peak_memory_mb(case, batch, args, device) for case in MCCL_CASES}
        config = f"B={batch}, D={FEATURE_DIM}, scales (1, 2, 4)"
        for ours, baseline, kind, target in (
            # "auto" enables the one-buffer core on CPU float32 only if this row shows it pays.
            (
                "MCCLoss",
                "MCCLoss (off)",
                "speed-up",
                ">= 1.05" if batch == 1024 and device.type == "cpu" else "",
            ),
            ("MCCLoss (on)", "MCCLoss (off)", "speed-up", ""),
            ("MCCLoss", "SupConLoss (pml)", "ratio", ""),
            ("MCCLoss (on)", "SupConLoss (pml)", "ratio", "<= 2.5" if batch == 1024 else ""),
            ("MCCLoss (no projections)", "SupConLoss (pml)", "ratio", ""),
            ("MCCLoss", "naive multi-scale loop", "speed-up", ""),
        ):
            rows.append(
                _row(
                    "MCCL",
                    config,
                    ours,
                    baseline,
                    times,
                    kind=kind,
                    target=target,
                    ours_mb=memory.get(ours),
                    base_mb=memory.get(baseline),
                )
            )
    return rows


# ------------------------------------------------------------------------------------------
# 3. Full model: parameters, FLOPs two ways, training step
# ------------------------------------------------------------------------------------------


def _conv_macs(m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> int:
    # output elements x (input channels / groups) x kernel volume (bias not counted)
    kernel = 1
    for k in m.weight.shape[2:]:
        kernel *= k
    return out.numel() * (inputs[0].shape[1] // m.groups) * kernel


def _linear_macs(m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> int:
    return out.numel() * m.in_features


def _norm_macs(m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> int:
    affine = getattr(m, "affine", False) or getattr(m, "elementwise_affine", False)
    return 2 * inputs[0].numel() * (2 if affine else 1)


def _adaptive_avg_macs(m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> int:
    window = inputs[0].numel() // max(out.numel(), 1)
    return (window + 1) * out.numel()


# Keyed on the exact module type, as thop-style counters are: a subclass (torchvision's
# Conv3DSimple, Conv2Plus1D, ...; nn.MultiheadAttention's out_proj) matches no rule and counts 0.
THOP_STYLE_RULES: dict[type, Callable[..., int]] = {
    nn.Conv1d: _conv_macs,
    nn.Conv2d: _conv_macs,
    nn.Conv3d: _conv_macs,
    nn.Linear: _linear_macs,
    nn.BatchNorm1d: _norm_macs,
    nn.BatchNorm2d: _norm_macs,
    nn.BatchNorm3d: _norm_macs,
    nn.LayerNorm: _norm_macs,
    nn.GroupNorm: _norm_macs,
    nn.AdaptiveAvgPool1d: _adaptive_avg_macs,
    nn.AdaptiveAvgPool2d: _adaptive_avg_macs,
    nn.AdaptiveAvgPool3d: _adaptive_avg_macs,
}


@torch.no_grad()
def thop_style_macs(model: nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-accumulates as a thop-style counter reports them (the paper's convention).

    Forward hooks on modules whose **exact** type has a rule (conv: output elements x input
    channels per group x kernel volume; linear: output elements x input features; norms: 2 x
    elements, x 2 with an affine; adaptive average pooling: (window + 1) x outputs); every
    other module counts nothing, functional ops count nothing. So torchvision's R3D-18, whose
    residual convolutions are ``Conv3DSimple`` (a ``Conv3d`` subclass), is counted by its stem
    and downsampling convolutions only.
    """
    total = 0

    def hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        total += THOP_STYLE_RULES[type(m)](m, inp, out)

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if type(m) in THOP_STYLE_RULES
    ]
    try:
        model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return total


def _linear_pointwise_flops(
    x_shape: torch.Size,
    w_shape: torch.Size,
    *args: object,
    out_shape: torch.Size | None = None,
    **kwargs: object,
) -> int:
    rows = 1
    for s in x_shape[:-1]:
        rows *= s
    return 2 * rows * w_shape[0] * w_shape[1]


@torch.no_grad()
def flop_counter_macs(model: nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-accumulates counted by ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2).

    Every matmul and convolution the forward dispatches, whatever module issued it (the oneDNN
    linear ops of WIAN's CPU fast path are added to its table). Element-wise ops count nothing.
    """
    from torch.utils.flop_counter import FlopCounterMode

    custom = {}
    if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        custom = {
            torch.ops.mkldnn._linear_pointwise.default: _linear_pointwise_flops,
            torch.ops.mkldnn._linear_pointwise.binary: lambda x, other, w, *a, **k: (
                _linear_pointwise_flops(x, w)
            ),
        }
    counter = FlopCounterMode(display=False, custom_mapping=custom)
    with counter:
        model(*inputs)
    return counter.get_total_flops() // 2


def bench_model(args: argparse.Namespace, device: torch.device) -> tuple[list[Row], list[str]]:
    import torchvision

    from micacl_layers import MICACLLoss
    from micacl_layers.models import MICACL

    torch.manual_seed(0)
    model = MICACL(
        NUM_CLASSES, backbone="r3d_18", hidden_size=512, num_layers=4, bidirectional=True
    ).to(device)
    criterion = MICACLLoss(
        NUM_CLASSES, model.feature_dim, [1956, 1515, 2135, 1738, 1175, 116, 721]
    ).to(device)
    bare = torchvision.models.video.r3d_18(weights=None).to(device)
    clip = torch.rand(1, 3, 16, 112, 112, device=device)
    model.eval()
    bare.eval()
    notes = []
    params = sum(p.numel() for p in model.parameters())
    loss_params = sum(p.numel() for p in criterion.parameters())
    backbone_params = sum(p.numel() for p in model.backbone.parameters())
    counts = {
        "model_thop": thop_style_macs(model, clip),
        "model_full": flop_counter_macs(model, clip),
        "bare_thop": thop_style_macs(bare, clip),
        "bare_full": flop_counter_macs(bare, clip),
    }
    g = {k: v / 1e9 for k, v in counts.items()}
    notes.append(
        "| Count (one 16×112×112 clip, forward) | bare R3D-18 | MICACL (R3D-18 + head) |\n"
        "|---|---|---|\n"
        f'| Paper (Table, "FLOPs") | | {PAPER_GFLOPS:.2f} G |\n'
        f"| (a) paper's convention: thop-style MACs, exact module types | "
        f"{g['bare_thop']:.2f} G | {g['model_thop']:.2f} G |\n"
        f"| (b) `FlopCounterMode`, all matmuls and convolutions: MACs | "
        f"{g['bare_full']:.1f} G | {g['model_full']:.1f} G |\n"
        f"| (b) as FLOPs (= 2 × MACs) | {2 * g['bare_full']:.1f} G | "
        f"{2 * g['model_full']:.1f} G |\n"
    )
    notes.append(
        f"Parameters: model {params / 1e6:.2f} M (R3D-18 backbone without fc "
        f"{backbone_params / 1e6:.2f} M, head {(params - backbone_params) / 1e6:.2f} M); "
        f"the loss's MCCL projections {loss_params / 1e6:.2f} M more "
        f"(trained, not used at inference)."
    )

    # Training step on a small batch, next to its parts.
    model.train()
    batch = 2
    clips = torch.rand(batch, 3, 16, 112, 112, device=device)
    targets = torch.tensor([0, 5], device=device)
    optimizer = torch.optim.AdamW(
        list(model.parameters()) + list(criterion.parameters()), lr=4e-4, weight_decay=0.05
    )
    snippets = torch.rand(batch * model.num_instances, 3, 4, 112, 112, device=device)
    instances = torch.randn(batch, model.num_instances, 512, device=device, requires_grad=True)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        logits, feature = model(clips)
        criterion(feature, logits, targets, classifier=model.classifier).backward()
        optimizer.step()

    def backbone() -> None:
        _zero_grads(model.backbone)
        model.backbone(snippets).sum().backward()

    def head() -> None:
        _zero_grads(model.head, instances)
        logits, feature = model.head(instances)
        (logits.sum() + feature.sum()).backward()

    def geiim() -> None:
        _zero_grads(model.head.geiim, instances)
        model.head.geiim(instances).sum().backward()

    cases = {
        "training step (model + loss + AdamW)": train_step,
        "R3D-18 backbone fwd+bwd": backbone,
        "head fwd+bwd": head,
        "GEIIM fwd+bwd": geiim,
    }
    repeats = args.repeats or (3 if args.quick else 7)
    times = interleaved(cases, repeats, warmup=1, device=device)
    config = f"batch {batch} clips of 16×112×112 ({model.num_instances} instances), per step"
    rows = [
        _row(
            "Model",
            config,
            "training step (model + loss + AdamW)",
            "R3D-18 backbone fwd+bwd",
            times,
        ),
        _row("Model", config, "head fwd+bwd", "R3D-18 backbone fwd+bwd", times, kind="share"),
        _row("Model", config, "GEIIM fwd+bwd", "R3D-18 backbone fwd+bwd", times, kind="share"),
    ]
    per_clip = _median_ms(times["training step (model + loss + AdamW)"]) / batch / 1e3
    notes.append(f"Training step time per clip ({device.type}, batch {batch}): {per_clip:.2f} s.")
    if device.type == "cuda":
        notes.append(_gpu_throughput(model, criterion, device, args))
    return rows, notes


def _gpu_throughput(
    model: nn.Module, criterion: nn.Module, device: torch.device, args: argparse.Namespace
) -> str:
    """Training clips/s at batch 32 with automatic mixed precision."""
    batch = 32
    amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    optimizer = torch.optim.AdamW(
        list(model.parameters()) + list(criterion.parameters()), lr=4e-4, weight_decay=0.05
    )
    clips = torch.rand(batch, 3, 16, 112, 112, device=device)
    targets = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=amp_dtype):
            logits, feature = model(clips)
            loss = criterion(feature, logits, targets, classifier=model.classifier)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(3):
        step()
    torch.cuda.synchronize(device)
    steps = 5 if args.quick else 20
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    return (
        f"GPU training throughput, batch {batch}, AMP ({str(amp_dtype).split('.')[-1]}): "
        f"{batch * steps / elapsed:.1f} clips/s "
        f"(peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB)."
    )


# ------------------------------------------------------------------------------------------
# 4. Data loading: clips/s per worker next to the PIL decode floor
# ------------------------------------------------------------------------------------------


def _data_tree(root: Path, quick: bool) -> Path:
    """A DFEW-layout tree of real-size 224x224 JPEG frames (the synthetic faces)."""
    from micacl_layers.data import make_synthetic_dfew

    return make_synthetic_dfew(
        root,
        total_clips=21 if quick else 42,
        min_clips_per_class=2,
        frames=(30, 90),
        image_size=224,
        seed=0,
    ).root


def _decode_floor(ds: object, draft: int | None) -> Callable[[], None]:
    """Only Pillow: open and decode the 16 frames the test sampling takes from every clip."""
    from PIL import Image

    from micacl_layers.data import segment_indices

    clips = []
    for frame_dir, _ in ds.samples:  # type: ignore[attr-defined]
        names = ds._frames(frame_dir)  # type: ignore[attr-defined]
        idx = segment_indices(len(names), 16, train=False)
        clips.append([os.path.join(frame_dir, names[i]) for i in sorted(set(idx))])

    def fn() -> None:
        for paths in clips:
            for path in paths:
                with Image.open(path) as img:
                    if draft:
                        img.draft("RGB", (draft, draft))
                    img.load()

    return fn


def _loader_clips_per_s(ds: object, workers: int, repeats: int) -> float:
    from torch.utils.data import DataLoader

    loader = DataLoader(
        ds,
        batch_size=8,
        shuffle=True,
        num_workers=workers,  # type: ignore
        persistent_workers=workers > 0,
    )
    for _ in loader:  # warm-up epoch (starts the workers)
        pass
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in loader:
            pass
        rates.append(len(ds) / (time.perf_counter() - start))  # type: ignore[arg-type]
    del loader
    return statistics.median(rates)


def bench_data(args: argparse.Namespace, device: torch.device) -> tuple[list[Row], list[str]]:
    """Loader clips/s per worker (one thread, as a DataLoader worker has), old and new."""
    import tempfile

    from legacy_data import legacy_getitem, legacy_test_transform, legacy_train_transform

    from micacl_layers.data import DFEW, test_transform, train_transform

    geometric = train_transform(112, color_jitter=False)
    uint8 = {"output_dtype": torch.uint8}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # DataLoader sets 1 thread in each worker
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = _data_tree(Path(tmp), args.quick)
            loaders = {
                TRAIN: DFEW(root, 1, "train", transform=train_transform(112)),
                TRAIN_UINT8: DFEW(root, 1, "train", transform=geometric, **uint8),
                TRAIN_FAST: DFEW(root, 1, "train", transform=geometric, draft="frame", **uint8),
                TEST: DFEW(root, 1, "train", transform=test_transform(112), train=False),
                TEST_UINT8: DFEW(
                    root, 1, "train", transform=test_transform(112), train=False, **uint8
                ),
            }
            train, test = loaders[TRAIN], loaders[TEST]
            plain = DFEW(root, 1, "train", transform=train_transform(112), fast_decode=False)
            old_train, old_test = legacy_train_transform(112), legacy_test_transform(112)
            n = len(train)

            def epoch(getitem: Callable[[int], object]) -> Callable[[], None]:
                def fn() -> None:
                    for i in range(n):
                        getitem(i)

                return fn

            cases = {name: epoch(ds.__getitem__) for name, ds in loaders.items() if "train" in name}
            cases["train, legacy loader (bfb3b80)"] = epoch(
                lambda i: legacy_getitem(train, old_train, i)
            )
            cases["train, fast_decode=False"] = epoch(plain.__getitem__)
            cases.update(
                {name: epoch(ds.__getitem__) for name, ds in loaders.items() if "test" in name}
            )
            cases["test, legacy loader (bfb3b80)"] = epoch(
                lambda i: legacy_getitem(test, old_test, i)
            )
            cases["PIL full decode (floor)"] = _decode_floor(train, None)
            cases["PIL draft decode at 112 (floor)"] = _decode_floor(train, 112)
            repeats = args.repeats or (5 if args.quick else 11)
            times = interleaved(cases, repeats, warmup=1, device=torch.device("cpu"))
            ms = {k: _median_ms(v) / n for k, v in times.items()}
            spread = {k: _spread(v) for k, v in times.items()}
            workers = {
                name: {
                    k: _loader_clips_per_s(loaders[name], k, 2 if args.quick else 3)
                    for k in (0, 1, 2)
                }
                for name in (TRAIN, TRAIN_FAST)
            }
            psnr = {
                name: _fast_vs_plain_psnr(root, tf)
                for name, tf in (("train", train_transform(112)), ("test", test_transform(112)))
            }
    finally:
        torch.set_num_threads(threads)
    jitter_ms, worker_jitter_ms = _jitter_ms(device, repeats)

    legacy = {"train": "train, legacy loader (bfb3b80)", "test": "test, legacy loader (bfb3b80)"}
    full, draft = "PIL full decode (floor)", "PIL draft decode at 112 (floor)"

    def ratio(a: str, b: str) -> float:
        # Paired by round: a slow spell of the machine slows every case of a round alike.
        return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))

    def ratio_range(a: str, b: str) -> str:
        pairs = zip(times[a], times[b], strict=True)
        q1, _, q3 = statistics.quantiles([x / y for x, y in pairs], n=4)
        return f"{q1:.2f}–{q3:.2f}"

    lines = [
        f"Data loading, one process and one thread (a `DataLoader` worker's share), {n} "
        "DFEW-layout clips of 224×224 JPEG frames (the synthetic faces, quality 90), 16 "
        "frames a clip; medians of interleaved passes over all clips, and ratios as the median "
        "over rounds of each round's ratio (paired: every case runs once a round). The floors "
        "decode the same 16 frames with Pillow alone (`Image.open` + `load`, no transform, no "
        "tensor).",
        "",
        "| Case | ms / clip | clips/s per worker | legacy / this | this / full-decode floor "
        "| this / draft floor | Spread |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, value in ms.items():
        split = name.split(",")[0]
        speedup = (
            f"{ratio(legacy[split], name):.2f}×" if split in legacy and "legacy" not in name else ""
        )
        floors = (
            ("", "")
            if "floor" in name
            else (f"{ratio(name, full):.2f}×", f"{ratio(name, draft):.2f}×")
        )
        lines.append(
            f"| {name} | {value:.2f} | {1e3 / value:.1f} | {speedup} | {floors[0]} | "
            f"{floors[1]} | {100 * spread[name]:.0f}% |"
        )
    lines.append("")
    lines.append(
        f"The uint8 rows leave the colour jitter to the device: `ClipBatchColorJitter` on a "
        f"batch of 8 uint8 clips (3×16×112×112) on {device.type} costs {jitter_ms:.2f} ms a "
        f"clip there ({torch.get_num_threads()} threads), in the training process; in a "
        f"worker (the float conversion and jitter of the float rows, one thread, clip by "
        f"clip) {worker_jitter_ms:.2f} ms a clip, measured side by side."
    )
    lines.append("")
    for name in (TRAIN, TRAIN_UINT8, TRAIN_FAST):
        speedup, to_draft = ratio(legacy["train"], name), ratio(name, draft)
        lines.append(
            f"- Targets, `{name}`: ≥ 2× the legacy loader: "
            f"{'met' if speedup >= 2 else 'NOT met'} ({speedup:.2f}×, rounds' quartiles "
            f"{ratio_range(legacy['train'], name)}); within 1.3× of the draft-decode floor: "
            f"{'met' if to_draft <= 1.3 else 'NOT met'} ({to_draft:.2f}×, quartiles "
            f"{ratio_range(name, draft)}; {ratio(name, full):.2f}× the full-decode floor)."
        )
    lines.append("")
    for name, rates in workers.items():
        lines.append(
            f"- `DataLoader(batch_size=8, shuffle=True)` over the same train clips, `{name}`: "
            + ", ".join(f"{k} worker{'s' * (k != 1)} {v:.1f} clips/s" for k, v in rates.items())
            + f" (on {os.cpu_count()} logical cores; 0 workers loads in the main process)."
        )
    lines.append("")
    lines.append(
        "Pixels, the fast path against `fast_decode=False` (full decode, float transforms), "
        "same clips and generator seeds, PSNR over all clips (min / median per clip): "
        + "; ".join(
            f"{name} transform {p[0]:.1f} dB ({p[1]:.1f} / {p[2]:.1f}), max |diff| "
            f"{p[3] * 255:.1f}/255"
            for name, p in psnr.items()
        )
        + ". For `draft='frame'` see `benchmarks/draft_train_crops.py` (its crops are cut from "
        "the half-size frame, their box moved by up to a pixel)."
    )
    return [], ["\n".join(lines)]


TRAIN = "train, this loader"
TRAIN_UINT8 = "train, uint8 clips (colour on the device)"
TRAIN_FAST = "train, uint8 clips, draft='frame'"
TEST = "test, this loader"
TEST_UINT8 = "test, uint8 clips"


def _jitter_ms(device: torch.device, repeats: int) -> tuple[float, float]:
    """ms per clip of the colour jitter the uint8 loader rows leave to the device: batched on
    ``device`` (this process's threads), and, side by side, what a worker does instead (the
    fast path's float conversion and in-place jitter, clip by clip, on one CPU thread)."""
    from micacl_layers.data import ClipBatchColorJitter, ClipColorJitter

    batch = torch.randint(0, 256, (8, 3, 16, 112, 112), dtype=torch.uint8)
    on_device = batch.to(device)
    batched = ClipBatchColorJitter(0.4, 0.4, 0.4, generator=torch.Generator().manual_seed(0))
    per_clip = ClipColorJitter(0.4, 0.4, 0.4)
    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()

    def in_workers() -> None:
        torch.set_num_threads(1)
        try:
            for clip in batch:
                out = torch.empty(clip.shape, dtype=torch.float32).copy_(clip)
                per_clip._jitter(out.transpose(0, 1), g, inplace=True, scale=1 / 255)
        finally:
            torch.set_num_threads(threads)

    cases = {"batched": lambda: batched(on_device), "in workers": in_workers}
    times = interleaved(cases, repeats, warmup=2, device=device)
    return tuple(_median_ms(times[k]) / batch.shape[0] for k in cases)  # type: ignore[return-value]


def _fast_vs_plain_psnr(root: Path, transform: object) -> tuple[float, float, float, float]:
    """PSNR of the fast path against the plain path: pooled, min and median per clip, and the
    largest absolute difference (values in [0, 1])."""
    from micacl_layers.data import DFEW

    per_clip, total_sq, count, worst = [], 0.0, 0, 0.0
    train = getattr(transform, "transforms", [None])[0].__class__.__name__ != "ClipResize"
    probe = DFEW(root, 1, "train", transform=transform, train=train)
    for i in range(len(probe)):
        items = []
        for fast in (True, False):
            ds = DFEW(
                root,
                1,
                "train",
                transform=transform,
                train=train,
                fast_decode=fast,
                generator=torch.Generator().manual_seed(i),
            )
            items.append(ds[i][0].double())
        sq = (items[0] - items[1]).pow(2)
        per_clip.append(10 * math.log10(1 / max(sq.mean().item(), 1e-20)))
        total_sq += sq.sum().item()
        count += sq.numel()
        worst = max(worst, (items[0] - items[1]).abs().max().item())
    pooled = 10 * math.log10(1 / max(total_sq / count, 1e-20))
    return pooled, min(per_clip), statistics.median(per_clip), worst


# ------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------


def machine(device: torch.device, threads: int) -> list[str]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    lines = [
        f"- CPU: {cpu}, {os.cpu_count()} logical cores; torch threads: {threads}",
        f"- torch {torch.__version__} (oneDNN {torch.backends.mkldnn.is_available()}, "
        f"MKL {torch.backends.mkl.is_available()}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}",
    ]
    if device.type == "cuda":
        lines.append(f"- GPU: {torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}")
    else:
        lines.append("- GPU: none used")
    return lines


def _fmt_mb(mb: float | None) -> str:
    return "" if mb is None else f"{mb:,.0f}"


def render(
    rows: list[Row],
    notes: list[str],
    args: argparse.Namespace,
    device: torch.device,
    loads: tuple[tuple[float, ...], tuple[float, ...]],
) -> str:
    out = ["## Machine", ""]
    out += machine(device, args.threads)
    out.append(
        f"- load average (1, 5, 15 min) at start {loads[0][0]:.2f}, {loads[0][1]:.2f}, "
        f"{loads[0][2]:.2f}; at end {loads[1][0]:.2f}, {loads[1][1]:.2f}, "
        f"{loads[1][2]:.2f}"
    )
    out.append(
        f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}; command: "
        f"`{' '.join(['python', 'benchmarks/run.py', *sys.argv[1:]])}`"
    )
    if rows:  # (--only data has no forward + backward rows)
        out += [
            "",
            "## Forward + backward, medians of interleaved runs",
            "",
            "| Section | Configuration | Ours | ms | Baseline | ms | Ratio | Target | Spread "
            "| Peak MiB (ours / baseline) |",
            "|---|---|---|---:|---|---:|---:|---|---:|---|",
        ]
    for r in rows:
        if r.kind == "share":
            ratio = f"{100 * r.value:.1f} % of baseline"
        else:
            ratio = f"{r.value:.2f}× {'speed-up' if r.kind == 'speed-up' else 'ours/base'}"
        mem = ""
        if r.ours_mb is not None or r.base_mb is not None:
            mem = f"{_fmt_mb(r.ours_mb)} / {_fmt_mb(r.base_mb)}"
        out.append(
            f"| {r.section} | {r.config} | {r.ours} | {r.ours_ms:,.1f} | {r.baseline} | "
            f"{r.base_ms:,.1f} | {ratio} | {r.verdict()} | "
            f"{100 * r.spread:.0f}% | {mem} |"
        )
    for note in notes:
        out += ["", note]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and sizes")
    parser.add_argument(
        "--only",
        default="wian,mccl,model,data",
        help="comma-separated subset of wian, mccl, model, data",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    parser.add_argument("--repeats", type=int, default=0, help="override the repeat counts")
    parser.add_argument("--no-memory", action="store_true", help="skip peak-memory probes")
    parser.add_argument("--output", help="also write the Markdown report to this file")
    parser.add_argument("--probe-memory", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.probe_memory:
        probe_memory(args.probe_memory)
        return
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - {"wian", "mccl", "model", "data"}
    if unknown:
        parser.error(f"--only: unknown {sorted(unknown)}")
    start_load = os.getloadavg()
    rows: list[Row] = []
    notes: list[str] = []
    if "wian" in only:
        rows += bench_wian(args, device)
    if "mccl" in only:
        rows += bench_mccl(args, device)
    if "model" in only:
        model_rows, model_notes = bench_model(args, device)
        rows += model_rows
        notes += model_notes
    if "data" in only:
        data_rows, data_notes = bench_data(args, device)
        rows += data_rows
        notes += data_notes
    report = render(rows, notes, args, device, (start_load, os.getloadavg()))
    print(report)
    if args.output:
        Path(args.output).write_text(report)


if __name__ == "__main__":
    main()
