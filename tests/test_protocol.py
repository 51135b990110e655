"""The evaluation protocol (recbole_kd/protocol.py): seen items filtered or RecBole's rule, both computed
from one pass of scores, checked against metrics recomputed here from the raw scores and the raw file."""
import json
import math
import os

import numpy as np
import pytest
import torch

from conftest import FAST, run_cli

N_USERS, N_ITEMS = 30, 50


def write_no_repeat_dataset(root, name="norep", seed=0):
    """Time-ordered interactions, no (user, item) pair twice (as in MovieLens and the Amazon 5-core files)."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(str(root), name)
    os.makedirs(folder, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    history = {}
    for u in range(1, N_USERS + 1):
        items = rng.permutation(np.arange(1, N_ITEMS + 1))[: rng.integers(5, 16)]
        history[str(u)] = [str(i) for i in items]
        lines += [f"{u}\t{i}\t{1000 * u + t}" for t, i in enumerate(items)]
    with open(os.path.join(folder, f"{name}.inter"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return str(root), history


@pytest.fixture
def norep(tmp_path):
    return write_no_repeat_dataset(tmp_path / "data")


def setup(model, data_path, **overrides):
    from recbole_kd.config import build_config
    from recbole_kd.quick_start import prepare
    from recbole_kd.registry import get_entry, get_trainer

    cfg = build_config(model, "norep", overrides={**FAST, "data_path": data_path, **overrides})
    dataset, train, valid, test = prepare(cfg)
    net = get_entry(model).cls(cfg, train.dataset)
    trainer = get_trainer(cfg["MODEL_TYPE"], model)(cfg, net)
    return dataset, trainer, valid, test


def raw_ids(dataset, history):
    """Each internal user id's time-ordered internal item ids, from the raw file (not from RecBole's split)."""
    uid, iid = dataset.uid_field, dataset.iid_field
    return {int(dataset.token2id(uid, u)): [int(dataset.token2id(iid, i)) for i in items] for u, items in history.items()}


def scorer(model, dataset, seqs, phase, pattern):
    """Replace the model's full_sort_predict: ``pattern(user's items before the target, target)`` -> scores."""
    uid = dataset.uid_field
    back = 2 if phase == "valid" else 1

    def predict(interaction):
        rows = []
        for u in interaction[uid].tolist():
            items = seqs[u]
            rows.append(pattern(items[: len(items) - back], items[len(items) - back], u))
        return torch.stack(rows)

    model.full_sort_predict = predict


def history_first(seen, target, user):
    """The user's first (oldest) item ranked first, the target second, every other item below."""
    s = torch.zeros(N_ITEMS + 1)
    s[target] = 1.0
    s[seen[0]] = 2.0
    return s


@pytest.mark.parametrize("model,recbole_mrr", [("SASRec-S", 0.5), ("BPR", 1.0)])
@pytest.mark.parametrize("filter_seen", [True, False])
def test_a_history_item_ranked_first_is_removed_under_filter_seen_and_kept_without(model, recbole_mrr, filter_seen,
                                                                                   norep, workdir):
    """filter_seen: the history item is gone, the target is first (MRR 1). RecBole's rule keeps it for a
    sequential model (target second: MRR 0.5) and removes it for a general one. The selected protocol is the
    result RecBole's trainer sees (valid_metric, early stopping); both are in ``by_protocol``."""
    data_path, history = norep
    dataset, trainer, valid, test = setup(model, data_path, filter_seen=filter_seen)
    seqs = raw_ids(dataset, history)
    for phase, loader in (("valid", valid), ("test", test)):
        scorer(trainer.model, dataset, seqs, phase, history_first)
        result = trainer.evaluate(loader, load_best_model=False)
        assert result.by_protocol["filter_seen"]["mrr@10"] == 1.0
        assert result.by_protocol["recbole"]["mrr@10"] == recbole_mrr
        assert result["mrr@10"] == (1.0 if filter_seen else recbole_mrr)
        assert result.protocol == ("filter_seen" if filter_seen else "recbole")
        assert trainer.evaluated_users == N_USERS


def reference(scores, seen, target, filter_):
    s = scores.clone()
    s[0] = -math.inf
    if filter_:
        s[list(seen)] = -math.inf
    rank = int((s > s[target]).sum()) + 1
    return {"ndcg@10": 1 / math.log2(rank + 1) if rank <= 10 else 0.0, "recall@10": float(rank <= 10),
            "mrr@10": 1 / rank if rank <= 10 else 0.0, "recall@20": float(rank <= 20)}


