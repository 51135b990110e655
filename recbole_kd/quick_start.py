"""One training run: the path every CLI call, test and benchmark goes through."""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from logging import getLogger

from recbole_kd.config import build_config

import numpy as np  # noqa: E402
import torch  # noqa: E402
from recbole.data import data_preparation  # noqa: E402  (its pickle loading is disabled by compat)
from recbole.data.interaction import Interaction  # noqa: E402
from recbole.utils import ModelType, dict2str, init_logger, init_seed, set_color  # noqa: E402

from recbole_kd import distributed, report  # noqa: E402
from recbole_kd.checkpoint import item_vocab_hash, plain  # noqa: E402
from recbole_kd.compat import create_dataset  # noqa: E402  (never unpickles a saved dataset)
from recbole_kd.datasets.fingerprint import dataset_folder_fingerprint  # noqa: E402
from recbole_kd.errors import ConfigError  # noqa: E402
from recbole_kd.launch import launch  # noqa: E402
from recbole_kd.protocol import attach_seen_items, by_protocol, selected  # noqa: E402
from recbole_kd.registry import get_entry, get_trainer  # noqa: E402
from recbole_kd.utils import count_parameters, keep_recent, machine_info, write_json_atomic  # noqa: E402,F401

CL_KEYS = ("cl_weight", "cl_temperature")  # recorded when the contrastive regulariser is on
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
    "filter_seen",
)


def _floats(result) -> dict | None:
    if result is None:
        return None
    return {str(k): float(v) for k, v in result.items()}


def prepare(config):
    """Dataset and dataloaders for ``config``; lets the model adapt the training loader.

    ``train_fraction`` < 1 (low-resource setting) keeps only each user's most recent
    ``ceil(fraction * n)`` training interactions (at least one); validation and test data, and
    so the test users, are unchanged."""
    distributed = not config["single_spec"]
    # distributed mode: RecBole would shard every loader; evaluation loaders stay whole (rank 0
    # evaluates all users, see recbole_kd.distributed), only the training data is sharded below
    config["single_spec"] = True
    try:
        dataset = create_dataset(config)
        train_data, valid_data, test_data = data_preparation(config, dataset)
    finally:
        config["single_spec"] = not distributed
    # what each evaluation loader's users have seen before its targets (the filter_seen protocol)
    attach_seen_items(train_data.dataset, valid_data, test_data)
    entry = get_entry(config["model"])
    adapt = getattr(entry.cls, "build_train_dataloader", None)
    fraction = config["train_fraction"]
    if adapt is not None:
        train_data = adapt(config, train_data)  # windowed models apply train_fraction (and shard) themselves
    elif fraction is not None and fraction < 1:
        train_data = _reduce_training(config, train_data, fraction)
    elif distributed:
        train_data = type(train_data)(config, train_data._dataset, train_data._sampler, shuffle=True)
    return dataset, train_data, valid_data, test_data


def _reduce_training(config, train_data, fraction):
    if config["MODEL_TYPE"] == ModelType.SEQUENTIAL:
        raise ConfigError(
            f"train_fraction is supported for our windowed sequential models and general models, not for "
            f"RecBole's {config['model']} (its training rows are prefixes of the full history)"
        )
    ds = train_data.dataset
    uids = ds.inter_feat[ds.uid_field].numpy()
    order = np.argsort(uids, kind="stable")  # time order inside a user is kept
    bounds = np.flatnonzero(np.diff(uids[order])) + 1
    keep = []
    for part in np.split(order, bounds):
        keep.append(part[len(part) - keep_recent(len(part), fraction):])
    index = torch.from_numpy(np.sort(np.concatenate(keep)))
    reduced = ds.copy(ds.inter_feat[index])
    return type(train_data)(config, reduced, train_data._sampler, shuffle=True)


_DEPTH = 0  # runs in progress in this process: a teacher or source model trained for a run is nested in it


