#!/usr/bin/env python
"""Ablations of MICACL with ``examples/train_dfew.py``: Table III's components, and losses.

Every setting of a table is trained on the same data, fold and seeds; the script prints a
Markdown table (mean ± std over seeds of WAR, UAR and per-class recall) and writes it to
``<output>/<table>.md`` with a JSON of all raw numbers next to it. Examples::

    # Table III (a: conv1d, b: + GEIIM, c: + WIAN, d: + CET and MCCL) on synthetic data
    python examples/ablation.py --table components

    # losses on the full MICACL model: CE, CE + MCCL variants, SupCon, IAL, logit adjustment
    python examples/ablation.py --table losses --seeds 0 1 2

    # on DFEW fold 1, passing train_dfew options through after "--"
    python examples/ablation.py --table components --dataset dfew --root /data/DFEW \\
        --epochs 100 -- --backbone-weights r3d_18-b3b3357e.pth --batch-size 64

Runs go to ``<output>/<table>/<setting>/seed<k>`` (each a normal train_dfew run directory).
On ``--dataset synthetic`` (the default) the data are generated once under ``--root`` and a
small CPU preset is used (see ``SYNTHETIC_PRESET``); the numbers then say nothing about DFEW.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from micacl_layers import MICACLLoss

HERE = Path(__file__).resolve().parent

# name -> (description, train_dfew options, custom criterion or None)
COMPONENTS: dict[str, tuple[str, list[str], str | None]] = {
    "a": (
        "conv1d aggregator, no GEIIM, CE",
        ["--no-geiim", "--aggregator", "conv1d", "--loss", "ce"],
        None,
    ),
    "b": ("GEIIM + conv1d, CE", ["--aggregator", "conv1d", "--loss", "ce"], None),
    "c": ("GEIIM + WIAN, CE", ["--loss", "ce"], None),
    "d": ("GEIIM + WIAN, CET + MCCL (MICACL)", ["--loss", "micacl"], None),
}
LOSSES: dict[str, tuple[str, list[str], str | None]] = {
    "ce": ("CE (label smoothing 0.1)", ["--loss", "ce"], None),
    "micacl": ("CET + MCCL, our defaults (--loss micacl)", ["--loss", "micacl"], None),
    "micacl_paper": (
        "CET + MCCL, paper-exact (ratio form, Eq. 4 channel softmax, weight 1)",
        [
            "--loss",
            "micacl",
            "--mccl-form",
            "ratio",
            "--mc-weight",
            "1",
            "--weight-mode",
            "channel_softmax",
        ],
        None,
    ),
    "public_code": (
        "public code preset: CE + 30 x MCCL (log form)",
        ["--loss", "public_code"],
        None,
    ),
    "supcon": (
        "CE + plain SupCon (1 scale, no class/difficulty weights, fixed tau, log)",
        ["--loss", "micacl"],
        "supcon",
    ),
    "ce_ial": ("CE + 0.1 x IAL", ["--loss", "micacl"], "ce_ial"),
    "logit_adj": (
        "logit-adjusted CE (tau 1, Menon et al. 2021)",
        ["--loss", "micacl"],
        "logit_adjusted",
    ),
    "paper_la": (
        "'paper_logit_adjusted' preset: CET with logit-adjusted CE + MCCL",
        ["--loss", "paper_logit_adjusted"],
        None,
    ),
    # The preset with its MCCL switched off: tells whether MCCL or the CET's IAL and
    # augmentation terms make the difference to logit-adjusted CE alone.
    "paper_la_cet": (
        "'paper_logit_adjusted' preset without MCCL: logit-adjusted CET",
        ["--loss", "paper_logit_adjusted", "--mc-weight", "0"],
        None,
    ),
    "balanced": (
        "'balanced' preset: logit-adjusted CE + 0.3 x balanced MCCL (log form)",
        ["--loss", "micacl"],
        "balanced",
    ),
}
TABLES = {"components": COMPONENTS, "losses": LOSSES}

# The synthetic CPU preset: --demo's tiny model at a smaller size and a shorter schedule, so a
# 3-seed table fits in ~20 minutes on two cores (see docs/ablation.md for the timings).
SYNTHETIC_PRESET = {"clips": 600, "min_clips_per_class": 25, "epochs": 10, "image_size": 32}


def load_train_dfew():
    spec = importlib.util.spec_from_file_location("train_dfew", HERE / "train_dfew.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- custom losses
class LogitAdjustedOutput(NamedTuple):
    loss: torch.Tensor
    ce: torch.Tensor


class LogitAdjustedCE(nn.Module):
    """Logit-adjusted cross-entropy (Menon et al., ICLR 2021): CE on ``logits + tau*log(prior)``.

    The model's raw logits are used at test time, which is what makes it balance the classes.
    """

    def __init__(
        self, class_counts: list[int], tau: float = 1.0, label_smoothing: float = 0.1
    ) -> None:
        super().__init__()
        counts = torch.tensor(class_counts, dtype=torch.float32).clamp_min(1)
        self.register_buffer("log_prior", torch.log(counts / counts.sum()))
        self.tau, self.label_smoothing = tau, label_smoothing

    def forward(self, features, logits, targets, *, classifier=None, return_breakdown=False):
        adjusted = logits.float() + self.tau * self.log_prior.to(logits.device)
        loss = nn.functional.cross_entropy(adjusted, targets, label_smoothing=self.label_smoothing)
        return LogitAdjustedOutput(loss, loss.detach()) if return_breakdown else loss


def custom_criterion(kind: str, args, model, class_counts: list[int]) -> nn.Module:
    k, d = model.head.num_classes, model.feature_dim
    if kind == "supcon":
        # Plain SupCon: MCCL with one scale, no class or difficulty weighting, fixed tau, log
        # form, next to label-smoothed CE only (no IAL, no augmentation term).
        return MICACLLoss(
            k,
            d,
            class_counts,
            scales=(1,),
            mc_weight=1.0 if args.mc_weight is None else args.mc_weight,
            ial_weight=0.0,
            aug_weight=0.0,
            class_weighting=False,
            difficulty=False,
            temperature="fixed",
            form="log",
            projection_dim=args.projection_dim,
            tau0=args.tau0,
        )
    if kind == "ce_ial":
        return MICACLLoss(
            k,
            d,
            class_counts,
            mc_weight=0.0,
            ial_weight=0.1,
            aug_weight=0.0,
            projection_dim=args.projection_dim,
            tau0=args.tau0,
        )
    if kind == "logit_adjusted":
        return LogitAdjustedCE(class_counts, tau=1.0)
    if kind == "balanced":
        # The preset as users build it; only the model-size options follow the command line.
        return MICACLLoss.from_preset(
            "balanced", k, d, class_counts, projection_dim=args.projection_dim
        )
    raise ValueError(kind)


def describe_criterion(criterion: nn.Module | None) -> dict[str, Any]:
    if criterion is None:
        return {"type": "CrossEntropy(label_smoothing=0.1)"}
    info: dict[str, Any] = {"type": type(criterion).__name__}
    if isinstance(criterion, MICACLLoss):
        m = criterion.mccl
        info.update(
            mc_weight=criterion.mc_weight,
            ial_weight=criterion.cet.ial_weight,
            aug_weight=criterion.cet.aug_weight,
            logit_adjustment=criterion.cet.logit_adjustment,
            label_smoothing=criterion.cet.label_smoothing,
            balanced_smoothing=criterion.cet.balanced_smoothing,
        )
        for name in (
            *("form", "temperature", "scales", "class_weighting", "difficulty"),
            *("class_average", "class_complements", "weight_norm"),
        ):
            if hasattr(m, name):
                value = getattr(m, name)
                info[f"mccl_{name}"] = list(value) if isinstance(value, tuple) else value
    if isinstance(criterion, LogitAdjustedCE):
        info["tau"] = criterion.tau
    return info


# ----------------------------------------------------------------------------- running
def run_one(td, argv: list[str], custom: str | None) -> dict[str, Any]:
    """One train_dfew run (in this process) with build_model/build_criterion instrumented."""
    record: dict[str, Any] = {}
    orig_model, orig_criterion = td.build_model, td.build_criterion

    def build_model(args, num_classes):
        model = orig_model(args, num_classes)
        record["model_params"] = sum(p.numel() for p in model.parameters())
        record["model"] = {
            "aggregator": args.aggregator,
            "geiim": not args.no_geiim,
            "weight_mode": args.weight_mode,
        }
        return model

    def build_criterion(args, model, class_counts):
        crit = (
            custom_criterion(custom, args, model, list(class_counts))
            if custom
            else orig_criterion(args, model, class_counts)
        )
        record["criterion"] = describe_criterion(crit)
        record["criterion_params"] = (
            0 if crit is None else sum(p.numel() for p in crit.parameters())
        )
        return crit

    td.build_model, td.build_criterion = build_model, build_criterion
    try:
        t0 = time.time()
        (result,) = td.main(argv)
        record["seconds"] = round(time.time() - t0, 1)
    finally:
        td.build_model, td.build_criterion = orig_model, orig_criterion
    record.update(
        final_epoch=result["final_epoch"],
        best_epoch=result["best_epoch"],
        classes=result["classes"],
        final={k: result["final"][k] for k in ("war", "uar", "per_class_recall")},
        best={k: result["best"][k] for k in ("war", "uar", "per_class_recall")},
    )
    return record


def mean_std(values: list[float | None]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    arr = np.array(vals, dtype=float) * 100
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def fmt(ms: tuple[float, float]) -> str:
    m, s = ms
    return "n/a" if math.isnan(m) else f"{m:.1f} ± {s:.1f}"


def summarise(settings: dict, runs: dict[str, list[dict]], which: str) -> list[dict]:
    rows = []
    for name, (desc, _, _) in settings.items():
        rs = runs.get(name, [])
        if not rs:
            continue
        n_cls = len(rs[0][which]["per_class_recall"])
        rows.append(
            {
                "setting": name,
                "description": desc,
                "n": len(rs),
                "war": mean_std([r[which]["war"] for r in rs]),
                "uar": mean_std([r[which]["uar"] for r in rs]),
                "per_class": [
                    mean_std([r[which]["per_class_recall"][c] for r in rs])[0] for c in range(n_cls)
                ],
            }
        )
    return rows


def markdown_table(rows: list[dict], classes: list[str], short: dict[str, str]) -> str:
    names = [short.get(c.lower(), c[:4] + ".") for c in classes]
    lines = [
        "| Setting | Description | WAR | UAR | " + " | ".join(names) + " |",
        "|---|---|---|---|" + "---|" * len(names),
    ]
    for r in rows:
        cells = ["n/a" if math.isnan(v) else f"{v:.1f}" for v in r["per_class"]]
        lines.append(
            f"| {r['setting']} | {r['description']} | {fmt(r['war'])} | "
            f"{fmt(r['uar'])} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if hasattr(os, "getloadavg"):
        info["load_avg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Run MICACL ablation tables with examples/train_dfew.py. Unknown options "
        "(or anything after '--') are passed to train_dfew.py.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument(
        "--table",
        choices=tuple(TABLES),
        required=True,
        help="components: Table III a-d; losses: loss variants on the full model",
    )
    p.add_argument(
        "--settings",
        nargs="+",
        default=None,
        help="run only these settings of the table (default: all)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    p.add_argument("--dataset", choices=("synthetic", "dfew", "ferv39k"), default="synthetic")
    p.add_argument(
        "--root",
        type=Path,
        default=None,
        help="data root (synthetic: generated here once; default data/synthetic_ablation)",
    )
    # Not train_dfew's 'all': a table runs one fold (five would be five tables' runs).
    p.add_argument("--fold", default="1", choices=("1", "2", "3", "4", "5"), help="DFEW fold")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"epochs per run (synthetic default {SYNTHETIC_PRESET['epochs']}; "
        "otherwise train_dfew's default)",
    )
    p.add_argument(
        "--synthetic-clips",
        type=int,
        default=SYNTHETIC_PRESET["clips"],
        help="clips of the generated synthetic data set",
    )
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data")
    p.add_argument("--output", type=Path, default=Path("runs/ablation"), help="output folder")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="reuse runs already finished under --output with the same options, and resume "
        "an interrupted one from its last.pt (to continue an interrupted table)",
    )
    return p


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse bad values of this script's own flags, naming the flag, before anything runs."""
    if args.epochs is not None and args.epochs < 1:
        # (--epochs 0 was taken as "not given": the synthetic preset's epochs were run.)
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    if args.synthetic_clips < 1:
        parser.error(f"--synthetic-clips must be >= 1, got {args.synthetic_clips}")
    # A repeated seed would run again over its own folder and count twice in the mean and std.
    repeated = sorted({s for s in args.seeds if args.seeds.count(s) > 1})
    if repeated:
        parser.error(f"--seeds repeats {', '.join(map(str, repeated))}: give each seed once")
    # train_dfew's range for --seed, checked here for all of them: not when a seed's turn comes.
    bad = [s for s in args.seeds if not -(2**63) <= s < 2**64]
    if bad:
        parser.error(
            f"--seeds must be in [-2**63, 2**64) (torch.manual_seed's range), got {bad[0]}"
        )


