"""Shared fixtures for the end-to-end tests that drive the installed ``clearing`` command.

The command runs in a subprocess, as a user runs it: the console script installed beside the
test interpreter (``python -m clearing.cli`` is not how users start it). Its environment has
``CLEARING_STORE`` and ``CLEARING_KEY_FILE`` removed, so a developer's shell cannot leak a store
into a test; a test of those variables sets them itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

DATA = Path(__file__).parent / "data"
#: the ten example lines of interfaces §1
TEN_LINES = DATA / "ten_lines.jsonl"
ORIGIN = "test.example/clearing"


def clearing_command() -> str:
    return str(Path(sys.executable).parent / "clearing")


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CLEARING_STORE", None)
    env.pop("CLEARING_KEY_FILE", None)
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


RunCli = Callable[..., tuple[int, str, str]]


def _run_cli(
    *args: str | os.PathLike,
    cwd: str | os.PathLike,
    env: dict[str, str] | None = None,
    input: str | bytes | None = None,
    timeout: float = 120,
) -> tuple[int, str, str]:
    """Run ``clearing ARGS`` in ``cwd``; (returncode, stdout, stderr) as text."""
    data = input.encode() if isinstance(input, str) else input
    proc = subprocess.run(
        [clearing_command(), *map(str, args)],
        cwd=cwd,
        env=clean_env(env),
        input=data if data is not None else b"",
        capture_output=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


@pytest.fixture
def run_cli() -> RunCli:
    return _run_cli


@pytest.fixture
def ten_lines() -> Path:
    """The ten example input lines of interfaces §1 (a file under tests/data)."""
    return TEN_LINES


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    """A fresh directory holding an empty ledger (``clearing init`` done, default store)."""
    code, out, err = _run_cli("init", "--origin", ORIGIN, cwd=tmp_path)
    assert code == 0, err
    assert (tmp_path / "clearing.db").exists()
    return tmp_path


@pytest.fixture
def ten_ledger(ledger: Path, ten_lines: Path) -> Path:
    """A ledger holding the ten example lines (11 events)."""
    code, out, err = _run_cli("ingest", "--json", ten_lines, cwd=ledger)
    assert code == 0, err
    assert json.loads(out)["head_seq"] == 11
    return ledger


def state_json(cwd: Path, *args: str) -> tuple[bytes, dict]:
    """``clearing state --json ARGS``: the raw stdout bytes and the parsed document."""
    code, out, err = _run_cli("state", "--json", *args, cwd=cwd)
    assert code == 0, err
    return out.encode(), json.loads(out)


@pytest.fixture(scope="session")
def shared_ten_ledger(tmp_path_factory) -> Path:
    """A ledger holding the ten example lines, shared by tests that only read it."""
    path = tmp_path_factory.mktemp("ten-ledger")
    code, out, err = _run_cli("init", "--origin", ORIGIN, cwd=path)
    assert code == 0, err
    code, out, err = _run_cli("ingest", TEN_LINES, cwd=path)
    assert code == 0, err
    return path


# --- PostgreSQL ----------------------------------------------------------------------------

#: The PostgreSQL server for the tests (a URL without a database; trust auth or a password in
#: it). Override with CLEARING_TEST_POSTGRES.
PG_SERVER = os.environ.get("CLEARING_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


def _under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def pg_database():
    """A fresh PostgreSQL database for this test session; yields its URL (no ``?schema``).

    ``clearing_test_<random>`` is created through the server's ``postgres`` database and
    dropped (WITH FORCE) at the end of the session. Without a reachable server the tests that
    use it are skipped, except under CI (``CI=true``), where they fail.
    """
    import uuid

    import psycopg
    from psycopg import sql

    name = f"clearing_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        reason = f"PostgreSQL is not reachable at {PG_SERVER} ({detail or type(exc).__name__})"
        if _under_ci():
            pytest.fail(f"{reason}; CI=true requires the PostgreSQL tests to run", pytrace=False)
        pytest.skip(reason + "; set CLEARING_TEST_POSTGRES to a server URL to run these tests")
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True, connect_timeout=5) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
