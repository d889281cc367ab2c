"""MICACLHead: instance features to logits through GEIIM, WIAN, self-attention and pooling.

Backbone-agnostic: any network that yields one feature vector per instance (a short snippet of the
clip) can sit in front of it. The data path reads in the paper's order:
instances -> GEIIM (Eq. 1-2) -> instance weights (Eq. 4) -> WIAN (Eq. 3, 5, 6) -> multi-head
self-attention -> instance pooling -> classifier.
"""

from __future__ import annotations

import contextlib
import operator
from typing import Any, Literal

import torch
from torch import nn

from micacl_layers._validation import (
    check_bool,
    check_device,
    check_finite_parameters,
    check_floating,
    check_ndim,
    check_padding_mask,
    check_parameter_dtype,
    check_positive_int,
    check_some_real_instance,
    check_unit_interval,
    describe,
    to_parameter_dtype,
    torchscript_unsupported,
)
from micacl_layers.attention import InstanceSelfAttention
from micacl_layers.geiim import GEIIM, _check_kernel_sizes
from micacl_layers.instance_weights import WEIGHT_MODES, InstanceWeights, WeightMode
from micacl_layers.wian import WIAN

__all__ = ["MICACLHead"]

Aggregator = Literal["wian", "lstm", "conv1d"]


class _Conv1dAggregator(nn.Module):
    """Temporal Conv1d over instances, the aggregator of the ablation baseline (Table III a)."""

    def __init__(self, in_dim: int, out_dim: int, **factory: Any) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_dim, out_dim, kernel_size=3, padding=1, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x.transpose(1, 2))).transpose(1, 2)


