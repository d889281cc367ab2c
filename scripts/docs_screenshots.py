#!/usr/bin/env python
"""Build the docs, load pages in headless Chromium from a local server, check, screenshot.

What it checks, on the DOM that Chromium produces after running the pages' JavaScript:

* ``paper-to-code/``: KaTeX typeset the math: every ``.arithmatex`` element holds a ``.katex``
  rendering, no ``.katex-error``, and the display equations carry the tags (1) to (13);
* the API pages: the class and function names of the module are there, and the docstring math
  is typeset too;
* the home page: the pipeline figure and the navigation are there.

Every host but 127.0.0.1 is made unresolvable for Chromium, so a page that needed a CDN would
fail here. Screenshots (1280x2000) go to ``screenshots/`` (git-ignored). Exit status: 0 when
every check passes, 1 when one fails, 2 when Chromium or the site cannot be run.

Usage::

    python scripts/docs_screenshots.py                 # build, serve, check, screenshot
    python scripts/docs_screenshots.py --site site     # use an existing build
    make docs-check                                    # the same as the first line

Chromium: on Debian/Ubuntu ``apt-get install -y chromium`` (or set ``CHROMIUM=/path/to/it``).
"""

# ruff: noqa: D102, D103
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VOID = {
    "area",
    "base",
    "br",
    "col",
    "embed",
    "hr",
    "img",
    "input",
    "link",
    "meta",
    "param",
    "source",
    "track",
    "wbr",
}
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
    "--disable-features=Translate,MediaRouter,OptimizationHints",
    # Nothing but the local server resolves: a page that needs the internet fails the checks.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]


# ----------------------------------------------------------------------------- DOM summary
@dataclass
class _Node:
    tag: str
    classes: set[str]
    text: list[str] = field(default_factory=list)
    has_katex: bool = False


