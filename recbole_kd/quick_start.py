"""One training run: the path every CLI call, test and benchmark goes through."""
from __future__ import annotations

import json
import logging
import os
import platform
import sys
import tempfile
import time
from logging import getLogger

from recbole_kd.config import build_config

import torch  # noqa: E402
from recbole.data import create_dataset, data_preparation  # noqa: E402
from recbole.utils import init_logger, init_seed, set_color  # noqa: E402

from recbole_kd.checkpoint import plain  # noqa: E402
from recbole_kd.registry import get_entry, get_trainer  # noqa: E402

ESSENTIAL_KEYS = (
    "hidden_size",
    "embedding_size",
    "n_layers",
    "n_heads",
    "inner_size",
    "MAX_ITEM_LIST_LENGTH",
    "loss_type",
    "learning_rate",
    "train_batch_size",
    "epochs",
    "stopping_step",
    "dropout_prob",
    "hidden_dropout_prob",
    "attn_dropout_prob",
    "weight_decay",
    "teacher",
    "kd_losses",
)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def machine_info() -> dict:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


def _floats(result) -> dict | None:
    if result is None:
        return None
    return {str(k): float(v) for k, v in result.items()}


def prepare(config):
    """Dataset and dataloaders for ``config``; lets the model adapt the training loader."""
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    entry = get_entry(config["model"])
    adapt = getattr(entry.cls, "build_train_dataloader", None)
    if adapt is not None:
        train_data = adapt(config, train_data)
    return dataset, train_data, valid_data, test_data


def run(
    model: str,
    dataset: str,
    config_files=(),
    overrides: dict | None = None,
    saved: bool = True,
    result_file: str | None = None,
) -> dict:
    """Train ``model`` on ``dataset``, evaluate best-on-valid on test, return a summary dict."""
    config = build_config(model, dataset, config_files, overrides)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)

    t_data = time.perf_counter()
    data, train_data, valid_data, test_data = prepare(config)
    logger.info(data)
    data_seconds = time.perf_counter() - t_data

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    entry = get_entry(config["model"])
    model_obj = entry.cls(config, train_data._dataset).to(config["device"])
    logger.info(model_obj)

    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model_obj)
    t0 = time.perf_counter()
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    train_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    eval_seconds = time.perf_counter() - t1

    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")

    epochs = trainer.epoch_seconds
    result = {
        "model": config["model"],
        "kind": entry.kind,
        "dataset": config["dataset"],
        "seed": config["seed"],
        "num_params": count_parameters(model_obj),
        "best_valid_score": float(best_valid_score),
        "best_valid_result": _floats(best_valid_result),
        "test_result": _floats(test_result),
        "epochs_run": len(epochs),
        "train_seconds_per_epoch": (sum(epochs) / len(epochs)) if epochs else 0.0,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "data_seconds": data_seconds,
        "checkpoint": trainer.saved_model_file if saved else None,
        "config": {k: plain(config[k]) for k in ESSENTIAL_KEYS if k in config},
        "machine": machine_info(),
    }
    extra = getattr(model_obj, "run_report", None)
    if callable(extra):
        result.update(extra())
    extra = getattr(trainer, "run_report", None)
    if callable(extra):
        result.update(extra())
    if result_file:
        write_json_atomic(result_file, result)
        logger.info(f"result written to {result_file}")
    _close_file_handlers(logger)
    return result


def write_json_atomic(path: str, obj) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _close_file_handlers(logger: logging.Logger) -> None:
    """RecBole's init_logger adds a file handler per run; close it so runs in one process don't pile up."""
    for handler in list(logger.handlers):
        if isinstance(handler, logging.FileHandler):
            handler.close()
            logger.removeHandler(handler)
