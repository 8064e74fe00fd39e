"""R10.6 in a pass with many bankruptcies: the per-pass side heaps (clearing/liquidation.py
``Pass.counterparties``) record the same decisions, byte for byte, as the simple path that
values every holder and sorts them with the rule's comparison at each bankruptcy (the split of
R and the recording are shared: only the ranking is swapped)."""

from __future__ import annotations

import random
from functools import cmp_to_key

import msgspec
import pytest

from clearing import liquidation
from clearing.engine import process
from events import schema as s
from events.canonical import canonical
from events.parse import parse_line
from projections.state import LedgerState, is_system
from projections.valuation import gross_notional, value

MARKET = [
    '{"type":"asset","asset":"USD","decimals":6,"price_decimals":0,"haircut":"0","settlement":true}',
    '{"type":"asset","asset":"BTC","decimals":8,"price_decimals":2,"haircut":"0.1"}',
    '{"type":"instrument","instrument":"BTC-PERP","underlying":"BTC","qty_decimals":4,"initial_margin":"0.1","maintenance_margin":"0.05","liquidation_fee":"0.01"}',
    '{"type":"instrument","instrument":"XBT-PERP","underlying":"BTC","qty_decimals":4,"initial_margin":"0.1","maintenance_margin":"0.05","liquidation_fee":"0.01"}',
    '{"type":"price","asset":"BTC","price":"60000"}',
]


def simple_rank_start(self, account_id: str, instruments: list[str]):
    """R10.6 as first written: every holder of the account's instruments valued at each start."""
    state = self.state
    self.simple = {}
    for instrument in instruments:
        for other in state.holders[instrument]:
            if other != account_id and not is_system(other) and other not in self.simple:
                acct = state.accounts[other]
                self.simple[other] = (value(state, acct).equity, gross_notional(state, acct))
    return self.simple.__getitem__


def simple_counterparties(self, account_id: str, instrument: str, long: bool, size: int):
    """...and the other side sorted whole with the rule's comparison at each position."""
    state = self.state
    opposite = sorted(
        (o for o in state.holders[instrument]
         if o != account_id and not is_system(o) and (state.accounts[o].positions[instrument] > 0) == long),
        key=cmp_to_key(lambda a, b: liquidation.outranks(a, b, self.simple)),
    )
    left, steps = size, []
    for rank, other in enumerate(opposite, start=1):
        if left == 0:
            break
        delta = min(abs(state.accounts[other].positions[instrument]), left)
        left -= delta
        steps.append((other, delta, rank))
    return steps, left


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
        patch.setattr(liquidation.Pass, "rank_start", simple_rank_start)
        patch.setattr(liquidation.Pass, "counterparties", simple_counterparties)
        simple, _, _ = run(lines)
    assert fast == simple
    assert bankruptcies >= 10 and most >= 3  # several bankruptcies in one pass
    assert sum(b'"type":"deleverage"' in e for e in fast) >= 50
