"""A screen that finds, after a price event, the accounts that can have become liquidatable,
without valuing the others (R10.1 allows any method that handles the same accounts).

For an account h, the margin buffer is b(m) = equity − MM at marks m (liquidatable iff < 0,
R6.7). It is a sum of terms, each depending on one asset's mark: cash, the collateral value
floor(b·p·(1−haircut)) and, per position on that asset, q·p·ns − ceil(|q|·p·ns·MMF). Between
the marks m⁰ of the last exact valuation and any later marks m, each rounded term moves by its
linear part give or take less than one minor unit, so

    b(m) >= b(m⁰) − N + Σ_a s_a·(m_a − m⁰_a)

with N the number of rounded terms and s_a the slope of the asset-a terms. The allowance
A = b(m⁰) − N is split evenly over the k assets with a non-zero slope, which gives each a price
band around m⁰_a; while every mark stays inside its band the account cannot be liquidatable.
Crossing a band (a heap per asset and direction) makes the account a candidate, to be valued
exactly. Slopes are bounded in integers, always on the side that narrows the band.

Whenever an account's cash, balances or positions change (``LedgerState.touched``) or a
listing changes its parameters, its bands are recomputed from a fresh exact valuation.
"""

from __future__ import annotations

import heapq

from projections.state import LedgerState, is_system
from projections.valuation import Valuation, value


class Screen:
    def __init__(self, state: LedgerState) -> None:
        self.state = state
        self.version: dict[str, int] = {}
        self.falls: dict[str, list[tuple[int, int, str]]] = {}  # asset -> heap of (−floor, v, h)
        self.rises: dict[str, list[tuple[int, int, str]]] = {}  # asset -> heap of (ceiling, v, h)
        self.always: dict[str, set[str]] = {}  # asset -> accounts with no allowance left
        self.always_of: dict[str, set[str]] = {}  # account -> the assets it is "always" on
        self.live_of: dict[str, int] = {}  # account -> heap entries of its current version
        self.live = 0  # heap entries of current versions (stale ones are dropped by compact)
        self.refreshes = 0
        self.rebuild()

    def rebuild(self) -> None:
        self.version.clear()
        self.falls.clear()
        self.rises.clear()
        self.always.clear()
        self.always_of.clear()
        self.live_of.clear()
        self.live = 0
        for account_id in self.state.accounts:
            if not is_system(account_id):
                self.bound(account_id)
        self.state.touched.clear()

    def bound(self, account_id: str, v: Valuation | None = None) -> None:
        """Recompute the account's price bands from an exact valuation at the current marks
        (``v``, when the caller has just computed it on the unchanged state)."""
        state = self.state
        version = self.version.get(account_id, 0) + 1
        self.version[account_id] = version
        self.live -= self.live_of.pop(account_id, 0)  # its older entries are stale from here
        groups = self.always_of.pop(account_id, None)
        if groups:
            for asset in groups:
                self.always[asset].discard(account_id)
        acct = state.accounts[account_id]
        slopes: dict[str, list[int]] = {}  # asset -> [lower, upper] bound of the slope
        terms = 0
        instruments = state.instruments
        for instrument, qty in acct.positions.items():
            info = instruments[instrument]
            # q·ns − |q|·ns·MMF per price unit: exact integer part minus a fraction in [0, ...)
            linear = qty * info.notional_scale
            mm = (linear if linear > 0 else -linear) * info.mmf_num
            den = info.mmf_den
            pair = slopes.get(info.underlying)
            if pair is None:
                slopes[info.underlying] = [linear + (-mm // den), linear - mm // den]
            else:
                pair[0] += linear + (-mm // den)
                pair[1] += linear - mm // den
            terms += 1
        if acct.balances:
            marks = state.marks
            for asset, units in acct.balances.items():
                if units <= 0 or asset not in marks:
                    continue  # no mark yet: a first mark can only add collateral value (R5.2)
                info = state.assets[asset]
                num = units * (info.haircut_den - info.haircut_num) * 10**state.scale
                den = 10 ** (info.decimals + info.price_decimals) * info.haircut_den
                pair = slopes.get(asset)
                if pair is None:
                    slopes[asset] = [num // den, -(-num // den)]
                else:
                    pair[0] += num // den
                    pair[1] -= -num // den
                terms += 1
        if not slopes:
            return
        if v is None:
            v = value(state, acct)
        allowance = v.equity - v.maintenance_margin - terms
        moving = [(a, lo, hi) for a, (lo, hi) in slopes.items() if lo or hi]
        if allowance < 0 or not moving:
            # Too close to call (or only rounding can move it): value it on every price event.
            self.always_of[account_id] = set(slopes)
            for asset in slopes:
                self.always.setdefault(asset, set()).add(account_id)
            return
        share = allowance // len(moving)
        marks = state.marks
        pushed = 0
        for asset, lo, hi in moving:
            mark = marks[asset]
            steep = max(-lo if lo < 0 else lo, hi if hi > 0 else -hi, 1)
            band = share // steep  # price units the mark may move against the account
            if hi > 0:  # the slope may be positive: loses when the price falls
                heap = self.falls.get(asset)
                if heap is None:
                    heap = self.falls[asset] = []
                heapq.heappush(heap, (band - mark, version, account_id))
                pushed += 1
            if lo < 0:  # the slope may be negative: loses when the price rises
                heap = self.rises.get(asset)
                if heap is None:
                    heap = self.rises[asset] = []
                heapq.heappush(heap, (mark + band, version, account_id))
                pushed += 1
        self.live_of[account_id] = pushed
        self.live += pushed

    def crossed(self, asset: str, price: int) -> set[str]:
        """The accounts whose band on ``asset`` the new mark leaves (to be valued exactly)."""
        found = set(self.always.get(asset, ()))
        version = self.version
        falls = self.falls.get(asset)
        while falls and -falls[0][0] > price:  # price below the account's floor
            _, v, account_id = heapq.heappop(falls)
            if version.get(account_id) == v:
                found.add(account_id)
        rises = self.rises.get(asset)
        while rises and rises[0][0] < price:  # price above the account's ceiling
            _, v, account_id = heapq.heappop(rises)
            if version.get(account_id) == v:
                found.add(account_id)
        return found

    def refresh(self, accounts: set[str], fresh: dict[str, Valuation] | None = None) -> None:
        """Re-bound the given accounts and every account touched since the last refresh
        (``fresh``: exact valuations at the current state, reused)."""
        touched = self.state.touched
        get = fresh.get if fresh else {}.get
        for account_id in (accounts | touched) if accounts else touched:
            if not is_system(account_id):
                self.bound(account_id, get(account_id))
        touched.clear()
        self.refreshes += 1
        if self.refreshes % 1024 == 0:
            self.compact()

    def compact(self) -> None:
        """Drop stale heap entries once they outnumber the live ones."""
        size = sum(len(h) for h in self.falls.values()) + sum(len(h) for h in self.rises.values())
        if size <= 4 * max(self.live, 1024):
            return
        version = self.version
        for heaps in (self.falls, self.rises):
            for asset, heap in heaps.items():
                kept = [e for e in heap if version.get(e[2]) == e[1]]
                heapq.heapify(kept)
                heaps[asset] = kept
        self.live = sum(len(h) for h in self.falls.values()) + sum(len(h) for h in self.rises.values())
