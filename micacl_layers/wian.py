"""Weighted Instance Aggregation Network (WIAN), MICACL Eq. 3, 5 and 6.

An LSTM whose candidate cell is scaled by a Dynamic Weight Gate (DWG),
:math:`d_t = \\sigma(W_s x_t + U_s h_{t-1}) \\cdot w_t`, where :math:`w_t` is an external instance
weight (from GEIIM, see :mod:`micacl_layers.instance_weights`). The modules follow
``nn.LSTMCell`` / ``nn.LSTM`` conventions: parameter names, shapes, ``hx`` layout, ``batch_first``,
multi-layer and bidirectional semantics, unbatched inputs.

Speed: the five gates of a direction are one fused ``(5H, I)`` input matrix and one ``(5H, H)``
recurrent matrix. The input projection of every time step is one product per direction before
the time loop; both directions advance in the same loop step (every buffer keeps the reverse
direction in time order, so nothing is flipped or concatenated; one strided view per step
covers both directions' different times), each step costing one small product per direction
and a few element-wise ops written into preallocated buffers (``tanh`` is
computed as ``2 sigmoid(2x) - 1``, which is several times cheaper than ``torch.tanh`` on some
CPUs and equal to float32 rounding). The backward is written by hand (:class:`_WIANLayer`): the
local factor of every gate (what multiplies ``dL/dc_t`` or ``dL/dh_t``) is computed for all
steps at once, in place over the saved activations, so each step costs one small product per
direction and five in-place element-wise ops; the gradients of ``W_ih``, ``W_hh`` and the input
are then one product each over all steps. On CPU in float32 the products run through oneDNN
(as ``nn.LSTM`` does), elsewhere through batched matmuls. Under ``torch.compile``, autocast and
double backward the plain autograd formulation (:func:`_layer_reference`) runs instead; both
agree to float32 rounding (``tests/test_fast_paths.py``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from micacl_layers._linear import Products
from micacl_layers._validation import check_floating, check_ndim, check_positive_int, describe

__all__ = ["WIAN", "WIANCell", "wian_cell"]

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
    hidden = c_prev.shape[-1]
    act = torch.sigmoid(gates)
    i = act[..., :hidden]
    f = act[..., hidden:2 * hidden]
    o = act[..., 3 * hidden:4 * hidden]
    d = act[..., 4 * hidden:]
    candidate = torch.tanh(gates[..., 2 * hidden:3 * hidden])
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


def _check_weight(weight: torch.Tensor, target_shape: tuple[int, ...], name: str,
                  layout: str) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"`{name}` must be a tensor or None, got {type(weight).__name__}.")
    if not weight.is_floating_point():
        raise TypeError(f"`{name}` must be floating point, got {describe(weight)}.")
    try:
        return weight.broadcast_to(target_shape)
    except RuntimeError:
        raise ValueError(
            f"`{name}` must be broadcastable to {layout}={target_shape}, got {describe(weight)}."
        ) from None


def _layer_reference(
    x: torch.Tensor,
    w_ih: torch.Tensor,
    bias: torch.Tensor | None,
    h0: torch.Tensor,
    c0: torch.Tensor,
    w_hh: torch.Tensor,
    weight: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer, all directions at once, as plain autograd ops.

    ``x`` ``(T, B, I)`` is the layer input in time order, ``w_ih`` ``(D, 5H, I)``, ``bias``
    ``(D, 1, 5H)`` (``b_ih + b_hh``) or ``None``, ``h0``, ``c0`` ``(D, B, H)``, ``w_hh``
    ``(D, 5H, H)``, ``weight`` ``(T, B, H)`` in time order or ``None``. Returns the output
    ``(T, B, D * H)`` in time order, ``h_n`` and ``c_n`` ``(D, B, H)``. Used under
    ``torch.compile`` and autocast, and for double backward; :class:`_WIANLayer` computes the
    same values.
    """
    dirs = w_ih.shape[0]
    # Each direction reads the sequence (and its instance weights) in its own order.
    reads = torch.stack([x, x.flip(0)]) if dirs == 2 else x.unsqueeze(0)
    if weight is not None:
        weight = torch.stack([weight, weight.flip(0)]) if dirs == 2 else weight.unsqueeze(0)
    _, steps, batch, _ = reads.shape
    flat = reads.reshape(dirs, steps * batch, reads.shape[-1])  # (explicit: batch may be 0)
    w_ih_t = w_ih.transpose(1, 2)
    # The input projection of every step (and direction) is one batched matmul.
    proj = torch.bmm(flat, w_ih_t) if bias is None else torch.baddbmm(bias, flat, w_ih_t)
    w_hh_t = w_hh.transpose(1, 2)
    h, c = h0, c0
    outs = []
    # unbind, not proj[:, t]: one backward node for all steps instead of one zero-filled
    # full-size gradient per step.
    weights = weight.unbind(1) if weight is not None else [None] * steps
    for p_t, w_t in zip(proj.view(dirs, steps, batch, proj.shape[-1]).unbind(1), weights,
                        strict=True):
        h, c = wian_cell(torch.baddbmm(p_t, h, w_hh_t), c, w_t)
        outs.append(h)
    seq = torch.stack(outs, dim=1)  # (D, T, B, H), each direction in its reading order
    out = torch.cat([seq[0], seq[1].flip(0)], dim=-1) if dirs == 2 else seq[0]
    return out, h, c


