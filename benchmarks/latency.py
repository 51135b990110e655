"""Teacher vs student full-sort inference latency, measured interleaved in one process.

The cost report of each training run measures latency right after training, while other jobs
may share the CPU; this script loads the committed benchmark's checkpoints and times them
alternately (A, B, A, B, ...) on the same 256 test users, one torch thread, so both see the same
machine load and the ratio is trustworthy.

    python benchmarks/latency.py --dataset ml-100k
    python benchmarks/latency.py --dataset amazon-beauty-5core --data_path ../shared/datasets

reads the cells of the distillation benchmark of the dataset (the bench suite whose results are
``benchmarks/results/kd_<dataset>``; their checkpoints under its ``work`` folder, which a run of the
suite leaves on the machine that ran it): its teacher (an ensemble teacher's ensemble cell: every
member's checkpoint) and its first SASRec-S cell. Any bench suite's cells, by id:

    python benchmarks/latency.py --suite ml-1m --compare_attention --dataset ml-1m --data_path ../shared/datasets \
        --cells ml-1m__SASRec-L__seed2020 ml-1m__KD-SASRec_rrd__seed2020

Any two checkpoints (timing does not depend on how well they are trained):

    python benchmarks/latency.py --dataset ml-100k --compare_attention --checkpoints teacher=A.pth student=B.pth
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time

import torch

from common import RESULTS, fail, write_outputs


def load_model(cell: dict, out: str, dataset: str, data_path: str | None):
    """(label, model on the CPU, test loader) of a bench cell's checkpoint (its ``result``), or of an
    ensemble cell's members (``checkpoints``: the ensemble)."""
    from recbole_kd.kd.teacher import load_checkpoints

    if "result" in cell:
        cell = cell["result"]
    paths = [os.path.join(out, p) for p in cell["checkpoints"]] if "checkpoints" in cell else \
        os.path.join(out, cell["checkpoint"])
    overrides = {"state": "WARNING"}
    if data_path:
        overrides["data_path"] = os.path.abspath(data_path)
    label, model, _, _, test = load_checkpoints(dataset, paths, overrides)
    return label, model.cpu(), test  # timed on the CPU


def default_cells(out: str) -> list[str]:
    """The cells a distillation benchmark is timed on: its teacher (the ensemble cell of an ensemble teacher)
    and its first SASRec-S cell (the student alone)."""
    folder = os.path.join(out, "cells")
    recs = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.endswith(".json") and not name.endswith(".failed.json"):
            with open(os.path.join(folder, name)) as f:
                recs.append(json.load(f))
    teacher = next((r for r in recs if r.get("ensemble")), None) or next(
        (r for r in recs if r.get("group") == "teacher"), None)
    student = next((r for r in recs if r.get("group") == "student" and r.get("model") == "SASRec-S"), None)
    if teacher is None or student is None:
        fail(f"{folder} has no teacher or no SASRec-S student cell; name the cells with --cells")
    return [teacher["id"], student["id"]]


def set_attention(model, fused: bool):
    """The model with its transformer layers' fused inference attention on or off (None: it has none)."""
    from recbole_kd.models.attention import set_fused_attention

    return model if set_fused_attention(model, fused) else None


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
    ap.add_argument("--suite", default=None,
                    help="read the cells of benchmarks/results/<suite> (a bench suite's results folder) instead "
                         "of kd_<dataset>")
    ap.add_argument("--cells", nargs="+", default=None,
                    help="ids of the folder's cells to time (first: the reference); default: the teacher and "
                         "the first SASRec-S cell")
    ap.add_argument("--checkpoints", nargs="+", default=None, metavar="LABEL=PATH",
                    help="time these checkpoints instead of cells (first: the reference)")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compare_attention", action="store_true",
                    help="also time every transformer cell with RecBole's attention (fused_attention: False), "
                         "interleaved with the fused default")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from recbole_kd.quick_start import latency_batch

    out = os.path.join(RESULTS, args.suite or f"kd_{args.dataset}")
    models, params, batch, names = {}, {}, None, []
    if args.checkpoints:
        given = dict(c.split("=", 1) if "=" in c else (os.path.basename(c), c) for c in args.checkpoints)
        args.cells = list(given)
    elif not args.cells:
        args.cells = default_cells(out)
    for name in args.cells:
        if args.checkpoints:
            if not os.path.isfile(given[name]):
                fail(f"--checkpoints {name}={given[name]}: no such file")
            cell = {"checkpoint": os.path.abspath(given[name])}
        else:
            path = os.path.join(out, "cells", name + ".json")
            if not os.path.isfile(path):
                fail(f"--cells {name}: no cell {path}")
            with open(path) as f:
                cell = json.load(f)
        model_name, model, test = load_model(cell, out, args.dataset, args.data_path)
        models[name] = model
        params[name] = sum(p.numel() for p in model.parameters())
        names.append(name)
        if args.compare_attention and set_attention(model, True):
            plain = f"{name} (RecBole attention)"
            models[plain] = set_attention(copy.deepcopy(model), False)
            params[plain] = params[name]
            names.append(plain)
        if batch is None:
            batch = latency_batch(model, test)
    timing = interleaved(models, batch, args.reps)
    ref = args.cells[0]
    lines = [f"# Full-sort latency on {args.dataset}: {len(batch)} test users, all items, "
             f"{args.threads} torch thread(s), {args.reps} interleaved repetitions", "",
             f"| cell | parameters | median ms | min ms | {ref} median / this median |", "|---|---|---|---|---|"]
    for name in names:
        t = timing[name]
        lines.append(f"| {name} | {params[name]:,} | {t['median_ms']:.1f} | {t['min_ms']:.1f} | "
                     f"{timing[ref]['median_ms'] / t['median_ms']:.2f} |")
    ref_plain = f"{ref} (RecBole attention)"
    if ref_plain in timing:
        lines += ["", f"{ref} over each cell, both timed with the same attention:", ""]
        for name in args.cells[1:]:
            plain = f"{name} (RecBole attention)"
            if plain in timing:
                lines.append(f"- {name}: fused {timing[ref]['median_ms'] / timing[name]['median_ms']:.2f}x, RecBole "
                             f"attention {timing[ref_plain]['median_ms'] / timing[plain]['median_ms']:.2f}x")
    report = "\n".join(lines)
    name = f"latency_{args.dataset}" if args.suite in (None, args.dataset) else f"latency_{args.suite}_{args.dataset}"
    write_outputs(name, {"timing": timing, "params": params, "users": len(batch),
                                              "args": vars(args)}, report)
    print(report)


if __name__ == "__main__":
    main()
