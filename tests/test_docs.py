"""The documentation site: strict build, API coverage, paper-to-code equations, docstrings.

The site is built once per session with ``mkdocs build --strict`` into a temporary folder; every
check below reads the built HTML (or the Markdown sources and the live docstrings).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import micacl_layers

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# The modules whose ``__all__`` must each have an API entry (all public modules are checked
# for a page of their own in ``test_every_public_module_has_an_api_page``).
EXPORTING_MODULES = (
    "micacl_layers",
    "micacl_layers.models",
    "micacl_layers.data",
    "micacl_layers.metrics",
    "micacl_layers.functional",
    "micacl_layers.checkpoint",
    "micacl_layers.config",
)
HEADING_ID = re.compile(r'<h[1-6] id="(micacl_layers[^"]*)" class="doc doc-heading"')


def public_modules() -> list[str]:
    names = ["micacl_layers"]
    for info in pkgutil.walk_packages(micacl_layers.__path__, "micacl_layers."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


# ----------------------------------------------------------------------------- the build
@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason="the docs tools are in the `docs` extra")
    dest = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(dest)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{output}"
    assert "WARNING" not in output, output
    return dest


@pytest.fixture(scope="module")
def api_headings(site: Path) -> set[str]:
    ids: set[str] = set()
    for page in (site / "api").rglob("*.html"):
        ids.update(HEADING_ID.findall(page.read_text(encoding="utf-8")))
    return ids


def test_mkdocs_build_strict(site: Path) -> None:
    for page in (
        "index.html",
        "quickstart/index.html",
        "paper-to-code/index.html",
        "reproduce/index.html",
        "faq/index.html",
        "changelog/index.html",
        "api/index.html",
    ):
        assert (site / page).is_file(), page


@pytest.mark.parametrize("module_name", EXPORTING_MODULES)
def test_every_exported_name_has_an_api_entry(module_name: str, api_headings: set[str]) -> None:
    module = importlib.import_module(module_name)
    modules = set(public_modules()) | set(sys.modules)
    missing = []
    for name in module.__all__:
        exact = {f"{module_name}.{name}"}
        obj = getattr(module, name)
        if hasattr(obj, "__module__") and hasattr(obj, "__qualname__"):
            exact.add(f"{obj.__module__}.{obj.__qualname__}")
        if inspect.ismodule(obj):
            exact.add(obj.__name__)
        if exact & api_headings:
            continue
        # A constant or alias documented in the module that defines it.
        if any(h.endswith(f".{name}") and h.rsplit(".", 1)[0] in modules for h in api_headings):
            continue
        missing.append(name)
    assert not missing, (
        f"no API entry in the built site for {module_name}.{missing}: add it to the "
        f"module's page under docs/api/ (constants without a docstring need an explicit "
        f"`::: path` block with show_if_no_docstring)"
    )


def test_every_public_module_has_an_api_page(api_headings: set[str]) -> None:
    missing = [m for m in public_modules() if m != "micacl_layers" and m not in api_headings]
    assert not missing, f"public modules without an API page under docs/api/: {missing}"


def test_api_pages_are_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in sorted((DOCS / "api").glob("*.md")):
        assert f"api/{page.name}" in nav, f"docs/api/{page.name} is not in the nav of mkdocs.yml"


# ----------------------------------------------------------------------------- paper to code
def _equation_sections(markdown: str) -> dict[str, str]:
    parts = re.split(r"^### (Eq\. .*)$", markdown, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def test_paper_to_code_has_all_13_equations_next_to_code() -> None:
    markdown = (DOCS / "paper-to-code.md").read_text(encoding="utf-8")
    tags = [int(t) for t in re.findall(r"\\tag\{(\d+)\}", markdown)]
    assert sorted(tags) == list(range(1, 14)), f"equation tags found: {sorted(tags)}"
    sections = _equation_sections(markdown)
    covered = set()
    for title, body in sections.items():
        numbers = {int(t) for t in re.findall(r"\\tag\{(\d+)\}", body)}
        assert numbers, f"section {title!r} has no tagged equation"
        assert "$$" in body, f"section {title!r} has no display math"
        assert re.search(r"\]\(api/[a-z_]+\.md#micacl_layers\.", body), (
            f"section {title!r} links to no API entry (the code implementing the equation)"
        )
        covered |= numbers
    assert covered == set(range(1, 14))


def test_paper_to_code_renders_the_equations(site: Path) -> None:
    html = (site / "paper-to-code" / "index.html").read_text(encoding="utf-8")
    blocks = re.findall(r'<div class="arithmatex">(.*?)</div>', html, flags=re.DOTALL)
    tags = sorted(int(t) for b in blocks for t in re.findall(r"\\tag\{(\d+)\}", b))
    assert tags == list(range(1, 14)), f"display-math tags in the built page: {tags}"
    assert all(b.strip().startswith("\\[") for b in blocks), "display math not in \\[...\\]"


def test_site_has_no_external_assets(site: Path) -> None:
    """Everything a page loads comes from the site itself, so math renders offline."""
    for page in site.rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        for url in re.findall(r'<script[^>]+src="([^"]+)"', html):
            assert not re.match(r"(https?:)?//", url), f"{page}: external script {url}"
        for tag in re.findall(r"<link[^>]*>", html):
            if 'rel="stylesheet"' in tag:
                url = re.search(r'href="([^"]+)"', tag)
                assert url and not re.match(r"(https?:)?//", url[1]), f"{page}: {tag}"
    for asset in ("katex.min.js", "katex.min.css", "contrib/auto-render.min.js"):
        assert (site / "vendor" / "katex" / asset).is_file(), asset
    assert list((site / "vendor" / "katex" / "fonts").glob("KaTeX_Main-Regular.woff2"))


def test_changelog_page_includes_the_changelog(site: Path) -> None:
    html = (site / "changelog" / "index.html").read_text(encoding="utf-8")
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    headings = re.findall(r"^#{2,3} (.+)$", changelog, flags=re.MULTILINE)
    assert headings
    for heading in headings:
        assert heading.strip("[]").split("]")[0] in html, heading


# ----------------------------------------------------------------------------- docstrings
SECTION = re.compile(r"^([A-Z][A-Za-z ]*):\s*$")

# Gaps in library docstrings found by the audit below, to be fixed in the library; remove an
# entry when its docstring is completed (the test fails on a stale entry, and on any new gap).
KNOWN_GAPS: dict[str, set[str]] = {}


def _sections(doc: str) -> dict[str, str]:
    found: dict[str, list[str]] = {}
    current = None
    for line in doc.splitlines():
        if line and not line[0].isspace():
            match = SECTION.match(line)
            current = match[1] if match else None
            if current:
                found[current] = []
        elif current:
            found[current].append(line)
    return {k: "\n".join(v) for k, v in found.items()}


def _mentions_tensor(annotation: object) -> bool:
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return "Tensor" in text


def _listed(block: str, name: str) -> bool:
    return re.search(rf"^\s+\**{re.escape(name)}( \(.*\))?:", block, re.MULTILINE) is not None


def docstring_gaps(obj: object) -> set[str]:
    """What a public class or function's Google docstring lacks.

    Functions: ``Args`` naming every parameter, ``Returns`` unless annotated ``-> None``,
    ``Shape:`` if a parameter is a tensor, an ``Example:`` with ``>>>``. Classes: ``Args`` for
    every constructor parameter (``Attributes`` for every field of a NamedTuple or dataclass),
    ``Shape:`` if ``forward`` (modules) or ``__call__`` takes a tensor, an ``Example:``.
    Exceptions and warnings need only a docstring.
    """
    doc = inspect.getdoc(obj)
    if not doc:
        return {"docstring"}
    sections = _sections(doc)
    args = sections.get("Args", "") + sections.get("Arguments", "")
    gaps: set[str] = set()
    if inspect.isclass(obj):
        if issubclass(obj, (BaseException, Warning)):
            return set()
        fields = (
            getattr(obj, "_fields", None)
            if issubclass(obj, tuple)
            else [f.name for f in dataclasses.fields(obj)]
            if dataclasses.is_dataclass(obj)
            else None
        )
        if fields is not None:
            gaps |= {
                f"Attributes:{f}" for f in fields if not _listed(sections.get("Attributes", ""), f)
            }
        else:
            params = inspect.signature(obj).parameters
            gaps |= {f"Args:{p}" for p in params if not _listed(args, p)}
            call = (
                getattr(obj, "forward", None)
                if issubclass(obj, nn.Module)
                else obj.__dict__.get("__call__")
            )
            if (
                call is not None
                and "Shape" not in sections
                and any(
                    _mentions_tensor(p.annotation)
                    for p in inspect.signature(call).parameters.values()
                )
            ):
                gaps.add("Shape")
    else:
        signature = inspect.signature(obj)
        gaps |= {f"Args:{p}" for p in signature.parameters if not _listed(args, p)}
        if (
            signature.return_annotation not in (None, "None", type(None))
            and "Returns" not in sections
            and "Yields" not in sections
        ):
            gaps.add("Returns")
        if "Shape" not in sections and any(
            _mentions_tensor(p.annotation) for p in signature.parameters.values()
        ):
            gaps.add("Shape")
    examples = sections.get("Example", "") + sections.get("Examples", "")
    if ">>>" not in examples:
        gaps.add("Example")
    return gaps


def public_symbols() -> dict[str, object]:
    """Every class and function in the ``__all__`` of a public module, by defining path."""
    found: dict[str, object] = {}
    for name in public_modules():
        module = importlib.import_module(name)
        for attr in getattr(module, "__all__", ()):
            obj = getattr(module, attr)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                found.setdefault(f"{obj.__module__}.{obj.__qualname__}", obj)
    return found


def test_docstring_audit() -> None:
    symbols = public_symbols()
    assert len(symbols) > 40
    report = {path: gaps for path, obj in symbols.items() if (gaps := docstring_gaps(obj))}
    new = {
        p: sorted(g - KNOWN_GAPS.get(p, set()))
        for p, g in report.items()
        if g - KNOWN_GAPS.get(p, set())
    }
    fixed = {
        p: sorted(g - report.get(p, set()))
        for p, g in KNOWN_GAPS.items()
        if g - report.get(p, set())
    }
    assert not new, f"public docstrings missing sections: {new}"
    assert not fixed, f"fixed (or removed) since listed: drop from KNOWN_GAPS: {fixed}"


def test_docstring_audit_finds_gaps() -> None:
    """The audit itself: a bare function is reported, a complete one passes."""

    def bare(x: torch.Tensor, k: int) -> torch.Tensor:
        """Do something."""

    def complete(x: torch.Tensor, k: int) -> torch.Tensor:
        """Do something.

        Args:
            x: Input.
            k: Count.

        Returns:
            Output.

        Shape:
            - x: :math:`(N,)`

        Example:
            >>> 1
            1
        """

    assert docstring_gaps(bare) == {"Args:x", "Args:k", "Returns", "Shape", "Example"}
    assert docstring_gaps(complete) == set()
