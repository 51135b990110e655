"""HetRec 2011 Last.fm (hetrec2011-lastfm-2k) -> RecBole ``.inter`` / ``.net`` / ``.item``.

Input folder (tab separated, one header line each):
  ``user_artists.dat``  ``userID artistID weight``  (required; weight = listen count)
  ``user_friends.dat``  ``userID friendID``          (optional -> ``NAME.net``)
  ``artists.dat``       ``id name url pictureURL``   (optional -> ``NAME.item``)
  ``tags.dat``          ``tagID tagValue``           (optional: tag words for ``NAME.item``)
  ``user_taggedartists.dat`` ``userID artistID tagID day month year`` (optional: tag dates)
  ``user_taggedartists-timestamps.dat`` ``userID artistID tagID timestamp`` (optional, milliseconds;
  used instead of the dated file when both are there)

``NAME.inter``: ``user_id:token item_id:token weight:float timestamp:float seq_pos:float``, one row per
listened (user, artist) pair in file order (a repeated pair keeps its first row); ``weight`` is the
listen count; ``seq_pos`` is the pair's 0-based position in the user's order below, the tie-free time
field for RecBole (the dataset yaml sets ``TIME_FIELD: seq_pos``; RecBole sorts a float field as a
float32 tensor, which cannot tell apart times in seconds less than about two minutes apart).

HetRec has no listening time. ``timestamp`` orders each user's artists by the user's tags, and is
tie-free within a user (RecBole's leave-one-out split holds out the last one):
  * a listened artist the user tagged: the time of the user's first tag on it (seconds since 1970,
    UTC). ``user_taggedartists.dat`` dates tags to the day (the HetRec file has day 1 on 98 % of its
    rows, so in practice to the month): the first of a user's artists tagged on one day is at that
    day's midnight, the next one second later, and so on (never reaching the next day);
  * ties (artists a user first tagged on the same day) are ordered by a fixed hash of (user, artist):
    deterministic, and independent of the artist id, unlike file order (artist id ascending in the
    distributed file, which put each user's highest-id, mostly rarest, artist last);
  * the user's untagged listened artists come before their first tag, one second apart, in the same
    hash order; a user who tagged none of their artists gets 0..n-1 in hash order.
  Tags on artists the user is not listed as listening to do not create interactions (counted).

``NAME.net``: ``source_id:token target_id:token`` from ``user_friends.dat`` as given (the file already
lists both directions); repeated pairs and self-loops are dropped.

``NAME.item``: ``item_id:token name:token_seq`` (the artist name, space-separated words), plus
``tags:token_seq`` when tag assignments and ``tags.dat`` are there: the words of the artist's
``TOP_TAGS`` most used tags over all users (most assignments first; ties by tag id), empty for an
untagged artist. The text transfer mechanism reads every token_seq column (name and tags).

Memory: the tag file's first-tag time per (user, artist) pair, per-artist tag counts, and one entry
per listened pair; every file is read line by line.
"""
from __future__ import annotations

import datetime
import hashlib
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
DESCRIPTION = ("HetRec 2011 Last.fm folder (user_artists.dat; optional user_friends.dat, artists.dat, tags.dat, "
               "user_taggedartists.dat) -> .inter/.net/.item")

INTER = "user_artists.dat"
FRIENDS = "user_friends.dat"
ARTISTS = "artists.dat"
TAGS = "tags.dat"
TAG_DATES = "user_taggedartists.dat"
TAG_TIMES = "user_taggedartists-timestamps.dat"
TOP_TAGS = 5


def default_name(input_path: str) -> str:
    return name_from_folder(input_path, "lastfm-hetrec")


def _rows(path: str, header: list[str], at_least: bool = False, latin1_lines: list[int] | None = None):
    """Data rows of a HetRec file after checking its header line (``latin1_lines``: read lines that are
    not UTF-8 as Latin-1 and list their numbers there)."""
    first = True
    fallback = "latin-1" if latin1_lines is not None else None
    for lineno, text in read_lines(path, fallback=fallback, decoded_with_fallback=latin1_lines):
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


def _day(path: str, lineno: int, cols: list[str]) -> float:
    """Seconds since 1970 of the day's midnight (UTC) from the day, month, year columns."""
    try:
        day, month, year = (int(c.strip()) for c in cols)
        return datetime.datetime(year, month, day, tzinfo=datetime.timezone.utc).timestamp()
    except (ValueError, OverflowError):
        raise ConversionError(
            f"{where(path, lineno)}: day/month/year {short(' '.join(cols))} is not a calendar date"
        ) from None


