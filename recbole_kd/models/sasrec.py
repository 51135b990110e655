"""SASRec trained the way the paper trains it: one window per user, next-item loss at every
position (full softmax cross-entropy over all items, or sampled softmax), evaluated by
RecBole's own evaluator on RecBole's leave-one-out split.

The architecture is RecBole's SASRec (same ``TransformerEncoder``, embeddings, layer
norm and initialisation), so "identical d, layers, heads" comparisons are fair.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import TransformerEncoder
from recbole.utils import InputType
from torch import nn

from recbole_kd.errors import ConfigError, TextUnavailable
from recbole_kd.fused import linear_cross_entropy
from recbole_kd.models.attention import set_fused_attention
from recbole_kd.models.windows import (
    OWN_FROM_FIELD,
    WINDOW_FIELD,
    WINDOW_ID_FIELD,
    WindowDataLoader,
    build_windows,
    owned_target_mask,
    user_train_sequences,
)
from recbole_kd.registry import register_model
from recbole_kd.transfer import text
from recbole_kd.utils import keep_recent


class WindowedSequentialModel(SequentialRecommender):
    """Base for sequential models trained on per-user windows (see ``windows.py``).

    A subclass provides ``item_embedding`` (nn.Embedding over all items) and
    ``encode(item_seq) -> [B, L, d]`` (causal: position p may only see items 0..p);
    training, evaluation and distillation hooks come from here.
    """

    input_type = InputType.POINTWISE
    causal = True
    LOSS_TYPES = ("CE", "sampled")  # full softmax, or sampled softmax (settings_check refuses any other)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.loss_type = config["loss_type"]
        self.num_negatives = config["num_negatives"]
        self.text_adaptor = None  # set by ``attach_item_text`` (item_text: True)
        if self.loss_type not in self.LOSS_TYPES:
            raise ValueError(f"loss_type must be 'CE' or 'sampled' for {type(self).__name__}, got {self.loss_type!r}")
        # optional regulariser for plain training (e.g. a teacher on sparse data): see ``contrastive_loss``
        self.cl_weight = float(config["cl_weight"] or 0.0)
        self.cl_temperature = float(config["cl_temperature"] or 1.0)
        if self.cl_weight < 0 or self.cl_temperature <= 0:
            raise ConfigError(f"cl_weight must be >= 0 and cl_temperature > 0, got {self.cl_weight}, {self.cl_temperature}")
        if self.cl_weight and not self.causal:
            raise ConfigError(f"cl_weight (contrastive regularisation) is implemented for causal models; "
                             f"{type(self).__name__} masks its inputs at random (set cl_weight: 0)")

    def item_table(self) -> torch.Tensor:
        """Item representations [rows, d] used for input and scoring: the id embedding, plus the
        adapted sentence-encoder vectors of the item text when ``item_text`` is on (UniSRec-style)."""
        if self.text_adaptor is None:
            return self.item_embedding.weight
        ids = self.item_embedding.weight
        if self.item_id_mask is not None:  # text_cold_items: text
            ids = ids * self.item_id_mask
        return ids + self.text_adaptor(self.item_text_vectors)

    def attach_item_text(self, config, dataset) -> dict:
        """Frozen text vectors of every item (cached on disk) and a learned linear adaptor.

        ``text_cold_items: text``: an item absent from this run's training sequences (after
        ``train_fraction``) is represented by its adapted text alone; its id row is held at zero. Such
        a row would otherwise only ever be trained as a negative, which teaches the model to rank
        every cold item low whatever its text says."""
        texts = text.item_texts(config, dataset)
        cache = config["text_cache_dir"] or os.path.join(config["checkpoint_dir"], "text")
        try:
            vectors, info = text.text_vectors(texts, config["dataset"], cache)
        except TextUnavailable as exc:
            raise ConfigError(str(exc)) from None
        rows = self.item_embedding.num_embeddings
        if vectors.shape[0] < rows:  # e.g. BERT4Rec's [MASK] row
            vectors = torch.cat([vectors, vectors.new_zeros((rows - vectors.shape[0], vectors.shape[1]))])
        self.register_buffer("item_text_vectors", vectors, persistent=False)
        self.register_buffer("item_id_mask", None)
        if (config["text_cold_items"] or "id") == "text":
            # saved with the model: a model rebuilt to load a checkpoint (teacher, evaluation) may be
            # built from other data than its training rows; it takes the saved mask
            seen = torch.ones(rows, dtype=torch.bool)
            if dataset.iid_field + config["LIST_SUFFIX"] in dataset.inter_feat:  # sequential training rows
                seen[1 : len(texts)] = False  # rows past the vocabulary (BERT4Rec's [MASK]) stay on
                seqs = self.training_sequences(config, dataset)[1]
                if seqs:
                    seen[torch.from_numpy(np.concatenate(seqs))] = True
            self.register_buffer("item_id_mask", seen.float().unsqueeze(1))
            info = {**info, "text_only_cold_items": int((~seen).sum())}
        self.text_adaptor = nn.Linear(vectors.shape[1], self.item_embedding.embedding_dim)
        self.text_adaptor.weight.data.normal_(mean=0.0, std=config["initializer_range"] or 0.02)
        self.text_adaptor.bias.data.zero_()
        self.item_text_info = info
        return info

    @staticmethod
    def training_sequences(config, dataset):
        """(users, sequences) a run trains on: each user's training sequence, cut to its most recent
        ``train_fraction`` in the low-resource setting."""
        users, seqs = user_train_sequences(dataset)
        if config["train_fraction"] is not None and config["train_fraction"] < 1:  # low-resource setting
            seqs = [s[len(s) - keep_recent(len(s), config["train_fraction"]):] for s in seqs]
        return users, seqs

    @classmethod
    def window_span(cls, config) -> int:
        return config["MAX_ITEM_LIST_LENGTH"] + (1 if cls.causal else 0)

    @classmethod
    def build_train_dataloader(cls, config, train_data):
        """Replace RecBole's prefix-per-sample training loader by a window loader."""
        dataset = train_data.dataset
        users, seqs = cls.training_sequences(config, dataset)
        span = cls.window_span(config)
        # default: windows overlap by one item, so no position is encoded twice per epoch
        stride = config["window_stride"] or config["MAX_ITEM_LIST_LENGTH"]
        table = build_windows(users, seqs, span=span, stride=stride, causal=cls.causal)
        return WindowDataLoader(
            config, dataset, table, batch_size=config["train_batch_size"], shuffle=True,
            group_by_length=config["group_by_length"] or 0,
        )

    inference_chunk = 256  # users per length-sorted chunk in ``forward``

    def forward(self, item_seq, item_seq_len):
        """User representation after ``item_seq`` (RecBole's SequentialRecommender interface).

        Histories are left-aligned, so trailing padding can be cut exactly: users are sorted by
        length and encoded in chunks no wider than their longest history (the same result as one
        padded pass; on sparse data most of a padded pass is padding)."""
        extra = getattr(self, "extra_tokens", 0)
        if item_seq.size(0) <= self.inference_chunk:
            width = min(item_seq.size(1), max(int(item_seq_len.max()) + extra, 1)) if item_seq.numel() else 1
            return self.last_hidden(item_seq[:, :width], item_seq_len)
        out = None
        for idx in torch.argsort(item_seq_len).split(self.inference_chunk):
            lens = item_seq_len[idx]
            width = min(item_seq.size(1), max(int(lens.max()) + extra, 1))
            hidden = self.last_hidden(item_seq[idx, :width], lens)
            if out is None:
                out = hidden.new_empty(item_seq.size(0), hidden.size(1))
            out[idx] = hidden
        return out

    def last_hidden(self, item_seq, item_seq_len):
        """Hidden state after each user's last item ([B, d]), one padded pass."""
        return self.encode_at(item_seq, item_seq_len - 1)

    def encode_at(self, item_seq, index):
        """Hidden state at one position per row ([B, d]); a subclass may compute less than ``encode``."""
        return self.gather_indexes(self.encode(item_seq), index)

    # ---- training ---------------------------------------------------------------------------------
    def window_outputs(self, interaction):
        """Hidden states at owned positions and their targets: ([M, d], [M], mask [B, L])."""
        window = interaction[WINDOW_FIELD]
        inputs, targets = window[:, :-1], window[:, 1:]
        mask = owned_target_mask(targets, interaction[OWN_FROM_FIELD] - 1)
        hidden = self.encode(inputs)
        return hidden[mask], targets[mask], mask

    def output_layer(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight [N, d], bias [N] or None) of the scoring layer: logits = hidden @ weight.T + bias."""
        return self.item_table(), None

    def item_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        weight, bias = self.output_layer()
        logits = hidden @ weight.t()
        return logits if bias is None else logits + bias

    def main_loss(self, hidden, targets, logits=None):
        if self.loss_type == "CE":
            if logits is not None:
                return F.cross_entropy(logits, targets)
            weight, bias = self.output_layer()
            # the same loss and gradients as F.cross_entropy(self.item_logits(hidden), targets), without
            # the [M, n_items] logits in memory (see recbole_kd/fused.py)
            return linear_cross_entropy(hidden, weight, targets, bias)
        return sampled_softmax_loss(hidden, targets, self.item_table(), self.num_negatives)

    def calculate_loss(self, interaction):
        hidden, targets, mask = self.window_outputs(interaction)
        loss = self.main_loss(hidden, targets)
        if not self.cl_weight:
            return loss
        again, _, _ = self.window_outputs(interaction)  # the same windows under other dropout masks
        return loss, self.cl_weight * self.contrastive_loss(hidden, again, mask)

    def contrastive_loss(self, hidden, again, mask):
        """DuoRec's unsupervised contrast (model-level augmentation; Qiu et al., WSDM'22): a window's
        last hidden state in two forward passes (different dropout masks) is a positive pair, the other
        windows of the batch are negatives; InfoNCE over the 2n states, dot product / cl_temperature.
        ``hidden``/``again``: [M, d] owned positions in row-major order of ``mask`` [B, L]."""
        counts = mask.sum(1)
        last = (counts.cumsum(0) - 1)[counts > 0]  # each window's last owned position
        n = last.numel()
        z = torch.cat([hidden[last], again[last]])
        sim = (z @ z.t()) / self.cl_temperature
        sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
        pair = torch.arange(2 * n, device=z.device).add(n).remainder(2 * n)  # i <-> i + n
        return F.cross_entropy(sim, pair)

    # ---- distillation protocol (student side and teacher side) -------------------------------------
    def kd_rows(self, interaction) -> dict:
        """Rows the student is trained on in this batch: one per owned window position."""
        hidden, targets, mask = self.window_outputs(interaction)
        return {"hidden": hidden, "targets": targets, "keys": ("position", interaction[WINDOW_ID_FIELD], mask)}

    def kd_main_loss(self, interaction, rows, x):
        """The student's own loss inside distillation; ``x`` (KDInputs) shares the log-softmax."""
        if self.loss_type == "CE":
            return -x.log_prob_of(rows["targets"]).mean()
        return self.main_loss(rows["hidden"], rows["targets"])

    def position_outputs(self, inputs: torch.Tensor, mask: torch.Tensor):
        """Teacher side: (hidden [M, d], logits [M, N]) predicting the next item at ``mask`` positions."""
        hidden = self.encode(inputs)[mask]
        return hidden, self.item_logits(hidden)

    def user_outputs(self, users: torch.Tensor, item_seq: torch.Tensor, item_seq_len: torch.Tensor):
        """Teacher side: (hidden [U, d], logits [U, N]) for users with histories ``item_seq``."""
        hidden = self.last_hidden(item_seq, item_seq_len)  # full width: cached == uncached, bit for bit
        return hidden, self.item_logits(hidden)

    # ---- evaluation -------------------------------------------------------------------------------
    def predict(self, interaction):
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        test_item_emb = self.item_table()[interaction[self.ITEM_ID]]
        return (seq_output * test_item_emb).sum(dim=1)

    def full_sort_predict(self, interaction):
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return self.item_logits(seq_output)


