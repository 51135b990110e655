"""The frozen teacher of a distilled run: a given checkpoint (or an ensemble of them), the shipped
pretrained teacher whose card matches the run's data, or the teacher-zoo entry, trained first when
missing; and checkpoints rebuilt for evaluation."""
from __future__ import annotations

import json
import os
import time
from logging import getLogger

from recbole.model.abstract_recommender import SequentialRecommender

from recbole_kd import report, zoo
from recbole_kd.checkpoint import item_vocab_hash, load_checkpoint
from recbole_kd.config import build_config
from recbole_kd.errors import CheckpointError, ConfigError
from recbole_kd.kd.ensemble import EnsembleTeacher
from recbole_kd.kd.teacher_spec import (
    SPLIT_KEYS,
    arch_overrides,
    check_teacher_size,
    split_settings,
    teacher_overrides,
    teacher_sources,
    zoo_path,
)
from recbole_kd.protocol import by_protocol, selected
from recbole_kd.quick_start import _floats, cost_report, prepare, run
from recbole_kd.registry import get_entry, get_trainer


def _freeze(model):
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_teacher(config, dataset, student_params: int | None = None):
    """The frozen teacher for this run: ``teacher_checkpoint`` if given, else the shipped pretrained
    teacher when the run's data matches its card (:func:`pretrained_choice`), else the zoo entry for
    (teacher, dataset, teacher settings), trained first if missing (an interrupted teacher run is
    resumed). A teacher smaller than ``student_params`` is refused. Returns (model, info)."""
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
    arch = arch_overrides(state["config"])
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


def load_checkpoints(dataset_name: str, paths, overrides: dict | None = None):
    """One checkpoint, or an ensemble of them (a list), rebuilt for evaluation: ``(label, model, config,
    valid_data, test_data)`` with the same split and loaders as a training run of the first sequential
    member's model (its evaluation loader also carries the user ids an MF member needs); ``overrides``
    are data settings (e.g. ``data_path``). The model is frozen, in ``eval()`` mode."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    states = [load_checkpoint(p, map_location="cpu") for p in paths]
    state = next((st for st in states if issubclass(get_entry(st["config"]["model"]).cls, SequentialRecommender)),
                 states[0])
    name = state["config"]["model"]
    split = {k: v for k, v in split_settings(state["config"]).items() if v is not None}
    settings = {**arch_overrides(state["config"]), **split, "show_progress": False, **(overrides or {})}
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
    paths = [paths] if isinstance(paths, str) else list(paths)
    label, model, config, valid_data, test_data = load_checkpoints(dataset_name, paths, overrides)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    valid = trainer.evaluate(valid_data, load_best_model=False, show_progress=False)
    test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    return {"model": label, "dataset": dataset_name, "checkpoints": paths, "num_params": sum(p.numel() for p in model.parameters()),
            "protocol": selected(config), "best_valid_result": _floats(valid), "test_result": _floats(test),
            "best_valid_result_by_protocol": by_protocol(valid), "test_result_by_protocol": by_protocol(test),
            **cost_report(model, test_data, None)}
