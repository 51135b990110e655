"""``python -m recbole_kd.datasets convert FORMAT --input DIR_OR_FILE --output DIR [--name NAME] [--force]``
and ``python -m recbole_kd.datasets validate FILE_OR_FOLDER [...]`` (a folder: its atomic files).

Exit status 0 on success; 2 with one ``error:`` line on stderr (no traceback) for bad input, a bad
command line, or an output folder that exists already (pass ``--force`` to replace it).
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time

from recbole_kd.datasets import FORMATS
from recbole_kd.datasets.common import AtomicDatasetDir, ConversionError
from recbole_kd.datasets.validate import DataValidationError, validate_atomic_file

PROG = "python -m recbole_kd.datasets"


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's own prints usage + message)
        raise _UsageError(f"{message} (see {PROG} --help)")


def _converter(fmt: str):
    return importlib.import_module(f"recbole_kd.datasets.{fmt}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Convert raw public datasets to RecBole atomic files; validate atomic files.")
    sub = parser.add_subparsers(dest="command", metavar="{convert,validate}")
    sub.required = True
    conv = sub.add_parser(
        "convert",
        help="convert a raw dataset",
        description="Writes OUTPUT/NAME/NAME.inter (+ .item/.net); then use --data_path=OUTPUT --dataset=NAME.",
        epilog="formats: " + "; ".join(f"{f}: {_converter(f).DESCRIPTION}" for f in FORMATS),
    )
    conv.add_argument("format", choices=FORMATS)
    conv.add_argument("--input", required=True, help="the raw folder (mind, lastfm) or file (seqfile)")
    conv.add_argument("--output", required=True, help="the data_path folder to write NAME/ into")
    conv.add_argument(
        "--name",
        help="dataset name (default: the input folder's name, its parent's if it is called 'raw'; for seqfile the file name)",
    )
    conv.add_argument("--force", action="store_true", help="replace OUTPUT/NAME if it exists")
    val = sub.add_parser("validate", help="check atomic files (header, column counts, float values)")
    val.add_argument("files", nargs="+", help="atomic files, or dataset folders (every atomic file in them)")
    val.add_argument("--field_separator", default="\t")
    val.add_argument("--encoding", default="utf-8")
    return parser


def convert(fmt: str, input_path: str, output: str, name: str | None, force: bool) -> int:
    module = _converter(fmt)
    name = name or module.default_name(input_path)
    t0 = time.perf_counter()
    with AtomicDatasetDir(output, name, force) as tmp:
        report = module.convert(input_path, tmp, name)
    final = AtomicDatasetDir(output, name).final
    for line in report.lines(name, final):
        print(line)
    print(f"  took {time.perf_counter() - t0:.1f}s; load with --data_path={output} --dataset={name}")
    return 0


def validate(files: list[str], sep: str, encoding: str) -> int:
    for path in _atomic_files(files):
        t0 = time.perf_counter()
        rows = validate_atomic_file(path, field_separator=sep, encoding=encoding)
        print(f"ok: {path} ({rows:,} rows, {time.perf_counter() - t0:.1f}s)")
    return 0


ATOMIC_SUFFIXES = (".inter", ".user", ".item", ".kg", ".link", ".net")


def _atomic_files(paths: list[str]) -> list[str]:
    """The paths, a dataset folder replaced by the atomic files in it (RecBole's suffixes)."""
    import os

    out = []
    for path in paths:
        if not os.path.isdir(path):
            out.append(path)
            continue
        found = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(ATOMIC_SUFFIXES))
        if not found:
            raise DataValidationError(f"{path}: a folder with no atomic files ({', '.join(ATOMIC_SUFFIXES)}); "
                                      "pass a dataset folder or its files")
        out += found
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        if args.command == "convert":
            return convert(args.format, args.input, args.output, args.name, args.force)
        return validate(args.files, args.field_separator, args.encoding)
    except (_UsageError, ConversionError, DataValidationError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # unreadable input, unwritable output, full disk
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"{PROG}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; no output written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
