"""Timestamps (R3.2): RFC 3339, UTC, `Z` only, at most microseconds, no leap second.

Internally a timestamp is an integer count of microseconds since the Unix epoch, so that
`…:05Z` and `…:05.000Z` compare equal as instants. Outputs write the normal form
`YYYY-MM-DDTHH:MM:SS[.f]Z` with no trailing zeros in the fraction (interfaces §1).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

TS_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z\Z"
_TS_RE = re.compile(TS_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_days: dict[str, int | None] = {}  # "YYYY-MM-DD" -> days since the epoch, None if no such day


def _day(text: str) -> int | None:
    try:
        return _days[text]
    except KeyError:
        pass
    try:  # month 13, 31 February, ... raise ValueError
        days = (datetime(int(text[0:4]), int(text[5:7]), int(text[8:10]), tzinfo=timezone.utc) - _EPOCH).days
    except ValueError:
        days = None
    if len(_days) > 4096:
        _days.clear()
    _days[text] = days
    return days


def parse_ts(text: str) -> int | None:
    """Microseconds since the epoch, or None when `text` is not an R3.2 timestamp."""
    if _TS_RE.match(text) is None:
        return None
    days = _day(text[:10])
    hours, minutes, seconds = int(text[11:13]), int(text[14:16]), int(text[17:19])
    if days is None or hours > 23 or minutes > 59 or seconds > 59:  # no leap second
        return None
    micros = int((text[20:-1] + "000000")[:6]) if len(text) > 20 else 0
    return (((days * 24 + hours) * 60 + minutes) * 60 + seconds) * 1_000_000 + micros


def format_ts(ts_us: int) -> str:
    """The normal output form of a timestamp."""
    moment = _EPOCH + timedelta(microseconds=ts_us)
    # The year is padded by hand: glibc's %Y writes year 999 as "999", which is no R3.2 form.
    text = f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    micros = ts_us % 1_000_000
    if micros:
        text += "." + f"{micros:06d}".rstrip("0")
    return text + "Z"


def normalize_ts(text: str) -> str | None:
    """The normal form of an R3.2 timestamp, or None when it is not one."""
    if parse_ts(text) is None:
        return None
    if len(text) == 20:
        return text
    fraction = text[20:-1].rstrip("0")
    return text[:19] + "." + fraction + "Z" if fraction else text[:19] + "Z"
