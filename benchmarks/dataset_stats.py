"""Statistics of every supported dataset as our loader sees them (after RecBole's loading and filtering
with the dataset yamls in recbole_kd/configs/datasets/), for datasets/README.md.

    python benchmarks/dataset_stats.py --data_path ../shared/datasets [--converted_path DIR] [--datasets a,b]

The raw datasets (lastfm-hetrec, mind-small-sub) are converted first, from DATA_PATH/NAME/raw into a
scratch folder, and each converter's report (counts, ties, drops) goes into the output; or, with
--converted_path DIR, read from DIR as made by
    python -m recbole_kd.datasets convert lastfm --input ../shared/datasets/lastfm-hetrec/raw --output DIR
    python -m recbole_kd.datasets convert mind --input ../shared/datasets/mind-small-sub/raw --output DIR

Each dataset goes through ``recbole_kd.config.build_config`` (model SASRec-S, so the sequential
dataset class and the package defaults apply) and ``recbole.data.create_dataset``. Writes
benchmarks/results/dataset_stats.json and .md (with the command and the machine). Also checks:
  * cdr-*: in RecBole's time order (stable sort by TIME_FIELD=split) every user's last row is the
    row the file marks test_original, i.e. leave-one-out tests the published test item;
  * datasets with rm_dup_inter (ciao): the rows RecBole keeps, in its order, are exactly the file's
    rows minus later repeats of a (user, item) pair, in file order (its pre-dedup sort moved nothing).
And, per dataset, how cold its test items are under the benchmark protocol (RecBole's leave-one-out
by time, through the same ``prepare`` as a training run): the share of test items that never occur
in the training data, on the full training data and in the low-resource setting (train_fraction 0.2),
and the share that has item text (the text transfer mechanism's only signal for an unseen item).
An ID-based model has learned nothing about an unseen test item (its embedding is still the random
initialisation), whatever it transfers through shared encoders.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

# name, domain, where (shared: the benchmark folder; converted: the converters' output folder)
DATASETS = [
    ("ml-100k", "movies (embedded in recbole)", "embedded"),
    ("ml-1m", "movies", "shared"),
    ("amazon-beauty-5core", "e-commerce", "shared"),
    ("amazon-sports-5core", "e-commerce", "shared"),
    ("amazon-toys-5core", "e-commerce", "shared"),
    ("ciao", "social (reviews)", "shared"),
    ("lastfm-hetrec", "social (music)", "converted"),  # converter format: lastfm
    ("mind-small-sub", "news", "converted"),  # converter format: mind
    ("cdr-cloth-sport-cloth", "e-commerce (cross-domain)", "shared"),
    ("cdr-cloth-sport-sport", "e-commerce (cross-domain)", "shared"),
    ("cdr-electronic-phone-electronic", "e-commerce (cross-domain)", "shared"),
    ("cdr-electronic-phone-phone", "e-commerce (cross-domain)", "shared"),
]


CONVERTER = {"lastfm-hetrec": "lastfm", "mind-small-sub": "mind"}


def convert_raw(name: str, data_path: str, scratch: str) -> tuple[str, list[str]]:
    """Convert DATA_PATH/NAME/raw with the project's converter into scratch; (data_path, report lines)."""
    from recbole_kd.datasets import common
    from recbole_kd.datasets.__main__ import _converter

    out = os.path.join(scratch, "converted")
    os.makedirs(out, exist_ok=True)
    with common.AtomicDatasetDir(out, name) as tmp:
        report = _converter(CONVERTER[name]).convert(os.path.join(data_path, name, "raw"), tmp, name)
    lines = report.lines(name, os.path.join("<scratch>", name))[1:]  # the scratch path is not a result
    return out, [line.strip() for line in lines]


