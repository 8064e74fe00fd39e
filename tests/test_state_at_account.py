"""`clearing state --account A` at a point (R3.7, interfaces §4) from the one-account path
(projections/history.py ``account_at_seq``) is byte for byte the document of the whole state.

The log is the seeded workload of tests/test_differential.py (liquidations, bankruptcies,
deleverages, rejections, funding, re-listings, trades with @insurance), ingested with snapshots
every few hundred events so that points fall before, on, between and just after snapshots.
"""

from __future__ import annotations

import json
import random

import msgspec
import pytest

from clearing import app
from events import schema as s
from events.timestamps import format_ts
from projections import history, snapshot
from projections.history import account_at_seq, state_at_seq
from projections.report import state_document
from projections.state import SYSTEM_ACCOUNTS, LedgerState
from tests.test_differential import workload


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("state-at-account") / "c.db")
    app.init_ledger(path, "test.example/ledger", None)
    ledger = app.open_ledger(path)
    patch = pytest.MonkeyPatch()
    patch.setattr(app, "BATCH_EVENTS", 40)
    patch.setattr(app, "SNAPSHOT_EVERY", 350)
    try:
        with ledger.writer_lock():
            ingestor = app.Ingestor(ledger)
            ingestor.append_inputs(with_late_accounts(workload(11, 3000)), app.IngestSummary())
    finally:
        patch.undo()
    yield ledger
    ledger.close()


LATE = ("late-a", "late-b", "late-c")


