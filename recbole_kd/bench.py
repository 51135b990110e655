"""``python -m recbole_kd bench SUITE.yaml``: datasets x models x seeds through the CLI, resumable.

Every cell is one ``python -m recbole_kd --model=... --dataset=...`` run (the path users use: same
split, same evaluator), in its own work folder with ``--resume=auto``. A finished cell is stored
as ``cells/<id>.json`` (atomically) the moment it ends, so re-running the suite skips finished
cells, re-runs failed ones, and an interrupted cell continues from its last epoch checkpoint.
Cells run elsewhere (e.g. on a GPU machine) merge by copying their ``cells/*.json`` in and
running ``--render-only`` (``benchmarks/accelerator/`` does both for a machine without internet, see
docs/benchmarks.md). ``--only
PATTERN`` (repeatable) runs a subset of the cells (shell pattern on label, model, dataset or cell id); the
report still lists every row, unrun ones as such. ``--data_path DIR`` reads every dataset from ``DIR``
instead of the suite's ``data_path`` (e.g. a copy of the data on another machine); the cells' settings
and ids stay those of the suite, so their results merge with cells run from the suite as written.

Suite file::

    name: quick-ml-100k
    seeds: [2020, 2021, 2022]
    settings: {epochs: 30}              # every cell
    datasets:
      ml-100k: {}                       # settings for this dataset's cells
      amazon-beauty-5core: {data_path: ../shared/datasets}
    models:
      - model: SASRec-L
        group: teacher                  # baseline | teacher | student | distilled | transfer
        seeds: [2020]                   # default: the suite's seeds
        settings: {hidden_size: 128}
        minutes: 5                      # estimate for --dry-run until a cell has run ({dataset: minutes} too)
      - model: SASRec-S
        group: student
      - model: KD-SASRec
        label: KD-SASRec (rrd)          # default: the model name; unique per suite
        group: distilled
        settings: {kd_losses: {rrd: 1.0}}
        teacher_from: SASRec-L          # use that row's checkpoint (its first seed)
      - model: SASRec
        group: baseline
        skip: {ml-1m: "RecBole's SASRec needs ~20 min per epoch on 2 CPU cores"}

Output folder: ``results.json``, ``results.csv``, ``README.md`` (one table per dataset, rows
grouped baseline / teacher / student / distilled / transfer, ratio columns "vs student alone"
and "vs teacher") and ``plots/*.png`` (NDCG@10 vs parameters and vs latency with the Pareto
front, KD gain per distilled row).
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import fnmatch
import functools
import hashlib
import io
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

import yaml

from recbole_kd.config import ConfigError, build_config
from recbole_kd.kd.teacher_spec import distilled_from_raw_top_k
from recbole_kd.models.distill import ALIASES
from recbole_kd.protocol import FILTER_SEEN, PROTOCOLS, RECBOLE
from recbole_kd.registry import UnknownModelError, get_entry
from recbole_kd.utils import git_commit, machine_info, mean_std, write_json_atomic, write_text_atomic

GROUPS = ("baseline", "teacher", "student", "distilled", "transfer")


class SuiteError(Exception):
    """A suite file that cannot be run; the message says what and where."""


@dataclass
class Cell:
    dataset: str
    label: str
    model: str
    group: str
    seed: int
    settings: dict
    teacher_from: str | None = None
    student_ref: str | None = None
    skip: str | None = None
    minutes: float | None = None
    order: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.label).strip("_")
        return f"{self.dataset}__{slug}__seed{self.seed}"

    def spec(self) -> dict:
        return {"dataset": self.dataset, "label": self.label, "model": self.model, "group": self.group,
                "seed": self.seed, "settings": self.settings, "teacher_from": self.teacher_from}

    @property
    def config_hash(self) -> str:
        return hashlib.sha1(json.dumps(self.spec(), sort_keys=True, default=str).encode()).hexdigest()[:12]


# ---- suite file ------------------------------------------------------------------------------------
def load_suite(path: str) -> dict:
    if not os.path.isfile(path):
        raise SuiteError(f"suite file {path} does not exist")
    with open(path) as f:
        try:
            suite = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise SuiteError(f"suite file {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(suite, dict):
        raise SuiteError(f"suite file {path} must be a mapping with name, datasets, models")
    for key in ("name", "datasets", "models"):
        if not suite.get(key):
            raise SuiteError(f"suite file {path} has no '{key}'")
    unknown = set(suite) - {"name", "description", "seeds", "settings", "datasets", "models", "output"}
    if unknown:
        raise SuiteError(f"suite file {path}: unknown top-level key(s) {sorted(unknown)}")
    suite["_path"] = os.path.abspath(path)
    return suite


_MODEL_KEYS = {"model", "label", "group", "seeds", "settings", "teacher_from", "student_ref", "skip", "minutes", "datasets"}


def expand(suite: dict) -> list[Cell]:
    """All cells, teachers first (distilled cells need their checkpoints), then file order."""
    where = suite["_path"]
    seeds = suite.get("seeds") or [2020]
    common = suite.get("settings") or {}
    datasets = suite["datasets"]
    if isinstance(datasets, list):
        datasets = {d: {} for d in datasets}
    labels = set()
    cells = []
    for i, entry in enumerate(suite["models"]):
        if isinstance(entry, str):
            entry = {"model": entry}
        unknown = set(entry) - _MODEL_KEYS
        if unknown or "model" not in entry:
            raise SuiteError(f"{where}: models[{i}] needs 'model' and takes only {sorted(_MODEL_KEYS)}; got {sorted(entry)}")
        label = str(entry.get("label") or entry["model"])
        if label in labels:
            raise SuiteError(f"{where}: two models are labelled {label!r}; give each a unique 'label'")
        labels.add(label)
        group = entry.get("group") or ("distilled" if entry["model"].startswith("KD-") else
                                       "transfer" if entry["model"].startswith("Transfer-") else "baseline")
        if group not in GROUPS:
            raise SuiteError(f"{where}: models[{i}] ({label}) has group {group!r}; use one of {', '.join(GROUPS)}")
        skip = entry.get("skip")
        for ds, ds_settings in datasets.items():
            if entry.get("datasets") and ds not in entry["datasets"]:
                continue
            reason = skip.get(ds) if isinstance(skip, dict) else skip
            minutes = entry.get("minutes")
            minutes = minutes.get(ds) if isinstance(minutes, dict) else minutes
            for seed in entry.get("seeds") or seeds:
                settings = {**common, **(ds_settings or {}), **(entry.get("settings") or {})}
                cells.append(Cell(ds, label, entry["model"], group, int(seed), settings, entry.get("teacher_from"),
                                  entry.get("student_ref"), reason, minutes, i))
    for c in cells:
        if c.teacher_from and c.teacher_from not in labels:
            raise SuiteError(f"{where}: {c.label} has teacher_from {c.teacher_from!r}, which is no model's label")
    teachers = {c.teacher_from for c in cells if c.teacher_from}
    return sorted(cells, key=lambda c: (list(datasets).index(c.dataset), 0 if c.label in teachers else 1, c.order, c.seed))


def check_cells(cells: list[Cell], where: str) -> None:
    """Every cell's model and settings, checked as the CLI checks them (unknown keys are errors here),
    before any cell runs: a typo in a late row would otherwise surface hours into the suite. The data is
    not read (a dataset converted later, or on another machine, is fine)."""
    seen = set()
    cuda = os.environ.get("CUDA_VISIBLE_DEVICES")  # RecBole's Config sets it; the cells set their own
    try:
        for c in cells:
            key = (c.label, c.model, c.dataset, json.dumps(c.settings, sort_keys=True, default=str))
            if c.skip is not None or key in seen:
                continue
            seen.add(key)
            try:
                build_config(c.model, c.dataset, overrides={**c.settings, "strict": True}, check_data=False)
            except (UnknownModelError, ConfigError) as exc:
                raise SuiteError(f"{where}: {c.label} on {c.dataset}: {exc}") from None
    finally:
        if cuda is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = cuda


def output_dir(suite: dict, out: str | None) -> str:
    if out:
        return os.path.abspath(out)
    base = os.path.dirname(suite["_path"])
    if suite.get("output"):
        return os.path.normpath(os.path.join(base, suite["output"]))
    if os.path.basename(base) == "suites":
        return os.path.join(os.path.dirname(base), "results", suite["name"])
    return os.path.abspath(f"{suite['name']}-results")


# ---- storage ---------------------------------------------------------------------------------------
def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def cell_record(out: str, cell: Cell) -> dict | None:
    """The stored result of ``cell`` if it finished with the same settings."""
    rec = _read_json(os.path.join(out, "cells", cell.id + ".json"))
    if rec and rec.get("status") == "ok" and rec.get("config_hash") == cell.config_hash and not _stale_kd(rec, cell):
        return rec
    return None


def _stale_kd(rec: dict, cell: Cell) -> bool:
    """A distilled cell stored before ``kd_mask_seen`` was distilled from the teacher's raw top-K, seen
    items included: it is run again, not reported as today's method."""
    wants_mask = bool((cell.settings or {}).get("kd_mask_seen", True))
    return wants_mask and distilled_from_raw_top_k(cell.model, rec.get("result") or {})


