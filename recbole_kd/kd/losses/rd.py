import torch

from recbole_kd.kd.base import KDInputs, register_kd_loss


@register_kd_loss("rd", defaults={"lambda": 10.0})
def ranking_distillation_loss(x: KDInputs, **params):
    """Ranking distillation after Tang & Wang (KDD'18), adapted to a softmax student: the teacher's
    top-K items are extra positives of the student's full-softmax cross-entropy, weighted by the
    paper's position importance w_r ~ exp(-r / lambda) (normalised over the row's ranked items).

    Not the paper's loss: there, each top-K item is a pointwise positive, -sum_r w_r log sigmoid(s_r),
    and w_r mixes this position weight with a dynamic "ranking discrepancy" weight that follows the
    student's own rank of the item during training. Here log sigmoid is replaced by the student's
    log-probability over all items (the loss its CE training already uses) and only the static
    position weight is kept."""
    lam = params["lambda"]
    k = x.teacher_ids.size(1)
    w = torch.exp(-torch.arange(k, device=x.teacher_ids.device, dtype=torch.float) / lam).unsqueeze(0)
    w = w * x.teacher_valid  # padded entries of a row with fewer than K ranked items carry no weight
    w = w / w.sum(1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    log_q = x.log_probs.gather(1, x.teacher_ids)
    return -(log_q * w).sum(1)
