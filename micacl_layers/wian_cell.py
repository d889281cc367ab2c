r"""One WIAN step, MICACL Eq. 3, 5 and 6: :func:`wian_cell` and the ``nn.LSTMCell`` drop-in.

- Eq. 3, the dynamic weight gate: :math:`d_t = \sigma(W_s x_t + U_s h_{t-1} + b_s) \cdot w_t`;
- the LSTM gates as usual: :math:`i_t, f_t, o_t = \sigma(\cdot)`,
  :math:`\tilde c_t = \tanh(W_c x_t + U_c h_{t-1} + b_c)`;
- Eq. 5, the weighted cell update: :math:`c_t = f_t \cdot c_{t-1} + i_t \cdot \tilde c_t \cdot d_t`;
- Eq. 6, the hidden state: :math:`h_t = o_t \cdot \tanh(c_t)`.

The layer over all time steps, :class:`~micacl_layers.wian.WIAN`, is in :mod:`micacl_layers.wian`.
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
from torch import nn

from micacl_layers._lstm_conversion import (
    check_lstm_like,
    copy_lstm_gates,
    refusing_lstm_checkpoints,
)
from micacl_layers._recurrent_checks import check_input, check_state, check_weight, per_instance
from micacl_layers._validation import (
    check_device,
    check_device_of,
    check_finite_parameters,
    check_floating,
    check_ndim,
    check_parameter_dtype,
    check_positive_int,
    describe,
    torchscript_unsupported,
)

__all__ = ["WIANCell", "wian_cell"]

_NUM_GATES = 5  # input, forget, candidate, output (nn.LSTM order), then the dynamic weight gate


def wian_cell(
    gates: torch.Tensor,
    c_prev: torch.Tensor,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""One WIAN step from pre-activation gates (Eq. 3, 5, 6).

    .. math::
        d_t = \sigma(s_t) \cdot w_t, \quad
        c_t = f_t \cdot c_{t-1} + i_t \cdot \tilde c_t \cdot d_t, \quad
        h_t = o_t \cdot \tanh(c_t)

    Args:
        gates: Pre-activations ``W x_t + U h_{t-1} + b`` of the five gates, concatenated in the
            order input, forget, candidate, output (as ``nn.LSTM``), dynamic weight gate.
        c_prev: Previous cell state :math:`c_{t-1}`.
        weight: Instance weight :math:`w_t`, broadcastable to ``c_prev``; ``None`` means 1.

    Returns:
        ``(h_t, c_t)``.

    Shape:
        - gates: :math:`(*, 5H)`
        - c_prev: :math:`(*, H)`
        - weight: broadcastable to :math:`(*, H)`
        - Output: two tensors of shape :math:`(*, H)`

    Example:
        >>> h, c = wian_cell(torch.randn(3, 5 * 8), torch.zeros(3, 8))
        >>> h.shape, c.shape
        (torch.Size([3, 8]), torch.Size([3, 8]))
    """
    gates = check_floating("gates", gates)
    c_prev = check_floating("c_prev", c_prev)
    if (
        c_prev.dim() == 0
        or gates.shape[:-1] != c_prev.shape[:-1]
        or gates.shape[-1] != _NUM_GATES * c_prev.shape[-1]
    ):
        raise ValueError(
            f"`gates` must have shape (*, 5H) for `c_prev` of shape (*, H), got "
            f"gates {describe(gates)} and c_prev {describe(c_prev)}."
        )
    check_device_of("c_prev", c_prev, "gates", gates.device)
    if weight is not None:
        weight = check_weight(weight, tuple(c_prev.shape), "weight", "(*, H)")
        check_device_of("weight", weight, "gates", gates.device)
    return _wian_cell(gates, c_prev, weight)


