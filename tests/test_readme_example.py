"""The "Adding a student" example (docs/adding-a-student.md) works as written."""
import json
import os
import re

import pytest

from conftest import REPO, run_cli


def doc_blocks(lang):
    text = open(os.path.join(REPO, "docs", "adding-a-student.md")).read()
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_the_doc_shows_the_example_files_verbatim():
    py = open(os.path.join(REPO, "examples", "gru4rec_s.py")).read()
    yml = open(os.path.join(REPO, "examples", "gru4rec_s.yaml")).read()
    assert py in doc_blocks("python")
    assert yml in doc_blocks("yaml")


@pytest.mark.slow
def test_example_student_distilled_through_cli(tiny_data, tmp_path):
    plugin = os.path.join(REPO, "examples", "gru4rec_s.py")
    proc = run_cli("--list", f"--plugins={plugin}")
    assert "GRU4Rec-S" in proc.stdout and "KD-GRU4Rec-S" in proc.stdout
    out = tmp_path / "r.json"
    proc = run_cli(f"--plugins={plugin}", "--model=KD-GRU4Rec-S", "--dataset=tiny", "--teacher=SASRec-L",
                   f"--data_path={tiny_data}", "--epochs=1", "--show_progress=False",
                   "--teacher_config={'epochs': 1}", f"--result_file={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["model"] == "KD-GRU4Rec-S" and r["teacher"] == "SASRec-L" and r["kind"] == "distilled"
