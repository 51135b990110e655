"""``python -m recbole_kd export CHECKPOINT --out DIR``: a trained model as a self-contained artefact.

The model is rebuilt from the checkpoint the way a teacher is (:mod:`recbole_kd.kd.teacher`: the checkpoint's
architecture and split settings, its dataset, the item-vocabulary check), once, at export time; the artefact
(layout in :mod:`recbole_kd.serving.artefact`) needs only torch and json to rank.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import tempfile
import warnings

import torch
from torch import nn

from recbole_kd import __version__
from recbole_kd.checkpoint import CheckpointError, item_vocab_hash, load_checkpoint
from recbole_kd.config import build_config
from recbole_kd.errors import ExportError  # noqa: F401  (also importable from here)
from recbole_kd.kd.teacher import _freeze, _load_checked
from recbole_kd.kd.teacher_spec import arch_overrides, split_settings
from recbole_kd.models.mf import DistillableMF
from recbole_kd.models.sasrec import FastSASRec
from recbole_kd.protocol import selected
from recbole_kd.quick_start import prepare
from recbole_kd.registry import get_entry
from recbole_kd.serving import artefact as art


class SequentialScorer(nn.Module):
    """History ids [B, L] (left-aligned, 0 = padding) + lengths [B] -> scores [B, n_items]: the model's own
    ``full_sort_predict`` path (``last_hidden`` then ``item_logits``), one padded pass."""

    def __init__(self, model):
        super().__init__()
        # TorchScript names a module's type after its class; registered classes are renamed to the model name
        # ("SASRec-S"), which is no identifier and makes the saved model.pt unloadable: a copy of the model
        # under an identifier-named subclass (same methods) is traced instead
        model = copy.deepcopy(model)
        safe = "Exported_" + re.sub(r"\W", "_", type(model).__name__)
        model.__class__ = type(safe, (type(model),), {"__module__": __name__})
        self.model = model

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        return self.model.item_logits(self.model.last_hidden(item_seq, item_seq_len))


class MFScorer(nn.Module):
    """User rows [B] -> scores [B, n_items] (``user_embedding @ item_embedding.T``, as MF's full_sort_predict)."""

    def __init__(self, user_weight: torch.Tensor, item_weight: torch.Tensor):
        super().__init__()
        self.user_weight = nn.Parameter(user_weight.detach().clone(), requires_grad=False)
        self.item_weight = nn.Parameter(item_weight.detach().clone(), requires_grad=False)

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_weight[users] @ self.item_weight.t()


def model_kind(name: str) -> str:
    """``sequential`` or ``general`` for a model the exporter supports; ``ExportError`` otherwise."""
    entry = get_entry(name)
    if entry.kind in ("teacher", "student", "distilled"):
        if issubclass(entry.cls, FastSASRec):
            return art.SEQUENTIAL
        if issubclass(entry.cls, DistillableMF):
            return art.GENERAL
    raise ExportError(f"model {name} ({entry.kind}) cannot be exported: export supports the SASRec models "
                      "(SASRec-S, SASRec-L, KD-SASRec, KD-<SASRec student>) and MF models (MF-S, MF-L, KD-MF)")


def sha256_of(path: str) -> str:
    return art.file_sha256(path)


def _git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def _check_out_dir(out: str, force: bool) -> None:
    if os.path.exists(out) and not os.path.isdir(out):
        raise ExportError(f"--out {out} is a file; give a folder path")
    if os.path.isdir(out) and os.listdir(out) and not force:
        raise ExportError(f"--out {out} exists and is not empty; choose another folder or pass --force to replace it")


def _read_result(path: str, checkpoint: str) -> dict:
    """A run's result file (``--result_file`` of the training run); it must name this checkpoint."""
    if not os.path.isfile(path):
        raise ExportError(f"result file {path} does not exist; pass the --result_file of the run that wrote the "
                          "checkpoint, or leave --result out")
    try:
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
    except (OSError, ValueError) as exc:
        raise ExportError(f"result file {path} is not readable JSON ({type(exc).__name__})") from None
    if not isinstance(result, dict):
        raise ExportError(f"result file {path} is not a run summary (a JSON object)")
    recorded = result.get("checkpoint")
    if recorded and os.path.basename(recorded) != os.path.basename(checkpoint):
        raise ExportError(f"result file {path} belongs to checkpoint {os.path.basename(recorded)}, not "
                          f"{os.path.basename(checkpoint)}; pass the result file of this checkpoint's run")
    return result


def find_result(checkpoint: str) -> str | None:
    """The result file beside a checkpoint (the teacher zoo writes ``<key>.json`` next to ``<key>.pth``)."""
    sidecar = os.path.splitext(checkpoint)[0] + ".json"
    return sidecar if os.path.isfile(sidecar) else None


def build_card(state: dict, checkpoint: str, kind: str, dataset, result: dict | None, result_path: str | None,
               n_params: int) -> dict:
    config, meta = state["config"], state.get("meta") or {}
    name = config["model"]
    card = {
        "model": name,
        "kind": kind,
        "registry_kind": get_entry(name).kind,
        "num_params": n_params,
        "architecture": {k: config.get(k) for k in ("hidden_size", "embedding_size", "n_layers", "n_heads",
                                                     "inner_size", "MAX_ITEM_LIST_LENGTH", "loss_type")
                         if config.get(k) is not None and (kind == art.SEQUENTIAL or k == "embedding_size")},
        "data": {"dataset": config.get("dataset"), "item_vocab_hash": item_vocab_hash(dataset),
                 "n_items": int(dataset.item_num) - 1, "n_users": int(dataset.user_num) - 1,
                 "n_interactions": int(len(dataset.inter_feat))},
        "protocol": selected(config),
        "split": config.get("eval_args"),
        "seed": config.get("seed"),
        "epoch": state.get("epoch"),
        "best_valid_score": state.get("best_valid_score"),
        "valid_metric": config.get("valid_metric"),
        "best_valid_result": None,
        "test_result": None,
        "metrics_source": None,
        "source": {"checkpoint": os.path.abspath(checkpoint), "checkpoint_sha256": sha256_of(checkpoint),
                   "checkpoint_digest": state.get("digest")},
        "recbole_kd": {"version": __version__, "commit": _git_commit()},
        "torch": torch.__version__,
    }
    if result is not None:
        card["best_valid_result"] = result.get("best_valid_result")
        card["test_result"] = result.get("test_result")
        card["best_valid_result_by_protocol"] = result.get("best_valid_result_by_protocol")
        card["test_result_by_protocol"] = result.get("test_result_by_protocol")
        card["metrics_source"] = os.path.abspath(result_path)
    elif state.get("best_valid_result"):  # a "last" checkpoint records its best valid result
        card["best_valid_result"] = state["best_valid_result"]
        card["metrics_source"] = "checkpoint"
    if card["registry_kind"] == "distilled":
        info = {k: config.get(k) for k in ("teacher", "teacher_config", "teacher_checkpoint", "kd_losses",
                                            "kd_loss_params", "kd_topk", "kd_mask_seen")}
        if result is not None:
            info.update({k: result.get(k) for k in ("teacher_checkpoint", "teacher_source", "teacher_test_result")
                         if result.get(k) is not None})
        if info.get("teacher_checkpoint"):  # the teacher was that checkpoint: teacher_config did not build it
            info.pop("teacher_config")
        card["distillation"] = info
    card["item_vocab_matches_checkpoint"] = meta.get("item_vocab") == card["data"]["item_vocab_hash"]
    return card


def _seen_csr(dataset) -> dict:
    """Each user's items in the whole dataset (every split): offsets [U + 1] and items, by internal user id."""
    uids = dataset.inter_feat[dataset.uid_field].long()
    items = dataset.inter_feat[dataset.iid_field].long()
    order = torch.argsort(uids * dataset.item_num + items)
    uids, items = uids[order], items[order]
    keep = torch.ones_like(uids, dtype=torch.bool)
    keep[1:] = (uids[1:] != uids[:-1]) | (items[1:] != items[:-1])  # repeated interactions once
    uids, items = uids[keep], items[keep]
    counts = torch.bincount(uids, minlength=int(dataset.user_num))
    offsets = torch.zeros(int(dataset.user_num) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(counts, 0)
    return {"offsets": offsets, "items": items.to(torch.int32 if dataset.item_num < 2**31 else torch.long)}


def rebuild(checkpoint: str, data_path: str | None = None):
    """(state, kind, model in eval mode, full dataset, test loader) of a checkpoint: the checkpoint's settings on its
    dataset, through the same functions as a teacher checkpoint (``prepare`` and ``_load_checked``)."""
    state = load_checkpoint(checkpoint, map_location="cpu")
    config = state.get("config") or {}
    name, dataset_name = config.get("model"), config.get("dataset")
    if not name or not dataset_name:
        raise CheckpointError(f"checkpoint {checkpoint} records no model or dataset; re-train with recbole-kd")
    kind = model_kind(name)
    if kind == art.SEQUENTIAL and config.get("item_text"):
        raise ExportError(f"model {name} was trained with item_text (text vectors); export does not support it yet")
    saved_path = config.get("data_path")
    root = data_path or (os.path.dirname(os.path.normpath(saved_path)) if saved_path else None)
    split = {k: v for k, v in split_settings(config).items() if v is not None}
    settings = {**arch_overrides(config), **split, "show_progress": False, "state": "WARNING"}
    if root:
        settings["data_path"] = os.path.abspath(root)
    run_config = build_config(name, dataset_name, overrides=settings)
    dataset, _, _, test_data = prepare(run_config)
    model = _freeze(_load_checked(run_config, dataset, checkpoint, name)).cpu()
    return state, kind, model, dataset, test_data


def _trace_sequential(model, max_len: int):
    """(TorchScript scorer, ``cut``): ``cut`` when the trace also scores a batch cut after its longest history
    (plus the model's extra positions, e.g. a [MASK]) exactly as the full-width pass; the loader then scores
    each batch at that width (a 9-item history needs 9 positions, not ``max_len``), else always at full width."""
    scorer = SequentialScorer(model).eval()
    n = max(2, min(4, model.n_items - 1))
    seq = torch.zeros((2, max_len), dtype=torch.long)
    lens = torch.tensor([max_len, 1])
    seq[0] = torch.arange(max_len) % (model.n_items - 1) + 1
    seq[1, 0] = n - 1
    with torch.inference_mode(False), torch.no_grad():
        with warnings.catch_warnings():  # python-level branches on settings are constants, as intended
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(scorer, (seq, lens), check_trace=False)
        # the trace must compute the eager scores for other batch sizes and lengths, too
        probe = torch.zeros((3, max_len), dtype=torch.long)
        probe_lens = torch.tensor([1, max(1, max_len // 2), max_len])
        for row, length in enumerate(probe_lens.tolist()):
            probe[row, :length] = torch.arange(length) % (model.n_items - 1) + 1
        full = scorer(probe, probe_lens)
        if not torch.allclose(traced(probe, probe_lens), full, atol=1e-4, rtol=1e-4):
            raise ExportError(f"the traced {type(model).__name__} does not reproduce the model's scores; "
                              "export cannot ship it")
        # histories are left-aligned and padding is masked: positions after the longest history (and the
        # model's extra ones) change no score, so the loader may leave them out if the trace agrees
        short = probe_lens[:2]
        width = min(max_len, int(short.max()) + int(getattr(model, "extra_tokens", 0)))
        try:  # a trace that baked the width in may also fail outright on a narrower batch
            cut = width < max_len and torch.allclose(traced(probe[:2, :width].contiguous(), short), full[:2],
                                                     atol=1e-4, rtol=1e-4)
        except RuntimeError:
            cut = False
    return traced, cut


def export(checkpoint: str, out: str, force: bool = False, data_path: str | None = None,
           result_file: str | None = None) -> dict:
    """Write the artefact of ``checkpoint`` to ``out`` (atomically); returns its settings."""
    out = os.path.abspath(os.fspath(out))
    _check_out_dir(out, force)
    result_path = result_file or find_result(checkpoint)
    result = _read_result(result_path, checkpoint) if result_path else None
    state, kind, model, dataset, _ = rebuild(checkpoint, data_path)
    config = state["config"]
    items = [str(t) for t in dataset.field2id_token[dataset.iid_field]]
    settings = {"format": art.FORMAT, "format_version": art.FORMAT_VERSION, "kind": kind, "model": config["model"],
                "n_items": len(items), "padding_id": 0,
                "max_length": int(model.max_seq_length) if kind == art.SEQUENTIAL else None,
                "history_truncation": "most recent max_length items" if kind == art.SEQUENTIAL else None,
                "scores": "dot product of the user representation and each item embedding (higher is better)"}
    n_params = sum(p.numel() for p in model.parameters())
    card = build_card(state, checkpoint, kind, dataset, result, result_path, n_params)

    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(out)}-", dir=parent)
    try:
        if kind == art.SEQUENTIAL:
            module, cut = _trace_sequential(model, settings["max_length"])
            settings["extra_positions"] = int(getattr(model, "extra_tokens", 0)) if cut else None
        else:
            module = torch.jit.script(MFScorer(model.user_embedding.weight, model.item_embedding.weight))
            users = [str(t) for t in dataset.field2id_token[dataset.uid_field]]
            _write_json(os.path.join(tmp, "users.json"), users)
            torch.save(_seen_csr(dataset), os.path.join(tmp, "seen.pt"))
        module.save(os.path.join(tmp, "model.pt"))
        _write_json(os.path.join(tmp, "items.json"), items)
        _write_json(os.path.join(tmp, "card.json"), card, indent=2)
        shutil.copyfile(art.__file__, os.path.join(tmp, "loader.py"))
        settings["files"] = {name: sha256_of(os.path.join(tmp, name)) for name in sorted(os.listdir(tmp))}
        _write_json(os.path.join(tmp, "settings.json"), settings, indent=2)
        for name in os.listdir(tmp):
            _fsync(os.path.join(tmp, name))
        os.chmod(tmp, 0o755)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**settings, "card": card, "out": out}


def _write_json(path: str, obj, indent=None) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)
        f.write("\n")


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_dir(tmp: str, out: str) -> None:
    """Put the finished folder ``tmp`` at ``out``: a rename (an existing ``out``, empty or replaced with
    --force, is moved aside first and removed after)."""
    old = None
    if os.path.isdir(out):
        if not os.listdir(out):
            os.rmdir(out)
        else:
            old = tempfile.mkdtemp(prefix=f".old-{os.path.basename(out)}-", dir=os.path.dirname(out))
            os.rename(out, os.path.join(old, "artefact"))
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

