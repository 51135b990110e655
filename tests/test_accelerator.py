"""benchmarks/accelerator/cells.py: cells and teacher checkpoints packed on a lent accelerator come back
within the tool's limits and merge into the suite's results without clobbering finished cells; the
report says which cells ran on a GPU. No training: the cell records are made up."""
import importlib.util
import json
import os
import tarfile

import pytest
import yaml

from conftest import REPO


def _cells_module():
    spec = importlib.util.spec_from_file_location("accelerator_cells", os.path.join(REPO, "benchmarks", "accelerator", "cells.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _suite(tmp_path):
    suite = {"name": "acc", "seeds": [2020], "settings": {"epochs": 1}, "datasets": {"tiny": {"data_path": "data"}},
             "models": [{"model": "SASRec-L", "group": "teacher"}, {"model": "SASRec-S", "group": "student"},
                        {"model": "KD-SASRec", "teacher_from": "SASRec-L"}, {"model": "MF-S", "group": "student"}]}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return str(path)


def _record(cell, ndcg, device="cuda", checkpoint=None, status="ok"):
    machine = {"cpu": "Some CPU", "cores": 16, "device": device, "torch": "2.11.0+cu130" if device == "cuda" else "2.13.0+cpu"}
    if device == "cuda":
        machine["gpu"] = "NVIDIA H200"
    rec = {**cell.spec(), "id": cell.id, "config_hash": cell.config_hash, "status": status, "machine": machine,
           "started_at": "2026-11-30T00:00:00+00:00", "wall_seconds": 10.0, "command": "-m recbole_kd", "git_commit": "abc"}
    if status != "ok":
        return {**rec, "error": "recbole-kd: error: boom"}
    rec["result"] = {"test_result": {"ndcg@10": ndcg, "recall@10": 2 * ndcg, "mrr@10": ndcg / 2}, "num_params": 1000,
                     "latency_seconds": 0.01, "train_seconds_per_epoch": 1.0, "epochs_run": 1, "train_seconds": 1.0}
    if checkpoint:
        rec["result"]["checkpoint"] = checkpoint
    return rec


def _write(folder, rec, suffix=".json"):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, rec["id"] + suffix), "w") as f:
        json.dump(rec, f)


def test_pack_then_merge_round_trip(tmp_path, monkeypatch, capsys):
    from recbole_kd.bench.runner import run_suite
    from recbole_kd.bench.suite import expand, load_suite

    cells_py = _cells_module()
    monkeypatch.setattr(cells_py, "PART_BYTES", 100_000)  # split the checkpoint into several returned files
    suite = _suite(tmp_path)
    c = {x.label: x for x in expand(load_suite(suite))}
    bench_out, repo_out, dest, here = (tmp_path / n for n in ("bench", "repo", "OUT", "results"))

    # on the accelerator: the teacher ran (with a checkpoint), SASRec-S ran, KD failed; MF-S came from the repo
    ckpt = f"work/{c['SASRec-L'].id}/saved/SASRec-L.pth"
    weights = os.urandom(350_000)
    os.makedirs(bench_out / os.path.dirname(ckpt))
    (bench_out / ckpt).write_bytes(weights)
    _write(bench_out / "cells", _record(c["SASRec-L"], 0.05, checkpoint=ckpt))
    _write(bench_out / "cells", _record(c["SASRec-S"], 0.04))
    _write(bench_out / "cells", _record(c["KD-SASRec"], 0, status="failed"), ".failed.json")
    mf = _record(c["MF-S"], 0.02, device="cpu")
    _write(bench_out / "cells", mf)
    _write(repo_out / "cells", mf)
    (bench_out / "work" / c["KD-SASRec"].id).mkdir(parents=True)
    (bench_out / "work" / c["KD-SASRec"].id / "output.log").write_text("x" * 300_000 + "the end\n")
    dest.mkdir()
    (dest / "run.log").write_text("log\n")

    manifest = cells_py.pack(str(bench_out), str(dest), str(repo_out), extra={"bench_rc": "1"})
    assert sorted(manifest["cells"]) == sorted([f"{c['SASRec-L'].id}.json", f"{c['SASRec-S'].id}.json",
                                                f"{c['KD-SASRec'].id}.failed.json"])  # MF-S: the repo has it
    returned = sorted(os.listdir(dest))
    parts = [n for n in returned if n.startswith("teacher-")]
    assert len(parts) == 4 and all(n.startswith(f"teacher-{c['SASRec-L'].id}.tar.part") for n in parts)
    assert len(returned) <= 8 and all(os.path.getsize(dest / n) <= 16 * 2**20 for n in returned)
    with tarfile.open(dest / "logs.tar.gz") as tar:
        log = tar.extractfile(f"work/{c['KD-SASRec'].id}/output.log").read()
    assert len(log) == cells_py.LOG_TAIL_BYTES and log.endswith(b"the end\n")
    # a second pack (a warm machine's next call) does not send the same checkpoint again
    again = tmp_path / "OUT2"
    assert cells_py.pack(str(bench_out), str(again), str(repo_out))["checkpoints"] == []
    assert not [n for n in os.listdir(again) if n.startswith("teacher-")]

    # here: SASRec-S finished locally with other numbers (kept), MF-S is the same; a stray cell is ignored
    local_s = _record(c["SASRec-S"], 0.03, device="cpu")
    _write(here / "cells", local_s)
    _write(here / "cells", mf)
    with tarfile.open(dest / "cells.tar.gz") as tar:
        names = tar.getnames()
    assert "manifest.json" in names
    summary = cells_py.merge(suite, str(dest), str(here), log=lambda line: None)
    assert [s.split(" ")[0] for s in summary["added"]] == [f"{c['SASRec-L'].id}.json"]
    assert "(cuda, NVIDIA H200)" in summary["added"][0]
    assert summary["kept_local"] == [f"{c['SASRec-S'].id}.json"]
    assert [s.split(" ")[0] for s in summary["failed_added"]] == [f"{c['KD-SASRec'].id}.failed.json"]
    assert (here / ckpt).read_bytes() == weights and "unpacked" in summary["checkpoints"][0]
    assert json.loads((here / "cells" / f"{c['SASRec-S'].id}.json").read_text()) == local_s
    forced = cells_py.merge(suite, str(dest / "cells.tar.gz"), str(here), force=True, log=lambda line: None)
    assert [s.split(" ")[0] for s in forced["replaced"]] == [f"{c['SASRec-S'].id}.json"]
    assert "already here" in forced["checkpoints"][0] and forced["same"]

    # the report says where the cells ran and marks the timings of GPU rows
    capsys.readouterr()
    assert run_suite(suite, str(here), render_only=True) == 0
    report = (here / "README.md").read_text()
    assert "Cells ran on: 2 cells on NVIDIA H200 (16 cores, cuda, torch 2.11.0+cu130); 1 cell on Some CPU (16 cores, cpu" in report
    teacher_row = next(l for l in report.splitlines() if l.startswith("| teacher |"))
    mf_row = next(l for l in report.splitlines() if l.startswith("| student | MF-S |"))
    assert "10.0 (cuda) | 1.00 (cuda) |" in teacher_row and "(cuda)" not in mf_row
    assert "| distilled | KD-SASRec | KD-SASRec | 0/1 | failed: recbole-kd: error: boom |" in report


