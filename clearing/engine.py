"""The rules engine: (state, well-formed input) → decisions, per rulebook R7–R10.

``process`` records the input's direct effect and every decision it causes into the state it is
given, through the same ``apply_*`` methods that fold the log (projections/state.py), and returns
the decisions. It reads no clock, file or database: tests of the rules need no store.
"""

from __future__ import annotations

from events import schema as s
from events.numbers import fmt_units, units_of
from projections.state import FEES, INSURANCE, LedgerState, is_system
from projections.valuation import Valuation, collateral_value, margin_term, notional, value

from clearing.liquidation import Pass
from clearing.screen import Screen


class Decider:
    """Builds the decisions of one input, numbering them after the input's ``seq``."""

    def __init__(self, state: LedgerState, inp: s.Input) -> None:
        self.state = state
        self.inp = inp
        self.decisions: list[s.Decision] = []

    def record(self, decision_type: type, **fields: object) -> s.Decision:
        dec = decision_type(seq=self.state.seq + 1, ts=self.inp.ts, ref=self.inp.id, **fields)
        self.state.apply_decision(dec)
        self.decisions.append(dec)
        return dec

    def money(self, minor: int) -> str:
        return fmt_units(minor, self.state.scale)


class Engine:
    """The engine with its liquidation screen (clearing/screen.py), for long runs of inputs.

    ``process`` alone gives the same decisions; the screen only spares it valuing every holder
    of an asset on each price event."""

    def __init__(self, state: LedgerState, screen: bool = True) -> None:
        self.state = state
        self.screen = Screen(state) if screen else None

    def process(self, inp: s.Input) -> list[s.Decision]:
        return process(self.state, inp, self.screen)


def process(state: LedgerState, inp: s.Input, screen: Screen | None = None) -> list[s.Decision]:
    """Apply a validated input (its ``seq`` = state.seq + 1) and return its decisions (R3.6)."""
    assert inp.seq == state.seq + 1, f"input seq {inp.seq} after state seq {state.seq}"
    decider = Decider(state, inp)
    kind = type(inp)
    post: dict[str, Valuation] = {}
    if kind is s.Trade:
        rejection = _check_trade(state, inp, post)
    else:
        check = _CHECKS.get(kind)
        rejection = check(state, inp) if check is not None else None
    if rejection is not None:
        reason, account, rule, figures = rejection
        state.apply_input(inp, rejected=True)
        decider.record(s.Rejected, reason=reason, account=account, rule=rule, figures=figures)
        return decider.decisions
    state.apply_input(inp)
    if screen is not None and kind is s.Trade:
        # R10.1 for a trade: only its two parties can have become liquidatable. Each is valued
        # once (by the R8.4 check when it raised its position, else here); when neither is
        # liquidatable (R6.7) the pass would handle nothing, and the screen re-bounds both from
        # these same valuations (nothing moved since).
        fresh = {}
        for party in (inp.buyer, inp.seller):
            if not is_system(party):
                v = post.get(party) or value(state, state.accounts[party])
                if v.equity < v.maintenance_margin:
                    Pass(decider).run({inp.buyer, inp.seller})
                    fresh = {}
                    break
                fresh[party] = v
        screen.refresh(set(), fresh)
        return decider.decisions
    if screen is not None and kind is s.Price:
        candidates = screen.crossed(inp.asset, state.marks[inp.asset])
    else:
        candidates = _AFTER[kind](decider, inp)
    if candidates:
        Pass(decider).run(candidates)
    if screen is not None:
        # Listings change requirements without moving anything: re-bound their holders too.
        screen.refresh(candidates if kind in (s.Asset, s.Instrument, s.Price) else set())
    return decider.decisions


# --- R7: withdrawals and transfers ---------------------------------------------------------
def _check_outflow(state: LedgerState, account_id: str, asset: str, amount: str, rule: str):
    """R7.2 (and R7.3 for the sender): first matching reason wins."""
    acct = state.accounts.get(account_id)
    if acct is None:
        return "unknown_account", account_id, "R2.3", {}
    info = state.assets[asset]
    units = units_of(amount, info.decimals)
    balance = acct.cash if asset == state.settlement else acct.balances.get(asset, 0)
    if units > balance:
        return (
            "insufficient_balance",
            account_id,
            rule,
            {"balance": fmt_units(balance, info.decimals), "amount": amount},
        )
    if is_system(account_id):  # R11.2: no margin check for @insurance and @fees
        return None
    v = value(state, acct)
    if asset == state.settlement:
        equity_after = v.equity - units
    else:
        lost = collateral_value(state, asset, balance) - collateral_value(state, asset, balance - units)
        equity_after = v.equity - lost
    if equity_after < v.initial_margin:
        return (
            "insufficient_margin",
            account_id,
            rule,
            {
                "equity_after": fmt_units(equity_after, state.scale),
                "initial_margin": fmt_units(v.initial_margin, state.scale),
            },
        )
    return None


def _check_withdrawal(state: LedgerState, inp: s.Withdrawal):
    return _check_outflow(state, inp.account, inp.asset, inp.amount, "R7.2")


def _check_transfer(state: LedgerState, inp: s.Transfer):
    return _check_outflow(state, inp.from_, inp.asset, inp.amount, "R7.3")


