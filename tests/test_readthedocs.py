"""The Read the Docs config builds the mkdocs site from the repository as it is."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_readthedocs_config_points_at_the_mkdocs_site():
    yaml = pytest.importorskip("yaml", reason="PyYAML comes with mkdocs (the `docs` extra)")
    config = yaml.safe_load((ROOT / ".readthedocs.yaml").read_text("utf-8"))
    assert config["version"] == 2
    assert (ROOT / config["mkdocs"]["configuration"]).is_file()
    assert config["mkdocs"]["fail_on_warning"] is True  # the strict build tests/test_docs runs
    assert "sphinx" not in config
    install = config["python"]["install"]
    extras = {
        e for item in install if item.get("path") == "." for e in item.get("extra_requirements", [])
    }
    assert "docs" in extras
    # (tomllib is Python 3.11+; the project supports 3.10.)
    pyproject = (ROOT / "pyproject.toml").read_text("utf-8")
    assert re.search(r"^docs = \[.*mkdocs", pyproject, re.MULTILINE)
    assert config["build"]["os"] and config["build"]["tools"]["python"]
