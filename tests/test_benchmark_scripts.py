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


def test_kd_benchmark_train_member_trains_that_member_only(tiny_data, tmp_path, monkeypatch):
    import json

    import pytest

    import kd_benchmark

    out = tmp_path / "kd"
    base = ["kd_benchmark.py", "--dataset", "tiny", "--data_path", tiny_data, "--out", str(out),
            "--teacher_seeds", "1", "2", "--set", "epochs=1", "state=WARNING"]
    monkeypatch.setattr(sys, "argv", base + ["--train_member", "2"])
    kd_benchmark.main()
    assert sorted(os.listdir(out / "cells")) == ["teacher-seed2.json"]  # no other member, no ensemble, no student
    cell = json.loads((out / "cells" / "teacher-seed2.json").read_text())
    assert cell["seed"] == 2 and cell["model"] == "SASRec-L" and os.path.isfile(out / cell["checkpoint"])
    for bad in (["--train_member", "3"], ["--train_member", "2", "--render_only"]):  # not a member; nothing to train
        monkeypatch.setattr(sys, "argv", base + bad)
        with pytest.raises(SystemExit):
            kd_benchmark.main()
    assert sorted(os.listdir(out / "cells")) == ["teacher-seed2.json"]


def test_kd_benchmark_keeps_cells_of_a_reproduced_teacher_only():
    from kd_benchmark import fingerprint, same_teacher

    member = {"model": "SASRec-L", "dataset": "d", "seed": 1, "config": {"hidden_size": 256}, "num_params": 10,
              "epochs_run": 15, "best_valid_result": {"ndcg@10": 0.0436}, "test_result": {"ndcg@10": 0.0337},
              "checkpoint": "work/teacher-seed1/saved/SASRec-L-Nov-29-2026_11-10-46.pth", "train_seconds": 1800.0}
    # retrained in a fresh checkout: new checkpoint file and timings, same run -> same fingerprint
    retrained = dict(member, checkpoint="work/teacher-seed1/saved/SASRec-L-Nov-30-2026_09-00-00.pth",
                     train_seconds=1500.0)
    assert fingerprint(retrained) == fingerprint(member)
    out = "/x/kd"
    cell = {"teacher_fingerprint": [fingerprint(member)], "teacher_checkpoint": "/old/kd/" + member["checkpoint"]}
    assert same_teacher(cell, [fingerprint(retrained)], "/x/kd/" + retrained["checkpoint"], out)
    for key, value in (("test_result", {"ndcg@10": 0.0338}), ("epochs_run", 16), ("seed", 2),
                       ("config", {"hidden_size": 128})):
        other = dict(member, **{key: value})  # any difference: another teacher
        assert not same_teacher(cell, [fingerprint(other)], "/x/kd/" + member["checkpoint"], out)
    assert not same_teacher(cell, [fingerprint(member)] * 2, "/x/kd/" + member["checkpoint"], out)  # an ensemble
    # a cell without fingerprints (recorded before them) is matched by its checkpoint path
    legacy = {"teacher_checkpoint": "/old/kd/" + member["checkpoint"]}
    assert same_teacher(legacy, ["anything"], "/x/kd/" + member["checkpoint"], out)
    assert not same_teacher(legacy, ["anything"], "/x/kd/" + retrained["checkpoint"], out)