def _weight_grad(grad: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """``grad^T @ inputs`` (the gradient of a weight ``(N, K)``): ``(rows, N)``, ``(rows, K)``."""
    return grad.t() @ inputs  # (here the default BLAS does as well as oneDNN)


def _summed_biases(params: tuple[torch.Tensor | None, ...]) -> torch.Tensor | None:
    """``b_ih + b_hh`` of every direction, ``(D, 5H)``, from ``(W_ih, W_hh, b_ih, b_hh, ...)``."""
    if params[2] is None:
        return None
    return torch.stack([b_ih + b_hh for b_ih, b_hh in zip(params[2::4], params[3::4],
                                                             strict=True)])


def _stacked(params: tuple[torch.Tensor | None, ...]
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-direction ``(W_ih, W_hh, b_ih, b_hh, ...)`` to :func:`_layer_reference`'s stacks."""
    bias = _summed_biases(params)
    return (torch.stack(params[0::4]), torch.stack(params[1::4]),
            None if bias is None else bias.unsqueeze(1))


def _step_pairs(buf: torch.Tensor, rows: list[tuple[int, ...]]) -> list[torch.Tensor]:
    """Both directions' rows of one loop step as one view, for every step.

    ``buf`` is ``(D, R, *rest)`` and contiguous; view ``j`` is ``(D, *rest)`` and holds row
    ``rows[j][k]`` of direction ``k``. Both directions of one loop step sit at different
    times (the reverse direction reads time ``T - 1 - t`` at step ``t``); one strided view lets
    a single element-wise op serve both.
    """
    if buf.shape[0] == 1:
        return [buf[:, r[0]] for r in rows]
    row = buf.stride(1)
    shape, strides = (2, *buf.shape[2:]), buf.stride()[2:]
    span, base = buf.shape[1], buf.storage_offset()
    return [buf.as_strided(shape, ((span + r1 - r0) * row, *strides), base + r0 * row)
            for r0, r1 in rows]


class _WIANLayer(torch.autograd.Function):
    """One WIAN layer (input projection and time loop) with a hand-written backward.

    The fast path of :class:`WIAN`, same values as :func:`_layer_reference` and the same
    inputs: ``x``, ``h0``, ``c0``, ``weight`` as there, ``zero_state`` (no ``hx`` given: ``h0``
    is all zeros, so the first step's recurrent product, which adds exactly nothing, is
    skipped), then the parameters ``W_ih, W_hh, b_ih, b_hh`` of each direction as they are (no
    stacked copies). Every buffer keeps both directions in time order (the reverse direction
    is not flipped), so the input projection reads ``x`` as it is, the input gradient is one
    sum of products, and the output is one copy; a loop step addresses the two directions'
    different times through :func:`_step_pairs`. The forward projects the inputs of every step
    at once, then writes each step into preallocated buffers and keeps what the backward
    needs; the backward turns the activations into per-gate factors for all steps at once,
    then runs one small product per direction and five in-place element-wise ops per step,
    and the gradients of ``W_hh``, ``W_ih`` and the input are one product each over all steps
    (autograd would accumulate ``W_hh``'s step by step).
    """

    @staticmethod
    def forward(ctx, x, h0, c0, weight, zero_state, *params):  # type: ignore[override]
        acts, flat, hs, cs, tanh_c, i_cand, d_all = _WIANLayer.run(x, h0, c0, weight,
                                                                   zero_state, params)
        ctx.zero_state = zero_state
        # The backward turns the activations into the gate gradients in place, so they are
        # handed over rather than saved; a second backward (retain_graph) recomputes them.
        ctx.acts = acts
        # flat: x as (T * B, I), contiguous (the products of the backward read it too).
        ctx.save_for_backward(x, flat, h0, c0, weight, hs, cs, tanh_c, i_cand, d_all, *params)
        dirs, steps = hs.shape[0], x.shape[0]
        out = hs.new_empty(steps, x.shape[1], dirs, hs.shape[-1])
        out.copy_(hs[:, 1:steps + 1].permute(1, 2, 0, 3))
        last = _step_rows(dirs, steps)[2][-1]  # each direction's state after its last step
        h_n = torch.stack([hs[k, r] for k, r in enumerate(last)])
        c_n = torch.stack([cs[k, r] for k, r in enumerate(last)])
        return out.view(steps, x.shape[1], dirs * hs.shape[-1]), h_n, c_n

    @staticmethod
    def run(x, h0, c0, weight, zero_state, params):
        """The forward pass: activations, ``x`` as ``(T * B, I)``, the states for the backward.

        The activations are ``(D, T, B, 5H)``; ``hs`` and ``cs`` are ``(D, T + 2, B, H)``: the
        state after time ``t`` sits at row ``t + 1``, the initial state of the forward direction
        at row 0 and of the reverse direction at row ``T + 1``. Every buffer is in time order.
        """
        steps, batch, _ = x.shape
        dirs = len(params) // 4
        w_ih, w_hh = list(params[0::4]), list(params[1::4])
        bias = _summed_biases(params)
        gates = w_ih[0].shape[0]
        hidden = gates // _NUM_GATES
        flat = x.reshape(steps * batch, x.shape[-1])  # (explicit: batch may be 0)
        # Per direction (no stacked copy), time order: (T, B, 5H) each.
        proj = [p.view(steps, batch, gates)
                for p in Products(w_ih).each(flat.expand(dirs, -1, -1), bias)]
        acts = x.new_empty(dirs, steps, batch, gates)  # activations; candidate slot: tanh
        hs = x.new_empty(dirs, steps + 2, batch, hidden)
        cs = x.new_empty(dirs, steps + 2, batch, hidden)
        tanh_c = x.new_empty(dirs, steps, batch, hidden)
        i_cand = x.new_empty(dirs, steps, batch, hidden)  # i * tanh(candidate)
        d_all = None if weight is None else x.new_empty(dirs, steps, batch, hidden)
        at, prev, new = _step_rows(dirs, steps)
        for k, r in enumerate(prev[0]):  # the state before the first step
            hs[k, r] = h0[k]
            cs[k, r] = c0[k]
        recurrent = Products(w_hh, pack_rows=batch)  # h @ W_hh^T + proj
        cand = slice(2 * hidden, 3 * hidden)
        # Per-step views, taken once (indexing inside the loop costs more than the small ops).
        act_t = _step_pairs(acts, at)
        gates_t = _step_pairs(acts.view(dirs, steps, batch, _NUM_GATES, hidden), at)
        h_prev_t, h_new_t = _step_pairs(hs, prev), _step_pairs(hs, new)
        c_prev_t, c_new_t = _step_pairs(cs, prev), _step_pairs(cs, new)
        tanh_t, i_cand_t = _step_pairs(tanh_c, at), _step_pairs(i_cand, at)
        d_t = None if d_all is None else _step_pairs(d_all, at)
        for t in range(steps):
            # h0 = 0 adds exactly nothing: the same values without the product.
            adds = [proj[k][r] for k, r in enumerate(at[t])]
            g = adds if zero_state and t == 0 else recurrent.each(h_prev_t[t], adds)
            for k in range(dirs):
                # tanh(x) = 2 sigmoid(2x) - 1: one sigmoid over all five gates. (torch.tanh
                # costs several sigmoids on some CPUs.) g may be proj's own rows: they are not
                # needed after this step.
                g[k][:, cand].mul_(2)
                torch.sigmoid(g[k], out=act_t[t][k])
            i, f, candidate, o, d = gates_t[t].unbind(-2)
            candidate.mul_(2).sub_(1)
            if weight is not None:
                for k, r in enumerate(at[t]):
                    torch.mul(d[k], weight[r], out=d_t[t][k])
                d = d_t[t]
            # c = f * c_prev + (i * candidate) * d, as wian_cell.
            c = torch.mul(f, c_prev_t[t], out=c_new_t[t])
            c.addcmul_(torch.mul(i, candidate, out=i_cand_t[t]), d)
            tanh = torch.mul(c, 2, out=tanh_t[t])
            torch.sigmoid(tanh, out=tanh).mul_(2).sub_(1)
            torch.mul(o, tanh, out=h_new_t[t])
        return acts, flat, hs, cs, tanh_c, i_cand, d_all

    @staticmethod
    def backward(ctx, grad_out, grad_h, grad_c):  # type: ignore[override]
        (x, flat_x, h0, c0, weight, hs, cs, tanh_c, i_cand, d_all, *params) = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph=True (double backward): differentiate the reference formulation.
            return _reference_backward(ctx, (x, h0, c0, weight, *params),
                                       (grad_out, grad_h, grad_c))
        needs = ctx.needs_input_grad
        steps, batch, _ = x.shape
        dirs = len(params) // 4
        gates = params[0].shape[0]
        hidden = gates // _NUM_GATES
        split = (dirs, steps, batch, _NUM_GATES, hidden)
        acts, ctx.acts = ctx.acts, None
        if acts is None:  # a second backward: the first consumed them
            acts = _WIANLayer.run(x, h0, c0, weight, ctx.zero_state, params)[0]
        at = _step_rows(dirs, steps)[0]
        i, f, candidate, o, s = acts.view(split).unbind(3)
        d = s if weight is None else d_all
        need_weight = weight is not None and needs[3]
        # dL/d(pre-activation) of each gate is a factor that depends only on the forward
        # values times dL/dc_t (input, forget, candidate, dynamic weight gate) or dL/dh_t
        # (output gate). The factors are computed here for all steps at once, into the
        # gradient buffer; the time loop below then only multiplies them in place.
        # Everything read from the activations is taken before they are overwritten.
        dh_dc = torch.addcmul(torch.ones_like(tanh_c), tanh_c, tanh_c, value=-1).mul_(o)
        f_raw = f.clone()  # the forget gate carries dL/dc back a step
        s_all = s.clone() if need_weight else None
        d_c = torch.addcmul(torch.ones_like(candidate), candidate, candidate, value=-1)
        d_c.mul_(i).mul_(d)  # tanh'(candidate) i d
        candidate.mul_(d)
        a5 = acts.view(split)
        for pair in (a5[:, :, :, 0:2], a5[:, :, :, 3:5]):  # sigmoid' = a (1 - a)
            pair.addcmul_(pair, pair, value=-1)
        g_i, g_f, g_c, g_o, g_s = a5.unbind(3)
        g_i.mul_(candidate)  # candidate * d
        g_c.copy_(d_c)
        for k in range(dirs):  # c_{t-1} of every step
            g_f[k].mul_(_state_rows(cs, k, 0, steps))
        g_o.mul_(tanh_c)
        g_s.mul_(i_cand)
        if weight is not None:
            g_s.mul_(weight)
        del d_c
        dc_all = torch.empty_like(tanh_c) if need_weight else None  # dL/dc_t, kept
        dh = torch.zeros_like(h0) if grad_h is None else grad_h.clone()
        dc = torch.zeros_like(c0) if grad_c is None else grad_c.clone()
        recurrent = Products([w.t() for w in params[1::4]])  # dgates @ W_hh
        # Per-step views, taken once.
        g5_t = _step_pairs(a5, at)
        dgates_t = _step_pairs(acts, at)
        f_t, dh_dc_t = _step_pairs(f_raw, at), _step_pairs(dh_dc, at)
        dc_t = None if dc_all is None else _step_pairs(dc_all, at)
        grad_out_t = None
        if grad_out is not None:
            grad_out_t = grad_out.reshape(steps, batch, dirs, hidden)
        for t in reversed(range(steps)):
            if grad_out_t is not None:
                for k, r in enumerate(at[t]):
                    dh[k].add_(grad_out_t[r, :, k])
            if t < steps - 1:
                dc.mul_(f_t[t + 1])  # dc_{t+1} -> its share in dc_t
            dc.addcmul_(dh, dh_dc_t[t])
            if dc_t is not None:
                dc_t[t].copy_(dc)
            g = g5_t[t]
            g[:, :, :3].mul_(dc.unsqueeze(2))  # input, forget, candidate
            g[:, :, 3].mul_(dh)  # output
            g[:, :, 4].mul_(dc)  # dynamic weight gate
            if t > 0 or needs[1]:
                dh = recurrent(dgates_t[t])
        dc.mul_(f_t[0])
        rows = steps * batch
        flat_grads = acts.view(dirs, rows, gates)
        d_x = None
        if needs[0]:  # both directions read the same x: one sum of products
            d_x = Products([w.t() for w in params[0::4]]).summed(flat_grads).view(x.shape)
        # sum_t dgates_t^T h_{t-1}: h_{-1} = 0 adds nothing.
        first = 1 if ctx.zero_state else 0
        n = (steps - first) * batch
        param_grads: list[torch.Tensor | None] = []
        for k in range(dirs):
            w_ih_i = 5 + 4 * k  # index of this direction's W_ih among the inputs
            d_w_ih = _weight_grad(flat_grads[k], flat_x) if needs[w_ih_i] else None
            d_w_hh = None
            if needs[w_ih_i + 1]:
                # The steps after the first in reading order: times first.. forward, ..T-1-first
                # backward.
                lo = first if k == 0 else 0
                d_w_hh = _weight_grad(acts[k, lo:lo + steps - first].reshape(n, gates),
                                      _state_rows(hs, k, lo, steps - first).reshape(n, hidden))
            d_b_ih = d_b_hh = None
            if needs[w_ih_i + 2] or needs[w_ih_i + 3]:
                d_b = flat_grads[k].sum(dim=0)
                d_b_ih = d_b if needs[w_ih_i + 2] else None
                # A tensor of its own: both could end up as .grad, and be changed in place.
                d_b_hh = (d_b.clone() if d_b_ih is not None else d_b) if needs[w_ih_i + 3] else None
            param_grads += [d_w_ih, d_w_hh, d_b_ih, d_b_hh]
        d_weight = None
        if need_weight:  # both directions' share, time by time
            d_weight = dc_all.mul_(i_cand).mul_(s_all).sum(dim=0)
        d_h0 = dh if needs[1] else None
        d_c0 = dc if needs[2] else None
        return (d_x, d_h0, d_c0, d_weight, None, *param_grads)


def _state_rows(states: torch.Tensor, k: int, start: int, count: int) -> torch.Tensor:
    """Direction ``k``'s states before times ``start .. start + count - 1``.

    ``states`` is ``hs`` or ``cs``, ``(D, T + 2, B, H)``.
    """
    lo = start if k == 0 else start + 2  # the reverse direction's previous state is after it
    return states[k, lo:lo + count]


def _step_rows(dirs: int, steps: int
               ) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]], list[tuple[int, ...]]]:
    """Per loop step ``t`` and direction: the row of the time it reads, of its old and new state.

    The first indexes the ``T``-row buffers, the other two ``hs`` and ``cs``. The forward
    direction reads time ``t``, the reverse one time ``T - 1 - t``.
    """
    at = [(t, steps - 1 - t)[:dirs] for t in range(steps)]
    prev = [(t, steps + 1 - t)[:dirs] for t in range(steps)]
    new = [(t + 1, steps - t)[:dirs] for t in range(steps)]
    return at, prev, new


