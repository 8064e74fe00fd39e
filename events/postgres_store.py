"""PostgreSQL implementation of the log store, on the ``eventsourcing`` library.

URL
---
``postgresql://[user[:password]@][host][:port]/dbname[?schema=NAME]`` (also
``postgres://``). The password is optional (libpq's ``PGPASSWORD`` / ``.pgpass``
apply as usual), the port defaults to 5432, a missing user or host falls back
to libpq's defaults. Query parameters: ``schema`` (see below), ``host`` (e.g. a
Unix-socket directory), ``sslmode`` and ``connect_timeout`` (seconds, default 10);
anything else is refused.

Schema layout
-------------
One ledger per PostgreSQL schema: ``?schema=NAME`` (a lowercase identifier,
``[a-z_][a-z0-9_]*``), else the connection's default schema
(``current_schema()``, i.e. the first existing schema of the ``search_path``,
normally ``public``). Several ledgers share a database only through different
schemas; all table names carry the fixed prefix ``clearing_``:

* ``clearing_events``: the library's ``PostgresApplicationRecorder`` table
  (``<app>_events`` with app = "clearing"): originator_id = ``LOG_ID``,
  originator_version = seq, topic = event type, state = canonical payload
  bytes, plus the library's ``notification_id`` BIGSERIAL. Notification ids may
  have gaps on PostgreSQL (a failed append burns them): positions are always
  ``originator_version`` = seq, never notification ids.
* ``clearing_event_index`` (seq, ts_us, type, ref, leaf, digest: the input
  digest, NULL for decisions, so reads need no join with the input ids),
  ``clearing_input_ids`` (id, seq, digest), ``clearing_merkle_nodes`` (level,
  idx, hash): written in the SAME transaction as the events;
* ``clearing_snapshots`` (seq, state), ``clearing_checkpoints`` (id, size,
  note), ``clearing_meta`` (key, value). ``COMMENT ON TABLE clearing_meta`` holds
  the schema marker (``clearing-ledger 2``), written in the ``create``
  transaction (PostgreSQL DDL is transactional): that is what ``exists()``
  checks, like SQLite's ``PRAGMA application_id``.
* ``clearing_state_nodes`` (size, level, idx, hash, account, leaf): the state trees of
  signed sizes, derived data like the snapshots, made by the first ``put_state_tree``
  (ledgers made before it lack the table; readers then find no tree).

``create`` makes the schema if needed, and the database too if it does not
exist (through the ``postgres`` maintenance database, as SQLite creates its
file); the library's composite type ``stored_event_uuid`` is created, its
optional ``es_insert_events_uuid`` function is not (``POSTGRES_ENABLE_DB_FUNCTIONS``
stays off: that path drops the table lock). Nothing but ``create`` (and
``put_state_tree``, its one table) creates anything: a database with no ledger in the schema is ``store_missing``; one
whose ``clearing_*`` tables are not a marked ledger is ``store_invalid``.

Concurrency
-----------
* ``append``: one transaction on a pooled connection: the library's
  ``LOCK TABLE clearing_events IN EXCLUSIVE MODE`` (its ``_lock_table``; readers
  are not blocked), the head check (head = last ``clearing_event_index`` row,
  read after the lock is granted, so two appends can never interleave or both
  pass the check), then one ``COPY`` per table (events, index, input ids, nodes);
  the COPY data is made chunk by chunk while the server ingests the previous
  chunk. Any failure rolls all of it back. A lock wait longer
  than ``lock_timeout`` (30 s) is ``store_locked``.
* ``writer_lock``: a session-level advisory lock (``pg_advisory_lock`` on a
  64-bit key derived from the schema name; advisory locks are per database) held
  on a dedicated connection for the duration, waited for with ``lock_timeout``.
  The server releases it when the holder's session ends (also when the process
  dies). Not re-entrant: every ``writer_lock`` opens its own session.
* ``create``: one transaction serialised by a transaction-level advisory lock
  (``pg_advisory_xact_lock``, one key per database), so concurrent creators see
  ``store_exists`` instead of ``tuple concurrently updated``.
* Readers: every read is one SQL statement (one MVCC snapshot), so it never sees
  half of an append; ``read``/``read_payloads`` pin the end at the head when
  called and page by seq, each page in its own statement (rows at or below a
  committed head never change). A page comes back as one packed bytea
  (``string_agg`` of length-prefixed fields) that ``struct`` unpacks: with
  psycopg's pure-Python libpq wrapper that is ~3x faster than a value per column.
* The writer lock guards the user experience (one ``clearing ingest`` at a time,
  a clear message for the second); correctness does not depend on it: if its
  session is lost while held, a concurrent append is still fenced by the head
  check under the table lock (``append_conflict``).

Errors: besides the contract's codes, ``store_unavailable`` when the server
cannot be reached or refuses the connection, and ``bad_store_url`` (from the
constructor, so from ``open_store``) for a malformed URL.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import struct
import time
from collections.abc import Sequence as SequenceABC
from contextlib import contextmanager
from operator import itemgetter
from typing import Any, Iterator, Sequence
from urllib.parse import parse_qsl, quote, unquote, urlsplit
from uuid import UUID

import psycopg
import psycopg.errors
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Composed, Identifier, Literal

from eventsourcing.persistence import IntegrityError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore

from events.store import LOG_ID, LogRecord, LogStore, StoreError

__all__ = [
    "PostgresLogStore",
    "PgLedgerRecorder",
    "PgLocation",
    "parse_url",
    "MARKER",
    "PREFIX",
    "SCHEMA_VERSION",
]

#: Table-name prefix (the library's "<app>_events" with app = "clearing").
PREFIX = "clearing"
SCHEMA_VERSION = 2
#: The state trees of signed sizes (``put_state_tree``): derived data, like the snapshots, in a
#: table made on first use. Leaf rows (level 0) carry the account and the leaf's bytes.
STATE_TREE_TABLE = f"{PREFIX}_state_nodes"
#: ``COMMENT ON TABLE clearing_meta``: marks a schema as holding a ledger.
MARKER = f"clearing-ledger {SCHEMA_VERSION}"

_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}\Z")
_QUERY_KEYS = {"schema", "host", "sslmode", "connect_timeout"}
LOCK_TIMEOUT_S = 30  # append's wait for the table lock; create's for the create lock
COPY_CHUNK = 2048  # rows per COPY write
LOG_ID_STR = str(LOG_ID)

_get_seq = itemgetter(0)
_get_ts = itemgetter(1)
_ESC = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


# ---------------------------------------------------------------------- URL


class PgLocation:
    """A parsed ``postgresql://`` URL: connection keywords and the schema (or None)."""

    __slots__ = ("user", "password", "host", "port", "dbname", "schema", "extra")

    def __init__(self, user, password, host, port, dbname, schema, extra):
        self.user: str | None = user
        self.password: str | None = password
        self.host: str | None = host
        self.port: int = port
        self.dbname: str = dbname
        self.schema: str | None = schema
        self.extra: dict[str, str] = extra

    def connect_kwargs(self, dbname: str | None = None) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "dbname": dbname or self.dbname,
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "connect_timeout": 10,
        }
        kw.update(self.extra)
        return kw

    def display(self) -> str:
        """The URL with the password hidden, for messages."""
        auth = ""
        if self.user is not None:
            auth = quote(self.user, safe="") + (":***" if self.password else "") + "@"
        host = self.host or ""
        if ":" in host:
            host = f"[{host}]"
        s = f"postgresql://{auth}{host}:{self.port}/{self.dbname}"
        return s + (f"?schema={self.schema}" if self.schema else "")

    def __repr__(self) -> str:
        return f"PgLocation({self.display()!r})"


