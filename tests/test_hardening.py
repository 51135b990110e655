"""Hardening: no code runs from a checkpoint folder or a setting value, one best-model file per run,
--data_path is honoured for ml-100k."""
import glob
import json
import os
import pickle
import subprocess
import sys

import pytest

from conftest import FAST, write_tiny_dataset


class _Evil:
    """Unpickling this runs a shell command that creates ``path``."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _write_evil(path, marker):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(_Evil(marker), f)


def cli(capsys, *args):
    from recbole_kd.cli import main

    code = main(list(args))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return write_tiny_dataset(tmp_path / "data", n_users=20, n_items=30, max_len=12)


def _overrides(data, ck, **extra):
    return {"data_path": data, "checkpoint_dir": str(ck), **FAST, **extra}


# ---- D1: pickled datasets / dataloaders in a checkpoint folder are never loaded -------------------
def test_pickles_in_checkpoint_dir_are_never_loaded(tiny, tmp_path):
    from recbole_kd.config import build_config
    from recbole_kd.quick_start import prepare

    ck = tmp_path / "ck"
    marker = tmp_path / "MARKER"
    config = build_config("SASRec-S", "tiny", overrides=_overrides(tiny, ck))
    _write_evil(ck / "tiny-SequentialDataset.pth", marker)
    _write_evil(ck / f"tiny-for-{config['model']}-dataloader.pth", marker)
    _, train, valid, test = prepare(config)
    assert not marker.exists()
    assert len(test.dataset) > 0
    # the same through RecBole's own entry points, as any other caller would use them
    from recbole.data import create_dataset, data_preparation

    data_preparation(config, create_dataset(config))
    assert not marker.exists()


def test_pickled_dataset_in_default_checkpoint_dir_cli(tiny, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    _write_evil(tmp_path / "saved" / "tiny-SequentialDataset.pth", marker)  # ./saved, the default
    code, err = cli(capsys, "--model=SASRec-S", "--dataset=tiny", f"--data_path={tiny}", "--epochs=1",
                    "--show_progress=False", "--state=WARNING")
    assert code == 0, err
    assert not marker.exists()


@pytest.mark.parametrize("key", ["dataset_save_path", "dataloaders_save_path"])
def test_save_path_settings_are_refused(key, tiny, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pth"
    _write_evil(evil, marker)
    code, err = cli(capsys, "--model=SASRec-S", "--dataset=tiny", f"--data_path={tiny}", "--epochs=1",
                    "--show_progress=False", "--state=WARNING", f"--{key}={evil}")
    assert code == 2 and len(err) == 1 and err[0].startswith("recbole-kd: error:") and key in err[0], err
    assert not marker.exists()


# ---- D2: setting values are literals, never evaluated -----------------------------------------------
def test_cli_value_is_never_evaluated(tiny, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    payload = f"__import__('os').system('touch {marker}') or 1"
    code, err = cli(capsys, "--model=SASRec-S", "--dataset=tiny", f"--data_path={tiny}", f"--epochs={payload}",
                    "--show_progress=False", "--state=WARNING", f"--checkpoint_dir={tmp_path / 'ck'}")
    assert not marker.exists()
    assert code == 2 and len(err) == 1 and err[0].startswith("recbole-kd: error:"), err


def test_config_dict_values_are_literals(tiny, tmp_path):
    from recbole_kd.config import build_config

    marker = tmp_path / "MARKER"
    config = build_config("SASRec-S", "tiny", overrides={
        **_overrides(tiny, tmp_path / "ck"), "learning_rate": "0.01", "eval_args": "{'order': 'TO', 'mode': 'full'}",
        "wandb_project": f"__import__('os').system('touch {marker}')", "teacher_dir": "None"})
    assert not marker.exists()
    assert config["learning_rate"] == 0.01
    assert config["eval_args"]["order"] == "TO"
    assert config["wandb_project"].startswith("__import__")
    assert config["teacher_dir"] is None


def test_bench_value_is_never_evaluated(tmp_path):
    import yaml

    marker = tmp_path / "MARKER"
    data = write_tiny_dataset(tmp_path / "data", n_users=20, n_items=30, max_len=12)
    suite = {
        "name": "evil",
        "seeds": [2020],
        "settings": {"epochs": f"__import__('os').system('touch {marker}') or 1", "state": "WARNING"},
        "datasets": {"tiny": {"data_path": data}},
        "models": [{"model": "SASRec-S", "group": "student"}],
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    proc = subprocess.run([sys.executable, "-m", "recbole_kd", "bench", str(path), f"--out={tmp_path / 'out'}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert not marker.exists(), proc.stderr[-2000:]
    assert proc.returncode == 2 and "epochs" in proc.stderr, proc.stderr[-2000:]  # refused before any cell runs


def test_numeric_checkpoint_dir_is_a_folder(tiny, tmp_path, capsys):
    code, err = cli(capsys, "--model=SASRec-S", "--dataset=tiny", f"--data_path={tiny}", "--epochs=1",
                    "--show_progress=False", "--state=WARNING", "--checkpoint_dir=2024")
    assert code == 0, err
    assert glob.glob(str(tmp_path / "2024" / "*.pth"))


def test_path_settings_stay_strings_but_a_list_of_paths_is_a_list():
    from recbole_kd.compat import literal_value

    assert literal_value("data_path", "2024") == "2024" and literal_value("checkpoint_dir", "None") is None
    assert literal_value("teacher_checkpoint", " ['a.pth', 'b/c.pth'] ") == ["a.pth", "b/c.pth"]
    assert literal_value("teacher_checkpoint", "[a.pth]") == "[a.pth]"  # not a literal: the path as written
    assert literal_value("teacher_checkpoint", "[1, 2]") == "[1, 2]"  # not paths
    assert literal_value("teacher_checkpoint", "[__import__('os')]") == "[__import__('os')]"  # never evaluated


def test_yaml_flow_syntax_on_the_command_line_is_read_as_the_yaml_files_read_it():
    """--kd_losses={soft_full: 1.0} (as docs and yaml files write it) was kept as one string, refused as an
    unknown KD loss named '{soft_full: 1.0}'; Python literals still come first and nothing is evaluated."""
    from recbole_kd.compat import literal_value

    assert literal_value("kd_losses", "{soft_full: 1.0}") == {"soft_full": 1.0}
    assert literal_value("kd_loss_params", "{soft: {temperature: 2}}") == {"soft": {"temperature": 2}}
    assert literal_value("metrics", "[Recall, NDCG]") == ["Recall", "NDCG"]
    assert literal_value("kd_losses", "{'rrd': 1.0, 'hint': 0.5}") == {"rrd": 1.0, "hint": 0.5}
    assert literal_value("kd_losses", "{soft: [}") == "{soft: [}"  # neither: the text as written
    assert literal_value("metrics", "[2026-12-05]") == "[2026-12-05]"  # YAML's dates: no setting takes one
    assert literal_value("kd_losses", "{__import__('os')}") == {"__import__('os')": None}  # a name, never run


def test_a_list_of_teacher_checkpoints_on_the_command_line_is_an_ensemble(tiny, tmp_path, capsys):
    """bench passes an ensemble teacher's members as --teacher_checkpoint=['a.pth', 'b.pth']; the path key
    kept that as one string (a file that does not exist) until lists of paths were read as lists."""
    ckpts = []
    for seed in (1, 2):
        out = tmp_path / f"t{seed}.json"
        code, err = cli(capsys, "--model=SASRec-L", "--dataset=tiny", f"--data_path={tiny}", "--epochs=1",
                        "--show_progress=False", "--state=WARNING", f"--seed={seed}",
                        f"--checkpoint_dir={tmp_path / f'c{seed}'}", f"--result_file={out}")
        assert code == 0, err
        ckpts.append(os.path.abspath(json.loads(out.read_text())["checkpoint"]))
    out = tmp_path / "kd.json"
    code, err = cli(capsys, "--model=KD-SASRec", "--dataset=tiny", f"--data_path={tiny}", "--epochs=1",
                    "--show_progress=False", "--state=WARNING", "--teacher=SASRec-L", f"--teacher_checkpoint={ckpts!r}",
                    f"--checkpoint_dir={tmp_path / 'kd'}", f"--result_file={out}")
    assert code == 0, err
    result = json.loads(out.read_text())
    assert result["teacher"] == "ensemble(SASRec-L x2)" and result["teacher_checkpoint"] == ckpts


# ---- D3: one best-model file per run ------------------------------------------------------------
def _trainer(config, data):
    from recbole_kd.registry import get_entry, get_trainer

    entry = get_entry(config["model"])
    model = entry.cls(config, data[1]._dataset)
    return get_trainer(config["MODEL_TYPE"], config["model"])(config, model)


def test_two_runs_in_the_same_second_get_their_own_best_file(tiny, tmp_path, monkeypatch):
    import recbole.trainer.trainer as rt

    from recbole_kd.checkpoint import CheckpointError
    from recbole_kd.config import build_config
    from recbole_kd.quick_start import prepare

    monkeypatch.setattr(rt, "get_local_time", lambda: "Jan-01-2026_00-00-00")  # the same second
    config = build_config("SASRec-S", "tiny", overrides=_overrides(tiny, tmp_path / "ck"))
    data = prepare(config)
    a, b = _trainer(config, data), _trainer(config, data)
    assert a.saved_model_file != b.saved_model_file
    assert os.path.dirname(a.saved_model_file) == os.path.dirname(b.saved_model_file)
    a._save_checkpoint(0, verbose=False)
    a.evaluate(data[3], load_best_model=True)  # its own file: fine
    # another run writes its weights over a's best-model file: a must not report them
    b._save_checkpoint(0, verbose=False, saved_model_file=a.saved_model_file)
    with pytest.raises(CheckpointError, match="another run"):
        a.evaluate(data[3], load_best_model=True)


# ---- D4: --data_path is honoured for ml-100k -----------------------------------------------------
def _ml100k_like(root, n_users):
    folder = write_tiny_dataset(root, name="ml-100k", n_users=n_users, n_items=30, max_len=12)
    path = os.path.join(folder, "ml-100k", "ml-100k.inter")
    lines = open(path).read().splitlines()
    out = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    out += [f"{u}\t{i}\t4\t{t}" for u, i, t in (line.split("\t") for line in lines[1:])]
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    return folder


def test_ml100k_garbage_under_data_path_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "data" / "ml-100k"
    folder.mkdir(parents=True)
    (folder / "ml-100k.inter").write_text("this is not\na dataset\n")
    code, err = cli(capsys, "--model=SASRec-S", "--dataset=ml-100k", f"--data_path={tmp_path / 'data'}",
                    "--epochs=1", "--show_progress=False", "--state=WARNING")
    assert code == 2 and len(err) == 1 and err[0].startswith("recbole-kd: error:"), err


def test_ml100k_under_data_path_is_the_data_used(tmp_path, monkeypatch):
    from recbole_kd.config import build_config
    from recbole_kd.quick_start import run

    monkeypatch.chdir(tmp_path)
    data = _ml100k_like(tmp_path / "data", n_users=17)
    config = build_config("SASRec-S", "ml-100k", overrides=_overrides(data, tmp_path / "ck"))
    assert os.path.realpath(config["data_path"]) == os.path.realpath(os.path.join(data, "ml-100k"))
    result = run("SASRec-S", "ml-100k", overrides=_overrides(data, tmp_path / "ck"))
    assert result["test_users"] == 17
    # without data_path the embedded copy stays the default
    default = build_config("SASRec-S", "ml-100k", overrides=FAST, check_data=False)
    assert "dataset_example" in default["data_path"]


def test_kd_dagfm_teacher_is_never_evaluated(tmp_path, capsys, monkeypatch):
    """RecBole's stock KD_DAGFM eval()s its ``teacher`` setting when the model is built."""
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "MARKER"
    code, err = cli(capsys, "--model=KD_DAGFM", "--dataset=ml-100k", "--epochs=1", "--show_progress=False",
                    "--state=WARNING", f"--teacher=__import__('os').system('touch {marker}') or CrossNet")
    assert not marker.exists()
    assert code == 2 and len(err) == 1 and "teacher" in err[0], err
