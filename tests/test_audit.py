"""`clearing audit` on clean ledgers (interfaces §3.2): `run_audit` finds nothing, the report has
exactly the JSON shape of §3.2, and checkpoints signed for any size verify.

The ledgers are built with the real command line (`clearing init`, `clearing ingest`); the
helpers here (building, copying, signing checkpoints with the ledger's own key) are shared with
tests/test_tamper.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from clearing.audit import AuditReport, Finding, run_audit
from events import merkle
from events.canonical import decode
from events.store import open_store
from projections import statetree
from projections.state import Folder, LedgerState
from tests.conftest import _run_cli

ORIGIN = "test.example/audit"

# Listings, marks, deposits (one to @insurance), trades with fees, a withdrawal, a transfer to a
# sub-account, two rejections (insufficient balance, unknown account), funding, a fall of BTC
# that liquidates alice and carol (R10.3), a crash that bankrupts both (R10.4) with
# deleveraging (R10.6), a first ETH mark, and a second funding.
SCENARIO = """\
{"id":"a1","ts":"2026-03-01T00:00:00Z","type":"asset","asset":"USD","decimals":6,"price_decimals":0,"haircut":"0","settlement":true}
{"id":"a2","ts":"2026-03-01T00:00:00Z","type":"asset","asset":"BTC","decimals":8,"price_decimals":2,"haircut":"0.1"}
{"id":"a3","ts":"2026-03-01T00:00:00Z","type":"asset","asset":"ETH","decimals":8,"price_decimals":2,"haircut":"0.2"}
{"id":"i1","ts":"2026-03-01T00:00:00Z","type":"instrument","instrument":"BTC-PERP","underlying":"BTC","qty_decimals":4,"initial_margin":"0.1","maintenance_margin":"0.05","liquidation_fee":"0.01"}
{"id":"p1","ts":"2026-03-01T00:00:01Z","type":"price","asset":"BTC","price":"60000"}
{"id":"d0","ts":"2026-03-01T00:00:02Z","type":"deposit","account":"@insurance","asset":"USD","amount":"1000"}
{"id":"d1","ts":"2026-03-01T00:00:02Z","type":"deposit","account":"alice","asset":"USD","amount":"700"}
{"id":"d2","ts":"2026-03-01T00:00:02Z","type":"deposit","account":"bob","asset":"USD","amount":"100000"}
{"id":"d3","ts":"2026-03-01T00:00:02Z","type":"deposit","account":"carol","asset":"USD","amount":"100"}
{"id":"d4","ts":"2026-03-01T00:00:02Z","type":"deposit","account":"carol","asset":"BTC","amount":"0.01234567"}
{"id":"d5","ts":"2026-03-01T00:00:02Z","type":"deposit","account":"dave","asset":"USD","amount":"100000"}
{"id":"d6","ts":"2026-03-01T00:00:02Z","type":"deposit","account":"erin","asset":"ETH","amount":"2"}
{"id":"t1","ts":"2026-03-01T00:00:05Z","type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"bob","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"0"}
{"id":"t2","ts":"2026-03-01T00:00:05Z","type":"trade","instrument":"BTC-PERP","buyer":"carol","seller":"dave","qty":"0.1","price":"60000","buyer_fee":"1.5","seller_fee":"1.5"}
{"id":"t3","ts":"2026-03-01T00:00:06Z","type":"trade","instrument":"BTC-PERP","buyer":"bob","seller":"dave","qty":"0.05","price":"60010.5","buyer_fee":"3","seller_fee":"1.5"}
{"id":"w1","ts":"2026-03-01T00:00:07Z","type":"withdrawal","account":"bob","asset":"USD","amount":"10"}
{"id":"x1","ts":"2026-03-01T00:00:08Z","type":"transfer","from":"bob","to":"bob/iso","asset":"USD","amount":"500"}
{"id":"w2","ts":"2026-03-01T00:00:09Z","type":"withdrawal","account":"alice","asset":"USD","amount":"100000"}
{"id":"t4","ts":"2026-03-01T00:00:10Z","type":"trade","instrument":"BTC-PERP","buyer":"mallory","seller":"bob","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"0"}
{"id":"f1","ts":"2026-03-01T08:00:00Z","type":"funding","instrument":"BTC-PERP","rate":"0.0001"}
{"id":"p2","ts":"2026-03-01T09:00:00Z","type":"price","asset":"BTC","price":"55500"}
{"id":"p3","ts":"2026-03-01T09:01:00Z","type":"price","asset":"BTC","price":"45000"}
{"id":"p4","ts":"2026-03-01T09:02:00Z","type":"price","asset":"ETH","price":"3000"}
{"id":"f2","ts":"2026-03-01T16:00:00Z","type":"funding","instrument":"BTC-PERP","rate":"-0.0002"}
"""

#: The log of SCENARIO, event by event (checked by ``test_the_scenario_records_every_kind_of_event``).
SCENARIO_TOPICS = (
    ["asset"] * 3 + ["instrument", "price"] + ["deposit"] * 7 + ["trade"] * 3
    + ["withdrawal", "transfer", "withdrawal", "rejected", "trade", "rejected"]
    + ["funding", "funding_settled", "price", "liquidation", "liquidation", "price"]
    + ["bankruptcy", "deleverage", "bankruptcy", "deleverage", "price", "funding", "funding_settled"]
)
HEAD = len(SCENARIO_TOPICS)  # 34


# ----------------------------------------------------------------------------- helpers


def build_ledger(folder: Path, lines: str = SCENARIO) -> Path:
    """``clearing init`` and ``clearing ingest`` in ``folder``; the store's path."""
    folder.mkdir(parents=True, exist_ok=True)
    code, _out, err = _run_cli("init", "--origin", ORIGIN, cwd=folder)
    assert code == 0, err
    (folder / "in.jsonl").write_text(lines)
    code, out, err = _run_cli("ingest", "--json", "in.jsonl", cwd=folder)
    assert code == 0, err
    return folder / "clearing.db"


def copy_ledger(db: Path, folder: Path) -> Path:
    """A copy of a closed ledger (its file, WAL if any, and key file) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", ".key"):
        src = Path(str(db) + suffix)
        if src.exists():
            shutil.copy2(src, folder / (db.name + suffix))
    return folder / db.name


def audit(db: Path, **kwargs) -> AuditReport:
    store = open_store(str(db))
    try:
        return run_audit(store, **kwargs)
    finally:
        store.close()


def payloads(db: Path) -> list[bytes]:
    """The stored events' bytes, read with plain sqlite3, in seq order."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT state FROM stored_events ORDER BY originator_version"
        ).fetchall()
    conn.close()
    return [bytes(r[0]) for r in rows]


