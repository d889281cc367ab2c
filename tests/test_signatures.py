"""Options are keyword-only; the few positional defaults are sizes, data or nn.LSTM's own."""

from __future__ import annotations

import inspect

import torch

import micacl_layers

# nn.LSTM / nn.LSTMCell take these positionally, so their drop-ins do too; the others are a
# size (as nn.MultiheadAttention's num_heads) or the data a loss is built for.
POSITIONAL_DEFAULTS = {
    "WIAN": [
        "num_layers",
        "bias",
        "batch_first",
        "dropout",
        "bidirectional",
        "proj_size",
        "device",
        "dtype",
    ],
    "WIANCell": ["bias", "device", "dtype"],
    "InstanceSelfAttention": ["num_heads"],
    "InstanceWeights": ["hidden_size"],
    "MultiscaleCategoryAwareContrastiveLoss": ["class_counts", "scales"],
    "MCCLoss": ["class_counts", "scales"],
    "MICACLLoss": ["class_counts", "scales"],
}


def test_every_other_option_of_an_exported_module_is_keyword_only():
    modules = [
        name
        for name in micacl_layers.__all__
        if inspect.isclass(obj := getattr(micacl_layers, name)) and issubclass(obj, torch.nn.Module)
    ]
    assert "IntensityAwareLoss" in modules and "GEIIM" in modules
    for name in modules:
        params = inspect.signature(getattr(micacl_layers, name).__init__).parameters.values()
        positional = [
            p.name
            for p in params
            if p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not inspect.Parameter.empty
        ]
        assert positional == POSITIONAL_DEFAULTS.get(name, []), name
