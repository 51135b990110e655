"""Fast pre-check of RecBole atomic files, so a malformed file is one clear line, not a pandas traceback.

RecBole 1.2.1 (``Dataset._load_feat``) reads the header with ``readline()`` and ``split(field_separator)``,
unpacks each column as ``name:type`` and looks the type up in ``FeatureType``; then it parses the rows
with ``pandas.read_csv(engine="python")``, which is Python's csv reader in strict mode (``"`` quoting),
and converts ``float`` columns with numpy. A bad header or a non-numeric float then fails with a
traceback, a line with too many columns fails with "Expected N fields in line M", and a line with
too few is silently padded with NaN (worse: with exactly one extra column pandas shifts the row).

:func:`validate_atomic_file` streams the file once with the same csv dialect and reports the first
problem as :class:`DataValidationError` naming file, line and column:

* header: a column that is not ``name:type``, an unknown type, a byte-order mark;
* rows: a column count different from the header (blank lines are skipped, as pandas does);
* values: a ``float`` column whose value pandas cannot read as a number (empty and pandas' NA
  spellings are allowed: RecBole fills them), a ``float_seq`` element ``float()`` cannot read;
* quoting RecBole's csv reader rejects, and text that is not valid in the configured encoding.

Cost: about 1 s for ml-1m (1,000,209 lines, one float column checked) on one core; see datasets/README.md.
"""
from __future__ import annotations

import csv
import os

from recbole_kd.errors import DataValidationError  # noqa: F401  (also importable from here)

FEATURE_TYPES = ("token", "token_seq", "float", "float_seq")
ATOMIC_SUFFIXES = ("inter", "user", "item", "net")

# strings pandas reads as NaN by default (pandas._libs.parsers.STR_NA_VALUES)
_NA = {
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
}


def _short(value: str, limit: int = 40) -> str:
    if len(value) > limit:
        value = value[:limit] + "..."
    return repr(value)


def _is_number(value: str) -> bool:
    """What pandas' float64 conversion accepts in a column of numbers: ``float()`` syntax or an NA string.
    (``True``/``False`` pass pandas only when the whole column is boolean; they are refused here.)"""
    if value in _NA:
        return True
    try:
        float(value)
        return True
    except ValueError:
        return value.strip() in _NA


def _decoded(f, encoding: str, path: str, counter: list):
    """Lines of a binary file decoded one by one, so that an encoding error names its line."""
    for raw in f:
        counter[0] += 1
        try:
            yield raw.decode(encoding)
        except UnicodeDecodeError as exc:
            raise DataValidationError(
                f"{path} line {counter[0]}: not valid {encoding} text (byte {raw[exc.start]:#04x} at offset {exc.start})"
            ) from None


def parse_header(path: str, header: str, field_separator: str = "\t") -> list[tuple[str, str]]:
    """``[(name, type), ...]`` exactly as RecBole splits the header line, or DataValidationError."""
    if header.startswith("\ufeff"):
        raise DataValidationError(
            f"{path} line 1, column 1: the file starts with a byte-order mark (RecBole would read the "
            f"column name as {_short(header.split(field_separator)[0])}); save it as UTF-8 without BOM"
        )
    if not header.strip():
        raise DataValidationError(f"{path} line 1: the header line is empty; expected name:type columns")
    columns = []
    for i, raw in enumerate(header.split(field_separator), 1):
        parts = raw.split(":")
        if len(parts) != 2 or not parts[0]:
            raise DataValidationError(
                f"{path} line 1, column {i} ({_short(raw)}): header column is not 'name:type' "
                f"(types: {', '.join(FEATURE_TYPES)})"
            )
        name, ftype = parts
        if ftype not in FEATURE_TYPES:
            raise DataValidationError(
                f"{path} line 1, column {i} ({name}): unknown type {_short(ftype)} (one of {', '.join(FEATURE_TYPES)})"
            )
        columns.append((name, ftype))
    return columns


def validate_atomic_file(
    path: str,
    field_separator: str = "\t",
    seq_separator: str = " ",
    encoding: str = "utf-8",
    columns: set | None = None,
) -> int:
    """Check one atomic file; return the number of data rows. ``columns``: the names whose values are
    checked (those RecBole will load); ``None`` checks every column. The header and the column count of
    every line are always checked (pandas parses whole lines)."""
    counter = [0]
    with open(path, "rb") as f:
        lines = _decoded(f, encoding, path, counter)
        try:
            header = next(lines)
        except StopIteration:
            raise DataValidationError(f"{path} line 1: the file is empty; expected a name:type header") from None
        # RecBole reads the header in text mode (universal newlines), then drops the line ending
        header = header[:-2] if header.endswith("\r\n") else header[:-1] if header.endswith("\n") else header
        fields = parse_header(path, header, field_separator)
        ncol = len(fields)
        floats = [i for i, (n, t) in enumerate(fields) if t == "float" and (columns is None or n in columns)]
        float_seqs = [i for i, (n, t) in enumerate(fields) if t == "float_seq" and (columns is None or n in columns)]
        reader = csv.reader(lines, delimiter=field_separator, quotechar='"', doublequote=True, strict=True)
        rows = 0
        try:
            for row in reader:
                if not row:
                    continue
                if len(row) != ncol:
                    _wrong_count(path, counter[0], row, fields)
                for i in floats:
                    v = row[i]
                    if not _is_number(v):
                        _bad_value(path, counter[0], i, fields[i], v, "is not a number")
                for i in float_seqs:
                    for v in row[i].split(seq_separator):
                        if v:
                            try:
                                float(v)
                            except ValueError:
                                _bad_value(path, counter[0], i, fields[i], v, "is not a number (in a float_seq)")
                rows += 1
        except csv.Error as exc:
            if "field larger than field limit" in str(exc):
                raise DataValidationError(
                    f"{path} line {counter[0]}: a value is longer than {csv.field_size_limit():,} characters, the "
                    "limit of Python's csv reader, which RecBole's loader (pandas, python engine) uses; shorten it"
                ) from None
            raise DataValidationError(f"{path} line {counter[0]}: malformed quoting: {exc}") from None
    return rows


