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
  balances checked on touched accounts, and for R12.4 only the accounts the group touched plus
  the holders of assets whose mark or listing the group changed are valued (every other
  account keeps its equity and requirements exactly; of the holders of a repriced asset only
  those the move goes against, checked against a lower bound first, see ``_repriced``);
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
from projections.valuation import collateral_value, margin_term, value

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

    def input_ids(self) -> dict[str, tuple[Any, Any]]:
        return {}

    def snapshots(self) -> dict[int, bytes]:
        return {}

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

    def input_ids(self) -> dict[str, tuple[Any, Any]]:
        rows = self._all("input_ids", "SELECT id, seq, digest FROM input_ids")
        return {id_: (seq, digest) for id_, seq, digest in rows}

    def snapshots(self) -> dict[int, bytes]:
        rows = self._all("snapshots", "SELECT seq, state FROM snapshots ORDER BY seq")
        return {seq: state for seq, state in rows if type(seq) is int}

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
        self.input_rows = source.input_ids() if source.has_input_ids else {}
        self.check_input_ids = source.has_input_ids and "input_ids" not in source.broken
        self.ids: dict[str, tuple[int, bytes]] = {}  # input id -> (seq, content) first recorded

        # --- the fold of the recorded events and the running totals (R12.1 to R12.3)
        self.folded = LedgerState()
        self.cache: dict[str, tuple[int, dict[str, int], dict[str, int]]] = {}
        self.asset_totals: dict[str, int] = {}
        self.instrument_totals: dict[str, int] = {}
        self.unbalanced: set[tuple[str, str]] = set()  # ("asset"|"instrument", id)
        self.reported_unbalanced: set[tuple[str, str]] = set()
        self.negative: set[tuple[str, str]] = set()
        self.liquidatable: set[str] = set()
        self.bounds: dict[str, list] = {}  # account -> [lower bound of equity − MM, {asset: terms}]
        self.longs: dict[str, set[str]] = {}  # instrument -> accounts with a long position
        self.shorts: dict[str, set[str]] = {}  # instrument -> accounts with a short position
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
        self.snapshots = source.snapshots()
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

    def _ts(self, pos: int, event: s.Event) -> None:
        text, ts_us = self.ts_cache
        if event.ts != text:
            ts_us = parse_ts(event.ts)
            self.ts_cache = (event.ts, ts_us)
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
        if ts_us != parse_ts(event.ts):
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
        for id_, (seq, _digest) in self.input_rows.items():
            f.add(seq if type(seq) is int else 0, "R3.4",
                  f"input_ids names input {id_!r} at seq {_short(seq)}, which is not that input",
                  kind="R3.4 input_ids")
        for seq in self.snapshots:
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
            self.ids[inp.id] = (pos, digest)
            if self.check_input_ids:
                row = self.input_rows.pop(inp.id, None)
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
        stored = self.snapshots.get(pos)
        if stored is not None:
            try:
                same = snapshot.encode(st) == stored
            except Exception:  # pragma: no cover - defensive
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
        if balances or old[1]:
            for asset in balances.keys() | old[1].keys():
                d = balances.get(asset, 0) - old[1].get(asset, 0)
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
                for asset in old[1].keys() - balances.keys():
                    self.negative.discard((account_id, asset))
        if positions or old[2]:
            for instrument in positions.keys() | old[2].keys():
                after = positions.get(instrument, 0)
                before = old[2].get(instrument, 0)
                if after != before:
                    self._add_total("instrument", self.instrument_totals, instrument, after - before)
                    if (after > 0) != (before > 0):
                        side = self.longs.setdefault(instrument, set())
                        side.add(account_id) if after > 0 else side.discard(account_id)
                    if (after < 0) != (before < 0):
                        side = self.shorts.setdefault(instrument, set())
                        side.add(account_id) if after < 0 else side.discard(account_id)
        self.cache[account_id] = (cash, dict(balances), dict(positions))

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
        """R12.4 after an input with all its decisions.

        Only an account whose holdings or terms changed can have become liquidatable: the
        accounts the group touched and, for a listing change, the holders of what it lists
        are valued exactly. For a price input see ``_repriced``: the holders the new mark
        moves against are checked against a lower bound of their margin buffer first.
        """
        st = self.folded
        exact = set(self.group_touched)
        if self.liquidatable:
            exact |= self.liquidatable  # reported already; dropped when no longer
        inp = group.inp
        kind = type(inp)
        try:
            if kind is s.Price:
                self._repriced(inp.asset, group.old_mark, exact)  # type: ignore[union-attr]
            elif kind is s.Asset:
                exact |= st.collateral_holders.get(inp.asset, set())  # type: ignore[union-attr]
            elif kind is s.Instrument:
                exact |= st.holders.get(inp.instrument, set())  # type: ignore[union-attr]
        except Exception as exc:
            self._valuation_failed(group, "", exc)
            self.bounds.clear()  # value everyone it concerns from scratch
        last = group.decisions[-1][0] if group.decisions else group.pos
        for account_id in exact:
            if is_system(account_id):
                continue
            acct = st.accounts.get(account_id)
            if acct is None:
                self.bounds.pop(account_id, None)
                continue
            try:
                contributions = self._contributions(acct)
                buffer = acct.cash + sum(contributions.values())
                self.bounds[account_id] = [buffer, contributions]
                if buffer < 0:
                    v = value(st, acct)  # R6.7 by the book, for the figures of the finding
                    buffer = v.equity - v.maintenance_margin
            except Exception as exc:
                self._valuation_failed(group, account_id, exc)
                self.bounds.pop(account_id, None)
                continue
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

    def _valuation_failed(self, group: _Group, account_id: str, exc: Exception) -> None:
        last = group.decisions[-1][0] if group.decisions else group.pos
        who = f"{account_id} " if account_id else "the accounts "
        self.f.add(last, "R12.4", f"after seq {last} {who}cannot be valued ({type(exc).__name__}: {exc})",
                   kind="R12.4 valuation")

    def _contributions(self, acct) -> dict[str, int]:
        """Equity − MM (R6) of an account is its cash plus, per asset a, the terms that depend
        on the mark of a: the collateral value of its balance of a and, per position on an
        instrument with underlying a, q·p·ns − ceil(|q|·p·ns·MMF) (R1.3 rounding per term)."""
        st = self.folded
        out: dict[str, int] = {}
        for asset, units in acct.balances.items():
            if units > 0:
                out[asset] = collateral_value(st, asset, units)
        marks = st.marks
        for instrument, qty in acct.positions.items():
            info = st.instruments[instrument]
            n = qty * marks[info.underlying] * info.notional_scale
            term = n - margin_term(n if n > 0 else -n, info.mmf_num, info.mmf_den)
            out[info.underlying] = out.get(info.underlying, 0) + term
        return out

    def _repriced(self, asset: str, old: int | None, exact: set[str]) -> None:
        """The holders of ``asset`` a new mark can have made liquidatable, into ``exact``.

        Every term of equity − MM that depends on the mark p of an asset is monotonic in p:
        a long position's q·p·ns − ceil(q·p·ns·MMF) and a balance's floor(b·p·(1 − h)) never
        fall when p rises (with integers x, y >= 0: ceil((x + y)·MMF) − ceil(x·MMF) <= y, as
        MMF < 1), and a short position's terms never rise. So when the mark rises only holders
        of a short position on the asset can lose, and when it falls only holders of a long
        position or of the asset itself; every other holder keeps equity >= MM.

        For the ones it can hurt, ``self.bounds[h]`` = [B, {a: c_a}] keeps a lower bound B of
        the buffer equity − MM, B = cash + Σ c_a with every c_a <= the true terms of a: exact
        when the account was last valued, and a move in the account's favour only raises the
        true terms. Here c_asset is recomputed exactly; while B >= 0 the account cannot be
        liquidatable; when B < 0 it is valued exactly.
        """
        st = self.folded
        new = st.marks.get(asset)
        on_asset = st.by_underlying.get(asset, ())
        if old is None or new is None:  # a first mark: value every holder exactly
            exact.update(st.collateral_holders.get(asset, ()))
            for instrument in on_asset:
                exact.update(st.holders.get(instrument, ()))
            return
        if new == old:
            return
        if new > old:
            hurt: set[str] = set()
            for instrument in on_asset:
                hurt.update(self.shorts.get(instrument, ()))
        else:
            hurt = set(st.collateral_holders.get(asset, ()))
            for instrument in on_asset:
                hurt.update(self.longs.get(instrument, ()))
        hurt -= exact
        if not hurt:
            return
        terms = []
        for instrument in on_asset:
            info = st.instruments[instrument]
            terms.append((instrument, new * info.notional_scale, info.mmf_num, info.mmf_den))
        collateral = asset in st.collateral_holders
        bounds = self.bounds
        accounts = st.accounts
        for account_id in hurt:
            bound = bounds.get(account_id)
            if bound is None:
                exact.add(account_id)
                continue
            acct = accounts[account_id]
            c = 0
            if collateral:
                units = acct.balances.get(asset, 0)
                if units > 0:
                    c = collateral_value(st, asset, units)
            positions = acct.positions
            for instrument, scaled_mark, num, den in terms:
                qty = positions.get(instrument)
                if qty:
                    n = qty * scaled_mark
                    c += n + ((-n if n > 0 else n) * num) // den  # n − ceil(|n|·MMF)
            before = bound[1].get(asset, 0)
            if c != before:
                bound[0] += c - before
                bound[1][asset] = c
            if bound[0] < 0:
                exact.add(account_id)

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
    try:
        return _Auditor(source, verifier_key, progress).run()
    finally:
        source.close()
