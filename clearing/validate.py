"""R3.3 checks that depend on the log so far: listings (R1.4, R4.1 to R4.3), grids, ids (R3.4)
and the order of ``ts`` (R3.2).

``parse_line`` (events/parse.py) has already checked everything that needs no state. Here a
file is checked line by line as if every earlier well-formed line of it had been recorded
(interfaces §3.1): a listing earlier in the file makes its asset known to later lines, and an id
used twice in the file is a duplicate when identical and malformed otherwise.

Account existence is not checked here: naming an account that does not exist is a rejection
(R2.3), decided by the engine, not a malformed input.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Literal

from events import schema as s
from events.canonical import content_digest
from events.numbers import places
from events.parse import Malformed, parse_line, show_value
from events.timestamps import parse_ts
from projections.state import AssetInfo, InstrumentInfo, LedgerState

__all__ = [
    "Listings",
    "FileChecker",
    "Checked",
    "check_input",
    "check_lines",
    "split_file",
]

Checked = s.Input | Literal["duplicate"]

_BOM = b"\xef\xbb\xbf"
_JSON_WHITESPACE = " \t\r\n"


@dataclasses.dataclass(slots=True)
class Listings:
    """What is listed at a point of the log: assets, instruments, the settlement asset and S.

    Copy on write: ``apply`` puts new ``AssetInfo``/``InstrumentInfo`` objects into its own
    dicts and never mutates one it was given, so a ``Listings`` made from a state can be
    thrown away (a file with a malformed line) without touching that state.
    """

    assets: dict[str, AssetInfo] = dataclasses.field(default_factory=dict)
    instruments: dict[str, InstrumentInfo] = dataclasses.field(default_factory=dict)
    settlement: str | None = None  # R4.1
    scale: int = 0  # S (R1.2)

    @classmethod
    def from_state(cls, state: LedgerState) -> Listings:
        return cls(dict(state.assets), dict(state.instruments), state.settlement, state.scale)

    def copy(self) -> Listings:
        return Listings(dict(self.assets), dict(self.instruments), self.settlement, self.scale)

    @property
    def is_empty(self) -> bool:
        """Nothing listed yet: the next input is the first of the ledger (R4.1)."""
        return not self.assets

    def apply(self, inp: s.Input) -> None:
        """Record a well-formed listing (checked by ``check_input``); other inputs change nothing."""
        if type(inp) is s.Asset:
            known = self.assets.get(inp.asset)
            if known is not None:  # R4.2: a re-listing changes only the haircut
                self.assets[inp.asset] = AssetInfo(
                    known.asset, known.decimals, known.price_decimals, inp.haircut, known.settlement
                )
                return
            self.assets[inp.asset] = AssetInfo(
                inp.asset, inp.decimals, inp.price_decimals, inp.haircut, inp.settlement
            )
            if inp.settlement:
                self.settlement = inp.asset
                self.scale = inp.decimals
        elif type(inp) is s.Instrument:
            known = self.instruments.get(inp.instrument)
            if known is not None:  # R4.3: a re-listing changes only IMF, MMF and LF
                info = dataclasses.replace(
                    known,
                    initial_margin=inp.initial_margin,
                    maintenance_margin=inp.maintenance_margin,
                    liquidation_fee=inp.liquidation_fee,
                )
            else:
                underlying = self.assets[inp.underlying]
                info = InstrumentInfo(
                    inp.instrument,
                    inp.underlying,
                    inp.qty_decimals,
                    inp.initial_margin,
                    inp.maintenance_margin,
                    inp.liquidation_fee,
                    notional_scale=10
                    ** (self.scale - inp.qty_decimals - underlying.price_decimals),
                )
            info.set_fractions()
            self.instruments[inp.instrument] = info


# --- check_input --------------------------------------------------------------------------
def _bad_listing(message: str) -> Malformed:
    return Malformed("bad_listing", message)


def _off_grid(name: str, value: str, decimals: int, grid: str) -> Malformed | None:
    """R1.4: a value on the 10^-decimals grid (the value is normalised, R1.1)."""
    if places(value) > decimals:
        return Malformed(
            "off_grid",
            f"`{name}`: {show_value(value)} is not a multiple of 10^-{decimals} ({grid}, R1.4)",
        )
    return None


def _asset_of(listings: Listings, asset: str) -> AssetInfo | Malformed:
    info = listings.assets.get(asset)
    if info is None:
        return Malformed("unknown_asset", f"`asset`: {asset} is not listed (R3.3)")
    return info


def _instrument_of(listings: Listings, instrument: str) -> InstrumentInfo | Malformed:
    info = listings.instruments.get(instrument)
    if info is None:
        return Malformed("unknown_instrument", f"`instrument`: {instrument} is not listed (R3.3)")
    return info


def check_input(inp: s.Input, listings: Listings) -> Malformed | None:
    """R1.4, R4.1 to R4.3 and the listing of every asset and instrument an input names."""
    kind = type(inp)
    if listings.is_empty and not (kind is s.Asset and inp.settlement):
        return _bad_listing("the first input of a ledger must list the settlement asset (R4.1)")
    return _CHECKS[kind](inp, listings)


def _check_asset(inp: s.Asset, listings: Listings) -> Malformed | None:
    known = listings.assets.get(inp.asset)
    if known is None:
        if inp.settlement:
            if listings.settlement is not None:
                return _bad_listing(
                    f"`settlement`: {listings.settlement} is already the settlement asset (R4.1)"
                )
            if inp.haircut != "0":
                return _bad_listing("`haircut`: the settlement asset has haircut 0 (R4.1)")
        return None
    for name in ("decimals", "price_decimals", "settlement"):
        if getattr(inp, name) != getattr(known, name):
            return _bad_listing(
                f"`{name}`: re-listing {inp.asset} may change only `haircut`, "
                f"not {name} {getattr(known, name)!r} (R4.2)"
            )
    if known.settlement and inp.haircut != known.haircut:
        return _bad_listing(
            f"`haircut`: the settlement asset {inp.asset} can be re-listed only unchanged (R4.1, R4.2)"
        )
    return None


def _check_instrument(inp: s.Instrument, listings: Listings) -> Malformed | None:
    known = listings.instruments.get(inp.instrument)
    if known is not None:
        for name in ("underlying", "qty_decimals"):
            if getattr(inp, name) != getattr(known, name):
                return _bad_listing(
                    f"`{name}`: re-listing {inp.instrument} may change only IMF, MMF and LF, "
                    f"not {name} {getattr(known, name)!r} (R4.3)"
                )
        return None
    underlying = listings.assets.get(inp.underlying)
    if underlying is None:
        return Malformed("unknown_asset", f"`underlying`: {inp.underlying} is not listed (R4.3)")
    if underlying.settlement:
        return _bad_listing(
            f"`underlying`: {inp.underlying} is the settlement asset; the underlying is a "
            "non-settlement asset (R4.3)"
        )
    if inp.qty_decimals + underlying.price_decimals > listings.scale:
        return _bad_listing(
            f"`qty_decimals`: {inp.qty_decimals} + price_decimals of {inp.underlying} "
            f"{underlying.price_decimals} > S {listings.scale} (R1.4)"
        )
    return None


def _check_price(inp: s.Price, listings: Listings) -> Malformed | None:
    info = _asset_of(listings, inp.asset)
    if isinstance(info, Malformed):
        return info
    if info.settlement:
        return _bad_listing(f"`asset`: {inp.asset} is the settlement asset, its price is 1 (R4.1)")
    return _off_grid("price", inp.price, info.price_decimals, f"price_decimals of {inp.asset}")


def _check_movement(
    inp: s.Deposit | s.Withdrawal | s.Transfer, listings: Listings
) -> Malformed | None:
    info = _asset_of(listings, inp.asset)
    if isinstance(info, Malformed):
        return info
    return _off_grid("amount", inp.amount, info.decimals, f"decimals of {inp.asset}")


def _check_trade(inp: s.Trade, listings: Listings) -> Malformed | None:
    info = _instrument_of(listings, inp.instrument)
    if isinstance(info, Malformed):
        return info
    price_decimals = listings.assets[info.underlying].price_decimals
    return (
        _off_grid("qty", inp.qty, info.qty_decimals, f"qty_decimals of {inp.instrument}")
        or _off_grid("price", inp.price, price_decimals, f"price_decimals of {info.underlying}")
        or _off_grid("buyer_fee", inp.buyer_fee, listings.scale, "the settlement grid S")
        or _off_grid("seller_fee", inp.seller_fee, listings.scale, "the settlement grid S")
    )


def _check_funding(inp: s.Funding, listings: Listings) -> Malformed | None:
    info = _instrument_of(listings, inp.instrument)
    return info if isinstance(info, Malformed) else None


_CHECKS = {
    s.Asset: _check_asset,
    s.Instrument: _check_instrument,
    s.Price: _check_price,
    s.Deposit: _check_movement,
    s.Withdrawal: _check_movement,
    s.Transfer: _check_movement,
    s.Trade: _check_trade,
    s.Funding: _check_funding,
}


# --- a file -------------------------------------------------------------------------------
class FileChecker:
    """Checks the inputs of one file in order (interfaces §3.1, R3.3, R3.4).

    ``recorded`` maps the ids already in the log (at least those the file uses) to their
    content digest (``canonical.content_digest``); the caller queries its store for them, so
    this class needs no store. ``last_ts_us`` is the log's last ``ts`` in microseconds, or None
    for an empty log. A well-formed line updates ``listings``, the last ``ts`` and the ids seen;
    a malformed line and a duplicate change nothing.
    """

    def __init__(
        self, listings: Listings, last_ts_us: int | None, recorded: dict[str, bytes]
    ) -> None:
        self.listings = listings
        self.last_ts_us = last_ts_us
        self.recorded = recorded
        self.seen: dict[str, bytes] = {}  # ids of this file's well-formed lines

    @classmethod
    def for_state(cls, state: LedgerState, recorded: dict[str, bytes]) -> FileChecker:
        """A checker continuing ``state`` (its listings copied, the state left untouched)."""
        last_ts_us = state.ts_us if state.ts is not None else None
        return cls(Listings.from_state(state), last_ts_us, recorded)

    def check(self, inp: s.Input) -> Malformed | Literal["duplicate"] | None:
        """None: to be appended. "duplicate": skipped and counted (R3.4). Else why malformed."""
        digest = content_digest(inp)
        earlier = self.seen.get(inp.id)
        if earlier is None:
            earlier = self.recorded.get(inp.id)
        if earlier is not None:
            if earlier == digest:
                return "duplicate"  # R3.4: whatever its ts, no other check
            return Malformed(
                "id_conflict", f"`id`: {inp.id!r} is already recorded with other content (R3.4)"
            )
        ts_us = parse_ts(inp.ts)
        assert ts_us is not None, "parse_line normalised ts"
        if self.last_ts_us is not None and ts_us < self.last_ts_us:
            return Malformed(
                "ts_regression", f"`ts`: {inp.ts} is earlier than the log's last ts (R3.2, R3.3)"
            )
        refused = check_input(inp, self.listings)
        if refused is not None:
            return refused
        self.listings.apply(inp)
        self.last_ts_us = ts_us
        self.seen[inp.id] = digest
        return None


def content_lines(lines: Iterable[str | Malformed]) -> Iterable[tuple[int, str | Malformed]]:
    """The lines that hold an input, with their 1-based physical line numbers (interfaces §1):
    a line may end in ``\n`` or ``\r\n``; empty and whitespace-only lines (JSON whitespace)
    and lines whose first character is ``#`` are skipped."""
    for number, line in enumerate(lines, start=1):
        if isinstance(line, Malformed):  # not UTF-8 (split_file)
            yield number, line
            continue
        if line.endswith("\n"):
            line = line[:-1]
        if line.endswith("\r"):
            line = line[:-1]
        if not line.strip(_JSON_WHITESPACE) or line[0] == "#":
            continue
        yield number, line


