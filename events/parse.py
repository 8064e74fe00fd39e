"""Structural parsing of one input line (R3.3), needing no ledger state.

``parse_line`` turns one JSON Lines line into a normalised input (R1.1 decimals, R3.2 ``ts``) or
a ``Malformed`` value with a stable code and a message that names the field. It checks
everything that can be checked without the log: the JSON, the schema (events/schema.py), the
R1.1 forms, the ranges of R4 to R9 and the system-account uses that R2.2 allows. What depends on
the log so far (listings, grids, ids, ``ts`` order) is ``clearing/validate.py``.

A user's mistake is a returned ``Malformed``, never an exception.
"""

from __future__ import annotations

import json
import re
from typing import NamedTuple

import msgspec

from events import schema
from events.numbers import MAX_FRACTION_PLACES, fraction, places
from events.timestamps import normalize_ts

__all__ = ["CODES", "Malformed", "parse_line", "show_value"]


class Malformed(NamedTuple):
    """R3.3: why an input is refused at the door. ``code`` is stable; ``message`` names the field."""

    code: str
    message: str


CODES = frozenset(
    {
        "invalid_json",
        "not_object",
        "duplicate_key",
        "unknown_type",
        "missing_field",
        "unknown_field",
        "wrong_type",
        "bad_decimal",
        "bad_id",
        "bad_ts",
        "bad_account",
        "bad_symbol",
        "out_of_range",
        "off_grid",
        "unknown_asset",
        "unknown_instrument",
        "bad_listing",
        "system_account",
        "same_account",
        "id_conflict",
        "ts_regression",
        "bom",
    }
)

INSURANCE = "@insurance"
FEES = "@fees"
EXTERNAL = "@external"

# Limit on the size of a value (R3.3 "off its range"): the rulebook sets no upper bound on an
# amount, but a number must stay an exact integer the whole system can print (CPython refuses
# int<->str conversions beyond 4300 digits). 36 digits before the point is far beyond any
# real amount, and products of a few such values stay far below that limit.
MAX_INTEGER_DIGITS = 36

# --- the kind of every input field, by its JSON name ----------------------------------------
_DECIMAL_FIELDS = frozenset(
    {
        "amount",
        "price",
        "haircut",
        "qty",
        "buyer_fee",
        "seller_fee",
        "initial_margin",
        "maintenance_margin",
        "liquidation_fee",
        "rate",
    }
)
_ACCOUNT_FIELDS = frozenset({"account", "from", "to", "buyer", "seller"})
_SYMBOL_FIELDS = frozenset({"asset", "instrument", "underlying"})
_PLACES_FIELDS = frozenset({"decimals", "price_decimals", "qty_decimals"})
_PATTERN_CODES = (
    {name: "bad_decimal" for name in _DECIMAL_FIELDS}
    | {name: "bad_account" for name in _ACCOUNT_FIELDS}
    | {name: "bad_symbol" for name in _SYMBOL_FIELDS}
    | {"id": "bad_id", "ts": "bad_ts"}
)
_EXPECTED = {
    "bad_decimal": "a decimal string -?(0|[1-9][0-9]*)(.[0-9]+)? (R1.1)",
    "bad_account": "an account id of 1 to 64 characters A-Z a-z 0-9 . _ : / - (R2.1)",
    "bad_symbol": "an id of 1 to 64 characters A-Z a-z 0-9 . _ : / - (R2.1)",
    "bad_id": "1 to 128 printable ASCII characters (R3.2)",
    "bad_ts": "an RFC 3339 UTC timestamp YYYY-MM-DDTHH:MM:SS[.ffffff]Z (R3.2)",
}

# Decimal fields per input class, by attribute name (``from_`` is the only renamed field and
# is not a decimal).
_DECIMALS_OF: dict[type, tuple[str, ...]] = {
    cls: tuple(name for name in cls.__struct_fields__ if name in _DECIMAL_FIELDS)
    for cls in schema.INPUT_TYPES
}

_decoder = msgspec.json.Decoder(schema.Input)  # built once (strict)
_untyped = msgspec.json.Decoder()
_AT_FIELD = re.compile(r" - at `\$\.([^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(.*)`")
_UNKNOWN = re.compile(r"^Object contains unknown field `(.*)`")


class _RepeatedKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