def time_ties(dataset) -> float:
    """Share of interactions whose time value another interaction of the same user shares, as RecBole sorts
    them: a float time field becomes a float32 tensor before the sort (integers above 2**24, e.g. seconds
    since 1970, round to steps of 64-128 s there). Among tied rows the file order decides which is held out."""
    import numpy as np

    users = dataset.inter_feat[dataset.uid_field].to_numpy().astype(np.int64)
    times = dataset.inter_feat[dataset.time_field].to_numpy().astype(np.float32)
    _, inverse, counts = np.unique(np.stack([users.astype(np.float64), times.astype(np.float64)]), axis=1,
                                   return_inverse=True, return_counts=True)
    return float((counts[inverse.ravel()] > 1).mean()) if len(users) else 0.0


def count_rows(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip()) - 1


def _tokens(dataset, field):
    ids = dataset.inter_feat[field].to_numpy()
    return dataset.field2id_token[field][ids]


def check_cdr_test_rows(dataset) -> dict:
    import numpy as np
    import pandas as pd

    time_field = dataset.time_field
    order = np.argsort(dataset.inter_feat[time_field].to_numpy(), kind="stable")
    df = pd.DataFrame({"u": dataset.inter_feat[dataset.uid_field].to_numpy()[order],
                       "s": _tokens(dataset, time_field)[order]})
    last = df.groupby("u", sort=False).tail(1)
    ok = int((last["s"] == "test_original").sum())
    return {"users_whose_last_row_is_the_marked_test_row": ok, "users": int(len(last))}


def check_dedup_order(dataset, inter_path: str) -> dict:
    """RecBole's kept rows (in its order) vs the file minus later repeats (in file order)."""
    uid, iid = dataset.uid_field, dataset.iid_field
    with open(inter_path, encoding="utf-8") as f:
        names = [c.split(":")[0] for c in f.readline().rstrip("\n").split("\t")]
        ui = (names.index(uid), names.index(iid))
        seen, expected = set(), []
        for line in f:
            cols = line.rstrip("\n").split("\t")
            key = (cols[ui[0]], cols[ui[1]])
            if key not in seen:
                seen.add(key)
                expected.append(key)
    got = list(zip(_tokens(dataset, uid), _tokens(dataset, iid)))
    return {"rows_in_file_order_after_dropping_repeats": got == expected, "kept": len(got), "expected": len(expected)}


def stats_for(name: str, data_path: str, scratch: str) -> dict:
    from recbole_kd.compat import create_dataset  # never unpickles a saved dataset

    from recbole_kd.config import build_config

    overrides = {"show_progress": False, "checkpoint_dir": scratch, "save_dataset": False}
    if data_path:  # an embedded dataset (ml-100k) is read from the recbole wheel
        overrides["data_path"] = data_path
    t0 = time.perf_counter()
    config = build_config("SASRec-S", name, overrides=overrides)
    dataset = create_dataset(config)
    seconds = time.perf_counter() - t0
    users = dataset.user_num - 1  # id 0 is [PAD]
    items = dataset.item_num - 1
    inters = dataset.inter_num
    inter_path = os.path.join(config["data_path"], f"{name}.inter")
    row = {
        "dataset": name,
        "users": users,
        "items": items,
        "interactions": inters,
        "density": inters / (users * items),
        "mean_sequence_length": inters / users,
        "file_rows": count_rows(inter_path),
        "time_field": config["TIME_FIELD"],
        "time_ties": time_ties(dataset),
        "load_seconds": round(seconds, 1),
        "checks": {},
    }
    if name.startswith("cdr-"):
        row["checks"]["cdr_test_row"] = check_cdr_test_rows(dataset)
    if config["rm_dup_inter"]:
        row["checks"]["dedup_order"] = check_dedup_order(dataset, inter_path)
    row["test_items"] = test_item_stats(name, overrides)
    row["filter_seen"] = bool(config["filter_seen"])
    return row


