"""The distillation trainer end to end: teacher isolation, cache equality, zoo, CLI."""
import json
import os

import pytest
import torch

from conftest import run_cli

FAST_TEACHER = {"epochs": 1}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """One teacher zoo shared by this module's tests (each teacher is trained once)."""
    return str(tmp_path_factory.mktemp("zoo"))


def kd_overrides(tiny_data, zoo, **extra):
    base = {"data_path": tiny_data, "epochs": 1, "show_progress": False, "state": "WARNING",
            "teacher_dir": zoo, "teacher_config": FAST_TEACHER}
    base.update(extra)
    return base


def make_trainer(model, tiny_data, zoo, **extra):
    from recbole_kd.config import build_config
    from recbole_kd.quick_start import prepare
    from recbole_kd.registry import get_entry, get_trainer

    cfg = build_config(model, "tiny", overrides=kd_overrides(tiny_data, zoo, **extra))
    _, train, valid, test = prepare(cfg)
    student = get_entry(model).cls(cfg, train.dataset)
    trainer = get_trainer(cfg["MODEL_TYPE"], model)(cfg, student)
    trainer.attach_teacher(train)
    return trainer, train, valid


def test_teacher_frozen_outside_optimizer_and_checkpoint(tiny_data, zoo, workdir):
    trainer, train, valid = make_trainer("KD-SASRec", tiny_data, zoo, kd_losses={"soft": 1.0, "hint": 0.5})
    teacher = trainer.teacher
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    opt_params = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not opt_params & {id(p) for p in teacher.parameters()}
    assert {id(p) for p in trainer.model.parameters()} <= opt_params
    assert {id(p) for p in trainer.kd_modules.parameters()} <= opt_params  # the hint projection learns
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer.fit(train, valid, saved=True, show_progress=False)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in teacher.parameters())
    state = torch.load(trainer.saved_model_file, weights_only=True)
    assert set(state["state_dict"]) == set(trainer.model.state_dict())
    assert not any(k.startswith("teacher") for k in state["state_dict"])


@pytest.mark.parametrize("model,teacher", [("KD-SASRec", "SASRec-L"), ("KD-SASRec", "BERT4Rec-L"), ("KD-MF", "SASRec-L"), ("KD-MF", "MF-L")])
def test_cache_gives_same_loss_as_uncached_teacher(model, teacher, tiny_data, zoo, workdir):
    losses = {"hard": 1.0, "soft": 1.0, "soft_full": 1.0, "rd": 1.0, "hint": 1.0}
    cached, train, _ = make_trainer(model, tiny_data, zoo, teacher=teacher, kd_losses=losses, kd_cache=True)
    plain, _, _ = make_trainer(model, tiny_data, zoo, teacher=teacher, kd_losses=losses, kd_cache=False)
    plain.model.load_state_dict(cached.model.state_dict())
    plain.kd_modules.load_state_dict(cached.kd_modules.state_dict())
    cached.model.eval(), plain.model.eval()
    batch = next(iter(train))
    if model == "KD-MF":  # BPR needs its negative items; take them from RecBole's own loader
        batch = next(iter(train))
    a = cached.distillation_loss(batch)
    b = plain.distillation_loss(batch)
    assert len(a) == 1 + len(losses)
    for x, y in zip(a, b):
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-5), [(float(p), float(q)) for p, q in zip(a, b)]


def test_zoo_reuses_teacher_and_refuses_mismatch(tiny_data, zoo, workdir, tmp_path):
    from recbole_kd.checkpoint import CheckpointError
    from tests_helpers import other_dataset

    t1, _, _ = make_trainer("KD-SASRec", tiny_data, zoo)
    assert t1.teacher_info["teacher_source"] in ("zoo", "trained")
    t2, _, _ = make_trainer("KD-SASRec", tiny_data, zoo)
    assert t2.teacher_info["teacher_source"] == "zoo"
    ckpt = t2.teacher_info["teacher_checkpoint"]
    # same checkpoint, other item vocabulary -> refused
    other = other_dataset(tmp_path)
    with pytest.raises(CheckpointError, match="item vocabulary|dataset"):
        make_trainer("KD-SASRec", other, zoo, teacher_checkpoint=ckpt)
    # checkpoint of another model -> refused
    with pytest.raises(CheckpointError, match="holds model"):
        make_trainer("KD-SASRec", tiny_data, zoo, teacher="BERT4Rec-L", teacher_checkpoint=ckpt)