class TransformerSequentialModel(WindowedSequentialModel):
    """Item + position embeddings and RecBole's ``TransformerEncoder`` (as in RecBole's SASRec)."""

    bidirectional = False
    extra_tokens = 0  # e.g. BERT4Rec's [MASK]

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.n_layers = config["n_layers"]
        self.n_heads = config["n_heads"]
        self.hidden_size = config["hidden_size"]
        self.inner_size = config["inner_size"]
        self.hidden_dropout_prob = config["hidden_dropout_prob"]
        self.attn_dropout_prob = config["attn_dropout_prob"]
        self.hidden_act = config["hidden_act"]
        self.layer_norm_eps = config["layer_norm_eps"]
        self.initializer_range = config["initializer_range"]

        self.item_embedding = nn.Embedding(self.n_items + self.extra_tokens, self.hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)
        self.trm_encoder = TransformerEncoder(
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            hidden_size=self.hidden_size,
            inner_size=self.inner_size,
            hidden_dropout_prob=self.hidden_dropout_prob,
            attn_dropout_prob=self.attn_dropout_prob,
            hidden_act=self.hidden_act,
            layer_norm_eps=self.layer_norm_eps,
        )
        if self.hidden_act == "gelu":
            # RecBole's FeedForward.gelu is x * 0.5 * (1 + erf(x / sqrt(2))) in five tensor ops; torch's
            # exact (erf) GELU is the same function in one kernel (~2.5 s of a 19 s ml-100k epoch here)
            for layer in self.trm_encoder.layer:
                layer.feed_forward.intermediate_act_fn = F.gelu
        # full-sort scoring (evaluation, teacher outputs) through one fused attention kernel; training
        # unchanged (recbole_kd/models/attention.py)
        set_fused_attention(self.trm_encoder, config["fused_attention"] is not False)
        self.LayerNorm = nn.LayerNorm(self.hidden_size, eps=self.layer_norm_eps)
        self.dropout = nn.Dropout(self.hidden_dropout_prob)
        self.apply(self._init_weights)
        if config["item_text"]:
            self.attach_item_text(config, dataset)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.initializer_range)
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    def encoder_inputs(self, item_seq: torch.Tensor):
        """(embedded input [B, L, d], additive attention mask) of the transformer layers."""
        positions = torch.arange(item_seq.size(1), dtype=torch.long, device=item_seq.device)
        items = self.item_embedding(item_seq) if self.text_adaptor is None else F.embedding(item_seq, self.item_table())
        x = items + self.position_embedding(positions).unsqueeze(0)
        return self.dropout(self.LayerNorm(x)), self.get_attention_mask(item_seq, bidirectional=self.bidirectional)

    def encode(self, item_seq: torch.Tensor) -> torch.Tensor:
        """Hidden state at every position [B, L, d] (causal unless ``bidirectional``)."""
        x, mask = self.encoder_inputs(item_seq)
        return self.trm_encoder(x, mask, output_all_encoded_layers=True)[-1]

    def encode_at(self, item_seq, index):
        """Hidden state at ``index[b]`` of each row. Outside training (with ``fused_attention``) the last
        layer runs for those positions only: its attention reads every position's keys and values, but
        only one query, and its feed-forward one position, per row (the same numbers as ``encode``)."""
        last = self.trm_encoder.layer[-1]
        attention = last.multi_head_attention
        if self.training or not attention.fused:
            return super().encode_at(item_seq, index)
        x, mask = self.encoder_inputs(item_seq)
        for layer in self.trm_encoder.layer[:-1]:
            x = layer(x, mask)
        rows = torch.arange(x.size(0), device=x.device)
        row_mask = mask[rows, :, index].unsqueeze(2) if mask.size(2) > 1 else mask  # [B, 1, 1, L]
        return last.feed_forward(attention.attend(x[rows, index].unsqueeze(1), x, row_mask)).squeeze(1)


class FastSASRec(TransformerSequentialModel):
    """SASRec: causal self-attention, next-item loss at every position."""


def sampled_softmax_loss(hidden, targets, item_weight, num_negatives: int) -> torch.Tensor:
    """Softmax over the positive and ``num_negatives`` uniformly sampled items shared by the
    batch; a sampled item equal to the row's positive is masked out."""
    n_items = item_weight.shape[0]
    neg = torch.randint(1, n_items, (num_negatives,), device=hidden.device)
    pos_logit = (hidden * item_weight[targets]).sum(-1, keepdim=True)
    neg_logit = hidden @ item_weight[neg].t()
    neg_logit = neg_logit.masked_fill(neg.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
    logits = torch.cat([pos_logit, neg_logit], dim=1)
    return F.cross_entropy(logits, torch.zeros_like(targets))


@register_model(
    "SASRec-S",
    kind="student",
    config="sasrec_s.yaml",
    description="small SASRec (window training, loss at every position); the student trained alone",
)
class SASRecS(FastSASRec):
    pass


@register_model(
    "SASRec-L",
    kind="teacher",
    config="sasrec_l.yaml",
    description="large SASRec teacher (window training, full-softmax cross-entropy)",
)
class SASRecL(FastSASRec):
    pass
