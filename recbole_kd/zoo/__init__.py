"""Pretrained teachers shipped with recbole-kd (``recbole_kd/zoo/pretrained/<name>/``).

Each entry is a folder with

* ``weights.pth``: a recbole-kd checkpoint without optimizer state (the model's tensors, its settings
  with machine-local paths removed, the dataset's item-vocabulary fingerprint, a sha256 digest of the
  contents), loadable with ``torch.load(weights_only=True)``;
* ``card.json``: what the teacher is, what it was trained on and how well it does: a fingerprint of its
  data (sha256 of each atomic file the run read, the item-vocabulary hash, the number of item ids), the
  split-defining, data-reading and architecture settings, valid/test metrics under both evaluation
  protocols, the command and commit that trained it, parameters, the weights file's sha256, a licence note.

A ``KD-*`` run whose teacher model has an entry for the run's dataset uses it when the user's data
and settings match the card (:func:`mismatch`), see docs/distillation.md ("Pretrained teachers").
``python -m recbole_kd zoo`` lists the entries; ``benchmarks/export_pretrained_teacher.py`` (or
:func:`export_teacher`) makes one from a trained checkpoint and its run record.
"""
from __future__ import annotations

import json
import os
import shutil
import sys

from recbole_kd.checkpoint import FORMAT, FORMAT_VERSION, CheckpointError, atomic_save, load_checkpoint, plain
from recbole_kd.serving.artefact import file_sha256  # torch and the standard library only

PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")
CARD_FILE = "card.json"
WEIGHTS_FILE = "weights.pth"
CARD_FORMAT = "recbole-kd-teacher-card"
CARD_VERSION = 1
HEADLINE = "ndcg@10"  # the metric the listing and the log line show

# settings that decide how the atomic files are read into users, items and their order
DATA_KEYS = ("load_col", "USER_ID_FIELD", "ITEM_ID_FIELD", "TIME_FIELD")
# checkpoint settings that describe the machine or the run's files, not the model: left out of shipped weights
_LOCAL_KEYS = frozenset({
    "device", "gpu_id", "use_gpu", "local_rank", "nproc", "world_size", "ip", "port", "offset", "single_spec",
    "resume", "worker", "show_progress", "log_wandb", "wandb_project", "config_files",
})
_ATOMIC = ("inter", "user", "item", "kg", "link", "net")


# ---- reading the zoo --------------------------------------------------------------------------------
def zoo_dir(config=None) -> str:
    """The pretrained-teacher folder: ``teacher_pretrained_dir`` if the config sets it, else the shipped one."""
    folder = _get(config, "teacher_pretrained_dir") if config is not None else None
    return os.path.abspath(os.path.expanduser(folder)) if folder else PRETRAINED_DIR


def _get(config, key, default=None):
    if isinstance(config, dict):
        return config.get(key, default)
    return config[key] if key in config else default


def read_card(folder: str) -> dict:
    path = os.path.join(folder, CARD_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            card = json.load(f)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"pretrained teacher card {path} cannot be read ({type(exc).__name__}); "
                              "reinstall recbole-kd or set teacher_pretrained=False") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise CheckpointError(f"{path} is not a recbole-kd teacher card (no '{CARD_FORMAT}' marker)")
    card["_dir"] = folder
    return card


def cards(folder: str | None = None) -> list[dict]:
    """Every entry's card in ``folder`` (default: the shipped zoo), by name."""
    folder = folder or PRETRAINED_DIR
    if not os.path.isdir(folder):
        return []
    names = sorted(n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n, CARD_FILE)))
    return [read_card(os.path.join(folder, n)) for n in names]


def find(folder: str, model: str, dataset: str) -> dict | None:
    """The entry for (teacher model, dataset name), or None."""
    return next((c for c in cards(folder) if c.get("model") == model and c.get("dataset") == dataset), None)


def weights_path(card: dict) -> str:
    return os.path.join(card["_dir"], card["weights"]["file"])


