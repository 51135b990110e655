"""Checks on what the user set, before anything is loaded or trained.

* Unknown keys (typos such as ``--learning_rat``) get a warning naming close matches; with
  ``strict: True`` (``--strict``) they are errors. Known = every key of RecBole's own yaml
  files (overall, dataset, every model), of our defaults, dataset yamls and every registered
  model's yaml, plus the few keys RecBole sets itself.
* Invalid values (negative epochs, a temperature <= 0, an unknown KD loss ...) are errors.

Errors are ``ConfigError`` (the CLI prints one line and exits with status 2).
"""
from __future__ import annotations

import difflib
import functools
import glob
import os
from numbers import Number

import recbole
import yaml
from recbole.evaluator.register import metric_information
from recbole.utils import ModelType

from recbole_kd.errors import ConfigError
from recbole_kd.kd import losses  # noqa: F401  (importing it registers the built-in KD losses)
from recbole_kd.kd.base import KD_LOSSES, resolve_mask_seen
from recbole_kd.registry import derived_entries, get_entry, registered
from recbole_kd.report import user_warning
from recbole_kd.transfer.spec import parse_mechanisms, source_spec

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

# keys RecBole or its distributed mode set or read without a yaml default
_RUNTIME_KEYS = {
    "model", "dataset", "config_files", "nproc", "world_size", "ip", "port", "offset", "local_rank",
    "single_spec", "device", "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "train_neg_sample_args",
    "valid_neg_sample_args", "test_neg_sample_args",
}


def _yaml_keys(path: str) -> set[str]:
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError):
        return set()
    return set(data) if isinstance(data, dict) else set()


@functools.lru_cache(maxsize=1)
def _static_known_keys() -> frozenset:
    props = os.path.join(os.path.dirname(recbole.__file__), "properties")
    keys = set(_RUNTIME_KEYS)
    for path in glob.glob(os.path.join(props, "**", "*.yaml"), recursive=True):
        keys |= _yaml_keys(path)
    for path in glob.glob(os.path.join(PACKAGE_DIR, "**", "*.yaml"), recursive=True):
        keys |= _yaml_keys(path)
    return frozenset(keys)


def known_keys() -> set[str]:
    """Every setting recbole-kd or RecBole reads (registered plugin models' yamls included)."""
    keys = set(_static_known_keys())
    entries = dict(registered())
    entries.update(derived_entries())
    for entry in entries.values():
        for path in entry.config_files:
            keys |= _yaml_keys(path)
    return keys


def check_unknown_keys(user_keys, strict: bool, where: str = "") -> list[str]:
    """Warn (or, strict, raise) for keys nobody reads. Returns the warning lines."""
    known = known_keys()
    lines = []
    for key in sorted(set(user_keys) - known):
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.7)
        hint = f"; did you mean {', '.join(close)}?" if close else "; it is not a RecBole or recbole-kd setting"
        lines.append(f"unknown setting {key!r}{where}{hint}")
    if lines and strict:
        raise ConfigError(lines[0] + " (strict: unknown settings are errors)")
    for line in lines:
        user_warning(line)  # now on stderr, and again in the run's final summary
    return lines


# ---- values ----------------------------------------------------------------------------------------
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_POSITIVE_INTS = (
    "epochs", "train_batch_size", "eval_batch_size", "stopping_step", "eval_step", "hidden_size",
    "embedding_size", "n_layers", "n_heads", "inner_size", "MAX_ITEM_LIST_LENGTH", "num_negatives",
    "kd_topk", "kd_gate_k", "nproc",
)
_PROBABILITIES = ("hidden_dropout_prob", "attn_dropout_prob", "dropout_prob", "mask_ratio")


