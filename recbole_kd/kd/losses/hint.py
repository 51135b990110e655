from torch import nn

from recbole_kd.kd.base import KDInputs, register_kd_loss


def _projection(d_student: int, d_teacher: int) -> nn.Module:
    return nn.Linear(d_student, d_teacher, bias=False)


@register_kd_loss("hint", needs_hidden=True, make_module=_projection)
def hint_loss(x: KDInputs):
    """Hint / embedding distillation (FitNets, DE): the student's representation, through a
    learned linear map, regresses onto the teacher's (mean squared error)."""
    projected = x.modules["hint"](x.student_hidden)
    return ((projected - x.teacher_hidden) ** 2).mean(1)
