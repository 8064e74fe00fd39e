"""A plain reference model of the rulebook for the stateful tests (tests/test_stateful.py).

It shares no code with ``projections`` or ``clearing``: amounts are exact ``Fraction``s in
natural units (dollars, coins, contracts), every rule is written the way the rulebook states
it (R6 valuation from its definition, R7/R8 checks by trying the move and valuing the
result, the R10.1 pass by literally visiting every non-system account in byte order, the R10.3
``k`` by scanning from 1), and no index or optimisation is kept. Slow and obvious on purpose.

``Model.process(inp)`` applies one well-formed input and returns the decisions the rules
should produce, as tuples comparable with ``decision_tuple`` of the engine's decisions.
"""

from __future__ import annotations

import math
from fractions import Fraction

from events import schema

S = 6  # decimals of the settlement asset in these tests (R1.2)
M = 10**S
MINOR = Fraction(1, M)
ZERO = Fraction(0)

INSURANCE, FEES, EXTERNAL = "@insurance", "@fees", "@external"
SYSTEM = (EXTERNAL, FEES, INSURANCE)


def floor_m(x: Fraction) -> Fraction:
    """R1.3: a value that counts for an account, to the minor unit toward −∞."""
    return Fraction(math.floor(x * M), M)


def ceil_m(x: Fraction) -> Fraction:
    """R1.3: a value that counts against an account, to the minor unit toward +∞."""
    return Fraction(math.ceil(x * M), M)


def is_system(account: str) -> bool:
    return account.startswith("@")


def sign(x) -> int:
    return (x > 0) - (x < 0)


class ModelAccount:
    __slots__ = ("cash", "balances", "positions")

    def __init__(self) -> None:
        self.cash = ZERO  # settlement asset (R6.1)
        self.balances: dict[str, Fraction] = {}  # other assets, non-zero
        self.positions: dict[str, Fraction] = {}  # instrument -> signed contracts, non-zero