def failed_record(out: str, cell: Cell) -> dict | None:
    return _read_json(os.path.join(out, "cells", cell.id + ".failed.json"))


# ---- running ---------------------------------------------------------------------------------------
def _cli_value(v) -> str:
    return v if isinstance(v, str) else repr(v)


def cell_command(cell: Cell, out: str, records: dict, data_path: str | None = None) -> list[str]:
    """The cell's CLI command. ``data_path`` (bench's ``--data_path``) replaces the suite's ``data_path`` of
    the cell's dataset and of a transfer source; it is not part of the cell's settings or id."""
    work = os.path.join(out, "work", cell.id)
    settings = dict(cell.settings)
    if cell.model.startswith("KD-"):
        if cell.teacher_from:
            teacher = _teacher_record(cell, records)
            settings["teacher"] = teacher["model"]
            settings["teacher_checkpoint"] = os.path.join(out, teacher["result"]["checkpoint"])
        else:
            settings.setdefault("teacher_dir", os.path.join(out, "work", cell.dataset, "teachers"))
            # the suite defines a cell's teacher: a pretrained one shipped later never changes what a stored
            # cell id means (a suite opts in with teacher_pretrained: True)
            settings.setdefault("teacher_pretrained", False)
    if cell.model.startswith("Transfer-"):  # one source model per (source, settings, seed) for the suite
        settings.setdefault("transfer_dir", os.path.join(out, "work", cell.dataset, "transfer"))
    args = [sys.executable, "-m", "recbole_kd", f"--model={cell.model}", f"--dataset={cell.dataset}",
            f"--seed={cell.seed}", f"--result_file={os.path.join(work, 'result.json')}",
            f"--checkpoint_dir={os.path.join(work, 'saved')}", "--resume=auto"]
    settings.setdefault("show_progress", False)
    if data_path:
        settings["data_path"] = data_path
        if isinstance(settings.get("source"), dict) and settings["source"].get("data_path"):
            settings["source"] = {**settings["source"], "data_path": data_path}
    for key, value in settings.items():
        if key == "data_path":
            value = os.path.abspath(value)
        elif key == "source" and isinstance(value, dict) and value.get("data_path"):
            value = {**value, "data_path": os.path.abspath(value["data_path"])}  # paths are relative to the caller
        args.append(f"--{key}={_cli_value(value)}")
    return args


