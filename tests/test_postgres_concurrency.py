"""Concurrency on a PostgreSQL store: racing writers, readers during an ingest, and a writer
killed with SIGKILL mid-ingest and restarted.

Every ledger lives in a fresh database beside the session's ``pg_database`` (``clearing init``
creates it), dropped at the end of the module. Skipped without a PostgreSQL server, except under
CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest

from tests.conftest import ORIGIN, TEN_LINES, _run_cli, clean_env, clearing_command
from tests.test_crash import INPUT_TYPES, _log as _sqlite_log

BIG_EVENTS = 10_000
BIG_ACCOUNTS = 200
BIG_SEED = 424242
RACE_LINES = 2_500


def _drop_database(server: str, name: str) -> None:
    import psycopg

    with psycopg.connect(f"{server}/postgres", autocommit=True, connect_timeout=5) as con:
        con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def pg_new(pg_database):
    """pg_new(suffix): the URL of a database that does not exist yet; all dropped at the end."""
    server, _, base = pg_database.rpartition("/")
    made: list[str] = []

    def url(suffix: str) -> str:
        name = f"{base}_conc_{suffix}"
        made.append(name)
        return f"{server}/{name}"

    yield url
    for name in made:
        _drop_database(server, name)


def _init_pg(url: str, cwd: Path) -> None:
    code, out, err = _run_cli("init", "--store", url, "--origin", ORIGIN, "--key-file", cwd / "k.key", cwd=cwd)
    assert code == 0, err


def _connect(url: str):
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=5)


def _pg_head(url: str) -> int:
    with _connect(url) as con:
        return con.execute("SELECT coalesce(max(seq), 0) FROM clearing_event_index").fetchone()[0]


def _pg_log(url: str) -> list[tuple[int, str, bytes]]:
    """(seq, type, canonical payload) of every event, from the library's table."""
    with _connect(url) as con:
        rows = con.execute(
            "SELECT originator_version, topic, state FROM clearing_events ORDER BY originator_version"
        ).fetchall()
    return [(seq, t, bytes(p)) for seq, t, p in rows]


def _assert_pg_log_well_formed(url: str, ids: list[str] | None = None) -> int:
    """seq contiguous from 1 in both tables, no duplicates, every input id recorded once."""
    with _connect(url) as con:
        index_seqs = [r[0] for r in con.execute("SELECT seq FROM clearing_event_index ORDER BY seq")]
        versions = [r[0] for r in con.execute("SELECT originator_version FROM clearing_events ORDER BY originator_version")]
        streams = con.execute("SELECT count(DISTINCT originator_id) FROM clearing_events").fetchone()[0]
        input_refs = [
            r[0]
            for r in con.execute(
                "SELECT ref FROM clearing_event_index WHERE type = ANY(%s) ORDER BY seq", (list(INPUT_TYPES),)
            )
        ]
        recorded = [r[0] for r in con.execute("SELECT id FROM clearing_input_ids")]
    head = len(index_seqs)
    assert index_seqs == list(range(1, head + 1)), "clearing_event_index seq has a gap or a duplicate"
    assert versions == index_seqs, "clearing_events versions differ from clearing_event_index"
    assert streams <= 1
    assert len(input_refs) == len(set(input_refs)), "an input is recorded twice"
    assert sorted(recorded) == sorted(input_refs)
    if ids is not None:
        assert sorted(input_refs) == sorted(ids), "an input id is missing or unexpected"
    return head


def _ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def big_file(tmp_path_factory) -> Path:
    from bench.workload import generate

    path = tmp_path_factory.mktemp("conc-input") / "big.jsonl"
    path.write_text("\n".join(generate(BIG_EVENTS, BIG_ACCOUNTS, seed=BIG_SEED)) + "\n")
    return path


@pytest.fixture(scope="module")
def sqlite_reference(tmp_path_factory, big_file) -> Path:
    """The big file ingested, uninterrupted, into an SQLite ledger."""
    ref = tmp_path_factory.mktemp("conc-reference")
    code, out, err = _run_cli("init", "--origin", ORIGIN, cwd=ref)
    assert code == 0, err
    code, out, err = _run_cli("ingest", "--json", big_file, cwd=ref, timeout=300)
    assert code == 0, err[-2000:]
    assert json.loads(out)["appended"] == BIG_EVENTS
    return ref


