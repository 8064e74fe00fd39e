"""`clearing audit` (interfaces §3.2): re-derive everything from the raw log and check it.

Nothing stored is trusted. The audit reads the raw rows of the store in ONE read snapshot and
recomputes from them:

* the log itself, straight from the library's ``stored_events`` table ordered by
  ``originator_version`` (= seq): seq 1..N without gaps (R3.1), ``ts`` never decreasing
  (R3.2), every payload decodes and is in canonical form (interfaces §5), its ``seq`` field is
  its position and its type is the row's topic;
* ``event_index`` (seq, ts_us, type, ref, leaf) is cross-checked row by row against the
  payloads (a hint: ``leaf`` differing from the payload's leaf hash names the changed event);
  ``input_ids`` (id, seq, digest) likewise;
* the Merkle tree is rebuilt from the payloads (``Frontier``); every stored checkpoint is
  verified with the ledger's verifier key and its root compared with the recomputed root at
  its size, its ``state`` extension with the state root of the fold at that size; consecutive
  checkpoints are checked consistent with RFC 9162 proofs computed from the recomputed nodes;
  ``merkle_nodes`` rows are compared with the recomputed nodes (they serve proofs);
* R12.5: the rules (clearing/engine.py) are re-run from an EMPTY state over the recorded
  inputs, each with its recorded seq, and the canonical bytes of the decisions they give are
  compared one by one with the recorded decisions of that input; each recorded input is also
  re-checked for R3.3 (parse_line on its content, listings at its point of the log) and R3.4
  (ids recorded once);
* R12.1 to R12.3 after every event and R12.4 after every input with all its decisions, on the
  state folded from the RECORDED events, kept O(1)-ish per event: running totals per asset and
  instrument updated from the accounts each event touched (``LedgerState.touched``), negative
  balances checked on touched accounts, and for R12.4 only the accounts the group touched, the
  holders of what a listing change lists and, for a price, the accounts whose price band the
  new mark leaves are valued exactly (every other account keeps its holdings and listings, and
  its marks stay inside the bands of its last exact valuation, which keep equity >= MM: see
  ``_Bands``, R6.7, R10.1, R12.4);
* stored snapshots (derived data that answers ``state`` queries) are compared with the fold.

Rule ids of findings: "R3.1" the log's order and rows (gaps, moved events, topic, event_index),
"R3.2" ts, "R3.3" a recorded input malformed at its point of the log, "R3.4" an input id
recorded twice or input_ids wrong, "R3.6" a decision not with its input or a bad group,
"R3.7" a stored snapshot that is not the state at its seq, "R12.1" to "R12.5", "§5" bytes,
leaves, Merkle nodes and checkpoints, and "audit" for an event the audit itself failed on.

A tampered store never makes the audit raise: an undecodable payload, an event that cannot be
folded or a rule run that fails is a finding, and the audit carries on. To avoid cascades from
one change, a re-derivation mismatch re-syncs the re-derived state to the recorded one, the
invariants are reported when they start to fail (not on every later event), and findings of
one kind beyond ``LIMIT_PER_KIND`` are summed up in one finding.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, NamedTuple
from urllib.parse import quote

import msgspec

from events import merkle, verifier
from events import schema as s
from events.canonical import canonical, content, decode, leaf_hash
from events.numbers import fmt_units
from events.parse import Malformed, parse_line
from events.store import LOG_ID, LogStore, StoreError
from events.timestamps import parse_ts
from projections import snapshot
from projections.state import EXTERNAL, SYSTEM_ACCOUNTS, LedgerState, clone_state, is_system
from projections.valuation import value

from clearing.engine import Engine
from clearing.validate import Listings, check_input

from projections.statetree import state_root as _state_root  # interfaces §5: `state <root>`

__all__ = ["AuditReport", "Finding", "LIMIT_PER_KIND", "run_audit"]

#: Findings of one kind (say, stored Merkle nodes that differ) listed before the rest are summed up.
LIMIT_PER_KIND = 20
#: Rows per page read from the store (and per ``progress`` call).
PAGE = 4096

_LOG_ID_HEX = LOG_ID.hex
_INPUT_TYPES = frozenset(s.INPUT_TYPES)
_REJECTABLE = (s.Withdrawal, s.Transfer, s.Trade)  # R7.2, R7.3, R8: the inputs the rules can refuse


# ============================================================================ the report


class Finding(NamedTuple):
    seq: int
    rule: str
    message: str

    def as_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "rule": self.rule, "message": self.message}


@dataclass
class AuditReport:
    """``events``: the stored events audited; ``findings`` ordered by seq."""

    events: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    def as_json(self) -> dict[str, Any]:  # interfaces §3.2
        return {
            "ok": self.ok,
            "events": self.events,
            "findings": [f.as_json() for f in self.findings],
        }


class _Findings:
    """Findings with a cap per kind: the first ``limit`` of a kind are listed, the rest summed."""

    def __init__(self, limit: int = LIMIT_PER_KIND) -> None:
        self.limit = limit
        self.items: list[Finding] = []
        self.counts: dict[str, int] = {}
        self.extra: dict[str, list] = {}  # kind -> [rule, first seq, last seq, count]

    def add(self, seq: int, rule: str, message: str, kind: str | None = None) -> None:
        kind = kind or rule
        n = self.counts.get(kind, 0) + 1
        self.counts[kind] = n
        if n <= self.limit:
            self.items.append(Finding(int(seq), rule, message))
            return
        more = self.extra.get(kind)
        if more is None:
            self.extra[kind] = [rule, seq, seq, 1]
        else:
            more[1] = min(more[1], seq)
            more[2] = max(more[2], seq)
            more[3] += 1

    def result(self) -> list[Finding]:
        out = list(self.items)
        for kind, (rule, first, last, count) in self.extra.items():
            out.append(
                Finding(
                    int(first),
                    rule,
                    f"{count} more findings of this kind ({kind}) at seq {first} to {last}, "
                    "not listed one by one",
                )
            )
        out.sort(key=lambda f: f.seq)  # stable: the order found within one seq
        return out


# ============================================================================ raw rows


class _Node(NamedTuple):
    end: int  # (idx + 1) << level: the size at which the node is complete
    level: int
    idx: int
    hash: bytes


class _Source:
    """The raw rows of a store. ``problems`` collects what could not be read."""

    has_nodes = False
    has_input_ids = False

    def __init__(self) -> None:
        self.problems: list[tuple[int, str, str]] = []
        self.broken: set[str] = set()  # tables that could not be read (reported once)

    def meta(self) -> dict[str, str]:
        return {}

    def foreign_rows(self) -> int:
        return 0

    def events(self) -> Iterator[list[tuple]]:
        return iter(())

    def index(self) -> Iterator[tuple]:
        return iter(())

    def nodes(self) -> Iterator[_Node]:
        return iter(())

    # input_ids, read by id and streamed (never loaded whole: it has a row per input)
    def input_id(self, id_: str) -> tuple[Any, Any] | None:
        return None

    def input_id_count(self) -> int:
        return 0

    def input_id_rows(self) -> Iterator[tuple[Any, Any, Any]]:
        return iter(())

    def snapshot_seqs(self) -> list[int]:
        return []

    def snapshot(self, seq: int) -> bytes | None:
        return None

    def checkpoints(self) -> list[tuple[Any, Any]]:
        return []

    def close(self) -> None:
        pass


class _SQLiteSource(_Source):
    """The tables of an SQLite ledger, read over a connection of our own (read only), all in
    one transaction, so the audit sees one snapshot even while an ingest appends."""

    has_nodes = True
    has_input_ids = True

    def __init__(self, path: str) -> None:
        super().__init__()
        self.conn = sqlite3.connect(
            "file:" + quote(path) + "?mode=ro", uri=True, isolation_level=None
        )
        self.conn.execute("BEGIN")
        # Pin the snapshot now (a deferred transaction starts reading at its first SELECT).
        self.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()

    def _all(self, what: str, sql: str, params: tuple = ()) -> list[tuple]:
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            self.problems.append((0, "R3.1", f"cannot read {what}: {exc}"))
            self.broken.add(what)
            return []

    def _stream(self, what: str, sql: str, params: tuple = ()) -> Iterator[list[tuple]]:
        try:
            cur = self.conn.execute(sql, params)
            while True:
                rows = cur.fetchmany(PAGE)
                if not rows:
                    return
                yield rows
        except sqlite3.Error as exc:
            self.problems.append((0, "R3.1", f"cannot read {what} to the end: {exc}"))
            self.broken.add(what)

    def meta(self) -> dict[str, str]:
        rows = self._all("the meta table", "SELECT key, value FROM meta")
        return {str(k): str(v) for k, v in rows}

    def foreign_rows(self) -> int:
        rows = self._all(
            "stored_events",
            "SELECT count(*) FROM stored_events WHERE originator_id IS NOT ?",
            (_LOG_ID_HEX,),
        )
        return rows[0][0] if rows else 0

    def events(self) -> Iterator[list[tuple]]:
        return self._stream(
            "stored_events",
            "SELECT originator_version, topic, state FROM stored_events "
            "WHERE originator_id = ? ORDER BY originator_version",
            (_LOG_ID_HEX,),
        )

    def index(self) -> Iterator[tuple]:
        for page in self._stream(
            "event_index", "SELECT seq, ts_us, type, ref, leaf FROM event_index ORDER BY seq"
        ):
            yield from page

    def nodes(self) -> Iterator[_Node]:
        sql = (
            "SELECT level, idx, hash FROM merkle_nodes "
            "ORDER BY ((idx + 1) << level), level, idx"
        )
        for page in self._stream("merkle_nodes", sql):
            for level, idx, h in page:
                if type(level) is int and type(idx) is int and 0 <= level < 64 and idx >= 0:
                    yield _Node((idx + 1) << level, level, idx, h)
                else:  # a row no append writes: sorts anywhere; report it as outside the log
                    yield _Node(-1, level, idx, h)

    def input_id(self, id_: str) -> tuple[Any, Any] | None:
        rows = self._all("input_ids", "SELECT seq, digest FROM input_ids WHERE id = ?", (id_,))
        return (rows[0][0], rows[0][1]) if rows else None

    def input_id_count(self) -> int:
        rows = self._all("input_ids", "SELECT count(*) FROM input_ids")
        return rows[0][0] if rows else 0

    def input_id_rows(self) -> Iterator[tuple[Any, Any, Any]]:
        for page in self._stream("input_ids", "SELECT id, seq, digest FROM input_ids ORDER BY seq"):
            yield from page

    # The blobs are read one at a time when the fold reaches their seq (in the same read
    # transaction), so the audit's memory does not grow with the number of snapshots.
    def snapshot_seqs(self) -> list[int]:
        rows = self._all("snapshots", "SELECT seq FROM snapshots ORDER BY seq")
        return [seq for (seq,) in rows if type(seq) is int]

    def snapshot(self, seq: int) -> bytes | None:
        rows = self._all("snapshots", "SELECT state FROM snapshots WHERE seq = ?", (seq,))
        return rows[0][0] if rows else None

    def checkpoints(self) -> list[tuple[Any, Any]]:
        return self._all("checkpoints", "SELECT size, note FROM checkpoints ORDER BY size, id")

    def close(self) -> None:
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error:
            pass
        self.conn.close()


class _StoreSource(_Source):
    """Any other ``LogStore``, through its contract (no Merkle node, input id or snapshot
    cross-checks: the contract does not expose those rows wholesale)."""

    def __init__(self, store: LogStore) -> None:
        super().__init__()
        self.store = store

    def _guard(self, what: str, fn: Callable[[], Any], default: Any) -> Any:
        try:
            return fn()
        except Exception as exc:  # a broken store is a finding, not a crash
            self.problems.append((0, "R3.1", f"cannot read {what}: {exc}"))
            return default

    def meta(self) -> dict[str, str]:
        return self._guard("the ledger's metadata", self.store.meta, {})

    def events(self) -> Iterator[list[tuple]]:
        try:
            yield from self.store.read_payloads(0, None, PAGE)
        except Exception as exc:
            self.problems.append((0, "R3.1", f"cannot read the log to the end: {exc}"))

    def index(self) -> Iterator[tuple]:
        try:
            for page in self.store.read(0, None, PAGE):
                for r in page:
                    yield (r.seq, r.ts_us, r.type, r.ref, r.leaf)
        except Exception as exc:
            self.problems.append((0, "R3.1", f"cannot read the event index to the end: {exc}"))
            self.broken.add("event_index")

    def checkpoints(self) -> list[tuple[Any, Any]]:
        return self._guard("the checkpoints", self.store.checkpoints, [])


def _source_for(store: LogStore) -> _Source:
    path = getattr(store, "path", None)
    if type(store).__name__ == "SQLiteLogStore" and isinstance(path, str):
        try:
            return _SQLiteSource(path)
        except sqlite3.Error:
            pass
    return _StoreSource(store)


# ============================================================================ helpers


def _tag(event: s.Event) -> str:
    return event.__struct_config__.tag  # type: ignore[attr-defined]


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":")) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _diff(recorded: bytes, derived: bytes) -> str:
    """The fields in which two canonical records differ, for a message."""
    try:
        rec = json.loads(recorded)
        got = json.loads(derived)
    except ValueError:
        return "the recorded bytes are not JSON"
    if not isinstance(rec, dict) or not isinstance(got, dict):
        return "the recorded bytes are not a record"
    diffs = [
        f"{key}: recorded {_short(rec.get(key))}, re-derived {_short(got.get(key))}"
        for key in sorted(rec.keys() | got.keys())
        if rec.get(key) != got.get(key)
    ]
    if not diffs:
        return "the bytes differ in form only"
    return "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more fields" if len(diffs) > 4 else "")


def _describe(event: s.Event) -> str:
    tag = _tag(event)
    if type(event) in _INPUT_TYPES:
        return f"{tag} input {event.id!r}"  # type: ignore[union-attr]
    account = getattr(event, "account", None)
    return f"{tag} decision" + (f" for {account}" if account else "")


def _b64_hash(text: str) -> bytes:
    """A 32-byte hash in canonical base64 (as checkpoints write it); ValueError if not."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None
    if base64.b64encode(raw).decode() != text or len(raw) != 32:
        raise ValueError("not the base64 of a 32-byte hash")
    return raw