def _wrong_count(path, lineno, row, fields):
    ncol = len(fields)
    if len(row) < ncol:
        name, ftype = fields[len(row)]
        raise DataValidationError(
            f"{path} line {lineno}, column {len(row) + 1} ({name}:{ftype}): missing; the line has {len(row)} "
            f"columns, the header {ncol}"
        )
    raise DataValidationError(
        f"{path} line {lineno}, column {ncol + 1}: unexpected extra column {_short(row[ncol])}; the line has "
        f"{len(row)} columns, the header {ncol}"
    )


def _bad_value(path, lineno, i, field, value, what):
    name, ftype = field
    raise DataValidationError(f"{path} line {lineno}, column {i + 1} ({name}:{ftype}): {_short(value)} {what}")


# -------------------------------------------------------------------------------------------------
def _loaded_columns(config, source: str):
    """Columns of ``source`` RecBole loads under ``config`` (``None``: all of them).

    A file RecBole does not load at all (e.g. ``.net`` without ``additional_feat_suffix``, or a source
    missing from ``load_col``) is still checked, in every column: it is part of the dataset."""
    load_col = config["load_col"]
    unload_col = config["unload_col"] or {}
    if load_col is None or source not in load_col or load_col[source] == "*":
        cols = None
    else:
        cols = set(load_col[source])
    if cols is None and source in unload_col:
        return _AllBut(set(unload_col[source]))
    return cols


class _AllBut(set):
    """A column filter meaning 'every column except these'."""

    def __contains__(self, item):
        return not set.__contains__(self, item)


def dataset_files(config) -> list[tuple[str, str]]:
    """``(path, source)`` for every atomic file of the configured dataset that exists."""
    folder = config["data_path"]
    dataset = config["dataset"]
    files = []
    if config["benchmark_filename"]:
        for part in config["benchmark_filename"]:
            files.append((os.path.join(folder, f"{dataset}.{part}.inter"), "inter"))
    else:
        files.append((os.path.join(folder, f"{dataset}.inter"), "inter"))
    suffixes = list(ATOMIC_SUFFIXES[1:]) + [s for s in (config["additional_feat_suffix"] or []) if s not in ATOMIC_SUFFIXES]
    for suffix in suffixes:
        files.append((os.path.join(folder, f"{dataset}.{suffix}"), suffix))
    return [(p, s) for p, s in files if os.path.isfile(p)]


def validate_dataset(config) -> None:
    """Validate every existing atomic file of ``config``'s dataset; raise DataValidationError on the first problem."""
    sep = config["field_separator"] or "\t"
    seq_sep = config["seq_separator"] or " "
    encoding = config["encoding"] or "utf-8"
    for path, source in dataset_files(config):
        rows = validate_atomic_file(path, sep, seq_sep, encoding, _loaded_columns(config, source))
        if source == "inter":
            check_inter_columns(config, path, sep, encoding, rows)


def check_inter_columns(config, path: str, field_separator: str, encoding: str, rows: int) -> None:
    """What RecBole needs of an interaction file beyond its syntax: some rows, the user and item id
    columns as tokens, and the time column when the split orders by time (``eval_args.order: TO``)."""
    if rows == 0:
        raise DataValidationError(f"{path}: no interactions (only a header line); add data rows")
    with open(path, encoding=encoding, newline="") as f:
        header = f.readline().rstrip("\r\n")
    fields = dict(parse_header(path, header, field_separator))

    def get(key):
        return config[key] if key in config else None

    order = (get("eval_args") or {}).get("order")
    needed = [(k, what) for k, what in (("USER_ID_FIELD", "the user id"), ("ITEM_ID_FIELD", "the item id")) if get(k)]
    if order == "TO" and get("TIME_FIELD"):
        needed.append(("TIME_FIELD", "the time: the leave-one-out split orders each user's interactions by it"))
    for setting, what in needed:
        name = config[setting]
        if name not in fields:
            raise DataValidationError(
                f"{path} line 1: no column {name!r} ({what}); the header has {', '.join(fields)}: add it, or set "
                f"{setting} to the column that holds it"
            )
    for setting, what in needed:
        if setting == "TIME_FIELD":
            continue
        name = config[setting]
        if fields[name] != "token":
            raise DataValidationError(
                f"{path} line 1: column {name!r} ({what}) is declared {name}:{fields[name]}; ids must be {name}:token"
            )
