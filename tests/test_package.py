"""Package surface: exports, version, typing marker, and a light import."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

import micacl_layers
from micacl_layers import functional

HEAVY = ("torchvision", "PIL", "tqdm", "matplotlib")

EXPECTED_EXPORTS = {
    "GEIIM",
    "WIAN",
    "WIANCell",
    "InstanceWeights",
    "InstanceSelfAttention",
    "MCCLoss",
    "MultiscaleCategoryAwareContrastiveLoss",
    "IntensityAwareLoss",
    "LogitAdjustedLoss",
    "ClassificationEnhancementTerm",
    "MICACLLoss",
    "MCCLOutput",
    "CETOutput",
    "MICACLLossOutput",
    "PRESETS",
    "WEIGHT_MODES",
    "functional",
    "__version__",
}


def test_all_exports_resolve():
    assert EXPECTED_EXPORTS <= set(micacl_layers.__all__)
    assert len(micacl_layers.__all__) == len(set(micacl_layers.__all__))
    for name in micacl_layers.__all__:
        assert hasattr(micacl_layers, name), name


def test_modules_are_nn_modules():
    for name in (
        "GEIIM",
        "WIAN",
        "WIANCell",
        "InstanceWeights",
        "InstanceSelfAttention",
        "MCCLoss",
        "IntensityAwareLoss",
        "ClassificationEnhancementTerm",
        "MICACLLoss",
        "LogitAdjustedLoss",
    ):
        assert issubclass(getattr(micacl_layers, name), nn.Module), name


def test_functional_exports_are_callable():
    assert functional.__all__
    for name in functional.__all__:
        assert callable(getattr(functional, name)), name


def test_version():
    version = micacl_layers.__version__
    assert isinstance(version, str)
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?", version), version
    assert importlib.metadata.version("micacl-layers") == version


def test_py_typed_marker_exists():
    assert (Path(micacl_layers.__file__).parent / "py.typed").is_file()


def _run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_import_pulls_in_no_heavy_optional_dependency():
    # torch itself imports tqdm (torch.hub does, when tqdm is installed), so the check is that
    # importing micacl_layers adds none of them on top of what `import torch` already loaded, and
    # that torchvision, PIL and matplotlib are not loaded at all.
    code = f"""
import json, sys
heavy = {HEAVY!r}
def loaded():
    return sorted(m for m in heavy if any(k == m or k.startswith(m + ".") for k in sys.modules))
import torch
before = loaded()
import micacl_layers
print(json.dumps({{"before": before, "after": loaded()}}))
"""
    report = json.loads(_run(code))
    assert report["after"] == report["before"], report
    for name in ("torchvision", "PIL", "matplotlib"):
        assert name not in report["after"], report


def test_import_works_without_optional_dependencies():
    """With the heavy packages made unimportable, the core imports and runs."""
    code = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HEAVY!r}:
            raise ImportError("blocked: " + name)
        return None
sys.meta_path.insert(0, Block())
import torch
import micacl_layers
from micacl_layers import GEIIM, WIAN, MICACLLoss
x = torch.randn(2, 4, 8)
out, _ = WIAN(8, 4, batch_first=True)(GEIIM(4, 8)(x))
loss = MICACLLoss(3, 8, [3, 2, 1], projection_dim=4, aug_weight=0.0)(
    out[:, -1].repeat(1, 2), torch.randn(2, 3), torch.tensor([0, 0]))
print(bool(torch.isfinite(loss)))
"""
    assert _run(code) == "True"


def test_doc_examples_run():
    """The docstring examples of the core modules run (doctest)."""
    import doctest

    from micacl_layers import (
        attention,
        cet,
        criterion,
        geiim,
        ial,
        instance_weights,
        logit_adjustment,
        mccl,
        wian,
    )

    for module in (
        geiim,
        wian,
        instance_weights,
        attention,
        mccl,
        ial,
        logit_adjustment,
        cet,
        criterion,
    ):
        torch.manual_seed(0)
        result = doctest.testmod(
            module,
            extraglobs={"torch": torch},
            verbose=False,
            optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        )
        assert result.failed == 0, module.__name__
