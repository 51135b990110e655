"""Benchmark scripts whose figures go into the READMEs: checked on hand-made data."""
import os
import sys
import tempfile

import pytest

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "benchmarks"))


def _write_cold_dataset(root):
    """10 users x 10 interactions. Users 1-5 start with the common item C and are tested on an item
    of their own (x_u, with text); users 6-10 are tested on C. Every other item is the user's own."""
    folder = os.path.join(str(root), "cold")
    os.makedirs(folder)
    inter = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(1, 11):
        seq = ["C" if (u <= 5 and t == 0) else f"t{u}_{t}" for t in range(8)] + [f"v{u}", f"x{u}" if u <= 5 else "C"]
        inter += [f"u{u}\t{item}\t{100 * u + t}" for t, item in enumerate(seq)]
    with open(os.path.join(folder, "cold.inter"), "w") as f:
        f.write("\n".join(inter) + "\n")
    with open(os.path.join(folder, "cold.item"), "w") as f:
        f.write("item_id:token\tname:token_seq\n" + "".join(f"x{u}\titem number {u}\n" for u in range(1, 6)))
    return str(root)


def test_test_item_stats_counts_unseen_and_text_items(tmp_path):
    from dataset_stats import test_item_stats

    data = _write_cold_dataset(tmp_path / "data")
    got = test_item_stats("cold", {"data_path": data, "show_progress": False, "state": "WARNING",
                                   "checkpoint_dir": str(tmp_path / "saved"), "save_dataset": False,
                                   # as the dataset yamls of datasets with text: the .item file is read for text only
                                   "load_col": {"inter": ["user_id", "item_id", "timestamp"]}})
    # full: C is in users 1-5's training data, each x_u in nobody's -> 5 of 10 test items unseen
    # 20 %: each user keeps the last 2 of 8 training items, so C is no longer seen either -> 10 of 10
    assert got == {"test_users": 10, "unseen_full": 0.5, "unseen_20": 1.0, "with_text": 0.5,
                   "repeat_targets": {"valid": 0.0, "test": 0.0}}


def test_repeat_targets_are_the_share_of_valid_and_test_items_seen_before(tmp_path):
    """Users 1-3 are tested on their first item again, user 4 is validated on it: 30 % of test targets and
    10 % of valid targets are repeats (the filter_seen protocol could never rank them)."""
    from dataset_stats import test_item_stats

    folder = tmp_path / "data" / "rep"
    folder.mkdir(parents=True)
    inter = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(1, 11):
        seq = [f"a{u}_{t}" for t in range(6)] + [f"v{u}", f"x{u}"]
        if u <= 3:
            seq[-1] = seq[0]
        if u == 4:
            seq[-2] = seq[0]
        inter += [f"u{u}\t{item}\t{100 * u + t}" for t, item in enumerate(seq)]
    (folder / "rep.inter").write_text("\n".join(inter) + "\n")
    got = test_item_stats("rep", {"data_path": str(tmp_path / "data"), "show_progress": False, "state": "WARNING",
                                  "checkpoint_dir": str(tmp_path / "saved"), "save_dataset": False})
    assert got["repeat_targets"] == {"valid": pytest.approx(0.1), "test": pytest.approx(0.3)}


def test_latency_loads_a_cell_an_ensemble_cell_and_a_bench_cell(tiny_data, workdir, tmp_path):
    import torch
    from latency import load_model

    from recbole_kd.quick_start import latency_batch, run

    ckpts = []
    for seed in (1, 2):
        res = run("SASRec-L", "tiny", overrides={"data_path": tiny_data, "epochs": 1, "seed": seed, "show_progress": False,
                                                 "state": "WARNING", "checkpoint_dir": str(tmp_path / f"s{seed}")})
        ckpts.append(os.path.relpath(res["checkpoint"], tmp_path))
    single = load_model({"checkpoint": ckpts[0]}, str(tmp_path), "tiny", tiny_data)
    ensemble = load_model({"checkpoints": ckpts}, str(tmp_path), "tiny", tiny_data)
    bench_cell = load_model({"id": "c", "result": {"checkpoint": ckpts[1]}}, str(tmp_path), "tiny", tiny_data)
    assert single[0] == "SASRec-L" and ensemble[0] == "ensemble(SASRec-L x2)" and bench_cell[0] == "SASRec-L"
    assert not torch.equal(single[1].item_embedding.weight, bench_cell[1].item_embedding.weight)  # seed 2's
    from latency import set_attention

    assert set_attention(single[1], False) is single[1] and not single[1].trm_encoder.layer[0].multi_head_attention.fused
    assert set_attention(ensemble[1], True) is ensemble[1]
    flags = [m.fused for m in ensemble[1].modules() if hasattr(m, "fused")]
    assert len(flags) == 4 and all(flags)  # 2 members x 2 layers
    for _, model, test in (single, ensemble, bench_cell):
        assert not model.training and not any(p.requires_grad for p in model.parameters())
        batch = latency_batch(model, test)
        with torch.no_grad():
            scores = model.full_sort_predict(batch)
        assert scores.shape == (len(batch), test._dataset.item_num) and torch.isfinite(scores).all()


