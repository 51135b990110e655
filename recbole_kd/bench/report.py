"""The suite's report from its stored cells: ``summarize`` makes one row per (dataset, model row), its seeds
averaged under each protocol, with the ratio columns (vs the student alone, vs the teacher, worst seed over
best, n/a where the reference is noise); ``render`` writes ``results.json``, ``results.csv`` (``_write_csv``,
one line per cell), the plots and ``README.md`` (one table per dataset; ``_fmt`` writes mean ± std).
"""
from __future__ import annotations

import csv
import datetime as _dt
import functools
import io
import os
import statistics

from recbole_kd.bench.plots import _plots
from recbole_kd.bench.records import (
    PROTOCOL_NAMES,
    failed_record,
    legacy_record,
    protocol_result,
    protocol_valid,
    same_under_both,
)
from recbole_kd.bench.suite import GROUPS, Cell, _fmt_minutes
from recbole_kd.kd.teacher_spec import distilled_from_raw_top_k
from recbole_kd.models.distill import ALIASES
from recbole_kd.protocol import FILTER_SEEN, PROTOCOLS, RECBOLE
from recbole_kd.registry import get_entry
from recbole_kd.utils import git_commit, machine_info, mean_std, write_json_atomic, write_text_atomic

METRICS = ("ndcg@10", "recall@10", "mrr@10")


def summarize(cells: list[Cell], records: dict, out: str) -> list[dict]:
    rows = []
    by_row = {}
    for c in cells:
        by_row.setdefault((c.dataset, c.label), []).append(c)
    for (ds, label), group_cells in by_row.items():
        c0 = group_cells[0]
        runs = [records[(ds, label, c.seed)] for c in group_cells if (ds, label, c.seed) in records]
        # a row averages cells of one kind: once any seed recorded both protocols, seeds stored before
        # (scored, and their checkpoint selected, under RecBole's protocol only) are left out, not mixed in
        current = [r for r in runs if not legacy_record(r)]
        superseded = [r["seed"] for r in runs if current and legacy_record(r)]
        runs = current or runs
        row = {"dataset": ds, "label": label, "model": c0.model, "group": c0.group, "seeds_planned": len(group_cells),
               "seeds": [r["seed"] for r in runs], "skip": c0.skip, "teacher_from": c0.teacher_from,
               "student_ref": c0.student_ref, "superseded_seeds": superseded}
        if c0.ensemble:  # an ensemble teacher: evaluated once from its members (the row "<label> member")
            row["ensemble_seeds"] = list(c0.ensemble)
        if c0.row_label:
            row["member_of"] = c0.row_label
        if not runs:
            fails = [failed_record(out, c) for c in group_cells]
            fails = [f for f in fails if f]
            if c0.skip:
                row["status"] = f"not run: {c0.skip}"
            elif fails:
                row["status"] = f"failed: {fails[0].get('error')}"
            else:
                est = f" (estimated {_fmt_minutes(c0.minutes)} per seed on the reference CPU)" if c0.minutes else ""
                row["status"] = f"not run yet{est}"
            rows.append(row)
            continue
        res = [r["result"] for r in runs]
        for protocol in PROTOCOLS:
            tables = [protocol_result(r, protocol) for r in res]
            row[protocol] = (None if any(t is None for t in tables) else
                             {m: mean_std([t.get(m) for t in tables]) for m in METRICS})
            row.setdefault("seed_ndcg", {})[protocol] = (None if any(t is None for t in tables) else
                                                         [t.get("ndcg@10") for t in tables])
            valid = [protocol_valid(r, protocol) for r in res]
            row.setdefault("valid_ndcg", {})[protocol] = (None if any(t is None or t.get("ndcg@10") is None
                                                                      for t in valid)
                                                          else mean_std([t["ndcg@10"] for t in valid]))
        row["protocols_selected"] = sorted({r.get("protocol") or RECBOLE for r in res})
        if any(same_under_both(r) for r in res):
            row["same_under_both"] = True
        row["num_params"] = res[0]["num_params"]
        row["latency_ms"] = statistics.median([1000 * r["latency_seconds"] for r in res])
        row["seconds_per_epoch"] = statistics.mean([r["train_seconds_per_epoch"] for r in res])
        row["epochs"] = statistics.mean([r["epochs_run"] for r in res])
        row["train_minutes"] = statistics.mean([r["train_seconds"] for r in res]) / 60
        row["devices"] = sorted({(r.get("machine") or {}).get("device", "cpu") for r in runs})
        if any(distilled_from_raw_top_k(c0.model, r) for r in res):  # a suite row with kd_mask_seen: False
            row["raw_top_k"] = True
        row["status"] = "ok"
        rows.append(row)
    # each dataset is reported under one protocol (the one its cells selected; filter_seen by default), the
    # other shown beside it; ratios only ever compare two rows under the same protocol
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        same = [r for r in rows if r["dataset"] == ds and r.get("status") == "ok"]
        main = FILTER_SEEN if any(FILTER_SEEN in r["protocols_selected"] for r in same) or not same else RECBOLE
        for row in rows:
            if row["dataset"] != ds:
                continue
            row["protocol"] = main
            if row.get("status") != "ok":
                continue
            for m in METRICS:
                row[m] = (row[main] or {}).get(m, (None, None))
        for row in same:
            ref = _student_ref(row, same)
            teacher = _teacher_ref(row, same)
            row["vs_student_alone"] = _ratio(row, ref, main)
            row["vs_student_alone_worst"] = _worst_ratio(row, ref, main) if row is not ref else None
            row["vs_student_label"] = ref["label"] if ref else None
            row["vs_teacher"] = _ratio(row, teacher, main)
            row["vs_teacher_label"] = teacher["label"] if teacher else None
            row["vs_noise"] = [k for k, r in (("vs_student_alone", ref), ("vs_teacher", teacher)) if _in_noise(r, main)]
            other = _other(main)
            row["other_protocol"] = other
            row["vs_student_alone_other"] = _ratio(row, ref, other)
            row["vs_teacher_other"] = _ratio(row, teacher, other)
        for row in same:
            row["headline"] = False
        for row in headlines(same, main):
            row["headline"] = True
    return rows


