"""Every row of docs/bad-inputs.md raises the documented error (the page is the catalogue)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "bad-inputs.md"


def _setup_code() -> str:
    text = PAGE.read_text()
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def _rows() -> list[tuple[str, str, str]]:
    rows = []
    for line in PAGE.read_text().splitlines():
        m = re.match(r"^\| `(.+)` \| `(\w+)` \| (.+?) \|$", line)
        if m:
            rows.append((m.group(1), m.group(2), m.group(3).strip()))
    return rows


ROWS = _rows()


def test_catalogue_is_not_empty():
    assert len(ROWS) >= 60


@pytest.mark.parametrize(("call", "error", "message"), ROWS, ids=[r[0][:60] for r in ROWS])
def test_documented_error(call, error, message):
    namespace: dict = {}
    exec(_setup_code(), namespace)
    expected = (
        getattr(__builtins__, error, None)
        if not isinstance(__builtins__, dict)
        else (__builtins__.get(error))
    )
    expected = expected or namespace.get(error)
    assert expected is not None, f"unknown exception type {error}"
    with pytest.raises(expected) as info:
        eval(call, namespace)
    assert type(info.value) is expected, f"{call} raised {type(info.value).__name__}"
    assert message in str(info.value), f"{call}: {info.value}"
