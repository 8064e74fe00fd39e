"""Timestamps (R3.2): RFC 3339, UTC, `Z` only, at most microseconds, no leap second.

Internally a timestamp is an integer count of microseconds since the Unix epoch, so that
`…:05Z` and `…:05.000Z` compare equal as instants. Outputs write the normal form
`YYYY-MM-DDTHH:MM:SS[.f]Z` with no trailing zeros in the fraction (interfaces §1).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

TS_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z$"
_TS_RE = re.compile(TS_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def parse_ts(text: str) -> int | None:
    """Microseconds since the epoch, or None when `text` is not an R3.2 timestamp."""
    if _TS_RE.match(text) is None:
        return None
    whole, _, frac = text[:-1].partition(".")
    try:
        moment = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    except ValueError:  # month 13, second 60 (no leap second), 31 February, ...
        return None
    micros = int((frac + "000000")[:6])
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + micros


def format_ts(ts_us: int) -> str:
    """The normal output form of a timestamp."""
    moment = _EPOCH + timedelta(microseconds=ts_us)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    micros = ts_us % 1_000_000
    if micros:
        text += "." + f"{micros:06d}".rstrip("0")
    return text + "Z"


def normalize_ts(text: str) -> str | None:
    ts_us = parse_ts(text)
    return None if ts_us is None else format_ts(ts_us)
