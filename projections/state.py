"""The ledger's state and the fold of recorded events into it.

The state holds listings, marks, and each account's cash, collateral balances and positions as
integers in grid units (events/numbers.py). Folding an event is O(1) in the number of accounts:
a price event only stores the mark; valuation (projections/valuation.py) is done lazily, when
asked. Folding recorded history never raises: the log is the truth.

The rules engine (clearing/engine.py) mutates the same state through the same ``apply_*``
methods, so the state folded from the log and the engine's live state cannot drift apart.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterable

from events import schema as s
from events.numbers import fraction, units_of
from events.timestamps import parse_ts

INSURANCE = "@insurance"
FEES = "@fees"
EXTERNAL = "@external"
SYSTEM_ACCOUNTS = (EXTERNAL, FEES, INSURANCE)  # R2.2; in byte order


def is_system(account: str) -> bool:
    return account.startswith("@")


@dataclass(slots=True)
class AssetInfo:
    """R4.2. ``haircut`` is kept as text and as an exact fraction num/den."""

    asset: str
    decimals: int
    price_decimals: int
    haircut: str
    settlement: bool
    haircut_num: int = 0
    haircut_den: int = 1

    def __post_init__(self) -> None:
        self.haircut_num, self.haircut_den = fraction(self.haircut)


@dataclass(slots=True)
class InstrumentInfo:
    """R4.3. Fractions as exact num/den; ``notional_scale`` turns qty units × price units into
    minor units of the settlement asset (exact by R1.4)."""

    instrument: str
    underlying: str
    qty_decimals: int
    initial_margin: str
    maintenance_margin: str
    liquidation_fee: str
    notional_scale: int = 1
    imf_num: int = 0
    imf_den: int = 1
    mmf_num: int = 0
    mmf_den: int = 1
    lf_num: int = 0
    lf_den: int = 1

    def set_fractions(self) -> None:
        self.imf_num, self.imf_den = fraction(self.initial_margin)
        self.mmf_num, self.mmf_den = fraction(self.maintenance_margin)
        self.lf_num, self.lf_den = fraction(self.liquidation_fee)


@dataclass(slots=True)
class Account:
    id: str
    cash: int = 0  # settlement asset, minor units (R6.1; may be negative)
    balances: dict[str, int] = field(default_factory=dict)  # other assets, their units, non-zero
    positions: dict[str, int] = field(default_factory=dict)  # instrument -> signed qty units


class LedgerState:
    """Everything the rules need, and nothing derived that could drift."""

    def __init__(self) -> None:
        self.seq = 0
        self.ts: str | None = None
        self._ts_us = 0
        self._ts_us_of: str | None = None
        self.settlement: str | None = None  # R4.1
        self.scale = 0  # S, decimals of the settlement asset (R1.2)
        self.assets: dict[str, AssetInfo] = {}
        self.instruments: dict[str, InstrumentInfo] = {}
        self.marks: dict[str, int] = {}  # asset -> price in units of its price_decimals
        self.accounts: dict[str, Account] = {}
        # Indexes kept with every move, so that a rule touches only the accounts concerned.
        self.holders: dict[str, set[str]] = {}  # instrument -> accounts with a position
        self.collateral_holders: dict[str, set[str]] = {}  # asset -> accounts with balance > 0
        self.by_underlying: dict[str, list[str]] = {}  # asset -> instruments on it, sorted
        # Accounts whose cash, balances or positions changed since a reader last cleared it
        # (the engine's liquidation screen re-bounds exactly these).
        self.touched: set[str] = set()

    # --- moves (the only mutators of balances and positions) --------------------------------
    def account(self, account_id: str) -> Account:
        acct = self.accounts.get(account_id)
        if acct is None:
            acct = self.accounts[account_id] = Account(account_id)
        return acct

    def move_cash(self, account_id: str, amount: int) -> None:
        self.accounts[account_id].cash += amount
        self.touched.add(account_id)

    def move_asset(self, account_id: str, asset: str, units: int) -> None:
        """Add ``units`` (signed) of ``asset`` to an account's balance."""
        self.touched.add(account_id)
        if asset == self.settlement:
            self.accounts[account_id].cash += units
            return
        balances = self.accounts[account_id].balances
        before = balances.get(asset, 0)
        after = before + units
        if after:
            balances[asset] = after
        else:
            del balances[asset]
        if (before > 0) != (after > 0):
            owners = self.collateral_holders.setdefault(asset, set())
            if after > 0:
                owners.add(account_id)
            else:
                owners.discard(account_id)

    def move_position(self, account_id: str, instrument: str, units: int) -> None:
        self.touched.add(account_id)
        positions = self.accounts[account_id].positions
        before = positions.get(instrument, 0)
        after = before + units
        if after:
            positions[instrument] = after
            if not before:
                self.holders[instrument].add(account_id)
        else:
            del positions[instrument]
            self.holders[instrument].discard(account_id)

    def trade_at(self, account_id: str, instrument: str, units: int, price: int) -> None:
        """Move ``units`` (signed) of a position into an account at ``price`` (units of the
        underlying's price grid), paying units × price from its cash (R8.3, R10.3)."""
        self.move_position(account_id, instrument, units)
        self.accounts[account_id].cash -= units * price * self.instruments[instrument].notional_scale

    # --- the fold ----------------------------------------------------------------------------
    @property
    def ts_us(self) -> int:
        """``ts`` in microseconds, parsed when first asked for (a fold of the log needs it
        only at the end)."""
        if self._ts_us_of != self.ts:
            ts_us = parse_ts(self.ts) if self.ts is not None else 0
            assert ts_us is not None, f"recorded ts {self.ts!r}"
            self._ts_us, self._ts_us_of = ts_us, self.ts
        return self._ts_us

    @ts_us.setter
    def ts_us(self, ts_us: int) -> None:
        self._ts_us, self._ts_us_of = ts_us, self.ts

    def advance(self, seq: int, ts: str) -> None:
        assert seq == self.seq + 1, f"seq {seq} after {self.seq}"
        self.ts = ts
        self.seq = seq
        if seq == 1:  # R2.2: the system accounts exist from the first event
            for system in SYSTEM_ACCOUNTS:
                self.account(system)

    def apply_input(self, inp: s.Input, rejected: bool = False) -> None:
        """Fold a recorded input. A rejected input changes nothing (R3.5)."""
        seq = inp.seq
        if seq != self.seq + 1 or seq == 1:
            self.advance(seq, inp.ts)
        else:  # advance(), inlined for the fold's common case
            self.seq = seq
            self.ts = inp.ts
        if rejected:
            return
        _INPUT_HANDLERS[type(inp)](self, inp)

    def apply_decision(self, dec: s.Decision) -> None:
        self.advance(dec.seq, dec.ts)
        _DECISION_HANDLERS[type(dec)](self, dec)

    # --- input effects (R4, R5, R7, R8) -------------------------------------------------------
    def _asset(self, inp: s.Asset) -> None:
        known = self.assets.get(inp.asset)
        if known is not None:  # R4.2: a re-listing changes only the haircut
            known.haircut = inp.haircut
            known.haircut_num, known.haircut_den = fraction(inp.haircut)
            return
        self.assets[inp.asset] = AssetInfo(
            inp.asset, inp.decimals, inp.price_decimals, inp.haircut, inp.settlement
        )
        if inp.settlement:
            self.settlement = inp.asset
            self.scale = inp.decimals

    def _instrument(self, inp: s.Instrument) -> None:
        known = self.instruments.get(inp.instrument)
        if known is None:
            underlying = self.assets[inp.underlying]
            known = InstrumentInfo(
                inp.instrument,
                inp.underlying,
                inp.qty_decimals,
                inp.initial_margin,
                inp.maintenance_margin,
                inp.liquidation_fee,
                notional_scale=10 ** (self.scale - inp.qty_decimals - underlying.price_decimals),
            )
            self.instruments[inp.instrument] = known
            self.holders[inp.instrument] = set()
            on_asset = self.by_underlying.setdefault(inp.underlying, [])
            on_asset.append(inp.instrument)
            on_asset.sort()
        else:  # R4.3: a re-listing changes only IMF, MMF and LF
            known.initial_margin = inp.initial_margin
            known.maintenance_margin = inp.maintenance_margin
            known.liquidation_fee = inp.liquidation_fee
        known.set_fractions()

    def _price(self, inp: s.Price) -> None:
        self.marks[inp.asset] = units_of(inp.price, self.assets[inp.asset].price_decimals)

    def _deposit(self, inp: s.Deposit) -> None:
        units = units_of(inp.amount, self.assets[inp.asset].decimals)
        self.account(inp.account)
        self.move_asset(EXTERNAL, inp.asset, -units)
        self.move_asset(inp.account, inp.asset, units)

    def _withdrawal(self, inp: s.Withdrawal) -> None:
        units = units_of(inp.amount, self.assets[inp.asset].decimals)
        self.move_asset(inp.account, inp.asset, -units)
        self.move_asset(EXTERNAL, inp.asset, units)

    def _transfer(self, inp: s.Transfer) -> None:
        units = units_of(inp.amount, self.assets[inp.asset].decimals)
        self.account(inp.to)
        self.move_asset(inp.from_, inp.asset, -units)
        self.move_asset(inp.to, inp.asset, units)

    def _trade(self, inp: s.Trade) -> None:
        """R8.3: the buyer pays q × price and its fee, the seller receives q × price and pays
        its fee, @fees receives both fees (the same moves as ``trade_at`` and ``move_cash``)."""
        info = self.instruments[inp.instrument]
        qty = units_of(inp.qty, info.qty_decimals)
        price = units_of(inp.price, self.assets[info.underlying].price_decimals)
        buyer_fee = units_of(inp.buyer_fee, self.scale)
        seller_fee = units_of(inp.seller_fee, self.scale)
        self.move_position(inp.buyer, inp.instrument, qty)
        self.move_position(inp.seller, inp.instrument, -qty)
        cost = qty * price * info.notional_scale
        accounts = self.accounts
        accounts[inp.buyer].cash -= cost + buyer_fee
        accounts[inp.seller].cash += cost - seller_fee
        accounts[FEES].cash += buyer_fee + seller_fee
        self.touched.add(FEES)

    def _funding(self, inp: s.Funding) -> None:
        """R3.6: the payments belong to ``funding_settled``."""

    # --- decision effects (R9, R10) -------------------------------------------------------------
    def _rejected(self, dec: s.Rejected) -> None:
        """R3.5: a rejection changes nothing."""

    def _liquidation(self, dec: s.Liquidation) -> None:
        info = self.instruments[dec.instrument]
        price = units_of(dec.price, self.assets[info.underlying].price_decimals)
        before = units_of(dec.position_before, info.qty_decimals)
        after = units_of(dec.position_after, info.qty_decimals)
        moved = after - before  # toward zero
        self.trade_at(dec.account, dec.instrument, moved, price)
        self.trade_at(INSURANCE, dec.instrument, -moved, price)
        penalty = units_of(dec.penalty, self.scale)
        self.move_cash(dec.account, -penalty)
        self.move_cash(INSURANCE, penalty)

    def _bankruptcy(self, dec: s.Bankruptcy) -> None:
        for seized in dec.seized:
            info = self.assets[seized.asset]
            units = units_of(seized.amount, info.decimals)
            value = units_of(seized.value, self.scale)
            self.move_asset(dec.account, seized.asset, -units)
            self.move_asset(INSURANCE, seized.asset, units)
            self.move_cash(INSURANCE, -value)
            self.move_cash(dec.account, value)
        cover = units_of(dec.cover, self.scale) + units_of(dec.residual, self.scale)
        self.move_cash(INSURANCE, -cover)
        self.move_cash(dec.account, cover)

    def _deleverage(self, dec: s.Deleverage) -> None:
        info = self.instruments[dec.instrument]
        price = units_of(dec.price, self.assets[info.underlying].price_decimals)
        qty = units_of(dec.qty, info.qty_decimals)
        before = units_of(dec.position_before, info.qty_decimals)
        moved = -qty if before > 0 else qty  # the bankrupt position moves toward zero
        self.trade_at(dec.account, dec.instrument, moved, price)
        self.trade_at(dec.counterparty, dec.instrument, -moved, price)
        paid = units_of(dec.paid, self.scale)
        self.move_cash(dec.counterparty, -paid)
        self.move_cash(dec.account, paid)

    def _funding_settled(self, dec: s.FundingSettled) -> None:
        for payment in dec.payments:
            self.move_cash(payment.account, units_of(payment.amount, self.scale))
        self.move_cash(INSURANCE, units_of(dec.dust, self.scale))


