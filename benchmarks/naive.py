"""Straightforward baselines the benchmarks (and ``tests/test_fast_paths.py``) compare against.

Nothing here is fast on purpose: these are the formulations one writes first, kept as baselines.

- :class:`NaivePerGateWIAN`: WIAN with ten separate ``nn.Linear`` layers per direction and layer
  (an input and a recurrent one per gate), the input projection recomputed inside the time loop,
  one direction after the other.
- :func:`naive_multiscale_supcon`: the multi-scale contrastive loss in the style of the public
  MICACL code: a Python loop over scales, separate float masks, ``exp`` without max-subtraction,
  SupCon's log form; unlike the public code the projections are fixed modules passed in (the
  public code created them afresh with random weights on every call).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

GATES = ("input", "forget", "candidate", "output", "dynamic")


class NaivePerGateWIAN(nn.Module):
    """WIAN (Eq. 3, 5, 6) written gate by gate: the straightforward way.

    ``batch_first`` inputs ``(B, T, I)``, instance weights broadcastable to ``(B, T, H)``;
    returns the output ``(B, T, D * H)`` only. :meth:`load_from` copies a
    :class:`micacl_layers.WIAN`'s parameters, so both compute the same function.
    """

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, bidirectional: bool = False
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_directions = 2 if bidirectional else 1
        self.cells = nn.ModuleList()
        for layer in range(num_layers):
            layer_in = input_size if layer == 0 else hidden_size * self.num_directions
            for _ in range(self.num_directions):
                cell = nn.ModuleDict()
                for gate in GATES:
                    cell[f"x_{gate}"] = nn.Linear(layer_in, hidden_size)
                    cell[f"h_{gate}"] = nn.Linear(hidden_size, hidden_size)
                self.cells.append(cell)

    @torch.no_grad()
    def load_from(self, wian: nn.Module) -> NaivePerGateWIAN:
        """Copy the parameters of a :class:`micacl_layers.WIAN` of the same sizes (with biases)."""
        hidden = self.hidden_size
        suffixes = ("", "_reverse")[: self.num_directions]
        for layer in range(self.num_layers):
            for k, suffix in enumerate(suffixes):
                cell = self.cells[layer * self.num_directions + k]
                name = f"l{layer}{suffix}"
                for g, gate in enumerate(GATES):
                    rows = slice(g * hidden, (g + 1) * hidden)
                    cell[f"x_{gate}"].weight.copy_(getattr(wian, f"weight_ih_{name}")[rows])
                    cell[f"x_{gate}"].bias.copy_(getattr(wian, f"bias_ih_{name}")[rows])
                    cell[f"h_{gate}"].weight.copy_(getattr(wian, f"weight_hh_{name}")[rows])
                    cell[f"h_{gate}"].bias.copy_(getattr(wian, f"bias_hh_{name}")[rows])
        return self

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        batch, steps, _ = x.shape
        w = None if weights is None else weights.broadcast_to(batch, steps, self.hidden_size)
        layer_input = x
        for layer in range(self.num_layers):
            outputs = []
            for k in range(self.num_directions):
                cell = self.cells[layer * self.num_directions + k]
                h = c = x.new_zeros(batch, self.hidden_size)
                per_step: list[torch.Tensor | None] = [None] * steps
                order = range(steps) if k == 0 else reversed(range(steps))
                for t in order:
                    x_t = layer_input[:, t]

                    def gate(
                        name: str,
                        x_t: torch.Tensor = x_t,
                        h: torch.Tensor = h,
                        cell: nn.ModuleDict = cell,
                    ) -> torch.Tensor:
                        return cell[f"x_{name}"](x_t) + cell[f"h_{name}"](h)

                    i = torch.sigmoid(gate("input"))
                    f = torch.sigmoid(gate("forget"))
                    g = torch.tanh(gate("candidate"))
                    o = torch.sigmoid(gate("output"))
                    d = torch.sigmoid(gate("dynamic"))
                    if w is not None:
                        d = d * w[:, t]
                    c = f * c + i * g * d
                    h = o * torch.tanh(c)
                    per_step[t] = h
                outputs.append(torch.stack(per_step, dim=1))
            layer_input = torch.cat(outputs, dim=-1)
        return layer_input


def naive_multiscale_supcon(
    features: torch.Tensor,
    targets: torch.Tensor,
    projections: Sequence[nn.Module],
    scales: Sequence[int] = (1, 2, 4),
    temperature: float = 0.07,
) -> torch.Tensor:
    """Multi-scale SupCon, public-code style (per-scale loop, float masks, no max-subtraction).

    Equals :class:`micacl_layers.MCCLoss` with ``form="log"``, ``temperature="fixed"``,
    ``class_weighting=False``, ``difficulty=False`` and the same projections (as long as
    ``exp`` does not overflow: it does in float16 for ``temperature`` below about 0.09).
    """
    dim = features.shape[1]
    eye = torch.eye(features.shape[0], device=features.device, dtype=features.dtype)
    losses = []
    for scale, projection in zip(scales, projections, strict=True):
        pooled = F.adaptive_avg_pool1d(features.unsqueeze(1), dim // scale).squeeze(1)
        z = F.normalize(projection(pooled), dim=1)
        sim = z @ z.t() / temperature
        mask = (targets[:, None] == targets[None, :]).to(sim.dtype)
        logits_mask = 1.0 - eye
        mask = mask * logits_mask
        exp_logits = torch.exp(sim) * logits_mask
        log_prob = sim - torch.log(exp_logits.sum(dim=1, keepdim=True))
        num_pos = mask.sum(dim=1)
        mean_log_prob_pos = (mask * log_prob).sum(dim=1) / num_pos.clamp_min(1.0)
        losses.append(-mean_log_prob_pos[num_pos > 0].mean())
    return torch.stack(losses).mean()