def check_weights(card: dict) -> str:
    """The entry's weights path, once its sha256 equals the card's (else ``CheckpointError``)."""
    path = weights_path(card)
    if not os.path.isfile(path):
        raise CheckpointError(f"pretrained teacher {card['name']}: {path} is missing; reinstall recbole-kd or set "
                              "teacher_pretrained=False")
    if file_sha256(path) != card["weights"]["sha256"]:
        raise CheckpointError(f"pretrained teacher {card['name']}: {path} does not match the sha256 in its card "
                              "(changed or corrupt); reinstall recbole-kd or set teacher_pretrained=False")
    return path


# ---- the data fingerprint ---------------------------------------------------------------------------
def data_files(folder: str, dataset: str, load_col, benchmark_filename=None) -> list[str]:
    """The atomic files a run reads: those ``load_col`` names (every one present when it is None), the
    benchmark parts instead of ``.inter`` when ``benchmark_filename`` is set."""
    if isinstance(load_col, dict):
        suffixes = list(load_col)
    else:
        suffixes = [s for s in _ATOMIC if os.path.isfile(os.path.join(folder, f"{dataset}.{s}"))]
    names = []
    for suffix in suffixes:
        if suffix == "inter" and benchmark_filename:
            names += [f"{dataset}.{part}.inter" for part in benchmark_filename]
        else:
            names.append(f"{dataset}.{suffix}")
    return sorted(n for n in names if os.path.isfile(os.path.join(folder, n)))


def data_fingerprint(folder: str, dataset: str, load_col, benchmark_filename=None) -> dict:
    """{file name: sha256} of the atomic files a run of ``dataset`` in ``folder`` reads."""
    return {n: file_sha256(os.path.join(folder, n))
            for n in data_files(folder, dataset, load_col, benchmark_filename)}


def wants_pretrained(config) -> tuple[dict | None, str | None]:
    """The entry this ``KD-*`` run may use before its data is compared, and why one is not used where
    there is something to say: (card, None), (None, reason) or (None, None) (opted out, a teacher checkpoint
    given, or no entry for this teacher and dataset). The user's own ``teacher_config`` (anything but the
    package's default, from the command line, a config file or a dataset yaml) means a teacher of those
    settings is wanted: it is trained as before."""
    if not _get(config, "teacher_pretrained", True) or _get(config, "teacher_checkpoint"):
        return None, None
    card = find(zoo_dir(config), config["teacher"], config["dataset"])
    if card is None:
        return None, None
    origin = getattr(config, "setting_origin", None)
    source = origin.sources.get("teacher_config") if origin is not None else None
    if source not in (None, "default", "model yaml"):
        return None, f"teacher_config is set ({source})"
    return card, None


def mismatch(card: dict, config, dataset=None) -> list[str]:
    """Why this run's data or settings differ from the ones ``card``'s teacher was trained with, one
    phrase per differing part; [] when they match. The atomic files are hashed on every call (nothing is
    cached); ``dataset`` (a loaded RecBole dataset) adds the item-vocabulary check."""
    from recbole_kd.checkpoint import item_vocab_hash
    from recbole_kd.kd.teacher import SPLIT_KEYS, split_settings

    reasons = []
    folder, name = config["data_path"], config["dataset"]
    want = card["fingerprint"]["files"]
    have = data_files(folder, name, plain(_get(config, "load_col")), _get(config, "benchmark_filename"))
    if sorted(have) != sorted(want):
        reasons.append(f"data files: this run reads {have}, the teacher was trained on {sorted(want)}")
    else:
        for n in have:
            digest = file_sha256(os.path.join(folder, n))
            if digest != want[n]:
                reasons.append(f"{n} differs (sha256 {digest[:12]}... here, {want[n][:12]}... in the card)")
    for key in DATA_KEYS:
        ours, theirs = plain(_get(config, key)), card["data_settings"].get(key)
        if ours != theirs:
            reasons.append(f"{key}={ours!r} here, {theirs!r} in the card")
    ours, theirs = split_settings(config), card["split_settings"]
    for key in SPLIT_KEYS:
        if ours[key] != theirs.get(key):
            reasons.append(f"split setting {key}={ours[key]!r} here, {theirs.get(key)!r} in the card")
    length, card_length = _get(config, "MAX_ITEM_LIST_LENGTH"), card["architecture"].get("MAX_ITEM_LIST_LENGTH")
    if length != card_length:
        reasons.append(f"MAX_ITEM_LIST_LENGTH={length!r} here, {card_length!r} in the card")
    if dataset is not None and not reasons:
        vocab = item_vocab_hash(dataset)
        if vocab != card["fingerprint"]["item_vocab"]:
            reasons.append(f"item vocabulary {vocab} here, {card['fingerprint']['item_vocab']} in the card")
    return reasons