@pytest.mark.slow
def test_mismatched_teacher_checkpoint_cli_exit_2(tiny_data, zoo, tmp_path):
    from tests_helpers import other_dataset

    # a teacher for the tiny dataset ...
    proc = run_cli("--model=SASRec-L", "--dataset=tiny", f"--data_path={tiny_data}", "--epochs=1",
                   "--show_progress=False", f"--result_file={tmp_path / 't.json'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = json.loads((tmp_path / "t.json").read_text())["checkpoint"]
    # ... used for another dataset named the same
    other = other_dataset(tmp_path / "o")
    proc = run_cli("--model=KD-SASRec", "--dataset=tiny", f"--data_path={other}", "--epochs=1",
                   f"--teacher_checkpoint={os.path.join(tmp_path, ckpt)}", "--show_progress=False", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("recbole-kd: error")]
    assert len(lines) == 1 and "item vocabulary" in lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["KD-SASRec", "KD-MF"])
def test_cli_one_epoch_on_ml100k(model, zoo, tmp_path):
    out = tmp_path / "r.json"
    proc = run_cli(f"--model={model}", "--dataset=ml-100k", "--epochs=1", "--show_progress=False",
                   f"--teacher_dir={zoo}", "--teacher_config={'epochs': 1}", f"--result_file={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["model"] == model and r["teacher"] == "SASRec-L"
    assert r["teacher_num_params"] > r["student_num_params"]
    for key in ("latency_seconds", "throughput_users_per_second", "checkpoint_bytes", "model_state_bytes"):
        assert r[key] > 0, key
    assert "train_loss2" in proc.stderr + proc.stdout  # the KD term is logged separately


def test_ensemble_teacher_averages_member_log_probs_and_runs(tiny_data, zoo, workdir, tmp_path):
    from recbole_kd.kd.ensemble import EnsembleTeacher
    from recbole_kd.quick_start import run

    ckpts = []
    for i, (name, extra) in enumerate([("SASRec-L", {}), ("SASRec-S", {"seed": 7})]):
        res = run(name, "tiny", overrides={"data_path": tiny_data, "epochs": 1, "show_progress": False,
                                           "state": "WARNING", "checkpoint_dir": str(tmp_path / f"m{i}"), **extra})
        ckpts.append(res["checkpoint"])
    trainer, train, valid = make_trainer("KD-SASRec", tiny_data, zoo, teacher_checkpoint=ckpts,
                                         kd_losses={"soft": 1.0, "hint": 1.0})
    teacher = trainer.teacher
    assert isinstance(teacher, EnsembleTeacher) and len(teacher.members) == 2
    assert trainer.teacher_info["teacher"] == "ensemble(SASRec-L x1, SASRec-S x1)"
    batch = next(iter(train))
    from recbole_kd.models.windows import OWN_FROM_FIELD, WINDOW_FIELD, owned_target_mask

    window = batch[WINDOW_FIELD]
    inputs, mask = window[:, :-1], owned_target_mask(window[:, 1:], batch[OWN_FROM_FIELD] - 1)
    with torch.no_grad():
        hidden, scores = teacher.position_outputs(inputs, mask)
        parts = [m.position_outputs(inputs, mask) for m in teacher.members]
    expected = torch.stack([torch.log_softmax(l, 1) for _, l in parts]).mean(0)
    torch.testing.assert_close(scores, expected)
    assert hidden.shape[1] == sum(m.hidden_size for m in teacher.members) == teacher.hidden_size
    trainer.fit(train, valid, saved=True, show_progress=False)  # distils end to end (hint maps onto the concat)
    # cached == uncached for the ensemble too
    plain, _, _ = make_trainer("KD-SASRec", tiny_data, zoo, teacher_checkpoint=ckpts, kd_losses={"soft": 1.0},
                               kd_cache=False)
    cached, _, _ = make_trainer("KD-SASRec", tiny_data, zoo, teacher_checkpoint=ckpts, kd_losses={"soft": 1.0})
    plain.model.load_state_dict(cached.model.state_dict())
    cached.model.eval(), plain.model.eval()
    for x, y in zip(cached.distillation_loss(batch), plain.distillation_loss(batch)):
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-5)