def _teacher_record(cell: Cell, records: dict) -> dict:
    found = [r for (ds, label, _), r in sorted(records.items(), key=lambda kv: kv[0][2])
             if ds == cell.dataset and label == cell.teacher_from]
    if not found:
        raise RuntimeError(f"teacher row {cell.teacher_from!r} has no finished cell on {cell.dataset}")
    return found[0]


def teacher_reruns(cells: list[Cell], records: dict, out: str, todo: list[Cell]) -> dict[str, Cell]:
    """Teacher cells (by id) that distilled cells in ``todo`` need but cannot use: the teacher row has no
    finished cell, or the finished cell ``_teacher_record`` picks has its checkpoint missing here
    (checkpoints are git-ignored, so a fresh checkout has the teacher's metrics but not its weights).
    They are run (again) before their students."""
    need = {}
    for c in todo:
        if not (c.model.startswith("KD-") and c.teacher_from):
            continue
        try:
            rec = _teacher_record(c, records)
        except RuntimeError:
            rec = None
        ckpt = rec and rec["result"].get("checkpoint")
        if ckpt and os.path.exists(os.path.join(out, ckpt)) and not legacy_record(rec):
            continue
        rows = [t for t in cells if t.dataset == c.dataset and t.label == c.teacher_from and t.skip is None
                and (rec is None or t.seed == rec["seed"])]  # cells are in seed order within a row
        if rows:  # none: a skipped teacher row, and the distilled cell fails with its own clear error
            need.setdefault(rows[0].id, rows[0])
    return need


_LIVE: set = set()  # processes of the cells running now (stopped when the bench is interrupted)


def cell_threads(jobs: int) -> int | None:
    """Torch threads for each of ``jobs`` cells running side by side: this machine's cores split between
    them, so that they do not oversubscribe it (two cells of two threads each on two cores run their epochs
    far slower than two of one thread). None: one cell at a time, or OMP_NUM_THREADS set by the user, whose
    choice stands; the cells then get torch's default."""
    if jobs <= 1 or os.environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, (os.cpu_count() or 1) // jobs)


def _run_process(args: list[str], cwd: str, log, env: dict | None = None) -> tuple[int, str]:
    """Run a cell's command (stdout to ``log``; ``env``: its environment, None for this one's); its exit
    status and stderr."""
    proc = subprocess.Popen(args, cwd=cwd, stdout=log, stderr=subprocess.PIPE, text=True, env=env)
    _LIVE.add(proc)
    try:
        _, stderr = proc.communicate()
    finally:
        _LIVE.discard(proc)
    return proc.returncode, stderr


def run_cell(cell: Cell, out: str, records: dict, data_path: str | None = None, threads: int | None = None) -> dict:
    """Run one cell in its own process (``threads``: its OMP_NUM_THREADS, see ``cell_threads``)."""
    work = os.path.join(out, "work", cell.id)
    os.makedirs(work, exist_ok=True)
    result_path = os.path.join(work, "result.json")
    if os.path.exists(result_path):
        os.unlink(result_path)
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    try:
        args = cell_command(cell, out, records, data_path)
    except RuntimeError as exc:
        return {"status": "failed", "error": str(exc), "started_at": started}
    with open(os.path.join(work, "output.log"), "a") as log:
        log.write(f"\n$ {shlex.join(args)}\n")
        log.flush()
        env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads)}
        returncode, stderr = _run_process(args, work, log, env)
        log.write(stderr)
    wall = time.perf_counter() - t0
    base = {**cell.spec(), "id": cell.id, "config_hash": cell.config_hash, "started_at": started,
            "wall_seconds": wall, "command": shlex.join(args[1:]), "git_commit": git_commit(), "machine": machine_info()}
    result = _read_json(result_path)
    if returncode != 0 or result is None:
        errors = [l for l in stderr.splitlines() if l.startswith("recbole-kd: error")]
        tail = errors[-1] if errors else (stderr.strip().splitlines() or ["no output"])[-1]
        return {**base, "status": "failed", "returncode": returncode, "error": tail[:500]}
    if result.get("checkpoint"):
        result["checkpoint"] = os.path.relpath(os.path.join(work, result["checkpoint"]), out)
    ran = result.get("machine") or {}  # the run's own record of the device it used (config["device"])
    if ran.get("device") in ("cpu", "cuda"):
        base["machine"] = {**{k: v for k, v in base["machine"].items() if k not in ("device", "gpu")},
                           **{k: ran[k] for k in ("device", "gpu") if k in ran}}
    if isinstance(ran.get("torch_threads"), int):  # the threads the run itself had, not this process's
        base["machine"]["torch_threads"] = ran["torch_threads"]
    return {**base, "status": "ok", "result": result}


def estimate_minutes(cell: Cell, done: dict) -> float | None:
    same = [r["wall_seconds"] / 60 for (ds, label, _), r in done.items() if ds == cell.dataset and label == cell.label]
    if same:
        return statistics.mean(same)
    return float(cell.minutes) if cell.minutes is not None else None


def _fmt_minutes(m: float | None) -> str:
    return "?" if m is None else (f"{m:.1f} min" if m < 120 else f"{m / 60:.1f} h")


def selected(cell: Cell, only: list[str] | None) -> bool:
    """``--only`` patterns (shell-style, case-sensitive) match a cell's label, model, dataset or id."""
    if not only:
        return True
    names = (cell.label, cell.model, cell.dataset, cell.id)
    return any(fnmatch.fnmatchcase(name, pat) for pat in only for name in names)


def _datasets_needed(cell: Cell) -> list[str]:
    source = (cell.settings or {}).get("source")
    extra = [source["dataset"]] if isinstance(source, dict) and source.get("dataset") else []
    return [cell.dataset, *extra]


