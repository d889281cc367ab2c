"""The full MICACL model.

A 16-frame clip split into instances, a 3-D CNN per instance, and the MICACL head.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import torch
from torch import nn

from micacl_layers._validation import (
    check_bool,
    check_device,
    check_floating,
    check_ndim,
    check_parameter_dtype,
    check_positive_int,
    describe,
    to_parameter_dtype,
    torchscript_unsupported,
)
from micacl_layers.models.backbones import (
    KINETICS_MEAN,
    KINETICS_STD,
    TinyVideoBackbone,
    r3d18_backbone,
)
from micacl_layers.models.head import MICACLHead

__all__ = ["MICACL"]


class MICACL(nn.Module):
    r"""MICACL: clip ``(B, 3, F, H, W)`` in ``[0, 1]`` to ``(logits, clip_feature)``.

    The ``F`` frames are split into ``num_instances`` consecutive snippets (16 frames into 4
    instances of 4 frames, as the public code), each embedded by the backbone, then classified by
    :class:`MICACLHead`. Inputs are normalised inside the model with the Kinetics mean/std that
    the R3D-18 weights expect (the public code skipped this).

    Args:
        num_classes: Number of classes.
        backbone: ``"r3d_18"`` (torchvision; needs the ``models`` extra) or ``"tiny"`` (a small
            3-D CNN for CPU demos).
        backbone_weights: Local path of the R3D-18 Kinetics-400 weights; ``None`` for random
            initialisation. Never downloaded.
        num_frames: Frames ``F`` per clip.
        num_instances: Instances per clip; must divide ``num_frames``.
        normalize: Apply the Kinetics mean/std normalisation.
        tiny_dim: Feature size of the tiny backbone.
        device: Device of every parameter and buffer (backbone, normalisation statistics,
            head); ``"meta"`` builds the model without storage.
        dtype: Floating dtype of every parameter and buffer (BatchNorm's
            ``num_batches_tracked`` stays a long counter, as in torch); ``None`` is torch's
            default dtype. The tiny backbone and the head are built with both. torchvision's
            R3D-18 takes no factory keywords: it is built on the CPU in the default dtype, its
            ``backbone_weights`` loaded, and only then moved with ``.to(device, dtype)`` (so
            ``"meta"`` does not spare that first allocation).
        **head_options: Keyword options of :class:`MICACLHead`.

    Shape:
        - clip: :math:`(B, 3, F, H, W)`
        - Output: logits :math:`(B, K)`, clip feature :math:`(B, E)`

    Example:
        >>> model = MICACL(7, backbone="tiny", hidden_size=16, tiny_dim=32)
        >>> logits, feature = model(torch.rand(1, 3, 16, 32, 32))
        >>> logits.shape
        torch.Size([1, 7])
    """

    mean: torch.Tensor  # (buffers: typed for the checker)
    std: torch.Tensor

    def __init__(
        self,
        num_classes: int = 7,
        *,
        backbone: Literal["r3d_18", "tiny"] = "r3d_18",
        backbone_weights: str | os.PathLike | None = None,
        num_frames: int = 16,
        num_instances: int = 4,
        normalize: bool = True,
        tiny_dim: int = 128,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **head_options: Any,
    ) -> None:
        super().__init__()
        # (Checked before the backbone is built: R3D-18 is moved only after it, and torch's own
        # error for an integer dtype names no argument.)
        dtype = check_parameter_dtype(dtype)
        num_frames = check_positive_int("num_frames", num_frames)
        num_instances = check_positive_int("num_instances", num_instances)
        if num_frames % num_instances:
            raise ValueError(
                f"`num_instances` ({num_instances}) must divide `num_frames` ({num_frames})."
            )
        self.num_frames = num_frames
        self.num_instances = num_instances
        if backbone == "r3d_18":
            self.backbone = r3d18_backbone(backbone_weights)
            if device is not None or dtype is not None:
                self.backbone.to(device=device, dtype=dtype)
            in_dim = 512
        elif backbone == "tiny":
            if backbone_weights is not None:
                raise ValueError("`backbone_weights` applies to backbone='r3d_18' only.")
            tiny_dim = check_positive_int("tiny_dim", tiny_dim)
            self.backbone = TinyVideoBackbone(tiny_dim, device=device, dtype=dtype)
            in_dim = tiny_dim
        else:
            raise ValueError(f"`backbone` must be 'r3d_18' or 'tiny', got {backbone!r}.")
        self.normalize = check_bool("normalize", normalize)
        stats: dict[str, Any] = {"device": device, "dtype": dtype}
        self.register_buffer(
            "mean", torch.tensor(KINETICS_MEAN, **stats).view(1, 3, 1, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(KINETICS_STD, **stats).view(1, 3, 1, 1, 1), persistent=False
        )
        self.head = MICACLHead(
            in_dim,
            num_classes,
            num_instances=num_instances,
            device=device,
            dtype=dtype,
            **head_options,
        )

    @property
    def classifier(self) -> nn.Module:
        """The final linear layer (for the CET's feature augmentation)."""
        return self.head.classifier

    @property
    def feature_dim(self) -> int:
        """Size of the clip feature fed to the classifier (and to MCCLoss)."""
        return self.head.feature_dim

    def instance_features(self, clip: torch.Tensor) -> torch.Tensor:
        """Embed each instance: ``(B, 3, F, H, W)`` to ``(B, T, C)``."""
        clip = check_floating("clip", clip)
        check_ndim("clip", clip, 5, "(B, 3, F, H, W)")
        if clip.shape[1] != 3 or clip.shape[2] != self.num_frames:
            raise ValueError(
                f"`clip` must have shape (B, 3, F, H, W) with F={self.num_frames}, "
                f"got {describe(clip)}."
            )
        reference = next(self.backbone.parameters(), None)
        # (Another device failed inside the backbone's first convolution.)
        device = (reference if reference is not None else self.head.classifier.weight).device
        check_device("clip", clip, device, "MICACL")
        # Another floating dtype runs in the backbone's parameter dtype, as autocast would.
        clip = to_parameter_dtype(clip, reference)
        if self.normalize:
            clip = (clip - self.mean.to(clip.dtype)) / self.std.to(clip.dtype)
        b, c, f, h, w = clip.shape
        t = self.num_instances
        snippets = clip.view(b, c, t, f // t, h, w).transpose(1, 2).reshape(b * t, c, f // t, h, w)
        embedded = self.backbone(snippets)
        return embedded.view(b, t, embedded.shape[-1])  # (not -1: ambiguous for B = 0)

    __prepare_scriptable__ = torchscript_unsupported

    def forward(self, clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Classify clips; returns ``(logits, clip_feature)``."""
        return self.head(self.instance_features(clip))
