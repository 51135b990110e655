from recbole_kd.kd.base import KDInputs, register_kd_loss


@register_kd_loss("hard")
def hard_label_loss(x: KDInputs):
    """Hard auxiliary labels: cross-entropy towards the teacher's top-1 item."""
    return -x.log_prob_of(x.teacher_ids[:, 0])
