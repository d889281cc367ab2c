r"""Weighted Instance Aggregation Network (WIAN), MICACL Eq. 3, 5 and 6.

An LSTM whose candidate cell is scaled by a Dynamic Weight Gate (DWG) driven by an external
instance weight :math:`w_t` (from GEIIM, see :mod:`micacl_layers.instance_weights`):

- Eq. 3, the dynamic weight gate: :math:`d_t = \sigma(W_s x_t + U_s h_{t-1} + b_s) \cdot w_t`;
- the LSTM gates as usual: :math:`i_t, f_t, o_t = \sigma(\cdot)`,
  :math:`\tilde c_t = \tanh(W_c x_t + U_c h_{t-1} + b_c)`;
- Eq. 5, the weighted cell update: :math:`c_t = f_t \cdot c_{t-1} + i_t \cdot \tilde c_t \cdot d_t`;
- Eq. 6, the hidden state: :math:`h_t = o_t \cdot \tanh(c_t)`.

:func:`~micacl_layers.wian_cell.wian_cell` is one step and
:class:`~micacl_layers.wian_cell.WIANCell` the ``nn.LSTMCell`` drop-in
(:mod:`micacl_layers.wian_cell`); :class:`WIAN` is the ``nn.LSTM`` drop-in (constructor
arguments and defaults, ``forward(input, hx)``, parameter names, shapes, ``hx`` layout,
multi-layer and bidirectional semantics, unbatched inputs), with the instance weights as a
keyword argument; ``from_lstm`` starts from a trained LSTM. A layer over all time steps is
written here in plain autograd (:func:`_layer_reference`); a fused kernel with the same values
may replace it, as :mod:`micacl_layers.config` decides (see the "Internals" docs page).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from typing import Any, cast, overload

import torch
from torch import nn

from micacl_layers._fast import wian_layer as _fast
from micacl_layers._lstm_conversion import (
    check_lstm_like,
    copy_lstm_gates,
    refusing_lstm_checkpoints,
)
from micacl_layers._recurrent_checks import (
    check_dropout,
    check_input,
    check_state,
    check_weight,
    per_instance,
)
from micacl_layers._validation import (
    check_device,
    check_finite_parameters,
    check_floating,
    check_ndim,
    check_parameter_dtype,
    check_positive_int,
    describe,
    torchscript_unsupported,
)
from micacl_layers.wian_cell import _NUM_GATES, WIANCell, _init_uniform, _wian_cell, wian_cell

__all__ = ["WIAN", "WIANCell", "wian_cell"]


def _layer_reference(
    x: torch.Tensor,
    h0: torch.Tensor,
    c0: torch.Tensor,
    weight: torch.Tensor | None,
    params: Sequence[torch.Tensor | None],
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer, all directions at once, as plain autograd ops.

    ``x`` ``(T, B, I)`` is the layer input in time order, ``h0``, ``c0`` ``(D, B, H)``,
    ``weight`` ``(T, B, H)`` in time order or ``None``, ``params`` ``W_ih, W_hh, b_ih, b_hh``
    of each direction (biases may be ``None``), ``valid`` ``(T, B)`` bool in time order or
    ``None`` (every step is real): a step that is not valid (the padding behind a packed
    sequence) leaves the state as it was. Returns the output ``(T, B, D * H)`` in time order
    (unspecified at steps that are not valid), ``h_n`` and ``c_n`` ``(D, B, H)``.
    """
    dirs = len(params) // 4
    w_ih = torch.stack(params[0::4])  # type: ignore[arg-type]
    w_hh_t = torch.stack(params[1::4]).transpose(1, 2)  # type: ignore[arg-type]
    bias = None
    if params[2] is not None:  # (a layer has biases in every direction or in none)
        b_ih, b_hh = cast(list[torch.Tensor], params[2::4]), cast(list[torch.Tensor], params[3::4])
        bias = torch.stack([a + b for a, b in zip(b_ih, b_hh, strict=True)]).unsqueeze(1)
    # Each direction reads the sequence (and its instance weights) in its own order.
    reads = torch.stack([x, x.flip(0)]) if dirs == 2 else x.unsqueeze(0)
    if weight is not None:
        weight = torch.stack([weight, weight.flip(0)]) if dirs == 2 else weight.unsqueeze(0)
    _, steps, batch, _ = reads.shape
    flat = reads.reshape(dirs, steps * batch, reads.shape[-1])  # (explicit: batch may be 0)
    w_ih_t = w_ih.transpose(1, 2)
    # The input projection of every step (and direction) is one batched matmul.
    proj = torch.bmm(flat, w_ih_t) if bias is None else torch.baddbmm(bias, flat, w_ih_t)
    h, c = h0, c0
    outs = []
    # unbind, not proj[:, t]: one backward node for all steps instead of one zero-filled
    # full-size gradient per step.
    weights = weight.unbind(1) if weight is not None else [None] * steps
    keeps: Sequence[torch.Tensor | None] = [None] * steps
    if valid is not None:
        # The reverse direction reads a packed sequence's padding first: holding the state
        # there starts it at the sequence's last element, as nn.LSTM does.
        valid = torch.stack([valid, valid.flip(0)]) if dirs == 2 else valid.unsqueeze(0)
        keeps = valid.unsqueeze(-1).unbind(1)
    for p_t, w_t, keep in zip(
        proj.view(dirs, steps, batch, proj.shape[-1]).unbind(1), weights, keeps, strict=True
    ):
        h_t, c_t = _wian_cell(torch.baddbmm(p_t, h, w_hh_t), c, w_t)  # Eq. 3, 5, 6
        h, c = (h_t, c_t) if keep is None else (h_t.where(keep, h), c_t.where(keep, c))
        outs.append(h)
    seq = torch.stack(outs, dim=1)  # (D, T, B, H), each direction in its reading order
    out = torch.cat([seq[0], seq[1].flip(0)], dim=-1) if dirs == 2 else seq[0]
    return out, h, c


