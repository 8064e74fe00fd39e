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
from projections.valuation import value

from clearing import app

SEED = 20260302
DAY = "2026-03-02"
ORIGIN = "demo.clearing.example/ledger"
UNWIND_AT = "14:10:00"
EXPECTED_INPUTS = 58_500  # for the progress bar only


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
    volatility: float  # float-ok: a per-tick relative step of the generator's random walk only


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
    def day(self):
        """The day in parts. After each part the caller ingests it and sends back what
        @insurance holds, so that the exchange can unwind it before the next tick (R8.1)."""
        self.opening()
        self.run_until(self.crash_at)
        self.ts_us = max(self.ts_us, self.crash_at)
        eth = self.markets[1]
        # 14:02–14:06: ETH −14% in one gap, then four more falls: −35% in all.
        for step_pct, pause_s in ((14, 30), (7, 40), (6, 50), (8, 60), (5, 30)):
            eth.price = eth.price * (100 - step_pct) // 100
            self.emit("price", asset="ETH", price=self.price_text(eth))
            self.steth_price = self.steth_price * (100 - step_pct) // 100
            self.emit("price", asset="STETH", price=fmt_units(self.steth_price, 2))
            held = yield self.take()
            self.unwind(held or {}, spacing_us=1_500_000)
            for _ in range(6):  # panic trading between the ticks
                self.tick(pause_s * 1_000_000 // 8)
                self.trade(market=eth)
        self.run_until(self.end)
        for funding_at in self.funding_times:  # the last funding of the day
            self.ts_us = max(self.ts_us, funding_at)
            self.funding()
        yield self.take()

    def opening(self) -> None:
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
        self.emit("deposit", account="@insurance", asset="USD", amount="1000000")
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

        self.crash_at = parse_ts(f"{DAY}T14:02:00Z") or 0
        self.setup_at = parse_ts(f"{DAY}T13:50:00Z") or 0
        self.end = parse_ts(f"{DAY}T23:59:59Z") or 0
        self.funding_times = [parse_ts(f"{DAY}T{h}:00:00Z") or 0 for h in ("08", "16")] + [self.end]
        self.setup_done = False

    def take(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines

    def unwind(self, insurance_positions: dict[str, int], spacing_us: int) -> None:
        """The exchange sells what the backstop took over to the market makers at the mark,
        in a few clips (R8.1: @insurance trades; no fees)."""
        for instrument, qty in sorted(insurance_positions.items()):
            market = next(m for m in self.markets if m.instrument == instrument)
            clips = 3
            for i in range(clips):
                part = abs(qty) // clips + (1 if i < abs(qty) % clips else 0)
                if part == 0:
                    continue
                self.tick(spacing_us)
                maker = self.makers[(i * 5 + 3) % len(self.makers)]
                buyer, seller = (maker, "@insurance") if qty > 0 else ("@insurance", maker)
                self.emit(
                    "trade", instrument=instrument, buyer=buyer, seller=seller,
                    qty=fmt_units(part, market.qty_decimals), price=self.price_text(market),
                    buyer_fee="0", seller_fee="0",
                )

    def funding(self) -> None:
        self.funding_times.pop(0)
        for m in self.markets:
            rate = self.rng.choice(["0.0001", "0.00005", "0", "-0.00005", "0.00012", "-0.0001"])
            self.emit("funding", instrument=m.instrument, rate=rate)

    def run_until(self, stop: int) -> None:
        rng = self.rng
        while True:
            step = rng.randint(400_000, 2_600_000)
            if self.ts_us + step >= stop:
                return
            self.tick(step)
            if self.funding_times and self.ts_us >= self.funding_times[0]:
                self.ts_us = max(self.ts_us, self.funding_times[0])
                self.funding()
                continue
            if not self.setup_done and self.ts_us >= self.setup_at:
                self.setup_before_crash()
                self.setup_done = True
                continue
            roll = rng.random()
            if roll < 0.155:
                self.move_price()
            elif roll < 0.185:
                self.cash_flow()
            else:
                self.trade()

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


def fresh_dir(base: str = "clearing-demo") -> str:
    path, n = base, 1
    while os.path.exists(path):
        n += 1
        path = f"{base}-{n}"
    return path


def run_demo(directory: str | None = None, seed: int = SEED) -> dict:
    """Build the demo ledger in ``directory`` (default: a fresh folder here) and summarise it."""
    started = time.monotonic()
    directory = directory or fresh_dir()
    os.makedirs(directory, exist_ok=True)
    store_path = os.path.join(directory, "clearing.db")
    inputs_path = os.path.join(directory, "inputs.jsonl")
    say = lambda text="": click.echo(text, err=True)  # noqa: E731
    if os.path.exists(store_path):
        raise app.StoreError("store_exists", f"{store_path} exists; choose a fresh --dir")
    say(f"clearing demo: building a seeded ledger in {directory}/")
    verifier = app.init_ledger(store_path, ORIGIN, None)
    say(f"  created the ledger {store_path}; verifier key {verifier}")
    generator = Generator(seed)
    summary = app.IngestSummary()
    store = app.open_ledger(store_path)
    try:
        with store.writer_lock():
            ingestor = app.Ingestor(store)
            # The day comes in parts: after each crash tick the exchange unwinds what @insurance
            # took over, sized from the ledger itself. All parts go to one input file, which
            # ingested into a fresh ledger gives the same ledger.
            parts = generator.day()
            lines = next(parts)
            with open(inputs_path, "wb") as f, click.progressbar(
                length=EXPECTED_INPUTS, label="  ingesting", file=sys.stderr
            ) as bar:
                while True:
                    data = ("\n".join(lines) + "\n").encode()
                    f.write(data)
                    inputs, _duplicates, errors = ingestor.check_file(inputs_path, data)
                    assert errors is None, list(errors.lines())[:5]  # the generator writes well-formed lines
                    ingestor.append_inputs(inputs, summary, bar.update)
                    try:
                        lines = parts.send(dict(ingestor.state.accounts["@insurance"].positions))
                    except StopIteration:
                        break
                bar.update(EXPECTED_INPUTS)
            say(f"  wrote {summary.appended + summary.duplicates:,} input events to {inputs_path}")
        say("  updating the read model (SQLite, for analysts) ...")
        app.update_read_model(store)
        report = _summarise(store, summary, directory)
        report["proof"] = _prove_one(store, store_path, directory, report, say)
        report["report"] = _incident_report(store, directory, report["most_affected"][0]["account"], say)
    finally:
        store.close()
    report["seconds"] = round(time.monotonic() - started, 1)
    _print_summary(report, store_path, say)
    return report


MOMENTS = {
    "before the crash": f"{DAY}T14:01:59Z",
    "after the crash": f"{DAY}T{UNWIND_AT}Z",
    "an hour later": f"{DAY}T15:00:00Z",
}


def _summarise(store, summary: app.IngestSummary, directory: str) -> dict:
    states = {name: app.state_at(store, ts=ts) for name, ts in MOMENTS.items()}
    final = app.state_at(store)
    before, after = states["before the crash"], states["after the crash"]
    fund = {}
    for name, st in [*states.items(), ("at the end", final)]:
        insurance = st.accounts["@insurance"]
        fund[name] = {
            "cash": fmt_units(insurance.cash, st.scale),
            "equity": fmt_units(value(st, insurance).equity, st.scale),
        }
    losses = []
    for account, acct in before.accounts.items():
        if account.startswith("@") or account not in after.accounts:
            continue
        loss = value(before, acct).equity - value(after, after.accounts[account]).equity
        losses.append((-loss, account))
    losses.sort()
    affected = [
        {
            "account": account,
            "equity_before": fmt_units(value(before, before.accounts[account]).equity, before.scale),
            "equity_after": fmt_units(value(after, after.accounts[account]).equity, after.scale),
            "loss": fmt_units(-neg_loss, before.scale),
        }
        for neg_loss, account in losses[:6]
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
        "insurance_fund": fund,
        "most_affected": affected,
        "end_ts": final.ts,
    }


def _incident_report(store, directory: str, account: str, say) -> str:
    """The HTML incident report of the most affected account, around the crash."""
    from clearing.report import build_report

    say(f"  writing the incident report of {account} ...")
    data = build_report(store, account, f"{DAY}T13:45:00Z", f"{DAY}T15:00:00Z")
    path = os.path.join(directory, f"report-{account.replace('/', '_')}.html")
    with open(path, "wb") as f:
        f.write(data)
    return path


def _prove_one(store, store_path: str, directory: str, report: dict, say) -> dict:
    """Sign a checkpoint, prove the state of the most affected liquidated account just after
    the crash, and verify the proof offline with nothing but the verifier key (interfaces §5)."""
    from clearing.tlog import TLog, resolve_point
    from events.verifier import dump_state_proof, verify_state_proof_text

    tlog = TLog(store)
    key_path = app.key_file_for(store_path, None)
    with store.writer_lock():
        checkpoint = tlog.sign(store.head()[0], key_path)
        liquidated = {
            json.loads(r.payload)["account"]
            for page in store.read(0, None)
            for r in page
            if r.type in ("liquidation", "bankruptcy")
        }
        account = next((a["account"] for a in report["most_affected"] if a["account"] in liquidated),
                       sorted(liquidated)[0])
        seq, at = resolve_point(store, MOMENTS["after the crash"], None)
        doc = tlog.prove(account, seq, at, key_path)
    path = os.path.join(directory, f"proof-{account.replace('/', '_')}.json")
    data = dump_state_proof(doc)
    with open(path, "wb") as f:
        f.write(data)
    checks = verify_state_proof_text(data, store.meta()["verifier_key"])
    return {
        "account": account, "seq": seq, "at": at, "path": path, "bytes": len(data),
        "checkpoint_size": checkpoint.size, "valid": all(c.ok for c in checks), "checks": len(checks),
        "verifier_key": store.meta()["verifier_key"],
    }


def _print_summary(r: dict, store_path: str, say) -> None:
    say()
    say(f"Demo ledger ready in {r['seconds']} s: {r['events']:,} events ({r['inputs']:,} inputs) "
        f"over {r['accounts']} accounts, until {r['end_ts']}")
    say(f"  rejections     {r['rejections']:>7,}   (R3.5: refused by the rules, recorded)")
    say(f"  liquidations   {r['liquidations']:>7,}   (R10.3 partial closes, R10.5 take-overs)")
    say(f"  bankruptcies   {r['bankruptcies']:>7,}   (R10.4)")
    say(f"  deleveragings  {r['deleverages']:>7,}   (R10.6 steps)")
    say("  insurance fund (cash of @insurance; equity counts what it took over, R11.1):")
    times = {**MOMENTS, "at the end": r["end_ts"]}
    for name, figures in r["insurance_fund"].items():
        say(f"    {name:<17} {times[name]:<22} cash {figures['cash']:>18}   equity {figures['equity']:>18}")
    say("  most affected accounts (equity lost in the crash, 14:01:59 to 14:10:00):")
    for a in r["most_affected"]:
        say(f"    {a['account']:<22} {a['equity_before']:>18} -> {a['equity_after']:>18}   lost {a['loss']}")
    worst = r["most_affected"][0]["account"] if r["most_affected"] else "zeta-capital"
    before, after = MOMENTS["before the crash"], MOMENTS["after the crash"]
    p = r["proof"]
    say(f"  signed a checkpoint of all {p['checkpoint_size']:,} events; proved {p['account']} at seq {p['seq']}"
        f" ({p['at']}) in {p['path']} ({p['bytes']:,} bytes):"
        f" {'valid' if p['valid'] else 'INVALID'}, {p['checks']} checks")
    say(f"  incident report of {r['most_affected'][0]['account']}: {r['report']} (open it in a browser; works offline)")
    say()
    say("Look further:")
    say(f"  clearing state --store {store_path} --at {before} --account {worst}")
    say(f"  clearing state --store {store_path} --at {after} --account {worst}")
    say(f"  clearing state --store {store_path} --at {after} --json")
    say(f"  clearing state --store {store_path} --seq 1000")
    say(f"  clearing verify {p['path']} --key {p['verifier_key']}")
    say(f"  clearing replay --store {store_path} --account {worst} --from {before} --to {after}")
    say(f"  clearing audit --store {store_path}")
    say(f"  sqlite3 {store_path}.read.db \"select seq, ts, type, summary from events"
        f" where type in ('bankruptcy', 'deleverage') limit 10\"")
