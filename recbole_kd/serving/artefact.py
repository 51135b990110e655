"""Load an exported model (``python -m recbole_kd export``) and rank items with it: torch + json only.

This module imports nothing from RecBole or the rest of recbole_kd, so it also works on its own: every
artefact folder carries a copy of it as ``loader.py``::

    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("loader", "DIR/loader.py")
    loader = importlib.util.module_from_spec(spec); sys.modules["loader"] = loader; spec.loader.exec_module(loader)
    model = loader.Artefact.load("DIR")
    items, scores = model.recommend(history=["tok1", "tok2"], k=10)      # sequential models
    items, scores = model.recommend(user="u42", k=10)                     # MF (general) models

The folder (see docs/serving.md):

    settings.json   format marker, kind (sequential | general), model name, max_length, padding_id, n_items,
                    extra_positions (sequential: a batch may be cut to its longest history + this many
                    positions; null: always max_length wide), sha256 of every other file
    model.pt        TorchScript: sequential (item ids [B, W <= max_length] left-aligned, lengths [B]) -> scores
                    [B, n_items]; general (user rows [B]) -> scores [B, n_items]
    items.json      the item vocabulary: position = internal id, value = raw token (0 is "[PAD]")
    users.json      general models: the user vocabulary (position = user row), the same way
    seen.pt         general models: each user's items in the exported dataset (CSR: offsets [U + 1], items)
    card.json       the model card (dataset, vocabulary fingerprint, metrics, teacher, source checkpoint)
    loader.py       this file
"""
from __future__ import annotations

import hashlib
import json
import os

import torch

FORMAT = "recbole-kd-artefact"
FORMAT_VERSION = 1
SEQUENTIAL, GENERAL = "sequential", "general"
PAD_TOKEN = "[PAD]"


class ArtefactError(Exception):
    """A folder that is not a usable artefact (missing, incomplete, corrupt, another format version)."""


class RequestError(ValueError):
    """A request the artefact cannot answer; ``status`` is the HTTP status the service answers with."""

    status = 422


class UnknownTokenError(RequestError):
    """Tokens (items of a history, or a user) that are not in the artefact's vocabulary."""

    def __init__(self, what: str, tokens: list[str]):
        self.tokens = tokens
        shown = ", ".join(repr(t) for t in tokens[:10]) + (f" (and {len(tokens) - 10} more)" if len(tokens) > 10 else "")
        super().__init__(f"unknown {what} {shown}: not in the model's vocabulary")


