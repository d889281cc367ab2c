"""Per-instance video backbones.

torchvision's R3D-18 from a local weights file, and a CPU-sized 3-D CNN for demos and tests.

Pretrained weights are never downloaded at run time: R3D-18's Kinetics-400 weights are read from a
local file with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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
)

__all__ = [
    "KINETICS_MEAN",
    "KINETICS_STD",
    "R3D18_WEIGHTS_URL",
    "TinyVideoBackbone",
    "r3d18_backbone",
]

# Statistics the torchvision Kinetics-400 video weights were trained with.
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
R3D18_WEIGHTS_URL = "https://download.pytorch.org/models/r3d_18-b3b3357e.pth"


def _require_torchvision():
    try:
        from torchvision.models.video import r3d_18
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the R3D-18 backbone needs torchvision: pip install 'micacl-layers[models]'"
        ) from err
    return r3d_18


def r3d18_backbone(weights: str | os.PathLike | None = None) -> nn.Module:
    """The R3D-18 of torchvision without its classifier: ``(N, 3, F, H, W)`` clips to ``(N, 512)``.

    Args:
        weights: Path of the Kinetics-400 state dict (``r3d_18-b3b3357e.pth``). ``None`` gives a
            randomly initialised network.

    Returns:
        The backbone, with ``fc`` replaced by ``nn.Identity``.

    Raises:
        FileNotFoundError: ``weights`` does not exist (the message says how to obtain it).
        ValueError: the file is not an R3D-18 state dict.

    Example:
        >>> net = r3d18_backbone()
        >>> net(torch.randn(1, 3, 4, 32, 32)).shape
        torch.Size([1, 512])
    """
    net = _require_torchvision()(weights=None)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(
                f"R3D-18 weights not found at '{path}'. Download them once on a machine with "
                f"internet access from {R3D18_WEIGHTS_URL} (torchvision's "
                f"R3D_18_Weights.KINETICS400_V1) and pass the local path."
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        missing, unexpected = net.load_state_dict(state, strict=False)
        # The Kinetics classifier is dropped below, so only its absence is acceptable.
        missing = [k for k in missing if not k.startswith("fc.")]
        unexpected = [k for k in unexpected if not k.startswith("fc.")]
        if missing or unexpected:
            raise ValueError(
                f"'{path}' is not an R3D-18 state dict: missing keys {missing[:5]}, "
                f"unexpected keys {unexpected[:5]}."
            )
    net.fc = nn.Identity()
    return net


class TinyVideoBackbone(nn.Module):
    """A small 3-D CNN for CPU demos and tests: ``(N, 3, F, H, W)`` to ``(N, out_dim)``.

    Args:
        out_dim: Output feature size.
        width: Channels of the first stage (doubled at each of the three stages).
        normalize_input: Standardise each snippet per colour channel first
            (``InstanceNorm3d``).
        device: Device of the parameters and buffers.
        dtype: Floating dtype of the parameters and buffers (BatchNorm's
            ``num_batches_tracked`` stays a long counter, as in torch).

    Shape:
        - Input: :math:`(N, 3, F, H, W)`
        - Output: :math:`(N, \\text{out\\_dim})`

    Example:
        >>> TinyVideoBackbone(64)(torch.randn(2, 3, 4, 32, 32)).shape
        torch.Size([2, 64])
    """

    def __init__(
        self,
        out_dim: int = 128,
        *,
        width: int = 16,
        normalize_input: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory: dict[str, Any] = {"device": device, "dtype": check_parameter_dtype(dtype)}
        out_dim = check_positive_int("out_dim", out_dim)
        width = check_positive_int("width", width)
        normalize_input = check_bool("normalize_input", normalize_input)
        # A network this small has no capacity to spare for lighting and colour changes:
        # standardising each snippet per channel removes them before the first convolution.
        self.input_norm = nn.InstanceNorm3d(3, **factory) if normalize_input else nn.Identity()

        def block(cin: int, cout: int, stride: tuple[int, int, int]) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv3d(
                    cin, cout, kernel_size=3, stride=stride, padding=1, bias=False, **factory
                ),
                nn.BatchNorm3d(cout, **factory),
                nn.ReLU(inplace=True),
            )

        self.features = nn.Sequential(
            block(3, width, (1, 2, 2)),
            block(width, 2 * width, (1, 2, 2)),
            block(2 * width, 4 * width, (2, 2, 2)),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
        )
        self.proj = nn.Linear(4 * width, out_dim, **factory)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed each snippet.

        Input of another floating dtype than the parameters is cast to theirs (as in
        :class:`~micacl_layers.models.MICACL`).
        """
        # (These failed inside batch_norm or conv3d.)
        x = check_floating("x", x)
        check_ndim("x", x, 5, "(N, 3, F, H, W)")
        if x.shape[1] != 3:
            raise ValueError(f"`x` must have shape (N, 3, F, H, W), got {describe(x)}.")
        check_device("x", x, self.proj.weight.device, "TinyVideoBackbone")
        x = to_parameter_dtype(x, self.proj.weight)
        return self.proj(self.features(self.input_norm(x)))
