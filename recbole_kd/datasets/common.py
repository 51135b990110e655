"""Helpers shared by the converters: line reading with positions, atomic output, atomic-file writers.

Conventions of every converter's output (so a converted dataset loads without a dataset yaml):
``user_id:token``, ``item_id:token`` and ``timestamp:float`` in ``NAME.inter``; ``item_id:token`` first
in ``NAME.item``; ``source_id:token`` / ``target_id:token`` in ``NAME.net``. Values are written with
Python's csv module (tab separated, ``"`` quoting only where a value needs it), which is exactly the
dialect RecBole's ``pandas.read_csv(engine="python")`` parses back.
"""
from __future__ import annotations

import csv
import os
import shutil
import tempfile

from recbole_kd.errors import ConversionError  # noqa: F401  (also importable from here)


def name_from_folder(input_path: str, fallback: str) -> str:
    """Default dataset name: the input folder's name, or its parent's when the folder is called ``raw``
    (the layout of ``../shared/datasets/<name>/raw``)."""
    path = os.path.abspath(input_path)
    base = os.path.basename(path)
    if base.lower() == "raw":
        base = os.path.basename(os.path.dirname(path))
    return base or fallback


def where(path: str, lineno: int | None = None) -> str:
    return f"{path} line {lineno}" if lineno is not None else str(path)


def short(value: str, limit: int = 40) -> str:
    """``repr`` of a value, cut to ``limit`` characters, for one-line error messages."""
    if len(value) > limit:
        value = value[:limit] + "..."
    return repr(value)


def read_lines(path: str, encoding: str = "utf-8", fallback: str | None = None, decoded_with_fallback=None):
    """Yield ``(line_number, text)`` for each line of ``path`` without its line ending (1-based).

    Decodes line by line so that an encoding error names its line. Streams: memory is one line.
    With ``fallback`` (e.g. ``"latin-1"`` for a file of mixed encodings), a line that is not valid
    ``encoding`` is decoded with it instead, and its number is appended to ``decoded_with_fallback``.
    """
    if not os.path.exists(path):
        raise ConversionError(f"{path}: file not found")
    if os.path.isdir(path):
        raise ConversionError(f"{path}: is a folder, expected a file")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError as exc:
                if fallback is not None:
                    text = raw.decode(fallback)
                    if decoded_with_fallback is not None:
                        decoded_with_fallback.append(lineno)
                    yield lineno, text.rstrip("\r\n")
                    continue
                raise ConversionError(
                    f"{where(path, lineno)}: not valid {encoding} text (byte {raw[exc.start]:#04x} at offset {exc.start})"
                ) from None
            yield lineno, text.rstrip("\r\n")


def split_tabs(path: str, lineno: int, text: str, expected: int, what: str, at_least: bool = False) -> list[str]:
    """Split a tab-separated line and check its column count."""
    cols = text.split("\t")
    if len(cols) < expected or (not at_least and len(cols) != expected):
        want = f"at least {expected}" if at_least else str(expected)
        raise ConversionError(
            f"{where(path, lineno)}: expected {want} tab-separated columns ({what}), found {len(cols)}"
        )
    return cols


def clean_text(value: str) -> str:
    """Free text for a ``token_seq`` field: tabs and line breaks become spaces."""
    return value.replace("\t", " ").replace("\r", " ").replace("\n", " ").strip()


class AtomicWriter:
    """Writes one RecBole atomic file: a ``name:type`` header, then tab-separated rows."""

    def __init__(self, path: str, columns: list[str]):
        self.path = path
        self._f = open(path, "w", encoding="utf-8", newline="")
        self._w = csv.writer(self._f, delimiter="\t", quotechar='"', quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        self._f.write("\t".join(columns) + "\n")
        self.rows = 0

    def write(self, row) -> None:
        self._w.writerow(row)
        self.rows += 1

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def fmt_number(x: float) -> str:
    """Integers without a trailing ``.0`` (stable bytes for counts and second timestamps)."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class AtomicDatasetDir:
    """``with AtomicDatasetDir(root, name, force) as tmp:`` write files into ``tmp``; on success the folder
    becomes ``root/name``. On any failure the temporary folder is removed and ``root/name`` is untouched
    (and ``root`` is removed again if this call created it and it is empty). An existing ``root/name`` is
    only replaced with ``force``."""

    def __init__(self, root: str, name: str, force: bool = False):
        if not name or name in (".", "..") or os.sep in name or (os.altsep and os.altsep in name):
            raise ConversionError(f"invalid dataset name {name!r}: use a plain folder name such as 'mind-small-sub'")
        self.root = os.path.abspath(root)
        self.name = name
        self.final = os.path.join(self.root, name)
        self.force = force
        self.tmp = None
        self._created_root = False

    def _check_target(self) -> None:
        if os.path.lexists(self.final) and not self.force:
            raise ConversionError(f"{self.final}: output folder exists; pass --force to replace it")
        if os.path.exists(self.final) and not os.path.isdir(self.final):
            raise ConversionError(f"{self.final}: exists and is not a folder")

    def __enter__(self) -> str:
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise ConversionError(f"{self.root}: --output exists and is not a folder")
        self._check_target()
        if not os.path.isdir(self.root):
            os.makedirs(self.root)
            self._created_root = True
        self.tmp = tempfile.mkdtemp(prefix=f".{self.name}.tmp-", dir=self.root)
        os.chmod(self.tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the dataset folder should not be
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self._commit()
                return False
            except BaseException:
                self._cleanup()
                raise
        self._cleanup()
        return False

    def _commit(self) -> None:
        self._check_target()
        old = None
        if os.path.lexists(self.final):  # force: move the old one aside, put the new one in, drop the old
            old = tempfile.mkdtemp(prefix=f".{self.name}.old-", dir=self.root)
            os.rmdir(old)
            os.rename(self.final, old)
        try:
            os.rename(self.tmp, self.final)
        except BaseException:
            if old is not None:
                os.rename(old, self.final)
            raise
        self.tmp = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def _cleanup(self) -> None:
        if self.tmp and os.path.isdir(self.tmp):
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp = None
        if self._created_root:
            try:
                os.rmdir(self.root)
            except OSError:
                pass


class Report:
    """Counts a converter prints at the end: kept rows per file and dropped rows per reason."""

    def __init__(self):
        self.counts: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self.notes: list[str] = []

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def lines(self, name: str, folder: str) -> list[str]:
        out = [f"wrote {folder}"]
        c = self.counts
        out.append(
            f"  {name}.inter: {c.get('users', 0):,} users, {c.get('items', 0):,} items, "
            f"{c.get('interactions', 0):,} interactions"
        )
        for key, value in c.items():
            if key not in ("users", "items", "interactions"):
                out.append(f"  {key}: {value:,}")
        if self.dropped:
            for reason, n in self.dropped.items():
                out.append(f"  dropped {n:,} {reason}")
        else:
            out.append("  dropped 0 rows")
        out.extend(f"  note: {n}" for n in self.notes)
        return out
