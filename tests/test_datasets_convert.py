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


def lastfm_raw(root, tag_times=False, tag_dates=False):
    folder = root / "lastfm-tiny"
    write(folder / "user_artists.dat", "userID\tartistID\tweight\n2\t51\t100\n2\t52\t90\n2\t53\t80\n2\t51\t7\n3\t51\t5\n")
    write(folder / "user_friends.dat", "userID\tfriendID\n2\t3\n3\t2\n2\t2\n2\t3\n")
    write(folder / "artists.dat", 'id\tname\turl\tpictureURL\n51\t"Weird" Al\tu\tp\n52\tThe Band\tu\tp\n')
    if tag_times:
        write(
            folder / "user_taggedartists-timestamps.dat",
            "userID\tartistID\ttagID\ttimestamp\n2\t52\t1\t1238536800000\n2\t52\t2\t1238536700000\n2\t99\t3\t1000000000000\n",
        )
    if tag_dates:
        # user 2: 52 and 53 first tagged on 1 Apr 2009 (a tie; 53 also later), 51 never; user 3: 51 on
        # 5 Jun 2010; 99 is tagged but not listened (and has no artists.dat row); tag 7 is not in tags.dat.
        # CRLF line ends, as in the distributed file.
        write(folder / "user_taggedartists.dat", (
            "userID\tartistID\ttagID\tday\tmonth\tyear\r\n"
            "2\t52\t1\t1\t4\t2009\r\n2\t52\t2\t1\t5\t2009\r\n2\t53\t1\t1\t6\t2009\r\n2\t53\t2\t1\t4\t2009\r\n"
            "2\t99\t3\t1\t1\t2008\r\n3\t51\t2\t5\t6\t2010\r\n3\t52\t7\t1\t1\t2011\r\n4\t51\t1\t1\t1\t2011\r\n"
        ), mode="w")
        # Latin-1, as the distributed tags.dat: one line is not UTF-8
        write(folder / "tags.dat", "tagID\ttagValue\n1\trock\n2\tseen live\n3\ttrop\xe1lia\n".encode("latin-1"), mode="wb")
    return str(folder)


def tie_key(user, artist):
    """The converter's documented tie-break, recomputed here: blake2b-64 of 'user<TAB>artist'."""
    import hashlib
    return hashlib.blake2b(f"{user}\t{artist}".encode(), digest_size=8).digest()


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
    assert list(inter.columns) == ["user_id:token", "item_id:token", "weight:float", "timestamp:float", "seq_pos:float"]
    assert (inter["timestamp:float"] == inter["seq_pos:float"]).all()
    # rows in file order (the repeated (2, 51) row dropped); timestamp: position in the hash order,
    # not the artist-id order of the file (which held out each user's highest-id artist)
    assert [tuple(r[:3]) for r in inter.itertuples(index=False)] == [
        ("2", "51", "100"), ("2", "52", "90"), ("2", "53", "80"), ("3", "51", "5"),
    ]
    order = sorted(["51", "52", "53"], key=lambda a: tie_key("2", a))
    ts = {(u, i): t for u, i, _, t, _ in inter.itertuples(index=False)}
    assert [ts[("2", a)] for a in order] == ["0", "1", "2"] and ts[("3", "51")] == "0"
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
    ts = {(u, i): t for u, i, _, t, _ in inter.itertuples(index=False)}
    first_tag = 1238536700  # the earlier of user 2's two tags on artist 52 (ms -> s)
    assert ts[("2", "52")] == str(first_tag)
    # untagged artists of a user with tags: just before the first tag, one second apart, in hash order
    untagged = sorted(["51", "53"], key=lambda a: tie_key("2", a))
    assert [ts[("2", a)] for a in untagged] == [str(first_tag - 2), str(first_tag - 1)]
    assert ts[("3", "51")] == "0"  # a user with no tags: positions
    assert ("2", "99") not in ts  # tagged but not listened: no interaction


