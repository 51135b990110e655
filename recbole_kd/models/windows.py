"""Paper-style training data for sequential models: one window per user (sliding windows
with a stride for histories longer than the max length), loss at every position.

RecBole's ``SequentialDataset`` turns every prefix of every user into its own sample
(``u, <i1..ik> | i(k+1)``) and computes the loss at its last position only, so each
interaction is re-encoded up to L times. We keep RecBole's dataset, split and evaluator
untouched and only replace the *training* loader: the user's training sequence is
rebuilt from the augmented training rows (first prefix item + every target, in order),
then cut into windows.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from recbole.data.interaction import Interaction

from recbole_kd.distributed import shard

WINDOW_FIELD = "window_seq"  # [B, span] item ids, left-aligned, 0 = padding
OWN_FROM_FIELD = "window_own_from"  # [B] first position whose target this window owns
WINDOW_ID_FIELD = "window_id"  # [B] row in the window table (teacher caches index by it)


def user_train_sequences(train_dataset) -> tuple[np.ndarray, list[np.ndarray]]:
    """Each user's full training sequence, rebuilt from RecBole's augmented training rows.

    For a user with training rows ``<i1> | i2``, ``<i1,i2> | i3`` ... the sequence is
    ``[i1, i2, i3, ...]``: the first item of the first prefix, then every target in order.
    """
    inter = train_dataset.inter_feat
    uid_field = train_dataset.uid_field
    iid_field = train_dataset.iid_field
    list_field = iid_field + train_dataset.config["LIST_SUFFIX"]
    len_field = train_dataset.config["ITEM_LIST_LENGTH_FIELD"]
    uids = inter[uid_field].numpy()
    targets = inter[iid_field].numpy()
    lengths = inter[len_field].numpy()
    first_items = inter[list_field][:, 0].numpy()
    order = np.argsort(uids, kind="stable")  # rows of one user are in time order already
    uids, targets, lengths, first_items = uids[order], targets[order], lengths[order], first_items[order]
    bounds = np.flatnonzero(np.diff(uids)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(uids)]])
    users, seqs = [], []
    for s, e in zip(starts, ends):
        if e <= s:
            continue
        if lengths[s] != 1:
            raise ValueError(
                "training rows of a user do not start at the first interaction; "
                "the window loader needs RecBole's leave-one-out split (eval_args.split: {LS: valid_and_test})"
            )
        users.append(uids[s])
        seqs.append(np.concatenate([[first_items[s]], targets[s:e]]).astype(np.int64))
    return np.asarray(users, dtype=np.int64), seqs


def window_starts(n: int, span: int, stride: int) -> list[int]:
    """Start offsets of the windows of length ``span`` over a sequence of length ``n``.

    Windows start at 0, stride, 2*stride, ... and the last one ends exactly at the end of
    the sequence, so every position is covered.
    """
    if n <= span:
        return [0]
    last = n - span
    starts = list(range(0, last, stride))
    starts.append(last)
    return starts


def build_windows(users, seqs, span: int, stride: int, causal: bool = True) -> dict:
    """Window table: ``WINDOW_FIELD`` [W, span], ``OWN_FROM_FIELD`` [W], user ids [W].

    For causal (next-item) training, position p of a window predicts window[p] from
    window[:p] (p >= 1). Each sequence position is owned (counted in the loss) by exactly
    one window: the earliest that contains it (most context), so every training
    interaction except the user's first is a target exactly once per epoch.
    """
    if causal:
        # consecutive causal windows must share at least one item, else the target at the
        # boundary (position 0 of the next window, which has no input) would be lost
        stride = min(stride, span - 1)
    rows, own_from, row_users = [], [], []
    for u, s in zip(users, seqs):
        n = len(s)
        if causal and n < 2:
            continue
        covered_to = 0  # positions < covered_to are owned by an earlier window (sequence index)
        for a in window_starts(n, span, stride):
            w = np.zeros(span, dtype=np.int64)
            part = s[a : a + span]
            w[: len(part)] = part
            first_owned = max(covered_to - a, 1 if causal else 0)
            rows.append(w)
            own_from.append(first_owned)
            row_users.append(u)
            covered_to = a + len(part)
    return {
        WINDOW_FIELD: torch.from_numpy(np.stack(rows)) if rows else torch.zeros((0, span), dtype=torch.long),
        OWN_FROM_FIELD: torch.tensor(own_from, dtype=torch.long),
        "user": torch.tensor(row_users, dtype=torch.long),
    }


class WindowDataLoader:
    """Training loader over a window table; a drop-in for RecBole's train dataloader
    (``len``, iteration over ``Interaction`` batches, ``.dataset``)."""

    def __init__(self, config, dataset, table: dict, batch_size: int, shuffle: bool = True, group_by_length: int = 0):
        self.config = config
        # > 0: shuffle, then sort by length inside chunks of ``group_by_length`` batches and shuffle
        # the batches (fairseq / HF ``group_by_length``); sparse data (most histories far shorter than
        # the window) then pays for little padding. 0: plain shuffling.
        self.group_by_length = int(group_by_length or 0)
        self._dataset = dataset
        self.table = table
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.uid_field = dataset.uid_field
        self.num_windows = int(table[WINDOW_FIELD].shape[0])
        # distributed mode: every rank draws the same epoch order (a generator seeded by seed and
        # epoch) and takes its own slice of each global batch of ``batch_size`` windows
        single = config is None or config["single_spec"] is not False
        self.world = 1 if single else int(config["world_size"])
        self.rank = 0 if single else int(config["local_rank"]) + int(config["offset"] or 0)
        self.sampler = _EpochSampler(int(config["seed"] or 0)) if self.world > 1 else None

    @property
    def dataset(self):
        return self._dataset

    def __len__(self) -> int:
        return math.ceil(self.num_windows / self.batch_size)

    def batch(self, index: torch.Tensor) -> Interaction:
        window = self.table[WINDOW_FIELD][index]
        # windows are left-aligned: trailing all-padding columns can be dropped exactly
        used = int((window > 0).any(0).nonzero().max()) + 1 if window.numel() and (window > 0).any() else 1
        return Interaction(
            {
                WINDOW_FIELD: window[:, : max(used, 2)],
                OWN_FROM_FIELD: self.table[OWN_FROM_FIELD][index],
                WINDOW_ID_FIELD: index,
                self.uid_field: self.table["user"][index],
            }
        )

    def lengths(self) -> torch.Tensor:
        return (self.table[WINDOW_FIELD] > 0).sum(1)

    def batch_order(self) -> list[torch.Tensor]:
        """The index batches of one epoch (every window exactly once)."""
        if not self.shuffle:
            order = torch.arange(self.num_windows)
            return list(order.split(self.batch_size))
        gen = self.sampler.generator() if self.sampler is not None else None
        order = torch.randperm(self.num_windows, generator=gen)
        if self.group_by_length <= 0:
            return list(order.split(self.batch_size))
        lengths = self.lengths()
        batches = []
        for chunk in order.split(self.batch_size * self.group_by_length):
            # stable sort keeps the random order among windows of equal length
            chunk = chunk[torch.sort(lengths[chunk], descending=True, stable=True).indices]
            batches += list(chunk.split(self.batch_size))
        return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]

    def __iter__(self):
        for index in self.batch_order():
            if self.world > 1:
                index = shard(index, self.world, self.rank)
            yield self.batch(index)

    def num_targets(self) -> int:
        w = self.table[WINDOW_FIELD]
        pos = torch.arange(w.shape[1]).unsqueeze(0)
        return int(((w > 0) & (pos >= self.table[OWN_FROM_FIELD].unsqueeze(1))).sum())


class _EpochSampler:
    """What RecBole's trainer expects of a distributed training loader (``sampler.set_epoch``):
    the epoch's order comes from a generator seeded by (seed, epoch), identical on every rank."""

    def __init__(self, seed: int):
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 100003 + self.epoch)


def owned_target_mask(window: torch.Tensor, own_from: torch.Tensor) -> torch.Tensor:
    """Boolean [B, span]: real items at positions this window owns."""
    pos = torch.arange(window.shape[1], device=window.device).unsqueeze(0)
    return (window > 0) & (pos >= own_from.unsqueeze(1))


def prefixes(inputs: torch.Tensor, b: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """[R, L]: for each row r, ``inputs[b[r]]`` with the columns after ``q[r]`` zeroed (padding), i.e. what
    the user has seen up to and including position ``q[r]``."""
    cols = torch.arange(inputs.size(1), device=inputs.device).unsqueeze(0)
    return inputs[b].masked_fill(cols > q.unsqueeze(1), 0)
