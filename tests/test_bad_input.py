"""Bad input refused with one line (``recbole-kd: error: ...``, exit 2) before work starts: unreadable
checkpoints, broken config files, invalid settings (hardening issue D6-D12)."""
import glob
import os

import pytest

from conftest import write_tiny_dataset


def cli(capsys, *args):
    from recbole_kd.cli import main

    code = main(list(args))
    err = capsys.readouterr().err.strip().splitlines()
    return code, (err[-1] if err else "")


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return write_tiny_dataset(tmp_path / "data", n_users=20, n_items=30, max_len=12)


def _quiet(data, ck, epochs=1):
    return [f"--data_path={data}", "--dataset=tiny", f"--epochs={epochs}", "--show_progress=False",
            "--state=WARNING", f"--checkpoint_dir={ck}"]


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
