"""Moving a suite's cells between machines: ``bench SUITE --pack DIR`` and ``bench SUITE --merge DIR``.

Cells run on another machine (e.g. a GPU box without internet) come back through whatever way files are
copied to and from it; that channel may limit the size and number of files, so ``pack`` takes those limits
(``Limits``; none by default) and writes into ``DIR``:

* ``cells.tar.gz``: the cells (``cells/*.json`` of the bench output folder) that the comparison folder
  (e.g. the checkout's results folder, whose cells were copied in to be skipped) lacks or holds with other
  bytes, and ``manifest.json`` (what was packed, what was left out and why, the limits);
* ``logs.tar.gz``: the tail of each cell's ``work/<cell id>/output.log`` (written since ``since``);
* ``teacher-<cell id>.tar``, or ``teacher-<cell id>.tar.part0``, ``.part1``, ... when larger than one file may
  be: the checkpoints of finished teacher cells, so distilled cells can continue elsewhere without training
  the teacher again, as far as the limits allow (a checkpoint that does not fit is listed in the manifest).

A checkpoint is packed once per bench output folder (``packed-checkpoints.txt`` there lists them), so
packing again after more cells ran does not copy the same large files twice.

``merge`` copies packed cells into the suite's results folder: new cells are added, a failure never replaces
a finished cell, a finished cell that differs from the local one is kept local unless ``force``; teacher
checkpoints are unpacked where the merged cell records point. Bad input raises ``SuiteError``.

(Just over 400 lines: packing and merging are two halves of one file format, kept together.)
"""
from __future__ import annotations

import datetime as _dt
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass

from recbole_kd.bench.suite import SuiteError, expand, load_suite, output_dir

MiB = 1024 * 1024
LOG_TAIL_BYTES = 256 * 1024  # of each cell's output.log
PACKED_LIST = "packed-checkpoints.txt"
_CELL_NAME = re.compile(r"^[A-Za-z0-9._-]+\.json$")
_COPY_CHUNK = 4 * MiB


@dataclass(frozen=True)
class Limits:
    """What the channel between the machines takes: the largest file, the number of files and the bytes in
    all of the packing folder (files already there count too). ``None``: no limit."""
    max_file_bytes: int | None = None
    max_files: int | None = None
    max_total_bytes: int | None = None

    @classmethod
    def from_options(cls, max_file_mib: float | None = None, max_files: int | None = None,
                     max_total_mib: float | None = None) -> Limits:
        for option, value in (("--max-file-mib", max_file_mib), ("--max-files", max_files),
                              ("--max-total-mib", max_total_mib)):
            if value is not None and not value > 0:
                raise SuiteError(f"{option} {value:g}: give a limit above 0 (or leave the option out: no limit)")
        limits = cls(None if max_file_mib is None else int(max_file_mib * MiB), max_files,
                     None if max_total_mib is None else int(max_total_mib * MiB))
        if limits.max_file_bytes == 0 or limits.max_total_bytes == 0:
            raise SuiteError(f"--max-file-mib {max_file_mib} / --max-total-mib {max_total_mib}: under one byte")
        return limits

    @property
    def part_bytes(self) -> int | None:
        """Size of a checkpoint's parts: a little under the file limit (16 MiB - 64 KiB for 16 MiB)."""
        return None if self.max_file_bytes is None else self.max_file_bytes - self.max_file_bytes // 256

    @property
    def reserve_bytes(self) -> int:
        """Kept free of the total for cells.tar.gz and files growing in the folder (e.g. a log): 2 MiB of 64."""
        return 0 if self.max_total_bytes is None else self.max_total_bytes // 32

    def describe(self) -> str:
        parts = [f"{self.max_files} files" if self.max_files else "",
                 f"{self.max_file_bytes / MiB:.4g} MiB per file" if self.max_file_bytes else "",
                 f"{self.max_total_bytes / MiB:.4g} MiB in all" if self.max_total_bytes else ""]
        return ", ".join(p for p in parts if p) or "no limits"


