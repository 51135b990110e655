"""The CLI contract: train/evaluate, --result_file, --list, and the two user errors."""
import json

import pytest

from conftest import run_cli


def test_list_prints_every_kind():
    proc = run_cli("--list")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    by_name = {line.split()[0]: line.split()[1] for line in lines}
    assert by_name["SASRec"] == "baseline" and by_name["BPR"] == "baseline"
    assert by_name["SASRec-L"] == "teacher"
    assert by_name["SASRec-S"] == "student"
    for line in lines:
        assert len(line.split(None, 2)) == 3, f"no description: {line!r}"


def test_closed_stdout_is_not_a_traceback():
    """`python -m recbole_kd --list | head -1` (or a bench --dry-run piped to head): the reader is gone."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "recbole_kd", "--list"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before the child has imported anything, so its first write meets a closed pipe
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_unknown_model_exit_2_close_matches():
    proc = run_cli("--model=SASRecS", "--dataset=ml-100k")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "unknown model" in err[0] and "SASRec-S" in err[0]


def test_unknown_model_suggests_each_name_once():
    import re

    import pytest

    from recbole_kd.registry import UnknownModelError, get_entry

    # KD-MF is both registered and listed by the KD-<Student> resolver: it was suggested twice
    with pytest.raises(UnknownModelError) as info:
        get_entry("KD-Foo")
    close = re.search(r"did you mean (.*)\?", str(info.value)).group(1).split(", ")
    assert close and len(close) == len(set(close)), close


def test_unknown_dataset_exit_2_names_path(tmp_path):
    proc = run_cli("--model=SASRec-S", "--dataset=no-such-data", f"--data_path={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "no-such-data" / "no-such-data.inter") in err[0]


def test_bad_argument_exit_2():
    proc = run_cli("--model=SASRec-S", "dataset")
    assert proc.returncode == 2 and "unrecognised argument" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("model", ["SASRec", "SASRec-S"])
def test_cli_trains_and_writes_result_json(model, tiny_data, tmp_path):
    out = tmp_path / "r.json"
    proc = run_cli(
        f"--model={model}", "--dataset=tiny", f"--data_path={tiny_data}", "--epochs=1",
        "--show_progress=False", f"--result_file={out}", cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "best valid" in log and "test result" in log
    r = json.loads(out.read_text())
    for key in ("model", "dataset", "seed", "num_params", "best_valid_result", "test_result",
                "train_seconds_per_epoch", "train_seconds", "eval_seconds", "config"):
        assert key in r, key
    assert r["model"] == model and r["dataset"] == "tiny"
    assert isinstance(r["test_result"]["ndcg@10"], float)
    assert r["num_params"] > 0 and r["train_seconds_per_epoch"] > 0
    # hyphenated names end up in file names intact
    assert (tmp_path / "saved").is_dir()
    assert any(p.name.startswith(f"{model}-") for p in (tmp_path / "saved").iterdir())


@pytest.mark.slow
def test_cli_on_embedded_ml100k(tmp_path):
    """The embedded default dataset resolves from the installed recbole package, and is the default."""
    out = tmp_path / "r.json"
    proc = run_cli("--model=SASRec-S", "--epochs=1", "--show_progress=False", f"--result_file={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["dataset"] == "ml-100k" and 0.0 <= r["test_result"]["ndcg@10"] <= 1.0


def test_config_layering(tiny_data, tmp_path, workdir):
    """RecBole defaults < ours < model yaml < dataset yaml < config files < command line."""
    from recbole_kd.config import build_config

    f = tmp_path / "a.yaml"
    f.write_text("hidden_size: 48\nlearning_rate: 0.005\n")
    cfg = build_config("SASRec-S", "tiny", [str(f)], {"data_path": tiny_data, "learning_rate": "0.01"})
    assert cfg["valid_metric"] == "NDCG@10"  # recbole-kd default over RecBole's MRR@10
    assert cfg["n_layers"] == 2  # model yaml
    assert cfg["hidden_size"] == 48  # config file over model yaml
    assert cfg["learning_rate"] == 0.01  # command line over config file
    assert cfg["eval_args"]["split"] == {"LS": "valid_and_test"}


# ---- output a person can read (issue 39) ------------------------------------------------------------------
def _table_row(stdout, metric):
    return next(line.split() for line in stdout.splitlines() if line.split()[:1] == [metric])


def _settings_groups(stderr):
    """{source: "key=value key=value ..."} of the first settings block in ``stderr``."""
    lines = stderr[stderr.index("settings that differ from the defaults"):].splitlines()[1:]
    groups, label = {}, None
    for line in lines:
        if not line.startswith("  "):
            break
        if line[2] != " ":
            label = line[2:18].strip().rstrip(":") if len(line) > 18 else line.strip().rstrip(":")
            groups[label] = line[18:].strip()
        else:
            groups[label] += "  " + line.strip()
    return groups


@pytest.mark.slow
def test_results_on_stdout_log_and_short_settings_on_stderr(tiny_data, tmp_path):
    out = tmp_path / "r.json"
    proc = run_cli("--model=SASRec-S", "--dataset=tiny", f"--data_path={tiny_data}", "--epochs=1",
                   "--show_progress=False", "--learning_rat=0.01", f"--result_file={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    stdout, stderr = proc.stdout, proc.stderr
    # stdout: the results alone, as a metric x (valid, test) table under each protocol
    assert "INFO" not in stdout and "epoch 0 training" not in stdout and "Hyper Parameters" not in stdout
    header = next(line for line in stdout.splitlines() if "filter_seen*" in line)
    assert header.split() == ["filter_seen*", "recbole"]  # the selected protocol first, marked
    assert [line.split() for line in stdout.splitlines() if line.startswith("metric")] == [
        ["metric", "valid", "test", "valid", "test"]]
    for metric in r["test_result"]:
        row = _table_row(stdout, metric)
        expected = [r["best_valid_result_by_protocol"]["filter_seen"][metric], r["test_result_by_protocol"]["filter_seen"][metric],
                    r["best_valid_result_by_protocol"]["recbole"][metric], r["test_result_by_protocol"]["recbole"][metric]]
        assert row[1:] == [f"{v:.4f}" for v in expected], (metric, row)
    assert f"result file   {out}" in stdout
    assert "np.float64" not in stdout + stderr and "OrderedDict" not in stdout + stderr
    # the warning about the user's typo: on stderr when it arises, and again in the final summary
    typo = "unknown setting 'learning_rat'; did you mean learning_rate?"
    assert typo in stderr and f"warning       {typo}" in stdout.splitlines()[-1]
    # stderr: the log, with a short settings block instead of the full dump (which is in the log file)
    assert "epoch 0 training" in stderr and "best valid" in stderr
    assert "Hyper Parameters" not in stderr and "Trainable parameters" not in stderr
    groups = _settings_groups(stderr)
    assert set(groups) == {"model yaml", "command line", "device"}, groups
    assert "n_layers=2" in groups["model yaml"].split() and "hidden_size=64" in groups["model yaml"].split()
    assert set(groups["command line"].split()) == {f"data_path={tiny_data}", "epochs=1", "show_progress=False",
                                                   "learning_rat=0.01"}
    assert "learning_rate=" not in str(groups)  # set nowhere but to its default value: not a difference
    assert groups["device"].split()[0] == r["machine"]["device"]
    logs = list((tmp_path / "log" / "SASRec-S").glob("*.log"))
    assert len(logs) == 1 and "Hyper Parameters" in logs[0].read_text() and str(logs[0]) in stderr
    # library warnings that are not the user's business are gone at their source
    assert "GradScaler" not in stderr and "not writable" not in stderr and "Warning" not in stderr


def test_json_summary_on_stdout_and_verbose_settings(tiny_data, tmp_path):
    out = tmp_path / "r.json"
    proc = run_cli("--model=SASRec-S", "--dataset=tiny", f"--data_path={tiny_data}", "--epochs=1",
                   "--show_progress=False", "--json", "--verbose", "--hiden_size=32", f"--result_file={out}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # stdout is one JSON object, nothing else
    saved = json.loads(out.read_text())
    assert summary.pop("result_file") == str(out)
    warnings = summary.pop("warnings")
    assert len(warnings) == 1 and warnings[0].startswith("unknown setting 'hiden_size'; did you mean hidden_size")
    assert summary == saved  # the rest is the result file's content
    # --verbose: every setting and the model's layers on the console too
    assert "Hyper Parameters" in proc.stderr and "Trainable parameters" in proc.stderr


def test_json_and_verbose_are_flags():
    from recbole_kd.cli import UsageError, parse_args

    options, overrides, flags = parse_args(["--model=SASRec-S", "--json", "-v"])
    assert flags == {"json", "verbose"} and overrides == {} and options == {"model": "SASRec-S"}
    with pytest.raises(UsageError, match="--json takes no value"):
        parse_args(["--model=SASRec-S", "--json=yes"])


def test_missing_model_is_one_line_but_dataset_has_a_default(capsys):
    from conftest import cli_in_process

    code, line = cli_in_process(capsys, "--dataset=ml-100k")
    assert code == 2 and line.startswith("recbole-kd: error: missing --model")


def test_settings_block_names_each_source(tmp_path, workdir):
    from recbole_kd.config import build_config, dataset_yaml
    from recbole_kd.report import changed_settings, settings_block

    f = tmp_path / "a.yaml"
    f.write_text("hidden_size: 48\ntopk: [10, 20]\n")
    cfg = build_config("SASRec-S", "ml-100k", [str(f)], {"epochs": "3", "learning_rate": "0.001"})
    sources = cfg.setting_origin.sources
    import yaml

    ds_key = next(k for k in yaml.safe_load(open(dataset_yaml("ml-100k"))) if sources.get(k) == "dataset yaml")
    assert sources["valid_metric"] == "default" and sources["n_layers"] == "model yaml"
    assert sources["hidden_size"] == f"file {f}" and sources["epochs"] == "command line"
    groups = {src: dict(items) for src, items in changed_settings(cfg).items()}
    assert groups["model yaml"]["n_layers"] == 2 and ds_key in groups["dataset yaml"]
    assert groups[f"file {f}"] == {"hidden_size": 48}  # topk [10, 20] is the default: not a difference
    assert groups["command line"] == {"epochs": 3}  # learning_rate=0.001 is the default too
    assert "default" not in groups
    text = settings_block(cfg, "SASRec-S on ml-100k")
    assert "hidden_size=48" in text and "epochs=3" in text and text.splitlines()[-1].split()[0] == "device"
    assert "learning_rate" not in text and "valid_metric" not in text


def test_phase_line_estimates_the_phase_and_says_what_follows():
    import logging

    from recbole_kd.report import Phase, RunProgress

    progress = RunProgress([Phase("teacher", "teacher SASRec-L training", epochs=20),
                            Phase("cache", "teacher-output cache"),
                            Phase("train", "student KD-SASRec training", epochs=200)], None, logging.getLogger("t"))
    assert progress.epoch_line(1, [10.0], 0, 5) is None  # nothing runs yet
    progress.start("teacher")
    line = progress.epoch_line(4, [9.0, 11.0, 10.0, 10.0], 1, 5)
    assert line.startswith("phase 1/3 teacher SASRec-L training: 4 epochs done, 10.0s per epoch")
    assert "at most 16 epochs more (2m 40s)" in line and "no improvement for 1 of 5 epochs" in line
    assert line.endswith("then teacher-output cache, then student KD-SASRec training (up to 200 epochs), not timed yet")
    progress.start("cache")
    assert progress.phases[0].seconds is not None  # starting the next phase ends the previous one
    progress.start("train")
    line = progress.epoch_line(190, [2.0], 3, 10)
    assert line.startswith("phase 3/3 student KD-SASRec training: 190 epochs done, 2.0s per epoch")
    assert line.endswith("the whole run: at most 20.0s more")


@pytest.mark.slow
def test_distilled_run_shows_its_phases_and_times_them_apart(tiny_data, tmp_path):
    out = tmp_path / "r.json"
    proc = run_cli("--model=KD-SASRec", "--dataset=tiny", f"--data_path={tiny_data}", "--epochs=2",
                   "--show_progress=False", "--teacher_config={'epochs': 2}", f"--result_file={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    err = proc.stderr
    assert "run plan: 1) teacher SASRec-L training (up to 2 epochs), then 2) teacher-output cache, then " \
           "3) student KD-SASRec training (up to 2 epochs)" in err
    teacher_epoch = next(line for line in err.splitlines() if "phase 1/3 teacher SASRec-L training: 1 epoch done" in line)
    assert "at most 1 epoch more" in teacher_epoch and teacher_epoch.endswith(
        "then teacher-output cache, then student KD-SASRec training (up to 2 epochs), not timed yet")
    student_epoch = next(line for line in err.splitlines() if "phase 3/3 student KD-SASRec training: 1 epoch done" in line)
    assert "the whole run: at most" in student_epoch
    assert err.index("phase 1/3 done") < err.index("phase 2/3: teacher-output cache") < err.index("phase 3/3: student")
    # the full settings are not printed twice (student, then teacher): one short block each
    assert "Hyper Parameters" not in err and err.count("settings that differ from the defaults") == 2
    # separate timings: the cache time no longer counts the teacher's training
    assert r["teacher_source"] == "trained" and r["teacher_train_seconds"] > 0
    assert 0 < r["teacher_cache_seconds"] < r["teacher_setup_seconds"]
    assert r["teacher_setup_seconds"] >= r["teacher_train_seconds"] + r["teacher_cache_seconds"]
    assert 0 < r["student_train_seconds"] < r["train_seconds"] - r["teacher_train_seconds"] + 1e-6
    line = next(line for line in err.splitlines() if "distillation: teacher SASRec-L" in line)
    assert f"trained in {r['teacher_train_seconds']:.1f}s" in line and f"in {r['teacher_cache_seconds']:.1f}s)" in line
    time_line = next(line for line in proc.stdout.splitlines() if line.startswith("time"))
    assert "teacher training" in time_line and "teacher-output cache" in time_line and "student training" in time_line
    assert any(line.startswith("teacher ") and "SASRec-L (trained)" in line for line in proc.stdout.splitlines())


def test_summary_without_a_full_sort_evaluation_has_one_column_pair():
    from recbole_kd.report import summary_text

    result = {"model": "BPR", "dataset": "tiny", "num_params": 1234, "seed": 1, "protocol": "filter_seen",
              "best_valid_result": {"auc": 0.75}, "test_result": {"auc": 0.7},
              "best_valid_result_by_protocol": None, "test_result_by_protocol": None, "train_seconds": 65.0,
              "epochs_run": 2, "train_seconds_per_epoch": 30.0, "eval_seconds": 0.5, "checkpoint": None}
    text = summary_text(result, None, ["unknown setting 'x'"])
    lines = text.splitlines()
    assert lines[0] == "BPR on tiny: 1,234 parameters, seed 1"
    assert lines[2].split() == ["result"] and lines[4].split() == ["auc", "0.7500", "0.7000"]
    assert "*" not in text and "training 1m 05s (2 epochs, 30.0s per epoch)" in text
    assert lines[-2].startswith("result file   none") and lines[-1] == "warning       unknown setting 'x'"
