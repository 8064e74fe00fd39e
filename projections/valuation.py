"""Valuation of an account at the current marks (rulebook R6), in integer minor units.

Every term is rounded on its own before summing (R1.3): collateral value toward −∞ (it counts
for the account), each margin requirement toward +∞ (it counts against it).
"""

from __future__ import annotations

from typing import NamedTuple

from projections.state import Account, InstrumentInfo, LedgerState, is_system


class Valuation(NamedTuple):
    cash: int
    collateral: int
    position_value: int
    equity: int
    initial_margin: int
    maintenance_margin: int

    @property
    def free_collateral(self) -> int:  # R6.6
        return self.equity - self.initial_margin


def collateral_value(state: LedgerState, asset: str, units: int) -> int:
    """R6.2 / R10.4: floor(b × mark × (1 − haircut)) for b > 0; 0 without a mark (R5.2)."""
    if units <= 0:
        return 0
    mark = state.marks.get(asset)
    if mark is None:
        return 0
    info = state.assets[asset]
    num = units * mark * (info.haircut_den - info.haircut_num) * 10**state.scale
    den = 10 ** (info.decimals + info.price_decimals) * info.haircut_den
    return num // den  # floor: counts for the account


def notional(info: InstrumentInfo, qty: int, mark: int) -> int:
    """|q| × mark in minor units (exact by R1.4)."""
    return abs(qty) * mark * info.notional_scale


def margin_term(notional_minor: int, num: int, den: int) -> int:
    """ceil(|q| × mark × fraction): a requirement counts against the account (R1.3)."""
    return -((-notional_minor * num) // den)


def maintenance_contribution(state: LedgerState, instrument: str, qty: int) -> int:
    info = state.instruments[instrument]
    n = notional(info, qty, state.marks[info.underlying])
    return margin_term(n, info.mmf_num, info.mmf_den)


def value(state: LedgerState, acct: Account) -> Valuation:
    """R6.1–R6.5 for one account."""
    collateral = 0
    for asset, units in acct.balances.items():
        if units > 0:
            collateral += collateral_value(state, asset, units)
    position_value = im = mm = 0
    marks = state.marks
    for instrument, qty in acct.positions.items():
        info = state.instruments[instrument]
        mark = marks[info.underlying]
        signed = qty * mark * info.notional_scale
        position_value += signed
        n = signed if signed > 0 else -signed
        im += -((-n * info.imf_num) // info.imf_den)
        mm += -((-n * info.mmf_num) // info.mmf_den)
    equity = acct.cash + collateral + position_value
    return Valuation(acct.cash, collateral, position_value, equity, im, mm)


def is_liquidatable(state: LedgerState, acct: Account) -> bool:
    """R6.7: equity < MM, never for a system account."""
    if is_system(acct.id):
        return False
    v = value(state, acct)
    return v.equity < v.maintenance_margin


def gross_notional(state: LedgerState, acct: Account) -> int:
    """Σ |q| × mark over all instruments (R10.6 effective leverage numerator)."""
    total = 0
    for instrument, qty in acct.positions.items():
        info = state.instruments[instrument]
        total += notional(info, qty, state.marks[info.underlying])
    return total
