"""R3.3 checks that depend on the log so far (clearing/validate.py): listings R1.4 and R4.1 to
R4.3, grids, ids (R3.4) and ts order (R3.2), line by line through a file (interfaces §3.1)."""

from __future__ import annotations

import json

import msgspec
import pytest

from clearing.validate import FileChecker, Listings, check_input, check_lines, split_file
from events import canonical
from events import schema as s
from events.parse import Malformed, parse_line
from projections.state import LedgerState

# interfaces §1, verbatim
EXAMPLE_LINES = [
    '{"id":"a1","ts":"2026-03-01T00:00:00Z","type":"asset","asset":"USD","decimals":6,"price_decimals":0,"haircut":"0","settlement":true}',
    '{"id":"a2","ts":"2026-03-01T00:00:00Z","type":"asset","asset":"BTC","decimals":8,"price_decimals":2,"haircut":"0.1"}',
    '{"id":"i1","ts":"2026-03-01T00:00:00Z","type":"instrument","instrument":"BTC-PERP","underlying":"BTC","qty_decimals":4,"initial_margin":"0.1","maintenance_margin":"0.05","liquidation_fee":"0.01"}',
    '{"id":"p1","ts":"2026-03-01T00:00:01Z","type":"price","asset":"BTC","price":"60000"}',
    '{"id":"d1","ts":"2026-03-01T00:00:02Z","type":"deposit","account":"alice","asset":"USD","amount":"10000"}',
    '{"id":"d2","ts":"2026-03-01T00:00:02Z","type":"deposit","account":"bob","asset":"USD","amount":"10000"}',
    '{"id":"w1","ts":"2026-03-01T00:00:03Z","type":"withdrawal","account":"alice","asset":"USD","amount":"100"}',
    '{"id":"x1","ts":"2026-03-01T00:00:04Z","type":"transfer","from":"alice","to":"alice/iso","asset":"USD","amount":"500"}',
    '{"id":"t1","ts":"2026-03-01T00:00:05Z","type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"bob","qty":"0.5","price":"60010.5","buyer_fee":"3","seller_fee":"1.5"}',
    '{"id":"f1","ts":"2026-03-01T08:00:00Z","type":"funding","instrument":"BTC-PERP","rate":"0.0001"}',
]
LISTED = EXAMPLE_LINES[:4]  # USD (S = 6), BTC (price_decimals 2), BTC-PERP (qty_decimals 4), a mark
TS = "2026-03-01T00:00:10Z"


def j(type: str, id: str = "n1", ts: str = TS, **fields: object) -> str:
    """An input line; ``from_`` is written ``from``."""
    obj = {"id": id, "ts": ts, "type": type}
    obj.update({("from" if k == "from_" else k): v for k, v in fields.items()})
    return json.dumps(obj, separators=(",", ":"))


def parse(text: str) -> s.Input:
    inp = parse_line(text)
    assert not isinstance(inp, Malformed), inp
    return inp


def after(lines: list[str], recorded: dict[str, bytes] | None = None) -> FileChecker:
    """A checker that has accepted ``lines``, as if they were earlier in the file."""
    checker = FileChecker(Listings(), None, recorded or {})
    for text in lines:
        assert checker.check(parse(text)) is None, text
    return checker


def code(checker: FileChecker, text: str) -> str | None:
    outcome = checker.check(parse(text))
    return outcome.code if isinstance(outcome, Malformed) else outcome


def deposit(asset: str = "USD", amount: str = "1", **kw: object) -> str:
    return j("deposit", account="alice", asset=asset, amount=amount, **kw)


def asset(name: str, decimals: int = 8, price_decimals: int = 2, haircut: str = "0.1", **kw) -> str:
    return j("asset", asset=name, decimals=decimals, price_decimals=price_decimals,
             haircut=haircut, **kw)


def instrument(name: str = "BTC-PERP", underlying: str = "BTC", qty_decimals: int = 4,
               imf: str = "0.1", mmf: str = "0.05", lf: str = "0.01", **kw) -> str:
    return j("instrument", instrument=name, underlying=underlying, qty_decimals=qty_decimals,
             initial_margin=imf, maintenance_margin=mmf, liquidation_fee=lf, **kw)