def _continue_at(state: LedgerState, seq: int) -> None:
    """Make ``seq`` the next event of ``state`` across a gap in the log (reported as R3.1)."""
    if state.seq != seq - 1:
        if state.seq == 0 and seq > 1:  # R2.2: seq 1 is missing, and with it their creation
            for system in SYSTEM_ACCOUNTS:
                state.account(system)
        state.seq = seq - 1


def _clone(state: LedgerState) -> LedgerState:
    """An independent copy of the state."""
    copy = clone_state(state)
    copy.touched.clear()
    return copy


class _KeyRecorder:
    """Node access that only records which nodes a proof needs (merkle's batched protocol)."""

    def __init__(self) -> None:
        self.keys: set[tuple[int, int]] = set()

    def many(self, keys):
        self.keys.update(keys)
        return {k: b"\x00" * 32 for k in keys}


class _Checkpoint(NamedTuple):
    row: int  # position in the checkpoints table (for messages)
    size: int
    root: bytes
    state_root: bytes | None


class _SeenIds:
    """The input ids recorded so far, each with (seq, content digest) of its first recording
    (R3.4), kept in a private temporary SQLite database on disk, so that the audit's memory does
    not grow with the length of the log. The latest ids stay in a dict until ``FLUSH_EVERY``
    of them, then go to the table in one ``executemany``."""

    FLUSH_EVERY = 65536

    def __init__(self) -> None:
        self.db = sqlite3.connect("", isolation_level=None)  # "": a temporary file, deleted on close
        self.db.execute("PRAGMA journal_mode = OFF")
        self.db.execute("PRAGMA synchronous = OFF")
        self.db.execute("CREATE TABLE seen (id TEXT PRIMARY KEY, seq INTEGER, digest BLOB) WITHOUT ROWID")
        self.recent: dict[str, tuple[int, bytes]] = {}
        self.stored = 0
        self._get = "SELECT seq, digest FROM seen WHERE id = ?"

    def __len__(self) -> int:
        return self.stored + len(self.recent)

    def get(self, id_: str) -> tuple[int, bytes] | None:
        first = self.recent.get(id_)
        if first is None and self.stored:
            row = self.db.execute(self._get, (id_,)).fetchone()
            if row is not None:
                first = (row[0], row[1])
        return first

    def add(self, id_: str, seq: int, digest: bytes) -> None:
        """Record the first recording of ``id_`` (the caller checked ``get`` is None)."""
        self.recent[id_] = (seq, digest)
        if len(self.recent) >= self.FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if self.recent:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT INTO seen VALUES (?, ?, ?)",
                                [(k, v[0], v[1]) for k, v in self.recent.items()])
            self.db.execute("COMMIT")
            self.stored += len(self.recent)
            self.recent = {}

    def close(self) -> None:
        self.db.close()


