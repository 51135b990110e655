import torch

from recbole_kd.kd.base import KDInputs, register_kd_loss


@register_kd_loss("rd", defaults={"lambda": 10.0})
def ranking_distillation_loss(x: KDInputs, **params):
    """Ranking distillation (Tang & Wang, KDD'18): the teacher's top-K items are extra
    positives, weighted by rank w_r ~ exp(-r / lambda) (weights sum to 1)."""
    lam = params["lambda"]
    k = x.teacher_ids.size(1)
    w = torch.exp(-torch.arange(k, device=x.teacher_ids.device, dtype=torch.float) / lam)
    w = w / w.sum()
    log_q = x.log_probs.gather(1, x.teacher_ids)
    return -(log_q * w.unsqueeze(0)).sum(1)
