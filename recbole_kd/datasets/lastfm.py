"""HetRec 2011 Last.fm (hetrec2011-lastfm-2k) -> RecBole ``.inter`` / ``.net`` / ``.item``.

Input folder (tab separated, one header line each):
  ``user_artists.dat``  ``userID artistID weight``  (required; weight = listen count)
  ``user_friends.dat``  ``userID friendID``          (optional -> ``NAME.net``)
  ``artists.dat``       ``id name url pictureURL``   (optional -> ``NAME.item``)
  ``user_taggedartists-timestamps.dat`` ``userID artistID tagID timestamp`` (optional, milliseconds)

``NAME.inter``: ``user_id:token item_id:token weight:float timestamp:float``, one row per listened
(user, artist) pair (a repeated pair keeps its first row).

HetRec has no listening time, so ``timestamp`` is an order, not a time:
  * without ``user_taggedartists-timestamps.dat`` (the shared copy has none): ``timestamp`` is the
    pair's 0-based position among the user's rows in ``user_artists.dat`` (file order, which in the
    distributed file is artistID ascending). A leave-one-out split therefore holds out the user's
    last-listed artist, not their latest one.
  * with it: a pair the user tagged gets the time of the user's first tag on that artist (seconds);
    the user's untagged pairs come before their first tagged one, in file order, one second apart;
    a user who tagged none of their artists gets positions 0..n-1. Tags on artists the user is not
    listed as listening to do not create interactions.

``NAME.net``: ``source_id:token target_id:token`` from ``user_friends.dat`` as given (the file already
lists both directions); repeated pairs and self-loops are dropped.

``NAME.item``: ``item_id:token name:token_seq`` (the artist name, space-separated words).
"""
from __future__ import annotations

import os

from recbole_kd.datasets.common import (
    AtomicWriter,
    ConversionError,
    Report,
    clean_text,
    fmt_number,
    name_from_folder,
    read_lines,
    short,
    split_tabs,
    where,
)

FORMAT = "lastfm"
DESCRIPTION = "HetRec 2011 Last.fm folder (user_artists.dat, user_friends.dat, artists.dat) -> .inter/.net/.item"

INTER = "user_artists.dat"
FRIENDS = "user_friends.dat"
ARTISTS = "artists.dat"
TAG_TIMES = "user_taggedartists-timestamps.dat"


def default_name(input_path: str) -> str:
    return name_from_folder(input_path, "lastfm-hetrec")


def _rows(path: str, header: list[str], at_least: bool = False):
    """Data rows of a HetRec file after checking its header line."""
    first = True
    for lineno, text in read_lines(path):
        if first:
            first = False
            got = text.split("\t")
            if [h.strip().lower() for h in got[: len(header)]] != [h.lower() for h in header]:
                raise ConversionError(
                    f"{where(path, lineno)}: expected the header {' '.join(header)!r} (tab separated), found {short(text)}"
                )
            continue
        if not text.strip():
            continue
        yield lineno, split_tabs(path, lineno, text, len(header), " ".join(header), at_least=at_least)
    if first:
        raise ConversionError(f"{path}: file is empty (expected the header {' '.join(header)!r})")