def parse_since(text: str | None) -> float | None:
    """``--since``: seconds since the epoch, or an ISO 8601 time (local time when it names no zone)."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return _dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise SuiteError(f"--since {text}: give seconds since the epoch or an ISO time "
                         "(e.g. 2026-11-30T10:00:00+00:00)") from None


def parse_notes(notes: list[str] | None) -> dict:
    """``--note KEY=VALUE`` (repeatable): added to the manifest."""
    extra = {}
    for note in notes or []:
        key, sep, value = note.partition("=")
        if not sep or not key:
            raise SuiteError(f"--note {note}: give KEY=VALUE")
        extra[key] = value
    return extra


# ---- pack --------------------------------------------------------------------------------------------
def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def changed_cells(bench_out: str, compare_with: str | None) -> list[str]:
    """Names of ``cells/*.json`` in ``bench_out`` that ``compare_with/cells`` lacks or holds with other bytes
    (cells copied in from there to be skipped are not packed); every cell when ``compare_with`` is None."""
    folder = os.path.join(bench_out, "cells")
    names = sorted(n for n in os.listdir(folder) if _CELL_NAME.match(n)) if os.path.isdir(folder) else []
    if not compare_with:
        return names
    return [n for n in names if _read(os.path.join(folder, n)) != _read(os.path.join(compare_with, "cells", n))]


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(data))


def _write_atomic_tar_gz(path: str, entries: list[tuple[str, bytes]]) -> int:
    tmp = path + ".part-writing"
    with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
        for name, data in entries:
            _add_bytes(tar, name, data)
    os.replace(tmp, path)
    return os.path.getsize(path)


def _teacher_checkpoints(bench_out: str, names: list[str]) -> list[tuple[str, str]]:
    """(cell id, checkpoint path relative to bench_out) of the finished teacher cells among ``names``."""
    found = []
    for n in names:
        if n.endswith(".failed.json"):
            continue
        try:
            rec = json.loads(_read(os.path.join(bench_out, "cells", n)) or b"null")
        except ValueError:
            continue
        ckpt = isinstance(rec, dict) and rec.get("status") == "ok" and rec.get("group") == "teacher" \
            and (rec.get("result") or {}).get("checkpoint")
        if ckpt and os.path.isfile(os.path.join(bench_out, ckpt)):
            found.append((rec["id"], ckpt))
    return found


def _copy(src, dst, length: int | None = None) -> int:
    """Copy ``length`` bytes (or all) from one open file to another in chunks; the bytes copied."""
    done = 0
    while length is None or done < length:
        chunk = src.read(_COPY_CHUNK if length is None else min(_COPY_CHUNK, length - done))
        if not chunk:
            break
        dst.write(chunk)
        done += len(chunk)
    return done


def _split(path: str, dest: str, base: str, part_bytes: int | None) -> list[str]:
    """Move the file ``path`` into ``dest`` as ``base``, or as ``base.part0``, ... of ``part_bytes`` each."""
    size = os.path.getsize(path)
    if part_bytes is None or size <= part_bytes:
        os.replace(path, os.path.join(dest, base))
        return [base]
    written = []
    with open(path, "rb") as f:
        while True:
            name = f"{base}.part{len(written)}"
            with open(os.path.join(dest, name), "wb") as o:
                if _copy(f, o, part_bytes) == 0:
                    break
            written.append(name)
    os.unlink(os.path.join(dest, f"{base}.part{len(written)}"))  # the empty last one
    os.unlink(path)
    return written


def pack(bench_out: str, dest: str, compare_with: str | None = None, cells_only: bool = False,
         since: float | None = None, extra: dict | None = None, limits: Limits = Limits(), log=print) -> dict:
    """Pack ``bench_out``'s new cells, logs and teacher checkpoints into ``dest`` (see the module doc);
    returns the manifest."""
    if not os.path.isdir(os.path.join(bench_out, "cells")):
        raise SuiteError(f"{bench_out} has no cells/ folder: nothing to pack (run the suite first, or give its --out)")
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise SuiteError(f"--pack {dest} is a file, not a folder")
    os.makedirs(dest, exist_ok=True)
    names = changed_cells(bench_out, compare_with)
    manifest = {"packed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "bench_out": bench_out,
                "cells": names, "partial": cells_only, "limits": asdict(limits), "checkpoints": [],
                "left_out": [], **(extra or {})}
    ours = {"cells.tar.gz"} if cells_only else {"cells.tar.gz", "logs.tar.gz"}  # (re)written below
    used_files = {n for n in os.listdir(dest) if not n.endswith(".part-writing")} - ours
    used_bytes = sum(os.path.getsize(os.path.join(dest, n)) for n in used_files)  # e.g. a run log
    files = [(f"cells/{n}", _read(os.path.join(bench_out, "cells", n)) or b"") for n in names]
    budget_files = None if limits.max_files is None else limits.max_files - len(used_files) - 1  # cells.tar.gz
    budget_bytes = None if limits.max_total_bytes is None else \
        limits.max_total_bytes - limits.reserve_bytes - used_bytes

    def fits(n_files: int, size: int) -> bool:
        return (budget_files is None or n_files <= budget_files) and (budget_bytes is None or size <= budget_bytes)

    if not cells_only:
        logs = []
        work = os.path.join(bench_out, "work")
        for cell_id in sorted(os.listdir(work)) if os.path.isdir(work) else []:
            path = os.path.join(work, cell_id, "output.log")
            if os.path.isfile(path) and (since is None or os.path.getmtime(path) >= since):
                with open(path, "rb") as f:
                    f.seek(max(0, os.path.getsize(path) - LOG_TAIL_BYTES))
                    logs.append((f"work/{cell_id}/output.log", f.read()))
        logs_path = os.path.join(dest, "logs.tar.gz")
        if not logs and os.path.isfile(logs_path):  # an earlier pack's: kept, and counted
            budget_files = None if budget_files is None else budget_files - 1
            budget_bytes = None if budget_bytes is None else budget_bytes - os.path.getsize(logs_path)
        if logs:
            size = _write_atomic_tar_gz(logs_path, logs)
            too_big = limits.max_file_bytes is not None and size > limits.max_file_bytes
            if too_big or not fits(1, size):
                os.unlink(logs_path)
                manifest["left_out"].append(f"logs.tar.gz: {size / MiB:.2f} MiB does not fit the limits "
                                            f"({limits.describe()})")
            else:
                budget_files = None if budget_files is None else budget_files - 1
                budget_bytes = None if budget_bytes is None else budget_bytes - size

        packed_list = os.path.join(bench_out, PACKED_LIST)
        packed = set((_read(packed_list) or b"").decode().split("\n"))
        part_bytes = limits.part_bytes
        for cell_id, ckpt in _teacher_checkpoints(bench_out, names):
            path = os.path.join(bench_out, ckpt)
            key = f"{ckpt}\t{os.path.getsize(path)}"
            if key in packed:
                manifest["left_out"].append(f"{ckpt}: packed by an earlier --pack (delete {packed_list} "
                                            "to pack it again)")
                continue
            size = os.path.getsize(path) + 10 * 1024  # tar headers and padding
            parts = 1 if part_bytes is None else -(-size // part_bytes)
            if not fits(parts, size):
                left = [f"{budget_files} file(s)" if budget_files is not None else "",
                        f"{budget_bytes / MiB:.2f} MiB" if budget_bytes is not None else ""]
                manifest["left_out"].append(f"{ckpt}: {size / MiB:.2f} MiB in {parts} file(s) does not fit the "
                                            f"{' / '.join(x for x in left if x)} left ({limits.describe()})")
                continue
            base = f"teacher-{cell_id}.tar"
            tmp = os.path.join(dest, base + ".part-writing")
            with tarfile.open(tmp, "w") as tar:
                tar.add(path, arcname=ckpt)
            size = os.path.getsize(tmp)
            written = _split(tmp, dest, base, part_bytes)
            budget_files = None if budget_files is None else budget_files - len(written)
            budget_bytes = None if budget_bytes is None else budget_bytes - size
            manifest["checkpoints"].append({"cell": cell_id, "checkpoint": ckpt, "files": written, "bytes": size})
            with open(packed_list, "a") as f:
                f.write(key + "\n")

    size = _write_atomic_tar_gz(os.path.join(dest, "cells.tar.gz"),
                                files + [("manifest.json", json.dumps(manifest, indent=1).encode())])
    log(f"[pack] {len(names)} cell file(s), {len(manifest['checkpoints'])} teacher checkpoint(s) -> {dest} "
        f"({limits.describe()})")
    for line in manifest["left_out"]:
        log(f"[pack] left out: {line}")
    if limits.max_file_bytes is not None and size > limits.max_file_bytes:
        log(f"[pack] warning: cells.tar.gz is {size / MiB:.2f} MiB, over the {limits.max_file_bytes / MiB:.4g} MiB "
            "per file")
    if not cells_only:
        total = 0
        for n in sorted(os.listdir(dest)):
            total += os.path.getsize(os.path.join(dest, n))
            log(f"[pack]   {n}  {os.path.getsize(os.path.join(dest, n)) / MiB:.2f} MiB")
        log(f"[pack] {len(os.listdir(dest))} file(s), {total / MiB:.2f} MiB in {dest}")
    return manifest


# ---- merge -------------------------------------------------------------------------------------------
def _safe_member(name: str) -> bool:
    return not (name.startswith("/") or ".." in name.split("/"))


def _find_archive(src: str) -> tuple[str, str]:
    if os.path.isdir(src):
        path = os.path.join(src, "cells.tar.gz")
        if not os.path.isfile(path):
            raise SuiteError(f"--merge {src}: no cells.tar.gz there (give the folder --pack wrote, or its "
                             "cells.tar.gz)")
        return path, src
    if not os.path.isfile(src):
        raise SuiteError(f"--merge {src} does not exist (give the folder --pack wrote, or its cells.tar.gz)")
    return src, os.path.dirname(os.path.abspath(src))


def _teacher_archives(folder: str) -> dict[str, list[str]]:
    """teacher-<id>.tar, or its parts in order, by base name."""
    groups = {}
    for n in os.listdir(folder):
        m = re.match(r"^(teacher-[A-Za-z0-9._-]+?\.tar)(?:\.part(\d+))?$", n)
        if m:
            groups.setdefault(m.group(1), []).append((int(m.group(2) or 0), os.path.join(folder, n)))
    return {base: [p for _, p in sorted(parts)] for base, parts in groups.items()}


def merge(suite_path: str, src: str, out: str | None = None, force: bool = False, log=print) -> dict:
    """Merge what ``pack`` wrote (the folder ``src``, or its cells.tar.gz) into the suite's results folder
    (or ``out``); returns a summary (lists of cell file names by what happened to them)."""
    suite = load_suite(suite_path)
    expected = {c.id: c.config_hash for c in expand(suite)}
    archive, folder = _find_archive(src)
    out = output_dir(suite, out)
    cells_dir = os.path.join(out, "cells")
    summary = {"added": [], "same": [], "replaced": [], "kept_local": [], "failed_added": [], "ignored": [],
               "checkpoints": [], "out": out}
    try:
        tar = tarfile.open(archive, "r:gz")
        members = [m for m in tar.getmembers() if m.isfile()]
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise SuiteError(f"--merge {archive}: not a readable .tar.gz ({exc})") from None
    os.makedirs(cells_dir, exist_ok=True)
    with tar:
        manifest = next((json.load(tar.extractfile(m)) for m in members if m.name == "manifest.json"), {})
        for m in members:
            name = m.name[len("cells/"):] if m.name.startswith("cells/") else None
            if not name or "/" in name or not _CELL_NAME.match(name):
                continue
            data = tar.extractfile(m).read()
            try:
                rec = json.loads(data)
            except ValueError:
                summary["ignored"].append(f"{name}: not JSON")
                continue
            cell_id = name[: -len(".failed.json")] if name.endswith(".failed.json") else name[: -len(".json")]
            if cell_id not in expected:
                summary["ignored"].append(f"{name}: no cell {cell_id} in {os.path.basename(suite_path)}")
                continue
            if rec.get("config_hash") != expected[cell_id]:
                summary["ignored"].append(f"{name}: run with other settings than the suite's (config_hash "
                                          f"{rec.get('config_hash')} != {expected[cell_id]})")
                continue
            where = (rec.get("machine") or {})
            where = f"{where.get('device', '?')}, {where.get('gpu') or where.get('cpu', '?')}"
            ok_path = os.path.join(cells_dir, cell_id + ".json")
            failed_path = os.path.join(cells_dir, cell_id + ".failed.json")
            local_ok = _read(ok_path)
            if name.endswith(".failed.json"):
                if local_ok is not None:
                    summary["ignored"].append(f"{name}: failed there, finished here")
                elif _read(failed_path) == data:
                    summary["same"].append(name)
                else:
                    _write(failed_path, data)
                    summary["failed_added"].append(f"{name} ({where}): {rec.get('error')}")
                continue
            if rec.get("status") != "ok":
                summary["ignored"].append(f"{name}: status {rec.get('status')!r}")
                continue
            if local_ok is None:
                _write(ok_path, data)
                summary["added"].append(f"{name} ({where})")
            elif local_ok == data:
                summary["same"].append(name)
            elif force:
                _write(ok_path, data)
                summary["replaced"].append(f"{name} ({where})")
            else:
                summary["kept_local"].append(name)
                continue
            if os.path.exists(failed_path):
                os.unlink(failed_path)
    for base, parts in sorted(_teacher_archives(folder).items()):
        summary["checkpoints"].append(_merge_checkpoint(base, parts, out, cells_dir))
    for key, title in (("added", "added"), ("replaced", "replaced (--force)"), ("failed_added", "failed there"),
                       ("kept_local", "kept the local finished cell (differs; --force takes the packed one)"),
                       ("same", "already here"), ("ignored", "ignored"), ("checkpoints", "teacher checkpoints")):
        if summary[key]:
            log(f"[merge] {title}: {len(summary[key])}")
            for line in summary[key]:
                log(f"    {line}")
    for line in manifest.get("left_out", []):
        log(f"[merge] left out when packing: {line}")
    if manifest.get("partial"):
        log("[merge] note: this cells.tar.gz was packed with --cells-only (e.g. a snapshot taken while the suite "
            "was running): no logs or checkpoints")
    return summary


def _merge_checkpoint(base: str, parts: list[str], out: str, cells_dir: str) -> str:
    with tempfile.TemporaryFile() as joined:
        for p in parts:
            with open(p, "rb") as f:
                shutil.copyfileobj(f, joined, _COPY_CHUNK)
        joined.seek(0)
        try:
            tar = tarfile.open(fileobj=joined, mode="r:")
            members = [m for m in tar.getmembers() if m.isfile()]
        except (tarfile.TarError, EOFError) as exc:
            return f"{base}: unreadable ({exc}; {len(parts)} part(s) present)"
        with tar:
            member = members[0] if len(members) == 1 else None
            if member is None or not _safe_member(member.name) or not member.name.startswith("work/"):
                return f"{base}: unexpected content (expected one work/<cell id>/saved/*.pth)"
            cell_id = member.name.split("/")[1]
            rec = json.loads(_read(os.path.join(cells_dir, cell_id + ".json")) or b"null")
            if not rec or (rec.get("result") or {}).get("checkpoint") != member.name:
                return f"{member.name}: not used (the local cell {cell_id} points to another checkpoint)"
            target = os.path.join(out, member.name)
            if os.path.isfile(target) and os.path.getsize(target) == member.size:
                return f"{member.name}: already here"
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with tar.extractfile(member) as f, open(target + ".tmp", "wb") as o:
                shutil.copyfileobj(f, o, _COPY_CHUNK)
            os.replace(target + ".tmp", target)
            return f"{member.name}: unpacked ({member.size / MiB:.1f} MiB)"


def _write(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
