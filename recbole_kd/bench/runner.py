"""Running a suite: ``cell_command`` is a cell's CLI command (its teacher's checkpoint, ``--data_path``),
``run_cell`` runs it in its own process (``_run_process``) and returns the cell's record (an ensemble cell:
``evaluate_ensemble`` on its members' checkpoints), ``_run_cells``
schedules the cells (``--jobs``, threads per cell, a distilled cell after its teacher, cells sharing a lazily
trained model one at a time, Ctrl-C stops them all), ``teacher_reruns`` finds teacher cells to run again for
their checkpoints, and ``run_suite`` ties it together: load, check, dry run or run, store, render.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

from recbole_kd.bench.records import _read_json, cell_record, failed_record, legacy_record, stored_record
from recbole_kd.bench.report import render
from recbole_kd.bench.suite import (
    Cell,
    SuiteError,
    _datasets_needed,
    _fmt_minutes,
    check_cells,
    expand,
    load_suite,
    member_keys,
    output_dir,
    selected,
)
from recbole_kd import zoo
from recbole_kd.kd.teacher import evaluate_checkpoints
from recbole_kd.utils import cli_value, device_info, git_commit, machine_info, write_json_atomic


def cell_command(cell: Cell, out: str, records: dict, data_path: str | None = None) -> list[str]:
    """The cell's CLI command. ``data_path`` (bench's ``--data_path``) replaces the suite's ``data_path`` of
    the cell's dataset and of a transfer source; it is not part of the cell's settings or id."""
    work = os.path.join(out, "work", cell.id)
    settings = dict(cell.settings)
    if cell.ensemble:
        return _ensemble_command(cell, out, records, data_path)
    if cell.model.startswith("KD-"):
        if cell.teacher_from:
            teacher = _teacher_record(cell, records)
            # an ensemble: distilled from every member (the CLI takes a list of checkpoints); --teacher is the
            # first member's model (an ensemble of rows has several; each checkpoint names its own)
            members = _member_records(teacher, records) if teacher.get("ensemble") else [teacher]
            settings["teacher"] = members[0]["model"]
            paths = [cell_checkpoint(m, out) for m in members]
            settings["teacher_checkpoint"] = paths if teacher.get("ensemble") else paths[0]
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
        args.append(f"--{key}={cli_value(value)}")
    return args


def _teacher_record(cell: Cell, records: dict) -> dict:
    """The record of the teacher row a distilled cell names: its first finished seed, or its ensemble cell."""
    found = [r for (ds, label, _), r in sorted(records.items(), key=lambda kv: kv[0][2])
             if ds == cell.dataset and label == cell.teacher_from]
    if not found:
        raise RuntimeError(f"teacher row {cell.teacher_from!r} has no finished cell on {cell.dataset}")
    return found[0]


def _member_records(ensemble: dict, records: dict) -> list[dict]:
    """The records of an ensemble cell's members (``ensemble``: its record or its spec), in its order."""
    keys = [(ensemble["dataset"], *m) for m in member_keys(ensemble)]
    missing = [f"{label} seed {seed}" for ds, label, seed in keys if (ds, label, seed) not in records]
    if missing:
        raise RuntimeError(f"ensemble {ensemble['label']!r} on {ensemble['dataset']}: member(s) "
                           f"{', '.join(missing)} have no finished cell")
    return [records[k] for k in keys]


def _ensemble_command(cell: Cell, out: str, records: dict, data_path: str | None) -> list[str]:
    """The ensemble cell's command: ``evaluate_ensemble`` in its own process, on its members' checkpoints
    with the row's settings (the data and evaluation settings every member had)."""
    settings = {**cell.settings, "show_progress": False}
    if data_path or settings.get("data_path"):
        settings["data_path"] = os.path.abspath(data_path or settings["data_path"])
    job = {"dataset": cell.dataset, "settings": settings,
           "checkpoints": [cell_checkpoint(m, out) for m in _member_records(cell.spec(), records)],
           "result_file": os.path.join(out, "work", cell.id, "result.json")}
    return [sys.executable, "-c", "import sys; from recbole_kd.bench.runner import evaluate_ensemble; "
            "evaluate_ensemble(sys.argv[1])", json.dumps(job, sort_keys=True)]


