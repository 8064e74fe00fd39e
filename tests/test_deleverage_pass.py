"""R10.6 in a pass with many bankruptcies: the per-pass side heaps (clearing/liquidation.py
``Pass.counterparties``) record the same decisions, byte for byte, as the simple path that
values every holder and sorts them with the rule's comparison at each bankruptcy."""

from __future__ import annotations

import random
from functools import cmp_to_key

import msgspec
import pytest

from clearing import liquidation
from clearing.engine import process
from events import schema as s
from events.canonical import canonical
from events.numbers import fmt_units
from events.parse import parse_line
from projections.state import INSURANCE, LedgerState, is_system
from projections.valuation import gross_notional, margin_term, notional, value

MARKET = [
    '{"type":"asset","asset":"USD","decimals":6,"price_decimals":0,"haircut":"0","settlement":true}',
    '{"type":"asset","asset":"BTC","decimals":8,"price_decimals":2,"haircut":"0.1"}',
    '{"type":"instrument","instrument":"BTC-PERP","underlying":"BTC","qty_decimals":4,"initial_margin":"0.1","maintenance_margin":"0.05","liquidation_fee":"0.01"}',
    '{"type":"instrument","instrument":"XBT-PERP","underlying":"BTC","qty_decimals":4,"initial_margin":"0.1","maintenance_margin":"0.05","liquidation_fee":"0.01"}',
    '{"type":"price","asset":"BTC","price":"60000"}',
]


def simple_deleverage(self, account_id: str, remainder: int) -> set[str]:
    """R10.6 as first written: every holder valued and sorted at each bankruptcy."""
    state = self.state
    money = self.decider.money
    acct = state.accounts[account_id]
    instruments = sorted(acct.positions)
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
    snapshot: dict[str, tuple[int, int]] = {}
    for instrument in instruments:
        for other in state.holders[instrument]:
            if other != account_id and not is_system(other) and other not in snapshot:
                other_acct = state.accounts[other]
                snapshot[other] = (value(state, other_acct).equity, gross_notional(state, other_acct))
    order = cmp_to_key(lambda a, b: liquidation.outranks(a, b, snapshot))
    touched: set[str] = set()
    for instrument in instruments:
        info = state.instruments[instrument]
        mark = state.marks[info.underlying]
        price = fmt_units(mark, state.assets[info.underlying].price_decimals)
        q_a = acct.positions[instrument]
        size = abs(q_a)
        share = shares[instrument]
        opposite = sorted(
            (o for o in state.holders[instrument]
             if o != account_id and not is_system(o)
             and (state.accounts[o].positions[instrument] > 0) != (q_a > 0)),
            key=order,
        )
        left, paid_total, steps = size, 0, []
        for rank, other in enumerate(opposite, start=1):
            if left == 0:
                break
            delta = min(abs(state.accounts[other].positions[instrument]), left)
            left -= delta
            steps.append((other, delta, rank))
        if left:
            steps.append((INSURANCE, left, 0))
        for index, (other, delta, rank) in enumerate(steps):
            last = index == len(steps) - 1
            paid = share - paid_total if last else share * delta // size
            paid_total += paid
            equity, gross = snapshot.get(other, (0, 0))
            self.decider.record(
                s.Deleverage, account=account_id, counterparty=other, instrument=instrument,
                price=price, qty=fmt_units(delta, info.qty_decimals),
                position_before=fmt_units(acct.positions[instrument], info.qty_decimals),
                counterparty_position_before=fmt_units(
                    state.accounts[other].positions.get(instrument, 0), info.qty_decimals),
                share=money(share), paid=money(paid), rank=rank,
                counterparty_equity=money(equity), counterparty_notional=money(gross),
            )
            if other != INSURANCE:
                touched.add(other)
    return touched


def crash_workload(seed: int, accounts: int = 90) -> list[str]:
    """Leveraged longs and shorts on two instruments of one underlying, deposits in few sizes
    (equal leverages: ties by id), no insurance fund, then crashes and rallies that make many
    bankruptcies with deleveraging in one pass."""
    rng = random.Random(seed)
    lines = list(MARKET)
    names = [f"a{i:03d}" for i in range(accounts)]
    for name in names:
        lines.append(f'{{"type":"deposit","account":"{name}","asset":"USD","amount":"{rng.choice([700, 800, 800, 1000, 2500])}"}}')
    for _ in range(accounts * 3):
        buyer, seller = rng.sample(names, 2)
        instrument = rng.choice(["BTC-PERP", "XBT-PERP"])
        qty = rng.choice(["0.01", "0.02", "0.03", "0.05"])
        lines.append(f'{{"type":"trade","instrument":"{instrument}","buyer":"{buyer}","seller":"{seller}",'
                     f'"qty":"{qty}","price":"60000","buyer_fee":"0","seller_fee":"0"}}')
    for price in rng.sample(["52000", "48000", "45000", "66000", "70000", "75000", "40000"], 4):
        lines.append(f'{{"type":"price","asset":"BTC","price":"{price}"}}')
    out = []
    for i, line in enumerate(lines):
        out.append(line[:-1] + f',"id":"i{i}","ts":"2026-03-01T00:00:00Z"}}')
    return out


def run(lines: list[str]) -> tuple[list[bytes], int, int]:
    state = LedgerState()
    log, bankruptcies, most = [], 0, 0
    for line in lines:
        inp = parse_line(line)
        assert not hasattr(inp, "code"), (line, inp)
        inp = msgspec.structs.replace(inp, seq=state.seq + 1)
        decisions = process(state, inp)
        log.append(canonical(inp))
        log.extend(canonical(d) for d in decisions)
        n = sum(type(d) is s.Bankruptcy for d in decisions)
        bankruptcies += n
        most = max(most, n)
    return log, bankruptcies, most


@pytest.mark.parametrize("seed", [2, 3, 4, 5])
def test_the_pass_heaps_record_what_the_simple_r10_6_records(seed, monkeypatch):
    lines = crash_workload(seed, accounts=200)
    fast, bankruptcies, most = run(lines)
    with monkeypatch.context() as patch:
        patch.setattr(liquidation.Pass, "deleverage", simple_deleverage)
        simple, _, _ = run(lines)
    assert fast == simple
    assert bankruptcies >= 10 and most >= 3  # several bankruptcies in one pass
    assert sum(b'"type":"deleverage"' in e for e in fast) >= 50