def trade(qty: str = "0.5", price: str = "60010.5", buyer_fee: str = "3",
          seller_fee: str = "1.5", **kw) -> str:
    fields = dict(instrument="BTC-PERP", buyer="alice", seller="bob", qty=qty, price=price,
                  buyer_fee=buyer_fee, seller_fee=seller_fee)
    fields.update(kw)
    return j("trade", **fields)


# --- interfaces §1 ------------------------------------------------------------------------
def test_ten_example_lines_pass_in_order():
    """interfaces §1: the ten example lines are well formed, each seeing the ones before."""
    listings = Listings()
    accepted, malformed = check_lines(EXAMPLE_LINES, listings, None, {})
    assert malformed == []
    assert [number for number, _ in accepted] == list(range(1, 11))
    assert [inp.id for _, inp in accepted] == ["a1", "a2", "i1", "p1", "d1", "d2", "w1", "x1", "t1", "f1"]
    assert (listings.settlement, listings.scale) == ("USD", 6)
    assert sorted(listings.assets) == ["BTC", "USD"] and list(listings.instruments) == ["BTC-PERP"]
    assert listings.instruments["BTC-PERP"].notional_scale == 1  # 10^(6 - 4 - 2)


# --- R4.1 the settlement asset ------------------------------------------------------------
@pytest.mark.parametrize(
    "first",
    [deposit(), asset("BTC"), asset("USD", 6, 0, "0"), asset("USD", 6, 0, "0.1", settlement=True),
     j("price", asset="USD", price="1")],
    ids=["deposit", "non-settlement asset", "settlement omitted", "haircut 0.1", "price"],
)
def test_first_input_must_list_the_settlement_asset_with_haircut_0(first):
    """R4.1: the first event of a ledger is the settlement asset listing, haircut 0."""
    assert code(FileChecker(Listings(), None, {}), first) == "bad_listing"


def test_settlement_asset_listing_with_zero_haircut_written_with_places_is_first():
    checker = FileChecker(Listings(), None, {})
    assert checker.check(parse(asset("USD", 6, 0, "0.000", settlement=True))) is None
    assert checker.listings.settlement == "USD" and not checker.listings.is_empty


def test_empty_listings_are_empty():
    assert Listings().is_empty
    assert after(LISTED[:1]).listings.is_empty is False


def test_second_settlement_asset_is_refused():
    """R4.1: no second settlement asset can be listed."""
    assert code(after(LISTED), asset("EUR", 6, 0, "0", settlement=True)) == "bad_listing"


def test_settlement_asset_relisted_unchanged_is_well_formed():
    """R4.2: the settlement asset can be re-listed only unchanged."""
    relisting = EXAMPLE_LINES[0].replace('"a1"', '"a9"').replace("00:00:00Z", "00:00:09Z")
    assert code(after(LISTED), relisting) is None


@pytest.mark.parametrize(
    "relisting",
    [asset("USD", 6, 0, "0.1", settlement=True), asset("USD", 6, 0, "0"),
     asset("USD", 2, 0, "0", settlement=True), asset("USD", 6, 2, "0", settlement=True)],
    ids=["haircut", "settlement false", "decimals", "price_decimals"],
)
def test_settlement_asset_relisted_with_a_change_is_refused(relisting):
    """R4.1, R4.2."""
    assert code(after(LISTED), relisting) == "bad_listing"


def test_price_naming_the_settlement_asset_is_refused():
    """R4.1: no price event names the settlement asset."""
    assert code(after(LISTED), j("price", asset="USD", price="1")) == "bad_listing"


# --- R4.2 asset re-listing -----------------------------------------------------------------
def test_asset_relisting_may_change_the_haircut():
    """R4.2, R4.4: a re-listing changes the haircut."""
    checker = after(LISTED)
    assert code(checker, asset("BTC", haircut="0.25")) is None
    info = checker.listings.assets["BTC"]
    assert (info.haircut, info.haircut_num, info.haircut_den) == ("0.25", 25, 100)
    assert (info.decimals, info.price_decimals, info.settlement) == (8, 2, False)