def with_late_accounts(inputs: list[s.Input]) -> list[s.Input]:
    """Accounts that first appear long after the first snapshot, by deposit and by transfer,
    and an asset priced twice, long after its listing (its mark is looked for far back); of
    the workload's re-listings, only two."""
    # Keep one re-listing after the start: after each one the snapshot before must be used
    # (listings are not folded back), and the workload has one in a hundred inputs.
    relistings = [i for i, inp in enumerate(inputs) if i > 50 and type(inp) is s.Instrument]
    dropped = set(relistings[1:]) - {relistings[len(relistings) // 2]}
    out = [inp for i, inp in enumerate(inputs) if i not in dropped]
    for at, line in (  # and an asset with a price only now and then
        (2600, {"type": "price", "asset": "XAU", "price": "2400.5"}),
        (1500, {"type": "price", "asset": "XAU", "price": "2300"}),
        (2400, {"type": "deposit", "account": "late-c", "asset": "USD", "amount": "700"}),
        (1700, {"type": "transfer", "from": "acct-03", "to": "late-b", "asset": "USD", "amount": "1"}),
        (1000, {"type": "deposit", "account": "late-a", "asset": "USD", "amount": "5000"}),
        (1003, {"type": "deposit", "account": "late-a", "asset": "USD", "amount": "10"}),
        (5, {"type": "asset", "asset": "XAU", "decimals": 4, "price_decimals": 1, "haircut": "0.3"}),
    ):
        line = {"id": f"late-{at}", "ts": out[at].ts, **line}
        out.insert(at, msgspec.convert(line, s.Input))
    return out


def snapshot_seqs(store) -> list[int]:
    seqs, at = [], store.head()[0]
    while (snap := store.latest_snapshot(at)) is not None:
        seqs.append(snap[0])
        at = snap[0] - 1
    return sorted(seqs)


def accounts_of(store) -> list[str]:
    full = state_at_seq(store, store.head()[0])
    return sorted(full.accounts) + ["nobody", "acct-99", ""]


def whole(store, seq: int, account: str) -> bytes:
    return json.dumps(state_document(state_at_seq(store, seq), account)).encode()


def one(store, seq: int, account: str, reach: int = 175) -> bytes:
    view = account_at_seq(store, seq, account, reach)
    return json.dumps(state_document(view.state, account, view.exposure)).encode()


def test_the_log_has_what_the_one_account_fold_must_handle(store):
    kinds = set()
    for page in store.read_payloads():
        kinds.update(kind for _seq, kind, _payload in page)
    assert {"liquidation", "bankruptcy", "deleverage", "rejected", "funding_settled", "instrument"} <= kinds
    assert len(snapshot_seqs(store)) >= 5


@pytest.mark.parametrize("reach", [175, 0, 1200], ids=["nearest-snapshot", "forward-only", "far-snapshot"])
def test_one_account_document_equals_the_whole_state_document(store, monkeypatch, reach):
    monkeypatch.setattr(history, "_MARKS_LOOKBACK", 300)  # reach the snapshot before, too
    rng = random.Random(reach)
    head = store.head()[0]
    names = accounts_of(store)
    seqs = [0, 1, 2, 3, head - 1, head]
    for snap in snapshot_seqs(store):
        seqs += [snap - 1, snap, snap + 1, snap + 2]
    seqs += [rng.randint(1, head) for _ in range(120)]
    checked = 0
    for seq in seqs:
        for account in rng.sample(names, 3) + [rng.choice(SYSTEM_ACCOUNTS)]:
            assert one(store, seq, account, reach) == whole(store, seq, account), (seq, account)
            checked += 1
    assert checked > 500


def test_an_account_before_it_existed_is_not_shown(store):
    head = store.head()[0]
    for account in ("acct-05", "a/iso", "B") + LATE:
        lo, hi = 0, head  # accounts are never removed: the first seq it exists at
        while lo + 1 < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if account in state_at_seq(store, mid).accounts else (mid, hi)
        first = hi
        for seq in (first - 1, first, first + 1):
            assert one(store, seq, account) == whole(store, seq, account), (seq, account)
        assert json.loads(one(store, first - 1, account))["accounts"] == {}


def test_state_at_time_for_one_account_through_the_app(store):
    rng = random.Random(3)
    head, last_us = store.head()
    first_us = store.get(1).ts_us
    names = accounts_of(store)
    for _ in range(40):
        at = format_ts(rng.randint(first_us - 10**6, last_us + 10**6))
        account = rng.choice(names)
        fast = app.state_document(store, ts=at, account=account)
        full = state_document(app.state_at(store, ts=at), account)
        assert json.dumps(fast) == json.dumps(full)
    assert app.state_document(store) == state_document(state_at_seq(store, head))


def test_snapshot_view_gives_each_account_and_the_exposure_of_the_whole_state(store):
    head = store.head()[0]
    seq, data = store.latest_snapshot(head)
    full = snapshot.decode(data)
    assert snapshot.encode(full) == data
    view = snapshot.SnapshotView(data)
    assert view.seq == seq
    for account_id, acct in full.accounts.items():
        assert view.account(account_id) == acct
    assert view.account("nobody") is None
    assert view.exposure == snapshot.exposure_totals(full)


def _format_1(state: LedgerState) -> bytes:
    """A snapshot as format 1 wrote it (every account decoded up front)."""
    m = snapshot
    return msgspec.msgpack.encode(
        m._SnapshotV1(
            format=1, seq=state.seq, ts=state.ts, ts_us=state.ts_us,
            assets=[m._Asset(a.asset, a.decimals, a.price_decimals, a.haircut, a.settlement)
                    for a in state.assets.values()],
            instruments=[m._Instrument(i.instrument, i.underlying, i.qty_decimals, i.initial_margin,
                                       i.maintenance_margin, i.liquidation_fee)
                         for i in state.instruments.values()],
            marks=sorted(state.marks.items()),
            accounts=[m._Account(a.id, a.cash, sorted(a.balances.items()), sorted(a.positions.items()))
                      for a in sorted(state.accounts.values(), key=lambda a: a.id)],
        )
    )


def test_format_1_snapshots_are_still_read(store, tmp_path):
    head = store.head()[0]
    seq, data = store.latest_snapshot(head)
    state = snapshot.decode(data)
    old = _format_1(state)
    assert snapshot.format_of(old) == 1
    assert snapshot.encode(snapshot.decode(old)) == data

    class OldSnapshots:  # the same log, its snapshots in format 1
        def __getattr__(self, name):
            return getattr(store, name)

        def latest_snapshot(self, at_or_before):
            snap = store.latest_snapshot(at_or_before)
            return None if snap is None else (snap[0], _format_1(snapshot.decode(snap[1])))

    old_store = OldSnapshots()
    for point in (seq, seq + 3, head):
        for account in ("acct-01", "@insurance"):
            assert one(old_store, point, account) == whole(store, point, account)


@pytest.mark.parametrize("reach", [175, 1200])
def test_a_mark_set_long_before_the_point_is_found_from_the_snapshot_after(store, monkeypatch, reach):
    monkeypatch.setattr(history, "_MARKS_LOOKBACK", 300)
    priced = []
    for page in store.read_payloads():
        priced += [seq for seq, kind, payload in page if kind == "price" and b'"XAU"' in payload]
    assert len(priced) == 2
    for seq in priced:
        for point in range(seq - 2, seq + 3):
            assert one(store, point, "acct-07", reach) == whole(store, point, "acct-07"), point


def test_the_audit_reads_format_1_snapshots_and_still_catches_a_wrong_one(store, tmp_path):
    """R3.7: a ledger whose snapshots were written in format 1 audits clean; a format 1
    snapshot that is not the state at its seq is still a finding."""
    import os
    import shutil
    import sqlite3

    from clearing.audit import run_audit
    from events.store import open_store

    copy = str(tmp_path / "old.db")
    src = sqlite3.connect(store.path)
    dst = sqlite3.connect(copy)
    src.backup(dst)
    src.close()
    if os.path.exists(store.path + ".key"):
        shutil.copy(store.path + ".key", copy + ".key")
    rows = dst.execute("select seq, state from snapshots order by seq").fetchall()
    assert len(rows) >= 2
    with dst:
        for seq, data in rows:
            dst.execute("update snapshots set state = ? where seq = ?", (_format_1(snapshot.decode(data)), seq))
    dst.close()
    old = open_store(copy)
    report = run_audit(old)
    assert report.ok, report.findings[:3]
    old.close()

    dst = sqlite3.connect(copy)
    seq, data = rows[0]
    wrong = snapshot.decode(data)
    next(a for a in wrong.accounts.values() if not a.id.startswith("@")).cash += 1
    with dst:
        dst.execute("update snapshots set state = ? where seq = ?", (_format_1(wrong), seq))
    dst.close()
    old = open_store(copy)
    report = run_audit(old)
    old.close()
    assert [(f.seq, f.rule) for f in report.findings] == [(seq, "R3.7")]