def evaluate_ensemble(job: str) -> None:
    """An ensemble cell's process: the members' checkpoints evaluated once as one model (mean of their
    log-probabilities) on the same split and evaluator as a training run (``evaluate_checkpoints``)."""
    job = json.loads(job)
    result = evaluate_checkpoints(job["dataset"], job["checkpoints"], job["settings"])
    write_json_atomic(job["result_file"], {**result, "machine": machine_info()})


def _ensemble_result(cell: Cell, result: dict, out: str, records: dict) -> dict:
    """An ensemble cell's result: its members' seeds and checkpoints (relative to ``out``), and their training
    summed: epochs and seconds of training epochs (a resumed member's ``train_seconds`` would count only the
    part after the resume)."""
    members = _member_records(cell.spec(), records)
    epochs = sum(m["result"]["epochs_run"] for m in members)
    seconds = sum(m["result"]["train_seconds_per_epoch"] * m["result"]["epochs_run"] for m in members)
    return {**result, "seeds": list(cell.ensemble), "checkpoints": [m["result"]["checkpoint"] for m in members],
            "epochs_run": epochs, "train_seconds": seconds, "train_seconds_per_epoch": seconds / max(epochs, 1)}


def cell_checkpoint(rec: dict, out: str) -> str:
    """Where a finished cell's weights are: its own checkpoint when it is on this machine, else the shipped
    pretrained teacher exported from this very cell (``zoo.exported_from``: its card names the cell's run
    record and holds the cell's metrics, its weights pass the card's sha256), else the checkpoint's path
    (missing: the cell runs again, see ``teacher_reruns``)."""
    own = os.path.join(out, rec["result"]["checkpoint"])
    if os.path.exists(own):
        return own
    card = zoo.exported_from(rec)
    return zoo.check_weights(card, cached=True) if card else own


def _done_state(rec: dict, out: str) -> str:
    """A finished cell's state in ``--dry-run``: "done", and where its weights come from when a shipped
    pretrained teacher stands in for its missing checkpoint."""
    ckpt = rec["result"].get("checkpoint")
    if ckpt and not os.path.exists(os.path.join(out, ckpt)):
        card = zoo.exported_from(rec)
        if card:
            return f"done (weights: pretrained {card['name']})"
    return "done"


def _checkpoint_here(rec: dict | None, out: str) -> bool:
    """A finished cell whose weights are on this machine (``cell_checkpoint``) and which recorded both
    protocols."""
    ckpt = rec and rec["result"].get("checkpoint")
    return bool(ckpt) and not legacy_record(rec) and os.path.exists(cell_checkpoint(rec, out))


def teacher_reruns(cells: list[Cell], records: dict, out: str, todo: list[Cell]) -> dict[str, Cell]:
    """Teacher cells (by id) that distilled cells in ``todo`` need but cannot use: the teacher row has no
    finished cell, or the finished cell ``_teacher_record`` picks has its checkpoint missing here
    (checkpoints are git-ignored, so a fresh checkout has the teacher's metrics but not its weights).
    An ensemble teacher needs every member's checkpoint, and is evaluated again when a member runs again
    (its record names the checkpoints the distilled cells use). They are run (again) before their students."""
    need = {}

    def members(ens: Cell) -> list[Cell]:  # those to run (again) for their checkpoints
        keys = set(ens.members)
        found = [t for t in cells if t.dataset == ens.dataset and (t.label, t.seed) in keys and not t.ensemble
                 and t.skip is None and not _checkpoint_here(records.get((t.dataset, t.label, t.seed)), out)]
        for t in found:
            need.setdefault(t.id, t)
        return found

    for c in todo:
        if c.ensemble:
            members(c)
            continue
        if not (c.model.startswith("KD-") and c.teacher_from):
            continue
        ens = next((t for t in cells if t.dataset == c.dataset and t.label == c.teacher_from and t.ensemble), None)
        if ens is not None:
            if ens.skip is None and (members(ens) or legacy_record(records.get((ens.dataset, ens.label, ens.seed))
                                                                   or {})):
                need.setdefault(ens.id, ens)
            continue
        try:
            rec = _teacher_record(c, records)
        except RuntimeError:
            rec = None
        if _checkpoint_here(rec, out):
            continue
        rows = [t for t in cells if t.dataset == c.dataset and t.label == c.teacher_from and t.skip is None
                and (rec is None or t.seed == rec["seed"])]  # cells are in seed order within a row
        if rows:  # none: a skipped teacher row, and the distilled cell fails with its own clear error
            need.setdefault(rows[0].id, rows[0])
    return need