def parse_url(url: str) -> PgLocation:
    """Parse ``postgresql://user[:password]@host[:port]/dbname[?schema=...]``.

    Raises ValueError for anything that is not such a URL.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a postgresql:// URL: {url!r}")
    if parts.fragment:
        raise ValueError("a postgresql:// store URL has no #fragment")
    dbname = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if not dbname or "/" in dbname:
        raise ValueError(f"the URL names no database: {url!r} (postgresql://user@host:port/dbname)")
    try:
        port = parts.port or 5432
    except ValueError:
        raise ValueError(f"bad port in {url!r}") from None
    host = unquote(parts.hostname) if parts.hostname else None
    schema = None
    extra: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if key not in _QUERY_KEYS:
            raise ValueError(
                f"unknown URL parameter {key!r} (known: {', '.join(sorted(_QUERY_KEYS))})"
            )
        if key == "schema":
            if not _SCHEMA_RE.match(value):
                raise ValueError(
                    f"schema {value!r} is not a lowercase identifier ([a-z_][a-z0-9_]*, <= 63 chars)"
                )
            schema = value
        elif key == "host":
            host = value
        else:
            extra[key] = value
    return PgLocation(
        unquote(parts.username) if parts.username is not None else None,
        unquote(parts.password) if parts.password is not None else None,
        host,
        port,
        dbname,
        schema,
        extra,
    )


def advisory_key(purpose: str, schema: str = "") -> int:
    """A signed 64-bit advisory-lock key for (purpose, schema)."""
    digest = hashlib.sha256(f"clearing-ledger:{purpose}:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


# ---------------------------------------------------------------------- COPY rows


def _t(s: str) -> str:
    """A text field of COPY's text format."""
    if s.isprintable() and "\\" not in s:
        return s
    return s.translate(_ESC)


def _b(b: bytes | None) -> str:
    """A bytea field of COPY's text format (hex), or NULL."""
    return "\\N" if b is None else "\\\\x" + b.hex()


def _ints(*columns: Iterator[Any]) -> None:
    for column in columns:
        for v in column:
            if type(v) is not int:  # no bools, no floats: they would format as True / 1.0
                raise TypeError(f"expected an int, got {v!r}")


def _event_chunks(stored_events: Sequence[StoredEvent]) -> Iterator[str]:
    """COPY lines (originator_id, originator_version, topic, state), COPY_CHUNK rows each."""
    if type(stored_events) is LogEventBatch:
        records = stored_events.records
        _ints(map(_get_seq, records))
        prefix = LOG_ID_STR + "\t"
        for i in range(0, len(records), COPY_CHUNK):
            yield "".join(
                [f"{prefix}{r[0]}\t{_t(r[2])}\t{_b(r[4])}\n" for r in records[i : i + COPY_CHUNK]]
            )
        return
    _ints(s.originator_version for s in stored_events)
    for i in range(0, len(stored_events), COPY_CHUNK):
        yield "".join(
            [
                f"{_uuid(s.originator_id)}\t{s.originator_version}\t{_t(s.topic)}\t{_b(s.state)}\n"
                for s in stored_events[i : i + COPY_CHUNK]
            ]
        )


def _uuid(oid: Any) -> UUID:
    return oid if isinstance(oid, UUID) else UUID(str(oid))


def _index_chunks(rows: Sequence[tuple]) -> Iterator[str]:
    """(seq, ts_us, type, ref, leaf, digest) rows."""
    _ints(map(itemgetter(0), rows), map(itemgetter(1), rows))
    for i in range(0, len(rows), COPY_CHUNK):
        yield "".join(
            [
                f"{s}\t{t}\t{_t(ty)}\t{_t(ref)}\t{_b(leaf)}\t{_b(digest)}\n"
                for s, t, ty, ref, leaf, digest in rows[i : i + COPY_CHUNK]
            ]
        )


def _input_chunks(rows: Sequence[tuple]) -> Iterator[str]:
    """(id, seq, digest) rows."""
    _ints(map(itemgetter(1), rows))
    for i in range(0, len(rows), COPY_CHUNK):
        yield "".join([f"{_t(id_)}\t{s}\t{_b(d)}\n" for id_, s, d in rows[i : i + COPY_CHUNK]])


