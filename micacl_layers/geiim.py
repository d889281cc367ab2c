"""Graph-Enhanced Instance Interaction Module (GEIIM), MICACL Eq. 1-2.

Instances (short snippets of a clip) exchange information over a learned T x T graph; a
multiscale temporal convolution stage, promised by the paper's abstract but specified nowhere,
adds local interaction at several temporal extents.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from micacl_layers._validation import (
    check_bool,
    check_device,
    check_device_of,
    check_finite_parameters,
    check_floating,
    check_ndim,
    check_padding_mask,
    check_parameter_dtype,
    check_positive_int,
    check_some_real_instance,
    check_unit_interval,
    describe,
    is_real,
    to_parameter_dtype,
    torchscript_unsupported,
)

__all__ = ["GEIIM", "graph_propagate", "instance_adjacency"]


def _check_padding_mask(padding_mask: object, batch: int, num_instances: int) -> torch.Tensor:
    return check_some_real_instance(check_padding_mask(padding_mask, batch, num_instances))


def _check_any_batch_mask(padding_mask: object, num_instances: int) -> torch.Tensor:
    """A padding mask ``(B, T)`` of any batch size ``B`` (the adjacency alone fixes only ``T``)."""
    is_matrix = isinstance(padding_mask, torch.Tensor) and padding_mask.dim() == 2
    batch = padding_mask.shape[0] if isinstance(padding_mask, torch.Tensor) and is_matrix else 0
    if isinstance(padding_mask, torch.Tensor) and not is_matrix:
        raise ValueError(
            f"`padding_mask` must have shape (B, T) with T={num_instances}, "
            f"got {describe(padding_mask)}."
        )
    return _check_padding_mask(padding_mask, batch, num_instances)


def instance_adjacency(
    node_src: torch.Tensor,
    node_dst: torch.Tensor,
    *,
    padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Dynamic instance adjacency of Eq. 1, :math:`A = \mathrm{Softmax}(\mathrm{ReLU}(N_1 N_2))`.

    The softmax runs over the source instances (each row sums to one), so row ``i`` says how
    instance ``i`` mixes the others. Padded instances never send messages: their columns are
    excluded from the softmax.

    Args:
        node_src: Node embeddings :math:`N_1`.
        node_dst: Node embeddings :math:`N_2`.
        padding_mask: Optional, ``True`` marks padded instances.

    Returns:
        The row-stochastic adjacency, ``(T, T)`` without a mask, ``(B, T, T)`` with one.

    Shape:
        - node_src: :math:`(T, d)`
        - node_dst: :math:`(d, T)`
        - padding_mask: :math:`(B, T)`
        - Output: :math:`(T, T)` or :math:`(B, T, T)`

    Example:
        >>> a = instance_adjacency(torch.randn(4, 8), torch.randn(8, 4))
        >>> a.shape, bool(torch.allclose(a.sum(-1), torch.ones(4)))
        (torch.Size([4, 4]), True)
    """
    node_src = check_floating("node_src", node_src)
    check_ndim("node_src", node_src, 2, "(T, d)")
    node_dst = check_floating("node_dst", node_dst)
    check_ndim("node_dst", node_dst, 2, "(d, T)")
    num_instances, node_dim = node_src.shape
    if tuple(node_dst.shape) != (node_dim, num_instances):
        raise ValueError(
            f"`node_dst` must have shape (d, T)=({node_dim}, {num_instances}) to "
            f"match `node_src` of {describe(node_src)}, got {describe(node_dst)}."
        )
    check_device_of("node_dst", node_dst, "node_src", node_src.device)
    if padding_mask is not None:
        padding_mask = _check_any_batch_mask(padding_mask, num_instances)
        check_device_of("padding_mask", padding_mask, "node_src", node_src.device)
    # Two dtypes (e.g. one embedding from an autocast region): compute in the wider one.
    dtype = torch.promote_types(node_src.dtype, node_dst.dtype)
    return _instance_adjacency(node_src.to(dtype), node_dst.to(dtype), padding_mask)


def _instance_adjacency(
    node_src: torch.Tensor, node_dst: torch.Tensor, padding_mask: torch.Tensor | None
) -> torch.Tensor:
    scores = F.relu(node_src @ node_dst)
    if padding_mask is None:
        return scores.softmax(dim=-1)
    scores = scores.unsqueeze(0).masked_fill(
        padding_mask[:, None, :], torch.finfo(scores.dtype).min
    )
    return scores.softmax(dim=-1)


