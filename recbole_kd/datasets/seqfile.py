"""SASRec-style sequence text files -> RecBole ``.inter``.

Input: one user per line, ``user item1 item2 ...`` (whitespace separated, items in time order), as in
the SASRec / S3-Rec data files. A user may also appear on several lines, in particular one
``user item`` pair per line: their items are appended in file order. Blank lines are skipped.

Output ``NAME.inter``: ``user_id:token  item_id:token  timestamp:float`` where ``timestamp`` is the
item's 0-based position in the user's sequence (the file has no times; position is the order the file
states). Repeated items are kept: the sequence is the data. Rows follow the file; ``timestamp`` carries
each user's order (RecBole sorts by it, stably).
"""
from __future__ import annotations

import os

from recbole_kd.datasets.common import AtomicWriter, ConversionError, Report, read_lines, where

FORMAT = "seqfile"
DESCRIPTION = "SASRec-style text file: 'user item1 item2 ...' per line (or 'user item' pairs) -> .inter"


def default_name(input_path: str) -> str:
    base = os.path.basename(os.path.normpath(input_path))
    return base.split(".")[0] or base


def convert(input_path: str, out_dir: str, name: str) -> Report:
    if os.path.isdir(input_path):
        raise ConversionError(f"{input_path}: is a folder; seqfile expects the sequence text file itself")
    report = Report()
    position: dict[str, int] = {}
    items: set[str] = set()
    n = 0
    with AtomicWriter(os.path.join(out_dir, f"{name}.inter"), ["user_id:token", "item_id:token", "timestamp:float"]) as out:
        for lineno, text in read_lines(input_path):
            tokens = text.split()
            if not tokens:
                if text:
                    report.drop("whitespace-only lines")
                continue
            if len(tokens) < 2:
                raise ConversionError(
                    f"{where(input_path, lineno)}: expected 'user item [item ...]', found only {tokens[0]!r}"
                )
            user = tokens[0]
            pos = position.get(user, 0)
            for item in tokens[1:]:
                out.write((user, item, pos))
                items.add(item)
                pos += 1
                n += 1
            position[user] = pos
    if n == 0:
        raise ConversionError(f"{input_path}: no interactions found (empty file?)")
    report.counts.update(users=len(position), items=len(items), interactions=n)
    return report
