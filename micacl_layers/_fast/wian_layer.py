"""WIAN's fused layer with a hand-written backward (private).

The fast path of one :class:`micacl_layers.WIAN` layer; the switch in
:mod:`micacl_layers.config` decides when it runs (kernel ``"wian"``). It computes the same values
as the plain formulation (:func:`micacl_layers.wian._layer_reference`), which it takes as an
argument and differentiates for a double backward.

The five gates of a direction are one fused ``(5H, I)`` input matrix and one ``(5H, H)``
recurrent matrix. The input projection of every time step is one product per direction before
the time loop; both directions advance in the same loop step (every buffer keeps the reverse
direction in time order, so nothing is flipped or concatenated; one strided view per step
covers both directions' different times), each step costing one small product per direction
and a few element-wise ops written into preallocated buffers (``tanh`` is computed as
``2 sigmoid(2x) - 1``, which is several times cheaper than ``torch.tanh`` on some CPUs and equal
to float32 rounding). The backward computes the local factor of every gate for all steps at
once, in place over the saved activations, so each step costs one small product per direction
and five in-place element-wise ops; the gradients of ``W_ih``, ``W_hh`` and the input are then
one product each over all steps. With the switch ``"on"`` the products run through oneDNN on
CPU float32 (:mod:`micacl_layers._fast.onednn`), otherwise through public batched matmuls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch

from micacl_layers import config
from micacl_layers._fast.onednn import Products, differentiate_reference, dual

__all__: list[str] = []

_NUM_GATES = 5  # input, forget, candidate, output (nn.LSTM order), then the dynamic weight gate

Params = Sequence[torch.Tensor | None]
Reference = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def applies(*tensors: torch.Tensor | None) -> bool:
    """Whether :func:`wian_layer` may run for a layer's inputs and parameters.

    The hand-written backward is eager-only and assumes one dtype throughout: not under
    TorchScript or autocast (whose per-op casts it does not reproduce; WIAN turns autocast off
    around it where :func:`dtype_under_autocast` says so), nor for mixed dtypes, nor for
    forward-mode AD (it has no ``jvp``; the plain path has).
    """
    first = tensors[0]
    assert first is not None
    if first.device.type == "meta":  # nothing to compute (and no autocast): the plain path
        return False
    if torch.jit.is_scripting() or torch.is_autocast_enabled(first.device.type):
        return False
    if not all(t is None or t.dtype == first.dtype for t in tensors):
        return False
    if dual(*tensors):
        return False
    return config.enabled("wian", first.device, first.dtype)


def dtype_under_autocast(device: torch.device, dtype: torch.dtype) -> torch.dtype | None:
    """Under autocast: the dtype WIAN should run the fused kernel in, autocast off, or ``None``.

    ``dtype`` is the parameters' dtype. Where the switch enables the kernel for the autocast
    dtype (``"on"`` only: it was not measured to pay in ``"auto"``, and its cell state then
    rounds to that dtype), the inputs and parameters are cast to it once and the kernel runs in
    it, as fast as the low-precision products allow. Otherwise, where the switch enables the
    kernel for ``dtype`` (CPU float32 in ``"auto"``), it runs in ``dtype``: float32 master math,
    the inputs cast once. ``None`` (no autocast, or no kernel enabled): the plain path, with
    autocast's per-op casts. Then :func:`applies` sees no autocast and the dtypes agree.
    """
    if device.type == "meta" or torch.jit.is_scripting():
        return None
    if not torch.is_autocast_enabled(device.type):
        return None
    low = torch.get_autocast_dtype(device.type)
    if config.get_fast_paths() == "on" and config.enabled("wian", device, low):
        return low
    return dtype if config.enabled("wian", device, dtype) else None


def wian_layer(
    x: torch.Tensor,
    h0: torch.Tensor,
    c0: torch.Tensor,
    weight: torch.Tensor | None,
    zero_state: bool,
    params: Params,
    reference: Reference,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer: :class:`_WIANLayer` with the arguments of the plain formulation.

    ``zero_state``: ``h0`` is known to be all zeros (no ``hx`` given).
    """
    return _WIANLayer.apply(x, h0, c0, weight, zero_state, reference, *params)


