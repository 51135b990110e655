"""Converters (``python -m recbole_kd.datasets convert ...``): output, order, counts, determinism,
atomicity and one-line errors. Fixtures are tiny files written here; nothing is read from ../shared."""
import calendar
import os
import subprocess
import sys

import pandas as pd
import pytest

from recbole_kd.datasets import common
from recbole_kd.datasets.__main__ import main
from recbole_kd.datasets.validate import validate_atomic_file


# ------------------------------------------------------------------------------------------ fixtures
def write(path, text, mode="w"):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, mode) as f:
        f.write(text)
    return str(path)


MIND_BEHAVIORS = (
    "1\tU1\t11/12/2019 2:00:00 PM\tN1 N2 N1\tN3-1 N4-0 N2-1\n"
    "2\tU2\t11/11/2019 9:30:00 AM\t\tN5-0 N6-1\n"
    "3\tU1\t11/11/2019 11:59:59 PM\tN1 N2 N1\tN7-1 N8-1\n"
)
MIND_NEWS = (
    'N1\tnews\tnewsus\t"Quoted" start of a title\tAn abstract.\thttp://x\t[]\t[]\n'
    "N2\tsports\tgolf\tTitle two\t\thttp://y\t[]\t[]\n"
    "N1\tdup\tdup\tDup\tDup\thttp://z\t[]\t[]\n"
)


def mind_raw(root):
    write(root / "mind-tiny" / "raw" / "behaviors.tsv", MIND_BEHAVIORS)
    write(root / "mind-tiny" / "raw" / "news.tsv", MIND_NEWS)
    return str(root / "mind-tiny" / "raw")


def lastfm_raw(root, tag_times=False):
    folder = root / "lastfm-tiny"
    write(folder / "user_artists.dat", "userID\tartistID\tweight\n2\t51\t100\n2\t52\t90\n2\t53\t80\n2\t51\t7\n3\t51\t5\n")
    write(folder / "user_friends.dat", "userID\tfriendID\n2\t3\n3\t2\n2\t2\n2\t3\n")
    write(folder / "artists.dat", 'id\tname\turl\tpictureURL\n51\t"Weird" Al\tu\tp\n52\tThe Band\tu\tp\n')
    if tag_times:
        write(
            folder / "user_taggedartists-timestamps.dat",
            "userID\tartistID\ttagID\ttimestamp\n2\t52\t1\t1238536800000\n2\t52\t2\t1238536700000\n2\t99\t3\t1000000000000\n",
        )
    return str(folder)


def seq_raw(root):
    return write(root / "seqs.txt", "u1 a b c\nu2 x\nu1 d\n\nu3 a a\n")


def read_atomic(path):
    """Read an atomic file the way RecBole does (python engine, strings)."""
    df = pd.read_csv(path, delimiter="\t", dtype=str, engine="python", keep_default_na=False)
    return df


def convert(fmt, inp, out, *extra):
    return main(["convert", fmt, "--input", inp, "--output", str(out), *extra])


def files_bytes(folder):
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


