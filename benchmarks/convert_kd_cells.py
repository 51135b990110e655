"""One-off: the cells of the former distillation benchmark script (``benchmarks/results/kd_<name>/cells/
<cell>-seed<S>.json``, ``teacher.json``, ``teacher-seed<S>.json``, ``teacher-ensemble.json``: one run summary
each) rewritten as ``bench`` cell records of the suite that now produces that report
(``benchmarks/suites/kd-<name>.yaml``), with the id and config hash the suite expects, so that ``python -m
recbole_kd bench <suite> --render-only`` renders the report from them and ``--dry-run`` finds them. Nothing
is re-measured: a record's ``result`` is the old cell's run summary as it was stored (every metric, protocol
field, epoch count, seconds, checkpoint), with machine-local paths made relative to the results folder.

    python benchmarks/convert_kd_cells.py benchmarks/results/kd_ml-100k benchmarks/suites/kd-ml-100k.yaml

``ROWS`` maps an old cell name (without ``-seed<S>``) to the suite row's label; the teacher cells go to the
suite's teacher row (an ensemble row: its members and its ensemble cell). Run once, in 2026-12, for the six
reports ``REPORTS``; the old cell files were then removed (git history keeps them).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

from recbole_kd.bench.suite import expand, load_suite
from recbole_kd.utils import write_json_atomic

ROWS = {"student": "SASRec-S", "mf": "MF-S", "kd-mf": "KD-MF (soft)", **{
    f"kd-{loss}": f"KD-SASRec ({loss})" for loss in ("hard", "soft", "soft_full", "rd", "rrd", "hint")}}
REPORTS = {  # old results folder -> (suite, row labels that differ from ROWS)
    "kd_ml-100k": ("kd-ml-100k.yaml", {"kd-combo": "KD-SASRec (rrd + hint)"}),
    "kd_ml-100k-seen": ("kd-ml-100k-seen.yaml", {"kd-combo": "KD-SASRec (rrd + hint)"}),
    "kd_amazon-beauty-5core": ("kd-amazon-beauty-5core.yaml",
                               {"student": "SASRec-S (d32)", "kd-combo": "KD-SASRec (rd + rrd)"}),
    "kd_amazon-beauty-5core-seen": ("kd-amazon-beauty-5core-seen.yaml",
                                    {"student": "SASRec-S (d32)", "kd-combo": "KD-SASRec (rd + soft_full)"}),
    "kd_amazon-beauty-5core-cl": ("kd-amazon-beauty-5core-cl.yaml", {"student": "SASRec-S (d32)"}),
    "kd_amazon-beauty-5core-cl-raw": ("kd-amazon-beauty-5core-cl-raw.yaml",
                                      {"student": "SASRec-S (d32)", "kd-rd": "KD-SASRec (rd, raw top-K)"}),
}
SCRIPT = re.compile(r"python benchmarks/kd_\w+\.py")  # the former script, removed with this conversion
FORMER = "python <former distillation benchmark script>"
_BENCH_KEYS = ("cell", "requested", "teacher_fingerprint")  # the old script's own bookkeeping


def _relative(value, folder: str):
    """Machine-local path(s) of the old run made relative to the results folder (from its name on)."""
    if isinstance(value, list):
        return [_relative(v, folder) for v in value]
    marker = os.sep + os.path.basename(os.path.normpath(folder)) + os.sep
    return value.rsplit(marker, 1)[-1] if isinstance(value, str) and marker in value else value


def _machine(old: dict) -> dict:
    """The run's own record of its machine, in bench's words (the old cells name no CPU model)."""
    m = old.get("machine") or {}
    out = {"cores": m.get("cpu_count"), "device": m.get("device"), "python": m.get("python"), "torch": m.get("torch")}
    return {k: v for k, v in out.items() if v is not None}


def convert(old_dir: str, suite_path: str, rows: dict | None = None, report: dict | None = None) -> list[str]:
    """Write ``old_dir/cells/<id>.json`` for every old cell of ``old_dir/cells`` (``rows``: old cell name ->
    suite label, on top of ``ROWS``; ``report``: the old report's json, for the command and the words on how
    the cells were trained). Returns the old cell files converted; an old cell the suite has no cell for is
    an error (nothing is written then)."""
    suite = load_suite(suite_path)
    cells = expand(suite)
    rows = {**ROWS, **(rows or {})}
    teacher = next(c for c in cells if c.group == "teacher" and (c.ensemble or not c.row_label))
    by_key = {(c.label, c.seed): c for c in cells}
    report = report or {}
    command = SCRIPT.sub(FORMER, report.get("command") or "")
    trained_by = SCRIPT.sub(FORMER, report.get("trained_by") or "") or None
    folder = os.path.join(old_dir, "cells")
    todo = []
    for name in sorted(os.listdir(folder)):
        m = re.fullmatch(r"(.+?)(?:-seed(\d+))?\.json", name)
        if not m or "__" in name or name.endswith(".failed.json"):
            continue  # a bench record already
        with open(os.path.join(folder, name)) as f:
            old = json.load(f)
        base, seed = m.group(1), int(m.group(2)) if m.group(2) else old.get("seed")
        if base == "teacher-ensemble":
            cell = teacher if teacher.ensemble else None
        elif base == "teacher":
            cell = by_key.get((teacher.label + (" member" if teacher.ensemble else ""), seed))
        else:
            cell = by_key.get((rows.get(base, base), seed))
        if cell is None:
            raise SystemExit(f"{os.path.join(folder, name)}: the suite {suite_path} has no cell for it")
        result = {k: v for k, v in old.items() if k not in _BENCH_KEYS}
        for key in ("teacher_checkpoint", "teacher_cache_file", "checkpoint", "checkpoints"):
            if key in result:
                result[key] = _relative(result[key], old_dir)
        rec = {**cell.spec(), "id": cell.id, "config_hash": cell.config_hash, "started_at": None,
               "wall_seconds": old.get("wall_seconds"), "command": command, "trained_by": trained_by,
               "trained_commit": report.get("trained_commit"), "git_commit": old.get("git_commit"),
               "machine": _machine(old), "converted_from": f"cells/{name}", "status": "ok", "result": result}
        todo.append((name, os.path.join(folder, cell.id + ".json"), rec))
    for _, path, rec in todo:
        write_json_atomic(path, rec)
    return [name for name, _, _ in todo]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old_dir", help="benchmarks/results/kd_<name> (its cells/ folder is read and written)")
    ap.add_argument("suite", help="the suite that now produces the report")
    args = ap.parse_args(argv)
    name = os.path.basename(os.path.normpath(args.old_dir))
    report_path = os.path.join(os.path.dirname(os.path.normpath(args.old_dir)), name + ".json")
    report = json.load(open(report_path)) if os.path.isfile(report_path) else {}
    done = convert(args.old_dir, args.suite, REPORTS.get(name, (None, {}))[1], report)
    print(f"{len(done)} cells of {args.old_dir} converted", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