def headlines(same: list[dict], protocol: str) -> list[dict]:
    """For each student-alone reference of a dataset, the distilled or transfer row compared with it that has
    the best mean validation NDCG@10 under ``protocol``: the method a user would pick without looking at
    test data, so its test ratio is the honest headline (choosing by test NDCG@10 would overstate it). A row
    takes part once all its planned seeds are in (a one-seed mean is no headline)."""
    best = {}
    for row in same:
        if row["group"] not in ("distilled", "transfer") or not row.get("vs_student_label"):
            continue
        if len(row["seeds"]) < row["seeds_planned"]:
            continue
        valid = (row.get("valid_ndcg") or {}).get(protocol)
        if not valid or valid[0] is None:
            continue
        key = row["vs_student_label"]
        if key not in best or valid[0] > best[key]["valid_ndcg"][protocol][0]:
            best[key] = row
    return list(best.values())


def _worst_ratio(row, ref, protocol):
    """The row's worst seed over the reference's best seed (NDCG@10): a gain that holds seed for seed is
    above 1 here, not only on the means."""
    if _ratio(row, ref, protocol) is None or len(row["seeds"]) < 2:
        return None
    ours, theirs = row["seed_ndcg"][protocol], ref["seed_ndcg"][protocol]
    return min(ours) / max(theirs) if max(theirs) else None


def _other(protocol: str) -> str:
    return RECBOLE if protocol == FILTER_SEEN else FILTER_SEEN


def _in_noise(ref, protocol) -> bool:
    """A reference row whose mean NDCG@10 is not above its spread over seeds (or is 0): a ratio to it is noise."""
    if not ref or not ref.get(protocol):
        return False
    mean, std = ref[protocol]["ndcg@10"]
    return not mean or (std is not None and mean <= std)