def test_kd_benchmark_names_reports_after_out_and_refuses_cells_of_other_settings(tiny_data, tmp_path, monkeypatch,
                                                                                  capsys):
    import pytest

    import common
    import kd_benchmark

    results = tmp_path / "results"
    monkeypatch.setattr(common, "RESULTS", str(results))
    monkeypatch.setattr(kd_benchmark, "RESULTS", str(results))
    out = tmp_path / "kd-d16"
    base = ["kd_benchmark.py", "--dataset", "tiny", "--data_path", tiny_data, "--out", str(out), "--seeds", "1",
            "--cells", "student", "--set", "epochs=1", "state=WARNING"]
    monkeypatch.setattr(sys, "argv", base + ["--student_set", "hidden_size=16", "inner_size=32"])
    kd_benchmark.main()
    # a second operating point in its own folder: its own report, the default kd_tiny report untouched
    assert sorted(os.listdir(results)) == ["kd-d16.json", "kd-d16.md"]
    assert sorted(os.listdir(out / "cells")) == ["student-seed1.json", "teacher.json"]
    monkeypatch.setattr(sys, "argv", base + ["--student_set", "hidden_size=32", "inner_size=64"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:  # the stored student is d=16: not reused as d=32
        kd_benchmark.main()
    assert exit_.value.code == 2 and "other settings" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", base + ["--student_set", "hidden_size=16", "inner_size=32", "--render_only"])
    kd_benchmark.main()  # the same request reuses it
    # a folder rendered for the first time from cells trained elsewhere says how they were trained
    monkeypatch.setattr(sys, "argv", [a if a != str(out) else str(tmp_path / "kd-copy") for a in base]
                        + ["--student_set", "hidden_size=16", "inner_size=32", "--render_only",
                           "--trained_by", "cells copied from kd-d16"])
    import shutil

    shutil.copytree(out / "cells", tmp_path / "kd-copy" / "cells")
    kd_benchmark.main()
    assert "Cells trained by: cells copied from kd-d16" in (results / "kd-copy.md").read_text()


def test_kd_benchmark_distils_with_a_relative_out(tiny_data, tmp_path, monkeypatch):
    """A relative --out: cells run in their own work folder, and the teacher checkpoint handed to a
    distilled cell must still resolve there (it was a path relative to the starting directory)."""
    import json

    import common
    import kd_benchmark

    results = tmp_path / "results"
    monkeypatch.setattr(common, "RESULTS", str(results))
    monkeypatch.setattr(kd_benchmark, "RESULTS", str(results))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["kd_benchmark.py", "--dataset", "tiny", "--data_path", tiny_data,
                                      "--out", "kd-rel", "--seeds", "1", "--cells", "kd:rd",
                                      "--set", "epochs=1", "state=WARNING"])
    kd_benchmark.main()
    cell = json.loads((tmp_path / "kd-rel" / "cells" / "kd-rd-seed1.json").read_text())
    assert cell["model"] == "KD-SASRec" and cell["epochs_run"] == 1 and os.getcwd() == str(tmp_path)


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


def test_kd_benchmark_reads_the_interleaved_latency_of_the_same_pair_only():
    from kd_benchmark import interleaved_ratio

    def timed(student_key, teacher_params=1000, student_params=100):
        return {"params": {"teacher": teacher_params, student_key: student_params},
                "timing": {"teacher": {"median_ms": 80.0}, student_key: {"median_ms": 10.0}}}

    # a cell of the benchmark (student-seed2020) or a checkpoint given as student=PATH (student)
    assert interleaved_ratio(timed("student-seed2020"), 1000, 100) == 8.0
    assert interleaved_ratio(timed("student"), 1000, 100) == 8.0
    # a file that timed other architectures is stale: no ratio from it
    assert interleaved_ratio(timed("student", teacher_params=999), 1000, 100) is None
    assert interleaved_ratio(timed("student", student_params=99), 1000, 100) is None
    assert interleaved_ratio(timed("KD-SASRec-rrd-seed2020"), 1000, 100) is None


def test_kd_benchmark_headline_row_is_chosen_on_validation_not_test():
    from kd_benchmark import headline_row

    rows = {"kd:soft": {"ndcg10_mean": 0.060, "valid_ndcg10_mean": 0.070},
            "kd:rd": {"ndcg10_mean": 0.065, "valid_ndcg10_mean": 0.068}}  # best on test, not on valid
    assert headline_row(rows) == "kd:soft"
