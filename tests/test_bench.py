"""The benchmark suite runner: resumable after a kill, merged report, dry run, teacher_from."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import write_tiny_dataset


def _suite(tmp_path, models, seeds=(2020,)):
    data = write_tiny_dataset(tmp_path / "data")
    suite = {
        "name": "tiny-suite",
        "seeds": list(seeds),
        "settings": {"epochs": 1, "state": "WARNING"},
        "datasets": {"tiny": {"data_path": data}},
        "models": models,
    }
    path = tmp_path / "suite.yaml"
    import yaml

    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return str(path)


def _default_sigint():
    # a test run started in the background (`pytest ... &` in a script) inherits SIGINT ignored, and
    # so would the bench: the interrupt tests need it to react to SIGINT as under a terminal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _bench(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "recbole_kd", "bench", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_default_sigint, **kwargs)


@pytest.mark.slow
def test_kill_after_first_cell_then_resume(tmp_path):
    suite = _suite(tmp_path, [{"model": "SASRec-S", "group": "student"}, {"model": "MF-S", "group": "baseline"}])
    out = tmp_path / "out"
    cells = out / "cells"
    proc = _bench(suite, "--out", str(out), cwd=tmp_path)
    deadline = time.time() + 300
    while time.time() < deadline and not (cells.exists() and any(p.suffix == ".json" for p in cells.iterdir())):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its running cell
    proc.wait()
    (first,) = [p for p in cells.iterdir() if p.suffix == ".json"]
    first_bytes = first.read_bytes()
    assert "SASRec-S" in first.name  # cells run in suite order

    dry = subprocess.run([sys.executable, "-m", "recbole_kd", "bench", suite, "--out", str(out), "--dry-run"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert dry.returncode == 0
    assert "done" in dry.stdout and "to run: 1 cells" in dry.stdout

    again = _bench(suite, "--out", str(out), cwd=tmp_path)
    stdout, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stderr[-2000:]
    assert "[bench] 1/2 cells done or skipped" in stdout and "SASRec-S" not in stdout.split("running", 1)[1].split("\n")[0]
    assert first.read_bytes() == first_bytes  # not re-run
    results = json.loads((out / "results.json").read_text())
    assert {c["label"] for c in results["cells"]} == {"SASRec-S", "MF-S"}
    report = (out / "README.md").read_text()
    assert "| student | SASRec-S | SASRec-S | 1/1 |" in report and "| baseline | MF-S | MF-S | 1/1 |" in report
    assert (out / "results.csv").read_text().count("\n") == 3
    for name in ("tiny_ndcg_vs_params.png", "tiny_ndcg_vs_latency.png"):
        png = out / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_teacher_from_and_ratio_columns(tmp_path, monkeypatch, capsys):
    from recbole_kd.bench.cli import main
    from recbole_kd.bench.runner import run_suite

    suite = _suite(tmp_path, [
        {"model": "SASRec-L", "group": "teacher"},
        {"model": "SASRec-S", "group": "student"},
        {"model": "KD-SASRec", "label": "KD-SASRec (rrd)", "settings": {"kd_losses": {"rrd": 1.0}},
         "teacher_from": "SASRec-L"},
        {"model": "SASRec", "group": "baseline", "skip": "too slow for this machine"},
    ])
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    assert run_suite(suite, str(out)) == 0
    results = json.loads((out / "results.json").read_text())
    rows = {r["label"]: r for r in results["rows"]}
    kd = rows["KD-SASRec (rrd)"]
    assert kd["vs_student_label"] == "SASRec-S" and kd["vs_teacher_label"] == "SASRec-L"
    assert kd["vs_student_alone"] == pytest.approx(kd["ndcg@10"][0] / rows["SASRec-S"]["ndcg@10"][0])
    (cell,) = [c for c in results["cells"] if c["label"] == "KD-SASRec (rrd)"]
    assert cell["result"]["teacher_source"] == "checkpoint"
    assert "--teacher_checkpoint=" in cell["command"]
    report = (out / "README.md").read_text()
    assert "| baseline | SASRec | SASRec | 0/1 | not run: too slow for this machine |" in report
    assert (out / "plots" / "tiny_kd_gain.png").exists()
    # a distilled cell stored before kd_mask_seen (raw teacher top-K) is stale: run again, never reused
    from recbole_kd.bench.records import cell_record
    from recbole_kd.bench.suite import expand, load_suite

    kd_cell = next(c for c in expand(load_suite(suite)) if c.label == "KD-SASRec (rrd)")
    assert cell["result"]["kd_mask_seen"] is True and cell_record(str(out), kd_cell) is not None
    stored = json.loads((out / "cells" / f"{kd_cell.id}.json").read_text())
    del stored["result"]["kd_mask_seen"]
    (out / "cells" / f"{kd_cell.id}.json").write_text(json.dumps(stored))
    assert cell_record(str(out), kd_cell) is None
    # a fresh checkout has the teacher cell's result but not its git-ignored checkpoint: the teacher cell is
    # run again before the distilled cell that needs it, even when --only selects the distilled cell alone
    teacher_cell = out / "cells" / "tiny__SASRec-L__seed2020.json"
    old_teacher = json.loads(teacher_cell.read_text())
    assert (out / old_teacher["result"]["checkpoint"]).exists()
    shutil.rmtree(out / "work")  # git-ignored: a fresh checkout has cells/ but no work/
    capsys.readouterr()
    assert main([suite, "--out", str(out), "--dry-run", "--only", "KD-*"]) == 0
    dry = capsys.readouterr().out
    assert "tiny__SASRec-L__seed2020" in dry and "to run (teacher)" in dry and "to run: 2 cells" in dry
    assert main([suite, "--out", str(out), "--only", "KD-*"]) == 0
    printed = capsys.readouterr().out
    assert "its checkpoint is not on this machine" in printed
    assert printed.index("running tiny__SASRec-L__seed2020") < printed.index("running " + kd_cell.id)
    new_teacher = json.loads(teacher_cell.read_text())
    assert new_teacher["started_at"] > old_teacher["started_at"] and (out / new_teacher["result"]["checkpoint"]).exists()
    assert cell_record(str(out), kd_cell) is not None
    assert json.loads((out / "cells" / f"{kd_cell.id}.json").read_text())["result"]["teacher_source"] == "checkpoint"


@pytest.mark.slow
def test_transfer_cells_share_their_source_model(tmp_path, monkeypatch):
    from recbole_kd.bench.runner import run_suite
    from test_transfer import write_source

    suite = _suite(tmp_path, [
        {"model": "SASRec-S", "label": "target only", "group": "student"},
        {"model": "Transfer-SASRec", "label": "encoder (full)", "student_ref": "target only",
         "settings": {"source": {"dataset": "src", "epochs": 1}}},
        {"model": "Transfer-SASRec", "label": "encoder (50%)", "student_ref": "target only",
         "settings": {"source": {"dataset": "src", "epochs": 1}, "train_fraction": 0.5}},
    ])
    write_source(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert run_suite(suite, str(tmp_path / "out")) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    phases = {c["label"]: c["result"]["source_phase"] for c in results["cells"] if c["model"] == "Transfer-SASRec"}
    assert phases == {"encoder (full)": "trained", "encoder (50%)": "cached"}
    rows = {r["label"]: r for r in results["rows"]}
    assert rows["encoder (50%)"]["group"] == "transfer" and rows["encoder (50%)"]["vs_student_label"] == "target only"


def test_bad_suite_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndatasets: [tiny]\nmodels:\n  - model: SASRec-S\n    group: teachers\n")
    proc = subprocess.run([sys.executable, "-m", "recbole_kd", "bench", str(bad), "--dry-run"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("recbole-kd bench: error:") and "group 'teachers'" in proc.stderr


def test_a_bad_model_or_setting_in_any_row_stops_the_suite_before_a_cell_runs(tmp_path, monkeypatch, capsys):
    from recbole_kd.bench import cli, runner

    ran = []
    monkeypatch.setattr(runner, "run_cell", lambda cell, *a, **k: ran.append(cell.id))
    good = {"model": "SASRec-S", "group": "student"}
    for last, message in [
        ({"model": "SASRecc"}, "SASRecc on tiny: unknown model 'SASRecc'; did you mean"),
        ({"model": "MF-S", "settings": {"embeding_size": 8}}, "MF-S on tiny: unknown setting 'embeding_size'; did you mean"),
        ({"model": "KD-SASRec", "settings": {"kd_losses": {"sofft": 1.0}}}, "unknown KD loss"),
        ({"model": "SASRec-S", "label": "zero", "settings": {"epochs": 0}}, "zero on tiny: invalid setting epochs=0"),
    ]:
        suite = _suite(tmp_path, [good, last])
        for extra in (["--dry-run"], []):
            assert cli.main([suite, "--out", str(tmp_path / "out"), *extra]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith("recbole-kd bench: error:") and message in err[0], err
            assert "--strict" not in err[0], err  # a suite is always strict; it has no such flag to name
    assert ran == []
    # a skipped row is not checked (it may name a model of another RecBole version), nor is a render-only run
    suite = _suite(tmp_path, [good, {"model": "NoSuchModel", "skip": "not here"}])
    assert cli.main([suite, "--out", str(tmp_path / "out"), "--dry-run"]) == 0


def test_pareto_front():
    from recbole_kd.bench.plots import pareto_front

    pts = [(1, 0.10), (2, 0.09), (3, 0.12), (4, 0.12), (10, 0.20)]
    assert pareto_front(pts) == [0, 2, 4]


def test_only_runs_the_selected_cells_and_reports_every_row(tmp_path, monkeypatch, capsys):
    from recbole_kd.bench.cli import main

    suite = _suite(tmp_path, [{"model": "SASRec-S", "group": "student"}, {"model": "MF-S", "group": "baseline"}])
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    assert main([suite, "--out", str(out), "--dry-run", "--only", "MF*"]) == 0
    dry = capsys.readouterr().out
    assert "not selected" in dry and "to run: 1 cells" in dry
    assert main([suite, "--out", str(out), "--only", "MF*"]) == 0
    assert sorted(p.name for p in (out / "cells").iterdir()) == ["tiny__MF-S__seed2020.json"]
    printed = capsys.readouterr().out
    assert "[bench] 0/1 selected cells done · running tiny__MF-S__seed2020" in printed
    assert "1 not selected by --only" in printed
    report = (out / "README.md").read_text()
    assert "| baseline | MF-S | MF-S | 1/1 |" in report and "| student | SASRec-S | SASRec-S | 0/1 | not run yet" in report
    assert main([suite, "--out", str(out), "--only", "GRU*"]) == 2
    assert "matches no cell" in capsys.readouterr().err


def test_one_seed_shows_no_spread():
    from recbole_kd.bench.report import _fmt
    from recbole_kd.utils import mean_std

    assert _fmt(mean_std([0.0123])) == "0.0123"  # not "0.0123 ± 0.0000": one seed has no measured spread
    assert _fmt(mean_std([0.01, 0.02])) == "0.0150 ± 0.0071"
    assert _fmt(mean_std([None])) == "-"


def test_data_path_option_reads_every_dataset_from_there_and_keeps_the_cells(tmp_path, monkeypatch, capsys):
    """``--data_path DIR`` (data copied to another machine): cells read DIR/NAME/, keep the suite's ids and
    settings (so they merge with cells run from the suite as written); a missing folder is one clear error."""
    import ast

    import yaml

    from recbole_kd.bench.cli import main
    from recbole_kd.bench.records import cell_record
    from recbole_kd.bench.runner import cell_command
    from recbole_kd.bench.suite import expand, load_suite

    suite = _suite(tmp_path, [{"model": "MF-S", "group": "student"},
                              {"model": "Transfer-SASRec", "label": "from src",
                               "settings": {"source": {"dataset": "src", "data_path": "elsewhere"}}}])
    spec = yaml.safe_load(open(suite))
    spec["datasets"]["tiny"]["data_path"] = "not-here"  # the suite's folder does not exist on this machine
    open(suite, "w").write(yaml.safe_dump(spec))
    out, data = tmp_path / "out", tmp_path / "data"
    monkeypatch.chdir(tmp_path)

    assert main([suite, "--out", str(out), "--only", "MF-S", "--data_path", str(tmp_path / "missing")]) == 2
    assert "--data_path" in capsys.readouterr().err and not (out / "cells").exists()
    assert main([suite, "--out", str(out), "--data_path", str(data), "--dry-run"]) == 2  # the transfer cell needs src/
    assert "no folder for dataset(s) src" in capsys.readouterr().err

    cells = {c.label: c for c in expand(load_suite(suite))}
    transfer = cell_command(cells["from src"], str(out), {}, str(data))
    source = next(a for a in transfer if a.startswith("--source="))
    assert f"--data_path={data}" in transfer and ast.literal_eval(source[len("--source="):]) == {
        "dataset": "src", "data_path": str(data)}
    assert "--data_path=" + os.path.abspath("not-here") in cell_command(cells["MF-S"], str(out), {})

    assert main([suite, "--out", str(out), "--only", "MF-S", "--data_path", str(data)]) == 0
    rec = json.loads((out / "cells" / "tiny__MF-S__seed2020.json").read_text())
    assert rec["status"] == "ok" and f"--data_path={data}" in rec["command"]
    assert rec["settings"]["data_path"] == "not-here" and rec["config_hash"] == cells["MF-S"].config_hash
    assert cell_record(str(out), cells["MF-S"]) is not None  # done for the suite as written, too
    capsys.readouterr()
    assert main([suite, "--out", str(out), "--dry-run"]) == 0
    assert "tiny__MF-S__seed2020" in (line := next(l for l in capsys.readouterr().out.splitlines() if "MF-S" in l)) \
        and " done " in line


def test_jobs_runs_cells_side_by_side_and_a_distilled_cell_after_its_teacher(tmp_path, monkeypatch, capsys):
    """--jobs N: at most N cells at a time; a distilled cell starts only after its teacher cell ended; cells
    that train a shared model lazily (teacher zoo, transfer source) never run side by side."""
    import threading

    from recbole_kd.bench import runner
    from recbole_kd.bench.suite import expand, load_suite

    suite = _suite(tmp_path, [
        {"model": "SASRec-L", "group": "teacher"},
        {"model": "SASRec-S", "group": "student"},
        {"model": "KD-SASRec", "label": "KD (rrd)", "settings": {"kd_losses": {"rrd": 1.0}}, "teacher_from": "SASRec-L"},
        {"model": "KD-SASRec", "label": "KD (soft)", "settings": {"kd_losses": {"soft": 1.0}}, "teacher_from": "SASRec-L"},
        {"model": "KD-MF", "label": "KD-MF (zoo)"},
        {"model": "KD-SASRec", "label": "KD (zoo)"},
        {"model": "MF-S", "group": "student"},
    ], seeds=(2020, 2021))
    events, lock, live, given = [], threading.Lock(), set(), []
    most = [0]

    def fake_run_cell(cell, out, records, data_path=None, threads=None):
        with lock:
            given.append(threads)
            live.add(cell.id)
            most[0] = max(most[0], len(live))
            events.append(("start", cell.id, cell.label))
            if cell.teacher_from:  # the teacher's record is there when the distilled cell starts
                assert any(label == cell.teacher_from for (_, label, _) in records), cell.id
            if runner._exclusive(cell):
                assert not any(runner._exclusive(c) == runner._exclusive(cell) for c in cells if c.id in live - {cell.id})
        time.sleep(0.3 if cell.label == "SASRec-L" else 0.05)
        with lock:
            live.discard(cell.id)
            events.append(("end", cell.id, cell.label))
        return {**cell.spec(), "id": cell.id, "status": "ok", "wall_seconds": 0.1, "result": {"test_result": {}}}

    cells = expand(load_suite(suite))
    monkeypatch.setattr(runner, "run_cell", fake_run_cell)
    monkeypatch.setattr(runner, "render", lambda *a, **k: None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert runner.run_suite(suite, str(tmp_path / "out"), jobs=3) == 0
    printed = capsys.readouterr().out
    # the progress counts finished cells: the first three start side by side with none done
    assert [line.split(" · ")[0] for line in printed.splitlines() if " · running " in line][:3] == \
        ["[bench] 0/14 cells done or skipped"] * 3
    assert most[0] == 3  # side by side, never more than --jobs
    assert set(given) == {2}  # 8 cores split between 3 cells: no oversubscription
    started = [e[1] for e in events if e[0] == "start"]
    assert sorted(started) == sorted(c.id for c in cells) and len(started) == len(set(started))
    teacher_end = events.index(("end", "tiny__SASRec-L__seed2020", "SASRec-L"))
    for i, (kind, _, label) in enumerate(events):
        if kind == "start" and label.startswith("KD (") and label != "KD (zoo)":
            assert i > teacher_end
    assert started.index("tiny__SASRec-S__seed2020") < teacher_end  # independent cells do not wait
    assert len(list((tmp_path / "out" / "cells").glob("*.json"))) == len(cells)
    from recbole_kd.bench.cli import main

    assert main([suite, "--jobs", "0"]) == 2
    # a user's OMP_NUM_THREADS stands, and one cell at a time keeps torch's default
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert runner.cell_threads(3) is None
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert runner.cell_threads(1) is None and runner.cell_threads(16) == 1 and runner.cell_threads(2) == 4


def test_sigterm_stops_the_bench_like_ctrl_c(tmp_path, monkeypatch, capsys):
    """SIGTERM (kill, a scheduler's time limit) stops the bench as Ctrl-C does (its running cells stopped,
    finished ones stored, exit 143); the process's own SIGTERM handler is back afterwards."""
    import threading

    from recbole_kd.bench import runner

    suite = _suite(tmp_path, [{"model": "MF-S", "group": "student"}, {"model": "BPR", "group": "baseline"}])

    def fake_run_cell(cell, out, records, data_path=None, threads=None):
        if cell.model == "BPR":
            time.sleep(1.5)  # still running when SIGTERM comes
        return {**cell.spec(), "id": cell.id, "status": "ok", "wall_seconds": 0.1, "result": {"test_result": {}}}

    monkeypatch.setattr(runner, "run_cell", fake_run_cell)
    monkeypatch.setattr(runner, "render", lambda *a, **k: None)
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))  # never kills pytest
    try:
        timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
        timer.start()
        code = runner.run_suite(suite, str(tmp_path / "out"), jobs=1)
        timer.join()
        assert code == 143 and seen == []
        assert "[bench] terminated (SIGTERM): finished cells are stored" in capsys.readouterr().err
        assert [p.name for p in (tmp_path / "out" / "cells").glob("*.json")] == ["tiny__MF-S__seed2020.json"]
        os.kill(os.getpid(), signal.SIGTERM)  # the handler before the run is back
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.slow
def test_jobs_end_to_end_and_interrupt_stops_the_running_cells(tmp_path):
    suite = _suite(tmp_path, [
        {"model": "SASRec-L", "group": "teacher"},
        {"model": "KD-SASRec", "label": "KD (soft)", "settings": {"kd_losses": {"soft": 1.0}}, "teacher_from": "SASRec-L"},
        {"model": "MF-S", "group": "student"},
    ])
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    proc = _bench(suite, "--out", str(out), "--jobs", "2", cwd=tmp_path, env=env)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-2000:]
    cells = {json.loads(p.read_text())["label"]: json.loads(p.read_text()) for p in (out / "cells").glob("*.json")}
    assert set(cells) == {"SASRec-L", "KD (soft)", "MF-S"} and cells["KD (soft)"]["result"]["teacher_source"] == "checkpoint"
    assert "(2 running)" in stdout  # MF-S ran beside the teacher
    # each cell's own run had its share of the cores (its torch threads, as the run itself recorded them)
    share = max(1, os.cpu_count() // 2)
    assert f"each cell runs with OMP_NUM_THREADS={share}" in stdout
    assert {c["machine"]["torch_threads"] for c in cells.values()} == {share}
    assert {c["result"]["machine"]["torch_threads"] for c in cells.values()} == {share}
    # Ctrl-C (SIGINT to the bench alone) stops the cells it started, too, and so does SIGTERM (kill, a
    # scheduler's time limit): none is left running
    for p in (out / "cells").glob("*.json"):
        p.unlink()
    shutil.rmtree(out / "work")
    for sig, code, said in ((signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated (SIGTERM)")):
        proc = _bench(suite, "--out", str(out), "--jobs", "2", cwd=tmp_path)
        deadline = time.time() + 120
        while time.time() < deadline and "(2 running)" not in (line := proc.stdout.readline()):
            assert line or proc.poll() is None
        time.sleep(2)
        os.kill(proc.pid, sig)
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == code, stderr[-2000:]
        assert f"[bench] {said}" in stderr
        left = subprocess.run(["pgrep", "-f", f"--checkpoint_dir={out}"], capture_output=True, text=True)
        assert left.stdout.strip() == "", left.stdout


def test_minutes_and_skip_per_dataset(tmp_path):
    """``minutes`` and ``skip`` take one value for every dataset or a {dataset: value} map."""
    import yaml

    from recbole_kd.bench.suite import expand, load_suite

    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({
        "name": "s", "seeds": [1], "datasets": {"a": {}, "b": {}},
        "models": [{"model": "SASRec-S", "minutes": {"a": 25, "b": 200}, "skip": {"b": "too slow"}},
                   {"model": "MF-S", "minutes": 2}],
    }))
    cells = {(c.dataset, c.model): c for c in expand(load_suite(str(path)))}
    assert cells["a", "SASRec-S"].minutes == 25 and cells["b", "SASRec-S"].minutes == 200
    assert cells["a", "SASRec-S"].skip is None and cells["b", "SASRec-S"].skip == "too slow"
    assert cells["a", "MF-S"].minutes == 2 and cells["b", "MF-S"].minutes == 2


def test_no_ratio_to_a_reference_within_noise(tmp_path):
    """A ratio to a row whose NDCG@10 mean is not above its spread over seeds reads n/a, not e.g. 12.000."""
    import yaml

    from recbole_kd.bench.report import render, summarize
    from recbole_kd.bench.suite import expand, load_suite

    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({
        "name": "s", "seeds": [1, 2, 3], "datasets": {"a": {}},
        "models": [{"model": "MF-L", "group": "teacher", "seeds": [1]}, {"model": "MF-S", "group": "student"},
                   {"model": "KD-MF", "settings": {"kd_losses": {"soft": 1.0}}, "teacher_from": "MF-L"}],
    }))
    suite = load_suite(str(path))
    cells = expand(suite)
    ndcg = {("MF-L", 1): 0.0010, ("MF-S", 1): 0.0, ("MF-S", 2): 0.0, ("MF-S", 3): 0.0001,
            ("KD-MF", 1): 0.0003, ("KD-MF", 2): 0.0004, ("KD-MF", 3): 0.0005}
    records = {}
    for c in cells:
        result = {"test_result": {"ndcg@10": ndcg[c.model, c.seed], "recall@10": 0.0, "mrr@10": 0.0},
                  "num_params": 10, "latency_seconds": 0.01, "train_seconds_per_epoch": 1.0, "epochs_run": 2,
                  "train_seconds": 2.0}
        records[(c.dataset, c.label, c.seed)] = {"seed": c.seed, "result": result, "machine": {"device": "cpu"},
                                                 "config_hash": "h", "git_commit": "c"}
    rows = {r["label"]: r for r in summarize(cells, records, str(tmp_path))}
    kd = rows["KD-MF"]
    assert kd["vs_student_alone"] is None and kd["vs_noise"] == ["vs_student_alone"]  # MF-S: 0.0000 +- 0.0001
    assert kd["vs_teacher"] == pytest.approx(0.4)  # one teacher seed: no spread measured, the ratio stands
    render(suite, cells, records, str(tmp_path))
    report = (tmp_path / "README.md").read_text()
    assert "| distilled | KD-MF | KD-MF | 3/3 | 0.0004 ± 0.0001 |" in report
    assert "| 2 | n/a | 0.400 |" in report


def test_kd_gain_plot_of_one_row_keeps_room_for_its_bar(tmp_path):
    # one transfer row used to give a 0.95-inch figure whose title and axis label left the bar no height
    import struct

    from recbole_kd.bench.plots import _plots

    def row(label, group, ndcg, ratio=None):
        return {"dataset": "tiny", "status": "ok", "label": label, "group": group, "num_params": 1000,
                "latency_ms": 5.0, "ndcg@10": (ndcg, 0.0001), "vs_student_alone": ratio}

    rows = [row("target only (20%)", "student", 0.001, 1.0),
            row("shared_tokens from a source dataset with a long name (20%)", "transfer", 0.0098, 9.8)]
    made = _plots(rows, str(tmp_path))
    assert [name for _, name in made["tiny"]][-1] == "plots/tiny_kd_gain.png"
    head = (tmp_path / "plots" / "tiny_kd_gain.png").read_bytes()[:24]
    width, height = struct.unpack(">II", head[16:24])
    assert height >= 150, height  # 1.6 in + 0.45 in per bar at 110 dpi, less the trimmed margin
    assert width > 300


def test_latency_front_leaves_out_rows_timed_on_another_device():
    # ml-1m's report mixes CPU cells with a teacher and a student timed on an H200: a 20 ms GPU latency
    # beside 400 ms CPU ones is not a trade-off, so those rows are marked and kept out of the latency front
    from recbole_kd.bench.plots import plot_points

    def row(params, ms, ndcg, devices):
        return {"num_params": params, "latency_ms": ms, "ndcg@10": (ndcg, 0.0), "devices": devices}

    rows = [row(1, 0.3, 0.02, ["cpu"]), row(150_000, 0.7, 0.07, ["cpu"]), row(150_000, 450.0, 0.09, ["cpu"]),
            row(2_000_000, 20.0, 0.127, ["cuda"]), row(140_000, 10.0, 0.091, ["cuda"])]
    pts, front, other = plot_points(rows, "latency_ms")
    assert other == ["", "", "", "cuda", "cuda"]
    assert front == [0, 1, 2]
    pts, front, other = plot_points(rows, "num_params")
    assert other == [""] * 5 and front == [0, 4, 3]


def test_report_names_its_protocol_and_never_divides_across_protocols(tmp_path):
    """Each table is under the protocol its cells selected (filter-seen), the other beside it; a cell stored
    before both protocols were recorded (RecBole's only) shows '-' under filter-seen, gets no filter-seen
    ratio, and is scheduled to run again."""
    import yaml

    from recbole_kd.bench.records import legacy_record
    from recbole_kd.bench.report import render, summarize
    from recbole_kd.bench.suite import expand, load_suite

    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({
        "name": "s", "seeds": [1], "datasets": {"a": {}},
        "models": [{"model": "SASRec-L", "group": "teacher"}, {"model": "SASRec-S", "group": "student"},
                   {"model": "KD-SASRec", "settings": {"kd_losses": {"soft": 1.0}}, "teacher_from": "SASRec-L"},
                   {"model": "MF-S", "group": "student"}],
    }))
    suite = load_suite(str(path))
    cells = expand(suite)
    both = {"SASRec-L": (0.050, 0.040), "SASRec-S": (0.060, 0.045), "KD-SASRec": (0.066, 0.054)}
    records = {}
    for c in cells:
        result = {"num_params": 10, "latency_seconds": 0.01, "train_seconds_per_epoch": 1.0, "epochs_run": 2,
                  "train_seconds": 2.0}
        if c.model in both:
            f, r = both[c.model]
            tables = {"filter_seen": {"ndcg@10": f, "recall@10": 0.1, "mrr@10": 0.03},
                      "recbole": {"ndcg@10": r, "recall@10": 0.08, "mrr@10": 0.02}}
            result.update(protocol="filter_seen", test_result=tables["filter_seen"], test_result_by_protocol=tables)
        else:  # stored before both protocols were recorded
            result.update(test_result={"ndcg@10": 0.030, "recall@10": 0.05, "mrr@10": 0.01})
        records[(c.dataset, c.label, c.seed)] = {"seed": c.seed, "result": result, "machine": {"device": "cpu"},
                                                 "config_hash": "h", "git_commit": "c"}
    rows = {r["label"]: r for r in summarize(cells, records, str(tmp_path))}
    kd = rows["KD-SASRec"]
    assert kd["protocol"] == "filter_seen"
    assert kd["vs_student_alone"] == pytest.approx(0.066 / 0.060)
    assert kd["vs_student_alone_other"] == pytest.approx(0.054 / 0.045)
    assert kd["vs_teacher"] == pytest.approx(0.066 / 0.050)
    assert kd["vs_student_alone_worst"] is None  # one seed: no seed spread to check
    mf = rows["MF-S"]
    assert mf["ndcg@10"] == (None, None) and mf["recbole"]["ndcg@10"][0] == 0.030
    assert mf["vs_student_alone"] is None and mf["vs_student_alone_other"] == pytest.approx(1.0)
    # under RecBole's rule the MF row (history filtered) and the SASRec teacher (not filtered) are two tasks
    assert mf["recbole"] and rows["SASRec-L"]["recbole"] and mf["vs_teacher_other"] is None
    assert legacy_record(records[("a", "MF-S", 1)]) and not legacy_record(records[("a", "SASRec-S", 1)])
    render(suite, cells, records, str(tmp_path))
    report = (tmp_path / "README.md").read_text()
    assert "## a (protocol: filter-seen)" in report
    assert "| test NDCG@10 (filter-seen) | NDCG@10 (RecBole) |" in report
    assert "| distilled | KD-SASRec | KD-SASRec | 1/1 | 0.0660 | 0.0540 |" in report
    assert "| 1.100 (RecBole 1.200) | 1.320 (RecBole 1.350) |" in report
    assert "| student | MF-S | MF-S | 1/1 | - | 0.0300 |" in report


