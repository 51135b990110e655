"""The suite file and its cells. ``load_suite`` reads and checks a suite yaml (the format is in the package
docstring, ``recbole_kd/bench/__init__.py``); ``expand`` turns it into ``Cell``s (dataset x model row x seed,
teachers first); ``check_cells`` checks every cell's model and settings before any cell runs; ``output_dir``
says where the results go; ``selected`` applies ``--only`` patterns and ``_datasets_needed`` names the
datasets a cell reads; ``_fmt_minutes`` writes a cell's time estimate (for the runner and the report alike).
Nothing here runs a cell or reads a stored one.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
from dataclasses import dataclass, field

import yaml

from recbole_kd.config import build_config
from recbole_kd.errors import ConfigError, SuiteError, UnknownModelError

GROUPS = ("baseline", "teacher", "student", "distilled", "transfer")




@dataclass
class Cell:
    dataset: str
    label: str
    model: str
    group: str
    seed: int
    settings: dict
    teacher_from: str | None = None
    student_ref: str | None = None
    skip: str | None = None
    minutes: float | None = None
    order: int = 0
    extra: dict = field(default_factory=dict)
    # an ``ensemble: true`` row: its ensemble cell (label: the row's, ``ensemble``: the members' seeds) and its
    # members (label ``<row> member``, ``row``: the row's label), ordinary cells otherwise; an ``ensemble: [ROW,
    # ...]`` row: one ensemble cell, ``ensemble``: its members' (label, seed), the cells of those rows
    ensemble: tuple = ()
    row_label: str | None = None

    @property
    def row(self) -> str:
        """The label of the suite row the cell comes from (``teacher_from`` names it)."""
        return self.row_label or self.label

    @property
    def id(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.row).strip("_")
        return f"{self.dataset}__{slug}{'_ensemble' if self.ensemble else ''}__seed{self.seed}"

    def spec(self) -> dict:
        spec = {"dataset": self.dataset, "label": self.label, "model": self.model, "group": self.group,
                "seed": self.seed, "settings": self.settings, "teacher_from": self.teacher_from}
        if self.ensemble:  # only then: the ids and hashes of every other cell stay those of before ensembles
            spec["ensemble"] = list(self.ensemble)
        return spec

    @property
    def of_rows(self) -> bool:
        """An ``ensemble: [ROW, ...]`` cell: an ensemble of other rows' runs."""
        return bool(self.ensemble) and isinstance(self.ensemble[0], tuple)

    @property
    def members(self) -> list[tuple[str, int]]:
        """An ensemble cell's members: (label, seed) of their cells (``member_keys``)."""
        return member_keys(self.spec())

    @property
    def config_hash(self) -> str:
        return hashlib.sha1(json.dumps(self.spec(), sort_keys=True, default=str).encode()).hexdigest()[:12]


