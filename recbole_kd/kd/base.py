"""What every KD loss receives, and the loss registry (``recbole_kd.kd.losses.get_kd_loss`` looks a loss up
once the built-in ones are registered)."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from recbole_kd.fused import ItemLogProbs, ItemScores
from recbole_kd.protocol import evaluation_filters_seen


@dataclass
class KDInputs:
    """One row per distilled sample (a window position, or a user-item interaction)."""

    # [M, N] student scores over all items: a tensor, or an ``ItemScores`` that computes only the
    # scores a loss reads (``gather(1, ids)``); write losses with gather / size, not full-tensor ops
    student_logits: "torch.Tensor | ItemScores"
    student_hidden: torch.Tensor  # [M, d_s] student representation
    teacher_ids: torch.Tensor  # [M, K] teacher's top-K items, best first
    teacher_scores: torch.Tensor  # [M, K] teacher's scores of those items
    targets: torch.Tensor  # [M] ground-truth items
    # [M] log of the sum of exp(teacher score) over every item the teacher may rank at that row (its
    # top-K and the rest): teacher_scores - teacher_log_norm are the teacher's log-probabilities
    teacher_log_norm: torch.Tensor | None = None
    teacher_hidden: torch.Tensor | None = None  # [M, d_t] (only for losses that need it)
    modules: nn.ModuleDict = field(default_factory=nn.ModuleDict)
    # item ids a loss draws before the student is scored (its ``extra_ids`` hook), by loss name;
    # scored in the same pass as the teacher's top-K
    extra_ids: dict = field(default_factory=dict)

    @cached_property
    def log_probs(self) -> "torch.Tensor | ItemLogProbs":
        """log_softmax of the student's scores over all items, computed once per batch and
        shared by the student's own cross-entropy and every KD loss that needs it (read it with
        ``gather(1, ids)``: with ``ItemScores`` only the normaliser is computed over all items)."""
        if isinstance(self.student_logits, ItemScores):
            return self.student_logits.log_softmax()
        return F.log_softmax(self.student_logits, dim=1)

    @cached_property
    def teacher_valid(self) -> torch.Tensor:
        """[M, K] bool: the teacher's top-K entry is a real ranked item. A row with fewer than K items the
        teacher may rank (the rest masked as seen) is padded with score -inf and an arbitrary (masked) id,
        which no loss may read as a label."""
        return torch.isfinite(self.teacher_scores)

    def student_top(self, values: torch.Tensor, fill: float = float("-inf")) -> torch.Tensor:
        """``values`` [M, K] (student scores or log-probabilities of the teacher's top-K) with the padded
        entries set to ``fill``; a row with no ranked item at all is left as it is (every loss gives it
        weight 0), so that it never turns into NaN."""
        pad = ~self.teacher_valid & self.teacher_valid.any(1, keepdim=True)
        return values.masked_fill(pad, fill)

    def log_prob_of(self, items: torch.Tensor) -> torch.Tensor:
        """[M] student log-probability of one item per row (e.g. the ground truth)."""
        return self.log_probs.gather(1, items.unsqueeze(1)).squeeze(1)


@dataclass
class KDLoss:
    name: str
    fn: Callable[..., torch.Tensor]  # (KDInputs, **params) -> per-row loss [M]
    defaults: dict
    needs_hidden: bool = False
    make_module: Callable[[int, int], nn.Module] | None = None  # (d_student, d_teacher) -> module
    description: str = ""
    # (teacher_ids [M, K], n_items, **params) -> item ids [M, k] the loss will read (e.g. sampled
    # negatives); drawn before the student's scores so they are computed in one pass with the top-K
    extra_ids: Callable[..., torch.Tensor] | None = None


KD_LOSSES: dict[str, KDLoss] = {}


def register_kd_loss(name, defaults=None, needs_hidden=False, make_module=None, extra_ids=None):
    """Decorator: register a per-row KD loss ``fn(x: KDInputs, **params) -> Tensor[M]``."""

    def deco(fn):
        KD_LOSSES[name] = KDLoss(
            name, fn, dict(defaults or {}), needs_hidden, make_module, (fn.__doc__ or "").strip(), extra_ids
        )
        return fn

    return deco


def resolve_mask_seen(config, sequential: bool) -> bool:
    """``kd_mask_seen``: as set, or (``~``) exactly when the student's evaluation removes seen items."""
    value = config["kd_mask_seen"] if "kd_mask_seen" in config else None
    return evaluation_filters_seen(config, sequential) if value is None else bool(value)