def test_a_stored_general_model_cell_counts_under_both_protocols(tmp_path):
    """RecBole already filters seen items for models that are not sequential: a BPR / MF-S / Pop cell stored
    under RecBole's protocol only is reported under filter-seen too and not run again; a sequential, a
    distilled or a transferred one stays RecBole-only (its checkpoint or teacher followed the protocol)."""
    import yaml

    from recbole_kd.bench.records import legacy_record, protocol_result, protocol_valid
    from recbole_kd.bench.report import render, summarize
    from recbole_kd.bench.suite import expand, load_suite

    t = {"ndcg@10": 0.030, "recall@10": 0.05, "mrr@10": 0.01}
    v = {"ndcg@10": 0.040, "recall@10": 0.06, "mrr@10": 0.02}

    def stored(model, **more):
        return {"seed": 1, "machine": {"device": "cpu"}, "config_hash": "h", "git_commit": "c",
                "result": {"model": model, "test_result": t, "best_valid_result": v, "num_params": 10,
                           "latency_seconds": 0.01, "train_seconds_per_epoch": 1.0, "epochs_run": 2,
                           "train_seconds": 2.0, **more}}

    for model in ("BPR", "MF-S", "Pop"):
        rec = stored(model)
        assert not legacy_record(rec), model
        assert protocol_result(rec["result"], "filter_seen") == protocol_result(rec["result"], "recbole") == t
        assert protocol_valid(rec["result"], "filter_seen") == v
    for rec in (stored("SASRec-S"), stored("KD-MF", teacher="SASRec-L"),
                stored("Transfer-SASRec", source_dataset="ml-100k"), stored("NoSuchModel")):
        assert legacy_record(rec), rec["result"]["model"]
        assert protocol_result(rec["result"], "filter_seen") is None
        assert protocol_result(rec["result"], "recbole") == t

    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({
        "name": "s", "seeds": [1], "datasets": {"a": {}},
        "models": [{"model": "SASRec-S", "group": "student"}, {"model": "MF-S", "group": "student"}],
    }))
    suite = load_suite(str(path))
    cells = expand(suite)
    both = {"filter_seen": {"ndcg@10": 0.06, "recall@10": 0.1, "mrr@10": 0.03},
            "recbole": {"ndcg@10": 0.045, "recall@10": 0.08, "mrr@10": 0.02}}
    records = {("a", "MF-S", 1): stored("MF-S"),
               ("a", "SASRec-S", 1): stored("SASRec-S", protocol="filter_seen", test_result=both["filter_seen"],
                                            test_result_by_protocol=both)}
    rows = {r["label"]: r for r in summarize(cells, records, str(tmp_path))}
    assert rows["MF-S"]["ndcg@10"][0] == rows["MF-S"]["recbole"]["ndcg@10"][0] == 0.030
    render(suite, cells, records, str(tmp_path))
    report = (tmp_path / "README.md").read_text()
    assert "| student | MF-S | MF-S | 1/1 | 0.0300 | 0.0300 |" in report
    assert "Rows of models that are not sequential and have no teacher (MF-S)" in report