def test_item_stats(name: str, overrides: dict) -> dict:
    """Test users, and the share of their test items unseen in training (full and 20 %) or with text."""
    import numpy as np

    from recbole_kd.config import build_config
    from recbole_kd.quick_start import prepare

    out = {}
    for key, fraction in (("unseen_full", None), ("unseen_20", 0.2)):
        config = build_config("MF-S", name, overrides={**overrides, "train_fraction": fraction})
        dataset, train_data, valid_data, test_data = prepare(config)
        if fraction is None:
            out["repeat_targets"] = {phase: repeat_share(loader) for phase, loader in
                                     (("valid", valid_data), ("test", test_data))}
        iid = dataset.iid_field
        seen = np.zeros(dataset.item_num, dtype=bool)
        seen[train_data.dataset.inter_feat[iid].numpy()] = True
        test_items = test_data.dataset.inter_feat[iid].numpy()
        out["test_users"] = int(len(test_items))
        out[key] = float((~seen[test_items]).mean())
        if fraction is None:
            out["with_text"] = _text_share(config, dataset, test_items)
    return out


def repeat_share(loader) -> float:
    """Share of an evaluation loader's targets the user had already interacted with before it (the items the
    filter_seen protocol removes from the ranking: a repeated target would be unrankable there)."""
    import numpy as np

    ds, seen = loader.dataset, loader.seen_items
    users = ds.inter_feat[ds.uid_field].numpy().astype(np.int64)
    targets = ds.inter_feat[ds.iid_field].numpy().astype(np.int64)
    counts = (seen.indptr[1:] - seen.indptr[:-1]).numpy()
    keys = np.repeat(np.arange(len(counts), dtype=np.int64), counts) * seen.n_items + seen.items.numpy()
    return float(np.isin(users * seen.n_items + targets, keys).mean()) if len(users) else 0.0


def _text_share(config, dataset, test_items):
    from recbole_kd.config import ConfigError
    from recbole_kd.transfer.text import item_texts

    if not os.path.isfile(os.path.join(config["data_path"], f"{config['dataset']}.item")):
        return None
    try:
        texts = item_texts(config, dataset)
    except ConfigError:  # an item file without the text columns
        return None
    return float(sum(1 for i in test_items if texts[i]) / len(test_items))


