"""docs/integration.md runs, block after block in one namespace, as a reader pastes it."""

from __future__ import annotations

import contextlib
import io
import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "integration.md"
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```python[^\n]*\n(?P<body>.*?)^(?P=indent)```", re.DOTALL | re.MULTILINE
)


def _blocks() -> list[str]:
    return [textwrap.dedent(m["body"]) for m in FENCE.finditer(GUIDE.read_text("utf-8"))]


def test_guide_has_the_steps():
    text = GUIDE.read_text("utf-8")
    for needle in (
        "WIAN.from_lstm",
        "torch.amp.GradScaler",
        "DistributedDataParallel",
        "feature_dim",
        "class_counts",
        "mccl.parameters()",
        "flatten_parameters",
    ):
        assert needle in text, needle
    assert len(_blocks()) >= 6


def test_guide_blocks_run_in_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__main__"}
    out = io.StringIO()
    for i, code in enumerate(_blocks(), start=1):
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"<docs/integration.md block {i}>", "exec"), namespace)
    printed = out.getvalue()
    # The swap changed the outputs by float32 rounding only, and training ran to finite losses.
    change = float(re.search(r"largest change at the swap: (\S+)", printed)[1])
    assert change <= 1e-6
    for label in ("before:", "with MCCL + IAL:", "MICACL:"):
        value = float(re.search(re.escape(label) + r" (\S+)", printed)[1])
        assert value == value and abs(value) < 1e3, (label, value)