def test_kd_gain_reports_the_worst_seed_against_the_best_alone_seed(tmp_path):
    import yaml

    from recbole_kd.bench.report import render, summarize
    from recbole_kd.bench.suite import expand, load_suite

    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({
        "name": "s", "seeds": [1, 2, 3], "datasets": {"a": {}},
        "models": [{"model": "SASRec-S", "group": "student"}, {"model": "KD-SASRec", "settings": {"kd_losses": {"soft": 1.0}}}],
    }))
    suite = load_suite(str(path))
    cells = expand(suite)
    ndcg = {("SASRec-S", 1): 0.050, ("SASRec-S", 2): 0.052, ("SASRec-S", 3): 0.054,
            ("KD-SASRec", 1): 0.056, ("KD-SASRec", 2): 0.057, ("KD-SASRec", 3): 0.060}
    records = {}
    for c in cells:
        t = {"ndcg@10": ndcg[c.model, c.seed], "recall@10": 0.1, "mrr@10": 0.03}
        result = {"num_params": 10, "latency_seconds": 0.01, "train_seconds_per_epoch": 1.0, "epochs_run": 2,
                  "train_seconds": 2.0, "protocol": "filter_seen", "test_result": t,
                  "test_result_by_protocol": {"filter_seen": t, "recbole": t}}
        records[(c.dataset, c.label, c.seed)] = {"seed": c.seed, "result": result, "machine": {"device": "cpu"},
                                                 "config_hash": "h", "git_commit": "c"}
    rows = {r["label"]: r for r in summarize(cells, records, str(tmp_path))}
    assert rows["KD-SASRec"]["vs_student_alone"] == pytest.approx(0.0577 / 0.052, abs=1e-3)
    assert rows["KD-SASRec"]["vs_student_alone_worst"] == pytest.approx(0.056 / 0.054)
    render(suite, cells, records, str(tmp_path))
    assert "| 1.109 [1.037] (RecBole 1.109) |" in (tmp_path / "README.md").read_text()