# --- two writers racing -------------------------------------------------------------------
def _race_file(path: Path, prefix: str, seed: int) -> None:
    """RACE_LINES inputs all at one ts (after TEN_LINES), so either file may go first."""
    rng = random.Random(seed)
    ts = "2026-03-02T00:00:00Z"
    accounts = [f"{prefix}-acct-{i}" for i in range(40)] + ["alice", "bob"]
    lines = []
    for i in range(RACE_LINES):
        r = rng.random()
        rid = f"{prefix}-{i}"
        if r < 0.5:
            rec = {"id": rid, "ts": ts, "type": "deposit", "account": rng.choice(accounts), "asset": "USD",
                   "amount": str(rng.randint(1, 5000))}
        elif r < 0.8:
            a, b = rng.sample(accounts, 2)
            rec = {"id": rid, "ts": ts, "type": "transfer", "from": a, "to": b, "asset": "USD",
                   "amount": str(rng.randint(1, 3000))}
        else:
            rec = {"id": rid, "ts": ts, "type": "withdrawal", "account": rng.choice(accounts), "asset": "USD",
                   "amount": str(rng.randint(1, 4000))}
        lines.append(json.dumps(rec, separators=(",", ":")))
    path.write_text("\n".join(lines) + "\n")


def test_two_writers_racing_both_finish_contiguous_and_audit_clean(tmp_path, pg_new):
    url = pg_new("race")
    _init_pg(url, tmp_path)
    code, out, err = _run_cli("ingest", "--store", url, TEN_LINES, cwd=tmp_path)
    assert code == 0, err
    files = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    _race_file(files[0], "A", 1)
    _race_file(files[1], "B", 2)

    def start(path: Path) -> subprocess.Popen:
        return subprocess.Popen([clearing_command(), "ingest", "--json", "--store", url, str(path)], cwd=tmp_path,
                                env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    procs = [start(f) for f in files]
    results = [p.communicate(timeout=120) for p in procs]
    outcomes = []
    for path, proc, (out, err) in zip(files, procs, results):
        if proc.returncode == 2 and b"error[store_locked]" in err:
            outcomes.append("refused")
            code, o, e = _run_cli("ingest", "--json", "--store", url, path, cwd=tmp_path)
            assert code == 0, e[-2000:]
            out = o.encode()
        else:
            assert proc.returncode == 0, err.decode()[-2000:]
            outcomes.append("ran")
        summary = json.loads(out)
        assert summary["appended"] == RACE_LINES and summary["duplicates"] == 0
    print(f"race outcomes: {outcomes}")

    ids = _ids(TEN_LINES) + _ids(files[0]) + _ids(files[1])
    head = _assert_pg_log_well_formed(url, ids)
    # each file's inputs are recorded in its own order, and one file entirely before the other
    # (the writer lock: one ingest at a time)
    with _connect(url) as con:
        refs = [r[0] for r in con.execute(
            "SELECT ref FROM clearing_event_index WHERE type = ANY(%s) ORDER BY seq", (list(INPUT_TYPES),))]
    refs = refs[len(_ids(TEN_LINES)):]
    assert refs in (_ids(files[0]) + _ids(files[1]), _ids(files[1]) + _ids(files[0]))
    code, out, err = _run_cli("audit", "--json", "--store", url, cwd=tmp_path)
    assert code == 0, out[-2000:] + err[-2000:]
    doc = json.loads(out)
    assert doc["ok"] is True and doc["events"] == head


# --- readers during an ingest ---------------------------------------------------------------
def _sums_zero(state: dict) -> None:
    balances: dict[str, Decimal] = {}
    positions: dict[str, Decimal] = {}
    for acct in state["accounts"].values():
        for asset, amount in acct["balances"].items():
            balances[asset] = balances.get(asset, Decimal(0)) + Decimal(amount)
        for inst, qty in acct["positions"].items():
            positions[inst] = positions.get(inst, Decimal(0)) + Decimal(qty)
    assert all(v == 0 for v in balances.values()), f"R12.1 broken at seq {state['seq']}: {balances}"
    assert all(v == 0 for v in positions.values()), f"R12.2 broken at seq {state['seq']}: {positions}"


def test_readers_during_ingest_see_consistent_cuts(tmp_path, pg_new, big_file):
    url = pg_new("readers")
    _init_pg(url, tmp_path)
    per_reader: list[list[dict]] = [[], []]
    errors: list[str] = []
    stop = threading.Event()

    def poll(seen: list[dict]) -> None:
        while not stop.is_set():
            code, out, err = _run_cli("state", "--json", "--store", url, cwd=tmp_path)
            if code != 0:
                errors.append(err)
            else:
                seen.append(json.loads(out))

    readers = [threading.Thread(target=poll, args=(seen,)) for seen in per_reader]
    # The file in five parts, one ingest of them all: each part is checked and appended in
    # turn (interfaces §3.1), so the log grows in steps while the readers poll.
    lines = big_file.read_text().splitlines(keepends=True)
    parts = []
    for k in range(5):
        part = tmp_path / f"part-{k}.jsonl"
        part.write_text("".join(lines[k * len(lines) // 5:(k + 1) * len(lines) // 5]))
        parts.append(str(part))
    writer = subprocess.Popen([clearing_command(), "ingest", "--json", "--store", url, *parts], cwd=tmp_path,
                              env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for t in readers:
        t.start()
    try:
        out, err = writer.communicate(timeout=180)
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert writer.returncode == 0, err.decode()[-2000:]
    assert errors == [], errors[:3]
    head = _assert_pg_log_well_formed(url, _ids(big_file))
    assert json.loads(out)["head_seq"] == head
    types = [t for _, t, _ in _pg_log(url)]
    observed = [s for seen in per_reader for s in seen]
    seqs = [s["seq"] for s in observed]
    # reads landed while the log was growing (how many depends on the machine's speed)
    assert len([s for s in seqs if 0 < s < head]) >= 1, seqs
    for seen in per_reader:
        reader_seqs = [s["seq"] for s in seen]
        assert reader_seqs == sorted(reader_seqs), f"a reader's seq went backwards: {reader_seqs}"
        assert all(0 <= s <= head for s in reader_seqs)
    for state in observed:
        seq = state["seq"]
        if seq < head:
            assert types[seq] in INPUT_TYPES, f"a reader saw half a group: the event after seq {seq} is a {types[seq]}"
        _sums_zero(state)
    # an observed state is exactly the state at its seq read again afterwards
    for state in observed[:: max(1, len(observed) // 4)]:
        code, again, err = _run_cli("state", "--json", "--store", url, "--seq", str(state["seq"]), cwd=tmp_path)
        assert code == 0, err
        assert json.loads(again) == state, f"the state observed at seq {state['seq']} changed afterwards"


# --- a writer killed mid-ingest -------------------------------------------------------------
def test_sigkill_mid_ingest_then_restart_matches_uninterrupted_sqlite(tmp_path, pg_new, big_file, sqlite_reference):
    url = pg_new("kill")
    _init_pg(url, tmp_path)
    ref_log = _sqlite_log(sqlite_reference / "clearing.db")
    final_head = len(ref_log)
    ref_types = [t for _, t, _ in ref_log]
    kills = []
    for fraction in (0.3, 0.65):
        target = int(final_head * fraction)
        before = _pg_head(url)
        proc = subprocess.Popen([clearing_command(), "ingest", "--store", url, str(big_file)], cwd=tmp_path,
                                env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while proc.poll() is None and _pg_head(url) < target and time.monotonic() < deadline:
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        rc = proc.wait()
        err = proc.stderr.read().decode()
        proc.stderr.close()
        if rc == 0:
            break  # finished before the kill landed (a very fast machine): the rerun below is a no-op
        assert rc == -signal.SIGKILL, err[-2000:]
        after = _pg_head(url)
        kills.append((target, before, after))
        assert after >= before
        # whole groups only, no gap, no duplicate, exactly the reference log so far
        assert _assert_pg_log_well_formed(url) == after
        if after < final_head:
            assert ref_types[after] in INPUT_TYPES, f"the kill split a group after seq {after}"
        assert _pg_log(url) == ref_log[:after]
    print(f"kills (target, head before, head after): {kills}")
    assert kills, "no kill landed mid-ingest"
    assert any(0 < after < final_head for _, _, after in kills)

    code, out, err = _run_cli("ingest", "--json", "--store", url, big_file, cwd=tmp_path, timeout=300)
    assert code == 0, err[-2000:]
    summary = json.loads(out)
    assert summary["head_seq"] == final_head
    assert summary["appended"] + summary["duplicates"] == BIG_EVENTS
    assert summary["duplicates"] == sum(1 for t in ref_types[: kills[-1][2]] if t in INPUT_TYPES)

    assert _assert_pg_log_well_formed(url, _ids(big_file)) == final_head
    assert _pg_log(url) == ref_log, "payloads lost, doubled or reordered"
    a = _run_cli("state", "--json", cwd=sqlite_reference)
    b = _run_cli("state", "--json", "--store", url, cwd=tmp_path)
    assert a[0] == b[0] == 0, (a[2], b[2])
    assert b[1].encode() == a[1].encode()
    code, out, err = _run_cli("audit", "--json", "--store", url, cwd=tmp_path, timeout=300)
    assert code == 0, out[-2000:] + err[-2000:]
    doc = json.loads(out)
    assert doc["ok"] is True and doc["findings"] == [] and doc["events"] == final_head
