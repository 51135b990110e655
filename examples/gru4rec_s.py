"""A small GRU4Rec student: one file + its yaml. Distil it with
    python -m recbole_kd --plugins=examples/gru4rec_s.py --model=KD-GRU4Rec-S --dataset=ml-100k --teacher=SASRec-L
"""
from torch import nn

from recbole_kd import register_model
from recbole_kd.models import WindowedSequentialModel


@register_model("GRU4Rec-S", kind="student", config="gru4rec_s.yaml", description="small GRU4Rec student (example plugin)")
class GRU4RecS(WindowedSequentialModel):
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.hidden_size = config["hidden_size"]
        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        self.dropout = nn.Dropout(config["dropout_prob"])
        self.gru = nn.GRU(self.hidden_size, self.hidden_size, batch_first=True)

    def encode(self, item_seq):
        """Hidden state after each position [B, L, d]; a GRU only looks backwards (causal)."""
        out, _ = self.gru(self.dropout(self.item_embedding(item_seq)))
        return out
