"""Wall time of the README's main command on a fresh machine state (teacher training included).

    python benchmarks/main_command.py            # runs: python -m recbole_kd --model=KD-SASRec --dataset=ml-100k

Runs the command as a user would (default settings, empty working folder so the teacher zoo is
empty), records wall time, the teacher's and student's results, and writes
results/main_command_ml-100k.{json,md}.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from common import write_outputs


def ndcg_both(by_protocol, selected) -> str:
    """``0.0930 (filter_seen), 0.0543 (recbole)``; a result from before both protocols: its one value."""
    if by_protocol:
        return ", ".join(f"{t['ndcg@10']:.4f} ({p})" for p, t in by_protocol.items())
    return f"{(selected or {}).get('ndcg@10', float('nan')):.4f}"


def main():
    args = sys.argv[1:] or ["--model=KD-SASRec", "--dataset=ml-100k"]
    with tempfile.TemporaryDirectory() as work:
        result = os.path.join(work, "result.json")
        cmd = [sys.executable, "-m", "recbole_kd", *args, f"--result_file={result}"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"command failed ({proc.returncode}): {proc.stderr[-2000:]}")
        with open(result) as f:
            res = json.load(f)
    shown = "python -m recbole_kd " + " ".join(args)
    report = "\n".join([
        f"# README main command: `{shown}`", "",
        f"- evaluation protocol selected: {res.get('protocol')} (the other beside it)",
        f"- wall time, teacher training included (empty teacher zoo): **{wall / 60:.1f} min**",
        f"- teacher {res.get('teacher')} ({res.get('teacher_num_params', 0):,} parameters): test NDCG@10 "
        f"{ndcg_both(res.get('teacher_test_result_by_protocol'), res.get('teacher_test_result'))}",
        f"- student {res['model']} ({res['num_params']:,} parameters): test NDCG@10 "
        f"{ndcg_both(res.get('test_result_by_protocol'), res['test_result'])}, "
        f"{res['epochs_run']} epochs, {res['train_seconds_per_epoch']:.1f} s/epoch",
        f"- torch threads: {os.environ.get('OMP_NUM_THREADS', 'default (all cores)')}",
    ])
    write_outputs("main_command_ml-100k", {"wall_seconds": wall, "argv": args, "result": res,
                                           "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}, report)
    print(report)


if __name__ == "__main__":
    main()
