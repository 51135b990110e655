"""What a person reads during and after a run.

* stderr (the logger, as RecBole logs): a short settings block (the settings that differ from the
  defaults, where each came from, the device used), the run's phases with an estimate, and
  RecBole's per-epoch lines. Records marked :data:`DETAIL` (the full settings dump, the model's
  layers, the command line) go to the log file always and to the console only with ``--verbose``.
* stdout (the CLI): :func:`summary_text` (a metric x valid/test table under each protocol, timings,
  the result file, the warnings about the user's input) or, with ``--json``, :func:`summary_json`.

Warnings about the user's input (:func:`user_warning`) are shown when they arise and kept for the
final summary, where they cannot scroll away.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field

DETAIL = {"detail": True}  # ``logger.info(..., extra=DETAIL)``: log file always, console with --verbose


class ConsoleDetailFilter(logging.Filter):
    """Keeps :data:`DETAIL` records off a console handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "detail", False)


def console_handlers(logger: logging.Logger) -> list[logging.Handler]:
    return [h for h in logger.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]


def set_verbose(logger: logging.Logger, verbose: bool) -> None:
    """Console handlers show :data:`DETAIL` records only when ``verbose``."""
    for handler in console_handlers(logger):
        for f in [f for f in handler.filters if isinstance(f, ConsoleDetailFilter)]:
            handler.removeFilter(f)
        if not verbose:
            handler.addFilter(ConsoleDetailFilter())


def log_file(logger: logging.Logger) -> str | None:
    files = [h.baseFilename for h in logger.handlers if isinstance(h, logging.FileHandler)]
    return files[-1] if files else None


# ---- warnings about the user's input ---------------------------------------------------------------
_USER_WARNINGS: list[str] = []


def reset_user_warnings() -> None:
    _USER_WARNINGS.clear()


def user_warning(message: str, logger: logging.Logger | None = None) -> None:
    """A warning about what the user asked for: shown now (``recbole-kd: warning:`` on stderr, or through
    ``logger``), and repeated in the final summary."""
    if message in _USER_WARNINGS:
        return  # said once already in this run (e.g. a nested teacher run checks the same setting)
    _USER_WARNINGS.append(message)
    if logger is not None:
        logger.warning(message)
    else:
        print(f"recbole-kd: warning: {message}", file=sys.stderr, flush=True)


def user_warnings() -> list[str]:
    return list(_USER_WARNINGS)


# ---- settings ------------------------------------------------------------------------------------
# set by RecBole or by the run itself, never by the user: not part of the settings block
_NOT_SETTINGS = {"model", "dataset", "config_files", "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "single_spec",
                 "local_rank", "device", "valid_neg_sample_args", "test_neg_sample_args"}
_SOURCE_ORDER = ("model yaml", "dataset yaml", "file", "target section", "command line")


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= 120 else text[:117] + "..."


def changed_settings(config) -> dict[str, list[tuple[str, object]]]:
    """``{source: [(key, value as the source wrote it)]}`` of the settings whose value differs from the
    defaults (RecBole's and recbole-kd's), by where they were set (:func:`recbole_kd.config.setting_origin`)."""
    origin = getattr(config, "setting_origin", None)
    if origin is None:
        return {}
    out: dict[str, list] = {}
    for key, source in origin.sources.items():
        if source == "default" or source.startswith("shared with") or key in _NOT_SETTINGS or key not in config:
            continue  # "shared with" the outer run (a teacher's, a source model's): its own block shows them
        value = origin.raw.get(key)
        if key in origin.defaults and value == origin.defaults[key]:
            continue
        if key not in origin.defaults and value is None:  # left unset, as if absent
            continue
        out.setdefault(source, []).append((key, value))
    return out


def _source_rank(source: str) -> int:
    for i, name in enumerate(_SOURCE_ORDER):
        if source == name or source.startswith(name + " "):
            return i
    return len(_SOURCE_ORDER)


