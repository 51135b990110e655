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


def test_cli_on_embedded_ml100k(tmp_path):
    """The embedded default dataset resolves from the installed recbole package."""
    out = tmp_path / "r.json"
    proc = run_cli("--model=SASRec-S", "--dataset=ml-100k", "--epochs=1", "--show_progress=False",
                   f"--result_file={out}", cwd=tmp_path)
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
