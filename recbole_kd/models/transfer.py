"""Transfer models: ``Transfer-<student>`` for every registered student, derived on demand.

The target model is the student's own class, trained by
:class:`~recbole_kd.transfer.trainer.TransferTrainer` after a source phase on ``source``.
``Transfer-SASRec`` (SASRec-S) and ``Transfer-MF`` (MF-S) are the named entry points.
"""
from __future__ import annotations

import os

from recbole_kd.registry import ModelEntry, add_entry, register_resolver, registered
from recbole_kd.transfer.trainer import TransferTrainer

TRANSFER_YAML = os.path.join(os.path.dirname(os.path.abspath(__file__)), "transfer.yaml")
TRANSFER_MF_YAML = os.path.join(os.path.dirname(os.path.abspath(__file__)), "transfer_mf.yaml")
ALIASES = {"Transfer-SASRec": ("SASRec-S", []), "Transfer-MF": ("MF-S", [TRANSFER_MF_YAML])}


def make_transfer(name: str, student: str, extra_yaml=()) -> ModelEntry | None:
    students = registered("student")
    if student not in students:
        return None
    base = students[student]
    cls = type(name, (base.cls,), {"__doc__": f"{student} initialised from a source dataset",
                                   "__module__": base.cls.__module__, "transfer_base": student})
    return ModelEntry(
        name=name,
        cls=cls,
        kind="transfer",
        description=f"{student} pre-trained on --source, fine-tuned on --dataset (transfer_mechanisms=...)",
        config_files=list(base.config_files) + [TRANSFER_YAML] + list(extra_yaml),
        trainer=TransferTrainer,
    )


def _resolve(name: str):
    if name in ALIASES:
        student, extra = ALIASES[name]
        return make_transfer(name, student, extra)
    if name.startswith("Transfer-"):
        return make_transfer(name, name[len("Transfer-"):])
    return None


def _names():
    return list(ALIASES) + [f"Transfer-{s}" for s in sorted(registered("student"))]


register_resolver(_resolve, _names)
for _alias in ALIASES:
    add_entry(_resolve(_alias))