def device_line(config) -> str:
    """The device the run uses, and why when it is not the one gpu_id / use_gpu ask for."""
    import torch

    device = torch.device(config["device"]) if config["device"] is not None else torch.device("cpu")
    if device.type == "cuda":
        try:
            return f"{device} ({torch.cuda.get_device_name(device)})"
        except Exception:  # the name is for the reader only
            return str(device)
    use_gpu = config["use_gpu"] if "use_gpu" in config else True
    gpu_id = config["gpu_id"] if "gpu_id" in config else None
    if use_gpu is False:
        return f"{device} (use_gpu=False)"
    if gpu_id not in (None, "") and not torch.cuda.is_available():
        return f"{device} (no CUDA device here; gpu_id={gpu_id}, use_gpu={use_gpu} do not apply)"
    return str(device)


def _wrap(label: str, items: list[str], width: int = 100) -> list[str]:
    lines, line = [], ""
    for item in items:
        if line and len(line) + 2 + len(item) > width - 18:
            lines.append(line)
            line = item
        else:
            line = f"{line}  {item}" if line else item
    if line:
        lines.append(line)
    head = [f"  {label}:"] if len(label) > 15 else []  # e.g. "file configs/a.yaml": on its own line
    first = "" if head else label
    return head + [f"  {first if i == 0 else '':<16}{text}" for i, text in enumerate(lines or ["-"])]


def settings_block(config, title: str, logfile: str | None = None) -> str:
    """The short settings block: what differs from the defaults, by source, and the device."""
    where = f"; all settings: --verbose, and the log file {logfile}" if logfile else "; all settings: --verbose"
    origin = getattr(config, "setting_origin", None)
    shared = sorted({s for s in (origin.sources.values() if origin else ()) if s.startswith("shared with")})
    besides = "".join(f", besides those {s}" for s in shared)  # a nested run: the outer block shows them
    lines = [f"{title}: settings that differ from the defaults{besides}{where}"]
    groups = changed_settings(config)
    for source in sorted(groups, key=lambda s: (_source_rank(s), s)):
        lines += _wrap(source, [f"{k}={_short(v)}" for k, v in groups[source]])
    if not groups:
        lines.append(f"  {'-':<16}none")
    lines.append(f"  {'device':<16}{device_line(config)}")
    return "\n".join(lines)


# ---- phases and the whole-run estimate ------------------------------------------------------------
def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


@dataclass
class Phase:
    key: str  # "teacher", "cache", "source", "train"
    label: str
    epochs: int | None = None  # the most epochs it can run (None: not an epoch loop, or not known yet)
    started: float | None = None
    seconds: float | None = None  # when finished
    epoch_seconds: list = field(default_factory=list)

    def describe(self) -> str:
        if self.epochs is None:
            return self.label
        return f"{self.label} (up to {_epochs(self.epochs)})"


