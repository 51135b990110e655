"""Teacher zoo (find, or train once, a frozen teacher) and the teacher-output cache."""
from __future__ import annotations

import hashlib
import json
import os
import time
from logging import getLogger

import numpy as np
import torch
import torch.distributed as dist

from recbole_kd import report
from recbole_kd.checkpoint import CheckpointError, item_vocab_hash, load_checkpoint
from recbole_kd.distributed import comm_device

# settings of the student's run that the teacher shares (data and device, never model size)
SHARED_KEYS = (
    "data_path",
    "seed",
    "reproducibility",
    "show_progress",
    "state",
    "gpu_id",
    "use_gpu",
    "MAX_ITEM_LIST_LENGTH",
    "eval_batch_size",
    "eval_args",
    "metrics",
    "topk",
    "valid_metric",
    "filter_seen",
    "train_fraction",
)

# settings that decide which interactions are training, validation and test data: a teacher must
# share them with its student, or it may have been trained on the student's valid / test interactions
# (or, in the low-resource setting, on more of the training data than the student may use)
SPLIT_KEYS = (
    "eval_args",
    "train_fraction",
    "user_inter_num_interval",
    "item_inter_num_interval",
    "val_interval",
    "rm_dup_inter",
    "filter_inter_by_user_or_item",
    "benchmark_filename",
)


def split_settings(config) -> dict:
    """The split-defining settings of a config (a RecBole ``Config`` or a checkpoint's plain dict), with
    ``eval_args`` reduced to what splits the data (split, order, group_by)."""
    from recbole_kd.checkpoint import plain

    get = (lambda k: config.get(k)) if isinstance(config, dict) else (lambda k: config[k] if k in config else None)
    out = {}
    for key in SPLIT_KEYS:
        value = plain(get(key))
        if key == "eval_args" and isinstance(value, dict):
            value = {k: value.get(k) for k in ("split", "order", "group_by")}
        if key == "train_fraction" and value is not None and value >= 1:
            value = None  # 1.0 keeps every training interaction, as ~ does
        out[key] = value
    return out


def teacher_overrides(config) -> dict:
    """The teacher's run settings: shared data/device keys + the nested ``teacher_config``."""
    out = {k: config[k] for k in SHARED_KEYS if k in config and config[k] is not None}
    # RecBole's final data_path already ends in the dataset's folder
    out["data_path"] = os.path.dirname(os.path.normpath(config["data_path"]))
    nested = config["teacher_config"] or {}
    if not isinstance(nested, dict):
        raise ValueError(f"teacher_config must be a mapping of settings, got {nested!r}")
    out.update(nested)
    return out


SHARED_SOURCE = "shared with the student's run"


def teacher_sources(config) -> dict:
    """Where each of the teacher run's settings came from, for its settings block: ``teacher_config``, or
    the student's run (shown in the student's block already)."""
    nested = config["teacher_config"] or {}
    return {**{k: SHARED_SOURCE for k in teacher_overrides(config)}, "checkpoint_dir": SHARED_SOURCE,
            "resume": SHARED_SOURCE, **{k: "teacher_config" for k in nested}}


def zoo_key(teacher: str, dataset: str, overrides: dict) -> str:
    payload = {k: v for k, v in overrides.items() if k not in ("data_path", "show_progress", "state", "gpu_id", "use_gpu")}
    digest = hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{teacher}-{dataset}-{digest}"


def zoo_path(config) -> tuple[str, str, str]:
    """(zoo folder, key, checkpoint path) of this run's teacher."""
    folder = config["teacher_dir"] or os.path.join(config["checkpoint_dir"], "teachers")
    key = zoo_key(config["teacher"], config["dataset"], teacher_overrides(config))
    return folder, key, os.path.join(folder, key + ".pth")