def _tags(path: str, report: Report) -> dict[str, str]:
    """Tag id -> words. The distributed tags.dat is Latin-1 (8 of its 11,946 lines are not UTF-8): a line
    that is not UTF-8 is read as Latin-1 (counted in the report)."""
    words: dict[str, str] = {}
    latin1: list[int] = []
    for lineno, cols in _rows(path, ["tagID", "tagValue"], at_least=True, latin1_lines=latin1):
        (tag,) = _ids(path, lineno, cols[:1], ("tagID",))
        words.setdefault(tag, clean_text("\t".join(cols[1:])))
    if latin1:
        report.notes.append(f"{len(latin1):,} lines of {TAGS} are not UTF-8 and were read as Latin-1 (first: line {latin1[0]})")
    return words


def _tag_assignments(input_path: str, report: Report):
    """(first tag time per (user, artist), per-artist tag counts, tie step in seconds, file used) or None."""
    times_path = os.path.join(input_path, TAG_TIMES)
    dates_path = os.path.join(input_path, TAG_DATES)
    if os.path.isfile(times_path):
        path, step = times_path, 0.001
        rows = _rows(times_path, ["userID", "artistID", "tagID", "timestamp"])
        when = lambda lineno, cols: _number(path, lineno, cols[3], "timestamp") / 1000.0  # noqa: E731
    elif os.path.isfile(dates_path):
        path, step = dates_path, 1.0
        rows = _rows(dates_path, ["userID", "artistID", "tagID", "day", "month", "year"])
        when = lambda lineno, cols: _day(path, lineno, cols[3:6])  # noqa: E731
    else:
        return None
    first: dict[tuple[str, str], float] = {}
    counts: dict[str, dict[str, int]] = {}
    n = 0
    for lineno, cols in rows:
        user, artist, tag = _ids(path, lineno, cols, ("userID", "artistID", "tagID"))
        t = when(lineno, cols)
        n += 1
        key = (user, artist)
        if key not in first or t < first[key]:
            first[key] = t
        per = counts.setdefault(artist, {})
        per[tag] = per.get(tag, 0) + 1
    report.counts[f"tag assignments in {os.path.basename(path)}"] = n
    report.counts["tagged (user, artist) pairs"] = len(first)
    return first, counts, step, os.path.basename(path)


def _tie_key(user: str, artist: str) -> bytes:
    return hashlib.blake2b(f"{user}\t{artist}".encode(), digest_size=8).digest()


def _listens(path: str):
    """(lineno, user, artist, weight, repeated) per row; ``repeated`` marks a later row of a seen pair."""
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


def _order(per_user: dict[str, list[str]], first: dict[tuple[str, str], float], step: float, report: Report):
    """Tie-free timestamp of every listened pair (see the module docstring) and the tie counts."""
    ts: dict[tuple[str, str], float] = {}
    tied = last_two_tied = untimed_users = timed = 0
    for user, artists in per_user.items():
        dated = sorted((first[(user, a)], _tie_key(user, a), a) for a in artists if (user, a) in first)
        rest = sorted((_tie_key(user, a), a) for a in artists if (user, a) not in first)
        timed += len(dated)
        if not dated:
            untimed_users += 1
            for k, (_, a) in enumerate(rest):
                ts[(user, a)] = float(k)
            continue
        start = dated[0][0]
        for j, (_, a) in enumerate(rest):
            ts[(user, a)] = start - (len(rest) - j)  # one second apart, before the first tag
        prev = None
        for i, (t, _, a) in enumerate(dated):
            same = (i > 0 and dated[i - 1][0] == t) or (i + 1 < len(dated) and dated[i + 1][0] == t)
            tied += same
            prev = t if prev is None else max(t, prev + step)
            ts[(user, a)] = prev
        if len(dated) >= 2 and dated[-1][0] == dated[-2][0]:
            last_two_tied += 1
    report.counts["interactions timed by the user's first tag"] = timed
    report.counts["timed interactions sharing their tag time with another of the user's (ties, hash order)"] = tied
    report.counts["users whose two latest tagged artists tie (their order is the hash's)"] = last_two_tied
    report.counts["users with no tagged listened artist (hash order only)"] = untimed_users
    return ts


