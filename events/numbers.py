"""Exact decimals (rulebook R1): parsing, normalising and formatting.

Every amount, quantity, price and fraction travels as an R1.1 decimal string and is held
internally as an integer count of grid units (``units``) at a known number of decimal places.
Binary floating point is never used.
"""

from __future__ import annotations

import re

# R1.1: the accepted input form. Trailing zeros after the point are accepted and normalised.
DECIMAL_PATTERN = r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?\Z"  # \Z: "$" would allow a final "\n"
_DECIMAL_RE = re.compile(DECIMAL_PATTERN)

MAX_FRACTION_PLACES = 18  # R4.3: fractions have at most 18 decimal places


def is_decimal(text: str) -> bool:
    return _DECIMAL_RE.match(text) is not None


def normalize(text: str) -> str | None:
    """The R1.1 normal form of an input decimal, or None if it is malformed.

    Strips trailing zeros after the point (``"10.50"`` is ``10.5``) and refuses a negative
    zero (``-0``, ``-0.00``), which R1.1 calls malformed.
    """
    if _DECIMAL_RE.match(text) is None:
        return None
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text == "-0":
        return None
    return text


def places(text: str) -> int:
    """Decimal places of a normalised decimal string."""
    point = text.find(".")
    return 0 if point < 0 else len(text) - point - 1


_units_cache: dict[tuple[str, int], int | None] = {}  # prices and sizes repeat


def to_units(text: str, scale: int) -> int | None:
    """A normalised decimal as an integer count of 10^-scale, or None when off that grid (R1.4)."""
    key = (text, scale)
    try:
        return _units_cache[key]
    except KeyError:
        pass
    units = _to_units(text, scale)
    if len(_units_cache) > 65536:
        _units_cache.clear()
    _units_cache[key] = units
    return units


def _to_units(text: str, scale: int) -> int | None:
    negative = text.startswith("-")
    if negative:
        text = text[1:]
    whole, _, frac = text.partition(".")
    if len(frac) > scale:
        return None
    units = int(whole + frac + "0" * (scale - len(frac)))
    return -units if negative else units


def units_of(text: str, scale: int) -> int:
    """Like to_units for values known to be on the grid (recorded history)."""
    units = _units_cache.get((text, scale))
    if units is None:
        units = to_units(text, scale)
        assert units is not None, f"{text!r} is off the 10^-{scale} grid"
    return units


def fmt_units(units: int, scale: int) -> str:
    """An integer count of 10^-scale written as an R1.1 string (no trailing zeros, never -0)."""
    if scale == 0:
        return str(units)
    sign = "-" if units < 0 else ""
    digits = str(-units if units < 0 else units)
    if len(digits) <= scale:
        digits = "0" * (scale - len(digits) + 1) + digits
    whole, frac = digits[:-scale], digits[-scale:].rstrip("0")
    return f"{sign}{whole}.{frac}" if frac else f"{sign}{whole}"


def fraction(text: str) -> tuple[int, int]:
    """A normalised decimal as an exact fraction (numerator, 10^places)."""
    p = places(text)
    return units_of(text, p), 10**p


def ceil_div(a: int, b: int) -> int:
    """ceil(a / b) for b > 0, in integers (R1.3: values that count against an account)."""
    assert b > 0
    return -((-a) // b)


def floor_div(a: int, b: int) -> int:
    """floor(a / b) for b > 0 (R1.3: values that count for an account)."""
    assert b > 0
    return a // b