def _unpack(
    packed: nn.utils.rnn.PackedSequence,
    weights: object,
    input_size: int,
    hidden_size: int,
    batch_first: bool,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """A packed input (and its packed weights) padded in ``batch_first``'s layout, the lengths.

    Padded in the order the sequences were given in, as ``nn.LSTM`` takes ``hx`` and returns
    ``h_n`` for a packed input.
    """
    data = check_floating("input", packed.data)
    if data.dim() != 2 or data.shape[-1] != input_size:
        raise ValueError(
            f"`input` (a PackedSequence) must hold data of shape (N, I) with I={input_size}, "
            f"got data {describe(data)}."
        )
    check_device("input", data, device, "WIAN")  # (described as passed, not padded)
    padded, lengths = nn.utils.rnn.pad_packed_sequence(packed, batch_first=batch_first)
    if weights is None:
        return padded, None, lengths
    if not isinstance(weights, nn.utils.rnn.PackedSequence):
        raise TypeError(
            "`weights` must be a PackedSequence packed as `input` (a PackedSequence), or None, "
            f"got {describe(weights)}."
        )
    batch = int(packed.batch_sizes[0])
    if not (
        torch.equal(weights.batch_sizes, packed.batch_sizes)
        and torch.equal(_order(weights.sorted_indices, batch), _order(packed.sorted_indices, batch))
    ):
        raise ValueError(
            "`weights` must be packed as `input`: the same lengths in the same order "
            f"(batch_sizes {weights.batch_sizes.tolist()} for the input's "
            f"{packed.batch_sizes.tolist()}, sorted_indices {_listed(weights.sorted_indices)} "
            f"for the input's {_listed(packed.sorted_indices)})."
        )
    # Checked as packed: the padded (B, T, ...) tensor the later checks would describe is one
    # the caller never made.
    w_data = check_floating("weights", weights.data)
    if not (w_data.dim() == 1 or (w_data.dim() == 2 and w_data.shape[1] in (1, hidden_size))):
        raise ValueError(
            "`weights` (a PackedSequence) must hold data of shape (N,), (N, 1) or (N, H) with "
            f"H={hidden_size}, got data {describe(w_data)}."
        )
    check_device("weights", w_data, device, "WIAN")
    padded_weights = nn.utils.rnn.pad_packed_sequence(weights, batch_first=batch_first)[0]
    return padded, padded_weights, lengths


def _order(indices: torch.Tensor | None, batch: int) -> torch.Tensor:
    """``sorted_indices`` on the host, ``None`` (given sorted) as the identity it means."""
    # (pack_sequence(..., enforce_sorted=False) of sequences already sorted gives the identity,
    # with True None: the same packing.)
    return torch.arange(batch, device="cpu") if indices is None else indices.cpu()


def _listed(indices: torch.Tensor | None) -> object:
    return None if indices is None else indices.tolist()


def _repack(
    output: torch.Tensor, lengths: torch.Tensor, packed: nn.utils.rnn.PackedSequence
) -> nn.utils.rnn.PackedSequence:
    """The time-major padded ``output`` ``(T, B, F)``, in the given order, packed as ``packed``."""
    order = packed.sorted_indices
    if order is not None:  # (packed in the input's own order, ties among lengths included)
        output, lengths = output.index_select(1, order.to(output.device)), lengths[order.cpu()]
    data = nn.utils.rnn.pack_padded_sequence(output, lengths, enforce_sorted=True).data
    return nn.utils.rnn.PackedSequence(
        data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices
    )


class WIAN(nn.Module):
    r"""Weighted Instance Aggregation Network: a multi-layer, optionally bidirectional WIAN.

    A drop-in for ``nn.LSTM``: the same constructor arguments and defaults (``batch_first=False``),
    ``output, (h_n, c_n) = wian(input, hx)``, with the instance weights as the keyword
    ``weights``; parameters ``weight_ih_l{k}[_reverse]`` ``(5H, I_k)``,
    ``weight_hh_l{k}[_reverse]`` ``(5H, H)`` and biases ``(5H,)``; dropout on the outputs of every
    layer but the last; ``h_n``/``c_n`` of shape ``(D * num_layers, B, H)`` ordered layer-major,
    direction-minor. :meth:`from_lstm` starts from a trained ``nn.LSTM``. Not supported:
    ``proj_size > 0`` (a clear error).

    A ``PackedSequence`` input is read as ``nn.LSTM`` reads it: each sequence to its own length
    (the reverse direction starts at its last element), a ``PackedSequence`` output of the same
    structure, ``h_n``/``c_n`` at each sequence's last element, ``hx`` and ``h_n`` in the order
    the sequences were given in. Its instance weights are a ``PackedSequence`` packed the same
    way (the same lengths and order), of data ``(N,)``, ``(N, 1)`` or ``(N, H)``. Packed inputs
    run the plain autograd path: the fused kernel has no per-step mask. Under autocast they run
    in the dtype the kernel would have run in, where the switch enables it, with autocast off
    (so the output dtype is the one of an unpacked input).

    The instance weights :math:`w_t` (Eq. 3) scale every layer's dynamic gate at step ``t``; the
    reverse direction uses the weight of the instance it is reading, so an instance weighs the
    same in both directions.

    A wrong argument is a ``ValueError`` or ``TypeError`` that names it, before any arithmetic:
    where ``nn.LSTM`` raises a ``RuntimeError`` (an ``hx`` of the wrong shape, an input or ``hx``
    on another device than the parameters, a sequence of length 0), WIAN raises a
    ``ValueError``. Inputs and ``hx`` of another floating dtype than the parameters are computed
    in the parameters' dtype (``nn.LSTM`` raises).

    Under ``torch.autocast`` the fused kernel (where the :mod:`~micacl_layers.config` switch
    enables it for the parameters' device and dtype) runs in the parameters' dtype with autocast
    off inside it: float32 math for float32 parameters, one cast of the inputs, a float32
    output. With the switch ``"on"`` it runs in the autocast dtype instead (inputs and
    parameters cast once, an output in that dtype: faster where the CPU has bfloat16 products,
    with the cell state rounded to bfloat16). Otherwise the plain path runs with autocast's
    casts.

    Args:
        input_size: Features ``I`` per instance.
        hidden_size: Hidden size ``H`` (per direction).
        num_layers: Stacked layers.
        bias: Whether to use biases.
        batch_first: Inputs and outputs are ``(B, T, *)`` if ``True``, else ``(T, B, *)`` (the
            default, as ``nn.LSTM``).
        dropout: Dropout on each layer's output except the last, as ``nn.LSTM``.
        bidirectional: Run a reverse direction too; outputs concatenate ``[forward, reverse]``.
        proj_size: Must be 0 (accepted for ``nn.LSTM`` compatibility; WIAN has no projection).
        device: Parameter device.
        dtype: Parameter dtype.

    Shape:
        - input: :math:`(B, T, I)` if ``batch_first`` else :math:`(T, B, I)`; unbatched
          :math:`(T, I)`; or a ``PackedSequence`` of data :math:`(N, I)`
        - weights: :math:`(B, T)` (:math:`(T, B)` if not ``batch_first``, :math:`(T,)` unbatched):
          one weight per instance; or broadcastable to :math:`(B, T, H)` (:math:`(T, B, H)`),
          e.g. :math:`(B, T, 1)` or the per-channel :math:`(B, T, H)`; ``None`` means 1;
          with a packed input, a ``PackedSequence`` packed as it, of data :math:`(N,)`,
          :math:`(N, 1)` or :math:`(N, H)`
        - hx: ``(h_0, c_0)``, each :math:`(D \cdot L, B, H)` (unbatched :math:`(D \cdot L, H)`);
          zeros if ``None``
        - output: :math:`(B, T, D \cdot H)` (:math:`(T, B, D \cdot H)` if not ``batch_first``);
          h_n, c_n: :math:`(D \cdot L, B, H)`; with a packed input, a ``PackedSequence`` of
          data :math:`(N, D \cdot H)`

    Example:
        >>> wian = WIAN(16, 8, num_layers=2, batch_first=True, bidirectional=True)
        >>> out, (h_n, c_n) = wian(torch.randn(3, 4, 16), weights=torch.rand(3, 4))
        >>> out.shape, h_n.shape
        (torch.Size([3, 4, 16]), torch.Size([4, 3, 8]))
    """

    __prepare_scriptable__ = torchscript_unsupported
    _load_from_state_dict = refusing_lstm_checkpoints("WIAN.from_lstm(lstm)")

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory: dict[str, Any] = {"device": device, "dtype": check_parameter_dtype(dtype)}
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.num_layers = check_positive_int("num_layers", num_layers)
        if proj_size != 0:
            raise ValueError(
                f"`proj_size` must be 0: WIAN has no projection of the hidden "
                f"state (nn.LSTM's proj_size), got proj_size={proj_size!r}."
            )
        self.proj_size = 0
        self.dropout = check_dropout(dropout, self.num_layers)
        # As nn.LSTM: a non-bool bias (None, 0) would silently mean "no biases".
        for name, flag in (("bias", bias), ("batch_first", batch_first)):
            if not isinstance(flag, bool):
                raise TypeError(f"`{name}` must be a bool, got {flag!r}.")
        self.bias = bias
        self.batch_first = batch_first
        self.bidirectional = bool(bidirectional)
        self.num_directions = 2 if bidirectional else 1
        gates = _NUM_GATES * hidden_size
        for layer in range(num_layers):
            layer_in = input_size if layer == 0 else hidden_size * self.num_directions
            for suffix in self._suffixes():
                name = f"l{layer}{suffix}"
                setattr(
                    self, f"weight_ih_{name}", nn.Parameter(torch.empty(gates, layer_in, **factory))
                )
                setattr(
                    self,
                    f"weight_hh_{name}",
                    nn.Parameter(torch.empty(gates, hidden_size, **factory)),
                )
                if bias:
                    setattr(self, f"bias_ih_{name}", nn.Parameter(torch.empty(gates, **factory)))
                    setattr(self, f"bias_hh_{name}", nn.Parameter(torch.empty(gates, **factory)))
        self.reset_parameters()

    def _suffixes(self) -> tuple[str, ...]:
        return ("", "_reverse") if self.bidirectional else ("",)

    def reset_parameters(self) -> None:
        """Uniform in :math:`\\pm 1/\\sqrt{H}`, as ``nn.LSTM``."""
        _init_uniform(self, self.hidden_size)

    @property
    def _all_weights(self) -> list[list[str]]:
        """The parameter names of each layer and direction, as ``nn.LSTM._all_weights``.

        Private in torch, but read by code that walks an LSTM's weights by name (weight-drop
        wrappers, custom initialisers), so kept with the same names and order.
        """
        kinds = (
            ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            if self.bias
            else ("weight_ih", "weight_hh")
        )
        return [
            [f"{kind}_l{layer}{suffix}" for kind in kinds]
            for layer in range(self.num_layers)
            for suffix in self._suffixes()
        ]

    @property
    def _flat_weights_names(self) -> list[str]:
        """``_all_weights`` flattened, as ``nn.LSTM._flat_weights_names``."""
        return [name for group in self._all_weights for name in group]

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """The parameters of each layer and direction, as ``nn.LSTM.all_weights``.

        One list per layer and direction (layer-major, as ``h_n``): ``weight_ih``, ``weight_hh``
        and, with biases, ``bias_ih``, ``bias_hh``; code that walks them (say, to set the
        forget gate's bias rows ``H:2H``) reads the same gate layout as in ``nn.LSTM``.
        """
        return [[getattr(self, name) for name in group] for group in self._all_weights]

    def flatten_parameters(self) -> None:
        """Do nothing: there is no cuDNN weight buffer to compact.

        ``nn.LSTM.flatten_parameters`` packs the weights into one cuDNN buffer; WIAN's kernels
        read the parameters as they are, so code that calls it on every forward (common in DFER
        training code) runs unchanged.
        """

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM, *, gate_bias: float | None = None) -> WIAN:
        r"""A WIAN that computes what ``lstm`` computes, to start training from it.

        The four gates of every layer and direction are copied into the first ``4H`` rows (the
        same layout: input, forget, candidate, output). The dynamic weight gate gets zero weights
        and the bias ``gate_bias``, so :math:`\sigma(\cdot)` is exactly 1 and, with instance
        weights 1 (or ``None``), the output equals the LSTM's to rounding at conversion.
        ``num_layers``, ``batch_first``, ``dropout``, ``bidirectional``, the device, the dtype and
        the training mode are kept. The WIAN always has biases (a bias-free LSTM's gate biases
        start at zero, which adds nothing).

        Training from there: the instance weights act at once (they multiply the gate), but the
        gate's own parameters get gradients scaled by :math:`\sigma'(b) \approx e^{-b}`
        (:math:`1.5 \cdot 10^{-8}` at the float32 default), so the learned part of the gate moves
        very slowly. Pass a smaller ``gate_bias`` (say 3: :math:`\sigma = 0.95`) to let it learn
        sooner, at the price of an output that no longer equals the LSTM's.

        Args:
            lstm: The ``nn.LSTM`` to copy (``proj_size`` must be 0).
            gate_bias: The dynamic gate's bias. ``None``: the smallest integer with
                ``sigmoid(b) == 1.0`` exactly in the parameters' dtype, plus 1 as a margin for
                other devices' ``sigmoid``: 18 in float32 (17 saturates), 38 in float64 (37).

        Returns:
            A new ``WIAN``.

        Raises:
            TypeError: If ``lstm`` is not an ``nn.LSTM``.
            ValueError: If ``lstm.proj_size > 0``, or ``gate_bias`` is not a finite number
                in the parameters' dtype.

        Example:
            >>> lstm = nn.LSTM(4, 3, num_layers=2, bidirectional=True)
            >>> x = torch.randn(5, 2, 4)
            >>> out, _ = WIAN.from_lstm(lstm)(x)
            >>> bool(torch.allclose(out, lstm(x)[0], atol=1e-6))
            True
        """
        check_lstm_like("lstm", lstm, nn.LSTM)
        p = cast(torch.Tensor, lstm.weight_ih_l0)
        with warnings.catch_warnings():  # nn.LSTM warned about dropout with one layer already
            warnings.simplefilter("ignore", UserWarning)
            new = cls(
                lstm.input_size,
                lstm.hidden_size,
                lstm.num_layers,
                bias=True,
                batch_first=lstm.batch_first,
                dropout=lstm.dropout,
                bidirectional=lstm.bidirectional,
                device=p.device,
                dtype=p.dtype,
            )
        suffixes = [f"_l{layer}{s}" for layer in range(new.num_layers) for s in new._suffixes()]
        return cast(WIAN, copy_lstm_gates(new, lstm, suffixes, new.hidden_size, gate_bias))

    # As torch types nn.LSTM.forward: a tensor in gives a tensor out, a PackedSequence a
    # PackedSequence, so that a caller's type checker need not narrow a union.
    @overload
    def forward(
        self,
        input: torch.Tensor,
        hx: tuple[torch.Tensor, torch.Tensor] | list[torch.Tensor] | None = None,
        *,
        weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]: ...

    @overload
    def forward(
        self,
        input: nn.utils.rnn.PackedSequence,
        hx: tuple[torch.Tensor, torch.Tensor] | list[torch.Tensor] | None = None,
        *,
        weights: nn.utils.rnn.PackedSequence | None = None,
    ) -> tuple[nn.utils.rnn.PackedSequence, tuple[torch.Tensor, torch.Tensor]]: ...

    def forward(
        self,
        input: torch.Tensor | nn.utils.rnn.PackedSequence,
        hx: tuple[torch.Tensor, torch.Tensor] | list[torch.Tensor] | None = None,
        *,
        weights: torch.Tensor | nn.utils.rnn.PackedSequence | None = None,
    ) -> tuple[torch.Tensor | nn.utils.rnn.PackedSequence, tuple[torch.Tensor, torch.Tensor]]:
        """Run the recurrence over all instances.

        Args:
            input: Instance features, a tensor or a ``PackedSequence``.
            hx: Initial ``(h_0, c_0)`` (a tuple or list); zeros if ``None``.
            weights: Instance weights :math:`w_t` of Eq. 3 (a ``PackedSequence`` packed as
                ``input`` if it is one); ``None`` means 1.

        Returns:
            ``output, (h_n, c_n)`` exactly as ``nn.LSTM``.
        """
        parameter = cast(torch.Tensor, self.weight_ih_l0)
        dtype = parameter.dtype
        packed = input if isinstance(input, nn.utils.rnn.PackedSequence) else None
        lengths = None
        if packed is not None:
            input, weights, lengths = _unpack(
                packed,
                weights,
                self.input_size,
                self.hidden_size,
                self.batch_first,
                parameter.device,
            )
        x = check_input(input, parameter, "WIAN")
        check_finite_parameters(self)  # (with config.check_finite on, as every layer)
        layout = "(B, T, I)" if self.batch_first else "(T, B, I)"
        check_ndim("input", x, (2, 3), f"{layout} or unbatched (T, I)")
        given = cast("torch.Tensor | None", weights)  # (packed weights were unpacked above)
        if weights is not None:
            weights = per_instance(weights, "weights", x.dim())
        unbatched = x.dim() == 2
        batch_dim = 0 if self.batch_first else 1
        if unbatched:
            x = x.unsqueeze(batch_dim)
            if weights is not None and weights.dim() >= 2:
                weights = weights.unsqueeze(batch_dim)
        if x.shape[-1] != self.input_size:  # (errors describe the input as it was passed)
            where = "unbatched shape (T, I)" if unbatched else f"shape {layout}"
            raise ValueError(
                f"`input` must have {where} with I={self.input_size}, got {describe(input)}."
            )
        if not self.batch_first:
            x = x.transpose(0, 1)
        batch, steps, _ = x.shape
        if steps == 0:  # as nn.LSTM: h_n of no step at all would silently be h_0
            raise ValueError(
                f"`input` must have at least one time step (T >= 1), got {describe(input)}."
            )
        hidden, dirs = self.hidden_size, self.num_directions

        w = None
        if weights is not None:
            w_layout = "(B, T, H)" if self.batch_first else "(T, B, H)"
            target = (batch, steps, hidden) if self.batch_first else (steps, batch, hidden)
            per = "(B, T)" if self.batch_first else "(T, B)"
            if unbatched:  # (errors in the layout the caller used)
                w_layout, per = "(T, H)", "(T,)"
            w = check_weight(
                weights,
                target,
                "weights",
                w_layout,
                given=given,
                per_instance=per,
                unbatched_dim=batch_dim if unbatched else None,
            )
            check_device("weights", cast(torch.Tensor, given), parameter.device, "WIAN")
            w = w if w.dtype == dtype else w.to(dtype)
            # (T, B, H), time order: both directions weigh the instance they read.
            w = w.transpose(0, 1) if self.batch_first else w

        valid = None
        if lengths is not None:  # (T, B), time order: which steps of each sequence are real
            valid = torch.arange(steps, device=x.device).unsqueeze(1) < lengths.to(x.device)

        state_shape = (dirs * self.num_layers, batch, hidden)
        if hx is None:
            h0 = c0 = x.new_zeros(state_shape)
        else:
            h0, c0 = check_state(
                hx, state_shape, unbatched, 1, "(D*num_layers, B, H)", parameter, "WIAN"
            )

        # Under autocast the fused kernel may run with autocast off, in one dtype (see
        # _fast.dtype_under_autocast); everything is cast to it once.
        run_dtype = _fast.dtype_under_autocast(x.device, dtype)
        inside = (
            torch.autocast(x.device.type, enabled=False)
            if run_dtype is not None
            else contextlib.nullcontext()
        )
        if run_dtype is not None and run_dtype != dtype:
            x, h0, c0 = x.to(run_dtype), h0.to(run_dtype), c0.to(run_dtype)
            w = None if w is None else w.to(run_dtype)
        h_n, c_n = [], []
        layer_input = x.transpose(0, 1)  # time-major from here on: (T, B, I)
        with inside:
            for layer in range(self.num_layers):
                h = h0[layer * dirs : (layer + 1) * dirs]
                c = c0[layer * dirs : (layer + 1) * dirs]
                params = [
                    getattr(self, f"{kind}_l{layer}{suffix}", None)
                    for suffix in self._suffixes()
                    for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                ]
                if run_dtype is not None and run_dtype != dtype:
                    params = [None if p is None else p.to(run_dtype) for p in params]
                # (The fused kernel has no per-step mask: packed sequences take the plain path.)
                if valid is None and _fast.applies(layer_input, h, c, w, *params):
                    layer_input, h, c = _fast.wian_layer(
                        layer_input, h, c, w, hx is None, params, _layer_reference
                    )
                else:
                    layer_input, h, c = _layer_reference(layer_input, h, c, w, params, valid)
                if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                    layer_input = nn.functional.dropout(layer_input, p=self.dropout, training=True)
                h_n.append(h)
                c_n.append(c)
        h_n_t, c_n_t = torch.cat(h_n, dim=0), torch.cat(c_n, dim=0)
        if packed is not None:
            assert lengths is not None  # (unpacked with the input)
            return _repack(layer_input, lengths, packed), (h_n_t, c_n_t)
        layer_input = layer_input.transpose(0, 1)  # (B, T, D*H)

        output = layer_input if self.batch_first else layer_input.transpose(0, 1)
        if unbatched:
            output = output.squeeze(batch_dim)
            h_n_t, c_n_t = h_n_t.squeeze(1), c_n_t.squeeze(1)
        return output, (h_n_t, c_n_t)

    def extra_repr(self) -> str:
        """Options shown in ``repr()``."""
        # As nn.LSTM's: only the options that differ from the defaults.
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s
