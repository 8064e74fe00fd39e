"""Snapshots of the folded state: deterministic bytes, decoded back into an equal state.

A snapshot is taken only after an input and all its decisions (a consistent cut), so folding
resumes from it with nothing pending. It is derived data: the log stays the truth.
"""

from __future__ import annotations

import msgspec

from projections.state import Account, AssetInfo, InstrumentInfo, LedgerState

FORMAT = 1


class _Asset(msgspec.Struct, array_like=True):
    asset: str
    decimals: int
    price_decimals: int
    haircut: str
    settlement: bool


class _Instrument(msgspec.Struct, array_like=True):
    instrument: str
    underlying: str
    qty_decimals: int
    initial_margin: str
    maintenance_margin: str
    liquidation_fee: str


class _Account(msgspec.Struct, array_like=True):
    id: str
    cash: int
    balances: list[tuple[str, int]]
    positions: list[tuple[str, int]]


class _Snapshot(msgspec.Struct, array_like=True):
    format: int
    seq: int
    ts: str | None
    ts_us: int
    assets: list[_Asset]
    instruments: list[_Instrument]
    marks: list[tuple[str, int]]
    accounts: list[_Account]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Snapshot)


def encode(state: LedgerState) -> bytes:
    snap = _Snapshot(
        format=FORMAT,
        seq=state.seq,
        ts=state.ts,
        ts_us=state.ts_us,
        assets=[
            _Asset(a.asset, a.decimals, a.price_decimals, a.haircut, a.settlement)
            for a in state.assets.values()  # listing order: the settlement asset first
        ],
        instruments=[
            _Instrument(
                i.instrument,
                i.underlying,
                i.qty_decimals,
                i.initial_margin,
                i.maintenance_margin,
                i.liquidation_fee,
            )
            for i in state.instruments.values()
        ],
        marks=sorted(state.marks.items()),
        accounts=[
            _Account(a.id, a.cash, sorted(a.balances.items()), sorted(a.positions.items()))
            for a in sorted(state.accounts.values(), key=lambda a: a.id)
        ],
    )
    return _encoder.encode(snap)


def decode(data: bytes) -> LedgerState:
    snap = _decoder.decode(data)
    assert snap.format == FORMAT, f"unknown snapshot format {snap.format}"
    state = LedgerState()
    state.seq, state.ts, state.ts_us = snap.seq, snap.ts, snap.ts_us
    for a in snap.assets:
        state.assets[a.asset] = AssetInfo(a.asset, a.decimals, a.price_decimals, a.haircut, a.settlement)
        if a.settlement:
            state.settlement, state.scale = a.asset, a.decimals
    for i in snap.instruments:
        underlying = state.assets[i.underlying]
        info = InstrumentInfo(
            i.instrument,
            i.underlying,
            i.qty_decimals,
            i.initial_margin,
            i.maintenance_margin,
            i.liquidation_fee,
            notional_scale=10 ** (state.scale - i.qty_decimals - underlying.price_decimals),
        )
        info.set_fractions()
        state.instruments[i.instrument] = info
        state.holders[i.instrument] = set()
        state.by_underlying.setdefault(i.underlying, []).append(i.instrument)
    for instruments in state.by_underlying.values():
        instruments.sort()
    state.marks = dict(snap.marks)
    for a in snap.accounts:
        acct = Account(a.id, a.cash, dict(a.balances), dict(a.positions))
        state.accounts[a.id] = acct
        for asset, units in a.balances:
            if units > 0:
                state.collateral_holders.setdefault(asset, set()).add(a.id)
        for instrument in acct.positions:
            state.holders[instrument].add(a.id)
    return state