@pytest.mark.parametrize(
    "relisting",
    [asset("BTC", decimals=6), asset("BTC", price_decimals=1), asset("BTC", settlement=True)],
    ids=["decimals", "price_decimals", "settlement"],
)
def test_asset_relisting_that_changes_more_than_the_haircut_is_refused(relisting):
    """R4.2: a re-listing that changes decimals, price_decimals or settlement is malformed."""
    checker = after(LISTED)
    assert code(checker, relisting) == "bad_listing"
    assert checker.listings.assets["BTC"].decimals == 8


# --- R4.3 instruments and R1.4 ---------------------------------------------------------------
def test_instrument_on_an_unlisted_underlying_is_refused():
    """R4.3: the underlying is a listed asset."""
    assert code(after(LISTED), instrument("ETH-PERP", "ETH")) == "unknown_asset"


def test_instrument_on_the_settlement_asset_is_refused():
    """R4.3: the underlying is a non-settlement asset."""
    assert code(after(LISTED), instrument("USD-PERP", "USD", qty_decimals=0)) == "bad_listing"


def test_instrument_whose_qty_times_price_is_finer_than_the_settlement_grid_is_refused():
    """R1.4: qty_decimals + price_decimals(underlying) > S is malformed."""
    checker = after(LISTED[:2])  # BTC price_decimals 2, S = 6
    assert code(checker, instrument("BTC-FINE", qty_decimals=5)) == "bad_listing"
    assert code(checker, instrument("BTC-EXACT", qty_decimals=4)) is None


def test_instrument_relisting_may_change_the_margin_fractions():
    """R4.3: re-listing may change IMF, MMF and LF."""
    checker = after(LISTED)
    assert code(checker, instrument(imf="0.2", mmf="0.1", lf="0.02")) is None
    info = checker.listings.instruments["BTC-PERP"]
    assert (info.initial_margin, info.maintenance_margin, info.liquidation_fee) == ("0.2", "0.1", "0.02")
    assert (info.imf_num, info.imf_den, info.lf_num, info.lf_den) == (2, 10, 2, 100)
    assert (info.underlying, info.qty_decimals, info.notional_scale) == ("BTC", 4, 1)


def test_instrument_relisting_that_changes_qty_decimals_or_underlying_is_refused():
    """R4.3: re-listing may change only IMF, MMF and LF."""
    checker = after(LISTED + [asset("ETH", 18, 2)])
    assert code(checker, instrument(id="r1", qty_decimals=3)) == "bad_listing"
    assert code(checker, instrument(id="r2", underlying="ETH")) == "bad_listing"


# --- listed assets and instruments --------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [deposit("ETH"), j("withdrawal", account="alice", asset="ETH", amount="1"),
     j("transfer", from_="alice", to="bob", asset="ETH", amount="1"),
     j("price", asset="ETH", price="3000")],
    ids=["deposit", "withdrawal", "transfer", "price"],
)
def test_unlisted_asset_is_refused(text):
    """R3.3: an asset not listed at that point of the log."""
    assert code(after(LISTED), text) == "unknown_asset"


@pytest.mark.parametrize(
    "text",
    [trade(instrument="ETH-PERP"), j("funding", instrument="ETH-PERP", rate="0.001")],
    ids=["trade", "funding"],
)
def test_unlisted_instrument_is_refused(text):
    """R3.3: an instrument not listed at that point of the log."""
    assert code(after(LISTED), text) == "unknown_instrument"


def test_listing_earlier_in_the_file_makes_the_asset_known_to_later_lines():
    """interfaces §3.1: every earlier well-formed line counts as recorded."""
    lines = LISTED + [asset("ETH", 18, 2), deposit("ETH", "0.5", id="e1")]
    accepted, malformed = check_lines(lines, Listings(), None, {})
    assert malformed == [] and accepted[-1][1].asset == "ETH"


def test_unknown_account_is_not_malformed():
    """R2.3: naming an account that does not exist is a rejection, not malformed."""
    checker = after(LISTED)
    assert code(checker, j("withdrawal", account="nobody", asset="USD", amount="1")) is None
    assert code(checker, trade(id="t9", buyer="nobody", seller="noone")) is None


