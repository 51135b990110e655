"""``python -m recbole_kd`` / ``recbole-kd``.

    python -m recbole_kd --model=KD-SASRec [--dataset=ml-100k] [--config_files=a.yaml,b.yaml] [--key=value ...]
    python -m recbole_kd --list

Results go to stdout (a table, or ``--json``), the log to stderr (``--verbose``: every setting).
"""
from __future__ import annotations

import sys

from recbole_kd import report
from recbole_kd.args import parse_args
from recbole_kd.bench import main as bench_main
from recbole_kd.checkpoint import CheckpointError
from recbole_kd.errors import USER_ERRORS, TrainingError, UsageError  # noqa: F401  (also importable from here)
from recbole_kd.quick_start import run
from recbole_kd.registry import (
    KINDS,
    UnknownModelError,
    derived_entries,
    load_plugin_files,
    registered,
    stock_model_names,
)
from recbole_kd.serving import cli as serving_cli
from recbole_kd.tune import main as tune_main
from recbole_kd.zoo import cards, headline
from recbole_kd.zoo import main as zoo_main

DEFAULT_DATASET = "ml-100k"  # embedded: ships inside the recbole wheel

USAGE = """usage: python -m recbole_kd --model=MODEL [--dataset=DATASET] [--config_files=a.yaml,b.yaml]
                          [--data_path=DIR] [--result_file=PATH.json] [--plugins=my_model.py]
                          [--checkpoint_dir=DIR] [--resume] [--strict] [--json] [--verbose] [--key=value ...]
       python -m recbole_kd --list
       python -m recbole_kd bench SUITE.yaml [--dry-run]           (benchmark suites)
       python -m recbole_kd tune --model=M --dataset=D --space=F   (Ray Tune search; extra [tune])
       python -m recbole_kd zoo [NAME]                             (pretrained teachers and their cards)
       python -m recbole_kd export CHECKPOINT --out DIR            (a trained model as a self-contained artefact)
       python -m recbole_kd recommend DIR --history "t1 t2" | --user TOK [--k 10] [--exclude-seen]
       python -m recbole_kd serve DIR --port N                     (HTTP service; extra [serve]; docs/serving.md)

Trains MODEL on DATASET (leave-one-out by time, full ranking) and evaluates the best-on-valid
checkpoint on test. DATASET defaults to ml-100k, embedded in the recbole wheel (nothing is downloaded).
stdout: the results (a metric x valid/test table under each evaluation protocol, timings, the result
file, warnings about your input); with --json the same summary as one JSON object instead.
stderr: the log as RecBole writes it (a short block of the settings that differ from the defaults,
the run's phases with an estimate, epochs, progress bars); --verbose adds every setting and the
model's layers (the log file under ./log/ always has them).
Any RecBole or recbole-kd setting can be given as --key=value (highest priority).
--resume continues the run with the same settings in --checkpoint_dir from its last finished
epoch (after a crash or kill); --strict refuses unknown settings instead of warning.
--nproc=N (and --world_size, --ip, --port, --offset for several machines) trains with
torch.distributed: gloo on CPU, nccl on GPU (see docs/scaling-out.md).
Exit status: 0 done, 2 bad input (usage, config, data, checkpoint), 3 training failed (NaN loss),
130 interrupted (Ctrl-C; continue with --resume).
"""

def list_models() -> str:
    lines = []
    plugin = dict(registered())
    plugin.update(derived_entries())
    for kind in KINDS:
        names = sorted(n for n, e in plugin.items() if e.kind == kind)
        for name in names:
            lines.append(f"{name:<24} {kind:<10} {plugin[name].description}")
    for name, family in stock_model_names().items():
        lines.append(f"{name:<24} {'baseline':<10} RecBole {family} model (stock)")
    try:
        shipped = cards()
    except CheckpointError:  # an unreadable card: `python -m recbole_kd zoo` says which
        shipped = []
    for card in shipped:
        lines.append(f"{card['name']:<24} {'pretrained':<10} {card['model']} teacher for {card['dataset']}, "
                     f"{headline(card)} (python -m recbole_kd zoo {card['name']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return bench_main(argv[1:])
    if argv and argv[0] == "zoo":
        return zoo_main(argv[1:])
    if argv and argv[0] == "tune":
        return tune_main(argv[1:])
    if argv and argv[0] in ("export", "recommend", "serve"):
        return getattr(serving_cli, f"{argv[0]}_main")(argv[1:])
    try:
        options, overrides, flags = parse_args(argv)
    except UsageError as exc:
        print(f"recbole-kd: error: {exc}", file=sys.stderr)
        return 2
    if "help" in flags:
        print(USAGE)
        return 0
    if options.get("plugins"):
        try:
            load_plugin_files([p for p in options["plugins"].split(",") if p])
        except UnknownModelError as exc:
            print(f"recbole-kd: error: {exc}", file=sys.stderr)
            return 2
    if "list" in flags:
        print(list_models())
        return 0
    if "model" not in options:
        print("recbole-kd: error: missing --model (see --help; --list shows the models)", file=sys.stderr)
        return 2

    config_files = [f for f in options.get("config_files", "").split(",") if f]
    result_file = options.get("result_file")
    try:
        result = run(
            options["model"],
            options.get("dataset", DEFAULT_DATASET),
            config_files=config_files,
            overrides=overrides,
            result_file=result_file,
            verbose="verbose" in flags,
        )
    except USER_ERRORS as exc:
        print(f"recbole-kd: error: {exc}", file=sys.stderr)
        return 2
    except TrainingError as exc:
        print(f"recbole-kd: error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        # the last finished epoch is in --checkpoint_dir (-last.pth, written at the start of every epoch)
        print("recbole-kd: interrupted; resume with the same command plus --resume", file=sys.stderr)
        return 130  # 128 + SIGINT, what a shell reports for a tool stopped by Ctrl-C
    if result is None:  # a distributed run on a machine without rank 0: that machine reports
        return 0
    sys.stderr.flush()  # the log first, then the results
    if "json" in flags:
        print(report.summary_json(result, result_file, report.user_warnings()))
    else:
        print(report.summary_text(result, result_file, report.user_warnings()))
    return 0