def check_data_path(data_path: str, cells: list[Cell]) -> str:
    """``--data_path``: the folder must exist and hold a folder for every dataset the cells to run read."""
    data_path = os.path.abspath(data_path)
    if not os.path.isdir(data_path):
        raise SuiteError(f"--data_path {data_path} is not a folder (it should hold one folder per dataset, "
                         "e.g. DIR/ml-1m/ml-1m.inter)")
    missing = sorted({ds for c in cells for ds in _datasets_needed(c) if not os.path.isdir(os.path.join(data_path, ds))})
    if missing:
        raise SuiteError(f"--data_path {data_path} has no folder for dataset(s) {', '.join(missing)} "
                         "(expected DIR/NAME/NAME.inter)")
    return data_path


def _needs(cell: Cell, todo: list[Cell]) -> set[str]:
    """Ids of the cells in ``todo`` that ``cell`` must wait for: the teacher row it distils from."""
    if not (cell.model.startswith("KD-") and cell.teacher_from):
        return set()
    return {t.id for t in todo if t.dataset == cell.dataset and t.label == cell.teacher_from}


def _exclusive(cell: Cell) -> tuple | None:
    """Cells that build a shared, lazily trained model run one at a time: distilled cells without
    ``teacher_from`` (the teacher zoo of the dataset) and transfer cells (the source-model cache)."""
    if cell.model.startswith("KD-") and not cell.teacher_from:
        return ("teachers", cell.dataset)
    if cell.model.startswith("Transfer-"):
        return ("transfer", cell.dataset)
    return None


def _run_cells(todo: list[Cell], cells: list[Cell], records: dict, out: str, reruns: dict,
               only: list[str] | None, data_path: str | None, jobs: int) -> None:
    """Run ``todo`` with up to ``jobs`` cells at a time (each its own process), in order, a cell starting
    once the teacher cells it needs have ended; store each cell as it ends. Ctrl-C stops the running cells
    (their epoch checkpoints stay for ``--resume=auto``) and re-raises KeyboardInterrupt."""
    import concurrent.futures as cf

    needs = {c.id: _needs(c, todo) for c in todo}
    pending, running, ended, ran = list(todo), {}, set(), []
    threads = cell_threads(jobs)
    if threads is not None:
        print(f"[bench] --jobs {jobs} on {os.cpu_count()} cores: each cell runs with OMP_NUM_THREADS={threads} "
              "(set OMP_NUM_THREADS to choose)", flush=True)
    with cf.ThreadPoolExecutor(max_workers=jobs) as pool:
        try:
            while pending or running:
                busy = {_exclusive(c) for c, _ in running.values()} - {None}
                for c in list(pending):
                    if len(running) >= jobs:
                        break
                    if needs[c.id] - ended or (_exclusive(c) is not None and _exclusive(c) in busy):
                        continue
                    pending.remove(c)
                    busy.add(_exclusive(c))
                    n = len(todo) - len(pending) - 1
                    left = [estimate_minutes(x, records) for x in [c, *pending]]
                    if all(e is not None for e in left):
                        eta = sum(left) / min(jobs, len(left))
                    elif ran:
                        eta = statistics.mean(ran) / 60 * len(left) / min(jobs, len(left))
                    else:
                        eta = None
                    progress = (f"{n}/{len(todo)} selected cells run" if only else
                                f"{len(cells) - len(todo) + n}/{len(cells)} cells done or skipped")
                    if c.id in reruns and (c.dataset, c.label, c.seed) in records:
                        print(f"[bench] teacher cell {c.id} is finished but its checkpoint is not on this machine "
                              "(checkpoints are not committed): running it again for the distilled cells", flush=True)
                    also = f" ({len(running) + 1} running)" if jobs > 1 else ""
                    print(f"[bench] {progress} · running {c.id}{also} · ETA {_fmt_minutes(eta)}", flush=True)
                    running[pool.submit(run_cell, c, out, dict(records), data_path, threads)] = (c, time.perf_counter())
                if not running:  # cannot happen: a cell's needs are in todo before it
                    raise RuntimeError(f"bench: no cell can start; waiting: {[c.id for c in pending]}")
                done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    c, t0 = running.pop(fut)
                    ran.append(time.perf_counter() - t0)
                    ended.add(c.id)
                    rec = fut.result()
                    if rec["status"] == "ok":
                        write_json_atomic(os.path.join(out, "cells", c.id + ".json"), rec)
                        failed = os.path.join(out, "cells", c.id + ".failed.json")
                        if os.path.exists(failed):
                            os.unlink(failed)
                        records[(c.dataset, c.label, c.seed)] = rec
                        if jobs > 1:
                            print(f"[bench] finished {c.id} in {_fmt_minutes(rec['wall_seconds'] / 60)}", flush=True)
                    else:
                        write_json_atomic(os.path.join(out, "cells", c.id + ".failed.json"), rec)
                        print(f"[bench] cell {c.id} failed: {rec.get('error')}", file=sys.stderr, flush=True)
        except BaseException:
            for proc in list(_LIVE):  # the cells' processes: interrupted like a Ctrl-C in a terminal would
                proc.send_signal(signal.SIGINT)
            deadline = time.monotonic() + 10  # then killed: a cell ends within seconds of a SIGINT
            for proc in list(_LIVE):
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def run_suite(path: str, out: str | None = None, dry_run: bool = False, render_only: bool = False,
              only: list[str] | None = None, data_path: str | None = None, jobs: int = 1) -> int:
    suite = load_suite(path)
    cells = expand(suite)
    if not render_only:
        check_cells(cells, suite["_path"])
    out = output_dir(suite, out)
    records = {}
    for c in cells:
        rec = cell_record(out, c)
        if rec:
            records[(c.dataset, c.label, c.seed)] = rec
    if only and not any(selected(c, only) for c in cells):
        raise SuiteError(f"--only {' '.join(only)} matches no cell of {path}; "
                         "patterns match a label, model, dataset or cell id (see --dry-run)")
    # cells stored before both protocols were recorded are reported as they are, and run again when selected
    stale = {k for k, rec in records.items() if legacy_record(rec)}
    todo = [c for c in cells if c.skip is None and ((c.dataset, c.label, c.seed) not in records
                                                    or (c.dataset, c.label, c.seed) in stale) and selected(c, only)]
    reruns = teacher_reruns(cells, records, out, todo)
    if reruns:  # teachers come first in ``cells``, so they run before the students that need them
        wanted = set(reruns) | {c.id for c in todo}
        todo = [c for c in cells if c.id in wanted]
    if data_path and not render_only:
        data_path = check_data_path(data_path, todo)
    if dry_run:
        print(f"suite {suite['name']}: {len(cells)} cells -> {out}")
        total, unknown = 0.0, 0
        for c in cells:
            state = ("to run (teacher)" if c.id in reruns else
                     "to run (one protocol)" if (c.dataset, c.label, c.seed) in stale and selected(c, only) else
                     "done (one protocol)" if (c.dataset, c.label, c.seed) in stale else
                     "done" if (c.dataset, c.label, c.seed) in records else
                     f"skip ({c.skip})" if c.skip else "not selected" if not selected(c, only) else
                     "failed before" if failed_record(out, c) else "to run")
            runs = state.startswith(("to run", "failed"))
            est = estimate_minutes(c, records) if runs else None
            if est is not None:
                total += est
            elif runs:
                unknown += 1
            print(f"  {c.id:<60} {c.group:<9} {state:<16} {'' if est is None else _fmt_minutes(est)}")
        print(f"to run: {len(todo)} cells, estimated {_fmt_minutes(total)}"
              + (f" + {unknown} without an estimate" if unknown else ""))
        return 0
    if not render_only:
        os.makedirs(os.path.join(out, "cells"), exist_ok=True)
        try:
            _run_cells(todo, cells, records, out, reruns, only, data_path, jobs)
        except KeyboardInterrupt:
            print("[bench] interrupted: finished cells are stored; run the same command again to resume",
                  file=sys.stderr)
            render(suite, cells, records, out)
            return 130
    render(suite, cells, records, out)
    failed = [c for c in cells if c.skip is None and (c.dataset, c.label, c.seed) not in records
              and selected(c, only)]
    unselected = sum(1 for c in cells if c.skip is None and (c.dataset, c.label, c.seed) not in records
                     and not selected(c, only))
    print(f"[bench] {len(records)}/{len(cells)} cells done, {sum(1 for c in cells if c.skip)} skipped, "
          f"{len(failed)} not done" + (f", {unselected} not selected by --only" if unselected else "")
          + f"; report: {os.path.join(out, 'README.md')}")
    return 1 if failed and not render_only else 0