_LIVE: set = set()  # processes of the cells running now (stopped when the bench is interrupted)


class Terminated(KeyboardInterrupt):
    """SIGTERM reached the bench (``kill``, a batch scheduler's time limit): it stops like Ctrl-C."""


@contextlib.contextmanager
def _sigterm_stops_like_ctrl_c():
    """While cells run, SIGTERM raises :class:`Terminated` in the bench, so that it stops the cells' processes
    as on Ctrl-C. Without it the bench died alone and its cells trained on, orphaned: their results were never
    stored, and a new bench (its lock's pid dead) could start the same cell on the same checkpoints."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        yield
        return

    def stop(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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


LOCK = "running.pid"  # in a cell's work folder while a bench process runs the cell


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def claim_cell(work: str) -> int | None:
    """Take the cell's work folder for this process (``running.pid``: host and pid, created exclusively):
    None when taken, else the pid of the live process on this host that runs the cell already (two bench
    runs over one output folder would write one cell's checkpoints in turns). A lock whose process is gone,
    or that was written on another host (a work folder copied to another machine), is taken over."""
    path = os.path.join(work, LOCK)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                with open(path) as f:
                    host, pid = f.read().split()
                pid = int(pid)
            except (OSError, ValueError):
                host, pid = "", 0
            if host == socket.gethostname() and pid and pid != os.getpid() and _pid_alive(pid):
                return pid
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # stale: its process ended without removing it
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{socket.gethostname()} {os.getpid()}\n")
        return None
    return 0  # another process took it between our two tries


def run_cell(cell: Cell, out: str, records: dict, data_path: str | None = None, threads: int | None = None) -> dict:
    """Run one cell in its own process (``threads``: its OMP_NUM_THREADS, see ``cell_threads``); a cell that
    another live bench process runs already is not started (status ``busy``)."""
    work = os.path.join(out, "work", cell.id)
    os.makedirs(work, exist_ok=True)
    holder = claim_cell(work)
    if holder is not None:
        return {"status": "busy", "error": f"another bench process (pid {holder or 'unknown'}) runs this cell "
                f"({os.path.join(work, LOCK)}); it stores the cell when it ends"}
    try:
        return _run_claimed(cell, out, records, work, data_path, threads)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(work, LOCK))


def _run_claimed(cell: Cell, out: str, records: dict, work: str, data_path: str | None, threads: int | None) -> dict:
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
    if cell.ensemble:
        result = _ensemble_result(cell, result, out, records)
    ran = result.get("machine") or {}  # the run's own record of the device it used (config["device"])
    if ran.get("device") in ("cpu", "cuda"):
        base["machine"] = {**{k: v for k, v in base["machine"].items() if k not in ("device", "gpu")},
                           **{k: ran[k] for k in ("device", "gpu") if k in ran}}
    if isinstance(ran.get("torch_threads"), int):  # the threads the run itself had, not this process's
        base["machine"]["torch_threads"] = ran["torch_threads"]
    return {**base, "status": "ok", "result": result}


def estimate_minutes(cell: Cell, done: dict, device: str | None = None) -> float | None:
    """Minutes the cell should take here: the mean wall time of its row's finished cells that ran on this
    kind of device (``device``: "cpu" or "cuda", default this machine's; a GPU cell's minutes say little
    about a CPU), else the suite's ``minutes`` estimate."""
    device = device or device_info()["device"]
    same = [r["wall_seconds"] / 60 for (ds, label, _), r in done.items()
            if ds == cell.dataset and label == cell.label and r.get("wall_seconds") is not None
            and (r.get("machine") or {}).get("device", "cpu") == device]
    if same:
        return statistics.mean(same)
    return float(cell.minutes) if cell.minutes is not None else None


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
    """Ids of the cells in ``todo`` that ``cell`` must wait for: the teacher row it distils from (an ensemble:
    its members and the ensemble cell), or, for an ensemble cell, its members."""
    if cell.ensemble:
        keys = set(cell.members)
        return {t.id for t in todo if t.dataset == cell.dataset and (t.label, t.seed) in keys and not t.ensemble}
    if not (cell.model.startswith("KD-") and cell.teacher_from):
        return set()
    return {t.id for t in todo if t.dataset == cell.dataset and t.row == cell.teacher_from}


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
    device = device_info()["device"]  # the estimates use cells that ran on this kind of device
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
                    n = len(ended)  # finished, not started: with --jobs N the running ones are not done
                    left = [estimate_minutes(x, records, device) for x in [c, *pending]]
                    if all(e is not None for e in left):
                        eta = sum(left) / min(jobs, len(left))
                    elif ran:
                        eta = statistics.mean(ran) / 60 * len(left) / min(jobs, len(left))
                    else:
                        eta = None
                    progress = (f"{n}/{len(todo)} selected cells done" if only else
                                f"{len(cells) - len(todo) + n}/{len(cells)} cells done or skipped")
                    if c.id in reruns and c.ensemble and (c.dataset, c.label, c.seed) in records:
                        print(f"[bench] ensemble cell {c.id} is evaluated again from its members' checkpoints",
                              flush=True)
                    elif c.id in reruns and (c.dataset, c.label, c.seed) in records:
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
                    elif rec["status"] == "busy":  # nothing of this process to store
                        print(f"[bench] cell {c.id} skipped: {rec['error']}", file=sys.stderr, flush=True)
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
    records, changed = {}, set()
    for c in cells:
        rec = cell_record(out, c, os.path.abspath(data_path) if data_path else None)
        if rec:
            records[(c.dataset, c.label, c.seed)] = rec
        elif stored_record(out, c):  # finished, on other data than there is now: run again, never reported
            changed.add(c.id)
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
        device = device_info()["device"]
        for c in cells:
            state = ("to run (teacher)" if c.id in reruns else
                     "to run (one protocol)" if (c.dataset, c.label, c.seed) in stale and selected(c, only) else
                     "done (one protocol)" if (c.dataset, c.label, c.seed) in stale else
                     _done_state(records[(c.dataset, c.label, c.seed)], out) if (c.dataset, c.label, c.seed) in records else
                     ("to run (data changed)" if selected(c, only) else "data changed") if c.id in changed else
                     f"skip ({c.skip})" if c.skip else "not selected" if not selected(c, only) else
                     "failed before" if failed_record(out, c) else "to run")
            runs = state.startswith(("to run", "failed"))
            est = estimate_minutes(c, records, device) if runs else None
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
            with _sigterm_stops_like_ctrl_c():
                _run_cells(todo, cells, records, out, reruns, only, data_path, jobs)
        except KeyboardInterrupt as exc:
            how = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
            print(f"[bench] {how}: finished cells are stored; run the same command again to resume",
                  file=sys.stderr)
            render(suite, cells, records, out)
            return 143 if isinstance(exc, Terminated) else 130  # 128 + the signal, as a shell reports it
    render(suite, cells, records, out)
    failed = [c for c in cells if c.skip is None and (c.dataset, c.label, c.seed) not in records
              and selected(c, only)]
    unselected = sum(1 for c in cells if c.skip is None and (c.dataset, c.label, c.seed) not in records
                     and not selected(c, only))
    print(f"[bench] {len(records)}/{len(cells)} cells done, {sum(1 for c in cells if c.skip)} skipped, "
          f"{len(failed)} not done" + (f", {unselected} not selected by --only" if unselected else "")
          + f"; report: {os.path.join(out, 'README.md')}")
    return 1 if failed and not render_only else 0