def to_markdown(result: dict) -> str:
    lines = [
        "# Dataset statistics (as loaded by recbole-kd)",
        "",
        f"Command: `{result['command']}`",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in result["machine"].items()),
        "",
        f"Date: {result['date']}",
        "",
        "After RecBole's loading and filtering with our dataset yamls (model SASRec-S); "
        "`file rows` = data lines of the `.inter` file. Mean sequence length = interactions / users. "
        "`time ties` = share of interactions that share their time value with another of the same user, "
        "as RecBole sorts them (a float time field is a float32 tensor then: seconds since 1970 round to "
        "64-128 s steps); among tied rows the file order decides which one is held out.",
        "",
        "| dataset | domain | users | items | interactions | density | mean seq. length | file rows | time field | time ties | load s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in result["datasets"]:
        if "error" in r:
            lines.append(f"| {r['dataset']} | {r['domain']} | error: {r['error']} ||||||||")
            continue
        lines.append(
            f"| {r['dataset']} | {r['domain']} | {r['users']:,} | {r['items']:,} | {r['interactions']:,} | "
            f"{r['density']:.4%} | {r['mean_sequence_length']:.2f} | {r['file_rows']:,} | {r['time_field']} | "
            f"{_ties(r)} | {r['load_seconds']} |"
        )
    lines += [
        "",
        "Test items under the benchmark protocol (leave-one-out by time; `20 %` = the low-resource setting, "
        "train_fraction 0.2, same test users): the share never seen in training (an ID-based model has "
        "learned nothing about such an item: its embedding is still the random initialisation), and the share "
        "with item text in the `.item` file.",
        "",
        "| dataset | test users | test item unseen in training (full) | unseen (20 %) | test item has text |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in result["datasets"]:
        t = r.get("test_items")
        if t:
            text = "no item text" if t["with_text"] is None else f"{t['with_text']:.1%}"
            lines.append(f"| {r['dataset']} | {t['test_users']:,} | {t['unseen_full']:.1%} | {t['unseen_20']:.1%} | {text} |")
    lines += [
        "",
        "Repeat consumption: the share of valid and test targets the user had already interacted with before "
        "(the `filter_seen` protocol removes every seen item from the ranking, so such a target would be "
        "unrankable). Where either share is above 1 %, the dataset's yaml (`recbole_kd/configs/datasets/`) sets "
        "`filter_seen: False` and its numbers are under RecBole's protocol.",
        "",
        "| dataset | valid targets already seen | test targets already seen | protocol (dataset yaml) |",
        "|---|---:|---:|---|",
    ]
    for r in result["datasets"]:
        rep = (r.get("test_items") or {}).get("repeat_targets")
        if rep:
            protocol = "filter_seen" if r.get("filter_seen", True) else "RecBole's (filter_seen: False)"
            lines.append(f"| {r['dataset']} | {rep['valid']:.2%} | {rep['test']:.2%} | {protocol} |")
    converted = [r for r in result["datasets"] if r.get("conversion")]
    if converted:
        lines += ["", "Conversions (each raw dataset converted by this command with the project's converter; its report):", ""]
        for r in converted:
            lines += [f"- {r['dataset']} (`python -m recbole_kd.datasets convert {CONVERTER[r['dataset']]}`):"]
            lines += [f"  - {line}" for line in r["conversion"]]
    checks = [(r["dataset"], k, v) for r in result["datasets"] for k, v in r.get("checks", {}).items()]
    if checks:
        lines += ["", "Checks:", ""]
        lines += [f"- {d}: {k}: {json.dumps(v)}" for d, k, v in checks]
    return "\n".join(lines) + "\n"


def _ties(row: dict) -> str:
    return "-" if row.get("time_ties") is None else f"{row['time_ties']:.1%}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_path", required=True, help="the shared benchmark folder (../shared/datasets)")
    parser.add_argument("--converted_path", help="read lastfm-hetrec and mind-small-sub from this converters' output "
                        "folder instead of converting DATA_PATH/NAME/raw first")
    parser.add_argument("--datasets", help="comma-separated subset (default: all)")
    parser.add_argument("--out", default=os.path.join(HERE, "results"), help="folder for dataset_stats.{json,md}")
    args = parser.parse_args(argv)

    from recbole_kd.utils import machine_info, write_json_atomic

    wanted = set(args.datasets.split(",")) if args.datasets else None
    rows = []
    with tempfile.TemporaryDirectory(prefix="rkd-stats-") as scratch:
        for name, domain, where in DATASETS:
            if wanted is not None and name not in wanted:
                continue
            path = {"shared": args.data_path, "converted": args.converted_path, "embedded": None}[where]
            conversion = None
            print(f"{name} ...", flush=True)
            try:
                if where == "converted" and not path:
                    path, conversion = convert_raw(name, args.data_path, scratch)
                row = stats_for(name, path, scratch)
            except Exception as exc:  # report and go on: one missing dataset should not hide the others
                rows.append({"dataset": name, "domain": domain, "error": f"{type(exc).__name__}: {exc}"})
                print(f"  error: {exc}", flush=True)
                continue
            row["domain"] = domain
            if conversion is not None:
                row["conversion"] = conversion
            rows.append(row)
            print(f"  {row['users']:,} users, {row['items']:,} items, {row['interactions']:,} interactions "
                  f"({row['load_seconds']}s) {json.dumps(row['checks']) if row['checks'] else ''}", flush=True)
    result = {
        "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__)] + list(sys.argv[1:] if argv is None else argv)),
        "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "datasets": rows,
    }
    os.makedirs(args.out, exist_ok=True)
    write_json_atomic(os.path.join(args.out, "dataset_stats.json"), result)
    md = os.path.join(args.out, "dataset_stats.md")
    with open(md + ".tmp", "w") as f:
        f.write(to_markdown(result))
    os.replace(md + ".tmp", md)
    print(f"wrote {os.path.join(args.out, 'dataset_stats.json')} and {md}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
