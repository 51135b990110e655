"""MIND (Microsoft News Dataset) ``behaviors.tsv`` + ``news.tsv`` -> RecBole ``.inter`` / ``.item``.

``behaviors.tsv`` (no header): ``impression_id  user  time  history  impressions`` with ``time`` like
``11/12/2019 2:14:46 PM``, ``history`` the space-separated news the user clicked before, and
``impressions`` the shown news ``Nxxx-1`` (clicked) / ``Nxxx-0`` (not clicked).

``NAME.inter``: ``user_id:token item_id:token timestamp:float`` (seconds since 1970, the impression
time read as UTC). Impressions are processed in time order (ties: file order). For each one:
  * the history news, in their listed order, at ``time - n + k`` for the k-th of n (so they lie just
    before that impression, one second apart, and keep their order);
  * the clicked news ``Nxxx-1`` at the impression time (several clicks: their listed order, which
    RecBole's stable sort keeps).
A (user, news) pair is written once, at its earliest occurrence; later repeats (MIND repeats a user's
history in each of their impressions) are counted as dropped. Non-clicked ``Nxxx-0`` entries are not
interactions. Test-set behaviors without click labels are refused.

``news.tsv`` (no header): ``id category subcategory title abstract [url entities ...]`` ->
``NAME.item``: ``item_id:token category:token subcategory:token title:token_seq abstract:token_seq``
(title and abstract as space-separated words; join with spaces to get the text back).

Memory: one (time, byte offset) pair per impression, plus the set of written (user, news) pairs.
"""
from __future__ import annotations

import calendar
import os
import re

import numpy as np

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

FORMAT = "mind"
DESCRIPTION = "MIND folder (behaviors.tsv, news.tsv) -> .inter (history + clicks) and .item (news text)"

BEHAVIORS = "behaviors.tsv"
NEWS = "news.tsv"
_TIME = re.compile(r"^\s*(\d{1,2})/(\d{1,2})/(\d{4}) (\d{1,2}):(\d{2}):(\d{2})(?: ?([AaPp][Mm]))?\s*$")
_COLUMNS = "impression_id user time history impressions"


def default_name(input_path: str) -> str:
    return name_from_folder(input_path, "mind")


def parse_time(path: str, lineno: int, value: str) -> int:
    """``M/D/YYYY h:mm:ss AM|PM`` (MIND) or 24-hour ``M/D/YYYY H:mm:ss`` -> seconds since 1970 (UTC)."""
    m = _TIME.match(value)
    if not m:
        raise ConversionError(f"{where(path, lineno)}: column 'time' is not like '11/12/2019 2:14:46 PM': {short(value)}")
    month, day, year, hour, minute, second = (int(g) for g in m.groups()[:6])
    ampm = (m.group(7) or "").upper()
    if ampm:
        if not 1 <= hour <= 12:
            raise ConversionError(f"{where(path, lineno)}: column 'time' has hour {hour} with {ampm}: {short(value)}")
        hour = hour % 12 + (12 if ampm == "PM" else 0)
    try:
        if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
            raise ValueError
        return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    except (ValueError, OverflowError):
        raise ConversionError(f"{where(path, lineno)}: column 'time' is not a valid date: {short(value)}") from None


def _parse_behavior(path: str, lineno: int, text: str):
    cols = split_tabs(path, lineno, text, 5, _COLUMNS)
    user = cols[1].strip()
    if not user:
        raise ConversionError(f"{where(path, lineno)}: column 'user' is empty")
    t = parse_time(path, lineno, cols[2])
    history = cols[3].split()
    clicks, negatives = [], 0
    for entry in cols[4].split():
        news, sep, label = entry.rpartition("-")
        if not sep or not news or label not in ("0", "1"):
            raise ConversionError(
                f"{where(path, lineno)}: impression {short(entry)} is not 'NEWS-1' or 'NEWS-0' "
                "(test-set behaviors without click labels cannot be converted)"
            )
        if label == "1":
            clicks.append(news)
        else:
            negatives += 1
    return user, t, history, clicks, negatives