def graph_propagate(
    x: torch.Tensor, adjacency: torch.Tensor, alpha: torch.Tensor | float
) -> torch.Tensor:
    r"""One hop of linear diffusion, Eq. 2: :math:`H = \alpha X + (1 - \alpha) A X`.

    Args:
        x: Instance features :math:`X`.
        adjacency: Row-stochastic adjacency :math:`A`, shared or per sample.
        alpha: Mixing coefficient in :math:`[0, 1]`.

    Returns:
        The propagated features :math:`H`.

    Shape:
        - x: :math:`(B, T, C)`
        - adjacency: :math:`(T, T)` or :math:`(B, T, T)`
        - Output: :math:`(B, T, C)`

    Example:
        >>> x = torch.randn(2, 4, 8)
        >>> bool(torch.allclose(graph_propagate(x, torch.eye(4), 0.3), x))
        True
    """
    x = check_floating("x", x)
    check_ndim("x", x, 3, "(B, T, C)")
    adjacency = check_floating("adjacency", adjacency)
    batch, num_instances = x.shape[:2]
    if not (
        tuple(adjacency.shape) == (num_instances, num_instances)
        or tuple(adjacency.shape) == (batch, num_instances, num_instances)
    ):
        raise ValueError(
            f"`adjacency` must have shape (T, T)=({num_instances}, "
            f"{num_instances}) or (B, T, T)=({batch}, {num_instances}, "
            f"{num_instances}) for `x` of {describe(x)}, got {describe(adjacency)}."
        )
    check_device_of("adjacency", adjacency, "x", x.device)
    if isinstance(alpha, torch.Tensor):
        if alpha.numel() != 1 or not alpha.is_floating_point():
            raise ValueError(
                f"`alpha` must be a float in [0, 1] or a one-element floating "
                f"tensor, got {describe(alpha)}."
            )
        if alpha.device.type != "cpu":  # (a CPU scalar goes with any device, as in torch)
            check_device_of("alpha", alpha, "x", x.device)
        # A user's tensor is checked like a float (one scalar read back; GEIIM's own learned
        # alpha skips this function and never syncs). A meta tensor has no value to check.
        if not alpha.is_meta and not bool(((alpha >= 0) & (alpha <= 1)).all()):
            raise ValueError(
                f"`alpha` must lie in [0, 1], got a tensor holding {alpha.detach().item()!r}."
            )
        # 0-d, so that it neither broadcasts the output to its own shape nor promotes its dtype
        # (a (1,) float64 alpha made a float32 result float64).
        alpha = alpha.reshape(())
    elif not is_real(alpha) or not 0 <= alpha <= 1:
        raise ValueError(f"`alpha` must be a float in [0, 1], got {alpha!r}.")
    else:
        alpha = float(alpha)
    return _graph_propagate(x, adjacency, alpha)


def _graph_propagate(
    x: torch.Tensor, adjacency: torch.Tensor, alpha: torch.Tensor | float
) -> torch.Tensor:
    return alpha * x + (1.0 - alpha) * torch.matmul(adjacency.to(x.dtype), x)


def _check_kernel_sizes(kernel_sizes: object) -> tuple[int, ...]:
    """GEIIM's ``kernel_sizes``: odd positive ints (empty or ``None``: no multiscale stage)."""
    if kernel_sizes is not None and not isinstance(kernel_sizes, Sequence):
        raise ValueError(f"`kernel_sizes` must hold odd positive ints, got {kernel_sizes!r}.")
    sizes = tuple(kernel_sizes or ())
    for k in sizes:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise ValueError(f"`kernel_sizes` must hold odd positive ints, got {sizes}.")
    return sizes


def _alpha_logit(alpha: float) -> torch.Tensor:
    # In float64, so an alpha_init of 0 or 1 stays finite before rounding to the parameter.
    return torch.logit(torch.tensor(alpha, dtype=torch.float64), eps=1e-12)


