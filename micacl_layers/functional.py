"""Functional forms of the layers' equation steps and of the losses (kornia style).

The Modules store their options and parameters and call these. Three computations have no
functional form: ``InstanceSelfAttention``, GEIIM's multiscale convolutions and
``MICACLLoss``'s weighted sum of the CET and MCCL.
"""

from micacl_layers.cet import classification_enhancement_term, feature_augmentation_loss
from micacl_layers.geiim import graph_propagate, instance_adjacency
from micacl_layers.ial import intensity_aware_loss
from micacl_layers.instance_weights import instance_weights
from micacl_layers.logit_adjustment import log_prior, logit_adjusted_cross_entropy
from micacl_layers.mccl import (
    adaptive_temperature,
    category_aware_weights,
    multiscale_category_aware_contrastive_loss,
    pool_features,
    supervised_contrastive_per_anchor,
)
from micacl_layers.wian import wian_cell

mccl_loss = multiscale_category_aware_contrastive_loss

__all__ = [
    "adaptive_temperature",
    "category_aware_weights",
    "classification_enhancement_term",
    "feature_augmentation_loss",
    "graph_propagate",
    "instance_adjacency",
    "instance_weights",
    "intensity_aware_loss",
    "log_prior",
    "logit_adjusted_cross_entropy",
    "mccl_loss",
    "multiscale_category_aware_contrastive_loss",
    "pool_features",
    "supervised_contrastive_per_anchor",
    "wian_cell",
]
