"""The read model: the ledger as plain SQLite tables, in a file of its own.

An analyst can open the file with any SQLite tool (``sqlite3 clearing.db.read.db``). It is
derived data, kept up to date by ``ReadModel.catch_up``: a catch-up loop over the log that
writes each batch's rows and its position in the log in ONE transaction, through the
``eventsourcing`` library's ``SQLiteTrackingRecorder`` (tracking record
``Tracking("clearing", seq)``, the log ``seq`` being the position). So every event is applied
exactly once, and a crash at any point leaves the file at the end of the last committed batch,
from where the next ``catch_up`` resumes. Deleting the file and catching up rebuilds it.

Tables (every amount, quantity and price is TEXT holding an R1.1 decimal string, never REAL;
integers only for seq, ts_us and 0/1 flags):

* ``accounts(account, parent, is_system, created_seq, equity, initial_margin,
  maintenance_margin, free_collateral, liquidatable, updated_seq)`` — one row per account, valued
  at the marks of the read model's position. ``parent`` is ``owner`` for a sub-account
  ``owner/name`` (R2.1). ``updated_seq`` is the last event that moved the account's balances or
  positions or changed the mark or parameters of something it holds.
* ``balances(account, asset, amount)``, ``positions(account, instrument, qty)`` — zero rows are
  left out, as in the state output (interfaces §4; the settlement asset's balance is the cash).
* ``marks(asset, price, seq, ts)`` — the latest mark of every asset that has one.
* ``events(seq, ts, ts_us, type, ref, account, counterparty, instrument, asset, amount, qty,
  price, reason, summary)`` — the timeline, one row per log event.
* ``insurance_fund(seq, ts, cash)`` — the cash of ``@insurance`` (R11.1) after every event that
  changed it (the first row, at seq 1, is the fund's opening value 0).
* ``meta(key, value)`` — format, rules, the store's origin and the leaf hash of the last event
  applied (to notice a read model that belongs to another log).
* ``tracking`` — the library's tracking table (the position).

The rows are exactly what ``projections.report.account_entry`` and ``marks`` give for the state
at the read model's position.

Batching: the log is read in pages of ``batch`` events and one transaction is written per page.
An input's effect depends on whether the next event is its ``rejected`` decision (R3.5), so a
batch ends only where the next event is an input (an input/decision group boundary), or at the
head (an append is always whole groups), or at an explicit ``upto`` with one event of
look-ahead. A group larger than a page is carried into the next page.

Layer rule: this module imports ``events`` and ``projections`` only.
"""

from __future__ import annotations

import os
import sqlite3
from itertools import islice
from typing import Any, Iterable, Sequence
from urllib.parse import quote

import sqlite_utils
from eventsourcing.persistence import Tracking
from eventsourcing.sqlite import SQLiteCursor, SQLiteDatastore, SQLiteTrackingRecorder

from events import schema as s
from events.canonical import decode, leaf_hash
from events.numbers import fmt_units
from events.schema import INPUT_TAGS
from events.store import LogStore
from events.timestamps import format_ts, parse_ts
from projections.history import state_at_seq
from projections.report import RULES, account_entry
from projections.state import FEES, EXTERNAL, INSURANCE, Folder, LedgerState, is_system

__all__ = ["APPLICATION_NAME", "FORMAT", "ReadModel", "ReadModelError", "default_path"]

#: The upstream "application" name in the tracking table.
APPLICATION_NAME = "clearing"
#: Version of the read model's table layout (``meta.format``).
FORMAT = "1"
#: Suffix of the default read-model path next to an SQLite store.
SUFFIX = ".read.db"
#: ``PRAGMA application_id`` of a read-model file ("CLRM"; the ledger itself is "CLRG").
APPLICATION_ID = 0x434C524D


def default_path(store_path: str) -> str:
    """The default read-model file of an SQLite store: ``<store>.read.db``."""
    return store_path + SUFFIX