class _Bands:
    """Price bands per account, for the R12.4 check on the folded state (R6.7, R10.1, R12.4).

    The audit's own, on purpose not the engine's screen (clearing/screen.py): the audit checks
    what the engine decided, so a flaw in the engine's screen must not hide from it.

    The margin buffer of an account, b = equity − MM (liquidatable iff b < 0, R6.7), is its
    cash plus, per asset a, a sum T_a(p) of terms that each depend only on the mark p of a and
    are each of the form floor(L·p) with L rational (R1.3, every term rounded on its own):

    * a balance u > 0: floor(u·p·(1 − h)·10^S / 10^(decimals + price_decimals)) (R6.2);
    * a position q on an instrument on a, n = q·p·ns: n − ceil(|n|·MMF) (R6.3, R6.5), which
      is floor(n·(1 − MMF)) for q > 0 and floor(n·(1 + MMF)) for q < 0, so L = q·ns − |q|·ns·MMF.

    (A balance of an asset with no mark counts 0, R5.2, and a first mark can only raise it: it
    is left out.) floor(x) − floor(y) > x − y − 1, so with S_a = Σ L over the N_a terms on a,
    marks m⁰ of the last exact valuation and N = Σ N_a:

        b(m) > b(m⁰) − N + Σ_a S_a·(m_a − m⁰_a)         for ANY marks m.

    The allowance A = b(m⁰) − N is split into equal shares A_a over the k assets with S_a ≠ 0
    (k·A_a <= A), and each gets a band: m_a >= m⁰_a − floor(A_a / S_a) when S_a > 0 (the account
    loses when a falls), m_a <= m⁰_a + floor(A_a / |S_a|) when S_a < 0. While every current
    mark is inside its band, S_a·(m_a − m⁰_a) >= −A_a for every a and b(m) > A − Σ A_a >= 0:
    the account is not liquidatable. That holds as long as the account's cash, balances and
    positions and the listings of what it holds are those of its last exact valuation; the
    audit re-values (and re-bands, ``put``) every account the moment one of those changes, and
    every account whose band a new mark leaves (``crossed``). With A < 0 the account is valued
    on every price of any asset it has a term on (``always``).

    Slopes are exact fractions (integers P/Q), thresholds exact integer floors: no float.
    Heaps per asset and direction with lazy deletion (a version per account); ``compact``
    drops the stale entries once they outnumber the live ones.
    """

    __slots__ = ("version", "falls", "rises", "always", "always_of", "live_of", "live", "entries")

    def __init__(self) -> None:
        self.version: dict[str, int] = {}
        self.falls: dict[str, list[tuple[int, int, str]]] = {}  # asset -> heap of (−floor, version, account)
        self.rises: dict[str, list[tuple[int, int, str]]] = {}  # asset -> heap of (ceiling, version, account)
        self.always: dict[str, set[str]] = {}  # asset -> accounts with no allowance left
        self.always_of: dict[str, list[str]] = {}  # account -> the assets it is "always" on
        self.live_of: dict[str, int] = {}  # account -> heap entries of its current version
        self.live = 0
        self.entries = 0  # heap entries, stale ones included

    def forget(self, account_id: str) -> None:
        """Drop the account's bands (it is then valued only when the audit says so)."""
        self.version[account_id] = self.version.get(account_id, 0) + 1
        n = self.live_of.pop(account_id, 0)
        if n:
            self.live -= n
        assets = self.always_of.pop(account_id, None)
        if assets:
            always = self.always
            for asset in assets:
                always[asset].discard(account_id)

    def put(self, account_id: str, buffer: int, slopes: dict[str, list[int]], marks: dict[str, int]) -> None:
        """Band the account from its exact buffer b(m⁰) = equity − MM at the current marks and
        its slopes {asset: [P, Q, N_a]} (S_a = P/Q, Q > 0)."""
        version = self.version.get(account_id, 0) + 1  # (forget, inlined: the audit's hot path)
        self.version[account_id] = version
        if account_id in self.live_of:
            self.live -= self.live_of.pop(account_id)
        if account_id in self.always_of:
            for asset in self.always_of.pop(account_id):
                self.always[asset].discard(account_id)
        if not slopes:
            return  # cash only: nothing but a move of its own (re-valued then) changes it
        terms = 0
        moving = 0
        for slope in slopes.values():
            terms += slope[2]
            if slope[0]:
                moving += 1
        allowance = buffer - terms
        if allowance < 0:  # too close to call: valued on every price of what it depends on
            assets = list(slopes)
            self.always_of[account_id] = assets
            for asset in assets:
                group = self.always.get(asset)
                if group is None:
                    group = self.always[asset] = set()
                group.add(account_id)
            return
        if not moving:
            return  # b(m) > A >= 0 whatever the marks
        share = allowance // moving
        for asset, (num, den, _n) in slopes.items():
            if num > 0:  # loses when the mark falls: below the floor it is a candidate
                floor = marks[asset] - (share * den) // num
                heap = self.falls.get(asset)
                if heap is None:
                    heap = self.falls[asset] = []
                heapq.heappush(heap, (-floor, version, account_id))
            elif num < 0:  # loses when the mark rises: above the ceiling it is a candidate
                ceiling = marks[asset] + (share * den) // -num
                heap = self.rises.get(asset)
                if heap is None:
                    heap = self.rises[asset] = []
                heapq.heappush(heap, (ceiling, version, account_id))
        self.live_of[account_id] = moving
        self.live += moving
        self.entries += moving

    def crossed(self, asset: str, mark: int) -> set[str]:
        """The accounts whose band on ``asset`` the mark leaves, and those "always" on it. The
        caller values each exactly and re-bands it (``put``) or ``forget``s it."""
        found = set(self.always.get(asset, ()))
        version = self.version
        popped = 0
        heap = self.falls.get(asset)
        while heap and -heap[0][0] > mark:
            _, v, account_id = heapq.heappop(heap)
            popped += 1
            if version.get(account_id) == v:
                found.add(account_id)
        heap = self.rises.get(asset)
        while heap and heap[0][0] < mark:
            _, v, account_id = heapq.heappop(heap)
            popped += 1
            if version.get(account_id) == v:
                found.add(account_id)
        self.entries -= popped
        return found

    def compact(self) -> None:
        """Drop stale heap entries once they outnumber the live ones (amortised O(1))."""
        if self.entries <= 4 * self.live + 16384:
            return
        version = self.version
        entries = 0
        for heaps in (self.falls, self.rises):
            for asset, heap in heaps.items():
                kept = [e for e in heap if version.get(e[2]) == e[1]]
                heapq.heapify(kept)
                heaps[asset] = kept
                entries += len(kept)
        self.entries = entries
        self.live = entries  # (every account a crossing found was re-banded or forgotten)


