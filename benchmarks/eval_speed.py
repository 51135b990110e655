"""Full-sort evaluation time of a general model (one pass over the validation users), under
RecBole's batching rule for general models (``eval_batch_size // item_num`` users a batch: one user
on a catalogue larger than eval_batch_size) and under ours (``eval_batch_size`` users a batch, as
RecBole does for sequential models; recbole_kd/compat.py (k)). Each is timed with our trainer (both
protocols ranked) and with RecBole's own trainer, alternately, ``--rounds`` times, in one process,
so that load on a shared CPU hits every configuration alike. The model is untrained: evaluation
time does not depend on the weights.

    OMP_NUM_THREADS=1 python benchmarks/eval_speed.py --dataset amazon-beauty-5core --data_path ../shared/datasets
"""
from __future__ import annotations

import argparse
import statistics
import time

from common import fail, write_outputs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--data_path", default=None)
    ap.add_argument("--model", default="MF-S", help="a general (non-sequential) model")
    ap.add_argument("--eval_batch_size", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if args.rounds < 1 or args.eval_batch_size < 1:
        fail("--rounds and --eval_batch_size must be >= 1")

    import torch
    from recbole.trainer import Trainer
    from recbole.utils import ModelType, init_seed

    from recbole_kd.config import build_config
    from recbole_kd.quick_start import prepare
    from recbole_kd.registry import get_entry, get_trainer

    def loaders(eval_batch_size):
        overrides = {"eval_batch_size": eval_batch_size, "show_progress": False, "state": "WARNING"}
        if args.data_path:
            overrides["data_path"] = args.data_path
        config = build_config(args.model, args.dataset, overrides=overrides)
        if config["MODEL_TYPE"] == ModelType.SEQUENTIAL:
            fail(f"--model {args.model} is sequential; this measures general models' evaluation batching")
        init_seed(2020, True)
        _, train_data, valid_data, _ = prepare(config)
        return config, train_data, valid_data

    config, train_data, ours_valid = loaders(args.eval_batch_size)
    item_num = train_data._dataset.item_num
    recbole_users = max(args.eval_batch_size // item_num, 1)
    # RecBole's rule expressed in our units: the same number of users a batch
    _, _, recbole_valid = loaders(recbole_users)
    model = get_entry(args.model).cls(config, train_data._dataset)
    ours_cls = get_trainer(config["MODEL_TYPE"], args.model)
    cells = {
        ("recbole_batching", "recbole_trainer"): (recbole_valid, Trainer),
        ("recbole_batching", "recbole_kd_trainer"): (recbole_valid, ours_cls),
        ("users_batching", "recbole_trainer"): (ours_valid, Trainer),
        ("users_batching", "recbole_kd_trainer"): (ours_valid, ours_cls),
    }
    times = {key: [] for key in cells}
    ndcg = {}
    for _ in range(args.rounds):
        for key, (valid, trainer_cls) in cells.items():
            trainer = trainer_cls(config, model)
            t0 = time.perf_counter()
            result = trainer.evaluate(valid, load_best_model=False)
            times[key].append(time.perf_counter() - t0)
            ndcg[key] = float(dict(result)["ndcg@10"])
    rows = []
    for (batching, trainer), secs in times.items():
        valid = cells[(batching, trainer)][0]
        rows.append({
            "batching": batching, "trainer": trainer, "users_per_batch": int(valid.step),
            "batches": len(valid), "seconds": secs, "median_seconds": statistics.median(secs),
            "valid_ndcg@10": ndcg[(batching, trainer)],
        })
    base = {r["trainer"]: r["median_seconds"] for r in rows if r["batching"] == "recbole_batching"}
    for r in rows:
        r["speedup_vs_recbole_batching"] = base[r["trainer"]] / r["median_seconds"]
    name = f"eval_speed_{args.dataset}_{args.model}"
    lines = [
        f"Full-sort evaluation of the validation users, {args.model} on {args.dataset} ({item_num} items), "
        f"eval_batch_size={args.eval_batch_size}, torch threads {torch.get_num_threads()}, "
        f"median of {args.rounds} alternating rounds. `recbole_batching`: RecBole 1.2.1's rule for general "
        "models (eval_batch_size // item_num users a batch); `users_batching`: eval_batch_size users a batch "
        "(recbole_kd/compat.py (k)). The recbole_kd trainer ranks every batch under both protocols.",
        "",
        "| batching | trainer | users / batch | batches | seconds (median) | speed-up vs RecBole's batching | valid NDCG@10 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['batching']} | {r['trainer']} | {r['users_per_batch']} | {r['batches']} | "
                     f"{r['median_seconds']:.2f} | {r['speedup_vs_recbole_batching']:.1f}x | {r['valid_ndcg@10']:.4f} |")
    write_outputs(name, {"dataset": args.dataset, "model": args.model, "item_num": item_num,
                         "eval_batch_size": args.eval_batch_size, "rounds": args.rounds, "rows": rows},
                  "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