def check_lines(
    lines: Iterable[str],
    listings: Listings,
    last_ts_us: int | None,
    recorded: dict[str, bytes],
) -> tuple[list[tuple[int, Checked]], list[tuple[int, Malformed]]]:
    """Check the physical lines of one file (interfaces §1, §3.1).

    Returns the well-formed lines, each the input to append or "duplicate", and the malformed
    lines, both with 1-based physical line numbers (comments and empty lines count). Empty
    and whitespace-only lines (JSON whitespace) and lines whose first character is ``#`` are
    ignored. A line may end in ``\\n`` or ``\\r\\n``. ``listings`` is updated as the file's
    listings are checked; pass a copy to keep it.
    """
    checker = FileChecker(listings, last_ts_us, recorded)
    accepted: list[tuple[int, Checked]] = []
    malformed: list[tuple[int, Malformed]] = []
    for number, line in content_lines(lines):
        parsed = line if isinstance(line, Malformed) else parse_line(line)
        if isinstance(parsed, Malformed):
            malformed.append((number, parsed))
            continue
        outcome = checker.check(parsed)
        if isinstance(outcome, Malformed):
            malformed.append((number, outcome))
        else:
            accepted.append((number, parsed if outcome is None else outcome))
    return accepted, malformed


def split_file(data: bytes) -> list[str | Malformed] | Malformed:
    """A file's physical lines, split on ``\n`` only (a ``\r`` before it is left for
    ``content_lines``). A byte-order mark at the start (interfaces §1) refuses the whole file;
    a line that is not UTF-8 is malformed on its own line, so the others are still checked."""
    if data.startswith(_BOM):
        return Malformed("bom", "the file starts with a byte-order mark (interfaces §1)")
    lines: list[str | Malformed] = []
    for raw in data.split(b"\n"):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as error:
            lines.append(Malformed("invalid_json", f"not UTF-8 at byte {error.start} ({error.reason})"))
    return lines