def vocab_hash(tokens) -> str:
    """The fingerprint of an item vocabulary, as ``recbole_kd.checkpoint.item_vocab_hash`` computes it."""
    h = hashlib.sha1()
    for tok in tokens:
        h.update(str(tok).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_SHA256_CACHE: dict = {}


def cached_file_sha256(path: str) -> str:
    """``file_sha256`` computed once per (path, size, mtime, inode) in this process: for callers that ask for
    the same unchanged files many times (a bench checks each cell's data files and the shipped weights it
    distils from on every pass over its cells). A file rewritten in place within one timestamp tick keeps
    its key, so integrity checks before a load use ``file_sha256``."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _SHA256_CACHE:
        _SHA256_CACHE[key] = file_sha256(path)
    return _SHA256_CACHE[key]


def _read_json(folder: str, name: str):
    path = os.path.join(folder, name)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ArtefactError(f"artefact {folder} has no {name}; export the model again") from None
    except (OSError, ValueError) as exc:
        raise ArtefactError(f"artefact {folder}: {name} is unreadable ({type(exc).__name__}); export again") from None


def _token(value, what: str) -> str:
    # raw tokens are strings; JSON numbers are accepted for numeric ids (42 -> "42"), nothing else
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise RequestError(f"{what} must be strings (raw tokens), got {type(value).__name__} {value!r}")


class Artefact:
    """An exported model: its TorchScript scorer, vocabularies, settings and card."""

    def __init__(self, folder: str, settings: dict, module, items: list[str], users: list[str] | None,
                 seen: dict | None, card: dict):
        self.folder = folder
        self.settings = settings
        self.module = module
        self.items = items
        self.item_index = {tok: i for i, tok in enumerate(items) if i != settings["padding_id"]}
        self.users = users
        self.user_index = {tok: i for i, tok in enumerate(users) if i != 0} if users is not None else None
        self.seen = seen
        self.card = card
        self.kind = settings["kind"]
        self.model_name = settings["model"]
        self.n_items = int(settings["n_items"])
        self.max_length = int(settings.get("max_length") or 0)
        self.padding_id = int(settings["padding_id"])
        extra = settings.get("extra_positions")  # absent (older exports) or null: every pass max_length wide
        self.extra_positions = None if extra is None else int(extra)

    # ---- loading --------------------------------------------------------------------------------
    @classmethod
    def load(cls, folder: str, verify: bool = True) -> "Artefact":
        """Load the artefact in ``folder``; ``verify``: check every file against its recorded sha256."""
        folder = os.fspath(folder)
        if not os.path.isdir(folder):
            raise ArtefactError(f"artefact {folder} does not exist or is not a folder; export a model there first")
        settings = _read_json(folder, "settings.json")
        if not isinstance(settings, dict) or settings.get("format") != FORMAT:
            raise ArtefactError(f"{folder} is not a recbole-kd artefact (settings.json has no '{FORMAT}' marker)")
        if settings.get("format_version") != FORMAT_VERSION:
            raise ArtefactError(f"artefact {folder} has format version {settings.get('format_version')!r}; this "
                                f"loader reads version {FORMAT_VERSION}: export the model again with this version")
        if settings.get("kind") not in (SEQUENTIAL, GENERAL):
            raise ArtefactError(f"artefact {folder}: unknown kind {settings.get('kind')!r} in settings.json")
        files = settings.get("files") or {}
        for name, digest in files.items():
            path = os.path.join(folder, name)
            if not os.path.isfile(path):
                raise ArtefactError(f"artefact {folder} has no {name}; export the model again")
            if verify and file_sha256(path) != digest:
                raise ArtefactError(f"artefact {folder}: {name} does not match its recorded sha256 (changed or "
                                    "corrupt); export the model again")
        try:
            module = torch.jit.load(os.path.join(folder, "model.pt"), map_location="cpu")
        except (RuntimeError, ValueError, OSError) as exc:
            raise ArtefactError(f"artefact {folder}: model.pt cannot be loaded ({str(exc).splitlines()[0][:120]})"
                                ) from None
        module.eval()
        items = _read_json(folder, "items.json")
        if not isinstance(items, list) or len(items) != settings["n_items"]:
            raise ArtefactError(f"artefact {folder}: items.json does not hold {settings['n_items']} tokens")
        users, seen = None, None
        if settings["kind"] == GENERAL:
            users = _read_json(folder, "users.json")
            seen = torch.load(os.path.join(folder, "seen.pt"), map_location="cpu", weights_only=True)
        card = _read_json(folder, "card.json")
        fingerprint = (card.get("data") or {}).get("item_vocab_hash")
        if fingerprint and vocab_hash(items) != fingerprint:
            raise ArtefactError(f"artefact {folder}: items.json does not match the card's item_vocab_hash")
        return cls(folder, settings, module, items, users, seen, card)

    # ---- requests ---------------------------------------------------------------------------------
    def history_ids(self, history) -> list[int]:
        """Internal ids of a history of raw tokens; ``UnknownTokenError`` names every unknown one."""
        if isinstance(history, (str, bytes)) or not isinstance(history, (list, tuple)):
            raise RequestError("history must be a list of item tokens")
        tokens = [_token(t, "history items") for t in history]
        if not tokens:
            raise RequestError("history is empty: give at least one item token")
        unknown = [t for t in dict.fromkeys(tokens) if t not in self.item_index]
        if unknown:
            raise UnknownTokenError("item token" + ("s" if len(unknown) > 1 else ""), unknown)
        return [self.item_index[t] for t in tokens]

    def user_row(self, user) -> int:
        token = _token(user, "user")
        if token not in self.user_index:
            raise UnknownTokenError("user token", [token])
        return self.user_index[token]

    def check_k(self, k, max_k: int | None = None) -> int:
        limit = self.n_items - 1 if max_k is None else min(max_k, self.n_items - 1)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= limit:
            raise RequestError(f"k must be an integer from 1 to {limit}, got {k!r}")
        return k

    def parse(self, request: dict, max_k: int | None = None, max_history: int | None = None):
        """(input, k, exclude_seen) of one request dict: ``{"history": [...]}`` (sequential) or ``{"user": tok}``
        (general), optional ``k`` (default 10) and ``exclude_seen`` (default false)."""
        if not isinstance(request, dict):
            raise RequestError("a request must be a JSON object")
        k = self.check_k(request.get("k", min(10, self.n_items - 1)), max_k)
        exclude = request.get("exclude_seen", False)
        if not isinstance(exclude, bool):
            raise RequestError(f"exclude_seen must be true or false, got {exclude!r}")
        if self.kind == SEQUENTIAL:
            if "history" not in request:
                hint = " (this is a sequential model: it ranks from a history, not a user)" if "user" in request else ""
                raise RequestError("missing 'history': a list of item tokens, oldest first" + hint)
            history = request["history"]
            if max_history is not None and isinstance(history, list) and len(history) > max_history:
                error = RequestError(f"history has {len(history)} items; this service accepts at most {max_history}")
                error.status = 413
                raise error
            return self.history_ids(history), k, exclude
        if "user" not in request:
            hint = " (this is an MF model: it ranks for a known user, not a history)" if "history" in request else ""
            raise RequestError("missing 'user': a user token" + hint)
        return self.user_row(request["user"]), k, exclude

    # ---- scoring ----------------------------------------------------------------------------------
    def scores(self, inputs: list) -> torch.Tensor:
        """Scores [B, n_items] for B parsed inputs (histories of ids, or user rows); the padding id scores -inf.
        A history longer than ``max_length`` is cut to its most recent ``max_length`` items. The batch is as wide
        as its longest history needs (``extra_positions``): trailing padding changes no score, only the cost."""
        with torch.inference_mode():
            if self.kind == SEQUENTIAL:
                width = self.max_length
                if self.extra_positions is not None:
                    longest = max(min(len(ids), self.max_length) for ids in inputs)
                    width = min(self.max_length, longest + self.extra_positions)
                seq = torch.zeros((len(inputs), width), dtype=torch.long)
                lens = torch.zeros(len(inputs), dtype=torch.long)
                for i, ids in enumerate(inputs):
                    recent = ids[-self.max_length:]
                    seq[i, : len(recent)] = torch.tensor(recent, dtype=torch.long)
                    lens[i] = len(recent)
                out = self.module(seq, lens)
            else:
                out = self.module(torch.tensor(inputs, dtype=torch.long))
            out = out.float().clone()
            out[:, self.padding_id] = float("-inf")
            return out

    def seen_ids(self, parsed) -> list[int]:
        """The items a request has seen: its history (sequential), the user's items in the exported data (MF)."""
        if self.kind == SEQUENTIAL:
            return list(parsed)
        lo, hi = int(self.seen["offsets"][parsed]), int(self.seen["offsets"][parsed + 1])
        return self.seen["items"][lo:hi].tolist()

    @torch.inference_mode()
    def top_k(self, parsed: list, ks: list[int], excludes: list[bool]) -> list[tuple[list[str], list[float]]]:
        """Top-k (tokens, scores) of parsed inputs, best first; excluded items never appear."""
        if not parsed:
            return []
        scores = self.scores(parsed)
        for row, (p, exclude) in enumerate(zip(parsed, excludes)):
            if exclude:
                scores[row, self.seen_ids(p)] = float("-inf")
        values, ids = scores.topk(max(ks), dim=1)
        out = []
        for row, k in enumerate(ks):
            v, i = values[row, :k], ids[row, :k]
            keep = torch.isfinite(v)  # fewer than k items are left once the seen ones are excluded
            out.append(([self.items[j] for j in i[keep].tolist()], [float(x) for x in v[keep].tolist()]))
        return out

    def recommend(self, history=None, user=None, k: int = 10, exclude_seen: bool = False):
        """(tokens, scores) of the top ``k`` items for one history (sequential) or one user (general)."""
        request = {"k": k, "exclude_seen": exclude_seen}
        if history is not None:
            request["history"] = history
        if user is not None:
            request["user"] = user
        parsed, k, exclude = self.parse(request)
        return self.top_k([parsed], [k], [exclude])[0]

    def summary(self) -> dict:
        """What ``GET /health`` reports: the model and its card's headline fields."""
        card = self.card
        return {"model": self.model_name, "kind": self.kind, "n_items": self.n_items - 1,
                "n_users": len(self.users) - 1 if self.users is not None else None,
                "max_length": self.max_length or None,
                "dataset": (card.get("data") or {}).get("dataset"),
                "item_vocab_hash": (card.get("data") or {}).get("item_vocab_hash"),
                "protocol": card.get("protocol"), "test_result": card.get("test_result"),
                "teacher": (card.get("distillation") or {}).get("teacher"),
                "source_checkpoint_sha256": (card.get("source") or {}).get("checkpoint_sha256")}
