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
:func:`recbole_kd.zoo.export.export_teacher`) makes one from a trained checkpoint and its run record.
"""
from __future__ import annotations

import json
import os
import sys

from recbole_kd.checkpoint import CheckpointError, item_vocab_hash, plain
from recbole_kd.datasets.fingerprint import data_files, data_fingerprint  # noqa: F401  (also importable from here)
from recbole_kd.kd.teacher_spec import SPLIT_KEYS, split_settings
from recbole_kd.serving.artefact import cached_file_sha256, file_sha256  # torch and the standard library only

PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")
CARD_FILE = "card.json"
WEIGHTS_FILE = "weights.pth"
CARD_FORMAT = "recbole-kd-teacher-card"
CARD_VERSION = 1
HEADLINE = "ndcg@10"  # the metric the listing and the log line show

# settings that decide how the atomic files are read into users, items and their order
DATA_KEYS = ("load_col", "USER_ID_FIELD", "ITEM_ID_FIELD", "TIME_FIELD")
# checkpoint settings that describe the machine or the run's files, not the model: left out of shipped weights
LOCAL_KEYS = frozenset({
    "device", "gpu_id", "use_gpu", "local_rank", "nproc", "world_size", "ip", "port", "offset", "single_spec",
    "resume", "worker", "show_progress", "log_wandb", "wandb_project", "config_files",
})


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


def check_weights(card: dict, cached: bool = False) -> str:
    """The entry's weights path, once its sha256 equals the card's (else ``CheckpointError``). ``cached``:
    hash an unchanged file once per process (``cached_file_sha256``; the bench, which asks on every pass
    over its cells); a run that loads the weights hashes them afresh."""
    path = weights_path(card)
    if not os.path.isfile(path):
        raise CheckpointError(f"pretrained teacher {card['name']}: {path} is missing; reinstall recbole-kd or set "
                              "teacher_pretrained=False")
    if (cached_file_sha256 if cached else file_sha256)(path) != card["weights"]["sha256"]:
        raise CheckpointError(f"pretrained teacher {card['name']}: {path} does not match the sha256 in its card "
                              "(changed or corrupt); reinstall recbole-kd or set teacher_pretrained=False")
    return path


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


def exported_from(rec: dict, folder: str | None = None) -> dict | None:
    """The entry (card) in ``folder`` (default: the shipped zoo) exported from the finished bench cell ``rec``
    (``zoo export`` of its checkpoint and run record), or None: its card names the cell's run record
    (``<id>.json``) and has the cell's model, dataset, seed and valid and test metrics under both protocols
    (export checked that the weights reproduce them). A bench that lacks the cell's own checkpoint (they are
    not committed) distils from these weights instead of training the teacher again."""
    result = rec.get("result") or {}
    for card in cards(folder):
        made = card.get("made_by") or {}
        if (os.path.basename(made.get("run_record") or "") == f"{rec.get('id')}.json"
                and (card.get("model"), card.get("dataset")) == (result.get("model"), result.get("dataset"))
                and (card.get("training") or {}).get("seed") == rec.get("seed")
                and result.get("test_result_by_protocol")
                and all(_rounded(card.get(k)) == _rounded(result.get(k))
                        for k in ("best_valid_result_by_protocol", "test_result_by_protocol"))):
            return card
    return None


def _rounded(tables) -> dict:
    return {p: {m: round(float(v), 4) for m, v in t.items()} for p, t in (tables or {}).items()}


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
