"""Issue 4 target "a distillation epoch <= 1.3 x a plain student epoch (teacher cached)", measured
in one run: the same student trained alone and distilled with each KD loss, timed alternately
(round-robin, ``--rounds`` times) so that load on this shared CPU hits every configuration alike.

The teacher is trained for ``--teacher_epochs`` (its quality does not change the cost of a
distillation epoch: its top-K is computed once, before the first epoch, and reported separately).

    OMP_NUM_THREADS=1 python benchmarks/kd_epoch_cost.py --dataset ml-100k
    OMP_NUM_THREADS=1 python benchmarks/kd_epoch_cost.py --dataset amazon-beauty-5core --data_path ../shared/datasets \
        --student_set hidden_size=32 inner_size=64
    OMP_NUM_THREADS=1 python benchmarks/kd_epoch_cost.py --dataset ml-100k --student MF-S

With a trained teacher (e.g. a bench suite's teacher cell) and one teacher cache shared by the runs:

    OMP_NUM_THREADS=1 python benchmarks/kd_epoch_cost.py --dataset ml-1m --data_path ../shared/datasets \
        --teacher_checkpoint benchmarks/results/ml-1m/work/ml-1m__SASRec-L__seed2020/saved/SASRec-L-....pth \
        --student_set hidden_size=32 inner_size=64 MAX_ITEM_LIST_LENGTH=200 --losses soft rrd --epochs 1 --share_cache
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile

from common import fail, parse_sets, run_cell, write_outputs

LOSSES = ["hard", "soft", "soft_full", "rd", "rrd", "hint"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--data_path", default=None)
    ap.add_argument("--student", default="SASRec-S", help="any registered student; distilled as KD-<student>")
    ap.add_argument("--name", default=None, help="output name (default kd_epoch_cost_<dataset>[_<student>])")
    ap.add_argument("--teacher", default="SASRec-L")
    ap.add_argument("--teacher_epochs", type=int, default=1)
    ap.add_argument("--teacher_set", nargs="*", help="key=value settings for the teacher")
    ap.add_argument("--teacher_checkpoint", default=None, help="a trained teacher (skips training one)")
    ap.add_argument("--share_cache", action="store_true",
                    help="one on-disk teacher cache (kd_cache_dir) for every run: built by the first run "
                         "that needs it, loaded by the others")
    ap.add_argument("--student_set", nargs="*", help="key=value settings for the student (alone and distilled)")
    ap.add_argument("--losses", nargs="+", default=LOSSES + ["rrd+hint"], help="KD losses; a+b combines them")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per timed run")
    ap.add_argument("--rounds", type=int, default=2, help="round-robin repetitions")
    args = ap.parse_args()

    if args.teacher_checkpoint and not os.path.isfile(args.teacher_checkpoint):
        fail(f"--teacher_checkpoint {args.teacher_checkpoint}: no such file")
    # the runs' checkpoints and teacher cache are scratch: removed when the script ends, failed or not
    with tempfile.TemporaryDirectory(prefix="kd-epoch-cost-") as work:
        measure(args, work)


def measure(args, work):
    common = {"show_progress": False, "state": "WARNING"}
    if args.data_path:
        common["data_path"] = os.path.abspath(args.data_path)
    if args.teacher_checkpoint:
        ckpt = os.path.abspath(args.teacher_checkpoint)
        teacher = {"model": args.teacher, "checkpoint": ckpt}
    else:
        teacher = run_cell(args.teacher, args.dataset, os.path.join(work, "teacher"), epochs=args.teacher_epochs,
                           **common, **parse_sets(args.teacher_set))
        ckpt = os.path.join(work, "teacher", teacher["checkpoint"])
    if args.share_cache:
        common["kd_cache_dir"] = os.path.join(work, "teacher-cache")
    student = parse_sets(args.student_set)
    configs = {"alone": (args.student, {})}
    for spec in args.losses:
        configs[f"kd:{spec}"] = (f"KD-{args.student}", {"kd_losses": {name: 1.0 for name in spec.split("+")},
                                               "teacher": args.teacher, "teacher_checkpoint": ckpt})
    runs = {name: [] for name in configs}
    for r in range(args.rounds):
        for name, (model, overrides) in configs.items():
            res = run_cell(model, args.dataset, os.path.join(work, f"{name.replace(':', '-')}-{r}"),
                           epochs=args.epochs, stopping_step=1000, resume=False, **common, **student, **overrides)
            runs[name].append(res)
            print(f"[kd-epoch-cost] round {r} {name}: {res['train_seconds_per_epoch']:.2f} s/epoch", flush=True)

    def per_epoch(name):
        return statistics.median(res["train_seconds_per_epoch"] for res in runs[name])

    base = per_epoch("alone")
    if args.teacher_checkpoint:  # its size, as the distilled runs report it
        teacher["num_params"] = next(r["teacher_num_params"] for n in runs if n != "alone" for r in runs[n])
    trained = (f"checkpoint {os.path.relpath(ckpt)}" if args.teacher_checkpoint else f"{args.teacher_epochs} epoch(s)")
    rows, md = {}, []
    md += [
        f"# Cost of a distillation epoch on {args.dataset} (teacher top-K cached)",
        "",
        f"Teacher {args.teacher} ({teacher['num_params']:,} parameters, {trained}; its quality "
        f"does not change the cost). Student {args.student} {student or '(defaults)'} "
        f"({runs['alone'][0]['num_params']:,} parameters). Each configuration trained {args.epochs} epochs, "
        f"{args.rounds} rounds, round-robin; median seconds per training epoch (the teacher cache is built once "
        "before the first epoch and listed separately"
        + ("; one cache file shared by all runs: the build column is the run that computed it)." if args.share_cache
           else ")."),
        "",
        "| configuration | s / epoch (median) | vs student alone | teacher cache build (s) | cache (MiB) |",
        "|---|---|---|---|---|",
    ]
    for name in configs:
        sec = per_epoch(name)
        cache = [res.get("teacher_setup_seconds") for res in runs[name]
                 if res.get("teacher_setup_seconds") is not None and not res.get("teacher_cache_loaded")]
        size = runs[name][0].get("teacher_cache_bytes")
        rows[name] = {
            "seconds_per_epoch": sec,
            "all_seconds_per_epoch": [res["train_seconds_per_epoch"] for res in runs[name]],
            "ratio_vs_alone": sec / base,
            "teacher_setup_seconds": statistics.median(cache) if cache else None,
            "teacher_cache_builds": len(cache),  # runs that computed the cache (the others loaded it)
            "teacher_cache_bytes": size,
        }
        md.append(
            f"| {name} | {sec:.2f} | {sec / base:.2f}x | "
            f"{'-' if not cache else f'{statistics.median(cache):.1f}'} | {'-' if not size else f'{size / 2**20:.1f}'} |"
        )
    worst = max((n for n in rows if n != "alone"), key=lambda n: rows[n]["ratio_vs_alone"])
    met = rows[worst]["ratio_vs_alone"] <= 1.3
    md += ["", f"Slowest distillation: `{worst}`, {rows[worst]['ratio_vs_alone']:.2f}x a plain student epoch "
               f"(target <= 1.3x: {'met' if met else 'MISSED'} for every loss listed)."
           if met else
           f"Slowest distillation: `{worst}`, {rows[worst]['ratio_vs_alone']:.2f}x a plain student epoch (target <= 1.3x: "
           f"MISSED for {', '.join(n for n in rows if n != 'alone' and rows[n]['ratio_vs_alone'] > 1.3)})."]
    name = args.name or f"kd_epoch_cost_{args.dataset}" + ("" if args.student == "SASRec-S" else f"_{args.student}")
    write_outputs(name, {"rows": rows, "args": vars(args), "teacher": {
        k: teacher.get(k) for k in ("model", "num_params", "epochs_run", "train_seconds_per_epoch")}}, "\n".join(md))
    print("\n".join(md), flush=True)


if __name__ == "__main__":
    main()
