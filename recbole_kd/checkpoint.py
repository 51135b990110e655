"""Checkpoints that load with ``torch.load(weights_only=True)``.

RecBole pickles its whole ``Config`` into every checkpoint, which torch >= 2.6
refuses to load by default (and rightly: unpickling runs code). Our checkpoints
hold only tensors and plain Python values, so they load through torch's safe
loader; everything else (a stock RecBole checkpoint, a random pickle) keeps
being refused. Writes are atomic: temporary file in the same folder, flush,
fsync, rename.
"""
from __future__ import annotations

import enum
import hashlib
import os
import pickle
import tempfile
import zipfile
from typing import Any

import numpy as np
import torch

FORMAT = "recbole-kd-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message says what, which file and what to do."""


def plain(value: Any) -> Any:
    """Convert a config value into plain Python data (safe for weights_only loading and JSON)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return str(value)


def plain_config(config) -> dict:
    """The config as a plain dict (no torch.device, enums or numpy scalars)."""
    return {str(k): plain(v) for k, v in config.final_config_dict.items()}


def item_vocab_hash(dataset) -> str:
    """A short fingerprint of a dataset's item vocabulary (id -> token mapping)."""
    field = dataset.iid_field
    tokens = dataset.field2id_token[field]
    h = hashlib.sha1()
    for tok in tokens:
        h.update(str(tok).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to ``path`` atomically: a crash never leaves a truncated file there."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pth", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def load_checkpoint(path: str, map_location="cpu", expect_model: str | None = None) -> dict:
    """Load one of our checkpoints safely; raise :class:`CheckpointError` with a clear message."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist; check the path or train the model first")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint {path} is not a recbole-kd checkpoint (it needs unsafe unpickling: "
            f"{str(exc).splitlines()[0][:120]}); re-train with recbole-kd to get one"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({type(exc).__name__}); "
            "delete it and re-train, or restore it from a backup"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a recbole-kd checkpoint (no '{FORMAT}' marker); re-train with recbole-kd"
        )
    if expect_model is not None and state["config"].get("model") != expect_model:
        raise CheckpointError(
            f"checkpoint {path} holds model {state['config'].get('model')!r}, expected {expect_model!r}; "
            "pass a checkpoint of the right model"
        )
    return state