# --- R8: trades ----------------------------------------------------------------------------
def _check_trade(state: LedgerState, inp: s.Trade, after: dict[str, Valuation] | None = None):
    """R8.2, R8.4. ``after`` (when given) receives, for each party valued here, its exact
    equity and requirements after the trade (R6: the trade changes only cash by
    q × price + fee, and one position's terms, each rounded on its own per R1.3)."""
    for party in (inp.buyer, inp.seller):
        if party not in state.accounts:
            return "unknown_account", party, "R8.2", {}
    if inp.buyer == inp.seller:
        return "self_trade", inp.buyer, "R8.2", {}
    info = state.instruments[inp.instrument]
    mark = state.marks.get(info.underlying)
    if mark is None:
        return "no_mark", "", "R5.2", {"asset": info.underlying}
    qty = units_of(inp.qty, info.qty_decimals)
    price = units_of(inp.price, state.assets[info.underlying].price_decimals)
    for party, signed, fee in ((inp.buyer, qty, inp.buyer_fee), (inp.seller, -qty, inp.seller_fee)):
        if is_system(party):
            continue
        acct = state.accounts[party]
        before = acct.positions.get(inp.instrument, 0)
        after_qty = before + signed
        # R8.4: a trade that only reduces the position passes (closing to zero included).
        if before != 0 and abs(after_qty) < abs(before) and (after_qty == 0 or (after_qty > 0) == (before > 0)):
            continue
        v = value(state, acct)
        scale = info.notional_scale
        equity_after = (
            v.equity
            - signed * price * scale
            - units_of(fee, state.scale)
            + signed * mark * scale
        )
        im_after = (
            v.initial_margin
            - margin_term(notional(info, before, mark), info.imf_num, info.imf_den)
            + margin_term(notional(info, after_qty, mark), info.imf_num, info.imf_den)
        )
        if after is not None:
            mm_after = (
                v.maintenance_margin
                - margin_term(notional(info, before, mark), info.mmf_num, info.mmf_den)
                + margin_term(notional(info, after_qty, mark), info.mmf_num, info.mmf_den)
            )
            after[party] = Valuation(0, 0, 0, equity_after, im_after, mm_after)
        if equity_after < im_after:
            return (
                "insufficient_margin",
                party,
                "R8.4",
                {
                    "equity_after": fmt_units(equity_after, state.scale),
                    "initial_margin_after": fmt_units(im_after, state.scale),
                },
            )
    return None


_CHECKS = {s.Withdrawal: _check_withdrawal, s.Transfer: _check_transfer, s.Trade: _check_trade}


# --- what runs after an accepted input, and which accounts it can have made liquidatable ----
# R12.4 holds before every input, so only the accounts an input touched can be liquidatable
# after it; every other account keeps its equity and requirements exactly (R10.1 allows any
# method that handles the same accounts in the same order).
def _after_asset(decider: Decider, inp: s.Asset) -> set[str]:
    return set(decider.state.collateral_holders.get(inp.asset, ()))  # R4.4: a haircut change


def _after_instrument(decider: Decider, inp: s.Instrument) -> set[str]:
    return set(decider.state.holders.get(inp.instrument, ()))  # R4.4: a requirement change


def _after_price(decider: Decider, inp: s.Price) -> set[str]:
    state = decider.state
    touched = set(state.collateral_holders.get(inp.asset, ()))
    for instrument in state.by_underlying.get(inp.asset, ()):
        touched.update(state.holders[instrument])
    return touched  # R5.3


def _after_nothing(decider: Decider, inp: s.Input) -> set[str]:
    return set()  # R12.4: deposits cannot, withdrawals and transfers check equity >= IM


def _after_trade(decider: Decider, inp: s.Trade) -> set[str]:
    return {inp.buyer, inp.seller}  # R8.4, R10.1


def _after_funding(decider: Decider, inp: s.Funding) -> set[str]:
    """R9.1, R9.2: every holder pays ceil(|x|) or receives floor(|x|); dust to @insurance."""
    state = decider.state
    info = state.instruments[inp.instrument]
    holders = sorted(state.holders.get(inp.instrument, ()))
    mark = state.marks.get(info.underlying, 0)
    rate_num, rate_places = units_of(inp.rate, 18), 10**18
    payments = []
    paid = received = 0
    for account_id in holders:
        qty = state.accounts[account_id].positions[inp.instrument]
        x_num = qty * mark * info.notional_scale * rate_num  # x = x_num / 10^18 minor units
        if x_num > 0:
            amount = -(-x_num // rate_places)  # ceil: paid counts against the holder
            paid += amount
            signed = -amount
        else:
            amount = (-x_num) // rate_places  # floor: received counts for the holder
            received += amount
            signed = amount
        payments.append(
            s.Payment(
                account=account_id,
                position=fmt_units(qty, info.qty_decimals),
                amount=decider.money(signed),
            )
        )
    decider.record(
        s.FundingSettled,
        instrument=inp.instrument,
        rate=inp.rate,
        price=fmt_units(mark, state.assets[info.underlying].price_decimals),
        paid=decider.money(paid),
        received=decider.money(received),
        dust=decider.money(paid - received),
        payments=payments,
    )
    return set(holders)  # R9.3


_AFTER = {
    s.Asset: _after_asset,
    s.Instrument: _after_instrument,
    s.Price: _after_price,
    s.Deposit: _after_nothing,
    s.Withdrawal: _after_nothing,
    s.Transfer: _after_nothing,
    s.Trade: _after_trade,
    s.Funding: _after_funding,
}

__all__ = ["process", "Decider", "FEES", "INSURANCE"]
