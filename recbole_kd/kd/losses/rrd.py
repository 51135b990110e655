import torch

from recbole_kd.kd.base import KDInputs, register_kd_loss


def uninteresting_items(teacher_ids: torch.Tensor, n_items: int, num_uninteresting: int) -> torch.Tensor:
    """Uniformly sampled items (never the padding id 0), ``num_uninteresting`` per row."""
    return torch.randint(1, n_items, (teacher_ids.size(0), num_uninteresting), device=teacher_ids.device)


DENSE_MEMBERSHIP_CELLS = 1 << 26  # a [M, n_items] boolean bitmap up to 64 MB


def row_membership(query: torch.Tensor, members: torch.Tensor, n_items: int) -> torch.Tensor:
    """Boolean [M, Q]: ``query[m, q]`` is one of ``members[m, :]``. A [M, n_items] bitmap when small,
    else a sorted-key lookup (the pairwise comparison would cost M x Q x K)."""
    if members.size(0) * n_items <= DENSE_MEMBERSHIP_CELLS:
        bitmap = torch.zeros(members.size(0), n_items, dtype=torch.bool, device=members.device)
        return bitmap.scatter_(1, members, True).gather(1, query)
    rows = torch.arange(members.size(0), device=members.device).unsqueeze(1) * n_items
    keys = (members + rows).flatten().sort().values
    wanted = (query + rows).flatten()
    pos = torch.searchsorted(keys, wanted).clamp(max=keys.numel() - 1)
    return (keys[pos] == wanted).view_as(query)


def suffix_logsumexp(top: torch.Tensor) -> torch.Tensor:
    """[M, K]: logsumexp of ``top[:, k:]`` for every k, as a cumulative sum shifted by the row maximum
    (on CPU about 6x cheaper, with backward, than ``torch.logcumsumexp``; a suffix more than ~87 nats
    below its row's maximum is floored at the smallest float instead of underflowing to -inf)."""
    peak = top.detach().max(1, keepdim=True).values
    peak = peak.masked_fill(~torch.isfinite(peak), 0.0)  # a row of -inf only: its suffixes stay -inf-like
    cum = (top - peak).exp().flip(1).cumsum(1).flip(1)
    return cum.clamp_min(torch.finfo(top.dtype).tiny).log() + peak


@register_kd_loss("rrd", defaults={"num_uninteresting": 100}, extra_ids=uninteresting_items)
def relaxed_ranking_distillation_loss(x: KDInputs, num_uninteresting: int):
    """Relaxed ranking distillation (Kang et al., CIKM'20): list-wise likelihood that the
    student ranks the teacher's top-K in the teacher's order, each above uniformly sampled
    uninteresting items (items in the top-K are never counted as uninteresting).

    Differs from the paper in two documented ways: the paper samples its interesting items from
    the teacher's top-N (N > K) with probability falling with rank, where the whole top-K here is the
    interesting list, in the teacher's order; and the paper sums the K terms where this averages them
    (the sum divided by the number of ranked items in the row: kd_losses weight w here is w / K there).
    Padded entries of a row with fewer than K ranked items are left out of the list."""
    scores = x.student_logits
    valid = x.teacher_valid  # [M, K]
    top = scores.gather(1, x.teacher_ids)  # [M, K]
    sampled = x.extra_ids.get("rrd")
    if sampled is None:
        sampled = uninteresting_items(x.teacher_ids, scores.size(1), num_uninteresting)
    unint = scores.gather(1, sampled)
    clash = row_membership(sampled, x.teacher_ids, scores.size(1))
    unint = unint.masked_fill(clash, float("-inf"))
    lse_unint = torch.logsumexp(unint, dim=1, keepdim=True)  # [M, 1]
    # padded entries sit at the end of the list (score -inf): they take no part in any suffix
    suffix = suffix_logsumexp(top.masked_fill(~valid, float("-inf")))  # logsumexp of top[k:]
    denom = torch.logaddexp(suffix, lse_unint)
    terms = torch.where(valid, top - denom, torch.zeros_like(top))
    return -terms.sum(1) / valid.sum(1).clamp_min(1)