def test_merge_refuses_cells_of_other_settings(tmp_path, capsys):
    from recbole_kd.bench.suite import expand, load_suite

    cells_py = _cells_module()
    suite = _suite(tmp_path)
    cell = expand(load_suite(suite))[0]
    rec = _record(cell, 0.05)
    rec["config_hash"] = "000000000000"  # run with other settings: never reported as this suite's cell
    _write(tmp_path / "bench" / "cells", rec)
    cells_py.pack(str(tmp_path / "bench"), str(tmp_path / "OUT"))
    summary = cells_py.merge(suite, str(tmp_path / "OUT"), str(tmp_path / "results"), log=lambda line: None)
    assert summary["added"] == [] and "other settings" in summary["ignored"][0]
    assert not (tmp_path / "results" / "cells" / f"{cell.id}.json").exists()
    with pytest.raises(SystemExit) as exc:  # bad input: one line on stderr, exit status 2
        cells_py.merge(suite, str(tmp_path), str(tmp_path / "results"))
    assert exc.value.code == 2 and "no cells.tar.gz" in capsys.readouterr().err


def test_cell_record_names_the_device_the_run_used(tmp_path, monkeypatch):
    """The cell's ``machine.device`` is the device its run used (result.json, from config["device"]), not the
    one the bench process would pick: that is what the report's "(cuda)" marks rest on."""
    from recbole_kd.bench import runner
    from recbole_kd.bench.runner import run_cell
    from recbole_kd.bench.suite import expand, load_suite
    from recbole_kd.utils import machine_info

    assert machine_info("cpu")["device"] == "cpu" and "gpu" not in machine_info("cpu")
    cell = next(c for c in expand(load_suite(_suite(tmp_path))) if c.label == "MF-S")

    def fake_run(args, cwd, log, env=None):  # what the cell's CLI writes on a GPU machine
        result_file = next(a.split("=", 1)[1] for a in args if a.startswith("--result_file="))
        with open(result_file, "w") as f:
            json.dump({"machine": {"device": "cuda", "gpu": "NVIDIA H200"}, "checkpoint": None}, f)
        return 0, ""

    monkeypatch.setattr(runner, "_run_process", fake_run)
    rec = run_cell(cell, str(tmp_path / "out"), {})
    assert rec["status"] == "ok" and rec["machine"]["device"] == "cuda" and rec["machine"]["gpu"] == "NVIDIA H200"