def _reference_backward(ctx, inputs, grads):
    """Gradients of :func:`_layer_reference`, with a graph (for double backward).

    ``inputs`` are :class:`_WIANLayer`'s inputs without ``zero_state``.
    """
    reads, h0, c0, weight, *params = inputs
    with torch.enable_grad():
        w_ih, w_hh, bias = _stacked(tuple(params))
        outs = _layer_reference(reads, w_ih, bias, h0, c0, w_hh, weight)
    needs = [*ctx.needs_input_grad[:4], *ctx.needs_input_grad[5:]]
    wanted = [k for k, (t, need) in enumerate(zip(inputs, needs, strict=True))
              if need and t is not None]
    pairs = [(o, g) for o, g in zip(outs, grads, strict=True) if g is not None]
    found = torch.autograd.grad([o for o, _ in pairs], [inputs[k] for k in wanted],
                                [g for _, g in pairs], create_graph=True, allow_unused=True)
    result: list[torch.Tensor | None] = [None] * len(inputs)
    for k, g in zip(wanted, found, strict=True):
        result[k] = g
    return (*result[:4], None, *result[4:])


class WIANCell(nn.Module):
    r"""A single WIAN step, the ``nn.LSTMCell`` of MICACL's Weighted Instance Aggregation Network.

    Implements Eq. 3 (dynamic weight gate), Eq. 5 (weighted cell update) and Eq. 6 (hidden
    state) exactly; with :math:`w_t = 1` and the dynamic gate saturated at 1 it is ``nn.LSTMCell``.
    Parameters ``weight_ih`` ``(5H, I)``, ``weight_hh`` ``(5H, H)``, ``bias_ih``, ``bias_hh``
    ``(5H,)`` hold the gates in the order input, forget, candidate, output, dynamic weight; the
    first ``4H`` rows are laid out exactly as in ``nn.LSTMCell``.

    Args:
        input_size: Features ``I`` of :math:`x_t`.
        hidden_size: Features ``H`` of the hidden and cell states.
        bias: Whether to use the biases ``bias_ih`` and ``bias_hh``.
        device: Parameter device.
        dtype: Parameter dtype.

    Shape:
        - x: :math:`(B, I)` or unbatched :math:`(I,)`
        - hx: ``(h_0, c_0)``, each :math:`(B, H)` (or :math:`(H,)`); zeros if ``None``
        - weight: broadcastable to :math:`(B, H)`; ``None`` means 1
        - Output: ``(h_1, c_1)``, each :math:`(B, H)` (or :math:`(H,)`)

    Example:
        >>> cell = WIANCell(10, 20)
        >>> h, c = cell(torch.randn(3, 10), weight=torch.rand(3, 1))
        >>> h.shape
        torch.Size([3, 20])
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None
                 ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.bias = bias
        self.weight_ih = nn.Parameter(torch.empty(_NUM_GATES * hidden_size, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(_NUM_GATES * hidden_size, hidden_size,
                                                  **factory))
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

    def forward(
        self,
        x: torch.Tensor,
        hx: tuple[torch.Tensor, torch.Tensor] | None = None,
        weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Advance one step.

        Args:
            x: Input :math:`x_t`.
            hx: ``(h_{t-1}, c_{t-1})``; zeros if ``None``.
            weight: Instance weight :math:`w_t`; ``None`` means 1.

        Returns:
            ``(h_t, c_t)``.
        """
        x = check_floating("x", x)
        check_ndim("x", x, (1, 2), "(B, I) or (I,)")
        unbatched = x.dim() == 1
        if unbatched:
            x = x.unsqueeze(0)
        if x.shape[1] != self.input_size:
            raise ValueError(f"`x` must have shape (B, I) with I={self.input_size}, "
                             f"got {describe(x)}.")
        batch = x.shape[0]
        shape = (batch, self.hidden_size)
        if hx is None:
            h_prev = c_prev = x.new_zeros(shape)
        else:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError("`hx` must be a tuple (h_0, c_0) or None.")
            h_prev, c_prev = (t.unsqueeze(0) if unbatched else t for t in hx)
            for name, t in (("hx[0]", h_prev), ("hx[1]", c_prev)):
                if tuple(t.shape) != shape:
                    raise ValueError(f"`{name}` must have shape (B, H)={shape}, "
                                     f"got {describe(t)}.")
        if weight is not None:
            if unbatched and weight.dim() >= 1:
                weight = weight.unsqueeze(0) if weight.dim() == 1 else weight
            weight = _check_weight(weight, shape, "weight", "(B, H)")
        gates = x @ self.weight_ih.t() + h_prev @ self.weight_hh.t()
        if self.bias_ih is not None:
            gates = gates + (self.bias_ih + self.bias_hh)
        h, c = wian_cell(gates, c_prev, weight)
        if unbatched:
            return h.squeeze(0), c.squeeze(0)
        return h, c

    def extra_repr(self) -> str:
        """Options shown in ``repr()``."""
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias}"


