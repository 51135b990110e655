"""Distilled models: ``KD-<student>`` for every registered student, derived on demand.

A distilled model is the student's own class (same architecture, same checkpoint layout),
trained by :class:`~recbole_kd.kd.trainer.DistillTrainer` with the student's yaml and
``kd.yaml`` layered on top. ``KD-SASRec`` and ``KD-MF`` are the named entry points.
"""
from __future__ import annotations

import os

from recbole_kd.kd.trainer import DistillTrainer
from recbole_kd.registry import ModelEntry, add_entry, register_resolver, registered

KD_YAML = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kd.yaml")
KD_MF_YAML = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kd_mf.yaml")

# short names for the flagship students
ALIASES = {"KD-SASRec": ("SASRec-S", []), "KD-MF": ("MF-S", [KD_MF_YAML])}


def distillable_students() -> list[str]:
    return sorted(n for n, e in registered("student").items())


def make_distilled(name: str, student: str, extra_yaml=()) -> ModelEntry | None:
    students = registered("student")
    if student not in students:
        return None
    base = students[student]
    cls = type(name, (base.cls,), {"__doc__": f"{student} distilled from a teacher", "__module__": base.cls.__module__})
    return ModelEntry(
        name=name,
        cls=cls,
        kind="distilled",
        description=f"{student} distilled from a teacher (--teacher=..., --kd_losses=...)",
        config_files=list(base.config_files) + [KD_YAML] + list(extra_yaml),
        trainer=DistillTrainer,
    )


def _resolve(name: str):
    if name in ALIASES:
        student, extra = ALIASES[name]
        return make_distilled(name, student, extra)
    if name.startswith("KD-"):
        return make_distilled(name, name[3:])
    return None


def _names():
    return list(ALIASES) + [f"KD-{s}" for s in distillable_students()]


register_resolver(_resolve, _names)
for _alias in ALIASES:
    add_entry(_resolve(_alias))
