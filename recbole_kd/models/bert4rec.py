"""BERT4Rec trained on per-user windows (Cloze task: masked items predicted from both
sides), evaluated by RecBole's evaluator by appending a [MASK] after the history.
Registered as ``BERT4Rec-L`` (a teacher); RecBole's stock ``BERT4Rec`` stays the baseline.
"""
from __future__ import annotations

import torch
from torch import nn

from recbole_kd.models.sasrec import TransformerSequentialModel
from recbole_kd.models.windows import OWN_FROM_FIELD, WINDOW_FIELD, owned_target_mask, prefixes
from recbole_kd.registry import register_model


class FastBERT4Rec(TransformerSequentialModel):
    causal = False
    bidirectional = True
    extra_tokens = 1  # the [MASK] token, id n_items

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.mask_ratio = config["mask_ratio"]
        self.last_mask_prob = config["last_mask_prob"]
        self.prefix_chunk = config["teacher_prefix_chunk"] or 1024
        self.mask_token = self.n_items
        self.output_bias = nn.Parameter(torch.zeros(self.n_items))

    def output_layer(self):
        return self.item_table()[: self.n_items], self.output_bias  # [MASK] is never a target

    def _append_mask(self, item_seq, item_seq_len):
        """History + [MASK]; a full-length history drops its oldest item to make room."""
        seq = item_seq.clone()
        full = item_seq_len >= seq.size(1)
        if full.any():
            seq[full] = torch.roll(seq[full], shifts=-1, dims=1)
        pos = torch.where(full, torch.full_like(item_seq_len, seq.size(1) - 1), item_seq_len)
        seq[torch.arange(seq.size(0), device=seq.device), pos] = self.mask_token
        return seq, pos

    def last_hidden(self, item_seq, item_seq_len):
        seq, pos = self._append_mask(item_seq, item_seq_len)
        return self.encode_at(seq, pos)

    def window_outputs(self, interaction):
        window = interaction[WINDOW_FIELD]
        own = owned_target_mask(window, interaction[OWN_FROM_FIELD])
        masked = own & (torch.rand(window.shape, device=window.device) < self.mask_ratio)
        # like evaluation: sometimes mask exactly the last item of the window
        length = (window > 0).sum(1)
        last = torch.rand(window.size(0), device=window.device) < self.last_mask_prob
        rows = torch.arange(window.size(0), device=window.device)
        last_pos = (length - 1).clamp(min=0)
        masked[rows[last], last_pos[last]] = own[rows[last], last_pos[last]]
        # every window with an owned item trains on at least one of them
        empty = ~masked.any(1) & own.any(1)
        masked[rows[empty], last_pos[empty]] = True
        inputs = window.masked_fill(masked, self.mask_token)
        hidden = self.encode(inputs)[masked]
        return hidden, window[masked], masked

    def position_outputs(self, inputs, mask):
        """Next-item scores after each prefix ``inputs[b, :q+1]`` where ``mask[b, q]``: one
        [MASK]-appended forward per prefix (done once when the teacher cache is built)."""
        b_idx, q_idx = mask.nonzero(as_tuple=True)
        if inputs.size(1) < self.max_seq_length:
            # a trimmed batch: one free column, so a prefix as wide as the batch is not taken for a
            # full-length history (which would drop its oldest item to make room for [MASK])
            inputs = torch.nn.functional.pad(inputs, (0, 1))
        hiddens = []
        for start in range(0, b_idx.numel(), self.prefix_chunk):
            b, q = b_idx[start : start + self.prefix_chunk], q_idx[start : start + self.prefix_chunk]
            prefix = prefixes(inputs, b, q)
            hiddens.append(self.last_hidden(prefix, q + 1))  # full width: cached == uncached, bit for bit
        hidden = torch.cat(hiddens) if hiddens else inputs.new_zeros((0, self.hidden_size), dtype=torch.float)
        return hidden, self.item_logits(hidden)


@register_model(
    "BERT4Rec-L",
    kind="teacher",
    config="bert4rec_l.yaml",
    description="large BERT4Rec teacher (window training, Cloze objective, full softmax)",
)
class BERT4RecL(FastBERT4Rec):
    pass
