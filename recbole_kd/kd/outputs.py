"""The teacher's outputs a student is distilled from (top-K items, their scores, the log-normaliser and,
for hint losses, hidden states), computed per batch or cached once for the whole training set (in memory,
and on disk under ``kd_cache_dir``)."""
from __future__ import annotations

import hashlib
import inspect
import json
import os
from logging import getLogger

import numpy as np
import torch
import torch.distributed as dist

from recbole_kd import report
from recbole_kd.distributed import broadcast_parts, comm_device
from recbole_kd.models.windows import OWN_FROM_FIELD, WINDOW_FIELD, owned_target_mask, prefixes


def _all_ranks(flag: bool) -> bool:
    """True only if ``flag`` holds on every rank (one process: ``flag``)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([int(flag)], device=comm_device())  # nccl reduces CUDA tensors only
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def _is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def user_histories(dataset, max_len: int):
    """Users' training histories as left-aligned [U, max_len] (last ``max_len`` items) + lengths,
    from a plain (non-sequential) RecBole dataset sorted by time."""
    inter = dataset.inter_feat
    uids = inter[dataset.uid_field].numpy()
    items = inter[dataset.iid_field].numpy()
    order = np.argsort(uids, kind="stable")
    uids, items = uids[order], items[order]
    users, starts = np.unique(uids, return_index=True)
    ends = np.append(starts[1:], len(uids))
    seqs = np.zeros((len(users), max_len), dtype=np.int64)
    lens = np.zeros(len(users), dtype=np.int64)
    for r, (s, e) in enumerate(zip(starts, ends)):
        part = items[max(s, e - max_len) : e]
        seqs[r, : len(part)] = part
        lens[r] = len(part)
    return torch.from_numpy(users), torch.from_numpy(seqs), torch.from_numpy(lens), (uids, items)


class TeacherOutputs:
    """The teacher's top-K items, their scores, the log-normaliser of its scores over every item it
    may rank (``log_norm``: ``scores - log_norm`` are its log-probabilities, so a loss can tell how
    much probability lies outside the top-K) and (optionally) hidden states, for every row the
    student trains on. ``cached=True``: computed once for the whole training set; otherwise
    computed batch by batch (same functions, same results)."""

    def __init__(self, teacher, train_data, topk: int, need_hidden: bool, cached: bool, device, batch_size=256,
                 cache_dir: str | None = None, mask_seen: bool = True):
        self.teacher = teacher
        # mask_seen: the items a row's user has already seen (its prefix in the window; a user's training
        # items in user mode) never enter the teacher's top-K, as the filter_seen evaluation protocol removes
        # them from every ranking (RecBole's own protocol removes them for general models only; for a sequential
        # student the trainer turns the mask on exactly when evaluation filters, see kd_mask_seen). Unmasked, a SASRec teacher's top-1 at a training position is mostly the item
        # just consumed (tied input/output embeddings), and hard/rd/soft distil that item as a label.
        self.mask_seen = bool(mask_seen)
        self.topk = min(int(topk), teacher.n_items - 1)
        self.need_hidden = need_hidden
        self.cached = cached
        self.device = device
        self.batch_size = batch_size
        self.mode = "position" if hasattr(train_data, "table") else "user"
        self.history_mask = None
        self.cache_file, self.loaded_from_disk = None, False
        if self.mode == "user":
            self._prepare_users(train_data.dataset)
        if cached:
            if cache_dir:
                self.cache_file = os.path.join(cache_dir, f"teacher-outputs-{self._digest(train_data)}.pt")
                self.loaded_from_disk = _all_ranks(self._load(self.cache_file))  # all load, or all compute
            if not self.loaded_from_disk:
                self._build_cache(train_data)
                if self.cache_file and _is_main_process():
                    self._save(self.cache_file)

    # ---- on-disk cache (kd_cache_dir): shared by every student of the same teacher and data -----------
    _CACHED = ("ids", "scores", "log_norm", "hidden", "offsets", "user_index")

    def _digest(self, train_data) -> str:
        """Hash of everything the cached tensors are computed from: the teacher's weights and the
        plain attributes of its modules (head counts, window length, ...), top-K, whether hidden
        states are kept, and the exact inputs (the training windows, or the users' histories and
        masks). Equal digests mean equal outputs, so a cached file is never wrong for a run."""
        h = hashlib.sha1(f"{self.mode}|{self.topk}|{self.need_hidden}|{self.mask_seen}|"
                         f"{torch.device(self.device).type}".encode())
        tensors = list(self.teacher.named_parameters()) + list(self.teacher.named_buffers())  # incl. non-persistent
        for name, tensor in tensors:
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        attrs = [{k: v for k, v in vars(m).items() if isinstance(v, (bool, int, float, str))}
                 for m in self.teacher.modules()]
        h.update(json.dumps([type(m).__name__ for m in self.teacher.modules()] + attrs, sort_keys=True).encode())
        # the code that computes the outputs: this module and the teacher's model classes
        files = {__file__} | {inspect.getsourcefile(type(m)) or "" for m in self.teacher.modules()}
        for path in sorted(f for f in files if f and os.path.isfile(f)):
            with open(path, "rb") as f:
                h.update(f.read())
        if self.mode == "position":
            inputs = [train_data.table[WINDOW_FIELD], train_data.table[OWN_FROM_FIELD]]
        else:
            inputs = [self.user_row, self.user_seqs, self.user_lens, self.history_mask]
        for tensor in inputs:
            h.update(tensor.cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def _load(self, path: str) -> bool:
        if not os.path.isfile(path):
            return False
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            for key in self._CACHED:
                setattr(self, key, state.get(key))
        except Exception as exc:  # unreadable (e.g. truncated by a crash): recompute and overwrite
            getLogger().warning(f"teacher output cache {path} unreadable ({type(exc).__name__}); recomputing")
            return False
        getLogger().info(f"teacher outputs loaded from {path}")
        return True

    def _save(self, path: str) -> None:
        """Write whole or not at all (a temporary file renamed into place); a folder that cannot be
        written costs only the reuse: a warning, and the run goes on with the outputs in memory."""
        state = {k: getattr(self, k) for k in self._CACHED if getattr(self, k, None) is not None}
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            torch.save(state, tmp)
            os.replace(tmp, path)
        except OSError as exc:
            report.user_warning(f"teacher output cache not written to {path} ({exc}); outputs kept in memory only "
                                "(check kd_cache_dir)", getLogger())
            return
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        getLogger().info(f"teacher outputs saved to {path}")

    # ---- raw teacher outputs ------------------------------------------------------------------------
    @torch.no_grad()
    def _topk(self, hidden, logits, users=None):
        if users is not None and self.history_mask is not None and self.mask_seen:
            logits = logits.masked_fill(self.history_mask[users].to(logits.device), float("-inf"))
        logits[:, 0] = float("-inf")  # padding id
        scores, ids = logits.topk(self.topk, dim=1)
        return ids, scores, torch.logsumexp(logits.float(), dim=1), (hidden if self.need_hidden else None)

    @torch.no_grad()
    def position_rows(self, window: torch.Tensor, own_from: torch.Tensor):
        inputs, targets = window[:, :-1], window[:, 1:]
        mask = owned_target_mask(targets, own_from - 1)
        hidden, logits = self.teacher.position_outputs(inputs.to(self.device), mask.to(self.device))
        if self.mask_seen:  # row (b, q) has seen inputs[b, :q+1]; padding (0) is masked by _topk anyway
            seen = prefixes(inputs, *mask.nonzero(as_tuple=True))
            logits = logits.scatter(1, seen.to(logits.device), float("-inf"))
        return self._topk(hidden, logits)

    def _prepare_users(self, dataset):
        max_len = getattr(self.teacher, "max_seq_length", 1)
        users, seqs, lens, (uids, items) = user_histories(dataset, max_len)
        n_users = dataset.num(dataset.uid_field)
        self.user_row = torch.full((n_users,), -1, dtype=torch.long)
        self.user_row[users] = torch.arange(len(users))
        self.user_seqs, self.user_lens = seqs, lens
        # mask each user's training items (a general student's evaluation removes them under both protocols)
        mask = torch.zeros((n_users, self.teacher.n_items), dtype=torch.bool)
        mask[torch.from_numpy(uids), torch.from_numpy(items)] = True
        self.history_mask = mask

    @torch.no_grad()
    def user_rows(self, users: torch.Tensor):
        rows = self.user_row[users.cpu()]
        seqs = self.user_seqs[rows].to(self.device)
        lens = self.user_lens[rows].to(self.device)
        hidden, logits = self.teacher.user_outputs(users.to(self.device), seqs, lens)
        return self._topk(hidden, logits, users.cpu())

    # ---- cache ------------------------------------------------------------------------------------
    def _build_cache(self, train_data):
        if self.mode == "position":
            table = train_data.table
            window, own = table[WINDOW_FIELD], table[OWN_FROM_FIELD]
            counts = owned_target_mask(window[:, 1:], own - 1).sum(1)
            self.offsets = torch.cumsum(counts, 0) - counts
            n_rows, rows_per_unit = window.size(0), counts

            def compute(lo, hi):
                return self._collect(self.position_rows(window[i : min(i + self.batch_size, hi)],
                                                        own[i : min(i + self.batch_size, hi)])
                                     for i in range(lo, hi, self.batch_size))
        else:
            users = torch.arange(self.user_row.numel())
            users = users[self.user_row >= 0]
            self.user_index = torch.full_like(self.user_row, -1)
            self.user_index[users] = torch.arange(users.numel())
            n_rows, rows_per_unit = users.numel(), torch.ones(users.numel(), dtype=torch.long)

            def compute(lo, hi):
                return self._collect(self.user_rows(users[i : min(i + self.batch_size, hi)])
                                     for i in range(lo, hi, self.batch_size))

        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if world == 1 or n_rows < world:
            self.ids, self.scores, self.log_norm, self.hidden = compute(0, n_rows)
            return
        # distributed: each rank computes one contiguous block, then every block is broadcast from
        # the rank that computed it, so the cache is built once and is identical on all ranks
        bounds = [int(b[0]) if b.numel() else n_rows for b in torch.tensor_split(torch.arange(n_rows), world)] + [n_rows]
        rank = dist.get_rank()
        ids, scores, log_norm, hidden = compute(bounds[rank], bounds[rank + 1])
        counts = [int(rows_per_unit[bounds[r] : bounds[r + 1]].sum()) for r in range(world)]
        self.ids = broadcast_parts(ids, counts, ids)
        self.scores = broadcast_parts(scores, counts, scores)
        self.log_norm = broadcast_parts(log_norm, counts, log_norm)
        self.hidden = broadcast_parts(hidden, counts, hidden) if hidden is not None else None

    def _collect(self, outputs):
        parts_ids, parts_scores, parts_norm, parts_hidden = [], [], [], []
        for ids, scores, log_norm, hidden in outputs:
            parts_ids.append(ids.cpu())
            parts_scores.append(scores.cpu())
            parts_norm.append(log_norm.cpu())
            if hidden is not None:
                parts_hidden.append(hidden.cpu())
        ids = torch.cat(parts_ids).to(torch.int32) if parts_ids else torch.zeros((0, self.topk), dtype=torch.int32)
        scores = torch.cat(parts_scores).float() if parts_scores else torch.zeros((0, self.topk))
        log_norm = torch.cat(parts_norm).float() if parts_norm else torch.zeros(0)
        hidden = torch.cat(parts_hidden).float() if parts_hidden else None
        return ids, scores, log_norm, hidden

    def nbytes(self) -> int:
        if not self.cached:
            return 0
        total = self.ids.numel() * 4 + self.scores.numel() * 4 + self.log_norm.numel() * 4
        return total + (self.hidden.numel() * 4 if self.hidden is not None else 0)

    # ---- lookup -----------------------------------------------------------------------------------
    def rows(self, keys, interaction):
        """(ids [M, K], scores [M, K], log_norm [M], hidden [M, d_t] | None) for the student's rows ``keys``."""
        kind = keys[0]
        if not self.cached:
            if kind == "position":
                return self.position_rows(interaction[WINDOW_FIELD], interaction[OWN_FROM_FIELD])
            return self.user_rows(keys[1])
        if kind == "position":
            window_ids, mask = keys[1].cpu(), keys[2].cpu()
            counts = mask.sum(1)
            starts = self.offsets[window_ids]
            first = torch.repeat_interleave(starts, counts)
            within = torch.arange(int(counts.sum())) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
            index = first + within
        else:
            index = self.user_index[keys[1].cpu()]
        hidden = self.hidden[index].to(self.device) if self.hidden is not None else None
        return (self.ids[index].long().to(self.device), self.scores[index].to(self.device),
                self.log_norm[index].to(self.device), hidden)