def _number(path: str, lineno: int, value: str, column: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise ConversionError(f"{where(path, lineno)}: column {column!r} is not a number: {short(value)}") from None
    if x != x or x in (float("inf"), float("-inf")):
        raise ConversionError(f"{where(path, lineno)}: column {column!r} is not a finite number: {short(value)}")
    return x


def _ids(path: str, lineno: int, cols: list[str], names: tuple[str, ...]) -> list[str]:
    out = []
    for value, column in zip(cols, names):
        value = value.strip()
        if not value:
            raise ConversionError(f"{where(path, lineno)}: column {column!r} is empty")
        out.append(value)
    return out


def _tag_times(path: str, report: Report) -> dict[tuple[str, str], float]:
    first: dict[tuple[str, str], float] = {}
    for lineno, cols in _rows(path, ["userID", "artistID", "tagID", "timestamp"]):
        user, artist = _ids(path, lineno, cols, ("userID", "artistID"))
        t = _number(path, lineno, cols[3], "timestamp") / 1000.0
        key = (user, artist)
        if key not in first or t < first[key]:
            first[key] = t
    report.counts["tagged (user, artist) pairs in the tag file"] = len(first)
    return first


def _listens(path: str):
    """(lineno, user, artist, weight) for each first occurrence of a (user, artist) pair; duplicates flagged."""
    seen: set[tuple[str, str]] = set()
    for lineno, cols in _rows(path, ["userID", "artistID", "weight"]):
        user, artist = _ids(path, lineno, cols, ("userID", "artistID"))
        weight = _number(path, lineno, cols[2], "weight")
        key = (user, artist)
        if key in seen:
            yield lineno, user, artist, weight, True
            continue
        seen.add(key)
        yield lineno, user, artist, weight, False


def convert(input_path: str, out_dir: str, name: str) -> Report:
    if not os.path.isdir(input_path):
        raise ConversionError(f"{input_path}: expected the HetRec Last.fm folder (with {INTER})")
    report = Report()
    inter_path = os.path.join(input_path, INTER)
    times_path = os.path.join(input_path, TAG_TIMES)
    tag_first = _tag_times(times_path, report) if os.path.isfile(times_path) else None

    # pass 1 (only with tag times): per user, the first tag time among listened artists and the untagged count
    user_first_tag: dict[str, float] = {}
    untagged: dict[str, int] = {}
    if tag_first is not None:
        for _, user, artist, _, dup in _listens(inter_path):
            if dup:
                continue
            t = tag_first.get((user, artist))
            if t is None:
                untagged[user] = untagged.get(user, 0) + 1
            elif user not in user_first_tag or t < user_first_tag[user]:
                user_first_tag[user] = t

    position: dict[str, int] = {}
    untagged_seen: dict[str, int] = {}
    items: set[str] = set()
    n = timed = 0
    with AtomicWriter(
        os.path.join(out_dir, f"{name}.inter"),
        ["user_id:token", "item_id:token", "weight:float", "timestamp:float"],
    ) as out:
        for _, user, artist, weight, dup in _listens(inter_path):
            if dup:
                report.drop(f"repeated (user, artist) rows in {INTER} (kept the first)")
                continue
            k = position.get(user, 0)
            position[user] = k + 1
            ts: float = k
            if tag_first is not None:
                t = tag_first.get((user, artist))
                if t is not None:
                    ts = t
                    timed += 1
                elif user in user_first_tag:
                    # untagged pairs: before the user's first tag, in file order, one second apart
                    j = untagged_seen.get(user, 0)
                    untagged_seen[user] = j + 1
                    ts = user_first_tag[user] - untagged[user] + j
            out.write((user, artist, fmt_number(weight), fmt_number(ts)))
            items.add(artist)
            n += 1
    if n == 0:
        raise ConversionError(f"{inter_path}: no interactions found")
    report.counts.update(users=len(position), items=len(items), interactions=n)
    if tag_first is None:
        report.notes.append(f"no {TAG_TIMES}: timestamp = position in {INTER} (file order), not a time")
    else:
        report.counts["interactions timed by the user's first tag"] = timed

    friends_path = os.path.join(input_path, FRIENDS)
    if os.path.isfile(friends_path):
        edges: set[tuple[str, str]] = set()
        with AtomicWriter(os.path.join(out_dir, f"{name}.net"), ["source_id:token", "target_id:token"]) as net:
            for lineno, cols in _rows(friends_path, ["userID", "friendID"]):
                a, b = _ids(friends_path, lineno, cols, ("userID", "friendID"))
                if a == b:
                    report.drop(f"self-loops in {FRIENDS}")
                    continue
                if (a, b) in edges:
                    report.drop(f"repeated pairs in {FRIENDS}")
                    continue
                edges.add((a, b))
                net.write((a, b))
        report.counts["friend pairs (.net)"] = len(edges)
        outside = {u for e in edges for u in e} - position.keys()
        if outside:
            report.notes.append(f"{len(outside):,} users in {FRIENDS} have no interaction")
    else:
        report.notes.append(f"no {FRIENDS}: no .net written")

    artists_path = os.path.join(input_path, ARTISTS)
    if os.path.isfile(artists_path):
        named: set[str] = set()
        with AtomicWriter(os.path.join(out_dir, f"{name}.item"), ["item_id:token", "name:token_seq"]) as item:
            for lineno, cols in _rows(artists_path, ["id", "name"], at_least=True):
                (artist,) = _ids(artists_path, lineno, cols[:1], ("id",))
                if artist in named:
                    report.drop(f"repeated ids in {ARTISTS} (kept the first)")
                    continue
                named.add(artist)
                item.write((artist, clean_text(cols[1])))
        report.counts["artists (.item)"] = len(named)
        missing = len(items - named)
        if missing:
            report.notes.append(f"{missing:,} listened artists have no row in {ARTISTS}")
    else:
        report.notes.append(f"no {ARTISTS}: no .item written")
    return report