def _node_chunks(rows: Sequence[tuple]) -> Iterator[str]:
    """(level, idx, hash) rows."""
    _ints(map(itemgetter(0), rows), map(itemgetter(1), rows))
    for i in range(0, len(rows), COPY_CHUNK):
        yield "".join([f"{lv}\t{ix}\t{_b(h)}\n" for lv, ix, h in rows[i : i + COPY_CHUNK]])


def _state_tree_chunks(
    size: int, leaves: Sequence[tuple[str, bytes, bytes]], nodes: Sequence[tuple[int, int, bytes]]
) -> Iterator[str]:
    """(size, level, idx, hash, account, leaf) rows of one state tree: the leaves, then the nodes."""
    _ints([size], map(itemgetter(0), nodes), map(itemgetter(1), nodes))
    for i in range(0, len(leaves), COPY_CHUNK):
        yield "".join([
            f"{size}\t0\t{i + j}\t{_b(h)}\t{_t(a)}\t{_b(leaf)}\n"
            for j, (a, h, leaf) in enumerate(leaves[i : i + COPY_CHUNK])
        ])
    for i in range(0, len(nodes), COPY_CHUNK):
        yield "".join([
            f"{size}\t{lv}\t{ix}\t{_b(h)}\t\\N\t\\N\n" for lv, ix, h in nodes[i : i + COPY_CHUNK]
        ])


def _packed_bytea(col: str) -> SQL:
    """int4 length (-1 for NULL) and the bytes of a bytea column."""
    return SQL(f"int4send(coalesce(octet_length({col}), -1)) || coalesce({col}, ''::bytea)")


def _packed_text(col: str) -> SQL:
    return _packed_bytea(f"convert_to({col}, 'UTF8')")


_unpack_qqi = struct.Struct(">qqi").unpack_from
_unpack_qi = struct.Struct(">qi").unpack_from
_unpack_i = struct.Struct(">i").unpack_from


def _unpack_records(count: int, buf: bytes) -> list[LogRecord]:
    """LogRecords from a packed page: seq, ts_us, then length-prefixed type, ref,
    payload, leaf, digest (length -1: NULL)."""
    out = []
    append = out.append
    make = LogRecord._make
    pos = 0
    for _ in range(count):
        seq, ts, n = _unpack_qqi(buf, pos)
        pos += 20
        ty = buf[pos : pos + n].decode()
        pos += n
        (n,) = _unpack_i(buf, pos)
        pos += 4
        ref = buf[pos : pos + n].decode()
        pos += n
        (n,) = _unpack_i(buf, pos)
        pos += 4
        state = buf[pos : pos + n] if n >= 0 else None
        pos += n if n > 0 else 0
        (n,) = _unpack_i(buf, pos)
        pos += 4
        leaf = buf[pos : pos + n] if n >= 0 else None
        pos += n if n > 0 else 0
        (n,) = _unpack_i(buf, pos)
        pos += 4
        if n >= 0:
            digest = buf[pos : pos + n]
            pos += n
        else:
            digest = None
        append(make((seq, ts, ty, ref, state, leaf, digest)))
    if pos != len(buf):
        raise ValueError("packed page has trailing bytes")
    return out


def _unpack_payloads(count: int, buf: bytes) -> list[tuple[int, str, bytes]]:
    """(seq, type, payload) from a packed page."""
    out = []
    append = out.append
    pos = 0
    for _ in range(count):
        seq, n = _unpack_qi(buf, pos)
        pos += 12
        topic = buf[pos : pos + n].decode() if n >= 0 else None
        pos += n if n > 0 else 0
        (n,) = _unpack_i(buf, pos)
        pos += 4
        if n >= 0:
            state = buf[pos : pos + n]
            pos += n
        else:
            state = None
        append((seq, topic, state))
    if pos != len(buf):
        raise ValueError("packed page has trailing bytes")
    return out


class LogEventBatch(SequenceABC):
    """The records of one append as a ``Sequence[StoredEvent]`` of the log stream
    (StoredEvent objects are only built if something indexes this sequence)."""

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


# ---------------------------------------------------------------------- recorder


