#!/usr/bin/env python
"""Train and evaluate MICACL on DFEW, FERV39k or the synthetic demo data.

Defaults follow the paper (AdamW, lr 4e-4, weight decay 0.05, cosine schedule to 3e-6 with a
10-epoch warm-up, 300 epochs, 16 frames at 112x112, R3D-18). Examples::

    # the CPU demo: generates a small synthetic DFEW-layout data set, trains, evaluates
    python examples/train_dfew.py --demo

    # DFEW fold 1, then all five folds (mean over folds reported)
    python examples/train_dfew.py --dataset dfew --root /data/DFEW --fold 1 \\
        --backbone-weights r3d_18-b3b3357e.pth
    python examples/train_dfew.py --dataset dfew --root /data/DFEW --fold all ...

    # several GPUs
    torchrun --nproc_per_node 4 examples/train_dfew.py --dataset dfew --root /data/DFEW ...

Each run directory holds ``last.pt`` (written atomically every epoch; ``--resume`` continues
from it exactly), ``best.pt``, ``log.csv``, ``results.json`` and, unless ``--no-plots``,
``confusion_matrix.png`` and ``tsne.png``. ``last.pt`` records what ``--amp`` and
``--augment-on`` gave (``auto`` follows the device kind): a resume on another kind of device,
where the same flags would give other settings, is refused, naming the flags to pass.
Reported metrics: the final epoch's WAR/UAR and the best epoch's (one epoch, chosen by
``--select-by``; WAR and UAR are never mixed across epochs).
Note that "best epoch" is selected on the test split, as the DFER literature does: the
final-epoch figure is the unbiased one.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from micacl_layers import MICACLLoss
from micacl_layers.checkpoint import (
    CheckpointError,
    _sync_folder,
    load_checkpoint,
    load_state_dict_checked,
    save_checkpoint,
)
from micacl_layers.metrics import ConfusionMatrix, per_class_recall, uar, war
from micacl_layers.models import MICACL

SHORT_NAMES = {
    "happy": "Hap.",
    "sad": "Sad.",
    "neutral": "Neu.",
    "angry": "Ang.",
    "surprise": "Sur.",
    "disgust": "Dis.",
    "fear": "Fea.",
}

# Options that change the model's or the loss's shape: a resumed run must match on these.
SHAPE_OPTIONS = (
    "dataset",
    "backbone",
    "num_frames",
    "num_instances",
    "hidden_size",
    "num_layers",
    "tiny_dim",
    "projection_dim",
    "loss",
    "aggregator",
    "no_geiim",
)

# The values of --amp and --augment-on ("auto" follows the device kind).
AMP_CHOICES = ("auto", "on", "off")
AUGMENT_ON_CHOICES = ("auto", "worker", "device")

# --dataset synthetic raises every class to this many clips, so the tail is in every split.
SYNTHETIC_MIN_PER_CLASS = 25

# The CPU demo: small images, a tiny 3-D CNN and a short schedule (about 5 minutes on 2 cores).
DEMO_DEFAULTS = {
    "dataset": "synthetic",
    "root": "data/synthetic_dfew",
    "output": "runs/demo",
    "backbone": "tiny",
    "image_size": 48,
    "crop_scale": 0.5,
    "epochs": 10,
    "batch_size": 16,
    "lr": 2e-3,
    "min_lr": 1e-5,
    "warmup_epochs": 1,
    "warmup_lr": 1e-4,
    "weight_decay": 0.05,
    "hidden_size": 64,
    "num_layers": 1,
    "tiny_dim": 64,
    "projection_dim": 64,
    "workers": 2,
    "tsne_samples": 500,
    "overwrite": True,  # `make demo` reruns into runs/demo
}


# ----------------------------------------------------------------------------- options
def default_workers() -> int:
    """Data-loader workers per process: its share of the usable CPUs but one (the training
    loop's), at most 8. Under torchrun the CPUs are shared by LOCAL_WORLD_SIZE processes."""
    try:
        cpus = len(os.sched_getaffinity(0))  # the CPUs this process may use (containers)
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    per_process = cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(8, per_process - 1))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train and evaluate MICACL (GEIIM + WIAN + MCCL) on DFEW, FERV39k or "
        "synthetic DFEW-layout data.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        choices=("dfew", "ferv39k", "synthetic"),
        default="dfew",
        help="data set; 'synthetic' generates a small DFEW-layout set under --root "
        "if it is not there yet",
    )
    g.add_argument(
        "--root",
        type=Path,
        default=None,
        help="data set root (DFEW: holds Clip/ and EmoLabel_DataSplit/; FERV39k: "
        "holds 2_ClipsforFaceCrop/ and 4_setups/)",
    )
    g.add_argument(
        "--fold",
        default="1",
        help="DFEW fold 1..5, or 'all' to run the five folds and report their mean "
        "(ignored for FERV39k)",
    )
    g.add_argument("--num-frames", type=int, default=16, help="frames sampled per clip")
    g.add_argument("--image-size", type=int, default=112, help="frame size after cropping")
    g.add_argument(
        "--crop-scale",
        type=float,
        default=0.08,
        help="smallest area fraction of the clip-consistent random-resized crop "
        "(the public code's 0.08; the demo's small synthetic faces use 0.5)",
    )
    g.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="data-loader worker processes (per process under torchrun); the "
        "default is min(8, usable CPUs per process - 1), leaving one CPU to the "
        "training loop. Does the loader keep up? `python benchmarks/run.py "
        "--only data` prints the loader's clips/s per worker: workers x that "
        "must exceed the training clips/s (training clips / epoch seconds; on a "
        "GPU `benchmarks/run.py --device cuda --quick` also prints the AMP "
        "training clips/s). If it does not, the GPU waits for data: add workers "
        "or CPUs",
    )
    g.add_argument(
        "--augment-on",
        choices=AUGMENT_ON_CHOICES,
        default="auto",
        help="where the colour jitter and the conversion to float run: 'worker' in the "
        "data-loader workers (float32 clips); 'device' on each batch on the training device "
        "(ClipBatchColorJitter; the workers return uint8 clips after the crop and flip, so "
        "they only decode, and a quarter of the bytes go to the GPU); 'auto' is 'device' on "
        "CUDA and 'worker' otherwise. Same augmentation statistics either way",
    )
    g.add_argument(
        "--draft",
        choices=("crop", "frame", "never"),
        default="crop",
        help="when the loader decodes JPEG frames at reduced size (Pillow's draft mode): "
        "'crop' only where no resolution is lost (the test-time resize of 224 to 112); "
        "'frame' for the random train crops too (faster, slightly softer crops, each "
        "edge moved onto the half-size frame's pixels, by at most one pixel of the frame; "
        "docs/data.md has the figures); 'never'",
    )
    g.add_argument(
        "--skip-bad-clips",
        action="store_true",
        help="skip clips with missing/empty frame folders (each one reported) instead of stopping",
    )
    g.add_argument(
        "--synthetic-clips",
        type=int,
        default=1200,
        help=f"clips to generate for --dataset synthetic (every class is raised to at least "
        f"{SYNTHETIC_MIN_PER_CLASS} clips, so a small number gives more: 100 gives 175)",
    )
    m = p.add_argument_group("model")
    m.add_argument(
        "--backbone",
        choices=("r3d_18", "tiny"),
        default="r3d_18",
        help="per-instance 3-D CNN ('tiny' is a small CPU network)",
    )
    m.add_argument(
        "--backbone-weights",
        type=Path,
        default=None,
        help="local path of torchvision's R3D-18 Kinetics-400 weights "
        "(r3d_18-b3b3357e.pth); never downloaded",
    )
    m.add_argument(
        "--num-instances",
        type=int,
        default=4,
        help="instances per clip (16 frames -> 4 instances of 4 frames)",
    )
    m.add_argument("--hidden-size", type=int, default=512, help="WIAN hidden size per direction")
    m.add_argument(
        "--num-layers", type=int, default=4, help="WIAN layers (the public code stacks 4)"
    )
    m.add_argument(
        "--aggregator",
        choices=("wian", "lstm", "conv1d"),
        default="wian",
        help="instance aggregator (conv1d = the ablation baseline)",
    )
    m.add_argument("--no-geiim", action="store_true", help="drop GEIIM (ablation)")
    m.add_argument(
        "--weight-mode",
        default="instance_softmax",
        choices=("channel_softmax", "scaled_channel_softmax", "instance_softmax"),
        help="how GEIIM output becomes WIAN instance weights (Eq. 4 is channel_softmax)",
    )
    m.add_argument("--tiny-dim", type=int, default=128, help="feature size of --backbone tiny")
    m.add_argument("--dropout", type=float, default=0.1, help="head dropout")
    lo = p.add_argument_group("loss")
    lo.add_argument(
        "--loss",
        choices=("micacl", "paper_logit_adjusted", "public_code", "ce"),
        default="micacl",
        help="micacl: CET + mc_weight*MCCL (Eq. 13, the 'paper' preset); "
        "paper_logit_adjusted: the same with the CET's CE logit-adjusted (tau 1; the best "
        "configuration on docs/longtail.md's benchmark); public_code: CE(ls 0.1) + "
        "30*MCCL; ce: label-smoothed cross-entropy only",
    )
    lo.add_argument(
        "--mc-weight",
        type=float,
        default=None,
        help="weight of MCCL (default: the preset's, 1 for micacl, 30 for public_code)",
    )
    lo.add_argument(
        "--mccl-form",
        choices=("ratio", "log"),
        default=None,
        help="MCCL form: Eq. 11's ratio or the SupCon log form (default: preset's)",
    )
    lo.add_argument("--projection-dim", type=int, default=1024, help="MCCL projection size")
    lo.add_argument("--tau0", type=float, default=0.07, help="MCCL base temperature")
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, default=300, help="training epochs")
    o.add_argument(
        "--batch-size", type=int, default=128, help="clips per step (per process under torchrun)"
    )
    o.add_argument("--lr", type=float, default=4e-4, help="peak learning rate (AdamW)")
    o.add_argument("--min-lr", type=float, default=3e-6, help="final learning rate (cosine)")
    o.add_argument("--warmup-epochs", type=float, default=10, help="linear warm-up epochs")
    o.add_argument("--warmup-lr", type=float, default=1e-5, help="learning rate at step 0")
    o.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    o.add_argument(
        "--amp",
        choices=AMP_CHOICES,
        default="auto",
        help="mixed precision: auto = on for CUDA (bf16 if supported, else fp16)",
    )
    o.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds Python, numpy, torch, shuffling and per-clip augmentation",
    )
    r = p.add_argument_group("run")
    r.add_argument("--output", type=Path, default=Path("runs/micacl"), help="run directory")
    r.add_argument(
        "--resume",
        action="store_true",
        help="continue from <output>/last.pt exactly where it stopped. Refused where --amp or "
        "--augment-on, left as the run had them, would give other settings on this device "
        "than they gave where last.pt was written ('auto' follows the device kind): the error "
        "names the flags that keep the checkpoint's settings, and those that change them on "
        "purpose (then warned about, as any changed option)",
    )
    r.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in an --output that holds one (its last.pt, best.pt and logs are "
        "replaced; its results.json, plots and TensorBoard events removed at the start); "
        "without it such a run is refused, so that forgetting --resume loses nothing",
    )
    r.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="stop after this many epochs in this invocation (e.g. to fit a job's "
        "time limit; with --fold all, counted over the folds), leaving last.pt for --resume",
    )
    r.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    r.add_argument(
        "--select-by",
        choices=("war", "uar"),
        default="uar",
        help="metric that picks the best epoch (both metrics reported from it)",
    )
    r.add_argument("--no-plots", action="store_true", help="skip the confusion/t-SNE plots")
    r.add_argument("--tsne-samples", type=int, default=2000, help="test clips in the t-SNE plot")
    r.add_argument(
        "--limit-train-batches",
        type=int,
        default=None,
        help="stop each epoch after this many batches (smoke tests)",
    )
    r.add_argument(
        "--limit-eval-batches",
        type=int,
        default=None,
        help="evaluate on this many batches only (smoke tests)",
    )
    r.add_argument(
        "--demo",
        action="store_true",
        help="CPU demo preset: synthetic data, tiny backbone, short schedule "
        f"({', '.join(f'{k}={v}' for k, v in DEMO_DEFAULTS.items())}); "
        "explicit options still win",
    )
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


