"""Facts the prose pages state about the package, checked against the package itself."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _pyproject() -> dict:
    # (tomllib is 3.11+, and the package supports 3.10: the two tables read by hand)
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    deps = ast.literal_eval(re.search(r"^dependencies = (\[.*?\])$", text, re.MULTILINE)[1])
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    extras = {
        m[1]: ast.literal_eval(m[2])
        for m in re.finditer(r"^([\w-]+) = (\[.*?\])$", section, re.MULTILINE)
    }
    return {"project": {"dependencies": deps, "optional-dependencies": extras}}


def test_installation_page_states_the_torch_floor_of_pyproject() -> None:
    deps = _pyproject()["project"]["dependencies"]
    floor = next(re.match(r"torch>=([\d.]+)", d)[1] for d in deps if d.startswith("torch"))
    page = (DOCS / "installation.md").read_text(encoding="utf-8")
    stated = re.search(r"PyTorch ([\d.]+) or newer", page)
    assert stated and stated[1] == floor, (stated and stated[1], floor)


def test_installation_page_lists_every_extra() -> None:
    extras = _pyproject()["project"]["optional-dependencies"]
    page = (DOCS / "installation.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+) \|", page, flags=re.MULTILINE))
    assert set(rows) == set(extras), sorted(set(rows) ^ set(extras))
    for name, requirements in extras.items():
        for req in requirements:
            package = re.match(r"[A-Za-z0-9_.-]+", req)[0]
            if package == "micacl-layers":  # (an extra made of other extras)
                for other in re.findall(r"\[(.*)\]", req)[0].split(","):
                    assert f"`{other}`" in rows[name], (name, other)
                continue
            short = {"pillow": "Pillow", "mkdocstrings-python": "mkdocstrings"}.get(
                package, package
            )
            assert short.split("[")[0].lower() in rows[name].lower(), (name, package)


def test_paper_to_code_counts_its_deviations() -> None:
    page = (DOCS / "paper-to-code.md").read_text(encoding="utf-8")
    numbers = [int(n) for n in re.findall(r"^\| D(\d+) \|", page, flags=re.MULTILINE)]
    assert numbers == list(range(1, len(numbers) + 1)), numbers
    stated = re.search(r"numbered D1–D(\d+)", page)
    assert stated and int(stated[1]) == len(numbers), (stated and stated[0], len(numbers))


def test_paper_to_code_eq12_names_the_function_whose_last_lines_average_the_scales() -> None:
    import inspect

    from micacl_layers import mccl

    page = (DOCS / "paper-to-code.md").read_text(encoding="utf-8")
    section = page.split("\\tag{12}", 1)[1].split("###", 1)[0]
    named = re.search(r"the last lines of[^`]*`(\w+)`", section)
    assert named, section[:300]
    source = inspect.getsource(getattr(mccl, named[1])).strip().splitlines()
    assert any("Eq. 12" in line for line in source[-6:]), (named[1], source[-6:])
    for name, path in re.findall(r"`(\w+)` in `(micacl_layers/[\w/]+\.py)`", page):
        assert f"def {name}(" in (ROOT / path).read_text(encoding="utf-8"), (name, path)


def test_api_index_has_a_row_for_every_api_page_and_its_names_exist() -> None:
    import importlib

    index = (DOCS / "api" / "index.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| \[`(micacl_layers[\w.]*)`\]\(([\w.]+\.md)\) \| (.*) \|$", index, re.M)
    linked = {page for _, page, _ in rows}
    pages = {p.name for p in (DOCS / "api").glob("*.md")} - {"index.md"}
    assert pages <= linked, sorted(pages - linked)
    for module_name, page, contents in rows:
        assert f"::: {module_name}\n" in (DOCS / "api" / page).read_text(encoding="utf-8")
        module = importlib.import_module(module_name)
        root = importlib.import_module("micacl_layers")
        words = {"models", "data", "uint8", "nn"}  # an extra's name, a dtype, torch.nn
        for name in set(re.findall(r"`([A-Za-z_]\w*)`", contents)) - words:
            assert hasattr(module, name) or hasattr(root, name), (module_name, name)


def test_ablation_page_states_the_size_of_the_synthetic_set_the_script_makes() -> None:
    import importlib.util

    from micacl_layers.data.synthetic import DFEW_TRAIN_FOLD1_COUNTS, _allocate

    spec = importlib.util.spec_from_file_location("ablation", ROOT / "examples" / "ablation.py")
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    preset = ablation.SYNTHETIC_PRESET
    counts = _allocate(preset["clips"], DFEW_TRAIN_FOLD1_COUNTS, preset["min_clips_per_class"])
    page = (DOCS / "ablation.md").read_text(encoding="utf-8")
    stated = re.search(r"set of\s+(\d+) clips once under .*?`--synthetic-clips (\d+)`", page, re.S)
    assert stated, "the ablation page no longer says how large the synthetic set is"
    assert (int(stated[1]), int(stated[2])) == (sum(counts), preset["clips"]), stated[0]
    split = re.search(r"\((\d+) training clips, .*?; (\d+) test clips\)", page, re.S)
    assert split and int(split[1]) + int(split[2]) == sum(counts), split and split[0]
    assert f"Synthetic data ({sum(counts)} clips" in page


def _our_callable(dotted: str) -> object | None:
    """What a page names as ``Name``, ``Name.method`` or ``module.Name``, if this package's."""
    import importlib

    parts = dotted.removeprefix("micacl_layers.").split(".")
    for prefix in ("models", "data", "metrics", "functional", "checkpoint", "memory", "config"):
        if parts[0] == prefix and len(parts) > 1:
            parts = parts[1:]
    for name in (
        "micacl_layers",
        "micacl_layers.functional",
        "micacl_layers.models",
        "micacl_layers.data",
        "micacl_layers.data.transforms",
        "micacl_layers.data.synthetic",
        "micacl_layers.metrics",
        "micacl_layers.checkpoint",
        "micacl_layers.memory",
        "micacl_layers.config",
    ):
        obj: object = importlib.import_module(name)
        try:
            for part in parts:
                obj = getattr(obj, part)
        except AttributeError:
            continue
        ours = getattr(obj, "__module__", "") or ""
        return obj if callable(obj) and ours.startswith("micacl_layers") else None
    return None


