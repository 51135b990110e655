"""Make a pretrained-teacher entry of the zoo shipped with recbole-kd from a trained checkpoint.

    python benchmarks/export_pretrained_teacher.py CHECKPOINT.pth --result RUN.json --data_path=../shared/datasets
        [--name=NAME] [--out=recbole_kd/zoo/pretrained] [--command=CMD --commit=SHA] [--note=TEXT] [--licence=TEXT]

RUN.json is the run's record: a bench cell (benchmarks/results/<suite>/cells/<id>.json: it names the
command and the commit) or the run's --result_file (then give --command and --commit). Writes
<out>/<name>/weights.pth (the model's tensors and settings, no optimizer state; loads with
torch.load(weights_only=True)) and <out>/<name>/card.json (data fingerprint computed from the atomic
files in --data_path, settings, metrics under both protocols, provenance, licence note). The entry is
put in place only after its weights, evaluated on that data, reproduce the record's valid and test
metrics under both protocols. Takes as long as one evaluation of the model on valid and test.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from recbole_kd.checkpoint import CheckpointError  # noqa: E402
from recbole_kd.errors import USER_ERRORS  # noqa: E402
from recbole_kd.zoo import PRETRAINED_DIR, card_text  # noqa: E402
from recbole_kd.zoo.export import export_teacher  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--result", required=True, help="the run's record (bench cell or --result_file JSON)")
    parser.add_argument("--data_path", required=True, help="folder holding <dataset>/<dataset>.inter")
    parser.add_argument("--name", help="entry name (default: <model>-<dataset>)")
    parser.add_argument("--out", default=PRETRAINED_DIR, help="zoo folder (default: the shipped one)")
    parser.add_argument("--command", help="the command that trained it (default: from a bench cell)")
    parser.add_argument("--commit", help="the commit it was trained at (default: from a bench cell)")
    parser.add_argument("--note", help="a sentence for the card (e.g. how it compares with a student)")
    parser.add_argument("--licence", help="the card's licence note (default: a generic note naming the dataset)")
    args = parser.parse_args(argv)
    try:
        with open(args.result, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError) as exc:
        print(f"export: error: cannot read run record {args.result} ({type(exc).__name__})", file=sys.stderr)
        return 2
    shown = os.path.relpath(os.path.abspath(args.result), REPO)
    shown = shown if not shown.startswith("..") else os.path.abspath(args.result)
    try:
        card = export_teacher(args.checkpoint, record, args.data_path, out_root=args.out, name=args.name,
                              command=args.command, commit=args.commit, record_path=shown, note=args.note,
                              licence=args.licence)
    except (CheckpointError, *USER_ERRORS) as exc:
        print(f"export: error: {exc}", file=sys.stderr)
        return 2
    print(card_text(card))
    return 0


if __name__ == "__main__":
    sys.exit(main())