def _weight_grad(grad: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """``grad^T @ inputs`` (the gradient of a weight ``(N, K)``): ``(rows, N)``, ``(rows, K)``."""
    return grad.t() @ inputs  # (here the default BLAS does as well as oneDNN)


def _summed_biases(params: Params) -> torch.Tensor | None:
    """``b_ih + b_hh`` of every direction, ``(D, 5H)``, from ``(W_ih, W_hh, b_ih, b_hh, ...)``."""
    if params[2] is None:
        return None
    # A layer has biases in every direction or in none.
    b_ih, b_hh = cast(list[torch.Tensor], params[2::4]), cast(list[torch.Tensor], params[3::4])
    return torch.stack([a + b for a, b in zip(b_ih, b_hh, strict=True)])


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
    return [
        buf.as_strided(shape, ((span + r1 - r0) * row, *strides), base + r0 * row)
        for r0, r1 in rows
    ]


class _WIANLayer(torch.autograd.Function):
    """One WIAN layer (input projection and time loop) with a hand-written backward.

    The same values as the plain formulation and the same inputs: ``x``, ``h0``, ``c0``, ``weight``
    as there, ``zero_state`` (no ``hx`` given: ``h0`` is all zeros, so the first step's recurrent
    product, which adds nothing but the NaN of a non-finite ``W_hh``, is skipped), ``reference``
    (the plain formulation, for a double backward), then the parameters ``W_ih, W_hh, b_ih, b_hh``
    of each direction as they are (no stacked copies). Every buffer keeps both directions in time
    order (the reverse direction is not flipped), so the input projection reads ``x`` as it is, the
    input gradient is one sum of products, and the output is one copy; a loop step addresses the two
    directions' different times through :func:`_step_pairs`. The forward projects the inputs of
    every step at once, then writes each step into preallocated buffers and keeps what the backward
    needs; the backward turns the activations into per-gate factors for all steps at once, then runs
    one small product per direction and five in-place element-wise ops per step, and the gradients
    of ``W_hh``, ``W_ih`` and the input are one product each over all steps (autograd would
    accumulate ``W_hh``'s step by step).
    """

    @staticmethod
    def forward(ctx, x, h0, c0, weight, zero_state, reference, *params):
        ctx.reference = reference
        acts, flat, hs, cs, tanh_c, i_cand, d_all = _WIANLayer.run(
            x, h0, c0, weight, zero_state, params
        )
        ctx.zero_state = zero_state
        # The backward turns the activations into the gate gradients in place, so they are
        # handed over rather than saved; a second backward (retain_graph) recomputes them.
        ctx.acts = acts
        # flat: x as (T * B, I), contiguous (the products of the backward read it too).
        ctx.save_for_backward(x, flat, h0, c0, weight, hs, cs, tanh_c, i_cand, d_all, *params)
        dirs, steps = hs.shape[0], x.shape[0]
        # Returned as a tensor of its own, not a view: autograd refuses in-place changes to an
        # output of a Function that is a view (the plain path's output allows them).
        out = hs.new_empty(steps, x.shape[1], dirs * hs.shape[-1])
        out.view(steps, x.shape[1], dirs, hs.shape[-1]).copy_(
            hs[:, 1 : steps + 1].permute(1, 2, 0, 3)
        )
        last = _step_rows(dirs, steps)[2][-1]  # each direction's state after its last step
        h_n = torch.stack([hs[k, r] for k, r in enumerate(last)])
        c_n = torch.stack([cs[k, r] for k, r in enumerate(last)])
        return out, h_n, c_n

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
        proj = [
            p.view(steps, batch, gates)
            for p in Products(w_ih).each(flat.expand(dirs, -1, -1), bias)
        ]
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
        first_product = None
        if zero_state:
            # h_0 = 0: the first step's product is skipped. Its entries are 0 but NaN in the
            # rows of W_hh with an inf or NaN (0 * inf is NaN), as the plain path's product.
            first_product = [_zero_times(w, dim=1) for w in w_hh]
        cand = slice(2 * hidden, 3 * hidden)
        # Per-step views, taken once (indexing inside the loop costs more than the small ops).
        act_t = _step_pairs(acts, at)
        gates_t = _step_pairs(acts.view(dirs, steps, batch, _NUM_GATES, hidden), at)
        h_prev_t, h_new_t = _step_pairs(hs, prev), _step_pairs(hs, new)
        c_prev_t, c_new_t = _step_pairs(cs, prev), _step_pairs(cs, new)
        tanh_t, i_cand_t = _step_pairs(tanh_c, at), _step_pairs(i_cand, at)
        d_t = None if d_all is None else _step_pairs(d_all, at)
        for t in range(steps):
            # h0 = 0 adds nothing but NaN (first_product): the same values without the product.
            adds = [proj[k][r] for k, r in enumerate(at[t])]
            if first_product is not None and t == 0:
                g = [a.add_(p) for a, p in zip(adds, first_product, strict=True)]
            else:
                g = recurrent.each(h_prev_t[t], adds)
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
    def backward(ctx, grad_out, grad_h, grad_c):
        # Unpacked once: non-reentrant activation checkpointing refuses a second unpack.
        saved = ctx.saved_tensors
        device = saved[0].device.type
        # The backward runs in the thread that called .backward(), under its autocast state;
        # the forward ran with autocast off (see dtype_under_autocast), so must this.
        if torch.is_autocast_enabled(device):
            with torch.autocast(device, enabled=False):
                return _WIANLayer._backward(ctx, saved, grad_out, grad_h, grad_c)
        return _WIANLayer._backward(ctx, saved, grad_out, grad_h, grad_c)

    @staticmethod
    def _backward(ctx, saved, grad_out, grad_h, grad_c):
        (x, flat_x, h0, c0, weight, hs, cs, tanh_c, i_cand, d_all, *params) = saved
        if differentiate_reference(grad_out, grad_h, grad_c):
            # create_graph=True (double backward) or batched gradients: differentiate the
            # reference formulation.
            return _reference_backward(
                ctx, (x, h0, c0, weight, *params), (grad_out, grad_h, grad_c)
            )
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
        # sum_t dgates_t^T h_{t-1}: h_{-1} = 0 adds nothing but NaN (added below).
        first = 1 if ctx.zero_state else 0
        n = (steps - first) * batch
        param_grads: list[torch.Tensor | None] = []
        for k in range(dirs):
            w_ih_i = 6 + 4 * k  # index of this direction's W_ih among the inputs
            d_w_ih = _weight_grad(flat_grads[k], flat_x) if needs[w_ih_i] else None
            d_w_hh = None
            if needs[w_ih_i + 1]:
                # The steps after the first in reading order: times first.. forward, ..T-1-first
                # backward.
                lo = first if k == 0 else 0
                d_w_hh = _weight_grad(
                    acts[k, lo : lo + steps - first].reshape(n, gates),
                    _state_rows(hs, k, lo, steps - first).reshape(n, hidden),
                )
                if ctx.zero_state and batch > 0:  # the first step's dgates^T h_0: 0, or NaN
                    d_w_hh.add_(_zero_times(acts[k, at[0][k]], dim=0).unsqueeze(1))
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
        return (d_x, d_h0, d_c0, d_weight, None, None, *param_grads)


def _zero_times(m: torch.Tensor, dim: int) -> torch.Tensor:
    """A product of ``m`` with zeros, contracting ``dim``, without the product.

    0, or NaN where that line of ``m`` holds an inf or NaN (``0 * inf`` is NaN), as the product.
    """
    return torch.linalg.vector_norm(m, float("inf"), dim=dim).mul_(0)


def _state_rows(states: torch.Tensor, k: int, start: int, count: int) -> torch.Tensor:
    """Direction ``k``'s states before times ``start .. start + count - 1``.

    ``states`` is ``hs`` or ``cs``, ``(D, T + 2, B, H)``.
    """
    lo = start if k == 0 else start + 2  # the reverse direction's previous state is after it
    return states[k, lo : lo + count]


def _step_rows(
    dirs: int, steps: int
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
    """Gradients of the plain formulation, with a graph (for double backward).

    ``inputs`` are :class:`_WIANLayer`'s inputs without ``zero_state`` and ``reference``.
    """
    reads, h0, c0, weight, *params = inputs
    with torch.enable_grad():
        outs = ctx.reference(reads, h0, c0, weight, params)
    needs = [*ctx.needs_input_grad[:4], *ctx.needs_input_grad[6:]]
    wanted = [
        k for k, (t, need) in enumerate(zip(inputs, needs, strict=True)) if need and t is not None
    ]
    pairs = [(o, g) for o, g in zip(outs, grads, strict=True) if g is not None]
    found = torch.autograd.grad(
        [o for o, _ in pairs],
        [inputs[k] for k in wanted],
        [g for _, g in pairs],
        create_graph=True,
        allow_unused=True,
    )
    result: list[torch.Tensor | None] = [None] * len(inputs)
    for k, g in zip(wanted, found, strict=True):
        result[k] = g
    return (*result[:4], None, None, *result[4:])
