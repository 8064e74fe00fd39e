"""State at sequence N and at time T (rulebook R3.7), from the latest snapshot at or before the
point plus the events after it, so the cost of a query does not grow with the log's length.

``account_at_seq`` answers the same question for one account (``clearing state --account``)
without decoding the other accounts or folding their every move: it takes that account out of a
snapshot, folds only the events that can change what interfaces §4 shows for it, and keeps the
netted exposure over all accounts from the positions alone. Every move of the fold depends only
on the event (the price, quantity and amounts it records), never on the account's state, so the
moves of a stretch of the log add up to a delta that is added to the snapshot before it or
taken from the snapshot after it, whichever stretch is shorter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import msgspec

from events import schema as s
from events.canonical import decode
from events.numbers import units_of
from events.store import LogStore
from events.timestamps import parse_ts
from projections import snapshot
from projections.state import EXTERNAL, FEES, INSURANCE, SYSTEM_ACCOUNTS, Account, Folder, LedgerState


def state_at_seq(
    store: LogStore, seq: int, observe: Callable[[int, bytes], None] | None = None
) -> LedgerState:
    """The state after event ``seq`` (0: the empty state). ``seq`` is clamped to the head.

    ``observe(seq, payload)`` sees the bytes of every event folded after the snapshot (the
    tamper-evident log uses it to check them against the Merkle tree before signing)."""
    head, _ = store.head()
    seq = max(0, min(seq, head))
    snap = store.latest_snapshot(seq)
    state = snapshot.decode(snap[1]) if snap else LedgerState()
    if state.seq == seq:
        return state
    folder = Folder(state)
    # One event of look-ahead: an input at ``seq`` is a no-op when ``seq + 1`` rejects it.
    next_event = None
    for page in store.read_payloads(after_seq=state.seq, upto_seq=min(seq + 1, head)):
        for event_seq, _type, payload in page:
            event = decode(payload)
            if event_seq > seq:
                next_event = event
            else:
                if observe is not None:
                    observe(event_seq, payload)
                folder.feed(event)
    return folder.finish(next_event)


def seq_at_time(store: LogStore, ts_us: int) -> int:
    """R3.7: the last event of the last input with ts <= T (its decisions share its ts)."""
    return store.seq_at_time(ts_us)


def state_at_time(store: LogStore, ts_us: int) -> LedgerState:
    return state_at_seq(store, seq_at_time(store, ts_us))


# --- one account ---------------------------------------------------------------------------
@dataclass
class AccountView:
    """What ``clearing state --account`` shows at a point: ``state`` holds the listings, marks,
    seq and ts, and of the accounts only the one asked for (if it exists) and ``@insurance``;
    ``exposure`` is instrument -> (long, short) over all accounts (interfaces §4), or None when
    ``state`` is the whole state (then it is summed from it)."""

    state: LedgerState
    exposure: dict[str, tuple[int, int]] | None


def account_at_seq(store: LogStore, seq: int, account: str, reach: int = 0) -> AccountView:
    """The view of one account after event ``seq`` (clamped to the head, like ``state_at_seq``):
    the same figures as ``state_at_seq`` gives for that account, ``@insurance`` and the exposure.

    ``reach`` is how far after ``seq`` to look for a snapshot to fold back from; at most half the
    distance between snapshots, the stretch folded is then the shorter of the two, and one
    snapshot is read, not two (0: fold forward only)."""
    head, _ = store.head()
    seq = max(0, min(seq, head))
    if seq == 0:
        return AccountView(LedgerState(), {})
    found = store.latest_snapshot(min(head, seq + reach))
    if found is not None and snapshot.format_of(found[1]) != snapshot.FORMAT:
        return AccountView(state_at_seq(store, seq), None)  # an older snapshot: the full fold
    if found is None or found[0] <= seq:  # no snapshot within reach: the latest before is this
        return _forward(store, seq, account, snapshot.SnapshotView(found[1]) if found else None)
    earlier = _Earlier(store, seq)
    view = _backward(store, seq, account, snapshot.SnapshotView(found[1]), earlier)
    if view is not None:
        return view
    prev = earlier()
    if prev is False:
        return AccountView(state_at_seq(store, seq), None)
    return _forward(store, seq, account, prev)


class _Earlier:
    """The snapshot at or before ``seq``, read when first needed (None: there is none; False:
    an older format, which only the full fold reads)."""

    def __init__(self, store: LogStore, seq: int) -> None:
        self.store, self.seq = store, seq
        self.view: snapshot.SnapshotView | None | bool = True

    def __call__(self) -> snapshot.SnapshotView | None | bool:
        if self.view is True:
            found = self.store.latest_snapshot(self.seq)
            if found is None:
                self.view = None
            elif snapshot.format_of(found[1]) != snapshot.FORMAT:
                self.view = False
            else:
                self.view = snapshot.SnapshotView(found[1])
        return self.view


class _Deltas(dict):
    """Accounts of a fold that starts from zero: each one's moves, summed."""

    def __missing__(self, account_id: str) -> Account:
        acct = self[account_id] = Account(account_id)
        return acct


