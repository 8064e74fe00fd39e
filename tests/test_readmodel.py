"""The read model (projections/readmodel.py): its tables match the folded state, each event is
applied exactly once, and it resumes after a crash or a new append as if built in one go."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import msgspec
import pytest
import sqlite_utils

from clearing.engine import process
from events import schema
from events.canonical import canonical, content_digest, leaf_hash
from events.numbers import fmt_units
from events.store import LogRecord, LogStore, open_store
from events.timestamps import parse_ts
from projections import snapshot
from projections.history import state_at_seq
from projections.readmodel import ReadModel, ReadModelError, ReadModelRecorder, default_path
from projections.report import account_entry, marks
from projections.state import INSURANCE, LedgerState

ROOT = Path(__file__).resolve().parents[1]

# The ten example lines of interfaces §1 (11 events).
TEN_LINES = """
{"id":"a1","ts":"2026-03-01T00:00:00Z","type":"asset","asset":"USD","decimals":6,"price_decimals":0,"haircut":"0","settlement":true}
{"id":"a2","ts":"2026-03-01T00:00:00Z","type":"asset","asset":"BTC","decimals":8,"price_decimals":2,"haircut":"0.1"}
{"id":"i1","ts":"2026-03-01T00:00:00Z","type":"instrument","instrument":"BTC-PERP","underlying":"BTC","qty_decimals":4,"initial_margin":"0.1","maintenance_margin":"0.05","liquidation_fee":"0.01"}
{"id":"p1","ts":"2026-03-01T00:00:01Z","type":"price","asset":"BTC","price":"60000"}
{"id":"d1","ts":"2026-03-01T00:00:02Z","type":"deposit","account":"alice","asset":"USD","amount":"10000"}
{"id":"d2","ts":"2026-03-01T00:00:02Z","type":"deposit","account":"bob","asset":"USD","amount":"10000"}
{"id":"w1","ts":"2026-03-01T00:00:03Z","type":"withdrawal","account":"alice","asset":"USD","amount":"100"}
{"id":"x1","ts":"2026-03-01T00:00:04Z","type":"transfer","from":"alice","to":"alice/iso","asset":"USD","amount":"500"}
{"id":"t1","ts":"2026-03-01T00:00:05Z","type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"bob","qty":"0.5","price":"60010.5","buyer_fee":"3","seller_fee":"1.5"}
{"id":"f1","ts":"2026-03-01T08:00:00Z","type":"funding","instrument":"BTC-PERP","rate":"0.0001"}
"""

# A rejected withdrawal (seq 12-13), BTC collateral, a haircut and an MM re-listing, a fall to
# 43000 that liquidates alice (R10.3), and a crash to 37000 that makes alice and dave bankrupt
# and deleverages them against bob (R10.4-R10.6); then funding that pays @insurance.
MORE_LINES = """
{"id":"w2","ts":"2026-03-01T08:00:01Z","type":"withdrawal","account":"bob","asset":"USD","amount":"999999"}
{"id":"d3","ts":"2026-03-01T08:00:02Z","type":"deposit","account":"carol","asset":"BTC","amount":"2"}
{"id":"d4","ts":"2026-03-01T08:00:02Z","type":"deposit","account":"carol","asset":"USD","amount":"1000"}
{"id":"t2","ts":"2026-03-01T08:00:03Z","type":"trade","instrument":"BTC-PERP","buyer":"carol","seller":"bob","qty":"0.2","price":"60000","buyer_fee":"1","seller_fee":"1"}
{"id":"a3","ts":"2026-03-01T08:00:04Z","type":"asset","asset":"BTC","decimals":8,"price_decimals":2,"haircut":"0.2"}
{"id":"i2","ts":"2026-03-01T08:00:05Z","type":"instrument","instrument":"BTC-PERP","underlying":"BTC","qty_decimals":4,"initial_margin":"0.1","maintenance_margin":"0.06","liquidation_fee":"0.01"}
{"id":"p2","ts":"2026-03-01T09:00:00Z","type":"price","asset":"BTC","price":"43000"}
{"id":"d5","ts":"2026-03-01T09:00:01Z","type":"deposit","account":"dave","asset":"USD","amount":"5000"}
{"id":"t3","ts":"2026-03-01T09:00:02Z","type":"trade","instrument":"BTC-PERP","buyer":"dave","seller":"bob","qty":"1","price":"43000","buyer_fee":"0","seller_fee":"0"}
{"id":"x2","ts":"2026-03-01T09:00:03Z","type":"transfer","from":"alice/iso","to":"alice","asset":"USD","amount":"200"}
{"id":"p3","ts":"2026-03-01T10:00:00Z","type":"price","asset":"BTC","price":"37000"}
{"id":"f2","ts":"2026-03-01T16:00:00Z","type":"funding","instrument":"BTC-PERP","rate":"-0.0002"}
{"id":"w3","ts":"2026-03-01T16:00:01Z","type":"withdrawal","account":"carol","asset":"BTC","amount":"0.5"}
"""

LATER_LINES = """
{"id":"p4","ts":"2026-03-02T00:00:00Z","type":"price","asset":"BTC","price":"39000"}
{"id":"d6","ts":"2026-03-02T00:00:01Z","type":"deposit","account":"erin/hedge","asset":"USD","amount":"2500"}
{"id":"t4","ts":"2026-03-02T00:00:02Z","type":"trade","instrument":"BTC-PERP","buyer":"bob","seller":"erin/hedge","qty":"0.1","price":"39000","buyer_fee":"0.5","seller_fee":"0.5"}
{"id":"w4","ts":"2026-03-02T00:00:03Z","type":"withdrawal","account":"erin/hedge","asset":"USD","amount":"2400"}
"""

REJECTED_SEQ = 13  # w2 (seq 12) is rejected by seq 13
HEAD = 31  # events after TEN_LINES + MORE_LINES


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class Ledger:
    """A real SQLite store fed through the rules engine, one append per input and decisions."""

    def __init__(self, path: Path, origin: str = "test.example/clearing") -> None:
        self.store: LogStore = open_store(str(path))
        self.store.create({"origin": origin})
        self.state = LedgerState()  # the engine's live state

    def add(self, text_or_inputs: str | list[dict]) -> None:
        inputs = lines(text_or_inputs) if isinstance(text_or_inputs, str) else text_or_inputs
        for fields in inputs:
            self.append([fields])

    def append(self, inputs: list[dict]) -> None:
        """Several inputs (each with its decisions) in ONE append."""
        records = []
        for fields in inputs:
            inp = msgspec.convert(fields, schema.Input)
            inp = msgspec.structs.replace(inp, seq=self.state.seq + 1)
            decisions = process(self.state, inp)
            for ev in [inp, *decisions]:
                payload = canonical(ev)
                records.append(LogRecord(
                    ev.seq, parse_ts(ev.ts), type(ev).__struct_config__.tag,
                    ev.id if ev is inp else ev.ref, payload, leaf_hash(payload),
                    content_digest(inp) if ev is inp else None,
                ))
        self.store.append(records)

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def scenario(tmp_path: Path):
    led = Ledger(tmp_path / "clearing.db")
    led.add(TEN_LINES + MORE_LINES)
    assert led.store.head()[0] == HEAD
    yield led
    led.close()


def dump(path: str | Path) -> dict[str, list[tuple]]:
    """Every row of every read-model table, read with plain sqlite3."""
    conn = sqlite3.connect(str(path))
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {t: conn.execute(f'SELECT * FROM "{t}" ORDER BY 1, 2').fetchall() for t in tables}
    finally:
        conn.close()


def build(store: LogStore, path: Path, **kw) -> dict[str, list[tuple]]:
    with ReadModel(str(path)) as rm:
        rm.catch_up(store, **kw)
    return dump(path)


def expected_accounts(state: LedgerState) -> dict[str, dict]:
    return {a: account_entry(state, acct) for a, acct in state.accounts.items()}


def read_accounts(path: str | Path) -> dict[str, dict]:
    """The read model's accounts in the shape of ``account_entry``."""
    db = sqlite_utils.Database(str(path))
    out = {}
    for row in db["accounts"].rows:
        out[row["account"]] = {
            "balances": {r["asset"]: r["amount"] for r in db["balances"].rows_where(
                "account = ?", [row["account"]], order_by="asset")},
            "positions": {r["instrument"]: r["qty"] for r in db["positions"].rows_where(
                "account = ?", [row["account"]], order_by="instrument")},
            "equity": row["equity"],
            "initial_margin": row["initial_margin"],
            "maintenance_margin": row["maintenance_margin"],
            "free_collateral": row["free_collateral"],
            "liquidatable": bool(row["liquidatable"]),
        }
    db.close()
    return out


def insurance_history(store: LogStore) -> list[tuple[int, str]]:
    """(seq, cash) after every event that changed @insurance's cash, by folding seq by seq."""
    out, last = [], None
    head = store.head()[0]
    for seq in range(1, head + 1):
        state = state_at_seq(store, seq)
        cash = state.accounts[INSURANCE].cash
        if cash != last:
            out.append((seq, fmt_units(cash, state.scale)))
            last = cash
    return out


# --- the tables match the state ----------------------------------------------------------------
def test_tables_match_the_folded_state(scenario: Ledger, tmp_path: Path):
    path = tmp_path / "clearing.db.read.db"
    with ReadModel(str(path)) as rm:
        assert rm.position() == 0
        assert rm.catch_up(scenario.store) == HEAD
        assert rm.position() == HEAD
    state = state_at_seq(scenario.store, HEAD)
    assert read_accounts(path) == expected_accounts(state)
    assert read_accounts(path) == expected_accounts(scenario.state)  # and the engine's live state
    rows = dump(path)
    assert {a: p for a, p, _, _ in rows["marks"]} == marks(state) == {"BTC": "37000"}
    assert rows["marks"] == [("BTC", "37000", 24, "2026-03-01T10:00:00Z")]
    # One timeline row per log event, in order, with the type of each.
    types = [(seq, t) for seq, _, t, _ in ((r[0], r[1], r[3], r[4]) for r in rows["events"])]
    assert types == [(seq, t) for page in scenario.store.read_payloads() for seq, t, _ in page]
    assert {"rejected", "liquidation", "bankruptcy", "deleverage", "funding_settled"} <= {
        t for _, t in types}
    # Insurance fund: a row after every event that changed @insurance's cash.
    assert [(seq, cash) for seq, _, cash in rows["insurance_fund"]] == insurance_history(
        scenario.store)
    assert rows["insurance_fund"][-1][2] == fmt_units(state.accounts[INSURANCE].cash, state.scale)


def test_account_rows_carry_parent_flags_and_seqs(scenario: Ledger, tmp_path: Path):
    path = tmp_path / "rm.db"
    build(scenario.store, path)
    db = sqlite_utils.Database(str(path))
    acc = {r["account"]: r for r in db["accounts"].rows}
    assert acc["alice/iso"]["parent"] == "alice" and acc["alice"]["parent"] is None
    assert acc["@insurance"]["is_system"] == 1 and acc["alice"]["is_system"] == 0
    assert {a: r["created_seq"] for a, r in acc.items()} == {
        "@external": 1, "@fees": 1, "@insurance": 1, "alice": 5, "bob": 6, "alice/iso": 8,
        "carol": 14, "dave": 21}
    # carol last moved at 31 (w3); bob at 30 (funding); alice/iso at 23 (x2); @fees at 22 (t3,
    # whose fees are 0: a trade always names @fees).
    assert acc["carol"]["updated_seq"] == 31
    assert acc["bob"]["updated_seq"] == 30
    assert acc["alice/iso"]["updated_seq"] == 23
    assert acc["@fees"]["updated_seq"] == 22
    assert all(r["liquidatable"] in (0, 1) for r in acc.values())
    db.close()


def test_timeline_rows_say_what_happened(scenario: Ledger, tmp_path: Path):
    path = tmp_path / "rm.db"
    build(scenario.store, path)
    db = sqlite_utils.Database(str(path))
    ev = {r["seq"]: r for r in db["events"].rows}
    trade = ev[9]
    assert (trade["type"], trade["ref"], trade["account"], trade["counterparty"],
            trade["instrument"], trade["qty"], trade["price"]) == (
        "trade", "t1", "alice", "bob", "BTC-PERP", "0.5", "60010.5")
    assert trade["summary"] == "alice bought 0.5 BTC-PERP from bob at 60010.5"
    assert (trade["ts"], trade["ts_us"]) == ("2026-03-01T00:00:05Z",
                                            parse_ts("2026-03-01T00:00:05Z"))
    assert ev[8]["account"] == "alice" and ev[8]["counterparty"] == "alice/iso"
    assert ev[17]["summary"] == "asset BTC re-listed: haircut 0.2"
    assert ev[18]["summary"].startswith("instrument BTC-PERP on BTC re-listed: IM 0.1, MM 0.06")
    rejected = ev[REJECTED_SEQ]
    assert (rejected["type"], rejected["ref"], rejected["account"], rejected["reason"]) == (
        "rejected", "w2", "bob", "insufficient_balance")
    assert rejected["summary"].startswith("withdrawal w2 of bob rejected: insufficient_balance")
    assert ev[12]["summary"].endswith("(rejected: insufficient_balance)")
    liq = ev[20]
    assert (liq["type"], liq["ref"], liq["account"], liq["counterparty"]) == (
        "liquidation", "p2", "alice", INSURANCE)
    assert liq["price"] == "43000" and liq["qty"] and liq["amount"]  # penalty
    assert [r["account"] for r in db["events"].rows_where("type = 'bankruptcy'")] == [
        "alice", "dave"]
    assert [r["counterparty"] for r in db["events"].rows_where("type = 'deleverage'")] == [
        "bob", "bob"]
    # Every money/quantity value is stored as TEXT, never REAL.
    for table, columns in {
        "events": ("amount", "qty", "price"),
        "accounts": ("equity", "initial_margin", "maintenance_margin", "free_collateral"),
        "balances": ("amount",), "positions": ("qty",), "marks": ("price",),
        "insurance_fund": ("cash",),
    }.items():
        for column in columns:
            kinds = {r[0] for r in db.execute(
                f"SELECT DISTINCT typeof({column}) FROM {table}").fetchall()}
            assert kinds <= {"text", "null"} and "text" in kinds, (table, column, kinds)
    db.close()


# --- idempotence, batching, resumption ---------------------------------------------------------
def test_second_catch_up_applies_nothing(scenario: Ledger, tmp_path: Path):
    path = tmp_path / "rm.db"
    with ReadModel(str(path)) as rm:
        rm.catch_up(scenario.store)
        before = dump(path)
        assert rm.catch_up(scenario.store) == HEAD
        assert rm.catch_up(scenario.store, upto=5) == HEAD  # an older upto changes nothing
    with ReadModel(str(path)) as rm:  # a new object on the same file: nothing either
        assert rm.catch_up(scenario.store) == HEAD
    assert dump(path) == before


@pytest.mark.parametrize("batch", [1, 2, 3, 5, 8, 10000])
def test_any_batch_size_gives_the_same_rows(scenario: Ledger, tmp_path: Path, batch: int):
    one_shot = build(scenario.store, tmp_path / "one.db")
    assert build(scenario.store, tmp_path / f"b{batch}.db", batch=batch) == one_shot


def test_batches_end_only_at_group_boundaries(scenario: Ledger, tmp_path: Path, monkeypatch):
    """With batch=1 every page is one event: a batch still never ends after an input whose
    decisions (or rejection) follow, and a group longer than a page is written whole."""
    ends: list[int] = []
    original = ReadModelRecorder._insert_tracking

    def spy(self, c, tracking):
        if tracking.application_name == "clearing":
            ends.append(tracking.notification_id)
        return original(self, c, tracking)

    monkeypatch.setattr(ReadModelRecorder, "_insert_tracking", spy)
    with ReadModel(str(tmp_path / "rm.db")) as rm:
        rm.catch_up(scenario.store, batch=1)
    groups = []  # the seq of the last event of each input's group
    for page in scenario.store.read_payloads():
        for seq, t, _ in page:
            if t in schema.INPUT_TAGS and seq > 1:
                groups.append(seq - 1)
    groups.append(HEAD)
    assert ends == sorted(ends) and set(ends) <= set(groups) and ends[-1] == HEAD
    # Every group its own batch, except that the last page takes the rest of the log with it.
    assert ends[:-1] == groups[:len(ends) - 1] and len(ends) >= len(groups) - 1
    assert 11 in ends and 10 not in ends  # f1 + funding_settled
    assert 13 in ends and 12 not in ends  # w2 + its rejection
    assert 28 in ends and not {24, 25, 26, 27} & set(ends)  # p3 + 4 decisions


def test_resume_across_appends_equals_a_one_shot_build(tmp_path: Path):
    led = Ledger(tmp_path / "clearing.db")
    path = tmp_path / "rm.db"
    all_inputs = lines(TEN_LINES + MORE_LINES + LATER_LINES)
    kept = ReadModel(str(path))  # keeps its folded state between calls
    positions = []
    try:
        for i in range(0, len(all_inputs), 4):
            led.append(all_inputs[i:i + 2])  # two inputs in one append
            led.add(all_inputs[i + 2:i + 4])
            if i % 8 == 0:
                positions.append(kept.catch_up(led.store, batch=3))
            else:  # a fresh object rebuilds the state at its position from the log
                with ReadModel(str(path)) as fresh:
                    positions.append(fresh.catch_up(led.store, batch=3))
        positions.append(kept.catch_up(led.store))
    finally:
        kept.close()
    head = led.store.head()[0]
    assert positions == sorted(positions) and positions[-1] == head
    assert dump(path) == build(led.store, tmp_path / "one.db")
    assert read_accounts(path) == expected_accounts(led.state)
    led.close()


def test_resume_from_a_snapshot_equals_a_one_shot_build(scenario: Ledger, tmp_path: Path):
    path = tmp_path / "rm.db"
    with ReadModel(str(path)) as rm:
        assert rm.catch_up(scenario.store, upto=20) == 20
    scenario.store.put_snapshot(20, snapshot.encode(state_at_seq(scenario.store, 20)))
    scenario.add(LATER_LINES)
    with ReadModel(str(path)) as rm:  # rebuilds its state from the snapshot at 20
        assert rm.catch_up(scenario.store) == scenario.store.head()[0]
    assert dump(path) == build(scenario.store, tmp_path / "one.db")


@pytest.mark.parametrize("upto", [12, 19, 24, 25])
def test_upto_inside_a_group_looks_ahead_and_resumes(scenario: Ledger, tmp_path: Path,
                                                     upto: int):
    """12: w2, rejected by 13. 19: p2, followed by its liquidation. 24/25: p3 and its first
    decision. The rows at ``upto`` are the state at ``upto`` (R3.5 look-ahead included)."""
    path = tmp_path / "rm.db"
    with ReadModel(str(path)) as rm:
        assert rm.catch_up(scenario.store, upto=upto) == upto
        assert read_accounts(path) == expected_accounts(state_at_seq(scenario.store, upto))
    with ReadModel(str(path)) as rm:
        assert rm.catch_up(scenario.store, batch=2) == HEAD
    assert dump(path) == build(scenario.store, tmp_path / "one.db")


# --- exactly once ------------------------------------------------------------------------------
class Crash(Exception):
    pass


def crash_on(monkeypatch, table: str, call: int) -> None:
    """Make the read model's ``call``-th bulk write into ``table`` (1-based) raise: in the
    middle of a batch's transaction, after that batch's events and accounts were written."""
    calls = [0]
    original = ReadModel._execute

    def execute(self, cur, name, statement, rows):
        if name == table and statement.startswith("INSERT"):
            calls[0] += 1
            if calls[0] == call:
                raise Crash(f"crash writing {table}")
        return original(self, cur, name, statement, rows)

    monkeypatch.setattr(ReadModel, "_execute", execute)


def test_a_crash_midway_through_a_batch_leaves_the_last_batch_and_resumes(
        scenario: Ledger, tmp_path: Path, monkeypatch):
    path = tmp_path / "rm.db"
    reference = build(scenario.store, tmp_path / "one.db")
    with ReadModel(str(path)) as rm:
        assert rm.catch_up(scenario.store, upto=11) == 11
        committed = dump(path)
        crash_on(monkeypatch, "balances", 2)  # the second batch after this one
        with pytest.raises(Crash):
            rm.catch_up(scenario.store, batch=4)
        position = rm.position()
        assert 11 < position < HEAD  # the first batch committed, the second did not
        # Nothing of the failed batch is visible: the rows are those of a build up to position.
        assert dump(path) == build(scenario.store, tmp_path / "upto.db", upto=position)
        assert dump(path) != committed
        monkeypatch.undo()
        assert rm.catch_up(scenario.store, batch=4) == HEAD  # same object: state was dropped
    assert dump(path) == reference


def test_a_failed_batch_keeps_the_tracking_position(scenario: Ledger, tmp_path: Path,
                                                    monkeypatch):
    path = tmp_path / "rm.db"
    with ReadModel(str(path)) as rm:
        rm.catch_up(scenario.store, upto=9)
        before = dump(path)
        crash_on(monkeypatch, "balances", 1)
        with pytest.raises(Crash):
            rm.catch_up(scenario.store)
        assert rm.position() == 9
        assert dump(path) == before
        assert ("clearing", 9) in before["tracking"]


def test_a_replayed_position_is_refused_and_rolls_back(scenario: Ledger, tmp_path: Path):
    """The library's single-row tracking refuses a position that does not advance, and the
    rows written in its transaction roll back with it."""
    from eventsourcing.persistence import IntegrityError, Tracking

    path = tmp_path / "rm.db"
    with ReadModel(str(path)) as rm:
        rm.catch_up(scenario.store)
        before = dump(path)
        with pytest.raises(IntegrityError):
            with rm.datastore.transaction(commit=True) as c:
                c.execute("DELETE FROM balances")
                rm.recorder._insert_tracking(c, Tracking("clearing", HEAD))
        assert dump(path) == before


def test_a_concurrent_advance_makes_the_batch_fail_not_apply_twice(
        scenario: Ledger, tmp_path: Path, monkeypatch):
    path = tmp_path / "rm.db"
    reference = build(scenario.store, tmp_path / "one.db")
    other = ReadModel(str(path))
    with ReadModel(str(path)) as rm:
        original = ReadModel._write

        def write_after_other(self, start, *a):
            if self is rm and other.position() == 0:
                other.catch_up(scenario.store, upto=11)  # wins the race
            return original(self, start, *a)

        monkeypatch.setattr(ReadModel, "_write", write_after_other)
        with pytest.raises(ReadModelError) as err:
            rm.catch_up(scenario.store)
        assert err.value.code == "readmodel_conflict"
        assert rm.position() == 11
        assert rm.catch_up(scenario.store) == HEAD
    other.close()
    assert dump(path) == reference


CHILD = """
import os, sys
from events.store import open_store
from projections.readmodel import ReadModel

original = ReadModel._execute
calls = [0]
def execute(self, cur, table, statement, rows):
    if table == "positions" and statement.startswith("INSERT"):
        calls[0] += 1
        if calls[0] == 3:
            original(self, cur, table, statement, rows)
            os._exit(9)  # die inside the transaction: no rollback, no cleanup
    return original(self, cur, table, statement, rows)
ReadModel._execute = execute
rm = ReadModel(sys.argv[2])
rm.catch_up(open_store(sys.argv[1]), batch=3)
"""


def test_a_killed_process_leaves_a_whole_file_that_resumes(scenario: Ledger, tmp_path: Path):
    path = tmp_path / "rm.db"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD), scenario.store.url,
                           str(path)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
    conn = sqlite3.connect(str(path))
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    position = conn.execute(
        "SELECT notification_id FROM tracking WHERE application_name = 'clearing'").fetchone()[0]
    conn.close()
    assert 0 < position < HEAD
    assert dump(path) == build(scenario.store, tmp_path / "upto.db", upto=position)
    with ReadModel(str(path)) as rm:
        assert rm.catch_up(scenario.store) == HEAD
    assert dump(path) == build(scenario.store, tmp_path / "one.db")


