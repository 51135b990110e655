"""``bench SUITE --pack DIR`` / ``--merge DIR`` (recbole_kd/bench/transport.py): cells, logs and teacher
checkpoints packed on another machine come back within the limits given as options and merge into the suite's
results without clobbering finished cells; the report says which cells ran on a GPU. No training: the cell
records and checkpoints are made up."""
import json
import os
import tarfile

import yaml

from recbole_kd.bench import main
from recbole_kd.bench.suite import expand, load_suite
from recbole_kd.bench.transport import LOG_TAIL_BYTES, MiB, PACKED_LIST, Limits

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


def _bench_out(tmp_path, c):
    """What a run there left: the teacher finished (with a checkpoint), SASRec-S finished, KD failed; MF-S was
    copied in from the repository's results (so it is not packed)."""
    bench_out, repo_out = tmp_path / "bench", tmp_path / "repo"
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
    return bench_out, repo_out, ckpt, weights, mf


def _manifest(dest):
    with tarfile.open(dest / "cells.tar.gz") as tar:
        return json.load(tar.extractfile("manifest.json"))


def test_the_old_fixed_limits_are_these_options():
    limits = Limits.from_options(max_file_mib=16, max_files=8, max_total_mib=64)
    assert limits.part_bytes == 16 * MiB - 64 * 1024 and limits.reserve_bytes == 2 * MiB
    assert Limits().part_bytes is None and Limits().reserve_bytes == 0 and Limits().describe() == "no limits"


def test_pack_then_merge_round_trip(tmp_path, capsys):
    from recbole_kd.bench.runner import run_suite

    suite = _suite(tmp_path)
    c = {x.label: x for x in expand(load_suite(suite))}
    bench_out, repo_out, ckpt, weights, mf = _bench_out(tmp_path, c)
    dest, here = tmp_path / "packed", tmp_path / "results"
    dest.mkdir()
    (dest / "run.log").write_text("log\n")  # files already in the folder count against the limits

    limits = ["--max-file-mib", "0.1", "--max-files", "8", "--max-total-mib", "64"]
    assert main([suite, "--out", str(bench_out), "--pack", str(dest), "--compare-with", str(repo_out),
                 "--note", "bench_rc=1", *limits]) == 0
    manifest = _manifest(dest)
    assert sorted(manifest["cells"]) == sorted([f"{c['SASRec-L'].id}.json", f"{c['SASRec-S'].id}.json",
                                                f"{c['KD-SASRec'].id}.failed.json"])  # MF-S: the repo has it
    assert manifest["bench_rc"] == "1" and manifest["left_out"] == []
    assert manifest["limits"] == {"max_file_bytes": 104857, "max_files": 8, "max_total_bytes": 64 * MiB}
    returned = sorted(os.listdir(dest))
    parts = [n for n in returned if n.startswith("teacher-")]
    assert len(parts) == 4 and all(n.startswith(f"teacher-{c['SASRec-L'].id}.tar.part") for n in parts)
    assert manifest["checkpoints"][0]["files"] == sorted(parts)
    assert len(returned) <= 8 and all(os.path.getsize(dest / n) <= 0.1 * MiB for n in returned)
    with tarfile.open(dest / "logs.tar.gz") as tar:
        log = tar.extractfile(f"work/{c['KD-SASRec'].id}/output.log").read()
    assert len(log) == LOG_TAIL_BYTES and log.endswith(b"the end\n")
    # packing again (after more cells ran) does not pack the same checkpoint again
    again = tmp_path / "packed2"
    assert main([suite, "--out", str(bench_out), "--pack", str(again), "--compare-with", str(repo_out)]) == 0
    assert _manifest(again)["checkpoints"] == [] and "earlier --pack" in _manifest(again)["left_out"][0]
    assert not [n for n in os.listdir(again) if n.startswith("teacher-")]
    assert (bench_out / PACKED_LIST).is_file()

    # here: SASRec-S finished locally with other numbers (kept), MF-S is the same
    local_s = _record(c["SASRec-S"], 0.03, device="cpu")
    _write(here / "cells", local_s)
    _write(here / "cells", mf)
    capsys.readouterr()
    assert main([suite, "--out", str(here), "--merge", str(dest)]) == 0
    out = capsys.readouterr().out
    assert f"[merge] added: 1\n    {c['SASRec-L'].id}.json (cuda, NVIDIA H200)" in out
    assert "kept the local finished cell" in out and "unpacked" in out and (here / "README.md").is_file()
    # cells and the teacher checkpoint come back byte for byte
    assert (here / ckpt).read_bytes() == weights
    for name in (f"{c['SASRec-L'].id}.json", f"{c['KD-SASRec'].id}.failed.json"):
        assert (here / "cells" / name).read_bytes() == (bench_out / "cells" / name).read_bytes()
    assert json.loads((here / "cells" / f"{c['SASRec-S'].id}.json").read_text()) == local_s
    assert main([suite, "--out", str(here), "--merge", str(dest / "cells.tar.gz"), "--force"]) == 0
    out = capsys.readouterr().out
    assert f"[merge] replaced (--force): 1\n    {c['SASRec-S'].id}.json" in out and "already here" in out
    assert (here / "cells" / f"{c['SASRec-S'].id}.json").read_bytes() == \
        (bench_out / "cells" / f"{c['SASRec-S'].id}.json").read_bytes()

    # the report says where the cells ran and marks the timings of GPU rows
    assert run_suite(suite, str(here), render_only=True) == 0
    report = (here / "README.md").read_text()
    assert "Cells ran on: 2 cells on NVIDIA H200 (16 cores, cuda, torch 2.11.0+cu130); 1 cell on Some CPU (16 cores, cpu" in report
    teacher_row = next(line for line in report.splitlines() if line.startswith("| teacher |"))
    mf_row = next(line for line in report.splitlines() if line.startswith("| student | MF-S |"))
    assert "10.0 (cuda) | 1.00 (cuda) |" in teacher_row and "(cuda)" not in mf_row
    assert "| distilled | KD-SASRec | KD-SASRec | 0/1 | failed: recbole-kd: error: boom |" in report


