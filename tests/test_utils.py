import json
import os

import pytest

from recbole_kd import utils


def test_atomic_write_replaces_whole_and_leaves_no_temp_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "out" / "r.json"
    utils.write_json_atomic(str(path), {"b": 1, "a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}

    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        utils.write_text_atomic(str(path), "new")
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}  # the old file, whole
    assert os.listdir(path.parent) == ["r.json"]  # no temporary file left behind


def test_mean_std_one_value_has_no_spread():
    assert utils.mean_std([0.5]) == (0.5, None)
    assert utils.mean_std([None]) == (None, None)
    m, s = utils.mean_std([1.0, 3.0, None])
    assert m == 2.0 and s == pytest.approx(2 ** 0.5)


def test_machine_info_names_cpu_cores_and_device():
    info = utils.machine_info("cpu")
    assert info["device"] == "cpu" and info["cores"] == os.cpu_count() and info["cpu"]
    assert {"python", "torch", "recbole", "torch_threads", "platform"} <= set(info)
    assert utils.git_commit() not in ("", None)