# The options that set what MCCL computes: --loss ce, which has none, ignores them. Not
# --projection-dim: a size, passed to every row of an ablation with the model's sizes.
MCCL_OPTIONS = ("mc_weight", "mccl_form", "tau0")


def _flag(dest: str) -> str:
    """The command-line flag of an argparse ``dest``: ``min_lr`` -> ``--min-lr``."""
    return "--" + dest.replace("_", "-")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    explicit = {
        a.dest
        for a in parser._actions
        if any(opt in (argv if argv is not None else sys.argv[1:]) for opt in a.option_strings)
    }
    if args.demo:
        # Demo values replace defaults only, never options the user typed.
        for key, value in DEMO_DEFAULTS.items():
            if key not in explicit:
                setattr(args, key, Path(value) if key in ("root", "output") else value)
    ignored = [d for d in MCCL_OPTIONS if d in explicit] if args.loss == "ce" else []
    if ignored:  # e.g. passed to every row of an ablation: the CE row has no MCCL to set
        warnings.warn(
            ", ".join(_flag(d) for d in ignored)
            + " (MCCL's options) have no effect with --loss ce: label-smoothed CE, no MCCL",
            stacklevel=2,
        )
    if args.resume and args.overwrite:
        if "overwrite" in explicit:  # else --demo's: a typed --resume wins over it
            parser.error(
                "--resume continues the run in --output and --overwrite starts a new one over "
                "it: pass one of them"
            )
        args.overwrite = False
    if args.root is None:
        if args.dataset == "synthetic":
            args.root = Path("data/synthetic_dfew")
        else:
            parser.error(f"--root is required for --dataset {args.dataset}")
    if args.fold != "all" and args.fold not in {"1", "2", "3", "4", "5"}:
        parser.error(f"--fold must be 1..5 or 'all', got {args.fold!r}")
    check_numbers(parser, args)
    if 0 < args.epochs <= args.warmup_epochs:
        # Legal, but a run that never reaches --lr nor decays is rarely what was meant: the
        # default warm-up is 10 epochs, so a short --epochs alone gets there.
        warnings.warn(
            f"--warmup-epochs ({args.warmup_epochs}) >= --epochs ({args.epochs}): the learning "
            f"rate rises for the whole run and never reaches --lr ({args.lr}) nor decays; pass "
            "a shorter --warmup-epochs",
            stacklevel=2,
        )
    check_device_and_weights(parser, args)
    if args.num_frames % args.num_instances:
        parser.error("--num-instances must divide --num-frames")
    return args


