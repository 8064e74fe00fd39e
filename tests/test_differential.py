"""Differential tests: the optimised paths give exactly the decisions of the simple ones.

- R10.1 literally: after every input visit *every* non-system account (the rulebook's wording);
- holders: visit only the accounts the input touched (clearing.engine.process);
- screen: on price events only the accounts whose price band was crossed (clearing.screen).
All three must record byte-identical logs on a seeded workload with crashes.
"""

from __future__ import annotations

import json
import random

import msgspec
import pytest

from clearing import engine as engine_module
from clearing.engine import Engine, process
from events import schema as s
from events.canonical import canonical, decode
from events.numbers import fmt_units
from projections import snapshot
from projections.history import state_at_seq
from projections.state import Folder, LedgerState


def workload(seed: int, n: int) -> list[s.Input]:
    rng = random.Random(seed)
    lines: list[dict] = [
        {"type": "asset", "asset": "USD", "decimals": 6, "price_decimals": 0, "haircut": "0", "settlement": True},
        {"type": "asset", "asset": "BTC", "decimals": 8, "price_decimals": 1, "haircut": "0.2", "settlement": False},
        {"type": "asset", "asset": "ETH", "decimals": 8, "price_decimals": 2, "haircut": "0.1", "settlement": False},
        {"type": "instrument", "instrument": "BTC-PERP", "underlying": "BTC", "qty_decimals": 4,
         "initial_margin": "0.1", "maintenance_margin": "0.05", "liquidation_fee": "0.02"},
        {"type": "instrument", "instrument": "ETH-PERP", "underlying": "ETH", "qty_decimals": 3,
         "initial_margin": "0.2", "maintenance_margin": "0.1", "liquidation_fee": "0.03"},
    ]
    prices = {"BTC": 600_000, "ETH": 300_000}
    decimals = {"BTC": 1, "ETH": 2}
    qd = {"BTC-PERP": 4, "ETH-PERP": 3}
    under = {"BTC-PERP": "BTC", "ETH-PERP": "ETH"}
    accounts = [f"acct-{i:02d}" for i in range(30)] + ["B", "a", "a/iso"]
    for asset, p in prices.items():
        lines.append({"type": "price", "asset": asset, "price": fmt_units(p, decimals[asset])})
    lines.append({"type": "deposit", "account": "@insurance", "asset": "USD", "amount": "2000"})
    for a in accounts:
        lines.append({"type": "deposit", "account": a, "asset": "USD", "amount": str(rng.choice([2000, 10000, 50000]))})
        if rng.random() < 0.3:
            lines.append({"type": "deposit", "account": a, "asset": "ETH", "amount": str(rng.randint(1, 5))})
    while len(lines) < n:
        roll = rng.random()
        if roll < 0.2:
            asset = rng.choice(list(prices))
            crash = rng.random() < 0.03
            factor = rng.uniform(0.6, 0.8) if crash else rng.uniform(0.985, 1.015)
            if rng.random() < 0.3 and crash:
                factor = 2 - factor  # a spike hurts the shorts
            prices[asset] = max(1, int(prices[asset] * factor))
            lines.append({"type": "price", "asset": asset, "price": fmt_units(prices[asset], decimals[asset])})
        elif roll < 0.23:
            lines.append({"type": "funding", "instrument": rng.choice(list(qd)),
                          "rate": rng.choice(["0.001", "-0.001", "0", "0.0003"])})
        elif roll < 0.27:
            lines.append({"type": "withdrawal", "account": rng.choice(accounts), "asset": "USD",
                          "amount": str(rng.choice([100, 1000, 5000]))})
        elif roll < 0.28:  # R11.2: the fund pays out, so that deficits can exceed it (R10.6)
            lines.append({"type": "withdrawal", "account": "@insurance", "asset": "USD",
                          "amount": str(rng.choice([5000, 20000, 100000]))})
        elif roll < 0.29:
            instrument = rng.choice(list(qd))
            imf = rng.choice(["0.1", "0.2", "0.25"])
            lines.append({"type": "instrument", "instrument": instrument, "underlying": under[instrument],
                          "qty_decimals": qd[instrument], "initial_margin": imf,
                          "maintenance_margin": "0.05" if imf == "0.1" else "0.1", "liquidation_fee": "0.02"})
        else:
            instrument = rng.choice(list(qd))
            buyer, seller = rng.sample(accounts + ["@insurance"], 2)
            p = prices[under[instrument]]
            lines.append({
                "type": "trade", "instrument": instrument, "buyer": buyer, "seller": seller,
                "qty": fmt_units(rng.randint(1, 5) * 10 ** (qd[instrument] - 1), qd[instrument]),
                "price": fmt_units(p + rng.randint(-3, 3), decimals[under[instrument]]),
                "buyer_fee": "0.5", "seller_fee": "0",
            })
    out = []
    for i, line in enumerate(lines):
        line = {"id": f"in-{i}", "ts": f"2026-03-01T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z", **line}
        out.append(msgspec.convert(line, s.Input))
    return out


def run(inputs: list[s.Input], mode: str) -> list[bytes]:
    state = LedgerState()
    eng = Engine(state) if mode == "screen" else None
    log: list[bytes] = []
    for inp in inputs:
        inp = msgspec.structs.replace(inp, seq=state.seq + 1)
        if eng is not None:
            decisions = eng.process(inp)
        else:
            decisions = process(state, inp)
        log.append(canonical(inp))
        log.extend(canonical(d) for d in decisions)
    return log


@pytest.fixture(scope="module")
def inputs() -> list[s.Input]:
    return workload(7, 6000)


def test_screened_engine_records_exactly_the_decisions_of_the_holder_scan(inputs):
    """R10.1: the screen handles the same accounts in the same order."""
    holders = run(inputs, "holders")
    screened = run(inputs, "screen")
    assert screened == holders
    kinds = {json.loads(b)["type"] for b in holders}
    assert {"liquidation", "bankruptcy", "deleverage", "rejected", "funding_settled"} <= kinds


def test_holder_scan_records_exactly_the_decisions_of_visiting_every_account(inputs, monkeypatch):
    """R10.1 literally: every account is a candidate after every input."""
    holders = run(inputs, "holders")
    every: dict[type, object] = {}
    for cls, after in engine_module._AFTER.items():
        def literal(decider, inp, after=after):
            after(decider, inp)  # keep the input's own work (funding settlement)
            return {a for a in decider.state.accounts}
        every[cls] = literal
    monkeypatch.setattr(engine_module, "_AFTER", every)
    literal = run(inputs, "holders")
    assert literal == holders


def test_fold_of_the_log_equals_the_engine_state_and_snapshots_round_trip(inputs):
    state = LedgerState()
    log = []
    for inp in inputs[:3000]:
        inp = msgspec.structs.replace(inp, seq=state.seq + 1)
        log.append(inp)
        log.extend(process(state, inp))
    folder = Folder(LedgerState())
    folder.feed_all(decode(canonical(e)) for e in log)
    folded = folder.finish()
    assert snapshot.encode(folded) == snapshot.encode(state)
    again = snapshot.decode(snapshot.encode(state))
    assert snapshot.encode(again) == snapshot.encode(state)
    assert again.holders == state.holders
    assert again.collateral_holders == {k: v for k, v in state.collateral_holders.items() if v}
