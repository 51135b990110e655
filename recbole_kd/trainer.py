"""Hooks mixed into every trainer we hand out (RecBole's stock ones included).

They override RecBole ``Trainer`` hooks only (``_train_epoch``,
``_save_checkpoint``, ``resume_checkpoint``, ``evaluate``); ``fit`` stays
RecBole's.
"""
from __future__ import annotations

import time

from recbole.trainer import Trainer
from recbole.utils import set_color

from recbole_kd.checkpoint import FORMAT, FORMAT_VERSION, atomic_save, load_checkpoint, plain_config


class KDTrainerMixin:
    """Safe, atomic checkpoints and per-epoch timing for any RecBole trainer."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.epoch_seconds: list[float] = []
        self.checkpoint_meta: dict = {}

    # ---- timing ---------------------------------------------------------------------------------
    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        start = time.perf_counter()
        out = super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)
        self.epoch_seconds.append(time.perf_counter() - start)
        return out

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
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        atomic_save(self.checkpoint_state(epoch), saved_model_file)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")

    def _load_model_state(self, checkpoint_file):
        checkpoint = load_checkpoint(checkpoint_file, map_location=self.device, expect_model=self.config["model"])
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        return checkpoint

    def resume_checkpoint(self, resume_file):
        resume_file = str(resume_file)
        self.saved_model_file = resume_file
        checkpoint = self._load_model_state(resume_file)
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if not eval_data:
            return None
        if load_best_model:
            checkpoint_file = model_file or self.saved_model_file
            self._load_model_state(checkpoint_file)
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        return super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)


class KDTrainer(KDTrainerMixin, Trainer):
    """RecBole's ``Trainer`` with our hooks; base class for our own trainers."""
