"""``clearing export --at T -o FILE.db``: a standalone SQLite snapshot of the read model at T
(interfaces §3).

The snapshot is built by the read model's own catch-up (``projections.readmodel``) into a new
file, stopped at the last event of the last input with ts <= T (R3.7). So its tables are
exactly those of the live read model at that seq, with the same names and columns (accounts,
balances, positions, marks, events, insurance_fund, meta and the position's tracking table),
every amount TEXT holding an R1.1 decimal string, never REAL.

The file is written beside the target under a temporary name, switched from WAL to
``journal_mode=DELETE`` (one self-contained file, no ``-wal`` or ``-shm`` beside it, readable
by any SQLite tool, also read-only), checked with ``PRAGMA integrity_check``, and only then
linked to its name, which fails if that name exists: an export never overwrites a file, and a
failed export leaves nothing behind.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from typing import NamedTuple

import click

from events.store import LogStore, StoreError
from events.timestamps import format_ts
from projections import history
from projections.readmodel import ReadModel

from clearing import app
from clearing.cli import _emit_json, json_option, store_option

#: The read model's data tables, in the order they are reported.
TABLES = ("accounts", "balances", "positions", "marks", "events", "insurance_fund")


class Export(NamedTuple):
    path: str
    seq: int
    ts: str | None  # ts of event ``seq`` (None at seq 0)
    tables: dict[str, int]  # rows per table

    def as_json(self) -> dict:
        return {"path": self.path, "seq": self.seq, "ts": self.ts, "tables": self.tables}


def export_snapshot(store: LogStore, ts_us: int, path: str) -> Export:
    """Write the read model at time ``ts_us`` to a new SQLite file at ``path``."""
    if os.path.lexists(path):
        raise _exists(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OSError as exc:
        raise StoreError("export_path", f"cannot write {path}: {exc.strerror}") from exc
    os.close(fd)
    try:
        seq = history.seq_at_time(store, ts_us)
        model = ReadModel(tmp)
        try:
            reached = model.catch_up(store, upto=seq)
        finally:
            model.close()
        assert reached == seq, (reached, seq)
        tables = _seal(tmp)
        _chmod_default(tmp)
        _link(tmp, path)
    finally:
        for leftover in (tmp, tmp + "-journal", tmp + "-wal", tmp + "-shm"):
            if os.path.lexists(leftover):
                os.unlink(leftover)
    record = store.get(seq) if seq else None
    return Export(path, seq, format_ts(record.ts_us) if record is not None else None, tables)


def _seal(path: str) -> dict[str, int]:
    """WAL off, integrity checked; the rows per table."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        mode = conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
        assert mode == "delete", mode
        check = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        if check != ["ok"]:
            raise StoreError("export_corrupt", f"integrity_check of the snapshot: {'; '.join(check)}")
        return {name: conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0] for name in TABLES}
    finally:
        conn.close()


def _chmod_default(path: str) -> None:
    """mkstemp makes 0600; an export is an ordinary file for analysts (mode per the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _exists(path: str) -> StoreError:
    return StoreError("file_exists", f"{path} already exists; an export never overwrites a file")


def _link(tmp: str, path: str) -> None:
    """Give the finished file its name, atomically refusing an existing one."""
    try:
        os.link(tmp, path)
    except FileExistsError as exc:
        raise _exists(path) from exc
    except OSError:  # a file system without hard links: check, then rename
        if os.path.lexists(path):
            raise _exists(path)
        os.replace(tmp, path)


@click.command()
@store_option
@click.option("--at", "at", required=True,
              help="The read model after the last input with ts <= AT (RFC 3339, UTC).")
@click.option("-o", "output", required=True, type=click.Path(dir_okay=False),
              help="The new SQLite file (never overwritten).")
@json_option
def export(store: str | None, at: str, output: str, as_json: bool) -> None:
    """Write a standalone SQLite snapshot of the read model at a time."""
    ts_us = app.instant(at)
    ledger = app.open_ledger(app.store_url(store))
    try:
        result = export_snapshot(ledger, ts_us, output)
    finally:
        ledger.close()
    rows = ", ".join(f"{name} {n}" for name, n in result.tables.items())
    click.echo(
        f"wrote {output}: the read model at {format_ts(ts_us)} (seq {result.seq}); rows: {rows}",
        err=True,
    )
    if as_json:
        _emit_json(result.as_json())
