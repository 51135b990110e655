"""Correctness gate: distil a row only where the teacher got it right (or weight by how right)."""
from __future__ import annotations

import torch


def gate_weights(mode: str, teacher_ids: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """Per-row weights [M] for the KD terms.

    ``none``: 1 everywhere. ``topk``: 1 where the ground-truth item is in the teacher's top-k,
    else 0. ``rank``: k / (k + r) with r the teacher's rank of the ground truth (0 = top-1;
    r = K when it is outside the cached top-K).
    """
    if mode in (None, "none"):
        return torch.ones(targets.shape, dtype=torch.float, device=targets.device)
    hit = teacher_ids == targets.unsqueeze(1)  # [M, K]
    if mode == "topk":
        return hit[:, :k].any(1).float()
    if mode == "rank":
        K = teacher_ids.size(1)
        rank = torch.where(hit.any(1), hit.float().argmax(1), torch.full_like(targets, K)).float()
        return k / (k + rank)
    raise ValueError(f"unknown kd_gate {mode!r}; use none, topk or rank")


def weighted_mean(per_row: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    total = weights.sum()
    if total <= 0:
        return per_row.sum() * 0.0
    return (per_row * weights).sum() / total
