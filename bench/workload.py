"""A seeded workload generator: input files (interfaces §1) of any size.

N accounts (one in ten with an isolated-margin sub-account), M instruments on several
underlyings, a collateral asset with a haircut, market makers; about 80% trades, 15% price
updates, 3% deposits and withdrawals, funding every simulated 8 hours; prices as random walks
with occasional crashes of 20–30%. Trading in the popular underlying (U0) is concentrated on
about 1,000 accounts, so that one of its price updates touches about 1,000 holders.
The same arguments always give the same bytes.
"""

from __future__ import annotations

import argparse
import json
import random
import sys

from events.numbers import fmt_units

START_US = 1_772_323_200_000_000  # 2026-03-01T00:00:00Z
STEP_US = 50_000  # 50 ms of simulated time per input on average
FUNDING_EVERY_US = 8 * 3600 * 1_000_000


def _ts(ts_us: int) -> str:
    from events.timestamps import format_ts

    return format_ts(ts_us)


def generate(events: int, accounts: int, instruments: int = 6, seed: int = 1, popular: int = 1000):
    """Yield the input lines (str, without line end)."""
    rng = random.Random(seed)
    underlyings = max(3, (instruments + 1) // 2)
    prices = {f"U{u}": rng.randint(50_000, 5_000_000) for u in range(underlyings)}  # 2 decimals
    perps = [(f"U{i % underlyings}-PERP-{i}", f"U{i % underlyings}") for i in range(instruments)]
    makers = [f"mm-{i:02d}" for i in range(20)]
    names = [f"a{i:06d}" for i in range(accounts)]
    subs = [f"{n}/iso" for n in names[::10]]
    traders = names + subs
    hot = traders[: min(popular, len(traders))]
    counter = 0
    ts_us = START_US

    def line(kind: str, **fields) -> str:
        nonlocal counter
        counter += 1
        record = {"id": f"e{counter}", "ts": _ts(ts_us), "type": kind, **fields}
        return json.dumps(record, separators=(",", ":"))

    out = [line("asset", asset="USD", decimals=6, price_decimals=0, haircut="0", settlement=True)]
    for asset in prices:
        out.append(line("asset", asset=asset, decimals=8, price_decimals=2, haircut="0.25"))
    out.append(line("asset", asset="COLL", decimals=8, price_decimals=2, haircut="0.1"))
    for name, under in perps:
        out.append(line("instrument", instrument=name, underlying=under, qty_decimals=3,
                        initial_margin="0.1", maintenance_margin="0.05", liquidation_fee="0.01"))
    for asset, p in prices.items():
        out.append(line("price", asset=asset, price=fmt_units(p, 2)))
    out.append(line("price", asset="COLL", price="100"))
    out.append(line("deposit", account="@insurance", asset="USD", amount="5000000"))
    for m in makers:
        out.append(line("deposit", account=m, asset="USD", amount="1000000000"))
    for n in names:
        out.append(line("deposit", account=n, asset="USD", amount=str(rng.choice([20_000, 50_000, 200_000]))))
        if rng.random() < 0.1:
            out.append(line("deposit", account=n, asset="COLL", amount=str(rng.randint(10, 500))))
    for sub in subs:
        out.append(line("transfer", **{"from": sub.split("/")[0], "to": sub, "asset": "USD", "amount": "5000"}))
    yield from out
    produced = len(out)
    next_funding = START_US + FUNDING_EVERY_US
    next_crash = rng.randint(150_000, 400_000)
    while produced < events:
        ts_us += rng.randint(1, 2 * STEP_US)
        if ts_us >= next_funding:
            next_funding += FUNDING_EVERY_US
            for name, _ in perps:
                yield line("funding", instrument=name, rate=rng.choice(["0.0001", "-0.0001", "0.00005", "0"]))
                produced += 1
            continue
        roll = rng.random()
        if produced >= next_crash:
            next_crash += rng.randint(150_000, 400_000)
            asset = rng.choice(list(prices))
            prices[asset] = max(1, prices[asset] * rng.randint(70, 80) // 100)
            yield line("price", asset=asset, price=fmt_units(prices[asset], 2))
        elif roll < 0.15:
            asset = "U0" if rng.random() < 0.4 else rng.choice(list(prices))
            prices[asset] = max(1, prices[asset] + rng.randint(-prices[asset] // 400, prices[asset] // 400))
            yield line("price", asset=asset, price=fmt_units(prices[asset], 2))
        elif roll < 0.18:
            kind = "deposit" if rng.random() < 0.6 else "withdrawal"
            yield line(kind, account=rng.choice(names), asset="USD", amount=str(rng.choice([100, 1000, 5000])))
        else:
            name, under = rng.choice(perps)
            party = rng.choice(hot if under == "U0" else traders)
            maker = rng.choice(makers)
            p = prices[under]
            notional_minor = rng.choice([200, 1000, 3000, 10_000]) * 10**6
            qty = max(1, notional_minor // (p * 10))  # qty units × price units × 10 = minor units
            buyer, seller = (party, maker) if rng.random() < 0.5 else (maker, party)
            yield line("trade", instrument=name, buyer=buyer, seller=seller, qty=fmt_units(qty, 3),
                       price=fmt_units(p, 2), buyer_fee="0.1", seller_fee="0")
        produced += 1


def write(path: str, events: int, accounts: int, instruments: int = 6, seed: int = 1) -> int:
    n = 0
    with open(path, "w", newline="\n") as f:
        for text in generate(events, accounts, instruments, seed):
            f.write(text + "\n")
            n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--instruments", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("-o", "--output", default="-")
    args = parser.parse_args()
    if args.output == "-":
        for text in generate(args.events, args.accounts, args.instruments, args.seed):
            sys.stdout.write(text + "\n")
    else:
        write(args.output, args.events, args.accounts, args.instruments, args.seed)


if __name__ == "__main__":
    main()
