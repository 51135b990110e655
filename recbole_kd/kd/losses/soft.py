import torch
import torch.nn.functional as F

from recbole_kd.kd.base import KDInputs, register_kd_loss


@register_kd_loss("soft", defaults={"temperature": 2.0})
def soft_label_loss(x: KDInputs, temperature: float):
    """Soft labels (Hinton et al. 2015): KL(teacher || student) of temperature-softened
    distributions over the teacher's top-K items (exact over all items when K = #items), x T^2.
    A row with fewer than K items the teacher may rank uses those it has; a row with none gives 0."""
    t = temperature
    ranked = x.teacher_valid.any(1)
    # a row with nothing ranked gets a dummy distribution (finite everywhere), weighted 0 below
    p_log = F.log_softmax(x.teacher_scores.masked_fill(~ranked.unsqueeze(1), 0.0) / t, dim=1)
    # the student's distribution over the same ranked items (padded entries of a short row left out)
    q_log = F.log_softmax(x.student_top(x.student_logits.gather(1, x.teacher_ids)) / t, dim=1)
    p = p_log.exp()
    # padded entries of a short row carry -inf teacher scores: p = 0 there
    kl = torch.where(p > 0, p * (p_log - q_log), torch.zeros_like(p))
    return kl.sum(1) * (t * t) * ranked
