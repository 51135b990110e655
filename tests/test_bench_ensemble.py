"""Ensemble teachers in bench (a teacher row with ``ensemble: true``): the suite's checks, the cells and their
ids, the distilled cell's command (every member's checkpoint), the scheduling (the ensemble after its members,
a distilled cell after the ensemble), the ensemble cell's record and its rows in the report. Fake records and
fake processes only: nothing is trained."""
import hashlib
import json
import os
import threading
import time

import pytest
import yaml

from recbole_kd.bench import SuiteError, expand, load_suite

ENSEMBLE = {"model": "SASRec-L", "label": "T", "group": "teacher", "ensemble": True, "seeds": [2020, 2021],
            "settings": {"cl_weight": 0.1}}
MODELS = [ENSEMBLE, {"model": "SASRec-S", "group": "student"},
          {"model": "KD-SASRec", "label": "KD (rd)", "settings": {"kd_losses": {"rd": 1.0}}, "teacher_from": "T"},
          {"model": "KD-SASRec", "label": "KD (hard)", "settings": {"kd_losses": {"hard": 1.0}}, "teacher_from": "T"}]


def _suite(tmp_path, models=MODELS, seeds=(2020, 2021)):
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({"name": "ens", "seeds": list(seeds), "settings": {"epochs": 1},
                                    "datasets": {"tiny": {}}, "models": models}, sort_keys=False))
    return str(path)


def _metrics(ndcg):
    return {"ndcg@10": ndcg, "recall@10": 2 * ndcg, "mrr@10": ndcg / 2}


def _record(cell, ndcg, **result):
    res = {"test_result": _metrics(ndcg), "best_valid_result": _metrics(ndcg + 0.01),
           "test_result_by_protocol": {"filter_seen": _metrics(ndcg), "recbole": _metrics(ndcg / 2)},
           "best_valid_result_by_protocol": {"filter_seen": _metrics(ndcg + 0.01), "recbole": _metrics(ndcg / 2)},
           "protocol": "filter_seen", "num_params": 100, "latency_seconds": 0.01, "train_seconds_per_epoch": 2.0,
           "epochs_run": 5, "train_seconds": 10.0, "checkpoint": f"work/{cell.id}/saved/m.pth", **result}
    return {**cell.spec(), "id": cell.id, "config_hash": cell.config_hash, "status": "ok", "wall_seconds": 60.0,
            "git_commit": "c", "machine": {"cpu": "x", "cores": 2, "device": "cpu", "torch": "t"}, "result": res}


def _run_with_fake_cells(monkeypatch, suite, out, slow, check=lambda cell, records: None):
    """``run_suite`` (3 jobs) with cells that only log their start and end (``check``: called at the start with
    the records there then); the cell ``slow`` (label, seed) takes longest. Returns the log."""
    from recbole_kd.bench import runner

    events, lock = [], threading.Lock()

    def fake_run_cell(cell, out, records, data_path=None, threads=None):
        with lock:
            events.append(("start", cell.id))
            check(cell, records)
        time.sleep(0.3 if (cell.label, cell.seed) == slow else 0.05)
        with lock:
            events.append(("end", cell.id))
        return _record(cell, 0.03)

    monkeypatch.setattr(runner, "run_cell", fake_run_cell)
    monkeypatch.setattr(runner, "render", lambda *a, **k: None)
    monkeypatch.setattr(runner, "check_cells", lambda *a, **k: None)
    assert runner.run_suite(suite, out, jobs=3) == 0
    return events


@pytest.mark.parametrize("row, words", [
    ({**ENSEMBLE, "group": "student"}, "group teacher"),
    ({**ENSEMBLE, "seeds": [2020]}, "2 or more seeds"),
    ({**ENSEMBLE, "seeds": [2020, 2020]}, "2 or more seeds"),
    ({**ENSEMBLE, "ensemble": "yes"}, "ensemble: 'yes'"),
])
def test_an_ensemble_row_needs_a_teacher_with_two_seeds(tmp_path, row, words):
    path = _suite(tmp_path, [row])
    with pytest.raises(SuiteError) as err:
        expand(load_suite(path))
    assert path in str(err.value) and "models[0] (T)" in str(err.value) and words in str(err.value)
    with pytest.raises(SuiteError, match="'T member'"):  # the members' row name is taken
        expand(load_suite(_suite(tmp_path, [{"model": "SASRec-L", "label": "T member"}, ENSEMBLE])))