def test_lastfm_tag_dates_order_ties_and_text(tmp_path, capsys):
    raw = lastfm_raw(tmp_path, tag_dates=True)
    assert convert("lastfm", raw, tmp_path / "out", "--name", "fm") == 0
    out = capsys.readouterr().out
    folder = tmp_path / "out" / "fm"
    inter = read_atomic(folder / "fm.inter")
    ts = {(u, i): float(t) for u, i, _, t, _ in inter.itertuples(index=False)}
    pos = {(u, i): int(p) for u, i, _, _, p in inter.itertuples(index=False)}
    assert inter["weight:float"].tolist() == ["100", "90", "80", "5"]  # listen counts kept
    april = calendar.timegm((2009, 4, 1, 0, 0, 0))
    # 52 and 53 were both first tagged on 1 Apr 2009 (53's later tag does not count): a tie, broken by
    # the hash; the first at midnight, the second one second later
    tied = sorted(["52", "53"], key=lambda a: tie_key("2", a))
    assert (ts[("2", tied[0])], ts[("2", tied[1])]) == (april, april + 1)
    assert ts[("2", "51")] == april - 1  # untagged: before the user's first tag
    assert ts[("3", "51")] == calendar.timegm((2010, 6, 5, 0, 0, 0))  # day 5, month 6
    assert ("2", "99") not in ts and ("4", "51") not in ts  # tagged, not listened: no interaction
    for user in ("2", "3"):  # tie-free within each user, and seq_pos (RecBole's time field) is its order
        times = sorted((t, i) for (u, i), t in ts.items() if u == user)
        assert len({t for t, _ in times}) == len(times)
        assert [pos[(user, i)] for _, i in times] == list(range(len(times)))
    assert "tag assignments in user_taggedartists.dat: 8" in out
    assert "tagged (user, artist) pairs: 6" in out
    assert "interactions timed by the user's first tag: 3" in out
    assert "sharing their tag time with another of the user's (ties, hash order): 2" in out
    assert "users whose two latest tagged artists tie (their order is the hash's): 1" in out
    assert "tagged pairs the user is not listed as listening to (not interactions): 3" in out
    item = read_atomic(folder / "fm.item")
    assert list(item.columns) == ["item_id:token", "name:token_seq", "tags:token_seq"]
    words = dict(zip(item["item_id:token"], item["tags:token_seq"]))
    # 51 and 52: tags 1 and 2 once each (a tie in use, broken by tag id); 52 also has tag 7, unknown
    assert words == {"51": "rock seen live", "52": "rock seen live"}
    assert "1 tag ids in the tag assignments have no row in tags.dat" in out
    assert "1 lines of tags.dat are not UTF-8 and were read as Latin-1 (first: line 4)" in out
    assert "artists with tag words (top 5 tags): 2" in out
    for name in ("fm.inter", "fm.item"):
        validate_atomic_file(str(folder / name))


def test_lastfm_tag_text_keeps_the_top_tags(tmp_path, capsys):
    raw = lastfm_raw(tmp_path, tag_dates=True)
    rows = "".join(f"2\t52\t{t}\t1\t4\t2009\r\n" * n for t, n in [(10, 1), (11, 3), (12, 1), (13, 4), (14, 5), (15, 6)])
    write(os.path.join(raw, "user_taggedartists.dat"), rows, mode="a")
    write(os.path.join(raw, "tags.dat"), "".join(f"{t}\tw{t}\n" for t in range(10, 16)), mode="a")
    assert convert("lastfm", raw, tmp_path / "out", "--name", "fm") == 0
    item = read_atomic(tmp_path / "out" / "fm" / "fm.item")
    words = dict(zip(item["item_id:token"], item["tags:token_seq"]))
    assert words["52"] == "w15 w14 w13 w11 rock"  # the 4 most used (6, 5, 4, 3 uses), then of the tags used once (1, 2, 10, 12) the lowest id


def test_lastfm_bad_tag_date(tmp_path, capsys):
    raw = lastfm_raw(tmp_path, tag_dates=True)
    write(os.path.join(raw, "user_taggedartists.dat"), "3\t53\t1\t31\t2\t2009\r\n", mode="a")
    assert convert("lastfm", raw, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "user_taggedartists.dat line 10" in err[0] and "not a calendar date" in err[0]
    assert not os.path.exists(tmp_path / "out")


def test_lastfm_prefers_millisecond_times(tmp_path, capsys):
    raw = lastfm_raw(tmp_path, tag_times=True, tag_dates=True)
    assert convert("lastfm", raw, tmp_path / "out", "--name", "fm") == 0
    assert "tag assignments in user_taggedartists-timestamps.dat: 3" in capsys.readouterr().out
    inter = read_atomic(tmp_path / "out" / "fm" / "fm.inter")
    assert dict(((u, i), t) for u, i, _, t, _ in inter.itertuples(index=False))[("2", "52")] == "1238536700"


@pytest.mark.parametrize("tags", ["times", "dates"])
def test_lastfm_deterministic(tmp_path, capsys, tags):
    raw = lastfm_raw(tmp_path, tag_times=tags == "times", tag_dates=tags == "dates")
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