# --- R1.4 grids ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        (deposit("USD", "0.0000001"), "off_grid"),  # USD decimals 6
        (deposit("USD", "0.000001"), None),
        (deposit("USD", "1.0000000"), None),  # grids apply to the normalised value (R1.1)
        (deposit("BTC", "0.000000001"), "off_grid"),  # BTC decimals 8
        (deposit("BTC", "0.00000001"), None),
        (j("withdrawal", account="alice", asset="USD", amount="0.5000001"), "off_grid"),
        (j("transfer", from_="alice", to="bob", asset="BTC", amount="1.123456789"), "off_grid"),
        (j("price", asset="BTC", price="60000.001"), "off_grid"),  # BTC price_decimals 2
        (j("price", asset="BTC", price="60000.010"), None),
        (trade(qty="0.00001"), "off_grid"),  # BTC-PERP qty_decimals 4
        (trade(qty="0.0001"), None),
        (trade(price="60010.555"), "off_grid"),  # on the underlying's price grid
        (trade(buyer_fee="0.0000001"), "off_grid"),  # fees on the settlement grid S = 6
        (trade(seller_fee="0.1234567"), "off_grid"),
        (trade(buyer_fee="0.000001", seller_fee="0"), None),
    ],
)
def test_value_off_its_grid_is_refused(text, expected):
    """R1.4: amounts on the asset's decimals, prices on its price_decimals, trade qty on the
    instrument's qty_decimals, trade price on the underlying's price grid, fees on S."""
    assert code(after(LISTED), text) == expected


def test_off_grid_message_names_the_field_and_the_grid():
    outcome = after(LISTED).check(parse(trade(seller_fee="0.1234567")))
    assert isinstance(outcome, Malformed)
    assert "`seller_fee`" in outcome.message and "10^-6" in outcome.message and "R1.4" in outcome.message


def test_check_input_alone_needs_only_the_listings():
    listings = after(LISTED).listings
    assert check_input(parse(deposit("BTC", "1")), listings) is None
    refused = check_input(parse(deposit("XRP", "1")), listings)
    assert refused is not None and refused.code == "unknown_asset" and "XRP" in refused.message


# --- R3.4 ids and duplicates -----------------------------------------------------------------
def recorded_of(lines: list[str]) -> dict[str, bytes]:
    return {inp.id: canonical.content_digest(inp) for inp in map(parse, lines)}


def test_recorded_input_sent_again_is_a_duplicate_whatever_its_spelling():
    """R3.4: identical content is compared on the normalised input: key order, whitespace,
    trailing zeros and the ts spelling do not matter."""
    d1 = EXAMPLE_LINES[4]
    checker = FileChecker(Listings.from_state(folded(EXAMPLE_LINES)), None, recorded_of(EXAMPLE_LINES))
    respelled = ('{ "amount": "10000.00", "asset": "USD", "account": "alice", '
                 '"type": "deposit", "ts": "2026-03-01T00:00:02.000Z", "id": "d1" }')
    assert checker.check(parse(d1)) == "duplicate"
    assert checker.check(parse(respelled)) == "duplicate"


def test_duplicate_with_an_earlier_ts_is_a_duplicate_not_a_ts_regression():
    """R3.3, R3.4: the ts check does not apply to a duplicate."""
    state = folded(EXAMPLE_LINES)
    checker = FileChecker.for_state(state, recorded_of(EXAMPLE_LINES))
    assert checker.last_ts_us == state.ts_us
    assert checker.check(parse(EXAMPLE_LINES[0])) == "duplicate"
    assert code(checker, deposit(id="new", ts="2026-03-01T00:00:02Z")) == "ts_regression"


def test_recorded_id_with_other_content_is_an_id_conflict():
    """R3.3: an id already recorded with different content."""
    checker = FileChecker.for_state(folded(EXAMPLE_LINES), recorded_of(EXAMPLE_LINES))
    outcome = checker.check(parse(EXAMPLE_LINES[4].replace('"10000"', '"10001"')))
    assert isinstance(outcome, Malformed) and outcome.code == "id_conflict"
    assert "d1" in outcome.message


def test_id_used_twice_in_a_file_is_a_duplicate_when_identical():
    """interfaces §3.1: an id used twice in one file is a duplicate when identical..."""
    accepted, malformed = check_lines(LISTED + [deposit(id="d1"), deposit(id="d1", amount="1.0")],
                                      Listings(), None, {})
    assert malformed == []
    assert accepted[-1] == (6, "duplicate")