def test_ensemble_cells_and_ids_and_the_other_cells_keep_theirs(tmp_path):
    cells = expand(load_suite(_suite(tmp_path)))
    teacher = [c for c in cells if c.group == "teacher"]
    # the ensemble cell first (its row leads the report), then its members: ordinary cells
    assert [(c.id, c.label, c.ensemble) for c in teacher] == [
        ("tiny__T_ensemble__seed2020", "T", (2020, 2021)),
        ("tiny__T__seed2020", "T member", ()), ("tiny__T__seed2021", "T member", ())]
    assert all(c.settings == {"epochs": 1, "cl_weight": 0.1} and c.model == "SASRec-L" for c in teacher)
    assert teacher[0].spec()["ensemble"] == [2020, 2021]
    student = next(c for c in cells if c.label == "SASRec-S")
    old_spec = {"dataset": "tiny", "label": "SASRec-S", "model": "SASRec-S", "group": "student", "seed": 2020,
                "settings": {"epochs": 1}, "teacher_from": None}  # the spec of every cell before ensembles
    assert student.spec() == old_spec and student.config_hash == hashlib.sha1(
        json.dumps(old_spec, sort_keys=True, default=str).encode()).hexdigest()[:12]
    assert student.id == "tiny__SASRec-S__seed2020"


def test_a_distilled_cell_gets_every_members_checkpoint_and_the_ensemble_cell_evaluates_them(tmp_path):
    from recbole_kd.bench.runner import cell_command

    cells = expand(load_suite(_suite(tmp_path)))
    out = str(tmp_path / "out")
    by_id = {c.id: c for c in cells}
    members = [by_id["tiny__T__seed2020"], by_id["tiny__T__seed2021"]]
    records = {(m.dataset, m.label, m.seed): _record(m, 0.03) for m in members}
    ens = by_id["tiny__T_ensemble__seed2020"]
    args = cell_command(ens, out, records)
    assert "evaluate_ensemble" in args[2]
    job = json.loads(args[3])
    assert job["checkpoints"] == [os.path.join(out, f"work/{m.id}/saved/m.pth") for m in members]
    assert job["dataset"] == "tiny" and job["settings"]["cl_weight"] == 0.1
    assert job["result_file"] == os.path.join(out, "work", ens.id, "result.json")
    records[(ens.dataset, ens.label, ens.seed)] = _record(ens, 0.04, checkpoints=["x"], seeds=[2020, 2021])
    args = cell_command(by_id["tiny__KD_rd__seed2021"], out, records)
    expected = [os.path.join(out, f"work/{m.id}/saved/m.pth") for m in members]
    assert f"--teacher_checkpoint={expected!r}" in args and "--teacher=SASRec-L" in args
    del records[(members[1].dataset, members[1].label, members[1].seed)]
    with pytest.raises(RuntimeError, match="member seed.* 2021"):
        cell_command(by_id["tiny__KD_rd__seed2021"], out, records)


def test_the_ensemble_cell_record_sums_its_members_training(tmp_path, monkeypatch):
    from recbole_kd.bench import runner

    cells = expand(load_suite(_suite(tmp_path)))
    out = str(tmp_path / "out")
    ens, m1, m2 = cells[:3]
    records = {(m.dataset, m.label, m.seed): _record(m, 0.03, epochs_run=e, train_seconds_per_epoch=s)
               for m, e, s in ((m1, 4, 10.0), (m2, 6, 20.0))}

    def fake_process(args, cwd, log, env=None):  # what evaluate_checkpoints returns, written by the cell
        job = json.loads(args[-1])
        with open(job["result_file"], "w") as f:
            json.dump({"model": "ensemble(SASRec-L x2)", "checkpoints": job["checkpoints"], "num_params": 200,
                       "test_result": _metrics(0.05), "best_valid_result": _metrics(0.06), "latency_seconds": 0.02,
                       "machine": {"device": "cpu"}}, f)
        return 0, ""

    monkeypatch.setattr(runner, "_run_process", fake_process)
    rec = runner.run_cell(ens, out, records)
    assert rec["status"] == "ok" and rec["id"] == "tiny__T_ensemble__seed2020" and rec["ensemble"] == [2020, 2021]
    res = rec["result"]
    assert res["checkpoints"] == [f"work/{m.id}/saved/m.pth" for m in (m1, m2)]  # relative to the results folder
    assert res["seeds"] == [2020, 2021] and res["epochs_run"] == 10 and res["train_seconds"] == 160.0
    assert res["train_seconds_per_epoch"] == 16.0 and res["test_result"]["ndcg@10"] == 0.05


