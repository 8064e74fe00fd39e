"""The log store contract: one totally ordered, gap-free stream of log events.

This module is backend-neutral. ``events.sqlite_store`` implements it on the
``eventsourcing`` library's SQLite recorder; a PostgreSQL implementation of the
same contract can be added later (``open_store`` dispatches on the URL).

Terms
-----
* ``seq``: log position, 1, 2, 3, ... with no gaps. One ``append`` is one atomic
  transaction; readers only ever observe whole appends.
* ``payload``: the canonical bytes of an event. Opaque to the store.
* ``leaf``: SHA-256(0x00 || payload), computed by the caller and stored as given.
* ``ref``: the input's id (for an input event) or the causing input's id (for a
  decision event).
* ``input_digest``: for input events, the caller's SHA-256 of the input's canonical
  content without seq (used for idempotent re-submission checks); ``None`` for
  decisions. Inputs are indexed by id (see ``find_inputs``).
* Merkle nodes (``events.merkle``): node (level, idx) is the root hash of the
  complete subtree over leaves [idx * 2^level, (idx+1) * 2^level), leaves numbered
  from 0 (leaf i is the event with seq i+1). Level 0 is the events' ``leaf``;
  nodes of level >= 1 are written by ``append`` with the events that complete
  them. Opaque to the store, like payloads.
* Checkpoints: signed notes (text) for a tree size, kept in the order written.
* State trees: the state tree (interfaces §5) of a signed size, per size: one row per account
  (its leaf index, leaf hash and leaf bytes) and one per complete node above the leaves.
  Derived data, like snapshots: opaque to the store, checked by its reader.
"""

from __future__ import annotations

import abc
from contextlib import AbstractContextManager
from typing import Iterator, NamedTuple, Sequence
from uuid import NAMESPACE_URL, uuid5

__all__ = [
    "LOG_ID",
    "LogRecord",
    "LogStore",
    "StoreError",
    "open_store",
]

#: originator_id of the single log stream in the library's ``stored_events`` table.
LOG_ID = uuid5(NAMESPACE_URL, "clearing:log")


class LogRecord(NamedTuple):
    seq: int
    ts_us: int  # microseconds since the Unix epoch, UTC
    type: str  # event type, e.g. "deposit", "rejected"
    ref: str  # input id (for an input) or causing input id (for a decision)
    payload: bytes  # canonical bytes of the event (opaque here)
    leaf: bytes  # 32-byte SHA-256(0x00 || payload), computed by the caller
    input_digest: bytes | None  # 32 bytes for input events, None for decisions


class StoreError(Exception):
    """User-facing store failure with a stable ``.code`` and a ``.message``.

    Codes:
      * ``store_missing``   – no ledger at this location (only ``create`` works)
      * ``store_exists``    – ``create`` on a location that already holds a ledger
      * ``store_invalid``   – the location holds something that is not a ledger store
      * ``store_locked``    – ``writer_lock`` could not be acquired within the timeout
      * ``append_conflict`` – the batch does not continue the log at head+1
        contiguously, or an input id or Merkle node in it is already recorded;
        nothing was written
      * ``append_invalid``  – timestamps go backwards, a Merkle node lies outside
        the log after the append, or a checkpoint is for a size beyond the head;
        nothing was written
    """

    def __init__(self, code: str, message: str = "") -> None:
        self.code = code
        self.message = message or code
        super().__init__(self.message)

    def __reduce__(self):  # picklable across processes
        return (type(self), (self.code, self.message))

    def __repr__(self) -> str:
        return f"StoreError({self.code!r}, {self.message!r})"