@dataclass
class _Window:
    """What a stretch of the log did, besides the moves of the followed accounts."""

    positions: dict[tuple[str, str], int] = field(default_factory=dict)  # (account, instrument)
    priced: set[str] = field(default_factory=set)  # assets with a price event
    created: bool = False  # a deposit or transfer to the account (it may have created it)


class _Listing(Exception):
    """A listing in the stretch after the point: the snapshot after it has other listings."""


class _Trade(msgspec.Struct):
    id: str
    instrument: str
    buyer: str
    seller: str
    qty: str


class _Price(msgspec.Struct):
    id: str
    asset: str
    price: str


class _Ref(msgspec.Struct):
    ref: str


class _Ts(msgspec.Struct):
    ts: str


class _Payment(msgspec.Struct):
    account: str
    position: str
    amount: str


class _FundingDust(msgspec.Struct):  # funding_settled, its payments skipped
    seq: int
    ts: str
    ref: str
    instrument: str
    rate: str
    price: str
    paid: str
    received: str
    dust: str


_trade_decoder = msgspec.json.Decoder(_Trade)
_price_decoder = msgspec.json.Decoder(_Price)
_ref_decoder = msgspec.json.Decoder(_Ref)
_ts_decoder = msgspec.json.Decoder(_Ts)
_payment_decoder = msgspec.json.Decoder(_Payment)
_dust_decoder = msgspec.json.Decoder(_FundingDust)
_NAMING = frozenset(("deposit", "withdrawal", "transfer"))  # inputs that name their accounts


def _fold(
    store: LogStore, state: LedgerState, after: int, upto: int, account: str, forward: bool
) -> _Window:
    """Fold events after..upto into ``state``, whose ``accounts`` are ``_Deltas``.

    Every move of ``account`` and ``@insurance`` is applied (the full event, through the
    ordinary fold); of a trade between two other accounts only the positions are kept, in the
    window's ``positions``; other events are skipped. Listings apply as they come; prices too
    when ``forward``, else they are only noted (and a listing raises ``_Listing``)."""
    followed = {account, INSURANCE}
    names = [msgspec.json.encode(a) for a in followed]  # as the canonical JSON writes them
    payment_starts = [b'{"account":' + n + b"," for n in names]
    all_deposits = EXTERNAL in followed  # a deposit or withdrawal moves @external unnamed
    all_trades = FEES in followed  # a trade pays @fees unnamed
    window = _Window()
    positions = window.positions
    instruments, assets, marks = state.instruments, state.assets, state.marks

    def apply(event: s.Event) -> None:
        state.seq = event.seq - 1
        if type(event) in s.DECISION_TYPES:
            state.apply_decision(event)  # type: ignore[arg-type]
            return
        state.apply_input(event)  # type: ignore[arg-type]
        if type(event) is s.Deposit and event.account == account:
            window.created = True
        elif type(event) is s.Transfer and event.to == account:
            window.created = True

    def settle(item: object) -> None:
        """Apply a price or a full input that its next event does not reject."""
        if type(item) is _Price:
            if forward:
                marks[item.asset] = units_of(item.price, assets[item.asset].price_decimals)
            window.priced.add(item.asset)
        else:
            apply(item)  # type: ignore[arg-type]

    def move(trade: _Trade, sign: int) -> None:
        qty = sign * units_of(trade.qty, instruments[trade.instrument].qty_decimals)
        key = (trade.buyer, trade.instrument)
        positions[key] = positions.get(key, 0) + qty
        key = (trade.seller, trade.instrument)
        positions[key] = positions.get(key, 0) - qty

    # R3.5: an input followed by its rejection changes nothing. A price or a full input waits
    # for the next event (``pending``); a trade between two other accounts is applied at once
    # and taken back (``undo``) if its rejection follows: rejections are rare, trades are not.
    pending: _Price | s.Input | None = None
    undo: _Trade | None = None
    for page in store.read_payloads(after_seq=after, upto_seq=upto):
        for _seq, kind, payload in page:
            if kind == "rejected":
                ref = _ref_decoder.decode(payload).ref
                if pending is not None and pending.id == ref:
                    pending = None
                elif undo is not None and undo.id == ref:
                    move(undo, -1)
                undo = None
                continue
            if pending is not None:
                settle(pending)
                pending = None
            undo = None
            if kind == "trade":
                trade = _trade_decoder.decode(payload)
                if all_trades or trade.buyer in followed or trade.seller in followed:
                    pending = decode(payload)  # type: ignore[assignment]
                else:  # only the positions (the netted exposure), inlined: most events are these
                    qty = units_of(trade.qty, instruments[trade.instrument].qty_decimals)
                    key = (trade.buyer, trade.instrument)
                    positions[key] = positions.get(key, 0) + qty
                    key = (trade.seller, trade.instrument)
                    positions[key] = positions.get(key, 0) - qty
                    undo = trade
            elif kind == "price":
                pending = _price_decoder.decode(payload)
            elif kind == "funding":
                continue  # R9: its moves are those of its funding_settled
            elif kind in _NAMING:
                if all_deposits and kind != "transfer" or any(n in payload for n in names):
                    pending = decode(payload)  # type: ignore[assignment]
            elif kind == "funding_settled":
                apply(_funding_settled(payload, followed, payment_starts))
            else:  # listings, liquidations, bankruptcies, deleverages (and any other kind)
                if not forward and kind in ("asset", "instrument"):
                    raise _Listing()
                event = decode(payload)
                if type(event) in s.DECISION_TYPES:
                    apply(event)
                else:
                    pending = event  # type: ignore[assignment]
    if pending is not None or undo is not None:  # the look-ahead: the event after ``upto``
        record = store.get(upto + 1)
        rejected = record is not None and record.type == "rejected"
        if pending is not None and not (rejected and record.ref == pending.id):  # type: ignore[union-attr]
            settle(pending)
        elif undo is not None and rejected and record.ref == undo.id:  # type: ignore[union-attr]
            move(undo, -1)
    for acct in state.accounts.values():  # positions moved by the fully applied events
        for instrument, qty in acct.positions.items():
            key = (acct.id, instrument)
            positions[key] = positions.get(key, 0) + qty
    return window