def test_evaluate_checkpoints_matches_the_training_run_and_scores_ensembles(tiny_data, workdir, tmp_path):
    """A teacher row of the benchmark: one checkpoint evaluates to its run's own test result; an
    ensemble's full-sort scores are the mean of its members' log-probabilities."""
    from recbole_kd.kd.teacher import evaluate_checkpoints
    from recbole_kd.quick_start import run

    runs = []
    for seed in (1, 2):
        runs.append(run("SASRec-L", "tiny", overrides={"data_path": tiny_data, "epochs": 2, "seed": seed,
                                                         "show_progress": False, "state": "WARNING",
                                                         "checkpoint_dir": str(tmp_path / f"s{seed}")}))
    one = evaluate_checkpoints("tiny", runs[0]["checkpoint"], {"data_path": tiny_data, "state": "WARNING"})
    assert one["model"] == "SASRec-L" and one["num_params"] == runs[0]["num_params"]
    assert one["test_result"] == pytest.approx(runs[0]["test_result"], abs=1e-4)
    assert one["best_valid_result"] == pytest.approx(runs[0]["best_valid_result"], abs=1e-4)
    for protocol in ("filter_seen", "recbole"):  # both protocols, as the training run reported them
        assert one["test_result_by_protocol"][protocol] == pytest.approx(runs[0]["test_result_by_protocol"][protocol],
                                                                          abs=1e-4)
    both = evaluate_checkpoints("tiny", [r["checkpoint"] for r in runs], {"data_path": tiny_data, "state": "WARNING"})
    assert both["model"] == "ensemble(SASRec-L x2)" and both["num_params"] == 2 * runs[0]["num_params"]
    assert both["latency_seconds"] > 0 and set(both["test_result"]) == set(one["test_result"])

    from recbole_kd.config import build_config
    from recbole_kd.kd.teacher import load_ensemble
    from recbole_kd.quick_start import prepare

    cfg = build_config("SASRec-L", "tiny", overrides={"data_path": tiny_data, "state": "WARNING"})
    dataset, _, _, test = prepare(cfg)
    ens, _ = load_ensemble(cfg, dataset, [r["checkpoint"] for r in runs], None)
    batch = next(iter(test))[0]
    with torch.no_grad():
        expected = torch.stack([torch.log_softmax(m.full_sort_predict(batch), 1) for m in ens.members]).mean(0)
        torch.testing.assert_close(ens.full_sort_predict(batch), expected)


@pytest.mark.parametrize("model", ["KD-SASRec", "KD-MF"])
def test_teacher_outputs_disk_cache_is_reused_only_for_the_same_teacher_and_inputs(model, tiny_data, zoo, workdir, tmp_path):
    """kd_cache_dir: the first run computes and saves the teacher's outputs, a later run with the
    same teacher and training inputs loads them (equal tensors, equal loss); another top-K gets
    its own file; an unreadable file is recomputed, not trusted."""
    cache = str(tmp_path / "cache")
    losses = {"soft": 1.0, "hint": 1.0}
    first, train, _ = make_trainer(model, tiny_data, zoo, kd_losses=losses, kd_cache_dir=cache)
    out1 = first.teacher_outputs
    assert not out1.loaded_from_disk and os.path.isfile(out1.cache_file)
    # another student seed, the same teacher checkpoint (as the benchmark runs its seeds)
    again, _, _ = make_trainer(model, tiny_data, zoo, kd_losses=losses, kd_cache_dir=cache, seed=5,
                               teacher_checkpoint=first.teacher_info["teacher_checkpoint"])
    out2 = again.teacher_outputs
    assert out2.loaded_from_disk and out2.cache_file == out1.cache_file
    for key in ("ids", "scores", "hidden"):
        assert torch.equal(getattr(out1, key), getattr(out2, key)), key
    again.model.load_state_dict(first.model.state_dict())
    again.kd_modules.load_state_dict(first.kd_modules.state_dict())
    first.model.eval(), again.model.eval()
    batch = next(iter(train))
    for x, y in zip(first.distillation_loss(batch), again.distillation_loss(batch)):
        assert torch.equal(x, y)
    other, _, _ = make_trainer(model, tiny_data, zoo, kd_losses=losses, kd_cache_dir=cache, kd_topk=7)
    assert not other.teacher_outputs.loaded_from_disk and other.teacher_outputs.cache_file != out1.cache_file
    with open(out1.cache_file, "wb") as f:
        f.write(b"truncated")
    redo, _, _ = make_trainer(model, tiny_data, zoo, kd_losses=losses, kd_cache_dir=cache)
    assert not redo.teacher_outputs.loaded_from_disk
    assert torch.equal(redo.teacher_outputs.ids, out1.ids)
    assert torch.load(out1.cache_file, weights_only=True)["ids"].shape == out1.ids.shape  # rewritten whole


