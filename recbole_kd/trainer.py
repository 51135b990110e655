"""Hooks mixed into every trainer we hand out (RecBole's stock ones included).

They override RecBole ``Trainer`` hooks only (``_train_epoch``,
``_save_checkpoint``, ``resume_checkpoint``, ``evaluate``); ``fit`` stays
RecBole's (wrapped: the final training state is saved after it returns).

Every epoch starts by writing ``<model>-<dataset>-<run key>-last.pth`` (weights, optimizer,
early-stopping state, random states, epoch counter; atomically), so ``--resume`` continues a
killed run exactly where its last finished epoch left it.

(Over 400 lines: the checkpoint, resume and evaluation hooks share the trainer's state, and splitting the
mixin would spread one class over several files.)
"""
from __future__ import annotations

import glob
import hashlib
import itertools
import json
import os
import secrets
import time

import numpy as np
import torch
from recbole.data.dataloader import FullSortEvalDataLoader
from recbole.evaluator import Collector
from recbole.trainer import Trainer
from recbole.utils import set_color

from recbole_kd import distributed, report
from recbole_kd import protocol as protocols
from recbole_kd.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    atomic_save,
    load_checkpoint,
    plain,
    plain_config,
    rng_state,
    set_rng_state,
)
from recbole_kd.errors import TrainingError  # noqa: F401  (also importable from here)

# settings that do not change what a run computes: a run resumed with other values of these is the
# same run (``epochs`` included, so a finished or interrupted run can be extended)
VOLATILE_KEYS = frozenset(
    {
        "checkpoint_dir", "data_path", "show_progress", "resume", "strict", "epochs", "device", "gpu_id",
        "use_gpu", "state", "worker", "eval_batch_size", "local_rank", "nproc", "world_size", "ip", "port",
        "offset", "single_spec", "log_wandb", "wandb_project", "teacher_dir", "config_files",
    }
)


def run_settings(config_dict: dict) -> dict:
    return {k: v for k, v in config_dict.items() if k not in VOLATILE_KEYS}


