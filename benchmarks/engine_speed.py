"""Issue 3 benchmark: RecBole's stock SASRec vs our window-trained SASRec-S on ml-100k.

Phase 1 (speed): seconds per training epoch at identical d, layers, heads, inner size,
dropout, max length and train_batch_size (RecBole's SASRec defaults), 2 epochs each.
Phase 2 (quality): both trained to convergence (early stopping on valid NDCG@10), then
best-on-valid test NDCG@10 / Recall@10 and total wall time. Stock SASRec keeps RecBole's
batch size setting, but 2048 prefix samples per step give it only ~48 updates per epoch
and it needs very many epochs on this CPU, so it is trained with --stock_batch 256 samples;
SASRec-S uses its default batch of 128 windows (each window carries up to 50 targets).

    OMP_NUM_THREADS=1 python benchmarks/engine_speed.py [--stopping_step 3] [--max_epochs 60] [--stock_batch 256]
    OMP_NUM_THREADS=1 python benchmarks/engine_speed.py --phase speed --name engine_speed_ml-100k_speed  # speed only
"""
from __future__ import annotations

import argparse
import os
import tempfile

from common import run_cell, write_outputs

ARCH = {  # RecBole 1.2.1 SASRec.yaml
    "n_layers": 2, "n_heads": 2, "hidden_size": 64, "inner_size": 256,
    "hidden_dropout_prob": 0.5, "attn_dropout_prob": 0.5, "MAX_ITEM_LIST_LENGTH": 50,
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stopping_step", type=int, default=3)
    ap.add_argument("--max_epochs", type=int, default=60)
    ap.add_argument("--stock_batch", type=int, default=256)
    ap.add_argument("--speed_epochs", type=int, default=2)
    ap.add_argument("--name", default="engine_speed_ml-100k", help="output name under benchmarks/results/")
    ap.add_argument("--phase", choices=["speed", "all"], default="all",
                    help="speed: only seconds per epoch; all: also train both to convergence")
    args = ap.parse_args()
    # the runs' checkpoints are scratch: removed when the script ends, failed or not
    with tempfile.TemporaryDirectory(prefix="engine-speed-") as work:
        measure(args, work)


def measure(args, work):
    cells = {}
    for model in ("SASRec-S", "SASRec"):
        load = os.getloadavg()[0]  # other jobs on this shared CPU inflate the epoch times
        cells[f"speed/{model}"] = run_cell(model, "ml-100k", os.path.join(work, "speed", model), epochs=args.speed_epochs,
                                           train_batch_size=2048, **ARCH)
        cells[f"speed/{model}"]["loadavg_1min"] = {"before": load, "after": os.getloadavg()[0]}
    report(args, cells)  # the speed result lands even if convergence is interrupted
    if args.phase == "all":
        for model, batch in (("SASRec-S", 128), ("SASRec", args.stock_batch)):
            cells[f"converge/{model}"] = run_cell(model, "ml-100k", os.path.join(work, "conv", model),
                                                  epochs=args.max_epochs, stopping_step=args.stopping_step,
                                                  train_batch_size=batch, **ARCH)
        report(args, cells)


def _load(cell) -> str:
    la = cell.get("loadavg_1min")
    return f"{la['before']:.1f} / {la['after']:.1f}" if la else "not recorded"


def report(args, cells):
    s_stock = cells["speed/SASRec"]["train_seconds_per_epoch"]
    s_ours = cells["speed/SASRec-S"]["train_seconds_per_epoch"]
    summary = {
        "epoch_speedup": s_stock / s_ours,
        "seconds_per_epoch": {"SASRec": s_stock, "SASRec-S": s_ours},
        "targets": {"epoch_speedup>=20": s_stock / s_ours >= 20},
    }
    md = [
        "# Fast sequential engine vs RecBole's SASRec (ml-100k, leave-one-out, full ranking)",
        "",
        f"Architecture for both: {ARCH}.",
        "",
        "## Speed (identical settings, train_batch_size=2048)",
        "",
        "| model | s / epoch | epochs timed | load average (1 min) before / after |",
        "|---|---|---|---|",
        f"| RecBole SASRec | {s_stock:.1f} | {cells['speed/SASRec']['epochs_run']} | {_load(cells['speed/SASRec'])} |",
        f"| SASRec-S (windows) | {s_ours:.2f} | {cells['speed/SASRec-S']['epochs_run']} | {_load(cells['speed/SASRec-S'])} |",
        "",
        "The machine has 2 cores; a load average above 2 means the timed run shared its core.",
        "",
        f"**Speed-up per epoch: {summary['epoch_speedup']:.1f}x** (target >= 20x).",
    ]
    if "converge/SASRec" in cells:
        c_stock, c_ours = cells["converge/SASRec"], cells["converge/SASRec-S"]
        n_stock, n_ours = c_stock["test_result"]["ndcg@10"], c_ours["test_result"]["ndcg@10"]
        summary.update({
            "test_ndcg10": {"SASRec": n_stock, "SASRec-S": n_ours},
            "ndcg_ratio": n_ours / n_stock,
            "wall_seconds_to_converge": {"SASRec": c_stock["wall_seconds"], "SASRec-S": c_ours["wall_seconds"]},
        })
        summary["targets"]["ndcg_ours>=stock"] = n_ours >= n_stock
        md += [
            "",
            f"## Trained to convergence (early stopping on valid NDCG@10, patience {args.stopping_step}, "
            f"at most {args.max_epochs} epochs)",
            "",
            "| model | batch | epochs run | test NDCG@10 | test Recall@10 | test MRR@10 | wall time (s) |",
            "|---|---|---|---|---|---|---|",
        ]
        for model, batch in (("SASRec", f"{args.stock_batch} samples"), ("SASRec-S", "128 windows")):
            c = cells[f"converge/{model}"]
            t = c["test_result"]
            md.append(f"| {model} | {batch} | {c['epochs_run']} | {t['ndcg@10']:.4f} | {t['recall@10']:.4f} | "
                      f"{t['mrr@10']:.4f} | {c['wall_seconds']:.0f} |")
        md += ["", f"Test NDCG@10 ratio ours / RecBole: {summary['ndcg_ratio']:.3f} (target >= 1.0)."]
    write_outputs(args.name, {"summary": summary, "cells": cells, "args": vars(args)}, "\n".join(md))
    print("\n".join(md), flush=True)


if __name__ == "__main__":
    main()