def check_values(config) -> None:  # noqa: C901
    """Refuse values that cannot be right, naming the key, the value and what is allowed."""
    def bad(key, value, allowed):
        raise ConfigError(f"invalid setting {key}={value!r}: {allowed}")

    def get(key):
        return config[key] if key in config else None

    if get("model") == "KD_DAGFM" and get("teacher") not in ("CrossNet", "CIN"):
        # RecBole's KD_DAGFM eval()s its teacher setting: only the two networks it names are allowed
        bad("teacher", get("teacher"), "RecBole's KD_DAGFM teacher network is 'CrossNet' or 'CIN'")
    for key in _POSITIVE_INTS:
        v = get(key)
        if v is not None and not (_is_int(v) and v >= 1):
            bad(key, v, "must be an integer >= 1")
    lr = get("learning_rate")
    if lr is not None and not (isinstance(lr, Number) and not isinstance(lr, bool) and lr > 0):
        bad("learning_rate", lr, "must be a number > 0")
    wd = get("weight_decay")
    if wd is not None and not (isinstance(wd, Number) and wd >= 0):
        bad("weight_decay", wd, "must be a number >= 0")
    for key in _PROBABILITIES:
        v = get(key)
        if v is not None and not (isinstance(v, Number) and 0 <= v < 1):
            bad(key, v, "must be a probability in [0, 1)")
    heads, hidden = get("n_heads"), get("hidden_size")
    if _is_int(heads) and _is_int(hidden) and hidden % heads:
        bad("n_heads", heads, f"must divide hidden_size={hidden}")
    if get("kd_losses") is not None:
        if _kind(get("model")) != "distilled":
            hint = f"run --model=KD-{get('model')}" if _kind(get("model")) == "student" else "run a KD- model (--list)"
            bad("kd_losses", get("kd_losses"), f"only distilled models use it; {hint} or drop kd_losses")
        check_kd_values(config, bad)
    if get("transfer_mechanisms") is not None:
        parse_mechanisms(config)
        source_spec(config)
        freeze = get("transfer_freeze_epochs")
        if not (_is_int(freeze) and freeze >= 0):
            bad("transfer_freeze_epochs", freeze, "must be an integer >= 0")
    cold = get("text_cold_items")
    if cold not in (None, "id", "text"):
        bad("text_cold_items", cold, "must be id or text")
    fs = get("filter_seen")
    if fs not in (None, True, False):
        bad("filter_seen", fs, "must be True (seen items filtered from every ranking) or False (RecBole's rule)")
    frac = get("train_fraction")
    if frac is not None and not (isinstance(frac, Number) and not isinstance(frac, bool) and 0 < frac <= 1):
        bad("train_fraction", frac, "must be a fraction in (0, 1]")
    world = get("world_size")
    if world is not None and not (_is_int(world) and (world == -1 or world >= 1)):
        bad("world_size", world, "must be an integer >= 1 (processes on all machines), or -1 for nproc")
    offset = get("offset")
    if offset is not None and not (_is_int(offset) and offset >= 0):
        bad("offset", offset, "must be an integer >= 0 (the rank of this machine's first process)")
    port = get("port")
    if port is not None and not (_is_int(port) and 0 < port < 65536) and not (isinstance(port, str) and port.isdigit()
                                                                             and 0 < int(port) < 65536):
        bad("port", port, "must be a TCP port number, 1-65535")
    seed = get("seed")
    if seed is not None and not (_is_int(seed) and 0 <= seed < 2 ** 32):
        bad("seed", seed, "must be an integer in [0, 2**32 - 1]")
    act = get("hidden_act")
    if act is not None and act not in HIDDEN_ACTS:
        bad("hidden_act", act, f"must be one of {', '.join(HIDDEN_ACTS)} (RecBole's FeedForward)")
    check_loss_type(config, bad)
    check_valid_metric(config, bad)
    ck = get("checkpoint_dir")
    if isinstance(ck, str) and os.path.exists(ck) and not os.path.isdir(ck):
        bad("checkpoint_dir", ck, "is a file, not a folder; choose a folder for the checkpoints")
    resume = get("resume")
    if resume not in (None, False, True, "auto") and not isinstance(resume, str):
        bad("resume", resume, "must be True, False, auto or the path of a *-last.pth checkpoint")


# the activations RecBole's FeedForward (recbole/model/layers.py get_hidden_act) accepts
HIDDEN_ACTS = ("gelu", "relu", "swish", "tanh", "sigmoid")
# RecBole's loss types: BPR / CE (general and sequential models), BCE / MSE (a few models, e.g. CDAE)
RECBOLE_LOSS_TYPES = ("CE", "BPR", "BCE", "MSE")


def check_loss_type(config, bad) -> None:
    loss = config["loss_type"] if "loss_type" in config else None
    if loss is None:
        return
    try:
        cls = get_entry(config["model"]).cls
    except Exception:  # an unknown model is reported by its own check
        return
    own = getattr(cls, "LOSS_TYPES", None)  # our windowed sequential models name theirs
    if own is not None:
        if loss not in own:
            bad("loss_type", loss, f"{config['model']} takes {' or '.join(own)}")
    elif loss not in RECBOLE_LOSS_TYPES:
        bad("loss_type", loss, "must be CE or BPR (BCE or MSE for the RecBole models that use them)")


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def check_valid_metric(config, bad) -> None:
    """valid_metric must be one of the configured metrics, at one of the configured topk for top-k metrics
    (case-insensitive, as RecBole compares it)."""
    vm = config["valid_metric"] if "valid_metric" in config else None
    if vm is None:
        return
    metrics = [str(m).lower() for m in _as_list(config["metrics"] if "metrics" in config else None)]
    topk = _as_list(config["topk"] if "topk" in config else None)
    allowed = [f"{m}@{k}" for m in metrics for k in topk]
    # metrics over the top-k list are reported as name@k; the others (auc, gauc, mae ...) by name alone
    value_metrics = [m for m in metrics if m in metric_information
                     and not {"rec.topk", "rec.items"} & set(metric_information[m])]
    allowed = [a for a in allowed if a.split("@")[0] not in value_metrics] + value_metrics
    if not isinstance(vm, str) or vm.lower() not in allowed:
        shown = ", ".join(allowed[:12]) + (" ..." if len(allowed) > 12 else "")
        bad("valid_metric", vm, f"must be one of the configured metrics at a configured topk: {shown or 'none'} "
            "(set metrics / topk to add one)")