# ------------------------------------------------------------------------------------------ subprocess
@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One real ``python -m recbole_kd.datasets`` process (start-up costs seconds: Python + RecBole)."""
    root = tmp_path_factory.mktemp("cli")
    bad_in = write(root / "bad.txt", "u1 a b\nu2 c\nu3\nu4 d\n")
    proc = subprocess.run(
        [sys.executable, "-m", "recbole_kd.datasets", "convert", "seqfile", "--input", bad_in,
         "--output", str(root / "out")],
        capture_output=True, text=True, timeout=300,
    )
    return root, bad_in, proc


def test_cli_bad_input_one_line_exit_2(cli_run):
    root, bad_in, proc = cli_run
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("python -m recbole_kd.datasets: error: ")
    assert f"{bad_in} line 3" in lines[0] and "expected 'user item" in lines[0]
    assert not os.path.exists(root / "out")  # created for the run, removed with the failure


# ------------------------------------------------------------------------------------------ mind
def test_mind_output_order_counts(tmp_path, capsys):
    assert convert("mind", mind_raw(tmp_path), tmp_path / "out") == 0
    out = capsys.readouterr().out
    folder = tmp_path / "out" / "mind-tiny"  # name from the folder above raw/
    inter = read_atomic(folder / "mind-tiny.inter")
    assert list(inter.columns) == ["user_id:token", "item_id:token", "timestamp:float"]
    t_u2 = calendar.timegm((2019, 11, 11, 9, 30, 0))
    t_u1a = calendar.timegm((2019, 11, 11, 23, 59, 59))
    t_u1b = calendar.timegm((2019, 11, 12, 14, 0, 0))
    rows = [tuple(r) for r in inter.itertuples(index=False)]
    # impressions in time order; history just before its impression, in listed order; clicks at the time;
    # each (user, news) once, at its earliest occurrence
    assert rows == [
        ("U2", "N6", str(t_u2)),
        ("U1", "N1", str(t_u1a - 3)),
        ("U1", "N2", str(t_u1a - 2)),
        ("U1", "N7", str(t_u1a)),
        ("U1", "N8", str(t_u1a)),
        ("U1", "N3", str(t_u1b)),
    ]
    assert "2 users, 6 items, 6 interactions" in out
    assert "dropped 2 non-clicked" in out
    assert "dropped 4 repeated (user, news) history" in out
    assert "dropped 1 repeated (user, news) click" in out
    assert "dropped 1 repeated news ids in news.tsv" in out
    item = read_atomic(folder / "mind-tiny.item")
    assert list(item.columns) == [
        "item_id:token", "category:token", "subcategory:token", "title:token_seq", "abstract:token_seq"
    ]
    assert item["item_id:token"].tolist() == ["N1", "N2"]
    assert item["title:token_seq"].tolist() == ['"Quoted" start of a title', "Title two"]
    assert item["abstract:token_seq"].tolist() == ["An abstract.", ""]
    for name in ("mind-tiny.inter", "mind-tiny.item"):
        validate_atomic_file(str(folder / name))


def test_mind_deterministic(tmp_path, capsys):
    raw = mind_raw(tmp_path)
    assert convert("mind", raw, tmp_path / "a", "--name", "m") == 0
    assert convert("mind", raw, tmp_path / "b", "--name", "m") == 0
    assert files_bytes(tmp_path / "a" / "m") == files_bytes(tmp_path / "b" / "m")


@pytest.mark.parametrize(
    "line, expect",
    [
        ("4\tU3\t13/45/2019 1:00:00 PM\t\tN1-1\n", "column 'time'"),
        ("4\tU3\t11/12/2019 1:00:00 PM\t\tN1 N2\n", "without click labels"),
        ("4\tU3\t11/12/2019 1:00:00 PM\tN1\n", "expected 5 tab-separated columns"),
    ],
)
def test_mind_bad_input(tmp_path, capsys, line, expect):
    raw = mind_raw(tmp_path)
    write(os.path.join(raw, "behaviors.tsv"), line, mode="a")
    assert convert("mind", raw, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "behaviors.tsv line 4" in err[0] and expect in err[0], err
    assert not os.path.exists(tmp_path / "out")


# ------------------------------------------------------------------------------------------ lastfm
def test_lastfm_output_without_tag_times(tmp_path, capsys):
    assert convert("lastfm", lastfm_raw(tmp_path), tmp_path / "out", "--name", "fm") == 0
    out = capsys.readouterr().out
    folder = tmp_path / "out" / "fm"
    inter = read_atomic(folder / "fm.inter")
    assert list(inter.columns) == ["user_id:token", "item_id:token", "weight:float", "timestamp:float"]
    # file order per user (the repeated (2, 51) row dropped)
    assert [tuple(r) for r in inter.itertuples(index=False)] == [
        ("2", "51", "100", "0"), ("2", "52", "90", "1"), ("2", "53", "80", "2"), ("3", "51", "5", "0"),
    ]
    net = read_atomic(folder / "fm.net")
    assert list(net.columns) == ["source_id:token", "target_id:token"]
    assert [tuple(r) for r in net.itertuples(index=False)] == [("2", "3"), ("3", "2")]
    item = read_atomic(folder / "fm.item")
    assert list(item.columns) == ["item_id:token", "name:token_seq"]
    assert item["name:token_seq"].tolist() == ['"Weird" Al', "The Band"]
    assert "2 users, 3 items, 4 interactions" in out
    assert "dropped 1 repeated (user, artist)" in out
    assert "dropped 1 self-loops" in out and "dropped 1 repeated pairs in user_friends.dat" in out
    assert "1 listened artists have no row in artists.dat" in out
    assert "not a time" in out
    for name in ("fm.inter", "fm.net", "fm.item"):
        validate_atomic_file(str(folder / name))


def test_lastfm_uses_tag_times_when_present(tmp_path, capsys):
    assert convert("lastfm", lastfm_raw(tmp_path, tag_times=True), tmp_path / "out", "--name", "fm") == 0
    inter = read_atomic(tmp_path / "out" / "fm" / "fm.inter")
    ts = {(u, i): t for u, i, _, t in inter.itertuples(index=False)}
    first_tag = 1238536700  # the earlier of user 2's two tags on artist 52 (ms -> s)
    assert ts[("2", "52")] == str(first_tag)
    # untagged artists of a user with tags: just before the first tag, in file order
    assert ts[("2", "51")] == str(first_tag - 2) and ts[("2", "53")] == str(first_tag - 1)
    assert ts[("3", "51")] == "0"  # a user with no tags: positions
    assert ("2", "99") not in ts  # tagged but not listened: no interaction


def test_lastfm_deterministic(tmp_path, capsys):
    raw = lastfm_raw(tmp_path, tag_times=True)
    assert convert("lastfm", raw, tmp_path / "a", "--name", "fm") == 0
    assert convert("lastfm", raw, tmp_path / "b", "--name", "fm") == 0
    assert files_bytes(tmp_path / "a" / "fm") == files_bytes(tmp_path / "b" / "fm")


def test_lastfm_bad_weight(tmp_path, capsys):
    raw = lastfm_raw(tmp_path)
    write(os.path.join(raw, "user_artists.dat"), "3\t52\tlots\n", mode="a")
    assert convert("lastfm", raw, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "user_artists.dat line 7" in err[0] and "'weight'" in err[0] and "'lots'" in err[0]


# ------------------------------------------------------------------------------------------ seqfile
def test_seqfile_positions(tmp_path, capsys):
    assert convert("seqfile", seq_raw(tmp_path), tmp_path / "out") == 0
    out = capsys.readouterr().out
    inter = read_atomic(tmp_path / "out" / "seqs" / "seqs.inter")
    assert list(inter.columns) == ["user_id:token", "item_id:token", "timestamp:float"]
    assert [tuple(r) for r in inter.itertuples(index=False)] == [
        ("u1", "a", "0"), ("u1", "b", "1"), ("u1", "c", "2"), ("u2", "x", "0"), ("u1", "d", "3"),
        ("u3", "a", "0"), ("u3", "a", "1"),
    ]
    assert "3 users, 5 items, 7 interactions" in out
    assert "load with --data_path=" in out and "--dataset=seqs" in out


def test_seqfile_deterministic(tmp_path, capsys):
    raw = seq_raw(tmp_path)
    assert convert("seqfile", raw, tmp_path / "a") == 0
    assert convert("seqfile", raw, tmp_path / "b") == 0
    assert files_bytes(tmp_path / "a" / "seqs") == files_bytes(tmp_path / "b" / "seqs")


def test_bad_encoding_names_line(tmp_path, capsys):
    raw = write(tmp_path / "s.txt", b"u1 a\nu2 \xff\xfe\n", mode="wb")
    assert convert("seqfile", raw, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "s.txt line 2" in err[0] and "not valid utf-8" in err[0]


def test_missing_input(tmp_path, capsys):
    assert convert("lastfm", str(tmp_path / "nope"), tmp_path / "out") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]
    assert main(["convert", "nosuchformat", "--input", "x", "--output", "y"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------ atomicity
def test_failure_midway_leaves_nothing(tmp_path, capsys):
    """artists.dat is read last: .inter and .net are already written when it fails."""
    raw = lastfm_raw(tmp_path)
    write(os.path.join(raw, "artists.dat"), "53\n", mode="a")  # too few columns on line 4
    out = tmp_path / "data"
    os.makedirs(out / "other")  # an existing data_path with another dataset in it
    assert convert("lastfm", raw, out, "--name", "fm") == 2
    err = capsys.readouterr().err
    assert "artists.dat line 4" in err
    assert sorted(os.listdir(out)) == ["other"]  # no fm/, no temporary folder left


def test_crash_while_writing_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = common.AtomicWriter.write

    def flaky(self, row):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk gone")
        real(self, row)

    monkeypatch.setattr(common.AtomicWriter, "write", flaky)
    with pytest.raises(RuntimeError):
        convert("seqfile", seq_raw(tmp_path), tmp_path / "out")
    assert not os.path.exists(tmp_path / "out")


def test_existing_output_untouched_without_force(tmp_path, capsys):
    raw = seq_raw(tmp_path)
    existing = tmp_path / "out" / "seqs"
    write(existing / "keep.txt", "mine")
    assert convert("seqfile", raw, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists" in err[0] and "--force" in err[0]
    assert os.listdir(existing) == ["keep.txt"] and open(existing / "keep.txt").read() == "mine"
    assert sorted(os.listdir(tmp_path / "out")) == ["seqs"]
    # --force replaces it
    assert convert("seqfile", raw, tmp_path / "out", "--force") == 0
    assert os.listdir(existing) == ["seqs.inter"]
    assert sorted(os.listdir(tmp_path / "out")) == ["seqs"]