def test_a_row_never_averages_seeds_of_two_protocol_generations(tmp_path):
    """One seed re-run with both protocols recorded, two older RecBole-only seeds: the row is that one
    seed (RecBole 0.040, not the mean with the older 0.030s), and the report says what it left out."""
    import yaml

    from recbole_kd.bench.report import render, summarize
    from recbole_kd.bench.suite import expand, load_suite

    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "seeds": [1, 2, 3], "datasets": {"a": {}},
                                    "models": [{"model": "SASRec-S", "group": "student"}]}))
    suite = load_suite(str(path))
    cells = expand(suite)
    records = {}
    for c in cells:
        result = {"num_params": 10, "latency_seconds": 0.01, "train_seconds_per_epoch": 1.0, "epochs_run": 2,
                  "train_seconds": 2.0, "test_result": {"ndcg@10": 0.030, "recall@10": 0.05, "mrr@10": 0.01}}
        if c.seed == 1:
            tables = {"filter_seen": {"ndcg@10": 0.050, "recall@10": 0.1, "mrr@10": 0.03},
                      "recbole": {"ndcg@10": 0.040, "recall@10": 0.08, "mrr@10": 0.02}}
            result.update(protocol="filter_seen", test_result=tables["filter_seen"], test_result_by_protocol=tables)
        records[(c.dataset, c.label, c.seed)] = {"seed": c.seed, "result": result, "machine": {"device": "cpu"},
                                                 "config_hash": "h", "git_commit": "c"}
    (row,) = summarize(cells, records, str(tmp_path))
    assert row["seeds"] == [1] and row["superseded_seeds"] == [2, 3]
    assert row["recbole"]["ndcg@10"] == (0.040, None) and row["ndcg@10"] == (0.050, None)
    render(suite, cells, records, str(tmp_path))
    report = (tmp_path / "README.md").read_text()
    assert "| student | SASRec-S | SASRec-S | 1/3 (+2 RecBole-only) | 0.0500 | 0.0400 |" in report
    assert "leaves out N seeds stored before both protocols were recorded" in report


