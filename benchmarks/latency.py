"""Teacher vs student full-sort inference latency, measured interleaved in one process.

The cost report of each training run measures latency right after training, while other jobs
may share the CPU; this script loads the committed benchmark's checkpoints and times them
alternately (A, B, A, B, ...) on the same 256 test users, one torch thread, so both see the same
machine load and the ratio is trustworthy.

    python benchmarks/latency.py --dataset ml-100k
    python benchmarks/latency.py --dataset amazon-beauty-5core --data_path ../shared/datasets
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from common import RESULTS, write_outputs


def load_model(cell: dict, out: str, dataset: str, data_path: str | None):
    from recbole_kd.checkpoint import load_checkpoint
    from recbole_kd.config import build_config
    from recbole_kd.kd.teacher import _arch_overrides
    from recbole_kd.quick_start import prepare
    from recbole_kd.registry import get_entry

    if "checkpoints" in cell:  # the ensemble teacher of kd_benchmark.py --teacher_seeds
        from recbole_kd.kd.teacher import load_ensemble

        paths = [os.path.join(out, p) for p in cell["checkpoints"]]
        state = load_checkpoint(paths[0])
        arch = _arch_overrides(state["config"])
        arch.update(state="WARNING", show_progress=False)
        if data_path:
            arch["data_path"] = os.path.abspath(data_path)
        cfg = build_config(state["config"]["model"], dataset, overrides=arch)
        data, _, _, test = prepare(cfg)
        model, info = load_ensemble(cfg, data, paths, None)
        return info["teacher"], model.cpu(), test  # timed on the CPU like the single models
    path = os.path.join(out, cell["checkpoint"])
    state = load_checkpoint(path)
    name = state["config"]["model"]
    arch = _arch_overrides(state["config"])
    arch.update(state="WARNING", show_progress=False)
    if data_path:
        arch["data_path"] = os.path.abspath(data_path)
    cfg = build_config(name, dataset, overrides=arch)
    _, train, _, test = prepare(cfg)
    model = get_entry(name).cls(cfg, train.dataset)
    model.load_state_dict(state["state_dict"])
    model.eval()
    return name, model, test


@torch.no_grad()
def interleaved(models: dict, batch, reps: int) -> dict:
    times = {k: [] for k in models}
    for m in models.values():
        m.full_sort_predict(batch)  # warm-up
    for _ in range(reps):
        for k, m in models.items():
            t = time.perf_counter()
            m.full_sort_predict(batch)
            times[k].append(time.perf_counter() - t)
    return {k: {"median_ms": 1000 * statistics.median(v), "min_ms": 1000 * min(v), "reps": reps} for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--data_path", default=None)
    ap.add_argument("--cells", nargs="+", default=["teacher", "student-seed2020"],
                    help="cells of benchmarks/results/kd_<dataset>/cells to time (first: the reference)")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from recbole_kd.quick_start import latency_batch

    out = os.path.join(RESULTS, f"kd_{args.dataset}")
    models, params, batch = {}, {}, None
    for name in args.cells:
        path = os.path.join(out, "cells", name + ".json")
        if name == "teacher" and not os.path.isfile(path):  # an ensemble teacher
            path = os.path.join(out, "cells", "teacher-ensemble.json")
        with open(path) as f:
            cell = json.load(f)
        model_name, model, test = load_model(cell, out, args.dataset, args.data_path)
        models[name] = model
        params[name] = sum(p.numel() for p in model.parameters())
        if batch is None:
            batch = latency_batch(model, test)
    timing = interleaved(models, batch, args.reps)
    ref = args.cells[0]
    lines = [f"# Full-sort latency on {args.dataset}: {len(batch)} test users, all items, "
             f"{args.threads} torch thread(s), {args.reps} interleaved repetitions", "",
             f"| cell | parameters | median ms | min ms | {ref} median / this median |", "|---|---|---|---|---|"]
    for name in args.cells:
        t = timing[name]
        lines.append(f"| {name} | {params[name]:,} | {t['median_ms']:.1f} | {t['min_ms']:.1f} | "
                     f"{timing[ref]['median_ms'] / t['median_ms']:.2f} |")
    report = "\n".join(lines)
    write_outputs(f"latency_{args.dataset}", {"timing": timing, "params": params, "users": len(batch),
                                              "args": vars(args)}, report)
    print(report)


if __name__ == "__main__":
    main()