# ---- report ----------------------------------------------------------------------------------------
METRICS = ("ndcg@10", "recall@10", "mrr@10")


def summarize(cells: list[Cell], records: dict, out: str) -> list[dict]:
    rows = []
    by_row = {}
    for c in cells:
        by_row.setdefault((c.dataset, c.label), []).append(c)
    for (ds, label), group_cells in by_row.items():
        c0 = group_cells[0]
        runs = [records[(ds, label, c.seed)] for c in group_cells if (ds, label, c.seed) in records]
        # a row averages cells of one kind: once any seed recorded both protocols, seeds stored before
        # (scored, and their checkpoint selected, under RecBole's protocol only) are left out, not mixed in
        current = [r for r in runs if not legacy_record(r)]
        superseded = [r["seed"] for r in runs if current and legacy_record(r)]
        runs = current or runs
        row = {"dataset": ds, "label": label, "model": c0.model, "group": c0.group, "seeds_planned": len(group_cells),
               "seeds": [r["seed"] for r in runs], "skip": c0.skip, "teacher_from": c0.teacher_from,
               "student_ref": c0.student_ref, "superseded_seeds": superseded}
        if not runs:
            fails = [failed_record(out, c) for c in group_cells]
            fails = [f for f in fails if f]
            if c0.skip:
                row["status"] = f"not run: {c0.skip}"
            elif fails:
                row["status"] = f"failed: {fails[0].get('error')}"
            else:
                est = f" (estimated {_fmt_minutes(c0.minutes)} per seed on the reference CPU)" if c0.minutes else ""
                row["status"] = f"not run yet{est}"
            rows.append(row)
            continue
        res = [r["result"] for r in runs]
        for protocol in PROTOCOLS:
            tables = [protocol_result(r, protocol) for r in res]
            row[protocol] = (None if any(t is None for t in tables) else
                             {m: mean_std([t.get(m) for t in tables]) for m in METRICS})
            row.setdefault("seed_ndcg", {})[protocol] = (None if any(t is None for t in tables) else
                                                         [t.get("ndcg@10") for t in tables])
        row["protocols_selected"] = sorted({r.get("protocol") or RECBOLE for r in res})
        row["num_params"] = res[0]["num_params"]
        row["latency_ms"] = statistics.median([1000 * r["latency_seconds"] for r in res])
        row["seconds_per_epoch"] = statistics.mean([r["train_seconds_per_epoch"] for r in res])
        row["epochs"] = statistics.mean([r["epochs_run"] for r in res])
        row["train_minutes"] = statistics.mean([r["train_seconds"] for r in res]) / 60
        row["devices"] = sorted({(r.get("machine") or {}).get("device", "cpu") for r in runs})
        row["status"] = "ok"
        rows.append(row)
    # each dataset is reported under one protocol (the one its cells selected; filter_seen by default), the
    # other shown beside it; ratios only ever compare two rows under the same protocol
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        same = [r for r in rows if r["dataset"] == ds and r.get("status") == "ok"]
        main = FILTER_SEEN if any(FILTER_SEEN in r["protocols_selected"] for r in same) or not same else RECBOLE
        for row in rows:
            if row["dataset"] != ds:
                continue
            row["protocol"] = main
            if row.get("status") != "ok":
                continue
            for m in METRICS:
                row[m] = (row[main] or {}).get(m, (None, None))
        for row in same:
            ref = _student_ref(row, same)
            teacher = _teacher_ref(row, same)
            row["vs_student_alone"] = _ratio(row, ref, main)
            row["vs_student_alone_worst"] = _worst_ratio(row, ref, main) if row is not ref else None
            row["vs_student_label"] = ref["label"] if ref else None
            row["vs_teacher"] = _ratio(row, teacher, main)
            row["vs_teacher_label"] = teacher["label"] if teacher else None
            row["vs_noise"] = [k for k, r in (("vs_student_alone", ref), ("vs_teacher", teacher)) if _in_noise(r, main)]
            other = _other(main)
            row["other_protocol"] = other
            row["vs_student_alone_other"] = _ratio(row, ref, other)
            row["vs_teacher_other"] = _ratio(row, teacher, other)
    return rows