# --- the file and its guards -------------------------------------------------------------------
def test_the_file_opens_with_plain_sqlite3(scenario: Ledger, tmp_path: Path):
    path = default_path(scenario.store.url)
    assert path == str(tmp_path / "clearing.db.read.db")
    with ReadModel(path) as rm:
        rm.catch_up(scenario.store)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"accounts", "balances", "positions", "marks", "events", "insurance_fund",
                "meta", "tracking"} <= tables
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"events_by_account_seq", "events_by_type_seq",
                "positions_by_instrument"} <= indexes
        plan = " ".join(r[3] for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM events WHERE account = 'alice' ORDER BY seq"))
        assert "events_by_account_seq" in plan
        money = {(t, r[1]): r[2] for t in ("accounts", "balances", "positions", "marks", "events",
                                           "insurance_fund")
                 for r in conn.execute(f"PRAGMA table_info({t})")}
        assert "REAL" not in money.values() and "FLOAT" not in money.values()
        assert money[("balances", "amount")] == "TEXT" and money[("events", "seq")] == "INTEGER"
        # An analyst's query: bob's trades.
        assert conn.execute("SELECT count(*) FROM events WHERE type = 'trade' AND "
                            "(account = 'bob' OR counterparty = 'bob')").fetchone() == (3,)
    finally:
        conn.close()
    # The WAL was checkpointed on close: the main file alone holds everything.
    assert not os.path.exists(path + "-wal") or os.path.getsize(path + "-wal") == 0


def test_a_read_model_of_another_log_is_refused(scenario: Ledger, tmp_path: Path):
    path = tmp_path / "rm.db"
    build(scenario.store, path)
    other = Ledger(tmp_path / "other.db", origin="other.example/clearing")
    other.add(TEN_LINES)  # 11 events: shorter than the read model's position
    with ReadModel(str(path)) as rm:
        with pytest.raises(ReadModelError) as err:
            rm.catch_up(other.store)
        assert err.value.code == "readmodel_ahead"
    other.add(MORE_LINES + LATER_LINES)
    with ReadModel(str(path)) as rm:
        with pytest.raises(ReadModelError) as err:
            rm.catch_up(other.store)
        assert err.value.code == "readmodel_mismatch"
        assert rm.position() == HEAD
    other.close()


def test_the_ledger_file_itself_is_not_taken_for_a_read_model(scenario: Ledger, tmp_path: Path):
    before = dump(scenario.store.url)
    with pytest.raises(ReadModelError) as err:
        ReadModel(scenario.store.url)
    assert err.value.code == "readmodel_invalid"
    assert dump(scenario.store.url) == before
    (tmp_path / "notes.txt").write_text("not a database, just text that is long enough " * 20)
    with pytest.raises(ReadModelError):
        ReadModel(str(tmp_path / "notes.txt"))


def test_an_empty_log_gives_empty_tables(tmp_path: Path):
    led = Ledger(tmp_path / "clearing.db")
    path = tmp_path / "rm.db"
    with ReadModel(str(path)) as rm:
        assert rm.catch_up(led.store) == 0
    rows = dump(path)
    assert all(rows[t] == [] for t in ("accounts", "balances", "positions", "marks", "events",
                                       "insurance_fund"))
    led.close()
