"""Crash safety of `clearing ingest` (rulebook R3.1, R3.4, R3.6).

A large seeded input file is ingested once without interruption, for reference, and once more
in another ledger by a `clearing ingest` process that is SIGKILLed at seeded random moments and
re-run each time, until a run completes. After a crash the log must hold whole groups (an input
with all its decisions, R3.6) and nothing twice; re-running the same ingest must finish the job
(R3.4), so that the crashed ledger ends byte for byte like the reference one.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.conftest import clean_env, clearing_command

pytestmark = pytest.mark.slow

SEED = 20260301
N_INPUTS = 30_000
N_ACCOUNTS = 100
KILLS = 5
INPUT_TYPES = ("asset", "instrument", "price", "deposit", "withdrawal", "transfer", "trade", "funding")


def generate(path: Path, n_inputs: int = N_INPUTS, n_accounts: int = N_ACCOUNTS, seed: int = SEED) -> list[str]:
    """A seeded, realistic workload: listings, prices (a random walk with crashes), deposits,
    many trades among ``n_accounts`` accounts, funding and withdrawals (some rejected). The
    crashes make accounts liquidatable, so liquidations, bankruptcies and deleveraging happen
    and many inputs are recorded with several decisions. Returns the input ids in order."""
    rng = random.Random(seed)
    t0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
    clock = [0]

    def ts(step: int = 1) -> str:
        clock[0] += step
        return (t0 + timedelta(seconds=clock[0])).strftime("%Y-%m-%dT%H:%M:%SZ")

    lines: list[str] = []
    ids: list[str] = []

    def emit(**fields: object) -> None:
        id_ = f"g{len(lines)}"
        ids.append(id_)
        lines.append(json.dumps({"id": id_, **fields}, separators=(",", ":")))

    def cents(c: int) -> str:
        return f"{c // 100}.{c % 100:02d}"

    now = ts(0)
    emit(ts=now, type="asset", asset="USD", decimals=6, price_decimals=0, haircut="0", settlement=True)
    emit(ts=now, type="asset", asset="BTC", decimals=8, price_decimals=2, haircut="0.1")
    emit(ts=now, type="asset", asset="ETH", decimals=8, price_decimals=2, haircut="0.15")
    emit(ts=now, type="instrument", instrument="BTC-PERP", underlying="BTC", qty_decimals=4,
         initial_margin="0.1", maintenance_margin="0.05", liquidation_fee="0.01")
    emit(ts=now, type="instrument", instrument="ETH-PERP", underlying="ETH", qty_decimals=3,
         initial_margin="0.2", maintenance_margin="0.1", liquidation_fee="0.02")
    marks = {"BTC": 60_000_00, "ETH": 3_000_00}  # in cents (price_decimals 2)
    for asset, mark in marks.items():
        emit(ts=ts(), type="price", asset=asset, price=cents(mark))
    emit(ts=ts(), type="deposit", account="@insurance", asset="USD", amount="1000000")
    accounts = [f"acct{i:03d}" for i in range(n_accounts)]
    for account in accounts:
        emit(ts=ts(), type="deposit", account=account, asset="USD", amount=str(rng.randint(2_000, 50_000)))
        if rng.random() < 0.3:
            emit(ts=ts(), type="deposit", account=account, asset="BTC", amount=f"0.{rng.randint(1, 99_999_999):08d}")
    qty_decimals = {"BTC-PERP": 4, "ETH-PERP": 3}
    underlying = {"BTC-PERP": "BTC", "ETH-PERP": "ETH"}
    crashed = False
    while len(lines) < n_inputs:
        r = rng.random()
        if r < 0.80:
            inst = rng.choice(("BTC-PERP", "ETH-PERP"))
            buyer, seller = rng.sample(accounts, 2)
            d = qty_decimals[inst]
            q = rng.randint(1, 10**d // 2)
            price = marks[underlying[inst]] * rng.randint(995, 1005) // 1000
            emit(ts=ts(rng.choice((0, 1))), type="trade", instrument=inst, buyer=buyer, seller=seller,
                 qty=f"{q // 10**d}.{q % 10**d:0{d}d}", price=cents(price),
                 buyer_fee=str(rng.randint(0, 5)), seller_fee="0.5")
        elif r < 0.92:
            asset = rng.choice(("BTC", "ETH"))
            if not crashed and rng.random() < 0.01:
                crashed = True
                marks[asset] = marks[asset] * rng.randint(60, 80) // 100  # a market crash
            else:
                marks[asset] = max(100, marks[asset] * rng.randint(980, 1021) // 1000)
                if crashed and rng.random() < 0.02:
                    crashed = False
            emit(ts=ts(), type="price", asset=asset, price=cents(marks[asset]))
        elif r < 0.95:
            emit(ts=ts(), type="funding", instrument=rng.choice(("BTC-PERP", "ETH-PERP")),
                 rate=rng.choice(("0.0001", "-0.0001", "0.0003")))
        elif r < 0.98:
            emit(ts=ts(), type="withdrawal", account=rng.choice(accounts), asset="USD",
                 amount=str(rng.randint(1, 20_000)))
        else:
            emit(ts=ts(), type="deposit", account=rng.choice(accounts), asset="USD",
                 amount=str(rng.randint(100, 20_000)))
    path.write_text("\n".join(lines) + "\n")
    return ids


# --- helpers -----------------------------------------------------------------------------
def _cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([clearing_command(), *map(str, args)], cwd=cwd, env=clean_env(),
                          capture_output=True, timeout=300)


def _db(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def _head(db_path: Path) -> int:
    with _db(db_path) as conn:
        return conn.execute("SELECT coalesce(max(seq), 0) FROM event_index").fetchone()[0]


def _log(db_path: Path, upto: int | None = None) -> list[tuple[int, str, bytes]]:
    """(seq, type, canonical payload) of every log event, from the library's table."""
    from events.store import LOG_ID

    with _db(db_path) as conn:
        rows = conn.execute(
            "SELECT originator_version, topic, state FROM stored_events WHERE originator_id = ? "
            "ORDER BY originator_version",
            (LOG_ID.hex,),
        ).fetchall()
    return [(seq, t, bytes(p)) for seq, t, p in rows if upto is None or seq <= upto]