_INPUT_HANDLERS = {
    s.Asset: LedgerState._asset,
    s.Instrument: LedgerState._instrument,
    s.Price: LedgerState._price,
    s.Deposit: LedgerState._deposit,
    s.Withdrawal: LedgerState._withdrawal,
    s.Transfer: LedgerState._transfer,
    s.Trade: LedgerState._trade,
    s.Funding: LedgerState._funding,
}
_DECISION_HANDLERS = {
    s.Rejected: LedgerState._rejected,
    s.Liquidation: LedgerState._liquidation,
    s.Bankruptcy: LedgerState._bankruptcy,
    s.Deleverage: LedgerState._deleverage,
    s.FundingSettled: LedgerState._funding_settled,
}


def clone_state(state: LedgerState, listings: bool = True) -> LedgerState:
    """An independent copy of a state, for re-running an input without touching the original.

    Much faster than a snapshot round trip (the re-run of every decision of a long log clones
    thousands of times). Known attributes are copied by hand, any other one by its kind, so the
    copy keeps up with attributes added later. With ``listings`` False the asset and instrument
    records are shared: only a listing input changes them (R4.2, R4.3).
    """
    new = LedgerState.__new__(LedgerState)
    for name, val in vars(state).items():
        if name == "accounts":
            val = {k: Account(a.id, a.cash, dict(a.balances), dict(a.positions)) for k, a in val.items()}
        elif name in ("holders", "collateral_holders"):
            val = {k: set(v) for k, v in val.items()}
        elif name in ("assets", "instruments"):
            val = {k: copy.copy(v) for k, v in val.items()} if listings else dict(val)
        else:
            val = copy_value(val)
        setattr(new, name, val)
    return new


