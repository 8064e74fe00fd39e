"""SQLite implementation of the log store, on the ``eventsourcing`` library.

Storage
-------
* The log lives in the library's ``stored_events`` table (created by
  ``SQLiteApplicationRecorder``): originator_id = ``LOG_ID.hex``,
  originator_version = seq, topic = event type, state = canonical payload bytes.
  Because every append goes through one ``executemany`` in seq order, the
  table's rowid (the library's notification id) equals seq as well, so the
  library's ``select_notifications`` also works on this file.
* Side tables, written in the SAME library transaction as the events
  (``LedgerRecorder._insert_events``): ``event_index`` (seq, ts_us, type, ref,
  leaf), ``input_ids`` (id, seq, digest), ``merkle_nodes`` (level, idx, hash:
  the complete Merkle subtrees of level >= 1 that the append completes; level 0
  is ``event_index.leaf``); plus ``snapshots`` (derived data, own transaction),
  ``checkpoints`` (id, size, note: signed notes, own transaction) and ``meta``;
  ``state_nodes`` (size, level, idx, hash, account, leaf: the state trees of signed
  sizes, derived data in their own transaction), made by the first ``put_state_tree``
  (files made before it lack the table; readers then find no tree).
* The file is marked as a ledger by ``PRAGMA application_id`` (set in the
  ``create`` transaction), which is what ``exists()`` checks.
* Connections, WAL mode and transactions are the library's
  (``SQLiteDatastore`` / ``SQLiteConnectionPool`` / ``SQLiteTransaction``);
  ``synchronous`` stays at SQLite's default (FULL). Connections are opened with
  ``mode=rw`` so that nothing but ``create`` ever creates the file.
* ``append`` requires ts_us to be non-decreasing along seq (so "state at time T"
  is a prefix of the log); ``seq_at_time`` relies on it to answer from the
  ts_us index in O(log n).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from collections.abc import Sequence as SequenceABC
from contextlib import contextmanager
from operator import itemgetter
from typing import Any, Iterator, Sequence
from urllib.parse import quote
from uuid import UUID

from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    OperationalError,
    StoredEvent,
)
from eventsourcing.sqlite import (
    SQLiteApplicationRecorder,
    SQLiteCursor,
    SQLiteDatastore,
)

from events.store import LOG_ID, LogRecord, LogStore, StoreError

__all__ = ["LedgerRecorder", "LogEventBatch", "SQLiteLogStore", "APPLICATION_ID", "SCHEMA_VERSION"]

#: ``PRAGMA application_id`` of a ledger file ("CLRG").
APPLICATION_ID = 0x434C5247
#: ``PRAGMA user_version`` written by ``create`` (2: merkle_nodes, checkpoints).
SCHEMA_VERSION = 2

LOG_ID_HEX = LOG_ID.hex

# Largest IN (...) list per query in find_inputs (SQLite's variable limit is 32766
# on 3.32+, 999 before; stay well below both).
_IN_CHUNK = 500
# (level, idx) pairs per get_nodes query (two variables each).
_NODE_CHUNK = 200

#: The state trees of signed sizes (``put_state_tree``): derived data, like ``snapshots``. Leaf
#: rows (level 0) carry the account and the leaf's bytes; the rows above them only a hash.
_STATE_TREE_TABLE = (
    "CREATE TABLE IF NOT EXISTS state_nodes ("
    "size INTEGER NOT NULL, "
    "level INTEGER NOT NULL, "
    "idx INTEGER NOT NULL, "
    "hash BLOB NOT NULL, "
    "account TEXT, "
    "leaf BLOB, "
    "PRIMARY KEY (size, level, idx))",
    "CREATE UNIQUE INDEX IF NOT EXISTS state_nodes_account ON state_nodes (size, account) "
    "WHERE account IS NOT NULL",
)

_index_row = itemgetter(0, 1, 2, 3, 5)  # LogRecord -> (seq, ts_us, type, ref, leaf)
_get_seq = itemgetter(0)
_get_ts = itemgetter(1)
_event_row = itemgetter(0, 2, 4)  # LogRecord -> (seq, type, payload)


class LogEventBatch(SequenceABC):
    """The records of one append, as a ``Sequence[StoredEvent]`` of the log stream.

    Passed to the library's ``insert_events``. ``StoredEvent`` objects (a frozen
    dataclass, ~1.3 us each to build) are only materialised if something indexes
    or iterates this sequence; ``LedgerRecorder`` instead binds the rows
    (seq, type, payload) straight from the records, all in C.
    """

    __slots__ = ("records",)

    def __init__(self, records: Sequence[LogRecord]):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return LogEventBatch(self.records[i])
        r = self.records[i]
        return StoredEvent(originator_id=LOG_ID, originator_version=r[0], topic=r[2], state=r[4])

    def rows(self) -> Iterator[tuple]:
        """(originator_version, topic, state) per event."""
        return map(_event_row, self.records)


class LedgerRecorder(SQLiteApplicationRecorder):
    """The library's application recorder plus the ledger's side tables.

    ``insert_events(stored_events, index_rows=..., input_rows=..., expect_head=...)``
    runs in ONE library transaction:

    1. the stored events, with one ``executemany`` (the base class runs one
       ``execute`` per row to collect ``lastrowid``; we return None instead).
       Any ``Sequence[StoredEvent]`` works; a ``LogEventBatch`` is bound
       without building StoredEvent objects;
    2. a head check: the log must have ended at ``expect_head[0]`` with a
       timestamp <= ``expect_head[1]`` (done after 1, so the write lock is held
       and the check cannot race another writer);
    3. the side rows (``_insert_side_rows``);
    4. the Merkle nodes (``_insert_nodes``).

    Any failure rolls back all of it.
    """

    def __init__(self, datastore: SQLiteDatastore, events_table_name: str = "stored_events"):
        super().__init__(datastore, events_table_name)
        t = self.events_table_name
        self.select_head_statement = (
            "SELECT seq, ts_us FROM event_index ORDER BY seq DESC LIMIT 1"
        )
        self.insert_log_events_statement = (
            f"INSERT INTO {t} (originator_id, originator_version, topic, state) "
            f"VALUES ('{LOG_ID_HEX}', ?, ?, ?)"
        )
        self.insert_index_statement = "INSERT INTO event_index VALUES (?,?,?,?,?)"
        self.insert_input_statement = "INSERT INTO input_ids VALUES (?,?,?)"
        self.insert_node_statement = "INSERT INTO merkle_nodes VALUES (?,?,?)"
        # Driven by the library's (originator_id, originator_version) index, in
        # seq order (CROSS JOIN fixes the join order: no temp b-tree for ORDER BY).
        select_records = (
            "SELECT s.originator_version, e.ts_us, e.type, e.ref, s.state, e.leaf, i.digest "
            f"FROM {t} s "
            "CROSS JOIN event_index e ON e.seq = s.originator_version "
            "LEFT JOIN input_ids i ON i.id = e.ref AND i.seq = e.seq "
            f"WHERE s.originator_id = '{LOG_ID_HEX}' "
        )
        self.select_records_statement = (
            select_records
            + "AND s.originator_version > ? AND s.originator_version <= ? "
            "ORDER BY s.originator_version LIMIT ?"
        )
        self.select_record_statement = select_records + "AND s.originator_version = ?"
        self.select_payloads_statement = (
            f"SELECT originator_version, topic, state FROM {t} "
            f"WHERE originator_id = '{LOG_ID_HEX}' "
            "AND originator_version > ? AND originator_version <= ? "
            "ORDER BY originator_version LIMIT ?"
        )

    def construct_create_table_statements(self) -> list[str]:
        return super().construct_create_table_statements() + [
            "CREATE TABLE IF NOT EXISTS event_index ("
            "seq INTEGER PRIMARY KEY, "
            "ts_us INTEGER NOT NULL, "
            "type TEXT NOT NULL, "
            "ref TEXT NOT NULL, "
            "leaf BLOB NOT NULL)",
            "CREATE INDEX IF NOT EXISTS event_index_ts ON event_index (ts_us)",
            "CREATE TABLE IF NOT EXISTS input_ids ("
            "id TEXT PRIMARY KEY, "
            "seq INTEGER NOT NULL, "
            "digest BLOB NOT NULL) WITHOUT ROWID",
            "CREATE TABLE IF NOT EXISTS snapshots ("
            "seq INTEGER PRIMARY KEY, "
            "state BLOB NOT NULL)",
            "CREATE TABLE IF NOT EXISTS meta ("
            "key TEXT PRIMARY KEY, "
            "value TEXT NOT NULL) WITHOUT ROWID",
            "CREATE TABLE IF NOT EXISTS merkle_nodes ("
            "level INTEGER NOT NULL, "
            "idx INTEGER NOT NULL, "
            "hash BLOB NOT NULL, "
            "PRIMARY KEY (level, idx)) WITHOUT ROWID",
            "CREATE TABLE IF NOT EXISTS checkpoints ("
            "id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "size INTEGER NOT NULL, "
            "note TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS checkpoints_size ON checkpoints (size, id)",
        ]

    def _insert_events(
        self,
        c: SQLiteCursor,
        stored_events: Sequence[StoredEvent],
        *,
        index_rows: Sequence[tuple] = (),
        input_rows: Sequence[tuple] = (),
        node_rows: Sequence[tuple] = (),
        expect_head: tuple[int, int] | None = None,
        **kwargs: Any,
    ) -> Sequence[int] | None:
        # (1) One executemany for all stored events.
        params: list[tuple] | None = None
        if type(stored_events) is LogEventBatch:
            c.executemany(self.insert_log_events_statement, stored_events.rows())
        elif stored_events:
            oid = stored_events[0].originator_id
            if all(s.originator_id is oid for s in stored_events):  # the log: one stream
                h = oid.hex if isinstance(oid, UUID) else oid
                params = [(h, s.originator_version, s.topic, s.state) for s in stored_events]
            else:
                params = [
                    (
                        s.originator_id.hex if isinstance(s.originator_id, UUID) else s.originator_id,
                        s.originator_version,
                        s.topic,
                        s.state,
                    )
                    for s in stored_events
                ]
        if params is not None:
            c.executemany(self.insert_events_statement, params)
        # (2) Head check, now that we hold the write lock.
        if expect_head is not None:
            c.execute(self.select_head_statement)
            row = c.fetchone()
            head_seq, head_ts = (row[0], row[1]) if row is not None else (0, 0)
            want_seq, first_ts = expect_head
            if head_seq != want_seq:
                raise StoreError(
                    "append_conflict",
                    f"append starts at seq {want_seq + 1} but the log head is {head_seq}",
                )
            if first_ts < head_ts:
                raise StoreError(
                    "append_invalid",
                    f"ts_us {first_ts} of seq {want_seq + 1} is before the head's ts_us {head_ts}",
                )
        # (3) Side rows and (4) Merkle nodes in the same transaction.
        self._insert_side_rows(c, index_rows, input_rows)
        self._insert_nodes(c, node_rows)
        return None

    def _insert_side_rows(
        self, c: SQLiteCursor, index_rows: Sequence[tuple], input_rows: Sequence[tuple]
    ) -> None:
        if index_rows:
            c.executemany(self.insert_index_statement, index_rows)
        if input_rows:
            c.executemany(self.insert_input_statement, input_rows)

    def _insert_nodes(self, c: SQLiteCursor, node_rows: Sequence[tuple]) -> None:
        if node_rows:
            c.executemany(self.insert_node_statement, node_rows)


class _Tx:
    """A library read/write transaction yielding a raw sqlite3 cursor with tuple rows."""

    def __init__(self, datastore: SQLiteDatastore, commit: bool):
        self._cm = datastore.transaction(commit=commit)

    def __enter__(self) -> sqlite3.Cursor:
        c = self._cm.__enter__()
        cur = c.sqlite_cursor
        cur.row_factory = None  # plain tuples (the pool's connections use sqlite3.Row)
        return cur

    def __exit__(self, *exc: Any) -> Any:
        return self._cm.__exit__(*exc)


class SQLiteLogStore(LogStore):
    """The log store in one SQLite file (see module docstring)."""

    def __init__(self, path: str, *, lock_timeout: int | None = None):
        if not path or ":memory:" in path or "mode=memory" in path:
            raise ValueError("the SQLite log store needs a file path")
        self.url = path
        self.path = os.path.abspath(path)
        self.lock_path = self.path + ".lock"
        self._uri = "file:" + quote(self.path) + "?mode=rw"
        self._lock_timeout = lock_timeout
        self._datastore: SQLiteDatastore | None = None
        self._recorder: LedgerRecorder | None = None
        self._verified = False

    # ------------------------------------------------------------------ plumbing

    @property
    def recorder(self) -> LedgerRecorder:
        """The library recorder (its ``datastore`` gives library transactions)."""
        self._require()
        return self._get_recorder()

    def _get_recorder(self) -> LedgerRecorder:
        if self._recorder is None:
            self._datastore = SQLiteDatastore(self._uri, lock_timeout=self._lock_timeout)
            self._recorder = LedgerRecorder(self._datastore)
        return self._recorder

    def _tx(self, commit: bool = False) -> _Tx:
        return _Tx(self._get_recorder().datastore, commit)

    def _probe(self) -> str:
        """'ledger', 'missing' (no file, or an empty SQLite db) or 'invalid'.

        Uses its own read-only connection so that probing never changes a file
        (the library's pool would switch a foreign file to WAL).
        """
        if not os.path.exists(self.path):
            return "missing"
        try:
            conn = sqlite3.connect("file:" + quote(self.path) + "?mode=ro", uri=True)
        except sqlite3.Error:
            return "missing" if not os.path.exists(self.path) else "invalid"
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            if app_id == APPLICATION_ID:
                return "ledger"
            if app_id == 0 and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
                return "missing"
            return "invalid"
        except sqlite3.DatabaseError:
            return "invalid"
        finally:
            conn.close()

    def _require(self) -> None:
        if self._verified:
            return
        state = self._probe()
        if state == "missing":
            raise StoreError("store_missing", f"no ledger at {self.url}")
        if state == "invalid":
            raise StoreError("store_invalid", f"{self.url} is not a ledger store")
        self._verified = True

    # ------------------------------------------------------------------ lifecycle

    def exists(self) -> bool:
        return self._verified or self._probe() == "ledger"

    def create(self, meta: dict[str, str]) -> None:
        # Creators take the writer lock: concurrent `init`s then meet one at a time (without
        # it, two connections switching a new file to WAL can fail with "database is locked").
        with self._flock(timeout=30.0):
            self._create(meta)

    def _create(self, meta: dict[str, str]) -> None:
        state = self._probe()
        if state == "ledger":
            raise StoreError("store_exists", f"a ledger already exists at {self.url}")
        if state == "invalid":
            raise StoreError("store_invalid", f"{self.url} exists and is not a ledger store")
        made_file = False
        if not os.path.exists(self.path):
            try:
                with open(self.path, "xb"):
                    made_file = True  # an empty file is an empty SQLite database
            except FileExistsError:
                pass
        rec = self._get_recorder()
        items = [(str(k), str(v)) for k, v in meta.items()]
        try:
            with self._tx(commit=True) as cur:
                # Creating the tables first takes the write lock (or, if another
                # creator got there first, makes the check below see its ledger).
                for statement in rec.create_table_statements:
                    cur.execute(statement)
                if cur.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID:
                    raise StoreError("store_exists", f"a ledger already exists at {self.url}")
                cur.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                cur.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                cur.executemany("INSERT INTO meta VALUES (?, ?)", items)
        except StoreError:
            raise
        except (OperationalError, IntegrityError, InterfaceError) as e:
            # Lost a race with a concurrent creator?
            if self._probe() == "ledger":
                raise StoreError("store_exists", f"a ledger already exists at {self.url}") from e
            self._cleanup_failed_create(made_file)
            raise
        except BaseException:
            self._cleanup_failed_create(made_file)
            raise
        self._verified = True

    def _cleanup_failed_create(self, made_file: bool) -> None:
        if made_file and self._probe() == "missing":
            self.close()
            for suffix in ("", "-wal", "-shm"):
                try:
                    os.remove(self.path + suffix)
                except FileNotFoundError:
                    pass

    def close(self) -> None:
        ds, self._datastore, self._recorder = self._datastore, None, None
        if ds is not None:
            ds.close()

    # ------------------------------------------------------------------ reads

    def meta(self) -> dict[str, str]:
        self._require()
        with self._tx() as cur:
            return dict(cur.execute("SELECT key, value FROM meta").fetchall())

    def head(self) -> tuple[int, int]:
        self._require()
        with self._tx() as cur:
            row = cur.execute(self._get_recorder().select_head_statement).fetchone()
        return (row[0], row[1]) if row is not None else (0, 0)

    def read(
        self, after_seq: int = 0, upto_seq: int | None = None, batch: int = 10000
    ) -> Iterator[list[LogRecord]]:
        self._require()
        sql = self._get_recorder().select_records_statement
        return self._pages(sql, after_seq, upto_seq, batch, LogRecord._make)

    def read_payloads(
        self, after_seq: int = 0, upto_seq: int | None = None, batch: int = 10000
    ) -> Iterator[list[tuple[int, str, bytes]]]:
        self._require()
        sql = self._get_recorder().select_payloads_statement
        return self._pages(sql, after_seq, upto_seq, batch, None)

    def _iter_pages(self, sql, after, upto, batch, make) -> Iterator[list]:
        while after < upto:
            with self._tx() as cur:
                rows = cur.execute(sql, (after, upto, batch)).fetchall()
            if not rows:
                return
            yield rows if make is None else list(map(make, rows))
            if len(rows) < batch:
                return
            after = rows[-1][0]

    def get(self, seq: int) -> LogRecord | None:
        self._require()
        sql = self._get_recorder().select_record_statement
        with self._tx() as cur:
            row = cur.execute(sql, (seq,)).fetchone()
        return None if row is None else LogRecord._make(row)

    def seq_at_time(self, ts_us: int) -> int:
        # ts_us is non-decreasing along seq (append enforces it), so the last
        # entry of the ts index at or before ts_us has the max such seq.
        self._require()
        with self._tx() as cur:
            row = cur.execute(
                "SELECT seq FROM event_index WHERE ts_us <= ? "
                "ORDER BY ts_us DESC, seq DESC LIMIT 1",
                (ts_us,),
            ).fetchone()
        return 0 if row is None else row[0]

    def find_inputs(self, ids: Sequence[str]) -> dict[str, tuple[int, bytes]]:
        self._require()
        unique = list(dict.fromkeys(ids))
        found: dict[str, tuple[int, bytes]] = {}
        if not unique:
            return found
        with self._tx() as cur:  # one snapshot for all chunks
            for i in range(0, len(unique), _IN_CHUNK):
                chunk = unique[i : i + _IN_CHUNK]
                cur.execute(
                    "SELECT id, seq, digest FROM input_ids WHERE id IN "
                    f"({','.join('?' * len(chunk))})",
                    chunk,
                )
                for id_, seq, digest in cur.fetchall():
                    found[id_] = (seq, digest)
        return found

    def latest_snapshot(self, at_or_before: int) -> tuple[int, bytes] | None:
        self._require()
        with self._tx() as cur:
            row = cur.execute(
                "SELECT seq, state FROM snapshots WHERE seq <= ? ORDER BY seq DESC LIMIT 1",
                (at_or_before,),
            ).fetchone()
        return None if row is None else (row[0], row[1])

    def get_nodes(self, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        self._require()
        unique = list(dict.fromkeys((int(level), int(idx)) for level, idx in keys))
        found: dict[tuple[int, int], bytes] = {}
        if not unique:
            return found
        leaves = [idx + 1 for level, idx in unique if level == 0]
        inner = [k for k in unique if k[0] > 0]
        with self._tx() as cur:  # one snapshot for all of them
            for i in range(0, len(leaves), _IN_CHUNK):
                chunk = leaves[i : i + _IN_CHUNK]
                cur.execute(
                    f"SELECT seq, leaf FROM event_index WHERE seq IN ({','.join('?' * len(chunk))})",
                    chunk,
                )
                for seq, leaf in cur.fetchall():
                    found[(0, seq - 1)] = leaf
            for i in range(0, len(inner), _NODE_CHUNK):
                chunk = inner[i : i + _NODE_CHUNK]
                # An OR of primary-key equalities: SQLite answers each from the index
                # (a row-value IN list would scan the table).
                where = " OR ".join(["(level = ? AND idx = ?)"] * len(chunk))
                cur.execute(
                    f"SELECT level, idx, hash FROM merkle_nodes WHERE {where}",
                    [v for k in chunk for v in k],
                )
                for level, idx, h in cur.fetchall():
                    found[(level, idx)] = h
        return found

    def checkpoints(self) -> list[tuple[int, str]]:
        self._require()
        with self._tx() as cur:
            return [
                (size, note)
                for size, note in cur.execute(
                    "SELECT size, note FROM checkpoints ORDER BY size, id"
                ).fetchall()
            ]

    # ------------------------------------------------------------------ writes

    def append(
        self, records: Sequence[LogRecord], nodes: Sequence[tuple[int, int, bytes]] = ()
    ) -> None:
        self._require()
        n = len(records)
        if n == 0:
            if len(nodes):
                raise StoreError("append_invalid", "Merkle nodes without records to append")
            return
        first = records[0][0]
        seqs = list(map(_get_seq, records))
        if seqs != list(range(first, first + n)):
            raise StoreError("append_conflict", "seqs in the batch are not contiguous")
        ts = list(map(_get_ts, records))
        if ts != sorted(ts):
            raise StoreError("append_invalid", "ts_us must be non-decreasing along seq")
        last = first + n - 1
        node_rows = list(nodes)
        for level, idx, _ in node_rows:
            if not (type(level) is int and type(idx) is int and 1 <= level < 64 and idx >= 0
                    and (idx + 1) << level <= last):
                raise StoreError(
                    "append_invalid",
                    f"Merkle node ({level!r}, {idx!r}) is not a complete subtree of a "
                    f"level >= 1 within seq 1..{last}",
                )
        stored = LogEventBatch(records)
        index_rows = list(map(_index_row, records))
        input_rows = [(r[3], r[0], r[6]) for r in records if r[6] is not None]
        try:
            self._get_recorder().insert_events(
                stored,
                index_rows=index_rows,
                input_rows=input_rows,
                node_rows=node_rows,
                expect_head=(first - 1, ts[0]),
            )
        except IntegrityError as e:
            msg = str(e)
            if "UNIQUE" not in msg:
                raise
            if "input_ids" in msg:
                raise StoreError(
                    "append_conflict", "an input id in the batch is already recorded"
                ) from e
            if "merkle_nodes" in msg:
                raise StoreError(
                    "append_conflict", "a Merkle node in the batch is already stored"
                ) from e
            raise StoreError(
                "append_conflict", f"seq {first}..{first + n - 1} overlaps the log"
            ) from e
        except OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                raise StoreError("store_locked", f"database is locked: {e}") from e
            raise

    def put_snapshot(self, seq: int, state: bytes) -> None:
        self._require()
        with self._tx(commit=True) as cur:
            cur.execute("INSERT OR REPLACE INTO snapshots VALUES (?, ?)", (seq, state))

    def put_checkpoint(self, size: int, note: str) -> None:
        self._require()
        if type(size) is not int or size < 0 or not isinstance(note, str):
            raise StoreError("append_invalid", f"bad checkpoint size {size!r} or note")
        try:
            with self._tx(commit=True) as cur:
                # The insert takes the write lock first, so the head check cannot race
                # an append; a failed check rolls the insert back.
                cur.execute("INSERT INTO checkpoints (size, note) VALUES (?, ?)", (size, note))
                row = cur.execute(self._get_recorder().select_head_statement).fetchone()
                head = row[0] if row is not None else 0
                if size > head:
                    raise StoreError(
                        "append_invalid", f"checkpoint size {size} is beyond the head {head}"
                    )
        except OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                raise StoreError("store_locked", f"database is locked: {e}") from e
            raise

    # ------------------------------------------------------------------ state trees

    def put_state_tree(
        self,
        size: int,
        leaves: Sequence[tuple[str, bytes, bytes]],
        nodes: Sequence[tuple[int, int, bytes]],
    ) -> None:
        self._require()
        if type(size) is not int or size < 0:
            raise StoreError("append_invalid", f"bad state tree size {size!r}")
        leaf_rows = [(size, 0, i, h, a, leaf) for i, (a, h, leaf) in enumerate(leaves)]
        node_rows = [(size, level, idx, h) for level, idx, h in nodes]
        try:
            with self._tx(commit=True) as cur:
                for statement in _STATE_TREE_TABLE:  # made on first use: older files lack it
                    cur.execute(statement)
                cur.execute("DELETE FROM state_nodes WHERE size = ?", (size,))
                cur.executemany("INSERT INTO state_nodes VALUES (?,?,?,?,?,?)", leaf_rows)
                cur.executemany(
                    "INSERT INTO state_nodes (size, level, idx, hash) VALUES (?,?,?,?)", node_rows
                )
        except OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                raise StoreError("store_locked", f"database is locked: {e}") from e
            raise

    def state_leaf(self, size: int, account: str) -> tuple[int, int, bytes] | None:
        self._require()
        try:
            with self._tx() as cur:
                row = cur.execute(
                    "SELECT idx, leaf, (SELECT max(idx) + 1 FROM state_nodes "
                    "WHERE size = ?1 AND level = 0) FROM state_nodes "
                    "WHERE size = ?1 AND account = ?2 AND level = 0",
                    (size, account),
                ).fetchone()
        except (OperationalError, sqlite3.OperationalError) as e:
            if "no such table" in str(e):
                return None
            raise
        return None if row is None else (row[0], row[2], row[1])

    def get_state_nodes(
        self, size: int, keys: Sequence[tuple[int, int]]
    ) -> dict[tuple[int, int], bytes]:
        self._require()
        unique = list(dict.fromkeys((int(level), int(idx)) for level, idx in keys))
        found: dict[tuple[int, int], bytes] = {}
        try:
            with self._tx() as cur:  # one snapshot for all of them
                for i in range(0, len(unique), _NODE_CHUNK):
                    chunk = unique[i : i + _NODE_CHUNK]
                    # An OR of whole primary-key equalities (with ``size = ?`` outside the OR,
                    # SQLite scans every node of the size instead).
                    where = " OR ".join(["(size = ? AND level = ? AND idx = ?)"] * len(chunk))
                    cur.execute(
                        f"SELECT level, idx, hash FROM state_nodes WHERE {where}",
                        [v for level, idx in chunk for v in (size, level, idx)],
                    )
                    for level, idx, h in cur.fetchall():
                        found[(level, idx)] = h
        except (OperationalError, sqlite3.OperationalError) as e:
            if "no such table" in str(e):
                return {}
            raise
        return found

    def latest_snapshot_seq(self, at_or_before: int) -> int:
        self._require()
        with self._tx() as cur:
            row = cur.execute(
                "SELECT max(seq) FROM snapshots WHERE seq <= ?", (at_or_before,)
            ).fetchone()
        return row[0] or 0

    @contextmanager
    def writer_lock(self, timeout: float = 10.0) -> Iterator[None]:  # float-ok: seconds
        self._require()
        with self._flock(timeout):
            yield

    @contextmanager
    def _flock(self, timeout: float) -> Iterator[None]:  # float-ok: seconds
        """The cross-process lock on ``<file>.lock``: one writer (or creator) at a time."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = _read_holder(fd)
                        raise StoreError(
                            "store_locked",
                            f"another writer holds {self.lock_path}"
                            + (f" (pid {holder})" if holder else "")
                            + f"; gave up after {timeout:g} s",
                        ) from None
                    time.sleep(0.01)
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                yield
            finally:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return ""
