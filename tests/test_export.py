"""`clearing export --at T -o FILE.db` (interfaces §3): a standalone SQLite snapshot of the read
model at T, checked against `clearing state --at T --json` and against the live read model."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import state_json

TABLES = ["accounts", "balances", "positions", "marks", "events", "insurance_fund"]
T_TRANSFER = "2026-03-01T00:00:04Z"  # seq 8
T_HEAD = "2026-03-01T08:00:00Z"  # seq 11


def _export(run_cli, cwd: Path, out: Path, at: str) -> tuple[dict, str]:
    code, stdout, err = run_cli("export", "--at", at, "-o", out, "--json", cwd=cwd)
    assert code == 0, err
    return json.loads(stdout), err


def _rows(path: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("at,seq", [(T_TRANSFER, 8), ("2026-03-01T00:00:05Z", 9), (T_HEAD, 11)])
def test_export_tables_match_the_state_at_that_time(run_cli, shared_ten_ledger, tmp_path, at, seq):
    out = tmp_path / "snap.db"
    doc, err = _export(run_cli, shared_ten_ledger, out, at)
    _, state = state_json(shared_ten_ledger, "--at", at)
    assert (doc["seq"], doc["ts"]) == (seq, state["ts"]) and state["seq"] == seq
    assert doc["path"] == str(out)

    accounts = {
        a: {"equity": e, "initial_margin": im, "maintenance_margin": mm, "free_collateral": fc,
            "liquidatable": bool(liq)}
        for a, e, im, mm, fc, liq in _rows(out, "SELECT account, equity, initial_margin, "
                                                "maintenance_margin, free_collateral, liquidatable FROM accounts")
    }
    assert accounts == {
        a: {k: entry[k] for k in ("equity", "initial_margin", "maintenance_margin", "free_collateral",
                                  "liquidatable")}
        for a, entry in state["accounts"].items()
    }
    balances = _rows(out, "SELECT account, asset, amount FROM balances ORDER BY account, asset")
    assert balances == [(a, x, v) for a, e in sorted(state["accounts"].items())
                        for x, v in e["balances"].items()]
    positions = _rows(out, "SELECT account, instrument, qty FROM positions ORDER BY account, instrument")
    assert positions == [(a, i, q) for a, e in sorted(state["accounts"].items())
                         for i, q in e["positions"].items()]
    assert dict(_rows(out, "SELECT asset, price FROM marks")) == state["marks"]
    assert _rows(out, "SELECT max(seq), count(*) FROM events") == [(seq, seq)]
    assert _rows(out, "SELECT cash FROM insurance_fund ORDER BY seq DESC LIMIT 1") == [(state["insurance_fund"],)]

    counted = {t: _rows(out, f"SELECT count(*) FROM {t}")[0][0] for t in TABLES}
    assert doc["tables"] == counted
    assert list(doc) == ["path", "seq", "ts", "tables"] and list(doc["tables"]) == TABLES
    assert counted["accounts"] == 6 and counted["events"] == seq
    for name, n in counted.items():
        assert f"{name} {n}" in err  # what was written, on standard error


def test_export_at_the_head_is_identical_to_the_live_read_model(run_cli, ten_ledger):
    out = ten_ledger / "snap.db"
    doc, _ = _export(run_cli, ten_ledger, out, "2026-03-01T09:00:00Z")
    assert doc["seq"] == 11
    live = ten_ledger / "clearing.db.read.db"
    for table in TABLES + ["meta"]:
        sql = f"SELECT * FROM {table} ORDER BY 1, 2"
        assert _rows(out, sql) == _rows(live, sql), table
    schema = "SELECT type, name, sql FROM sqlite_master ORDER BY name"
    assert _rows(out, schema) == _rows(live, schema)


def test_export_is_one_whole_file_with_integrity_ok_and_no_wal(run_cli, shared_ten_ledger, tmp_path):
    out = tmp_path / "snap.db"
    _export(run_cli, shared_ten_ledger, out, T_HEAD)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap.db"]  # no -wal, -shm, temporary file
    assert _rows(out, "PRAGMA integrity_check") == [("ok",)]
    assert _rows(out, "PRAGMA journal_mode") == [("delete",)]
    conn = sqlite3.connect(out)  # a plain SQLite tool can write it too, then it is still not WAL
    conn.execute("CREATE TABLE notes (text TEXT)")
    conn.commit()
    conn.close()
    assert not (tmp_path / "snap.db-wal").exists()


def test_export_has_no_float_columns_or_values(run_cli, shared_ten_ledger, tmp_path):
    out = tmp_path / "snap.db"
    _export(run_cli, shared_ten_ledger, out, T_HEAD)
    assert {t for (t,) in _rows(out, "SELECT typeof(amount) FROM balances")} == {"text"}
    assert {t for (t,) in _rows(out, "SELECT typeof(qty) FROM positions")} == {"text"}
    assert {t for (t,) in _rows(out, "SELECT typeof(price) FROM marks")} == {"text"}
    assert {t for (t,) in _rows(out, "SELECT typeof(amount) FROM events WHERE amount IS NOT NULL")} == {"text"}
    for table in TABLES:
        columns = _rows(out, f"PRAGMA table_info({table})")
        assert all(ctype in ("TEXT", "INTEGER") for _, _, ctype, *_ in columns), (table, columns)
        for _, column, *_ in columns:
            assert _rows(out, f"SELECT count(*) FROM {table} WHERE typeof({column}) = 'real'") == [(0,)]


def test_export_refuses_to_overwrite_a_file(run_cli, shared_ten_ledger, tmp_path):
    out = tmp_path / "snap.db"
    out.write_bytes(b"precious")
    code, stdout, err = run_cli("export", "--at", T_HEAD, "-o", out, "--json", cwd=shared_ten_ledger)
    assert (code, stdout) == (2, "")
    assert err.startswith("error[file_exists]: ")
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap.db"]


def test_export_twice_to_the_same_name_fails_the_second_time(run_cli, shared_ten_ledger, tmp_path):
    out = tmp_path / "snap.db"
    _export(run_cli, shared_ten_ledger, out, T_TRANSFER)
    before = out.read_bytes()
    code, _, err = run_cli("export", "--at", T_HEAD, "-o", out, cwd=shared_ten_ledger)
    assert code == 2 and "error[file_exists]" in err
    assert out.read_bytes() == before


def test_export_before_the_first_event_is_empty_tables(run_cli, shared_ten_ledger, tmp_path):
    out = tmp_path / "empty.db"
    doc, _ = _export(run_cli, shared_ten_ledger, out, "2026-02-01T00:00:00Z")
    assert doc == {"path": str(out), "seq": 0, "ts": None, "tables": {t: 0 for t in TABLES}}
    assert _rows(out, "PRAGMA integrity_check") == [("ok",)]


def test_export_usage_errors_exit_2(run_cli, shared_ten_ledger, tmp_path):
    code, _, err = run_cli("export", "--at", "noon", "-o", tmp_path / "a.db", cwd=shared_ten_ledger)
    assert (code, err.startswith("error[bad_ts]")) == (2, True)
    code, _, err = run_cli("export", "--at", T_HEAD, "-o", tmp_path / "no" / "dir.db", cwd=shared_ten_ledger)
    assert (code, err.startswith("error[export_path]")) == (2, True)
    code, _, err = run_cli("export", "--at", T_HEAD, "-o", tmp_path / "b.db", cwd=tmp_path)
    assert (code, err.startswith("error[store_missing]")) == (2, True)
    assert run_cli("export", "-o", tmp_path / "c.db", cwd=shared_ten_ledger)[0] == 2  # --at is required
    assert sorted(p.name for p in tmp_path.iterdir()) == []
