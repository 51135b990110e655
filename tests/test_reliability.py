"""Fault injection: kill -9 then --resume, a crash while a checkpoint is written, bad checkpoints,
bad settings, a NaN loss, an unwritable checkpoint folder, and determinism."""
import glob
import hashlib
import json
import os
import signal

import pytest
import torch

from conftest import cli_in_process, quiet_args, run_cli, write_tiny_dataset

# kills the process itself (SIGKILL: no cleanup, no atexit) at a chosen point of a run
KILL_PLUGIN = '''
import os, signal
import torch
from recbole_kd import trainer as T

KILL_AT = int(os.environ["RKD_KILL_AT_EPOCH"])
MODE = os.environ.get("RKD_KILL_MODE", "after_save")
_orig = T.KDTrainerMixin._save_last


def _save_last(self, train_data, next_epoch, finished=False):
    if MODE == "during_save" and next_epoch == KILL_AT and not finished:
        def partial_save(obj, f, *args, **kwargs):
            f.write(b"PK\\x03\\x04 half a checkpoint")
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = partial_save
    _orig(self, train_data, next_epoch, finished)
    if MODE == "after_save" and next_epoch == KILL_AT and not finished:
        os.kill(os.getpid(), signal.SIGKILL)


T.KDTrainerMixin._save_last = _save_last
'''

RUN = ["--dataset=tiny", "--epochs=4", "--stopping_step=10", "--show_progress=False", "--state=WARNING"]


def _model_args(model, zoo):
    if model.startswith("KD-"):
        return [f"--teacher_dir={zoo}", "--teacher_config={'epochs': 1}", "--kd_losses={'soft': 1.0, 'hint': 0.5}"]
    return []


def _killed_run(tmp_path, args, mode, at):
    plugin = tmp_path / "kill_plugin.py"
    plugin.write_text(KILL_PLUGIN)
    env_before = dict(os.environ)
    os.environ.update(RKD_KILL_AT_EPOCH=str(at), RKD_KILL_MODE=mode)
    try:
        return run_cli(*args, f"--plugins={plugin}", cwd=tmp_path)
    finally:
        os.environ.clear()
        os.environ.update(env_before)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["SASRec-S", "MF-S", "KD-SASRec"])
