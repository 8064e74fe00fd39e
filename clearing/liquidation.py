"""The liquidation pass (rulebook R10): partial liquidation, bankruptcy, auto-deleveraging.

R10.1 visits every non-system account in ascending byte order of id, handles each one that is
liquidatable when visited, and repeats the visit while a visit handled one. Handling an account
changes only that account, ``@insurance`` and (R10.6) the deleveraged counterparties, so an
account not touched since it was last found healthy is still healthy. The pass therefore keeps
the accounts that may be liquidatable: those the input touched, and those a handling touched —
the ones after the current account in the current visit, the others in the next visit. That
handles exactly the accounts of the literal visiting order, in the same order.
"""

from __future__ import annotations

import heapq
from fractions import Fraction
from functools import cmp_to_key
from math import ceil, floor
from typing import TYPE_CHECKING, Callable

from events import schema as s
from events.numbers import fmt_units
from projections.state import INSURANCE, LedgerState, is_system
from projections.valuation import collateral_value, gross_notional, margin_term, notional, value

if TYPE_CHECKING:
    from clearing.engine import Decider


def smallest_k(q_units: int, x: Fraction, y: Fraction, a: int, p: int) -> int | None:
    """R10.3: the smallest k in 1..Q with min(ceil(k·x), P) + ceil((Q − k)·y) <= A, or None.

    x = unit × mark × LF and y = unit × mark × IMF in minor units (y > x since IMF > LF);
    A = equity − IM of the other positions; P = max(0, equity). The condition is not monotone
    in k, so no bisection: below the penalty cap the left side lies in [h(k), h(k) + 2) with
    h(k) = Q·y − k·(y − x), so only the k of a narrow window need an exact check, and every k
    above the window holds; at or above the cap the condition is k >= Q − (A − P)/y.
    """
    big_q = q_units
    # The capped part: ceil(k·x) >= P  <=>  k·x > P − 1.
    k_cap_start = max(1, floor(Fraction(p - 1) / x) + 1)
    capped = None
    if a - p >= 0:  # ceil((Q − k)·y) <= A − P  <=>  (Q − k)·y <= A − P
        k = max(k_cap_start, ceil(big_q - Fraction(a - p) / y))
        if k <= big_q:
            capped = k
    # The part below the cap: k < k_cap_start.
    d = y - x
    top = min(big_q, k_cap_start - 1)
    lo = max(1, floor((big_q * y - a - 1) / d) + 1)  # below it h(k) >= A + 1: never holds
    hi = floor((big_q * y - a + 1) / d)  # above it h(k) < A − 1: always holds
    for k in range(lo, min(hi, top) + 1):
        if ceil(k * x) + ceil((big_q - k) * y) <= a:
            return k
    if max(lo, hi + 1) <= top:
        return max(lo, hi + 1)
    return capped


def outranks(a: str, b: str, standing: dict[str, tuple[int, int]]) -> int:
    """R10.6 order of two counterparties (-1: ``a`` first) from their (equity, gross notional):
    equity > 0 before equity <= 0; among equity > 0 higher effective leverage n/e first,
    compared exactly (cross-multiplied); ties, and among equity <= 0, account id ascending."""
    (ea, na), (eb, nb) = standing[a], standing[b]
    if (ea > 0) != (eb > 0):
        return -1 if ea > 0 else 1
    if ea > 0:
        lhs, rhs = na * eb, nb * ea
        if lhs != rhs:
            return -1 if lhs > rhs else 1
    return -1 if a < b else (1 if a > b else 0)


_LEVERAGE_BITS = 64