def run_key(config) -> str:
    """A short fingerprint of everything that defines a run (model, data, seed, hyper-parameters)."""
    payload = json.dumps(run_settings(plain_config(config)), sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()[:10]


def _best_model_path(stored, last_file):
    """The best-model file a ``-last.pth`` names: relative to the folder of the ``-last.pth`` file, or (older
    checkpoints) absolute; an absolute path that is gone is looked for next to the ``-last.pth`` file (the
    folder was moved)."""
    if not stored:
        return stored
    folder = os.path.dirname(os.path.abspath(last_file))
    if not os.path.isabs(stored):
        return os.path.join(folder, stored)
    beside = os.path.join(folder, os.path.basename(stored))
    if not os.path.isfile(stored) and os.path.isfile(beside):
        return beside
    return stored


class KDTrainerMixin:
    """Safe, atomic checkpoints and per-epoch timing for any RecBole trainer."""

    def __init__(self, config, model):
        if config["single_spec"]:
            super().__init__(config, model)
        else:
            # RecBole wraps the model in DDP with device_ids=[local_rank], which CPU modules refuse;
            # build the trainer as for one process, then wrap it ourselves (gloo or nccl)
            config["single_spec"] = True
            try:
                super().__init__(config, model)
            finally:
                config["single_spec"] = False
            self.distributed_model = distributed.wrap(config, self.model)
        self.evaluated_users: int | None = None
        self.epoch_seconds: list[float] = []
        self.run_key = run_key(config)
        # RecBole names the best-model file {model}-{time to the second}.pth: two runs started in the same
        # second in one folder would share it. This run's file is unique (run key, pid, random nonce), and
        # the nonce, recorded in every checkpoint's meta, is checked before the best weights are loaded.
        self.run_nonce: str | None = secrets.token_hex(8)
        self.checkpoint_meta: dict = {"run_nonce": self.run_nonce}
        stem = os.path.splitext(self.saved_model_file)[0]
        self.saved_model_file = f"{stem}-{self.run_key}-{os.getpid()}-{self.run_nonce[:8]}.pth"
        self.last_checkpoint_file = os.path.join(
            self.checkpoint_dir, f"{config['model']}-{config['dataset']}-{self.run_key}-last.pth"
        )
        self.protocol = protocols.selected(config)
        self._other_collector = None  # the protocol not selected: scored from the same scores
        self._eval_seen = None
        self.resumed_from: str | None = None
        self.resume_finished = False
        self._pending_resume: dict | None = None
        self._saving = True
        self._epochs_this_process = 0
        self._next_epoch = 0
        self.own_fit_seconds = 0.0  # this model's training (epochs, validation, checkpoints), no set-up
        self._epoch_cycles: list[float] = []  # wall time of each epoch of this fit (for the run's estimate)
        self._epoch_started: float | None = None

    # ---- one epoch: resume state, last checkpoint, NaN guard, timing ----------------------------
    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        now = time.perf_counter()
        if self._epoch_started is not None:  # the previous epoch, its validation and checkpoints included
            self._epoch_cycles.append(now - self._epoch_started)
            report.epoch_timed(self, epoch_idx, self._epoch_cycles)
        self._epoch_started = now
        if self._pending_resume is not None:
            self._apply_resume_state(train_data)
        elif self._saving:  # at the start of every epoch, epoch 0 included: a kill in it can be resumed
            self._save_last(train_data, next_epoch=epoch_idx)
        start = time.perf_counter()
        guarded = self._finite_loss(loss_func or self.model.calculate_loss, epoch_idx)
        out = super()._train_epoch(train_data, epoch_idx, loss_func=guarded, show_progress=show_progress)
        self.epoch_seconds.append(time.perf_counter() - start)
        self._epochs_this_process += 1
        self._next_epoch = epoch_idx + 1
        return out

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        self._saving = saved
        report.training_started(self, int(self.epochs))
        start = time.perf_counter()
        self._epoch_cycles, self._epoch_started = [], None
        result = super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        if saved:
            self._save_last(train_data, next_epoch=self._next_epoch, finished=True)
        self.own_fit_seconds = time.perf_counter() - start
        report.training_finished(self)
        return result

    def loss_term_names(self) -> list[str]:
        """Names of the terms the loss function returns (for error messages)."""
        return ["loss", "contrastive"] if getattr(self.model, "cl_weight", 0) else ["loss"]

    def _finite_loss(self, loss_func, epoch_idx):
        names = self.loss_term_names()
        counter = itertools.count()

        def guarded(interaction):
            batch = next(counter)
            out = loss_func(interaction)
            for i, term in enumerate(out if isinstance(out, tuple) else (out,)):
                if not bool(torch.isfinite(term.detach()).all()):
                    name = names[i] if i < len(names) else f"term {i}"
                    raise TrainingError(
                        f"training loss ({name}) is {float(term.detach().float().sum())} at epoch {epoch_idx}, "
                        f"batch {batch}; training stopped, {self._kept_checkpoints()}; lower learning_rate "
                        "or check the data, then start again or --resume"
                    )
            return out

        return guarded

    def _kept_checkpoints(self) -> str:
        kept = [f for f in (self.last_checkpoint_file, self.saved_model_file) if os.path.isfile(f)]
        if not kept:
            return "no checkpoint had been written yet"
        return "the last good checkpoints are kept: " + ", ".join(kept)

    # ---- checkpoints ----------------------------------------------------------------------------
    def checkpoint_state(self, epoch: int) -> dict:
        best = self.best_valid_score
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": plain_config(self.config),
            "meta": dict(self.checkpoint_meta),
            "epoch": int(epoch),
            "cur_step": int(self.cur_step),
            "best_valid_score": float(best),
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
        }

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if not distributed.is_main(self.config):
            return
        if epoch == -1 and self.resumed_from:
            return  # RecBole's fit saves the current weights as "best" when no epoch is left; keep the real best
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        atomic_save(self.checkpoint_state(epoch), saved_model_file)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")

    def _load_model_state(self, checkpoint_file):
        checkpoint = load_checkpoint(checkpoint_file, map_location=self.device, expect_model=self.config["model"])
        self._load_state_into_model(checkpoint, checkpoint_file)
        return checkpoint

    # ---- resume (``--resume``) -------------------------------------------------------------------
    @staticmethod
    def _generators(train_data) -> list:
        g = getattr(train_data, "generator", None)
        return [g] if isinstance(g, torch.Generator) else []

    def _save_last(self, train_data, next_epoch: int, finished: bool = False) -> None:
        """Everything needed to continue exactly here: weights, optimizer, early-stopping state,
        random states, epoch counter (written atomically to ``last_checkpoint_file``)."""
        if not distributed.is_main(self.config):
            return
        state = self.checkpoint_state(next_epoch - 1)
        state.update(
            kind="last",
            finished=bool(finished),
            next_epoch=int(next_epoch),
            run_key=self.run_key,
            best_valid_result=plain(dict(self.best_valid_result)) if self.best_valid_result else None,
            best_valid_by_protocol=protocols.by_protocol(self.best_valid_result),
            # relative to the checkpoint folder: the folder can be moved and still resume
            best_model_file=os.path.relpath(
                os.path.abspath(self.saved_model_file), os.path.dirname(os.path.abspath(self.last_checkpoint_file))
            ),
            epoch_seconds=[float(x) for x in self.epoch_seconds],
            rng=rng_state(self._generators(train_data)),
        )
        atomic_save(state, self.last_checkpoint_file)

    def prepare_resume(self, mode) -> bool:
        """Load the last checkpoint of this run (``mode``: True, ``"auto"`` = only if there is one, or a
        path). Weights and counters now; optimizer and random states when training restarts."""
        auto = mode == "auto"
        explicit = isinstance(mode, str) and not auto
        path = mode if explicit else self.last_checkpoint_file
        if not os.path.isfile(path) and not explicit:  # an explicit path: load_checkpoint says what is wrong
            if auto:
                return False
            raise CheckpointError(
                f"--resume: no checkpoint to resume in {self.checkpoint_dir} (looked for {os.path.basename(path)})"
                f"{self._other_runs_hint()}; run without --resume to start fresh, or give the same "
                "--checkpoint_dir and settings as the interrupted run"
            )
        state = load_checkpoint(path, map_location=self.device, expect_model=self.config["model"])
        if state.get("kind") != "last":
            raise CheckpointError(
                f"{path} holds best-model weights only, not a resumable training state; resume from the "
                "run's *-last.pth file"
            )
        meta = state.get("meta", {})
        if meta.get("dataset") != self.config["dataset"] or (
            self.checkpoint_meta.get("item_vocab") and meta.get("item_vocab") != self.checkpoint_meta["item_vocab"]
        ):
            raise CheckpointError(
                f"{path} was trained on dataset {meta.get('dataset')!r} with another item vocabulary than "
                f"{self.config['dataset']!r} here; resume it on its own data or start fresh"
            )
        if state.get("run_key") != self.run_key:
            diff = _differing(run_settings(state["config"]), run_settings(plain_config(self.config)))
            raise CheckpointError(
                f"{path} belongs to a run with other settings (differs in: {', '.join(diff) or 'unknown'}); "
                "resume with the same settings or start fresh"
            )
        best_file = _best_model_path(state["best_model_file"], path)
        if best_file and state["best_valid_result"] is not None and not os.path.isfile(best_file):
            raise CheckpointError(
                f"{path} refers to its best-model file {best_file}, which is missing; "
                "restore it or start fresh"
            )
        self._load_state_into_model(state, path)
        self.start_epoch = int(state["next_epoch"])
        self._next_epoch = self.start_epoch
        self.cur_step = int(state["cur_step"])
        self.best_valid_score = float(state["best_valid_score"])
        self.best_valid_result = state["best_valid_result"]
        if self.best_valid_result is not None:
            self.best_valid_result = protocols.ProtocolResult(
                self.best_valid_result, protocol=self.protocol, by_protocol=state.get("best_valid_by_protocol")
            )
        self.saved_model_file = best_file
        self._adopt_nonce(meta.get("run_nonce"))  # its best-model file carries the interrupted run's nonce
        self.epoch_seconds = list(state["epoch_seconds"])
        self.resume_finished = bool(state["finished"])
        self._pending_resume = None if self.resume_finished else state
        self.resumed_from = path
        if self.resume_finished:
            self.logger.info(f"resume: {path} is a finished run; evaluating its best checkpoint")
        else:
            self.logger.info(f"resume: continuing from {path} at epoch {self.start_epoch}")
        return True

    def _adopt_nonce(self, nonce) -> None:
        """Continue the run that wrote a checkpoint (None: a file from before nonces, not checked)."""
        self.run_nonce = nonce
        if nonce:
            self.checkpoint_meta["run_nonce"] = nonce
        else:
            self.checkpoint_meta.pop("run_nonce", None)

    def _load_own_best(self, checkpoint_file):
        """The best weights this run wrote: a file another run overwrote (same name) is refused."""
        checkpoint = load_checkpoint(checkpoint_file, map_location=self.device, expect_model=self.config["model"])
        if self.run_nonce and checkpoint.get("meta", {}).get("run_nonce") != self.run_nonce:
            raise CheckpointError(
                f"best-model file {checkpoint_file} was written by another run (several runs in one "
                "--checkpoint_dir?), not by this one; refusing to evaluate weights this run did not train; "
                "give each run its own --checkpoint_dir and run again"
            )
        self._load_state_into_model(checkpoint, checkpoint_file)

    def _apply_resume_state(self, train_data) -> None:
        state, self._pending_resume = self._pending_resume, None
        self.optimizer.load_state_dict(state["optimizer"])
        self.load_extra_state(state)
        set_rng_state(state["rng"], self._generators(train_data))

    def load_extra_state(self, state: dict) -> None:
        """Subclasses restore what they added in ``checkpoint_state``."""

    def _other_runs_hint(self) -> str:
        pattern = os.path.join(self.checkpoint_dir, f"{self.config['model']}-{self.config['dataset']}-*-last.pth")
        others = sorted(glob.glob(pattern), key=os.path.getmtime)
        if not others:
            return ""
        try:
            saved = load_checkpoint(others[-1])["config"]
        except CheckpointError:
            return f"; found {os.path.basename(others[-1])}, which is unreadable"
        diff = _differing(run_settings(saved), run_settings(plain_config(self.config)))
        return f"; found {os.path.basename(others[-1])} from a run with other settings (differs in: {', '.join(diff)})"

    def _load_state_into_model(self, state, path):
        try:
            self.model.load_state_dict(state["state_dict"])
        except RuntimeError as exc:
            raise CheckpointError(
                f"checkpoint {path} does not fit {self.config['model']} here ({str(exc).splitlines()[0][:160]}); "
                "use the settings it was trained with"
            ) from None
        self.model.load_other_parameter(state.get("other_parameter"))

    def resume_checkpoint(self, resume_file):
        """RecBole's API: a ``*-last.pth`` file resumes exactly (see ``prepare_resume``); a best-model
        checkpoint restarts from its weights and optimizer, as RecBole does."""
        resume_file = str(resume_file)
        if load_checkpoint(resume_file).get("kind") == "last":
            self.prepare_resume(resume_file)
            return
        self.saved_model_file = resume_file
        checkpoint = self._load_model_state(resume_file)
        self._adopt_nonce(checkpoint.get("meta", {}).get("run_nonce"))  # training goes on in that file
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if not eval_data:
            return None
        if not self.config["single_spec"]:
            # distributed: rank 0 evaluates every user (the single-process protocol exactly) and
            # the others take its result, so early stopping decides the same on every rank
            result = None
            if distributed.is_main(self.config):
                self.config["single_spec"] = True  # no all-gather of partial metrics in RecBole's evaluate
                try:
                    result = self._evaluate_here(eval_data, load_best_model, model_file, show_progress)
                finally:
                    self.config["single_spec"] = False
            result, self.evaluated_users = distributed.broadcast_object((result, self.evaluated_users))
            return result
        return self._evaluate_here(eval_data, load_best_model, model_file, show_progress)

    def _evaluate_here(self, eval_data, load_best_model, model_file, show_progress):
        if load_best_model:
            checkpoint_file = model_file or self.saved_model_file
            if model_file:
                self._load_model_state(checkpoint_file)
            else:
                self._load_own_best(checkpoint_file)
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        full_sort = isinstance(eval_data, FullSortEvalDataLoader)
        if full_sort:
            self._eval_seen = getattr(eval_data, "seen_items", None)
            if self._eval_seen is None:
                raise ValueError(
                    "this evaluation loader carries no seen items (recbole_kd.protocol.attach_seen_items); "
                    "build the data with recbole_kd.quick_start.prepare"
                )
            self._other_collector = Collector(self.config)
            for key, value in self.eval_collector.data_struct._data_dict.items():
                if key.startswith("data."):  # training-data statistics some metrics read (data_collect)
                    self._other_collector.data_struct.set(key, value)
        collect = self.eval_collector.eval_batch_collect
        users = [0]

        def counting(scores, *args):
            users[0] += int(scores.shape[0])
            return collect(scores, *args)

        self.eval_collector.eval_batch_collect = counting
        try:
            result = super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)
            if full_sort:
                other = self.evaluator.evaluate(self._other_collector.get_data_struct())
                table = {self.protocol: dict(result), protocols.other(self.protocol): dict(other)}
                result = protocols.ProtocolResult(
                    result, protocol=self.protocol, by_protocol={p: table[p] for p in protocols.PROTOCOLS}
                )
        finally:
            del self.eval_collector.eval_batch_collect
            self._other_collector, self._eval_seen = None, None
        self.evaluated_users = users[0]
        return result

    def _full_sort_batch_eval(self, batched_data):
        """Scores once, ranked under both protocols (:mod:`recbole_kd.protocol`): the selected one goes
        to RecBole's collector (valid_metric, early stopping), the other to a second collector."""
        interaction, history_index, positive_u, positive_i = batched_data
        interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(
            (interaction, None, positive_u, positive_i)
        )  # scores of every item, padding removed
        seq_field = getattr(self.model, "ITEM_SEQ", None)
        rows, items = protocols.seen_index(
            self._eval_seen, interaction, self.config["USER_ID_FIELD"], seq_field, scores.device
        )
        filtered = scores.clone()
        filtered[rows, items] = -np.inf
        if history_index is not None:  # RecBole's rule for general models
            scores[history_index] = -np.inf
        ranked = {protocols.FILTER_SEEN: filtered, protocols.RECBOLE: scores}
        self._other_collector.eval_batch_collect(
            ranked[protocols.other(self.protocol)], interaction, positive_u, positive_i
        )
        return interaction, ranked[self.protocol], positive_u, positive_i

    # ---- distributed: the DDP wrapper covers the student and any learned helper modules ------------
    def distribute(self, *extra_modules) -> None:
        """Re-wrap for DDP after helper modules (a KD projection, a transfer mapping) were added or
        parameters were frozen / unfrozen (DDP only reduces what required grad when it was built)."""
        if not self.config["single_spec"]:
            self.distributed_model = distributed.wrap(self.config, self.model, *extra_modules)

    def sync_grad_loss(self):
        # every parameter the DDP wrapper reduces must take part in the loss (RecBole's version
        # covers the student only, and frozen parameters would get no gradient at all)
        module = self.distributed_model.module
        return sum(p.sum() * 0 for p in module.parameters() if p.requires_grad)


class KDTrainer(KDTrainerMixin, Trainer):
    """RecBole's ``Trainer`` with our hooks; base class for our own trainers."""


def _differing(a: dict, b: dict) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