def check_device_and_weights(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse a --device torch cannot parse or this machine does not have, and --backbone-weights
    that are missing or for the other backbone, before the data set is built (they were
    tracebacks from torch.device, torch.cuda.set_device or the model's constructor)."""
    if args.device != "auto":
        try:
            device = torch.device(args.device)
        except (RuntimeError, ValueError):
            parser.error(
                f"--device must be 'auto', 'cpu', 'cuda', 'cuda:N', ..., got {args.device!r}"
            )
        if device.type == "cuda" and not torch.cuda.is_available():
            parser.error(f"--device {args.device}: CUDA is not available here; pass --device cpu")
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            parser.error(
                f"--device {args.device}: this machine has {torch.cuda.device_count()} CUDA "
                "device(s), numbered from 0"
            )
    if args.backbone_weights is not None:
        if args.backbone != "r3d_18":
            parser.error(f"--backbone-weights is for --backbone r3d_18, not {args.backbone}")
        if not Path(args.backbone_weights).is_file():
            parser.error(f"--backbone-weights {args.backbone_weights}: no such file")


# The folder each layout's --root must hold (docs/reproduce.md), and the layout's --dataset.
_LAYOUT = {"dfew": "EmoLabel_DataSplit", "ferv39k": "4_setups"}
_NAMES = {"dfew": "DFEW", "ferv39k": "FERV39k"}


def check_data_root(args: argparse.Namespace) -> None:
    """Refuse a --root that is not the --dataset's layout before anything runs: a missing
    root, or a FERV39k root given as DFEW (and vice versa), was a FileNotFoundError traceback
    from inside the data module, and --dataset synthetic generated its clips into any folder
    that lacked EmoLabel_DataSplit/, a FERV39k root included."""
    root = Path(args.root)
    if args.dataset == "synthetic" and not root.exists():
        return  # generated there
    if not root.is_dir():
        raise SystemExit(f"--root {root}: {'not a folder' if root.exists() else 'no such folder'}")
    wanted = "dfew" if args.dataset == "synthetic" else args.dataset
    if (root / _LAYOUT[wanted]).is_dir():
        if wanted == "dfew":
            check_dfew_folds(root, args.fold)
        return
    other = next(name for name in _LAYOUT if name != wanted)
    if (root / _LAYOUT[other]).is_dir():
        raise SystemExit(
            f"--root {root} holds a {_NAMES[other]} layout ({_LAYOUT[other]}/), not "
            f"--dataset {args.dataset}'s: pass --dataset {other}, or another --root"
        )
    if args.dataset == "synthetic":
        return  # a folder of something else: make_synthetic_dfew adds its folders to it
    raise SystemExit(
        f"--root {root} is not a {_NAMES[wanted]} root: it holds no {_LAYOUT[wanted]}/ folder "
        "(docs/reproduce.md shows the layout)"
    )


def check_dfew_folds(root: Path, fold: str) -> None:
    """Refuse a --fold whose split files are missing now, not after the folds before it have
    trained (--fold all on a root with fewer folds stopped at the first missing one)."""
    from micacl_layers.data import DFEW

    missing = []
    for f in [1, 2, 3, 4, 5] if fold == "all" else [int(fold)]:
        for split in ("train", "test"):
            path = DFEW.split_file_path(root, f, split)
            if not path.is_file():
                missing.append(path)
    if missing:
        folds = ", ".join(dict.fromkeys(p.stem.removeprefix("set_") for p in missing))
        raise SystemExit(
            f"--fold {fold}: {root} lacks the split files of fold(s) {folds} (e.g. {missing[0]})"
        )


# (option, smallest value); options of None ("not set") are not checked.
_AT_LEAST = (
    ("num_frames", 1),
    ("num_instances", 1),
    ("image_size", 1),
    ("batch_size", 1),
    ("epochs", 0),
    ("workers", 0),
    ("hidden_size", 1),
    ("num_layers", 1),
    ("tiny_dim", 1),
    ("projection_dim", 1),
    ("stop_after", 1),
    ("limit_train_batches", 1),
    ("limit_eval_batches", 1),
    ("tsne_samples", 0),
    ("synthetic_clips", 1),
)
# (option, bound, whether the bound itself is allowed) of the float options, which must be
# finite too. A negative --min-lr or --warmup-lr turned the schedule negative (AdamW then ascends
# the loss); the others failed only once the data set was built, deep inside the model or loss.
_FINITE_FLOATS = (
    ("lr", 0.0, False),
    ("min_lr", 0.0, True),
    ("warmup_lr", 0.0, True),
    ("warmup_epochs", 0.0, True),
    ("weight_decay", 0.0, True),
    ("tau0", 0.0, False),
    ("mc_weight", 0.0, True),
)
# torch.manual_seed's range: --seed goes to it as is (seed_everything).
_SEED_MIN, _SEED_END = -(2**63), 2**64


def check_numbers(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse out-of-range numbers here, naming the option, rather than as a ZeroDivisionError
    or an overflow inside torch once the data set is built."""
    for dest, low in _AT_LEAST:
        value = getattr(args, dest)
        if value is not None and not value >= low:  # `not >=`: NaN fails too
            flag = _flag(dest)
            parser.error(f"{flag} must be >= {low}, got {value}")
    for dest, low, inclusive in _FINITE_FLOATS:
        value = getattr(args, dest)
        if value is None:
            continue
        if not (math.isfinite(value) and (value >= low if inclusive else value > low)):
            flag = _flag(dest)
            parser.error(
                f"{flag} must be a finite number {'>=' if inclusive else '>'} {low}, got {value}"
            )
    if not 0.0 <= args.dropout < 1.0:  # 1 would zero every feature the head sees
        parser.error(f"--dropout must be in [0, 1), got {args.dropout}")
    if not 0.0 < args.crop_scale <= 1.0:
        parser.error(f"--crop-scale must be in (0, 1], got {args.crop_scale}")
    if not _SEED_MIN <= args.seed < _SEED_END:
        parser.error(
            f"--seed must be in [-2**63, 2**64) (torch.manual_seed's range), got {args.seed}"
        )


# ----------------------------------------------------------------------------- runtime
def amp_dtype_for(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype ``--amp`` gives on ``device`` (``None``: no mixed precision)."""
    if not (amp == "on" or (amp == "auto" and device.type == "cuda")):
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def augments_on_device(augment_on: str, device: torch.device) -> bool:
    """Whether ``--augment-on`` puts the colour jitter on the batch, on ``device``."""
    return augment_on == "device" or (augment_on == "auto" and device.type == "cuda")


class Runtime:
    """Device, distributed rank and mixed-precision settings of this process."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.distributed = self.world_size > 1
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if args.device == "auto":
            kind = "cuda" if torch.cuda.is_available() else "cpu"
        else:
            kind = args.device
        if self.distributed:
            backend = "nccl" if kind.startswith("cuda") else "gloo"
            if not dist.is_initialized():
                dist.init_process_group(backend)
            if kind.startswith("cuda"):
                kind = f"cuda:{self.local_rank}"
        self.rank = dist.get_rank() if self.distributed else 0
        self.device = torch.device(kind)
        if self.device.type == "cuda":
            if self.device.index is None:  # set_device refuses an index-less "cuda"
                self.device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(self.device)
        self.amp_dtype = amp_dtype_for(args.amp, self.device)
        # uint8 clips from the workers, colour jitter on the batch (see --augment-on).
        self.device_augment = augments_on_device(args.augment_on, self.device)
        # Epochs trained by this invocation, over all its folds: --stop-after counts these.
        self.epochs_trained = 0
        # Loss scaling is only needed (and only correct) for float16.
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )

    @property
    def main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def log(self, *msg: Any) -> None:
        if self.main:
            print(*msg, flush=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - user code may use the global stream
    torch.manual_seed(seed)


def worker_init(worker_id: int) -> None:
    # Each worker's numpy/random streams derive from the torch seed the loader gave it.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)  # noqa: NPY002
    random.seed(seed)


# ----------------------------------------------------------------------------- data
JITTER = (0.4, 0.4, 0.4)  # brightness, contrast, saturation


# Generator seeds of (seed, epoch, ...) tuples, wrapped into the range manual_seed takes so that
# any --seed works (the products pass 2**64 from --seed 1829 on).
_SEED_RANGE = 2**63


def _epoch_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch) * 10_000_019 + index


def batch_generator(seed: int, epoch: int, rank: int, step: int) -> torch.Generator:
    """The device-side colour jitter's randomness for one batch: a function of (seed, epoch,
    rank, step), like EpochSeeded's per clip, so a resumed run jitters as the straight one."""
    mixed = _epoch_seed(seed, epoch, step) * 1_009 + rank
    return torch.Generator().manual_seed(mixed % _SEED_RANGE)


def as_float(clips: torch.Tensor) -> torch.Tensor:
    """uint8 clips (--augment-on device) to float in [0, 1]; float clips unchanged."""
    return clips.float().div_(255.0) if clips.dtype == torch.uint8 else clips


class EpochSeeded(Dataset):
    """Makes each clip's frame sampling and augmentation a function of (seed, epoch, index).

    The result no longer depends on worker count or on which worker reads a clip, so a resumed
    run sees exactly the clips, frames and crops the uninterrupted run would have.
    """

    def __init__(self, base: Any, seed: int) -> None:
        self.base, self.seed, self.epoch = base, seed, 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        g = torch.Generator()
        g.manual_seed(_epoch_seed(self.seed, self.epoch, index) % _SEED_RANGE)
        self.base.generator = g
        return self.base[index]


def shard_indices(
    n: int, rank: int, world: int, *, epoch: int, seed: int, shuffle: bool, pad: bool
) -> list[int]:
    """This rank's indices. Training pads to equal shards (so DDP steps match); evaluation
    never pads, so no clip is counted twice and none is dropped."""
    if shuffle:
        mixed = seed * 7919 + epoch
        if not _SEED_MIN <= mixed < _SEED_END:  # wrapped only where manual_seed would refuse,
            mixed %= _SEED_RANGE  # so every seed that worked keeps its shuffle
        g = torch.Generator().manual_seed(mixed)
        order = torch.randperm(n, generator=g).tolist()
    else:
        order = list(range(n))
    if pad and world > 1:
        total = math.ceil(n / world) * world
        order = order + order[: total - n]
    return order[rank::world]


SYNTHETIC_RECORD = "train_dfew_synthetic.json"


def synthetic_options(args: argparse.Namespace) -> dict[str, int]:
    return {"synthetic_clips": args.synthetic_clips, "seed": args.seed}


def build_datasets(args: argparse.Namespace, fold: int, rt: Runtime):
    from micacl_layers.data import (
        DFEW,
        ClipColorJitter,
        ClipCompose,
        ClipRandomHorizontalFlip,
        ClipRandomResizedCrop,
        FERV39k,
        make_synthetic_dfew,
        test_transform,
    )

    root = Path(args.root)
    dataset = args.dataset
    if dataset == "synthetic":
        if not (root / "EmoLabel_DataSplit").is_dir():
            if rt.main:
                print(f"generating synthetic DFEW-layout data under {root} ...", flush=True)
                # Every fold's split file, so --fold all works on the same clips.
                make_synthetic_dfew(
                    root,
                    total_clips=args.synthetic_clips,
                    min_clips_per_class=SYNTHETIC_MIN_PER_CLASS,
                    folds=(1, 2, 3, 4, 5),
                    seed=args.seed,
                )
                # What it was made with: a later run with other values is told it reuses it.
                write_text_atomic(root / SYNTHETIC_RECORD, json.dumps(synthetic_options(args)))
            if rt.distributed:
                dist.barrier()
        else:
            made = root / SYNTHETIC_RECORD
            asked = synthetic_options(args)
            was = json.loads(made.read_text()) if made.is_file() else asked
            if was != asked:
                warnings.warn(
                    f"{root} holds synthetic data generated with {was}, not this run's {asked}: "
                    "it is used as it is; delete it, or pass another --root, to generate a new "
                    "set",
                    stacklevel=2,
                )
        dataset = "dfew"
    common = {
        "num_frames": args.num_frames,
        "skip_bad_clips": args.skip_bad_clips,
        "draft": args.draft,
        "output_dtype": torch.uint8 if rt.device_augment else torch.float32,
    }
    steps = [
        ClipRandomResizedCrop(args.image_size, scale=(args.crop_scale, 1.0)),
        ClipRandomHorizontalFlip(0.5),
    ]
    if not rt.device_augment:  # else ClipBatchColorJitter(*JITTER) on the device
        steps.append(ClipColorJitter(*JITTER))
    train_tf = ClipCompose(steps)
    if dataset == "dfew":
        train = DFEW(root, fold, "train", transform=train_tf, **common)
        test = DFEW(root, fold, "test", transform=test_transform(args.image_size), **common)
    else:
        train = FERV39k(root, "train", transform=train_tf, **common)
        test = FERV39k(root, "test", transform=test_transform(args.image_size), **common)
    return train, test


# ----------------------------------------------------------------------------- model and loss
class TrainStep(nn.Module):
    """Model and criterion in one Module, so DDP synchronises the loss's projections too."""

    def __init__(
        self, model: MICACL, criterion: nn.Module | None, label_smoothing: float = 0.1
    ) -> None:
        super().__init__()
        self.model = model
        self.criterion = criterion
        self.label_smoothing = label_smoothing

    def forward(self, clips: torch.Tensor, targets: torch.Tensor):
        logits, features = self.model(clips)
        if self.criterion is None:
            loss = nn.functional.cross_entropy(
                logits.float(), targets, label_smoothing=self.label_smoothing
            )
            return loss, {"ce": loss.detach()}
        out = self.criterion(
            features, logits, targets, classifier=self.model.classifier, return_breakdown=True
        )
        parts = {k: v.detach() for k, v in out._asdict().items() if k != "loss"}
        return out.loss, parts


def build_model(args: argparse.Namespace, num_classes: int) -> MICACL:
    return MICACL(
        num_classes,
        backbone=args.backbone,
        backbone_weights=args.backbone_weights,
        num_frames=args.num_frames,
        num_instances=args.num_instances,
        tiny_dim=args.tiny_dim,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        aggregator=args.aggregator,
        use_geiim=not args.no_geiim,
        weight_mode=args.weight_mode,
        dropout=args.dropout,
    )


def build_criterion(
    args: argparse.Namespace, model: MICACL, class_counts: list[int]
) -> nn.Module | None:
    if args.loss == "ce":
        return None
    overrides: dict[str, Any] = {"projection_dim": args.projection_dim, "tau0": args.tau0}
    if args.mc_weight is not None:
        overrides["mc_weight"] = args.mc_weight
    if args.mccl_form is not None:
        overrides["form"] = args.mccl_form
    preset = "paper" if args.loss == "micacl" else args.loss
    return MICACLLoss.from_preset(
        preset, model.head.num_classes, model.feature_dim, class_counts=class_counts, **overrides
    )


def lr_at(step: int, steps_per_epoch: int, args: argparse.Namespace) -> float:
    """Per-iteration schedule: linear warm-up from warmup_lr, then cosine down to min_lr."""
    warmup = int(args.warmup_epochs * steps_per_epoch)
    total = max(args.epochs * steps_per_epoch, 1)
    if step < warmup:
        return args.warmup_lr + (args.lr - args.warmup_lr) * step / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------- checkpoints
def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()  # noqa: NPY002
    state = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def rng_states(rt: Runtime) -> list[dict[str, Any]]:
    """Every rank's RNG states, in rank order (a collective: all ranks call it). Each rank's
    generators advance on their own (its GPU's dropout, on its device), so a resumed rank
    needs its own states back, not rank 0's."""
    state = rng_state()
    if not rt.distributed:
        return [state]
    states: list[Any] = [None] * rt.world_size
    dist.all_gather_object(states, state)
    return states


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    legacy = ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    np.random.set_state(legacy)  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(obj: Any) -> Any:
    return tuple(_as_tuple(o) for o in obj) if isinstance(obj, (list, tuple)) else obj


# What a resume reads from last.pt ("rng_per_rank", "fold" and "options" are newer: optional).
LAST_KEYS = frozenset(
    ("train_step", "optimizer", "scaler", "epoch", "global_step", "history", "best", "rng", "shape")
)


def shape_signature(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in SHAPE_OPTIONS}


# Options that do not change what a run computes (where it reads and writes, how much it
# prints, how many workers load the same clips): a resumed run may change them.
RUN_ONLY_OPTIONS = (
    "root",
    "output",
    "resume",
    "overwrite",
    "stop_after",
    "quiet",
    "workers",
    "device",
    "no_plots",
    "tsne_samples",
    "demo",
    "fold",  # the fold itself is checked: last.pt records it
)


# What --amp and --augment-on resolve to, by the device kind under "auto": last.pt records
# the values, so that a resume on another kind cannot silently train another run.
RESOLVED_OPTIONS = ("amp", "augment_on")


def _amp_name(dtype: torch.dtype | None) -> str:
    return "none" if dtype is None else str(dtype).removeprefix("torch.")


def _place_name(device_augment: bool) -> str:
    return "device" if device_augment else "worker"


def _resolve(option: str, value: str, device: torch.device) -> str:
    if option == "amp":
        return _amp_name(amp_dtype_for(value, device))
    return _place_name(augments_on_device(value, device))


def resolved_settings(rt: Runtime) -> dict[str, str]:
    """``last.pt``'s record of the device kind and what ``--amp``/``--augment-on`` gave on it
    (strings: ``torch.load(weights_only=True)`` reads them back anywhere)."""
    return {
        "device": rt.device.type,
        "amp": _amp_name(rt.amp_dtype),
        "augment_on": _place_name(rt.device_augment),
    }


def _describe(option: str, value: str) -> str:
    if option == "amp":
        return f"AMP {value}"
    return "the colour jitter " + ("on the device" if value == "device" else "in the workers")


def _explicit_value(option: str, setting: str, device: torch.device) -> str | None:
    """The value of ``option`` other than ``auto`` (which follows the device kind) that gives
    ``setting`` on ``device``, or ``None`` if none does."""
    choices = AMP_CHOICES if option == "amp" else AUGMENT_ON_CHOICES
    return next(
        (v for v in choices if v != "auto" and _resolve(option, v, device) == setting), None
    )


def check_resolved_settings(
    last_path: Path,
    recorded: dict[str, str] | None,
    then: dict[str, Any],
    args: argparse.Namespace,
    rt: Runtime,
) -> set[str]:
    """Refuse a resume whose unchanged ``--amp``/``--augment-on`` resolve otherwise here.

    ``recorded`` is ``last.pt``'s :func:`resolved_settings` (``None`` in a ``last.pt`` of an
    older version: nothing is checked), ``then`` its options. An option the command changes
    is the user's choice, warned about as any changed option; one it leaves as it was must
    still give what it gave, or the "exact" resume would train another run without a word.

    Returns:
        The options whose value changed but which give the recorded setting all the same
        (``--amp on`` for ``auto`` on the CPU, to keep a GPU run's bfloat16): no warning for
        those, the run is the one it continues.

    Raises:
        CheckpointError: Naming the recorded and the resolved settings, the flags that keep
            the checkpoint's settings on this device and those that change them on purpose.
    """
    if recorded is None:
        return set()
    now = resolved_settings(rt)
    checked = [k for k in RESOLVED_OPTIONS if k in recorded]
    changed = {k for k in checked if then.get(k, getattr(args, k)) != getattr(args, k)}
    differ = [k for k in checked if k not in changed and now[k] != recorded[k]]
    if not differ:
        return {k for k in changed if now[k] == recorded[k]}
    device = recorded.get("device", "another device")
    keep = {k: _explicit_value(k, recorded[k], rt.device) for k in differ}
    if all(keep.values()):
        how = "to continue it exactly, pass " + " ".join(f"{_flag(k)} {keep[k]}" for k in differ)
    else:
        # Only AMP can be out of reach: float16 on the CPU or on a GPU with bfloat16 support.
        lost = " and ".join(_describe(k, recorded[k]) for k in differ if keep[k] is None)
        how = f"no flag gives {lost} on {rt.device.type}: resume on {device} to continue it"
    # (--amp off and --augment-on worker/device exist everywhere: a value giving `now`.)
    accept = " ".join(f"{_flag(k)} {_explicit_value(k, now[k], rt.device)}" for k in differ)
    then_text = " and ".join(_describe(k, recorded[k]) for k in differ)
    now_text = " and ".join(
        f"{_describe(k, now[k])} ({_flag(k)} {getattr(args, k)})" for k in differ
    )
    raise CheckpointError(
        f"{last_path} was written on {device} with {then_text}, but this run on "
        f"{rt.device.type} would train with {now_text}, so it would not continue the "
        f"checkpointed run; {how}; to change them on purpose, pass {accept} (a changed "
        "option, so the result is not the uninterrupted run's)."
    )


def result_options(args: argparse.Namespace) -> dict[str, Any]:
    """The other options a resumed run should share with the run it continues (the seed, the
    schedule, the batch size, ...): a resume with other values warns."""
    return {
        k: str(v) if isinstance(v, Path) else v
        for k, v in sorted(vars(args).items())
        if k not in SHAPE_OPTIONS and k not in RUN_ONLY_OPTIONS
    }


# ----------------------------------------------------------------------------- reporting
def per_class_table(classes: list[str], rows: list[tuple[str, dict[str, Any]]]) -> str:
    names = [SHORT_NAMES.get(c.lower(), c[:4] + ".") for c in classes]
    head = "| Run | " + " | ".join(names) + " | WAR | UAR |"
    sep = "|" + "---|" * (len(names) + 3)
    lines = [head, sep]
    for label, m in rows:
        cells = ["n/a" if r is None else f"{100 * r:.2f}" for r in m["per_class_recall"]]
        lines.append(
            f"| {label} | "
            + " | ".join(cells)
            + f" | {100 * m['war']:.2f} | {100 * m['uar']:.2f} |"
        )
    return "\n".join(lines)


def save_plots(
    out: Path,
    cm: torch.Tensor,
    classes: list[str],
    features: np.ndarray,
    labels: np.ndarray,
    seed: int,
    rt: Runtime,
) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        rt.log("matplotlib is not installed: skipping plots (pip install micacl-layers[examples])")
        return
    cmf = cm.double()
    norm = cmf / cmf.sum(dim=1, keepdim=True).clamp_min(1)
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j,
                i,
                f"{norm[i, j]:.2f}\n({int(cm[i, j])})",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (row-normalised)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    write_atomic(out / "confusion_matrix.png", lambda fh: fig.savefig(fh, format="png", dpi=120))
    plt.close(fig)
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        rt.log("scikit-learn is not installed: skipping the t-SNE plot")
        return
    if len(features) < 5:
        return
    emb = TSNE(
        n_components=2, init="pca", random_state=seed, perplexity=min(30.0, (len(features) - 1) / 3)
    ).fit_transform(features)
    fig, ax = plt.subplots(figsize=(6, 5))
    for k, name in enumerate(classes):
        sel = labels == k
        ax.scatter(emb[sel, 0], emb[sel, 1], s=6, label=name)
    ax.legend(markerscale=3, fontsize=8)
    ax.set_title("t-SNE of clip features (test split)")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    write_atomic(out / "tsne.png", lambda fh: fig.savefig(fh, format="png", dpi=120))
    plt.close(fig)


# ----------------------------------------------------------------------------- loops
def progress(iterable, total: int, desc: str, rt: Runtime, args: argparse.Namespace):
    if args.quiet or not rt.main:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    # disable=None: bars on a terminal only, so logs and CI output stay readable.
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        leave=False,
        dynamic_ncols=True,
        mininterval=1.0,
        disable=None,
    )


def make_loader(
    dataset,
    indices: list[int],
    args: argparse.Namespace,
    rt: Runtime,
    shuffle_seed: int | None = None,
) -> DataLoader:
    subset = torch.utils.data.Subset(dataset, indices)
    return DataLoader(
        subset,
        batch_size=args.batch_size,
        shuffle=False,
        drop_last=False,
        num_workers=args.workers,
        worker_init_fn=worker_init,
        pin_memory=rt.device.type == "cuda",
        persistent_workers=False,
    )


@torch.no_grad()
def evaluate(
    model: MICACL,
    dataset,
    num_classes: int,
    args: argparse.Namespace,
    rt: Runtime,
    collect: int = 0,
):
    model.eval()
    indices = shard_indices(
        len(dataset), rt.rank, rt.world_size, epoch=0, seed=0, shuffle=False, pad=False
    )
    loader = make_loader(dataset, indices, args, rt)
    cm = ConfusionMatrix(num_classes)
    feats, labels = [], []
    total = (
        len(loader)
        if args.limit_eval_batches is None
        else min(len(loader), args.limit_eval_batches)
    )
    for i, (clips, targets) in enumerate(progress(loader, total, "eval", rt, args)):
        if args.limit_eval_batches is not None and i >= args.limit_eval_batches:
            break
        clips = as_float(clips.to(rt.device, non_blocking=True))
        with rt.autocast():
            logits, feature = model(clips)
        cm.update(logits.float().cpu(), targets)
        if collect and sum(len(f) for f in feats) < collect:
            feats.append(feature.float().cpu())
            labels.append(targets)
    matrix = cm.compute()
    if rt.distributed:
        matrix = matrix.to(rt.device)
        dist.all_reduce(matrix)
        matrix = matrix.cpu()
    recall = per_class_recall(matrix)
    metrics = {
        "war": war(matrix),
        "uar": uar(matrix),
        # None (JSON null) for a class absent from the test split: its recall is undefined.
        "per_class_recall": [None if math.isnan(r) else r for r in recall.tolist()],
        "confusion": matrix.tolist(),
    }
    features = torch.cat(feats)[:collect].numpy() if feats else np.zeros((0, 1))
    labs = torch.cat(labels)[:collect].numpy() if labels else np.zeros((0,), dtype=np.int64)
    return metrics, features, labs


# What a finished run leaves besides last.pt, best.pt and log.csv (which a new run replaces as
# it goes): a new run in its --output removes them, so they are never read as the new run's.
REPLACED_RESULTS = ("results.json", "confusion_matrix.png", "tsne.png")


def refuse_to_overwrite(last_path: Path) -> None:
    raise SystemExit(
        f"{last_path} holds a run already: pass --resume to continue it, --overwrite to "
        f"start again over it, or another --output"
    )


def train_one_fold(
    args: argparse.Namespace, fold: int, out: Path, rt: Runtime, *, resume_may_start: bool = False
) -> dict:
    """Train and evaluate one fold in ``out``. ``resume_may_start``: under ``--resume``, a fold
    without a checkpoint starts from scratch (the folds after the one a ``--fold all`` run
    stopped in) instead of failing."""
    last_path = out / "last.pt"
    resume = args.resume and last_path.is_file()
    if args.resume and not resume:
        if not resume_may_start:
            raise SystemExit(f"--resume: no checkpoint at {last_path}")
        rt.log(f"[fold {fold}] --resume: no checkpoint at {last_path} yet; starting this fold")
    if not args.resume and last_path.is_file() and not args.overwrite:
        # A rerun without --resume would replace best.pt after one epoch, and last.pt with it.
        refuse_to_overwrite(last_path)
    seed_everything(args.seed)
    train_set, test_set = build_datasets(args, fold, rt)
    classes = list(train_set.classes)
    num_classes = len(classes)
    rt.log(
        f"[fold {fold}] train: {len(train_set)} clips {train_set.class_counts}, "
        f"test: {len(test_set)} clips {test_set.class_counts}"
    )
    model = build_model(args, num_classes).to(rt.device)
    criterion = build_criterion(args, model, train_set.class_counts)
    step_module = TrainStep(model, criterion).to(rt.device)
    params = [p for p in step_module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay, eps=1e-8)
    seeded = EpochSeeded(train_set, args.seed)
    from micacl_layers.data import ClipBatchColorJitter

    jitter = ClipBatchColorJitter(*JITTER)
    steps_per_epoch = math.ceil(
        len(
            shard_indices(
                len(train_set),
                rt.rank,
                rt.world_size,
                epoch=0,
                seed=args.seed,
                shuffle=True,
                pad=True,
            )
        )
        / args.batch_size
    )
    if args.limit_train_batches is not None:
        steps_per_epoch = min(steps_per_epoch, args.limit_train_batches)

    start_epoch, global_step, history = 0, 0, []
    best: dict[str, Any] | None = None
    options = result_options(args)
    if resume:
        ckpt = load_checkpoint(last_path, map_location="cpu")
        # A best.pt (or another program's checkpoint) saved as last.pt: say so, not KeyError.
        lacks = sorted(LAST_KEYS - set(ckpt))  # load_checkpoint refuses a non-dict itself
        if lacks:
            raise CheckpointError(
                f"{last_path} is not a last.pt of this script (it lacks {', '.join(lacks)}); "
                "restore the run's last.pt, or start again with --overwrite or another --output."
            )
        if ckpt.get("shape") != shape_signature(args):
            raise CheckpointError(
                f"{last_path} was written with options {ckpt.get('shape')}, which do not "
                f"match this run's {shape_signature(args)}."
            )
        if ckpt.get("fold", fold) != fold:  # same shapes, other clips: a silent mix
            raise CheckpointError(
                f"{last_path} holds a run of fold {ckpt['fold']}, not of fold {fold}; "
                "pass that fold, or another --output."
            )
        then = ckpt.get("options", options)
        same_effect = check_resolved_settings(last_path, ckpt.get("resolved"), then, args, rt)
        changed = {
            k: (v, options.get(k))
            for k, v in then.items()
            if options.get(k) != v and k not in same_effect
        }
        if changed:
            warnings.warn(
                f"{last_path}: resuming with other options than the run was started with, so "
                "the result is not the uninterrupted run's: "
                + ", ".join(f"{_flag(k)} {a!r} -> {b!r}" for k, (a, b) in changed.items()),
                stacklevel=2,
            )
        load_state_dict_checked(step_module, ckpt["train_step"], source=str(last_path))
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt["scaler"] or not rt.scaler.is_enabled():
            rt.scaler.load_state_dict(ckpt["scaler"])
        else:  # saved without float16 (CPU, bfloat16): torch raises on the empty state
            warnings.warn(
                f"{last_path} was saved without float16 loss scaling (on the CPU or with "
                "bfloat16); the loss scale starts from its default here",
                stacklevel=2,
            )
        start_epoch, global_step = ckpt["epoch"] + 1, ckpt["global_step"]
        history, best = ckpt["history"], ckpt["best"]
        per_rank = ckpt.get("rng_per_rank")  # absent in checkpoints of older versions
        if per_rank is not None and len(per_rank) == rt.world_size:
            set_rng_state(per_rank[rt.rank])
        else:  # another world size: the shards differ anyway, so the run cannot be exact
            set_rng_state(ckpt["rng"])
        rt.log(f"[fold {fold}] resumed from {last_path} after epoch {ckpt['epoch'] + 1}")

    runner = step_module
    if rt.distributed:
        runner = nn.parallel.DistributedDataParallel(
            step_module,
            device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
            # With --mc-weight 0 MCCL's projections take no part in the loss, and DDP would
            # otherwise wait for their gradients and fail at the next step.
            find_unused_parameters=isinstance(criterion, MICACLLoss) and not criterion.mc_weight,
        )
    writer = None
    if rt.main:
        out.mkdir(parents=True, exist_ok=True)
        if not resume:  # a new run (--overwrite): the replaced run's results are not its own
            for name in REPLACED_RESULTS:
                (out / name).unlink(missing_ok=True)
            for events in (out / "tb").glob("events.out.tfevents.*"):
                events.unlink()
        with contextlib.suppress(ImportError):
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out / "tb"))

    for epoch in range(start_epoch, args.epochs):
        if args.stop_after is not None and rt.epochs_trained >= args.stop_after:
            rt.log(
                f"[fold {fold}] stopping after {args.stop_after} epoch(s) as asked; "
                f"continue with --resume"
            )
            if writer is not None:
                writer.close()
            return {"fold": fold, "stopped_after_epoch": epoch}
        step_module.train()
        seeded.epoch = epoch
        indices = shard_indices(
            len(train_set),
            rt.rank,
            rt.world_size,
            epoch=epoch,
            seed=args.seed,
            shuffle=True,
            pad=True,
        )
        loader = make_loader(seeded, indices, args, rt)
        sums: dict[str, float] = {}
        seen = 0
        t0 = time.time()
        bar = progress(loader, steps_per_epoch, f"epoch {epoch + 1}/{args.epochs}", rt, args)
        for i, (clips, targets) in enumerate(bar):
            if i >= steps_per_epoch:
                break
            lr = lr_at(global_step, steps_per_epoch, args)
            for group in optimizer.param_groups:
                group["lr"] = lr
            clips = clips.to(rt.device, non_blocking=True)
            targets = targets.to(rt.device, non_blocking=True)
            if rt.device_augment:
                clips = jitter(clips, generator=batch_generator(args.seed, epoch, rt.rank, i))
            with rt.autocast():
                loss, parts = runner(clips, targets)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite loss {loss.item()} at epoch {epoch + 1}, step {i}: {parts}"
                )
            optimizer.zero_grad(set_to_none=True)
            rt.scaler.scale(loss).backward()
            rt.scaler.step(optimizer)
            rt.scaler.update()
            global_step += 1
            n = clips.shape[0]
            seen += n
            for k, v in {"loss": loss.detach(), **parts}.items():
                sums[k] = sums.get(k, 0.0) + float(v) * n
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", lr=f"{lr:.2e}")
        train_stats = {k: v / max(seen, 1) for k, v in sums.items()}
        metrics, _, _ = evaluate(model, test_set, num_classes, args, rt)
        record = {
            "epoch": epoch + 1,
            "lr": lr_at(global_step - 1, steps_per_epoch, args),
            "seconds": round(time.time() - t0, 2),
            **{f"train_{k}": v for k, v in train_stats.items()},
            "war": metrics["war"],
            "uar": metrics["uar"],
            "per_class_recall": metrics["per_class_recall"],
        }
        history.append(record)
        key = args.select_by
        if best is None or metrics[key] > best["metrics"][key]:
            best = {"epoch": epoch + 1, "metrics": metrics}
            if rt.main:
                save_checkpoint(
                    {
                        "model": model.state_dict(),
                        "epoch": epoch,
                        "shape": shape_signature(args),
                        "metrics": metrics,
                    },
                    out / "best.pt",
                )
        rt.log(
            f"[fold {fold}] epoch {epoch + 1}/{args.epochs}  "
            f"loss {train_stats.get('loss', 0):.4f}"
            f"  WAR {100 * metrics['war']:.2f}  UAR {100 * metrics['uar']:.2f}"
            f"  ({record['seconds']:.0f}s)"
        )
        states = rng_states(rt)  # before `if rt.main`: every rank takes part
        if rt.main:
            write_csv(out / "log.csv", history, classes)
            if writer is not None:
                for k, v in record.items():
                    if isinstance(v, (int, float)) and k != "epoch":
                        writer.add_scalar(k, v, epoch + 1)
            save_checkpoint(
                {
                    "train_step": step_module.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": rt.scaler.state_dict(),
                    "epoch": epoch,
                    "global_step": global_step,
                    "history": history,
                    "best": best,
                    "rng": states[0],
                    "rng_per_rank": states,
                    "shape": shape_signature(args),
                    "fold": fold,
                    "options": options,
                    "resolved": resolved_settings(rt),
                },
                last_path,
            )
        rt.epochs_trained += 1
    if writer is not None:
        writer.close()

    final_metrics, feats, labels = evaluate(
        model, test_set, num_classes, args, rt, collect=0 if args.no_plots else args.tsne_samples
    )
    final_epoch = history[-1]["epoch"] if history else 0
    result = {
        "fold": fold,
        "classes": classes,
        "final_epoch": final_epoch,
        "final": final_metrics,
        "best_epoch": best["epoch"] if best else 0,
        "best": best["metrics"] if best else final_metrics,
        "select_by": args.select_by,
    }
    if rt.main:
        rt.log("")
        rt.log(
            per_class_table(
                classes,
                [
                    (f"final (epoch {final_epoch})", final_metrics),
                    (
                        f"best {args.select_by.upper()} (epoch {result['best_epoch']})",
                        result["best"],
                    ),
                ],
            )
        )
        write_text_atomic(out / "results.json", json.dumps(result, indent=2))
        if not args.no_plots:
            save_plots(
                out, torch.tensor(final_metrics["confusion"]), classes, feats, labels, args.seed, rt
            )
            rt.log(f"plots written to {out}/confusion_matrix.png and {out}/tsne.png")
    return result


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a flushed temporary and a rename.

    A run killed mid-write leaves the previous file (or none), never a truncated one that a
    later ``--resume`` or ``ablation.py --reuse`` would fail to parse.
    """
    write_atomic(path, lambda fh: fh.write(text), text=True)


def write_atomic(path: Path, write: Callable[[IO[Any]], object], *, text: bool = False) -> None:
    """Call ``write`` on a temporary file next to ``path``, then flush it and rename it over.

    :func:`write_text_atomic` for text; the plots pass ``fig.savefig`` (a half-written PNG
    would stand in for the previous run's whole one). ``text=True`` opens the temporary as
    text, without newline translation.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", newline="") if text else tmp.open("wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        # The rename survives a power loss only once the folder's entry is on disk as well
        # (the same step save_checkpoint takes).
        _sync_folder(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_csv(path: Path, history: list[dict], classes: list[str]) -> None:
    keys = [k for k in history[0] if k != "per_class_recall"]
    extra = [f"recall_{c}" for c in classes]
    rows = io.StringIO(newline="")
    w = csv.writer(rows)
    w.writerow(keys + extra)
    for row in history:
        w.writerow([row.get(k, "") for k in keys] + row["per_class_recall"])
    write_text_atomic(path, rows.getvalue())


def lock_output(output: Path) -> Any:
    """Hold an exclusive flock on ``<output>/.lock`` for the run, or refuse the run: two runs
    in one --output (a requeued job next to the one still running, a --resume typed while it
    trains) wrote last.pt, best.pt and log.csv in turn, each over the other's. The kernel
    releases the lock when its holder ends, however it ends, so it never goes stale. Returns
    the open lock file (close it to release), or None where flock is not available."""
    try:
        import fcntl
    except ImportError:  # Windows: runs are not guarded there
        return None
    output.mkdir(parents=True, exist_ok=True)
    fh = (output / ".lock").open("a")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise SystemExit(
            f"--output {output} is in use by another run, which holds {output / '.lock'}: "
            "wait for it to end, or pass another --output"
        ) from None
    except OSError as err:  # a file system without locks (some NFS mounts): run unguarded
        warnings.warn(f"could not lock {output / '.lock'} ({err}); running unguarded", stacklevel=2)
    return fh


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    check_data_root(args)
    rt = Runtime(args)
    if args.dataset == "ferv39k":
        folds = [0]
    else:
        folds = [1, 2, 3, 4, 5] if args.fold == "all" else [int(args.fold)]
    rt.log(
        f"device {rt.device}, world size {rt.world_size}, amp {rt.amp_dtype}, "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    outs = [args.output / f"fold{fold}" if len(folds) > 1 else args.output for fold in folds]
    for path in [args.output, *outs]:  # else a traceback once the data set is built, or later
        if path.exists() and not path.is_dir():
            raise SystemExit(f"--output {args.output}: {path} is not a folder")
        if (path / "last.pt").exists() and not (path / "last.pt").is_file():
            raise SystemExit(f"--output {args.output}: {path / 'last.pt'} is not a file")
    taken = [out / "last.pt" for out in outs if (out / "last.pt").is_file()]
    if taken and not args.resume and not args.overwrite:
        refuse_to_overwrite(taken[0])  # now, not after the folds before it have trained
    if args.resume and not taken:
        raise SystemExit(
            f"--resume: no checkpoint at {' or '.join(str(o / 'last.pt') for o in outs)}"
        )
    results = []
    lock = lock_output(args.output) if rt.main else None
    try:
        for fold, out in zip(folds, outs, strict=True):
            # Under --fold all, the folds after the one that stopped have no checkpoint yet.
            results.append(train_one_fold(args, fold, out, rt, resume_may_start=len(folds) > 1))
            if "stopped_after_epoch" in results[-1]:
                break  # --stop-after's epochs are spent: the later folds are for the next --resume
    finally:
        if lock is not None:
            lock.close()  # releases the flock
    if len(results) > 1 and rt.main and all("final" in r for r in results):
        rt.log("\nMean over folds (final epoch / best epoch per fold):")
        for which in ("final", "best"):
            war = np.array([r[which]["war"] for r in results]) * 100
            uar = np.array([r[which]["uar"] for r in results]) * 100
            rt.log(
                f"  {which:5s}: WAR {war.mean():.2f} ± {war.std():.2f}  "
                f"UAR {uar.mean():.2f} ± {uar.std():.2f}"
            )
    if rt.distributed:
        dist.barrier()
        dist.destroy_process_group()
    return results


if __name__ == "__main__":
    main()