def test_no_ratio_between_checkpoints_chosen_under_two_protocols(tmp_path):
    """A student re-run under filter-seen (both protocols recorded) and distilled rows stored before, chosen
    on RecBole's valid metric: no ratio between them under either protocol (two selection rules), while a
    stored MF-S alone (a general model without teacher: the same checkpoint under both rules) still divides
    a stored KD-MF. A KD-gain plot of an earlier render is not left behind."""
    import yaml

    from recbole_kd.bench.report import render, summarize
    from recbole_kd.bench.suite import expand, load_suite

    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "seeds": [1], "datasets": {"a": {}}, "models": [
        {"model": "SASRec-S", "group": "student"}, {"model": "KD-SASRec"},
        {"model": "MF-S", "group": "student"}, {"model": "KD-MF"}]}))
    cells = expand(load_suite(str(path)))
    records = {}
    for c in cells:
        t = {"ndcg@10": 0.04, "recall@10": 0.1, "mrr@10": 0.03}
        result = {"num_params": 10, "latency_seconds": 0.01, "train_seconds_per_epoch": 1.0, "epochs_run": 2,
                  "train_seconds": 2.0, "model": c.model, "test_result": t}
        if c.model == "SASRec-S":  # re-run: chosen under filter-seen, both protocols recorded
            result.update(protocol="filter_seen", test_result={**t, "ndcg@10": 0.06},
                          test_result_by_protocol={"filter_seen": {**t, "ndcg@10": 0.06}, "recbole": t})
        if c.model.startswith("KD-"):
            result["teacher"] = "SASRec-L"
        records[(c.dataset, c.label, c.seed)] = {"seed": c.seed, "result": result, "machine": {"device": "cpu"},
                                                 "config_hash": "h", "git_commit": "c"}
    plot = tmp_path / "plots" / "a_kd_gain.png"
    plot.parent.mkdir()
    plot.write_bytes(b"a plot of a render before")
    render(load_suite(str(path)), cells, records, str(tmp_path))
    assert not plot.exists()  # a gain plot of the KD rows, which have no ratio now, is not left behind
    assert (tmp_path / "plots" / "a_ndcg_vs_params.png").exists()
    rows = {r["label"]: r for r in summarize(cells, records, str(tmp_path))}
    kd = rows["KD-SASRec"]
    assert kd["recbole"]["ndcg@10"] == (0.04, None) and rows["SASRec-S"]["recbole"]["ndcg@10"] == (0.04, None)
    assert kd["vs_student_alone"] is None and kd["vs_student_alone_other"] is None  # not 1.000 under RecBole's
    assert rows["KD-MF"]["vs_student_alone_other"] == 1.0