def _wian_cell(
    gates: torch.Tensor, c_prev: torch.Tensor, weight: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`wian_cell` on checked inputs (Eq. 3, 5, 6)."""
    hidden = c_prev.shape[-1]
    act = torch.sigmoid(gates)
    i = act[..., :hidden]
    f = act[..., hidden : 2 * hidden]
    o = act[..., 3 * hidden : 4 * hidden]
    d = act[..., 4 * hidden :]
    candidate = torch.tanh(gates[..., 2 * hidden : 3 * hidden])
    if weight is not None:
        d = d * weight
    c = f * c_prev + i * candidate * d
    h = o * torch.tanh(c)
    return h, c


def _init_uniform(module: nn.Module, hidden_size: int) -> None:
    # nn.LSTM's initialisation, so a WIAN is a drop-in replacement at step zero.
    bound = 1.0 / math.sqrt(hidden_size)
    for p in module.parameters():
        nn.init.uniform_(p, -bound, bound)


class WIANCell(nn.Module):
    r"""A single WIAN step, the ``nn.LSTMCell`` of MICACL's Weighted Instance Aggregation Network.

    Implements Eq. 3 (dynamic weight gate), Eq. 5 (weighted cell update) and Eq. 6 (hidden
    state) exactly; with :math:`w_t = 1` and the dynamic gate saturated at 1 it is ``nn.LSTMCell``.
    Parameters ``weight_ih`` ``(5H, I)``, ``weight_hh`` ``(5H, H)``, ``bias_ih``, ``bias_hh``
    ``(5H,)`` hold the gates in the order input, forget, candidate, output, dynamic weight; the
    first ``4H`` rows are laid out exactly as in ``nn.LSTMCell``.

    The constructor and ``forward(input, hx)`` are those of ``nn.LSTMCell``, so replacing the
    class name in working code is correct; the instance weight is the keyword ``weight``.
    :meth:`from_lstm_cell` starts from a trained ``nn.LSTMCell``. An input (or ``hx``) of another
    floating dtype than the parameters is computed in the parameters' dtype.

    Args:
        input_size: Features ``I`` of :math:`x_t`.
        hidden_size: Features ``H`` of the hidden and cell states.
        bias: Whether to use the biases ``bias_ih`` and ``bias_hh``.
        device: Parameter device.
        dtype: Parameter dtype.

    Shape:
        - input: :math:`(B, I)` or unbatched :math:`(I,)`
        - hx: ``(h_0, c_0)``, each :math:`(B, H)` (or :math:`(H,)`); zeros if ``None``
        - weight: :math:`(B,)` (one per sample) or broadcastable to :math:`(B, H)`; ``None``
          means 1
        - Output: ``(h_1, c_1)``, each :math:`(B, H)` (or :math:`(H,)`)

    Example:
        >>> cell = WIANCell(10, 20)
        >>> h, c = cell(torch.randn(3, 10), weight=torch.rand(3))
        >>> h.shape
        torch.Size([3, 20])
    """

    __prepare_scriptable__ = torchscript_unsupported
    _load_from_state_dict = refusing_lstm_checkpoints("WIANCell.from_lstm_cell(cell)")

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory: dict[str, Any] = {"device": device, "dtype": check_parameter_dtype(dtype)}
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.bias = bias
        self.weight_ih = nn.Parameter(torch.empty(_NUM_GATES * hidden_size, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(_NUM_GATES * hidden_size, hidden_size, **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(_NUM_GATES * hidden_size, **factory))
            self.bias_hh = nn.Parameter(torch.empty(_NUM_GATES * hidden_size, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform in :math:`\\pm 1/\\sqrt{H}`, as ``nn.LSTMCell``."""
        _init_uniform(self, self.hidden_size)

    @classmethod
    def from_lstm_cell(cls, cell: nn.LSTMCell, *, gate_bias: float | None = None) -> WIANCell:
        r"""A WIANCell that computes what ``cell`` computes, to start training from it.

        The four LSTM gates are copied into the first ``4H`` rows. The dynamic weight gate gets
        zero weights and the bias ``gate_bias``, so :math:`\sigma(\cdot) = 1` exactly and, with
        instance weight 1, the output equals the LSTM's to rounding. The cell always has biases
        (a bias-free LSTM's gate biases start at zero).

        Args:
            cell: The ``nn.LSTMCell`` to copy; its device and dtype are kept.
            gate_bias: The dynamic gate's bias. ``None``: the smallest saturating value (plus 1)
                in the parameters' dtype, 18 in float32 and 38 in float64. See
                :meth:`WIAN.from_lstm` for what that means for training.

        Returns:
            A new ``WIANCell``, in ``cell``'s training mode.

        Raises:
            TypeError: If ``cell`` is not an ``nn.LSTMCell``.
            ValueError: If ``gate_bias`` is not a finite number in the parameters' dtype.

        Example:
            >>> lstm_cell = nn.LSTMCell(4, 3)
            >>> x = torch.randn(2, 4)
            >>> h, _ = WIANCell.from_lstm_cell(lstm_cell)(x)
            >>> bool(torch.allclose(h, lstm_cell(x)[0], atol=1e-6))
            True
        """
        check_lstm_like("cell", cell, nn.LSTMCell)
        p = cell.weight_ih
        new = cls(cell.input_size, cell.hidden_size, bias=True, device=p.device, dtype=p.dtype)
        return cast(WIANCell, copy_lstm_gates(new, cell, ("",), cell.hidden_size, gate_bias))

    def forward(
        self,
        input: torch.Tensor,
        hx: tuple[torch.Tensor, torch.Tensor] | list[torch.Tensor] | None = None,
        *,
        weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Advance one step.

        Args:
            input: Input :math:`x_t`.
            hx: ``(h_{t-1}, c_{t-1})`` (a tuple or list); zeros if ``None``.
            weight: Instance weight :math:`w_t`; ``None`` means 1.

        Returns:
            ``(h_t, c_t)``.
        """
        dtype = self.weight_ih.dtype
        x = check_input(input, self.weight_ih, "WIANCell")
        check_finite_parameters(self)  # (with config.check_finite on, as every layer)
        check_ndim("input", x, (1, 2), "(B, I) or (I,)")
        unbatched = x.dim() == 1
        given = weight
        if weight is not None:
            weight = per_instance(weight, "weight", x.dim())
        if unbatched:
            x = x.unsqueeze(0)
        if x.shape[1] != self.input_size:  # (the error describes the input as it was passed)
            where = "unbatched shape (I,)" if unbatched else "shape (B, I)"
            raise ValueError(
                f"`input` must have {where} with I={self.input_size}, got {describe(input)}."
            )
        batch = x.shape[0]
        shape = (batch, self.hidden_size)
        if hx is None:
            h_prev = c_prev = x.new_zeros(shape)
        else:
            h_prev, c_prev = check_state(
                hx, shape, unbatched, 0, "(B, H)", self.weight_ih, "WIANCell"
            )
        if weight is not None:
            if unbatched and weight.dim() == 1:
                weight = weight.unsqueeze(0)
            weight = check_weight(
                weight,
                shape,
                "weight",
                "(H,)" if unbatched else "(B, H)",
                given=given,
                per_instance="()" if unbatched else "(B,)",
                unbatched_dim=0 if unbatched else None,
            )
            check_device("weight", cast(torch.Tensor, given), self.weight_ih.device, "WIANCell")
            weight = weight if weight.dtype == dtype else weight.to(dtype)
        gates = x @ self.weight_ih.t() + h_prev @ self.weight_hh.t()
        if self.bias_ih is not None:
            gates = gates + (self.bias_ih + self.bias_hh)
        h, c = _wian_cell(gates, c_prev, weight)
        if unbatched:
            return h.squeeze(0), c.squeeze(0)
        return h, c

    def extra_repr(self) -> str:
        """Options shown in ``repr()``."""
        # As nn.LSTMCell's: the bias only when it is not the default.
        s = f"{self.input_size}, {self.hidden_size}"
        return s if self.bias is True else f"{s}, bias={self.bias}"
