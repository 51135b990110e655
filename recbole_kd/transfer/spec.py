"""What a transfer run reads from its settings: the mechanisms, the source dataset and the source run's
settings, and where the source model is cached (``transfer_dir``)."""
from __future__ import annotations

import os

import recbole

from recbole_kd.errors import ConfigError
from recbole_kd.kd.teacher_spec import zoo_key

MECHANISMS = ("encoder", "shared_tokens", "cross_kd", "text")

# settings the source run takes from the target run (data location, protocol, device, architecture)
_SHARED = ("seed", "reproducibility", "show_progress", "state", "gpu_id", "use_gpu", "eval_args", "metrics", "topk",
           "valid_metric", "eval_batch_size")
_ARCH = ("n_layers", "n_heads", "hidden_size", "inner_size", "embedding_size", "hidden_act", "layer_norm_eps",
         "initializer_range", "loss_type", "MAX_ITEM_LIST_LENGTH", "item_text", "text_fields", "text_cache_dir",
         "text_cold_items")


def parse_mechanisms(config) -> list[str]:
    mech = config["transfer_mechanisms"] or []
    if isinstance(mech, str):
        mech = [mech]
    unknown = [m for m in mech if m not in MECHANISMS]
    if unknown or not mech:
        raise ConfigError(f"invalid setting transfer_mechanisms={mech!r}: use one or more of {', '.join(MECHANISMS)}")
    return list(mech)


def source_spec(config) -> tuple[str, dict]:
    """(source dataset, settings of the source run)."""
    src = config["source"]
    if isinstance(src, str):
        src = {"dataset": src}
    if not isinstance(src, dict) or not src.get("dataset"):
        raise ConfigError("a transfer model needs a source dataset: --source=NAME or source: {dataset: NAME, ...}")
    overrides = {k: config[k] for k in _SHARED + _ARCH if k in config and config[k] is not None}
    dataset = src["dataset"]
    parent = os.path.dirname(os.path.normpath(config["data_path"]))  # the target's data folder
    if os.path.isfile(os.path.join(parent, dataset, f"{dataset}.inter")) or not _embedded(dataset):
        overrides["data_path"] = parent
    # else: RecBole's default folder, so the embedded ml-100k (inside its wheel) is a source for any target
    overrides.update({k: v for k, v in src.items() if k != "dataset"})
    return dataset, overrides


def _embedded(dataset: str) -> bool:
    return os.path.isfile(os.path.join(os.path.dirname(recbole.__file__), "dataset_example", dataset, f"{dataset}.inter"))


def source_sources(config, overrides: dict) -> dict:
    """Where each of the source run's settings came from, for its settings block: the ``source`` section,
    or the target run (shown in its own block)."""
    src = config["source"] if isinstance(config["source"], dict) else {}
    shared = "shared with the target run"
    return {**{k: shared for k in overrides}, "checkpoint_dir": shared, "resume": shared,
            **{k: "source section" for k in src if k != "dataset"}}


def source_path(config, student: str) -> tuple[str, str, str]:
    """(folder, key, checkpoint path) of the source model of this run."""
    dataset, overrides = source_spec(config)
    folder = config["transfer_dir"] or os.path.join(config["checkpoint_dir"], "transfer")
    key = zoo_key(student, dataset, overrides)
    return folder, key, os.path.join(folder, key + ".pth")