def _all_ranks(flag: bool) -> bool:
    """True only if ``flag`` holds on every rank (one process: ``flag``)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([int(flag)], device=comm_device())  # nccl reduces CUDA tensors only
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def _is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _freeze(model):
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def check_teacher_size(config, name: str, n_teacher: int, student_params: int | None) -> None:
    """Refuse a teacher with fewer parameters than the student (before any teacher training)."""
    from recbole_kd.config import ConfigError

    if student_params and n_teacher < student_params and not config["kd_allow_smaller_teacher"]:
        raise ConfigError(
            f"teacher {name} has fewer parameters ({n_teacher:,}) than the student ({student_params:,}); "
            "choose a larger teacher (teacher_config) or set kd_allow_smaller_teacher=True"
        )


def load_teacher(config, dataset, student_params: int | None = None):
    """The frozen teacher for this run: ``teacher_checkpoint`` if given, else the shipped pretrained
    teacher when the run's data matches its card (:func:`pretrained_choice`), else the zoo entry for
    (teacher, dataset, teacher settings), trained first if missing (an interrupted teacher run is
    resumed). A teacher smaller than ``student_params`` is refused. Returns (model, info)."""
    from recbole_kd.config import build_config
    from recbole_kd.quick_start import run
    from recbole_kd.registry import get_entry

    logger = getLogger()
    name = config["teacher"]
    entry = get_entry(name)  # unknown teacher -> UnknownModelError before anything runs
    overrides = teacher_overrides(config)
    info = {"teacher": name}
    path = config["teacher_checkpoint"]
    if isinstance(path, (list, tuple)):  # an ensemble of trained models as the teacher
        return load_ensemble(config, dataset, list(path), student_params)
    card = None
    if path:
        info["teacher_source"] = "checkpoint"
    else:
        card, why = pretrained_choice(config, dataset)
        if why:
            info["teacher_pretrained_skipped"] = why
    if card is not None:
        from recbole_kd import zoo

        check_teacher_size(config, f"{name} (pretrained {card['name']})", card["num_params"], student_params)
        path = zoo.check_weights(card)
        info["teacher_source"] = f"pretrained {card['name']}"
        info.update(zoo.card_results(card))
        logger.info(f"pretrained teacher: using {card['name']} (shipped with recbole-kd, its card's "
                    f"{zoo.headline(card)}); no teacher is trained (teacher_pretrained=False trains one)")
    elif not path:
        folder, key, path = zoo_path(config)
        if os.path.isfile(path):
            logger.info(f"teacher zoo: using cached teacher {path}")
            info["teacher_source"] = "zoo"
        elif not config["single_spec"]:
            from recbole_kd.config import ConfigError

            raise ConfigError(
                f"distributed run: teacher {key} is not in {folder}; ranks never train their own teacher. "
                "The launching machine trains it before starting its processes; on other machines use the "
                "same teacher_dir on shared storage, or --teacher_checkpoint=PATH"
            )
        else:
            t_config = build_config(name, config["dataset"], overrides=overrides, overrides_source=teacher_sources(config))
            n_teacher = sum(p.numel() for p in entry.cls(t_config, dataset).parameters())
            check_teacher_size(config, name, n_teacher, student_params)
            logger.info(f"teacher zoo: no teacher {key} in {folder}; training {name} on {config['dataset']} first")
            report.phase_start("teacher")
            t0 = time.perf_counter()
            result = run(
                name,
                config["dataset"],
                overrides={**overrides, "checkpoint_dir": folder, "resume": "auto"},
                saved=True,
                result_file=os.path.join(folder, key + ".json"),
                overrides_source=teacher_sources(config),
            )
            info["teacher_train_seconds"] = time.perf_counter() - t0
            report.phase_finish("teacher")
            os.replace(result["checkpoint"], path)
            info["teacher_source"] = "trained"
    teacher = _load_checked(config, dataset, path, name)
    check_teacher_size(config, name, sum(p.numel() for p in teacher.parameters()), student_params)
    info["teacher_checkpoint"] = path
    if card is None:
        info.update(_sidecar(path))
    return _freeze(teacher), info


def pretrained_choice(config, dataset=None, log: bool = True) -> tuple[dict | None, str | None]:
    """The shipped pretrained teacher (its card) this run uses, or None and why not (None when there is
    nothing to say: opted out, or no entry for this teacher and dataset). An entry is used when the
    run's data files, data-reading and split settings, window length and (given ``dataset``) item
    vocabulary are the card's; otherwise one line says which differ and a teacher is found or trained
    as before. ``log=False``: decide only (the phase plan)."""
    from recbole_kd import zoo

    card, why = zoo.wants_pretrained(config)
    if card is not None:
        differ = zoo.mismatch(card, config, dataset)
        if differ:
            card, why = None, f"{card['name']} was trained on other data or settings: " + "; ".join(differ)
    if why and log:
        getLogger().info(f"pretrained teacher not used: {why}; the teacher is found in or trained into the teacher "
                         "zoo as before")
    return card, why


def _sidecar(path: str) -> dict:
    sidecar = os.path.splitext(path)[0] + ".json"
    if not os.path.isfile(sidecar):
        return {}
    with open(sidecar) as f:
        saved = json.load(f)
    return {"teacher_test_result": saved.get("test_result"), "teacher_best_valid_result": saved.get("best_valid_result"),
            "teacher_protocol": saved.get("protocol"),
            "teacher_test_result_by_protocol": saved.get("test_result_by_protocol")}


def _load_checked(config, dataset, path: str, name: str | None):
    """A model from one of our checkpoints, refused unless it was trained on this dataset and item
    vocabulary (and, if ``name`` is given, is that model)."""
    from recbole_kd.config import build_config
    from recbole_kd.registry import get_entry

    state = load_checkpoint(path, map_location=config["device"])
    meta = state.get("meta", {})
    saved_model = state["config"].get("model")
    if name is not None and saved_model != name:
        raise CheckpointError(
            f"teacher checkpoint {path} holds model {saved_model!r}, but teacher={name!r}; "
            "pass --teacher matching the checkpoint or another --teacher_checkpoint"
        )
    name = saved_model
    entry = get_entry(name)
    if state["config"].get("dataset") != config["dataset"]:
        raise CheckpointError(
            f"teacher checkpoint {path} was trained on dataset {state['config'].get('dataset')!r}, not "
            f"{config['dataset']!r}; use a teacher trained on this dataset"
        )
    theirs, ours = split_settings(state["config"]), split_settings(config)
    differ = sorted(k for k in SPLIT_KEYS if theirs[k] != ours[k])
    if differ:
        raise CheckpointError(
            f"teacher checkpoint {path} was trained on another split of {config['dataset']!r} ("
            + ", ".join(f"{k}={theirs[k]!r} there, {ours[k]!r} here" for k in differ)
            + "): it may have trained on this run's valid / test interactions; re-train the teacher with this "
            "run's settings (or drop teacher_checkpoint and let the zoo train it)"
        )
    vocab = item_vocab_hash(dataset)
    if meta.get("item_vocab") != vocab:
        raise CheckpointError(
            f"teacher checkpoint {path} has a different item vocabulary than dataset {config['dataset']!r} "
            "(other filtering or other data files); re-train the teacher on this data"
        )
    arch = _arch_overrides(state["config"])
    arch["data_path"] = os.path.dirname(os.path.normpath(config["data_path"]))  # where the data is now
    t_config = build_config(name, config["dataset"], overrides=arch)
    teacher = entry.cls(t_config, dataset).to(config["device"])
    try:
        teacher.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"teacher checkpoint {path} does not fit {name} on {config['dataset']} "
            f"({str(exc).splitlines()[0][:160]}); re-train the teacher"
        ) from None
    return teacher


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


def load_ensemble(config, dataset, paths, student_params):
    if not paths:
        raise CheckpointError("teacher_checkpoint is an empty list; give one or more checkpoints")
    members = [_load_checked(config, dataset, p, None) for p in paths]
    teacher = EnsembleTeacher(members).to(config["device"])
    names = [type(m).__name__ for m in members]
    label = "ensemble(" + ", ".join(f"{n} x{names.count(n)}" for n in dict.fromkeys(names)) + ")"
    check_teacher_size(config, label, sum(p.numel() for p in teacher.parameters()), student_params)
    info = {"teacher": label, "teacher_source": "checkpoint", "teacher_checkpoint": list(paths),
            "teacher_members": [_sidecar(p).get("teacher_test_result") for p in paths]}
    return _freeze(teacher), info


# keys that define a model's architecture and evaluation input (restored from the checkpoint)
_ARCH_KEYS = (
    "n_layers",
    "n_heads",
    "hidden_size",
    "inner_size",
    "embedding_size",
    "hidden_act",
    "layer_norm_eps",
    "hidden_dropout_prob",
    "attn_dropout_prob",
    "initializer_range",
    "loss_type",
    "MAX_ITEM_LIST_LENGTH",
    "mask_ratio",
    "item_text",
    "text_fields",
    "text_cold_items",
    "load_col",
    "USER_ID_FIELD",
    "ITEM_ID_FIELD",
    "TIME_FIELD",
    "state",
)


def _arch_overrides(saved: dict) -> dict:
    return {k: saved[k] for k in _ARCH_KEYS if k in saved}


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


def distilled_from_raw_top_k(model: str, result: dict) -> bool:
    """Whether a stored run of ``model`` was distilled from the teacher's raw top-K, seen items included:
    a windowed (sequential) student's run from before ``kd_mask_seen`` (its result lacks the key), or
    one run with it off, whose losses read the top-K (not hint alone). A non-windowed student (KD-MF)
    has always had its users' training items masked."""
    from recbole_kd.registry import get_entry

    losses = result.get("kd_losses")
    if not losses or set(losses) <= {"hint"}:
        return False
    if not hasattr(get_entry(model).cls, "build_train_dataloader"):  # user mode: masked by history_mask
        return False
    return not result.get("kd_mask_seen", False)


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
        import inspect

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
            from recbole_kd.models.windows import OWN_FROM_FIELD, WINDOW_FIELD

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
        from recbole_kd.models.windows import owned_target_mask, prefixes  # lazy: models import this module

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
            from recbole_kd.models.windows import OWN_FROM_FIELD, WINDOW_FIELD, owned_target_mask

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
        from recbole_kd.distributed import broadcast_parts

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
                from recbole_kd.models.windows import OWN_FROM_FIELD, WINDOW_FIELD

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