def _assert_log_well_formed(db_path: Path, ids: list[str]) -> int:
    """No gap and no duplicate in seq (R3.1), every input id exactly once (R3.4)."""
    from events.store import LOG_ID

    with _db(db_path) as conn:
        index_seqs = [r[0] for r in conn.execute("SELECT seq FROM event_index ORDER BY seq")]
        versions = [
            r[0]
            for r in conn.execute(
                "SELECT originator_version FROM stored_events WHERE originator_id = ? "
                "ORDER BY originator_version",
                (LOG_ID.hex,),
            )
        ]
        other_streams = conn.execute(
            "SELECT count(*) FROM stored_events WHERE originator_id != ?", (LOG_ID.hex,)
        ).fetchone()[0]
        input_refs = [
            r[0]
            for r in conn.execute(
                f"SELECT ref FROM event_index WHERE type IN ({','.join('?' * len(INPUT_TYPES))}) ORDER BY seq",
                INPUT_TYPES,
            )
        ]
        recorded_ids = [r[0] for r in conn.execute("SELECT id FROM input_ids")]
        decision_refs = {
            r[0]
            for r in conn.execute(
                f"SELECT ref FROM event_index WHERE type NOT IN ({','.join('?' * len(INPUT_TYPES))})",
                INPUT_TYPES,
            )
        }
    head = len(index_seqs)
    assert index_seqs == list(range(1, head + 1)), "event_index seq has a gap or a duplicate"
    assert versions == index_seqs, "stored_events.originator_version differs from event_index"
    assert other_streams == 0
    assert len(input_refs) == len(set(input_refs)), "an input is recorded twice"
    assert input_refs == ids[: len(input_refs)], "inputs are not recorded in file order"
    assert sorted(recorded_ids) == sorted(input_refs)
    assert decision_refs <= set(input_refs), "a decision without its input"
    return head


