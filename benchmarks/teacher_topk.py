"""What a teacher's top-K holds at the student's training positions, raw and with seen items masked.

    python benchmarks/teacher_topk.py --dataset amazon-beauty-5core --data_path ../shared/datasets \
        --teacher_checkpoint A.pth [B.pth C.pth] [--student_set hidden_size=32 inner_size=64]

Builds the training windows of a KD-SASRec run (same split and settings), loads the teacher (one
checkpoint or an ensemble) as distillation does, computes its top-K at every training position
twice (``kd_mask_seen`` off and on) and reports: how often the raw top-1 is the item just consumed
or any item of the prefix, how many prefix items the raw top-K holds, and where the true next item
ranks in each list. Output: benchmarks/results/teacher_topk_<dataset>.json / .md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from common import RESULTS, parse_sets, write_outputs


def seen_matrix(window: torch.Tensor, own_from: torch.Tensor):
    """(inputs at each owned position [R], its prefix [R, L] with later columns zeroed, targets [R])."""
    from recbole_kd.models.windows import owned_target_mask, prefixes

    inputs, targets = window[:, :-1], window[:, 1:]
    b, q = owned_target_mask(targets, own_from - 1).nonzero(as_tuple=True)
    return inputs[b, q], prefixes(inputs, b, q), targets[b, q]


def stats(ids: torch.Tensor, scores: torch.Tensor, current, prefix, targets) -> dict:
    ranked = torch.isfinite(scores)
    in_prefix = (ids.unsqueeze(2) == prefix.unsqueeze(1)).any(2) & ranked & (ids > 0)
    hit = (ids == targets.unsqueeze(1)) & ranked
    return {
        "top1_is_current_item": float((ids[:, 0] == current).float().mean()),
        "top1_is_seen_item": float(in_prefix[:, 0].float().mean()),
        "seen_items_in_top_k_mean": float(in_prefix.sum(1).float().mean()),
        "target_at_top1": float(hit[:, 0].float().mean()),
        "target_in_top10": float(hit[:, :10].any(1).float().mean()),
        "target_in_top_k": float(hit.any(1).float().mean()),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--data_path", default=None)
    ap.add_argument("--teacher_checkpoint", nargs="+", required=True, help="one checkpoint, or several (an ensemble)")
    ap.add_argument("--student_set", nargs="*", help="key=value settings of the KD-SASRec run whose windows are used")
    ap.add_argument("--topk", type=int, default=50)
    ap.add_argument("--label", default=None, help="what the teacher is, for the report (default: its model name, e.g. ensemble(SASRec-L x3))")
    args = ap.parse_args()
    for path in args.teacher_checkpoint:
        if not os.path.isfile(path):  # one line, exit 2, nothing written
            print(f"teacher_topk: error: --teacher_checkpoint {path}: no such file; give a checkpoint written by a "
                  "training run", file=sys.stderr)
            sys.exit(2)

    from recbole_kd.config import build_config
    from recbole_kd.kd.outputs import TeacherOutputs
    from recbole_kd.kd.teacher import load_teacher
    from recbole_kd.models.windows import OWN_FROM_FIELD, WINDOW_FIELD
    from recbole_kd.quick_start import prepare

    overrides = {"state": "WARNING", "show_progress": False, **parse_sets(args.student_set)}
    if args.data_path:
        overrides["data_path"] = os.path.abspath(args.data_path)
    paths = [os.path.abspath(p) for p in args.teacher_checkpoint]
    overrides["teacher_checkpoint"] = paths[0] if len(paths) == 1 else paths
    config = build_config("KD-SASRec", args.dataset, overrides=overrides)
    _, train, _, _ = prepare(config)
    teacher, info = load_teacher(config, train.dataset)  # checks the checkpoint(s) against the data
    current, prefix, targets = seen_matrix(train.table[WINDOW_FIELD], train.table[OWN_FROM_FIELD])
    result = {"dataset": args.dataset, "teacher": args.label or info.get("teacher"),
              "teacher_checkpoints": [os.path.relpath(p) for p in paths], "topk": args.topk,
              "positions": int(targets.numel())}
    for name, mask in (("raw", False), ("mask_seen", True)):
        t0 = time.perf_counter()
        out = TeacherOutputs(teacher, train, args.topk, False, cached=True, device=torch.device("cpu"),
                             mask_seen=mask)
        result[name] = {**stats(out.ids.long(), out.scores, current, prefix, targets),
                        "seconds": time.perf_counter() - t0}
    raw, masked = result["raw"], result["mask_seen"]
    report = [
        f"# Teacher top-{args.topk} at the training positions of {args.dataset}",
        "",
        f"Teacher: {result['teacher']}; {result['positions']:,} training positions (the windows of a "
        f"KD-SASRec run{' with ' + ' '.join(args.student_set) if args.student_set else ''}).",
        "",
        "| | raw top-K | seen items masked (`kd_mask_seen`) |",
        "|---|---|---|",
        f"| top-1 is the item just consumed | {raw['top1_is_current_item']:.1%} | {masked['top1_is_current_item']:.1%} |",
        f"| top-1 is an item of the prefix | {raw['top1_is_seen_item']:.1%} | {masked['top1_is_seen_item']:.1%} |",
        f"| prefix items in the top-K (mean) | {raw['seen_items_in_top_k_mean']:.2f} | "
        f"{masked['seen_items_in_top_k_mean']:.2f} |",
        f"| true next item at top-1 | {raw['target_at_top1']:.1%} | {masked['target_at_top1']:.1%} |",
        f"| true next item in the top-10 | {raw['target_in_top10']:.1%} | {masked['target_in_top10']:.1%} |",
        f"| true next item in the top-K | {raw['target_in_top_k']:.1%} | {masked['target_in_top_k']:.1%} |",
        "",
        "Under the filter-seen protocol (recbole-kd's default) a user's history is removed from every ranking, so "
        "an item of the prefix at the top of the teacher's list costs the teacher nothing at evaluation (RecBole's "
        "own protocol does not remove it for sequential models, where it is a guaranteed miss on data without "
        "repeats), but a KD loss that reads the raw list "
        "(hard: its top-1; rd: its top-K as weighted positives; soft: its distribution) teaches the student "
        "to predict the item just consumed.",
    ]
    name = f"teacher_topk_{args.dataset}"
    write_outputs(name, result, "\n".join(report) + "\n")
    print("\n".join(report))
    print(f"written to {os.path.join(RESULTS, name)}.json/.md")


if __name__ == "__main__":
    main()
