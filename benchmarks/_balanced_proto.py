"""Scratch prototype of a balanced MCCL (not shipped): find what works before touching mccl.py.

Straightforward masked formulation with autograd. Options:

- ``class_average``: Balanced Contrastive Learning (Zhu et al., CVPR 2022), Eq. 5: each class's
  contribution to the denominator is divided by that class's number of candidates (self excluded).
- ``prototypes``: BCL's class complements, one candidate per class present in every batch (here
  the classifier's weight rows, pooled and projected like the features).
- ``weight_norm="batch"``: the category-aware weights of Eq. 7 divided by their batch mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from micacl_layers.mccl import adaptive_temperature, category_aware_weights, pool_features


def balanced_mccl(features, logits, targets, class_counts, projections, scales, *,
                  prototypes=None, class_average=True, weight_norm="batch", form="log",
                  tau0=0.07, temperature="class_mean", class_weighting=True, difficulty=True):
    num_classes = logits.shape[1]
    counts = torch.as_tensor(class_counts, dtype=torch.float32, device=features.device)
    weights = category_aware_weights(logits, targets, counts, class_weighting=class_weighting,
                                     difficulty=difficulty)
    tau = adaptive_temperature(counts, tau0, mode=temperature, targets=targets).float()
    batch = features.shape[0]
    cand_t = targets
    if prototypes is not None:
        cand_t = torch.cat([targets, torch.arange(num_classes, device=targets.device)])
    per_scale = []
    for s, proj in zip(scales, projections, strict=True):
        z = proj(pool_features(features, s))
        cands = z
        if prototypes is not None:
            cands = torch.cat([z, proj(pool_features(prototypes, s))])
        z = F.normalize(z, dim=-1)
        cands = F.normalize(cands, dim=-1)
        sim = z @ cands.t() / tau
        is_self = torch.zeros(batch, cands.shape[0], dtype=torch.bool, device=z.device)
        is_self[:, :batch] = torch.eye(batch, dtype=torch.bool, device=z.device)
        same = targets[:, None] == cand_t[None, :]
        positive = same & ~is_self
        valid = ~is_self
        if class_average:
            onehot = F.one_hot(cand_t, num_classes).float()  # (M, K)
            per_class = valid.float() @ onehot  # (B, K) candidates of each class per anchor
            cnt = per_class.gather(1, cand_t[None, :].expand(batch, -1)).clamp_min(1.0)
            log_w = -cnt.log()
        else:
            log_w = torch.zeros_like(sim)
        fill = torch.finfo(sim.dtype).min
        lse_den = (sim + log_w).masked_fill(~valid, fill).logsumexp(dim=1)
        num_pos = positive.sum(1)
        has_pos = num_pos > 0
        if form == "log":
            loss = lse_den - (sim * positive).sum(1) / num_pos.clamp_min(1)
        else:
            lse_pos = sim.masked_fill(~positive, fill).logsumexp(dim=1)
            loss = -torch.exp(lse_pos - lse_den)
        loss = torch.where(has_pos, loss, torch.zeros_like(loss))
        w = weights
        if weight_norm == "batch":
            w = w / w[has_pos].mean().clamp_min(1e-12) if bool(has_pos.any()) else w
        per_scale.append((loss * w).sum() / has_pos.sum().clamp_min(1))
    return torch.stack(per_scale).mean()