class DomSummary(HTMLParser):
    """What the checks need from a DOM dump, gathered in one pass."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[_Node] = []
        self.arithmatex_total = 0
        self.arithmatex_typeset = 0
        self.katex = 0
        self.katex_display = 0
        self.katex_errors = 0
        self.tags: list[str] = []  # text of KaTeX equation tags, e.g. "(7)"
        self.ids: set[str] = set()
        self.texts: list[str] = []
        self.imgs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        classes = set((a.get("class") or "").split())
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "img" and a.get("src"):
            self.imgs.append(a["src"])
        if "katex" in classes:
            self.katex += 1
            for node in self.stack:
                node.has_katex = True
        self.katex_display += "katex-display" in classes
        self.katex_errors += "katex-error" in classes
        if tag in VOID:
            return
        self.stack.append(_Node(tag, classes))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        while self.stack:
            node = self.stack.pop()
            if "arithmatex" in node.classes:
                self.arithmatex_total += 1
                self.arithmatex_typeset += node.has_katex
            if "tag" in node.classes and any("katex-html" in n.classes for n in self.stack):
                self.tags.append("".join(node.text).strip())
            if node.tag == tag:
                break

    def handle_data(self, data: str) -> None:
        self.texts.append(data)
        for node in self.stack:
            if "tag" in node.classes:
                node.text.append(data)

    @property
    def text(self) -> str:
        return " ".join(self.texts)


def summarise(dom: str) -> DomSummary:
    parser = DomSummary()
    parser.feed(dom)
    parser.close()
    return parser


# ----------------------------------------------------------------------------- checks
def check_math_page(s: DomSummary, *, equations: int) -> list[str]:
    problems = []
    if s.arithmatex_total == 0:
        problems.append("no .arithmatex element: the page has no math at all")
    elif s.arithmatex_typeset != s.arithmatex_total:
        problems.append(
            f"{s.arithmatex_total - s.arithmatex_typeset} of {s.arithmatex_total} "
            f"math elements were not typeset by KaTeX (raw TeX left)"
        )
    if s.katex_errors:
        problems.append(f"{s.katex_errors} KaTeX error(s) (.katex-error)")
    wanted = [f"({n})" for n in range(1, equations + 1)]
    missing = [t for t in wanted if t not in s.tags]
    if missing:
        problems.append(f"equation tags missing from the typeset display math: {missing}")
    return problems


def check_api_page(s: DomSummary, names: list[str]) -> list[str]:
    problems = [
        f"API entry for {n!r} missing (no element with id {n!r})" for n in names if n not in s.ids
    ]
    if s.arithmatex_total and s.arithmatex_typeset != s.arithmatex_total:
        problems.append(
            f"{s.arithmatex_total - s.arithmatex_typeset} of "
            f"{s.arithmatex_total} docstring math elements not typeset"
        )
    if s.katex_errors:
        problems.append(f"{s.katex_errors} KaTeX error(s) in docstrings")
    return problems


def check_home_page(s: DomSummary) -> list[str]:
    problems = []
    if not any(src.endswith(".svg") for src in s.imgs):
        problems.append("the pipeline figure (an .svg image) is missing")
    for word in ("GEIIM", "WIAN", "MCCL"):
        if word not in s.text:
            problems.append(f"{word!r} not mentioned on the home page")
    return problems


PAGES = [
    # (path, screenshot name, check)
    ("", "home.png", lambda s: check_home_page(s)),
    ("paper-to-code/", "paper-to-code.png", lambda s: check_math_page(s, equations=13)),
    (
        "api/mccl/",
        "api-mccl.png",
        lambda s: check_api_page(
            s,
            [
                "micacl_layers.mccl.MultiscaleCategoryAwareContrastiveLoss",
                "micacl_layers.mccl.MCCLoss",
                "micacl_layers.mccl.MCCLOutput",
                "micacl_layers.mccl.multiscale_category_aware_contrastive_loss",
            ],
        ),
    ),
    (
        "api/geiim/",
        "api-geiim.png",
        lambda s: check_api_page(
            s,
            [
                "micacl_layers.geiim.GEIIM",
                "micacl_layers.geiim.instance_adjacency",
                "micacl_layers.geiim.graph_propagate",
            ],
        ),
    ),
    (
        "api/wian/",
        "api-wian.png",
        lambda s: check_api_page(
            s,
            [
                "micacl_layers.wian.WIAN",
                "micacl_layers.wian.WIANCell",
                "micacl_layers.wian.wian_cell",
            ],
        ),
    ),
    (
        "quickstart/",
        "quickstart.png",
        lambda s: [] if "MCCLoss" in s.text else ["'MCCLoss' not on the quickstart page"],
    ),
]


# ----------------------------------------------------------------------------- plumbing
def find_chromium() -> str | None:
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() or shutil.which(explicit) else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve(site: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(site),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(base, timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the local server on {base} did not start") from None
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def chromium(binary: str, args: list[str], *, timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="docs-chromium-") as profile:
        cmd = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def build_site(dest: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(dest)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise RuntimeError("mkdocs build --strict failed")


def run(site: Path, out: Path, binary: str, budget_ms: int) -> int:
    out.mkdir(parents=True, exist_ok=True)
    failures = 0
    with serve(site) as base:
        for path, shot, check in PAGES:
            url = base + path
            dump = chromium(
                binary, [f"--virtual-time-budget={budget_ms}", "--dump-dom", url], timeout=120
            )
            if dump.returncode != 0 or "<html" not in dump.stdout:
                print(f"FAIL {url}: Chromium exited {dump.returncode}\n{dump.stderr[-2000:]}")
                failures += 1
                continue
            summary = summarise(dump.stdout)
            problems = check(summary)
            target = out / shot
            shot_proc = chromium(
                binary,
                [
                    f"--virtual-time-budget={budget_ms}",
                    f"--screenshot={target}",
                    "--window-size=1280,2000",
                    url,
                ],
                timeout=120,
            )
            if shot_proc.returncode != 0 or not target.is_file():
                problems.append(f"no screenshot written ({shot_proc.stderr[-500:]})")
            status = "ok  " if not problems else "FAIL"
            print(
                f"{status} {url}  math typeset {summary.arithmatex_typeset}/"
                f"{summary.arithmatex_total}, equation tags {len(summary.tags)}, "
                f"screenshot {target}"
            )
            for problem in problems:
                print(f"     - {problem}")
            failures += bool(problems)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--site",
        type=Path,
        default=None,
        help="an already built site directory (default: build one into a temp dir)",
    )
    p.add_argument(
        "--out", type=Path, default=ROOT / "screenshots", help="where the screenshots go"
    )
    p.add_argument(
        "--budget-ms",
        type=int,
        default=10000,
        help="Chromium's --virtual-time-budget (time for the pages' scripts)",
    )
    args = p.parse_args(argv)

    binary = find_chromium()
    if binary is None:
        print(
            "docs_screenshots: Chromium not found. Install it with "
            "`apt-get install -y chromium` (Debian/Ubuntu) or set CHROMIUM=/path/to/chromium.",
            file=sys.stderr,
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="docs-site-") as tmp:
        site = args.site
        if site is None:
            site = Path(tmp) / "site"
            try:
                build_site(site)
            except RuntimeError as err:
                print(f"docs_screenshots: {err}", file=sys.stderr)
                return 2
        if not (site / "index.html").is_file():
            print(f"docs_screenshots: {site} holds no built site (index.html)", file=sys.stderr)
            return 2
        return run(site.resolve(), args.out.resolve(), binary, args.budget_ms)


if __name__ == "__main__":
    sys.exit(main())
