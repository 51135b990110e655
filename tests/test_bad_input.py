"""Bad input refused with one line (``recbole-kd: error: ...``, exit 2) before work starts: unreadable
checkpoints, broken config files, invalid settings (hardening issue D6-D12)."""
import glob
import os

import pytest

from conftest import cli_in_process, quiet_args, write_tiny_dataset


def cli(capsys, *args):
    return cli_in_process(capsys, *args)


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return write_tiny_dataset(tmp_path / "data", n_users=20, n_items=30, max_len=12)


def _quiet(data, ck, epochs=1):
    return quiet_args(data, ck, epochs)


# ---- D6: checkpoints that are not checkpoints -------------------------------------------------------
def _not_checkpoints(tmp_path):
    csv = tmp_path / "scores.csv"
    csv.write_text("user,item,score\n1,2,0.5\n")
    folder = tmp_path / "a_folder.pth"
    folder.mkdir()
    files = [(str(csv), "not a PyTorch checkpoint"), (str(folder), "is a folder")]
    for b in range(256):  # every single byte: pickle opcodes among them used to escape as IndexError/KeyError
        one = tmp_path / f"byte{b:03d}.pth"
        one.write_bytes(bytes([b]))
        files.append((str(one), "not a PyTorch checkpoint|truncated or corrupt"))
    return files


def test_load_checkpoint_refuses_files_that_are_not_checkpoints(tmp_path):
    from recbole_kd.checkpoint import CheckpointError, load_checkpoint

    for path, message in _not_checkpoints(tmp_path):
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        text = str(info.value)
        assert path in text and any(m in text for m in message.split("|")), text


@pytest.mark.parametrize("option", ["--resume", "--teacher_checkpoint"])
def test_not_a_checkpoint_on_the_command_line_is_one_line(option, tiny, tmp_path, capsys):
    csv = tmp_path / "scores.csv"
    csv.write_text("user,item,score\n1,2,0.5\n")
    folder = tmp_path / "somewhere"
    folder.mkdir()
    model = "KD-SASRec" if option == "--teacher_checkpoint" else "SASRec-S"
    for path, message in [(csv, "not a PyTorch checkpoint"), (folder, "is a folder")]:
        code, line = cli(capsys, f"--model={model}", *_quiet(tiny, tmp_path / "ck"), f"{option}={path}")
        assert code == 2, line
        assert line.startswith("recbole-kd: error:") and str(path) in line and message in line, line