def _funding_settled(payload: bytes, followed: set[str], payment_starts: list[bytes]) -> s.FundingSettled:
    """R9: the decision with only the payments of the followed accounts. A settlement pays
    every holder of the instrument: decoding them all would cost O(accounts), so the followed
    ones are found in the canonical bytes (``{"account":"A",...}``, no nested object) and only
    they are decoded."""
    dec = _dust_decoder.decode(payload)
    payments = []
    for start in payment_starts:
        at = payload.find(start)
        while at >= 0:
            end = payload.index(b"}", at) + 1
            p = _payment_decoder.decode(payload[at:end])
            payments.append((at, s.Payment(account=p.account, position=p.position, amount=p.amount)))
            at = payload.find(start, end)
    return s.FundingSettled(
        seq=dec.seq, ts=dec.ts, ref=dec.ref, instrument=dec.instrument, rate=dec.rate,
        price=dec.price, paid=dec.paid, received=dec.received, dust=dec.dust,
        payments=[p for _at, p in sorted(payments, key=lambda item: item[0])],
    )


def _forward(
    store: LogStore, seq: int, account: str, prev: snapshot.SnapshotView | None
) -> AccountView:
    state = prev.header if prev else LedgerState()
    base_seq = state.seq
    deltas = state.accounts = _Deltas()
    window = _fold(store, state, base_seq, seq, account, forward=True)
    totals = {i: prev.exposure.get(i, (0, 0)) if prev else (0, 0) for i in state.instruments}
    _add_exposure(totals, window.positions, prev.positions if prev else lambda _a: {}, +1)
    accounts: dict[str, Account] = {}
    for name in (account, INSURANCE):
        start, moved = prev.account(name) if prev else None, deltas.get(name)
        if start is not None or moved is not None or name in SYSTEM_ACCOUNTS:  # R2.2: seq >= 1
            accounts[name] = _sum(name, start, moved, +1)
    return AccountView(_finish(store, state, seq, accounts), totals)


def _backward(
    store: LogStore, seq: int, account: str, nxt: snapshot.SnapshotView, earlier: _Earlier
) -> AccountView | None:
    """The view at ``seq`` from the snapshot after it, less the moves in between; None when
    that cannot be told from there (a listing in between, or the account may be new)."""
    state = nxt.header
    deltas = state.accounts = _Deltas()
    try:
        window = _fold(store, state, seq, nxt.seq, account, forward=False)
    except _Listing:
        return None
    accounts: dict[str, Account] = {}
    for name in (account, INSURANCE):
        end = nxt.account(name)
        if end is None:
            continue  # accounts are never removed: it did not exist at ``seq`` either
        if name == account and window.created and name not in SYSTEM_ACCOUNTS:
            # The deposit or transfer may be what created it: it existed at ``seq`` only if
            # it did at the snapshot before.
            prev = earlier()
            if not prev or prev.account(name) is None:
                return None
        accounts[name] = _sum(name, end, deltas.get(name), -1)
    if window.priced and not _marks_at(store, seq, earlier, state, window.priced):
        return None
    totals = dict(nxt.exposure)
    _add_exposure(totals, window.positions, nxt.positions, -1)
    return AccountView(_finish(store, state, seq, accounts), totals)