class Model:
    def __init__(self) -> None:
        self.settlement: str | None = None
        # asset -> [decimals, price_decimals, haircut, settlement]
        self.assets: dict[str, list] = {}
        # instrument -> [underlying, qty_decimals, IMF, MMF, LF]
        self.instruments: dict[str, list] = {}
        self.marks: dict[str, Fraction] = {}
        self.accounts: dict[str, ModelAccount] = {}

    # --- moves --------------------------------------------------------------------------------
    def open(self, account: str) -> ModelAccount:
        if account not in self.accounts:
            self.accounts[account] = ModelAccount()
        return self.accounts[account]

    def balance(self, account: str, asset: str) -> Fraction:
        acct = self.accounts[account]
        return acct.cash if asset == self.settlement else acct.balances.get(asset, ZERO)

    def add(self, account: str, asset: str, amount: Fraction) -> None:
        acct = self.accounts[account]
        if asset == self.settlement:
            acct.cash += amount
            return
        after = acct.balances.get(asset, ZERO) + amount
        if after:
            acct.balances[asset] = after
        else:
            acct.balances.pop(asset, None)

    def add_position(self, account: str, instrument: str, qty: Fraction) -> None:
        positions = self.accounts[account].positions
        after = positions.get(instrument, ZERO) + qty
        if after:
            positions[instrument] = after
        else:
            positions.pop(instrument, None)

    def trade_at(self, account: str, instrument: str, qty: Fraction, price: Fraction) -> None:
        """``qty`` (signed) contracts into the account at ``price``, paid from its cash."""
        self.add_position(account, instrument, qty)
        self.accounts[account].cash -= qty * price

    def pay(self, payer: str, payee: str, amount: Fraction) -> None:
        self.accounts[payer].cash -= amount
        self.accounts[payee].cash += amount

    # --- R6 -----------------------------------------------------------------------------------
    def mark(self, instrument: str) -> Fraction:
        return self.marks[self.instruments[instrument][0]]

    def collateral_value(self, asset: str, amount: Fraction) -> Fraction:
        """R6.2 for one balance, R5.2: 0 without a mark."""
        if amount <= 0 or asset not in self.marks:
            return ZERO
        return floor_m(amount * self.marks[asset] * (1 - self.assets[asset][2]))

    def valuation(self, account: str) -> tuple[Fraction, Fraction, Fraction]:
        """(equity, IM, MM) by R6.1 to R6.5."""
        acct = self.accounts[account]
        equity = acct.cash
        for asset, amount in acct.balances.items():
            equity += self.collateral_value(asset, amount)
        im = mm = ZERO
        for instrument, qty in acct.positions.items():
            _, _, imf, mmf, _ = self.instruments[instrument]
            mark = self.mark(instrument)
            equity += qty * mark
            im += ceil_m(abs(qty) * mark * imf)
            mm += ceil_m(abs(qty) * mark * mmf)
        return equity, im, mm

    def notional(self, account: str) -> Fraction:
        return sum(
            (abs(q) * self.mark(i) for i, q in self.accounts[account].positions.items()), ZERO
        )

    # --- one input ----------------------------------------------------------------------------
    def process(self, inp: schema.Input) -> list[tuple]:
        out: list[tuple] = []
        if not self.accounts:  # R2.2: the system accounts exist from the first event
            for account in SYSTEM:
                self.open(account)
        kind = type(inp)
        if kind is schema.Asset:
            if inp.asset in self.assets:
                self.assets[inp.asset][2] = Fraction(inp.haircut)  # R4.2
            else:
                self.assets[inp.asset] = [
                    inp.decimals, inp.price_decimals, Fraction(inp.haircut), inp.settlement
                ]
                if inp.settlement:
                    self.settlement = inp.asset
            self.liquidation_pass(out)  # R4.4
        elif kind is schema.Instrument:
            fractions = [
                Fraction(inp.initial_margin),
                Fraction(inp.maintenance_margin),
                Fraction(inp.liquidation_fee),
            ]
            self.instruments[inp.instrument] = [inp.underlying, inp.qty_decimals, *fractions]
            self.liquidation_pass(out)  # R4.4
        elif kind is schema.Price:
            self.marks[inp.asset] = Fraction(inp.price)
            self.liquidation_pass(out)  # R5.3
        elif kind is schema.Deposit:  # R7.1
            self.open(inp.account)
            self.add(EXTERNAL, inp.asset, -Fraction(inp.amount))
            self.add(inp.account, inp.asset, Fraction(inp.amount))
        elif kind is schema.Withdrawal:  # R7.2
            amount = Fraction(inp.amount)
            refusal = self.outflow_refusal(inp.account, inp.asset, amount)
            if refusal:
                out.append(("rejected", *refusal))
            else:
                self.add(inp.account, inp.asset, -amount)
                self.add(EXTERNAL, inp.asset, amount)
        elif kind is schema.Transfer:  # R7.3
            amount = Fraction(inp.amount)
            refusal = self.outflow_refusal(inp.from_, inp.asset, amount)
            if refusal:
                out.append(("rejected", *refusal))
            else:
                self.open(inp.to)
                self.add(inp.from_, inp.asset, -amount)
                self.add(inp.to, inp.asset, amount)
        elif kind is schema.Trade:  # R8
            refusal = self.trade_refusal(inp)
            if refusal:
                out.append(("rejected", *refusal))
            else:
                self.apply_trade(inp)
                self.liquidation_pass(out)  # R10.1
        elif kind is schema.Funding:  # R9
            self.funding(inp, out)
            self.liquidation_pass(out)  # R9.3
        else:  # pragma: no cover
            raise AssertionError(kind)
        return out

    # --- R7 -----------------------------------------------------------------------------------
    def outflow_refusal(self, account: str, asset: str, amount: Fraction):
        if account not in self.accounts:
            return ("unknown_account", account)
        if amount > self.balance(account, asset):
            return ("insufficient_balance", account)
        if is_system(account):  # R11.2
            return None
        self.add(account, asset, -amount)  # try it, value the result, undo
        equity, im, _ = self.valuation(account)
        self.add(account, asset, amount)
        return ("insufficient_margin", account) if equity < im else None

    # --- R8 -----------------------------------------------------------------------------------
    def trade_refusal(self, inp: schema.Trade):
        for party in (inp.buyer, inp.seller):
            if party not in self.accounts:
                return ("unknown_account", party)
        if inp.buyer == inp.seller:
            return ("self_trade", inp.buyer)
        if self.instruments[inp.instrument][0] not in self.marks:
            return ("no_mark", "")
        qty, price = Fraction(inp.qty), Fraction(inp.price)
        for party, signed, fee in (
            (inp.buyer, qty, Fraction(inp.buyer_fee)),
            (inp.seller, -qty, Fraction(inp.seller_fee)),
        ):
            if is_system(party):
                continue
            before = self.accounts[party].positions.get(inp.instrument, ZERO)
            after = before + signed
            if before and abs(after) < abs(before) and sign(after) in (0, sign(before)):
                continue  # R8.4: only reduces the position
            self.trade_at(party, inp.instrument, signed, price)
            self.accounts[party].cash -= fee
            equity, im, _ = self.valuation(party)
            self.accounts[party].cash += fee
            self.trade_at(party, inp.instrument, -signed, price)
            if equity < im:
                return ("insufficient_margin", party)
        return None

    def apply_trade(self, inp: schema.Trade) -> None:
        """R8.3"""
        qty, price = Fraction(inp.qty), Fraction(inp.price)
        buyer_fee, seller_fee = Fraction(inp.buyer_fee), Fraction(inp.seller_fee)
        self.trade_at(inp.buyer, inp.instrument, qty, price)
        self.trade_at(inp.seller, inp.instrument, -qty, price)
        self.pay(inp.buyer, FEES, buyer_fee)
        self.pay(inp.seller, FEES, seller_fee)

    # --- R9 -----------------------------------------------------------------------------------
    def funding(self, inp: schema.Funding, out: list[tuple]) -> None:
        rate = Fraction(inp.rate)
        mark = self.marks.get(self.instruments[inp.instrument][0], ZERO)
        paid = received = ZERO
        payments = []
        for account in sorted(self.accounts):
            qty = self.accounts[account].positions.get(inp.instrument)
            if not qty:
                continue
            x = qty * mark * rate
            if x > 0:
                amount = ceil_m(x)  # R9.2: paid, counts against the holder
                paid += amount
                signed = -amount
            else:
                amount = floor_m(-x)  # R9.2: received, counts for the holder
                received += amount
                signed = amount
            self.accounts[account].cash += signed
            payments.append((account, qty, signed))
        self.accounts[INSURANCE].cash += paid - received
        out.append(
            ("funding_settled", inp.instrument, rate, mark, paid, received, paid - received,
             tuple(payments))
        )

    # --- R10 ----------------------------------------------------------------------------------
    def liquidation_pass(self, out: list[tuple]) -> None:
        """R10.1, literally: visit every non-system account in byte order, again while a
        visit handled one."""
        while True:
            handled = False
            for account in sorted(a for a in self.accounts if not is_system(a)):
                equity, _, mm = self.valuation(account)
                if equity < mm:  # R6.7
                    handled = True
                    if equity >= 0:  # R10.2
                        self.solvent(account, out)
                    else:
                        self.bankrupt(account, out)
            if not handled:
                return

    def solvent(self, account: str, out: list[tuple]) -> None:
        """R10.3"""
        acct = self.accounts[account]
        equity, im, mm = self.valuation(account)
        while acct.positions and equity < im:

            def contribution(i: str) -> Fraction:
                return ceil_m(abs(acct.positions[i]) * self.mark(i) * self.instruments[i][3])

            instrument = min(acct.positions, key=lambda i: (-contribution(i), i))
            _, qty_decimals, imf, _, lf = self.instruments[instrument]
            mark = self.mark(instrument)
            qty = acct.positions[instrument]
            unit = Fraction(1, 10**qty_decimals)
            units = int(abs(qty) / unit)
            im_other = im - ceil_m(abs(qty) * mark * imf)
            cap = max(ZERO, equity)
            # Scan k from 1 (this is the slow, obvious reading). In minor units, as integers:
            # penalty(k) = min(ceil(k·x), P), IM after = IM others + ceil((Q − k)·y).
            x, y = unit * mark * lf * M, unit * mark * imf * M
            xn, xd, yn, yd = x.numerator, x.denominator, y.numerator, y.denominator
            cap_minor, room_minor = int(cap * M), int((equity - im_other) * M)
            k = units  # R10.3: none restores equity >= IM: close the whole position
            for candidate in range(1, units + 1):
                penalty_minor = min(-((-candidate * xn) // xd), cap_minor)
                if penalty_minor - ((-(units - candidate) * yn) // yd) <= room_minor:
                    k = candidate
                    break
            uncapped = ceil_m(k * unit * mark * lf)
            penalty = min(uncapped, cap)
            moved = -sign(qty) * k * unit
            self.trade_at(account, instrument, moved, mark)
            self.trade_at(INSURANCE, instrument, -moved, mark)
            self.pay(account, INSURANCE, penalty)
            after = self.valuation(account)
            out.append(
                ("liquidation", "R10.3", account, instrument, k * unit, mark, penalty, uncapped,
                 qty, qty + moved, equity, im, mm, *after)
            )
            equity, im, mm = after

    def bankrupt(self, account: str, out: list[tuple]) -> None:
        """R10.4 to R10.7"""
        acct = self.accounts[account]
        equity, _, mm = self.valuation(account)
        deficit = -equity
        fund = self.accounts[INSURANCE].cash
        cover = min(deficit, max(ZERO, fund))
        remainder = deficit - cover
        seized = []
        for asset in sorted(acct.balances):
            amount = acct.balances[asset]
            worth = self.collateral_value(asset, amount)
            seized.append((asset, amount, self.marks.get(asset, ZERO), worth))
            self.add(account, asset, -amount)
            self.add(INSURANCE, asset, amount)
            self.pay(INSURANCE, account, worth)
        self.pay(INSURANCE, account, cover)
        residual = remainder if remainder > 0 and not acct.positions else ZERO
        out.append(
            ("bankruptcy", account, equity, mm, deficit, fund, cover, remainder, residual,
             tuple(seized))
        )
        if remainder == 0:  # R10.5
            for instrument in sorted(acct.positions):
                before = self.valuation(account)
                qty = acct.positions[instrument]
                mark = self.mark(instrument)
                self.trade_at(account, instrument, -qty, mark)
                self.trade_at(INSURANCE, instrument, qty, mark)
                out.append(
                    ("liquidation", "R10.5", account, instrument, abs(qty), mark, ZERO, ZERO,
                     qty, ZERO, *before, *self.valuation(account))
                )
        elif not acct.positions:  # R10.6, first point
            self.pay(INSURANCE, account, remainder)
        else:
            self.deleverage(account, remainder, out)
        assert acct.cash == 0 and not acct.positions and not acct.balances, (
            "reference model: a bankrupt account must end empty (R10.5, R10.6)"
        )

    def deleverage(self, account: str, remainder: Fraction, out: list[tuple]) -> None:
        """R10.6"""
        acct = self.accounts[account]
        instruments = sorted(acct.positions)
        m = {
            i: ceil_m(abs(acct.positions[i]) * self.mark(i) * self.instruments[i][3])
            for i in instruments
        }
        total = sum(m.values(), ZERO)
        share = {i: floor_m(remainder * m[i] / total) for i in instruments}
        leftover = int((remainder - sum(share.values(), ZERO)) * M)
        assert 0 <= leftover < len(instruments)
        for i in sorted(instruments, key=lambda i: (-m[i], i))[:leftover]:
            share[i] += MINOR
        # Equity and leverage once, as R10.6 starts (after R10.4).
        snapshot = {}
        for other in self.accounts:
            if other != account and not is_system(other):
                snapshot[other] = (self.valuation(other)[0], self.notional(other))

        def rank_key(other: str):
            equity, gross = snapshot[other]
            if equity > 0:
                return (0, -(gross / equity), other)  # higher effective leverage first, exact
            return (1, ZERO, other)

        for instrument in instruments:
            mark = self.mark(instrument)
            q_a = acct.positions[instrument]
            size, side = abs(q_a), sign(q_a)
            opposite = sorted(
                (o for o in snapshot
                 if sign(self.accounts[o].positions.get(instrument, ZERO)) == -side),
                key=rank_key,
            )
            left = size
            steps = []
            for rank, other in enumerate(opposite, start=1):
                if left == 0:
                    break
                delta = min(abs(self.accounts[other].positions[instrument]), left)
                left -= delta
                steps.append((other, delta, rank))
            if left:
                steps.append((INSURANCE, left, 0))
            paid_total = ZERO
            for index, (other, delta, rank) in enumerate(steps):
                if index == len(steps) - 1:
                    paid = share[instrument] - paid_total
                else:
                    paid = floor_m(share[instrument] * delta / size)
                paid_total += paid
                position_before = acct.positions[instrument]
                other_before = self.accounts[other].positions.get(instrument, ZERO)
                self.trade_at(account, instrument, -side * delta, mark)
                self.trade_at(other, instrument, side * delta, mark)
                self.pay(other, account, paid)
                other_equity, other_gross = snapshot.get(other, (ZERO, ZERO))
                out.append(
                    ("deleverage", account, other, instrument, delta, mark, position_before,
                     other_before, share[instrument], paid, rank, other_equity, other_gross)
                )


def decision_tuple(dec: schema.Decision) -> tuple:
    """An engine decision in the shape of the model's predictions."""
    F = Fraction
    kind = type(dec)
    if kind is schema.Rejected:
        return ("rejected", dec.reason, "" if dec.reason == "no_mark" else dec.account)
    if kind is schema.Liquidation:
        return (
            "liquidation", dec.rule, dec.account, dec.instrument, F(dec.qty), F(dec.price),
            F(dec.penalty), F(dec.penalty_uncapped), F(dec.position_before),
            F(dec.position_after), F(dec.equity_before), F(dec.initial_margin_before),
            F(dec.maintenance_margin_before), F(dec.equity_after), F(dec.initial_margin_after),
            F(dec.maintenance_margin_after),
        )
    if kind is schema.Bankruptcy:
        return (
            "bankruptcy", dec.account, F(dec.equity), F(dec.maintenance_margin), F(dec.deficit),
            F(dec.insurance_fund), F(dec.cover), F(dec.remainder), F(dec.residual),
            tuple((z.asset, F(z.amount), F(z.price), F(z.value)) for z in dec.seized),
        )
    if kind is schema.Deleverage:
        return (
            "deleverage", dec.account, dec.counterparty, dec.instrument, F(dec.qty), F(dec.price),
            F(dec.position_before), F(dec.counterparty_position_before), F(dec.share),
            F(dec.paid), dec.rank, F(dec.counterparty_equity), F(dec.counterparty_notional),
        )
    if kind is schema.FundingSettled:
        return (
            "funding_settled", dec.instrument, F(dec.rate), F(dec.price), F(dec.paid),
            F(dec.received), F(dec.dust),
            tuple((p.account, F(p.position), F(p.amount)) for p in dec.payments),
        )
    raise AssertionError(f"unknown decision {dec!r}")