def convert(input_path: str, out_dir: str, name: str) -> Report:
    if not os.path.isdir(input_path):
        raise ConversionError(f"{input_path}: expected the HetRec Last.fm folder (with {INTER})")
    report = Report()
    inter_path = os.path.join(input_path, INTER)
    tag_words = _tags(os.path.join(input_path, TAGS), report) if os.path.isfile(os.path.join(input_path, TAGS)) else None
    tagged = _tag_assignments(input_path, report)
    first, tag_counts, step, tag_file = tagged if tagged else ({}, {}, 1.0, None)

    # pass 1: each user's listened artists -> tie-free timestamps
    per_user: dict[str, list[str]] = {}
    for _, user, artist, _, dup in _listens(inter_path):
        if not dup:
            per_user.setdefault(user, []).append(artist)
    if not per_user:
        raise ConversionError(f"{inter_path}: no interactions found")
    ts = _order(per_user, first, step, report) if tagged else {
        (u, a): float(k) for u, artists in per_user.items()
        for k, (_, a) in enumerate(sorted((_tie_key(u, a), a) for a in artists))
    }
    pos = {}
    for user, artists in per_user.items():
        for k, a in enumerate(sorted(artists, key=lambda a: ts[(user, a)])):  # tie-free: a total order
            pos[(user, a)] = k
    if tagged:
        report.counts["tagged pairs the user is not listed as listening to (not interactions)"] = len(first.keys() - ts.keys())
    del per_user

    # pass 2: the rows in file order
    items: set[str] = set()
    users: set[str] = set()
    with AtomicWriter(
        os.path.join(out_dir, f"{name}.inter"),
        ["user_id:token", "item_id:token", "weight:float", "timestamp:float", "seq_pos:float"],
    ) as out:
        for _, user, artist, weight, dup in _listens(inter_path):
            if dup:
                report.drop(f"repeated (user, artist) rows in {INTER} (kept the first)")
                continue
            out.write((user, artist, fmt_number(weight), fmt_number(ts[(user, artist)]), pos[(user, artist)]))
            items.add(artist)
            users.add(user)
        n = out.rows
    report.counts.update(users=len(users), items=len(items), interactions=n)
    if not tagged:
        report.notes.append(f"no {TAG_DATES} or {TAG_TIMES}: timestamp = position in a fixed hash order, not a time")
    else:
        report.notes.append(f"timestamp from {tag_file}; ties and untagged artists in a fixed hash order of (user, artist)")

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
        outside = {u for e in edges for u in e} - users
        if outside:
            report.notes.append(f"{len(outside):,} users in {FRIENDS} have no interaction")
    else:
        report.notes.append(f"no {FRIENDS}: no .net written")

    artists_path = os.path.join(input_path, ARTISTS)
    if os.path.isfile(artists_path):
        _write_items(artists_path, out_dir, name, items, tag_counts if tag_words is not None else None,
                     tag_words or {}, report)
    else:
        report.notes.append(f"no {ARTISTS}: no .item written")
    if tagged and tag_words is None:
        report.notes.append(f"no {TAGS}: the .item file has no tag words")
    return report


def _top_words(counts: dict[str, int], words: dict[str, str]) -> str:
    """The words of the most used known tags (ties by numeric tag id)."""
    known = [(-n, int(t) if t.isdigit() else float("inf"), t) for t, n in counts.items() if t in words]
    return " ".join(w for w in (words[t] for *_, t in sorted(known)[:TOP_TAGS]) if w)


def _write_items(path: str, out_dir: str, name: str, listened: set[str], tag_counts, tag_words, report: Report):
    columns = ["item_id:token", "name:token_seq"] + (["tags:token_seq"] if tag_counts is not None else [])
    named: set[str] = set()
    with_tags = 0
    with AtomicWriter(os.path.join(out_dir, f"{name}.item"), columns) as item:
        for lineno, cols in _rows(path, ["id", "name"], at_least=True):
            (artist,) = _ids(path, lineno, cols[:1], ("id",))
            if artist in named:
                report.drop(f"repeated ids in {ARTISTS} (kept the first)")
                continue
            named.add(artist)
            row = [artist, clean_text(cols[1])]
            if tag_counts is not None:
                words = _top_words(tag_counts.get(artist, {}), tag_words)
                with_tags += bool(words)
                row.append(words)
            item.write(row)
    report.counts["artists (.item)"] = len(named)
    if tag_counts is not None:
        report.counts[f"artists with tag words (top {TOP_TAGS} tags)"] = with_tags
        unknown = {t for per in tag_counts.values() for t in per} - tag_words.keys()
        if unknown:
            report.notes.append(f"{len(unknown):,} tag ids in the tag assignments have no row in {TAGS} (no words)")
    missing = len(listened - named)
    if missing:
        report.notes.append(f"{missing:,} listened artists have no row in {ARTISTS}")