class _NotJson(Exception):
    pass


def _object_pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _RepeatedKey(key)
            seen.add(key)
    return obj


def _refuse_constant(name: str) -> object:
    raise _NotJson(name)  # NaN, Infinity and -Infinity are not JSON


def show_value(value: object, limit: int = 40) -> str:
    """A value quoted for a message: ASCII-safe (no lone surrogates on a terminal), bounded."""
    text = ascii(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_line(text: str) -> schema.Input | Malformed:
    """One input line (without its line end) as a normalised input, or why it is malformed.

    An omitted ``settlement`` takes the schema's default ``false`` (interfaces §1: the same
    content as an explicit false).
    """
    obj = _flat_object(text) if "\\" not in text else None
    if obj is not None:  # the fast path: valid JSON, an object, no repeated key, no escape
        if "seq" in obj:
            return _SEQ_REFUSED
        try:
            inp = _decoder.decode(text)
        except msgspec.ValidationError as error:
            return _from_validation_error(str(error), obj)
    else:
        parsed = _load(text)
        if isinstance(parsed, Malformed):
            return parsed
        obj = parsed
        if "seq" in obj:
            return _SEQ_REFUSED
        refused = _refuse_line_feed(obj)
        if refused is not None:
            return refused
        try:
            inp = msgspec.convert(obj, schema.Input)
        except msgspec.ValidationError as error:
            return _from_validation_error(str(error), obj)

    normal = _normalise(inp)
    if isinstance(normal, Malformed):
        return normal
    refused = _check_ranges(normal) or _check_accounts(normal)
    return refused if refused is not None else normal


# the log numbers events (R3.1); an input line never carries seq
_SEQ_REFUSED = Malformed("unknown_field", "unknown field `seq`: the log assigns seq (R3.3)")


def _flat_object(text: str) -> dict[str, object] | None:
    """The object of a line without backslashes, when it certainly has no repeated key.

    msgspec keeps the last of repeated keys silently. Without a backslash no string holds a
    quote, so every key and every string value is exactly two quotes: a line with more quotes
    than its decoded object accounts for has a repeated key (or nested strings) and is left to
    ``_load``, which finds the repeated key exactly.
    """
    try:
        obj = _untyped.decode(text)
    except msgspec.DecodeError:
        return None
    if type(obj) is not dict:
        return None
    strings = len(obj)
    for value in obj.values():
        if type(value) is str:
            strings += 1
    return obj if text.count('"') == 2 * strings else None


def _load(text: str) -> dict[str, object] | Malformed:
    """The JSON object of a line, refusing repeated keys at any depth (R3.3)."""
    try:
        obj = json.loads(text, object_pairs_hook=_object_pairs, parse_constant=_refuse_constant)
    except _RepeatedKey as repeated:
        return Malformed("duplicate_key", f"repeated key {show_value(repeated.key)} (R3.3)")
    except _NotJson as constant:
        return Malformed("invalid_json", f"not JSON: {constant} is not a JSON value")
    except json.JSONDecodeError as error:
        return Malformed("invalid_json", f"not JSON: {error.msg} at column {error.colno}")
    except RecursionError:
        return Malformed("invalid_json", "not JSON: nesting too deep")
    except ValueError as error:  # an integer literal beyond CPython's digit limit
        return Malformed("invalid_json", f"not JSON: {error}")
    if type(obj) is not dict:
        return Malformed("not_object", f"expected a JSON object, got {_json_kind(obj)} (R3.3)")
    return obj


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str):
        return "a string"
    return "an array"


def _refuse_line_feed(obj: dict[str, object]) -> Malformed | None:
    """The schema's patterns end in ``$``, which also matches before a final line feed, so
    ``"10\\n"`` would pass them; no field of an input may contain one (R1.1, R2.1, R3.2).
    Only an escape can put a line feed into a string of one line (the fast path has none)."""
    for name, value in obj.items():
        code = _PATTERN_CODES.get(name)
        if code is not None and isinstance(value, str) and "\n" in value:
            return Malformed(code, f"`{name}`: expected {_EXPECTED[code]}, got {show_value(value)}")
    return None