@pytest.mark.slow
def test_teacher_topk_reports_seen_items_raw_and_none_masked(tiny_data, tmp_path, monkeypatch):
    import json

    import common
    import teacher_topk
    from conftest import run_cli

    proc = run_cli("--model=SASRec-L", "--dataset=tiny", f"--data_path={tiny_data}", "--epochs=1",
                   "--show_progress=False", f"--result_file={tmp_path / 't.json'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = os.path.join(tmp_path, json.loads((tmp_path / "t.json").read_text())["checkpoint"])
    results = tmp_path / "results"
    monkeypatch.setattr(common, "RESULTS", str(results))
    monkeypatch.setattr(teacher_topk, "RESULTS", str(results))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["teacher_topk.py", "--dataset", "tiny", "--data_path", tiny_data,
                                      "--teacher_checkpoint", ckpt, ckpt, "--topk", "10"])  # an ensemble of two
    teacher_topk.main()
    out = json.loads((results / "teacher_topk_tiny.json").read_text())
    assert out["positions"] > 0 and out["teacher"].startswith("ensemble")
    assert out["raw"]["seen_items_in_top_k_mean"] > 0 and out["mask_seen"]["seen_items_in_top_k_mean"] == 0
    assert out["mask_seen"]["top1_is_seen_item"] == 0 == out["mask_seen"]["top1_is_current_item"]
    assert "seen items masked" in (results / "teacher_topk_tiny.md").read_text()


def test_kd_epoch_cost_with_a_given_teacher_and_one_shared_cache(tiny_data, workdir, tmp_path, monkeypatch, capsys):
    import json

    import pytest

    import common
    import kd_epoch_cost

    from recbole_kd.quick_start import run

    teacher = run("SASRec-L", "tiny", overrides={"data_path": tiny_data, "epochs": 1, "show_progress": False,
                                                 "state": "WARNING", "checkpoint_dir": str(tmp_path / "t")})
    monkeypatch.setattr(common, "RESULTS", str(tmp_path / "results"))
    base = ["kd_epoch_cost.py", "--dataset", "tiny", "--data_path", tiny_data, "--losses", "soft", "--epochs", "1",
            "--rounds", "2", "--name", "cost"]
    scratch = tmp_path / "scratch"  # where the script's temporary work folder goes
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setattr(sys, "argv", base + ["--teacher_checkpoint", teacher["checkpoint"], "--share_cache"])
    kd_epoch_cost.main()
    assert not list(scratch.iterdir())  # the runs' checkpoints and the shared cache are not left behind
    out = json.loads((tmp_path / "results" / "cost.json").read_text())
    assert set(out["rows"]) == {"alone", "kd:soft"}
    assert all(len(r["all_seconds_per_epoch"]) == 2 for r in out["rows"].values())
    assert out["rows"]["kd:soft"]["teacher_cache_builds"] == 1  # the second run loaded the first one's cache
    assert out["teacher"]["num_params"] == teacher["num_params"] and out["teacher"]["epochs_run"] is None
    monkeypatch.setattr(sys, "argv", base + ["--teacher_checkpoint", str(tmp_path / "missing.pth")])
    with pytest.raises(SystemExit) as exit_:
        kd_epoch_cost.main()
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.endswith("missing.pth: no such file") and "\n" not in err
    assert not list(scratch.iterdir())


