"""The R12.4 check of `clearing audit` values an account only when its price band is crossed
(clearing/audit.py ``_Bands``), so it must find exactly the accounts a full valuation finds.

Each ledger here is written through the library (``app.Ingestor``, as `clearing ingest` does).
A tampered one is written by an engine whose liquidation pass does nothing: its hashes,
checkpoints and input ids are all consistent, the liquidations are simply never recorded, so
accounts stay liquidatable after the price moves that the real rules would have answered.
An oracle wrapped around the audit's check values every account after every input (R6.7)
and compares.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

import clearing.audit as audit_module
import clearing.engine as engine_module
from clearing import app
from events import schema as s
from events.numbers import fmt_units
from events.timestamps import format_ts
from projections.state import is_system
from projections.valuation import is_liquidatable
from tests.test_audit import audit

ORIGIN = "test.example/audit-screen"
START_US = 1_772_323_200_000_000  # 2026-03-01T00:00:00Z


class _NoPass:
    """A liquidation pass that liquidates nobody (the operator's forgery)."""

    def __init__(self, decider) -> None:
        pass

    def run(self, candidates) -> None:
        pass


def _write(db: Path, lines: list[str], *, liquidate: bool = True) -> Path:
    app.init_ledger(str(db), ORIGIN, None)
    store = app.open_ledger(str(db))
    try:
        with pytest.MonkeyPatch.context() as mp:
            if not liquidate:
                mp.setattr(engine_module, "Pass", _NoPass)
            with store.writer_lock():
                ingestor = app.Ingestor(store)
                accepted, _duplicates, errors = ingestor.check_file("in.jsonl", ("\n".join(lines) + "\n").encode())
                assert errors is None, errors.errors[:3]
                ingestor.append_inputs(accepted, app.IngestSummary())
                ingestor.flush()
    finally:
        store.close()
    return db


class _Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.ts_us = START_US

    def add(self, kind: str, **fields) -> None:
        import json

        self.ts_us += 1_000_000
        record = {"id": f"e{len(self.lines) + 1}", "ts": format_ts(self.ts_us), "type": kind, **fields}
        self.lines.append(json.dumps(record, separators=(",", ":")))

    def listings(self) -> None:
        self.add("asset", asset="USD", decimals=6, price_decimals=0, haircut="0", settlement=True)
        self.add("asset", asset="BTC", decimals=8, price_decimals=2, haircut="0.1")
        self.add("asset", asset="ETH", decimals=8, price_decimals=2, haircut="0.2")
        self.add("instrument", instrument="BTC-PERP", underlying="BTC", qty_decimals=4,
                 initial_margin="0.1", maintenance_margin="0.05", liquidation_fee="0.01")
        self.add("instrument", instrument="BTC-PERP-B", underlying="BTC", qty_decimals=3,
                 initial_margin="0.2", maintenance_margin="0.08", liquidation_fee="0.02")
        self.add("instrument", instrument="ETH-PERP", underlying="ETH", qty_decimals=3,
                 initial_margin="0.1", maintenance_margin="0.05", liquidation_fee="0.01")
        self.add("price", asset="BTC", price="60000")
        self.add("price", asset="ETH", price="3000")
        self.add("deposit", account="@insurance", asset="USD", amount="10000000")
        self.add("deposit", account="mm", asset="USD", amount="1000000000")
        self.add("deposit", account="mm", asset="BTC", amount="100")
        self.add("deposit", account="mm", asset="ETH", amount="1000")


def _random_workload(seed: int, accounts: int = 40, steps: int = 1200) -> list[str]:
    """Longs, shorts, hedges across two instruments on one underlying, collateral in both
    non-settlement assets, random walks with jumps both ways, haircut and MMF re-listings."""
    rng = random.Random(seed)
    out = _Lines()
    out.listings()
    prices = {"BTC": 6_000_000, "ETH": 300_000}  # price units (2 decimals)
    names = [f"t{i:02d}" for i in range(accounts)]
    perps = [("BTC-PERP", "BTC", 4), ("BTC-PERP-B", "BTC", 3), ("ETH-PERP", "ETH", 3)]
    for name in names:
        out.add("deposit", account=name, asset="USD", amount=str(rng.choice([500, 2000, 10000])))
        if rng.random() < 0.4:
            out.add("deposit", account=name, asset="ETH", amount=fmt_units(rng.randint(10**7, 3 * 10**8), 8))
        if rng.random() < 0.3:
            out.add("deposit", account=name, asset="BTC", amount=fmt_units(rng.randint(10**5, 10**7), 8))
    haircut = {"ETH": 2, "BTC": 1}  # tenths
    mmf = {"BTC-PERP": 5}  # hundredths (IMF 0.1)
    for _ in range(steps):
        roll = rng.random()
        if roll < 0.4:
            asset = rng.choice(("BTC", "ETH"))
            p = prices[asset]
            if rng.random() < 0.08:
                p = p * rng.choice((85, 90, 110, 115)) // 100
            else:
                p += rng.randint(-p // 150, p // 150)
            prices[asset] = max(p, 1000)
            out.add("price", asset=asset, price=fmt_units(prices[asset], 2))
        elif roll < 0.85:
            instrument, under, qd = rng.choice(perps)
            party = rng.choice(names)
            notional_minor = rng.choice([1000, 5000, 20000, 60000]) * 10**6
            qty = max(1, notional_minor * 10**qd // (prices[under] * 10**4))
            buyer, seller = (party, "mm") if rng.random() < 0.5 else ("mm", party)
            out.add("trade", instrument=instrument, buyer=buyer, seller=seller, qty=fmt_units(qty, qd),
                    price=fmt_units(prices[under], 2), buyer_fee="0.5", seller_fee="0")
        elif roll < 0.9:
            out.add("withdrawal", account=rng.choice(names), asset="USD", amount=str(rng.choice([10, 100, 500])))
        elif roll < 0.94:
            out.add("deposit", account=rng.choice(names), asset="USD", amount=str(rng.choice([100, 1000])))
        elif roll < 0.96:
            asset = rng.choice(("BTC", "ETH"))
            haircut[asset] = rng.randint(1, 6)
            out.add("asset", asset=asset, decimals=8, price_decimals=2, haircut=f"0.{haircut[asset]}")
        elif roll < 0.98:
            mmf["BTC-PERP"] = rng.randint(3, 9)
            out.add("instrument", instrument="BTC-PERP", underlying="BTC", qty_decimals=4,
                    initial_margin="0.1", maintenance_margin=f"0.0{mmf['BTC-PERP']}", liquidation_fee="0.01")
        else:
            out.add("funding", instrument=rng.choice(perps)[0], rate=rng.choice(("0.001", "-0.001")))
    return out.lines


def _audit_with_oracle(db: Path, monkeypatch) -> tuple[object, list, dict]:
    """The audit, with every account valued by the book (R6.7) after each input's check."""
    mismatches: list[tuple[int, set[str], set[str]]] = []
    seen = {"groups": 0, "crossed_liquidatable": 0, "valued": 0}
    check = audit_module._Auditor._check_liquidatable
    crossed = audit_module._Bands.crossed
    found_by_crossing: set[str] = set()

    def crossed_spy(self, asset, mark):
        got = crossed(self, asset, mark)
        found_by_crossing.update(got)
        return got

    def checked(self, group):
        found_by_crossing.clear()
        before = set(self.liquidatable)
        check(self, group)
        st = self.folded
        truth = {a for a, acct in st.accounts.items() if not is_system(a) and is_liquidatable(st, acct)}
        seen["groups"] += 1
        seen["valued"] += len(st.accounts)
        if truth != self.liquidatable or self.unvalued:
            mismatches.append((group.pos, truth - self.liquidatable, self.liquidatable - truth))
        if type(group.inp) is s.Price:
            seen["crossed_liquidatable"] += len((self.liquidatable - before) & found_by_crossing)

    monkeypatch.setattr(audit_module._Auditor, "_check_liquidatable", checked)
    monkeypatch.setattr(audit_module._Bands, "crossed", crossed_spy)
    report = audit(db)
    return report, mismatches, seen


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_an_honest_random_ledger_audits_ok_and_the_bands_agree_with_full_valuations(tmp_path, monkeypatch, seed):
    db = _write(tmp_path / "clearing.db", _random_workload(seed))
    report, mismatches, seen = _audit_with_oracle(db, monkeypatch)
    assert report.findings == [], report.findings[:5]
    assert mismatches == []
    assert seen["groups"] > 1000


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_liquidations_never_recorded_leave_exactly_the_liquidatable_accounts_found(tmp_path, monkeypatch, seed):
    """With the pass switched off at ingest, accounts become liquidatable on price moves (and
    listing changes) and stay so; after every input the audit's set of liquidatable accounts
    is exactly the set a valuation of every account gives, and some were found only because
    a new mark left their band."""
    db = _write(tmp_path / "clearing.db", _random_workload(seed), liquidate=False)
    report, mismatches, seen = _audit_with_oracle(db, monkeypatch)
    assert mismatches == []
    assert seen["crossed_liquidatable"] > 0
    assert any(f.rule == "R12.4" and "is liquidatable" in f.message for f in report.findings)
    assert {f.rule for f in report.findings} <= {"R12.4", "R12.5"}, report.findings[:5]


def test_a_slow_drift_that_crosses_the_band_is_an_r12_4_finding_at_that_price(tmp_path):
    """alice is long BTC; BTC falls in small steps, each inside her band of the previous exact
    valuation, until one step takes her below MM. No liquidation is recorded: the audit names
    alice at that price's seq, and not before. bob, short, is hurt by a rise the same way."""
    out = _Lines()
    out.listings()
    out.add("deposit", account="alice", asset="USD", amount="700")
    out.add("deposit", account="bob", asset="USD", amount="700")
    out.add("trade", instrument="BTC-PERP", buyer="alice", seller="mm", qty="0.1", price="60000",
            buyer_fee="0", seller_fee="0")
    falls = list(range(59800, 55000, -200))
    for price in falls:
        out.add("price", asset="BTC", price=str(price))
    out.add("trade", instrument="BTC-PERP", buyer="mm", seller="bob", qty="0.1", price="55000",
            buyer_fee="0", seller_fee="0")
    rises = list(range(55400, 61000, 200))
    for price in rises:
        out.add("price", asset="BTC", price=str(price))
    db = _write(tmp_path / "clearing.db", out.lines, liquidate=False)

    from events.canonical import decode
    from tests.test_audit import payloads

    seq_of = {}  # (price, rising) -> seq of that price input
    trade_seq = 0
    for e in map(decode, payloads(db)):
        if isinstance(e, s.Trade) and e.seller == "bob":
            trade_seq = e.seq
        elif isinstance(e, s.Price) and e.asset == "BTC":
            seq_of[(int(e.price), trade_seq > 0)] = e.seq
    # By hand (R6): alice has cash 700 − 6000 and 0.1 BTC-PERP: equity − MM = 0.095·p − 5300,
    # below 0 for p < 55789.47..; bob has cash 700 + 5500 and −0.1: 6200 − 0.105·p < 0 for
    # p > 59047.61..
    alice_at = seq_of[(next(p for p in falls if 95 * p < 5_300_000), False)]
    bob_at = seq_of[(next(p for p in rises if 105 * p > 6_200_000), True)]
    assert alice_at - seq_of[(falls[0], False)] >= 10 and bob_at - seq_of[(rises[0], True)] >= 10
    report = audit(db)
    r12_4 = [f for f in report.findings if f.rule == "R12.4"]
    assert [f.seq for f in r12_4 if "alice" in f.message] == [alice_at], r12_4
    assert [f.seq for f in r12_4 if "bob" in f.message] == [bob_at], r12_4
    assert {f.rule for f in report.findings} == {"R12.4", "R12.5"}