@functools.lru_cache(maxsize=None)
def _sequential(model: str) -> bool | None:
    from recbole.utils import ModelType

    if " + " in model:  # an ensemble of rows' runs: scored through a sequential loader if any member is one
        kinds = [_sequential(m) for m in model.split(" + ")]
        return None if None in kinds else any(kinds)
    try:
        return get_entry(model).cls.type == ModelType.SEQUENTIAL
    except Exception:  # an unknown model: its row failed to run anyway
        return None


def _selection(row):
    """The protocols under which the row's checkpoints were chosen on validation; None where either would
    choose the same ones (a model that is not sequential, trained without a teacher, stored before both
    protocols were recorded)."""
    return None if row.get("same_under_both") else tuple(row.get("protocols_selected") or ())


def _ratio(row, ref, protocol):
    if not ref or not row.get(protocol) or not ref.get(protocol) or _in_noise(ref, protocol):
        return None
    chosen = {_selection(row), _selection(ref)} - {None}
    if len(chosen) > 1:
        return None  # checkpoints chosen under two rules: a row stored before both protocols and a newer one
    if protocol == RECBOLE and _sequential(row["model"]) != _sequential(ref["model"]):
        return None  # RecBole's rule filters a general model's history and not a sequential one's: two tasks
    return row[protocol]["ndcg@10"][0] / ref[protocol]["ndcg@10"][0]


def _student_ref(row, same):
    if row["group"] not in ("distilled", "transfer", "student"):
        return None
    if row["student_ref"]:
        return next((r for r in same if r["label"] == row["student_ref"]), None)
    if row["group"] == "student":
        return row
    name = row["model"]
    if name.startswith("KD-"):
        name = ALIASES[name][0] if name in ALIASES else name[3:]
    return next((r for r in same if r["model"] == name and r["group"] == "student"), None)


def _teacher_ref(row, same):
    if row.get("member_of"):  # an ensemble's members, compared with the ensemble
        return next((r for r in same if r["label"] == row["member_of"]), None)
    if row["group"] == "teacher":
        return row
    if row["teacher_from"]:
        return next((r for r in same if r["label"] == row["teacher_from"]), None)
    if row["group"] in ("student", "distilled"):
        return next((r for r in same if r["group"] == "teacher"), None)
    return None


def _fmt(ms, digits=4):
    if not ms or ms[0] is None:
        return "-"
    if ms[1] is None:  # a single seed has no spread to show
        return f"{ms[0]:.{digits}f}"
    return f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"


