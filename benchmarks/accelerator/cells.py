"""Move benchmark cells between this machine and a lent accelerator (README.md: "On a lent accelerator").

    python benchmarks/accelerator/cells.py pack  --bench-out DIR --repo-out DIR --dest DIR [--cells-only] [--since T]
    python benchmarks/accelerator/cells.py merge SUITE.yaml SRC [--out DIR] [--force]

``pack`` (run there, by run.sh) writes into ``--dest`` (the tool's $OUT):

* ``cells.tar.gz``: ``cells/*.json`` that are new or differ from the repository's copy (``--repo-out``), and
  ``manifest.json`` (what was packed, what was left out and why);
* ``logs.tar.gz``: the cells' ``output.log`` files (last 256 KiB of each) written since ``--since``;
* ``teacher-<cell id>.tar`` (or ``.tar.part0``, ``.part1``, ... when larger than one returned file may be):
  checkpoints of finished teacher cells, so distilled cells can run here without training the teacher
  again, as long as the tool's limits allow (8 files, 16 MiB each, 64 MiB in all).

``merge`` (run here, by merge.sh) copies the returned cells into ``benchmarks/results/<suite>/cells`` (or
``--out``): new cells are added, a failure never replaces a finished cell, and a finished cell that
differs from the local one is kept local unless ``--force``; returned teacher checkpoints are unpacked
where the merged cell records point. Only the standard library (and, for merge, recbole_kd.bench).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import tarfile
import tempfile
import time

MiB = 1024 * 1024
MAX_FILES = 8  # what the tool returns from $OUT
MAX_FILE_BYTES = 16 * MiB
MAX_TOTAL_BYTES = 64 * MiB
PART_BYTES = 16 * MiB - 64 * 1024  # a little under the limit
LOG_TAIL_BYTES = 256 * 1024
_CELL_NAME = re.compile(r"^[A-Za-z0-9._-]+\.json$")


# ---- pack (on the accelerator) -----------------------------------------------------------------------
def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def changed_cells(bench_out: str, repo_out: str | None) -> list[str]:
    """Names of ``cells/*.json`` in ``bench_out`` that the repository's results folder lacks or holds
    with other bytes (cells copied in from the repository to be skipped are not sent back)."""
    folder = os.path.join(bench_out, "cells")
    names = sorted(n for n in os.listdir(folder) if _CELL_NAME.match(n)) if os.path.isdir(folder) else []
    if not repo_out:
        return names
    return [n for n in names if _read(os.path.join(folder, n)) != _read(os.path.join(repo_out, "cells", n))]


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


def pack(bench_out: str, dest: str, repo_out: str | None = None, cells_only: bool = False,
         since: float | None = None, extra: dict | None = None) -> dict:
    os.makedirs(dest, exist_ok=True)
    names = changed_cells(bench_out, repo_out)
    manifest = {"packed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "bench_out": bench_out,
                "cells": names, "partial": cells_only, "checkpoints": [], "left_out": [], **(extra or {})}
    used_files = {n for n in os.listdir(dest) if not n.endswith(".part-writing")} - {"cells.tar.gz", "logs.tar.gz"}
    used_bytes = sum(os.path.getsize(os.path.join(dest, n)) for n in used_files)  # run.log and the like
    files = [(f"cells/{n}", _read(os.path.join(bench_out, "cells", n)) or b"") for n in names]
    budget_files = MAX_FILES - len(used_files) - 2  # cells.tar.gz, logs.tar.gz
    budget_bytes = MAX_TOTAL_BYTES - 2 * MiB - used_bytes  # keep room for the two archives and run.log growing

    if not cells_only:
        logs = []
        work = os.path.join(bench_out, "work")
        for cell_id in sorted(os.listdir(work)) if os.path.isdir(work) else []:
            log = os.path.join(work, cell_id, "output.log")
            if os.path.isfile(log) and (since is None or os.path.getmtime(log) >= since):
                with open(log, "rb") as f:
                    f.seek(max(0, os.path.getsize(log) - LOG_TAIL_BYTES))
                    logs.append((f"work/{cell_id}/output.log", f.read()))
        if logs:
            size = _write_atomic_tar_gz(os.path.join(dest, "logs.tar.gz"), logs)
            budget_bytes -= size

        returned_list = os.path.join(bench_out, "returned-checkpoints.txt")  # a warm machine's second call
        returned = set((_read(returned_list) or b"").decode().split("\n"))
        for cell_id, ckpt in _teacher_checkpoints(bench_out, names):
            path = os.path.join(bench_out, ckpt)
            key = f"{ckpt}\t{os.path.getsize(path)}"
            if key in returned:
                manifest["left_out"].append(f"{ckpt}: returned by an earlier call")
                continue
            size = os.path.getsize(path) + 10 * 1024  # tar headers and padding
            parts = -(-size // PART_BYTES)
            if parts > budget_files or size > budget_bytes:
                manifest["left_out"].append(f"{ckpt}: {size / MiB:.1f} MiB in {parts} file(s) does not fit the "
                                            f"{budget_files} file(s) / {budget_bytes / MiB:.1f} MiB left to return")
                continue
            tar_path = os.path.join(tempfile.gettempdir(), f"teacher-{cell_id}.tar")
            with tarfile.open(tar_path, "w") as tar:
                tar.add(path, arcname=ckpt)
            size = os.path.getsize(tar_path)
            base = f"teacher-{cell_id}.tar"
            written = []
            with open(tar_path, "rb") as f:
                if size <= PART_BYTES:
                    written.append(base)
                    with open(os.path.join(dest, base), "wb") as o:
                        o.write(f.read())
                else:
                    i = 0
                    while chunk := f.read(PART_BYTES):
                        written.append(f"{base}.part{i}")
                        with open(os.path.join(dest, written[-1]), "wb") as o:
                            o.write(chunk)
                        i += 1
            os.unlink(tar_path)
            budget_files -= len(written)
            budget_bytes -= size
            manifest["checkpoints"].append({"cell": cell_id, "checkpoint": ckpt, "files": written, "bytes": size})
            with open(returned_list, "a") as f:
                f.write(key + "\n")

    _write_atomic_tar_gz(os.path.join(dest, "cells.tar.gz"),
                         files + [("manifest.json", json.dumps(manifest, indent=1).encode())])
    return manifest


# ---- merge (here) ------------------------------------------------------------------------------------
def _safe_member(name: str) -> bool:
    return not (name.startswith("/") or ".." in name.split("/"))


def _fail(message: str):
    """Bad input: one line on stderr, exit status 2."""
    print(f"merge: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _find_archive(src: str) -> tuple[str, str]:
    if os.path.isdir(src):
        path = os.path.join(src, "cells.tar.gz")
        if not os.path.isfile(path):
            _fail(f"{src} has no cells.tar.gz (give the folder the device tool returned, or cells.tar.gz)")
        return path, src
    if not os.path.isfile(src):
        _fail(f"{src} does not exist (give the folder the device tool returned, or cells.tar.gz)")
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
    from recbole_kd.bench import expand, load_suite, output_dir

    suite = load_suite(suite_path)
    expected = {c.id: c.config_hash for c in expand(suite)}
    out = output_dir(suite, out)
    cells_dir = os.path.join(out, "cells")
    os.makedirs(cells_dir, exist_ok=True)
    archive, folder = _find_archive(src)
    summary = {"added": [], "same": [], "replaced": [], "kept_local": [], "failed_added": [], "ignored": [],
               "checkpoints": [], "out": out}
    with tarfile.open(archive, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
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
                       ("kept_local", "kept the local finished cell (differs; --force takes the accelerator's)"),
                       ("same", "already here"), ("ignored", "ignored"), ("checkpoints", "teacher checkpoints")):
        if summary[key]:
            log(f"[merge] {title}: {len(summary[key])}")
            for line in summary[key]:
                log(f"    {line}")
    for line in manifest.get("left_out", []):
        log(f"[merge] not returned by the accelerator: {line}")
    if manifest.get("partial"):
        log("[merge] note: this cells.tar.gz is a periodic snapshot (the run was stopped before its final pack)")
    return summary


def _merge_checkpoint(base: str, parts: list[str], out: str, cells_dir: str) -> str:
    with tempfile.TemporaryFile() as joined:
        for p in parts:
            with open(p, "rb") as f:
                joined.write(f.read())
        joined.seek(0)
        try:
            tar = tarfile.open(fileobj=joined, mode="r:")
        except tarfile.TarError as exc:
            return f"{base}: unreadable ({exc}; {len(parts)} part(s) present)"
        with tar:
            members = [m for m in tar.getmembers() if m.isfile()]
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
                o.write(f.read())
            os.replace(target + ".tmp", target)
            return f"{member.name}: unpacked ({member.size / MiB:.1f} MiB)"


def _write(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks/accelerator/cells.py")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="(on the accelerator) pack new cells, logs and teacher checkpoints into DEST")
    p.add_argument("--bench-out", required=True)
    p.add_argument("--repo-out", help="the repository's results folder of the suite: its cells are not sent back")
    p.add_argument("--dest", required=True)
    p.add_argument("--cells-only", action="store_true", help="only cells.tar.gz (periodic snapshot)")
    p.add_argument("--since", type=float, help="pack only logs written after this time (seconds since epoch)")
    p.add_argument("--note", action="append", default=[], metavar="KEY=VALUE", help="added to the manifest")
    m = sub.add_parser("merge", help="(here) merge returned cells into the suite's results folder")
    m.add_argument("suite")
    m.add_argument("src", help="the folder the tool returned (holding cells.tar.gz), or cells.tar.gz itself")
    m.add_argument("--out", help="results folder (default: the suite's, benchmarks/results/<name>)")
    m.add_argument("--force", action="store_true", help="replace local finished cells that differ")
    args = ap.parse_args(argv)
    if args.cmd == "pack":
        extra = dict(n.split("=", 1) for n in args.note)
        man = pack(args.bench_out, args.dest, args.repo_out, args.cells_only, args.since, extra)
        if not args.cells_only:
            print(f"[pack] {len(man['cells'])} cell file(s), {len(man['checkpoints'])} teacher checkpoint(s) -> "
                  f"{args.dest}")
            for line in man["left_out"]:
                print(f"[pack] left out: {line}")
            for n in sorted(os.listdir(args.dest)):
                print(f"[pack]   {n}  {os.path.getsize(os.path.join(args.dest, n)) / MiB:.2f} MiB")
        return 0
    merge(args.suite, args.src, args.out, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