def test_pack_within_small_limits_lists_what_it_left_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the suite's default results folder: ./acc-results, absent
    suite = _suite(tmp_path)
    c = {x.label: x for x in expand(load_suite(suite))}
    bench_out, repo_out, ckpt, _, _ = _bench_out(tmp_path, c)
    dest = tmp_path / "packed"
    dest.mkdir()
    (dest / "run.log").write_text("log\n")
    # 4 files: run.log, cells.tar.gz, logs.tar.gz leave one; the checkpoint needs 4 parts of 0.1 MiB
    assert main([suite, "--out", str(bench_out), "--pack", str(dest), "--compare-with", str(repo_out),
                 "--max-file-mib", "0.1", "--max-files", "4"]) == 0
    left = _manifest(dest)["left_out"]
    assert len(left) == 1 and left[0].startswith(f"{ckpt}: ") and "4 file(s)" in left[0] and "1 file(s)" in left[0]
    assert sorted(os.listdir(dest)) == ["cells.tar.gz", "logs.tar.gz", "run.log"]
    # a total limit: the checkpoint (0.35 MiB) does not fit in 0.3 MiB
    dest2 = tmp_path / "packed2"
    assert main([suite, "--out", str(bench_out), "--pack", str(dest2), "--compare-with", str(repo_out),
                 "--max-total-mib", "0.3"]) == 0
    assert "MiB left" in _manifest(dest2)["left_out"][0] and not list(dest2.glob("teacher-*"))
    # no limits (the default): one file per checkpoint, every cell when there is nothing to compare with
    dest3 = tmp_path / "packed3"
    assert main([suite, "--out", str(bench_out), "--pack", str(dest3), "--compare-with", str(tmp_path / "none"),
                 "--cells-only"]) == 2  # --compare-with must be a folder
    assert main([suite, "--out", str(bench_out), "--pack", str(dest3)]) == 0
    assert [n for n in os.listdir(dest3) if n.startswith("teacher-")] == [f"teacher-{c['SASRec-L'].id}.tar"]
    assert len(_manifest(dest3)["cells"]) == 4