class LogStore(abc.ABC):
    """One ledger's log. Single writer (see ``writer_lock``), many readers."""

    url: str

    @abc.abstractmethod
    def create(self, meta: dict[str, str]) -> None:
        """Create the ledger's tables and write ``meta`` in one transaction.

        Raises StoreError("store_exists") if a ledger is already there.
        """

    @abc.abstractmethod
    def exists(self) -> bool:
        """True if a ledger has been created at this location."""

    @abc.abstractmethod
    def meta(self) -> dict[str, str]:
        """The metadata written by ``create``."""

    @abc.abstractmethod
    def head(self) -> tuple[int, int]:
        """(last seq, its ts_us); (0, 0) when the log is empty."""

    @abc.abstractmethod
    def append(
        self, records: Sequence[LogRecord], nodes: Sequence[tuple[int, int, bytes]] = ()
    ) -> None:
        """Append records, and the Merkle nodes they complete, in ONE atomic transaction.

        ``records[0].seq`` must equal head+1 and the seqs must be contiguous,
        else StoreError("append_conflict") and nothing is written. An input id
        (record with ``input_digest`` set) that is already recorded is also an
        ``append_conflict``. An empty sequence is a no-op (with no nodes).

        ``nodes`` are (level, idx, hash) with level >= 1 and the subtree inside the
        log after this append, i.e. (idx+1) * 2^level <= the last seq, else
        StoreError("append_invalid"); a node already stored is an
        ``append_conflict``.
        """

    @abc.abstractmethod
    def get_nodes(self, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """(level, idx) -> hash for those of ``keys`` that are stored, read in one
        snapshot. Level 0 is the leaf hash of the event with seq idx+1."""

    @abc.abstractmethod
    def put_checkpoint(self, size: int, note: str) -> None:
        """Keep a signed checkpoint note for tree size ``size`` (0 <= size <= head,
        else StoreError("append_invalid")). Several notes per size are kept."""

    @abc.abstractmethod
    def checkpoints(self) -> list[tuple[int, str]]:
        """All (size, note), by ascending size, notes of one size in the order written."""

    @abc.abstractmethod
    def read(
        self, after_seq: int = 0, upto_seq: int | None = None, batch: int = 10000
    ) -> Iterator[list[LogRecord]]:
        """Records with after_seq < seq <= upto_seq, ascending, in pages of <= batch.

        ``upto_seq=None`` means the head at the time the iteration starts.
        ``input_digest`` may be None in results (an implementation may omit it).
        """

    @abc.abstractmethod
    def read_payloads(
        self, after_seq: int = 0, upto_seq: int | None = None, batch: int = 10000
    ) -> Iterator[list[tuple[int, str, bytes]]]:
        """Fast path of ``read``: pages of (seq, type, payload)."""

    @abc.abstractmethod
    def get(self, seq: int) -> LogRecord | None:
        """The record at ``seq`` (with input_digest for inputs), or None."""

    @abc.abstractmethod
    def seq_at_time(self, ts_us: int) -> int:
        """Max seq with ts_us <= the given time; 0 if none."""

    @abc.abstractmethod
    def find_inputs(self, ids: Sequence[str]) -> dict[str, tuple[int, bytes]]:
        """id -> (seq, digest) for those of ``ids`` that are recorded inputs."""

    @abc.abstractmethod
    def put_snapshot(self, seq: int, state: bytes) -> None:
        """Store derived state as of ``seq`` (replaces an existing one at that seq)."""

    @abc.abstractmethod
    def latest_snapshot(self, at_or_before: int) -> tuple[int, bytes] | None:
        """The snapshot with the greatest seq <= at_or_before, or None."""

    # ------------------------------------------------------------ state trees (derived data)
    #
    # The state tree of a signed size (interfaces §5), kept like a snapshot: derived, optional,
    # and never trusted by its reader, which checks what it reads against the signed state root.
    # A store that keeps none may leave these defaults: ``put_state_tree`` keeps nothing and the
    # readers find nothing.

    def put_state_tree(
        self,
        size: int,
        leaves: Sequence[tuple[str, bytes, bytes]],
        nodes: Sequence[tuple[int, int, bytes]],
    ) -> None:
        """Keep the state tree at log size ``size``, replacing one already kept for it, in one
        transaction. ``leaves`` are (account, leaf hash, leaf bytes) in tree order (the i-th is
        leaf i); ``nodes`` are (level >= 1, idx, hash), the complete subtrees of the tree as in
        ``events.merkle``."""

    def state_leaf(self, size: int, account: str) -> tuple[int, int, bytes] | None:
        """(leaf index, number of leaves, leaf bytes) of ``account`` in the state tree kept for
        ``size``; None when none is kept or the account is not in it."""
        return None

    def get_state_nodes(
        self, size: int, keys: Sequence[tuple[int, int]]
    ) -> dict[tuple[int, int], bytes]:
        """(level, idx) -> hash for those of ``keys`` in the state tree kept for ``size``, read
        in one snapshot (level 0: the leaf hashes)."""
        return {}

    def latest_snapshot_seq(self, at_or_before: int) -> int:
        """The seq of ``latest_snapshot(at_or_before)`` (0 if none), without reading its state."""
        snap = self.latest_snapshot(at_or_before)
        return snap[0] if snap else 0

    @abc.abstractmethod
    def writer_lock(self, timeout: float = 10.0) -> AbstractContextManager[None]:  # float-ok: seconds
        """Context manager: exclusive writer for this ledger across processes.

        Raises StoreError("store_locked") if not acquired within ``timeout`` s.
        Not re-entrant: acquiring it again while held (even in the same
        process) waits and then fails with store_locked.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections. Idempotent."""

    def _pages(self, sql, after_seq, upto_seq, batch, make) -> Iterator[list]:
        """The pages of a read, its end pinned to the head when it starts, so a read always
        stops on a whole-append boundary (both stores read this way)."""
        if batch < 1:
            raise ValueError("batch must be >= 1")
        if upto_seq is None:
            upto_seq = self.head()[0]
        return self._iter_pages(sql, after_seq, upto_seq, batch, make)

    def _iter_pages(self, sql, after, upto, batch, make) -> Iterator[list]:
        raise NotImplementedError

    def __enter__(self) -> "LogStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_store(url: str) -> LogStore:
    """Open (never create) the store at ``url``.

    ``postgresql://user[:password]@host[:port]/dbname[?schema=NAME]`` (or
    ``postgres://``): ``events.postgres_store.PostgresLogStore`` (a malformed URL
    is StoreError("bad_store_url")). Anything else: an SQLite file path.
    """
    if url.startswith(("postgresql://", "postgres://", "postgresql+")):
        from events.postgres_store import PostgresLogStore

        return PostgresLogStore(url)
    from events.sqlite_store import SQLiteLogStore

    return SQLiteLogStore(url)
