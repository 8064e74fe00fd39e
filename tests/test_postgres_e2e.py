"""End to end on PostgreSQL: the installed ``clearing`` command with
``--store postgresql://user@host:port/dbname`` (interfaces §2) gives the same results as on SQLite.

The PostgreSQL ledger lives in a fresh database that ``clearing init`` itself creates (beside the
session's test database, dropped at the end). Skipped without a PostgreSQL server, except under
CI (``CI=true``), where it fails (see ``pg_database`` in conftest).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import ORIGIN, TEN_LINES, _run_cli, clean_env

ROOT = Path(__file__).resolve().parents[1]

SEQS = [None, 0, 1, 4, 5, 9, 10, 11]
ATS = [
    "2025-12-31T23:59:59Z",  # before the first event
    "2026-03-01T00:00:00Z",
    "2026-03-01T00:00:02Z",
    "2026-03-01T00:00:04.5Z",
    "2026-03-01T00:00:05Z",
    "2026-03-01T07:59:59.999999Z",
    "2026-03-01T08:00:00Z",
    "2030-01-01T00:00:00Z",
]


def _drop_database(server: str, name: str) -> None:
    import psycopg

    with psycopg.connect(f"{server}/postgres", autocommit=True, connect_timeout=5) as con:
        con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def pg_url(pg_database):
    """The URL of a database that does not exist yet (``clearing init`` creates it)."""
    server, _, base = pg_database.rpartition("/")
    name = f"{base}_e2e"
    yield f"{server}/{name}"
    _drop_database(server, name)


@pytest.fixture(scope="module")
def ledgers(tmp_path_factory, pg_url):
    """The ten lines ingested into an SQLite ledger and a PostgreSQL ledger.

    Returns (sqlite_dir, pg_dir, pg_url, ingest outputs); the PostgreSQL key file is pg_dir/k.key.
    """
    sq = tmp_path_factory.mktemp("sqlite-ledger")
    pg = tmp_path_factory.mktemp("pg-ledger")
    code, out, err = _run_cli("init", "--origin", ORIGIN, cwd=sq)
    assert code == 0, err
    code, out, err = _run_cli("init", "--store", pg_url, "--origin", ORIGIN, "--key-file", pg / "k.key", cwd=pg)
    assert code == 0, err
    assert out.strip().startswith(ORIGIN + "+")
    (pg / "verifier").write_text(out)
    assert (pg / "k.key").stat().st_mode & 0o777 == 0o600
    outs = []
    for cwd, store in ((sq, []), (pg, ["--store", pg_url])):
        code, out, err = _run_cli("ingest", *store, "--json", TEN_LINES, cwd=cwd)
        assert code == 0, err
        outs.append(out)
    return sq, pg, pg_url, outs


def _pg(pg_url: str, *args) -> list:
    return ["--store", pg_url, *args]


def test_ingest_reports_the_same(ledgers):
    sq, pg, url, (sq_out, pg_out) = ledgers
    assert pg_out == sq_out
    assert json.loads(pg_out) == {"appended": 10, "duplicates": 0, "rejected": 0, "decisions": 1, "head_seq": 11}


@pytest.mark.parametrize("seq", SEQS)
def test_state_json_byte_identical_at_seq(ledgers, seq):
    sq, pg, url, _ = ledgers
    args = [] if seq is None else ["--seq", str(seq)]
    a = _run_cli("state", "--json", *args, cwd=sq)
    b = _run_cli("state", "--json", *_pg(url, *args), cwd=pg)
    assert a[0] == 0 and b[0] == 0, (a[2], b[2])
    assert b[1].encode() == a[1].encode()
    if seq is not None:
        assert json.loads(b[1])["seq"] == seq


@pytest.mark.parametrize("at", ATS)
def test_state_json_byte_identical_at_time(ledgers, at):
    sq, pg, url, _ = ledgers
    a = _run_cli("state", "--json", "--at", at, cwd=sq)
    b = _run_cli("state", "--json", *_pg(url, "--at", at), cwd=pg)
    assert a[0] == 0 and b[0] == 0, (a[2], b[2])
    assert b[1].encode() == a[1].encode()


def test_state_of_one_account_and_text_form_identical(ledgers):
    sq, pg, url, _ = ledgers
    for args in (["--json", "--account", "alice", "--seq", "9"], ["--account", "bob"], []):
        a = _run_cli("state", *args, cwd=sq)
        b = _run_cli("state", *_pg(url, *args), cwd=pg)
        assert a[0] == b[0] == 0
        assert b[1] == a[1]


def test_out_of_range_seq_fails_the_same(ledgers):
    sq, pg, url, _ = ledgers
    a = _run_cli("state", "--json", "--seq", "12", cwd=sq)
    b = _run_cli("state", "--json", *_pg(url, "--seq", "12"), cwd=pg)
    assert a[0] == b[0] == 2 and a[1] == b[1] == ""
    assert "seq_out_of_range" in a[2] and "seq_out_of_range" in b[2]


def test_checkpoint_roots_identical(ledgers):
    sq, pg, url, _ = ledgers
    code, out_sq, err = _run_cli("checkpoint", "--json", cwd=sq)
    assert code == 0, err
    code, out_pg, err = _run_cli("checkpoint", "--json", *_pg(url, "--key-file", pg / "k.key"), cwd=pg)
    assert code == 0, err
    a, b = json.loads(out_sq), json.loads(out_pg)
    assert (b["size"], b["root"], b["state_root"]) == (a["size"], a["root"], a["state_root"]) == (11, a["root"], a["state_root"])
    # The signed body is the same; only the signature (another key) differs.
    assert b["note"].split("\n\n")[0] == a["note"].split("\n\n")[0]
    assert b["note"] != a["note"]


def test_checkpoint_needs_the_key_file(ledgers):
    sq, pg, url, _ = ledgers
    code, out, err = _run_cli("checkpoint", "--json", *_pg(url), cwd=pg)
    assert code == 2 and out == ""
    assert "key_file_required" in err


def test_reingest_is_idempotent_and_checkpoint_on_ingest(ledgers):
    sq, pg, url, _ = ledgers
    code, out, err = _run_cli("ingest", "--json", *_pg(url, "--checkpoint", "--key-file", pg / "k.key"), TEN_LINES, cwd=pg)
    assert code == 0, err
    assert json.loads(out) == {"appended": 0, "duplicates": 10, "rejected": 0, "decisions": 0, "head_seq": 11}
    assert "\n11\n" in err  # the signed note of size 11 goes to stderr


def test_prove_and_verify_on_postgres(ledgers):
    sq, pg, url, _ = ledgers
    proof = pg / "alice.json"
    code, out, err = _run_cli("prove", *_pg(url, "--key-file", pg / "k.key"), "--account", "alice",
                              "--seq", "9", "-o", proof, cwd=pg)
    assert code == 0, err
    verifier = (pg / "verifier").read_text().strip()
    code, out, err = _run_cli("verify", proof, "--key", verifier, "--json", cwd=pg)
    assert code == 0, out + err
    assert json.loads(out)["valid"] is True


def test_init_requires_a_key_file_and_refuses_a_second_init(ledgers, tmp_path):
    sq, pg, url, _ = ledgers
    code, out, err = _run_cli("init", "--store", url, "--origin", ORIGIN, cwd=tmp_path)
    assert code == 2 and "key_file_required" in err
    code, out, err = _run_cli("init", "--store", url, "--origin", ORIGIN, "--key-file", tmp_path / "x.key",
                              cwd=tmp_path)
    assert code == 2 and "store_exists" in err
    assert not (tmp_path / "x.key").exists()


def test_missing_ledger_and_unreachable_server(ledgers, tmp_path):
    sq, pg, url, _ = ledgers
    code, out, err = _run_cli("state", "--json", "--store", url + "?schema=nothing_here", cwd=tmp_path)
    assert code == 2 and out == "" and "error[store_missing]" in err
    code, out, err = _run_cli("state", "--json", "--store", "postgresql://postgres@127.0.0.1:1/x", cwd=tmp_path)
    assert code == 2 and out == "" and "error[store_unavailable]" in err
    assert "Traceback" not in err


def test_store_from_environment(ledgers):
    sq, pg, url, _ = ledgers
    a = _run_cli("state", "--json", "--seq", "7", cwd=sq)
    b = _run_cli("state", "--json", "--seq", "7", cwd=pg, env={"CLEARING_STORE": url})
    assert a[0] == b[0] == 0 and a[1] == b[1]


_HOLDER = """
    import sys, time
    from events.store import open_store
    s = open_store(sys.argv[1])
    with s.writer_lock(timeout=5):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
    print("released", flush=True)
    """


def _hold_writer_lock(url: str, seconds: float) -> subprocess.Popen:  # float-ok: seconds
    env = dict(clean_env(), PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_HOLDER), url, str(seconds)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT))
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_ingest_waits_for_the_writer(ledgers):
    sq, pg, url, _ = ledgers
    holder = _hold_writer_lock(url, 1.5)  # float-ok: seconds
    try:
        t = time.monotonic()
        code, out, err = _run_cli("ingest", "--json", *_pg(url), TEN_LINES, cwd=pg)
        waited = time.monotonic() - t
        assert code == 0, err
        assert json.loads(out)["duplicates"] == 10
        assert waited >= 0.5  # float-ok: seconds; it waited for the holder instead of writing beside it
    finally:
        holder.kill()
        holder.wait()


def test_second_ingest_is_refused_with_a_clear_message(ledgers):
    sq, pg, url, _ = ledgers
    holder = _hold_writer_lock(url, 60)
    try:
        code, out, err = _run_cli("ingest", "--json", *_pg(url), TEN_LINES, cwd=pg, timeout=60)
        assert code == 2 and out == ""
        assert "error[store_locked]" in err and f"clearing writer pid {holder.pid}" in err
        assert "gave up after 10 s" in err
    finally:
        holder.kill()
        holder.wait()
    code, out, err = _run_cli("state", "--json", *_pg(url), cwd=pg)
    assert code == 0 and json.loads(out)["seq"] == 11  # nothing was written


def test_read_model_of_a_postgres_ledger_is_a_local_sqlite_file_when_named(ledgers, tmp_path):
    """README: a PostgreSQL ledger keeps its read model in a local SQLite file named by
    CLEARING_READ_MODEL; its tables equal those beside the SQLite ledger."""
    import sqlite3

    sq, pg, pg_url, _ = ledgers
    path = tmp_path / "pg.read.db"
    code, out, err = _run_cli("ingest", *_pg(pg_url, "--json"), TEN_LINES, cwd=pg,
                              env={"CLEARING_READ_MODEL": str(path)})
    assert code == 0, err
    assert json.loads(out)["duplicates"] == 10
    query = "select account, equity, initial_margin, maintenance_margin from accounts order by account"
    with sqlite3.connect(path) as a, sqlite3.connect(sq / "clearing.db.read.db") as b:
        assert a.execute(query).fetchall() == b.execute(query).fetchall()
        assert a.execute("select count(*) from events").fetchone()[0] == 11