class RunProgress:
    """The phases of one run (e.g. teacher training, teacher-output cache, student training) and, once an
    epoch of the running phase has been timed, how long it and the whole run can still take."""

    def __init__(self, phases: list[Phase], owner, logger: logging.Logger):
        self.phases = phases
        self.owner = owner  # the run's own trainer: its training is the "train" phase
        self.logger = logger
        self.current: Phase | None = None

    def _index(self, phase: Phase) -> str:
        return f"phase {self.phases.index(phase) + 1}/{len(self.phases)} " if len(self.phases) > 1 else ""

    def _following(self, phase: Phase) -> list[Phase]:
        return self.phases[self.phases.index(phase) + 1:]

    def plan_line(self) -> str:
        return "run plan: " + ", then ".join(f"{i + 1}) {p.describe()}" for i, p in enumerate(self.phases))

    def start(self, key: str, epochs: int | None = None) -> None:
        phase = next((p for p in self.phases if p.key == key), None)
        if phase is None or phase is self.current:
            return
        if self.current is not None and self.current.seconds is None:
            self.finish(self.current.key)
        if epochs is not None:
            phase.epochs = epochs
        phase.started = time.perf_counter()
        self.current = phase
        if len(self.phases) > 1:
            after = self._following(phase)
            following = "; next: " + ", then ".join(p.describe() for p in after) if after else "; the last phase"
            self.logger.info(f"{self._index(phase).strip()}: {phase.describe()}{following}")

    def finish(self, key: str) -> float | None:
        phase = next((p for p in self.phases if p.key == key), None)
        if phase is None or phase.started is None or phase.seconds is not None:
            return None
        phase.seconds = time.perf_counter() - phase.started
        if len(self.phases) > 1:
            self.logger.info(f"{self._index(phase).strip()} done: {phase.label}, {duration(phase.seconds)}")
        if self.current is phase:
            self.current = None
        return phase.seconds

    def set_epochs(self, epochs: int) -> None:
        if self.current is not None and self.current.epochs is None:
            self.current.epochs = int(epochs)

    def epoch_line(self, done: int, cycle_seconds: list[float], stale: int, patience: int | None) -> str | None:
        """After ``done`` epochs of the running phase (each timed in ``cycle_seconds``): at most how long it,
        and the run, can still take (early stopping may end the phase sooner)."""
        phase = self.current
        if phase is None or not cycle_seconds:
            return None
        per_epoch = sum(cycle_seconds) / len(cycle_seconds)
        text = f"{self._index(phase)}{phase.label}: {_epochs(done)} done, {duration(per_epoch)} per epoch"
        if phase.epochs is not None:
            left = max(phase.epochs - done, 0)
            text += f"; at most {_epochs(left)} more ({duration(left * per_epoch)})"
            if patience:
                text += f", fewer if early stopping ends it (no improvement for {stale} of {patience} epochs)"
        after = self._following(phase)
        if after:
            text += "; then " + ", then ".join(p.describe() for p in after) + ", not timed yet"
        elif phase.epochs is not None and len(self.phases) > 1:
            text += f"; the whole run: at most {duration(max(phase.epochs - done, 0) * per_epoch)} more"
        return text


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


_PROGRESS: RunProgress | None = None


def begin_progress(phases: list[Phase], owner, logger: logging.Logger) -> RunProgress:
    global _PROGRESS
    _PROGRESS = RunProgress(phases, owner, logger)
    if len(phases) > 1:
        logger.info(_PROGRESS.plan_line())
    return _PROGRESS


def end_progress() -> None:
    global _PROGRESS
    _PROGRESS = None


def phase_start(key: str, epochs: int | None = None) -> None:
    if _PROGRESS is not None:
        _PROGRESS.start(key, epochs)


def phase_finish(key: str) -> None:
    if _PROGRESS is not None:
        _PROGRESS.finish(key)


def training_started(trainer, epochs: int) -> None:
    """A trainer's ``fit`` begins: the run's own trainer starts the "train" phase; a nested run's (a teacher,
    a source model) tells the running phase how many epochs it can take."""
    if _PROGRESS is None:
        return
    if trainer is _PROGRESS.owner:
        _PROGRESS.start("train", epochs)
    else:
        _PROGRESS.set_epochs(epochs)


def training_finished(trainer) -> None:
    if _PROGRESS is not None and trainer is _PROGRESS.owner:
        _PROGRESS.finish("train")


def epoch_timed(trainer, done: int, cycle_seconds: list[float]) -> None:
    """Called when an epoch begins, with the wall time of each earlier epoch of this ``fit`` (training,
    validation and checkpoints)."""
    if _PROGRESS is None:
        return
    line = _PROGRESS.epoch_line(done, cycle_seconds, int(getattr(trainer, "cur_step", 0) or 0),
                                getattr(trainer, "stopping_step", None))
    if line:
        _PROGRESS.logger.info(line)


# ---- the final summary (stdout) --------------------------------------------------------------------
def _number(value, places: int) -> str:
    return "-" if value is None else f"{float(value):.{places}f}"


def _tables(result) -> list[tuple[str, dict, dict]]:
    """[(protocol label, valid metrics, test metrics)], the selected protocol first."""
    valid = result.get("best_valid_result_by_protocol") or {}
    test = result.get("test_result_by_protocol") or {}
    selected = result.get("protocol")
    names = [p for p in (selected, *sorted(set(valid) | set(test))) if p and (p in valid or p in test)]
    names = list(dict.fromkeys(names))
    if not names:  # no full-sort evaluation (e.g. sampled candidates): RecBole's result alone
        return [("result", result.get("best_valid_result") or {}, result.get("test_result") or {})]
    return [(name + ("*" if name == selected else ""), valid.get(name) or {}, test.get(name) or {}) for name in names]


