"""`clearing demo`: a realistic, seeded ledger over one simulated day with a market crash.

About 250 accounts (market makers, traders, isolated-margin sub-accounts, a few over-leveraged
accounts and one whale), three underlyings (BTC, ETH, SOL) with perpetuals, one collateral
asset with a haircut (STETH), a capitalised insurance fund, funding every 8 hours, and at 14:02
ETH falls 35% within four minutes: solvent partial liquidations (R10.3), bankruptcies covered
by the insurance fund (R10.4, R10.5) and auto-deleveraging once the fund runs dry (R10.6).
The same seed gives the same input file, byte for byte, and so the same ledger.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import dataclass

import click

from events.numbers import fmt_units
from events.timestamps import format_ts, parse_ts
from projections.report import state_document

from clearing import app

SEED = 20260302
DAY = "2026-03-02"
ORIGIN = "demo.clearing.example/ledger"


@dataclass
class Market:
    asset: str
    instrument: str
    price_decimals: int
    qty_decimals: int
    price: int  # grid units
    imf: str
    mmf: str
    lf: str
    volatility: float  # per-tick relative step; float-ok (random walk of the generator only)


class Generator:
    """Writes the demo's input lines. Floats appear only in the random walk that picks the next
    grid price; every value written is an exact decimal on its grid."""

    def __init__(self, seed: int = SEED) -> None:
        self.rng = random.Random(seed)
        self.lines: list[str] = []
        self.counter = 0
        self.ts_us = parse_ts(f"{DAY}T00:00:00Z") or 0
        self.markets = [
            Market("BTC", "BTC-PERP", 1, 4, 640_000, "0.05", "0.025", "0.01", 0.0006),
            Market("ETH", "ETH-PERP", 2, 3, 320_000, "0.1", "0.05", "0.02", 0.0008),
            Market("SOL", "SOL-PERP", 3, 2, 145_000, "0.2", "0.1", "0.04", 0.0011),
        ]
        self.steth_price = 318_500  # STETH tracks ETH; price_decimals 2
        self.makers = [f"mm-{i:02d}" for i in range(1, 13)]
        self.traders = [f"trader-{i:03d}" for i in range(1, 191)]
        self.isolated: dict[str, str] = {}  # sub-account -> its one instrument
        self.capital: dict[str, int] = {}  # USD

    # --- writing -------------------------------------------------------------------------
    def emit(self, kind: str, **fields: object) -> None:
        self.counter += 1
        record = {"id": f"{kind[:3]}-{self.counter:06d}", "ts": format_ts(self.ts_us), "type": kind}
        record.update(fields)
        self.lines.append(json.dumps(record, separators=(",", ":")))

    def at(self, hhmmss: str) -> None:
        ts = parse_ts(f"{DAY}T{hhmmss}Z")
        assert ts is not None and ts >= self.ts_us
        self.ts_us = ts

    def tick(self, micros: int) -> None:
        self.ts_us += micros

    def usd(self, whole: int) -> str:
        return str(whole)

    def price_text(self, m: Market, units: int | None = None) -> str:
        return fmt_units(m.price if units is None else units, m.price_decimals)

    # --- the day ---------------------------------------------------------------------------
    def build(self) -> list[str]:
        rng = self.rng
        self.at("00:00:00")
        self.emit("asset", asset="USD", decimals=6, price_decimals=0, haircut="0", settlement=True)
        for m in self.markets:
            self.emit("asset", asset=m.asset, decimals=8, price_decimals=m.price_decimals, haircut="0.2")
        self.emit("asset", asset="STETH", decimals=8, price_decimals=2, haircut="0.15")
        for m in self.markets:
            self.emit(
                "instrument", instrument=m.instrument, underlying=m.asset, qty_decimals=m.qty_decimals,
                initial_margin=m.imf, maintenance_margin=m.mmf, liquidation_fee=m.lf,
            )
        for m in self.markets:
            self.emit("price", asset=m.asset, price=self.price_text(m))
        self.emit("price", asset="STETH", price=fmt_units(self.steth_price, 2))
        self.emit("deposit", account="@insurance", asset="USD", amount="150000")
        for maker in self.makers:
            self.capital[maker] = 40_000_000
            self.emit("deposit", account=maker, asset="USD", amount=self.usd(self.capital[maker]))
        for trader in self.traders:
            capital = rng.choice([5_000, 10_000, 25_000, 50_000, 100_000, 250_000])
            self.capital[trader] = capital
            self.emit("deposit", account=trader, asset="USD", amount=self.usd(capital))
            if rng.random() < 0.2:  # some post staked ether as collateral (haircut 15%)
                self.emit("deposit", account=trader, asset="STETH", amount=str(rng.randint(1, 20)))
            if rng.random() < 0.25:  # an isolated-margin sub-account for one instrument
                m = rng.choice(self.markets)
                sub = f"{trader}/iso-{m.asset.lower()}"
                self.isolated[sub] = m.instrument
                share = capital // 5
                self.capital[sub] = share
                self.tick(1000)
                self.emit("transfer", **{"from": trader, "to": sub, "asset": "USD", "amount": self.usd(share)})
        # The accounts the crash will find over-leveraged, and the whale.
        self.degens = [f"degen-{i:02d}" for i in range(1, 6)]
        for name in self.degens:
            self.emit("deposit", account=name, asset="USD", amount="20000")
        self.emit("deposit", account="zeta-capital", asset="USD", amount="2000000")
        self.emit("deposit", account="zeta-capital", asset="STETH", amount="50")

        crash_at = parse_ts(f"{DAY}T14:02:00Z") or 0
        setup_at = parse_ts(f"{DAY}T13:50:00Z") or 0
        end = parse_ts(f"{DAY}T23:59:59Z") or 0
        funding_times = [parse_ts(f"{DAY}T{h}:00:00Z") or 0 for h in ("08", "16")] + [end]
        setup_done = crash_done = False
        while self.ts_us < end:
            self.tick(rng.randint(400_000, 2_600_000))
            if funding_times and self.ts_us >= funding_times[0]:
                self.ts_us = max(self.ts_us, funding_times.pop(0))
                for m in self.markets:
                    rate = rng.choice(["0.0001", "0.00005", "0", "-0.00005", "0.00012", "-0.0001"])
                    self.emit("funding", instrument=m.instrument, rate=rate)
                continue
            if not setup_done and self.ts_us >= setup_at:
                self.setup_before_crash()
                setup_done = True
                continue
            if not crash_done and self.ts_us >= crash_at:
                self.crash()
                crash_done = True
                continue
            roll = rng.random()
            if roll < 0.155:
                self.move_price()
            elif roll < 0.185:
                self.cash_flow()
            else:
                self.trade()
        return self.lines

    def move_price(self, market: Market | None = None) -> None:
        rng = self.rng
        m = market or rng.choice(self.markets)
        step = rng.gauss(0.0, m.volatility)  # float-ok: generator randomness only
        m.price = max(1, round(m.price * (1 + step)))
        self.emit("price", asset=m.asset, price=self.price_text(m))
        if m.asset == "ETH" and rng.random() < 0.5:
            self.steth_price = max(1, round(m.price * rng.uniform(0.993, 0.999)))
            self.emit("price", asset="STETH", price=fmt_units(self.steth_price, 2))

    def cash_flow(self) -> None:
        rng = self.rng
        account = rng.choice(self.traders)
        amount = self.usd(rng.choice([500, 1_000, 2_500, 5_000, 10_000]))
        if rng.random() < 0.55:
            self.emit("deposit", account=account, asset="USD", amount=amount)
        else:
            self.emit("withdrawal", account=account, asset="USD", amount=amount)

    def trade(self, account: str | None = None, market: Market | None = None, side: int = 0,
              notional_usd: int | None = None) -> None:
        rng = self.rng
        if account is None:
            if self.isolated and rng.random() < 0.15:
                account = rng.choice(sorted(self.isolated))
            else:
                account = rng.choice(self.traders)
        if market is None:
            if account in self.isolated:
                market = next(m for m in self.markets if m.instrument == self.isolated[account])
            else:
                market = rng.choices(self.markets, weights=[45, 35, 20])[0]
        maker = rng.choice(self.makers)
        if notional_usd is None:
            notional_usd = max(50, int(self.capital.get(account, 10_000) * rng.uniform(0.05, 0.9)))
        mark = market.price / 10**market.price_decimals  # float-ok: sizing only
        qty_units = max(1, int(notional_usd / mark * 10**market.qty_decimals))
        spread = rng.randint(0, 3)
        side = side or rng.choice([1, -1])
        price = market.price + spread if side > 0 else max(1, market.price - spread)
        fee_taker = max(1, notional_usd * 5 // 10_000)  # 5 bp, whole USD
        buyer, seller = (account, maker) if side > 0 else (maker, account)
        self.emit(
            "trade", instrument=market.instrument, buyer=buyer, seller=seller,
            qty=fmt_units(qty_units, market.qty_decimals), price=self.price_text(market, price),
            buyer_fee=self.usd(fee_taker if side > 0 else 0), seller_fee=self.usd(0 if side > 0 else fee_taker),
        )

    def setup_before_crash(self) -> None:
        """13:50: over-leveraged ETH longs (bankrupt at the gap) and moderately leveraged ones."""
        eth = self.markets[1]
        for name in self.degens:
            self.tick(200_000)
            self.trade(name, eth, +1, notional_usd=176_000)  # about 8.8x on 20,000
        self.tick(200_000)
        self.trade("zeta-capital", eth, +1, notional_usd=19_500_000)  # about 9x, the whale
        for trader in self.traders[::6]:
            self.tick(150_000)
            self.trade(trader, eth, +1, notional_usd=self.capital[trader] * 5)

    def crash(self) -> None:
        """14:02–14:06: ETH −14% in one gap, then four more falls: −35% in all."""
        eth = self.markets[1]
        for step_pct, pause_s in ((14, 30), (7, 40), (6, 50), (8, 60), (5, 30)):
            eth.price = eth.price * (100 - step_pct) // 100
            self.emit("price", asset="ETH", price=self.price_text(eth))
            self.steth_price = self.steth_price * (100 - step_pct) // 100
            self.emit("price", asset="STETH", price=fmt_units(self.steth_price, 2))
            for _ in range(6):  # panic trading between the ticks
                self.tick(pause_s * 1_000_000 // 8)
                self.trade(market=eth)
            self.tick(pause_s * 1_000_000 // 4)


def fresh_dir(base: str = "clearing-demo") -> str:
    path, n = base, 1
    while os.path.exists(path):
        n += 1
        path = f"{base}-{n}"
    return path


def run_demo(directory: str | None = None, seed: int = SEED, out=sys.stderr) -> dict:
    started = time.monotonic()
    directory = directory or fresh_dir()
    os.makedirs(directory, exist_ok=True)
    store_path = os.path.join(directory, "clearing.db")
    inputs_path = os.path.join(directory, "inputs.jsonl")
    say = lambda text="": click.echo(text, err=True)  # noqa: E731
    say(f"clearing demo: building a seeded ledger in {directory}/")
    lines = Generator(seed).build()
    with open(inputs_path, "w", newline="\n") as f:
        f.write("\n".join(lines) + "\n")
    say(f"  wrote {len(lines):,} input events to {inputs_path}")
    if os.path.exists(store_path):
        raise app.StoreError("store_exists", f"{store_path} exists; choose a fresh --dir")
    verifier = app.init_ledger(store_path, ORIGIN, None)
    say(f"  created the ledger {store_path} (verifier key {verifier})")
    store = app.open_ledger(store_path)
    summary = app.IngestSummary()
    try:
        with store.writer_lock():
            ingestor = app.Ingestor(store)
            with open(inputs_path, "rb") as f:
                data = f.read()
            inputs, duplicates, errors = ingestor.check_file(inputs_path, data)
            assert errors is None, list(errors.lines())[:5]
            with click.progressbar(length=len(inputs), label="  ingesting", file=sys.stderr) as bar:
                ingestor.append_inputs(inputs, summary, bar.update)
        report = _summarise(store, summary, directory)
    finally:
        store.close()
    report["seconds"] = round(time.monotonic() - started, 1)
    _print_summary(report, store_path, say)
    return report


def _summarise(store, summary: app.IngestSummary, directory: str) -> dict:
    before_ts, after_ts = f"{DAY}T14:01:59Z", f"{DAY}T14:10:00Z"
    before = app.state_at(store, ts=before_ts)
    after = app.state_at(store, ts=after_ts)
    final = app.state_at(store)
    doc_before, doc_after = state_document(before), state_document(after)
    losses = []
    for account, entry in doc_before["accounts"].items():
        if account.startswith("@") or account not in doc_after["accounts"]:
            continue
        eq0 = before.accounts[account]
        from projections.valuation import value

        loss = value(before, eq0).equity - value(after, after.accounts[account]).equity
        losses.append((loss, account))
    losses.sort(reverse=True)
    affected = [
        {
            "account": account,
            "equity_before": doc_before["accounts"][account]["equity"],
            "equity_after": doc_after["accounts"][account]["equity"],
            "loss": fmt_units(loss, before.scale),
        }
        for loss, account in losses[:5]
    ]
    return {
        "directory": directory,
        "events": final.seq,
        "inputs": summary.appended,
        "accounts": sum(1 for a in final.accounts if not a.startswith("@")),
        "rejections": summary.rejected,
        "liquidations": summary.liquidations,
        "bankruptcies": summary.bankruptcies,
        "deleverages": summary.deleverages,
        "insurance_fund_before_crash": doc_before["insurance_fund"],
        "insurance_fund_after_crash": doc_after["insurance_fund"],
        "insurance_fund_end": state_document(final)["insurance_fund"],
        "most_affected": affected,
        "before_ts": before_ts,
        "after_ts": after_ts,
    }


def _print_summary(r: dict, store_path: str, say) -> None:
    say()
    say(f"Demo ledger ready in {r['seconds']} s: {r['events']:,} events ({r['inputs']:,} inputs) "
        f"over {r['accounts']} accounts")
    say(f"  rejections        {r['rejections']:>8,}")
    say(f"  liquidations      {r['liquidations']:>8,}   (R10.3 partial closes and R10.5 take-overs)")
    say(f"  bankruptcies      {r['bankruptcies']:>8,}   (R10.4)")
    say(f"  deleveragings     {r['deleverages']:>8,}   (R10.6 steps)")
    say(f"  insurance fund    {r['insurance_fund_before_crash']} before the crash ({r['before_ts']}), "
        f"{r['insurance_fund_after_crash']} after ({r['after_ts']}), {r['insurance_fund_end']} at the end")
    say("  most affected accounts (equity lost in the crash):")
    for a in r["most_affected"]:
        say(f"    {a['account']:<24} {a['equity_before']:>16} -> {a['equity_after']:>16}  (lost {a['loss']})")
    worst = r["most_affected"][0]["account"] if r["most_affected"] else "zeta-capital"
    say()
    say("Look further:")
    say(f"  clearing state --store {store_path} --at {r['before_ts']} --account {worst}")
    say(f"  clearing state --store {store_path} --at {r['after_ts']} --account {worst}")
    say(f"  clearing state --store {store_path} --at {r['after_ts']} --json")
    say(f"  sqlite3 {store_path}.read.db 'select * from events where type in (\"bankruptcy\",\"deleverage\") limit 10'")