def headline(card: dict) -> str:
    """``test ndcg@10 0.0477 (filter_seen), 0.0340 (recbole)``: the card's test headline, selected protocol first."""
    tests = card.get("test_result_by_protocol") or {}
    names = list(dict.fromkeys([card.get("protocol"), *sorted(tests)]))
    parts = [f"{tests[p][HEADLINE]:.4f} ({p})" for p in names if p in tests and HEADLINE in tests[p]]
    return f"test {HEADLINE} " + ", ".join(parts) if parts else "no test metrics"


def card_results(card: dict) -> dict:
    """The teacher fields of a distilled run's result, from the card (as a teacher run's result file gives them)."""
    protocol = card.get("protocol")
    valid, test = card.get("best_valid_result_by_protocol") or {}, card.get("test_result_by_protocol") or {}
    return {"teacher_test_result": test.get(protocol), "teacher_best_valid_result": valid.get(protocol),
            "teacher_protocol": protocol, "teacher_test_result_by_protocol": test}


# ---- making an entry --------------------------------------------------------------------------------
def _cli_value(value) -> str:
    return value if isinstance(value, str) else repr(value)


def _run_from_record(record: dict, command: str | None, commit: str | None) -> tuple[dict, dict]:
    """(result, provenance) from a run record: a bench cell (``result`` + ``command``, ``git_commit``,
    ``settings``) or a plain ``--result_file`` (then ``command`` and ``commit`` must be given)."""
    if "result" in record:
        result = record["result"]
        settings = record.get("settings") or {}
        user_command = " ".join(["python -m recbole_kd", f"--model={record['model']}", f"--dataset={record['dataset']}",
                                 f"--seed={record['seed']}"] + [f"--{k}={_cli_value(v)}" for k, v in settings.items()])
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
    from recbole_kd.kd.teacher import _ARCH_KEYS, evaluate_checkpoints, split_settings

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

    kept = {k: v for k, v in config.items() if k not in _LOCAL_KEYS and not _is_path_key(k)}
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
        arch = {k: config[k] for k in _ARCH_KEYS if k in config and k not in DATA_KEYS and k != "state"}
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


def _is_path_key(key) -> bool:
    from recbole_kd.compat import is_path_key

    return is_path_key(key)


def _rounded(tables: dict) -> dict:
    return {p: {m: round(float(v), 4) for m, v in t.items()} for p, t in (tables or {}).items()}


# ---- python -m recbole_kd zoo -----------------------------------------------------------------------
ZOO_USAGE = """usage: python -m recbole_kd zoo [NAME] [--json] [--dir=DIR]

Lists the pretrained teachers shipped with recbole-kd (NAME: prints that teacher's card; --json: the
card as stored). A KD-* run whose teacher and dataset have an entry uses it when its data matches the
card (docs/distillation.md, "Pretrained teachers"); --dir lists another folder of entries."""