def load_checkpoints(dataset_name: str, paths, overrides: dict | None = None):
    """One checkpoint, or an ensemble of them (a list), rebuilt for evaluation: ``(label, model, config,
    valid_data, test_data)`` with the same split and loaders as a training run of the first sequential
    member's model (its evaluation loader also carries the user ids an MF member needs); ``overrides``
    are data settings (e.g. ``data_path``). The model is frozen, in ``eval()`` mode."""
    from recbole.model.abstract_recommender import SequentialRecommender

    from recbole_kd.config import build_config
    from recbole_kd.quick_start import prepare
    from recbole_kd.registry import get_entry

    paths = [paths] if isinstance(paths, str) else list(paths)
    states = [load_checkpoint(p, map_location="cpu") for p in paths]
    state = next((st for st in states if issubclass(get_entry(st["config"]["model"]).cls, SequentialRecommender)),
                 states[0])
    name = state["config"]["model"]
    split = {k: v for k, v in split_settings(state["config"]).items() if v is not None}
    settings = {**_arch_overrides(state["config"]), **split, "show_progress": False, **(overrides or {})}
    config = build_config(name, dataset_name, overrides=settings)
    dataset, _, valid_data, test_data = prepare(config)
    if len(paths) == 1:
        return name, _freeze(_load_checked(config, dataset, paths[0], name)), config, valid_data, test_data
    model, info = load_ensemble(config, dataset, paths, None)
    return info["teacher"], model, config, valid_data, test_data


def evaluate_checkpoints(dataset_name: str, paths, overrides: dict | None = None) -> dict:
    """Valid and test results of one checkpoint or an ensemble of them (a list), through the
    same split, loaders and RecBole evaluator as a training run (see ``load_checkpoints``).
    Returns the fields of a run summary that describe a model: model, num_params,
    best_valid_result, test_result and the cost report."""
    from recbole_kd.quick_start import _floats, cost_report
    from recbole_kd.registry import get_trainer

    paths = [paths] if isinstance(paths, str) else list(paths)
    label, model, config, valid_data, test_data = load_checkpoints(dataset_name, paths, overrides)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    valid = trainer.evaluate(valid_data, load_best_model=False, show_progress=False)
    test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    from recbole_kd.protocol import by_protocol, selected

    return {"model": label, "dataset": dataset_name, "checkpoints": paths, "num_params": sum(p.numel() for p in model.parameters()),
            "protocol": selected(config), "best_valid_result": _floats(valid), "test_result": _floats(test),
            "best_valid_result_by_protocol": by_protocol(valid), "test_result_by_protocol": by_protocol(test),
            **cost_report(model, test_data, None)}
