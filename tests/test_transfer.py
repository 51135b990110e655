"""Transfer: phase schedule, parameter and token mapping, frozen phase, cross-domain KD, CLI."""
import json
import os

import pytest
import torch

from conftest import run_cli, write_tiny_dataset


def write_source(root, name="src", n_users=30, seed=3):
    """A source dataset sharing users 1..20 and items 1..30 (raw tokens) with ``write_tiny_dataset``'s
    data; users x1.. and items s1.. exist only here."""
    rng = torch.Generator().manual_seed(seed)
    folder = os.path.join(str(root), name)
    os.makedirs(folder, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(1, n_users + 1):
        user = str(u) if u <= 20 else f"x{u}"
        n = 6 + int(torch.randint(0, 10, (1,), generator=rng))
        start = int(torch.randint(0, 60, (1,), generator=rng))
        for t in range(n):
            k = (start + t) % 60
            item = str(k + 1) if k < 30 else f"s{k}"
            lines.append(f"{user}\t{item}\t{1000 * u + t}")
    with open(os.path.join(folder, f"{name}.inter"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return str(root)


@pytest.fixture
def data(tmp_path):
    root = write_tiny_dataset(tmp_path / "data")
    write_source(root)
    return root


def make(model, data, tmp_path, **extra):
    from recbole_kd.config import build_config
    from recbole_kd.quick_start import prepare
    from recbole_kd.registry import get_entry, get_trainer

    overrides = {"data_path": data, "epochs": 1, "show_progress": False, "state": "WARNING",
                 "source": {"dataset": "src", "epochs": 1}, "transfer_dir": str(tmp_path / "transfer"),
                 "checkpoint_dir": str(tmp_path / "saved")}
    overrides.update(extra)
    cfg = build_config(model, "tiny", overrides=overrides)
    _, train, valid, test = prepare(cfg)
    m = get_entry(model).cls(cfg, train.dataset)
    trainer = get_trainer(cfg["MODEL_TYPE"], model)(cfg, m)
    return trainer, train, valid


def test_encoder_transfer_copies_encoder_not_items_and_caches_source(data, tmp_path, workdir):
    trainer, train, _ = make("Transfer-SASRec", data, tmp_path)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.attach_source(train)
    info = trainer.transfer_info
    assert info["source_phase"] == "trained" and info["encoder_tensors"] > 0
    source = torch.load(info["source_checkpoint"], weights_only=True)["state_dict"]
    after = trainer.model.state_dict()
    for name, value in after.items():
        if name.startswith("item_embedding"):
            assert torch.equal(value, before[name])  # target items: fresh
        else:
            assert torch.equal(value, source[name]), name  # encoder, positions, layer norms: source
    again, train2, _ = make("Transfer-SASRec", data, tmp_path)
    again.attach_source(train2)
    assert again.transfer_info["source_phase"] == "cached"


def test_phase_settings_are_nested_sections(data, tmp_path, workdir):
    from recbole_kd.quick_start import run

    res = run("Transfer-SASRec", "tiny", overrides={
        "data_path": data, "show_progress": False, "state": "WARNING", "transfer_dir": str(tmp_path / "t"),
        "source": {"dataset": "src", "epochs": 2, "learning_rate": 0.01},
        "target": {"epochs": 3, "learning_rate": 0.002, "stopping_step": 10}})
    assert res["epochs_run"] == 3 and res["config"]["learning_rate"] == 0.002
    (src_json,) = [f for f in os.listdir(tmp_path / "t") if f.endswith(".json")]
    src = json.loads((tmp_path / "t" / src_json).read_text())
    assert src["dataset"] == "src" and src["epochs_run"] == 2 and src["config"]["learning_rate"] == 0.01
    assert src["config"]["hidden_size"] == res["config"]["hidden_size"]  # same architecture in both phases


def test_frozen_encoder_phase(data, tmp_path, workdir):
    trainer, train, valid = make("Transfer-SASRec", data, tmp_path, transfer_freeze_epochs=1, epochs=2,
                                 stopping_step=10)
    trainer.attach_source(train)
    enc = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if n in trainer.transferred}
    items = trainer.model.item_embedding.weight.detach().clone()
    trainer._train_epoch(train, 0)
    assert all(torch.equal(p, enc[n]) for n, p in trainer.model.named_parameters() if n in enc)
    assert not torch.equal(trainer.model.item_embedding.weight, items)
    trainer._train_epoch(train, 1)
    assert any(not torch.equal(p, enc[n]) for n, p in trainer.model.named_parameters() if n in enc)


def test_shared_tokens_get_exactly_their_source_vectors(data, tmp_path, workdir):
    trainer, train, _ = make("Transfer-MF", data, tmp_path)
    target = train.dataset
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.attach_source(train)
    report = trainer.transfer_info["shared_tokens"]
    assert report["users"]["shared"] == 20 and report["items"]["shared"] == 30
    source = torch.load(trainer.transfer_info["source_checkpoint"], weights_only=True)["state_dict"]
    from recbole_kd.config import build_config
    from recbole.data import create_dataset

    src_ds = create_dataset(build_config("MF-S", "src", overrides={"data_path": data, "state": "WARNING"}))
    for attr, field in (("user_embedding", target.uid_field), ("item_embedding", target.iid_field)):
        weight = trainer.model.state_dict()[f"{attr}.weight"]
        for tid, token in enumerate(target.field2id_token[field]):
            if tid == 0:
                continue
            sid = src_ds.field2token_id[field].get(token)
            if sid is not None:
                assert torch.equal(weight[tid], source[f"{attr}.weight"][sid]), (attr, token)
            else:
                assert torch.equal(weight[tid], before[f"{attr}.weight"][tid]), (attr, token)


def test_cross_domain_kd_runs_and_counts_shared_users(data, tmp_path, workdir):
    trainer, train, valid = make("Transfer-SASRec", data, tmp_path, transfer_mechanisms=["cross_kd"])
    trainer.fit(train, valid, saved=True)
    assert trainer.transfer_info["cross_kd_shared_users"] == 20
    batch = next(iter(train))
    main, hint = trainer.transfer_loss(batch)
    assert hint.item() > 0 and main.item() > 0
    opt = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in trainer.kd_map.parameters()} <= opt


@pytest.mark.slow
@pytest.mark.parametrize("mechanisms", ["['encoder']", "['encoder', 'cross_kd']"])
def test_cli_end_to_end(mechanisms, data, tmp_path):
    proc = run_cli("--model=Transfer-SASRec", "--source=src", "--dataset=tiny", f"--data_path={data}",
                   "--epochs=1", "--show_progress=False", f"--transfer_mechanisms={mechanisms}",
                   f"--result_file={tmp_path / 'r.json'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["kind"] == "transfer" and res["source_dataset"] == "src"


@pytest.mark.slow
def test_cli_errors(data, tmp_path):
    proc = run_cli("--model=Transfer-SASRec", "--dataset=tiny", f"--data_path={data}", cwd=tmp_path)
    assert proc.returncode == 2 and "needs a source dataset" in proc.stderr
    proc = run_cli("--model=Transfer-SASRec", "--source=src", "--dataset=tiny", f"--data_path={data}",
                   "--transfer_mechanisms=['magic']", cwd=tmp_path)
    assert proc.returncode == 2 and "transfer_mechanisms" in proc.stderr


@pytest.mark.parametrize("model", ["SASRec-S", "MF-S"])
def test_low_resource_keeps_recent_training_and_same_test_users(model, data):
    from recbole_kd.config import build_config
    from recbole_kd.quick_start import keep_recent, prepare

    def load(fraction):
        cfg = build_config(model, "tiny", overrides={"data_path": data, "state": "WARNING", "train_fraction": fraction})
        return prepare(cfg)

    _, full, _, test_full = load(None)
    _, low, _, test_low = load(0.2)
    assert torch.equal(test_full.dataset.inter_feat["user_id"], test_low.dataset.inter_feat["user_id"])
    assert torch.equal(test_full.dataset.inter_feat["item_id"], test_low.dataset.inter_feat["item_id"])
    if model == "SASRec-S":
        from recbole_kd.models.windows import user_train_sequences

        _, seqs = user_train_sequences(full.dataset)
        expected = sum(keep_recent(len(s), 0.2) - 1 for s in seqs)  # targets: every item after the first
        assert low.num_targets() == expected < full.num_targets()
    else:
        inter = full.dataset.inter_feat
        users, counts = torch.unique(inter["user_id"], return_counts=True)
        assert len(low.dataset.inter_feat) == sum(keep_recent(int(n), 0.2) for n in counts)
        kept = low.dataset.inter_feat
        for u in users[:5]:  # the most recent interactions of each user are the ones kept
            mine = inter["timestamp"][inter["user_id"] == u]
            assert torch.equal(kept["timestamp"][kept["user_id"] == u], mine[len(mine) - keep_recent(len(mine), 0.2):])


def test_source_data_path_target_folder_else_embedded(data, tmp_path):
    """The source is read from the target's data folder; the embedded ml-100k (not in that folder)
    is found in RecBole's own folder, so it can be the source for any target; an explicit
    ``source: {data_path: ...}`` wins."""
    from recbole_kd.config import build_config
    from recbole_kd.transfer.trainer import source_spec

    def spec(source):
        cfg = build_config("Transfer-SASRec", "tiny", overrides={"data_path": data, "source": source})
        return source_spec(cfg)

    assert os.path.samefile(spec({"dataset": "src"})[1]["data_path"], data)
    name, over = spec({"dataset": "ml-100k"})
    assert name == "ml-100k" and "data_path" not in over  # RecBole's default: recbole/dataset_example
    s_cfg = build_config("SASRec-S", "ml-100k", overrides=over)
    assert os.path.isfile(os.path.join(s_cfg["data_path"], "ml-100k.inter"))
    assert spec({"dataset": "ml-100k", "data_path": str(tmp_path)})[1]["data_path"] == str(tmp_path)
    assert os.path.samefile(spec({"dataset": "nowhere"})[1]["data_path"], data)  # unknown: error names that folder
