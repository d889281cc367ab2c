"""A peer-style DFER model (an nn.LSTM MIL head), trained, swapped to WIAN, trained on (issue 15).

The way a user adds MICACL to existing code: an M3DFEL-like head over instance features,
cross-entropy with label smoothing, then MCCLoss + IntensityAwareLoss on the clip feature, then
the LSTM replaced by ``WIAN.from_lstm`` (same outputs at the swap) and fed instance weights.
Both layouts: batch_first=False (nn.LSTM's default) and batch_first=True.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from micacl_layers import WIAN, InstanceWeights, IntensityAwareLoss, MCCLoss

NUM_CLASSES, T, C, H = 5, 4, 12, 8


class PeerHead(nn.Module):
    """Bi-LSTM over instances, mean over time, linear classifier (M3DFEL-style)."""

    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.lstm = nn.LSTM(C, H, num_layers=2, batch_first=batch_first, bidirectional=True)
        self.classifier = nn.Linear(2 * H, NUM_CLASSES)
        self.to_weights: InstanceWeights | None = None

    def clip_feature(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, C)
        self.lstm.flatten_parameters()  # as peer code does on every forward
        seq_in = x if self.batch_first else x.transpose(0, 1)
        if self.to_weights is None:
            seq, _ = self.lstm(seq_in)
        else:
            w = self.to_weights(x)  # (B, T, H)
            seq, _ = self.lstm(seq_in, weights=w if self.batch_first else w.transpose(0, 1))
        return seq.mean(dim=1 if self.batch_first else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.clip_feature(x))


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    targets = torch.tensor([0] * 8 + [1] * 6 + [2] * 5 + [3] * 3 + [4] * 2)
    # Class-dependent instance features, so the losses can go down.
    means = torch.randn(NUM_CLASSES, 1, C, generator=g)
    x = means[targets] + 0.5 * torch.randn(len(targets), T, C, generator=g)
    return x, targets


def _train(model, losses, params, x, targets, steps):
    optimizer = torch.optim.Adam(params, lr=1e-2)
    history = []
    for _ in range(steps):
        feature = model.clip_feature(x)
        logits = model.classifier(feature)
        loss = losses(feature, logits, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    return history


@pytest.mark.parametrize("batch_first", [False, True])
def test_peer_model_trains_then_swaps_to_wian(batch_first):
    torch.manual_seed(0)
    x, targets = _data()
    model = PeerHead(batch_first)

    # 1. The peer code as it is: cross-entropy with label smoothing.
    def ce(feature, logits, y):
        return nn.functional.cross_entropy(logits, y, label_smoothing=0.1)

    history = _train(model, ce, model.parameters(), x, targets, steps=10)
    assert history[-1] < history[0]

    # 2. + MCCL (its projections in the optimizer) + IAL with label smoothing.
    counts = torch.bincount(targets, minlength=NUM_CLASSES) / len(targets)  # frequencies
    mccl = MCCLoss(NUM_CLASSES, 2 * H, class_counts=counts, projection_dim=16)
    ial = IntensityAwareLoss(label_smoothing=0.1)

    def micacl(feature, logits, y):
        return ce(feature, logits, y) + 0.1 * ial(logits, y) + mccl(feature, logits, y)

    projection = mccl.projections[0].weight.detach().clone()
    history = _train(model, micacl, [*model.parameters(), *mccl.parameters()], x, targets, 10)
    assert history[-1] < history[0]
    assert not torch.equal(projection, mccl.projections[0].weight)  # the loss's params trained

    # 3. The swap: the same outputs (instance weights None, the weight gate saturated).
    model.eval()
    with torch.no_grad():
        before = model(x)
        model.lstm = WIAN.from_lstm(model.lstm)
        assert isinstance(model.lstm, WIAN) and model.lstm.batch_first == batch_first
        after = model(x)
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)
    model.train()

    # 4. Instance weights into WIAN, trained on with the same losses.
    model.to_weights = InstanceWeights(C, H)
    projection = model.to_weights.proj.weight.detach().clone()
    history = _train(model, micacl, [*model.parameters(), *mccl.parameters()], x, targets, 5)
    assert all(torch.isfinite(torch.tensor(history)))
    assert not torch.equal(projection, model.to_weights.proj.weight)  # weights learn through WIAN
    for name, p in model.lstm.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
