"""Distillation trainer: RecBole's ``Trainer`` with the ``_train_epoch(loss_func=...)`` hook.

Total loss = L_main (the student's own loss on the ground truth) + sum_i lambda_i * L_kd_i;
RecBole logs each term separately (train_loss1 = main, then one per KD loss in config order).
The teacher is frozen, in eval() mode, and lives here, not in the student: it is in neither
the optimizer nor the student's checkpoint.
"""
from __future__ import annotations

import itertools
import os
import time

from recbole.utils import ModelType, init_seed
from torch import nn

from recbole_kd import report
from recbole_kd.compat import create_dataset  # never unpickles a saved dataset
from recbole_kd.config import planned_setting
from recbole_kd.errors import ConfigError
from recbole_kd.fused import ItemScores
from recbole_kd.kd.base import KDInputs, resolve_mask_seen
from recbole_kd.kd.gate import gate_weights, weighted_mean
from recbole_kd.kd.losses import get_kd_loss
from recbole_kd.kd.outputs import TeacherOutputs
from recbole_kd.kd.teacher import load_teacher, pretrained_choice
from recbole_kd.kd.teacher_spec import teacher_overrides, zoo_path
from recbole_kd.report import Phase
from recbole_kd.trainer import KDTrainer
from recbole_kd.utils import count_parameters


def parse_kd_losses(config):
    """[(KDLoss, weight, params)] from ``kd_losses: {name: weight}`` + ``kd_loss_params``."""
    spec = config["kd_losses"] or {}
    if isinstance(spec, str):
        spec = {spec: 1.0}
    if not isinstance(spec, dict):
        raise ValueError(f"kd_losses must map loss names to weights, e.g. {{soft: 1.0}}; got {spec!r}")
    all_params = config["kd_loss_params"] or {}
    out = []
    for name, weight in spec.items():
        loss = get_kd_loss(name)
        params = dict(loss.defaults)
        params.update(all_params.get(name, {}) or {})
        unknown = set(params) - set(loss.defaults)
        if unknown:
            raise ValueError(f"unknown parameter(s) {sorted(unknown)} for KD loss {name!r}; known: {sorted(loss.defaults)}")
        out.append((loss, float(weight), params))
    return out


def hidden_size(model) -> int:
    return int(getattr(model, "hidden_size", None) or model.embedding_size)