def _machines_line(recs) -> str:
    """Where the stored cells ran, e.g. ``9 cells on Intel Xeon (2 cores, cpu, torch 2.13.0+cpu); 4 cells on
    NVIDIA H200 (16 cores, cuda, torch 2.11.0+cu130)``: cells merged from another machine keep their own."""
    counts = {}
    for rec in recs:
        m = rec.get("machine") or {}
        key = (m.get("gpu") or m.get("cpu") or "unknown machine", m.get("cores"), m.get("device", "cpu"), m.get("torch"))
        counts[key] = counts.get(key, 0) + 1
    def where(name, cores, device, torch):  # a part a cell did not record (e.g. converted cells) is left out
        parts = [f"{cores} cores" if cores else None, device, f"torch {torch}" if torch else None]
        return f"{name} ({', '.join(p for p in parts if p)})"

    return "; ".join(f"{n} cell{'s' if n > 1 else ''} on {where(*key)}"
                     for key, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def render(suite: dict, cells: list[Cell], records: dict, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    rows = summarize(cells, records, out)
    commit = git_commit()
    payload = {"suite": suite["name"], "suite_file": os.path.relpath(suite["_path"], out),
               "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "git_commit": commit, "machine": machine_info(), "rows": rows,
               "cells": [records[k] for k in sorted(records)]}
    write_json_atomic(os.path.join(out, "results.json"), payload)
    _write_csv(os.path.join(out, "results.csv"), cells, records)
    plots = _plots(rows, out)
    lines = [f"# Benchmark suite `{suite['name']}`", ""]
    if suite.get("description"):
        lines += [suite["description"].strip(), ""]
    lines += [
        f"Command: `python -m recbole_kd bench {os.path.relpath(suite['_path'])}`  ",
        "Protocol: RecBole's leave-one-out split by time, full ranking over all items, best-on-valid "
        "checkpoint (NDCG@10) evaluated on test; every cell is one CLI run. Each dataset's table is under one "
        "evaluation protocol (the one its cells selected with `filter_seen`, named in its heading), the other "
        "beside it: **filter-seen** removes every item the user saw before the target from the ranking (as the "
        "published SASRec / gSASRec / BERT4Rec figures do); **RecBole** is RecBole 1.2.1's own rule (general "
        "models: training history removed; sequential models: nothing removed).  ",
        f"Cells ran on: {_machines_line(records.values()) or 'no cell has run yet'}; report of commit {commit}.",
        "",
    ]
    for ds in dict.fromkeys(c.dataset for c in cells):
        ds_rows = [r for r in rows if r["dataset"] == ds]
        main = ds_rows[0]["protocol"] if ds_rows else FILTER_SEEN
        other = _other(main)
        pm, po = PROTOCOL_NAMES[main], PROTOCOL_NAMES[other]
        lines += [f"## {ds} (protocol: {pm})", "",
                  f"| group | row | model | seeds | test NDCG@10 ({pm}) | NDCG@10 ({po}) | Recall@10 | MRR@10 | params "
                  "| latency 256 users (ms) | s / epoch | epochs | vs student alone | vs teacher |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        legacy = superseded = raw = both = False
        for group in GROUPS:
            for row in (r for r in ds_rows if r["group"] == group):
                if row["status"] != "ok":
                    lines.append(f"| {group} | {row['label']} | {row['model']} | 0/{row['seeds_planned']} | "
                                 f"{row['status']} | | | | | | | | | |")
                    continue
                legacy = legacy or not row.get(main)
                raw = raw or bool(row.get("raw_top_k"))
                both = both or bool(row.get("same_under_both"))
                superseded = superseded or bool(row["superseded_seeds"])
                seeds = f"{len(row['seeds'])}/{row['seeds_planned']}"
                if row["superseded_seeds"]:
                    seeds += f" (+{len(row['superseded_seeds'])} RecBole-only)"

                def ratio(key, row=row, po=po):  # called within this iteration only
                    here = row.get(key)
                    text = f"{here:.3f}" if here else "n/a" if key in row.get("vs_noise", ()) else "-"
                    worst = row.get(key + "_worst")
                    if worst:
                        text += f" [{worst:.3f}]"
                    there = row.get(key + "_other")
                    return text + (f" ({po} {there:.3f})" if there else "")

                on = "" if row.get("devices", ["cpu"]) == ["cpu"] else f" ({'+'.join(row['devices'])})"
                o = row.get(other) or {}
                model = row["model"] + (f" ensemble x{len(row['ensemble_seeds'])}" if row.get("ensemble_seeds") else "")
                label = row["label"] + (" (raw top-K)" if row.get("raw_top_k") and "raw top-K" not in row["label"] else "")
                lines.append(
                    f"| {group} | {label} | {model} | {seeds} | {_fmt(row['ndcg@10'])} | "
                    f"{_fmt(o.get('ndcg@10'))} | {_fmt(row['recall@10'])} | {_fmt(row['mrr@10'])} | {row['num_params']:,} | {row['latency_ms']:.1f}{on} | "
                    f"{row['seconds_per_epoch']:.2f}{on} | {row['epochs']:.0f} | {ratio('vs_student_alone')} | "
                    f"{ratio('vs_teacher')} |")
        lines.append("")
        picked = [r for r in ds_rows if r.get("headline")]
        if picked:
            lines.append(f"Headline, chosen on validation (the best mean valid NDCG@10 ({pm}) among the rows compared "
                         "with the same student alone):")
            for r in picked:
                worst = r.get("vs_student_alone_worst")
                ratio_text = (f"{r['vs_student_alone']:.3f}x {r['vs_student_label']}" if r.get("vs_student_alone")
                              else f"no ratio to {r['vs_student_label']}")
                lines.append(f"- **{r['label']}**: valid NDCG@10 {_fmt(r['valid_ndcg'][main])}, test NDCG@10 "
                             f"{_fmt(r['ndcg@10'])}, {ratio_text}" + (f" (worst/best seed {worst:.3f})" if worst else ""))
            lines.append("")
        if legacy:
            lines += [f"Rows with `-` under {pm} were run before every cell recorded both protocols: their "
                      f"checkpoint was selected, and their metrics computed, under RecBole's protocol only; running "
                      "the suite again re-measures them. They have no ratio (`-`) to a row whose checkpoints were "
                      f"selected under {pm}: the two were chosen on validation under two rules.", ""]
        if both and main != RECBOLE:
            lines += [f"Rows of models that are not sequential and have no teacher ({', '.join(sorted({r['model'] for r in ds_rows if r.get('same_under_both')}))}) "
                      "stored before every cell recorded both protocols count under both: RecBole's full-sort "
                      "evaluation already removes their seen items as filter-seen does (re-running amazon-beauty-5core's "
                      "MF-S under both protocols gave its stored numbers to the last digit).", ""]
        if raw:
            lines += ["(raw top-K): distilled from the teacher's raw top-K (`kd_mask_seen: False`), which still holds "
                      "items the user has already seen (for a SASRec teacher mostly the item just consumed, at "
                      "rank 1).", ""]
        if superseded:
            lines += ["A seeds count marked `+N RecBole-only` leaves out N seeds stored before both protocols were "
                      "recorded: a row never averages them with newer seeds (their checkpoints were selected under "
                      "RecBole's protocol); running the suite again re-measures them.", ""]
        for title, name in plots.get(ds, []):
            lines += [f"![{title}]({name})", ""]
    if not plots and rows:
        lines += ["(plots skipped: matplotlib is not installed; `pip install recbole-kd[bench]`)", ""]
    lines += ["Ratios: NDCG@10 mean over seeds divided by the same dataset's student-alone row (for a "
              "distilled `KD-X`: the `X` row of group student, or `student_ref`) and teacher row (`teacher_from`, "
              "else the dataset's first teacher), both under the same protocol (the other protocol's ratio in "
              "parentheses); in square brackets, the row's worst seed over the student alone's best seed (a gain "
              "that holds seed for seed is above 1 there); n/a where that row's mean NDCG@10 is not above its standard deviation "
              "over seeds (a ratio to it would measure noise). Recall@10 and MRR@10 are under the table's protocol. "
              "Latency: median full-sort scoring time for 256 test users on "
              "the cell's machine; latency and s / epoch of rows run on a GPU are marked (cuda).", ""]
    write_text_atomic(os.path.join(out, "README.md"), "\n".join(lines))


def _write_csv(path, cells, records):
    per_protocol = [f"{m} ({p})" for p in PROTOCOLS for m in METRICS]
    cols = ["dataset", "label", "model", "group", "seed", "status", "protocol", *per_protocol, "num_params", "latency_ms",
            "train_seconds_per_epoch", "epochs_run", "train_seconds", "config_hash", "git_commit"]
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(cols)
    for c in cells:
        rec = records.get((c.dataset, c.label, c.seed))
        if rec is None:
            w.writerow([c.dataset, c.label, c.model, c.group, c.seed, f"skip: {c.skip}" if c.skip else "not run"]
                       + [""] * (len(cols) - 6))
            continue
        r = rec["result"]
        tables = [protocol_result(r, p) or {} for p in PROTOCOLS]
        w.writerow([c.dataset, c.label, c.model, c.group, c.seed, "ok", r.get("protocol") or RECBOLE,
                    *(t.get(m) for t in tables for m in METRICS),
                    r["num_params"], 1000 * r["latency_seconds"], r["train_seconds_per_epoch"], r["epochs_run"],
                    r["train_seconds"], rec["config_hash"], rec["git_commit"]])
    write_text_atomic(path, buf.getvalue())