@pytest.mark.parametrize("teacher", ["SASRec-L", "BERT4Rec-L"])
def test_teacher_top_k_never_holds_an_item_the_row_has_seen(teacher, tiny_data, zoo, workdir):
    """kd_mask_seen (default): at every training position the teacher's top-K excludes the items of
    the prefix up to that position, as the filter_seen evaluation protocol removes a user's history; the
    other items keep their raw order. kd_mask_seen=False: the raw top-K."""
    from recbole_kd.models.windows import OWN_FROM_FIELD, WINDOW_FIELD, owned_target_mask

    masked, train, _ = make_trainer("KD-SASRec", tiny_data, zoo, teacher=teacher, kd_losses={"rd": 1.0})
    raw, _, _ = make_trainer("KD-SASRec", tiny_data, zoo, teacher=teacher, kd_losses={"rd": 1.0},
                             kd_mask_seen=False)
    assert masked.run_report()["kd_mask_seen"] is True and raw.run_report()["kd_mask_seen"] is False
    window, own = train.table[WINDOW_FIELD], train.table[OWN_FROM_FIELD]
    inputs = window[:, :-1]
    b, q = owned_target_mask(window[:, 1:], own - 1).nonzero(as_tuple=True)
    seen = inputs[b].masked_fill(torch.arange(inputs.size(1)).unsqueeze(0) > q.unsqueeze(1), 0)
    ids_m, ids_r = masked.teacher_outputs.ids.long(), raw.teacher_outputs.ids.long()
    assert ids_m.shape == ids_r.shape == (b.numel(), ids_m.size(1))
    in_seen = lambda ids: (ids.unsqueeze(2) == seen.unsqueeze(1)).any(2)  # noqa: E731
    ranked = torch.isfinite(masked.teacher_outputs.scores)  # a row with < K unseen items pads with -inf
    assert ranked[:, 0].all() and not (in_seen(ids_m) & ranked).any()
    assert in_seen(ids_r).any()  # the raw top-K does hold seen items (the input item among them)
    # the log-normaliser runs over the items the top-K is drawn from: masking seen items lowers it,
    # and the top-K's probabilities under it sum to at most 1
    norm_m, norm_r = masked.teacher_outputs.log_norm, raw.teacher_outputs.log_norm
    assert (norm_m <= norm_r + 1e-5).all() and (norm_m < norm_r - 1e-3).any()
    for out in (masked.teacher_outputs, raw.teacher_outputs):
        assert ((out.scores - out.log_norm.unsqueeze(1)).exp().sum(1) <= 1 + 1e-5).all()
    for r in range(ids_r.size(0)):  # masking only removes: the unseen items of the raw list, in order, lead
        keep = ids_r[r][~(ids_r[r].unsqueeze(1) == seen[r].unsqueeze(0)).any(1)]
        assert torch.equal(ids_m[r, : keep.numel()], keep)