def test_id_used_twice_in_a_file_with_other_content_is_an_id_conflict():
    """interfaces §3.1: ... and malformed otherwise."""
    accepted, malformed = check_lines(LISTED + [deposit(id="d1"), deposit(id="d1", amount="2")],
                                      Listings(), None, {})
    assert [(n, m.code) for n, m in malformed] == [(6, "id_conflict")]


def test_duplicate_in_a_file_with_an_earlier_ts_is_a_duplicate():
    lines = LISTED + [deposit(id="d1", ts="2026-03-01T00:00:02Z"),
                      deposit(id="d2", ts="2026-03-01T00:00:09Z"),
                      deposit(id="d1", ts="2026-03-01T00:00:02.0Z")]
    accepted, malformed = check_lines(lines, Listings(), None, {})
    assert malformed == [] and accepted[-1] == (7, "duplicate")


def test_a_duplicate_changes_nothing():
    checker = after(LISTED)
    assert checker.check(parse(LISTED[1])) == "duplicate"
    assert checker.check(parse(LISTED[1].replace('"0.1"', '"0.5"'))).code == "id_conflict"
    assert checker.listings.assets["BTC"].haircut == "0.1"


# --- R3.2 ts order -----------------------------------------------------------------------
def test_ts_earlier_than_the_last_ts_is_a_regression():
    """R3.2, R3.3: ts never decreases along the log."""
    checker = after(LISTED + [deposit(id="late", ts="2026-03-01T00:00:09Z")])
    outcome = checker.check(parse(deposit(id="early", ts="2026-03-01T00:00:08.999999Z")))
    assert isinstance(outcome, Malformed) and outcome.code == "ts_regression"
    assert "`ts`" in outcome.message


def test_equal_ts_is_not_a_regression_whatever_its_spelling():
    """R3.2: `…:05Z` equals `…:05.000Z` as an instant; equal ts are ordered by seq."""
    checker = after(LISTED + [deposit(id="a", ts="2026-03-01T00:00:05Z")])
    assert code(checker, deposit(id="b", ts="2026-03-01T00:00:05.000Z")) is None
    assert code(checker, deposit(id="c", ts="2026-03-01T00:00:05Z")) is None


def test_ts_regression_is_against_the_log_before_the_file():
    checker = FileChecker(after(LISTED).listings, 1_772_323_200_000_000 + 3_600_000_000, {})
    assert code(checker, deposit(ts="2026-03-01T00:59:59Z")) == "ts_regression"
    assert code(checker, deposit(ts="2026-03-01T01:00:00Z")) is None


def test_empty_ledger_accepts_any_first_ts():
    """An empty log has no last ts: a ts before 1970 is not a regression."""
    checker = FileChecker.for_state(LedgerState(), {})
    assert checker.last_ts_us is None
    assert code(checker, EXAMPLE_LINES[0].replace("2026-03-01", "1969-12-31")) is None


def test_malformed_line_changes_nothing():
    """interfaces §3.1: only well-formed lines count as recorded."""
    lines = LISTED + [
        asset("ETH", 18, 2, "1"),  # malformed (haircut 1): ETH stays unlisted
        deposit("BTC", "0.000000001", id="m1", ts="2026-03-01T09:00:00Z"),  # off grid
        deposit("ETH", "1", id="m2"),  # unknown_asset
        deposit("USD", "1", id="m1", ts="2026-03-01T00:00:10Z"),  # id and ts of m1 not taken
    ]
    accepted, malformed = check_lines(lines, Listings(), None, {})
    assert [(n, m.code) for n, m in malformed] == [(5, "out_of_range"), (6, "off_grid"), (7, "unknown_asset")]
    assert accepted[-1][0] == 8 and accepted[-1][1].id == "m1"


# --- Listings from a state -----------------------------------------------------------------
def folded(lines: list[str]) -> LedgerState:
    state = LedgerState()
    for seq, inp in enumerate(map(parse, lines), start=1):
        state.apply_input(msgspec.structs.replace(inp, seq=seq))
    return state