def _from_validation_error(message: str, obj: dict[str, object]) -> Malformed:
    """Map a msgspec message to a stable code; the message names the field."""
    at = _AT_FIELD.search(message)
    if at is None:
        missing = _MISSING.match(message)
        if missing is not None:
            return Malformed("missing_field", f"missing field `{_plain(missing.group(1))}` (R3.3)")
        unknown = _UNKNOWN.match(message)
        if unknown is not None:
            return Malformed("unknown_field", f"unknown field `{_plain(unknown.group(1))}` (R3.3)")
        return Malformed("wrong_type", f"{_plain(message)} (R3.3)")
    name = at.group(1)
    value = obj.get(name)
    detail = message[: at.start()]
    if name == "type":
        if detail.startswith("Invalid value"):
            known = ", ".join(sorted(schema.INPUT_TAGS))
            return Malformed(
                "unknown_type", f"`type`: unknown input type {show_value(value)}; one of {known} (R3.3)"
            )
        return Malformed("wrong_type", f"`type`: expected a string, got {_json_kind(value)} (R3.3)")
    if name in _PLACES_FIELDS and type(value) is int:
        # Expected `int` <= 18; the JSON decoder reads an integer beyond 64 bits as a float,
        # so the value itself decides, and both paths of parse_line agree.
        return Malformed(
            "out_of_range", f"`{name}`: {show_value(value)} is not in 0 to 18 (R4.2, R4.3)"
        )
    if ", got `" in detail:  # Expected `str`, got `int`
        expected = detail[: detail.index(", got `")]
        return Malformed("wrong_type", f"`{name}`: {expected}, got {_json_kind(value)} (R3.3)")
    code = _PATTERN_CODES.get(name, "wrong_type")
    if code == "bad_account" and isinstance(value, str) and value.startswith("@"):
        return Malformed(
            "system_account",
            f"`{name}`: {show_value(value)} is not a system account; only @insurance, @fees and "
            "@external exist (R2.2)",
        )
    expected = _EXPECTED.get(code, detail)
    return Malformed(code, f"`{name}`: expected {expected}, got {show_value(value)}")


def _plain(text: str) -> str:
    return ascii(text)[1:-1]


def _normalise(inp: schema.Input) -> schema.Input | Malformed:
    """R1.1 normal form of every decimal, R3.2 normal form of ``ts``.

    The schema's patterns (events/schema.py) have already checked the R1.1 form of each
    decimal, so only trailing zeros, a negative zero and the digit bound remain to be seen."""
    changes: dict[str, str] = {}
    for name in _DECIMALS_OF[type(inp)]:
        value = getattr(inp, name)
        normal = value
        if "." in value:
            if value[-1] == "0":
                normal = value.rstrip("0").rstrip(".")
            whole = normal.partition(".")[0]
        else:
            whole = value
        if normal == "-0":  # the pattern passed, so this is a negative zero
            return Malformed("bad_decimal", f"`{name}`: negative zero {show_value(value)} (R1.1)")
        if len(whole) > MAX_INTEGER_DIGITS and len(whole.lstrip("-")) > MAX_INTEGER_DIGITS:
            return Malformed(
                "out_of_range",
                f"`{name}`: more than {MAX_INTEGER_DIGITS} digits before the point (R3.3)",
            )
        if normal != value:
            changes[name] = normal
    ts = normalize_ts(inp.ts)
    if ts is None:  # the form passed: no such date or time (31 February, second 60, ...)
        return Malformed("bad_ts", f"`ts`: {show_value(inp.ts)} is not a date and time (R3.2)")
    if ts != inp.ts:
        changes["ts"] = ts
    return msgspec.structs.replace(inp, **changes) if changes else inp


# --- ranges (R4.2, R4.3, R5.1, R7, R8.1, R9.1) on normalised decimals ------------------------
def _positive(value: str) -> bool:
    return value[0] != "-" and value != "0"


def _below_one(value: str) -> bool:
    """|value| < 1, for a normalised decimal."""
    return value.lstrip("-")[0] == "0"


def _less(a: str, b: str) -> bool:
    a_num, a_den = fraction(a)
    b_num, b_den = fraction(b)
    return a_num * b_den < b_num * a_den


def _out_of_range(name: str, value: str, wanted: str, rule: str) -> Malformed:
    return Malformed("out_of_range", f"`{name}`: {show_value(value)} is not {wanted} ({rule})")


