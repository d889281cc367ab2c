"""Headless Chromium loads the built site from a local server: math typeset, API entries there.

Runs ``scripts/docs_screenshots.py`` (screenshots into a temporary folder). Skipped where no
Chromium is installed (``apt-get install -y chromium``), as on CI.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "docs_screenshots.py"


def _find_chromium() -> str | None:
    return load_script(SCRIPT, "docs_screenshots").find_chromium()


@pytest.mark.slow
def test_headless_chromium_sees_typeset_math(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="the docs tools are in the `docs` extra")
    if _find_chromium() is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shots = sorted(p.name for p in tmp_path.glob("*.png"))
    assert "paper-to-code.png" in shots and "api-mccl.png" in shots, shots
