"""The evaluation protocol: which items are removed from a full ranking before it is scored.

Every full-sort evaluation computes the model's scores once and scores the ranking under two
protocols in the same pass (no second forward):

* ``filter_seen``: every item the user interacted with before the evaluated target is removed
  (at validation: the user's training history; at test: the training history and the valid
  item), for every model, sequential and general. This is the protocol of the published
  SASRec+ / gSASRec / BERT4Rec-reproducibility figures.
* ``recbole``: RecBole 1.2.1's own rule, unchanged. General models: the user's training items
  (and the valid item at test) are removed, except the user's evaluated positives;
  sequential models: nothing is removed (``FullSortEvalDataLoader`` passes no history for
  them), so items the user already consumed compete with the target.

Both remove the padding id. The setting ``filter_seen`` (default ``True``) selects the protocol
that drives ``valid_metric``, early stopping, the best checkpoint, ``best_valid_result`` and
``test_result``; result files also hold both protocols (``*_by_protocol``).

On data without repeat consumption (no (user, item) pair twice, e.g. MovieLens, the Amazon
5-core files) a seen item is a guaranteed miss, and the two protocols differ for sequential
models only by removing those misses. Where users do re-consume items, ``filter_seen`` would
make a repeated target unrankable; such datasets set ``filter_seen: False`` in their yaml
(``benchmarks/dataset_stats.py`` measures the share of valid/test targets already seen).
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

FILTER_SEEN = "filter_seen"
RECBOLE = "recbole"
PROTOCOLS = (FILTER_SEEN, RECBOLE)
DESCRIPTION = {
    FILTER_SEEN: "seen items filtered (train history; + the valid item at test)",
    RECBOLE: "RecBole's rule (general models: history filtered; sequential: nothing filtered)",
}


def selected(config) -> str:
    """The protocol ``config`` selects (``filter_seen: True`` -> ``filter_seen``, else ``recbole``)."""
    value = config["filter_seen"] if "filter_seen" in config else True
    return FILTER_SEEN if value is None or bool(value) else RECBOLE


def other(protocol: str) -> str:
    return RECBOLE if protocol == FILTER_SEEN else FILTER_SEEN


def evaluation_filters_seen(config, sequential: bool) -> bool:
    """Whether the selected protocol removes a user's seen items from this model's ranking
    (``recbole`` removes them for general models only)."""
    return selected(config) == FILTER_SEEN or not sequential


class ProtocolResult(OrderedDict):
    """RecBole's metric dict for the selected protocol, with every protocol's metrics in
    ``by_protocol`` ({protocol: {metric: value}}) and the selected one's name in ``protocol``."""

    def __init__(self, *args, protocol: str | None = None, by_protocol: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.protocol = protocol
        self.by_protocol = by_protocol

    def __reduce__(self):  # keep the attributes through pickling (distributed broadcast)
        return (type(self), (list(self.items()),), {"protocol": self.protocol, "by_protocol": self.by_protocol})


def by_protocol(result) -> dict | None:
    """``{protocol: {metric: float}}`` of an evaluation result, or None (no full-sort evaluation)."""
    table = getattr(result, "by_protocol", None)
    if not table:
        return None
    return {p: {str(k): float(v) for k, v in r.items()} for p, r in table.items()}


def _user_item_pairs(dataset) -> tuple[np.ndarray, np.ndarray]:
    """(user ids, item ids) of every interaction a RecBole dataset holds: its rows' target items
    and, for sequential (augmented) datasets, the first item of each row's prefix, which is the
    only item of a user's first prefix that is never a target (see ``models.windows``)."""
    inter = dataset.inter_feat
    users = inter[dataset.uid_field].numpy()
    items = inter[dataset.iid_field].numpy()
    list_field = dataset.iid_field + dataset.config["LIST_SUFFIX"]
    if list_field in inter:
        first = inter[list_field][:, 0].numpy()
        users = np.concatenate([users, users])
        items = np.concatenate([items, first])
    return users.astype(np.int64), items.astype(np.int64)


class SeenItems:
    """Each user's seen items as a CSR table (``indptr`` [n_users + 1], ``items``), without padding."""

    def __init__(self, n_users: int, n_items: int, users: np.ndarray, items: np.ndarray):
        keep = items > 0
        keys = np.unique(users[keep].astype(np.int64) * n_items + items[keep].astype(np.int64))
        self.n_users, self.n_items = int(n_users), int(n_items)
        row = keys // n_items
        self.items = torch.from_numpy(keys % n_items)
        self.indptr = torch.from_numpy(np.searchsorted(row, np.arange(n_users + 1), side="left").astype(np.int64))

    @classmethod
    def from_datasets(cls, *datasets) -> "SeenItems":
        first = datasets[0]
        pairs = [_user_item_pairs(ds) for ds in datasets]
        users = np.concatenate([u for u, _ in pairs])
        items = np.concatenate([i for _, i in pairs])
        return cls(first.user_num, first.item_num, users, items)

    def of(self, user: int) -> list[int]:
        return self.items[self.indptr[user] : self.indptr[user + 1]].tolist()

    def index(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, item) index of every seen item of the batch rows' users (``users`` [B])."""
        users = users.cpu().long()
        starts, ends = self.indptr[users], self.indptr[users + 1]
        counts = ends - starts
        rows = torch.repeat_interleave(torch.arange(users.numel()), counts)
        offsets = torch.arange(int(counts.sum())) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        return rows, self.items[torch.repeat_interleave(starts, counts) + offsets]


def attach_seen_items(train_dataset, valid_data, test_data) -> None:
    """Give each evaluation loader the items its users have seen before its targets: the training
    interactions for validation, the training and valid interactions for test."""
    train_seen = SeenItems.from_datasets(train_dataset)
    valid_data.seen_items = train_seen
    test_data.seen_items = SeenItems.from_datasets(train_dataset, valid_data.dataset)


def seen_index(seen: SeenItems, interaction, uid_field: str, seq_field: str | None, device):
    """(row, item) index of the items each evaluated row's user has seen: the loader's table plus,
    for sequential rows, the row's own prefix (which covers users with no training rows)."""
    rows, items = seen.index(interaction[uid_field])
    if seq_field is not None and seq_field in interaction:
        seq = interaction[seq_field].cpu()
        r, c = (seq > 0).nonzero(as_tuple=True)
        rows, items = torch.cat([rows, r]), torch.cat([items, seq[r, c]])
    return rows.to(device), items.to(device)
