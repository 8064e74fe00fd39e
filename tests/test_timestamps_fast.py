"""R3.2: the fast timestamp parser and normaliser (events/timestamps.py) agree with a reference
built on datetime alone, on valid and invalid dates and times alike."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from events.timestamps import _TS_RE, format_ts, normalize_ts, parse_ts

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def reference_parse(text: str) -> int | None:
    if _TS_RE.match(text) is None:
        return None
    try:
        moment = datetime(int(text[0:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]),
                          int(text[14:16]), int(text[17:19]), tzinfo=timezone.utc)
    except ValueError:
        return None
    micros = int((text[20:-1] + "000000")[:6]) if len(text) > 20 else 0
    return (moment - EPOCH) // timedelta(microseconds=1) + micros


def reference_normal(text: str) -> str | None:
    ts_us = reference_parse(text)
    if ts_us is None:
        return None
    moment = EPOCH + timedelta(microseconds=ts_us)
    micros = ts_us % 1_000_000
    fraction = ("." + f"{micros:06d}".rstrip("0")) if micros else ""
    return f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S}{fraction}Z"


stamps = st.builds(
    lambda y, mo, d, h, mi, s, frac: f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}{frac}Z",
    st.integers(1, 9999) | st.integers(1968, 2100),
    st.integers(0, 13), st.integers(0, 32), st.integers(0, 25), st.integers(0, 61), st.integers(0, 61),
    st.sampled_from(["", ".0", ".000000", ".5", ".120", ".000001", ".999999"]) | st.from_regex(r"\A\.[0-9]{1,6}\Z"),
)


@settings(max_examples=3000, deadline=None)
@given(stamps)
def test_fast_parse_and_normal_form_agree_with_datetime(text):
    assert parse_ts(text) == reference_parse(text)
    expected = reference_normal(text)
    assert normalize_ts(text) == expected
    if expected is not None:  # the normal form is a timestamp of the same instant
        assert parse_ts(normalize_ts(text)) == parse_ts(text)
        assert format_ts(parse_ts(text)) == expected


def test_known_cases():
    assert parse_ts("2026-02-29T00:00:00Z") is None  # not a leap year
    assert parse_ts("2024-02-29T23:59:59.999999Z") == reference_parse("2024-02-29T23:59:59.999999Z")
    assert parse_ts("2026-03-01T00:00:60Z") is None  # no leap second
    assert normalize_ts("2026-03-01T00:00:05.000Z") == "2026-03-01T00:00:05Z"
    assert normalize_ts("2026-03-01T00:00:05.120Z") == "2026-03-01T00:00:05.12Z"
    assert format_ts(parse_ts("2026-03-01T00:00:05.12Z")) == "2026-03-01T00:00:05.12Z"
