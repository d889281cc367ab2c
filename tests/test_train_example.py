"""End-to-end tests of examples/train_dfew.py on tiny generated DFEW/FERV39k-layout trees."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("PIL")

import itertools

from micacl_layers.checkpoint import load_checkpoint
from micacl_layers.data import DFEW, make_synthetic_dfew, make_synthetic_ferv39k
from tests.conftest import load_script, torchrun_succeeded

pytestmark = pytest.mark.slow  # end-to-end runs and process groups: not in the fast tier

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_dfew.py"


train_dfew = load_script(SCRIPT, "train_dfew")

TINY = [
    "--backbone",
    "tiny",
    "--tiny-dim",
    "16",
    "--hidden-size",
    "8",
    "--num-layers",
    "1",
    "--projection-dim",
    "8",
    "--image-size",
    "16",
    "--batch-size",
    "8",
    "--workers",
    "0",
    "--warmup-epochs",
    "0.5",
    "--quiet",
    "--seed",
    "3",
]


def _argv(root, out, *, epochs=1, train_batches=1, fold=None):
    """A tiny DFEW run: one batch of training and of evaluation an epoch, no plots."""
    argv = ["--dataset", "dfew", "--root", str(root), "--epochs", str(epochs), "--no-plots"]
    argv += ["--limit-train-batches", str(train_batches), "--limit-eval-batches", "1"]
    argv += [] if fold is None else ["--fold", str(fold)]
    return argv + ([] if out is None else ["--output", str(out)]) + TINY


@pytest.fixture(scope="module")
def dfew_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dfew")
    make_synthetic_dfew(
        root,
        total_clips=60,
        min_clips_per_class=5,
        frames=(6, 20),
        image_size=20,
        folds=(1, 2),
        seed=1,
    )
    return root


@pytest.fixture(scope="module")
def ferv_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ferv")
    make_synthetic_ferv39k(
        root, total_clips=40, min_clips_per_class=5, frames=(6, 20), image_size=20, seed=2
    )
    return root


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["train_step"]


def test_one_epoch_dfew_layout_reports_metrics_and_plots(dfew_root, tmp_path, capsys):
    out = tmp_path / "run"
    (result,) = train_dfew.main(
        [
            "--dataset",
            "dfew",
            "--root",
            str(dfew_root),
            "--fold",
            "1",
            "--epochs",
            "1",
            "--output",
            str(out),
            "--tsne-samples",
            "30",
            *TINY,
        ]
    )
    printed = capsys.readouterr().out
    assert result["final_epoch"] == 1 and result["best_epoch"] == 1
    for key in ("war", "uar"):
        assert 0.0 <= result["final"][key] <= 1.0
    assert len(result["final"]["per_class_recall"]) == 7
    # The Table-I-style report names every class and both rows.
    for name in ("Hap.", "Sad.", "Neu.", "Ang.", "Sur.", "Dis.", "Fea.", "WAR", "UAR"):
        assert name in printed
    assert "final (epoch 1)" in printed and "best UAR (epoch 1)" in printed
    for name in (
        "last.pt",
        "best.pt",
        "log.csv",
        "results.json",
        "confusion_matrix.png",
        "tsne.png",
    ):
        assert (out / name).is_file(), name
    # Evaluation covered every test clip exactly once (nothing dropped, nothing doubled).
    cm = torch.tensor(result["final"]["confusion"])
    assert int(cm.sum()) == len(DFEW(dfew_root, 1, "test"))


def test_one_epoch_ferv39k_layout(ferv_root, tmp_path):
    (result,) = train_dfew.main(
        [
            "--dataset",
            "ferv39k",
            "--root",
            str(ferv_root),
            "--epochs",
            "1",
            "--output",
            str(tmp_path / "ferv"),
            "--no-plots",
            "--loss",
            "public_code",
            *TINY,
        ]
    )
    assert result["classes"][0].lower() == "angry"  # FERV39k's alphabetical class order
    assert torch.tensor(result["final"]["confusion"]).sum() > 0


@pytest.mark.parametrize("augment_on", ["worker", "device"])
def test_resume_continues_exactly(dfew_root, tmp_path, augment_on):
    # "device": uint8 clips from the loader, the colour jitter on the batch (seeded per step).
    common = [
        "--dataset",
        "dfew",
        "--root",
        str(dfew_root),
        "--epochs",
        "2",
        "--no-plots",
        "--limit-train-batches",
        "3",
        "--augment-on",
        augment_on,
        *TINY,
    ]
    straight = tmp_path / "straight"
    split = tmp_path / "split"
    train_dfew.main([*common, "--output", str(straight)])
    (stopped,) = train_dfew.main([*common, "--output", str(split), "--stop-after", "1"])
    assert stopped == {"fold": 1, "stopped_after_epoch": 1}
    after_one = _state(split / "last.pt")
    train_dfew.main([*common, "--output", str(split), "--resume"])
    a, b = _state(straight / "last.pt"), _state(split / "last.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # The second epoch did change the weights, so the equality above is not vacuous.
    assert any(not torch.equal(after_one[k], b[k]) for k in b if b[k].is_floating_point())

    # The logged history (losses, metrics, learning rates) matches too, wall time aside.
    def history(path):
        return [
            {k: v for k, v in row.items() if k != "seconds"}
            for row in load_checkpoint(path)["history"]
        ]

    assert history(split / "last.pt") == history(straight / "last.pt")


@pytest.mark.parametrize(
    ("augment_on", "dtype"), [("worker", torch.float32), ("device", torch.uint8)]
)
def test_augment_on_device_gives_uint8_clips_without_the_jitter(dfew_root, augment_on, dtype):
    args = train_dfew.parse_args(
        ["--dataset", "dfew", "--root", str(dfew_root), "--augment-on", augment_on, *TINY]
    )
    rt = train_dfew.Runtime(args)
    assert rt.device_augment == (augment_on == "device")
    train, test = train_dfew.build_datasets(args, 1, rt)
    assert train.output_dtype == test.output_dtype == dtype
    steps = [type(t).__name__ for t in train.transform.transforms]
    assert ("ClipColorJitter" in steps) == (augment_on == "worker")
    clip, _ = train[0]
    assert clip.dtype == dtype and clip.shape == (3, 16, 16, 16)
    # The batch jitter's draws are a function of (seed, epoch, rank, step) alone.
    g1, g2 = train_dfew.batch_generator(3, 1, 0, 5), train_dfew.batch_generator(3, 1, 0, 5)
    assert torch.equal(g1.get_state(), g2.get_state())
    others = [
        train_dfew.batch_generator(*key) for key in ((3, 2, 0, 5), (3, 1, 1, 5), (3, 1, 0, 6))
    ]
    assert all(not torch.equal(g1.get_state(), g.get_state()) for g in others)


@pytest.mark.parametrize("seed", [0, 3407, 2**31 - 1, 10**12])
def test_any_seed_gives_valid_generators(dfew_root, seed):
    # The (seed, epoch, index) products pass 2**64 from --seed 1829 on; they are wrapped.
    train_dfew.batch_generator(seed, 299, 7, 10_000)
    args = train_dfew.parse_args(["--dataset", "dfew", "--root", str(dfew_root), *TINY])
    train, _ = train_dfew.build_datasets(args, 1, train_dfew.Runtime(args))
    seeded = train_dfew.EpochSeeded(train, seed)
    seeded.epoch = 299
    clip, _ = seeded[len(train) - 1]
    assert clip.shape == (3, 16, 16, 16)


def test_resume_refuses_a_checkpoint_of_another_model(dfew_root, tmp_path):
    out = tmp_path / "run"
    base = [
        "--dataset",
        "dfew",
        "--root",
        str(dfew_root),
        "--epochs",
        "2",
        "--no-plots",
        "--limit-train-batches",
        "1",
        "--output",
        str(out),
        *TINY,
    ]
    train_dfew.main([*base, "--stop-after", "1"])
    with pytest.raises(Exception, match="do not match"):
        train_dfew.main([*base, "--resume", "--hidden-size", "12"])


def test_help_documents_every_option():
    parser = train_dfew.build_parser()
    for action in parser._actions:
        if action.dest != "help":
            assert action.help and len(action.help) > 3, action.dest
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True
    )
    for option in (
        "--fold",
        "--dataset",
        "--resume",
        "--backbone-weights",
        "--lr",
        "--weight-decay",
        "--min-lr",
        "--epochs",
        "--num-frames",
        "--image-size",
    ):
        assert option in proc.stdout


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_runtime_on_one_gpu_gets_an_indexed_device(monkeypatch, device):
    # torch.cuda.set_device refuses an index-less torch.device("cuda"), which --device auto
    # and --device cuda gave outside torchrun: the script stopped with a ValueError on any GPU.
    # No GPU needed here: set_device keeps torch's own index check, without the CUDA call.
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(
        torch.cuda, "set_device", lambda d: chosen.append(torch.cuda._utils._get_device_index(d))
    )
    args = train_dfew.parse_args(["--dataset", "synthetic", "--device", device])
    rt = train_dfew.Runtime(args)
    assert rt.device == torch.device("cuda", 0) and chosen == [0]
    assert rt.amp_dtype == torch.bfloat16 and rt.device_augment


def test_a_bad_device_or_backbone_weights_is_refused_naming_the_option(tmp_path, capsys):
    weights = tmp_path / "r3d_18.pth"
    weights.write_bytes(b"")
    cases = [
        (["--device", "gpu"], "gpu"),  # was a RuntimeError from torch.device
        (["--device", "cuda:0:1"], "cuda:0:1"),
        (["--backbone-weights", str(tmp_path / "missing.pth")], "missing.pth"),
        (["--backbone", "tiny", "--backbone-weights", str(weights)], "tiny"),
    ]
    if not torch.cuda.is_available():  # was a ValueError from torch.cuda.set_device
        cases.append((["--device", "cuda"], "cuda"))
    else:
        cases.append((["--device", f"cuda:{torch.cuda.device_count()}"], "cuda:"))
    for extra, named in cases:
        with pytest.raises(SystemExit):
            train_dfew.parse_args(["--dataset", "synthetic", *extra])
        err = capsys.readouterr().err
        assert extra[-2] in err and named in err, (extra, err)


def test_a_warmup_as_long_as_the_run_is_reported():
    # --epochs 5 with the default 10 warm-up epochs never reached --lr nor decayed, silently.
    with pytest.warns(UserWarning, match=r"--warmup-epochs \(10\) >= --epochs \(5\)"):
        train_dfew.parse_args(["--dataset", "dfew", "--root", "x", "--epochs", "5"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train_dfew.parse_args(["--dataset", "dfew", "--root", "x", "--epochs", "11"])
        train_dfew.parse_args(["--dataset", "synthetic", "--demo"])  # 1 warm-up of 10 epochs


def test_paper_defaults():
    args = train_dfew.parse_args(["--dataset", "dfew", "--root", "x"])
    assert (args.lr, args.weight_decay, args.min_lr, args.epochs) == (4e-4, 0.05, 3e-6, 300)
    assert (args.num_frames, args.image_size, args.backbone) == (16, 112, "r3d_18")
    assert args.warmup_epochs > 0


def test_schedule_warms_up_then_decays_to_min_lr():
    args = train_dfew.parse_args(["--root", "x", "--epochs", "10", "--warmup-epochs", "2"])
    lrs = [train_dfew.lr_at(s, 5, args) for s in range(50)]
    assert lrs[0] == pytest.approx(args.warmup_lr)
    assert max(lrs) == pytest.approx(args.lr)
    warmup, decay = lrs[:11], lrs[10:]
    assert all(a <= b for a, b in itertools.pairwise(warmup))
    assert all(a >= b for a, b in itertools.pairwise(decay))
    assert train_dfew.lr_at(50, 5, args) == pytest.approx(args.min_lr)


def test_eval_shards_cover_every_clip_once():
    for world in (1, 2, 3):
        shards = [
            train_dfew.shard_indices(10, r, world, epoch=0, seed=0, shuffle=False, pad=False)
            for r in range(world)
        ]
        assert sorted(i for s in shards for i in s) == list(range(10))
        train = [
            train_dfew.shard_indices(10, r, world, epoch=4, seed=0, shuffle=True, pad=True)
            for r in range(world)
        ]
        assert len({len(s) for s in train}) == 1
        assert set(i for s in train for i in s) == set(range(10))


# --mc-weight 0 leaves MCCL's projections out of the loss: DDP must not wait for their gradients.
@pytest.mark.parametrize("extra", [[], ["--mc-weight", "0"]], ids=["micacl", "mc_weight_0"])
def test_two_steps_under_torchrun_on_cpu(dfew_root, tmp_path, extra):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        str(SCRIPT),
        "--dataset",
        "dfew",
        "--root",
        str(dfew_root),
        "--epochs",
        "1",
        "--limit-train-batches",
        "2",
        "--no-plots",
        "--output",
        str(out),
        *TINY,
        *extra,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    done = (out / "results.json").exists()  # written by rank 0 before the teardown
    assert torchrun_succeeded(proc.returncode, proc.stderr, work_finished=done), (
        proc.stdout[-3000:] + proc.stderr[-3000:]
    )
    assert "world size 2" in proc.stdout
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["global_step"] == 2
    # Evaluation was sharded without padding and summed across ranks: every test clip once.
    result = json.loads((out / "results.json").read_text())
    test_clips = len(DFEW(dfew_root, 1, "test"))
    assert int(torch.tensor(result["final"]["confusion"]).sum()) == test_clips


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--batch-size", "0"),  # was a ZeroDivisionError once the data sets were built
        ("--num-instances", "0"),  # was a ZeroDivisionError in parse_args
        ("--num-frames", "0"),
        ("--image-size", "0"),
        ("--workers", "-1"),
        ("--epochs", "-1"),
        ("--stop-after", "0"),
        ("--limit-train-batches", "0"),
        ("--crop-scale", "0"),
        ("--crop-scale", "1.5"),
        ("--seed", str(2**64)),  # was an overflow inside torch.manual_seed
    ],
)
def test_out_of_range_numbers_are_refused_naming_the_option(option, value, capsys):
    with pytest.raises(SystemExit):
        train_dfew.parse_args(["--dataset", "synthetic", option, value])
    err = capsys.readouterr().err
    assert option in err and value in err


@pytest.mark.parametrize(
    ("option", "value"),
    [
        # A negative --min-lr or --warmup-lr was checked nowhere: the schedule went negative
        # and AdamW ascended the loss for the rest of the run, silently.
        ("--min-lr", "-1.0"),
        ("--warmup-lr", "-1.0"),
        ("--lr", "0.0"),
        ("--lr", "inf"),
        ("--lr", "nan"),
        ("--warmup-epochs", "inf"),
        # The rest failed only once the data set was built (or generated), as a traceback.
        ("--weight-decay", "-1.0"),
        ("--dropout", "1.0"),
        ("--tau0", "0.0"),
        ("--mc-weight", "-1.0"),
        ("--hidden-size", "0"),
        ("--num-layers", "0"),
        ("--tiny-dim", "0"),
        ("--projection-dim", "0"),
    ],
)
def test_model_loss_and_optimiser_numbers_are_refused_naming_the_option(option, value, capsys):
    with pytest.raises(SystemExit):
        train_dfew.parse_args(["--dataset", "synthetic", option, value])
    err = capsys.readouterr().err
    assert option in err and value in err


def test_resume_and_overwrite_together_are_refused(capsys):
    # --resume silently won: a user who meant to start again continued the old run instead.
    with pytest.raises(SystemExit):
        train_dfew.parse_args(["--dataset", "synthetic", "--resume", "--overwrite"])
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err
    # --demo's implied --overwrite gives way to a typed --resume.
    assert train_dfew.parse_args(["--demo", "--resume"]).resume


def test_mccl_options_with_loss_ce_are_reported():
    # --loss ce has no MCCL: the typed --mc-weight and --tau0 were dropped without a word, so
    # an ablation row read as "CE + MCCL" was plain CE.
    with pytest.warns(UserWarning, match=r"--mc-weight, --tau0.*--loss ce"):
        train_dfew.parse_args(
            ["--dataset", "synthetic", "--loss", "ce", "--mc-weight", "1", "--tau0", "0.1"]
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train_dfew.parse_args(["--dataset", "synthetic", "--loss", "ce"])
        train_dfew.parse_args(["--dataset", "synthetic", "--mc-weight", "1"])


def test_shuffle_works_for_every_accepted_seed_and_keeps_the_old_orders():
    # seed * 7919 passed torch.manual_seed's range from --seed ~2.3e15 on (an overflow error).
    for seed in (2**62, 2**64 - 1, -(2**63)):
        order = train_dfew.shard_indices(50, 0, 1, epoch=3, seed=seed, shuffle=True, pad=True)
        assert sorted(order) == list(range(50))
    # Seeds that worked before give the same shuffle as before.
    for seed in (0, 3, -5, 10**12):
        g = torch.Generator().manual_seed(seed * 7919 + 2)
        expected = torch.randperm(50, generator=g).tolist()
        assert train_dfew.shard_indices(50, 0, 1, epoch=2, seed=seed, shuffle=True, pad=True) == (
            expected
        )


def test_a_rerun_without_resume_does_not_replace_the_run(dfew_root, tmp_path):
    out = tmp_path / "run"
    argv = _argv(dfew_root, out)
    train_dfew.main(argv)
    before = {name: (out / name).read_bytes() for name in ("last.pt", "best.pt")}
    # The same command again, --resume forgotten: it used to train over last.pt and best.pt.
    with pytest.raises(SystemExit, match="holds a run already.*--resume.*--overwrite"):
        train_dfew.main([*argv, "--seed", "4"])
    assert {name: (out / name).read_bytes() for name in before} == before
    train_dfew.main([*argv, "--seed", "4", "--overwrite"])
    assert (out / "last.pt").read_bytes() != before["last.pt"]


def test_overwrite_removes_the_replaced_runs_results(dfew_root, tmp_path):
    out = tmp_path / "run"
    train_dfew.main(_argv(dfew_root, out))
    (out / "confusion_matrix.png").write_bytes(b"old")  # as a run with plots leaves them
    # The new run stops before it writes its own: the old run's results.json (and plots) sat
    # next to the new last.pt, read as this run's.
    train_dfew.main([*_argv(dfew_root, out, epochs=2), "--overwrite", "--stop-after", "1"])
    assert (out / "last.pt").is_file()
    assert not (out / "results.json").exists()
    assert not (out / "confusion_matrix.png").exists()


def test_an_output_that_is_not_a_folder_is_refused_before_training(dfew_root, tmp_path):
    # Both were tracebacks, the first once the data and model were built, the second only
    # after the first epoch had trained.
    a_file = tmp_path / "run.txt"
    a_file.write_text("notes")
    with pytest.raises(SystemExit, match="--output.*not a folder"):
        train_dfew.main(_argv(dfew_root, a_file))
    (tmp_path / "run" / "last.pt").mkdir(parents=True)
    with pytest.raises(SystemExit, match="--output.*last.pt.*not a file"):
        train_dfew.main(_argv(dfew_root, tmp_path / "run"))
    assert a_file.read_text() == "notes"


@pytest.mark.skipif(os.name != "posix", reason="the run lock is a POSIX flock")
def test_a_second_run_in_the_same_output_is_refused_while_the_first_runs(dfew_root, tmp_path):
    import fcntl

    out = tmp_path / "run"
    out.mkdir()
    # Another process's run (a requeued job, a --resume typed while it trains): both wrote
    # last.pt, best.pt and log.csv in turn, each over the other's.
    with (out / ".lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SystemExit, match="--output.*in use by another run"):
            train_dfew.main(_argv(dfew_root, out))
        assert not (out / "last.pt").exists()
    train_dfew.main(_argv(dfew_root, out))  # the lock is released with its holder
    assert (out / "last.pt").is_file()


@pytest.fixture(scope="module")
def dfew5_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dfew5")
    make_synthetic_dfew(
        root,
        total_clips=35,
        min_clips_per_class=5,
        frames=(6, 10),
        image_size=20,
        folds=(1, 2, 3, 4, 5),
        seed=1,
    )
    return root


def test_fold_all_resume_starts_the_folds_not_reached_yet(dfew5_root, tmp_path):
    root = dfew5_root
    out = tmp_path / "all"
    argv = _argv(root, out, fold="all")
    with pytest.raises(SystemExit, match="no checkpoint"):  # nothing to resume at all
        train_dfew.main([*argv, "--resume"])
    real = train_dfew.train_one_fold

    def crash_in_fold_3(args, fold, *rest, **kw):
        if fold == 3:
            raise KeyboardInterrupt  # the job was killed before fold 3's first checkpoint
        return real(args, fold, *rest, **kw)

    train_dfew.train_one_fold = crash_in_fold_3
    try:
        with pytest.raises(KeyboardInterrupt):
            train_dfew.main(argv)
    finally:
        train_dfew.train_one_fold = real
    done = (out / "fold1" / "last.pt").read_bytes()
    # --resume used to stop at fold 3 ("no checkpoint"): folds 3-5 could not be run.
    results = train_dfew.main([*argv, "--resume"])
    assert [r["fold"] for r in results] == [1, 2, 3, 4, 5]
    assert all("final" in r for r in results)
    assert (out / "fold1" / "last.pt").read_bytes() == done  # fold 1 was finished: not retrained
    assert all((out / f"fold{k}" / "last.pt").is_file() for k in (3, 4, 5))
    # Without --resume, a fold's run in the output is found before any fold trains.
    shutil.rmtree(out / "fold1")
    shutil.rmtree(out / "fold2")
    with pytest.raises(SystemExit, match=r"fold3.last\.pt holds a run already"):
        train_dfew.main(argv)
    assert not (out / "fold1").exists()


def test_resume_with_other_options_warns_and_another_fold_is_refused(dfew_root, tmp_path):
    out = tmp_path / "run"
    base = _argv(dfew_root, out, epochs=2)
    train_dfew.main([*base, "--stop-after", "1"])
    # Fold 2 has the same shapes but other clips: it trained on, mixing the two folds.
    with pytest.raises(train_dfew.CheckpointError, match="fold 1, not of fold 2"):
        train_dfew.main([*base, "--resume", "--fold", "2"])
    # Another batch size and seed: silently not the run it continues.
    with pytest.warns(UserWarning, match=r"--batch-size 8 -> 4.*--seed 3 -> 5"):
        train_dfew.main([*base, "--resume", "--batch-size", "4", "--seed", "5"])


def test_resume_on_another_device_kind_refuses_a_silent_amp_or_augmentation_change(
    dfew_root, tmp_path
):
    # --amp auto and --augment-on auto resolve by device kind: a run checkpointed on a GPU
    # (bfloat16 autocast, jitter on the batch) resumed on the CPU went on in float32 with the
    # jitter in the workers, and nothing said the resumed run was another one.
    out = tmp_path / "run"
    base = _argv(dfew_root, out, epochs=2)
    train_dfew.main([*base, "--stop-after", "1"])
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["resolved"] == {"device": "cpu", "amp": "none", "augment_on": "worker"}
    as_on_gpu = {"device": "cuda", "amp": "bfloat16", "augment_on": "device"}

    def last_pt(resolved):
        state = {k: v for k, v in ckpt.items() if k != "resolved"}
        if resolved is not None:
            state["resolved"] = resolved
        train_dfew.save_checkpoint(state, out / "last.pt")

    last_pt(as_on_gpu)
    with pytest.raises(
        train_dfew.CheckpointError,
        match=r"(?s)written on cuda with AMP bfloat16 .*jitter on the device.*"
        r"cpu.*AMP none \(--amp auto\).*jitter in the workers \(--augment-on auto\).*"
        r"--amp on --augment-on device.*--amp off --augment-on worker",
    ):
        train_dfew.main([*base, "--resume"])
    assert load_checkpoint(out / "last.pt")["epoch"] == 0  # refused before training

    # The flags that give the checkpoint's settings here: no warning, the run goes on.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (result,) = train_dfew.main([*base, "--resume", "--amp", "on", "--augment-on", "device"])
    assert result["final_epoch"] == 2
    assert not [w for w in caught if "other options" in str(w.message)]
    assert load_checkpoint(out / "last.pt")["resolved"] == {**as_on_gpu, "device": "cpu"}

    # Flags that change them on purpose: a changed option, which warns as any other does.
    last_pt(as_on_gpu)
    with pytest.warns(UserWarning, match=r"--amp 'auto' -> 'off'.*--augment-on 'auto' -> 'worker'"):
        (result,) = train_dfew.main([*base, "--resume", "--amp", "off", "--augment-on", "worker"])
    assert result["final_epoch"] == 2

    # A last.pt of an older version records neither: resumed as before.
    last_pt(None)
    (result,) = train_dfew.main([*base, "--resume"])
    assert result["final_epoch"] == 2


def test_resume_refuses_a_file_that_is_not_a_last_pt(dfew_root, tmp_path):
    out = tmp_path / "run"
    base = _argv(dfew_root, out, epochs=2)
    train_dfew.main([*base, "--stop-after", "1"])
    # best.pt copied over last.pt (its shapes match): it failed with a bare KeyError.
    shutil.copy(out / "best.pt", out / "last.pt")
    with pytest.raises(train_dfew.CheckpointError, match=r"not a last\.pt.*optimizer"):
        train_dfew.main([*base, "--resume"])


def test_a_wrong_data_root_is_refused_naming_the_option(dfew_root, ferv_root, tmp_path):
    def refused(dataset, root):
        out = tmp_path / "run"
        argv = ["--dataset", dataset, "--root", str(root), "--output", str(out), *TINY]
        with pytest.raises(SystemExit) as err:
            train_dfew.main(argv)
        assert not (out / "last.pt").exists()
        return str(err.value.code)

    # Each was a FileNotFoundError traceback from deep in the data module.
    assert "--root" in refused("dfew", tmp_path / "missing")
    assert "--dataset ferv39k" in refused("dfew", ferv_root)
    assert "--dataset dfew" in refused("ferv39k", dfew_root)
    # --dataset synthetic generated its clips into the FERV39k folder.
    ferv_copy = shutil.copytree(ferv_root, tmp_path / "ferv")
    assert "--dataset ferv39k" in refused("synthetic", ferv_copy)
    assert not (ferv_copy / "EmoLabel_DataSplit").exists()


def test_fold_all_is_refused_up_front_when_a_fold_has_no_split_file(dfew_root, tmp_path):
    # dfew_root has folds 1 and 2 only: --fold all trained folds 1 and 2 (hours on DFEW) and
    # then stopped with a FileNotFoundError at fold 3.
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match=r"--fold all.*fold\(s\) 3, 4, 5"):
        train_dfew.main(_argv(dfew_root, out, fold="all"))
    assert not out.exists()
    with pytest.raises(SystemExit, match=r"--fold 4.*fold\(s\) 4\b"):
        train_dfew.main(_argv(dfew_root, out, fold=4))


def test_synthetic_data_made_with_other_options_is_reused_with_a_warning(tmp_path):
    # An existing synthetic tree is reused: another --synthetic-clips or --seed was silently
    # ignored (the run trained on the old set).
    root = tmp_path / "syn"
    argv = ["--dataset", "synthetic", "--root", str(root), "--synthetic-clips", "14", *TINY]
    args = train_dfew.parse_args(argv)
    rt = train_dfew.Runtime(args)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first, _ = train_dfew.build_datasets(args, 1, rt)  # generates it
        train_dfew.build_datasets(args, 1, rt)  # the same options: reused, no warning
    args = train_dfew.parse_args([*argv, "--synthetic-clips", "20", "--seed", "4"])
    with pytest.warns(UserWarning, match=r"'synthetic_clips': 14, 'seed': 3\}, not this run"):
        again, _ = train_dfew.build_datasets(args, 1, rt)
    assert again.samples == first.samples


def test_resume_onto_float16_loss_scaling_from_a_run_without_it(dfew_root, tmp_path):
    # A CPU or bfloat16 run resumed on a float16 GPU: GradScaler.load_state_dict raised torch's
    # "The source state dict is empty" from inside the resume.
    argv = _argv(dfew_root, tmp_path / "run", epochs=2)
    train_dfew.main([*argv, "--stop-after", "1"])
    args = train_dfew.parse_args([*argv, "--resume"])
    rt = train_dfew.Runtime(args)
    rt.scaler = torch.amp.GradScaler("cpu", enabled=True)  # as on a float16 GPU
    with pytest.warns(UserWarning, match="saved without float16 loss scaling"):
        result = train_dfew.train_one_fold(args, 1, tmp_path / "run", rt)
    assert result["final_epoch"] == 2
    assert load_checkpoint(tmp_path / "run" / "last.pt")["scaler"]  # now saved with its state


DESYNC_DRIVER = """
import sys
import torch
from pathlib import Path
spec_path, args = Path(sys.argv[1]), sys.argv[2:]
import importlib.util
spec = importlib.util.spec_from_file_location("train_dfew", spec_path)
td = importlib.util.module_from_spec(spec)
sys.modules["train_dfew"] = td
spec.loader.exec_module(td)
real = td.evaluate
def evaluate(*a, **k):
    out = real(*a, **k)
    # Each rank's generator advances on its own, as each GPU's dropout does on its device.
    torch.rand(int(torch.distributed.get_rank()) + 1)
    return out