# How far back the marks are looked for before the snapshot before is read (to stop there).
_MARKS_LOOKBACK = 4096


def _marks_at(
    store: LogStore, seq: int, earlier: _Earlier, state: LedgerState, assets: set[str]
) -> bool:
    """Set in ``state.marks`` the mark at ``seq`` of each of ``assets``: its last price at or
    before ``seq`` (not rejected, R3.5), searched backwards in growing steps; past
    ``_MARKS_LOOKBACK`` events down to the snapshot before only, whose marks hold from there
    on (no mark there: none at ``seq``). False if that snapshot is in an older format."""
    wanted = set(assets)
    hi, step, floor = seq, 256, 0
    prev: snapshot.SnapshotView | None = None
    while wanted:
        if seq - hi >= _MARKS_LOOKBACK and prev is None:
            found = earlier()
            if found is False:
                return False
            prev = found or None  # type: ignore[assignment]
            floor = prev.seq if prev else 0
        if hi <= floor:
            break
        lo = max(floor, hi - step)
        last: dict[str, str] = {}
        pending: _Price | None = None
        for page in store.read_payloads(after_seq=lo, upto_seq=hi + 1):
            for event_seq, kind, payload in page:
                if pending is not None:
                    if kind != "rejected" or _ref_decoder.decode(payload).ref != pending.id:
                        last[pending.asset] = pending.price
                    pending = None
                if event_seq > hi:
                    break
                if kind == "price":
                    price = _price_decoder.decode(payload)
                    if price.asset in wanted:
                        pending = price
        if pending is not None:  # nothing after ``hi`` rejects it
            last[pending.asset] = pending.price
        for asset, price in last.items():
            state.marks[asset] = units_of(price, state.assets[asset].price_decimals)
            wanted.discard(asset)
        hi, step = lo, step * 2
    for asset in wanted:  # no price after the snapshot before (or after the first event)
        mark = prev.header.marks.get(asset) if prev else None
        if mark is None:
            state.marks.pop(asset, None)
        else:
            state.marks[asset] = mark
    return True


def _add_exposure(
    totals: dict[str, tuple[int, int]],
    positions: dict[tuple[str, str], int],
    held_at_snapshot: Callable[[str], dict[str, int]],
    sign: int,
) -> None:
    """Move the (long, short) totals by the positions each account moved from the snapshot:
    forward (``sign`` +1) or back (-1). A position going from ``start`` to ``end`` moves long
    by max(end, 0) - max(start, 0) and short by that less (end - start)."""
    held_by: dict[str, dict[str, int]] = {}
    long_moved: dict[str, int] = {}
    net_moved: dict[str, int] = {}
    for (account_id, instrument), moved in positions.items():
        if not moved:
            continue
        held = held_by.get(account_id)
        if held is None:
            held = held_by[account_id] = held_at_snapshot(account_id)
        start = held.get(instrument, 0)
        end = start + moved if sign > 0 else start - moved
        long_moved[instrument] = (
            long_moved.get(instrument, 0) + (end if end > 0 else 0) - (start if start > 0 else 0)
        )
        net_moved[instrument] = net_moved.get(instrument, 0) + end - start
    for instrument, dl in long_moved.items():
        long, short = totals[instrument]
        totals[instrument] = (long + dl, short + dl - net_moved[instrument])


def _sum(account_id: str, start: Account | None, moved: Account | None, sign: int) -> Account:
    """``start`` plus (``sign`` +1) or minus (-1) the moves in ``moved``; zeros left out."""
    acct = start if start is not None else Account(account_id)
    if moved is None:
        return acct
    acct.cash += sign * moved.cash
    for held, delta in ((acct.balances, moved.balances), (acct.positions, moved.positions)):
        for key, units in delta.items():
            total = held.get(key, 0) + sign * units
            if total:
                held[key] = total
            else:
                held.pop(key, None)
    return acct


def _finish(store: LogStore, state: LedgerState, seq: int, accounts: dict[str, Account]) -> LedgerState:
    """``state`` at ``seq`` with just ``accounts``; its ts is that of event ``seq``."""
    record = store.get(seq)
    assert record is not None, f"no event at seq {seq}"
    state.seq = seq
    state.ts = _ts_decoder.decode(record.payload).ts
    ts_us = parse_ts(state.ts)
    assert ts_us is not None
    state.ts_us = ts_us
    state.accounts = accounts
    state.holders = {i: set() for i in state.instruments}
    state.collateral_holders = {}
    state.touched = set()
    return state
