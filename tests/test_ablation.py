"""End-to-end test of examples/ablation.py on a tiny generated DFEW-layout tree."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("PIL")

from micacl_layers.data import make_synthetic_dfew
from tests.conftest import load_script

pytestmark = pytest.mark.slow  # end-to-end runs and process groups: not in the fast tier

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "ablation.py"

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
    "--limit-train-batches",
    "2",
]


ablation = load_script(SCRIPT, "ablation")


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dfew")
    make_synthetic_dfew(
        root,
        total_clips=60,
        min_clips_per_class=5,
        frames=(6, 20),
        image_size=20,
        folds=(1,),
        seed=1,
    )
    return root


def _rows(markdown: str) -> dict[str, list[str]]:
    """Rows of the first (final-epoch) table, by setting name."""
    section = markdown.split("## Final epoch", 1)[1].split("## Best epoch", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] not in ("Setting", "") and set(cells[0]) != {"-"}:
            rows[cells[0]] = cells
    return rows


def _check_numbers(cells: list[str]) -> None:
    for cell in cells[2:]:
        for number in re.findall(r"-?\d+(?:\.\d+)?", cell):
            assert 0.0 <= float(number) <= 100.0, cells


def test_components_table_runs_every_setting_on_different_models(tiny_root, tmp_path):
    out = tmp_path / "abl"
    report = ablation.main(
        [
            "--table",
            "components",
            "--dataset",
            "dfew",
            "--root",
            str(tiny_root),
            "--epochs",
            "1",
            "--seeds",
            "0",
            "1",
            "--output",
            str(out),
            "--",
            *TINY,
        ]
    )
    text = (out / "components.md").read_text()
    rows = _rows(text)
    assert set(rows) == set(ablation.COMPONENTS)
    for cells in rows.values():
        assert len(cells) == 4 + 7
        _check_numbers(cells)
    assert "seeds: [0, 1]" in text and "torch" in text and "command:" in text
    saved = json.loads((out / "components.json").read_text())
    assert set(saved["runs"]) == set(ablation.COMPONENTS)
    for name in ablation.COMPONENTS:
        assert [r["seed"] for r in saved["runs"][name]] == [0, 1]
        for r in saved["runs"][name]:
            assert (Path(r["output"]) / "results.json").is_file()
            assert r["output"].endswith(f"components/{name}/seed{r['seed']}")
    first = {k: v[0] for k, v in report["runs"].items()}
    # a -> b adds GEIIM, b -> c swaps conv1d for WIAN: three different models.
    params = [first[k]["model_params"] for k in "abc"]
    assert len(set(params)) == 3, params
    assert first["a"]["model"] == {
        "aggregator": "conv1d",
        "geiim": False,
        "weight_mode": "instance_softmax",
    }
    assert first["b"]["model"]["geiim"] and first["c"]["model"]["aggregator"] == "wian"
    # d is c's model with the MICACL loss (which has its own MCCL projections).
    assert first["d"]["model_params"] == first["c"]["model_params"]
    assert first["c"]["criterion_params"] == 0 < first["d"]["criterion_params"]


def test_losses_table_builds_a_different_criterion_per_setting(tiny_root, tmp_path):
    out = tmp_path / "abl"
    report = ablation.main(
        [
            "--table",
            "losses",
            "--dataset",
            "dfew",
            "--root",
            str(tiny_root),
            "--epochs",
            "1",
            "--seeds",
            "0",
            "--output",
            str(out),
            *TINY,
        ]
    )  # parse_known_args pass-through
    rows = _rows((out / "losses.md").read_text())
    assert set(rows) == set(ablation.LOSSES)
    for cells in rows.values():
        _check_numbers(cells)
    runs = {k: v[0] for k, v in report["runs"].items()}
    # Each setting is a different (criterion, model options) pair; micacl and micacl_paper
    # may share the criterion (ratio form and weight 1 are our defaults too) but not the model.
    combos = {k: json.dumps([r["criterion"], r["model"]], sort_keys=True) for k, r in runs.items()}
    assert len(set(combos.values())) == len(combos), combos
    assert runs["supcon"]["criterion"]["mccl_form"] == "log"
    assert runs["supcon"]["criterion"]["mccl_scales"] == [1]
    assert runs["micacl_paper"]["criterion"]["mccl_form"] == "ratio"
    assert runs["micacl_paper"]["model"]["weight_mode"] == "channel_softmax"
    assert runs["public_code"]["criterion"]["mc_weight"] == 30.0
    assert runs["ce_ial"]["criterion"]["mc_weight"] == 0.0
    assert runs["logit_adj"]["criterion"]["type"] == "LogitAdjustedCE"
    assert runs["paper_la"]["criterion"]["logit_adjustment"] == 1.0
    assert runs["paper_la"]["criterion"]["balanced_smoothing"] is False
    assert runs["paper_la_cet"]["criterion"]["logit_adjustment"] == 1.0
    assert runs["paper_la_cet"]["criterion"]["mc_weight"] == 0.0
    assert runs["micacl"]["criterion"]["logit_adjustment"] == 0.0
    assert runs["balanced"]["criterion"]["mccl_class_complements"] is True
    # Same model everywhere except the paper-exact weight mode (same parameter count).
    assert len({r["model_params"] for r in runs.values()}) == 1


def test_reuse_resumes_an_interrupted_run_to_the_uninterrupted_result(
    tiny_root, tmp_path, monkeypatch
):
    def table(out, *extra):
        argv = ["--table", "losses", "--settings", "ce", "--dataset", "dfew"]
        argv += ["--root", str(tiny_root), "--epochs", "2", "--seeds", "0"]
        return ablation.main([*argv, "--output", str(out), *extra, "--", *TINY])

    straight = table(tmp_path / "straight")["runs"]["ce"][0]

    class Killed(Exception):
        pass

    real_loader = ablation.load_train_dfew

    def interrupted_loader():
        td = real_loader()
        real_main = td.main

        def main(argv):
            real_main([*argv, "--stop-after", "1"])  # epoch 1 in last.pt, then the kill
            raise Killed

        td.main = main
        return td

    out = tmp_path / "table"
    monkeypatch.setattr(ablation, "load_train_dfew", interrupted_loader)
    with pytest.raises(Killed):
        table(out)
    monkeypatch.setattr(ablation, "load_train_dfew", real_loader)
    run_dir = out / "losses" / "ce" / "seed0"
    assert (run_dir / "last.pt").is_file() and not (run_dir / "ablation_run.json").exists()
    # It used to start the setting again; now it continues from epoch 2.
    resumed = table(out, "--reuse")["runs"]["ce"][0]
    assert resumed["resumed"] and not straight["resumed"]
    assert resumed["final"] == straight["final"]
    log = (run_dir / "log.csv").read_text().splitlines()
    assert len(log) == 1 + 2  # the header and both epochs, the first from before the kill


def test_reuse_starts_again_a_run_begun_with_other_options(tiny_root, tmp_path):
    out = tmp_path / "table"
    argv = ["--table", "losses", "--settings", "ce", "--dataset", "dfew", "--root"]
    argv += [str(tiny_root), "--seeds", "0", "--output", str(out)]
    ablation.main([*argv, "--epochs", "1", "--", *TINY])
    run_dir = out / "losses" / "ce" / "seed0"
    (run_dir / "ablation_run.json").unlink()  # as if killed after last.pt, before the record
    rerun = ablation.main([*argv, "--epochs", "2", "--reuse", "--", *TINY])["runs"]["ce"][0]
    assert not rerun["resumed"] and rerun["final_epoch"] == 2


def _refused(capsys, monkeypatch, argv, message, tmp_path):
    """`argv` is refused at parse time, naming the flag, before any data or run is made."""

    def ran(*args, **kwargs):
        raise AssertionError(f"{argv} was not refused: it went on to make data or runs")

    monkeypatch.setattr("micacl_layers.data.make_synthetic_dfew", ran)
    monkeypatch.setattr(ablation, "load_train_dfew", ran)
    with pytest.raises(SystemExit) as exc:
        ablation.main([*argv, "--output", str(tmp_path / "out")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "data").exists()


def test_epochs_zero_is_refused_not_replaced_by_the_preset(capsys, monkeypatch, tmp_path):
    # `args.epochs or preset` turned --epochs 0 into the synthetic preset's 10 epochs.
    argv = ["--table", "losses", "--root", str(tmp_path / "data")]
    _refused(
        capsys, monkeypatch, [*argv, "--epochs", "0"], "--epochs must be >= 1, got 0", tmp_path
    )
    _refused(
        capsys, monkeypatch, [*argv, "--epochs", "-3"], "--epochs must be >= 1, got -3", tmp_path
    )


def test_fold_all_is_refused_by_name(capsys, monkeypatch, tmp_path):
    # train_dfew's --fold all trains five folds, after which the table crashed unpacking them.
    argv = ["--table", "components", "--root", str(tmp_path / "data"), "--fold", "all"]
    _refused(capsys, monkeypatch, argv, "argument --fold: invalid choice: 'all'", tmp_path)


def test_repeated_or_out_of_range_seeds_are_refused(capsys, monkeypatch, tmp_path):
    # A repeated seed ran again over its own folder and counted twice in the mean and std; a
    # seed torch cannot take was refused only when its turn came, after the others had run.
    argv = ["--table", "losses", "--root", str(tmp_path / "data"), "--seeds"]
    _refused(capsys, monkeypatch, [*argv, "0", "1", "0"], "--seeds repeats 0", tmp_path)
    _refused(capsys, monkeypatch, [*argv, "0", str(2**64)], "--seeds must be in", tmp_path)


def test_synthetic_data_of_other_options_is_not_reused_silently(capsys, monkeypatch, tmp_path):
    # The data under --root were generated once and then used whatever --synthetic-clips and
    # --data-seed said, while the report recorded the new values: a table of 600 clips labelled
    # as one of 300, and --reuse mixed into it runs of the other data.
    class Stop(Exception):
        pass

    made = []

    def fake_make(root, **kwargs):
        made.append(kwargs)
        (Path(root) / "EmoLabel_DataSplit").mkdir(parents=True)

    def stop():
        raise Stop

    monkeypatch.setattr("micacl_layers.data.make_synthetic_dfew", fake_make)
    monkeypatch.setattr(ablation, "load_train_dfew", stop)
    root = tmp_path / "data"
    argv = ["--table", "losses", "--root", str(root), "--output", str(tmp_path / "out")]
    with pytest.raises(Stop):
        ablation.main([*argv, "--synthetic-clips", "300", "--data-seed", "4"])
    assert made == [
        {"total_clips": 300, "min_clips_per_class": 25, "folds": (1, 2, 3, 4, 5)} | {"seed": 4}
    ]
    with pytest.raises(Stop):  # the same options: the data are used as they are
        ablation.main([*argv, "--synthetic-clips", "300", "--data-seed", "4"])
    for other, flag in (
        (["--synthetic-clips", "200", "--data-seed", "4"], "--synthetic-clips"),
        (["--synthetic-clips", "300"], "--data-seed"),
    ):
        with pytest.raises(SystemExit) as exc:
            ablation.main([*argv, *other])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert flag in err and str(root) in err and "synthetic_clips=300, data_seed=4" in err
    assert len(made) == 1


def test_synthetic_clips_below_one_are_refused_by_name(capsys, monkeypatch, tmp_path):
    # They reached make_synthetic_dfew, whose traceback named its `total_clips`, not the flag.
    argv = ["--table", "losses", "--root", str(tmp_path / "data"), "--synthetic-clips", "0"]
    _refused(capsys, monkeypatch, argv, "--synthetic-clips must be >= 1, got 0", tmp_path)


@pytest.mark.parametrize(
    "passed",
    [["--epochs", "3"], ["--fold=2"], ["--epo", "3"], ["--seed", "5"], ["--output", "x"]],
)
def test_train_dfew_options_the_table_sets_are_refused_after_the_separator(
    capsys, monkeypatch, tmp_path, passed
):
    # Passed through, --epochs, --fold, --dataset and --root overrode the table's own (which the
    # report still recorded), and --seed and --output were dropped for the table's.
    argv = ["--table", "losses", "--root", str(tmp_path / "data"), "--", *passed]
    flag = {"--epo": "--epochs", "--fold=2": "--fold"}.get(passed[0], passed[0])
    _refused(capsys, monkeypatch, argv, f"{flag} is set by ablation.py", tmp_path)