class ReadModelError(Exception):
    """A read model that cannot be caught up from this store.

    Codes: ``readmodel_invalid`` (the file is something else, such as the ledger itself),
    ``readmodel_mismatch`` (it was built from another log, or the log it was built from
    changed), ``readmodel_ahead`` (its position is past the store's head), ``readmodel_conflict``
    (another process advanced it while this batch was being computed; retry).
    """

    def __init__(self, code: str, message: str = "") -> None:
        self.code = code
        self.message = message or code
        super().__init__(self.message)

    def __reduce__(self):
        return (type(self), (self.code, self.message))


# --- schema -----------------------------------------------------------------------------------
# (name, columns, pk, not_null, indexes); every money/quantity column is str (TEXT).
_TABLES: list[tuple[str, dict[str, type], Any, set[str], list[tuple[str, ...]]]] = [
    (
        "accounts",
        {
            "account": str,
            "parent": str,
            "is_system": int,
            "created_seq": int,
            "equity": str,
            "initial_margin": str,
            "maintenance_margin": str,
            "free_collateral": str,
            "liquidatable": int,
            "updated_seq": int,
        },
        "account",
        {"account", "is_system", "created_seq", "equity", "initial_margin", "maintenance_margin",
         "free_collateral", "liquidatable", "updated_seq"},
        [("parent",), ("liquidatable",)],
    ),
    (
        "balances",
        {"account": str, "asset": str, "amount": str},
        ("account", "asset"),
        {"account", "asset", "amount"},
        [("asset",)],
    ),
    (
        "positions",
        {"account": str, "instrument": str, "qty": str},
        ("account", "instrument"),
        {"account", "instrument", "qty"},
        [("instrument",)],
    ),
    (
        "marks",
        {"asset": str, "price": str, "seq": int, "ts": str},
        "asset",
        {"asset", "price", "seq", "ts"},
        [],
    ),
    (
        "events",
        {
            "seq": int,
            "ts": str,
            "ts_us": int,
            "type": str,
            "ref": str,
            "account": str,
            "counterparty": str,
            "instrument": str,
            "asset": str,
            "amount": str,
            "qty": str,
            "price": str,
            "reason": str,
            "summary": str,
        },
        "seq",
        {"seq", "ts", "ts_us", "type", "ref", "summary"},
        # The timeline of an account (either side), of a type, of a time range. Each index
        # costs about as much as the row itself on a rebuild, so no more than these.
        [("account", "seq"), ("counterparty", "seq"), ("type", "seq"), ("ts_us",)],
    ),
    (
        "insurance_fund",
        {"seq": int, "ts": str, "cash": str},
        "seq",
        {"seq", "ts", "cash"},
        [],
    ),
    (
        "meta",
        {"key": str, "value": str},
        "key",
        {"key", "value"},
        [],
    ),
]