def test_members_run_again_for_their_checkpoints_and_the_ensemble_with_them(tmp_path):
    from recbole_kd.bench.runner import teacher_reruns

    cells = expand(load_suite(_suite(tmp_path)))
    out = tmp_path / "out"
    ens, m1, m2 = cells[:3]
    records = {(c.dataset, c.label, c.seed): _record(c, 0.03) for c in (ens, m1, m2)}
    todo = [c for c in cells if c.label == "KD (rd)"]
    assert set(teacher_reruns(cells, records, str(out), todo)) == {ens.id, m1.id, m2.id}  # a fresh checkout
    for m in (m1, m2):
        (out / "work" / m.id / "saved").mkdir(parents=True)
        (out / "work" / m.id / "saved" / "m.pth").write_bytes(b"x")
    assert teacher_reruns(cells, records, str(out), todo) == {}
    os.unlink(out / "work" / m2.id / "saved" / "m.pth")
    assert set(teacher_reruns(cells, records, str(out), todo)) == {ens.id, m2.id}
    del records[(ens.dataset, ens.label, ens.seed)]  # an ensemble cell to run needs its members' checkpoints
    assert set(teacher_reruns(cells, records, str(out), [ens])) == {m2.id}


def test_the_ensemble_waits_for_its_members_and_distilled_cells_for_the_ensemble(tmp_path, monkeypatch):

    suite = _suite(tmp_path)
    cells = expand(load_suite(suite))

    def check(cell, records):
        if cell.ensemble:  # every member's record is there when the ensemble starts
            assert {(cell.label + " member", s) for s in cell.ensemble} <= {(k[1], k[2]) for k in records}
        if cell.teacher_from:
            assert ("tiny", "T", 2020) in records

    events = _run_with_fake_cells(monkeypatch, suite, str(tmp_path / "out"), ("T member", 2021), check)
    ens_start = events.index(("start", "tiny__T_ensemble__seed2020"))
    ens_end = events.index(("end", "tiny__T_ensemble__seed2020"))
    assert ens_start > events.index(("end", "tiny__T__seed2020")) and ens_start > events.index(("end", "tiny__T__seed2021"))
    for kind, cid in events:
        if kind == "start" and "__KD_" in cid:
            assert events.index((kind, cid)) > ens_end
    assert events.index(("start", "tiny__SASRec-S__seed2020")) < ens_end  # independent cells do not wait
    assert sorted(e[1] for e in events if e[0] == "start") == sorted(c.id for c in cells)


def test_the_report_shows_the_ensemble_and_its_members_mean(tmp_path):
    from recbole_kd.bench.report import render, summarize

    suite = load_suite(_suite(tmp_path))
    cells = expand(suite)
    ndcg = {"T": 0.050, "T member": None, "SASRec-S": 0.030, "KD (rd)": 0.040, "KD (hard)": 0.035}
    records = {}
    for c in cells:
        value = (0.042 if c.seed == 2020 else 0.044) if c.label == "T member" else ndcg[c.label]
        records[(c.dataset, c.label, c.seed)] = _record(c, value)
    rows = {r["label"]: r for r in summarize(cells, records, str(tmp_path))}
    assert rows["T"]["ndcg@10"][0] == 0.05 and rows["T"]["ensemble_seeds"] == [2020, 2021]
    assert rows["T member"]["ndcg@10"][0] == pytest.approx(0.043) and rows["T member"]["seeds"] == [2020, 2021]
    assert rows["T member"]["member_of"] == "T" and rows["T member"]["vs_teacher"] == pytest.approx(0.86)
    assert rows["KD (rd)"]["vs_teacher"] == pytest.approx(0.8) and rows["KD (rd)"]["vs_teacher_label"] == "T"
    assert rows["SASRec-S"]["vs_teacher_label"] == "T"  # a dataset's first teacher row: the ensemble
    render(suite, cells, records, str(tmp_path))
    report = (tmp_path / "README.md").read_text()
    lines = [line for line in report.splitlines() if line.startswith("| teacher |")]
    assert lines[0].startswith("| teacher | T | SASRec-L ensemble x2 | 1/1 | 0.0500 |")
    assert lines[1].startswith("| teacher | T member | SASRec-L | 2/2 | 0.0430 ± 0.0014 |")