def test_the_headline_is_chosen_on_validation_not_on_test(tmp_path):
    """Two transfer rows against one target-only row: the one with the better validation NDCG@10 is the
    headline, although the other has the better test NDCG@10; the report names it with its ratio."""
    import yaml

    from recbole_kd.bench.report import render, summarize
    from recbole_kd.bench.suite import expand, load_suite

    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({
        "name": "s", "seeds": [1, 2], "datasets": {"a": {}},
        "models": [{"model": "SASRec-S", "label": "alone", "group": "student"},
                   {"model": "Transfer-SASRec", "label": "good on valid", "group": "transfer", "student_ref": "alone"},
                   {"model": "Transfer-SASRec", "label": "good on test", "group": "transfer", "student_ref": "alone"}],
    }))
    suite = load_suite(str(path))
    cells = expand(suite)
    valid = {"alone": 0.050, "good on valid": 0.060, "good on test": 0.055}
    test = {"alone": 0.040, "good on valid": 0.044, "good on test": 0.048}
    records = {}
    for c in cells:
        t = {"ndcg@10": test[c.label] + c.seed * 1e-4, "recall@10": 0.1, "mrr@10": 0.03}
        v = {"ndcg@10": valid[c.label] + c.seed * 1e-4, "recall@10": 0.1, "mrr@10": 0.03}
        result = {"num_params": 10, "latency_seconds": 0.01, "train_seconds_per_epoch": 1.0, "epochs_run": 2,
                  "train_seconds": 2.0, "protocol": "filter_seen", "test_result": t, "best_valid_result": v,
                  "test_result_by_protocol": {"filter_seen": t, "recbole": t},
                  "best_valid_result_by_protocol": {"filter_seen": v, "recbole": v}}
        records[(c.dataset, c.label, c.seed)] = {"seed": c.seed, "result": result, "machine": {"device": "cpu"},
                                                 "config_hash": "h", "git_commit": "c"}
    rows = {r["label"]: r for r in summarize(cells, records, str(tmp_path))}
    assert rows["good on valid"]["headline"] and not rows["good on test"]["headline"]
    assert not rows["alone"]["headline"]
    render(suite, cells, records, str(tmp_path))
    report = (tmp_path / "README.md").read_text()
    assert ("- **good on valid**: valid NDCG@10 0.0601 ± 0.0001, test NDCG@10 0.0441 ± 0.0001, 1.100x alone "
            "(worst/best seed 1.097)") in report
    assert "**good on test**" not in report

    del records[("a", "good on valid", 2)]  # a row with a seed still to run is no headline yet
    rows = {r["label"]: r for r in summarize(cells, records, str(tmp_path))}
    assert rows["good on test"]["headline"] and not rows["good on valid"]["headline"]


