"""R3.3 structural checks of one input line (events/parse.py), no ledger state needed."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events import canonical
from events import schema as s
from events.parse import CODES, MAX_INTEGER_DIGITS, Malformed, parse_line
from tests.test_validate import EXAMPLE_LINES

TS = "2026-03-01T00:00:05Z"

BASE: dict[str, dict[str, object]] = {
    "asset": {"id": "a2", "ts": TS, "type": "asset", "asset": "BTC", "decimals": 8,
              "price_decimals": 2, "haircut": "0.1"},
    "instrument": {"id": "i1", "ts": TS, "type": "instrument", "instrument": "BTC-PERP",
                   "underlying": "BTC", "qty_decimals": 4, "initial_margin": "0.1",
                   "maintenance_margin": "0.05", "liquidation_fee": "0.01"},
    "price": {"id": "p1", "ts": TS, "type": "price", "asset": "BTC", "price": "60000"},
    "deposit": {"id": "d1", "ts": TS, "type": "deposit", "account": "alice", "asset": "USD",
                "amount": "10000"},
    "withdrawal": {"id": "w1", "ts": TS, "type": "withdrawal", "account": "alice",
                   "asset": "USD", "amount": "100"},
    "transfer": {"id": "x1", "ts": TS, "type": "transfer", "from": "alice", "to": "alice/iso",
                 "asset": "USD", "amount": "500"},
    "trade": {"id": "t1", "ts": TS, "type": "trade", "instrument": "BTC-PERP", "buyer": "alice",
              "seller": "bob", "qty": "0.5", "price": "60010.5", "buyer_fee": "3",
              "seller_fee": "1.5"},
    "funding": {"id": "f1", "ts": TS, "type": "funding", "instrument": "BTC-PERP",
                "rate": "0.0001"},
}


def line(kind: str, drop: tuple[str, ...] = (), **changes: object) -> str:
    """A compact JSON line of ``kind`` with some fields changed (``from_`` for ``from``)."""
    obj = {k: v for k, v in BASE[kind].items() if k not in drop}
    for key, value in changes.items():
        obj["from" if key == "from_" else key] = value
    return json.dumps(obj, separators=(",", ":"))


def parsed(text: str) -> s.Input:
    result = parse_line(text)
    assert not isinstance(result, Malformed), result
    return result


def slow(text: str) -> str:
    """The same line through the escape-aware path: `"ts"` spelled with a JSON escape."""
    return text.replace('"ts":', '"\\u0074s":', 1)


# (case, line, code, field the message names or None); each rule number in the case name
MALFORMED = [
    # not a JSON object, repeated key (R3.3)
    ("R3.3 not JSON", '{"id":', "invalid_json", None),
    ("R3.3 NaN is not JSON", line("asset", decimals=0).replace(":0,", ":NaN,", 1), "invalid_json", None),
    ("R3.3 array", "[1, 2]", "not_object", None),
    ("R3.3 string", '"deposit"', "not_object", None),
    ("R3.3 number", "12", "not_object", None),
    ("R3.3 null", "null", "not_object", None),
    ("R3.3 repeated key same value", line("deposit")[:-1] + ',"amount":"10000"}', "duplicate_key", "amount"),
    ("R3.3 repeated key other value", '{"id":"d1","id":"d2",' + line("deposit")[11:], "duplicate_key", "id"),
    ("R3.3 repeated key with escapes", line("deposit")[:-1] + ',"\\u0069d":"d1"}', "duplicate_key", "id"),
    # unknown type, missing and extra fields
    ("R3.3 unknown type", line("deposit", type="credit"), "unknown_type", "type"),
    ("R3.3 decision type as input", line("deposit", type="rejected"), "unknown_type", "type"),
    ("R3.3 type not a string", line("deposit", type=5), "wrong_type", "type"),
    ("R3.3 missing type", line("deposit", drop=("type",)), "missing_field", "type"),
    ("R3.3 missing amount", line("deposit", drop=("amount",)), "missing_field", "amount"),
    ("R3.3 missing id", line("trade", drop=("id",)), "missing_field", "id"),
    ("R3.3 missing from", line("transfer", drop=("from",)), "missing_field", "from"),
    ("R3.3 extra field", line("deposit", z=1), "unknown_field", "z"),
    ("R3.3 seq is unknown in an input", line("deposit", seq=1), "unknown_field", "seq"),
    ("R3.3 from_ is not the field name", line("transfer", drop=("from",), from_x="alice"), "unknown_field", None),
    # wrong types
    ("R3.3 number for a decimal", line("deposit", amount=10), "wrong_type", "amount"),
    ("R3.3 float for a decimal", line("deposit", amount=10.5), "wrong_type", "amount"),
    ("R3.3 null for a decimal", line("trade", qty=None), "wrong_type", "qty"),
    ("R3.3 bool for decimals", line("asset", decimals=True), "wrong_type", "decimals"),
    ("R3.3 string for decimals", line("asset", decimals="8"), "wrong_type", "decimals"),
    ("R3.3 float for qty_decimals", line("instrument", qty_decimals=4.0), "wrong_type", "qty_decimals"),
    ("R3.3 number for settlement", line("asset", settlement=1), "wrong_type", "settlement"),
    ("R3.3 number for an account", line("deposit", account=7), "wrong_type", "account"),
    ("R3.3 object for an id", line("deposit", id={"a": 1}), "wrong_type", "id"),
    # R1.1 decimal forms
    ("R1.1 exponent", line("deposit", amount="1e3"), "bad_decimal", "amount"),
    ("R1.1 leading zero", line("deposit", amount="01.5"), "bad_decimal", "amount"),
    ("R1.1 no digit before the point", line("deposit", amount=".5"), "bad_decimal", "amount"),
    ("R1.1 plus sign", line("deposit", amount="+1"), "bad_decimal", "amount"),
    ("R1.1 trailing point", line("deposit", amount="1."), "bad_decimal", "amount"),
    ("R1.1 negative zero", line("funding", rate="-0"), "bad_decimal", "rate"),
    ("R1.1 negative zero with places", line("funding", rate="-0.00"), "bad_decimal", "rate"),
    ("R1.1 comma", line("deposit", amount="1,5"), "bad_decimal", "amount"),
    ("R1.1 space", line("deposit", amount=" 1"), "bad_decimal", "amount"),
    ("R1.1 empty", line("deposit", amount=""), "bad_decimal", "amount"),
    ("R1.1 trailing line feed", line("deposit", amount="10\n"), "bad_decimal", "amount"),
    ("R1.1 too many digits", line("deposit", amount="1" * (MAX_INTEGER_DIGITS + 1)), "out_of_range", "amount"),
    # R3.2 timestamps
    ("R3.2 lowercase t", line("deposit", ts="2026-03-01t00:00:05Z"), "bad_ts", "ts"),
    ("R3.2 lowercase z", line("deposit", ts="2026-03-01T00:00:05z"), "bad_ts", "ts"),
    ("R3.2 offset", line("deposit", ts="2026-03-01T00:00:05+00:00"), "bad_ts", "ts"),
    ("R3.2 seven fraction digits", line("deposit", ts="2026-03-01T00:00:05.1234567Z"), "bad_ts", "ts"),
    ("R3.2 leap second", line("deposit", ts="2016-12-31T23:59:60Z"), "bad_ts", "ts"),
    ("R3.2 30 February", line("deposit", ts="2024-02-30T00:00:00Z"), "bad_ts", "ts"),
    ("R3.2 month 13", line("deposit", ts="2026-13-01T00:00:00Z"), "bad_ts", "ts"),
    ("R3.2 no seconds", line("deposit", ts="2026-03-01T00:00Z"), "bad_ts", "ts"),
    ("R3.2 space for T", line("deposit", ts="2026-03-01 00:00:05Z"), "bad_ts", "ts"),
    ("R3.2 empty fraction", line("deposit", ts="2026-03-01T00:00:05.Z"), "bad_ts", "ts"),
    ("R3.2 trailing line feed", line("deposit", ts="2026-03-01T00:00:05.5Z\n"), "bad_ts", "ts"),
    ("R3.2 number", line("deposit", ts=1772323205), "wrong_type", "ts"),
    # R3.2 ids
    ("R3.2 empty id", line("deposit", id=""), "bad_id", "id"),
    ("R3.2 id of 129 characters", line("deposit", id="x" * 129), "bad_id", "id"),
    ("R3.2 id with a tab", line("deposit", id="d\t1"), "bad_id", "id"),
    ("R3.2 id with a non-ASCII letter", line("deposit", id="d\u00e91"), "bad_id", "id"),
    ("R3.2 id with DEL", line("deposit", id="d\x7f"), "bad_id", "id"),
    # R2.1 account, asset and instrument ids
    ("R2.1 account of 65 characters", line("deposit", account="a" * 65), "bad_account", "account"),
    ("R2.1 empty account", line("deposit", account=""), "bad_account", "account"),
    ("R2.1 account with a space", line("deposit", account="al ice"), "bad_account", "account"),
    ("R2.1 account with @ inside", line("deposit", account="al@ice"), "bad_account", "account"),
    ("R2.1 account with a non-ASCII letter", line("deposit", account="b\u00f6b"), "bad_account", "account"),
    ("R2.1 buyer with a plus", line("trade", buyer="a+b"), "bad_account", "buyer"),
    ("R2.1 asset with a space", line("deposit", asset="U SD"), "bad_symbol", "asset"),
    ("R2.1 asset starting with @", line("price", asset="@BTC"), "bad_symbol", "asset"),
    ("R2.1 instrument of 65 characters", line("funding", instrument="I" * 65), "bad_symbol", "instrument"),
    ("R2.1 underlying empty", line("instrument", underlying=""), "bad_symbol", "underlying"),
    # R2.2 system accounts
    ("R2.2 deposit to @external", line("deposit", account="@external"), "system_account", "account"),
    ("R2.2 withdrawal from @external", line("withdrawal", account="@external"), "system_account", "account"),
    ("R2.2 transfer from @insurance", line("transfer", from_="@insurance"), "system_account", "from"),
    ("R2.2 transfer from @fees", line("transfer", from_="@fees"), "system_account", "from"),
    ("R2.2 transfer to @insurance", line("transfer", to="@insurance"), "system_account", "to"),
    ("R2.2 transfer to @external", line("transfer", to="@external"), "system_account", "to"),
    ("R2.2 buyer @fees", line("trade", buyer="@fees"), "system_account", "buyer"),
    ("R2.2 seller @fees", line("trade", seller="@fees"), "system_account", "seller"),
    ("R2.2 buyer @external", line("trade", buyer="@external"), "system_account", "buyer"),
    ("R2.2 seller @external", line("trade", seller="@external"), "system_account", "seller"),
    ("R2.2 other @ name in a deposit", line("deposit", account="@treasury"), "system_account", "account"),
    ("R2.2 other @ name in a trade", line("trade", seller="@Insurance"), "system_account", "seller"),
    ("R2.2 bare @", line("withdrawal", account="@"), "system_account", "account"),
    # R7.3 transfer parties
    ("R7.3 transfer to itself", line("transfer", to="alice"), "same_account", "from"),
    # ranges: R4.2, R4.3, R5.1, R7, R8.1, R9.1
    ("R4.2 decimals 19", line("asset", decimals=19), "out_of_range", "decimals"),
    ("R4.2 price_decimals -1", line("asset", price_decimals=-1), "out_of_range", "price_decimals"),
    ("R4.3 qty_decimals 19", line("instrument", qty_decimals=19), "out_of_range", "qty_decimals"),
    ("R4.2 haircut 1", line("asset", haircut="1"), "out_of_range", "haircut"),
    ("R4.2 haircut 1.5", line("asset", haircut="1.5"), "out_of_range", "haircut"),
    ("R4.2 haircut negative", line("asset", haircut="-0.1"), "out_of_range", "haircut"),
    ("R4.3 haircut of 19 places", line("asset", haircut="0." + "0" * 18 + "1"), "off_grid", "haircut"),
    ("R4.3 IMF above 1", line("instrument", initial_margin="1.01"), "out_of_range", "initial_margin"),
    ("R4.3 LF 0", line("instrument", liquidation_fee="0"), "out_of_range", "liquidation_fee"),
    ("R4.3 LF negative", line("instrument", liquidation_fee="-0.01"), "out_of_range", "liquidation_fee"),
    ("R4.3 LF equal to MMF", line("instrument", liquidation_fee="0.05"), "out_of_range", "liquidation_fee"),
    ("R4.3 LF above MMF", line("instrument", liquidation_fee="0.06"), "out_of_range", "liquidation_fee"),
    ("R4.3 MMF equal to IMF", line("instrument", maintenance_margin="0.1"), "out_of_range", "maintenance_margin"),
    ("R4.3 MMF above IMF", line("instrument", maintenance_margin="0.2"), "out_of_range", "maintenance_margin"),
    ("R4.3 IMF of 19 places", line("instrument", initial_margin="0.1" + "0" * 17 + "1"), "off_grid", "initial_margin"),
    ("R5.1 price 0", line("price", price="0"), "out_of_range", "price"),
    ("R5.1 price negative", line("price", price="-1"), "out_of_range", "price"),
    ("R7.1 deposit 0", line("deposit", amount="0"), "out_of_range", "amount"),
    ("R7.1 deposit negative", line("deposit", amount="-5"), "out_of_range", "amount"),
    ("R7.2 withdrawal 0", line("withdrawal", amount="0.000"), "out_of_range", "amount"),
    ("R7.3 transfer negative", line("transfer", amount="-0.5"), "out_of_range", "amount"),
    ("R8.1 qty 0", line("trade", qty="0"), "out_of_range", "qty"),
    ("R8.1 qty negative", line("trade", qty="-0.5"), "out_of_range", "qty"),
    ("R8.1 trade price 0", line("trade", price="0"), "out_of_range", "price"),
    ("R8.1 buyer_fee negative", line("trade", buyer_fee="-1"), "out_of_range", "buyer_fee"),
    ("R8.1 seller_fee negative", line("trade", seller_fee="-0.01"), "out_of_range", "seller_fee"),
    ("R9.1 rate 1", line("funding", rate="1"), "out_of_range", "rate"),
    ("R9.1 rate -1", line("funding", rate="-1.0"), "out_of_range", "rate"),
    ("R4.3 rate of 19 places", line("funding", rate="-0." + "0" * 18 + "1"), "off_grid", "rate"),
]


@pytest.mark.parametrize("case, text, code, field", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_line_is_refused_with_its_code_naming_the_field(case, text, code, field):
    """R3.3: every malformed line gives a stable code and a message naming the field."""
    result = parse_line(text)
    assert isinstance(result, Malformed)
    assert result.code == code, result
    assert result.code in CODES
    if field is not None:
        assert f"`{field}`" in result.message or repr(field) in result.message, result.message
    assert result.message.isascii()


@pytest.mark.parametrize("case, text, code, field", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_escaped_spelling_of_a_line_gives_the_same_result(case, text, code, field):
    """The fast path (no backslash) and the escape-aware path agree exactly."""
    assert parse_line(slow(text)) == parse_line(text)


@pytest.mark.parametrize("kind", sorted(BASE))
def test_well_formed_line_of_every_type_parses_to_its_struct(kind):
    inp = parsed(line(kind))
    assert inp.__struct_config__.tag == kind
    assert inp.seq == 0
    assert parse_line(slow(line(kind))) == inp


def test_ten_example_lines_of_interfaces_section_1_all_parse():
    inputs = [parsed(text) for text in EXAMPLE_LINES]
    assert [inp.id for inp in inputs] == ["a1", "a2", "i1", "p1", "d1", "d2", "w1", "x1", "t1", "f1"]
    assert inputs[7].from_ == "alice" and inputs[7].to == "alice/iso"


def test_repeated_key_in_a_nested_object_is_refused():
    """R3.3: a repeated key anywhere is malformed (an unknown field holding an object)."""
    result = parse_line(line("deposit")[:-1] + ',"z":{"a":1,"a":2}}')
    assert isinstance(result, Malformed) and result.code == "duplicate_key"


# --- R1.1 normalisation ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "written, normal",
    [("10.50", "10.5"), ("10.0", "10"), ("100", "100"), ("0.000100", "0.0001"),
     ("7.000000", "7")],
)
def test_trailing_zeros_are_normalised(written, normal):
    """R1.1: "10.50" is 10.5."""
    assert parsed(line("deposit", amount=written)).amount == normal


def test_trailing_zeros_do_not_change_content():
    """R3.4: content is compared on the normalised input."""
    a = parsed(line("trade", qty="0.50", price="60010.50", buyer_fee="3.0", seller_fee="1.50"))
    b = parsed(line("trade"))
    assert a == b
    assert canonical.content(a) == canonical.content(b)


def test_every_decimal_field_is_normalised():
    inp = parsed(line("instrument", initial_margin="0.10", maintenance_margin="0.050",
                      liquidation_fee="0.0100"))
    assert (inp.initial_margin, inp.maintenance_margin, inp.liquidation_fee) == ("0.1", "0.05", "0.01")
    assert parsed(line("asset", haircut="0.000")).haircut == "0"
    assert parsed(line("funding", rate="-0.00010")).rate == "-0.0001"
    assert parsed(line("price", price="60000.00")).price == "60000"


def test_places_limit_applies_to_the_normalised_value():
    """R1.1: grids and decimal-place limits apply to the normalised value."""
    assert parsed(line("asset", haircut="0.5" + "0" * 30)).haircut == "0.5"
    assert parsed(line("asset", haircut="0." + "0" * 17 + "1")).haircut == "0." + "0" * 17 + "1"


def test_largest_integer_part_is_accepted():
    big = "9" * MAX_INTEGER_DIGITS + ".5"
    assert parsed(line("deposit", amount=big)).amount == big


def test_key_order_and_whitespace_do_not_change_content():
    obj = dict(reversed(list(BASE["deposit"].items())))
    spaced = json.dumps(obj, indent=None, separators=(" , ", " : "))
    assert parsed(" \t" + spaced + " ") == parsed(line("deposit"))


def test_omitted_settlement_has_the_content_of_settlement_false():
    """interfaces §1: `settlement` may be omitted on non-settlement assets; it is then false."""
    omitted = parsed(line("asset"))
    explicit = parsed(line("asset", settlement=False))
    assert omitted.settlement is False
    assert canonical.content(omitted) == canonical.content(explicit)
    assert parsed(line("asset", settlement=True)).settlement is True


# --- R3.2 timestamps ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "written, normal",
    [("2026-03-01T00:00:05.000Z", "2026-03-01T00:00:05Z"),
     ("2026-03-01T00:00:05.500Z", "2026-03-01T00:00:05.5Z"),
     ("2026-03-01T00:00:05.000001Z", "2026-03-01T00:00:05.000001Z"),
     ("2024-02-29T23:59:59Z", "2024-02-29T23:59:59Z")],
)
def test_ts_is_written_in_normal_form(written, normal):
    """R3.2, interfaces §1: the fraction has no trailing zeros and is left out when zero."""
    assert parsed(line("deposit", ts=written)).ts == normal


def test_ts_with_zero_fraction_equals_ts_without():
    """R3.2: `…:05Z` equals `…:05.000Z`, so both have the same content."""
    a = parsed(line("deposit", ts="2026-03-01T00:00:05Z"))
    b = parsed(line("deposit", ts="2026-03-01T00:00:05.000Z"))
    assert canonical.content(a) == canonical.content(b)


# --- R3.2 / R2.1 ids at their limits --------------------------------------------------------
def test_id_of_128_printable_characters_is_accepted():
    ident = (" ~!\"#$%&'()*+,-./0123456789:;<=>?@[\\]^_`{|}" * 3)[:128]
    assert len(ident) == 128
    assert parsed(line("deposit", id=ident)).id == ident


def test_account_of_64_characters_with_every_allowed_character_is_accepted():
    account = ("AZaz09._:/-" * 6)[:64]
    assert parsed(line("deposit", account=account)).account == account
    assert parsed(line("transfer", to=account)).to == account


def test_asset_and_instrument_ids_follow_the_account_characters():
    assert parsed(line("price", asset="btc.x:1/a_b-c")).asset == "btc.x:1/a_b-c"
    assert parsed(line("funding", instrument="I" * 64)).instrument == "I" * 64


# --- R2.2 allowed system-account uses -------------------------------------------------------
@pytest.mark.parametrize(
    "kind, field, account",
    [("deposit", "account", "@insurance"), ("deposit", "account", "@fees"),
     ("withdrawal", "account", "@insurance"), ("withdrawal", "account", "@fees"),
     ("trade", "buyer", "@insurance"), ("trade", "seller", "@insurance")],
)
def test_allowed_system_account_use_is_well_formed(kind, field, account):
    """R2.2: a deposit to or withdrawal from @insurance or @fees; @insurance as a trade party."""
    assert getattr(parsed(line(kind, **{field: account})), field) == account


def test_self_trade_is_not_malformed():
    """R8.2: buyer = seller is a rejection (self_trade), decided by the engine."""
    assert parsed(line("trade", seller="alice")).seller == "alice"


# --- ranges at their bounds -----------------------------------------------------------------
def test_range_bounds_that_are_allowed():
    """R4.2 0 <= h < 1; R4.3 LF < MMF < IMF <= 1; R8.1 fees >= 0; R9.1 |rate| < 1."""
    assert parsed(line("asset", haircut="0")).haircut == "0"
    assert parsed(line("asset", haircut="0.999999999999999999")).haircut == "0.999999999999999999"
    inp = parsed(line("instrument", initial_margin="1", maintenance_margin="0.999",
                      liquidation_fee="0.000000000000000001"))
    assert inp.initial_margin == "1"
    assert parsed(line("trade", buyer_fee="0", seller_fee="0")).buyer_fee == "0"
    assert parsed(line("funding", rate="0")).rate == "0"
    assert parsed(line("funding", rate="-0.999")).rate == "-0.999"
    assert parsed(line("asset", decimals=18, price_decimals=0)).decimals == 18


def test_grid_is_not_checked_without_listings():
    """R1.4 grids depend on the listings: clearing/validate.py checks them."""
    assert parsed(line("deposit", amount="0.123456789")).amount == "0.123456789"


# --- robustness: a user's mistake is a returned value, never an exception -------------------

_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12),
    st.sampled_from(["0", "-0", "1.50", "1e3", "@fees", "@x", "2026-03-01T00:00:05.5Z\n",
                     "2024-02-30T00:00:00Z", "9" * 40, "0." + "0" * 30 + "1"]),
)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(sorted(BASE)), changes=st.dictionaries(
    st.sampled_from(sorted({k for base in BASE.values() for k in base} | {"seq", "z", "from"})),
    _SCALARS, max_size=3))
def test_changed_fields_give_an_input_or_a_known_code(kind, changes):
    text = line(kind, **changes)
    result = parse_line(text)
    assert isinstance(result, Malformed) and result.code in CODES or isinstance(result, s.INPUT_TYPES)
    assert parse_line(slow(text)) == result


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=60))
def test_any_text_gives_an_input_or_a_known_code(text):
    result = parse_line(text)
    assert isinstance(result, s.INPUT_TYPES) or result.code in CODES


@pytest.mark.parametrize("value", [10**20, -(10**20), 2**64])
def test_decimals_beyond_64_bits_is_out_of_range_on_both_paths(value):
    """R4.2: decimals 0 to 18; an integer too large for the fast decoder gives the same code."""
    text = line("asset", decimals=value)
    result = parse_line(text)
    assert isinstance(result, Malformed) and result.code == "out_of_range"
    assert parse_line(slow(text)) == result


def test_number_too_large_for_json_is_refused():
    result = parse_line(line("asset")[:-1] + ',"z":' + "1" * 5000 + "}")
    assert isinstance(result, Malformed) and result.code == "invalid_json"
    assert parse_line(line("deposit", amount=0)[:-2] + "1e400}").code == "wrong_type"
