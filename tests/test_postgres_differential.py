"""Differential: the same input files ingested into SQLite and into PostgreSQL give byte-identical
``state --json`` at several ``--seq``/``--at`` points, identical checkpoint roots and identical
audits (interfaces §2: "the same commands work on both, with identical results").

Two input files: a seeded random workload from ``bench/workload.py`` and the first ``DEMO_LINES``
lines of the input file that ``clearing demo`` writes. PostgreSQL ledgers live in fresh
databases beside the session's ``pg_database``, dropped at the end of the module. Skipped
without a PostgreSQL server, except under CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ORIGIN, _run_cli

WORKLOAD_EVENTS = 3_000
WORKLOAD_ACCOUNTS = 200
WORKLOAD_SEED = 20260301
DEMO_LINES = 10_000


def _drop_database(server: str, name: str) -> None:
    import psycopg

    with psycopg.connect(f"{server}/postgres", autocommit=True, connect_timeout=5) as con:
        con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def pg_server(pg_database):
    server, _, base = pg_database.rpartition("/")
    made: list[str] = []

    def url(suffix: str) -> str:
        name = f"{base}_diff_{suffix}"
        made.append(name)
        return f"{server}/{name}"

    yield url
    for name in made:
        _drop_database(server, name)


def _workload_file(directory: Path) -> Path:
    from bench.workload import generate

    path = directory / "workload.jsonl"
    path.write_text("\n".join(generate(WORKLOAD_EVENTS, WORKLOAD_ACCOUNTS, seed=WORKLOAD_SEED)) + "\n")
    return path


def _demo_file(directory: Path) -> Path:
    """The first DEMO_LINES lines of the demo's inputs.jsonl, without running the demo: the first
    part of ``Generator.day()`` needs no feedback from the engine (it is the demo's first
    ~35,000 lines; ``run_demo`` writes exactly those lines first)."""
    from clearing.demo import SEED, Generator

    lines = next(Generator(SEED).day())
    assert len(lines) >= DEMO_LINES
    path = directory / "demo_inputs.jsonl"
    path.write_text("\n".join(lines[:DEMO_LINES]) + "\n")
    return path


class Pair:
    """An SQLite ledger and a PostgreSQL ledger holding the same input file."""

    def __init__(self, root: Path, url: str, inputs: Path):
        self.sq = root / "sqlite"
        self.pg = root / "pg"
        self.sq.mkdir()
        self.pg.mkdir()
        self.url = url
        self.inputs = inputs
        code, out, err = _run_cli("init", "--origin", ORIGIN, cwd=self.sq)
        assert code == 0, err
        code, out, err = _run_cli("init", "--store", url, "--origin", ORIGIN, "--key-file", self.pg / "k.key", cwd=self.pg)
        assert code == 0, err
        self.ingest_out = []
        for cwd, args in ((self.sq, []), (self.pg, ["--store", url])):
            code, out, err = _run_cli("ingest", *args, "--json", inputs, cwd=cwd, timeout=300)
            assert code == 0, err[-2000:]
            self.ingest_out.append(out)
        self.head = json.loads(self.ingest_out[0])["head_seq"]

    def both(self, *args: str | Path) -> tuple[tuple[int, str, str], tuple[int, str, str]]:
        a = _run_cli(*args, cwd=self.sq, timeout=300)
        b = _run_cli(*args, "--store", self.url, cwd=self.pg, timeout=300)
        return a, b


@pytest.fixture(scope="module", params=["workload", "demo"])
def pair(request, tmp_path_factory, pg_server) -> Pair:
    root = tmp_path_factory.mktemp(f"diff-{request.param}")
    inputs = _workload_file(root) if request.param == "workload" else _demo_file(root)
    return Pair(root, pg_server(request.param), inputs)


def _timestamps(inputs: Path) -> list[str]:
    ts = [json.loads(line)["ts"] for line in inputs.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return ["2025-12-31T23:59:59Z", ts[len(ts) // 3], ts[-2], "2030-01-01T00:00:00Z"]


def test_ingest_summaries_identical(pair):
    a, b = pair.ingest_out
    assert b == a
    summary = json.loads(a)
    assert summary["appended"] > 1000 and summary["head_seq"] == pair.head
    assert summary["head_seq"] == summary["appended"] + summary["decisions"]


def test_state_json_byte_identical_at_seqs(pair):
    head = pair.head
    seqs = [None, 0, 17, head // 2, head - 1]
    for seq in seqs:
        args = [] if seq is None else ["--seq", str(seq)]
        a, b = pair.both("state", "--json", *args)
        assert a[0] == 0 and b[0] == 0, (seq, a[2], b[2])
        assert b[1].encode() == a[1].encode(), f"state --json differs at --seq {seq}"
        assert json.loads(a[1])["seq"] == (head if seq is None else seq)


def test_state_json_byte_identical_at_times(pair):
    for at in _timestamps(pair.inputs):
        a, b = pair.both("state", "--json", "--at", at)
        assert a[0] == 0 and b[0] == 0, (at, a[2], b[2])
        assert b[1].encode() == a[1].encode(), f"state --json differs at --at {at}"


def test_checkpoint_roots_identical(pair):
    code, out_sq, err = _run_cli("checkpoint", "--json", cwd=pair.sq)
    assert code == 0, err
    code, out_pg, err = _run_cli("checkpoint", "--json", "--store", pair.url, "--key-file", pair.pg / "k.key", cwd=pair.pg)
    assert code == 0, err
    a, b = json.loads(out_sq), json.loads(out_pg)
    assert a["size"] == b["size"] == pair.head
    assert b["root"] == a["root"]
    assert b["state_root"] == a["state_root"]


def test_audit_identical_and_ok(pair):
    a, b = pair.both("audit", "--json")
    assert a[0] == 0 and b[0] == 0, (a[1][-2000:], b[1][-2000:], a[2][-2000:], b[2][-2000:])
    assert b[1] == a[1]
    doc = json.loads(a[1])
    assert doc["ok"] is True and doc["findings"] == [] and doc["events"] == pair.head
