"""Self-attention of our transformer models: RecBole's ``MultiHeadAttention`` with a fused
inference path.

RecBole's layer materialises the [batch, heads, L, L] attention scores and runs the scaling,
the additive mask and the softmax as separate passes over them; with long histories (ml-1m:
200 positions) that elementwise work, not the matrix products, is most of a small model's
full-sort time. Outside training, ``FusedMultiHeadAttention`` computes the same function with
``torch.nn.functional.scaled_dot_product_attention`` (one fused kernel, same additive mask;
outputs equal to RecBole's up to float rounding, ~1e-6). In training it *is* RecBole's forward,
so training and its attention dropout draw exactly the same numbers as before. Same parameters,
same checkpoint keys. ``fused_attention: False`` keeps RecBole's path everywhere.
"""
from __future__ import annotations

import torch.nn.functional as F
from recbole.model.layers import MultiHeadAttention


class FusedMultiHeadAttention(MultiHeadAttention):
    fused = True

    def forward(self, input_tensor, attention_mask):
        if self.training or not self.fused:
            return super().forward(input_tensor, attention_mask)
        return self.attend(input_tensor, input_tensor, attention_mask)

    def attend(self, queries, keys_values, attention_mask):
        """RecBole's layer (attention, dense, residual, LayerNorm) for the positions in ``queries``
        [B, Q, d] over all of ``keys_values`` [B, L, d]; mask [B, 1, Q or 1, L]. Fused, no dropout."""
        batch, heads, size = queries.size(0), self.num_attention_heads, self.attention_head_size

        def split(x):  # [B, n, h * d] -> [B, h, n, d]
            return x.view(batch, x.size(1), heads, size).transpose(1, 2)

        context = F.scaled_dot_product_attention(
            split(self.query(queries)), split(self.key(keys_values)), split(self.value(keys_values)),
            attn_mask=attention_mask.to(queries.dtype),
        )
        context = context.transpose(1, 2).reshape(batch, queries.size(1), self.all_head_size)
        return self.LayerNorm(self.dense(context) + queries)


def set_fused_attention(module, enabled: bool = True) -> int:
    """Give every RecBole attention layer inside ``module`` (an encoder, a model, an ensemble) the fused
    inference path, or take it away; returns how many layers it set."""
    layers = [m for m in module.modules() if isinstance(m, MultiHeadAttention)]
    for attention in layers:
        attention.__class__ = FusedMultiHeadAttention
        attention.fused = bool(enabled)
    return len(layers)
