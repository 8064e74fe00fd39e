"""Tampering with a closed ledger in place, with plain `sqlite3`, is found by `clearing audit`
(interfaces §3.2: "any change to a stored event, however small, made outside the ledger is a
finding"), at the right seq, and the audit never raises.

The forged decision at the end is the hard case: a dishonest operator rewrites a liquidation's
penalty AND recomputes its leaf, every Merkle node and the checkpoints with the ledger's own
key, so every hash and signature is consistent; only re-running the rules (R12.5) finds it.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import msgspec
import pytest

from events import merkle, verifier
from events.canonical import canonical, content_digest, decode
from events.numbers import fmt_units, units_of
from events.store import open_store
from projections import snapshot
from tests.test_audit import (  # noqa: F401  (pristine and ledger are fixtures)
    HEAD,
    audit,
    ledger,
    payloads,
    pristine,
    put_checkpoint,
    seqs_of,
    sign_checkpoint,
)


# ----------------------------------------------------------------------------- tampering


def execute(db: Path, sql: str, params: tuple = ()) -> None:
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.execute(sql, params)
    finally:
        conn.close()


def rewrite(db: Path, seq: int, **fields) -> bytes:
    """Change fields of the stored event at ``seq`` in place, keeping its bytes canonical (so
    only the change itself differs); the new bytes."""
    event = decode(payloads(db)[seq - 1])
    changed = canonical(msgspec.structs.replace(event, **fields))
    execute(db, "UPDATE stored_events SET state = ? WHERE originator_version = ?", (changed, seq))
    return changed


def at(report, seq: int, rule: str | None = None) -> list:
    return [f for f in report.findings if f.seq == seq and (rule is None or f.rule == rule)]


def rules(report) -> set[str]:
    return {f.rule for f in report.findings}


def event(db: Path, seq: int):
    return decode(payloads(db)[seq - 1])


# ----------------------------------------------------------------------------- one stored event changed


def test_a_deposit_amount_changed_is_found_at_its_seq(ledger):
    seq = 7  # d1: alice deposits 700
    assert event(ledger, seq).amount == "700"
    rewrite(ledger, seq, amount="700.000001")
    report = audit(ledger)
    assert not report.ok
    assert at(report, seq, "§5"), report.findings  # the payload no longer hashes to its leaf
    # ... and what the rules decide from it differs: alice's rejected withdrawal shows her
    # balance, her liquidation her equity (R12.5).
    assert "R12.5" in rules(report)


def test_a_price_changed_is_found_at_its_seq(ledger):
    seq = seqs_of(ledger, "price")[1]  # p2, the fall that liquidates alice and carol
    rewrite(ledger, seq, price="55600")
    report = audit(ledger)
    assert not report.ok
    assert at(report, seq, "§5")
    assert at(report, seq + 1, "R12.5")  # the liquidation of the next seq is not what the rules give


def test_an_account_in_a_trade_changed_is_found_at_its_seq(ledger):
    seq = 14  # t2: carol buys from dave
    assert event(ledger, seq).seller == "dave"
    rewrite(ledger, seq, seller="bob")
    report = audit(ledger)
    assert not report.ok
    assert at(report, seq, "§5")


def test_a_trade_naming_an_unknown_account_cannot_be_folded_and_breaks_the_positions(ledger):
    seq = 14
    rewrite(ledger, seq, seller="zed")  # an account that does not exist (R2.3)
    report = audit(ledger)
    assert at(report, seq, "§5")
    # The rules reject it with unknown_account, but it is recorded as accepted.
    r125 = at(report, seq, "R12.5")
    assert r125 and any("zed" in f.message or "rejected" in f.message for f in r125)
    # Folding it moves carol's side only: the positions no longer sum to zero (R12.2).
    assert at(report, seq, "R12.2")


def test_a_funding_payment_changed_creates_money_r12_1(ledger):
    seq = seqs_of(ledger, "funding_settled")[0]
    dec = event(ledger, seq)
    first = dec.payments[0]
    payments = [msgspec.structs.replace(first, amount="-0.5")] + list(dec.payments[1:])
    rewrite(ledger, seq, payments=payments)
    report = audit(ledger)
    assert at(report, seq, "R12.1")  # payments + dust no longer sum to zero
    assert at(report, seq, "R12.5")
    assert at(report, seq, "§5")


def test_a_seizure_of_more_than_the_account_holds_is_a_negative_balance_r12_3(ledger):
    seq = 10  # d4: carol deposits 0.01234567 BTC, later seized by her bankruptcy
    rewrite(ledger, seq, amount="0.01")
    report = audit(ledger)
    seized = [s for s in seqs_of(ledger, "bankruptcy") if event(ledger, s).seized]
    assert seized
    assert at(report, seized[0], "R12.3"), report.findings
    assert at(report, seq, "§5")


def test_an_input_malformed_at_its_point_of_the_log_r3_3(ledger):
    seq = seqs_of(ledger, "price")[-1]  # p4: the first ETH mark
    rewrite(ledger, seq, asset="DOGE")  # not listed
    report = audit(ledger)
    found = at(report, seq, "R3.3")
    assert found and "DOGE" in found[0].message


def test_an_input_not_in_normal_form_r3_3(ledger):
    seq = 7
    rewrite(ledger, seq, amount="700.0")  # R1.1: recorded inputs are normalised
    report = audit(ledger)
    assert at(report, seq, "R3.3")


def test_an_input_id_recorded_twice_r3_4(ledger):
    seq = 9  # d3 becomes a second "d2" with other content
    rewrite(ledger, seq, id="d2")
    report = audit(ledger)
    found = at(report, seq, "R3.4")
    assert any("recorded again" in f.message and "seq 8" in f.message for f in found), report.findings


def test_an_input_id_recorded_twice_is_found_after_the_seen_ids_went_to_disk(ledger, monkeypatch):
    """R3.4: the audit keeps the ids it has seen in a temporary table (its memory must not grow
    with the log); an id first recorded before a flush is still found when recorded again."""
    from clearing import audit as audit_module

    monkeypatch.setattr(audit_module._SeenIds, "FLUSH_EVERY", 2)
    rewrite(ledger, 9, id="d2")
    found = at(audit(ledger), 9, "R3.4")
    assert any("recorded again" in f.message and "seq 8" in f.message for f in found), found


def test_an_input_ids_row_for_no_recorded_input_is_found_r3_4(ledger):
    execute(ledger, "INSERT INTO input_ids VALUES ('ghost', 5, ?)", (b"\x05" * 32,))
    found = at(audit(ledger), 5, "R3.4")
    assert any("'ghost'" in f.message and "not that input" in f.message for f in found), found


def test_a_decision_moved_to_another_input_r3_6(ledger):
    seq = seqs_of(ledger, "rejected")[0]
    rewrite(ledger, seq, ref="w1")
    report = audit(ledger)
    assert at(report, seq, "R3.6")


def test_a_decision_with_another_ts_than_its_input_r3_6(ledger):
    seq = seqs_of(ledger, "rejected")[0]
    rewrite(ledger, seq, ts="2026-03-01T00:00:09.5Z")
    report = audit(ledger)
    assert at(report, seq, "R3.6")


# ----------------------------------------------------------------------------- order, gaps, bytes


def test_two_events_swapped_are_found_at_both_seqs(ledger):
    execute(ledger, "UPDATE stored_events SET originator_version = -16 WHERE originator_version = 16")
    execute(ledger, "UPDATE stored_events SET originator_version = 16 WHERE originator_version = 17")
    execute(ledger, "UPDATE stored_events SET originator_version = 17 WHERE originator_version = -16")
    report = audit(ledger)
    assert not report.ok
    assert at(report, 16, "R3.1") and at(report, 17, "R3.1")
    assert at(report, 17, "R3.2")  # the withdrawal's ts is before the transfer's


def test_two_payloads_swapped_are_found_at_both_seqs(ledger):
    # Two deposits with the same ts: only the rows' contents trade places.
    p = payloads(ledger)
    execute(ledger, "UPDATE stored_events SET state = ? WHERE originator_version = 8", (p[8],))
    execute(ledger, "UPDATE stored_events SET state = ? WHERE originator_version = 9", (p[7],))
    report = audit(ledger)
    assert not report.ok
    assert at(report, 8, "R3.1") and at(report, 9, "R3.1")
    assert at(report, 8, "§5") and at(report, 9, "§5")


def test_a_deleted_event_is_a_gap_at_its_seq(ledger):
    execute(ledger, "DELETE FROM stored_events WHERE originator_version = 16")
    report = audit(ledger)
    assert not report.ok
    assert report.events == HEAD - 1
    gap = at(report, 16, "R3.1")
    assert any("missing" in f.message for f in gap)
    assert all(f.rule != "§5" for f in report.findings)  # no noise from the shifted tree


def test_a_deleted_liquidation_leaves_an_account_liquidatable_r12_4(ledger):
    seq = seqs_of(ledger, "liquidation")[0]
    execute(ledger, "DELETE FROM stored_events WHERE originator_version = ?", (seq,))
    report = audit(ledger)
    assert at(report, seq, "R3.1")
    assert any(f.rule == "R12.4" and "alice" in f.message for f in report.findings), report.findings
    assert "R12.5" in rules(report)


def test_the_last_event_deleted(ledger):
    execute(ledger, "DELETE FROM stored_events WHERE originator_version = ?", (HEAD,))
    report = audit(ledger)
    assert report.events == HEAD - 1
    assert at(report, HEAD, "R3.1")  # event_index still has it
    assert at(report, HEAD - 1, "R3.6") or "R12.5" in rules(report)  # funding without funding_settled


@pytest.mark.parametrize(
    "state",
    [b"\x00\xff\x10", b"", b"{}", b'{"type":"deposit"}', b"not json", None, 42, "text, not bytes"],
    ids=["binary", "empty", "empty-object", "missing-fields", "not-json", "null", "integer", "text"],
)
def test_a_payload_that_does_not_decode_is_a_finding_not_a_crash(ledger, state):
    seq = seqs_of(ledger, "liquidation")[0]
    execute(ledger, "UPDATE stored_events SET state = ? WHERE originator_version = ?", (state, seq))
    report = audit(ledger)
    assert not report.ok
    assert at(report, seq, "§5")


def test_a_payload_stored_as_text_with_the_same_bytes_is_not_a_change(ledger):
    execute(ledger, "UPDATE stored_events SET state = CAST(state AS TEXT) WHERE originator_version = 7")
    assert audit(ledger).ok


def test_a_payload_in_non_canonical_form_is_found(ledger):
    original = payloads(ledger)[6]
    spaced = original.replace(b",", b", ", 1)  # same JSON, other bytes
    execute(ledger, "UPDATE stored_events SET state = ? WHERE originator_version = 7", (spaced,))
    report = audit(ledger)
    assert any("canonical" in f.message for f in at(report, 7, "§5"))


def test_a_wrong_topic_is_found(ledger):
    execute(ledger, "UPDATE stored_events SET topic = 'withdrawal' WHERE originator_version = 7")
    assert at(audit(ledger), 7, "R3.1")


def test_a_reordered_ts_in_the_payload_is_r3_2(ledger):
    rewrite(ledger, 16, ts="2026-03-01T00:00:04Z")  # w1 before t3's 00:00:06
    report = audit(ledger)
    assert at(report, 16, "R3.2")


# ----------------------------------------------------------------------------- side tables


def test_a_changed_event_index_row_is_found(ledger):
    execute(ledger, "UPDATE event_index SET ts_us = ts_us + 1 WHERE seq = 12")
    execute(ledger, "UPDATE event_index SET ref = 'nope' WHERE seq = 13")
    execute(ledger, "DELETE FROM event_index WHERE seq = 20")
    report = audit(ledger)
    assert at(report, 12, "R3.2")
    assert at(report, 13, "R3.1")
    assert at(report, 20, "R3.1")


def test_a_changed_leaf_in_event_index_is_found(ledger):
    execute(ledger, "UPDATE event_index SET leaf = ? WHERE seq = 5", (b"\x01" * 32,))
    assert at(audit(ledger), 5, "§5")


def test_a_changed_merkle_node_is_found(ledger):
    execute(ledger, "UPDATE merkle_nodes SET hash = ? WHERE level = 2 AND idx = 3", (b"\x02" * 32,))
    found = at(audit(ledger), 16, "§5")  # the node over seq 13..16
    assert found and "level 2, index 3" in found[0].message


def test_a_missing_or_extra_merkle_node_is_found(ledger):
    execute(ledger, "DELETE FROM merkle_nodes WHERE level = 1 AND idx = 0")
    execute(ledger, "INSERT INTO merkle_nodes VALUES (7, 99, ?)", (b"\x03" * 32,))
    report = audit(ledger)
    assert any("missing" in f.message for f in at(report, 2, "§5"))
    assert any("outside the log" in f.message for f in report.findings)


def test_a_changed_input_id_row_is_found(ledger):
    execute(ledger, "UPDATE input_ids SET digest = ? WHERE id = 'd2'", (b"\x04" * 32,))
    execute(ledger, "DELETE FROM input_ids WHERE id = 't1'")
    report = audit(ledger)
    assert at(report, 8, "R3.4") and at(report, 13, "R3.4")


def test_a_tampered_snapshot_is_found_and_an_honest_one_is_not(ledger):
    from tests.test_audit import folded_state

    events = payloads(ledger)
    honest = folded_state(events, 20)
    store = open_store(str(ledger))
    try:
        store.put_snapshot(20, snapshot.encode(honest))
    finally:
        store.close()
    assert audit(ledger).ok
    forged = folded_state(events, 20)
    forged.accounts["bob"].cash += 1_000_000
    store = open_store(str(ledger))
    try:
        store.put_snapshot(20, snapshot.encode(forged))
    finally:
        store.close()
    assert at(audit(ledger), 20, "R3.7")


def test_a_dropped_table_is_a_finding_not_a_crash(ledger):
    execute(ledger, "DROP TABLE event_index")
    report = audit(ledger)
    assert not report.ok
    assert any("event_index" in f.message for f in report.findings)


def test_findings_of_one_kind_are_capped(ledger):
    execute(ledger, "UPDATE event_index SET ref = ref || 'x'")  # every row
    report = audit(ledger)
    from clearing.audit import LIMIT_PER_KIND

    assert len(report.findings) <= LIMIT_PER_KIND + 1
    assert any("more findings of this kind" in f.message for f in report.findings)


# ----------------------------------------------------------------------------- checkpoints


def test_a_change_below_a_signed_checkpoint_is_found_by_its_root(ledger):
    put_checkpoint(ledger, HEAD, sign_checkpoint(ledger, HEAD))
    seq = 7
    rewrite(ledger, seq, amount="701")
    report = audit(ledger)
    assert at(report, seq, "§5")
    assert any("signed root" in f.message for f in at(report, HEAD, "§5"))


def test_a_checkpoint_with_a_bad_signature_is_found(ledger):
    note = sign_checkpoint(ledger, 20)
    text, signature_line = note.rsplit("\n\n", 1)
    name, b64 = signature_line[2:].strip().split(" ")
    raw = bytearray(__import__("base64").b64decode(b64))
    raw[10] ^= 1
    bad = f"{text}\n\n\u2014 {name} {__import__('base64').b64encode(bytes(raw)).decode()}\n"
    put_checkpoint(ledger, 20, bad)
    found = at(audit(ledger), 20, "§5")
    assert found and "signature" in found[0].message


def test_a_checkpoint_signed_by_another_key_is_found(ledger, tmp_path):
    from tests.test_audit import build_ledger

    other = build_ledger(tmp_path / "other")
    note = sign_checkpoint(other, 20)  # same origin, another ledger's key
    put_checkpoint(ledger, 20, note)
    assert at(audit(ledger), 20, "§5")


def test_a_checkpoint_of_another_log_is_found_and_is_inconsistent(ledger):
    put_checkpoint(ledger, HEAD, sign_checkpoint(ledger, HEAD))
    put_checkpoint(ledger, 20, sign_checkpoint(ledger, 20, root=hashlib.sha256(b"fork").digest()))
    report = audit(ledger)
    assert any("signed root" in f.message for f in at(report, 20, "§5"))
    assert any("not consistent" in f.message for f in at(report, HEAD, "§5"))


def test_two_checkpoints_of_one_size_with_different_roots_are_found(ledger):
    put_checkpoint(ledger, 20, sign_checkpoint(ledger, 20))
    put_checkpoint(ledger, 20, sign_checkpoint(ledger, 20, root=hashlib.sha256(b"fork").digest()))
    assert any("different roots" in f.message for f in at(audit(ledger), 20, "§5"))


def test_a_checkpoint_with_a_wrong_state_root_is_found(ledger):
    put_checkpoint(ledger, 25, sign_checkpoint(ledger, 25, state_root=hashlib.sha256(b"x").digest()))
    found = at(audit(ledger), 25, "§5")
    assert found and "state root" in found[0].message


def test_a_checkpoint_beyond_the_log_is_found(ledger):
    put_checkpoint(ledger, HEAD, sign_checkpoint(ledger, HEAD))
    execute(ledger, "DELETE FROM stored_events WHERE originator_version = ?", (HEAD,))
    report = audit(ledger)
    assert any("more events than the log holds" in f.message for f in at(report, HEAD, "§5"))


# ----------------------------------------------------------------------------- the forged decision


def _forge_liquidation_penalty(db: Path) -> tuple[int, str, str]:
    """Rewrite the first liquidation's penalty, then make every hash agree with the forgery:
    its event_index.leaf, all merkle_nodes; return (seq, old penalty, new penalty)."""
    seq = seqs_of(db, "liquidation")[0]
    liq = event(db, seq)
    old = liq.penalty
    new = fmt_units(units_of(old, 6) + 10_000_000, 6)  # 10 USD more taken from the account
    forged = rewrite(db, seq, penalty=new)
    execute(db, "UPDATE event_index SET leaf = ? WHERE seq = ?", (verifier.leaf_hash(forged), seq))
    leaves = [verifier.leaf_hash(p) for p in payloads(db)]
    nodes = merkle.tree_nodes(leaves)
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.execute("DELETE FROM merkle_nodes")
            conn.executemany(
                "INSERT INTO merkle_nodes VALUES (?, ?, ?)",
                [(level, idx, h) for (level, idx), h in nodes.items() if level >= 1],
            )
    finally:
        conn.close()
    return seq, old, new


def test_a_forged_liquidation_penalty_with_consistent_hashes_is_found_by_re_derivation(ledger):
    seq, old, new = _forge_liquidation_penalty(ledger)
    # A checkpoint before the forgery stays valid; one at the head is re-signed over it.
    put_checkpoint(ledger, seq - 2, sign_checkpoint(ledger, seq - 2))
    put_checkpoint(ledger, HEAD, sign_checkpoint(ledger, HEAD))

    # The forgery is consistent: the stored tree's root is the signed one, every leaf matches.
    store = open_store(str(ledger))
    try:
        signed = [verifier.parse_checkpoint(verifier.verify_note(n, store.meta()["verifier_key"]))
                  for _, n in store.checkpoints()]
        assert all(merkle.root(cp.size, merkle.store_nodes(store)) == cp.root for cp in signed)
    finally:
        store.close()

    report = audit(ledger)
    assert not report.ok
    assert all(f.rule != "§5" for f in report.findings), report.findings
    found = at(report, seq, "R12.5")
    assert found, report.findings
    assert f"penalty: recorded '{new}', re-derived '{old}'" in found[0].message


def test_a_forged_liquidation_under_an_honest_checkpoint_breaks_it(ledger):
    put_checkpoint(ledger, HEAD, sign_checkpoint(ledger, HEAD))  # honest, before the forgery
    seq, _old, _new = _forge_liquidation_penalty(ledger)
    put_checkpoint(ledger, HEAD, sign_checkpoint(ledger, HEAD))  # the forger's, same size
    report = audit(ledger)
    assert at(report, seq, "R12.5")
    head = at(report, HEAD, "§5")
    assert any("signed root" in f.message for f in head)
    assert any("different roots" in f.message for f in head)


def test_input_digests_are_the_canonical_content_digests(pristine):
    """The audit's R3.4 cross-check computes what ingest stores in input_ids."""
    conn = sqlite3.connect(pristine)
    try:
        rows = dict(conn.execute("SELECT id, digest FROM input_ids").fetchall())
    finally:
        conn.close()
    for payload in payloads(pristine):
        ev = decode(payload)
        if hasattr(ev, "id"):
            assert rows[ev.id] == content_digest(ev)