def load_suite(path: str) -> dict:
    if not os.path.isfile(path):
        raise SuiteError(f"suite file {path} does not exist")
    with open(path) as f:
        try:
            suite = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise SuiteError(f"suite file {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(suite, dict):
        raise SuiteError(f"suite file {path} must be a mapping with name, datasets, models")
    for key in ("name", "datasets", "models"):
        if not suite.get(key):
            raise SuiteError(f"suite file {path} has no '{key}'")
    unknown = set(suite) - {"name", "description", "seeds", "settings", "datasets", "models", "output"}
    if unknown:
        raise SuiteError(f"suite file {path}: unknown top-level key(s) {sorted(unknown)}")
    suite["_path"] = os.path.abspath(path)
    return suite


_MODEL_KEYS = {"model", "label", "group", "seeds", "settings", "teacher_from", "student_ref", "skip", "minutes", "datasets",
               "ensemble"}
MEMBER = " member"  # an ensemble row's members are reported as the row "<label> member"


def member_keys(ens: dict) -> list[tuple[str, int]]:
    """(label, seed) of the cells an ensemble is made of; ``ens`` is its cell's spec or record, whose
    ``ensemble`` lists the seeds of the row's own members (``ensemble: true``: the row "<label> member"), or
    [label, seed] pairs (``ensemble: [ROW, ...]``: the runs of other rows)."""
    return [(str(m[0]), int(m[1])) if isinstance(m, (list, tuple)) else (ens["label"] + MEMBER, int(m))
            for m in ens["ensemble"]]


def expand(suite: dict) -> list[Cell]:
    """All cells, teachers first (distilled cells need their checkpoints), then file order."""
    where = suite["_path"]
    seeds = suite.get("seeds") or [2020]
    common = suite.get("settings") or {}
    datasets = suite["datasets"]
    if isinstance(datasets, list):
        datasets = {d: {} for d in datasets}
    labels = set()
    rows = {}  # label -> (model, entry, its seeds) of the rows so far (an ``ensemble: [ROW, ...]`` row names them)
    cells = []
    for i, entry in enumerate(suite["models"]):
        if isinstance(entry, str):
            entry = {"model": entry}
        unknown = set(entry) - _MODEL_KEYS
        if isinstance(entry.get("ensemble"), list) and "model" not in entry:
            entry = {**entry, "model": _mixed_model(entry, rows, i)}
        if unknown or "model" not in entry:
            raise SuiteError(f"{where}: models[{i}] needs 'model' and takes only {sorted(_MODEL_KEYS)}; got {sorted(entry)}")
        label = str(entry.get("label") or entry["model"])
        if label in labels:
            raise SuiteError(f"{where}: two models are labelled {label!r}; give each a unique 'label'")
        labels.add(label)
        group = entry.get("group") or ("distilled" if entry["model"].startswith("KD-") else
                                       "transfer" if entry["model"].startswith("Transfer-") else "baseline")
        if group not in GROUPS:
            raise SuiteError(f"{where}: models[{i}] ({label}) has group {group!r}; use one of {', '.join(GROUPS)}")
        skip = entry.get("skip")
        ensemble = entry.get("ensemble", False)
        row_seeds = [int(s) for s in entry.get("seeds") or seeds]
        of_rows = isinstance(ensemble, list)  # the runs of other rows, evaluated once as one model
        if of_rows:
            _check_mixed(entry, label, group, where, i)
        else:
            rows[label] = (entry["model"], entry, row_seeds)
            if ensemble not in (True, False) or (ensemble and (group != "teacher" or len(set(row_seeds)) < 2)):
                raise SuiteError(f"{where}: models[{i}] ({label}) has ensemble: {ensemble!r}; 'ensemble: true' is for "
                                 "a row of group teacher with 2 or more seeds (its members)")
            if ensemble:
                if label + MEMBER in labels:
                    raise SuiteError(f"{where}: a model is labelled {label + MEMBER!r}, the name of {label}'s members")
                labels.add(label + MEMBER)
        for ds, ds_settings in datasets.items():
            if entry.get("datasets") and ds not in entry["datasets"]:
                continue
            reason = skip.get(ds) if isinstance(skip, dict) else skip
            minutes = entry.get("minutes")
            minutes = minutes.get(ds) if isinstance(minutes, dict) else minutes
            settings = {**common, **(ds_settings or {}), **(entry.get("settings") or {})}
            if of_rows:
                members, why = _mixed_members(entry, label, rows, ds, where)
                cells.append(Cell(ds, label, entry["model"], group, members[0][1], settings, None, entry.get("student_ref"),
                                  reason or why, minutes, i, ensemble=tuple(members)))
                continue
            if ensemble:  # evaluated once from its members' checkpoints, after them
                cells.append(Cell(ds, label, entry["model"], group, row_seeds[0], dict(settings), None,
                                  entry.get("student_ref"), reason, None, i, ensemble=tuple(row_seeds)))
            for seed in row_seeds:
                cells.append(Cell(ds, label + MEMBER if ensemble else label, entry["model"], group, seed, dict(settings),
                                  entry.get("teacher_from"), entry.get("student_ref"), reason, minutes, i,
                                  row_label=label if ensemble else None))
    for c in cells:
        if c.teacher_from and c.teacher_from not in labels:
            raise SuiteError(f"{where}: {c.label} has teacher_from {c.teacher_from!r}, which is no model's label")
    teachers = {c.teacher_from for c in cells if c.teacher_from}
    mixed = {(c.dataset, *m) for c in cells if c.of_rows for m in c.members}
    teachers |= {c.row for c in cells if (c.dataset, c.label, c.seed) in mixed}  # the runs of an ensemble of rows
    # an ensemble cell is listed before its members (its row leads the report); it runs after them
    return sorted(cells, key=lambda c: (list(datasets).index(c.dataset), 0 if c.row in teachers else 1, c.order,
                                        0 if c.ensemble else 1, c.seed))


def _mixed_model(entry: dict, rows: dict, i: int) -> str:
    """The model column of an ``ensemble: [ROW, ...]`` row without ``model``: its rows' models, joined."""
    models = [rows[r][0] for r in entry["ensemble"] if isinstance(r, str) and r in rows]
    return " + ".join(dict.fromkeys(models)) or f"ensemble{i}"


def _check_mixed(entry: dict, label: str, group: str, where: str, i: int) -> None:
    refs = entry["ensemble"]
    if group != "teacher" or len(refs) < 2 or not all(isinstance(r, str) for r in refs) or len(set(refs)) < len(refs) \
            or "seeds" in entry or "teacher_from" in entry:
        raise SuiteError(f"{where}: models[{i}] ({label}) has ensemble: {refs!r}; 'ensemble: [ROW, ROW, ...]' is for "
                         "a row of group teacher, without seeds or teacher_from, naming 2 or more distinct rows above it "
                         "(their runs are its members)")


def _mixed_members(entry: dict, label: str, rows: dict, ds: str, where: str) -> tuple[list, str | None]:
    """(label, seed) of an ``ensemble: [ROW, ...]`` row's members on ``ds`` (an ``ensemble: true`` row
    gives its members, any other row its seeds), and why the cell is skipped (a member row is) or None."""
    members, why = [], None
    for ref in entry["ensemble"]:
        if ref not in rows:
            raise SuiteError(f"{where}: {label} has ensemble member row {ref!r}, which is no row above it; name rows "
                             "listed before it (not another ensemble of rows)")
        _, ref_entry, ref_seeds = rows[ref]
        if ref_entry.get("datasets") and ds not in ref_entry["datasets"]:
            raise SuiteError(f"{where}: {label} runs on {ds}, but its member row {ref!r} does not; give {label} "
                             f"'datasets:' with the datasets of all its member rows")
        skip = ref_entry.get("skip")
        skip = skip.get(ds) if isinstance(skip, dict) else skip
        if skip and why is None:
            why = f"member row {ref} is not run: {skip}"
        member = ref + MEMBER if ref_entry.get("ensemble") is True else ref
        members += [(member, s) for s in ref_seeds]
    return members, why


def check_cells(cells: list[Cell], where: str) -> None:
    """Every cell's model and settings, checked as the CLI checks them (unknown keys are errors here),
    before any cell runs: a typo in a late row would otherwise surface hours into the suite. The data is
    not read (a dataset converted later, or on another machine, is fine)."""
    seen = set()
    cuda = os.environ.get("CUDA_VISIBLE_DEVICES")  # RecBole's Config sets it; the cells set their own
    try:
        for c in cells:
            key = (c.label, c.model, c.dataset, json.dumps(c.settings, sort_keys=True, default=str))
            if c.skip is not None or key in seen or c.of_rows:
                # an ensemble of other rows runs no model of its own: its members' cells are checked
                continue
            seen.add(key)
            try:
                build_config(c.model, c.dataset, overrides={**c.settings, "strict": True}, check_data=False)
            except (UnknownModelError, ConfigError) as exc:
                raise SuiteError(f"{where}: {c.label} on {c.dataset}: {exc}") from None
    finally:
        if cuda is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = cuda


def output_dir(suite: dict, out: str | None) -> str:
    if out:
        return os.path.abspath(out)
    base = os.path.dirname(suite["_path"])
    if suite.get("output"):
        return os.path.normpath(os.path.join(base, suite["output"]))
    if os.path.basename(base) == "suites":
        return os.path.join(os.path.dirname(base), "results", suite["name"])
    return os.path.abspath(f"{suite['name']}-results")


def _fmt_minutes(m: float | None) -> str:
    return "?" if m is None else (f"{m:.1f} min" if m < 120 else f"{m / 60:.1f} h")


def selected(cell: Cell, only: list[str] | None) -> bool:
    """``--only`` patterns (shell-style, case-sensitive) match a cell's label, model, dataset or id."""
    if not only:
        return True
    names = (cell.label, cell.model, cell.dataset, cell.id)
    return any(fnmatch.fnmatchcase(name, pat) for pat in only for name in names)


def _datasets_needed(cell: Cell) -> list[str]:
    source = (cell.settings or {}).get("source")
    extra = [source["dataset"]] if isinstance(source, dict) and source.get("dataset") else []
    return [cell.dataset, *extra]