def test_latency_times_given_checkpoints_with_and_without_fused_attention(tiny_data, workdir, tmp_path, monkeypatch):
    import json

    import pytest

    import common
    import latency

    from recbole_kd.quick_start import run

    paths = {}
    for model in ("SASRec-L", "MF-S"):
        paths[model] = run(model, "tiny", overrides={"data_path": tiny_data, "epochs": 1, "show_progress": False,
                                                     "state": "WARNING", "checkpoint_dir": str(tmp_path / model)})["checkpoint"]
    monkeypatch.setattr(common, "RESULTS", str(tmp_path / "results"))
    monkeypatch.setattr(sys, "argv", ["latency.py", "--dataset", "tiny", "--data_path", tiny_data, "--reps", "2",
                                      "--compare_attention", "--checkpoints", f"t={paths['SASRec-L']}",
                                      f"s={paths['MF-S']}"])
    latency.main()
    out = json.loads((tmp_path / "results" / "latency_tiny.json").read_text())
    # the transformer is timed both ways; MF has no attention, so once
    assert sorted(out["timing"]) == ["s", "t", "t (RecBole attention)"]
    md = (tmp_path / "results" / "latency_tiny.md").read_text()
    assert "| t (RecBole attention) |" in md and "| s |" in md
    before = md
    monkeypatch.setattr(sys, "argv", ["latency.py", "--dataset", "tiny", "--checkpoints", f"t={tmp_path / 'no.pth'}"])
    with pytest.raises(SystemExit) as exit_:
        latency.main()
    assert exit_.value.code == 2 and (tmp_path / "results" / "latency_tiny.md").read_text() == before


def test_parse_sets_reads_literals_and_keeps_other_strings():
    from common import parse_sets

    assert parse_sets(["epochs=40", "kd_losses={'rd': 1.0}", "name=a=b", "x=abc"]) == {
        "epochs": 40, "kd_losses": {"rd": 1.0}, "name": "a=b", "x": "abc"}
    assert parse_sets(None) == {}


def _old_cell(name, model, seed, ndcg, **extra):
    """A cell file of the former distillation benchmark script: the run summary, and its own bookkeeping."""
    metrics = {"ndcg@10": ndcg, "recall@10": 2 * ndcg, "mrr@10": ndcg / 2}
    return {"cell": name, "model": model, "seed": seed, "dataset": "tiny", "test_result": metrics,
            "best_valid_result": metrics, "test_result_by_protocol": {"filter_seen": metrics, "recbole": metrics},
            "best_valid_result_by_protocol": {"filter_seen": metrics, "recbole": metrics}, "protocol": "filter_seen",
            "num_params": 10, "latency_seconds": 0.01, "train_seconds_per_epoch": 1.0, "epochs_run": 3,
            "train_seconds": 3.0, "wall_seconds": 5.0, "requested": {"model": model}, "teacher_fingerprint": ["f"],
            "machine": {"cpu_count": 2, "device": "cpu", "python": "3.11", "torch": "2"}, **extra}