td.evaluate = evaluate
td.main(args)
"""


def test_resume_under_torchrun_restores_each_ranks_rng(dfew_root, tmp_path):
    # last.pt held rank 0's RNG state only, and every rank resumed from it: rank 1's dropout
    # then drew other masks than in the uninterrupted run (on GPUs each rank's CUDA generator
    # advances on its own device; here the driver makes the CPU generators differ).
    driver = tmp_path / "driver.py"
    driver.write_text(DESYNC_DRIVER)
    common = [
        "--dataset",
        "dfew",
        "--root",
        str(dfew_root),
        "--epochs",
        "2",
        "--no-plots",
        "--limit-train-batches",
        "2",
        "--limit-eval-batches",
        "1",
        "--dropout",
        "0.5",
        *TINY,
    ]

    def torchrun(out, *extra):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--standalone",
            str(driver),
            str(SCRIPT),
            *common,
            "--output",
            str(out),
            *extra,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        done = (out / "last.pt").exists()
        assert torchrun_succeeded(proc.returncode, proc.stderr, work_finished=done), (
            proc.stdout[-3000:] + proc.stderr[-3000:]
        )

    torchrun(tmp_path / "straight")
    torchrun(tmp_path / "split", "--stop-after", "1")
    torchrun(tmp_path / "split", "--resume")
    a, b = _state(tmp_path / "straight" / "last.pt"), _state(tmp_path / "split" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def test_stop_after_counts_the_epochs_of_every_fold(dfew5_root, tmp_path):
    # --stop-after N "in this invocation" trained N epochs in *each* fold under --fold all:
    # five times the job's time limit it was set for.
    argv = _argv(dfew5_root, tmp_path / "all", epochs=2, fold="all")
    results = train_dfew.main([*argv, "--stop-after", "3"])
    assert results[0]["final_epoch"] == 2  # fold 1: both epochs
    assert results[1:] == [{"fold": 2, "stopped_after_epoch": 1}]  # fold 2: the third epoch
    assert not (tmp_path / "all" / "fold3").exists()
    results = train_dfew.main([*argv, "--resume"])
    assert [r["final_epoch"] for r in results] == [2, 2, 2, 2, 2]


def test_results_are_written_atomically(tmp_path, monkeypatch):
    # results.json, log.csv and ablation_run.json: a run killed mid-write used to leave a
    # truncated file, which `ablation.py --reuse` then failed to parse.
    path = tmp_path / "results.json"
    train_dfew.write_text_atomic(path, '{"old": 1}')
    assert path.read_text() == '{"old": 1}'

    def killed(*_):
        raise KeyboardInterrupt  # the rename never happens

    monkeypatch.setattr(train_dfew.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        train_dfew.write_text_atomic(path, '{"new": 2}')
    assert path.read_text() == '{"old": 1}'  # the previous file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no temporary left


def test_plots_are_written_atomically(tmp_path, monkeypatch):
    # fig.savefig wrote confusion_matrix.png and tsne.png in place: a run killed (or a disk
    # filling up) mid-write left a truncated PNG where the previous run's plot had been.
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")
    import matplotlib.figure
    import numpy as np

    class Rt:
        def log(self, _msg):
            pass

    classes = ["a", "b", "c"]
    cm = torch.tensor([[3, 1, 0], [0, 2, 1], [1, 0, 4]])
    features = np.random.default_rng(0).standard_normal((12, 4)).astype(np.float32)
    labels = np.arange(12) % 3
    old = b"the previous run's plot"
    for name in ("confusion_matrix.png", "tsne.png"):
        (tmp_path / name).write_bytes(old)
    real_savefig = matplotlib.figure.Figure.savefig

    def fails_halfway(fig, fname, *args, **kwargs):
        data = b"\x89PNG\r\n\x1a\n half a plot"
        if isinstance(fname, (str, os.PathLike)):
            Path(fname).write_bytes(data)
        else:
            fname.write(data)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", fails_halfway)
    with pytest.raises(OSError, match="No space left"):
        train_dfew.save_plots(tmp_path, cm, classes, features, labels, 0, Rt())
    assert (tmp_path / "confusion_matrix.png").read_bytes() == old  # whole, not half a plot
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion_matrix.png", "tsne.png"]

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", real_savefig)
    train_dfew.save_plots(tmp_path, cm, classes, features, labels, 0, Rt())
    for name in ("confusion_matrix.png", "tsne.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion_matrix.png", "tsne.png"]


@pytest.mark.skipif(os.name != "posix", reason="only POSIX can open and sync a folder")
def test_atomic_text_write_syncs_the_folder(tmp_path, monkeypatch):
    # Without the folder's fsync the rename itself can be lost on a power cut.
    synced = []
    real_fsync = os.fsync

    def record(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(train_dfew.os, "fsync", record)
    train_dfew.write_text_atomic(tmp_path / "results.json", "{}")
    assert synced == [False, True]  # the temporary's contents, then the folder after the rename


def test_rng_state_round_trips_through_a_checkpoint(tmp_path):
    # The numpy stream's state (a uint32 array and numpy ints) is stored as tensors and Python
    # numbers: save_checkpoint refuses numpy objects, as load_checkpoint would.
    import random

    import numpy as np

    np.random.seed(7)  # noqa: NPY002
    np.random.standard_normal()  # noqa: NPY002 - a cached Gaussian is part of the state
    path = train_dfew.save_checkpoint({"rng": train_dfew.rng_state()}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.standard_normal(), torch.rand(1))  # noqa: NPY002
    train_dfew.set_rng_state(load_checkpoint(path)["rng"])
    got = (random.random(), np.random.standard_normal(), torch.rand(1))  # noqa: NPY002
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])
