"""micacl-layers: the building blocks of MICACL as drop-in PyTorch modules.

MICACL (Multi-Instance Category-Aware Contrastive Learning, ISPA 2025) targets long-tailed dynamic
facial expression recognition. This package needs only torch and numpy; the model, data and
example code are optional extras.
"""

from micacl_layers import config, functional
from micacl_layers.attention import InstanceSelfAttention
from micacl_layers.cet import CETOutput, ClassificationEnhancementTerm
from micacl_layers.criterion import PRESETS, MICACLLoss, MICACLLossOutput
from micacl_layers.geiim import GEIIM
from micacl_layers.ial import IntensityAwareLoss
from micacl_layers.instance_weights import WEIGHT_MODES, InstanceWeights
from micacl_layers.logit_adjustment import LogitAdjustedLoss
from micacl_layers.mccl import (
    MCCLOptions,
    MCCLoss,
    MCCLOutput,
    MultiscaleCategoryAwareContrastiveLoss,
)
from micacl_layers.wian import WIAN, WIANCell

__version__ = "0.2.0.dev0"

__all__ = [
    "GEIIM",
    "PRESETS",
    "WEIGHT_MODES",
    "WIAN",
    "CETOutput",
    "ClassificationEnhancementTerm",
    "InstanceSelfAttention",
    "InstanceWeights",
    "IntensityAwareLoss",
    "LogitAdjustedLoss",
    "MCCLOptions",
    "MCCLOutput",
    "MCCLoss",
    "MICACLLoss",
    "MICACLLossOutput",
    "MultiscaleCategoryAwareContrastiveLoss",
    "WIANCell",
    "__version__",
    "config",
    "functional",
]
