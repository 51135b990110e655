"""Several trained models as one teacher (``teacher_checkpoint: [A.pth, B.pth, ...]``)."""
from __future__ import annotations

import torch


class EnsembleTeacher(torch.nn.Module):
    """Several trained models as one teacher: item scores are the mean of the members'
    log-probabilities (a geometric-mean ensemble), the hidden representation is the
    concatenation of theirs. An ensemble is usually stronger than any member, which bounds
    what distillation can give (Hinton et al. 2015 distil ensembles)."""

    def __init__(self, members):
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.n_items = members[0].n_items
        self.max_seq_length = max(getattr(m, "max_seq_length", 1) for m in members)
        self.hidden_size = sum(int(getattr(m, "hidden_size", None) or m.embedding_size) for m in members)
        # RecBole's model type decides which evaluation loader feeds full_sort_predict: a sequential
        # one if any member reads histories (an MF member needs only the user ids it also carries)
        first = next((m for m in members if hasattr(m, "ITEM_SEQ")), members[0])
        self.type = first.type
        self.USER_ID = first.USER_ID
        self.ITEM_SEQ = getattr(first, "ITEM_SEQ", None)
        self.ITEM_SEQ_LEN = getattr(first, "ITEM_SEQ_LEN", None)

    def _combine(self, outputs):
        hidden = torch.cat([h for h, _ in outputs], dim=1)
        log_probs = torch.stack([torch.log_softmax(l.float(), dim=1) for _, l in outputs]).mean(0)
        return hidden, log_probs

    def position_outputs(self, inputs, mask):
        return self._combine([m.position_outputs(inputs, mask) for m in self.members])

    def user_outputs(self, users, item_seq=None, item_seq_len=None):
        outs = []
        for m in self.members:
            if item_seq is not None and hasattr(m, "max_seq_length"):
                # members may keep shorter histories: the most recent items, left-aligned
                L = m.max_seq_length
                seq, lens = _last_items(item_seq, item_seq_len, L)
                outs.append(m.user_outputs(users, seq, lens))
            else:
                outs.append(m.user_outputs(users, item_seq, item_seq_len))
        return self._combine(outs)

    def full_sort_predict(self, interaction):
        """RecBole's full-ranking hook: the ensemble's scores (mean member log-probabilities) for
        every item, so the ensemble is evaluated exactly as the students see it."""
        has_seq = self.ITEM_SEQ is not None and self.ITEM_SEQ in interaction
        seq = interaction[self.ITEM_SEQ] if has_seq else None
        lens = interaction[self.ITEM_SEQ_LEN] if has_seq else None
        return self.user_outputs(interaction[self.USER_ID], seq, lens)[1]


def _last_items(item_seq, item_seq_len, L):
    if item_seq.size(1) <= L:
        return item_seq, item_seq_len
    idx = (item_seq_len.unsqueeze(1) - L).clamp(min=0) + torch.arange(L, device=item_seq.device).unsqueeze(0)
    seq = item_seq.gather(1, idx.clamp(max=item_seq.size(1) - 1))
    lens = item_seq_len.clamp(max=L)
    seq = seq.masked_fill(torch.arange(L, device=seq.device).unsqueeze(0) >= lens.unsqueeze(1), 0)
    return seq, lens