def test_a_cell_measured_on_other_data_is_run_again_and_never_reported(tmp_path, monkeypatch, capsys):
    """A finished cell records the sha256 of its dataset's atomic files; after the data changes (e.g. a new
    conversion) the cell is no longer reported, the dry run says why, and the suite runs it again."""
    from recbole_kd.bench.cli import main
    from recbole_kd.bench.records import cell_record, stored_record
    from recbole_kd.bench.suite import expand, load_suite

    suite = _suite(tmp_path, [{"model": "MF-S", "group": "baseline"}])
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    assert main([suite, "--out", str(out)]) == 0
    cell = expand(load_suite(suite))[0]
    rec = cell_record(str(out), cell)
    inter = tmp_path / "data" / "tiny" / "tiny.inter"
    assert rec["result"]["data_files"] == {"tiny.inter": __import__("hashlib").sha256(inter.read_bytes()).hexdigest()}
    capsys.readouterr()
    assert main([suite, "--out", str(out), "--dry-run"]) == 0
    assert "done" in capsys.readouterr().out
    with open(inter, "a") as f:  # the dataset changes: one more interaction
        f.write("1\t2\t999999\n")
    assert cell_record(str(out), cell) is None and stored_record(str(out), cell) is not None
    assert main([suite, "--out", str(out), "--dry-run"]) == 0
    assert "to run (data changed)" in capsys.readouterr().out
    assert main([suite, "--out", str(out), "--render-only"]) == 0
    assert "| baseline | MF-S | MF-S | 0/1 | not run yet" in (out / "README.md").read_text()
    (tmp_path / "data" / "tiny" / "tiny.item").write_text("item_id:token\tname:token_seq\n1\ta\n")  # a new file
    inter.write_text(inter.read_text().rsplit("1\t2\t999999\n", 1)[0])  # the old .inter again
    assert cell_record(str(out), cell) is None  # the set of files differs
    (tmp_path / "data" / "tiny" / "tiny.item").unlink()
    assert cell_record(str(out), cell) is not None  # the data it was measured on: reported again
    assert main([suite, "--out", str(out)]) == 0  # nothing to run
    assert rec == cell_record(str(out), cell)