def run(
    model: str,
    dataset: str,
    config_files=(),
    overrides: dict | None = None,
    saved: bool = True,
    result_file: str | None = None,
    verbose: bool = False,
    overrides_source: str | dict = "command line",
) -> dict:
    """Train ``model`` on ``dataset``, evaluate best-on-valid on test, return a summary dict.

    The console (stderr) gets a short settings block, the phases with an estimate and RecBole's epoch
    lines; the full settings dump and the model's layers go to the log file, and to the console too
    with ``verbose``. ``overrides_source`` names the ``overrides`` in the settings block (one name, or
    ``{key: name}``: a teacher's run names its ``teacher_config`` keys and those shared with the student).

    With ``nproc`` > 1 or ``world_size`` > 0 (RecBole's distributed settings) the run is spread
    over processes (:mod:`recbole_kd.distributed`); the summary comes from rank 0."""
    global _DEPTH
    top = _DEPTH == 0
    if top:
        report.reset_user_warnings()
    if result_file:
        check_result_file(result_file)  # before any work: a result that cannot be written is lost
    config = build_config(model, dataset, config_files, overrides, overrides_source=overrides_source)
    _DEPTH += 1
    try:
        if "local_rank" not in (overrides or {}) and distributed.requested(config):
            return launch(run, config, model, dataset, config_files, overrides, saved, result_file, verbose)
        return _run(config, saved, result_file, verbose, top)
    finally:
        _DEPTH -= 1
        if top:
            report.end_progress()


def _run(config, saved: bool, result_file: str | None, verbose: bool, top: bool) -> dict | None:
    init_seed(config["seed"], config["reproducibility"])
    logger = getLogger()
    handlers_before = set(logger.handlers)
    init_logger(config)
    if top:
        report.set_verbose(logger, verbose)
    logger.info(sys.argv, extra=report.DETAIL)
    logger.info(config, extra=report.DETAIL)  # every setting: the log file, and the console with --verbose
    title = f"{config['model']} on {config['dataset']}"
    logger.info(report.settings_block(config, title, report.log_file(logger)))

    t_data = time.perf_counter()
    data, train_data, valid_data, test_data = prepare(config)
    logger.info(data)
    data_seconds = time.perf_counter() - t_data

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    entry = get_entry(config["model"])
    model_obj = entry.cls(config, train_data._dataset).to(config["device"])
    logger.info(model_obj, extra=report.DETAIL)
    logger.info(f"{config['model']}: {count_parameters(model_obj):,} trainable parameters")

    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model_obj)
    trainer.checkpoint_meta.update(
        dataset=config["dataset"], item_vocab=item_vocab_hash(data), n_items=int(data.item_num)
    )
    if config["resume"]:
        trainer.prepare_resume(config["resume"])
    if top:
        plan = getattr(trainer, "phase_plan", None)
        before, label = plan() if callable(plan) else ([], f"{config['model']} training")
        report.begin_progress(before + [report.Phase("train", label, epochs=int(config["epochs"]))], trainer, logger)
    t0 = time.perf_counter()
    if trainer.resume_finished:
        best_valid_score, best_valid_result = trainer.best_valid_score, trainer.best_valid_result
    else:
        best_valid_score, best_valid_result = trainer.fit(
            train_data, valid_data, saved=saved, show_progress=config["show_progress"]
        )
    train_seconds = time.perf_counter() - t0
    in_sync = None
    if not config["single_spec"] and not trainer.resume_finished:  # before rank 0 loads its best weights
        in_sync = distributed.ranks_in_sync(trainer.distributed_model.module)
    t1 = time.perf_counter()
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    eval_seconds = time.perf_counter() - t1

    logger.info(set_color("best valid ", "yellow") + f": {dict2str(best_valid_result or {})}")
    logger.info(set_color("test result", "yellow") + f": {dict2str(test_result or {})}")
    for name, table in (by_protocol(test_result) or {}).items():
        if name != selected(config):
            logger.info(f"test result under the {name} protocol: {dict2str(table)}")

    epochs = trainer.epoch_seconds
    result = {
        "model": config["model"],
        "kind": entry.kind,
        "dataset": config["dataset"],
        # sha256 of every atomic file of the dataset: a result is only ever compared with data it was measured on
        "data_path": config["data_path"],
        "data_files": dataset_folder_fingerprint(config["data_path"], config["dataset"], config["benchmark_filename"]),
        "seed": config["seed"],
        "num_params": count_parameters(model_obj),
        "best_valid_score": float(best_valid_score),
        "protocol": selected(config),
        "best_valid_result": _floats(best_valid_result),
        "test_result": _floats(test_result),
        "best_valid_result_by_protocol": by_protocol(best_valid_result),
        "test_result_by_protocol": by_protocol(test_result),
        "epochs_run": len(epochs),
        "train_seconds_per_epoch": (sum(epochs) / len(epochs)) if epochs else 0.0,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "data_seconds": data_seconds,
        "checkpoint": trainer.saved_model_file if saved else None,
        "resumed_from": trainer.resumed_from,
        "test_users": trainer.evaluated_users,
        "config": {k: plain(config[k]) for k in ESSENTIAL_KEYS + (CL_KEYS if config["cl_weight"] else ()) if k in config},
        "machine": machine_info(config["device"]),
    }
    if not config["single_spec"]:
        result["distributed"] = {
            "world_size": int(config["world_size"]),
            "nproc": int(config["nproc"] or 1),
            "ranks_in_sync": in_sync,
        }
    if not distributed.is_main(config):  # rank 0 measures, reports and writes
        _close_file_handlers(logger, keep=handlers_before)
        return None
    result.update(cost_report(model_obj, test_data, result["checkpoint"]))
    extra = getattr(trainer, "run_report", None)
    if callable(extra):
        result.update(extra())
    if result_file:
        write_json_atomic(result_file, result)
        logger.info(f"result written to {result_file}")
    _close_file_handlers(logger, keep=handlers_before)
    return result