class PgLedgerRecorder(PostgresApplicationRecorder):
    """The library's application recorder plus the ledger's side tables.

    ``insert_events(stored_events, index_rows=..., input_rows=..., node_rows=...,
    expect_head=...)`` runs in ONE transaction: the library's EXCLUSIVE table lock,
    the head check, then one COPY per table. It returns None (no notification ids:
    positions are seqs).
    """

    def __init__(self, datastore: PostgresDatastore):
        super().__init__(datastore, events_table_name=f"{PREFIX}_events")
        sc = Identifier(datastore.schema)
        self.schema_identifier = sc

        def tbl(name: str) -> Composed:
            return SQL("{}.{}").format(sc, Identifier(f"{PREFIX}_{name}"))

        self.t_events = SQL("{}.{}").format(sc, Identifier(self.events_table_name))
        self.t_index = tbl("event_index")
        self.t_inputs = tbl("input_ids")
        self.t_nodes = tbl("merkle_nodes")
        self.t_snapshots = tbl("snapshots")
        self.t_checkpoints = tbl("checkpoints")
        self.t_meta = tbl("meta")
        self.side_create_statements = [
            SQL(
                "CREATE TABLE {} (seq bigint PRIMARY KEY, ts_us bigint NOT NULL, "
                "type text NOT NULL, ref text NOT NULL, leaf bytea NOT NULL, digest bytea)"
            ).format(self.t_index),
            SQL("CREATE INDEX {} ON {} (ts_us, seq)").format(
                Identifier(f"{PREFIX}_event_index_ts"), self.t_index
            ),
            SQL(
                "CREATE TABLE {} (id text PRIMARY KEY, seq bigint NOT NULL, digest bytea NOT NULL)"
            ).format(self.t_inputs),
            SQL("CREATE TABLE {} (seq bigint PRIMARY KEY, state bytea NOT NULL)").format(
                self.t_snapshots
            ),
            SQL("CREATE TABLE {} (key text PRIMARY KEY, value text NOT NULL)").format(self.t_meta),
            SQL(
                "CREATE TABLE {} (level integer NOT NULL, idx bigint NOT NULL, "
                "hash bytea NOT NULL, PRIMARY KEY (level, idx))"
            ).format(self.t_nodes),
            SQL(
                "CREATE TABLE {} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                "size bigint NOT NULL, note text NOT NULL)"
            ).format(self.t_checkpoints),
            SQL("CREATE INDEX {} ON {} (size, id)").format(
                Identifier(f"{PREFIX}_checkpoints_size"), self.t_checkpoints
            ),
            SQL("COMMENT ON TABLE {} IS {}").format(self.t_meta, Literal(MARKER)),
        ]
        self.lock_table_statements = [
            SQL("SET LOCAL lock_timeout = '{0}s'").format(LOCK_TIMEOUT_S),
            SQL("LOCK TABLE {0} IN EXCLUSIVE MODE").format(self.t_events),
        ]
        self.select_head_statement = SQL(
            "SELECT seq, ts_us FROM {} ORDER BY seq DESC LIMIT 1"
        ).format(self.t_index)
        self.copy_events_statement = SQL(
            "COPY {} (originator_id, originator_version, topic, state) FROM STDIN"
        ).format(self.t_events)
        self.copy_index_statement = SQL(
            "COPY {} (seq, ts_us, type, ref, leaf, digest) FROM STDIN"
        ).format(self.t_index)
        self.copy_inputs_statement = SQL("COPY {} (id, seq, digest) FROM STDIN").format(
            self.t_inputs
        )
        self.copy_nodes_statement = SQL("COPY {} (level, idx, hash) FROM STDIN").format(
            self.t_nodes
        )
        # The seq range is given on both tables, so that both are range scans of
        # their primary keys (a merge join from the first page's seq, never from 1).
        select_records = SQL(
            "SELECT s.originator_version, e.ts_us, e.type, e.ref, s.state, e.leaf, e.digest "
            "FROM {t} s JOIN {e} e ON e.seq = s.originator_version "
            "WHERE s.originator_id = {log} "
        ).format(t=self.t_events, e=self.t_index, log=Literal(LOG_ID_STR))
        self.select_records_statement = select_records + SQL(
            "AND s.originator_version > %(after)s AND s.originator_version <= %(upto)s "
            "AND e.seq > %(after)s AND e.seq <= %(upto)s "
            "ORDER BY s.originator_version LIMIT %(limit)s"
        )
        self.select_record_statement = select_records + SQL(
            "AND s.originator_version = %(seq)s AND e.seq = %(seq)s"
        )
        self.select_payloads_statement = SQL(
            "SELECT originator_version, topic, state FROM {} WHERE originator_id = {} "
            "AND originator_version > %(after)s AND originator_version <= %(upto)s "
            "ORDER BY originator_version LIMIT %(limit)s"
        ).format(self.t_events, Literal(LOG_ID_STR))
        # Pages as ONE packed bytea (count, blob): loading 3-7 values per row through
        # psycopg's pure-Python libpq wrapper costs ~10 us a value, unpacking with
        # struct ~1 us a row (see _unpack_records / _unpack_payloads).
        self.packed_records_statement = SQL(
            "SELECT count(*), string_agg("
            "int8send(p.seq) || int8send(p.ts_us) || {ty} || {ref} || {state} || {leaf} || {digest}, "
            "''::bytea ORDER BY p.seq) "
            "FROM ({page}) AS p (seq, ts_us, type, ref, state, leaf, digest)"
        ).format(
            ty=_packed_text("p.type"),
            ref=_packed_text("p.ref"),
            state=_packed_bytea("p.state"),
            leaf=_packed_bytea("p.leaf"),
            digest=_packed_bytea("p.digest"),
            page=self.select_records_statement,
        )
        self.packed_payloads_statement = SQL(
            "SELECT count(*), string_agg(int8send(p.seq) || {topic} || {state}, "
            "''::bytea ORDER BY p.seq) FROM ({page}) AS p (seq, topic, state)"
        ).format(
            topic=_packed_text("p.topic"),
            state=_packed_bytea("p.state"),
            page=self.select_payloads_statement,
        )

    # -------------------------------------------------------------- DDL

    def library_create_statements(self) -> tuple[list[Composed], list[Composed]]:
        """(CREATE TYPE statements, other statements) of the library, without its
        optional insert function (it is never used: DB functions stay off)."""
        types, others = [], []
        for statement in self.sql_create_statements:
            text = statement.as_string()
            if "CREATE TYPE" in text:
                types.append(statement)
            elif "FUNCTION" not in text:
                others.append(statement)
        return types, others

    # -------------------------------------------------------------- append

    def insert_events(  # type: ignore[override]
        self,
        stored_events: Sequence[StoredEvent],
        *,
        index_rows: Sequence[tuple] = (),
        input_rows: Sequence[tuple] = (),
        node_rows: Sequence[tuple] = (),
        expect_head: tuple[int, int] | None = None,
        **kwargs: Any,
    ) -> Sequence[int] | None:
        if not (len(stored_events) or len(index_rows) or len(input_rows) or len(node_rows)):
            return None
        with self.datastore.get_connection() as conn:
            with conn.transaction(), conn.cursor(row_factory=tuple_row) as curs:
                self._lock_table(curs)  # the library's EXCLUSIVE lock: one appender at a time
                self._notify_channel(curs)
                if expect_head is not None:
                    self._check_head(curs, expect_head)
                # The COPY data is made chunk by chunk while the server ingests the
                # previous chunk (client and server work overlap).
                self._copy(curs, self.copy_events_statement, _event_chunks(stored_events))
                self._copy(curs, self.copy_index_statement, _index_chunks(index_rows))
                self._copy(curs, self.copy_inputs_statement, _input_chunks(input_rows))
                self._insert_nodes(curs, _node_chunks(node_rows))
        return None

    def _check_head(self, curs: psycopg.Cursor, expect_head: tuple[int, int]) -> None:
        curs.execute(self.select_head_statement, prepare=True)
        row = curs.fetchone()
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

    @staticmethod
    def _copy(curs: psycopg.Cursor, statement: Composed, chunks: Iterator[str]) -> None:
        first = next(chunks, None)
        if first is None:
            return
        with curs.copy(statement) as copy:
            copy.write(first)
            for chunk in chunks:
                copy.write(chunk)

    def _insert_nodes(self, curs: psycopg.Cursor, node_chunks: Iterator[str]) -> None:
        self._copy(curs, self.copy_nodes_statement, node_chunks)