def seqs_of(db: Path, topic: str) -> list[int]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT originator_version FROM stored_events WHERE topic = ? ORDER BY originator_version",
            (topic,),
        ).fetchall()
    conn.close()
    return [r[0] for r in rows]


def folded_state(events: list[bytes], size: int) -> LedgerState:
    """The state after event ``size`` (R3.7), with the one event of look-ahead an input needs
    (a rejected input is a no-op)."""
    folder = Folder(LedgerState())
    for payload in events[:size]:
        folder.feed(decode(payload))
    return folder.finish(decode(events[size]) if size < len(events) else None)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def sign_checkpoint(db: Path, size: int, root: bytes | None = None, state_root: bytes | None = None) -> str:
    """A C2SP checkpoint note for the first ``size`` events as stored, signed with the ledger's
    own key (``<store>.key``) with nothing but ``cryptography``: the signature line is
    ``— <name> <base64(key id ‖ Ed25519 signature of the note text)>``."""
    key_text = Path(str(db) + ".key").read_text().strip()
    private_tag, key_tag, name, key_id_hex, seed_b64 = key_text.split("+", 4)
    assert (private_tag, key_tag) == ("PRIVATE", "KEY")
    seed = base64.b64decode(seed_b64)
    assert seed[0] == 1 and len(seed) == 33
    private = Ed25519PrivateKey.from_private_bytes(seed[1:])
    events = payloads(db)
    if root is None:
        root = merkle.tree_root([hashlib.sha256(b"\x00" + p).digest() for p in events[:size]])
    if state_root is None:
        state_root = statetree.state_root(folded_state(events, size))
    text = f"{name}\n{size}\n{_b64(root)}\nstate {_b64(state_root)}\n"
    signature = private.sign(text.encode())
    return f"{text}\n\u2014 {name} {_b64(bytes.fromhex(key_id_hex) + signature)}\n"


def put_checkpoint(db: Path, size: int, note: str) -> None:
    store = open_store(str(db))
    try:
        store.put_checkpoint(size, note)
    finally:
        store.close()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """The SCENARIO ledger, built once per module; tests copy it (``copy_ledger``)."""
    return build_ledger(tmp_path_factory.mktemp("audit-ledger") / "ledger")


@pytest.fixture
def ledger(pristine: Path, tmp_path: Path) -> Path:
    """A private copy of the SCENARIO ledger, for a test to change."""
    return copy_ledger(pristine, tmp_path / "copy")


# ----------------------------------------------------------------------------- tests


def test_the_scenario_records_every_kind_of_event(pristine):
    assert [decode(p).__struct_config__.tag for p in payloads(pristine)] == SCENARIO_TOPICS


def test_a_clean_ledger_audits_ok_with_no_findings(pristine):
    report = audit(pristine)
    assert report.findings == []
    assert report.ok is True
    assert report.events == HEAD
    store = open_store(str(pristine))
    try:
        assert store.head()[0] == report.events
    finally:
        store.close()


def test_the_report_is_exactly_the_json_of_interfaces_3_2(pristine):
    doc = audit(pristine).as_json()
    assert doc == {"ok": True, "events": HEAD, "findings": []}
    assert list(doc) == ["ok", "events", "findings"]
    assert json.loads(json.dumps(doc)) == doc