def test_merge_rules(tmp_path):
    from recbole_kd.bench.transport import merge, pack

    suite = _suite(tmp_path)
    cells = {x.label: x for x in expand(load_suite(suite))}
    there, here = tmp_path / "bench" / "cells", tmp_path / "results" / "cells"
    other = _record(cells["SASRec-L"], 0.05)
    other["config_hash"] = "000000000000"  # run with other settings: never reported as this suite's cell
    _write(there, other)
    _write(there, _record(cells["SASRec-S"], 0, status="failed"), ".failed.json")  # finished here
    _write(there, _record(cells["MF-S"], 0.02))  # failed here: the finished cell replaces the failure
    _write(here, _record(cells["SASRec-S"], 0.04, device="cpu"))
    _write(here, _record(cells["MF-S"], 0, status="failed"), ".failed.json")
    pack(str(tmp_path / "bench"), str(tmp_path / "packed"), log=lambda line: None)
    summary = merge(suite, str(tmp_path / "packed"), str(tmp_path / "results"), log=lambda line: None)
    assert "other settings" in summary["ignored"][0] and not (here / f"{cells['SASRec-L'].id}.json").exists()
    assert "failed there, finished here" in summary["ignored"][1]
    assert json.loads((here / f"{cells['SASRec-S'].id}.json").read_text())["status"] == "ok"
    assert summary["added"] == [f"{cells['MF-S'].id}.json (cuda, NVIDIA H200)"]
    assert not (here / f"{cells['MF-S'].id}.failed.json").exists()


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    suite = _suite(tmp_path)
    (tmp_path / "bench" / "cells").mkdir(parents=True)
    (tmp_path / "not-a-tar").mkdir()
    (tmp_path / "not-a-tar" / "cells.tar.gz").write_text("plain text")
    cases = {
        ("--merge", str(tmp_path / "missing")): "does not exist",
        ("--merge", str(tmp_path)): "no cells.tar.gz",
        ("--merge", str(tmp_path / "not-a-tar")): "not a readable .tar.gz",
        ("--pack", str(tmp_path / "p"), "--max-file-mib", "0"): "--max-file-mib 0: give a limit above 0",
        ("--pack", str(tmp_path / "p"), "--max-files", "-1"): "--max-files -1: give a limit above 0",
        ("--pack", str(tmp_path / "p"), "--max-total-mib", "-5"): "--max-total-mib -5: give a limit above 0",
        ("--pack", str(tmp_path / "p"), "--since", "yesterday"): "--since yesterday",
        ("--pack", str(tmp_path / "p"), "--note", "oops"): "--note oops: give KEY=VALUE",
        ("--max-files", "3"): "--max-files only goes with --pack DIR",
        ("--force",): "--force only goes with --merge DIR",
        ("--pack", str(tmp_path / "p"), "--merge", str(tmp_path)): "--pack and --merge do not go together",
    }
    for extra, message in cases.items():
        assert main([suite, "--out", str(tmp_path / "bench"), *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("recbole-kd bench: error: ") and message in err, (extra, err)
    assert not (tmp_path / "p").exists()
    # a bench output folder without cells/
    assert main([suite, "--out", str(tmp_path / "nothing"), "--pack", str(tmp_path / "p")]) == 2
    assert "has no cells/ folder" in capsys.readouterr().err
    assert main([suite, "--out", str(tmp_path / "bench"), "--pack", str(tmp_path / "p"), "--since",
                 "2026-11-30T10:00:00+00:00", "--cells-only"]) == 0


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