def rank_key(account_id: str, equity: int, gross: int, version: int = 0) -> tuple[int, int, str, int]:
    """The heap entry of a counterparty: an account with equity e > 0 keys −floor(n·2^64 / e),
    an integer and exact, so a higher leverage never has a larger key; the heap order can then
    differ from R10.6 only within a run of equal keys, which ``pop_run`` returns in the order
    of ``outranks``. Equity <= 0: after all of those, by id."""
    if equity > 0:
        return (0, -((gross << _LEVERAGE_BITS) // equity), account_id, version)
    return (1, 0, account_id, version)


def pop_run(heap: list[tuple[int, int, str, int]]) -> list[tuple[int, int, str, int]]:
    """Pop the entries with the smallest (group, key) off a non-empty heap."""
    run = [heapq.heappop(heap)]
    while heap and heap[0][0] == run[0][0] and heap[0][1] == run[0][1]:
        run.append(heapq.heappop(heap))
    return run


def order_run(accounts: list[str], standing) -> list[str]:
    """A run of equal keys in R10.6 order (``standing``: account -> (equity, gross))."""
    if len(accounts) > 1:
        accounts.sort(key=cmp_to_key(lambda a, b: outranks(a, b, {k: standing(k) for k in (a, b)})))
    return accounts


class Pass:
    """One liquidation pass (R10.1) over the accounts an input may have made liquidatable."""

    def __init__(self, decider: "Decider") -> None:
        self.decider = decider
        self.state: LedgerState = decider.state
        # R10.6 in a pass, at its fixed marks and listings (see ``counterparties``):
        # account -> (cash, positions, balances, (equity, gross notional), version)
        self.standings: dict[str, tuple[int, dict[str, int], dict[str, int], tuple[int, int], int]] = {}
        # (instrument, long side) -> heap of (group, key, account, version) of its holders
        self.sides: dict[tuple[str, bool], list[tuple[int, int, str, int]]] = {}
        self.dirty: set[str] = set()  # accounts a handling changed since the last R10.6 start

    def run(self, candidates: set[str]) -> None:
        pending = {a for a in candidates if not is_system(a)}
        while pending:  # one visit of all accounts
            heap = sorted(pending)
            later: set[str] = set()  # touched at or before the current account: next visit
            handled = False
            queued = set(heap)
            while heap:
                account_id = heapq.heappop(heap)
                queued.discard(account_id)
                touched = self.visit(account_id)
                if touched is None:
                    continue
                handled = True
                self.dirty |= touched
                for other in touched:
                    if is_system(other):
                        continue
                    if other > account_id:
                        if other not in queued:
                            queued.add(other)
                            heapq.heappush(heap, other)
                    else:
                        later.add(other)
            if not handled:
                break
            pending = later

    def visit(self, account_id: str) -> set[str] | None:
        """Handle the account if it is liquidatable now (R6.7); the accounts touched, or None."""
        acct = self.state.accounts[account_id]
        v = value(self.state, acct)
        if v.equity >= v.maintenance_margin:
            return None
        if v.equity >= 0:  # R10.2
            self.solvent(account_id)
            return {account_id}
        return self.bankrupt(account_id) | {account_id}

    # --- R10.3 ----------------------------------------------------------------------------
    def solvent(self, account_id: str) -> None:
        state = self.state
        acct = state.accounts[account_id]
        v = value(state, acct)
        while acct.positions and v.equity < v.initial_margin:
            # The largest maintenance contribution, compared rounded; ties by instrument id.
            def contribution(instrument: str) -> tuple[int, str]:
                info = state.instruments[instrument]
                n = notional(info, acct.positions[instrument], state.marks[info.underlying])
                return margin_term(n, info.mmf_num, info.mmf_den), instrument

            instrument = min(acct.positions, key=lambda i: (-contribution(i)[0], i))
            info = state.instruments[instrument]
            mark = state.marks[info.underlying]
            qty = acct.positions[instrument]
            big_q = abs(qty)
            unit_value = mark * info.notional_scale  # one qty unit at mark, in minor units
            x = Fraction(unit_value * info.lf_num, info.lf_den)
            y = Fraction(unit_value * info.imf_num, info.imf_den)
            im_this = margin_term(big_q * unit_value, info.imf_num, info.imf_den)
            mm_this = margin_term(big_q * unit_value, info.mmf_num, info.mmf_den)
            a = v.equity - (v.initial_margin - im_this)
            p = max(0, v.equity)
            k = smallest_k(big_q, x, y, a, p)
            if k is None:
                k = big_q  # R10.3: none restores equity >= IM: close the whole position
            uncapped = ceil(k * x)
            penalty = min(uncapped, p)  # R10.3: never more than the equity before the close
            after = qty - k if qty > 0 else qty + k
            rest = abs(after) * unit_value
            equity_after = v.equity - penalty
            im_after = v.initial_margin - im_this + margin_term(rest, info.imf_num, info.imf_den)
            mm_after = v.maintenance_margin - mm_this + margin_term(rest, info.mmf_num, info.mmf_den)
            self.decider.record(
                s.Liquidation,
                rule="R10.3",
                account=account_id,
                instrument=instrument,
                price=fmt_units(mark, state.assets[info.underlying].price_decimals),
                qty=fmt_units(k, info.qty_decimals),
                k=k,
                position_before=fmt_units(qty, info.qty_decimals),
                position_after=fmt_units(after, info.qty_decimals),
                penalty=self.decider.money(penalty),
                penalty_uncapped=self.decider.money(uncapped),
                equity_before=self.decider.money(v.equity),
                initial_margin_before=self.decider.money(v.initial_margin),
                maintenance_margin_before=self.decider.money(v.maintenance_margin),
                equity_after=self.decider.money(equity_after),
                initial_margin_after=self.decider.money(im_after),
                maintenance_margin_after=self.decider.money(mm_after),
            )
            v = value(state, acct)
            assert (v.equity, v.initial_margin, v.maintenance_margin) == (
                equity_after,
                im_after,
                mm_after,
            ), "R10.3 figures disagree with the fold"

    # --- R10.4 to R10.7 ---------------------------------------------------------------------
    def bankrupt(self, account_id: str) -> set[str]:
        state = self.state
        money = self.decider.money
        acct = state.accounts[account_id]
        v = value(state, acct)
        deficit = -v.equity
        fund = state.accounts[INSURANCE].cash
        cover = min(deficit, max(0, fund))
        remainder = deficit - cover
        seized = []
        for asset in sorted(acct.balances):
            units = acct.balances[asset]
            if units <= 0:
                continue
            info = state.assets[asset]
            mark = state.marks.get(asset)
            seized.append(
                s.Seizure(
                    asset=asset,
                    amount=fmt_units(units, info.decimals),
                    price=fmt_units(mark, info.price_decimals) if mark is not None else "0",
                    value=money(collateral_value(state, asset, units)),
                )
            )
        residual = remainder if remainder > 0 and not acct.positions else 0
        self.decider.record(
            s.Bankruptcy,
            account=account_id,
            equity=money(v.equity),
            maintenance_margin=money(v.maintenance_margin),
            deficit=money(deficit),
            insurance_fund=money(fund),
            cover=money(cover),
            remainder=money(remainder),
            residual=money(residual),
            seized=seized,
        )
        if remainder == 0:
            self.take_over(account_id)
            touched: set[str] = set()
        else:
            touched = self.deleverage(account_id, remainder)
        assert not acct.positions and not acct.balances and acct.cash == 0, "R10.5/R10.6 end state"
        return touched

    # --- R10.6 counterparties ---------------------------------------------------------------
    #
    # A crash makes many bankruptcies in one pass, each ranking the tens of thousands of holders
    # of the other side. Within a pass the marks and listings are fixed, so an account's
    # (equity, gross notional) changes only when a handling changes the account (``dirty``);
    # and no non-system account opens or grows a position (R10.3 to R10.6 move positions
    # toward zero, or to @insurance). So each side of an instrument gets one heap per pass, in
    # R10.6 order by ``rank_key``; at each R10.6 start the changed accounts get a fresh
    # entry (a version per account makes the older ones stale), and a ranking pops the first
    # few and puts back those still valid. The order is the rule's order exactly: a run of equal
    # keys is ordered with ``outranks``.

    def _standing(self, account_id: str) -> tuple[int, int]:
        """(equity, Σ |q| × mark) of an account now, recomputed only if it changed."""
        acct = self.state.accounts[account_id]
        seen = self.standings.get(account_id)
        if seen is not None and seen[0] == acct.cash and seen[1] == acct.positions and seen[2] == acct.balances:
            return seen[3]
        figures = (value(self.state, acct).equity, gross_notional(self.state, acct))
        version = seen[4] + 1 if seen is not None else 0
        self.standings[account_id] = (acct.cash, dict(acct.positions), dict(acct.balances), figures, version)
        return figures

    def _entry(self, account_id: str) -> tuple[int, int, str, int]:
        equity, gross = self._standing(account_id)
        return rank_key(account_id, equity, gross, self.standings[account_id][4])

    def _side(self, instrument: str, long: bool) -> list[tuple[int, int, str, int]]:
        """The heap of the non-system holders of one side of ``instrument`` (built once a pass)."""
        heap = self.sides.get((instrument, long))
        if heap is None:
            accounts = self.state.accounts
            heap = [
                self._entry(other)
                for other in self.state.holders[instrument]
                if not is_system(other) and (accounts[other].positions[instrument] > 0) == long
            ]
            heapq.heapify(heap)
            self.sides[(instrument, long)] = heap
        return heap

    def _refresh(self) -> None:
        """Fresh entries for the accounts changed since the last R10.6 start."""
        for account_id in sorted(self.dirty):
            seen = self.standings.get(account_id)
            if seen is None or is_system(account_id):
                continue  # in no heap yet: a heap built later values it then
            self._standing(account_id)
            if self.standings[account_id][4] == seen[4]:
                continue  # unchanged figures
            entry = self._entry(account_id)
            for instrument, qty in self.state.accounts[account_id].positions.items():
                heap = self.sides.get((instrument, qty > 0))
                if heap is not None:
                    heapq.heappush(heap, entry)
        self.dirty.clear()

    def rank_start(self, account_id: str, instruments: list[str]) -> Callable[[str], tuple[int, int]]:
        """R10.6 starts: equity and leverage of every possible counterparty, once. The side
        heaps of every instrument to handle are brought up to this moment now, before any step
        (a step's counterparties keep these figures for the later instruments); the figures of
        a counterparty as of now."""
        self._refresh()
        positions = self.state.accounts[account_id].positions
        for instrument in instruments:
            self._side(instrument, positions[instrument] < 0)
        standings = self.standings
        return lambda other: standings[other][3]

    def counterparties(
        self, account_id: str, instrument: str, long: bool, size: int
    ) -> tuple[list[tuple[str, int, int]], int]:
        """R10.6 steps (counterparty, Δ, rank) against a position of |q| = ``size``, down the
        ranking of the other non-system holders of the ``long`` side of ``instrument`` (read
        now: who holds that side is read when the position is handled); and what is left."""
        heap = self._side(instrument, long)
        accounts, standings = self.state.accounts, self.standings
        popped: list[tuple[int, int, str, int]] = []
        steps: list[tuple[str, int, int]] = []
        left = size
        rank = 0
        while heap and left:
            valid = []
            for entry in pop_run(heap):
                other = entry[2]
                seen = standings[other]
                if entry[3] != seen[4]:
                    continue  # stale: a fresher entry is in the heap
                qty = accounts[other].positions.get(instrument, 0)
                if qty == 0 or (qty > 0) != long:
                    continue  # no longer on this side: it never comes back within the pass
                popped.append(entry)
                if other == account_id:
                    continue  # the bankrupt account itself (it ends flat)
                assert other in self.dirty or (
                    seen[0] == accounts[other].cash and seen[1] == accounts[other].positions
                    and seen[2] == accounts[other].balances
                ), "R10.6: an account changed in the pass without being marked dirty"
                valid.append(other)
            for other in order_run(valid, lambda k: standings[k][3]):
                if not left:
                    break
                rank += 1
                delta = min(abs(accounts[other].positions[instrument]), left)
                left -= delta
                steps.append((other, delta, rank))
        for entry in popped:  # still valid: later bankruptcies of the pass rank them again
            heapq.heappush(heap, entry)
        return steps, left

    def take_over(self, account_id: str) -> None:
        """R10.5: every position moves at mark to @insurance, no penalty."""
        state = self.state
        acct = state.accounts[account_id]
        money = self.decider.money
        for instrument in sorted(acct.positions):
            info = state.instruments[instrument]
            mark = state.marks[info.underlying]
            qty = acct.positions[instrument]
            v = value(state, acct)
            n = notional(info, qty, mark)
            self.decider.record(
                s.Liquidation,
                rule="R10.5",
                account=account_id,
                instrument=instrument,
                price=fmt_units(mark, state.assets[info.underlying].price_decimals),
                qty=fmt_units(abs(qty), info.qty_decimals),
                k=abs(qty),
                position_before=fmt_units(qty, info.qty_decimals),
                position_after="0",
                penalty="0",
                penalty_uncapped="0",
                equity_before=money(v.equity),
                initial_margin_before=money(v.initial_margin),
                maintenance_margin_before=money(v.maintenance_margin),
                equity_after=money(v.equity),
                initial_margin_after=money(
                    v.initial_margin - margin_term(n, info.imf_num, info.imf_den)
                ),
                maintenance_margin_after=money(
                    v.maintenance_margin - margin_term(n, info.mmf_num, info.mmf_den)
                ),
            )

    def deleverage(self, account_id: str, remainder: int) -> set[str]:
        """R10.6: split R over the positions and close them against the ranked counterparties."""
        state = self.state
        money = self.decider.money
        acct = state.accounts[account_id]
        instruments = sorted(acct.positions)
        # R10.6: R_i = floor(R × m_i / Σm); the leftover minor units one each, largest m_i first.
        contributions = {}
        for instrument in instruments:
            info = state.instruments[instrument]
            n = notional(info, acct.positions[instrument], state.marks[info.underlying])
            contributions[instrument] = margin_term(n, info.mmf_num, info.mmf_den)
        total_m = sum(contributions.values())
        shares = {i: remainder * m // total_m for i, m in contributions.items()}
        leftover = remainder - sum(shares.values())
        for instrument in sorted(instruments, key=lambda i: (-contributions[i], i))[:leftover]:
            shares[instrument] += 1
        standing = self.rank_start(account_id, instruments)

        touched: set[str] = set()
        for instrument in instruments:
            info = state.instruments[instrument]
            mark = state.marks[info.underlying]
            price = fmt_units(mark, state.assets[info.underlying].price_decimals)
            q_a = acct.positions[instrument]
            size = abs(q_a)
            share = shares[instrument]
            steps, left = self.counterparties(account_id, instrument, q_a < 0, size)
            paid_total = 0
            if left:
                steps.append((INSURANCE, left, 0))  # the rest is held by @insurance
            for index, (other, delta, rank) in enumerate(steps):
                last = index == len(steps) - 1
                paid = share - paid_total if last else share * delta // size
                paid_total += paid
                equity, gross = standing(other) if other != INSURANCE else (0, 0)
                self.decider.record(
                    s.Deleverage,
                    account=account_id,
                    counterparty=other,
                    instrument=instrument,
                    price=price,
                    qty=fmt_units(delta, info.qty_decimals),
                    position_before=fmt_units(acct.positions[instrument], info.qty_decimals),
                    counterparty_position_before=fmt_units(
                        state.accounts[other].positions.get(instrument, 0), info.qty_decimals
                    ),
                    share=money(share),
                    paid=money(paid),
                    rank=rank,
                    counterparty_equity=money(equity),
                    counterparty_notional=money(gross),
                )
                if other != INSURANCE:
                    touched.add(other)
                    self.dirty.add(other)  # its figures stay those of this R10.6 start
        return touched
