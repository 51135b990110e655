"""Which teacher a distilled run uses and what it must share with its student: the settings a teacher
run takes from the student's, the teacher-zoo key, the split and architecture settings a checkpoint is
checked and rebuilt with, and the size check."""
from __future__ import annotations

import hashlib
import json
import os

from recbole_kd.checkpoint import plain
from recbole_kd.errors import ConfigError
from recbole_kd.registry import get_entry

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


def check_teacher_size(config, name: str, n_teacher: int, student_params: int | None) -> None:
    """Refuse a teacher with fewer parameters than the student (before any teacher training)."""
    if student_params and n_teacher < student_params and not config["kd_allow_smaller_teacher"]:
        raise ConfigError(
            f"teacher {name} has fewer parameters ({n_teacher:,}) than the student ({student_params:,}); "
            "choose a larger teacher (teacher_config) or set kd_allow_smaller_teacher=True"
        )


# keys that define a model's architecture and evaluation input (restored from the checkpoint)
ARCH_KEYS = (
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


def arch_overrides(saved: dict) -> dict:
    return {k: saved[k] for k in ARCH_KEYS if k in saved}


def distilled_from_raw_top_k(model: str, result: dict) -> bool:
    """Whether a stored run of ``model`` was distilled from the teacher's raw top-K, seen items included:
    a windowed (sequential) student's run from before ``kd_mask_seen`` (its result lacks the key), or
    one run with it off, whose losses read the top-K (not hint alone). A non-windowed student (KD-MF)
    has always had its users' training items masked."""
    losses = result.get("kd_losses")
    if not losses or set(losses) <= {"hint"}:
        return False
    if not hasattr(get_entry(model).cls, "build_train_dataloader"):  # user mode: masked by history_mask
        return False
    return not result.get("kd_mask_seen", False)