def _worst_ratio(row, ref, protocol):
    """The row's worst seed over the reference's best seed (NDCG@10): a gain that holds seed for seed is
    above 1 here, not only on the means."""
    if _ratio(row, ref, protocol) is None or len(row["seeds"]) < 2:
        return None
    ours, theirs = row["seed_ndcg"][protocol], ref["seed_ndcg"][protocol]
    return min(ours) / max(theirs) if max(theirs) else None


def protocol_result(result: dict, protocol: str) -> dict | None:
    """A cell's test metrics under ``protocol``, or None where it was not measured: a cell stored before
    both protocols were recorded was scored, and its checkpoint selected, under RecBole's protocol only."""
    table = result.get("test_result_by_protocol")
    if table:
        return table.get(protocol)
    return result.get("test_result") if protocol == RECBOLE else None


def legacy_record(rec: dict) -> bool:
    """A cell stored before every run recorded both protocols (it is run again when selected)."""
    return not (rec.get("result") or {}).get("test_result_by_protocol")


def _other(protocol: str) -> str:
    return RECBOLE if protocol == FILTER_SEEN else FILTER_SEEN


PROTOCOL_NAMES = {FILTER_SEEN: "filter-seen", RECBOLE: "RecBole"}


def _in_noise(ref, protocol) -> bool:
    """A reference row whose mean NDCG@10 is not above its spread over seeds (or is 0): a ratio to it is noise."""
    if not ref or not ref.get(protocol):
        return False
    mean, std = ref[protocol]["ndcg@10"]
    return not mean or (std is not None and mean <= std)


@functools.lru_cache(maxsize=None)
def _sequential(model: str) -> bool | None:
    from recbole.utils import ModelType

    try:
        return get_entry(model).cls.type == ModelType.SEQUENTIAL
    except Exception:  # an unknown model: its row failed to run anyway
        return None


def _ratio(row, ref, protocol):
    if not ref or not row.get(protocol) or not ref.get(protocol) or _in_noise(ref, protocol):
        return None
    if protocol == RECBOLE and _sequential(row["model"]) != _sequential(ref["model"]):
        return None  # RecBole's rule filters a general model's history and not a sequential one's: two tasks
    return row[protocol]["ndcg@10"][0] / ref[protocol]["ndcg@10"][0]


def _student_ref(row, same):
    if row["group"] not in ("distilled", "transfer", "student"):
        return None
    if row["student_ref"]:
        return next((r for r in same if r["label"] == row["student_ref"]), None)
    if row["group"] == "student":
        return row
    name = row["model"]
    if name.startswith("KD-"):
        name = ALIASES[name][0] if name in ALIASES else name[3:]
    return next((r for r in same if r["model"] == name and r["group"] == "student"), None)


def _teacher_ref(row, same):
    if row["group"] == "teacher":
        return row
    if row["teacher_from"]:
        return next((r for r in same if r["label"] == row["teacher_from"]), None)
    if row["group"] in ("student", "distilled"):
        return next((r for r in same if r["group"] == "teacher"), None)
    return None


def _fmt(ms, digits=4):
    if not ms or ms[0] is None:
        return "-"
    if ms[1] is None:  # a single seed has no spread to show
        return f"{ms[0]:.{digits}f}"
    return f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"


def _machines_line(recs) -> str:
    """Where the stored cells ran, e.g. ``9 cells on Intel Xeon (2 cores, cpu, torch 2.13.0+cpu); 4 cells on
    NVIDIA H200 (16 cores, cuda, torch 2.11.0+cu130)``: cells merged from another machine keep their own."""
    counts = {}
    for rec in recs:
        m = rec.get("machine") or {}
        key = (m.get("gpu") or m.get("cpu") or "unknown machine", m.get("cores"), m.get("device", "cpu"), m.get("torch"))
        counts[key] = counts.get(key, 0) + 1
    return "; ".join(f"{n} cell{'s' if n > 1 else ''} on {name} ({cores} cores, {device}, torch {torch})"
                     for (name, cores, device, torch), n in sorted(counts.items(), key=lambda kv: -kv[1]))


