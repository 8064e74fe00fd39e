"""The engine's fast paths give what the simple path gives.

- R8.4 / R6: the post-trade equity and requirements that ``_check_trade`` derives from the
  pre-trade valuation equal a fresh valuation after the trade is applied;
- R10.1: the screened engine (trade parties valued once, bands re-bounded from those values)
  records the same bytes as the engine without a screen on the seeded bench workload.
"""

from __future__ import annotations

import msgspec

from bench.workload import generate
from clearing.engine import Engine, _check_trade, process
from events import schema as s
from events.canonical import canonical
from events.parse import parse_line
from projections.state import LedgerState
from projections.valuation import value


def _inputs(n: int, accounts: int) -> list[s.Input]:
    return [parse_line(line) for line in generate(n, accounts, seed=7)]


def test_post_trade_valuation_equals_a_fresh_valuation():
    state = LedgerState()
    checked = 0
    for inp in _inputs(4000, 150):
        inp = msgspec.structs.replace(inp, seq=state.seq + 1)
        if type(inp) is s.Trade:
            post: dict = {}
            if _check_trade(state, inp, post) is None and post:
                decisions = process(state, inp)
                if not decisions:  # nothing liquidated: the state moved by the trade alone
                    for party, v in post.items():
                        fresh = value(state, state.accounts[party])
                        assert (v.equity, v.initial_margin, v.maintenance_margin) == (
                            fresh.equity, fresh.initial_margin, fresh.maintenance_margin), party
                        checked += 1
                continue
        process(state, inp)
    assert checked > 1000


def test_screened_engine_records_the_same_bytes_as_the_plain_engine():
    inputs = _inputs(6000, 120)
    logs = []
    for screened in (True, False):
        state = LedgerState()
        engine = Engine(state, screen=screened)
        out = []
        for inp in inputs:
            inp = msgspec.structs.replace(inp, seq=state.seq + 1)
            out.append(canonical(inp))
            out.extend(canonical(d) for d in engine.process(inp))
        logs.append(out)
    assert logs[0] == logs[1]
    assert len(logs[0]) > len(inputs)  # some decisions were recorded



def test_the_screen_heaps_stay_bounded_by_the_live_entries():
    """R10.1 screen: every re-bound leaves stale heap entries behind and ``compact`` drops
    them, so the engine's memory follows the number of accounts, not the length of the log.
    (It once counted every push as live, so compaction never ran: 120,000 entries here.)"""
    state = LedgerState()
    engine = Engine(state)
    screen = engine.screen
    for i, inp in enumerate(_inputs(24000, 60)):
        engine.process(msgspec.structs.replace(inp, seq=state.seq + 1))
        if i % 3000 == 2999:
            heaps = [h for side in (screen.falls, screen.rises) for h in side.values()]
            current = sum(1 for h in heaps for _, v, a in h if screen.version.get(a) == v)
            assert 0 < current <= screen.live  # live counts at least the current entries
            # compaction runs every 1024 refreshes once the entries pass 4 × max(live, 1024)
            assert sum(map(len, heaps)) <= 8 * max(current, 1024)
    assert screen.refreshes > 20000


def test_exposure_totals_in_one_pass_equal_the_sums_over_each_instruments_holders():
    """interfaces §4 exposure: the one-pass sum over the accounts' positions (the fast path a
    snapshot and the state document use) equals the sums over each instrument's holders."""
    from projections.snapshot import exposure_totals

    state = LedgerState()
    engine = Engine(state)
    for i, inp in enumerate(_inputs(5000, 80)):
        engine.process(msgspec.structs.replace(inp, seq=state.seq + 1))
        if i % 500 == 499:
            reference = {}
            for instrument in state.instruments:
                qtys = [state.accounts[h].positions[instrument] for h in state.holders.get(instrument, ())]
                reference[instrument] = (sum(q for q in qtys if q > 0), -sum(q for q in qtys if q < 0))
            assert exposure_totals(state) == reference
            assert any(long for long, _ in reference.values())
