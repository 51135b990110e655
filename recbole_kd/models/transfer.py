"""Transfer models: ``Transfer-<student>`` for every registered student, derived on demand.

The target model is the student's own class, trained by
:class:`~recbole_kd.transfer.trainer.TransferTrainer` after a source phase on ``source``.
``Transfer-SASRec`` (SASRec-S) and ``Transfer-MF`` (MF-S) are the named entry points.
"""
from __future__ import annotations

import os

from recbole_kd.registry import register_student_family
from recbole_kd.transfer.trainer import TransferTrainer

TRANSFER_YAML = os.path.join(os.path.dirname(os.path.abspath(__file__)), "transfer.yaml")
TRANSFER_MF_YAML = os.path.join(os.path.dirname(os.path.abspath(__file__)), "transfer_mf.yaml")
ALIASES = {"Transfer-SASRec": ("SASRec-S", []), "Transfer-MF": ("MF-S", [TRANSFER_MF_YAML])}

make_transfer = register_student_family(
    "Transfer-", "transfer", ALIASES, TRANSFER_YAML, TransferTrainer, doc="{student} initialised from a source dataset",
    description="{student} pre-trained on --source, fine-tuned on --dataset (transfer_mechanisms=...)",
    attrs=lambda student: {"transfer_base": student})