@pytest.mark.slow
def test_the_ensemble_cells_process_evaluates_the_members_as_one_model(tiny_data, workdir, tmp_path, monkeypatch):
    """The ensemble cell's real command (its own process) on two tiny trained members: the record has the
    ensemble's metrics, as ``evaluate_checkpoints`` gives them, and the members' summed training."""
    from conftest import REPO

    from recbole_kd.bench.runner import run_cell

    monkeypatch.setenv("PYTHONPATH", REPO)  # the process imports this checkout's package
    from recbole_kd.quick_start import run

    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({"name": "ens", "settings": {"epochs": 1, "state": "WARNING"},
                                    "datasets": {"tiny": {"data_path": tiny_data}},
                                    "models": [{**ENSEMBLE, "seeds": [1, 2]}]}))
    cells = expand(load_suite(str(path)))
    out = tmp_path / "out"
    records = {}
    for m in cells[1:]:
        res = run("SASRec-L", "tiny", overrides={**m.settings, "seed": m.seed, "show_progress": False,
                                                 "checkpoint_dir": str(out / "work" / m.id / "saved")})
        res["checkpoint"] = os.path.relpath(res["checkpoint"], out)
        records[(m.dataset, m.label, m.seed)] = {**m.spec(), "result": res}
    rec = run_cell(cells[0], str(out), records)
    assert rec["status"] == "ok", rec.get("error")
    res = rec["result"]
    assert res["model"] == "ensemble(SASRec-L x2)" and res["seeds"] == [1, 2] and res["epochs_run"] == 2
    assert res["checkpoints"] == [records[("tiny", "T member", s)]["result"]["checkpoint"] for s in (1, 2)]
    assert res["num_params"] == 2 * records[("tiny", "T member", 1)]["result"]["num_params"]
    assert set(res["test_result_by_protocol"]) == {"filter_seen", "recbole"} and res["latency_seconds"] > 0


# ---- an ensemble of other rows' runs (``ensemble: [ROW, ...]``) -------------------------------------------------
MIXED = [ENSEMBLE, {"model": "SASRec-S", "label": "S", "group": "student"},
         {"label": "T + S", "group": "teacher", "ensemble": ["T", "S"]},
         {"model": "KD-SASRec", "label": "KD (mixed)", "settings": {"kd_losses": {"soft_full": 1.0}},
          "teacher_from": "T + S"}]


@pytest.mark.parametrize("row, words", [
    ({"label": "M", "ensemble": ["T", "S"]}, "group teacher"),
    ({"label": "M", "group": "teacher", "ensemble": ["T"]}, "2 or more distinct rows"),
    ({"label": "M", "group": "teacher", "ensemble": ["T", "T"]}, "2 or more distinct rows"),
    ({"label": "M", "group": "teacher", "ensemble": ["T", "S"], "seeds": [1, 2]}, "without seeds"),
    ({"label": "M", "group": "teacher", "ensemble": ["T", "nope"]}, "'nope', which is no row above it"),
    ({"label": "M", "group": "teacher", "ensemble": ["T", "T + S"]}, "'T + S', which is no row above it"),
])
def test_an_ensemble_of_rows_names_two_rows_above_it(tmp_path, row, words):
    path = _suite(tmp_path, MIXED[:3] + [row])
    with pytest.raises(SuiteError) as err:
        expand(load_suite(path))
    assert path in str(err.value) and words in str(err.value)


def test_an_ensemble_of_rows_needs_its_rows_on_each_of_its_datasets(tmp_path):
    path = tmp_path / "suite.yaml"
    models = [ENSEMBLE, {"model": "SASRec-S", "label": "S", "group": "student", "datasets": ["tiny"]},
              {"label": "T + S", "group": "teacher", "ensemble": ["T", "S"]}]
    path.write_text(yaml.safe_dump({"name": "ens", "datasets": {"tiny": {}, "other": {}}, "models": models}))
    with pytest.raises(SuiteError, match="T \\+ S runs on other, but its member row 'S' does not"):
        expand(load_suite(str(path)))
    models[2]["datasets"] = ["tiny"]
    path.write_text(yaml.safe_dump({"name": "ens", "datasets": {"tiny": {}, "other": {}}, "models": models}))
    assert [c.dataset for c in expand(load_suite(str(path))) if c.label == "T + S"] == ["tiny"]


