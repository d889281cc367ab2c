"""Models built from the MICACL layers (the ``models`` extra for the R3D-18 backbone)."""

from micacl_layers.models.backbones import (
    KINETICS_MEAN,
    KINETICS_STD,
    R3D18_WEIGHTS_URL,
    TinyVideoBackbone,
    r3d18_backbone,
)
from micacl_layers.models.head import MICACLHead
from micacl_layers.models.micacl import MICACL

__all__ = [
    "KINETICS_MEAN",
    "KINETICS_STD",
    "MICACL",
    "R3D18_WEIGHTS_URL",
    "MICACLHead",
    "TinyVideoBackbone",
    "r3d18_backbone",
]
