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