# --- the test ----------------------------------------------------------------------------
def test_sigkill_during_ingest_loses_nothing_and_duplicates_nothing(tmp_path):
    data = tmp_path / "big.jsonl"
    ids = generate(data)
    assert len(ids) == len(set(ids)) == N_INPUTS

    # the uninterrupted reference run, timed
    ref = tmp_path / "reference"
    ref.mkdir()
    assert _cli("init", "--origin", "test.example/reference", cwd=ref).returncode == 0
    started = time.monotonic()
    done = _cli("ingest", "--json", data, cwd=ref)
    duration = time.monotonic() - started
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    ref_summary = json.loads(done.stdout)
    final_head = ref_summary["head_seq"]
    assert ref_summary["appended"] == N_INPUTS
    assert ref_summary["duplicates"] == 0
    assert final_head == N_INPUTS + ref_summary["decisions"]
    ref_db = ref / "clearing.db"
    assert _assert_log_well_formed(ref_db, ids) == final_head
    ref_log = _log(ref_db)
    ref_types = [t for _, t, _ in ref_log]
    # the workload is worth crashing: rejections, liquidations and bankruptcies happen
    for kind in ("rejected", "funding_settled", "liquidation", "bankruptcy"):
        assert kind in ref_types, kind

    # the same file into another ledger, SIGKILLed at seeded random moments: one while the
    # first run is still checking the file, then one in each fifth of the log, at a random
    # point of it (a target seq, found by watching the store) plus a random delay, so kills
    # land inside group commits, between them and during snapshots, whatever the machine's load
    crash = tmp_path / "crashed"
    crash.mkdir()
    assert _cli("init", "--origin", "test.example/crashed", cwd=crash).returncode == 0
    crash_db = crash / "clearing.db"
    rng = random.Random(SEED)
    plans: list[tuple[int, float]] = [(0, rng.uniform(0.02, 0.15) * duration)]  # (target seq, delay s)
    for i in range(KILLS - 1):
        low, high = final_head * i // (KILLS - 1), final_head * (i + 1) // (KILLS - 1)
        plans.append((rng.randint(low + 1, high - 1), rng.uniform(0.0, 0.05) * duration))
    kills: list[tuple[int, float, int, int]] = []  # (target, delay, head before, head after)
    for target, delay in plans:
        before = _head(crash_db)
        if before >= final_head:
            break
        if target:
            target = max(target, before + 1)  # an earlier run got past this point already
        with open(crash / "stderr.txt", "ab") as err:
            proc = subprocess.Popen([clearing_command(), "ingest", str(data)], cwd=crash,
                                    env=clean_env(), stdout=subprocess.DEVNULL, stderr=err)
            try:
                while proc.poll() is None and target > 0 and _head(crash_db) < target:
                    time.sleep(0.01)
                rc = proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                rc = proc.wait()
        if rc == 0:
            break  # this run finished before its kill: the rest is the final run's
        assert rc == -signal.SIGKILL, (crash / "stderr.txt").read_text()[-2000:]
        after = _head(crash_db)
        kills.append((target, delay, before, after))
        # after every crash: whole groups only (R3.6), no gap, no duplicate, and exactly the
        # reference log so far (the ledger is deterministic)
        assert _assert_log_well_formed(crash_db, ids) == after
        assert after >= before
        if after < final_head:
            assert ref_types[after] in INPUT_TYPES, (
                f"the crash split a group: the reference event after seq {after} is a {ref_types[after]}"
            )
        assert _log(crash_db) == ref_log[:after]

    print(f"reference run {duration:.1f} s; kills (target seq, delay s, head before, head after): {kills}")

    # re-run the same ingest until one completes
    recorded_before_final = sum(1 for _, t, _ in _log(crash_db) if t in INPUT_TYPES)
    final = _cli("ingest", "--json", data, cwd=crash)
    assert final.returncode == 0, final.stderr.decode()[-2000:]
    summary = json.loads(final.stdout)
    assert summary["duplicates"] == recorded_before_final
    assert summary["appended"] == N_INPUTS - recorded_before_final
    assert summary["head_seq"] == final_head

    # the kills tested something: at least one of them landed while events were being appended
    mid = [k for k in kills if 0 < k[3] < final_head]
    assert len(mid) >= 2, f"too few kills landed mid-ingest: {kills} (reference run {duration:.1f} s)"

    # the crashed ledger is the reference ledger
    assert _head(crash_db) == final_head
    assert _assert_log_well_formed(crash_db, ids) == final_head
    assert _log(crash_db) == ref_log
    ref_state = _cli("state", "--json", cwd=ref)
    crash_state = _cli("state", "--json", cwd=crash)
    assert ref_state.returncode == crash_state.returncode == 0
    assert crash_state.stdout == ref_state.stdout
    assert json.loads(crash_state.stdout)["seq"] == final_head
