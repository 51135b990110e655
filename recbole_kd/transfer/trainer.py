"""Transfer trainer: the source phase (trained once, cached), then the target phase it initialises.

Phase schedule, from config (nested sections, not prefixes)::

    source: {dataset: amazon-sports-5core, epochs: 50, learning_rate: 0.001}   # or: source: NAME
    target: {epochs: 50, learning_rate: 0.0005}
    transfer_mechanisms: [encoder]        # encoder | shared_tokens | cross_kd
    transfer_freeze_epochs: 2             # first target epochs with the transferred encoder frozen

The source model is the same registered student trained on the source dataset with the target's
architecture; its checkpoint is kept in ``transfer_dir`` (one per source dataset and settings)
and an interrupted source run resumes. Only hooks of RecBole's ``Trainer`` are overridden.
"""
from __future__ import annotations

import os
import time
from logging import getLogger

import torch
from recbole.utils import init_seed
from torch import nn

from recbole_kd import report
from recbole_kd.checkpoint import load_checkpoint
from recbole_kd.config import build_config, planned_setting
from recbole_kd.errors import ConfigError
from recbole_kd.models.windows import user_train_sequences
from recbole_kd.quick_start import prepare, run
from recbole_kd.registry import get_entry
from recbole_kd.report import Phase
from recbole_kd.trainer import KDTrainer
from recbole_kd.transfer.mapping import (
    TransferError,
    encoder_names,
    shared_token_ids,
    transfer_encoder,
    transfer_shared_tokens,
)
from recbole_kd.transfer.spec import (  # noqa: F401  (MECHANISMS, parse_mechanisms: also importable from here)
    MECHANISMS,
    parse_mechanisms,
    source_path,
    source_sources,
    source_spec,
)


def ensure_source(config, student: str, build: bool = True) -> tuple[str, str, float]:
    """(checkpoint path, "cached" | "trained", seconds its training took here) of the source model, trained
    first if missing.
    Distributed ranks and ``build=False`` (machines other than the first) never train it: a missing
    source model is one clear error."""
    dataset, overrides = source_spec(config)
    folder, key, path = source_path(config, student)
    if os.path.isfile(path):
        getLogger().info(f"transfer: using the cached source model {path}")
        return path, "cached", 0.0
    if not build or not config["single_spec"]:
        raise ConfigError(
            f"distributed run: source model {key} is not in {folder}; only the launching machine (offset=0) "
            "trains it, before its processes start; give other machines the same transfer_dir on shared storage"
        )
    getLogger().info(f"transfer: source phase: training {student} on {dataset} (cached as {path})")
    report.phase_start("source")
    t0 = time.perf_counter()
    result = run(student, dataset, overrides={**overrides, "checkpoint_dir": folder, "resume": "auto"},
                 result_file=os.path.join(folder, key + ".json"), overrides_source=source_sources(config, overrides))
    seconds = time.perf_counter() - t0
    report.phase_finish("source")
    os.replace(result["checkpoint"], path)
    return path, "trained", seconds


def load_source(config, student: str):
    """The source model (trained first if not cached), its config and training data."""
    dataset, overrides = source_spec(config)
    path, phase, seconds = ensure_source(config, student)
    info = {"source_dataset": dataset, "source_checkpoint": path, "source_phase": phase,
            "source_train_seconds": seconds}
    s_config = build_config(student, dataset, overrides=overrides, overrides_source=source_sources(config, overrides))
    s_dataset, s_train, _, _ = prepare(s_config)
    model = get_entry(student).cls(s_config, s_train.dataset).to(config["device"])
    state = load_checkpoint(path, map_location=config["device"], expect_model=student)
    model.load_state_dict(state["state_dict"])
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, s_dataset, s_train, info


@torch.no_grad()
def user_vectors(model, train_data, device, batch_size: int = 256):
    """(user ids, hidden [U, d]) of every user in ``train_data`` from its training history."""
    if hasattr(train_data, "table"):  # windowed sequential model
        users, seqs = user_train_sequences(train_data.dataset)
        max_len = model.max_seq_length
        padded = torch.zeros((len(seqs), max_len), dtype=torch.long)
        lens = torch.zeros(len(seqs), dtype=torch.long)
        for r, s in enumerate(seqs):
            s = s[-max_len:]
            padded[r, : len(s)] = torch.from_numpy(s)
            lens[r] = len(s)
        users = torch.from_numpy(users)
        out = [model.user_outputs(users[i : i + batch_size].to(device), padded[i : i + batch_size].to(device),
                                  lens[i : i + batch_size].to(device))[0].cpu()
               for i in range(0, len(users), batch_size)]
        return users, torch.cat(out)
    ds = train_data.dataset
    users = torch.unique(ds.inter_feat[ds.uid_field])
    return users, model.user_outputs(users.to(device))[0].cpu()


