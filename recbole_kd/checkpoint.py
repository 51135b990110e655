"""Checkpoints that load with ``torch.load(weights_only=True)``.

RecBole pickles its whole ``Config`` into every checkpoint, which torch >= 2.6
refuses to load by default (and rightly: unpickling runs code). Our checkpoints
hold only tensors and plain Python values, so they load through torch's safe
loader; everything else (a stock RecBole checkpoint, a random pickle) keeps
being refused. Writes are atomic: temporary file in the same folder, flush,
fsync, rename. Each checkpoint carries a sha256 ``digest`` of its tensors and values, checked on load
(checkpoints written before digests load unchecked).
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

from recbole_kd.errors import CheckpointError, CheckpointWriteError  # noqa: F401  (also importable from here)

FORMAT = "recbole-kd-checkpoint"
FORMAT_VERSION = 1


def plain(value: Any) -> Any:
    """Convert a config value into plain Python data (safe for weights_only loading and JSON)."""
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):  # before ``float``: np.float64 subclasses it
        return float(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return value.name
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


def _feed(h, value) -> None:
    """Hash a checkpoint value: tensors by dtype, shape and bytes; plain values by type and repr."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if t.layout != torch.strided:  # a sparse buffer (some graph models): hash its dense values
            t = t.to_dense()
        t = t.contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    elif isinstance(value, dict):
        h.update(f"D{len(value)}".encode())
        for k in sorted(value, key=repr):
            _feed(h, k)
            _feed(h, value[k])
    elif isinstance(value, (list, tuple)):
        h.update(f"L{len(value)}".encode())  # list and tuple alike: a round trip may turn one into the other
        for v in value:
            _feed(h, v)
    elif isinstance(value, torch.Size):
        h.update(f"S{tuple(value)}".encode())
    else:
        h.update(f"V{type(value).__name__}:{value!r}\0".encode())


def state_digest(state: dict) -> str:
    """sha256 over a checkpoint's tensors and values (every key but ``digest``)."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != "digest"})
    return h.hexdigest()


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to ``path`` atomically: a crash never leaves a truncated file there. One of our
    checkpoints (a dict with the format marker) gets a ``digest`` that :func:`load_checkpoint` verifies."""
    path = os.fspath(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        obj = {**obj, "digest": state_digest(obj)}
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pth", dir=folder)
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(exc, OSError) or (isinstance(exc, RuntimeError) and _is_write_failure(exc)):
            kept = "the previous checkpoint there is kept" if os.path.exists(path) else "nothing was written"
            reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0][:120]
            raise CheckpointWriteError(
                f"cannot write checkpoint {path}: {reason}; {kept}; free disk space or choose a writable "
                "--checkpoint_dir"
            ) from None
        raise


def _is_write_failure(exc: RuntimeError) -> bool:
    # torch.save reports some I/O failures as RuntimeError: "... file write failed", and on a disk that
    # fills up under its zip writer "[enforce fail at inline_container.cc] . unexpected pos N vs M"
    text = str(exc).lower()
    return ("write" in text and ("fail" in text or "space" in text)) or "unexpected pos" in text


# ---- random-number state (for exact resume) --------------------------------------------------------
def rng_state(generators=()) -> dict:
    """Python, numpy, torch (and CUDA) random states, plus extra ``torch.Generator`` s, as plain data
    and tensors (loadable with ``weights_only=True``)."""
    import random

    version, mt, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [version, list(mt), gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "torch": torch.get_rng_state(),
        "generators": [g.get_state() for g in generators],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generators=()) -> None:
    import random

    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    # a checkpoint loaded with map_location=<cuda device> has its RNG states there: every setter takes CPU bytes
    np.random.set_state((name, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    for g, s in zip(generators, state.get("generators", [])):
        g.set_state(s.cpu())
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def load_checkpoint(path: str, map_location="cpu", expect_model: str | None = None) -> dict:
    """Load one of our checkpoints safely; raise :class:`CheckpointError` with a clear message."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(
            f"checkpoint {path} is a folder, not a file; pass the path of a .pth file written by recbole-kd"
        )
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist; check the path or train the model first")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; this is some other file
            raise CheckpointError(
                f"checkpoint {path} is not a PyTorch checkpoint (not a torch.save archive: another kind of "
                "file, or corrupt); pass a .pth written by recbole-kd"
            ) from None
        raise CheckpointError(
            f"checkpoint {path} is not a recbole-kd checkpoint (it pickles Python objects, as RecBole's own "
            "checkpoints do, and is only loaded with weights_only=True); re-train with recbole-kd to get one"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({type(exc).__name__}); "
            "delete it and re-train, or restore it from a backup"
        ) from None
    except Exception as exc:  # noqa: BLE001  (on a text file, torch's unpickler raises IndexError, KeyError ...)
        if not zipfile.is_zipfile(path):
            raise CheckpointError(
                f"checkpoint {path} is not a PyTorch checkpoint (not a torch.save archive: another kind of "
                "file, or corrupt); pass a .pth written by recbole-kd"
            ) from None
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({type(exc).__name__}); "
            "delete it and re-train, or restore it from a backup"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a recbole-kd checkpoint (no '{FORMAT}' marker); re-train with recbole-kd"
        )
    digest = state.get("digest")
    if digest is not None and digest != state_digest(state):  # older checkpoints carry none: not checked
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its contents do not match the digest written with it (bytes changed "
            "on disk or in transfer); delete it and re-train, or restore it from a backup"
        )
    if expect_model is not None and (state.get("config") or {}).get("model") != expect_model:
        raise CheckpointError(
            f"checkpoint {path} holds model {(state.get('config') or {}).get('model')!r}, expected {expect_model!r}; "
            "pass a checkpoint of the right model"
        )
    return state