class MICACLHead(nn.Module):
    r"""The MICACL multi-instance head: instance features to ``(logits, clip_feature)``.

    Args:
        in_dim: Feature size ``C`` of each instance (512 for R3D-18).
        num_classes: Number of classes ``K``.
        num_instances: Instances ``T`` per clip.
        hidden_size: WIAN hidden size per direction (512 in the public code).
        num_layers: WIAN layers (the public code stacks 4; 1 is the default here, cheaper and as
            good on our measurements so far).
        bidirectional: Run WIAN in both directions (clip feature size ``2 * hidden_size``).
        attention_heads: Heads of the self-attention after WIAN; 0 disables it.
        use_geiim: Include GEIIM (``False`` for ablation settings without it).
        aggregator: ``"wian"`` (MICACL), ``"lstm"`` (plain ``nn.LSTM``) or ``"conv1d"`` (the
            ablation baseline of Table III a). Under CPU autocast the ``nn.LSTM`` runs in its
            parameters' dtype with autocast off, as WIAN's fused kernel does there: torch
            2.13-2.14 give it a oneDNN bfloat16 kernel that CPUs without AVX-512 lack, and
            raise.
        weight_mode: How GEIIM output becomes WIAN's instance weights (see
            :func:`~micacl_layers.functional.instance_weights`).
        node_dim: GEIIM node-embedding size.
        kernel_sizes: GEIIM multiscale kernel sizes.
        dropout: Dropout before the classifier (and inside WIAN between layers).
        device: Device of every parameter and buffer (GEIIM, the instance weights, the
            aggregator, the attention, the classifier), as torch layers take it; ``"meta"``
            builds the head without storage.
        dtype: Floating dtype of every parameter and buffer; ``None`` is torch's default
            dtype. Input of another floating dtype is cast to it in ``forward``.

    Shape:
        - x: :math:`(B, T, C)`
        - padding_mask: :math:`(B, T)`, ``True`` = padded instance
        - Output: logits :math:`(B, K)` and clip feature :math:`(B, E)`,
          :math:`E = D \cdot H` (``conv1d``: ``hidden_size``)

    Example:
        >>> head = MICACLHead(in_dim=32, num_classes=7, num_instances=4, hidden_size=16)
        >>> logits, feature = head(torch.randn(2, 4, 32))
        >>> logits.shape, feature.shape
        (torch.Size([2, 7]), torch.Size([2, 32]))
    """

    # (set to one of several kinds in __init__: typed for the checker)
    geiim: GEIIM | None
    instance_weights: InstanceWeights | None
    aggregator: nn.Module

    def __init__(
        self,
        in_dim: int = 512,
        num_classes: int = 7,
        *,
        num_instances: int = 4,
        hidden_size: int = 512,
        num_layers: int = 1,
        bidirectional: bool = True,
        attention_heads: int = 4,
        use_geiim: bool = True,
        aggregator: Aggregator = "wian",
        weight_mode: WeightMode = "instance_softmax",
        node_dim: int = 32,
        kernel_sizes: tuple[int, ...] = (1, 3, 5),
        dropout: float = 0.1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        # (Checked before any part is built: nn.LSTM and nn.Linear fail inside nn.Parameter on
        # an integer dtype, naming no argument.)
        factory: dict[str, Any] = {"device": device, "dtype": check_parameter_dtype(dtype)}
        self.in_dim = check_positive_int("in_dim", in_dim)
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.num_instances = check_positive_int("num_instances", num_instances)
        if aggregator not in ("wian", "lstm", "conv1d"):
            raise ValueError(
                f"`aggregator` must be 'wian', 'lstm' or 'conv1d', got {aggregator!r}."
            )
        self.aggregator_kind = aggregator
        # The options handed to the parts are checked here, so errors name the head's argument
        # (`weight_mode`, not InstanceWeights' `mode`; `attention_heads`, not `num_heads`).
        if weight_mode not in WEIGHT_MODES:
            raise ValueError(f"`weight_mode` must be one of {WEIGHT_MODES}, got {weight_mode!r}.")
        dropout = check_unit_interval("dropout", dropout)
        # ("no" is truthy: it built a bidirectional WIAN or a GEIIM; and the conv1d aggregator,
        # which WIAN's checks never see, built a zero-width Conv1d from hidden_size=0 and took
        # any num_layers.)
        bidirectional = check_bool("bidirectional", bidirectional)
        use_geiim = check_bool("use_geiim", use_geiim)
        hidden_size = check_positive_int("hidden_size", hidden_size)
        num_layers = check_positive_int("num_layers", num_layers)  # (conv1d: unused, but valid)
        # (Checked without GEIIM too, as weight_mode is for every aggregator.)
        node_dim = check_positive_int("node_dim", node_dim)
        kernel_sizes = _check_kernel_sizes(kernel_sizes)
        self.geiim = (
            GEIIM(num_instances, in_dim, node_dim=node_dim, kernel_sizes=kernel_sizes, **factory)
            if use_geiim
            else None
        )
        dirs = 2 if bidirectional else 1
        if aggregator in ("wian", "lstm"):
            # WIAN takes nn.LSTM's arguments: one construction for both recurrent choices.
            recurrent = WIAN if aggregator == "wian" else nn.LSTM
            self.instance_weights = (
                InstanceWeights(in_dim, hidden_size, mode=weight_mode, **factory)
                if aggregator == "wian"
                else None
            )
            self.aggregator = recurrent(
                in_dim,
                hidden_size,
                num_layers,
                batch_first=True,
                dropout=dropout if num_layers > 1 else 0.0,
                bidirectional=bidirectional,
                **factory,
            )
            feature_dim = dirs * hidden_size
        else:
            self.instance_weights = None
            self.aggregator = _Conv1dAggregator(in_dim, hidden_size, **factory)
            feature_dim = hidden_size
        self.feature_dim = feature_dim
        heads = -1  # (a bool, a float or anything else that is no integer: the error below)
        if not isinstance(attention_heads, bool):
            with contextlib.suppress(TypeError):
                heads = operator.index(attention_heads)
        if heads < 0:
            raise ValueError(
                f"`attention_heads` must be an int >= 0 (0 leaves the attention out), "
                f"got {attention_heads!r}."
            )
        if heads and feature_dim % heads:
            raise ValueError(
                f"`attention_heads` ({heads}) must divide the clip feature size "
                f"{feature_dim} (hidden_size={hidden_size}, bidirectional={bidirectional}, "
                f"aggregator={aggregator!r}), or be 0 to leave the attention out."
            )
        self.attention = InstanceSelfAttention(feature_dim, heads, **factory) if heads else None
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(feature_dim, num_classes, **factory)

    __prepare_scriptable__ = torchscript_unsupported

    def forward(
        self, x: torch.Tensor, padding_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Classify a batch of instance bags.

        Args:
            x: Instance features.
            padding_mask: Optional, ``True`` marks padded instances. Wherever they sit and
                whatever they hold (NaN included), they reach neither the logits nor the clip
                feature, and get no gradient: GEIIM and the attention leave them out, the
                aggregator reads the real instances alone, in their order (as ``nn.LSTM``
                reads a ``PackedSequence``: ``"lstm"`` is given one, which reads the lengths
                on the host), and the pooling averages the real instances. (With
                :func:`~micacl_layers.config.check_finite` on, a NaN or inf anywhere in ``x``
                is refused, padding included, as every input is.)

        Returns:
            ``(logits, clip_feature)``; ``clip_feature`` is what the classifier saw, the input
            for :class:`~micacl_layers.MCCLoss`. Input of another floating dtype than the
            parameters is cast to theirs (as ``torch.autocast`` would), so both outputs have
            the parameters' dtype outside autocast.

        Raises:
            ValueError: ``x`` or ``padding_mask`` has the wrong shape, or ``padding_mask``
                marks every instance of a clip as padded (nothing to pool).
        """
        x = check_floating("x", x)
        check_ndim("x", x, 3, "(B, T, C)")
        if x.shape[1] != self.num_instances or x.shape[2] != self.in_dim:
            raise ValueError(
                f"`x` must have shape (B, T, C)=(B, {self.num_instances}, "
                f"{self.in_dim}), got {describe(x)}."
            )
        check_device("x", x, self.classifier.weight.device, "MICACLHead")
        if padding_mask is not None:
            # Checked here for every configuration (not only by GEIIM): a clip whose every
            # instance is padded has nothing to pool, and would give NaN logits.
            padding_mask = check_some_real_instance(
                check_padding_mask(padding_mask, x.shape[0], self.num_instances)
            )
            check_device("padding_mask", padding_mask, x.device, "MICACLHead")
        check_finite_parameters(self)
        # Input of another floating dtype runs in the head's parameter dtype, as autocast would.
        x = to_parameter_dtype(x, self.classifier.weight)
        h = self.geiim(x, padding_mask) if self.geiim is not None else x
        if padding_mask is not None:
            # GEIIM hands padded slots back unchanged, and what they hold must reach neither
            # the aggregator (a NaN input makes WIAN's gates NaN even at weight 0) nor any
            # backward (0 * NaN is NaN): zeroed once, here.
            h = h.masked_fill(padding_mask.unsqueeze(-1), 0)
        weights = None
        if self.instance_weights is not None:  # (built with the WIAN aggregator)
            weights = self.instance_weights(h, padding_mask)
        if padding_mask is None:
            seq = self._aggregate(h, weights, None)
            feature = (self.attention(seq) if self.attention is not None else seq).mean(dim=1)
        else:
            # The aggregator reads the clip's real instances alone, in their order, as nn.LSTM
            # reads a PackedSequence: they are moved to the front (padding between them would
            # drive a recurrence's gates and decay its state), and moved back afterwards.
            padded = padding_mask.unsqueeze(-1)
            order = torch.argsort(padding_mask.to(torch.uint8), dim=1, stable=True)
            packed = _take_instances(h, order)
            if weights is not None:
                weights = _take_instances(weights, order)
            lengths = (~padding_mask).sum(dim=1)
            seq = _take_instances(self._aggregate(packed, weights, lengths), order.argsort(1))
            if self.attention is not None:  # (it leaves padded slots out itself)
                seq = self.attention(seq, padding_mask)
            # (masked_fill, not a product with the mask: 0 * NaN is NaN)
            seq = seq.masked_fill(padded, 0)
            feature = seq.sum(dim=1) / lengths.unsqueeze(-1).to(seq.dtype)
        return self.classifier(self.dropout(feature)), feature

    def _aggregate(
        self, h: torch.Tensor, weights: torch.Tensor | None, lengths: torch.Tensor | None
    ) -> torch.Tensor:
        """The aggregator over ``h`` ``(B, T, C)``, whose real instances come first.

        ``lengths`` ``(B,)`` counts them (``None``: all are real). What lies behind them
        reaches neither WIAN's state (an instance weight of 0 keeps a zero cell state at zero,
        so the reverse direction starts at the last real instance) nor the convolution (the
        zeroed instances are its zero padding); ``nn.LSTM`` is given a ``PackedSequence``.
        """
        if self.aggregator_kind == "wian":
            return self.aggregator(h, weights=weights)[0]
        if self.aggregator_kind == "lstm":
            return _lstm_outside_cpu_autocast(self.aggregator, h, lengths)
        return self.aggregator(h)


def _take_instances(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``x[b, order[b]]`` for every clip ``b``: ``x`` ``(B, T, C)``, ``order`` ``(B, T)``."""
    return x.gather(1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _lstm_on_real_instances(
    lstm: nn.Module, h: torch.Tensor, lengths: torch.Tensor | None
) -> torch.Tensor:
    if lengths is None or h.shape[0] == 0 or h.device.type == "meta":
        # (An empty batch cannot be packed, and meta lengths cannot be read: shapes are all
        # either gives, and they are the same unpacked.)
        return lstm(h)[0]
    # pack_padded_sequence reads the lengths on the host: one sync, with a padding_mask only.
    packed = nn.utils.rnn.pack_padded_sequence(
        h, lengths.cpu(), batch_first=True, enforce_sorted=False
    )
    return nn.utils.rnn.pad_packed_sequence(
        lstm(packed)[0], batch_first=True, total_length=h.shape[1]
    )[0]


def _lstm_outside_cpu_autocast(
    lstm: nn.Module, h: torch.Tensor, lengths: torch.Tensor | None = None
) -> torch.Tensor:
    # Under CPU autocast, torch 2.13-2.14 hand nn.LSTM to a oneDNN bfloat16 kernel that CPUs
    # without AVX-512 do not have ("could not create a primitive descriptor"). Running it with
    # autocast off in the parameters' dtype works on every CPU and is what WIAN's fused kernel
    # does under CPU autocast, so the two aggregators of the ablation compare on equal terms.
    if h.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return _lstm_on_real_instances(lstm, h, lengths)
    with torch.autocast("cpu", enabled=False):
        return _lstm_on_real_instances(lstm, h.to(next(lstm.parameters()).dtype), lengths)