class _Group:
    """An input and the decisions recorded after it (R3.6)."""

    __slots__ = ("pos", "inp", "decisions", "well_formed", "fold_failed", "old_mark", "skip_fold")

    def __init__(self, pos: int, inp: s.Input | None, well_formed: bool) -> None:
        self.pos = pos
        self.inp = inp
        self.decisions: list[tuple[int, s.Decision, bytes]] = []
        self.well_formed = well_formed
        self.fold_failed = False
        self.skip_fold = False  # a malformed listing: only its seq is folded
        self.old_mark: int | None = None  # a price input: the mark before it


# ============================================================================ the audit


class _Auditor:
    def __init__(self, source: _Source, verifier_key: str | None, progress) -> None:
        self.src = source
        self.f = _Findings()
        self.progress = progress
        self.meta = source.meta()
        self.verifier_key = verifier_key or self.meta.get("verifier_key")

        # --- the log scan
        self.rows = 0  # stored events read (= tree size)
        self.last_seq = 0
        self.last_ts_us: int | None = None
        self.ts_cache: tuple[str, int | None] = ("", None)
        self.index_iter = source.index()
        self.index_next = next(self.index_iter, None)
        self.frontier = merkle.Frontier()
        self.dirty = -1  # the last tree index whose leaf is not event_index's
        self.aligned = True  # every seq so far at its position
        self.leaf_changed = 0  # the last seq whose payload does not hash to event_index.leaf
        self.node_iter = source.nodes()
        self.node_next = next(self.node_iter, None) if source.has_nodes else None
        self.check_input_ids = source.has_input_ids and "input_ids" not in source.broken
        self.input_rows_used = 0  # input_ids rows matched to the first recording of their id
        self.ids = _SeenIds()  # input id -> (seq, content digest) first recorded (R3.4)

        # --- the fold of the recorded events and the running totals (R12.1 to R12.3)
        self.folded = LedgerState()
        self.cache: dict[str, tuple[int, dict[str, int], dict[str, int]]] = {}
        self.asset_totals: dict[str, int] = {}
        self.instrument_totals: dict[str, int] = {}
        self.unbalanced: set[tuple[str, str]] = set()  # ("asset"|"instrument", id)
        self.reported_unbalanced: set[tuple[str, str]] = set()
        self.negative: set[tuple[str, str]] = set()
        self.liquidatable: set[str] = set()
        self.bands = _Bands()  # R12.4 between exact valuations (see _Bands)
        self.unvalued: set[str] = set()  # accounts that could not be valued (reported), not banded
        self.reband_all = False  # a check was skipped: value every account at the next one
        self.group_touched: set[str] = set()

        # --- the re-derivation (R12.5)
        self.derived = LedgerState()
        self.engine = Engine(self.derived)
        self.in_sync = True
        self.group: _Group | None = None
        self.unfoldable = False

        # --- checkpoints, snapshots
        self.checkpoints = self._load_checkpoints()
        self.cp_sizes = {cp.size for cp in self.checkpoints}
        self.roots: dict[int, bytes] = {0: verifier.EMPTY_ROOT}
        self.state_roots: dict[int, bytes] = {}
        self.state_sizes = {cp.size for cp in self.checkpoints if cp.state_root is not None}
        if 0 in self.state_sizes:
            self.state_roots[0] = _state_root(LedgerState())
        self.source = source
        self.snapshot_seqs = set(source.snapshot_seqs())
        self.pairs = self._consistency_pairs()
        self.needed = self._proof_keys()
        self.kept: dict[tuple[int, int], bytes] = {}  # recomputed nodes the proofs need
        self.kept_stored: dict[tuple[int, int], bytes] = {}  # stored nodes the proofs need

    # ------------------------------------------------------------------ checkpoints (§5)

    def _load_checkpoints(self) -> list[_Checkpoint]:
        out: list[_Checkpoint] = []
        key = self.verifier_key
        origin = self.meta.get("origin")
        if key is None:
            if self.src.checkpoints():
                self.f.add(0, "§5", "the ledger has no verifier key: no checkpoint can be verified")
            return out
        try:
            name, _, _ = verifier.parse_verifier_key(key)
        except ValueError as exc:
            self.f.add(0, "§5", f"the ledger's verifier key is malformed ({exc}): no checkpoint can be verified")
            return out
        if origin is not None and name != origin:
            self.f.add(0, "§5", f"the verifier key is named {name!r}, not the ledger's origin {origin!r}")
        for row, (size, note) in enumerate(self.src.checkpoints(), start=1):
            where = int(size) if type(size) is int and size >= 0 else 0
            label = f"checkpoint #{row} (size {size!r})"
            if not isinstance(note, str):
                self.f.add(where, "§5", f"{label} is not a text note")
                continue
            text = verifier.verify_note(note, key)
            if text is None:
                self.f.add(where, "§5", f"{label}: the signature does not verify with the ledger's verifier key")
                continue
            try:
                cp = verifier.parse_checkpoint(text)
            except ValueError as exc:
                self.f.add(where, "§5", f"{label}: signed, but not a checkpoint ({exc})")
                continue
            if cp.size != size:
                self.f.add(where, "§5", f"{label} is stored for size {size!r} but signs size {cp.size}")
                where = cp.size
            if origin is not None and cp.origin != origin:
                self.f.add(cp.size, "§5", f"{label} names origin {cp.origin!r}, not {origin!r}")
            state_root = None
            states = [e for e in cp.extensions if e.startswith("state ")]
            if len(states) != 1:
                self.f.add(cp.size, "§5", f"{label} has {len(states)} `state` extension lines, not 1")
            else:
                try:
                    state_root = _b64_hash(states[0][6:])
                except ValueError as exc:
                    self.f.add(cp.size, "§5", f"{label}: the state root is malformed ({exc})")
                    state_root = None
            out.append(_Checkpoint(row, cp.size, cp.root, state_root))
        return out

    def _consistency_pairs(self) -> list[tuple[_Checkpoint, _Checkpoint]]:
        """Consecutive checkpoints by size (equal sizes included): consistency is transitive."""
        ordered = sorted(self.checkpoints, key=lambda c: (c.size, c.row))
        return list(zip(ordered, ordered[1:]))

    def _proof_keys(self) -> set[tuple[int, int]]:
        rec = _KeyRecorder()
        for a, b in self.pairs:
            if 0 < a.size < b.size:
                merkle.consistency_proof(a.size, b.size, rec)
        return rec.keys

    def _finish_checkpoints(self) -> None:
        n = self.rows
        for cp in self.checkpoints:
            label = f"checkpoint #{cp.row} (size {cp.size})"
            if cp.size > n:
                self.f.add(cp.size, "§5", f"{label} signs more events than the log holds ({n})")
                continue
            if self.roots.get(cp.size) != cp.root:
                self.f.add(
                    cp.size,
                    "§5",
                    f"{label}: the root of the events as stored differs from the signed root "
                    "(a stored event was changed, inserted or removed at or before this size)",
                )
            if cp.state_root is not None:
                got = self.state_roots.get(cp.size)
                if got is not None and got != cp.state_root:
                    self.f.add(
                        cp.size,
                        "§5",
                        f"{label}: the state root of the recorded events at this size differs "
                        "from the signed state root",
                    )
        for a, b in self.pairs:
            if a.size == b.size:
                if a.root != b.root:
                    self.f.add(
                        b.size, "§5",
                        f"checkpoints #{a.row} and #{b.row} sign different roots for the same size {a.size}",
                    )
                elif a.state_root != b.state_root and None not in (a.state_root, b.state_root):
                    self.f.add(
                        b.size, "§5",
                        f"checkpoints #{a.row} and #{b.row} sign different state roots for size {a.size}",
                    )
                continue
            if a.size == 0 or b.size > n:
                continue  # every tree extends the empty one; beyond the log: reported above
            if self._consistent(a, b, self.kept):
                continue
            if self.roots.get(a.size) != a.root or self.roots.get(b.size) != b.root:
                # Not consistent with the log as stored (reported above); are they at least
                # consistent with each other, by the stored nodes?
                if self._consistent(a, b, self.kept_stored):
                    continue
            self.f.add(
                b.size,
                "§5",
                f"checkpoints #{a.row} (size {a.size}) and #{b.row} (size {b.size}) are not "
                "consistent with each other: they sign two different logs",
            )

    def _consistent(self, a: _Checkpoint, b: _Checkpoint, nodes: dict) -> bool:
        try:
            proof = merkle.consistency_proof(a.size, b.size, nodes)
        except (KeyError, ValueError):
            return False
        return verifier.verify_consistency(a.size, b.size, a.root, b.root, proof)

    # ------------------------------------------------------------------ the scan

    def run(self) -> AuditReport:
        for seq, rule, message in self.src.problems:
            self.f.add(seq, rule, message)
        self.src.problems.clear()
        foreign = self.src.foreign_rows()
        if foreign:
            self.f.add(0, "R3.1", f"stored_events holds {foreign} rows of another stream than the log")
        for page in self.src.events():
            for row in page:
                try:
                    self._row(row)
                except Exception as exc:  # a defect of the audit itself: say so, carry on
                    self._internal_error(row[0], exc)
            if self.progress is not None:
                self.progress(len(page))
        try:
            self._end_group()
        except Exception as exc:
            self._internal_error(self.last_seq, exc)
        self._finish_scan()
        for seq, rule, message in self.src.problems:
            self.f.add(seq, rule, message)
        return AuditReport(events=self.rows, findings=self.f.result())

    def _internal_error(self, seq: Any, exc: Exception) -> None:
        self.f.add(
            seq if type(seq) is int else self.last_seq, "audit",
            f"the audit could not check this event ({type(exc).__name__}: {exc}); "
            "the re-derivation continues from the recorded state",
            kind="audit",
        )
        self.group = None
        self.reband_all = True  # the group's R12.4 check may not have run
        self._resync()

    def _row(self, row: tuple) -> None:
        f = self.f
        pos, topic, payload = row
        if type(pos) is not int:
            f.add(self.last_seq + 1, "R3.1", f"a stored event has seq {_short(pos)}, not a number")
            return
        expected = self.last_seq + 1
        if pos != expected:
            if pos > expected:
                gap = f"seq {expected}" if pos == expected + 1 else f"seq {expected} to {pos - 1}"
                f.add(expected, "R3.1", f"{gap} missing from the log: the next stored event is seq {pos}")
            else:
                f.add(pos, "R3.1", f"seq {pos} after seq {self.last_seq}")
        self.last_seq = pos
        if isinstance(payload, str):  # a row rewritten as TEXT: the bytes are what they are
            payload = payload.encode("utf-8", "surrogateescape")
        if not isinstance(payload, bytes):
            f.add(pos, "§5", f"the stored event at seq {pos} holds no bytes ({type(payload).__name__})")
            payload = b""
        # §5: the Merkle tree over the payloads as stored.
        leaf = leaf_hash(payload)
        self.rows += 1
        size = self.rows
        event = self._decode(pos, topic, payload)
        if not self._match_index(pos, event, topic, leaf):
            self.dirty = size - 1  # stored nodes above this leaf are explained by it
        if pos != size:
            self.aligned = False  # stored nodes are by seq: past a gap they cannot match
        created = self.frontier.append((leaf,))
        if self.needed:
            if (0, size - 1) in self.needed:
                self.kept[(0, size - 1)] = leaf
            for level, idx, h in created:
                if (level, idx) in self.needed:
                    self.kept[(level, idx)] = h
        if self.aligned and (self.node_next is not None or created):
            self._match_nodes(size, created)
        if size in self.cp_sizes:
            self.roots[size] = self.frontier.root()
        if event is None:
            return
        self._ts(pos, event)
        if event.seq != pos:
            event = msgspec.structs.replace(event, seq=pos)
        if type(event) in _INPUT_TYPES:
            self._end_group()
            self.unfoldable = False
            well_formed = self._check_input(pos, event)  # type: ignore[arg-type]
            self.group = _Group(pos, event, well_formed)  # type: ignore[arg-type]
            self.group.skip_fold = self.unfoldable
            return
        group = self.group
        if group is None or group.inp is None or event.ref != group.inp.id:  # type: ignore[union-attr]
            if group is None:
                after = "before any input"
            elif group.inp is None:
                after = "after other decisions without their input"
            else:
                after = f"after input {group.inp.id!r}"
            f.add(
                pos, "R3.6",
                f"{_describe(event)} for input {event.ref!r} is recorded {after}, "  # type: ignore[union-attr]
                "not with the input that caused it",
                kind="R3.6 orphan decision",
            )
            self._end_group()
            self.group = _Group(pos, None, False)
        self.group.decisions.append((pos, event, payload))  # type: ignore[arg-type]

    def _decode(self, pos: int, topic: Any, payload: bytes) -> s.Event | None:
        f = self.f
        try:
            event = decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            f.add(pos, "§5", f"the stored event at seq {pos} is not a recorded event: {exc}", kind="§5 payload")
            return None
        again = canonical(event)
        if again != payload:
            f.add(
                pos, "§5",
                f"the stored event at seq {pos} is not in canonical form (interfaces §5): "
                f"{_diff(payload, again)}",
                kind="§5 payload",
            )
        tag = _tag(event)
        if topic != tag:
            f.add(pos, "R3.1", f"the stored event at seq {pos} is a {tag} but its row says {_short(topic)}")
        if event.seq != pos:
            f.add(
                pos, "R3.1",
                f"the event stored at seq {pos} says it is seq {event.seq} ({_describe(event)}): "
                "events were moved or reordered",
                kind="R3.1 moved",
            )
        return event

    def _ts_us(self, text: str) -> int | None:
        """``parse_ts`` of an event's ts, cached for the next events (a group shares its ts)."""
        cached, ts_us = self.ts_cache
        if text != cached:
            ts_us = parse_ts(text)
            self.ts_cache = (text, ts_us)
        return ts_us

    def _ts(self, pos: int, event: s.Event) -> None:
        ts_us = self._ts_us(event.ts)
        if ts_us is None:
            self.f.add(pos, "R3.2", f"seq {pos} has ts {event.ts!r}, not a timestamp")
            return
        if self.last_ts_us is not None and ts_us < self.last_ts_us:
            self.f.add(pos, "R3.2", f"ts goes back at seq {pos}: {event.ts} is before the previous event's ts",
                       kind="R3.2 ts")
        self.last_ts_us = ts_us

    def _match_index(self, pos: int, event: s.Event | None, topic: Any, leaf: bytes) -> bool:
        """Cross-check the event's event_index row; True when its leaf is the payload's."""
        f = self.f
        nxt = self.index_next
        while nxt is not None and not (type(nxt[0]) is int and nxt[0] >= pos):
            f.add(
                nxt[0] if type(nxt[0]) is int else pos, "R3.1",
                f"event_index has a row for seq {_short(nxt[0])} but the log has no such event",
                kind="R3.1 index",
            )
            nxt = self.index_next = next(self.index_iter, None)
        if nxt is None and "event_index" in self.src.broken:
            return True  # unreadable: reported once
        if nxt is None or nxt[0] != pos:
            f.add(pos, "R3.1", f"event_index has no row for seq {pos}", kind="R3.1 index")
            return False
        self.index_next = next(self.index_iter, None)
        _, ts_us, itype, ref, ileaf = nxt
        if (0, pos - 1) in self.needed:
            self.kept_stored[(0, pos - 1)] = ileaf
        if ileaf != leaf:
            f.add(
                pos, "§5",
                f"the stored event at seq {pos} does not hash to its recorded leaf "
                "(event_index.leaf): the event was changed after it was appended",
                kind="§5 leaf",
            )
            self.leaf_changed = pos
        if event is None:
            return ileaf == leaf
        tag = _tag(event)
        want_ref = event.id if type(event) in _INPUT_TYPES else event.ref  # type: ignore[union-attr]
        if itype != tag or ref != want_ref:
            f.add(
                pos, "R3.1",
                f"event_index says seq {pos} is {_short(itype)} of {_short(ref)}, "
                f"the event is {tag} of {want_ref!r}",
                kind="R3.1 index",
            )
        if ts_us != self._ts_us(event.ts):
            f.add(pos, "R3.2", f"event_index has another ts for seq {pos} than the event's {event.ts}",
                  kind="R3.1 index")
        return ileaf == leaf

    def _match_nodes(self, size: int, created: list[tuple[int, int, bytes]]) -> None:
        """Compare the stored Merkle nodes complete at ``size`` with the recomputed ones."""
        want = {level: (idx, h) for level, idx, h in created}
        nxt = self.node_next
        while nxt is not None and nxt.end <= size:
            if nxt.end == size and nxt.level in want:
                idx, h = want.pop(nxt.level)
                if (nxt.level, nxt.idx) in self.needed:
                    self.kept_stored[(nxt.level, nxt.idx)] = nxt.hash
                if nxt.hash != h and self.dirty < nxt.idx << nxt.level:
                    # (a node above a changed leaf differs too: that leaf is the finding)
                    self._node_finding(nxt.level, nxt.idx, "differs from the node of the events as stored")
            else:
                self._node_finding(nxt.level, nxt.idx, "is not a node of the log's tree")
            nxt = self.node_next = next(self.node_iter, None)
        if self.src.has_nodes and "merkle_nodes" not in self.src.broken:
            for level, (idx, _h) in want.items():
                self._node_finding(level, idx, "is missing from merkle_nodes")

    def _node_finding(self, level: Any, idx: Any, what: str) -> None:
        try:
            seq = (idx + 1) << level if 0 <= level < 64 and idx >= 0 else self.rows
        except TypeError:
            seq = self.rows
        self.f.add(seq, "§5", f"Merkle node (level {_short(level)}, index {_short(idx)}) {what}",
                   kind="§5 stored node")

    def _finish_scan(self) -> None:
        f = self.f
        while self.index_next is not None:
            nxt = self.index_next
            f.add(nxt[0] if type(nxt[0]) is int else self.rows, "R3.1",
                  f"event_index has a row for seq {_short(nxt[0])} but the log has no such event",
                  kind="R3.1 index")
            self.index_next = next(self.index_iter, None)
        while self.node_next is not None:
            nxt = self.node_next
            if self.aligned:
                self._node_finding(nxt.level, nxt.idx, "lies outside the log")
            self.node_next = next(self.node_iter, None)
        self.ids.flush()
        rows = self.src.input_id_count() if self.check_input_ids else 0
        if self.check_input_ids and rows != self.input_rows_used:
            # Rows left over: their ids are not recorded inputs (or are listed twice).
            unmatched = 0
            for id_, seq, _digest in self.src.input_id_rows():
                if not isinstance(id_, str) or self.ids.get(id_) is None:
                    unmatched += 1
                    f.add(seq if type(seq) is int else 0, "R3.4",
                          f"input_ids names input {_short(id_)} at seq {_short(seq)}, which is not that input",
                          kind="R3.4 input_ids")
            extra = rows - self.input_rows_used - unmatched
            if extra > 0:
                f.add(self.last_seq, "R3.4", f"input_ids has {extra} more rows than the inputs it names",
                      kind="R3.4 input_ids")
        for seq in sorted(self.snapshot_seqs):
            if seq > self.last_seq or seq < 0:
                f.add(seq, "R3.7", f"a stored snapshot is for seq {seq}, beyond the log", kind="snapshot")
        self._finish_checkpoints()

    # ------------------------------------------------------------------ inputs (R3.3, R3.4)

    def _check_input(self, pos: int, inp: s.Input) -> bool:
        """Is the recorded input well-formed at its point of the log? (what ingest checked)"""
        f = self.f
        ok = True
        try:
            body = content(inp)
        except Exception as exc:  # pragma: no cover - defensive
            f.add(pos, "R3.3", f"recorded input {inp.id!r} has no content: {exc}")
            return False
        digest = hashlib.sha256(body).digest()  # = canonical.content_digest(inp)
        first = self.ids.get(inp.id)
        if first is not None:
            same = "identical content" if first[1] == digest else "different content"
            f.add(pos, "R3.4", f"input id {inp.id!r} is recorded again ({same}; first at seq {first[0]})",
                  kind="R3.4 duplicate")
            ok = False
        else:
            self.ids.add(inp.id, pos, digest)
            if self.check_input_ids:
                row = self.src.input_id(inp.id)
                if row is not None:
                    self.input_rows_used += 1
                if row is None:
                    f.add(pos, "R3.4", f"input_ids has no row for input {inp.id!r} (seq {pos})",
                          kind="R3.4 input_ids")
                elif row[0] != pos or (row[1] != digest and self.leaf_changed != pos):
                    what = "seq" if row[0] != pos else "content digest"
                    f.add(pos, "R3.4", f"input_ids has another {what} for input {inp.id!r} (seq {pos})",
                          kind="R3.4 input_ids")
        try:
            parsed = parse_line(body.decode("utf-8"))
        except Exception as exc:  # pragma: no cover - parse_line returns Malformed
            parsed = Malformed("invalid_json", str(exc))
        if isinstance(parsed, Malformed):
            f.add(pos, "R3.3", f"recorded input {inp.id!r} is malformed: {parsed.message} [{parsed.code}]",
                  kind="R3.3")
            return False
        if parsed != msgspec.structs.replace(inp, seq=0):
            f.add(pos, "R3.3", f"recorded input {inp.id!r} is not in normal form (R1.1, R3.2): "
                  f"{_diff(canonical(inp), canonical(msgspec.structs.replace(parsed, seq=inp.seq)))}",
                  kind="R3.3")
            ok = False
        st = self.folded
        try:
            refused = check_input(parsed, Listings(st.assets, st.instruments, st.settlement, st.scale))
        except Exception as exc:  # pragma: no cover - defensive
            refused = Malformed("bad_listing", f"cannot be checked: {exc!r}")
        if refused is not None:
            message = f"recorded input {inp.id!r} is malformed at its point of the log: {refused.message} [{refused.code}]"
            if type(inp) in (s.Asset, s.Instrument):
                # A listing that breaks R1.4 or R4 would take the fold off the grids the rules
                # assume (a fractional notional scale, a second settlement asset): it is left
                # out of the state, as ingest would have refused it.
                self.unfoldable = True
                message += "; left out of the state"
            f.add(pos, "R3.3", message, kind="R3.3")
            ok = False
        return ok

    # ------------------------------------------------------------------ one input and its decisions

    def _end_group(self) -> None:
        group, self.group = self.group, None
        if group is None:
            return
        self._check_shape(group)
        self._fold_group(group)
        self._rederive(group)

    def _check_shape(self, group: _Group) -> None:
        """R3.6: the decisions an input may be recorded with."""
        inp = group.inp
        if inp is None:
            return
        types = [type(d) for _, d, _ in group.decisions]
        problem = None
        for pos, dec, _ in group.decisions:
            if dec.ts != inp.ts:
                problem = (pos, f"{_describe(dec)} has ts {dec.ts}, not its input's {inp.ts}")
                break
        if problem is None and s.Rejected in types:
            pos = group.decisions[types.index(s.Rejected)][0]
            if types != [s.Rejected]:
                problem = (pos, f"input {inp.id!r} is recorded with a rejection and other decisions")
            elif type(inp) not in _REJECTABLE:
                problem = (pos, f"a {_tag(inp)} input cannot be rejected (R3.5)")
        if problem is None:
            settled = types.count(s.FundingSettled)
            if type(inp) is s.Funding and (settled != 1 or types[0] is not s.FundingSettled):
                where = group.decisions[0][0] if group.decisions else group.pos
                problem = (where, f"funding input {inp.id!r} is recorded with {settled} funding_settled "
                           "decisions, not exactly 1 first")
            elif type(inp) is not s.Funding and settled:
                pos = group.decisions[types.index(s.FundingSettled)][0]
                problem = (pos, f"a funding_settled decision for the {_tag(inp)} input {inp.id!r}")
        if problem is not None:
            self.f.add(problem[0], "R3.6", problem[1], kind="R3.6 shape")

    def _fold_group(self, group: _Group) -> None:
        """Fold the recorded events of the group one by one, checking R12.1 to R12.3 after
        each, then R12.4 after the whole group."""
        st = self.folded
        inp = group.inp
        self.group_touched = set()
        if inp is not None:
            first = group.decisions[0][1] if group.decisions else None
            rejected = type(first) is s.Rejected and first.ref == inp.id  # type: ignore[union-attr]
            rejected = rejected or group.skip_fold
            _continue_at(st, group.pos)
            if type(inp) is s.Price:
                group.old_mark = st.marks.get(inp.asset)
            try:
                st.apply_input(inp, rejected)
            except Exception as exc:
                self._fold_failed(group, group.pos, inp, exc)
            self._after_event(group.pos)
        for pos, dec, _ in group.decisions:
            _continue_at(st, pos)
            try:
                st.apply_decision(dec)
            except Exception as exc:
                self._fold_failed(group, pos, dec, exc)
            self._after_event(pos)
        self._check_liquidatable(group)

    def _fold_failed(self, group: _Group, pos: int, event: s.Event, exc: Exception) -> None:
        self.f.add(
            pos, "R12.5",
            f"the recorded {_describe(event)} cannot be applied to the state of the log before it "
            f"({type(exc).__name__}: {exc})",
            kind="R12.5 fold",
        )
        group.fold_failed = True  # the state is partly folded: re-derive from it afterwards
        st = self.folded
        if st.seq != pos:  # advance may have failed before numbering the event
            st.seq = pos

    def _after_event(self, pos: int) -> None:
        st = self.folded
        touched = st.touched
        if touched:
            for account_id in touched:
                self._account_moved(pos, account_id)
            self.group_touched |= touched
            touched.clear()
            if self.unbalanced != self.reported_unbalanced:
                self._report_totals(pos)
        if pos in self.state_sizes:
            try:
                self.state_roots[pos] = _state_root(st)
            except Exception as exc:
                self.f.add(pos, "§5", f"the state at seq {pos} has no state root ({type(exc).__name__}: {exc})")
        stored = self.source.snapshot(pos) if pos in self.snapshot_seqs else None
        if stored is not None:
            try:
                derived = snapshot.encode(st)
                same = derived == stored
                if not same and snapshot.format_of(stored) != snapshot.FORMAT:
                    # A snapshot of an earlier format (still read by state queries) is
                    # compared by the state it holds, re-encoded in today's format.
                    same = snapshot.encode(snapshot.decode(stored)) == derived
            except Exception:  # an undecodable snapshot differs
                same = False
            if not same:
                self.f.add(
                    pos, "R3.7",
                    f"the stored snapshot at seq {pos} differs from the state folded from the log "
                    "(state queries at or after it would be answered from it)",
                    kind="snapshot",
                )

    def _account_moved(self, pos: int, account_id: str) -> None:
        """Running totals (R12.1, R12.2) from one account's change; R12.3 on the account."""
        acct = self.folded.accounts.get(account_id)
        cash, balances, positions = (acct.cash, acct.balances, acct.positions) if acct else (0, {}, {})
        old = self.cache.get(account_id)
        if old is None:
            old = (0, {}, {})
        settlement = self.folded.settlement or ""
        if cash != old[0]:
            self._add_total("asset", self.asset_totals, settlement, cash - old[0])
        old_balances = old[1]
        if balances != old_balances:  # (unchanged: the totals and R12.3 are as they were)
            for asset in balances.keys() | old_balances.keys():
                d = balances.get(asset, 0) - old_balances.get(asset, 0)
                if d:
                    self._add_total("asset", self.asset_totals, asset, d)
            if account_id != EXTERNAL:  # R12.3
                for asset, units in balances.items():
                    key = (account_id, asset)
                    if units < 0:
                        if key not in self.negative:
                            self.negative.add(key)
                            self.f.add(pos, "R12.3",
                                       f"after seq {pos} {account_id} holds {self._amount(asset, units)} {asset}, "
                                       "a negative balance of a non-settlement asset")
                    else:
                        self.negative.discard(key)
                for asset in old_balances.keys() - balances.keys():
                    self.negative.discard((account_id, asset))
            old_balances = dict(balances)
        old_positions = old[2]
        if positions != old_positions:
            for instrument in positions.keys() | old_positions.keys():
                after = positions.get(instrument, 0)
                before = old_positions.get(instrument, 0)
                if after != before:
                    self._add_total("instrument", self.instrument_totals, instrument, after - before)
            old_positions = dict(positions)
        self.cache[account_id] = (cash, old_balances, old_positions)

    def _add_total(self, kind: str, totals: dict[str, int], key: str, d: int) -> None:
        total = totals.get(key, 0) + d
        totals[key] = total
        if total:
            self.unbalanced.add((kind, key))
        else:
            self.unbalanced.discard((kind, key))

    def _amount(self, asset: str, units: int) -> str:
        st = self.folded
        try:
            decimals = st.scale if asset in ("", st.settlement) else st.assets[asset].decimals
            return fmt_units(units, decimals)
        except Exception:
            return f"{units} units of"

    def _report_totals(self, pos: int) -> None:
        for kind, key in sorted(self.unbalanced - self.reported_unbalanced):
            if kind == "asset":
                total = self.asset_totals.get(key, 0)
                self.f.add(pos, "R12.1", f"after seq {pos} the balances of {key or 'the settlement asset'} "
                           f"over all accounts sum to {self._amount(key, total)}, not 0")
            else:
                total = self.instrument_totals.get(key, 0)
                try:
                    shown = fmt_units(total, self.folded.instruments[key].qty_decimals)
                except Exception:
                    shown = f"{total} units"
                self.f.add(pos, "R12.2", f"after seq {pos} the positions in {key} sum to {shown}, not 0")
        self.reported_unbalanced = set(self.unbalanced)

    def _check_liquidatable(self, group: _Group) -> None:
        """R12.4 after an input with all its decisions, on the folded state.

        R12.4 held after the previous input (or was reported), so only an account whose
        equity or requirements can have moved since its last exact valuation can have become
        liquidatable (R6.7; R10.1 lets the pass itself use any method that finds the same
        accounts). Valued exactly here, and re-banded from that valuation (``_Bands``): the
        accounts the group touched (cash, balances or positions moved), for a listing change
        the holders of what it lists (a haircut or MMF changed), for a price the accounts whose
        band the new mark leaves (all holders on a first mark), and the accounts reported
        liquidatable (until they are no longer) or not valuable. Every other account is inside
        all its bands, and so not liquidatable: see ``_Bands`` for the bound.
        """
        st = self.folded
        bands = self.bands
        exact = self.group_touched  # (rebuilt by the next group's fold)
        if self.liquidatable:
            exact |= self.liquidatable  # reported already; dropped when no longer
        if self.reband_all:  # a check was skipped (an error of the audit): start afresh
            self.reband_all = False
            exact.update(st.accounts)
        inp = group.inp
        kind = type(inp)
        if kind is s.Price or kind is s.Asset or kind is s.Instrument:
            if self.unvalued:
                exact |= self.unvalued  # tried again when the marks or the listings change
            try:
                if kind is s.Price:
                    asset = inp.asset  # type: ignore[union-attr]
                    new = st.marks.get(asset)
                    if group.old_mark is None or new is None:
                        # A first mark (R5.2: the asset counted 0 until now): value every holder.
                        exact |= st.collateral_holders.get(asset, set())
                        for instrument in st.by_underlying.get(asset, ()):
                            exact |= st.holders.get(instrument, set())
                    elif new != group.old_mark:
                        exact |= bands.crossed(asset, new)
                elif kind is s.Asset:
                    exact |= st.collateral_holders.get(inp.asset, set())  # type: ignore[union-attr]
                else:
                    exact |= st.holders.get(inp.instrument, set())  # type: ignore[union-attr]
            except Exception as exc:
                self._valuation_failed(group, "", exc)
                exact.update(st.accounts)  # value everyone from scratch
        last = group.decisions[-1][0] if group.decisions else group.pos
        accounts = st.accounts
        marks = st.marks
        for account_id in exact:
            if is_system(account_id):
                continue
            acct = accounts.get(account_id)
            if acct is None:
                bands.forget(account_id)
                self.unvalued.discard(account_id)
                continue
            try:
                buffer, slopes = self._measure(acct)
                if buffer < 0:
                    v = value(st, acct)  # R6.7 by the book, for the figures of the finding
                    buffer = v.equity - v.maintenance_margin
                bands.put(account_id, buffer, slopes, marks)
            except Exception as exc:
                bands.forget(account_id)
                if account_id not in self.unvalued:  # reported when it starts to fail
                    self.unvalued.add(account_id)
                    self._valuation_failed(group, account_id, exc)
                continue
            self.unvalued.discard(account_id)
            if buffer < 0:
                if account_id not in self.liquidatable:
                    self.liquidatable.add(account_id)
                    self.f.add(
                        last, "R12.4",
                        f"after seq {last} {account_id} is liquidatable: equity "
                        f"{fmt_units(v.equity, st.scale)} < maintenance margin "
                        f"{fmt_units(v.maintenance_margin, st.scale)}",
                        kind="R12.4",
                    )
            else:
                self.liquidatable.discard(account_id)
        bands.compact()

    def _valuation_failed(self, group: _Group, account_id: str, exc: Exception) -> None:
        last = group.decisions[-1][0] if group.decisions else group.pos
        who = f"{account_id} " if account_id else "the accounts "
        self.f.add(last, "R12.4", f"after seq {last} {who}cannot be valued ({type(exc).__name__}: {exc})",
                   kind="R12.4 valuation")

    def _measure(self, acct) -> tuple[int, dict[str, list[int]]]:
        """Equity − MM of an account (R6, every term rounded on its own per R1.3: collateral
        down, each requirement up) and, per asset a whose mark its terms depend on, [P, Q, N_a]:
        the exact slope P/Q (Q > 0) of those terms in the mark and their number (``_Bands``).

        Equity − MM = cash + Σ floor(b·p·(1 − h)·10^S / 10^(dec + pdec)) over balances b > 0
        with a mark (R5.2: 0 without) + Σ (n − ceil(|n|·MMF)), n = q·p·ns, over positions."""
        st = self.folded
        buffer = acct.cash
        slopes: dict[str, list[int]] = {}
        marks = st.marks
        if acct.balances:
            assets = st.assets
            ten_s = 10**st.scale
            for asset, units in acct.balances.items():
                if units <= 0:
                    continue
                mark = marks.get(asset)
                if mark is None:
                    continue
                info = assets[asset]
                num = units * (info.haircut_den - info.haircut_num) * ten_s
                den = 10 ** (info.decimals + info.price_decimals) * info.haircut_den
                buffer += (num * mark) // den  # floor: counts for the account
                slopes[asset] = [num, den, 1]
        instruments = st.instruments
        for instrument, qty in acct.positions.items():
            info = instruments[instrument]
            asset = info.underlying
            linear = qty * info.notional_scale
            n = linear * marks[asset]
            num, den = info.mmf_num, info.mmf_den
            buffer += n + ((-n if n > 0 else n) * num) // den  # n − ceil(|n|·MMF)
            p = linear * den - (linear if linear > 0 else -linear) * num  # slope (p / den)
            slope = slopes.get(asset)
            if slope is None:
                slopes[asset] = [p, den, 1]
            elif slope[1] == den:
                slope[0] += p
                slope[2] += 1
            else:
                slope[0] = slope[0] * den + p * slope[1]
                slope[1] *= den
                slope[2] += 1
        return buffer, slopes

    # ------------------------------------------------------------------ R12.5

    def _rederive(self, group: _Group) -> None:
        inp = group.inp
        if inp is None:  # decisions without their input: reported as R3.6
            self._resync()
            return
        if not group.well_formed or not self.in_sync:
            # Ingest would have refused it (reported): the rules have nothing to re-derive.
            self._resync()
            return
        derived = self.derived
        _continue_at(derived, group.pos)
        try:
            got = self.engine.process(inp)
        except Exception as exc:
            self.f.add(group.pos, "R12.5",
                       f"re-running the rules on {_describe(inp)} fails ({type(exc).__name__}: {exc})",
                       kind="R12.5")
            self._resync()
            return
        recorded = group.decisions
        mismatch = None
        differing = 0
        for j in range(max(len(got), len(recorded))):
            mine = canonical(got[j]) if j < len(got) else None
            theirs = recorded[j][2] if j < len(recorded) else None
            if mine == theirs:
                continue
            differing += 1
            if mismatch is not None:
                continue
            if theirs is None:
                last = recorded[-1][0] if recorded else group.pos
                mismatch = (last, f"{_describe(inp)}: the rules make a {_describe(got[j])} "  # type: ignore[index]
                            f"that is not recorded after seq {last}")
            elif mine is None:
                mismatch = (recorded[j][0], f"the recorded {_describe(recorded[j][1])} of {_describe(inp)} "
                            "is not a decision of the rules")
            else:
                mismatch = (recorded[j][0], f"the recorded {_describe(recorded[j][1])} of {_describe(inp)} "
                            f"differs from the rules' decision: {_diff(theirs, mine)}")
        if mismatch is not None:
            more = f" ({differing - 1} more decisions of this input differ)" if differing > 1 else ""
            self.f.add(mismatch[0], "R12.5", mismatch[1] + more, kind="R12.5")
        if mismatch is not None or group.fold_failed:
            self._resync()

    def _resync(self) -> None:
        """Continue the re-derivation from the recorded state (one change, one finding)."""
        try:
            self.derived = _clone(self.folded)
            self.engine = Engine(self.derived)
            self.in_sync = True
        except Exception:
            self.in_sync = False  # the recorded state cannot even be copied: stop re-deriving


# ============================================================================ entry point


def run_audit(
    store: LogStore,
    progress: Callable[[int], None] | None = None,
    verifier_key: str | None = None,
) -> AuditReport:
    """Audit the whole log of ``store`` (interfaces §3.2); never raises on a tampered store.

    ``progress(n)`` is called after every page of events with the number of events read
    since the previous call (as ``click.progressbar``'s ``update`` wants it; the total is the
    head seq). ``verifier_key`` is a verifier key known out of band (as printed by
    ``clearing init``); by default the ledger's own (``meta``) is used.

    Raises ``StoreError("store_missing")`` when there is no ledger (a usage error, exit 2).
    """
    if not store.exists():
        raise StoreError("store_missing", f"no ledger at {store.url}")
    source = _source_for(store)
    auditor = None
    try:
        auditor = _Auditor(source, verifier_key, progress)
        return auditor.run()
    finally:
        if auditor is not None:
            auditor.ids.close()
        source.close()
