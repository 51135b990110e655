"""Helpers shared by the benchmark scripts: run cells through the same path as the CLI,
write JSON + markdown with the command and the machine."""
from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
REPO = os.path.dirname(HERE)
SHARED = os.path.join(os.path.dirname(REPO), "shared", "datasets")


def machine() -> dict:
    import torch

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


def git_commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True).strip()
    except Exception:
        return "unknown"


def command() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])


def fail(message: str):
    """Bad input to a benchmark script: one line on stderr (the script's name, then what is wrong) and
    exit status 2; nothing has been written yet."""
    print(f"{os.path.basename(sys.argv[0])}: {message}", file=sys.stderr)
    raise SystemExit(2)


def run_cell(model, dataset, workdir, **overrides) -> dict:
    """One training run through recbole_kd.quick_start.run (the CLI's path), in ``workdir``."""
    from recbole_kd.quick_start import run

    os.makedirs(workdir, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        t0 = time.perf_counter()
        # an interrupted cell continues from its last epoch checkpoint
        res = run(model, dataset, overrides={"show_progress": False, "resume": "auto", **overrides})
        res["wall_seconds"] = time.perf_counter() - t0
        return res
    finally:
        os.chdir(cwd)


def mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    if len(values) == 1:
        return values[0], 0.0
    return statistics.mean(values), statistics.stdev(values)


def write_outputs(name: str, payload: dict, markdown: str) -> None:
    os.makedirs(RESULTS, exist_ok=True)
    payload = {"command": command(), "machine": machine(), "git_commit": git_commit(), **payload}
    with open(os.path.join(RESULTS, name + ".json"), "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
        f.write("\n")
    head = (
        f"Command: `{payload['command']}`  \n"
        f"Machine: {payload['machine']['cpu']}, {payload['machine']['cores']} cores, {payload['machine']['torch_threads']} torch threads, "
        f"torch {payload['machine']['torch']} ({payload['machine']['device']}); commit {payload['git_commit']}\n\n"
    )
    with open(os.path.join(RESULTS, name + ".md"), "w") as f:
        f.write(head + markdown.rstrip() + "\n")