class TransferTrainer(KDTrainer):
    def __init__(self, config, model):
        super().__init__(config, model)
        self.mechanisms = parse_mechanisms(config)
        self.freeze_epochs = int(config["transfer_freeze_epochs"] or 0)
        self.kd_weight = float(config["transfer_kd_weight"])
        self.transfer_info: dict = {}
        self.transferred: list[str] = []
        self.kd_map = None
        self.teacher_vectors = None
        self.teacher_shared = None

    # ---- set-up ---------------------------------------------------------------------------------------
    @staticmethod
    def prepare_shared(config, build: bool = True) -> None:
        """Distributed runs: train (or find) the source model once, before the ranks start.
        ``build=False`` (machines other than the first): only check it is there."""
        student = getattr(get_entry(config["model"]).cls, "transfer_base", None) or config["model"]
        ensure_source(config, student, build=build)

    def phase_plan(self):
        """The source phase (when its model is not cached yet) and the target phase's label
        (:mod:`recbole_kd.report`)."""
        student = getattr(self.model, "transfer_base", None) or self.config["model"]
        dataset, overrides = source_spec(self.config)
        phases = []
        if not os.path.isfile(source_path(self.config, student)[2]):
            epochs = planned_setting(student, dataset, "epochs", overrides)
            phases.append(Phase("source", f"source phase: {student} on {dataset}",
                                epochs=epochs if isinstance(epochs, int) else None))
        return phases, f"target phase: {self.config['model']} on {self.config['dataset']}"

    def attach_source(self, train_data):
        if self.transfer_info:
            return
        t0 = time.perf_counter()
        student = getattr(self.model, "transfer_base", None) or self.config["model"]
        source, s_dataset, s_train, info = load_source(self.config, student)
        init_seed(self.config["seed"], self.config["reproducibility"])  # same stream, source cached or not
        target = train_data.dataset
        resumed = self.resumed_from is not None  # the checkpoint already holds the transferred weights
        if "encoder" in self.mechanisms or "text" in self.mechanisms:  # text: encoder + text adaptor
            names = encoder_names(self.model) if resumed else transfer_encoder(self.model, source.state_dict())
            self.transferred = [n for n, _ in self.model.named_parameters() if n in set(names)]
            info["encoder_tensors"] = len(names)
        if "shared_tokens" in self.mechanisms:
            report = transfer_shared_tokens(self.model, source, s_dataset, target) if not resumed else {}
            info["shared_tokens"] = report
        if "cross_kd" in self.mechanisms:
            self._prepare_cross_kd(source, s_dataset, s_train, target)
            info["cross_kd_shared_users"] = int(self.teacher_shared.sum())
        info["transfer_setup_seconds"] = time.perf_counter() - t0
        info["transfer_mechanisms"] = list(self.mechanisms)
        self.transfer_info = info
        self.logger.info(f"transfer: {info}")

    def _prepare_cross_kd(self, source, s_dataset, s_train, target):
        users, vectors = user_vectors(source, s_train, self.device)
        tgt_ids, src_ids = shared_token_ids(s_dataset, target, target.uid_field)
        n_users = len(target.field2id_token[target.uid_field])
        d_teacher = vectors.shape[1]
        table = torch.zeros((n_users, d_teacher))
        shared = torch.zeros(n_users, dtype=torch.bool)
        row_of = torch.full((len(s_dataset.field2id_token[s_dataset.uid_field]),), -1, dtype=torch.long)
        row_of[users] = torch.arange(len(users))
        rows = row_of[src_ids]
        ok = rows >= 0
        table[tgt_ids[ok]] = vectors[rows[ok]]
        shared[tgt_ids[ok]] = True
        if not shared.any():
            raise TransferError(
                f"cross_kd needs users present in both datasets; {s_dataset.dataset_name} and "
                f"{target.dataset_name} share none (use encoder transfer instead)"
            )
        self.teacher_vectors, self.teacher_shared = table.to(self.device), shared.to(self.device)
        d_student = int(getattr(self.model, "hidden_size", None) or self.model.embedding_size)
        self.kd_map = nn.Linear(d_student, d_teacher).to(self.device)
        self.optimizer = self._build_optimizer(params=list(self.model.parameters()) + list(self.kd_map.parameters()))

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        self.attach_source(train_data)
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)

    # ---- training -------------------------------------------------------------------------------------
    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        frozen = epoch_idx < self.freeze_epochs
        for name, p in self.model.named_parameters():
            if name in self.transferred:
                p.requires_grad_(not frozen)
        if getattr(self, "_ddp_frozen", None) != frozen:  # distributed: DDP reduces what requires grad now
            self.distribute(self.kd_map)
            self._ddp_frozen = frozen
        if self.kd_map is not None:
            self.kd_map.train()
            loss_func = loss_func or self.transfer_loss
        return super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)

    def transfer_loss(self, interaction):
        rows = self.model.kd_rows(interaction)
        keys = rows["keys"]
        if keys[0] == "position":
            mask = keys[2]
            users = interaction[self.model.USER_ID].unsqueeze(1).expand_as(mask)[mask]
        else:
            users = keys[1]
        if keys[0] == "position":  # the window's hidden states are already computed
            main = self.model.main_loss(rows["hidden"], rows["targets"])
        else:
            main = self.model.calculate_loss(interaction)
        weights = self.teacher_shared[users].float()
        diff = self.kd_map(rows["hidden"]) - self.teacher_vectors[users]
        per_row = diff.pow(2).mean(1)
        hint = (per_row * weights).sum() / weights.sum().clamp(min=1.0)
        return main, self.kd_weight * hint

    def loss_term_names(self):
        return ["main", "transfer:cross_kd"] if self.kd_map is not None else ["loss"]

    # ---- checkpoints ----------------------------------------------------------------------------------
    def checkpoint_state(self, epoch):
        state = super().checkpoint_state(epoch)
        if self.kd_map is not None:
            state["transfer_kd_map"] = self.kd_map.state_dict()
        return state

    def load_extra_state(self, state):
        if self.kd_map is not None and state.get("transfer_kd_map"):
            self.kd_map.load_state_dict(state["transfer_kd_map"])

    def run_report(self) -> dict:
        return {**self.transfer_info, "target_train_seconds": self.own_fit_seconds}
