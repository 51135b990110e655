"""Distilled models: ``KD-<student>`` for every registered student, derived on demand.

A distilled model is the student's own class (same architecture, same checkpoint layout),
trained by :class:`~recbole_kd.kd.trainer.DistillTrainer` with the student's yaml and
``kd.yaml`` layered on top. ``KD-SASRec`` and ``KD-MF`` are the named entry points.
"""
from __future__ import annotations

import os

from recbole_kd.kd.trainer import DistillTrainer
from recbole_kd.registry import register_student_family

KD_YAML = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kd.yaml")
KD_MF_YAML = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kd_mf.yaml")

# short names for the flagship students
ALIASES = {"KD-SASRec": ("SASRec-S", []), "KD-MF": ("MF-S", [KD_MF_YAML])}

make_distilled = register_student_family(
    "KD-", "distilled", ALIASES, KD_YAML, DistillTrainer, doc="{student} distilled from a teacher",
    description="{student} distilled from a teacher (--teacher=..., --kd_losses=...)")
