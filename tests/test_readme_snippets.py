"""Every ```python block of the README and of the documentation pages runs as it is.

Each block runs in a fresh namespace, in a temporary working directory (with ``TMPDIR`` pointing
there too, so blocks that make temporary data sets clean up with the test). Blocks are complete
programs: a block that needs an import or a variable must define it itself.
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from tests.conftest import torchrun_succeeded

ROOT = Path(__file__).resolve().parents[1]
# README and quickstart must have snippets. The other pages listed here are run too; a page
# whose blocks are illustrations (paths to real data sets, fragments) stays off the list.
REQUIRED = ("README.md", "docs/quickstart.md")
PAGES = (
    "docs/index.md",
    "docs/installation.md",
    "docs/concepts.md",
    "docs/paper-to-code.md",
    "docs/reproduce.md",
    "docs/faq.md",
)
TORCHRUN = re.compile(r"run with: torchrun --nproc_per_node (?P<n>\d+) (?P<file>[\w.]+)")
DONE = "snippet finished on this rank"
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```python[^\n]*\n(?P<body>.*?)^(?P=indent)```", re.DOTALL | re.MULTILINE
)


def python_blocks(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return [textwrap.dedent(m["body"]) for m in FENCE.finditer(text)]


def snippet_cases() -> list[pytest.param]:
    files = [ROOT / f for f in (*REQUIRED, *PAGES)]
    cases = []
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        for i, code in enumerate(python_blocks(path)):
            # Blocks that start processes take seconds each: not in the fast tier.
            slow = "mp.spawn" in code or "torchrun" in code or "init_process_group" in code
            marks = [pytest.mark.slow] if slow else []
            cases.append(pytest.param(rel, code, id=f"{rel}#{i + 1}", marks=marks))
    return cases


@pytest.mark.parametrize("required", REQUIRED)
def test_required_pages_have_snippets(required: str) -> None:
    assert python_blocks(ROOT / required), f"{required} has no ```python block"


@pytest.mark.parametrize(("source", "code"), snippet_cases())
def test_snippet_runs(
    source: str, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    launch = TORCHRUN.search(code.splitlines()[0]) if code.strip() else None
    if launch:
        # A multi-process snippet runs as its first line says, under torchrun on the CPU.
        script = tmp_path / launch["file"]
        # A line on every rank once the snippet's work is done, before its teardown.
        marker = f"print({DONE!r}, flush=True)\n"
        cut = code.rfind("dist.destroy_process_group()")
        cut = len(code) if cut < 0 else code.rfind("\n", 0, cut) + 1
        script.write_text(code[:cut] + marker + code[cut:])
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                launch["n"],
                str(script),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        finished = proc.stdout.count(DONE) == int(launch["n"])
        assert torchrun_succeeded(proc.returncode, proc.stderr, work_finished=finished), (
            proc.stdout[-2000:] + proc.stderr[-2000:]
        )
        return
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    namespace = {"__name__": "__main__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"<{source} snippet>", "exec"), namespace)