def timing_line(result) -> str:
    parts = []
    if "teacher_train_seconds" in result:
        trained = result.get("teacher_source") == "trained"
        parts.append(f"teacher training {duration(result['teacher_train_seconds'])}" if trained
                     else f"teacher {result.get('teacher_source', 'loaded')}")
        parts.append(f"teacher-output cache {duration(result.get('teacher_cache_seconds'))}")
        parts.append(f"student training {duration(result.get('student_train_seconds'))}")
    elif "source_train_seconds" in result:
        trained = result.get("source_phase") == "trained"
        parts.append(f"source training {duration(result['source_train_seconds'])}" if trained
                     else "source model cached")
        parts.append(f"target training {duration(result.get('target_train_seconds'))}")
    else:
        parts.append(f"training {duration(result.get('train_seconds'))}")
    epochs = result.get("epochs_run")
    if epochs:
        parts[-1] += f" ({epochs} epoch{'s' if epochs != 1 else ''}, {duration(result.get('train_seconds_per_epoch'))}"\
                     " per epoch)"
    parts.append(f"test evaluation {duration(result.get('eval_seconds'))}")
    return ", ".join(parts)


def summary_text(result: dict, result_file: str | None, warnings=(), places: int = 4) -> str:
    """Results as a person reads them: metric x (valid, test) under each protocol, then what else matters."""
    head = f"{result.get('model')} on {result.get('dataset')}"
    if result.get("num_params") is not None:
        head += f": {result['num_params']:,} parameters"
    if result.get("seed") is not None:
        head += f", seed {result['seed']}"
    tables = _tables(result)
    metrics = list(dict.fromkeys(m for _, v, t in tables for m in list(v) + list(t)))
    width = max([len("metric")] + [len(m) for m in metrics]) + 2
    col = max(places + 4, 8)
    group = 2 * col + 2
    lines = [head, ""]
    lines.append(" " * width + "".join(f"{name:<{group}}" for name, _, _ in tables).rstrip())
    lines.append(f"{'metric':<{width}}" + "".join(f"{'valid':<{col}}{'test':<{col + 2}}" for _ in tables).rstrip())
    for m in metrics:
        cells = "".join(f"{_number(v.get(m), places):<{col}}{_number(t.get(m), places):<{col + 2}}" for _, v, t in tables)
        lines.append(f"{m:<{width}}" + cells.rstrip())
    protocol = result.get("protocol")
    if protocol and any(name.endswith("*") for name, _, _ in tables):
        lines.append(f"* {protocol}: the protocol that selects the best epoch and gives best_valid_result / "
                     "test_result (README: Evaluation protocol)")
    lines.append("")
    if result.get("teacher") and result.get("teacher_test_result"):
        teacher_test = result["teacher_test_result"]
        key = next((m for m in metrics if m in teacher_test and m.startswith("ndcg")), None) or next(iter(teacher_test))
        lines.append(f"{'teacher':<14}{result['teacher']} ({result.get('teacher_source')}): test {key} "
                     f"{_number(teacher_test[key], places)}" + (f" ({result['teacher_protocol']})"
                                                                 if result.get("teacher_protocol") else ""))
    lines.append(f"{'time':<14}{timing_line(result)}")
    if result.get("checkpoint"):
        lines.append(f"{'checkpoint':<14}{result['checkpoint']}")
    lines.append(f"{'result file':<14}" + (os.path.abspath(result_file) if result_file
                                          else "none (--result_file=PATH.json writes this summary and more)"))
    for w in warnings:
        lines.append(f"{'warning':<14}{w}")
    return "\n".join(lines)


def summary_json(result: dict, result_file: str | None, warnings=()) -> str:
    """The run's result (what the result file holds) plus ``result_file`` and ``warnings``, as JSON."""
    out = dict(result)
    out["result_file"] = os.path.abspath(result_file) if result_file else None
    out["warnings"] = list(warnings)
    return json.dumps(out, indent=2, sort_keys=True, default=str)