def test_listings_from_a_state_leave_the_state_untouched():
    """A checked file that is refused must not change the ledger's listings."""
    state = folded(LISTED)
    listings = Listings.from_state(state)
    assert (listings.settlement, listings.scale) == ("USD", 6)
    checker = FileChecker(listings, state.ts_us, {})
    assert code(checker, asset("BTC", haircut="0.5", id="r1")) is None
    assert code(checker, instrument(imf="0.5", mmf="0.25", lf="0.1", id="r2")) is None
    assert code(checker, asset("ETH", 18, 2, id="r3")) is None
    assert state.assets["BTC"].haircut == "0.1" and "ETH" not in state.assets
    assert state.instruments["BTC-PERP"].initial_margin == "0.1"
    assert listings.assets["BTC"].haircut == "0.5" and "ETH" in listings.assets


def test_listings_from_a_state_check_like_listings_built_from_the_file():
    from_state = FileChecker(Listings.from_state(folded(LISTED)), None, {})
    from_file = after(LISTED)
    texts = [deposit("BTC", "0.000000001"), trade(qty="0.00001"), instrument("X", qty_decimals=5),
             asset("BTC", decimals=2), deposit("ETH"), deposit("BTC", "0.5")]
    codes = [code(from_state, text) for text in texts]
    assert codes == ["off_grid", "off_grid", "bad_listing", "bad_listing", "unknown_asset", None]
    assert [code(from_file, text) for text in texts] == codes


def test_copy_of_listings_is_independent():
    listings = after(LISTED).listings
    copy = listings.copy()
    Listings.apply(copy, parse(asset("ETH", 18, 2)))
    assert "ETH" in copy.assets and "ETH" not in listings.assets


# --- files and lines (interfaces §1, §3.1) -----------------------------------------------------
def test_comments_empty_and_whitespace_lines_are_ignored_and_line_numbers_are_physical():
    lines = ["# listings", LISTED[0], "", "   ", "\t", LISTED[1] + "\r", "#" + LISTED[2], LISTED[2] + "\r\n"]
    accepted, malformed = check_lines(lines, Listings(), None, {})
    assert malformed == []
    assert [(n, inp.id) for n, inp in accepted] == [(2, "a1"), (6, "a2"), (8, "i1")]


def test_hash_after_whitespace_is_not_a_comment():
    """interfaces §1: only a line whose first character is `#` is a comment."""
    accepted, malformed = check_lines(["  # note"], Listings(), None, {})
    assert accepted == [] and [(n, m.code) for n, m in malformed] == [(1, "invalid_json")]


def test_every_malformed_line_is_reported_with_its_line_number():
    lines = LISTED + ["{", "# ok", deposit(amount="1e3"), deposit(id="ok")]
    accepted, malformed = check_lines(lines, Listings(), None, {})
    assert [(n, m.code) for n, m in malformed] == [(5, "invalid_json"), (7, "bad_decimal")]
    assert accepted[-1][0] == 8


def test_split_file_refuses_a_byte_order_mark():
    """interfaces §1: a file must not start with a byte-order mark."""
    refused = split_file(b"\xef\xbb\xbf" + EXAMPLE_LINES[0].encode() + b"\n")
    assert isinstance(refused, Malformed) and refused.code == "bom"


def test_split_file_marks_only_the_line_that_is_not_utf8():
    lines = split_file(EXAMPLE_LINES[0].encode() + b"\n" + b'{"id":"\xff"}\n')
    assert lines[0] == EXAMPLE_LINES[0]
    assert isinstance(lines[1], Malformed) and lines[1].code == "invalid_json"
    assert lines[2] == ""


def test_split_file_accepts_lf_and_crlf_line_ends_and_splits_on_lf_only():
    data = "\r\n".join(LISTED).encode() + b"\r\n# \xe2\x80\xa8 not a line break\n"
    lines = split_file(data)
    assert isinstance(lines, list) and len(lines) == 6 and lines[-1] == ""
    accepted, malformed = check_lines(lines, Listings(), None, {})
    assert malformed == [] and len(accepted) == 4


def test_bom_inside_a_line_is_invalid_json():
    accepted, malformed = check_lines(["\ufeff" + EXAMPLE_LINES[0]], Listings(), None, {})
    assert [m.code for _, m in malformed] == ["invalid_json"]