# ---------------------------------------------------------------------- store


class PostgresLogStore(LogStore):
    """The log store in one schema of a PostgreSQL database (see module docstring)."""

    def __init__(self, url: str, *, pool_size: int = 1, max_overflow: int = 4):
        self.url = url
        try:
            self.location = parse_url(url)
        except ValueError as e:
            raise StoreError("bad_store_url", str(e)) from None
        self._pool_size = pool_size
        self._max_overflow = max_overflow
        self.schema: str | None = self.location.schema
        self._datastore: PostgresDatastore | None = None
        self._recorder: PgLedgerRecorder | None = None
        self._verified = False

    # ------------------------------------------------------------------ plumbing

    @property
    def recorder(self) -> PgLedgerRecorder:
        """The library recorder (``select_notifications``, ``select_events``, ...)."""
        self._require()
        return self._get_recorder()

    def _where(self) -> str:
        loc = self.location
        return loc.display() + (f" (schema {self.schema})" if self.schema and not loc.schema else "")

    def _direct(self, dbname: str | None = None, **extra: Any) -> psycopg.Connection:
        """A connection outside the pool (probes, the writer lock, creating the database)."""
        try:
            return psycopg.connect(
                **self.location.connect_kwargs(dbname), autocommit=True, **extra
            )
        except psycopg.OperationalError as e:
            raise self._connect_error(e, dbname) from e

    def _connect_error(self, e: Exception, dbname: str | None = None) -> StoreError:
        text = str(e).strip()
        if getattr(e, "sqlstate", None) == "3D000" or (
            "does not exist" in text and "database" in text
        ):
            return _MissingDatabase(
                "store_missing",
                f"no ledger at {self.location.display()}: database "
                f"{dbname or self.location.dbname!r} does not exist",
            )
        detail = " ".join(line.strip() for line in text.splitlines() if line.strip())
        return StoreError(
            "store_unavailable",
            f"cannot connect to {self.location.display()}: {detail or type(e).__name__}",
        )

    def _resolve_schema(self, conn: psycopg.Connection) -> str:
        if self.schema is None:
            row = conn.execute("SELECT current_schema()").fetchone()
            schema = row[0] if row and row[0] else "public"
            if not _SCHEMA_RE.match(schema):
                raise StoreError(
                    "store_invalid",
                    f"the default schema {schema!r} of {self.location.display()} is not a "
                    "lowercase identifier; name one with ?schema=...",
                )
            self.schema = schema
        return self.schema

    def _get_recorder(self) -> PgLedgerRecorder:
        if self._recorder is None:
            if self.schema is None:
                with self._direct() as conn:
                    self._resolve_schema(conn)
            loc = self.location
            ds = PostgresDatastore(
                dbname=loc.dbname,
                host=loc.host,  # type: ignore[arg-type]
                port=loc.port,
                user=loc.user,  # type: ignore[arg-type]
                password=loc.password,  # type: ignore[arg-type]
                connect_timeout=30,
                idle_in_transaction_session_timeout=30,
                pool_size=self._pool_size,
                max_overflow=self._max_overflow,
                lock_timeout=LOCK_TIMEOUT_S,
                schema=self.schema or "public",
                enable_db_functions=False,
            )
            assert isinstance(ds.pool.kwargs, dict)
            ds.pool.kwargs.update(loc.extra)
            ds.pool.kwargs.setdefault("connect_timeout", 10)
            try:
                rec = PgLedgerRecorder(ds)
            except BaseException:
                ds.close()
                raise
            self._datastore, self._recorder = ds, rec
        return self._recorder

    @contextmanager
    def _cursor(self, *, binary: bool = True) -> Iterator[psycopg.Cursor]:
        """A pooled connection's cursor with tuple rows (autocommit: one statement
        is one snapshot)."""
        rec = self._get_recorder()
        try:
            with rec.datastore.get_connection() as conn:
                with conn.cursor(row_factory=tuple_row, binary=binary) as cur:
                    yield cur
        except OperationalError as e:
            cause = e.__cause__
            if isinstance(cause, psycopg.errors.LockNotAvailable):
                raise StoreError("store_locked", f"{self._where()}: {cause}") from e
            if "couldn't get a connection" in str(e) or "connection" in str(e).lower():
                raise StoreError(
                    "store_unavailable", f"cannot reach {self.location.display()}: {e}"
                ) from e
            raise

    _PROBE = (
        "SELECT obj_description(to_regclass(%(meta)s), 'pg_class'), "
        "to_regclass(%(meta)s) IS NOT NULL, "
        "EXISTS (SELECT 1 FROM pg_catalog.pg_class c "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %(schema)s AND c.relname LIKE 'clearing\\_%%')"
    )

    def _probe_on(self, conn_or_cur: Any) -> str:
        schema = self.schema
        params = {"meta": f'"{schema}".{PREFIX}_meta', "schema": schema}
        row = conn_or_cur.execute(self._PROBE, params).fetchone()
        marker, has_meta, has_any = row[0], row[1], row[2]
        if has_meta and marker == MARKER:
            return "ledger"
        if has_meta or has_any:
            return "invalid"
        return "missing"

    def _probe(self) -> str:
        """'ledger', 'missing' (no ledger in the schema), 'no_database' or 'invalid'."""
        if self._recorder is not None:
            with self._cursor() as cur:
                return self._probe_on(cur)
        try:
            conn = self._direct()
        except _MissingDatabase:
            return "no_database"
        with conn:
            self._resolve_schema(conn)
            return self._probe_on(conn)

    def _require(self) -> None:
        if self._verified:
            return
        state = self._probe()
        if state == "no_database":
            raise StoreError(
                "store_missing",
                f"no ledger at {self._where()}: database {self.location.dbname!r} does not exist",
            )
        if state == "missing":
            raise StoreError("store_missing", f"no ledger at {self._where()}")
        if state == "invalid":
            raise StoreError(
                "store_invalid", f"{self._where()} holds clearing_* tables that are not a ledger"
            )
        self._verified = True

    # ------------------------------------------------------------------ lifecycle

    def exists(self) -> bool:
        return self._verified or self._probe() == "ledger"

    def create(self, meta: dict[str, str]) -> None:
        self._ensure_database()
        rec = self._get_recorder()
        items = [(str(k), str(v)) for k, v in meta.items()]
        types, library = rec.library_create_statements()
        with rec.datastore.get_connection() as conn:
            with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
                # One creator at a time (per database): the loser waits, then sees the
                # winner's ledger; no concurrent DDL on the catalogs.
                cur.execute(SQL("SET LOCAL lock_timeout = '{0}s'").format(LOCK_TIMEOUT_S))
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_key("create"),))
                state = self._probe_on(cur)
                if state == "ledger":
                    raise StoreError("store_exists", f"a ledger already exists at {self._where()}")
                if state == "invalid":
                    raise StoreError(
                        "store_invalid",
                        f"{self._where()} holds clearing_* tables that are not a ledger",
                    )
                cur.execute(SQL("CREATE SCHEMA IF NOT EXISTS {}").format(rec.schema_identifier))
                for statement in types:  # no IF NOT EXISTS for types: a savepoint each
                    try:
                        with conn.transaction():
                            cur.execute(statement)
                    except psycopg.errors.DuplicateObject:
                        pass
                for statement in library + rec.side_create_statements:
                    cur.execute(statement)
                cur.executemany(
                    SQL("INSERT INTO {} (key, value) VALUES (%s, %s)").format(rec.t_meta), items
                )
        rec.datastore.register_type_adapters()
        self._verified = True

    def _ensure_database(self) -> None:
        """Create the database if it does not exist (as SQLite creates its file)."""
        try:
            with self._direct() as conn:
                self._resolve_schema(conn)
            return
        except _MissingDatabase:
            pass
        name = self.location.dbname
        try:
            admin = self._direct("postgres")
        except StoreError as e:
            raise StoreError(
                "store_missing",
                f"database {name!r} does not exist at {self.location.display()} and the "
                f"maintenance database 'postgres' cannot be reached to create it: {e.message}",
            ) from e
        with admin:
            for attempt in range(50):
                try:
                    admin.execute(SQL("CREATE DATABASE {}").format(Identifier(name)))
                    break
                except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
                    break  # a concurrent creator made it
                except psycopg.errors.ObjectInUse:
                    time.sleep(0.1)  # float-ok: seconds (the template is being copied by a concurrent creator)
                except psycopg.Error as e:
                    raise StoreError(
                        "store_missing",
                        f"database {name!r} does not exist at {self.location.display()} and "
                        f"cannot be created: {str(e).strip()}",
                    ) from e
        with self._direct() as conn:
            self._resolve_schema(conn)

    def close(self) -> None:
        ds, self._datastore, self._recorder = self._datastore, None, None
        if ds is not None:
            ds.close()

    # ------------------------------------------------------------------ reads

    def meta(self) -> dict[str, str]:
        self._require()
        rec = self._get_recorder()
        with self._cursor() as cur:
            return dict(cur.execute(SQL("SELECT key, value FROM {}").format(rec.t_meta)).fetchall())

    def head(self) -> tuple[int, int]:
        self._require()
        with self._cursor() as cur:
            row = cur.execute(self._get_recorder().select_head_statement, prepare=True).fetchone()
        return (row[0], row[1]) if row is not None else (0, 0)

    def read(
        self, after_seq: int = 0, upto_seq: int | None = None, batch: int = 10000
    ) -> Iterator[list[LogRecord]]:
        self._require()
        sql = self._get_recorder().packed_records_statement
        return self._pages(sql, after_seq, upto_seq, batch, _unpack_records)

    def read_payloads(
        self, after_seq: int = 0, upto_seq: int | None = None, batch: int = 10000
    ) -> Iterator[list[tuple[int, str, bytes]]]:
        self._require()
        sql = self._get_recorder().packed_payloads_statement
        return self._pages(sql, after_seq, upto_seq, batch, _unpack_payloads)

    def _iter_pages(self, sql, after, upto, batch, unpack) -> Iterator[list]:
        while after < upto:
            with self._cursor() as cur:  # one statement per page: one snapshot
                count, buf = cur.execute(
                    sql, {"after": after, "upto": upto, "limit": batch}, prepare=True
                ).fetchone()
            if not count:
                return
            rows = unpack(count, buf)
            yield rows
            if count < batch:
                return
            after = rows[-1][0]

    def get(self, seq: int) -> LogRecord | None:
        self._require()
        with self._cursor() as cur:
            row = cur.execute(self._get_recorder().select_record_statement, {"seq": seq}).fetchone()
        return None if row is None else LogRecord._make(row)

    def seq_at_time(self, ts_us: int) -> int:
        # ts_us is non-decreasing along seq (append enforces it): the last entry of
        # the (ts_us, seq) index at or before ts_us has the max such seq.
        self._require()
        rec = self._get_recorder()
        with self._cursor() as cur:
            row = cur.execute(
                SQL(
                    "SELECT seq FROM {} WHERE ts_us <= %s ORDER BY ts_us DESC, seq DESC LIMIT 1"
                ).format(rec.t_index),
                (ts_us,),
            ).fetchone()
        return 0 if row is None else row[0]

    def find_inputs(self, ids: Sequence[str]) -> dict[str, tuple[int, bytes]]:
        self._require()
        unique = list(dict.fromkeys(ids))
        if not unique:
            return {}
        rec = self._get_recorder()
        with self._cursor() as cur:  # one statement: one snapshot
            rows = cur.execute(
                SQL("SELECT id, seq, digest FROM {} WHERE id = ANY(%s::text[])").format(rec.t_inputs),
                (unique,),
            ).fetchall()
        return {id_: (seq, digest) for id_, seq, digest in rows}

    def latest_snapshot(self, at_or_before: int) -> tuple[int, bytes] | None:
        self._require()
        rec = self._get_recorder()
        with self._cursor() as cur:
            row = cur.execute(
                SQL("SELECT seq, state FROM {} WHERE seq <= %s ORDER BY seq DESC LIMIT 1").format(
                    rec.t_snapshots
                ),
                (at_or_before,),
            ).fetchone()
        return None if row is None else (row[0], row[1])

    def get_nodes(self, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        self._require()
        unique = list(dict.fromkeys((int(level), int(idx)) for level, idx in keys))
        if not unique:
            return {}
        leaves = [idx + 1 for level, idx in unique if level == 0]
        inner = [k for k in unique if k[0] > 0 and k[0] < 2**31 and 0 <= k[1] < 2**63]
        rec = self._get_recorder()
        sql = SQL(
            "SELECT 0, seq - 1, leaf FROM {e} WHERE seq = ANY(%s::bigint[]) "
            "UNION ALL "
            "SELECT n.level, n.idx, n.hash FROM {n} n "
            "JOIN unnest(%s::integer[], %s::bigint[]) AS k(level, idx) "
            "ON n.level = k.level AND n.idx = k.idx"
        ).format(e=rec.t_index, n=rec.t_nodes)
        leaves = [s for s in leaves if 0 < s < 2**63]
        with self._cursor() as cur:  # one statement: one snapshot for all of them
            rows = cur.execute(
                sql, (leaves, [k[0] for k in inner], [k[1] for k in inner])
            ).fetchall()
        return {(level, idx): h for level, idx, h in rows}

    def checkpoints(self) -> list[tuple[int, str]]:
        self._require()
        rec = self._get_recorder()
        with self._cursor() as cur:
            rows = cur.execute(
                SQL("SELECT size, note FROM {} ORDER BY size, id").format(rec.t_checkpoints)
            ).fetchall()
        return [(size, note) for size, note in rows]

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
        if type(first) is not int or seqs != list(range(first, first + n)):
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
        index_rows = [(r[0], r[1], r[2], r[3], r[5], r[6]) for r in records]
        input_rows = [(r[3], r[0], r[6]) for r in records if r[6] is not None]
        rec = self._get_recorder()
        try:
            rec.insert_events(
                LogEventBatch(records),
                index_rows=index_rows,
                input_rows=input_rows,
                node_rows=node_rows,
                expect_head=(first - 1, ts[0]),
            )
        except IntegrityError as e:
            cause = e.__cause__
            if not isinstance(cause, psycopg.errors.UniqueViolation):
                raise
            where = f"{getattr(cause.diag, 'table_name', '') or ''} {cause}"
            if f"{PREFIX}_input_ids" in where:
                raise StoreError(
                    "append_conflict", "an input id in the batch is already recorded"
                ) from e
            if f"{PREFIX}_merkle_nodes" in where:
                raise StoreError(
                    "append_conflict", "a Merkle node in the batch is already stored"
                ) from e
            raise StoreError("append_conflict", f"seq {first}..{last} overlaps the log") from e
        except OperationalError as e:
            if isinstance(e.__cause__, psycopg.errors.LockNotAvailable):
                raise StoreError(
                    "store_locked",
                    f"another append held {self._where()} for over {LOCK_TIMEOUT_S} s",
                ) from e
            raise

    def put_snapshot(self, seq: int, state: bytes) -> None:
        self._require()
        rec = self._get_recorder()
        with self._cursor() as cur:
            cur.execute(
                SQL(
                    "INSERT INTO {} (seq, state) VALUES (%s, %s) "
                    "ON CONFLICT (seq) DO UPDATE SET state = EXCLUDED.state"
                ).format(rec.t_snapshots),
                (seq, state),
            )

    def put_checkpoint(self, size: int, note: str) -> None:
        self._require()
        if type(size) is not int or size < 0 or not isinstance(note, str):
            raise StoreError("append_invalid", f"bad checkpoint size {size!r} or note")
        rec = self._get_recorder()
        # One statement: the size is checked against the committed head (which
        # only ever grows) in the insert's own snapshot.
        with self._cursor() as cur:
            row = cur.execute(
                SQL(
                    "WITH h AS (SELECT coalesce(max(seq), 0) AS head FROM {e}) "
                    "INSERT INTO {c} (size, note) SELECT %s, %s FROM h WHERE %s <= h.head "
                    "RETURNING id"
                ).format(e=rec.t_index, c=rec.t_checkpoints),
                (size, note, size),
            ).fetchone()
        if row is None:
            head = self.head()[0]
            raise StoreError("append_invalid", f"checkpoint size {size} is beyond the head {head}")

    # ------------------------------------------------------------------ state trees

    def _state_table(self) -> Composed:
        return SQL("{}.{}").format(self._get_recorder().schema_identifier, Identifier(STATE_TREE_TABLE))

    def _has_state_table(self, cur: psycopg.Cursor) -> bool:
        name = f'"{self.schema}".{STATE_TREE_TABLE}'
        return cur.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]

    def put_state_tree(
        self,
        size: int,
        leaves: Sequence[tuple[str, bytes, bytes]],
        nodes: Sequence[tuple[int, int, bytes]],
    ) -> None:
        self._require()
        if type(size) is not int or size < 0:
            raise StoreError("append_invalid", f"bad state tree size {size!r}")
        rec = self._get_recorder()
        t = self._state_table()
        ddl = [
            # Made on first use (older ledgers lack it), under the advisory lock below.
            SQL(
                "CREATE TABLE IF NOT EXISTS {} (size bigint NOT NULL, level integer NOT NULL, "
                "idx bigint NOT NULL, hash bytea NOT NULL, account text, leaf bytea, "
                "PRIMARY KEY (size, level, idx))"
            ).format(t),
            SQL("CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} (size, account) "
                "WHERE account IS NOT NULL").format(Identifier(f"{STATE_TREE_TABLE}_account"), t),
        ]
        copy = SQL("COPY {} (size, level, idx, hash, account, leaf) FROM STDIN").format(t)
        try:
            with rec.datastore.get_connection() as conn:
                with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
                    cur.execute(SQL("SET LOCAL lock_timeout = '{0}s'").format(LOCK_TIMEOUT_S))
                    # One writer of state trees at a time: no concurrent DDL, and the delete
                    # then insert of one size never meets another's rows.
                    cur.execute("SELECT pg_advisory_xact_lock(%s)",
                                (advisory_key("state_tree", self.schema or ""),))
                    for statement in ddl:
                        cur.execute(statement)
                    cur.execute(SQL("DELETE FROM {} WHERE size = %s").format(t), (size,))
                    rec._copy(cur, copy, _state_tree_chunks(size, leaves, nodes))
        except OperationalError as e:
            if isinstance(e.__cause__, psycopg.errors.LockNotAvailable):
                raise StoreError(
                    "store_locked",
                    f"another writer held {self._where()} for over {LOCK_TIMEOUT_S} s",
                ) from e
            raise

    def state_leaf(self, size: int, account: str) -> tuple[int, int, bytes] | None:
        self._require()
        t = self._state_table()
        with self._cursor() as cur:
            if not self._has_state_table(cur):
                return None
            row = cur.execute(
                SQL(
                    "SELECT idx, leaf, (SELECT max(idx) + 1 FROM {t} WHERE size = %(size)s "
                    "AND level = 0) FROM {t} WHERE size = %(size)s AND level = 0 "
                    "AND account = %(account)s"
                ).format(t=t),
                {"size": size, "account": account},
            ).fetchone()
        return None if row is None else (row[0], row[2], row[1])

    def get_state_nodes(
        self, size: int, keys: Sequence[tuple[int, int]]
    ) -> dict[tuple[int, int], bytes]:
        self._require()
        unique = list(dict.fromkeys((int(level), int(idx)) for level, idx in keys))
        unique = [k for k in unique if 0 <= k[0] < 2**31 and 0 <= k[1] < 2**63]
        if not unique:
            return {}
        sql = SQL(
            "SELECT n.level, n.idx, n.hash FROM {t} n "
            "JOIN unnest(%s::integer[], %s::bigint[]) AS k(level, idx) "
            "ON n.level = k.level AND n.idx = k.idx WHERE n.size = %s"
        ).format(t=self._state_table())
        with self._cursor() as cur:
            if not self._has_state_table(cur):
                return {}
            rows = cur.execute(sql, ([k[0] for k in unique], [k[1] for k in unique], size)).fetchall()
        return {(level, idx): h for level, idx, h in rows}

    def latest_snapshot_seq(self, at_or_before: int) -> int:
        self._require()
        rec = self._get_recorder()
        with self._cursor() as cur:
            row = cur.execute(
                SQL("SELECT coalesce(max(seq), 0) FROM {} WHERE seq <= %s").format(rec.t_snapshots),
                (at_or_before,),
            ).fetchone()
        return row[0]

    @contextmanager
    def writer_lock(self, timeout: float = 10.0) -> Iterator[None]:  # float-ok: seconds
        self._require()
        key = advisory_key("writer", self.schema or "")
        name = f"clearing writer pid {os.getpid()} on {socket.gethostname()}"[:63]
        conn = self._direct(application_name=name, keepalives=1, keepalives_idle=30)
        try:
            if not self._try_lock(conn, key, timeout):
                holder = self._holder(conn, key)
                raise StoreError(
                    "store_locked",
                    f"another writer holds {self._where()}"
                    + (f" ({holder})" if holder else "")
                    + f"; gave up after {timeout:g} s",
                )
            try:
                yield
            finally:
                try:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
                except psycopg.Error:
                    pass  # the session is gone, and with it the lock
        finally:
            conn.close()

    @staticmethod
    def _try_lock(conn: psycopg.Connection, key: int, timeout: float) -> bool:  # float-ok: seconds
        if conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
            return True
        ms = int(timeout * 1000)  # float-ok: seconds to ms
        if ms <= 0:
            return False
        try:
            conn.execute(f"SET lock_timeout = {ms}")
            conn.execute("SELECT pg_advisory_lock(%s)", (key,))
            return True
        except psycopg.errors.LockNotAvailable:
            return False
        finally:
            try:
                conn.execute("SET lock_timeout = 0")
            except psycopg.Error:
                pass

    @staticmethod
    def _holder(conn: psycopg.Connection, key: int) -> str:
        u = key & 0xFFFFFFFFFFFFFFFF
        try:
            row = conn.execute(
                "SELECT a.pid, a.application_name, a.client_addr::text, a.backend_start "
                "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s::oid "
                "AND l.objid = %s::oid AND l.objsubid = 1 "
                "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                (u >> 32, u & 0xFFFFFFFF),
            ).fetchone()
        except psycopg.Error:
            return ""
        if row is None:
            return ""
        pid, app_name, addr, started = row
        who = app_name or "a session"
        return f"{who}; server pid {pid}" + (f", client {addr}" if addr else "") + (
            f", since {started:%Y-%m-%d %H:%M:%S}" if started else ""
        )


class _MissingDatabase(StoreError):
    """The URL's database does not exist (a store_missing)."""