def test_findings_have_exactly_seq_rule_and_message(ledger):
    with sqlite3.connect(ledger) as conn:  # one deposit amount changed in place
        conn.execute(
            "UPDATE stored_events SET state = CAST(replace(CAST(state AS TEXT), '\"700\"', '\"7000\"') AS BLOB) "
            "WHERE originator_version = 7"
        )
    conn.close()
    report = audit(ledger)
    doc = report.as_json()
    assert list(doc) == ["ok", "events", "findings"]
    assert doc["ok"] is False and doc["events"] == HEAD
    assert doc["findings"], doc
    for item in doc["findings"]:
        assert list(item) == ["seq", "rule", "message"]
        assert type(item["seq"]) is int and isinstance(item["rule"], str) and isinstance(item["message"], str)
        assert item["message"]
    assert [f.as_json() for f in report.findings] == doc["findings"]
    assert all(isinstance(f, Finding) for f in report.findings)
    assert json.loads(json.dumps(doc, ensure_ascii=False)) == doc
    assert [f["seq"] for f in doc["findings"]] == sorted(f["seq"] for f in doc["findings"])


def test_the_ten_example_lines_audit_ok(shared_ten_ledger):
    report = audit(shared_ten_ledger / "clearing.db")
    assert report.as_json() == {"ok": True, "events": 11, "findings": []}


def test_an_empty_ledger_audits_ok(tmp_path):
    code, _out, err = _run_cli("init", "--origin", ORIGIN, cwd=tmp_path)
    assert code == 0, err
    assert audit(tmp_path / "clearing.db").as_json() == {"ok": True, "events": 0, "findings": []}


def test_progress_is_called_with_the_events_read(pristine):
    calls: list[int] = []
    report = audit(pristine, progress=calls.append)
    assert calls and all(n > 0 for n in calls)
    assert sum(calls) == report.events == HEAD


def test_checkpoints_at_any_size_verify_and_are_consistent(ledger):
    """Checkpoints at sizes 0, 1, 5 (a power of two plus one), 16, a rejected input (18),
    mid-group (25, inside the liquidations of p2), 31 and twice at the head."""
    for size in (0, 1, 5, 16, 18, 25, 31, HEAD, HEAD):
        put_checkpoint(ledger, size, sign_checkpoint(ledger, size))
    report = audit(ledger)
    assert report.findings == []
    assert report.ok


def test_the_audit_is_repeatable_and_leaves_the_store_usable(pristine):
    store = open_store(str(pristine))
    try:
        first = run_audit(store)
        second = run_audit(store)
        assert first == second
        assert store.head()[0] == HEAD  # the store still answers after the audit
    finally:
        store.close()


def test_a_larger_ledger_with_many_price_moves_audits_ok(tmp_path):
    """Many marks up and down with longs, shorts and collateral held: the R12.4 bound of the
    audit (only accounts a move can hurt are checked, against a lower bound) keeps up with
    exact valuations and finds nothing on an honest log."""
    lines = [SCENARIO.splitlines()[i] for i in range(12)]  # listings, first mark, deposits
    lines.append('{"id":"d7","ts":"2026-03-01T00:00:02Z","type":"deposit","account":"erin","asset":"USD","amount":"50000"}')
    lines.append('{"id":"d8","ts":"2026-03-01T00:00:02Z","type":"deposit","account":"frank","asset":"BTC","amount":"1"}')
    lines.append('{"id":"t1","ts":"2026-03-01T00:00:03Z","type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"bob","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"0"}')
    lines.append('{"id":"t2","ts":"2026-03-01T00:00:03Z","type":"trade","instrument":"BTC-PERP","buyer":"dave","seller":"erin","qty":"0.5","price":"60000","buyer_fee":"0","seller_fee":"0"}')
    lines.append('{"id":"t3","ts":"2026-03-01T00:00:03Z","type":"trade","instrument":"BTC-PERP","buyer":"frank","seller":"dave","qty":"0.2","price":"60000","buyer_fee":"0","seller_fee":"0"}')
    price = 60000
    for i in range(300):
        price += (1 if (i * 7919) % 13 < 6 else -1) * ((i * 31) % 900)
        price = max(price, 30000)
        lines.append(f'{{"id":"q{i}","ts":"2026-03-01T01:{i // 60:02d}:{i % 60:02d}Z","type":"price","asset":"BTC","price":"{price}"}}')
    db = build_ledger(tmp_path / "big", "\n".join(lines) + "\n")
    report = audit(db)
    assert report.findings == []
    assert report.events == len(payloads(db))


def test_any_log_store_is_audited_through_its_contract(pristine, tmp_path, monkeypatch):
    """A store other than SQLite (PostgreSQL) is read through the LogStore contract
    (read_payloads, read, checkpoints, meta): the same verdicts, without the side-table
    cross-checks the contract does not expose."""
    import clearing.audit as audit_module

    monkeypatch.setattr(audit_module, "_source_for", lambda store: audit_module._StoreSource(store))
    assert audit(pristine).as_json() == {"ok": True, "events": HEAD, "findings": []}
    changed = copy_ledger(pristine, tmp_path / "changed")
    with sqlite3.connect(changed) as conn:
        conn.execute("DELETE FROM stored_events WHERE originator_version = 16")
    conn.close()
    report = audit(changed)
    assert not report.ok and any(f.seq == 16 and f.rule == "R3.1" for f in report.findings)