class WIAN(nn.Module):
    r"""Weighted Instance Aggregation Network: a multi-layer, optionally bidirectional WIAN.

    ``nn.LSTM`` conventions throughout: ``output, (h_n, c_n) = wian(x, weights, hx)``, with
    parameters ``weight_ih_l{k}[_reverse]`` ``(5H, I_k)``, ``weight_hh_l{k}[_reverse]`` ``(5H, H)``
    and biases ``(5H,)``; dropout on the outputs of every layer but the last; ``h_n``/``c_n`` of
    shape ``(D * num_layers, B, H)`` ordered layer-major, direction-minor.

    The instance weights :math:`w_t` (Eq. 3) scale every layer's dynamic gate at step ``t``; the
    reverse direction uses the weight of the instance it is reading, so an instance weighs the
    same in both directions.

    Args:
        input_size: Features ``I`` per instance.
        hidden_size: Hidden size ``H`` (per direction).
        num_layers: Stacked layers.
        bias: Whether to use biases.
        batch_first: Inputs and outputs are ``(B, T, *)`` if ``True`` (the default here, as
            instance features usually are), else ``(T, B, *)``.
        dropout: Dropout on each layer's output except the last, as ``nn.LSTM``.
        bidirectional: Run a reverse direction too; outputs concatenate ``[forward, reverse]``.
        device: Parameter device.
        dtype: Parameter dtype.

    Shape:
        - x: :math:`(B, T, I)` if ``batch_first`` else :math:`(T, B, I)`; unbatched :math:`(T, I)`
        - weights: broadcastable to :math:`(B, T, H)` (:math:`(T, B, H)` if not ``batch_first``),
          e.g. :math:`(B, T, 1)`; ``None`` means 1
        - hx: ``(h_0, c_0)``, each :math:`(D \cdot L, B, H)`; zeros if ``None``
        - output: :math:`(B, T, D \cdot H)`; h_n, c_n: :math:`(D \cdot L, B, H)`

    Example:
        >>> wian = WIAN(16, 8, num_layers=2, bidirectional=True)
        >>> out, (h_n, c_n) = wian(torch.randn(3, 4, 16), weights=torch.rand(3, 4, 1))
        >>> out.shape, h_n.shape
        (torch.Size([3, 4, 16]), torch.Size([4, 3, 8]))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = True,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.num_layers = check_positive_int("num_layers", num_layers)
        if not 0.0 <= float(dropout) <= 1.0:
            raise ValueError(f"`dropout` must lie in [0, 1], got {dropout!r}.")
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.num_directions = 2 if bidirectional else 1
        gates = _NUM_GATES * hidden_size
        for layer in range(num_layers):
            layer_in = input_size if layer == 0 else hidden_size * self.num_directions
            for suffix in self._suffixes():
                name = f"l{layer}{suffix}"
                setattr(self, f"weight_ih_{name}",
                        nn.Parameter(torch.empty(gates, layer_in, **factory)))
                setattr(self, f"weight_hh_{name}",
                        nn.Parameter(torch.empty(gates, hidden_size, **factory)))
                if bias:
                    setattr(self, f"bias_ih_{name}", nn.Parameter(torch.empty(gates, **factory)))
                    setattr(self, f"bias_hh_{name}", nn.Parameter(torch.empty(gates, **factory)))
        self.reset_parameters()

    def _suffixes(self) -> tuple[str, ...]:
        return ("", "_reverse") if self.bidirectional else ("",)

    def reset_parameters(self) -> None:
        """Uniform in :math:`\\pm 1/\\sqrt{H}`, as ``nn.LSTM``."""
        _init_uniform(self, self.hidden_size)

    def _use_fast_path(self, *tensors: torch.Tensor | None) -> bool:
        # The hand-written backward is eager-only and assumes one dtype throughout; under
        # torch.compile (which fuses the reference loop itself) and autocast (whose per-op casts
        # it does not reproduce) the reference loop runs instead.
        if torch.jit.is_scripting() or torch.compiler.is_compiling():
            return False
        first = tensors[0]
        if torch.is_autocast_enabled(first.device.type):
            return False
        return all(t is None or t.dtype == first.dtype for t in tensors)

    def forward(
        self,
        x: torch.Tensor,
        weights: torch.Tensor | None = None,
        hx: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Run the recurrence over all instances.

        Args:
            x: Instance features.
            weights: Instance weights :math:`w_t` of Eq. 3; ``None`` means 1.
            hx: Initial ``(h_0, c_0)``; zeros if ``None``.

        Returns:
            ``output, (h_n, c_n)`` exactly as ``nn.LSTM``.
        """
        x = check_floating("x", x)
        layout = "(B, T, I)" if self.batch_first else "(T, B, I)"
        check_ndim("x", x, (2, 3), f"{layout} or unbatched (T, I)")
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(0 if self.batch_first else 1)
            if weights is not None and weights.dim() >= 2:
                weights = weights.unsqueeze(0 if self.batch_first else 1)
        if x.shape[-1] != self.input_size:
            raise ValueError(f"`x` must have shape {layout} with I={self.input_size}, "
                             f"got {describe(x)}.")
        if not self.batch_first:
            x = x.transpose(0, 1)
        batch, steps, _ = x.shape
        if steps == 0:  # as nn.LSTM: h_n of no step at all would silently be h_0
            raise ValueError(f"`x` must have at least one time step (T >= 1), "
                             f"got {describe(x)}.")
        hidden, dirs = self.hidden_size, self.num_directions

        w = None
        if weights is not None:
            w_layout = "(B, T, H)" if self.batch_first else "(T, B, H)"
            target = (batch, steps, hidden) if self.batch_first else (steps, batch, hidden)
            w = _check_weight(weights, target, "weights", w_layout)
            # (T, B, H), time order: both directions weigh the instance they read.
            w = w.transpose(0, 1) if self.batch_first else w

        state_shape = (dirs * self.num_layers, batch, hidden)
        if hx is None:
            h0 = c0 = x.new_zeros(state_shape)
        else:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError("`hx` must be a tuple (h_0, c_0) or None.")
            h0, c0 = (t.unsqueeze(1) if unbatched else t for t in hx)
            for name, t in (("hx[0]", h0), ("hx[1]", c0)):
                if tuple(t.shape) != state_shape:
                    raise ValueError(f"`{name}` must have shape (D*num_layers, B, H)="
                                     f"{state_shape}, got {describe(t)}.")

        h_n, c_n = [], []
        layer_input = x.transpose(0, 1)  # time-major from here on: (T, B, I)
        for layer in range(self.num_layers):
            h = h0[layer * dirs:(layer + 1) * dirs]
            c = c0[layer * dirs:(layer + 1) * dirs]
            params = [getattr(self, f"{kind}_l{layer}{suffix}", None)
                      for suffix in self._suffixes()
                      for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            if self._use_fast_path(layer_input, h, c, w, *params):
                layer_input, h, c = _WIANLayer.apply(layer_input, h, c, w, hx is None, *params)
            else:
                w_ih, w_hh, b = _stacked(tuple(params))
                layer_input, h, c = _layer_reference(layer_input, w_ih, b, h, c, w_hh, w)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = nn.functional.dropout(layer_input, p=self.dropout, training=True)
            h_n.append(h)
            c_n.append(c)
        layer_input = layer_input.transpose(0, 1)  # (B, T, D*H)

        output = layer_input if self.batch_first else layer_input.transpose(0, 1)
        h_n_t, c_n_t = torch.cat(h_n, dim=0), torch.cat(c_n, dim=0)
        if unbatched:
            output = output.squeeze(0 if self.batch_first else 1)
            h_n_t, c_n_t = h_n_t.squeeze(1), c_n_t.squeeze(1)
        return output, (h_n_t, c_n_t)

    def extra_repr(self) -> str:
        """Options shown in ``repr()``."""
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        s += f", batch_first={self.batch_first}"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s
