"""The command line of ``python -m recbole_kd bench``: ``main`` parses the arguments, runs ``run_suite`` and
turns a ``SuiteError`` (a bad suite file or option) into one line on stderr and exit status 2.
``recbole_kd/cli.py`` hands ``bench ...`` to it (``from recbole_kd.bench import main``).
"""
from __future__ import annotations

import argparse
import sys

from recbole_kd.bench.runner import run_suite
from recbole_kd.bench.suite import SuiteError


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
