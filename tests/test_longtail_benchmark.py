"""benchmarks/longtail.py: the split protocol, and its --quick form end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import load_script

# scikit-learn and aeon come with the `bench` extra, which `dev` installs; the oldest-torch run
# of CI has scikit-learn only, so the tests that read aeon's sets skip there.
pytest.importorskip("sklearn", reason="the long-tail benchmark needs the `bench` extra")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "longtail.py"
longtail = load_script(SCRIPT, "longtail")


@pytest.fixture(scope="module")
def digits():
    return longtail.load_sets(["digits"])[0]


def test_digits_are_row_sequences(digits):
    assert digits.x.shape == (1797, 8, 8)
    assert digits.x.min() >= 0 and digits.x.max() <= 1


@pytest.mark.parametrize("ratio", [10.0, 100.0])
def test_split_is_exponential_long_tail_and_disjoint(digits, ratio):
    split = longtail.make_split(digits, ratio, seed=3, select=False)
    counts = np.sort(split.counts)[::-1]
    n_max = np.bincount(digits.y).min() - 50  # the smallest class once the test split is out
    assert counts[0] == n_max
    assert split.ratio == pytest.approx(ratio, rel=0.25)
    assert (np.diff(counts) <= 0).all()
    # Exponential profile: log counts fall on a line within rounding (floor to an integer).
    expected = n_max * ratio ** (-np.arange(10) / 9)
    assert (np.abs(counts - np.maximum(1, np.floor(expected))) <= 1).all()
    assert np.bincount(digits.y[split.test], minlength=10).tolist() == [50] * 10
    assert not set(split.train) & set(split.test)
    assert np.bincount(digits.y[split.train], minlength=10).tolist() == split.counts.tolist()


def test_select_mode_never_touches_the_test_split(digits):
    for seed in range(3):
        test = set(longtail.make_split(digits, 100.0, seed, select=False).test)
        sel = longtail.make_split(digits, 100.0, seed, select=True)
        assert not (set(sel.train) | set(sel.test)) & test
        assert np.bincount(digits.y[sel.test], minlength=10).tolist() == [20] * 10


def test_too_small_a_set_reports_its_largest_feasible_ratio():
    pytest.importorskip("aeon", reason="ArrowHead is one of aeon's bundled sets (`bench` extra)")
    arrow = longtail.load_sets(["arrowhead"])[0]
    split = longtail.make_split(arrow, 100.0, seed=0, select=False)
    assert split.counts.min() == 1
    assert split.ratio == split.counts.max() < 100


def test_paired_interval_brackets_the_mean():
    m, lo, hi = longtail.t_interval(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    # t(0.975, 4) = 2.776, sd = 1.581: half-width 1.963.
    assert m == 3.0 and lo == pytest.approx(3 - 1.963, abs=1e-3)
    assert hi == pytest.approx(3 + 1.963, abs=1e-3)


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path):
    out = tmp_path / "table.md"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--output", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "### digits, ratio 10" in text
    assert "Mean over all settings" in text
    for row in ("| CE |", "| logit-adjusted CE (tau 1) |"):
        assert row in text
    # Every metric cell is a number in [0, 100].
    rows = [r for r in text.splitlines() if r.startswith("| CE |")]
    uar = float(rows[0].split("|")[2].split("±")[0])
    assert 0.0 <= uar <= 100.0


def test_ramped_contrastive_weight_starts_at_zero(digits):
    # One step of a ramped method is a step of LA-CE alone: the contrastive weight is 0 at step 0.
    split = longtail.make_split(digits, 10.0, seed=0, select=True)
    cfg = longtail.RunConfig(steps=1)
    ramp = longtail.METHODS["la_bal_l0.3_ramp"]
    assert ramp.ramp > 0
    got = longtail.train_eval(digits, split, ramp, 0, cfg)
    assert got == longtail.train_eval(digits, split, longtail.METHODS["la"], 0, cfg)


@pytest.mark.parametrize("key", ["la_micacl", "la_bal_l0.3_crt"])
def test_multi_tensor_adamw_gives_bitwise_the_same_model(digits, monkeypatch, key):
    # The speed switch (RunConfig.foreach) must not move a single parameter: the tables stay
    # reproducible with either setting. la_bal_l0.3_crt covers the cRT stage's optimiser too.
    models = []

    class Recorded(longtail.TemporalCNN):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            models.append(self)

    monkeypatch.setattr(longtail, "TemporalCNN", Recorded)
    split = longtail.make_split(digits, 100.0, seed=1, select=True)
    flat = []
    for foreach in (False, True):
        cfg = longtail.RunConfig(steps=20, foreach=foreach)
        longtail.train_eval(digits, split, longtail.METHODS[key], 1, cfg)
        flat.append(torch.cat([p.detach().flatten() for p in models[-1].parameters()]))
    assert torch.equal(flat[0], flat[1])


# The candidates of the third, fourth and fifth validation rounds.
@pytest.mark.parametrize(
    "key",
    [
        "la_bal_l0.3_centres",
        "la_bal_l0.3_ladiff",
        "la_mccl_aug",
        "la_bal_l0.3_etf",
        "la_bal_l1_ramp",
        "la_bal_l0.3_mem",
        "la_crt",
        "la_bal_l0.3_crt",
        "la_bal_crt",
    ],
)
def test_validation_round_candidates_train(digits, key):
    split = longtail.make_split(digits, 100.0, seed=0, select=True)
    out = longtail.train_eval(digits, split, longtail.METHODS[key], 0, longtail.RunConfig(steps=3))
    assert set(out) == {"uar", "war", "tail"}
    assert all(0.0 <= v <= 100.0 for v in out.values())


@pytest.mark.parametrize("num_classes", [2, 3, 6, 10])
def test_simplex_etf_rows_are_unit_and_equiangular(num_classes):
    etf = longtail.simplex_etf(num_classes, 64).double()
    assert etf.shape == (num_classes, 64)
    assert torch.allclose(etf.norm(dim=1), torch.ones(num_classes, dtype=etf.dtype), atol=1e-6)
    cos = etf @ etf.T
    off = cos[~torch.eye(num_classes, dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, -1 / (num_classes - 1)), atol=1e-6)
    # Fixed: the same seed gives the same frame, another seed another one.
    assert torch.equal(longtail.simplex_etf(num_classes, 64), longtail.simplex_etf(num_classes, 64))
    assert not torch.allclose(etf.float(), longtail.simplex_etf(num_classes, 64, seed=1))


def test_simplex_etf_rejects_more_classes_than_dimensions():
    with pytest.raises(ValueError, match="num_classes <= dim"):
        longtail.simplex_etf(65, 64)


def test_round_four_candidates_change_one_knob_each():
    base, etf = longtail.METHODS["la_bal_l0.3"], longtail.METHODS["la_bal_l0.3_etf"]
    assert etf.etf and not base.etf
    assert (etf.lam, etf.bal, etf.ramp, etf.centres) == (base.lam, base.bal, 0.0, False)
    ramp = longtail.METHODS["la_bal_l1_ramp"]
    assert (ramp.lam, ramp.ramp, ramp.bal, ramp.etf) == (1.0, 0.5, base.bal, False)


def test_round_five_candidates_change_one_knob_each():
    base = longtail.METHODS["la_bal_l0.3"]
    mem = longtail.METHODS["la_bal_l0.3_mem"]
    assert (mem.lam, mem.bal, mem.memory, mem.crt_steps) == (base.lam, base.bal, 128, 0)
    for key, ref in (
        ("la_crt", "la"),
        ("la_bal_l0.3_crt", "la_bal_l0.3"),
        ("la_bal_crt", "la_bal"),
    ):
        m, r = longtail.METHODS[key], longtail.METHODS[ref]
        assert (m.ce, m.aux, m.lam, m.bal, m.memory) == (r.ce, r.aux, r.lam, r.bal, r.memory)
        assert m.crt_steps == longtail.CRT_STEPS > 0 == r.crt_steps


def test_classifier_retraining_freezes_the_backbone_and_learns_the_rare_class():
    # Two separated clusters, 40 samples against 2: the new classifier must get both.
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    y = torch.tensor([0] * 40 + [1] * 2)
    x = torch.randn(42, 8, 1, generator=gen) * 0.1 + (y.float() * 2 - 1).view(-1, 1, 1)
    model = longtail.TemporalCNN(1, 2, width=16).eval()
    body = {k: v.clone() for k, v in model.body.state_dict().items()}
    counts = torch.bincount(y).float()
    longtail.retrain_classifier(model, x, y, counts, 200, 0, longtail.RunConfig())
    assert all(torch.equal(v, model.body.state_dict()[k]) for k, v in body.items())
    with torch.no_grad():
        pred = model(x)[1].argmax(1)
    assert (pred[y == 1] == 1).all() and (pred[y == 0] == 0).float().mean() > 0.9