def _index_behaviors(path: str):
    """Pass 1: check every line; return impression times, byte offsets and line numbers."""
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: file not found")
    times, offsets, linenos = [], [], []
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            start, offset = offset, offset + len(raw)
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raise ConversionError(
                    f"{where(path, lineno)}: not valid utf-8 text (byte {raw[exc.start]:#04x} at offset {exc.start})"
                ) from None
            if not text.strip():
                continue
            _, t, _, _, _ = _parse_behavior(path, lineno, text)
            times.append(t)
            offsets.append(start)
            linenos.append(lineno)
    if not times:
        raise ConversionError(f"{path}: no impressions found (empty file?)")
    return np.asarray(times, dtype=np.int64), np.asarray(offsets, dtype=np.int64), np.asarray(linenos, dtype=np.int64)


def convert(input_path: str, out_dir: str, name: str) -> Report:
    if not os.path.isdir(input_path):
        raise ConversionError(f"{input_path}: expected the MIND folder (with {BEHAVIORS} and {NEWS})")
    report = Report()
    behaviors = os.path.join(input_path, BEHAVIORS)
    news_path = os.path.join(input_path, NEWS)
    times, offsets, linenos = _index_behaviors(behaviors)
    order = np.argsort(times, kind="stable")  # time order, file order among equal times

    seen: set[tuple[str, str]] = set()
    users: set[str] = set()
    items: set[str] = set()
    n = n_history = n_clicks = 0
    with open(behaviors, "rb") as f, AtomicWriter(
        os.path.join(out_dir, f"{name}.inter"), ["user_id:token", "item_id:token", "timestamp:float"]
    ) as out:
        for i in order:
            f.seek(int(offsets[i]))
            text = f.readline().decode("utf-8").rstrip("\r\n")
            user, t, history, clicks, negatives = _parse_behavior(behaviors, int(linenos[i]), text)
            if negatives:
                report.drop("non-clicked impression entries (NEWS-0: shown, not an interaction)", negatives)
            stamped = [(news, t - len(history) + k, "history") for k, news in enumerate(history)]
            stamped += [(news, t, "click") for news in clicks]
            for news, ts, kind in stamped:
                key = (user, news)
                if key in seen:
                    report.drop(f"repeated (user, news) {kind} entries (kept the earliest)")
                    continue
                seen.add(key)
                out.write((user, news, fmt_number(ts)))
                users.add(user)
                items.add(news)
                n += 1
                if kind == "history":
                    n_history += 1
                else:
                    n_clicks += 1
    report.counts.update(users=len(users), items=len(items), interactions=n)
    report.counts["from history"] = n_history
    report.counts["from clicks"] = n_clicks
    report.counts["impressions"] = len(times)

    if os.path.isfile(news_path):
        described: set[str] = set()
        with AtomicWriter(
            os.path.join(out_dir, f"{name}.item"),
            ["item_id:token", "category:token", "subcategory:token", "title:token_seq", "abstract:token_seq"],
        ) as item:
            for lineno, text in read_lines(news_path):
                if not text.strip():
                    continue
                cols = split_tabs(news_path, lineno, text, 5, "id category subcategory title abstract ...", at_least=True)
                news = cols[0].strip()
                if not news:
                    raise ConversionError(f"{where(news_path, lineno)}: column 'id' is empty")
                if news in described:
                    report.drop(f"repeated news ids in {NEWS} (kept the first)")
                    continue
                described.add(news)
                item.write((news, cols[1].strip(), cols[2].strip(), clean_text(cols[3]), clean_text(cols[4])))
        report.counts["news (.item)"] = len(described)
        missing = len(items - described)
        if missing:
            report.notes.append(f"{missing:,} of {len(items):,} interacted news have no row in {NEWS}")
    else:
        report.notes.append(f"no {NEWS}: no .item written")
    return report