def _fraction_places(name: str, value: str, rule: str) -> Malformed | None:
    if places(value) > MAX_FRACTION_PLACES:
        return Malformed(
            "off_grid",
            f"`{name}`: {show_value(value)} has more than {MAX_FRACTION_PLACES} decimal places "
            f"({rule})",
        )
    return None


_AMOUNT_RULE = {schema.Deposit: "R7.1", schema.Withdrawal: "R7.2", schema.Transfer: "R7.3"}


def _check_ranges(inp: schema.Input) -> Malformed | None:
    kind = type(inp)
    if kind in _AMOUNT_RULE:
        if not _positive(inp.amount):
            return _out_of_range("amount", inp.amount, "> 0", _AMOUNT_RULE[kind])
    elif kind is schema.Trade:
        if not _positive(inp.qty):
            return _out_of_range("qty", inp.qty, "> 0", "R8.1")
        if not _positive(inp.price):
            return _out_of_range("price", inp.price, "> 0", "R8.1")
        for name in ("buyer_fee", "seller_fee"):
            fee = getattr(inp, name)
            if fee[0] == "-":
                return _out_of_range(name, fee, ">= 0", "R8.1")
    elif kind is schema.Price:
        if not _positive(inp.price):
            return _out_of_range("price", inp.price, "> 0", "R5.1")
    elif kind is schema.Asset:
        if inp.haircut[0] == "-" or not _below_one(inp.haircut):
            return _out_of_range("haircut", inp.haircut, "in [0, 1)", "R4.2")
        return _fraction_places("haircut", inp.haircut, "R4.3")
    elif kind is schema.Funding:
        if not _below_one(inp.rate):
            return _out_of_range("rate", inp.rate, "of absolute value < 1", "R9.1")
        return _fraction_places("rate", inp.rate, "R4.3")
    elif kind is schema.Instrument:
        return _check_margin_fractions(inp)
    return None


def _check_margin_fractions(inp: schema.Instrument) -> Malformed | None:
    """R4.3: 0 < LF < MMF < IMF <= 1, each with at most 18 decimal places."""
    imf, mmf, lf = inp.initial_margin, inp.maintenance_margin, inp.liquidation_fee
    for name, value in (("initial_margin", imf), ("maintenance_margin", mmf), ("liquidation_fee", lf)):
        if value[0] == "-" or not (value == "1" or _below_one(value)):
            return _out_of_range(name, value, "in [0, 1]", "R4.3")
        refused = _fraction_places(name, value, "R4.3")
        if refused is not None:
            return refused
    if lf == "0":
        return _out_of_range("liquidation_fee", lf, "> 0", "R4.3")
    if not _less(lf, mmf):
        return Malformed(
            "out_of_range",
            f"`liquidation_fee` {show_value(lf)} must be below `maintenance_margin` "
            f"{show_value(mmf)} (R4.3)",
        )
    if not _less(mmf, imf):
        return Malformed(
            "out_of_range",
            f"`maintenance_margin` {show_value(mmf)} must be below `initial_margin` "
            f"{show_value(imf)} (R4.3)",
        )
    return None


# --- R2.2 system accounts, R7.3 transfer parties ----------------------------------------------
def _system_use(name: str, account: str, allowed: tuple[str, ...], use: str) -> Malformed | None:
    if account[0] == "@" and account not in allowed:
        return Malformed("system_account", f"`{name}`: {account} cannot {use} (R2.2)")
    return None


def _check_accounts(inp: schema.Input) -> Malformed | None:
    kind = type(inp)
    if kind is schema.Deposit:
        return _system_use("account", inp.account, (INSURANCE, FEES), "receive a deposit")
    if kind is schema.Withdrawal:
        return _system_use("account", inp.account, (INSURANCE, FEES), "withdraw")
    if kind is schema.Transfer:
        refused = _system_use("from", inp.from_, (), "send a transfer") or _system_use(
            "to", inp.to, (), "receive a transfer"
        )
        if refused is not None:
            return refused
        if inp.from_ == inp.to:
            return Malformed("same_account", f"`from` and `to` are both {inp.to} (R7.3)")
        return None
    if kind is schema.Trade:
        return _system_use("buyer", inp.buyer, (INSURANCE,), "trade") or _system_use(
            "seller", inp.seller, (INSURANCE,), "trade"
        )
    return None