def _documented_signatures() -> list[tuple[str, str, str]]:
    """``(page, name, parameters)`` for every inline `Name(a, *, b=1)` of the prose pages.

    Code blocks are left out (they run in tests of their own), and so is bad-inputs.md, whose
    calls on its own variables tests/test_bad_inputs.py executes.
    """
    found = []
    pages = [ROOT / "README.md", *sorted(p for p in DOCS.glob("*.md") if p.name != "bad-inputs.md")]
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        text = text.replace("\n", " ")
        for m in re.finditer(r"`((?:\w+\.)*\w+)\(([^`()]*(?:\([^`()]*\)[^`()]*)*)\)`", text):
            found.append((page.name, m[1], m[2]))
    return found


def test_inline_signatures_match_the_code() -> None:
    """An inline `Name(a, b=1, *, c=None)` names the parameters, in order, with the defaults.

    A text that does not parse as a parameter list (`train_transform(112)`) is a call, and so
    is one of keywords only without `*` (`MICACLLoss(mc_weight=0)`): of a call, only the
    keyword names are checked.
    """
    import ast
    import inspect

    import torch

    checked = 0
    for page, name, text in _documented_signatures():
        obj = _our_callable(name)
        if obj is None:
            continue
        signature = inspect.signature(obj)
        params = re.sub(r"=\s*\.\.\.", "=Ellipsis", text)  # `MCCLoss(class_counts=...)`
        params = re.sub(r",?\s*\.\.\.[\w ]*", "", params).strip().strip(",")  # `(..., b=1)`
        params = re.sub(r",\s*\*$", "", params)  # `FERV39k(root, split, *, ...same options)`
        try:
            tree = ast.parse(f"def f({params}): pass").body[0].args
        except SyntaxError:
            continue
        positional = tree.posonlyargs + tree.args
        defaults = [None] * (len(positional) - len(tree.defaults)) + list(tree.defaults)
        items = list(zip(positional, defaults, strict=True))
        items += list(zip(tree.kwonlyargs, tree.kw_defaults, strict=True))
        where = f"{page}: `{name}({text})`"
        names = {arg.arg for arg, _ in items}
        accepted = set(signature.parameters)
        if "mccl_options" in accepted:  # MICACLLoss hands these to its MCCLoss
            from micacl_layers import MCCLoss

            accepted |= set(inspect.signature(MCCLoss).parameters)
        assert names <= accepted, (where, sorted(names - accepted))
        if "*" not in params and all(d is not None for _, d in items):
            continue  # a call with these values, not a statement of the defaults
        leading = [arg.arg for arg in positional]
        assert [p for p in signature.parameters if p in leading] == leading, where
        for arg, default in items:
            if default is None:
                continue
            stated = eval(compile(ast.Expression(default), page, "eval"), {"torch": torch})
            actual = signature.parameters[arg.arg].default
            if stated is Ellipsis:
                continue
            if isinstance(actual, tuple) and isinstance(stated, tuple):
                same = len(stated) == len(actual) and all(
                    a == b or abs(a - b) < 1e-9 for a, b in zip(stated, actual, strict=True)
                )
            else:
                same = stated == actual
            assert same, (where, arg.arg, stated, actual)
        checked += 1
    assert checked >= 10, checked
