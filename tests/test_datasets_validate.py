"""Validation of atomic files: the three user errors through the main CLI (one stderr line, exit 2, no
traceback) and the validator's rules in-process. Fixtures are written here; nothing from ../shared."""
import io
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from recbole_kd.datasets.__main__ import main as datasets_main
from recbole_kd.datasets.validate import (
    DataValidationError,
    dataset_files,
    validate_atomic_file,
    validate_dataset,
)

GOOD_ROWS = "".join(f"{u}\t{i}\t{u * 100 + i}\n" for u in range(1, 6) for i in range(1, 8))
HEADER = "user_id:token\titem_id:token\ttimestamp:float\n"

# (dataset name, .inter text, the line and column the error must name)
CLI_CASES = {
    "header": ("user_id:token\titem_id\ttimestamp:float\n" + GOOD_ROWS, "line 1, column 2"),
    "count": (HEADER + GOOD_ROWS + "9\t9\n" + GOOD_ROWS, "line 37, column 3 (timestamp:float)"),
    "float": (HEADER + GOOD_ROWS + "9\t9\tyesterday\n", "line 37, column 3 (timestamp:float)"),
}


def write_dataset(root, name, inter, **others):
    folder = os.path.join(str(root), name)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{name}.inter"), "w") as f:
        f.write(inter)
    for suffix, text in others.items():
        with open(os.path.join(folder, f"{name}.{suffix}"), "w") as f:
            f.write(text)
    return os.path.join(folder, f"{name}.inter")


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """The three CLI runs, started together (each pays Python + RecBole start-up)."""
    root = tmp_path_factory.mktemp("bad-data")
    paths, procs = {}, {}
    for case, (inter, _) in CLI_CASES.items():
        paths[case] = write_dataset(root, f"bad-{case}", inter)
        procs[case] = subprocess.Popen(
            [sys.executable, "-m", "recbole_kd", "--model=SASRec-S", f"--dataset=bad-{case}", f"--data_path={root}"],
            cwd=str(root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
    results = {}
    for case, p in procs.items():
        out, err = p.communicate(timeout=300)
        results[case] = (p.returncode, out, err)
    return paths, results


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_reports_bad_file_in_one_line(cli_runs, case):
    paths, results = cli_runs
    rc, out, err = results[case]
    assert rc == 2, (out, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("recbole-kd: error: ")
    assert paths[case] in lines[0] and CLI_CASES[case][1] in lines[0], lines[0]


# ------------------------------------------------------------------------------------------ rules
def check(tmp_path, text, **kw):
    path = tmp_path / "x.inter"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return validate_atomic_file(str(path), **kw)


def error(tmp_path, text, **kw):
    with pytest.raises(DataValidationError) as exc:
        check(tmp_path, text, **kw)
    msg = str(exc.value)
    assert "\n" not in msg and str(tmp_path / "x.inter") in msg
    return msg


def test_good_file_counts_rows(tmp_path):
    assert check(tmp_path, HEADER + GOOD_ROWS) == 35


@pytest.mark.parametrize(
    "header, expect",
    [
        ("user_id:token\titem_id:token\tts:date\n", "line 1, column 3 (ts): unknown type 'date'"),
        ("user_id:token\titem_id:token:x\n", "line 1, column 2 ('item_id:token:x'): header column is not 'name:type'"),
        ("user_id:token\t:float\n", "line 1, column 2"),
        ("\ufeffuser_id:token\titem_id:token\n", "byte-order mark"),
        ("", "the file is empty"),
    ],
)
def test_header_errors(tmp_path, header, expect):
    assert expect in error(tmp_path, header + ("1\t2\n" if header else ""))


def test_column_count_errors_name_the_column(tmp_path):
    assert "line 3, column 3 (timestamp:float): missing; the line has 2 columns, the header 3" in error(
        tmp_path, HEADER + "1\t2\t3\n1\t2\n"
    )
    assert "line 2, column 4: unexpected extra column '9'" in error(tmp_path, HEADER + "1\t2\t3\t9\n")


def test_blank_lines_and_windows_line_endings_pass(tmp_path):
    assert check(tmp_path, HEADER + "1\t2\t3\n\n1\t3\t4\n\n") == 2
    assert check(tmp_path, (HEADER + "1\t2\t3\n").replace("\n", "\r\n")) == 1


def test_float_values_as_pandas_reads_them(tmp_path):
    """What the validator accepts pandas reads (empty/NA become NaN, RecBole fills them); the rest fails."""
    ok = ["1", "-2.5", "1e5", ".5", "inf", "-Infinity", "nan", "", "NA", "None", "#N/A", " 5", "1_000"]
    text = HEADER + "".join(f"1\t{i}\t{v}\n" for i, v in enumerate(ok))
    assert check(tmp_path, text) == len(ok)
    df = pd.read_csv(io.StringIO(text), delimiter="\t", dtype={"timestamp:float": np.float64}, engine="python")
    assert len(df) == len(ok)
    for bad in ["abc", "1,5", "0x10", "12:30", "True"]:
        msg = error(tmp_path, HEADER + f"1\t2\t3\n1\t3\t{bad}\n")
        assert f"line 3, column 3 (timestamp:float): {bad!r} is not a number" in msg
        with pytest.raises(ValueError):
            pd.read_csv(io.StringIO(HEADER + f"1\t2\t3\n1\t3\t{bad}\n"), delimiter="\t",
                        dtype={"timestamp:float": np.float64}, engine="python")


def test_only_loaded_columns_are_value_checked(tmp_path):
    text = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t2\tgood\t3\n"
    assert check(tmp_path, text, columns={"user_id", "item_id", "timestamp"}) == 1
    assert "column 3 (rating:float)" in error(tmp_path, text)


def test_float_seq_and_quoting_and_encoding(tmp_path):
    head = "item_id:token\tvec:float_seq\ttitle:token_seq\n"
    assert check(tmp_path, head + 'i1\t1 2.5 3\t"""Quoted"" title"\n') == 1
    assert "column 2 (vec:float_seq): 'x' is not a number" in error(tmp_path, head + "i1\t1 x\tt\n")
    assert "line 2: malformed quoting" in error(tmp_path, head + 'i1\t1\t"Quoted" title\n')
    assert "line 3: not valid utf-8" in error(tmp_path, head.encode() + b"i1\t1\tok\ni2\t2\t\xff\n")


# ------------------------------------------------------------------------------------------ dataset level
def config(root, name, **kw):
    base = {
        "data_path": os.path.join(str(root), name), "dataset": name, "benchmark_filename": None,
        "additional_feat_suffix": None, "load_col": None, "unload_col": None,
        "field_separator": "\t", "seq_separator": " ", "encoding": "utf-8",
    }
    base.update(kw)
    return base


def test_validate_dataset_checks_every_atomic_file(tmp_path):
    write_dataset(tmp_path, "d", HEADER + GOOD_ROWS, net="source_id:token\ttarget_id:token\n1\t2\n3\n",
                  item="item_id:token\tprice:float\n1\tcheap\n")
    cfg = config(tmp_path, "d", load_col={"inter": ["user_id", "item_id", "timestamp"]})
    assert [s for _, s in dataset_files(cfg)] == ["inter", "item", "net"]
    with pytest.raises(DataValidationError, match=r"d\.item line 2, column 2 \(price:float\)"):
        validate_dataset(cfg)  # not loaded by RecBole here, still part of the dataset: every column checked
    cfg = config(tmp_path, "d", load_col={"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id"]})
    with pytest.raises(DataValidationError, match=r"d\.net line 3, column 2 \(target_id:token\): missing"):
        validate_dataset(cfg)  # price is not loaded: the .item passes; the .net does not


def test_validate_dataset_benchmark_files(tmp_path):
    write_dataset(tmp_path, "b", HEADER + GOOD_ROWS)
    for part, text in (("train", HEADER + GOOD_ROWS), ("test", HEADER + "1\tx\n")):
        with open(tmp_path / "b" / f"b.{part}.inter", "w") as f:
            f.write(text)
    with pytest.raises(DataValidationError, match=r"b\.test\.inter line 2"):
        validate_dataset(config(tmp_path, "b", benchmark_filename=["train", "test"]))


def test_validate_subcommand(tmp_path, capsys):
    good = write_dataset(tmp_path, "g", HEADER + GOOD_ROWS)
    assert datasets_main(["validate", good]) == 0
    assert "ok:" in capsys.readouterr().out
    bad = write_dataset(tmp_path, "h", HEADER + "1\t2\tx\n")
    assert datasets_main(["validate", bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "h.inter line 2, column 3" in err[0]
    # a dataset folder stands for every atomic file in it
    with open(tmp_path / "g" / "g.item", "w") as f:
        f.write("item_id:token\tname:token_seq\n1\ta b\n")
    assert datasets_main(["validate", str(tmp_path / "g")]) == 0
    out = capsys.readouterr().out
    assert "g.inter" in out and "g.item" in out
    assert datasets_main(["validate", str(tmp_path / "h")]) == 2
    assert "h.inter line 2, column 3" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert datasets_main(["validate", str(tmp_path / "empty")]) == 2
    assert "no atomic files" in capsys.readouterr().err