class GEIIM(nn.Module):
    r"""Graph-Enhanced Instance Interaction Module (MICACL Eq. 1-2 plus multiscale convolutions).

    1. Eq. 1: a learned adjacency :math:`A = \mathrm{Softmax}(\mathrm{ReLU}(N_1 N_2))` over the
       ``T`` instances (not over channels, as the public code did).
    2. Eq. 2: :math:`H = \alpha X + (1 - \alpha) A X` with a learnable
       :math:`\alpha = \sigma(\theta) \in [0, 1]`, initialised at the public code's fixed 0.7.
    3. Multiscale convolutions (our design; the paper names them without a definition): one
       depthwise temporal convolution per kernel size over the instance axis, GELU, a pointwise
       fusion back to ``C`` channels, added residually: :math:`Y = H + \mathrm{Fuse}(
       [\mathrm{GELU}(\mathrm{DWConv}_k(H))]_k)`. The fusion starts at zero, so at initialisation
       the module is exactly Eq. 2 and learns how much local context to add.

    Padded instances (``padding_mask``) neither send messages nor enter the convolutions, and
    come out unchanged.

    Input of another floating dtype than the parameters (float16/bfloat16 that left an autocast
    region, float64 data) is cast to the parameters' dtype, as ``torch.autocast`` would, and the
    output has the parameters' dtype (under an active autocast, autocast decides).
    TorchScript is not supported (``torch.jit.script`` raises a ``RuntimeError`` saying so);
    ``torch.compile`` is.

    Args:
        num_instances: Number of instances ``T`` per clip (the graph has ``T`` nodes).
        dim: Feature size ``C`` of each instance.
        node_dim: Size ``d`` of the node embeddings :math:`N_1, N_2`.
        alpha_init: Initial :math:`\alpha` in ``[0, 1]``.
        learn_alpha: If ``False``, :math:`\alpha` is a fixed buffer equal to ``alpha_init``.
        kernel_sizes: Odd temporal kernel sizes of the multiscale stage; empty or ``None``
            disables it.
        dropout: Dropout on the multiscale branch output.
        device: Parameter device.
        dtype: Parameter dtype.

    Shape:
        - x: :math:`(B, T, C)`
        - padding_mask: :math:`(B, T)`, bool, ``True`` = padded
        - Output: :math:`(B, T, C)`

    Example:
        >>> geiim = GEIIM(num_instances=4, dim=16)
        >>> geiim(torch.randn(2, 4, 16)).shape
        torch.Size([2, 4, 16])
        >>> geiim.adjacency().shape
        torch.Size([4, 4])
    """

    # (sub-modules that may be None, and a buffer: typed for the checker)
    temporal_convs: nn.ModuleList | None
    fuse: nn.Linear | None
    dropout: nn.Dropout | None
    alpha_fixed: torch.Tensor

    def __init__(
        self,
        num_instances: int,
        dim: int,
        *,
        node_dim: int = 32,
        alpha_init: float = 0.7,
        learn_alpha: bool = True,
        kernel_sizes: Sequence[int] | None = (1, 3, 5),
        dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dtype = check_parameter_dtype(dtype)
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.num_instances = check_positive_int("num_instances", num_instances)
        self.dim = check_positive_int("dim", dim)
        self.node_dim = check_positive_int("node_dim", node_dim)
        alpha = math.nan  # (a string, None or a bool is no number: the error below)
        if not isinstance(alpha_init, (bool, str)):
            with contextlib.suppress(TypeError, ValueError, RuntimeError):
                alpha = float(alpha_init)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"`alpha_init` must lie in [0, 1], got {alpha_init!r}.")
        alpha_init = alpha
        # (Checked with or without the multiscale stage it applies to.)
        dropout = check_unit_interval("dropout", dropout)
        kernel_sizes = _check_kernel_sizes(kernel_sizes)
        self.kernel_sizes = kernel_sizes

        self.node_src = nn.Parameter(torch.empty(num_instances, node_dim, **factory))
        self.node_dst = nn.Parameter(torch.empty(node_dim, num_instances, **factory))
        self.learn_alpha = check_bool("learn_alpha", learn_alpha)
        self.alpha_init = alpha_init
        if learn_alpha:
            theta = _alpha_logit(alpha_init).to(dtype or torch.get_default_dtype())
            self.alpha_logit = nn.Parameter(theta.to(device))
        else:
            self.register_buffer("alpha_fixed", torch.tensor(float(alpha_init), **factory))

        if kernel_sizes:
            self.temporal_convs = nn.ModuleList(
                nn.Conv1d(dim, dim, k, padding=k // 2, groups=dim, **factory) for k in kernel_sizes
            )
            self.fuse = nn.Linear(len(kernel_sizes) * dim, dim, **factory)
            self.dropout = nn.Dropout(dropout)
        else:
            self.temporal_convs = None
            self.fuse = None
            self.dropout = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise the parameters (node embeddings give unit-variance graph scores).

        :math:`\alpha` returns to ``alpha_init`` too, so a module built on ``meta`` and then
        given storage with ``to_empty`` is, after this call, the module ``__init__`` builds.
        """
        std = self.node_dim**-0.25
        nn.init.normal_(self.node_src, std=std)
        nn.init.normal_(self.node_dst, std=std)
        if self.temporal_convs is not None and self.fuse is not None:
            for conv in self.temporal_convs:
                conv.reset_parameters()  # type: ignore[operator]
            nn.init.zeros_(self.fuse.weight)
            nn.init.zeros_(self.fuse.bias)
        with torch.no_grad():  # (the values __init__ gave: copy_ rounds as .to(dtype) did)
            if self.learn_alpha:
                self.alpha_logit.copy_(_alpha_logit(self.alpha_init))
            else:
                self.alpha_fixed.fill_(self.alpha_init)

    __prepare_scriptable__ = torchscript_unsupported

    @property
    def alpha(self) -> torch.Tensor:
        """The effective mixing coefficient :math:`\\alpha \\in [0, 1]` of Eq. 2."""
        return torch.sigmoid(self.alpha_logit) if self.learn_alpha else self.alpha_fixed

    def adjacency(self, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The current adjacency of Eq. 1, ``(T, T)`` (or ``(B, T, T)`` given a padding mask)."""
        if padding_mask is not None:
            padding_mask = _check_any_batch_mask(padding_mask, self.num_instances)
            check_device("padding_mask", padding_mask, self.node_src.device, "GEIIM")
        return _instance_adjacency(self.node_src, self.node_dst, padding_mask)

    def forward(
        self,
        x: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        *,
        return_adjacency: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Propagate over the instance graph, then add multiscale temporal context.

        Args:
            x: Instance features.
            padding_mask: Optional, ``True`` marks padded instances.
            return_adjacency: Also return the adjacency used.

        Returns:
            The enhanced features, and the adjacency if ``return_adjacency``.
        """
        x = check_floating("x", x)
        check_ndim("x", x, 3, "(B, T, C)")
        check_bool("return_adjacency", return_adjacency)
        if x.shape[1] != self.num_instances or x.shape[2] != self.dim:
            raise ValueError(
                f"`x` must have shape (B, T, C)=(B, {self.num_instances}, {self.dim}) "
                f"(num_instances={self.num_instances}, dim={self.dim}), got {describe(x)}."
            )
        check_device("x", x, self.node_src.device, "GEIIM")
        if padding_mask is not None:
            padding_mask = _check_padding_mask(padding_mask, x.shape[0], self.num_instances)
            check_device("padding_mask", padding_mask, self.node_src.device, "GEIIM")
        check_finite_parameters(self)
        # Another floating dtype than the parameters' (float16/bfloat16 from an autocast
        # region, float64 data) is computed in the parameters' dtype, as autocast would.
        x = to_parameter_dtype(x, self.node_src)

        adjacency = _instance_adjacency(self.node_src, self.node_dst, padding_mask)
        # A padded slot may hold anything (torch.empty, a NaN sentinel), and its zero weight
        # times NaN or inf is NaN: it is zeroed before it can meet a real instance.
        real = x if padding_mask is None else x.masked_fill(padding_mask.unsqueeze(-1), 0)
        h = _graph_propagate(real, adjacency, self.alpha.to(x.dtype))
        if self.temporal_convs is not None:
            assert self.fuse is not None and self.dropout is not None  # (built together)
            inp = h if padding_mask is None else h.masked_fill(padding_mask.unsqueeze(-1), 0)
            seq = inp.transpose(1, 2)
            branches = torch.cat([F.gelu(conv(seq)) for conv in self.temporal_convs], dim=1)
            h = h + self.dropout(self.fuse(branches.transpose(1, 2)))
        if padding_mask is not None:
            h = torch.where(padding_mask.unsqueeze(-1), x, h)
        return (h, adjacency) if return_adjacency else h

    def extra_repr(self) -> str:
        """Options shown in ``repr()``."""
        return (
            f"num_instances={self.num_instances}, dim={self.dim}, node_dim={self.node_dim}, "
            f"learn_alpha={self.learn_alpha}, kernel_sizes={self.kernel_sizes}"
        )
