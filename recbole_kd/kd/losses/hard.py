from recbole_kd.kd.base import KDInputs, register_kd_loss


@register_kd_loss("hard")
def hard_label_loss(x: KDInputs):
    """Hard auxiliary labels: cross-entropy towards the teacher's top-1 item (0 for a row with no item
    the teacher may rank)."""
    nll = -x.log_prob_of(x.teacher_ids[:, 0])
    return nll.masked_fill(~x.teacher_valid[:, 0], 0.0)