def list_text(entries: list[dict]) -> str:
    rows = [("name", "model", "dataset", "params", "size", f"test {HEADLINE}")]
    for c in entries:
        tests = c.get("test_result_by_protocol") or {}
        names = list(dict.fromkeys([c.get("protocol"), *sorted(tests)]))
        score = ", ".join(f"{tests[p][HEADLINE]:.4f} ({p})" for p in names if p in tests and HEADLINE in tests[p])
        rows.append((c["name"], c["model"], c["dataset"], f"{c['num_params']:,}",
                     f"{c['weights']['bytes'] / 1e6:.1f} MB", score))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(r[i].ljust(widths[i]) for i in range(5)) + "  " + r[5] for r in rows)


def card_text(card: dict) -> str:
    fp = card["fingerprint"]
    lines = [f"{card['name']}: {card['model']} on {card['dataset']}, {card['num_params']:,} parameters", ""]

    def row(label, value):
        lines.append(f"{label:<19}{value}")

    for n, digest in fp["files"].items():
        row("data file", f"{n} sha256 {digest}")
    row("items", f"vocabulary {fp['item_vocab']}, {fp['n_items']:,} ids (padding included)")
    row("data settings", json.dumps(card["data_settings"]))
    row("split", json.dumps(card["split_settings"]))
    row("architecture", json.dumps(card["architecture"]))
    row("training", json.dumps(card["training"]))
    row("protocol", f"{card['protocol']} selects the best epoch")
    valid, test = card["best_valid_result_by_protocol"], card["test_result_by_protocol"]
    for p in dict.fromkeys([card["protocol"], *sorted(test)]):
        metrics = list(dict.fromkeys([*valid.get(p, {}), *test.get(p, {})]))
        row(f"valid {p}", "  ".join(f"{m} {valid.get(p, {}).get(m, float('nan')):.4f}" for m in metrics))
        row(f"test {p}", "  ".join(f"{m} {test.get(p, {}).get(m, float('nan')):.4f}" for m in metrics))
    made = card["made_by"]
    row("command", made.get("command"))
    row("commit", made.get("commit"))
    if made.get("run_record"):
        row("run record", made["run_record"])
    row("weights", f"{weights_path(card)} ({card['weights']['bytes']:,} bytes, sha256 {card['weights']['sha256']})")
    if card.get("note"):
        row("note", card["note"])
    row("licence", card["licence"])
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    names, folder, as_json = [], None, False
    for arg in argv:
        if arg in ("-h", "--help"):
            print(ZOO_USAGE)
            return 0
        if arg == "--json":
            as_json = True
        elif arg.startswith("--dir="):
            folder = arg.split("=", 1)[1]
        elif arg.startswith("-"):
            print(f"recbole-kd zoo: error: unrecognised argument {arg!r} (see --help)", file=sys.stderr)
            return 2
        else:
            names.append(arg)
    if len(names) > 1:
        print(f"recbole-kd zoo: error: one teacher name at a time, got {names}", file=sys.stderr)
        return 2
    if folder is not None and not os.path.isdir(folder):
        print(f"recbole-kd zoo: error: --dir {folder} is not a folder", file=sys.stderr)
        return 2
    try:
        entries = cards(folder)
    except CheckpointError as exc:
        print(f"recbole-kd zoo: error: {exc}", file=sys.stderr)
        return 2
    if not names:
        if as_json:
            print(json.dumps([{k: v for k, v in c.items() if k != "_dir"} for c in entries], indent=1))
        elif entries:
            print(list_text(entries))
            print("\n`python -m recbole_kd zoo NAME` prints a teacher's card.")
        else:
            print(f"no pretrained teachers in {folder or PRETRAINED_DIR}")
        return 0
    card = next((c for c in entries if c["name"] == names[0]), None)
    if card is None:
        known = ", ".join(c["name"] for c in entries) or "none"
        print(f"recbole-kd zoo: error: no pretrained teacher {names[0]!r} (available: {known})", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in card.items() if k != "_dir"}, indent=1) if as_json else card_text(card))
    return 0
