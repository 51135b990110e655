import torch

from recbole_kd.kd.base import KDInputs, register_kd_loss


def _log1mexp(a: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(a)) for a < 0, accurate near 0 and for very negative a (Maechler 2012)."""
    a = a.clamp(max=-1e-7)  # the top-K never holds all the mass exactly; keeps the log finite
    return torch.where(a > -0.6931471805599453, torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


@register_kd_loss("soft_full")
def soft_full_loss(x: KDInputs):
    """Soft labels over the whole catalogue (Hinton et al. 2015, temperature 1): KL(teacher ||
    student) between their distributions over all items, each of the teacher's top-K items one by
    one and every other item pooled into one class. Exact on the top-K; the pooled class is what
    ``soft`` leaves out: ``soft`` compares the two distributions renormalised over the top-K, so it
    moves probability among those items but never towards them from the rest of the catalogue. Needs
    the teacher's log-normaliser (cached with its top-K) and the student's (the one its own
    cross-entropy computes)."""
    p_log = x.teacher_scores - x.teacher_log_norm.unsqueeze(1)  # teacher log-probabilities of its top-K
    # student log-probabilities over all items; padded entries of a short row belong to the pooled rest
    q_log = x.log_probs.gather(1, x.teacher_ids).masked_fill(~x.teacher_valid, float("-inf"))
    p = p_log.exp()  # 0 where a row has fewer than K rankable items (score -inf)
    top = torch.where(p > 0, p * (p_log - q_log), torch.zeros_like(p)).sum(1)
    p_rest_log = _log1mexp(torch.logsumexp(p_log, dim=1))
    q_rest_log = _log1mexp(torch.logsumexp(q_log, dim=1))
    return top + p_rest_log.exp() * (p_rest_log - q_rest_log)
