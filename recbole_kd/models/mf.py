"""Matrix factorisation (BPR-MF) students and teachers, with the distillation protocol."""
from __future__ import annotations

from recbole.model.general_recommender import BPR

from recbole_kd.registry import register_model


class DistillableMF(BPR):
    """RecBole's BPR-MF plus the hooks the distillation trainer uses (one row per interaction)."""

    @property
    def hidden_size(self) -> int:
        return self.embedding_size

    def output_layer(self):
        """(weight, bias) of the scoring layer: logits = hidden @ weight.T."""
        return self.item_embedding.weight, None

    def item_logits(self, hidden):
        return hidden @ self.item_embedding.weight.t()

    def kd_rows(self, interaction) -> dict:
        users = interaction[self.USER_ID]
        return {"hidden": self.user_embedding(users), "targets": interaction[self.ITEM_ID], "keys": ("user", users)}

    def kd_main_loss(self, interaction, rows, x):
        return self.calculate_loss(interaction)

    def user_outputs(self, users, item_seq=None, item_seq_len=None):
        hidden = self.user_embedding(users)
        return hidden, self.item_logits(hidden)


@register_model("MF-S", kind="student", config="mf_s.yaml", description="small BPR matrix factorisation student")
class MFS(DistillableMF):
    pass


@register_model("MF-L", kind="teacher", config="mf_l.yaml", description="large BPR matrix factorisation teacher")
class MFL(DistillableMF):
    pass
