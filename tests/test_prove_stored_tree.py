"""Proofs from the state trees kept at signed sizes (``LogStore.put_state_tree``, interfaces §5).

`sign` keeps the state tree of the size it signs; `prove` at a signed size then reads the
account's leaf and its path instead of rebuilding the state. The proof must be the same bytes
as the one rebuilt from the store, and a kept row that was changed must never make a proof
that does not verify: `prove` checks what it read against the signed state root and rebuilds
(and keeps again) when it does not hold. Both stores, one workload of ~300 inputs.
"""

from __future__ import annotations

import base64
import shutil
import sqlite3
import uuid
from pathlib import Path

import pytest

from bench.workload import write
from clearing.tlog import TLog, resolve_point
from events.store import StoreError, open_store
from events.verifier import dump_state_proof, leaf_hash, verify_state_proof_text
from projections import history, statetree
from tests.conftest import ORIGIN, _run_cli

ACCOUNTS = 30


def complete_nodes(leaves: int) -> int:
    """Leaves plus the complete subtrees above them: sum of leaves // 2^level."""
    return 2 * leaves - bin(leaves).count("1")


def is_valid(doc: dict, vk: str) -> bool:
    checks = verify_state_proof_text(dump_state_proof(doc), vk)
    return bool(checks) and all(c.ok for c in checks)


