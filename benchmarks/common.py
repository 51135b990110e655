"""Helpers shared by the benchmark scripts: run cells through the same path as the CLI,
write JSON + markdown with the command and the machine."""
from __future__ import annotations

import ast
import os
import shlex
import sys
import time

from recbole_kd.utils import git_commit, machine_info, write_json_atomic, write_text_atomic

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
REPO = os.path.dirname(HERE)
SHARED = os.path.join(os.path.dirname(REPO), "shared", "datasets")


def command() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])


def fail(message: str):
    """Bad input to a benchmark script: one line on stderr (the script's name, then what is wrong) and
    exit status 2; nothing has been written yet."""
    print(f"{os.path.basename(sys.argv[0])}: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_sets(pairs) -> dict:
    """``key=value`` settings of a script's command line (``--student_set epochs=40 'kd_losses={...}'``): each
    value a Python literal where it reads as one, else the string."""
    out = {}
    for p in pairs or []:
        k, v = p.split("=", 1)
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k] = v
    return out


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


def write_outputs(name: str, payload: dict, markdown: str) -> None:
    payload = {"command": command(), "machine": machine_info(), "git_commit": git_commit(), **payload}
    write_json_atomic(os.path.join(RESULTS, name + ".json"), payload)
    head = (
        f"Command: `{payload['command']}`  \n"
        f"Machine: {payload['machine']['cpu']}, {payload['machine']['cores']} cores, {payload['machine']['torch_threads']} torch threads, "
        f"torch {payload['machine']['torch']} ({payload['machine']['device']}); commit {payload['git_commit']}\n\n"
    )
    write_text_atomic(os.path.join(RESULTS, name + ".md"), head + markdown.rstrip() + "\n")
