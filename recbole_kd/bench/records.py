"""Stored cell records, ``<out>/cells/<id>.json`` and ``<id>.failed.json``: ``cell_record`` gives a finished
cell only when it ran with the cell's settings (same config hash) and is not stale (``_stale_kd``: distilled
from the teacher's raw top-K, before ``kd_mask_seen``), ``failed_record`` a cell's last failure;
``legacy_record`` tells a cell stored before both evaluation protocols were recorded (``same_under_both``: one
whose metrics hold under both anyway), ``protocol_result``
gives a cell's test metrics under one protocol, and ``PROTOCOL_NAMES`` the protocols' names in the report.
"""
from __future__ import annotations

import json
import os

from recbole.utils import ModelType

from recbole_kd.bench.suite import Cell
from recbole_kd.datasets.fingerprint import data_files
from recbole_kd.kd.teacher_spec import distilled_from_raw_top_k
from recbole_kd.protocol import FILTER_SEEN, RECBOLE
from recbole_kd.registry import UnknownModelError, get_entry
from recbole_kd.serving.artefact import cached_file_sha256  # torch and the standard library only


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def cell_record(out: str, cell: Cell, data_path: str | None = None) -> dict | None:
    """The stored result of ``cell`` if it finished with the same settings on the same data (``data_path``:
    bench's ``--data_path``, else the cell's own)."""
    rec = stored_record(out, cell)
    if rec and not data_changed(rec, cell, data_path):
        return rec
    return None


def stored_record(out: str, cell: Cell) -> dict | None:
    """The stored result of ``cell`` if it finished with the same settings (whatever data it read)."""
    rec = _read_json(os.path.join(out, "cells", cell.id + ".json"))
    if rec and rec.get("status") == "ok" and rec.get("config_hash") == cell.config_hash and not _stale_kd(rec, cell):
        return rec
    return None


def data_changed(rec: dict, cell: Cell, data_path: str | None = None) -> bool:
    """Whether the atomic files of the cell's dataset differ from those its run read (``data_files`` of its
    result: a file changed, was added or is gone): a number measured on other data (e.g. an earlier
    conversion) is not reported as today's, and the cell runs again. False when the record names no files
    (stored before runs recorded them) or the dataset's folder is not on this machine."""
    result = rec.get("result") or {}
    files = result.get("data_files")
    base = data_path or (cell.settings or {}).get("data_path")
    folder = os.path.join(base, cell.dataset) if base else result.get("data_path")
    if not files or not folder or not os.path.isdir(folder):
        return False
    now = data_files(folder, cell.dataset, None, (cell.settings or {}).get("benchmark_filename"))
    return sorted(now) != sorted(files) or any(cached_file_sha256(os.path.join(folder, n)) != files[n] for n in now)


def _stale_kd(rec: dict, cell: Cell) -> bool:
    """A distilled cell stored before ``kd_mask_seen`` was distilled from the teacher's raw top-K, seen
    items included: it is run again, not reported as today's method."""
    wants_mask = bool((cell.settings or {}).get("kd_mask_seen", True))
    return wants_mask and distilled_from_raw_top_k(cell.model, rec.get("result") or {})


def failed_record(out: str, cell: Cell) -> dict | None:
    return _read_json(os.path.join(out, "cells", cell.id + ".failed.json"))


def protocol_result(result: dict, protocol: str) -> dict | None:
    """A cell's test metrics under ``protocol``, or None where it was not measured: a cell stored before
    both protocols were recorded was scored, and its checkpoint selected, under RecBole's protocol only."""
    table = result.get("test_result_by_protocol")
    if table:
        return table.get(protocol)
    return result.get("test_result") if protocol == RECBOLE or same_under_both(result) else None


def protocol_valid(result: dict, protocol: str) -> dict | None:
    """A cell's best validation metrics (those of the checkpoint it kept) under ``protocol``, or None where
    they were not recorded."""
    table = result.get("best_valid_result_by_protocol")
    if table:
        return table.get(protocol)
    return (result.get("best_valid_result") if protocol == (result.get("protocol") or RECBOLE) or same_under_both(result)
            else None)


def legacy_record(rec: dict) -> bool:
    """A cell stored before every run recorded both protocols (it is run again when selected), unless its
    metrics hold under both (``same_under_both``)."""
    result = rec.get("result") or {}
    return not result.get("test_result_by_protocol") and not same_under_both(result)


def same_under_both(result: dict) -> bool:
    """Whether a result stored under RecBole's protocol only is also filter-seen's: that of a non-sequential
    model trained without a teacher. RecBole's full-sort evaluation removes the seen items of every model
    that is not SEQUENTIAL (``FullSortEvalDataLoader``: training items at validation, training and valid
    items at test) exactly as ``filter_seen`` does, and such a model's training does not depend on the
    protocol (a distilled one's does: its teacher's top-K and checkpoint follow it). Re-running the beauty
    MF-S cells under both protocols gave their stored metrics to the last digit (3 of 3 seeds)."""
    if (result.get("test_result_by_protocol") or not result.get("test_result") or result.get("teacher")
            or result.get("source_dataset")):  # distilled, or transferred from a source model chosen on valid
        return False
    try:
        return get_entry(result.get("model") or "").cls.type != ModelType.SEQUENTIAL
    except UnknownModelError:
        return False


PROTOCOL_NAMES = {FILTER_SEEN: "filter-seen", RECBOLE: "RecBole"}
