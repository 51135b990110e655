"""Making a pretrained-teacher entry (``benchmarks/export_pretrained_teacher.py``): the weights without
optimizer state and the card, installed only after the weights reproduce their run record's metrics."""
from __future__ import annotations

import json
import os
import shutil

from recbole_kd.checkpoint import FORMAT, FORMAT_VERSION, CheckpointError, atomic_save, load_checkpoint, plain
from recbole_kd.compat import is_path_key
from recbole_kd.kd.teacher import evaluate_checkpoints
from recbole_kd.kd.teacher_spec import ARCH_KEYS, split_settings
from recbole_kd.serving.artefact import file_sha256  # torch and the standard library only
from recbole_kd.utils import cli_value
from recbole_kd.zoo import (
    CARD_FILE,
    CARD_FORMAT,
    CARD_VERSION,
    DATA_KEYS,
    LOCAL_KEYS,
    PRETRAINED_DIR,
    WEIGHTS_FILE,
    _rounded,
    data_fingerprint,
)


def _run_from_record(record: dict, command: str | None, commit: str | None) -> tuple[dict, dict]:
    """(result, provenance) from a run record: a bench cell (``result`` + ``command``, ``git_commit``,
    ``settings``) or a plain ``--result_file`` (then ``command`` and ``commit`` must be given)."""
    if "result" in record:
        result = record["result"]
        settings = record.get("settings") or {}
        user_command = " ".join(["python -m recbole_kd", f"--model={record['model']}", f"--dataset={record['dataset']}",
                                 f"--seed={record['seed']}"] + [f"--{k}={cli_value(v)}" for k, v in settings.items()])
        made = {"command": command or user_command, "commit": commit or record.get("git_commit"),
                "recorded_command": "python " + record["command"] if record.get("command") else None,
                "machine": record.get("machine")}
    else:
        result = record
        made = {"command": command, "commit": commit, "machine": result.get("machine")}
    if not made["command"] or not made["commit"] or made["commit"] == "unknown":
        raise CheckpointError("the run record names no command or commit; pass --command and --commit")
    return result, made


def export_teacher(checkpoint: str, record: dict, data_path: str, out_root: str | None = None,
                   name: str | None = None, command: str | None = None, commit: str | None = None,
                   record_path: str | None = None, note: str | None = None, licence: str | None = None) -> dict:
    """Make the zoo entry ``out_root/<name>/`` (default name ``<model>-<dataset>``) from a trained
    checkpoint and its run record: the weights without optimizer state, and the card. The entry is
    checked before it is put in place: its data (``data_path``/<dataset>) must have the checkpoint's item
    vocabulary, and evaluating the weights there must give the record's valid and test metrics under both
    protocols (to the record's 4 decimals). Returns the card."""
    state = load_checkpoint(checkpoint, map_location="cpu")
    config, meta = state["config"], state.get("meta") or {}
    result, made = _run_from_record(record, command, commit)
    model, dataset = config["model"], config["dataset"]
    n_params = sum(t.numel() for t in state["state_dict"].values())
    problems = []
    if (result.get("model"), result.get("dataset")) != (model, dataset):
        problems.append(f"the record is of {result.get('model')} on {result.get('dataset')}, the checkpoint of "
                        f"{model} on {dataset}")
    if result.get("checkpoint") and os.path.basename(result["checkpoint"]) != os.path.basename(checkpoint):
        problems.append(f"the record's checkpoint is {os.path.basename(result['checkpoint'])}")
    if result.get("num_params") != n_params:
        problems.append(f"the record has {result.get('num_params')} parameters, the checkpoint {n_params}")
    if not result.get("test_result_by_protocol"):
        problems.append("the record has no test results under both protocols")
    if problems:
        raise CheckpointError(f"{checkpoint} and its run record do not belong together: " + "; ".join(problems))
    name = name or f"{model}-{dataset}"
    out_root = out_root or PRETRAINED_DIR
    folder = os.path.join(data_path, dataset)
    files = data_fingerprint(folder, dataset, config.get("load_col"), config.get("benchmark_filename"))
    if not files:
        raise CheckpointError(f"no atomic files of {dataset} in {folder}; pass the data_path the teacher was trained on")

    kept = {k: v for k, v in config.items() if k not in LOCAL_KEYS and not is_path_key(k)}
    weights = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": kept, "meta": meta,
               "state_dict": {k: v.detach().clone().cpu() for k, v in state["state_dict"].items()}}
    tmp = os.path.join(out_root, f".tmp-{name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        atomic_save(weights, os.path.join(tmp, WEIGHTS_FILE))
        # the check: the shipped weights, evaluated on this data, give the record's numbers
        eval_keys = {k: config[k] for k in ("filter_seen", "metrics", "topk", "valid_metric", "metric_decimal_place")
                     if config.get(k) is not None}
        check = evaluate_checkpoints(dataset, os.path.join(tmp, WEIGHTS_FILE), {"data_path": data_path, **eval_keys})
        for key in ("best_valid_result_by_protocol", "test_result_by_protocol"):
            if _rounded(check[key]) != _rounded(result[key]):
                raise CheckpointError(f"the exported weights do not reproduce the record's {key} on {folder}: "
                                      f"{_rounded(check[key])} against {_rounded(result[key])}")
        arch = {k: config[k] for k in ARCH_KEYS if k in config and k not in DATA_KEYS and k != "state"}
        card = {
            "format": CARD_FORMAT, "format_version": CARD_VERSION, "name": name, "model": model, "dataset": dataset,
            "fingerprint": {"files": files, "item_vocab": meta.get("item_vocab"), "n_items": meta.get("n_items")},
            "data_settings": {k: plain(config.get(k)) for k in DATA_KEYS},
            "split_settings": split_settings(config),
            "architecture": arch,
            "training": {k: config.get(k) for k in ("seed", "epochs", "stopping_step", "learning_rate", "weight_decay",
                                                    "train_batch_size", "loss_type", "valid_metric")}
            | {"epochs_run": result.get("epochs_run"), "best_valid_score": state.get("best_valid_score"),
               "train_seconds": result.get("train_seconds")},
            "protocol": result.get("protocol"),
            "best_valid_result_by_protocol": result["best_valid_result_by_protocol"],
            "test_result_by_protocol": result["test_result_by_protocol"],
            "num_params": n_params,
            "weights": {"file": WEIGHTS_FILE, "sha256": file_sha256(os.path.join(tmp, WEIGHTS_FILE)),
                        "bytes": os.path.getsize(os.path.join(tmp, WEIGHTS_FILE))},
            "made_by": {**made, "run_record": record_path},
            "note": note,
            "licence": licence or (f"The weights are derived from the {dataset} data: check that data's terms of use "
                                   "before using or redistributing them (recbole-kd's licence covers its code, not "
                                   "the data or what is derived from it)."),
        }
        with open(os.path.join(tmp, CARD_FILE), "w", encoding="utf-8") as f:
            json.dump(card, f, indent=1)
            f.write("\n")
        final = os.path.join(out_root, name)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    card["_dir"] = final
    return card


# ---- python -m recbole_kd zoo -----------------------------------------------------------------------