class DistillTrainer(KDTrainer):
    def __init__(self, config, model):
        super().__init__(config, model)
        if getattr(model, "cl_weight", 0):
            raise ConfigError(f"cl_weight={model.cl_weight}: the contrastive regulariser is for plain training (e.g. "
                              "of a teacher); a distilled student is trained by its KD losses (set cl_weight: 0)")
        self.kd_spec = parse_kd_losses(config)
        self.kd_topk = config["kd_topk"]  # the value used (capped at the catalogue when the teacher is attached)
        self.kd_topk_requested = self.kd_topk
        self.kd_gate = config["kd_gate"] or "none"
        self.kd_gate_k = config["kd_gate_k"]
        self.kd_cache = bool(config["kd_cache"])
        self.kd_mask_seen = resolve_mask_seen(config, model.type == ModelType.SEQUENTIAL)
        self.teacher = None
        self.teacher_info = {}
        self.teacher_outputs = None
        self.kd_modules = nn.ModuleDict()
        self.setup_seconds = 0.0  # finding (or training) and loading the teacher, and its output cache
        self.cache_seconds = 0.0  # the teacher-output cache alone (computed, or read from kd_cache_dir)

    # ---- set-up (needs the training data, so it happens when fit starts) ----------------------------
    @staticmethod
    def prepare_shared(config, build: bool = True) -> None:
        """Distributed runs: find or train the teacher once, before the ranks start (they then
        find it in the zoo). ``build=False`` (machines other than the first): only check it is there."""
        if config["teacher_checkpoint"]:
            return
        folder, key, path = zoo_path(config)
        if not build:
            if not os.path.isfile(path) and pretrained_choice(config, log=False)[0] is None:
                raise ConfigError(
                    f"distributed run: teacher {key} is not in {folder}, and only the machine with offset=0 "
                    "trains it; give every machine the same teacher_dir on shared storage (start offset=0 "
                    "first) or pass --teacher_checkpoint=PATH"
                )
            return
        load_teacher(config, create_dataset(config))

    def phase_plan(self):
        """The phases before the student's training (the teacher's, when the zoo has to train it first, and
        the teacher-output cache), and the student's label (:mod:`recbole_kd.report`)."""
        name = self.config["teacher"]
        phases = []
        if (not self.config["teacher_checkpoint"] and not os.path.isfile(zoo_path(self.config)[2])
                and pretrained_choice(self.config, log=False)[0] is None):
            epochs = planned_setting(name, self.config["dataset"], "epochs", teacher_overrides(self.config))
            phases.append(Phase("teacher", f"teacher {name} training", epochs=epochs if isinstance(epochs, int) else None))
        cache = "teacher-output cache" if self.kd_cache else "teacher loading (outputs computed per batch)"
        phases.append(Phase("cache", cache))
        return phases, f"student {self.config['model']} training"

    def attach_teacher(self, train_data):
        if self.teacher is not None:
            return
        t0 = time.perf_counter()
        self.teacher, self.teacher_info = load_teacher(
            self.config, train_data.dataset, student_params=sum(p.numel() for p in self.model.parameters())
        )
        report.phase_start("cache")
        # the same random stream (KD modules' init, then training) whether the teacher was loaded or
        # had to be trained first
        init_seed(self.config["seed"], self.config["reproducibility"])
        need_hidden = any(loss.needs_hidden for loss, _, _ in self.kd_spec)
        for loss, _, _ in self.kd_spec:
            if loss.make_module is not None:
                self.kd_modules[loss.name] = loss.make_module(hidden_size(self.model), hidden_size(self.teacher)).to(
                    self.device
                )
        if len(list(self.kd_modules.parameters())):
            self.optimizer = self._build_optimizer(
                params=itertools.chain(self.model.parameters(), self.kd_modules.parameters())
            )
            self.distribute(self.kd_modules)  # distributed: KD helpers' gradients are averaged too
        t_cache = time.perf_counter()
        self.teacher_outputs = TeacherOutputs(
            self.teacher, train_data, self.kd_topk, need_hidden, cached=self.kd_cache, device=self.device,
            cache_dir=self.config["kd_cache_dir"], mask_seen=self.kd_mask_seen,
        )
        self.cache_seconds = time.perf_counter() - t_cache
        self.setup_seconds = time.perf_counter() - t0
        report.phase_finish("cache")
        used = self.teacher_outputs.topk
        if used != self.kd_topk:  # TeacherOutputs caps it at the catalogue: n_items - 1 real items
            report.user_warning(
                f"kd_topk={self.kd_topk} is larger than the catalogue ({self.teacher.n_items - 1} items): "
                f"using {used}; set kd_topk <= {used}", self.logger
            )
            self.kd_topk_requested, self.kd_topk = self.kd_topk, used
        trained = self.teacher_info.get("teacher_train_seconds")
        cache = (f"cache on ({self.teacher_outputs.nbytes() / 2**20:.1f} MiB, "
                 f"{'read from kd_cache_dir' if self.teacher_outputs.loaded_from_disk else 'computed'} in "
                 f"{self.cache_seconds:.1f}s)") if self.kd_cache else f"cache off (set-up {self.cache_seconds:.1f}s)"
        self.logger.info(
            f"distillation: teacher {self.teacher_info.get('teacher')} ({self.teacher_info.get('teacher_source')}"
            + (f" in {trained:.1f}s" if trained is not None else "") + "), "
            f"losses {[(l.name, w) for l, w, _ in self.kd_spec]}, gate {self.kd_gate}, top-K {self.kd_topk}, {cache}"
        )

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        self.attach_teacher(train_data)
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)

    # ---- the loss ---------------------------------------------------------------------------------
    def kd_inputs(self, interaction):
        rows = self.model.kd_rows(interaction)
        ids, scores, log_norm, t_hidden = self.teacher_outputs.rows(rows["keys"], interaction)
        output_layer = getattr(self.model, "output_layer", None)
        # student scores where the losses read them (the teacher's top-K in one chunked pass with the
        # normaliser), never the [M, n_items] logits: a distillation epoch costs little more than a
        # plain one (benchmarks/kd_epoch_cost.py)
        extra = {}
        if output_layer is not None:
            weight, bias = output_layer()
            for loss, _, params in self.kd_spec:
                if loss.extra_ids is not None:
                    extra[loss.name] = loss.extra_ids(ids, weight.shape[0], **params)
            logits = ItemScores(rows["hidden"], weight, bias, prefetch=(ids, *extra.values()))
        else:
            logits = self.model.item_logits(rows["hidden"])
        x = KDInputs(
            student_logits=logits,
            student_hidden=rows["hidden"],
            teacher_ids=ids,
            teacher_scores=scores,
            targets=rows["targets"],
            teacher_log_norm=log_norm,
            teacher_hidden=t_hidden,
            modules=self.kd_modules,
            extra_ids=extra,
        )
        return rows, x

    def distillation_loss(self, interaction):
        rows, x = self.kd_inputs(interaction)
        main = self.model.kd_main_loss(interaction, rows, x)
        weights = gate_weights(self.kd_gate, x.teacher_ids, x.targets, self.kd_gate_k)
        terms = [main]
        for loss, weight, params in self.kd_spec:
            terms.append(weight * weighted_mean(loss.fn(x, **params), weights))
        return tuple(terms)

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.kd_modules.train()
        return super()._train_epoch(
            train_data, epoch_idx, loss_func=loss_func or self.distillation_loss, show_progress=show_progress
        )

    # ---- checkpoints keep the learned KD helpers (never the teacher) -------------------------------------
    def checkpoint_state(self, epoch):
        state = super().checkpoint_state(epoch)
        state["kd_modules"] = self.kd_modules.state_dict()
        return state

    def load_extra_state(self, state):
        if state.get("kd_modules"):
            self.kd_modules.load_state_dict(state["kd_modules"])

    def loss_term_names(self):
        return ["main"] + [f"kd:{loss.name}" for loss, _, _ in self.kd_spec]

    def run_report(self) -> dict:
        report = {
            "kd_losses": {l.name: w for l, w, _ in self.kd_spec},
            "kd_loss_params": {l.name: p for l, _, p in self.kd_spec},
            "kd_gate": self.kd_gate,
            "kd_topk": self.kd_topk,
            "kd_topk_requested": self.kd_topk_requested,
            "kd_cache": self.kd_cache,
            "kd_mask_seen": self.kd_mask_seen,
            "teacher_cache_bytes": self.teacher_outputs.nbytes() if self.teacher_outputs else 0,
            # the whole set-up (teacher training if the zoo had none, loading, output cache), then its parts
            "teacher_setup_seconds": self.setup_seconds,
            "teacher_train_seconds": 0.0,  # replaced by the teacher's info when it was trained for this run
            "teacher_cache_seconds": self.cache_seconds,
            "student_train_seconds": self.own_fit_seconds,
            "teacher_cache_file": self.teacher_outputs.cache_file if self.teacher_outputs else None,
            "teacher_cache_loaded": bool(self.teacher_outputs and self.teacher_outputs.loaded_from_disk),
        }
        report.update(self.teacher_info)
        if self.teacher is not None:
            report["teacher_num_params"] = sum(p.numel() for p in self.teacher.parameters())
            report["student_num_params"] = count_parameters(self.model)
        return report