def test_convert_kd_cells_writes_the_records_the_suite_expects(tmp_path, capsys):
    """The one-off converter: every old cell becomes the bench record of its suite cell (same id and config
    hash), metrics as stored, paths relative to the results folder; bench then finds every cell done and
    renders the report from them."""
    import json

    import yaml
    from conftest import write_tiny_dataset
    from convert_kd_cells import convert

    from recbole_kd.bench.runner import run_suite

    data = write_tiny_dataset(tmp_path / "data")
    old = tmp_path / "results" / "kd_tiny"
    cells = old / "cells"
    cells.mkdir(parents=True)
    suite = tmp_path / "kd-tiny.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "kd_tiny", "seeds": [1, 2], "output": "results/kd_tiny", "datasets": {"tiny": {"data_path": data}},
        "models": [{"model": "SASRec-L", "label": "T", "group": "teacher", "ensemble": True},
                   {"model": "SASRec-S", "group": "student"},
                   {"model": "KD-SASRec", "label": "KD-SASRec (rd + hint)", "teacher_from": "T",
                    "settings": {"kd_losses": {"rd": 1.0, "hint": 1.0}, "kd_mask_seen": False}}]}))
    ckpt = [f"/elsewhere/kd_tiny/work/teacher-seed{s}/saved/m.pth" for s in (1, 2)]
    files = {f"teacher-seed{s}": _old_cell(f"teacher-seed{s}", "SASRec-L", s, 0.03,
                                           checkpoint=f"work/teacher-seed{s}/saved/m.pth") for s in (1, 2)}
    files["teacher-ensemble"] = {k: v for k, v in _old_cell("teacher-ensemble", "ensemble(SASRec-L x2)", None, 0.04,
                                                             checkpoints=[c.split("kd_tiny/")[1] for c in ckpt],
                                                             seeds=[1, 2]).items() if k not in ("seed", "machine")}
    for s in (1, 2):
        files[f"student-seed{s}"] = _old_cell(f"student-seed{s}", "SASRec-S", s, 0.02)
        files[f"kd-combo-seed{s}"] = _old_cell(f"kd-combo-seed{s}", "KD-SASRec", s, 0.025, teacher_checkpoint=ckpt,
                                               kd_losses={"rd": 1.0, "hint": 1.0})
    for name, cell in files.items():
        (cells / f"{name}.json").write_text(json.dumps(cell))
    report = {"command": "python benchmarks/kd_old.py --dataset tiny", "trained_commit": "abc"}
    done = convert(str(old), str(suite), {"kd-combo": "KD-SASRec (rd + hint)"}, report)
    assert len(done) == 7
    rec = json.loads((cells / "tiny__KD-SASRec_rd_hint__seed2.json").read_text())
    assert rec["result"]["teacher_checkpoint"] == ["work/teacher-seed1/saved/m.pth", "work/teacher-seed2/saved/m.pth"]
    assert rec["result"]["test_result"]["ndcg@10"] == 0.025 and "teacher_fingerprint" not in rec["result"]
    assert rec["command"] == "python <former distillation benchmark script> --dataset tiny"
    assert rec["trained_commit"] == "abc" and rec["converted_from"] == "cells/kd-combo-seed2.json"
    assert rec["machine"] == {"cores": 2, "device": "cpu", "python": "3.11", "torch": "2"}
    ens = json.loads((cells / "tiny__T_ensemble__seed1.json").read_text())
    assert ens["ensemble"] == [1, 2] and ens["result"]["checkpoints"] == ["work/teacher-seed1/saved/m.pth",
                                                                          "work/teacher-seed2/saved/m.pth"]
    member = json.loads((cells / "tiny__T__seed2.json").read_text())
    assert member["label"] == "T member" and member["result"]["checkpoint"] == "work/teacher-seed2/saved/m.pth"
    for name in files:
        (cells / f"{name}.json").unlink()  # as in the repository: the records are the source of truth
    assert run_suite(str(suite), dry_run=True) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  tiny__")]
    assert len(listed) == 7 and all(" done " in line for line in listed), listed
    assert run_suite(str(suite), render_only=True) == 0
    rows = {r["label"]: r for r in json.loads((old / "results.json").read_text())["rows"]}
    assert rows["T"]["ndcg@10"][0] == 0.04 and rows["T member"]["ndcg@10"][0] == 0.03
    assert rows["KD-SASRec (rd + hint)"]["vs_teacher"] == pytest.approx(0.625)
    (cells / "extra-seed1.json").write_text(json.dumps(files["student-seed1"]))
    with pytest.raises(SystemExit, match="no cell for it"):
        convert(str(old), str(suite), {}, report)


def test_latency_times_a_distillation_benchmarks_teacher_and_student_by_default(tmp_path):
    import json

    from latency import default_cells

    cells = tmp_path / "cells"
    cells.mkdir()
    for cid, rec in {"d__T__seed1": {"group": "teacher"}, "d__T_ensemble__seed1": {"group": "teacher", "ensemble": [1, 2]},
                     "d__S__seed2": {"group": "student", "model": "SASRec-S"},
                     "d__S__seed1": {"group": "student", "model": "SASRec-S"},
                     "d__M__seed1": {"group": "student", "model": "MF-S"}}.items():
        (cells / f"{cid}.json").write_text(json.dumps({"id": cid, **rec}))
    assert default_cells(str(tmp_path)) == ["d__T_ensemble__seed1", "d__S__seed1"]
    (cells / "d__T_ensemble__seed1.json").unlink()
    assert default_cells(str(tmp_path)) == ["d__T__seed1", "d__S__seed1"]