def _kind(model) -> str | None:
    try:
        return get_entry(model).kind
    except Exception:  # an unknown model is reported by its own check
        return None


def check_kd_values(config, bad) -> None:
    spec = config["kd_losses"]
    if isinstance(spec, str) and spec.strip()[:1] in ("{", "["):  # a mapping that neither Python nor YAML could read
        bad("kd_losses", spec, "is not a readable mapping; write it as {soft: 1.0} or \"{'soft': 1.0}\"")
    if isinstance(spec, str):
        spec = {spec: 1.0}
    if not isinstance(spec, dict) or not spec:
        bad("kd_losses", spec, "must map KD loss names to weights, e.g. {soft: 1.0}")
    for name, weight in spec.items():
        if name not in KD_LOSSES:
            bad("kd_losses", name, f"unknown KD loss; available: {', '.join(sorted(KD_LOSSES))}")
        if not (isinstance(weight, Number) and not isinstance(weight, bool) and weight >= 0):
            bad(f"kd_losses.{name}", weight, "the weight must be a number >= 0")
    params = config["kd_loss_params"] or {}
    if not isinstance(params, dict):
        bad("kd_loss_params", params, "must map loss names to their parameters, e.g. {soft: {temperature: 2.0}}")
    for name, values in params.items():
        if name not in KD_LOSSES:
            bad("kd_loss_params", name, f"unknown KD loss; available: {', '.join(sorted(KD_LOSSES))}")
        defaults = KD_LOSSES[name].defaults
        for key, value in (values or {}).items():
            if key not in defaults:
                bad(f"kd_loss_params.{name}.{key}", value, f"unknown parameter; {name} takes {sorted(defaults) or 'none'}")
            if not (isinstance(value, Number) and not isinstance(value, bool) and value > 0):
                bad(f"kd_loss_params.{name}.{key}", value, "must be a number > 0")
    cache_dir = config["kd_cache_dir"]
    if cache_dir is not None and not isinstance(cache_dir, str):
        bad("kd_cache_dir", cache_dir, "must be a folder path (or ~ for memory only)")
    if config["teacher_pretrained"] not in (None, True, False):  # None: a KD model whose yamls lack it
        bad("teacher_pretrained", config["teacher_pretrained"], "must be True or False")
    pretrained_dir = config["teacher_pretrained_dir"]
    if pretrained_dir is not None and not (isinstance(pretrained_dir, str) and os.path.isdir(pretrained_dir)):
        bad("teacher_pretrained_dir", pretrained_dir, "must be an existing folder of pretrained-teacher entries "
            "(or ~ for the shipped teachers)")
    gate = config["kd_gate"] or "none"
    if gate not in ("none", "topk", "rank"):
        bad("kd_gate", gate, "must be none, topk or rank")
    mask = config["kd_mask_seen"]
    if mask not in (None, True, False):
        bad("kd_mask_seen", mask, "must be True, False or ~ (follow the evaluation protocol)")
    if gate != "none":
        student = get_entry(config["model"]).cls
        windowed = hasattr(student, "build_train_dataloader")
        if not windowed and resolve_mask_seen(config, student.type == ModelType.SEQUENTIAL):
            # user mode (e.g. KD-MF): a row's targets are the user's training items, which the mask removes
            # from the teacher's top-K, so the gate would never open and nothing would be distilled
            bad("kd_gate", gate, f"{config['model']} is distilled per user, and its targets (the user's training "
                "items) are masked out of the teacher's top-K (kd_mask_seen), so the gate would never open and "
                "nothing would be distilled; use kd_gate: none")
    get_entry(config["teacher"])  # unknown teacher: UnknownModelError (exit 2) before any data is loaded
    nested = config["teacher_config"] or {}
    if not isinstance(nested, dict):
        bad("teacher_config", nested, "must be a mapping of the teacher's settings, e.g. {hidden_size: 128}")