_EVENT_COLUMNS = list(_TABLES[4][1])
_INSERT_EVENT = (
    f"INSERT INTO events ({', '.join(_EVENT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_EVENT_COLUMNS))})"
)
_UPSERT_ACCOUNT = (
    "INSERT INTO accounts (account, parent, is_system, created_seq, equity, initial_margin, "
    "maintenance_margin, free_collateral, liquidatable, updated_seq) "
    "VALUES (?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT (account) DO UPDATE SET equity = excluded.equity, "
    "initial_margin = excluded.initial_margin, "
    "maintenance_margin = excluded.maintenance_margin, "
    "free_collateral = excluded.free_collateral, liquidatable = excluded.liquidatable, "
    "updated_seq = excluded.updated_seq"
)
_UPSERT_MARK = (
    "INSERT INTO marks (asset, price, seq, ts) VALUES (?,?,?,?) "
    "ON CONFLICT (asset) DO UPDATE SET price = excluded.price, seq = excluded.seq, "
    "ts = excluded.ts"
)
_UPSERT_META = (
    "INSERT INTO meta (key, value) VALUES (?,?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)


def _database(conn: sqlite3.Connection) -> sqlite_utils.Database:
    """sqlite-utils on the library's connection: its writes join the open transaction."""
    return sqlite_utils.Database(conn, execute_plugins=False)


class ReadModelRecorder(SQLiteTrackingRecorder):
    """The library's tracking recorder plus the read model's tables (made with sqlite-utils in
    the same transaction as the tracking table)."""

    def _create_table(self, c: SQLiteCursor) -> None:
        super()._create_table(c)
        db = _database(c.sqlite_cursor.connection)
        for name, columns, pk, not_null, indexes in _TABLES:
            table = db.table(name)
            table.create(columns, pk=pk, not_null=not_null, if_not_exists=True)
            for index in indexes:
                table.create_index(
                    list(index), index_name=f"{name}_by_{'_'.join(index)}", if_not_exists=True
                )
        c.execute(
            "INSERT INTO meta (key, value) VALUES ('format', ?), ('rules', ?) "
            "ON CONFLICT (key) DO NOTHING",
            (FORMAT, RULES),
        )
        c.execute(f"PRAGMA application_id = {APPLICATION_ID}")

    def position(self, c: SQLiteCursor | None = None) -> int:
        if c is None:
            return self.max_tracking_id(APPLICATION_NAME) or 0
        return self._max_tracking_id(APPLICATION_NAME, c) or 0


# --- per-event rows ---------------------------------------------------------------------------
def _parent(account: str) -> str | None:
    """R2.1: ``owner/name`` is a sub-account of ``owner``."""
    if is_system(account):
        return None
    owner, slash, _ = account.partition("/")
    return owner if slash and owner else None


def _event_row(ev: s.Event, rejected: s.Rejected | None, inputs: dict[str, s.Input],
               relisted: bool) -> tuple:
    """(account, counterparty, instrument, asset, amount, qty, price, reason, summary) of one
    event; ``relisted``: an asset or instrument input for something already listed (R4)."""
    t = type(ev)
    note = f" (rejected: {rejected.reason})" if rejected is not None else ""
    if t is s.Deposit:
        row = (ev.account, None, None, ev.asset, ev.amount, None, None, None,
               f"{ev.account} deposited {ev.amount} {ev.asset}")
    elif t is s.Withdrawal:
        row = (ev.account, None, None, ev.asset, ev.amount, None, None, None,
               f"{ev.account} withdrew {ev.amount} {ev.asset}")
    elif t is s.Transfer:
        row = (ev.from_, ev.to, None, ev.asset, ev.amount, None, None, None,
               f"{ev.from_} transferred {ev.amount} {ev.asset} to {ev.to}")
    elif t is s.Trade:
        row = (ev.buyer, ev.seller, ev.instrument, None, None, ev.qty, ev.price, None,
               f"{ev.buyer} bought {ev.qty} {ev.instrument} from {ev.seller} at {ev.price}")
    elif t is s.Price:
        row = (None, None, None, ev.asset, None, None, ev.price, None,
               f"{ev.asset} marked at {ev.price}")
    elif t is s.Funding:
        row = (None, None, ev.instrument, None, None, None, None, None,
               f"funding on {ev.instrument} at rate {ev.rate}")
    elif t is s.Asset:
        kind = "settlement asset" if ev.settlement else "asset"
        summary = (f"{kind} {ev.asset} re-listed: haircut {ev.haircut}" if relisted else
                   f"{kind} {ev.asset} listed: {ev.decimals} decimals, price "
                   f"{ev.price_decimals} decimals, haircut {ev.haircut}")
        row = (None, None, None, ev.asset, None, None, None, None, summary)
    elif t is s.Instrument:
        row = (None, None, ev.instrument, ev.underlying, None, None, None, None,
               f"instrument {ev.instrument} on {ev.underlying} "
               f"{'re-listed' if relisted else 'listed'}: IM {ev.initial_margin}, "
               f"MM {ev.maintenance_margin}, liquidation fee {ev.liquidation_fee}")
    elif t is s.Rejected:
        inp = inputs.get(ev.ref)
        kind = type(inp).__struct_config__.tag if inp is not None else "input"
        what = f"{kind} {ev.ref}"
        who = f" of {ev.account}" if ev.account else ""
        figures = ", ".join(f"{k} {v}" for k, v in ev.figures.items())
        return (ev.account or None, None, None, None, None, None, None, ev.reason,
                f"{what}{who} rejected: {ev.reason} ({ev.rule}"
                + (f"; {figures})" if figures else ")"))
    elif t is s.Liquidation:
        return (ev.account, INSURANCE, ev.instrument, None, ev.penalty, ev.qty, ev.price, None,
                f"{ev.account} liquidated ({ev.rule}): {ev.qty} {ev.instrument} moved to "
                f"{INSURANCE} at {ev.price}, position {ev.position_before} -> "
                f"{ev.position_after}, penalty {ev.penalty}")
    elif t is s.Bankruptcy:
        seized = "".join(f", seized {z.amount} {z.asset}" for z in ev.seized)
        return (ev.account, INSURANCE, None, None, ev.deficit, None, None, None,
                f"{ev.account} bankrupt: equity {ev.equity}, deficit {ev.deficit}, covered "
                f"{ev.cover} by the insurance fund ({ev.insurance_fund}), remainder "
                f"{ev.remainder}{seized}")
    elif t is s.Deleverage:
        return (ev.account, ev.counterparty, ev.instrument, None, ev.paid, ev.qty, ev.price,
                None,
                f"{ev.account} deleveraged: {ev.qty} {ev.instrument} closed against "
                f"{ev.counterparty} at {ev.price}, {ev.counterparty} paid {ev.paid}")
    elif t is s.FundingSettled:
        return (None, None, ev.instrument, None, ev.paid, None, ev.price, None,
                f"funding on {ev.instrument} settled at {ev.price}: {ev.paid} paid, "
                f"{ev.received} received, dust {ev.dust}, {len(ev.payments)} holders")
    else:  # pragma: no cover - a new event type
        return (None, None, None, None, None, None, None, None, t.__struct_config__.tag)
    if note:
        row = row[:-1] + (row[-1] + note,)
    return row


def _touched(ev: s.Event) -> Iterable[str]:
    """The accounts whose balances or positions an (accepted) event changes."""
    t = type(ev)
    if t is s.Deposit or t is s.Withdrawal:
        return (ev.account, EXTERNAL)
    if t is s.Transfer:
        return (ev.from_, ev.to)
    if t is s.Trade:
        return (ev.buyer, ev.seller, FEES)
    if t is s.Liquidation or t is s.Bankruptcy:
        return (ev.account, INSURANCE)
    if t is s.Deleverage:
        return (ev.account, ev.counterparty)
    if t is s.FundingSettled:
        return [p.account for p in ev.payments] + [INSURANCE]
    return ()


class _Batch:
    """What one batch changes, collected while folding and turned into rows at its end."""

    __slots__ = ("events", "touched", "created", "priced", "haircuts", "params", "insurance")

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.touched: dict[str, int] = {}  # account -> seq of the last event that moved it
        self.created: dict[str, int] = {}  # account -> seq of the event that created it
        self.priced: dict[str, tuple[int, str]] = {}  # asset -> (seq, ts) of its last price
        self.haircuts: dict[str, int] = {}  # asset -> seq of its last re-listing
        self.params: dict[str, int] = {}  # instrument -> seq of its last re-listing
        self.insurance: list[tuple[int, str, int]] = []  # (seq, ts, cash in minor units)

    def touch(self, accounts: Iterable[str], seq: int) -> None:
        touched = self.touched
        for account in accounts:
            touched[account] = seq

    def updated_seq(self, state: LedgerState, account: str) -> int:
        """The last event of the batch that moved the account or re-marked or re-parametrised
        what it holds. Every reason to revalue an account in a batch lies in that batch, so
        this is the same whatever the batch boundaries are."""
        seq = max(self.touched.get(account, 0), self.created.get(account, 0))
        acct = state.accounts[account]
        priced, haircuts = self.priced, self.haircuts
        for asset, units in acct.balances.items():
            if units > 0:
                if asset in priced:
                    seq = max(seq, priced[asset][0])
                seq = max(seq, haircuts.get(asset, 0))
        for instrument in acct.positions:
            seq = max(seq, self.params.get(instrument, 0))
            underlying = state.instruments[instrument].underlying
            if underlying in priced:
                seq = max(seq, priced[underlying][0])
        return seq


# --- the read model ---------------------------------------------------------------------------
def _check_file(path: str) -> None:
    """Refuse to add tables to a file that is not a read model (or empty), e.g. the ledger.

    Probed read-only with plain sqlite3, so that probing never changes a foreign file."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    try:
        conn = sqlite3.connect("file:" + quote(path) + "?mode=ro", uri=True)
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            empty = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        raise ReadModelError("readmodel_invalid", f"{path} is not an SQLite database: {e}") from e
    if app_id != APPLICATION_ID and not (app_id == 0 and empty):
        raise ReadModelError("readmodel_invalid", f"{path} exists and is not a read model")


class ReadModel:
    """The read model in its own SQLite file (see the module docstring)."""

    def __init__(self, path: str) -> None:
        if not path or ":memory:" in path or "mode=memory" in path:
            raise ValueError("the read model needs a file path")
        self.path = os.path.abspath(path)
        _check_file(self.path)
        self.datastore = SQLiteDatastore("file:" + quote(self.path))  # WAL (the library's pool)
        self.recorder = ReadModelRecorder(self.datastore)
        self.recorder.create_table()
        self._state: LedgerState | None = None  # folded state at the position, between calls
        self._state_store: LogStore | None = None

    def __enter__(self) -> "ReadModel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def position(self) -> int:
        """The seq of the last event applied (0 if none)."""
        return self.recorder.position()

    def close(self) -> None:
        """Checkpoint the WAL into the file (so it is whole on its own) and release it."""
        ds, self.datastore = self.datastore, None
        self._state = self._state_store = None
        if ds is None:
            return
        try:
            with ds.get_connection(commit=True) as conn:
                conn.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except Exception:  # another reader holds the WAL: it is checkpointed later
            pass
        ds.close()

    # ------------------------------------------------------------------ catch-up
    def catch_up(self, store: LogStore, batch: int = 10000, upto: int | None = None) -> int:
        """Apply every event after the position up to ``upto`` (default: the head), one
        transaction per page of ``batch`` events; return the new position."""
        if batch < 1:
            raise ValueError("batch must be >= 1")
        head = store.head()[0]
        pos = self.position()
        if pos > head:
            raise ReadModelError(
                "readmodel_ahead",
                f"{self.path} is at seq {pos} but the log ends at {head}: "
                "it belongs to another log",
            )
        target = head if upto is None else min(upto, head)
        if target <= pos:
            return pos
        state = self._state_at(store, pos)
        try:
            carry: list = []
            for page in store.read_payloads(after_seq=pos, upto_seq=target, batch=batch):
                rows = carry + page if carry else page
                carry = []
                if rows[-1][0] >= target:
                    self._apply(store, state, rows, target < head)
                    continue
                cut = len(rows) - 1
                while cut > 0 and rows[cut][1] not in INPUT_TAGS:
                    cut -= 1
                if cut == 0:  # one group longer than the page so far: read on
                    carry = rows
                    continue
                carry = rows[cut:]
                self._apply(store, state, rows[:cut], False)
            if carry:  # not reached with a gap-free log
                self._apply(store, state, carry, carry[-1][0] < head)
        except BaseException:
            self._state = None  # folded past the committed position: rebuild next time
            raise
        return self.position()

    def _state_at(self, store: LogStore, pos: int) -> LedgerState:
        """The folded state at ``pos``: kept from the last call, or rebuilt (snapshot + fold)."""
        state = self._state
        if state is not None and self._state_store is store and state.seq == pos:
            return state
        self._state = None
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT key, value FROM meta")
            meta = {row[0]: row[1] for row in c.fetchall()}
        origin = store.meta().get("origin", "")
        if "origin" in meta and meta["origin"] != origin:
            raise ReadModelError(
                "readmodel_mismatch",
                f"{self.path} was built from the ledger {meta['origin']!r}, not {origin!r}",
            )
        if pos:
            record = store.get(pos)
            if record is None or leaf_hash(record.payload).hex() != meta.get("last_leaf"):
                raise ReadModelError(
                    "readmodel_mismatch",
                    f"event {pos} of the log is not the one {self.path} was built from",
                )
        state = state_at_seq(store, pos)
        assert state.seq == pos
        self._state, self._state_store = state, store
        return state

    def _apply(self, store: LogStore, state: LedgerState, rows: Sequence[tuple[int, str, bytes]],
               peek: bool) -> None:
        """Fold one batch (whole groups, or ending at ``upto``) and write it in one transaction.

        ``peek``: the batch may end inside a group, so the event after it is read to settle the
        last input's look-ahead.
        """
        start = state.seq
        assert rows[0][0] == start + 1, (rows[0][0], start)
        events = [decode(payload) for _, _, payload in rows]
        next_event = None
        if peek and rows[-1][1] in INPUT_TAGS:
            after = store.get(rows[-1][0] + 1)
            next_event = decode(after.payload) if after is not None else None

        b = _Batch()
        folder = Folder(state)
        accounts = state.accounts
        inputs: dict[str, s.Input] = {}  # the inputs of the batch's groups, by id
        if rows[0][1] not in INPUT_TAGS:  # resuming inside a group (after an ``upto``)
            found = store.find_inputs([events[0].ref]).get(events[0].ref)
            record = store.get(found[0]) if found is not None else None
            if record is not None:
                inputs[events[0].ref] = decode(record.payload)
        insurance = accounts.get(INSURANCE)
        last_cash = insurance.cash if insurance is not None else None
        n_accounts = len(accounts)
        last_ts, ts = None, ""
        n = len(events)
        for i, ev in enumerate(events):
            if ev.ts != last_ts:  # recorded ts are in normal form but for a fraction's zeros
                last_ts = ts = ev.ts
                if "." in ts:
                    ts = format_ts(parse_ts(ts))
            rejected = None
            relisted = False
            if rows[i][1] in INPUT_TAGS:
                nxt = events[i + 1] if i + 1 < n else next_event
                if type(nxt) is s.Rejected and nxt.ref == ev.id:
                    rejected = nxt
                inputs[ev.id] = ev
                if type(ev) is s.Asset:
                    relisted = ev.asset in state.assets
                elif type(ev) is s.Instrument:
                    relisted = ev.instrument in state.instruments
                folder.feed(ev)
                folder.finish(nxt)  # settle the look-ahead now: the state is after this event
                ref = ev.id
                if rejected is None:
                    t = type(ev)
                    if t is s.Price:
                        b.priced[ev.asset] = (ev.seq, ts)
                    elif t is s.Asset:
                        b.haircuts[ev.asset] = ev.seq
                    elif t is s.Instrument:
                        b.params[ev.instrument] = ev.seq
                    else:
                        b.touch(_touched(ev), ev.seq)
            else:
                folder.feed(ev)
                ref = ev.ref
                b.touch(_touched(ev), ev.seq)
            seq = ev.seq
            b.events.append((seq, ts, state.ts_us, rows[i][1], ref)
                            + _event_row(ev, rejected, inputs, relisted))
            if len(accounts) != n_accounts:  # new accounts are appended to the dict
                for account in islice(reversed(accounts), len(accounts) - n_accounts):
                    b.created[account] = seq
                n_accounts = len(accounts)
            if insurance is None:
                insurance = accounts.get(INSURANCE)
            if insurance is not None and insurance.cash != last_cash:
                last_cash = insurance.cash
                b.insurance.append((seq, ts, last_cash))
        assert folder.pending is None and state.seq == rows[-1][0]
        self._write(start, state, b, leaf_hash(rows[-1][2]).hex(), store)

    def _write(self, start: int, state: LedgerState, b: _Batch, last_leaf: str,
               store: LogStore) -> None:
        end = state.seq
        scale = state.scale
        accounts = state.accounts
        # Valuations: every account touched, and every holder of something re-marked or
        # re-parametrised, once, at the batch's end state.
        changed = (b.touched.keys() | b.created.keys()) & accounts.keys()
        revalue = set(changed)
        for asset in b.priced.keys() | b.haircuts:
            revalue.update(state.collateral_holders.get(asset, ()))
        for asset in b.priced:
            for instrument in state.by_underlying.get(asset, ()):
                revalue.update(state.holders.get(instrument, ()))
        for instrument in b.params:
            revalue.update(state.holders.get(instrument, ()))
        account_rows, balance_rows, position_rows = [], [], []
        for account in sorted(revalue):
            entry = account_entry(state, accounts[account])
            updated = b.updated_seq(state, account)
            assert start < updated <= end, (account, start, updated, end)
            account_rows.append((
                account, _parent(account), int(is_system(account)),
                b.created.get(account, updated),  # (kept from the first row on conflict)
                entry["equity"], entry["initial_margin"], entry["maintenance_margin"],
                entry["free_collateral"], int(entry["liquidatable"]), updated,
            ))
            if account in changed:
                balance_rows.extend((account, a, x) for a, x in entry["balances"].items())
                position_rows.extend((account, i, q) for i, q in entry["positions"].items())
        mark_rows = [
            (asset, fmt_units(state.marks[asset], state.assets[asset].price_decimals), seq, ts)
            for asset, (seq, ts) in sorted(b.priced.items())
        ]
        insurance_rows = [(seq, ts, fmt_units(cash, scale)) for seq, ts, cash in b.insurance]
        meta_rows = [("last_leaf", last_leaf), ("last_seq", str(end))]
        if start == 0:
            meta_rows.append(("origin", store.meta().get("origin", "")))
        gone = [(account,) for account in sorted(changed)]

        writes = [
            ("events", _INSERT_EVENT, b.events),
            ("accounts", _UPSERT_ACCOUNT, account_rows),
            ("balances", "DELETE FROM balances WHERE account = ?", gone),
            ("positions", "DELETE FROM positions WHERE account = ?", gone),
            ("balances", "INSERT INTO balances (account, asset, amount) VALUES (?,?,?)",
             balance_rows),
            ("positions", "INSERT INTO positions (account, instrument, qty) VALUES (?,?,?)",
             position_rows),
            ("marks", _UPSERT_MARK, mark_rows),
            ("insurance_fund", "INSERT INTO insurance_fund (seq, ts, cash) VALUES (?,?,?)",
             insurance_rows),
            ("meta", _UPSERT_META, meta_rows),
        ]
        with self.datastore.transaction(commit=True) as c:
            # Compare-and-set: the batch was folded from ``start``. This read comes before any
            # write and pins the transaction's snapshot, so if another process commits in
            # between, the first write fails (SQLITE_BUSY) instead of applying events twice.
            at = self.recorder.position(c)
            if at != start:
                raise ReadModelError(
                    "readmodel_conflict", f"{self.path} moved from seq {start} to {at}; retry"
                )
            cur = c.sqlite_cursor
            for table, statement, rows in writes:
                if rows:
                    self._execute(cur, table, statement, rows)
            # Exactly once: the position advances in the same transaction as the rows.
            self.recorder._insert_tracking(c, Tracking(APPLICATION_NAME, end))

    def _execute(self, cur: sqlite3.Cursor, table: str, statement: str, rows: list) -> None:
        """One bulk write of a batch. (Plain ``executemany`` on the library's cursor: sqlite-
        utils' ``insert_all`` converts every value on its way in and was 8x slower here.)"""
        cur.executemany(statement, rows)
