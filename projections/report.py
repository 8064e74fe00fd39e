"""The state output of interfaces §4: every figure as an R1.1 decimal string.

Built in a fixed key order with accounts in byte order of id, so the same state always gives
the same bytes.
"""

from __future__ import annotations

from typing import Any, Mapping

from events.numbers import fmt_units
from events.timestamps import format_ts
from projections.snapshot import exposure_totals
from projections.state import INSURANCE, Account, LedgerState, is_system
from projections.valuation import value

RULES = "clearing-rulebook/1"


def account_entry(state: LedgerState, acct: Account) -> dict[str, Any]:
    """One account as in interfaces §4 (zero balances and positions left out)."""
    scale = state.scale
    balances: dict[str, str] = {}
    for asset in sorted(acct.balances.keys() | ({state.settlement} if acct.cash else set())):
        if asset == state.settlement:
            balances[asset] = fmt_units(acct.cash, scale)
        else:
            balances[asset] = fmt_units(acct.balances[asset], state.assets[asset].decimals)
    positions = {
        instrument: fmt_units(qty, state.instruments[instrument].qty_decimals)
        for instrument, qty in sorted(acct.positions.items())
    }
    v = value(state, acct)
    return {
        "balances": balances,
        "positions": positions,
        "equity": fmt_units(v.equity, scale),
        "initial_margin": fmt_units(v.initial_margin, scale),
        "maintenance_margin": fmt_units(v.maintenance_margin, scale),
        "free_collateral": fmt_units(v.free_collateral, scale),
        "liquidatable": (not is_system(acct.id)) and v.equity < v.maintenance_margin,  # R6.7
    }


def marks(state: LedgerState) -> dict[str, str]:
    return {
        asset: fmt_units(price, state.assets[asset].price_decimals)
        for asset, price in sorted(state.marks.items())
    }


def exposure(
    state: LedgerState, totals: Mapping[str, tuple[int, int]] | None = None
) -> dict[str, dict[str, str]]:
    """Netted exposure per listed instrument, zeros included (interfaces §4).

    ``totals`` (instrument -> long, short) are given when ``state`` holds only some accounts
    (projections/history.py ``account_at_seq``); otherwise they are summed over its holders."""
    if totals is None:
        totals = exposure_totals(state)
    out: dict[str, dict[str, str]] = {}
    for instrument in sorted(state.instruments):
        info = state.instruments[instrument]
        long, short = totals[instrument]
        insurance = state.accounts[INSURANCE].positions.get(instrument, 0) if state.accounts else 0
        out[instrument] = {
            "long": fmt_units(long, info.qty_decimals),
            "short": fmt_units(short, info.qty_decimals),
            "insurance": fmt_units(insurance, info.qty_decimals),
        }
    return out


def state_document(
    state: LedgerState,
    account: str | None = None,
    exposure_totals: Mapping[str, tuple[int, int]] | None = None,
) -> dict[str, Any]:
    """The whole `clearing state --json` document; with ``account``, only that account.

    ``exposure_totals`` as for ``exposure``."""
    if account is None:
        ids = sorted(state.accounts)
    else:
        ids = [account] if account in state.accounts else []
    insurance = state.accounts.get(INSURANCE)
    return {
        "rules": RULES,
        "seq": state.seq,
        "ts": format_ts(state.ts_us) if state.seq else None,
        "marks": marks(state),
        "accounts": {a: account_entry(state, state.accounts[a]) for a in ids},
        "insurance_fund": fmt_units(insurance.cash if insurance else 0, state.scale),
        "exposure": exposure(state, exposure_totals),
    }
