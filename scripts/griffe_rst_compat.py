"""Griffe extension: render the reStructuredText bits of our docstrings in MkDocs.

The library's docstrings are Google style (Args/Returns/Shape/Example), but they use a few
Sphinx conventions that Python-Markdown does not understand:

* ``:math:`x```          -> ``$x$`` (typeset by pymdownx.arithmatex and KaTeX);
* ``.. math::`` blocks   -> ``$$ ... $$`` display math;
* ``:func:`name```, ``:class:`~pkg.Name``` and the other Python roles -> optional
  cross-references (a link when the target is rendered in the API reference, plain code
  otherwise, never a warning);
* a paragraph ending in ``::`` followed by an indented block -> a fenced ``text`` block;
* an ``Example:`` section -> ``Examples:``, the title griffe parses into code blocks (griffe
  reads the singular as a plain admonition and the ``>>>`` lines as block quotes).

Only the documentation build uses this file (``mkdocs.yml`` loads it through mkdocstrings'
``extensions`` option); the docstrings themselves are left as they are, so ``help()`` and
doctests see the original text.
"""

from __future__ import annotations

import html
import re
import textwrap
from typing import Any

import griffe

_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_PY_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|data|mod|attr|obj|exc|const):`([^`]+)`")
_MATH_DIRECTIVE = re.compile(r"^(?P<indent>\s*)\.\. math::\s*$")
_LITERAL_INTRO = re.compile(r"^(?P<indent>\s*)(?P<text>\S.*?)::\s*$")
_EXAMPLE_TITLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _take_block(lines: list[str], start: int, base: int) -> tuple[list[str], int]:
    """Lines after ``start`` indented deeper than ``base`` (blank lines included)."""
    block: list[str] = []
    i = start
    while i < len(lines) and (not lines[i].strip() or _indent_of(lines[i]) > base):
        block.append(lines[i])
        i += 1
    while block and not block[-1].strip():
        block.pop()
        i -= 1
    return block, i


def _convert_blocks(text: str) -> str:
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        math = _MATH_DIRECTIVE.match(line)
        literal = None if math else _LITERAL_INTRO.match(line)
        if math or literal:
            match = math or literal
            base = _indent_of(line)
            block, end = _take_block(lines, i + 1, base)
            if not any(b.strip() for b in block):
                out.append(line)
                i += 1
                continue
            pad = match["indent"]
            body = textwrap.dedent("\n".join(block)).strip("\n").splitlines()
            if out and out[-1].strip():
                out.append("")
            if math:
                out += [f"{pad}$$", *(f"{pad}{b}" if b else "" for b in body), f"{pad}$$"]
            else:
                out += [
                    f"{pad}{match['text']}:",
                    "",
                    f"{pad}```text",
                    *(f"{pad}{b}" if b else "" for b in body),
                    f"{pad}```",
                ]
            out.append("")
            i = end
            while i < len(lines) and not lines[i].strip():
                i += 1
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def _crossref(obj: griffe.Object) -> Any:
    module = obj.module.path if not obj.is_module else obj.path

    def repl(match: re.Match[str]) -> str:
        target = match[1].strip()
        short = target.startswith("~")
        target = target.lstrip("~").rstrip("()")
        title = target.rsplit(".", 1)[-1] if short else target
        identifier = target if target.startswith("micacl_layers") else f"{module}.{target}"
        return (
            f'<autoref identifier="{html.escape(identifier)}" optional>'
            f"<code>{html.escape(title)}</code></autoref>"
        )

    return repl


def convert(text: str, obj: griffe.Object) -> str:
    """Return ``text`` with the reStructuredText constructs above turned into Markdown."""
    text = _EXAMPLE_TITLE.sub(r"\1Examples:", text)
    text = _convert_blocks(text)
    text = _MATH_ROLE.sub(lambda m: f"${m[1].strip()}$", text)
    return _PY_ROLE.sub(_crossref(obj), text)


class RstCompat(griffe.Extension):
    """Rewrite each docstring as it is loaded (see the module docstring)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:  # noqa: D102
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value, obj)
