"""Hyper-parameter search for any registered (or stock) model on Ray Tune (extra: ``recbole-kd[tune]``).

    python -m recbole_kd tune --model=KD-SASRec --dataset=ml-100k --space=space.txt \
        [--samples=N] [--out=DIR] [--cpus_per_trial=1] [--max_concurrent=N] [--key=value ...]

The search-space file uses RecBole's hyper-parameter format, one setting per line::

    learning_rate loguniform -8,0        # exp(uniform(-8, 0)), as in RecBole / hyperopt
    kd_losses choice [{'rrd': 1.0}, {'rrd': 1.0, 'hint': 1.0}]
    hidden_size choice [32,64]
    dropout_prob uniform 0.1,0.5
    n_layers quniform 1,3,1

With only ``choice`` lines and no ``--samples``, every combination is run once (grid);
otherwise ``--samples`` random draws (default 10). Every trial is an ordinary run through
:func:`recbole_kd.quick_start.run` (same split and evaluator), selected on the *validation*
metric (``valid_metric``); test metrics are recorded, never used to choose. A distilled model's
teacher is trained once, before the trials start, into ``OUT/teachers`` (all trials use it).

Output (``--out``, default ``tune-<model>-<dataset>``): ``trials/<trial>.json`` (one per trial,
written atomically as it ends: the run's result JSON plus its ``params``), ``results.json``,
``results.csv`` and ``README.md`` (trials ranked by the validation metric, the best settings).
"""
from __future__ import annotations

import ast
import csv
import io
import json
import math
import os
import sys
import time

from recbole_kd import compat
from recbole_kd.args import parse_args
from recbole_kd.config import build_config
from recbole_kd.errors import USER_ERRORS, SpaceError, TrainingError, UsageError
from recbole_kd.launch import prepare_shared
from recbole_kd.quick_start import run
from recbole_kd.registry import load_plugin_files
from recbole_kd.settings_check import check_unknown_keys
from recbole_kd.utils import write_json_atomic, write_text_atomic

USAGE = """usage: python -m recbole_kd tune --model=MODEL --dataset=DATASET --space=FILE [--samples=N]
                               [--out=DIR] [--cpus_per_trial=1] [--max_concurrent=N] [--key=value ...]"""

TUNE_KEYS = ("space", "samples", "out", "cpus_per_trial", "max_concurrent", "num_cpus")


def _numbers(value: str, n: int, usage: str) -> list[float]:
    parts = value.replace(" ", "").split(",")
    try:
        numbers = [float(x) for x in parts]
    except ValueError:
        raise ValueError(usage) from None
    if len(numbers) != n:
        raise ValueError(usage)
    return numbers


def parse_space(path: str) -> dict:
    """{name: (kind, args)} from a RecBole hyper-parameter file; one clear error per bad line."""
    if not os.path.isfile(path):
        raise SpaceError(f"search-space file {path} does not exist")
    space = {}
    with open(path) as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split(None, 2)
            where = f"{path}, line {lineno}"
            if len(parts) < 3:
                raise SpaceError(f"{where}: expected 'name kind values' (e.g. 'learning_rate loguniform -8,0'), "
                                 f"got {line!r}")
            name, kind, value = parts
            try:
                if kind == "choice":
                    values = ast.literal_eval(value)
                    if not isinstance(values, (list, tuple)) or not values:
                        raise ValueError("choice needs a non-empty list")
                    space[name] = ("choice", list(values))
                elif kind in ("uniform", "loguniform"):
                    low, high = _numbers(value, 2, f"{kind} needs 'low,high' (e.g. {kind} -8,0)")
                    if not low < high:
                        raise ValueError("low must be below high")
                    space[name] = (kind, [low, high])
                elif kind == "quniform":
                    low, high, q = _numbers(value, 3, "quniform needs 'low,high,q' (e.g. quniform 16,128,16)")
                    if not low < high or q <= 0:
                        raise ValueError("needs low < high and q > 0")
                    space[name] = (kind, [low, high, q])
                else:
                    raise ValueError(f"unknown kind {kind!r}; use choice, uniform, loguniform or quniform")
            except (ValueError, SyntaxError) as exc:
                raise SpaceError(f"{where}: {exc} ({line!r})") from None
    if not space:
        raise SpaceError(f"search-space file {path} defines no setting")
    return space