class Ledger:
    """A ledger of the workload, with SQL access to its kept state trees."""

    def __init__(self, url: str, key: str, table: str, connect) -> None:
        self.url, self.key, self.table, self._connect = url, key, table, connect
        self.store = open_store(url)
        self.vk = self.store.meta()["verifier_key"]
        head = self.store.head()[0]
        self.sizes = []  # seqs that name a time (R3.7), spread over the log
        for n in (head // 5, head // 2, (4 * head) // 5, head):
            for m in range(n, 0, -1):
                try:
                    resolve_point(self.store, None, m)
                except StoreError:
                    continue
                self.sizes.append(m)
                break

    def sql(self, statement: str, params: tuple = ()) -> list[tuple]:
        con = self._connect()
        try:
            cur = con.execute(statement.replace("{t}", self.table), params)
            rows = cur.fetchall() if cur.description else []
            con.commit()
            return rows
        finally:
            con.close()

    def kept(self, size: int) -> list[tuple]:
        return self.sql("SELECT level, idx, hash, account, leaf FROM {t} WHERE size = %s "
                        "ORDER BY level, idx", (size,))

    def prove(self, account: str, size: int) -> dict:
        _, at = resolve_point(self.store, None, size)
        return TLog(self.store).prove(account, size, at, self.key)

    def accounts(self, size: int) -> list[str]:
        return statetree.account_ids(history.state_at_seq(self.store, size))


def _workload(tmp: Path) -> Path:
    path = tmp / "in.jsonl"
    write(str(path), 300, ACCOUNTS, seed=7)
    return path


@pytest.fixture(scope="module")
def sqlite_ledger(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kept-sqlite")
    code, _, err = _run_cli("init", "--origin", ORIGIN, cwd=folder)
    assert code == 0, err
    code, _, err = _run_cli("ingest", _workload(folder), cwd=folder)
    assert code == 0, err
    db = folder / "clearing.db"

    ledger = Ledger(str(db), str(db) + ".key", "state_nodes",
                    lambda: _QmarkConnection(sqlite3.connect(db)))
    yield ledger
    ledger.store.close()


class _QmarkConnection:
    """sqlite3 with the ``%s`` placeholders the tests write for both stores."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con

    def execute(self, statement: str, params: tuple = ()):
        return self.con.execute(statement.replace("%s", "?"), params)

    def commit(self) -> None:
        self.con.commit()

    def close(self) -> None:
        self.con.close()


@pytest.fixture(scope="module")
def pg_ledger(tmp_path_factory, pg_database):
    import psycopg

    folder = tmp_path_factory.mktemp("kept-pg")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    url = f"{pg_database}?schema={schema}"
    key = folder / "k.key"
    code, _, err = _run_cli("init", "--store", url, "--origin", ORIGIN, "--key-file", key, cwd=folder)
    assert code == 0, err
    code, _, err = _run_cli("ingest", "--store", url, _workload(folder), cwd=folder)
    assert code == 0, err
    ledger = Ledger(url, str(key), f"{schema}.clearing_state_nodes",
                    lambda: psycopg.connect(pg_database))
    yield ledger
    ledger.store.close()


@pytest.fixture(params=["sqlite", "pg"])
def ledger(request):
    return request.getfixturevalue(f"{request.param}_ledger")


# =========================================================================== the same proof


def test_proof_from_the_kept_tree_is_the_proof_rebuilt_from_the_store(ledger):
    """For several sizes and accounts (system accounts included): the proof from the kept tree,
    byte for byte, is the proof rebuilt from the store, and its leaf, index and path are those
    of the state tree computed straight from the state (``statetree.account_proof``)."""
    tlog = TLog(ledger.store)
    for size in ledger.sizes:
        tlog.sign(size, ledger.key)
    for size in ledger.sizes:
        ids = ledger.accounts(size)
        picks = sorted({ids[0], ids[-1], ids[len(ids) // 2], ids[1]})
        assert len(ledger.kept(size)) == complete_nodes(len(ids))
        state = history.state_at_seq(ledger.store, size)
        for account in picks:
            kept = ledger.prove(account, size)
            assert is_valid(kept, ledger.vk)
            leaf, index, n, path = statetree.account_proof(state, account)
            assert (kept["leaf_index"], kept["state_size"]) == (index, n)
            assert dump_state_proof(kept) == dump_state_proof({
                **kept,
                "leaf": base64.b64encode(leaf).decode(),
                "state_path": [base64.b64encode(h).decode() for h in path],
            })
            # Without the kept tree: rebuilt from the store (which keeps the tree again).
            ledger.sql("DELETE FROM {t} WHERE size = %s", (size,))
            rebuilt = ledger.prove(account, size)
            assert dump_state_proof(rebuilt) == dump_state_proof(kept)
            assert len(ledger.kept(size)) == complete_nodes(len(ids))


def test_prove_at_an_unsigned_size_signs_it_and_keeps_its_tree(ledger):
    size = ledger.sizes[0] - 1
    while True:
        try:
            resolve_point(ledger.store, None, size)
            break
        except StoreError:
            size -= 1
    ledger.sql("DELETE FROM {t} WHERE size = %s", (size,))
    assert TLog(ledger.store).at_size(size) is None or ledger.kept(size) == []
    account = ledger.accounts(size)[2]
    doc = ledger.prove(account, size)
    assert is_valid(doc, ledger.vk)
    assert TLog(ledger.store).at_size(size) is not None
    assert ledger.kept(size)
    assert dump_state_proof(ledger.prove(account, size)) == dump_state_proof(doc)


def test_unknown_account_at_a_kept_size_is_still_unknown(ledger):
    size = ledger.sizes[-1]
    TLog(ledger.store).sign(size, ledger.key)
    with pytest.raises(StoreError) as exc:
        ledger.prove("nobody-of-that-name", size)
    assert exc.value.code == "unknown_account"


# =========================================================================== changed rows


def _path_row(ledger: Ledger, size: int, account: str) -> tuple[int, int]:
    """A stored node on the account's path: its leaf's sibling's parent's sibling, or so."""
    (idx,) = ledger.sql("SELECT idx FROM {t} WHERE size = %s AND account = %s", (size, account))[0]
    return 1, (idx >> 1) ^ 1


def _tamper_node(ledger, size, account):
    level, idx = _path_row(ledger, size, account)
    ledger.sql("UPDATE {t} SET hash = %s WHERE size = %s AND level = %s AND idx = %s",
               (b"\x07" * 32, size, level, idx))


def _tamper_sibling_leaf_hash(ledger, size, account):
    (idx,) = ledger.sql("SELECT idx FROM {t} WHERE size = %s AND account = %s", (size, account))[0]
    ledger.sql("UPDATE {t} SET hash = %s WHERE size = %s AND level = 0 AND idx = %s",
               (b"\x01" * 32, size, idx ^ 1))


def _tamper_leaf(ledger, size, account):
    (leaf,) = ledger.sql("SELECT leaf FROM {t} WHERE size = %s AND account = %s", (size, account))[0]
    changed = bytes(leaf).replace(b'"account":', b'"account" :', 1)
    assert changed != bytes(leaf)
    ledger.sql("UPDATE {t} SET leaf = %s WHERE size = %s AND account = %s", (changed, size, account))


def _tamper_leaf_and_its_hash(ledger, size, account):
    (leaf,) = ledger.sql("SELECT leaf FROM {t} WHERE size = %s AND account = %s", (size, account))[0]
    changed = bytes(leaf).replace(b"}", b',"x":1}', 1) if b"}" in bytes(leaf) else bytes(leaf) + b" "
    ledger.sql("UPDATE {t} SET leaf = %s, hash = %s WHERE size = %s AND account = %s",
               (changed, leaf_hash(changed), size, account))


def _tamper_account_names(ledger, size, account):
    """The account's name moved to its neighbour's leaf: a leaf that is in the tree, but not
    the account's."""
    (idx,) = ledger.sql("SELECT idx FROM {t} WHERE size = %s AND account = %s", (size, account))[0]
    ledger.sql("UPDATE {t} SET account = %s WHERE size = %s AND account = %s",
               ("moved-away", size, account))
    ledger.sql("UPDATE {t} SET account = %s WHERE size = %s AND level = 0 AND idx = %s",
               (account, size, idx ^ 1))


def _delete_path_node(ledger, size, account):
    level, idx = _path_row(ledger, size, account)
    ledger.sql("DELETE FROM {t} WHERE size = %s AND level = %s AND idx = %s", (size, level, idx))


def _delete_last_leaf(ledger, size, account):
    ledger.sql("DELETE FROM {t} WHERE size = %s AND level = 0 AND idx = "
               "(SELECT max(idx) FROM {t} WHERE size = %s AND level = 0)", (size, size))


TAMPERS = {
    "path_node": _tamper_node,
    "sibling_leaf_hash": _tamper_sibling_leaf_hash,
    "leaf_bytes": _tamper_leaf,
    "leaf_bytes_and_hash": _tamper_leaf_and_its_hash,
    "account_name": _tamper_account_names,
    "missing_node": _delete_path_node,
    "tree_size": _delete_last_leaf,
}


@pytest.mark.parametrize("tamper", sorted(TAMPERS))
def test_a_changed_kept_row_is_never_used_for_a_proof(ledger, tamper):
    """Whatever kept row changes, the proof is the honest one (rebuilt), it verifies, and the
    kept tree is the honest one again afterwards."""
    size = ledger.sizes[1]
    TLog(ledger.store).sign(size, ledger.key)
    ids = ledger.accounts(size)
    account = ids[len(ids) // 2 - 1]  # not the last leaf: the tree size change shows
    honest = ledger.prove(account, size)
    honest_rows = ledger.kept(size)
    TAMPERS[tamper](ledger, size, account)
    assert ledger.kept(size) != honest_rows
    doc = ledger.prove(account, size)
    assert dump_state_proof(doc) == dump_state_proof(honest)
    assert is_valid(doc, ledger.vk)
    assert ledger.kept(size) == honest_rows


def test_a_lying_store_never_gives_a_proof_that_does_not_verify(sqlite_ledger):
    """A store whose kept-tree reads are all wrong (another account's leaf, a shifted index,
    a wrong size, wrong nodes) still gives the honest proof."""
    ledger = sqlite_ledger
    size = ledger.sizes[2]
    TLog(ledger.store).sign(size, ledger.key)
    ids = ledger.accounts(size)
    account = ids[3]
    honest = dump_state_proof(ledger.prove(account, size))
    real_leaf, real_nodes = ledger.store.state_leaf, ledger.store.get_state_nodes
    lies = [
        (lambda s, a: real_leaf(s, ids[4]), real_nodes),
        (lambda s, a: (lambda i, n, leaf: (i + 1, n, leaf))(*real_leaf(s, a)), real_nodes),
        (lambda s, a: (lambda i, n, leaf: (i, n + 1, leaf))(*real_leaf(s, a)), real_nodes),
        (lambda s, a: (lambda i, n, leaf: (i, n, leaf + b" "))(*real_leaf(s, a)), real_nodes),
        (real_leaf, lambda s, keys: {k: b"\x00" * 32 for k in keys}),
        (real_leaf, lambda s, keys: {}),
        (lambda s, a: ("0", "9", b"{}"), real_nodes),
    ]
    try:
        for state_leaf, get_state_nodes in lies:
            ledger.store.state_leaf = state_leaf
            ledger.store.get_state_nodes = get_state_nodes
            assert dump_state_proof(ledger.prove(account, size)) == honest
    finally:
        del ledger.store.state_leaf, ledger.store.get_state_nodes


def test_a_kept_tree_is_not_used_once_the_events_behind_it_changed(tmp_path):
    """As when the state is rebuilt: an event payload changed after the checkpoint (and after
    the latest snapshot) makes `prove` refuse, with the tree kept or without it."""
    folder = tmp_path / "ledger"
    folder.mkdir()
    assert _run_cli("init", "--origin", ORIGIN, cwd=folder)[0] == 0
    assert _run_cli("ingest", _workload(tmp_path), cwd=folder)[0] == 0
    db = folder / "clearing.db"
    store = open_store(str(db))
    try:
        head = store.head()[0]
        tlog = TLog(store)
        tlog.sign(head, str(db) + ".key")
        account = statetree.account_ids(history.state_at_seq(store, head))[0]
        seq, at = resolve_point(store, None, head)
        con = sqlite3.connect(db)
        seq_changed, state = con.execute(
            "SELECT originator_version, state FROM stored_events WHERE topic = 'deposit' "
            "ORDER BY originator_version LIMIT 1").fetchone()
        at_amount = bytes(state).index(b'"amount":"') + len(b'"amount":"')
        digit = bytes(state)[at_amount:at_amount + 1]
        changed = bytes(state)[:at_amount] + (b"9" if digit != b"9" else b"8") + bytes(state)[at_amount + 1:]
        con.execute("UPDATE stored_events SET state = ? WHERE originator_version = ?",
                    (changed, seq_changed))
        con.commit()
        with pytest.raises(StoreError) as exc:
            TLog(store).prove(account, seq, at, str(db) + ".key")
        assert exc.value.code == "inconsistent"
        con.execute("DELETE FROM state_nodes")
        con.commit()
        with pytest.raises(StoreError) as exc:
            TLog(store).prove(account, seq, at, str(db) + ".key")
        assert exc.value.code == "inconsistent"
        con.close()
    finally:
        store.close()


def test_a_ledger_without_the_table_proves_and_gets_it(tmp_path, sqlite_ledger):
    """A ledger made before state trees were kept: no table until the first one is kept."""
    db = tmp_path / "old.db"
    shutil.copy(sqlite_ledger.url, db)
    shutil.copy(sqlite_ledger.key, str(db) + ".key")
    con = sqlite3.connect(db)
    con.execute("DROP TABLE IF EXISTS state_nodes")
    con.commit()
    con.close()
    store = open_store(str(db))
    try:
        size = sqlite_ledger.sizes[0]
        assert store.state_leaf(size, "x") is None and store.get_state_nodes(size, [(0, 0)]) == {}
        account = statetree.account_ids(history.state_at_seq(store, size))[0]
        _, at = resolve_point(store, None, size)
        doc = TLog(store).prove(account, size, at, str(db) + ".key")
        assert is_valid(doc, sqlite_ledger.vk)
        assert store.state_leaf(size, account) is not None
    finally:
        store.close()


# =========================================================================== the store methods


def test_put_state_tree_replaces_the_tree_of_its_size_only(ledger):
    store = ledger.store
    store.put_state_tree(1, [("a", b"\x01" * 32, b"A"), ("b", b"\x02" * 32, b"B")],
                         [(1, 0, b"\x03" * 32)])
    store.put_state_tree(2, [("a", b"\x04" * 32, b"A2")], [])
    assert store.state_leaf(1, "b") == (1, 2, b"B")
    assert store.state_leaf(1, "c") is None and store.state_leaf(3, "a") is None
    assert store.get_state_nodes(1, [(0, 0), (1, 0), (2, 0)]) == {(0, 0): b"\x01" * 32, (1, 0): b"\x03" * 32}
    store.put_state_tree(1, [("c", b"\x05" * 32, b"C")], [])
    assert store.state_leaf(1, "b") is None and store.state_leaf(1, "c") == (0, 1, b"C")
    assert store.get_state_nodes(1, [(1, 0)]) == {}
    assert store.state_leaf(2, "a") == (0, 1, b"A2")
    ledger.sql("DELETE FROM {t} WHERE size IN (1, 2)")


def test_latest_snapshot_seq_is_the_seq_of_the_latest_snapshot(ledger):
    store = ledger.store
    for at in (0, 1, ledger.sizes[-1], 10**9):
        snap = store.latest_snapshot(at)
        assert store.latest_snapshot_seq(at) == (snap[0] if snap else 0)


def test_root_extending_stored_nodes_is_the_frontiers_root():
    """``merkle.root_extending`` (the re-check of the events behind a kept tree) against the
    frontier it shortcuts, for every split of trees up to 70 leaves and some larger ones."""
    import hashlib

    from events import merkle

    cases = [(start, size) for size in range(71) for start in range(size + 1)]
    cases += [(1000, 1025), (1023, 4097), (4096, 4096), (0, 3000), (2047, 2049)]
    for start, size in cases:
        leaves = [hashlib.sha256(b"%d" % i).digest() for i in range(size)]
        nodes = merkle.tree_nodes(leaves)
        frontier = merkle.Frontier.from_nodes(start, nodes)
        frontier.append(leaves[start:])
        assert merkle.root_extending(start, leaves[start:], nodes) == frontier.root(), (start, size)