def test_runs_distilled_from_the_raw_top_k_are_told_apart():
    """Stored runs from before kd_mask_seen: a windowed student's top-K losses read seen items; hint
    reads no top-K, and an MF student's users always had their training items masked."""
    from recbole_kd.kd.teacher_spec import distilled_from_raw_top_k as raw

    assert raw("KD-SASRec", {"kd_losses": {"rd": 1.0}})
    assert raw("KD-SASRec", {"kd_losses": {"rrd": 1.0, "hint": 1.0}, "kd_mask_seen": False})
    assert not raw("KD-SASRec", {"kd_losses": {"rd": 1.0}, "kd_mask_seen": True})
    assert not raw("KD-SASRec", {"kd_losses": {"hint": 1.0}})
    assert not raw("KD-MF", {"kd_losses": {"soft": 1.0}})
    assert not raw("SASRec-S", {})


def test_teacher_checkpoint_of_another_split_is_refused(tiny_data, zoo, workdir):
    """A teacher trained on another split (here: another train_fraction, or another leave-one-out)
    could hold the student's valid / test interactions: refused by name, not used silently."""
    from recbole_kd.checkpoint import CheckpointError

    t, _, _ = make_trainer("KD-SASRec", tiny_data, zoo)
    ckpt = t.teacher_info["teacher_checkpoint"]
    with pytest.raises(CheckpointError, match="another split.*train_fraction=None there, 0.5 here"):
        make_trainer("KD-SASRec", tiny_data, zoo, teacher_checkpoint=ckpt, train_fraction=0.5)
    with pytest.raises(CheckpointError, match="another split.*eval_args"):
        make_trainer("KD-SASRec", tiny_data, zoo, teacher_checkpoint=ckpt,
                     eval_args={"split": {"RS": [0.8, 0.1, 0.1]}, "order": "TO", "group_by": "user", "mode": "full"})


def test_low_resource_student_gets_a_low_resource_teacher_from_the_zoo(tiny_data, zoo, workdir):
    """train_fraction is part of the teacher's settings and zoo key: a 20 % student's zoo teacher trains on
    the same 20 %, never on the full training data."""
    import torch as _torch

    from recbole_kd.kd.teacher_spec import zoo_path

    full, _, _ = make_trainer("KD-SASRec", tiny_data, zoo)
    low, _, _ = make_trainer("KD-SASRec", tiny_data, zoo, train_fraction=0.2)
    assert full.teacher_info["teacher_checkpoint"] != low.teacher_info["teacher_checkpoint"]
    state = _torch.load(low.teacher_info["teacher_checkpoint"], weights_only=True)
    assert state["config"]["train_fraction"] == 0.2
    assert zoo_path(low.config)[1] != zoo_path(full.config)[1]


@pytest.mark.parametrize("model,filter_seen,expected", [
    ("KD-SASRec", True, True), ("KD-SASRec", False, False),  # a sequential student: as its evaluation filters
    ("KD-MF", True, True), ("KD-MF", False, True),  # a general one: RecBole's protocol filters its history too
])
def test_kd_mask_seen_follows_the_evaluation_protocol(model, filter_seen, expected, tiny_data, zoo, workdir):
    trainer, _, _ = make_trainer(model, tiny_data, zoo, filter_seen=filter_seen)
    assert trainer.kd_mask_seen is expected
    assert trainer.teacher_outputs.mask_seen is expected
    explicit, _, _ = make_trainer(model, tiny_data, zoo, filter_seen=filter_seen, kd_mask_seen=not expected)
    assert explicit.kd_mask_seen is (not expected)


@pytest.mark.parametrize("gate", ["topk", "rank"])
def test_kd_gate_that_could_never_open_is_refused(gate, tiny_data, tmp_path):
    """KD-MF's rows are users and their targets the user's training items, which the mask removes from
    the teacher's top-K: a topk/rank gate would weight every row 0 and distil nothing, silently."""
    proc = run_cli("--model=KD-MF", "--dataset=tiny", f"--data_path={tiny_data}", "--epochs=1",
                   f"--kd_gate={gate}", "--show_progress=False", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-1500:]
    lines = [l for l in proc.stderr.splitlines() if l.startswith("recbole-kd: error")]
    assert len(lines) == 1 and "the gate would never open" in lines[0]
