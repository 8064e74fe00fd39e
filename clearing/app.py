"""The application shell: opens the store, validates and ingests input files, answers state
queries. The only place (with the CLI) that touches files, the store and keys."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

import msgspec

from events import merkle
from events import schema as s
from events.canonical import canonical, content_digest, leaf_hash
from events.parse import Malformed, parse_line
from events.store import LogRecord, LogStore, StoreError, open_store
from events.timestamps import parse_ts
from projections import history, snapshot
from projections.report import RULES
from projections.state import LedgerState

from clearing import keys
from clearing.engine import Engine
from clearing.validate import FileChecker, content_lines, split_file

_ORIGIN_RE = re.compile(r"^[\x21-\x2a\x2c-\x7e]+\Z")  # C2SP signed-note key name: no space, no "+"
DEFAULT_STORE = "clearing.db"
BATCH_EVENTS = 4096  # events per commit (group commit; one commit per input is far too slow)
SNAPSHOT_EVERY = 25_000  # events between snapshots: bounds the fold behind any state query


def store_url(store: str | None) -> str:
    return store or os.environ.get("CLEARING_STORE") or DEFAULT_STORE


def key_file_for(url: str, key_file: str | None) -> str:
    """interfaces §2: --key-file, else CLEARING_KEY_FILE, else <store>.key for SQLite."""
    chosen = key_file or os.environ.get("CLEARING_KEY_FILE")
    if chosen:
        return chosen
    if url.startswith(("postgresql://", "postgres://")):
        raise StoreError("key_file_required", "a PostgreSQL store needs --key-file or CLEARING_KEY_FILE")
    return url + ".key"


def init_ledger(url: str, origin: str, key_file: str | None) -> str:
    """Create an empty ledger and its signing key; return the verifier key."""
    if not _ORIGIN_RE.match(origin):
        raise StoreError(
            "bad_origin",
            f"origin {origin!r} is not a C2SP key name (non-empty, printable, no spaces or '+')",
        )
    path = key_file_for(url, key_file)
    store = open_store(url)
    try:
        if store.exists():
            raise StoreError("store_exists", f"a ledger already exists at {url}")
        if os.path.exists(path):
            raise StoreError("key_exists", f"key file {path} already exists")
        try:
            verifier = keys.write_new_key(path, origin)
        except OSError as exc:
            raise StoreError("key_file", f"cannot write key file {path}: {exc.strerror}") from exc
        try:
            store.create({"origin": origin, "rules": RULES, "verifier_key": verifier})
        except BaseException as exc:
            os.unlink(path)  # no ledger, so no key: a later `init` can start afresh
            if isinstance(exc, OSError):
                raise StoreError("store_path", f"cannot create {url}: {exc.strerror}") from exc
            raise
        return verifier
    finally:
        store.close()


def open_ledger(url: str) -> LogStore:
    store = open_store(url)
    if not store.exists():
        store.close()
        raise StoreError("store_missing", f"no ledger at {url} (run `clearing init` first)")
    return store


@dataclass
class IngestSummary:
    appended: int = 0
    duplicates: int = 0
    rejected: int = 0
    decisions: int = 0
    head_seq: int = 0
    liquidations: int = 0
    bankruptcies: int = 0
    deleverages: int = 0

    def as_json(self) -> dict[str, int]:  # interfaces §3.1
        return {
            "appended": self.appended,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "decisions": self.decisions,
            "head_seq": self.head_seq,
        }


@dataclass
class FileError:
    name: str
    errors: list[tuple[int, Malformed]] = field(default_factory=list)

    def lines(self) -> Iterable[str]:
        for line, err in self.errors:
            yield f"{self.name}:{line}: error[{err.code}]: {err.message}"


class Ingestor:
    """Appends validated inputs with their decisions, many inputs per commit.

    Every input and all its decisions go into the same ``append`` (R3.6); a crash leaves whole
    groups or nothing, and re-running the same ingest skips what was recorded (R3.4).
    """

    def __init__(self, store: LogStore) -> None:
        self.store = store
        self.state: LedgerState = history.state_at_seq(store, store.head()[0])
        self.engine = Engine(self.state)
        # The log's Merkle tree (interfaces §5): its new complete nodes go with each append.
        self.frontier = merkle.Frontier.from_nodes(self.state.seq, merkle.store_nodes(store))
        snap = store.latest_snapshot(self.state.seq)
        self.last_snapshot = snap[0] if snap else 0
        self.pending: list[LogRecord] = []
        self.digests: dict[str, bytes] = {}

    def check_file(self, name: str, data: bytes) -> tuple[list[s.Input], int, FileError | None]:
        """R3.3 / interfaces §3.1: check every line as if the earlier good ones were recorded."""
        lines = split_file(data)
        if isinstance(lines, Malformed):
            return [], 0, FileError(name, [(1, lines)])
        parsed = [
            (number, text if isinstance(text, Malformed) else parse_line(text))
            for number, text in content_lines(lines)
        ]
        ids = [p.id for _, p in parsed if not isinstance(p, Malformed)]
        recorded = {i: digest for i, (_seq, digest) in self.store.find_inputs(ids).items()}
        checker = FileChecker.for_state(self.state, recorded)
        self.digests = checker.seen  # id -> content digest of each line to append (R3.4)
        errors = FileError(name)
        accepted: list[s.Input] = []
        duplicates = 0
        for number, item in parsed:
            if isinstance(item, Malformed):
                errors.errors.append((number, item))
                continue
            verdict = checker.check(item)
            if isinstance(verdict, Malformed):
                errors.errors.append((number, verdict))
            elif verdict == "duplicate":
                duplicates += 1
            else:
                accepted.append(item)
        return accepted, duplicates, (errors if errors.errors else None)

    def append_inputs(
        self, inputs: list[s.Input], summary: IngestSummary, progress: Callable[[int], None] | None = None
    ) -> None:
        state = self.state
        process = self.engine.process
        for inp in inputs:
            inp = _with_seq(inp, state.seq + 1)
            decisions = process(inp)
            payload = canonical(inp)
            records = self.pending
            records.append(
                LogRecord(inp.seq, state.ts_us, inp.__struct_config__.tag, inp.id, payload,
                          leaf_hash(payload), self.digests.get(inp.id) or content_digest(inp))
            )
            for dec in decisions:
                payload = canonical(dec)
                tag = dec.__struct_config__.tag
                records.append(LogRecord(dec.seq, state.ts_us, tag, inp.id, payload, leaf_hash(payload), None))
                if tag == "rejected":
                    summary.rejected += 1
                elif tag == "liquidation":
                    summary.liquidations += 1
                elif tag == "bankruptcy":
                    summary.bankruptcies += 1
                elif tag == "deleverage":
                    summary.deleverages += 1
            summary.appended += 1
            summary.decisions += len(decisions)
            if len(records) >= BATCH_EVENTS:
                self.flush()
            if progress is not None:
                progress(1)
        self.flush()
        summary.head_seq = state.seq

    def flush(self) -> None:
        if not self.pending:
            return
        nodes = self.frontier.append([record.leaf for record in self.pending])
        self.store.append(self.pending, nodes)
        self.pending = []
        if self.state.seq - self.last_snapshot >= SNAPSHOT_EVERY:
            self.store.put_snapshot(self.state.seq, snapshot.encode(self.state))
            self.last_snapshot = self.state.seq


def read_model_path(store: LogStore) -> str | None:
    """Where the read model of a ledger lives: ``CLEARING_READ_MODEL`` if set, else beside an
    SQLite store (``<store>.read.db``). A PostgreSQL ledger keeps its read model in a local
    SQLite file too (one per reader, any SQLite tool opens it), but only where it is named."""
    named = os.environ.get("CLEARING_READ_MODEL")
    if named:
        return named
    if store.url.startswith(("postgresql://", "postgres://")):
        return None
    return store.url + ".read.db"


def update_read_model(store: LogStore) -> int:
    """Bring the ledger's read model (see ``read_model_path``) up to the log's head."""
    path = read_model_path(store)
    if path is None:
        return 0
    from projections.readmodel import ReadModel  # sqlite-utils: import when used

    with ReadModel(path) as model:
        return model.catch_up(store)


def _with_seq(inp: s.Input, seq: int) -> s.Input:
    return msgspec.structs.replace(inp, seq=seq)


def instant(text: str | None, option: str = "--at") -> int | None:
    """A timestamp given on the command line, in microseconds (R3.2: compared as instants);
    None passes through. Not a timestamp: StoreError("bad_ts") naming the option."""
    if text is None:
        return None
    ts_us = parse_ts(text)
    if ts_us is None:
        raise StoreError("bad_ts", f"{option}: not an RFC 3339 UTC timestamp: {text!r}")
    return ts_us


def state_at(store: LogStore, seq: int | None = None, ts: str | None = None) -> LedgerState:
    """R3.7: the state at sequence N, at time T, or now."""
    return history.state_at_seq(store, point_of(store, seq, ts))


def point_of(store: LogStore, seq: int | None = None, ts: str | None = None) -> int:
    """R3.7: the seq of the state at sequence N, at time T, or now (the head)."""
    ts_us = instant(ts)
    if ts_us is not None:
        return history.seq_at_time(store, ts_us)
    head = store.head()[0]
    if seq is None:
        return head
    if not 0 <= seq <= head:
        raise StoreError("seq_out_of_range", f"--seq {seq} is not between 0 and the head seq {head}")
    return seq


def state_document(
    store: LogStore, seq: int | None = None, ts: str | None = None, account: str | None = None
) -> dict:
    """`clearing state` (interfaces §4) at sequence N, at time T, or now. With ``account``,
    only that account: taken from the snapshots without folding every account's moves
    (projections/history.py ``account_at_seq``), the same document as from the whole state."""
    from projections.report import state_document as document

    point = point_of(store, seq, ts)
    if account is None:
        return document(history.state_at_seq(store, point))
    view = history.account_at_seq(store, point, account, reach=SNAPSHOT_EVERY // 2)
    return document(view.state, account, view.exposure)