def ray_space(space: dict, grid: bool) -> dict:
    from ray import tune

    out = {}
    for name, (kind, args) in space.items():
        if kind == "choice":
            out[name] = tune.grid_search(args) if grid else tune.choice(args)
        elif kind == "uniform":
            out[name] = tune.uniform(*args)
        elif kind == "loguniform":  # RecBole/hyperopt semantics: bounds are natural logs
            out[name] = tune.loguniform(math.exp(args[0]), math.exp(args[1]))
        else:
            low, high, q = args
            out[name] = tune.quniform(low, high, q)
    return out


def _plain(value):
    """Ray hands numpy scalars and floats like 64.0 for quniform; RecBole wants plain values."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**31:
        return int(value)
    return value


def trial(params, *, model, dataset, config_files, overrides, out, plugins, threads):
    """One Ray Tune trial: an ordinary run with ``params`` on top of the base settings."""
    import torch
    from ray.air import session

    compat.apply()
    torch.set_num_threads(threads)
    if plugins:
        load_plugin_files(plugins)
    trial_id = session.get_trial_id()
    params = {k: _plain(v) for k, v in params.items()}
    settings = {**overrides, **params, "checkpoint_dir": os.path.join(out, "work", trial_id), "show_progress": False}
    t0 = time.perf_counter()
    result = run(model, dataset, config_files, settings)
    result.update(trial_id=trial_id, params=params, wall_seconds=time.perf_counter() - t0)
    write_json_atomic(os.path.join(out, "trials", f"{trial_id}.json"), result)
    report = {"valid_score": result["best_valid_score"]}
    report.update({f"valid_{k}": v for k, v in (result["best_valid_result"] or {}).items()})
    report.update({f"test_{k}": v for k, v in (result["test_result"] or {}).items()})
    session.report(report)


def _absolute(overrides: dict) -> dict:
    """Trials run in their own folders: paths the user gave relative to here are made absolute."""
    out = dict(overrides)
    for key in ("data_path", "teacher_dir", "transfer_dir", "teacher_checkpoint"):
        if isinstance(out.get(key), str) and out[key] and not out[key].startswith("["):
            out[key] = os.path.abspath(out[key])
    return out


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE + "\n\n" + __doc__)
        return 0
    try:
        options, overrides, _ = parse_args(argv)
    except UsageError as exc:
        print(f"recbole-kd tune: error: {exc}", file=sys.stderr)
        return 2
    for key in TUNE_KEYS:
        if key in overrides:
            options[key] = overrides.pop(key)
    missing = [k for k in ("model", "dataset", "space") if k not in options]
    if missing:
        print(f"recbole-kd tune: error: missing --{' and --'.join(missing)}\n{USAGE}", file=sys.stderr)
        return 2
    try:
        summary = tune_model(
            options["model"], options["dataset"], options["space"],
            config_files=[f for f in options.get("config_files", "").split(",") if f],
            overrides=overrides,
            samples=int(options["samples"]) if "samples" in options else None,
            out=options.get("out"),
            cpus_per_trial=int(options.get("cpus_per_trial", 1)),
            max_concurrent=int(options["max_concurrent"]) if "max_concurrent" in options else None,
            num_cpus=int(options["num_cpus"]) if "num_cpus" in options else None,
            plugins=[p for p in options.get("plugins", "").split(",") if p],
        )
    except (SpaceError, ImportError) as exc:
        print(f"recbole-kd tune: error: {exc}", file=sys.stderr)
        return 2
    except USER_ERRORS + (TrainingError,) as exc:
        print(f"recbole-kd tune: error: {exc}", file=sys.stderr)
        return 2
    print(f"best trial {summary['best']['trial_id']}: {summary['metric']} {summary['best']['best_valid_score']:.4f} "
          f"with {summary['best']['params']}; report in {summary['out']}")
    return 0 if summary["failed"] == 0 else 1


def tune_model(model, dataset, space_file, config_files=(), overrides=None, samples=None, out=None,
               cpus_per_trial=1, max_concurrent=None, num_cpus=None, plugins=()):
    space = parse_space(space_file)
    if plugins:
        load_plugin_files(plugins)
    grid = samples is None and all(kind == "choice" for kind, _ in space.values())
    samples = 1 if grid else (samples or 10)
    out = os.path.abspath(out or f"tune-{model}-{dataset}")
    overrides = _absolute(overrides or {})
    overrides.setdefault("teacher_dir", os.path.join(out, "teachers"))
    config_files = [os.path.abspath(f) for f in config_files]
    # check the base settings and every sampled key now (one clear error, before Ray starts)
    config = build_config(model, dataset, config_files, overrides)
    check_unknown_keys(set(space), bool(config["strict"]), where=" in the search space")
    prepare_shared(config)  # a distilled model's teacher / a transfer model's source: once, for all trials

    import ray
    from ray import air, tune

    os.makedirs(os.path.join(out, "trials"), exist_ok=True)
    ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, ignore_reinit_error=True,
             runtime_env={"worker_process_setup_hook": compat.ray_worker_setup}, log_to_driver=False)
    try:
        trainable = tune.with_resources(
            tune.with_parameters(trial, model=model, dataset=dataset, config_files=config_files, overrides=overrides,
                                 out=out, plugins=[os.path.abspath(p) for p in plugins], threads=cpus_per_trial),
            {"cpu": cpus_per_trial},
        )
        mode = "max" if config["valid_metric_bigger"] else "min"
        tuner = tune.Tuner(
            trainable,
            param_space=ray_space(space, grid),
            tune_config=tune.TuneConfig(metric="valid_score", mode=mode, num_samples=samples,
                                        max_concurrent_trials=max_concurrent),
            run_config=air.RunConfig(name="ray", storage_path=out, verbose=1),
        )
        grid_result = tuner.fit()
        errors = [str(r.error).splitlines()[0] for r in grid_result if r.error is not None]
    finally:
        ray.shutdown()
    return write_report(out, model, dataset, space_file, str(config["valid_metric"]), mode, errors)


def write_report(out, model, dataset, space_file, metric, mode, errors=()) -> dict:

    folder = os.path.join(out, "trials")
    trials = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json"):
            with open(os.path.join(folder, name)) as f:
                trials.append(json.load(f))
    if not trials:
        raise RuntimeError(f"no trial finished; errors: {list(errors)[:3]}")
    trials.sort(key=lambda r: r["best_valid_score"], reverse=(mode == "max"))
    best = trials[0]
    keys = sorted({k for t in trials for k in t["params"]})
    summary = {
        "model": model, "dataset": dataset, "space": os.path.abspath(space_file), "metric": metric, "mode": mode,
        "command": "python -m recbole_kd tune " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["tune"] else None,
        "trials": trials, "best": best, "failed": len(errors), "errors": list(errors), "out": out,
    }
    write_json_atomic(os.path.join(out, "results.json"), summary)
    buf = io.StringIO()
    writer = csv.writer(buf)
    metrics = sorted((best["test_result"] or {}).keys())
    writer.writerow(["trial_id"] + keys + ["valid_score"] + [f"test_{m}" for m in metrics] + ["epochs_run", "train_seconds"])
    for t in trials:
        writer.writerow([t["trial_id"]] + [json.dumps(t["params"].get(k)) for k in keys] + [t["best_valid_score"]]
                        + [(t["test_result"] or {}).get(m) for m in metrics] + [t["epochs_run"], round(t["train_seconds"], 2)])
    write_text_atomic(os.path.join(out, "results.csv"), buf.getvalue())
    lines = [
        f"# Tuning {model} on {dataset}",
        "",
        f"Search space: `{os.path.basename(space_file)}`; trials ranked by validation {metric} ({mode}); "
        "test metrics are reported, not used for the choice.",
        "",
        "| rank | trial | " + " | ".join(keys) + f" | valid {metric} | test ndcg@10 | test recall@10 | epochs |",
        "|---" * (len(keys) + 6) + "|",
    ]
    for i, t in enumerate(trials, 1):
        test = t["test_result"] or {}
        lines.append(f"| {i} | {t['trial_id']} | " + " | ".join(str(t["params"].get(k)) for k in keys)
                     + f" | {t['best_valid_score']:.4f} | {test.get('ndcg@10', float('nan')):.4f} | "
                     f"{test.get('recall@10', float('nan')):.4f} | {t['epochs_run']} |")
    lines += ["", f"Best: `{best['params']}` (trial {best['trial_id']}).", ""]
    if errors:
        lines += [f"Failed trials: {len(errors)}", ""] + [f"- {e}" for e in errors] + [""]
    write_text_atomic(os.path.join(out, "README.md"), "\n".join(lines))
    return summary