def test_an_ensemble_of_rows_is_one_cell_of_the_rows_runs(tmp_path):
    cells = expand(load_suite(_suite(tmp_path, MIXED)))
    mixed = next(c for c in cells if c.label == "T + S")
    assert mixed.id == "tiny__T_S_ensemble__seed2020" and mixed.model == "SASRec-L + SASRec-S"
    members = [("T member", 2020), ("T member", 2021), ("S", 2020), ("S", 2021)]
    assert list(mixed.ensemble) == members and mixed.members == members
    own = next(c for c in cells if c.label == "T" and c.ensemble)  # an ensemble: true row's cell
    assert mixed.of_rows and not own.of_rows and own.members == [("T member", 2020), ("T member", 2021)]
    assert mixed.spec()["ensemble"] == members and json.loads(json.dumps(mixed.spec()))["ensemble"] == [list(m) for m in members]
    order = [c.label for c in cells]  # the rows it is made of count as teacher rows: they run first
    assert order.index("S") < order.index("T + S") < order.index("KD (mixed)")
    # the other cells keep their ids and specs
    plain = expand(load_suite(_suite(tmp_path, MODELS)))
    assert {(c.id, c.config_hash) for c in plain if c.label in ("T", "T member")} <= {(c.id, c.config_hash) for c in cells}


def test_a_cell_distilled_from_an_ensemble_of_rows_gets_every_runs_checkpoint(tmp_path):
    from recbole_kd.bench.runner import cell_command

    cells = expand(load_suite(_suite(tmp_path, MIXED)))
    out = str(tmp_path / "out")
    by = {(c.label, c.seed): c for c in cells}
    members = [by[k] for k in (("T member", 2020), ("T member", 2021), ("S", 2020), ("S", 2021))]
    records = {(m.dataset, m.label, m.seed): _record(m, 0.03) for m in members}
    mixed = by[("T + S", 2020)]
    job = json.loads(cell_command(mixed, out, records)[3])
    expected = [os.path.join(out, f"work/{m.id}/saved/m.pth") for m in members]
    assert job["checkpoints"] == expected
    records[(mixed.dataset, mixed.label, mixed.seed)] = _record(mixed, 0.04, checkpoints=["x"])
    args = cell_command(by[("KD (mixed)", 2021)], out, records)
    # the CLI's --teacher is the first member's model (each checkpoint names its own)
    assert f"--teacher_checkpoint={expected!r}" in args and "--teacher=SASRec-L" in args
    del records[("tiny", "S", 2021)]
    with pytest.raises(RuntimeError, match="member\\(s\\) S seed 2021 have no finished cell"):
        cell_command(by[("KD (mixed)", 2021)], out, records)


def test_an_ensemble_of_rows_waits_for_every_run_and_reruns_with_them(tmp_path, monkeypatch, capsys):
    from recbole_kd.bench import runner

    suite = _suite(tmp_path, MIXED)
    cells = expand(load_suite(suite))
    out = tmp_path / "out"
    events = _run_with_fake_cells(monkeypatch, suite, str(out), ("S", 2021))
    assert "evaluated again" not in capsys.readouterr().out  # its first evaluation
    start = events.index(("start", "tiny__T_S_ensemble__seed2020"))
    for cid in ("tiny__S__seed2021", "tiny__T__seed2021"):
        assert start > events.index(("end", cid))
    assert all(events.index(e) > events.index(("end", "tiny__T_S_ensemble__seed2020"))
               for e in events if e[0] == "start" and "__KD_mixed" in e[1])
    # a fresh checkout: the runs' checkpoints are missing, so they and the ensemble run again first
    records = {(c.dataset, c.label, c.seed): _record(c, 0.03) for c in cells}
    todo = [c for c in cells if c.label == "KD (mixed)"]
    need = set(runner.teacher_reruns(cells, records, str(out), todo))
    assert need == {c.id for c in cells if c.label in ("T member", "S", "T + S")}


def test_the_report_names_the_models_of_an_ensemble_of_rows(tmp_path):
    from recbole_kd.bench.report import render, summarize

    suite = load_suite(_suite(tmp_path, MIXED))
    cells = expand(suite)
    ndcg = {"T": 0.050, "T member": 0.043, "S": 0.030, "T + S": 0.060, "KD (mixed)": 0.045}
    records = {(c.dataset, c.label, c.seed): _record(c, ndcg[c.label]) for c in cells}
    rows = {r["label"]: r for r in summarize(cells, records, str(tmp_path))}
    assert rows["KD (mixed)"]["vs_teacher"] == pytest.approx(0.75) and rows["KD (mixed)"]["vs_teacher_label"] == "T + S"
    assert rows["KD (mixed)"]["vs_teacher_other"] == pytest.approx(0.75)  # RecBole's: both sequential, comparable
    render(suite, cells, records, str(tmp_path))
    report = (tmp_path / "README.md").read_text()
    assert "| teacher | T + S | SASRec-L + SASRec-S ensemble x4 | 1/1 | 0.0600 |" in report