# train_dfew options each run gets from this script. Passed through as well, the first four
# would override the table's (which the report still records), the others be overridden.
OWN_TRAIN_DFEW_OPTIONS = (
    *("--dataset", "--root", "--fold", "--epochs"),
    *("--seed", "--output", "--resume", "--overwrite"),
)


def check_passthrough(parser: argparse.ArgumentParser, passthrough: list[str]) -> None:
    """Refuse a train_dfew option in ``passthrough`` that this script sets for every run."""
    for token in passthrough:
        name = token.split("=", 1)[0]
        if not name.startswith("--") or len(name) < 3:
            continue
        # (train_dfew takes unambiguous abbreviations: --epo is --epochs.)
        for own in OWN_TRAIN_DFEW_OPTIONS:
            if own.startswith(name):
                instead = {"--seed": "--seeds", "--resume": "--reuse"}.get(own, own)
                hint = (
                    "each run is started over"
                    if own == "--overwrite"
                    else f"pass this script's {instead} instead"
                )
                parser.error(
                    f"{own} is set by ablation.py for each run, not passed through to "
                    f"train_dfew (got {token!r}): {hint}"
                )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if "--" in argv:
        i = argv.index("--")
        own, passthrough = argv[:i], argv[i + 1 :]
        args, extra = parser.parse_known_args(own)
        passthrough = extra + passthrough
    else:
        args, passthrough = parser.parse_known_args(argv)
    check_args(parser, args)
    check_passthrough(parser, passthrough)
    settings = TABLES[args.table]
    if args.settings:
        unknown = set(args.settings) - set(settings)
        if unknown:
            raise SystemExit(
                f"unknown settings {sorted(unknown)}; {args.table} has {list(settings)}"
            )
        settings = {k: v for k, v in settings.items() if k in args.settings}

    common = ["--dataset", args.dataset, "--fold", args.fold, "--no-plots"]
    data: dict[str, Any] = {"dataset": args.dataset, "fold": args.fold}
    if args.dataset == "synthetic":
        root = args.root or Path("data/synthetic_ablation")
        made = {"synthetic_clips": args.synthetic_clips, "data_seed": args.data_seed}
        # The data are generated once per root; what they were made with is kept beside them,
        # so that other --synthetic-clips or --data-seed do not silently run on (and report as
        # theirs, or mix with --reuse) data of other options.
        marker = root / "ablation_synthetic.json"
        if not (root / "EmoLabel_DataSplit").is_dir():
            from micacl_layers.data import make_synthetic_dfew

            print(f"generating synthetic DFEW-layout data under {root} ...", flush=True)
            make_synthetic_dfew(
                root,
                total_clips=args.synthetic_clips,
                min_clips_per_class=SYNTHETIC_PRESET["min_clips_per_class"],
                folds=(1, 2, 3, 4, 5),
                seed=args.data_seed,
            )
            tmp = marker.with_name(f".{marker.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(made))
            os.replace(tmp, marker)
        elif marker.is_file():
            old = json.loads(marker.read_text())
            differ = [k for k in made if old.get(k) != made[k]]
            if differ:
                parser.error(
                    f"--root {root} holds synthetic data made with "
                    + ", ".join(f"{k}={old.get(k)}" for k in made)
                    + "; "
                    + " and ".join(f"--{k.replace('_', '-')} {made[k]}" for k in differ)
                    + " would run on them: pass the same options, or another --root"
                )
        else:  # made by hand or by an older version of this script: what with is not known
            made = {k: "unknown (data not generated by ablation.py)" for k in made}
        epochs = SYNTHETIC_PRESET["epochs"] if args.epochs is None else args.epochs
        # --demo's tiny CPU model and schedule, smaller frames; explicit options still win.
        common += ["--demo", "--image-size", str(SYNTHETIC_PRESET["image_size"])]
        data.update(made)
    else:
        if args.root is None:
            raise SystemExit(f"--root is required for --dataset {args.dataset}")
        root = args.root
        epochs = args.epochs
    data["root"] = str(root)
    common += ["--root", str(root)]
    if epochs is not None:
        common += ["--epochs", str(epochs)]
    if "--quiet" not in passthrough:
        common.append("--quiet")

    td = load_train_dfew()
    started = time.time()
    meta = {
        "command": "python " + " ".join(shlex.quote(a) for a in ["examples/ablation.py", *argv]),
        "table": args.table,
        "seeds": args.seeds,
        "epochs": epochs,
        "data": data,
        "machine": machine_info(),
        "train_dfew_common_args": common + passthrough,
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }
    runs: dict[str, list[dict]] = {}
    # Seed-major order: an interrupted table still has every setting at the first seeds.
    for seed in args.seeds:
        for name, (_desc, opts, custom) in settings.items():
            out = args.output / args.table / name / f"seed{seed}"
            run_argv = [*common, *opts, *passthrough, "--seed", str(seed), "--output", str(out)]
            saved = out / "ablation_run.json"
            if args.reuse and saved.is_file() and json.loads(saved.read_text())["argv"] == run_argv:
                rec = json.loads(saved.read_text())
                print(f"[{args.table}] {name} seed {seed}: reusing {saved}", flush=True)
            else:
                # An interrupted run of these same options continues from its last.pt (resume
                # is exact, so the table is the uninterrupted one's); anything else in the
                # folder starts again, which train_dfew refuses without --overwrite.
                begun = out / "ablation_started.json"
                resume = (
                    args.reuse
                    and (out / "last.pt").is_file()
                    and begun.is_file()
                    and json.loads(begun.read_text())["argv"] == run_argv
                )
                print(
                    f"[{args.table}] {name} seed {seed}: "
                    + ("resuming " if resume else "")
                    + f"train_dfew {' '.join(shlex.quote(a) for a in run_argv)}",
                    flush=True,
                )
                if not resume:
                    out.mkdir(parents=True, exist_ok=True)
                    td.write_text_atomic(begun, json.dumps({"argv": run_argv}, indent=2))
                rec = run_one(td, [*run_argv, "--resume" if resume else "--overwrite"], custom)
                rec.update(setting=name, seed=seed, argv=run_argv, output=str(out), resumed=resume)
                td.write_text_atomic(saved, json.dumps(rec, indent=2))
            runs.setdefault(name, []).append(rec)
            print(
                f"[{args.table}] {name} seed {seed}: final WAR "
                f"{100 * rec['final']['war']:.2f} UAR {100 * rec['final']['uar']:.2f} "
                f"({rec['seconds']:.0f}s)",
                flush=True,
            )
            write_report(args, settings, runs, meta, epochs, data, td, started, done=False)
    text, report = write_report(args, settings, runs, meta, epochs, data, td, started, done=True)
    print("\n" + text)
    print(f"\nwritten {args.output / f'{args.table}.md'} and {args.output / f'{args.table}.json'}")
    return report


def write_report(args, settings, runs, meta, epochs, data, td, started, *, done: bool):
    """Write ``<output>/<table>.md`` and ``.json`` (also after each run, marked partial)."""
    meta["seconds_total"] = round(time.time() - started, 1)
    n_runs = sum(map(len, runs.values()))
    classes = next(iter(runs.values()))[0]["classes"]
    final_rows, best_rows = (summarise(settings, runs, w) for w in ("final", "best"))
    m = meta["machine"]
    header = [
        f"# Ablation: {args.table}" + ("" if done else " (PARTIAL: still running)"),
        "",
        f"- command: `{meta['command']}`",
        f"- seeds: {args.seeds}; epochs: {epochs or 'train_dfew default'}",
        f"- data: {json.dumps(data)}",
        f"- machine: {m['cpu']}, {m['cpu_count']} CPUs, torch {m['torch']} with "
        f"{m['torch_threads']} threads, Python {m['python']}; load average at start "
        f"{m.get('load_avg_at_start')}",
        f"- total time: {meta['seconds_total'] / 60:.1f} min for {n_runs} runs",
        "",
        "Mean ± sample std over seeds, in %; per-class columns are mean recall.",
        "",
    ]
    body = [
        "## Final epoch",
        "",
        markdown_table(final_rows, classes, td.SHORT_NAMES),
        "",
        "## Best epoch (selected on the test split: optimistic)",
        "",
        markdown_table(best_rows, classes, td.SHORT_NAMES),
        "",
    ]
    text = "\n".join(header + body)
    args.output.mkdir(parents=True, exist_ok=True)
    td.write_text_atomic(args.output / f"{args.table}.md", text)
    report = {
        **meta,
        "complete": done,
        "settings": {
            k: {"description": v[0], "options": v[1], "custom": v[2]} for k, v in settings.items()
        },
        "summary": {"final": final_rows, "best": best_rows},
        "runs": runs,
    }
    td.write_text_atomic(args.output / f"{args.table}.json", json.dumps(report, indent=2))
    return text, report


if __name__ == "__main__":
    main()