def latency_batch(model, test_data, n_users: int = 256):
    """A full-sort input for ``n_users`` test users (sequential: their histories; else: user ids)."""
    ds = test_data.dataset
    if model.type == ModelType.SEQUENTIAL:
        return ds.inter_feat[: min(n_users, len(ds.inter_feat))]
    users = torch.unique(ds.inter_feat[ds.uid_field])[:n_users]
    return Interaction({ds.uid_field: users})


@torch.no_grad()
def measure_latency(model, interaction, reps: int = 5) -> float:
    """Median seconds of one full-sort scoring pass (all items) for the batch."""
    model.eval()
    device = next(model.parameters()).device
    interaction = interaction.to(device)
    # CUDA calls return before the work is done: wait for it, or the timer measures kernel launches
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    model.full_sort_predict(interaction)  # warm-up
    sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        model.full_sort_predict(interaction)
        sync()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def cost_report(model, test_data, checkpoint: str | None) -> dict:
    """Parameters, checkpoint size, full-sort latency for 256 users and throughput on this machine."""
    batch = latency_batch(model, test_data)
    seconds = measure_latency(model, batch)
    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return {
        "latency_users": len(batch),
        "latency_seconds": seconds,
        "throughput_users_per_second": len(batch) / seconds if seconds > 0 else None,
        "model_state_bytes": state_bytes,
        "checkpoint_bytes": os.path.getsize(checkpoint) if checkpoint and os.path.isfile(checkpoint) else None,
    }


def check_result_file(path: str) -> None:
    """Refuse (``ConfigError``, one line) a result file that could not be written after training: a folder,
    a path under a file, or a place where no file can be created."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ConfigError(f"result file {path} is a folder; pass a file path, e.g. "
                          f"--result_file={os.path.join(path, 'result.json')}")
    folder = os.path.dirname(os.path.abspath(path))
    existing = folder
    while not os.path.exists(existing):  # the folder is created when the result is written
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"cannot write result file {path}: {existing} is a file, not a folder; choose another "
                          "--result_file")
    try:
        fd, probe = tempfile.mkstemp(prefix=".tmp-probe-", suffix=".json", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"cannot write result file {path}: {exc.strerror or exc} in {existing}; choose a "
                          "writable --result_file") from None


def _close_file_handlers(logger: logging.Logger, keep=()) -> None:
    """RecBole's init_logger adds a file handler per run; close ours so runs in one process don't
    pile up (a nested run, e.g. a teacher trained for a student, leaves the outer one's alone)."""
    for handler in list(logger.handlers):
        if isinstance(handler, logging.FileHandler) and handler not in keep:
            handler.close()
            logger.removeHandler(handler)