def copy_value(val: Any) -> Any:
    if val is None or isinstance(val, (int, str, bool)):
        return val
    if isinstance(val, dict):
        return {k: copy_value(v) for k, v in val.items()}
    if isinstance(val, set):
        return set(val)
    if isinstance(val, list):
        return [copy_value(v) for v in val]
    if isinstance(val, Account):
        return Account(val.id, val.cash, dict(val.balances), dict(val.positions))
    if isinstance(val, (AssetInfo, InstrumentInfo)):
        return copy.copy(val)
    return copy.deepcopy(val)


class Folder:
    """Folds a stream of recorded events into a state, one event of look-ahead.

    An input's effect depends on whether the next event is its ``rejected`` decision (R3.5),
    so an input is held until the next event (or the end of the log) is seen.
    """

    def __init__(self, state: LedgerState) -> None:
        self.state = state
        self.pending: s.Input | None = None

    def feed(self, event: s.Event) -> None:
        pending = self.pending
        kind = type(event)
        if pending is not None:
            self.pending = None
            self.state.apply_input(pending, kind is s.Rejected and event.ref == pending.id)
        if kind in _DECISION_HANDLERS:
            self.state.apply_decision(event)  # type: ignore[arg-type]
        else:
            self.pending = event  # type: ignore[assignment]

    def feed_all(self, events: Iterable[s.Event]) -> None:
        for event in events:
            self.feed(event)

    def finish(self, next_event: s.Event | None = None) -> LedgerState:
        """Complete the fold; ``next_event`` is the event after the last one fed, if any."""
        pending = self.pending
        if pending is not None:
            self.pending = None
            rejected = (
                type(next_event) is s.Rejected and next_event.ref == pending.id  # type: ignore[union-attr]
            )
            self.state.apply_input(pending, rejected)
        return self.state