# ---- D7: config files that are not YAML mappings ----------------------------------------------------
@pytest.mark.parametrize(
    "text,message",
    [
        ("epochs: 1\nlearning_rate: [0.1\n", "is not valid YAML: line 3, column 1"),
        ("epochs: 1\n  bad: indent: here\n", "is not valid YAML: line 2, column"),
        ("- epochs\n- 1\n", "must hold a mapping of settings"),
        ("just a string\n", "must hold a mapping of settings"),
    ],
)
def test_broken_config_file_is_one_line(text, message, tiny, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, line = cli(capsys, "--model=SASRec-S", *_quiet(tiny, tmp_path / "ck"), f"--config_files={path}")
    assert code == 2, line
    assert line.startswith("recbole-kd: error:") and str(path) in line and message in line, line


# ---- D9: settings checked before any data loads -----------------------------------------------------
@pytest.fixture
def no_data_load(monkeypatch):
    """Fail the test if the run gets as far as loading the data."""
    from recbole_kd import quick_start

    def prepare(config):
        raise AssertionError("data was loaded before the bad setting was refused")

    monkeypatch.setattr(quick_start, "prepare", prepare)


def _d9_cases(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    return [
        (["--seed=abc"], "invalid setting seed='abc'"),
        (["--seed=-1"], "invalid setting seed=-1"),
        (["--hidden_act=foo"], "invalid setting hidden_act='foo'"),
        (["--loss_type=foo"], "invalid setting loss_type='foo'"),
        (["--loss_type=BPR"], "invalid setting loss_type='BPR': SASRec-S takes CE or sampled"),
        (["--model=MF-S", "--loss_type=sampled"], "invalid setting loss_type='sampled'"),
        (["--valid_metric=foo@10"], "invalid setting valid_metric='foo@10'"),
        (["--valid_metric=ndcg@5"], "invalid setting valid_metric='ndcg@5'"),
        (["--valid_metric=ndcg"], "invalid setting valid_metric='ndcg'"),
        ([f"--checkpoint_dir={a_file}"], "is a file, not a folder"),
        ([f"--result_file={a_file / 'r.json'}"], f"cannot write result file {a_file / 'r.json'}"),
        ([f"--result_file={tmp_path}"], "is a folder"),
        (["--result_file=/proc/r.json"], "cannot write result file /proc/r.json"),
    ]


@pytest.mark.parametrize("case", range(13))
def test_bad_values_are_refused_before_data_loads(case, tiny, tmp_path, capsys, no_data_load):
    args, message = _d9_cases(tmp_path)[case]
    given = {a.split("=")[0] for a in args}
    base = ["--model=SASRec-S", *_quiet(tiny, tmp_path / "ck")]
    code, line = cli(capsys, *[a for a in base if a.split("=")[0] not in given], *args)
    assert code == 2, line
    assert line.startswith("recbole-kd: error:") and message in line, line


def test_valid_metric_is_case_insensitive(tiny, tmp_path, capsys):
    code, line = cli(capsys, "--model=SASRec-S", *_quiet(tiny, tmp_path / "ck"), "--valid_metric=mrr@20",
                     f"--result_file={tmp_path / 'r.json'}")
    assert code == 0, line
    assert (tmp_path / "r.json").exists()


# ---- D10: a checkpoint folder that was moved still resumes -------------------------------------------
def test_resume_after_the_checkpoint_folder_was_moved(tiny, tmp_path, capsys):
    import json
    import shutil

    old, new = tmp_path / "ck_old", tmp_path / "moved" / "ck_new"
    code, line = cli(capsys, "--model=SASRec-S", *_quiet(tiny, old, epochs=2), f"--result_file={tmp_path / 'a.json'}")
    assert code == 0, line
    new.parent.mkdir()
    shutil.move(str(old), str(new))
    code, line = cli(capsys, "--model=SASRec-S", *_quiet(tiny, new, epochs=2), "--resume",
                     f"--result_file={tmp_path / 'b.json'}")
    assert code == 0, line
    a = json.loads((tmp_path / "a.json").read_text())
    b = json.loads((tmp_path / "b.json").read_text())
    assert b["resumed_from"] and str(new) in b["resumed_from"]
    assert a["test_result"] == b["test_result"] and a["best_valid_result"] == b["best_valid_result"]
    assert not old.exists()


def test_old_absolute_best_model_paths_still_resolve(tmp_path):
    from recbole_kd.trainer import _best_model_path

    ck = tmp_path / "ck"
    ck.mkdir()
    best = ck / "M-best.pth"
    best.write_bytes(b"x")
    last = str(ck / "M-last.pth")
    assert _best_model_path("M-best.pth", last) == str(best)  # new: relative to the -last.pth folder
    assert _best_model_path(str(best), last) == str(best)  # old: absolute, still there
    gone = str(tmp_path / "elsewhere" / "M-best.pth")
    assert _best_model_path(gone, last) == str(best)  # old absolute path of a moved folder: found beside
    assert _best_model_path(str(tmp_path / "x" / "other.pth"), last) == str(tmp_path / "x" / "other.pth")


# ---- D11: kd_topk larger than the catalogue ---------------------------------------------------------
def test_kd_topk_larger_than_the_catalogue_reports_the_value_used(tiny, tmp_path, capsys, caplog):
    import json

    from recbole_kd.cli import main

    code = main(["--model=KD-SASRec", *_quiet(tiny, tmp_path / "ck"), f"--teacher_dir={tmp_path / 'zoo'}",
                 "--teacher_config={'epochs': 1}", "--kd_topk=1000", f"--result_file={tmp_path / 'r.json'}"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    result = json.loads((tmp_path / "r.json").read_text())
    used = result["kd_topk"]
    assert used < 1000 and result["kd_topk_requested"] == 1000
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("kd_topk=1000" in w and f"using {used}" in w for w in warnings), warnings
    # and again at the end of the results on stdout, where it cannot scroll away
    last = captured.out.strip().splitlines()[-1]
    assert last.startswith("warning") and "kd_topk=1000" in last and f"using {used}" in last, captured.out[-2000:]


# ---- D11: Ctrl-C during training ---------------------------------------------------------------------
def test_ctrl_c_during_training_is_one_line_and_exit_130(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    data = write_tiny_dataset(tmp_path / "data", n_users=20, n_items=30, max_len=12)
    quiet = [a for a in _quiet(data, tmp_path / "ck", epochs=500) if not a.startswith("--state=")]
    args = ["--model=SASRec-S", *quiet, "--stopping_step=1000", "--state=INFO",
            f"--result_file={tmp_path / 'r.json'}"]
    proc = subprocess.Popen([sys.executable, "-m", "recbole_kd", *args], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    deadline = time.time() + 300
    while time.time() < deadline:
        line = proc.stderr.readline()
        assert line or proc.poll() is None, "".join(seen)[-2000:]
        seen.append(line)
        if "epoch 0 training" in line:
            break
    os.kill(proc.pid, signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    err = "".join(seen) + rest
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("recbole-kd: interrupted"), err[-2000:]
    assert "--resume" in err.strip().splitlines()[-1]
    assert not (tmp_path / "r.json").exists()


# ---- D12: checkpoints carry a digest ----------------------------------------------------------------
def _flip_bytes_in_largest_tensor(path):
    """Flip a few bytes inside the storage of the checkpoint's largest tensor (the zip stays valid)."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(open(path, "rb").read())
    name_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    for off in (info.file_size // 3, info.file_size // 2, info.file_size - 5):
        raw[start + off] ^= 0x5A
    open(path, "wb").write(bytes(raw))


def test_flipped_bytes_in_a_checkpoint_are_refused(tiny, tmp_path, capsys):
    import torch

    from recbole_kd.checkpoint import CheckpointError, load_checkpoint

    ck = tmp_path / "ck"
    code, line = cli(capsys, "--model=SASRec-S", *_quiet(tiny, ck))
    assert code == 0, line
    (last,) = glob.glob(str(ck / "*-last.pth"))
    assert "digest" in torch.load(last, weights_only=True)
    load_checkpoint(last)  # whole: loads
    _flip_bytes_in_largest_tensor(last)
    torch.load(last, weights_only=True)  # torch itself does not notice
    with pytest.raises(CheckpointError, match="digest"):
        load_checkpoint(last)
    code, line = cli(capsys, "--model=SASRec-S", *_quiet(tiny, ck), f"--resume={last}")
    assert code == 2 and line.startswith("recbole-kd: error:") and last in line and "digest" in line, line


def test_checkpoints_without_a_digest_still_load(tmp_path):
    import torch

    from recbole_kd.checkpoint import FORMAT, load_checkpoint

    path = str(tmp_path / "old.pth")
    torch.save({"format": FORMAT, "config": {"model": "M"}, "state_dict": {"w": torch.ones(3)}}, path)
    assert load_checkpoint(path, expect_model="M")["state_dict"]["w"].sum() == 3


# ---- -last.pth from the start of epoch 0 -------------------------------------------------------------
KILL_IN_EPOCH_0 = '''
import os, signal
from recbole.trainer import Trainer

_orig = Trainer._train_epoch


def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
    if epoch_idx == 0:
        os.kill(os.getpid(), signal.SIGKILL)  # killed in the middle of the first epoch
    return _orig(self, train_data, epoch_idx, *args, **kwargs)


Trainer._train_epoch = _train_epoch
'''


@pytest.mark.slow
def test_kill_during_epoch_0_then_resume(tmp_path):
    import json
    import signal

    from conftest import run_cli

    data = write_tiny_dataset(tmp_path / "data", n_users=20, n_items=30, max_len=12)
    plugin = tmp_path / "kill_in_epoch_0.py"
    plugin.write_text(KILL_IN_EPOCH_0)
    ck = tmp_path / "ck"
    base = ["--model=SASRec-S", *_quiet(data, ck, epochs=2)]
    killed = run_cli(*base, f"--plugins={plugin}", cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert len(glob.glob(str(ck / "*-last.pth"))) == 1  # written at the start of epoch 0
    resumed = run_cli(*base, "--resume", f"--result_file={tmp_path / 'resumed.json'}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    full = run_cli(*[a for a in base if not a.startswith("--checkpoint_dir")], f"--checkpoint_dir={tmp_path / 'ck2'}",
                   f"--result_file={tmp_path / 'full.json'}", cwd=tmp_path)
    assert full.returncode == 0, full.stderr[-2000:]
    a = json.loads((tmp_path / "full.json").read_text())
    b = json.loads((tmp_path / "resumed.json").read_text())
    assert b["resumed_from"] and b["epochs_run"] == a["epochs_run"] == 2
    assert a["test_result"] == b["test_result"]


# ---- the table: every kind of bad input, one line, exit 2, no result written ---------------------------
BAD_INPUT = [
    # (CLI arguments, expected exit status, expected message fragment)
    (["--model=NoSuchModel"], 2, "unknown model 'NoSuchModel'"),
    (["--dataset=nosuch"], 2, "dataset 'nosuch' not found"),
    (["--data_path={tmp}/no_such_folder"], 2, "dataset 'tiny' not found"),
    (["--epochs=-1"], 2, "invalid setting epochs=-1"),
    (["--model=KD-SASRec", "--kd_losses={{'sotf': 1.0}}"], 2, "unknown KD loss"),
    (["--model=KD-SASRec", "--kd_losses={{soft: [}}"], 2, "is not a readable mapping; write it as {{soft: 1.0}}"),
    (["--frobnicate"], 2, "unrecognised argument '--frobnicate'"),
    (["--resume={csv}"], 2, "not a PyTorch checkpoint"),
    (["--resume={byte}"], 2, "{byte} is not a PyTorch checkpoint"),
    (["--resume={folder}"], 2, "is a folder"),
    (["--model=KD-SASRec", "--teacher_checkpoint={csv}"], 2, "not a PyTorch checkpoint"),
    (["--model=KD-SASRec", "--teacher_checkpoint={folder}"], 2, "is a folder"),
    (["--config_files={bad_yaml}"], 2, "is not valid YAML: line 2, column"),
    (["--config_files={list_yaml}"], 2, "must hold a mapping of settings"),
    (["--seed=abc"], 2, "invalid setting seed='abc'"),
    (["--hidden_act=foo"], 2, "invalid setting hidden_act='foo'"),
    (["--loss_type=foo"], 2, "invalid setting loss_type='foo'"),
    (["--valid_metric=foo@10"], 2, "invalid setting valid_metric='foo@10'"),
    (["--checkpoint_dir={file}"], 2, "is a file, not a folder"),
    (["--result_file={file}/r.json"], 2, "cannot write result file"),
    (["--result_file={folder}"], 2, "is a folder"),
    # interaction files that pass the syntax check but that RecBole cannot use (it raised a traceback)
    (["--data_path={header_only}"], 2, "no interactions (only a header line)"),
    (["--data_path={no_time}"], 2, "no column 'timestamp' (the time"),
    (["--data_path={float_item}"], 2, "ids must be item_id:token"),
    (["--data_path={huge_field}"], 2, "line 3: a value is longer than 131,072 characters"),
]


def _inter_folder(root, name, text):
    folder = root / name / "tiny"
    folder.mkdir(parents=True)
    (folder / "tiny.inter").write_text(text)
    return root / name


@pytest.mark.parametrize("args,status,message", BAD_INPUT, ids=[f"{i}:{' '.join(r[0])[:40]}" for i, r in enumerate(BAD_INPUT)])
def test_bad_input_table(args, status, message, tiny, tmp_path, capsys):
    csv = tmp_path / "scores.csv"
    csv.write_text("user,item,score\n1,2,0.5\n")
    byte = tmp_path / "one_byte.pth"
    byte.write_bytes(b".")  # pickle's STOP opcode alone: an IndexError escaped load_checkpoint
    folder = tmp_path / "a_folder"
    folder.mkdir()
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("epochs: 1\n  oops: [1, 2\n")
    list_yaml = tmp_path / "list.yaml"
    list_yaml.write_text("- epochs: 1\n")
    rows = "".join(f"{u}\t{i}\t{u * 100 + i}\n" for u in range(1, 6) for i in range(1, 8))
    header_only = _inter_folder(tmp_path, "header_only", "user_id:token\titem_id:token\ttimestamp:float\n")
    no_time = _inter_folder(tmp_path, "no_time", "user_id:token\titem_id:token\n"
                            + "".join(f"{u}\t{i}\n" for u in range(1, 6) for i in range(1, 8)))
    float_item = _inter_folder(tmp_path, "float_item", "user_id:token\titem_id:float\ttimestamp:float\n" + rows)
    huge_field = _inter_folder(tmp_path, "huge_field", "user_id:token\titem_id:token\ttimestamp:float\n" + "1\t1\t101\n"
                               + "1\t" + "x" * 200_000 + "\t1\n" + rows)
    names = dict(huge_field=huge_field, tmp=tmp_path, csv=csv, byte=byte, folder=folder, file=a_file, bad_yaml=bad_yaml, list_yaml=list_yaml,
                 header_only=header_only, no_time=no_time, float_item=float_item)
    args = [a.format(**names) for a in args]
    message = message.format(**names)
    result = tmp_path / "result.json"
    given = {a.split("=")[0] for a in args}
    base = ["--model=SASRec-S", *_quiet(tiny, tmp_path / "ck"), f"--teacher_dir={tmp_path / 'zoo'}",
            f"--result_file={result}"]
    base = [a for a in base if a.split("=")[0] not in given]
    if not any(a.startswith("--model=KD-") for a in args):
        base = [a for a in base if not a.startswith("--teacher_dir")]
    code, line = cli(capsys, *base, *args)
    assert code == status, line
    assert line.startswith("recbole-kd: error:") and message in line, line
    assert not result.exists()
    written = [a.split("=", 1)[1] for a in args if a.startswith("--result_file=")]
    assert not any(os.path.isfile(w) for w in written)
    assert not glob.glob(str(tmp_path / "ck" / "*.pth"))  # nothing was trained