def test_kill_9_then_resume_matches_uninterrupted_run(model, tmp_path):
    data = write_tiny_dataset(tmp_path / "data")
    zoo = tmp_path / "zoo"
    base = [f"--model={model}", f"--data_path={data}", *RUN, *_model_args(model, zoo)]
    full = run_cli(*base, f"--checkpoint_dir={tmp_path / 'ck_full'}", f"--result_file={tmp_path / 'full.json'}",
                   cwd=tmp_path)
    assert full.returncode == 0, full.stderr[-2000:]

    ck = tmp_path / "ck_killed"
    killed = _killed_run(tmp_path, base + [f"--checkpoint_dir={ck}"], "after_save", at=2)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "resumed.json").exists()
    resumed = run_cli(*base, f"--checkpoint_dir={ck}", "--resume", f"--result_file={tmp_path / 'resumed.json'}",
                      cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    a = json.loads((tmp_path / "full.json").read_text())
    b = json.loads((tmp_path / "resumed.json").read_text())
    assert b["resumed_from"] and b["resumed_from"].endswith("-last.pth")
    assert b["epochs_run"] == a["epochs_run"] == 4
    for key, value in a["test_result"].items():
        assert b["test_result"][key] == pytest.approx(value, abs=1e-6), key
    assert b["best_valid_score"] == pytest.approx(a["best_valid_score"], abs=1e-6)

    # resuming a finished run trains nothing and reports the same result
    again = run_cli(*base, f"--checkpoint_dir={ck}", "--resume", f"--result_file={tmp_path / 'again.json'}",
                    cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    c = json.loads((tmp_path / "again.json").read_text())
    assert c["test_result"] == b["test_result"]


@pytest.mark.slow
def test_crash_while_writing_a_checkpoint_keeps_the_last_good_one(tmp_path):
    from recbole_kd.checkpoint import load_checkpoint

    data = write_tiny_dataset(tmp_path / "data")
    ck = tmp_path / "ck"
    base = ["--model=SASRec-S", f"--data_path={data}", *RUN, f"--checkpoint_dir={ck}"]
    crashed = _killed_run(tmp_path, base, "during_save", at=2)
    assert crashed.returncode == -signal.SIGKILL
    (last,) = glob.glob(str(ck / "*-last.pth"))
    state = load_checkpoint(last)  # the file under the final name is whole: the epoch-1 state
    assert state["next_epoch"] == 1
    for path in glob.glob(str(ck / "*.pth")):
        load_checkpoint(path)  # no truncated file under a final name
    assert glob.glob(str(ck / ".tmp-*"))  # the half-written temporary is all that was lost
    resumed = run_cli(*base, "--resume", f"--result_file={tmp_path / 'r.json'}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((tmp_path / "r.json").read_text())["epochs_run"] == 4


# ---- in-process CLI runs (exit status and the one error line) ----------------------------------------
def cli(capsys, *args):
    return cli_in_process(capsys, *args)


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return write_tiny_dataset(tmp_path / "data")


def _quiet(data, ck, epochs=2):
    return quiet_args(data, ck, epochs)


def _last_file(ck):
    (path,) = glob.glob(os.path.join(str(ck), "*-last.pth"))
    return path


def test_bad_checkpoints_are_refused_with_one_line(tiny, tmp_path, capsys):
    ck = tmp_path / "ck"
    code, _ = cli(capsys, "--model=SASRec-S", *_quiet(tiny, ck))
    assert code == 0
    last = _last_file(ck)
    best = [p for p in glob.glob(str(ck / "*.pth")) if not p.endswith("-last.pth")][0]

    truncated = tmp_path / "truncated-last.pth"
    truncated.write_bytes(open(last, "rb").read()[:300])
    garbage = tmp_path / "garbage-last.pth"
    garbage.write_text("not a checkpoint\n")
    cases = [
        (str(truncated), "truncated or corrupt"),
        (str(garbage), "is not a PyTorch checkpoint"),
        (best, "best-model weights only"),
    ]
    for path, message in cases:
        code, line = cli(capsys, "--model=SASRec-S", *_quiet(tiny, ck), f"--resume={path}")
        assert code == 2, line
        assert line.startswith("recbole-kd: error:") and path in line
        assert any(m in line for m in message.split("|")), line

    # another model's checkpoint
    code, line = cli(capsys, "--model=SASRec-L", *_quiet(tiny, ck), f"--resume={last}")
    assert code == 2 and "holds model 'SASRec-S', expected 'SASRec-L'" in line

    # same model, other data (other item vocabulary)
    other = write_tiny_dataset(tmp_path / "other", n_items=70, seed=1)
    code, line = cli(capsys, "--model=SASRec-S", *_quiet(other, ck), f"--resume={last}")
    assert code == 2 and "item vocabulary" in line

    # same data, other settings
    code, line = cli(capsys, "--model=SASRec-S", *_quiet(tiny, ck), "--learning_rate=0.01", f"--resume={last}")
    assert code == 2 and "differs in: learning_rate" in line

    # nothing to resume: names what it looked for and what differs in the run that is there
    code, line = cli(capsys, "--model=SASRec-S", *_quiet(tiny, ck), "--seed=7", "--resume")
    assert code == 2 and "no checkpoint to resume" in line and "differs in: seed" in line


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model=SASRec-S", "--epochs=-1"], "invalid setting epochs=-1"),
        (["--model=SASRec-S", "--learning_rate=0"], "invalid setting learning_rate=0"),
        (["--model=SASRec-S", "--hidden_dropout_prob=1.5"], "hidden_dropout_prob=1.5"),
        (["--model=KD-SASRec", "--kd_loss_params={'soft': {'temperature': 0}}"], "temperature=0: must be a number > 0"),
        (["--model=KD-SASRec", "--kd_loss_params={'soft': {'temprature': 2}}"], "unknown parameter"),
        (["--model=KD-SASRec", "--kd_losses={'sotf': 1.0}"], "unknown KD loss"),
        (["--model=KD-SASRec", "--kd_losses={'soft': -1}"], "weight must be a number >= 0"),
        (["--model=KD-SASRec", "--teacher=SASRecX"], "unknown model 'SASRecX'"),
        (["--model=SASRec-S", "--kd_losses={'soft': 1.0}"], "only distilled models use it; run --model=KD-SASRec-S"),
        (["--model=SASRec-L", "--teacher=SASRec-L", "--kd_losses={'soft': 1.0}"], "only distilled models use it; run a KD- model"),
        (["--model=SASRec-S", "--learning_rat=0.01", "--strict"],
         "did you mean learning_rate? (strict: unknown settings are errors)"),
    ],
)
def test_bad_settings_are_refused_before_training(args, message, tiny, tmp_path, capsys):
    ck = tmp_path / "ck"
    given = {a.split("=")[0] for a in args}
    code, line = cli(capsys, *args, *[a for a in _quiet(tiny, ck) if a.split("=")[0] not in given])
    assert code == 2, line
    assert line.startswith("recbole-kd: error:") and message in line, line
    assert not glob.glob(str(ck / "*.pth"))  # nothing was trained


def test_unknown_key_warns_with_close_matches_and_runs(tiny, tmp_path, capsys):
    from recbole_kd.cli import main

    code = main(["--model=SASRec-S", *_quiet(tiny, tmp_path / "ck", epochs=1), "--learning_rat=0.01"])
    err = capsys.readouterr().err
    assert code == 0
    assert "warning: unknown setting 'learning_rat'; did you mean learning_rate?" in err


def test_teacher_smaller_than_student_is_refused_before_teacher_training(tiny, tmp_path, capsys):
    zoo = tmp_path / "zoo"
    code, line = cli(capsys, "--model=KD-SASRec", *_quiet(tiny, tmp_path / "ck"), f"--teacher_dir={zoo}",
                     "--teacher_config={'hidden_size': 16, 'inner_size': 32}")
    assert code == 2 and "has fewer parameters" in line and "kd_allow_smaller_teacher" in line
    assert not glob.glob(str(zoo / "*.pth"))


def test_nan_loss_stops_with_epoch_and_batch_and_keeps_checkpoints(tiny, tmp_path, capsys, monkeypatch):
    from recbole_kd.checkpoint import load_checkpoint
    from recbole_kd.registry import get_entry

    cls = get_entry("SASRec-S").cls
    original = cls.calculate_loss
    calls = {"n": 0}

    def poisoned(self, interaction):
        loss = original(self, interaction)
        calls["n"] += 1
        if calls["n"] == n_batches + 2:  # epoch 1, batch 1
            return loss * float("nan")
        return loss

    from recbole_kd.config import build_config
    from recbole_kd.quick_start import prepare

    cfg = build_config("SASRec-S", "tiny", overrides={"data_path": tiny, "show_progress": False, "train_batch_size": 8})
    n_batches = len(prepare(cfg)[1])
    monkeypatch.setattr(cls, "calculate_loss", poisoned)
    ck = tmp_path / "ck"
    code, line = cli(capsys, "--model=SASRec-S", *_quiet(tiny, ck, epochs=3), "--train_batch_size=8")
    assert n_batches > 2 and code == 3, line
    assert "training loss (loss) is nan at epoch 1, batch 1" in line
    assert "last good checkpoints are kept" in line
    state = load_checkpoint(_last_file(ck))
    assert state["next_epoch"] == 1 and all(torch.isfinite(v).all() for v in state["state_dict"].values())


def _sha(path):
    return hashlib.sha1(open(path, "rb").read()).hexdigest()


# what torch's zip writer raises when the disk fills up under it (not an OSError)
TORCH_DISK_FULL = "[enforce fail at inline_container.cc:603] . unexpected pos 11904 vs 11792"


@pytest.mark.parametrize("fault", ["read-only", "disk-full", "disk-full-torch"])
def test_unwritable_checkpoint_fails_clearly_and_keeps_the_previous_one(fault, tiny, tmp_path, capsys, monkeypatch):
    import recbole_kd.checkpoint as C

    from recbole_kd.trainer import KDTrainerMixin

    ck = tmp_path / "ck"
    real_save, real_mkstemp = torch.save, C.tempfile.mkstemp
    armed = {"on": False}
    snapshot = {}

    def failing_save(obj, f, *args, **kwargs):
        if armed["on"]:
            f.write(b"partial")
            if fault == "disk-full-torch":
                raise RuntimeError(TORCH_DISK_FULL)
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    def read_only_mkstemp(*args, **kwargs):
        if armed["on"]:
            raise PermissionError(13, "Permission denied")
        return real_mkstemp(*args, **kwargs)

    original_save_last = KDTrainerMixin._save_last

    def arm_at_epoch_2(self, train_data, next_epoch, finished=False):
        armed["on"] = next_epoch == 2  # the epoch-1 state is on disk; writing the epoch-2 one fails
        for p in glob.glob(str(ck / "*.pth")):
            snapshot[p] = _sha(p)
        return original_save_last(self, train_data, next_epoch, finished)

    if fault.startswith("disk-full"):
        monkeypatch.setattr(C.torch, "save", failing_save)
    else:
        monkeypatch.setattr(C.tempfile, "mkstemp", read_only_mkstemp)
    monkeypatch.setattr(KDTrainerMixin, "_save_last", arm_at_epoch_2)
    code, line = cli(capsys, "--model=SASRec-S", *_quiet(tiny, ck, epochs=4), "--stopping_step=10")
    assert code == 2, line
    reason = {"disk-full": "No space left on device", "read-only": "Permission denied",
              "disk-full-torch": "unexpected pos"}[fault]
    assert f"cannot write checkpoint {ck}" in line and reason in line and "previous checkpoint there is kept" in line
    assert snapshot and all(_sha(p) == h for p, h in snapshot.items())  # nothing replaced or truncated
    assert C.load_checkpoint(_last_file(ck))["next_epoch"] == 1
    assert not glob.glob(str(ck / ".tmp-*"))


def test_read_only_folder_for_real(tiny, tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders; the simulated case above covers it")
    ck = tmp_path / "ck"
    ck.mkdir()
    os.chmod(ck, 0o555)
    try:
        code, line = cli(capsys, "--model=SASRec-S", *_quiet(tiny, ck, epochs=1))
    finally:
        os.chmod(ck, 0o755)
    assert code == 2 and "cannot write checkpoint" in line


@pytest.mark.parametrize("model", ["SASRec-S", "MF-S"])
def test_same_seed_same_metrics(model, tiny, tmp_path):
    from recbole_kd.quick_start import run

    results = [
        run(model, "tiny", overrides={"data_path": tiny, "epochs": 2, "show_progress": False, "state": "WARNING",
                                      "checkpoint_dir": str(tmp_path / f"ck{i}")})
        for i in range(2)
    ]
    assert results[0]["test_result"] == results[1]["test_result"]
    assert results[0]["best_valid_result"] == results[1]["best_valid_result"]