def render(suite: dict, cells: list[Cell], records: dict, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    rows = summarize(cells, records, out)
    commit = git_commit()
    payload = {"suite": suite["name"], "suite_file": os.path.relpath(suite["_path"], out),
               "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "git_commit": commit, "machine": machine_info(), "rows": rows,
               "cells": [records[k] for k in sorted(records)]}
    write_json_atomic(os.path.join(out, "results.json"), payload)
    _write_csv(os.path.join(out, "results.csv"), cells, records)
    plots = _plots(rows, out)
    lines = [f"# Benchmark suite `{suite['name']}`", ""]
    if suite.get("description"):
        lines += [suite["description"].strip(), ""]
    lines += [
        f"Command: `python -m recbole_kd bench {os.path.relpath(suite['_path'])}`  ",
        "Protocol: RecBole's leave-one-out split by time, full ranking over all items, best-on-valid "
        "checkpoint (NDCG@10) evaluated on test; every cell is one CLI run. Each dataset's table is under one "
        "evaluation protocol (the one its cells selected with `filter_seen`, named in its heading), the other "
        "beside it: **filter-seen** removes every item the user saw before the target from the ranking (as the "
        "published SASRec / gSASRec / BERT4Rec figures do); **RecBole** is RecBole 1.2.1's own rule (general "
        "models: training history removed; sequential models: nothing removed).  ",
        f"Cells ran on: {_machines_line(records.values()) or 'no cell has run yet'}; report of commit {commit}.",
        "",
    ]
    for ds in dict.fromkeys(c.dataset for c in cells):
        ds_rows = [r for r in rows if r["dataset"] == ds]
        main = ds_rows[0]["protocol"] if ds_rows else FILTER_SEEN
        other = _other(main)
        pm, po = PROTOCOL_NAMES[main], PROTOCOL_NAMES[other]
        lines += [f"## {ds} (protocol: {pm})", "",
                  f"| group | row | model | seeds | test NDCG@10 ({pm}) | NDCG@10 ({po}) | Recall@10 | MRR@10 | params "
                  "| latency 256 users (ms) | s / epoch | epochs | vs student alone | vs teacher |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        legacy = superseded = False
        for group in GROUPS:
            for row in (r for r in ds_rows if r["group"] == group):
                if row["status"] != "ok":
                    lines.append(f"| {group} | {row['label']} | {row['model']} | 0/{row['seeds_planned']} | "
                                 f"{row['status']} | | | | | | | | | |")
                    continue
                legacy = legacy or not row.get(main)
                superseded = superseded or bool(row["superseded_seeds"])
                seeds = f"{len(row['seeds'])}/{row['seeds_planned']}"
                if row["superseded_seeds"]:
                    seeds += f" (+{len(row['superseded_seeds'])} RecBole-only)"

                def ratio(key, row=row, po=po):  # called within this iteration only
                    here = row.get(key)
                    text = f"{here:.3f}" if here else "n/a" if key in row.get("vs_noise", ()) else "-"
                    worst = row.get(key + "_worst")
                    if worst:
                        text += f" [{worst:.3f}]"
                    there = row.get(key + "_other")
                    return text + (f" ({po} {there:.3f})" if there else "")

                on = "" if row.get("devices", ["cpu"]) == ["cpu"] else f" ({'+'.join(row['devices'])})"
                o = row.get(other) or {}
                lines.append(
                    f"| {group} | {row['label']} | {row['model']} | {seeds} | {_fmt(row['ndcg@10'])} | "
                    f"{_fmt(o.get('ndcg@10'))} | {_fmt(row['recall@10'])} | {_fmt(row['mrr@10'])} | {row['num_params']:,} | {row['latency_ms']:.1f}{on} | "
                    f"{row['seconds_per_epoch']:.2f}{on} | {row['epochs']:.0f} | {ratio('vs_student_alone')} | "
                    f"{ratio('vs_teacher')} |")
        lines.append("")
        if legacy:
            lines += [f"Rows with `-` under {pm} were run before every cell recorded both protocols: their "
                      f"checkpoint was selected, and their metrics computed, under RecBole's protocol only; running "
                      "the suite again re-measures them.", ""]
        if superseded:
            lines += ["A seeds count marked `+N RecBole-only` leaves out N seeds stored before both protocols were "
                      "recorded: a row never averages them with newer seeds (their checkpoints were selected under "
                      "RecBole's protocol); running the suite again re-measures them.", ""]
        for title, name in plots.get(ds, []):
            lines += [f"![{title}]({name})", ""]
    if not plots and rows:
        lines += ["(plots skipped: matplotlib is not installed; `pip install recbole-kd[bench]`)", ""]
    lines += ["Ratios: NDCG@10 mean over seeds divided by the same dataset's student-alone row (for a "
              "distilled `KD-X`: the `X` row of group student, or `student_ref`) and teacher row (`teacher_from`, "
              "else the dataset's first teacher), both under the same protocol (the other protocol's ratio in "
              "parentheses); in square brackets, the row's worst seed over the student alone's best seed (a gain "
              "that holds seed for seed is above 1 there); n/a where that row's mean NDCG@10 is not above its standard deviation "
              "over seeds (a ratio to it would measure noise). Recall@10 and MRR@10 are under the table's protocol. "
              "Latency: median full-sort scoring time for 256 test users on "
              "the cell's machine; latency and s / epoch of rows run on a GPU are marked (cuda).", ""]
    write_text_atomic(os.path.join(out, "README.md"), "\n".join(lines))


def _write_csv(path, cells, records):
    per_protocol = [f"{m} ({p})" for p in PROTOCOLS for m in METRICS]
    cols = ["dataset", "label", "model", "group", "seed", "status", "protocol", *per_protocol, "num_params", "latency_ms",
            "train_seconds_per_epoch", "epochs_run", "train_seconds", "config_hash", "git_commit"]
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(cols)
    for c in cells:
        rec = records.get((c.dataset, c.label, c.seed))
        if rec is None:
            w.writerow([c.dataset, c.label, c.model, c.group, c.seed, f"skip: {c.skip}" if c.skip else "not run"]
                       + [""] * (len(cols) - 6))
            continue
        r = rec["result"]
        tables = [protocol_result(r, p) or {} for p in PROTOCOLS]
        w.writerow([c.dataset, c.label, c.model, c.group, c.seed, "ok", r.get("protocol") or RECBOLE,
                    *(t.get(m) for t in tables for m in METRICS),
                    r["num_params"], 1000 * r["latency_seconds"], r["train_seconds_per_epoch"], r["epochs_run"],
                    r["train_seconds"], rec["config_hash"], rec["git_commit"]])
    write_text_atomic(path, buf.getvalue())


def pareto_front(points):
    """Indices of points (x, y) not dominated: no other point has x <= and y >= (one strictly)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_points(rows, key: str):
    """(points (x, NDCG@10), Pareto-front indices, per row "" or the device it was timed on when that is not
    the most common one). Latency depends on the machine: rows timed on another device (cells merged from
    a GPU run) are marked and left out of the latency front; parameters count the same everywhere."""
    pts = [(r[key], r["ndcg@10"][0]) for r in rows]
    devices = ["+".join(r.get("devices") or ["cpu"]) for r in rows]
    ref = max(devices, key=devices.count) if key == "latency_ms" and devices else None
    other = [dev if ref is not None and dev != ref else "" for dev in devices]
    same = [i for i, dev in enumerate(other) if not dev]
    return pts, [same[i] for i in pareto_front([pts[i] for i in same])], other


def _plots(rows, out) -> dict:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    os.makedirs(os.path.join(out, "plots"), exist_ok=True)
    colors = dict(zip(GROUPS, ("tab:gray", "tab:red", "tab:blue", "tab:green", "tab:purple")))
    made = {}
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        ok = [r for r in rows if r["dataset"] == ds and r.get("status") == "ok" and r["ndcg@10"][0] is not None]
        if not ok:
            continue
        shown = PROTOCOL_NAMES[ok[0].get("protocol", FILTER_SEEN)]
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", ds)
        for key, xlabel, suffix in (("num_params", "parameters", "params"),
                                    ("latency_ms", "full-sort latency for 256 users (ms)", "latency")):
            fig, ax = plt.subplots(figsize=(6.4, 4.2))
            pts, front, other = plot_points(ok, key)
            for r, (x, y), dev in zip(ok, pts, other):
                ax.errorbar(x, y, yerr=r["ndcg@10"][1], fmt="o", color=colors[r["group"]], capsize=3,
                            mfc="none" if dev else colors[r["group"]])
                ax.annotate(r["label"] + (f" ({dev})" if dev else ""), (x, y),
                            textcoords="offset points", xytext=(4, 4), fontsize=7)
            ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "--", color="black", lw=1,
                    label="Pareto front")
            for g in GROUPS:
                if any(r["group"] == g for r in ok):
                    ax.plot([], [], "o", color=colors[g], label=g)
            if any(other):
                ax.plot([], [], "o", color="black", mfc="none", label="latency timed on another device")
            ax.set_xscale("log")
            ax.set_xlabel(xlabel + " (log)")
            ax.set_ylabel(f"test NDCG@10 ({shown})")
            ax.set_title(f"{ds}: NDCG@10 vs {xlabel.split(' (')[0]}")
            ax.legend(fontsize=7)
            fig.tight_layout()
            name = f"plots/{slug}_ndcg_vs_{suffix}.png"
            fig.savefig(os.path.join(out, name), dpi=110, bbox_inches="tight")
            plt.close(fig)
            made.setdefault(ds, []).append((f"{ds} NDCG@10 vs {suffix}", name))
        gains = [r for r in ok if r["group"] in ("distilled", "transfer") and r.get("vs_student_alone")]
        if gains:
            # the title and the x label need about an inch whatever the number of bars: with one bar, a height
            # proportional to the bars alone left it no room (a squashed strip with the title cut)
            fig, ax = plt.subplots(figsize=(6.4, 1.6 + 0.45 * len(gains)))
            bars = ax.barh([r["label"] for r in gains], [r["vs_student_alone"] - 1 for r in gains],
                           color=["tab:green" if r["vs_student_alone"] >= 1 else "tab:red" for r in gains])
            ax.bar_label(bars, labels=[f"{r['vs_student_alone']:.2f}x" for r in gains], padding=3, fontsize=7)
            ax.margins(x=0.15)
            ax.axvline(0, color="black", lw=0.8)
            ax.set_xlabel(f"NDCG@10 gain over the student alone (ratio - 1, {shown})")
            ax.set_title(f"{ds}: KD gain per row")
            fig.tight_layout()
            name = f"plots/{slug}_kd_gain.png"
            fig.savefig(os.path.join(out, name), dpi=110, bbox_inches="tight")
            plt.close(fig)
            made.setdefault(ds, []).append((f"{ds} KD gain", name))
    return made


# ---- command line ------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recbole_kd bench",
                                 description="Run a benchmark suite (datasets x models x seeds), resumable.")
    ap.add_argument("suite", help="suite yaml (see benchmarks/suites/)")
    ap.add_argument("--out", help="output folder (default: benchmarks/results/<name> for suites in benchmarks/suites)")
    ap.add_argument("--dry-run", action="store_true", help="list the cells and the estimated time; run nothing")
    ap.add_argument("--render-only", action="store_true", help="rebuild the report from the stored cells")
    ap.add_argument("--data_path", metavar="DIR",
                    help="read every dataset from DIR/NAME/ instead of the suite's data_path (e.g. a copy of the "
                         "data on another machine); cells keep their ids and settings, so results merge")
    ap.add_argument("--only", action="append", metavar="PATTERN",
                    help="run only cells whose label, model, dataset or id matches this shell pattern "
                         "(repeatable; e.g. --only 'MF*' --only '*shared_tokens*'); the report still lists every row")
    ap.add_argument("--jobs", type=int, default=1, metavar="N",
                    help="run up to N cells at a time, each its own process (e.g. on a GPU machine, or one per core); "
                         "the cores are split between them (OMP_NUM_THREADS=cores/N, unless you set it); a distilled "
                         "cell waits for its teacher cell; default 1")
    args = ap.parse_args(argv)
    try:
        if args.jobs < 1:
            raise SuiteError(f"--jobs {args.jobs}: give a number of cells to run at a time, 1 or more")
        return run_suite(args.suite, args.out, dry_run=args.dry_run, render_only=args.render_only, only=args.only,
                         data_path=args.data_path, jobs=args.jobs)
    except SuiteError as exc:
        print(f"recbole-kd bench: error: {exc}", file=sys.stderr)
        return 2
