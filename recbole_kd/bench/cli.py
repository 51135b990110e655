"""The command line of ``python -m recbole_kd bench``: ``main`` parses the arguments, runs ``run_suite`` (or
``--pack`` / ``--merge``, ``transport``) and turns a ``SuiteError`` (a bad suite file or option) into one line
on stderr and exit status 2.
``recbole_kd/cli.py`` hands ``bench ...`` to it (``from recbole_kd.bench import main``).
"""
from __future__ import annotations

import argparse
import os
import sys

from recbole_kd.bench.runner import run_suite
from recbole_kd.bench.suite import SuiteError, load_suite, output_dir
from recbole_kd.bench.transport import Limits, merge, pack, parse_notes, parse_since

_PACK_ONLY = ("max_file_mib", "max_files", "max_total_mib", "since", "cells_only", "compare_with", "note")


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
    moving = ap.add_argument_group(
        "moving cells between machines",
        "Pack what a suite produced on another machine (e.g. a GPU box without internet) into files that fit "
        "the way you copy files back, and merge them into this machine's results; see docs/benchmarks.md.")
    moving.add_argument("--pack", metavar="DIR",
                        help="run nothing: write into DIR the cells of the output folder (--out) that are new or "
                             "differ from --compare-with's (cells.tar.gz, with manifest.json), the tail of each "
                             "cell's log (logs.tar.gz) and finished teachers' checkpoints (teacher-<cell>.tar, in "
                             "parts when over --max-file-mib)")
    moving.add_argument("--max-file-mib", type=float, metavar="N",
                        help="with --pack: no file larger than N MiB (checkpoints are split); default: no limit")
    moving.add_argument("--max-files", type=int, metavar="K",
                        help="with --pack: at most K files in DIR, files already there included (checkpoints "
                             "that do not fit are left out and listed in the manifest); default: no limit")
    moving.add_argument("--max-total-mib", type=float, metavar="T",
                        help="with --pack: at most T MiB in DIR, files already there included (1/32 of it is "
                             "kept free); default: no limit")
    moving.add_argument("--since", metavar="TIME",
                        help="with --pack: only logs written since TIME (seconds since the epoch, or ISO 8601)")
    moving.add_argument("--cells-only", action="store_true",
                        help="with --pack: only cells.tar.gz (e.g. a periodic snapshot while the suite runs)")
    moving.add_argument("--compare-with", metavar="RESULTS",
                        help="with --pack: leave out cells that RESULTS/cells holds with the same bytes (default: "
                             "the suite's results folder when --out names another folder, else pack every cell)")
    moving.add_argument("--note", action="append", metavar="KEY=VALUE", help="with --pack: added to the manifest")
    moving.add_argument("--merge", metavar="DIR",
                        help="run nothing: merge what --pack wrote (DIR, or DIR/cells.tar.gz) into the output "
                             "folder: new cells are added, a failure never replaces a finished cell, a finished "
                             "cell that differs is kept unless --force; teacher checkpoints are unpacked where "
                             "the cells point; then the report is rendered")
    moving.add_argument("--force", action="store_true", help="with --merge: replace local finished cells that differ")
    args = ap.parse_args(argv)
    try:
        if args.jobs < 1:
            raise SuiteError(f"--jobs {args.jobs}: give a number of cells to run at a time, 1 or more")
        modes = [o for o, on in (("--pack", args.pack is not None), ("--merge", args.merge is not None),
                                 ("--dry-run", args.dry_run), ("--render-only", args.render_only)) if on]
        if len(modes) > 1:
            raise SuiteError(f"{' and '.join(modes)} do not go together: give one")
        given = [f"--{k.replace('_', '-')}" for k in _PACK_ONLY if getattr(args, k) not in (None, False)]
        if given and args.pack is None:
            raise SuiteError(f"{', '.join(given)} only go{'es' if len(given) == 1 else ''} with --pack DIR")
        if args.force and args.merge is None:
            raise SuiteError("--force only goes with --merge DIR")
        if args.pack is not None:
            return _pack(args)
        if args.merge is not None:
            if not args.merge:
                raise SuiteError("--merge: give the folder --pack wrote")
            merge(args.suite, args.merge, args.out, force=args.force)
            return run_suite(args.suite, args.out, render_only=True)
        return run_suite(args.suite, args.out, dry_run=args.dry_run, render_only=args.render_only, only=args.only,
                         data_path=args.data_path, jobs=args.jobs)
    except SuiteError as exc:
        print(f"recbole-kd bench: error: {exc}", file=sys.stderr)
        return 2


def _pack(args) -> int:
    if not args.pack:
        raise SuiteError("--pack: give a folder")
    limits = Limits.from_options(args.max_file_mib, args.max_files, args.max_total_mib)
    since, extra = parse_since(args.since), parse_notes(args.note)
    suite = load_suite(args.suite)
    bench_out = output_dir(suite, args.out)
    compare_with = args.compare_with
    if compare_with is None:
        results = output_dir(suite, None)
        compare_with = results if os.path.realpath(results) != os.path.realpath(bench_out) else None
    elif not os.path.isdir(compare_with):
        raise SuiteError(f"--compare-with {compare_with} is not a folder (give a results folder holding cells/)")
    pack(bench_out, args.pack, compare_with, cells_only=args.cells_only, since=since,
         extra={"suite": args.suite, **extra}, limits=limits)
    return 0
