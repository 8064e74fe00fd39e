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
_cache: dict[str, int] = {}  # recent timestamps: inputs arrive in runs of equal ts


def parse_ts(text: str) -> int | None:
    """Microseconds since the epoch, or None when `text` is not an R3.2 timestamp."""
    cached = _cache.get(text)
    if cached is not None:
        return cached
    if _TS_RE.match(text) is None:
        return None
    try:  # month 13, second 60 (no leap second), 31 February, ... raise ValueError
        moment = datetime(
            int(text[0:4]), int(text[5:7]), int(text[8:10]),
            int(text[11:13]), int(text[14:16]), int(text[17:19]), tzinfo=timezone.utc,
        )
    except ValueError:
        return None
    micros = int((text[20:-1] + "000000")[:6]) if len(text) > 20 else 0
    delta = moment - _EPOCH
    ts_us = (delta.days * 86_400 + delta.seconds) * 1_000_000 + micros
    if len(_cache) > 4096:
        _cache.clear()
    _cache[text] = ts_us
    return ts_us


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
