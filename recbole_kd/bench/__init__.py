"""``python -m recbole_kd bench SUITE.yaml``: datasets x models x seeds through the CLI, resumable.

Every cell is one ``python -m recbole_kd --model=... --dataset=...`` run (the path users use: same
split, same evaluator), in its own work folder with ``--resume=auto``. A finished cell is stored
as ``cells/<id>.json`` (atomically) the moment it ends, so re-running the suite skips finished
cells, re-runs failed ones, and an interrupted cell continues from its last epoch checkpoint.
Cells run elsewhere (e.g. on a GPU machine) merge by copying their ``cells/*.json`` in and
running ``--render-only``; ``--pack DIR`` (there) packs new cells, logs and teacher checkpoints into files
within given limits (``--max-file-mib``, ``--max-files``, ``--max-total-mib``) and ``--merge DIR`` (here)
merges them back (docs/benchmarks.md, "On a machine without internet"). ``--only
PATTERN`` (repeatable) runs a subset of the cells (shell pattern on label, model, dataset or cell id); the
report still lists every row, unrun ones as such. ``--data_path DIR`` reads every dataset from ``DIR``
instead of the suite's ``data_path`` (e.g. a copy of the data on another machine); the cells' settings
and ids stay those of the suite, so their results merge with cells run from the suite as written.

Suite file::

    name: quick-ml-100k
    seeds: [2020, 2021, 2022]
    settings: {epochs: 30}              # every cell
    datasets:
      ml-100k: {}                       # settings for this dataset's cells
      amazon-beauty-5core: {data_path: ../shared/datasets}
    models:
      - model: SASRec-L
        group: teacher                  # baseline | teacher | student | distilled | transfer
        seeds: [2020]                   # default: the suite's seeds
        settings: {hidden_size: 128}
        minutes: 5                      # estimate for --dry-run until a cell has run ({dataset: minutes} too)
      - model: SASRec-L
        label: SASRec-L x3
        group: teacher
        ensemble: true                  # teacher rows with 2+ seeds: the ensemble of one run per seed,
                                        # evaluated once as one model; its members are the row "SASRec-L x3 member"
      - model: SASRec-S
        group: student
      - label: SASRec-L x3 + SASRec-S
        group: teacher
        ensemble: [SASRec-L x3, SASRec-S]  # the runs of rows above it (models may differ), as one model
      - model: KD-SASRec
        label: KD-SASRec (rrd)          # default: the model name; unique per suite
        group: distilled
        settings: {kd_losses: {rrd: 1.0}}
        teacher_from: SASRec-L          # use that row's checkpoint (its first seed; an ensemble: every member's)
      - model: SASRec
        group: baseline
        skip: {ml-1m: "RecBole's SASRec needs ~20 min per epoch on 2 CPU cores"}

Output folder: ``results.json``, ``results.csv``, ``README.md`` (one table per dataset, rows
grouped baseline / teacher / student / distilled / transfer, ratio columns "vs student alone"
and "vs teacher") and ``plots/*.png`` (NDCG@10 vs parameters and vs latency with the Pareto
front, KD gain per distilled row).

Layout: ``suite`` (the suite file, ``Cell``, expansion and checks), ``records`` (stored cells),
``plots`` (Pareto front, matplotlib), ``report`` (tables, CSV, README), ``runner`` (commands, processes,
scheduling, ``run_suite``), ``transport`` (``--pack`` / ``--merge``) and ``cli`` (``main``); each module
imports only those before it in this list.
This package exports only the names below; the rest is imported from its module.
"""
from recbole_kd.bench.cli import main
from recbole_kd.bench.runner import run_suite
from recbole_kd.bench.suite import Cell, SuiteError, expand, load_suite, output_dir

__all__ = ["Cell", "SuiteError", "expand", "load_suite", "main", "output_dir", "run_suite"]