@pytest.mark.parametrize("model", ["SASRec-S", "BPR"])
def test_metrics_under_both_protocols_equal_a_reference_from_the_raw_scores(model, norep, workdir):
    """Scores with history items pushed up: every metric under both protocols, recomputed here from the
    recorded raw scores and the raw file's time order (no RecBole evaluator, no SeenItems)."""
    data_path, history = norep
    dataset, trainer, valid, test = setup(model, data_path)
    seqs = raw_ids(dataset, history)
    gen = torch.Generator().manual_seed(0)
    sequential = model == "SASRec-S"
    for phase, loader in (("valid", valid), ("test", test)):
        recorded = {}

        def pattern(seen, target, user, recorded=recorded):
            s = torch.randn(N_ITEMS + 1, generator=gen)
            s[target] += 2.0
            s[seen] += 2.5  # seen items tend to sit above the target
            recorded[user] = (s.clone(), seen, target)
            return s

        scorer(trainer.model, dataset, seqs, phase, pattern)
        result = trainer.evaluate(loader, load_best_model=False)
        assert len(recorded) == N_USERS
        for protocol, filter_ in (("filter_seen", True), ("recbole", not sequential)):
            refs = [reference(s, seen, t, filter_) for s, seen, t in recorded.values()]
            for metric in ("ndcg@10", "recall@10", "mrr@10", "recall@20"):
                expected = sum(r[metric] for r in refs) / len(refs)
                assert result.by_protocol[protocol][metric] == pytest.approx(expected, abs=1e-4), (phase, protocol, metric)
        if sequential:  # the history items do hurt the unfiltered ranking here: the test can tell them apart
            assert result.by_protocol["filter_seen"]["ndcg@10"] > result.by_protocol["recbole"]["ndcg@10"]


def test_seen_items_are_each_users_whole_history_before_the_target_on_ml_100k(workdir):
    """ml-100k histories are far longer than SASRec-S's window (50): the seen items of every valid and test
    user still equal everything before its target in the raw file's time order."""
    import recbole

    from recbole_kd.config import build_config
    from recbole_kd.quick_start import prepare

    cfg = build_config("SASRec-S", "ml-100k", overrides=dict(FAST))
    dataset, train, valid, test = prepare(cfg)
    path = os.path.join(os.path.dirname(recbole.__file__), "dataset_example", "ml-100k", "ml-100k.inter")
    raw = {}
    with open(path) as f:
        next(f)
        for line in f:
            u, i, _, t = line.rstrip("\n").split("\t")
            raw.setdefault(u, []).append((float(t), i))
    checked = 0
    for loader, back in ((valid, 2), (test, 1)):
        ds = loader.dataset
        users = ds.inter_feat[ds.uid_field].tolist()
        targets = ds.inter_feat[ds.iid_field].tolist()
        for u, target in zip(users, targets):
            token = dataset.id2token(dataset.uid_field, u)
            ordered = [i for _, i in sorted(raw[token], key=lambda x: x[0])]
            # RecBole's order among equal timestamps is its own: compare with what precedes its target
            target_token = dataset.id2token(dataset.iid_field, target)
            before = ordered[: ordered.index(target_token)] if len(ordered) - back == ordered.index(target_token) else None
            if before is None:  # a timestamp tie moved the target; check set sizes only
                assert len(loader.seen_items.of(u)) == len(ordered) - back
                continue
            assert sorted(loader.seen_items.of(u)) == sorted(int(dataset.token2id(dataset.iid_field, i)) for i in before)
            checked += 1
    assert checked > 1500  # 943 users, valid and test


@pytest.mark.slow
@pytest.mark.parametrize("model", ["SASRec", "BPR"])
def test_stock_recbole_models_through_the_cli_obey_filter_seen(model, norep, workdir):
    """RecBole's own SASRec and BPR run through our CLI: the selected protocol drives the reported result,
    both protocols are in the result file, and filtering seen items never lowers a metric on data without
    repeats (it only removes non-targets)."""
    data_path, _ = norep
    for flag, expected in (("True", "filter_seen"), ("False", "recbole")):
        out = workdir / f"{model}-{flag}.json"
        r = run_cli(f"--model={model}", "--dataset=norep", f"--data_path={data_path}", "--epochs=1",
                    "--show_progress=False", f"--filter_seen={flag}", f"--result_file={out}", cwd=workdir)
        assert r.returncode == 0, r.stderr[-2000:]
        res = json.loads(out.read_text())
        assert res["protocol"] == expected
        assert res["test_result"] == res["test_result_by_protocol"][expected]
        assert res["best_valid_result"] == res["best_valid_result_by_protocol"][expected]
        f, rb = res["test_result_by_protocol"]["filter_seen"], res["test_result_by_protocol"]["recbole"]
        for metric in f:
            assert f[metric] >= rb[metric] - 1e-9, metric
        if model == "BPR":  # RecBole already removes a general model's history: no repeats, no difference
            assert f == rb


def test_filter_seen_must_be_a_boolean(norep, workdir):
    data_path, _ = norep
    r = run_cli("--model=SASRec-S", "--dataset=norep", f"--data_path={data_path}", "--filter_seen=maybe", cwd=workdir)
    assert r.returncode == 2
    assert "invalid setting filter_seen='maybe'" in r.stderr


def test_resumed_run_keeps_both_protocols_of_its_best_epoch(norep, workdir):
    """A finished run resumed (--resume) reports the by-protocol validation results it had."""
    from recbole_kd.quick_start import run

    data_path, _ = norep
    settings = {**FAST, "data_path": data_path, "epochs": 2, "checkpoint_dir": str(workdir / "saved")}
    first = run("SASRec-S", "norep", overrides=settings)
    again = run("SASRec-S", "norep", overrides={**settings, "resume": True})
    assert again["resumed_from"]
    assert again["best_valid_result_by_protocol"] == first["best_valid_result_by_protocol"]
    assert again["test_result_by_protocol"] == first["test_result_by_protocol"]