def test_a_cell_that_another_live_bench_process_runs_is_not_started_twice(tmp_path, monkeypatch):
    """Two bench runs over one output folder picked the same cell (each's --only included it) and wrote its
    checkpoints in turns; a cell's work folder now holds running.pid while a process runs it."""
    from recbole_kd.bench import runner
    from recbole_kd.bench.suite import expand, load_suite

    (cell,) = expand(load_suite(_suite(tmp_path, [{"model": "Pop", "group": "baseline"}])))
    out = tmp_path / "out"
    work = out / "work" / cell.id
    work.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    started = []
    monkeypatch.setattr(runner, "_run_process", lambda *a, **k: started.append(a) or (0, ""))
    here = socket.gethostname()
    try:
        (work / runner.LOCK).write_text(f"{here} {other.pid}\n")
        rec = runner.run_cell(cell, str(out), {})
        assert rec["status"] == "busy" and f"pid {other.pid}" in rec["error"] and not started
        assert (work / runner.LOCK).read_text() == f"{here} {other.pid}\n"  # the holder's lock is left alone
        # the same pid written on another machine (a work folder copied here) holds nothing on this one
        (work / runner.LOCK).write_text(f"{here}-elsewhere {other.pid}\n")
        assert runner.claim_cell(str(work)) is None
        assert (work / runner.LOCK).read_text() == f"{here} {os.getpid()}\n"
        (work / runner.LOCK).write_text(f"{here} {other.pid}\n")
    finally:
        other.kill()
        other.wait()
    # its process gone, the lock is stale: taken over, the cell runs, and the lock is removed after it
    rec = runner.run_cell(cell, str(out), {})
    assert len(started) == 1 and rec["status"] == "failed"  # the fake process wrote no result file
    assert not (work / runner.LOCK).exists()
    # held by this very process (a lock left by an earlier call of ours): never a reason to skip
    assert runner.claim_cell(str(work)) is None and runner.claim_cell(str(work)) is None


def test_a_time_estimate_uses_only_cells_run_on_this_kind_of_device():
    """A cell that ran on a GPU says little about a CPU: --dry-run and the ETA use the suite's ``minutes``
    until a cell of the row ran on this kind of device."""
    from recbole_kd.bench import Cell
    from recbole_kd.bench.runner import estimate_minutes

    cell = Cell("ml-1m", "SASRec-L", "SASRec-L", "teacher", 2020, {}, minutes=400)
    gpu = {("ml-1m", "SASRec-L", 2020): {"wall_seconds": 360.0, "machine": {"device": "cuda"}}}
    assert estimate_minutes(cell, gpu, "cpu") == 400.0 and estimate_minutes(cell, gpu, "cuda") == 6.0
    cpu = {**gpu, ("ml-1m", "SASRec-L", 2021): {"wall_seconds": 6000.0, "machine": {"device": "cpu"}}}
    assert estimate_minutes(cell, cpu, "cpu") == 100.0
    other_row = {("ml-1m", "SASRec-S", 2020): {"wall_seconds": 60.0, "machine": {"device": "cpu"}}}
    assert estimate_minutes(cell, other_row, "cpu") == 400.0
