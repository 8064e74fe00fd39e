"""Signed checkpoints of the tamper-evident log (interfaces §2, §3, §5), end to end.

Everything goes through the installed ``clearing`` command (``run_cli`` of conftest), and every
figure the ledger signs is recomputed here independently: the log root from the stored payloads
(``stored_events.state`` in ``originator_version`` order) with RFC 9162 hashing written out in
this file, the state root from ``clearing state --seq N --json``. Only the offline verifier
(``events.verifier``) and, where a test says so, the store's Merkle nodes are used from the
project itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import shutil
import stat
from pathlib import Path

import pytest

from clearing import keys
from events import merkle, verifier
from events.store import StoreError, open_store
from tests.conftest import ORIGIN, TEN_LINES, _run_cli

# --------------------------------------------------------------------------- independent RFC 9162


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def mth(hashes: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 MTH over leaf HASHES, straight from the definition."""
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    k = 1
    while k * 2 < len(hashes):
        k *= 2
    return node_hash(mth(hashes[:k]), mth(hashes[k:]))


def subproof(m: int, hashes: list[bytes], complete: bool) -> list[bytes]:
    """RFC 9162 §2.1.4.1 SUBPROOF(m, D[n], b), straight from the definition."""
    n = len(hashes)
    if m == n:
        return [] if complete else [mth(hashes)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return subproof(m, hashes[:k], complete) + [mth(hashes[k:])]
    return subproof(m - k, hashes[k:], False) + [mth(hashes[:k])]


def consistency(m: int, hashes: list[bytes]) -> list[bytes]:
    """RFC 9162 PROOF(m, D[n]) for 0 < m <= n."""
    return subproof(m, hashes, True)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --------------------------------------------------------------------------- reading the store


def stored_payloads(db: Path) -> list[bytes]:
    """The stored events' payloads in seq order, read with plain sqlite3."""
    con = sqlite3.connect(db)
    try:
        rows = con.execute("select originator_version, state from stored_events order by originator_version")
        out = []
        for i, (version, state) in enumerate(rows, start=1):
            assert version == i  # seq has no gaps
            out.append(bytes(state))
        return out
    finally:
        con.close()


def log_leaf_hashes(db: Path) -> list[bytes]:
    return [leaf_hash(p) for p in stored_payloads(db)]


def stored_checkpoints(db: Path) -> list[tuple[int, int, str]]:
    con = sqlite3.connect(db)
    try:
        return con.execute("select id, size, note from checkpoints order by id").fetchall()
    finally:
        con.close()


def meta_value(db: Path, key: str) -> str:
    con = sqlite3.connect(db)
    try:
        return con.execute("select value from meta where key = ?", (key,)).fetchone()[0]
    finally:
        con.close()


def underlyings(db: Path) -> dict[str, str]:
    out = {}
    for payload in stored_payloads(db):
        event = json.loads(payload)
        if event["type"] == "instrument":
            out[event["instrument"]] = event["underlying"]
    return out


def canonical(obj: object) -> bytes:
    """Canonical bytes (interfaces §5): compact, keys sorted, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def state_leaf(doc: dict, account: str, instruments: dict[str, str]) -> bytes:
    """The state leaf of ``account`` rebuilt from a `clearing state --json` document."""
    entry = dict(doc["accounts"][account])
    entry["account"] = account
    depends = set(entry["balances"]) | {instruments[i] for i in entry["positions"]}
    entry["marks"] = {a: doc["marks"][a] for a in sorted(depends) if a in doc["marks"]}
    return canonical(entry)


def state_root_from_doc(doc: dict, instruments: dict[str, str]) -> bytes:
    ids = sorted(doc["accounts"], key=lambda a: a.encode())
    return mth([leaf_hash(state_leaf(doc, a, instruments)) for a in ids])


def state_doc(cwd: Path, seq: int, *store: str) -> dict:
    code, out, err = _run_cli("state", *store, "--seq", str(seq), "--json", cwd=cwd)
    assert code == 0, err
    return json.loads(out)


def parse_note(note: str) -> tuple[int, bytes, bytes]:
    """(size, root, state root) of a checkpoint note, checking its exact shape."""
    lines = note.split("\n")
    assert note.endswith("\n") and len(lines) == 7 and lines[-1] == "", note
    origin, size, root, state, blank, sig, _ = lines
    assert size.isdigit() and (size == "0" or not size.startswith("0"))
    assert state.startswith("state ")
    assert blank == ""
    assert sig.startswith(f"\u2014 {origin} ")
    raw_sig = base64.b64decode(sig.split(" ")[2], validate=True)
    assert len(raw_sig) == 4 + 64  # key id + Ed25519 signature
    root_b = base64.b64decode(root, validate=True)
    state_b = base64.b64decode(state[len("state "):], validate=True)
    assert len(root_b) == 32 and len(state_b) == 32
    return int(size), root_b, state_b


#: More input after the ten lines: a second asset with a mark, accounts whose ids sort
#: differently by bytes than naively ("9x" < "@…" < "Zed" < "_u" < "a-1" < "alice" < "bob.b"),
#: a move of the mark, and a trade between two of them.
MORE_LINES = "\n".join([
    '{"id":"m1","ts":"2026-03-01T09:00:00Z","type":"asset","asset":"ETH","decimals":8,"price_decimals":2,"haircut":"0.2"}',
    '{"id":"m2","ts":"2026-03-01T09:00:00Z","type":"price","asset":"ETH","price":"3000"}',
    '{"id":"m3","ts":"2026-03-01T09:00:01Z","type":"deposit","account":"Zed","asset":"USD","amount":"50000"}',
    '{"id":"m4","ts":"2026-03-01T09:00:01Z","type":"deposit","account":"a-1","asset":"USD","amount":"50000"}',
    '{"id":"m5","ts":"2026-03-01T09:00:02Z","type":"deposit","account":"_u","asset":"ETH","amount":"2"}',
    '{"id":"m6","ts":"2026-03-01T09:00:02Z","type":"deposit","account":"9x","asset":"USD","amount":"1"}',
    '{"id":"m7","ts":"2026-03-01T09:00:03Z","type":"transfer","from":"bob","to":"bob.b","asset":"USD","amount":"10"}',
    '{"id":"m8","ts":"2026-03-01T09:00:04Z","type":"price","asset":"BTC","price":"61000.25"}',
    '{"id":"m9","ts":"2026-03-01T09:00:05Z","type":"trade","instrument":"BTC-PERP","buyer":"Zed","seller":"a-1","qty":"0.1","price":"61000","buyer_fee":"1","seller_fee":"1"}',
]) + "\n"


def split_ten(tmp: Path) -> tuple[Path, Path]:
    """The ten example lines as two files: the first six (6 events) and the last four (5)."""
    lines = TEN_LINES.read_text().splitlines(keepends=True)
    a, b = tmp / "first.jsonl", tmp / "second.jsonl"
    a.write_text("".join(lines[:6]))
    b.write_text("".join(lines[6:]))
    return a, b


def new_ledger(path: Path, origin: str = ORIGIN, *extra: str) -> str:
    path.mkdir(parents=True, exist_ok=True)
    code, out, err = _run_cli("init", "--origin", origin, *extra, cwd=path)
    assert code == 0, err
    assert out.count("\n") == 1  # stdout: the verifier key and nothing else
    return out.strip()


def ingest(cwd: Path, *args: str | Path) -> dict:
    code, out, err = _run_cli("ingest", "--json", *args, cwd=cwd)
    assert code == 0, err
    return json.loads(out)


def checkpoint_json(cwd: Path, *args: str | Path) -> dict:
    code, out, err = _run_cli("checkpoint", "--json", *args, cwd=cwd)
    assert code == 0, err
    return json.loads(out)


def foreign_key(path: Path, origin: str = ORIGIN) -> Path:
    """A signing key file that belongs to no ledger here (made as `clearing init` makes one)."""
    keys.write_new_key(str(path), origin)
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, str]:
    """A ledger of the ten example lines with a checkpoint at size 6 (`ingest --checkpoint` of
    the first six lines) and its head at 11 without one; (folder, verifier key). Tests copy it."""
    folder = tmp_path_factory.mktemp("base") / "ledger"
    vk = new_ledger(folder)
    a, b = split_ten(folder.parent)
    ingest(folder, "--checkpoint", a)
    ingest(folder, b)
    return folder, vk


def copy_of(base: tuple[Path, str], dest: Path) -> tuple[Path, str]:
    folder, vk = base
    shutil.copytree(folder, dest)
    return dest, vk


# --------------------------------------------------------------------------- the note


@pytest.fixture(scope="module")
def signed(base, tmp_path_factory) -> dict:
    """The base ledger plus MORE_LINES (20 events), then `clearing checkpoint` and
    `clearing checkpoint --json`."""
    folder, vk = copy_of(base, tmp_path_factory.mktemp("signed") / "ledger")
    (folder / "more.jsonl").write_text(MORE_LINES)
    summary = ingest(folder, "more.jsonl")
    assert summary["rejected"] == 0 and summary["head_seq"] == 20
    code, text_out, err = _run_cli("checkpoint", cwd=folder)
    assert code == 0, err
    doc = checkpoint_json(folder)
    return {"folder": folder, "vk": vk, "text": text_out, "doc": doc, "head": 20}


def test_checkpoint_prints_a_c2sp_signed_note_that_verifies(signed, tmp_path):
    vk, text_out, doc, head = signed["vk"], signed["text"], signed["doc"], signed["head"]
    size, root, state_root = parse_note(text_out)
    lines = text_out.split("\n")
    assert lines[0] == ORIGIN and size == head

    assert set(doc) == {"size", "root", "state_root", "note"}
    assert doc["size"] == head and doc["root"] == b64(root) and doc["state_root"] == b64(state_root)
    assert doc["note"] == text_out  # Ed25519 is deterministic: the same tree, the same note

    # The note verifies with the verifier key init printed (the store's meta holds the same).
    db = signed["folder"] / "clearing.db"
    assert vk == meta_value(db, "verifier_key")
    signed_text = verifier.verify_note(text_out, vk)
    assert signed_text == "\n".join(lines[:4]) + "\n"
    cp = verifier.parse_checkpoint(signed_text)
    assert (cp.origin, cp.size, cp.root, cp.extensions) == (ORIGIN, head, root, [f"state {b64(state_root)}"])
    # ... and with no other key, even one of the same name; a change to the text breaks it.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    assert verifier.verify_note(text_out, keys.verifier_key(ORIGIN, Ed25519PrivateKey.generate())) is None
    assert verifier.verify_note(text_out.replace(f"\n{head}\n", f"\n{head - 1}\n", 1), vk) is None
    assert verifier.verify_note(text_out.replace("state ", "state  ", 1), vk) is None

    # Both runs signed the same note (Ed25519 is deterministic), stored once after size 6.
    assert [(s, n) for _, s, n in stored_checkpoints(db)][1:] == [(head, text_out)]


def test_checkpoint_roots_equal_roots_recomputed_from_stored_payloads_and_state(signed):
    folder, doc = signed["folder"], signed["doc"]
    db = folder / "clearing.db"
    hashes = log_leaf_hashes(db)
    assert doc["size"] == len(hashes) == 20
    assert base64.b64decode(doc["root"]) == mth(hashes)

    state = state_doc(folder, doc["size"])
    assert state["seq"] == doc["size"]
    ids = sorted(state["accounts"], key=lambda a: a.encode())
    assert ids == ["9x", "@external", "@fees", "@insurance", "Zed", "_u", "a-1", "alice", "alice/iso",
                   "bob", "bob.b"]  # ascending byte order ("9" < "@" < "Z" < "_" < "a")
    instruments = underlyings(db)
    # the marks of a leaf are those its holdings depend on, not all marks
    assert json.loads(state_leaf(state, "_u", instruments))["marks"] == {"ETH": "3000"}
    assert json.loads(state_leaf(state, "Zed", instruments))["marks"] == {"BTC": "61000.25"}
    assert json.loads(state_leaf(state, "@insurance", instruments))["marks"] == {}
    assert base64.b64decode(doc["state_root"]) == state_root_from_doc(state, instruments)


def test_checkpoints_at_several_sizes_are_all_consistent(tmp_path):
    """Checkpoints at sizes 0 (empty ledger), 6 and 20 (`ingest --checkpoint`) and 11
    (`clearing checkpoint`): each one's roots recomputed, every pair consistent."""
    vk = new_ledger(tmp_path)
    a, b = split_ten(tmp_path)
    (tmp_path / "more.jsonl").write_text(MORE_LINES)
    db = tmp_path / "clearing.db"
    empty = checkpoint_json(tmp_path)
    assert empty["size"] == 0
    assert base64.b64decode(empty["root"]) == base64.b64decode(empty["state_root"]) == hashlib.sha256(b"").digest()

    code, out, err = _run_cli("ingest", "--checkpoint", "--json", a, cwd=tmp_path)
    assert code == 0, err
    assert json.loads(out) == {"appended": 6, "duplicates": 0, "rejected": 0, "decisions": 0, "head_seq": 6}
    rows = stored_checkpoints(db)
    assert [size for _, size, _ in rows] == [0, 6]
    assert rows[1][2] in err  # the note signed at the end of the ingest is shown on standard error
    ingest(tmp_path, b)  # no --checkpoint: none signed
    assert len(stored_checkpoints(db)) == 2
    assert checkpoint_json(tmp_path)["size"] == 11
    ingest(tmp_path, "--checkpoint", "more.jsonl")
    rows = stored_checkpoints(db)
    assert [size for _, size, _ in rows] == [0, 6, 11, 20]

    hashes = log_leaf_hashes(db)
    instruments = underlyings(db)
    heads = []
    for _, size, note in rows:
        assert verifier.verify_note(note, vk) is not None
        n, root, state_root = parse_note(note)
        assert n == size and root == mth(hashes[:size])
        if size in (6, 11):  # (20: see test_checkpoint_roots_equal_roots_recomputed_...)
            assert state_root == state_root_from_doc(state_doc(tmp_path, size), instruments)
        heads.append((size, root))

    store = open_store(str(db))
    try:
        nodes = merkle.store_nodes(store)
        for i, (m, root_m) in enumerate(heads):
            for n, root_n in heads[i + 1:]:
                if m == 0:  # RFC 9162 has no proof from the empty tree; it is a prefix of all
                    assert root_m == hashlib.sha256(b"").digest()
                    continue
                from_store = merkle.consistency_proof(m, n, nodes)
                assert from_store == consistency(m, hashes[:n])
                assert verifier.verify_consistency(m, n, root_m, root_n, from_store)
                # the proofs mean something: another old root, or a shorter proof, fails
                assert not verifier.verify_consistency(m, n, mth(hashes[1:m + 1]), root_n, from_store)
                assert not verifier.verify_consistency(m, n, root_m, root_n, from_store[:-1])
    finally:
        store.close()


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("node", [(3, 0), (2, 0), (1, 2)], ids=lambda n: f"node{n[0]}-{n[1]}")
def test_checkpoint_refused_when_a_stored_merkle_node_was_changed(base, tmp_path, node):
    """(3,0) is part of the root at 11; (2,0) and (1,2) only of the 6 -> 11 consistency proof."""
    folder, _ = copy_of(base, tmp_path / "ledger")
    db = folder / "clearing.db"
    before = stored_checkpoints(db)
    assert [size for _, size, _ in before] == [6]
    con = sqlite3.connect(db)
    (h,) = con.execute("select hash from merkle_nodes where level = ? and idx = ?", node).fetchone()
    flipped = bytes([h[0] ^ 0x01]) + bytes(h[1:])
    con.execute("update merkle_nodes set hash = ? where level = ? and idx = ?", (flipped, *node))
    con.commit()
    con.close()

    code, out, err = _run_cli("checkpoint", cwd=folder)
    assert code == 2
    assert "error[inconsistent]" in err and "Traceback" not in err
    assert out == ""
    assert stored_checkpoints(db) == before

    # The library call refuses the same way.
    from clearing.tlog import TLog

    store = open_store(str(db))
    try:
        with pytest.raises(StoreError) as exc:
            TLog(store).sign(11, str(db) + ".key")
        assert exc.value.code == "inconsistent"
    finally:
        store.close()
    assert stored_checkpoints(db) == before


def test_checkpoint_refused_when_a_stored_event_was_changed(base, tmp_path):
    folder, _ = copy_of(base, tmp_path / "ledger")
    db = folder / "clearing.db"
    before = stored_checkpoints(db)
    signed_root = parse_note(before[0][2])[1]
    con = sqlite3.connect(db)
    (state,) = con.execute("select state from stored_events where originator_version = 5").fetchone()
    changed = bytes(state).replace(b'"10000"', b'"90000"')  # alice's deposit
    assert changed != bytes(state)
    con.execute("update stored_events set state = ? where originator_version = 5", (changed,))
    con.commit()
    con.close()
    assert mth(log_leaf_hashes(db)[:6]) != signed_root  # the stored log is no longer the signed one

    code, out, err = _run_cli("checkpoint", cwd=folder)
    assert code == 2 and "error[" in err
    assert stored_checkpoints(db) == before


def test_checkpoint_with_another_ledgers_key_is_refused(base, tmp_path):
    folder, _ = copy_of(base, tmp_path / "ledger")
    db = folder / "clearing.db"
    before = stored_checkpoints(db)
    other = foreign_key(tmp_path / "other.key", "other.example/ledger")  # another origin
    twin = foreign_key(tmp_path / "twin.key", ORIGIN)  # the same origin, its own key
    code, out, err = _run_cli("checkpoint", "--key-file", other, cwd=folder)
    assert code == 2 and "error[wrong_key]" in err and out == "", err
    code, out, err = _run_cli("checkpoint", cwd=folder, env={"CLEARING_KEY_FILE": str(twin)})
    assert code == 2 and "error[wrong_key]" in err and out == "", err
    # prove signs a checkpoint at the proven size: refused as well, and no proof is written
    code, out, err = _run_cli("prove", "--account", "alice", "--seq", "9", "--key-file", twin,
                              "-o", tmp_path / "p.json", cwd=folder)
    assert code == 2 and "error[wrong_key]" in err, err
    assert not (tmp_path / "p.json").exists()
    # ingest --checkpoint with a wrong key: the inputs are recorded, the checkpoint is not
    (tmp_path / "more.jsonl").write_text(MORE_LINES)
    code, out, err = _run_cli("ingest", "--checkpoint", tmp_path / "more.jsonl", "--key-file", twin, cwd=folder)
    assert code == 2 and "error[wrong_key]" in err, err
    assert stored_checkpoints(db) == before
    # the ledger's own key still signs
    assert checkpoint_json(folder)["size"] == 20


# --------------------------------------------------------------------------- finding the key


def test_init_writes_the_key_where_it_is_named(tmp_path):
    key = tmp_path / "keys" / "signing.key"
    key.parent.mkdir()
    vk = new_ledger(tmp_path / "ledger", ORIGIN, "--key-file", str(key))
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert key.read_text().startswith(f"PRIVATE+KEY+{ORIGIN}+")
    assert not (tmp_path / "ledger" / "clearing.db.key").exists()  # only where it was named
    assert meta_value(tmp_path / "ledger" / "clearing.db", "verifier_key") == vk
    (tmp_path / "env").mkdir()
    code, out, err = _run_cli("init", "--origin", ORIGIN, cwd=tmp_path / "env",
                              env={"CLEARING_KEY_FILE": str(tmp_path / "env.key")})
    assert code == 0, err
    assert (tmp_path / "env.key").exists() and not (tmp_path / "env" / "clearing.db.key").exists()


def test_key_file_named_by_option_or_environment(base, tmp_path):
    folder, vk = copy_of(base, tmp_path / "ledger")
    db = folder / "clearing.db"
    key = tmp_path / "signing.key"
    (folder / "clearing.db.key").rename(key)  # the key now lives away from the store

    # no key named and no <store>.key: nothing is signed
    code, out, err = _run_cli("checkpoint", cwd=folder)
    assert code == 2 and out == ""
    assert [size for _, size, _ in stored_checkpoints(db)] == [6]

    doc = checkpoint_json(folder, "--key-file", key)
    assert verifier.verify_note(doc["note"], vk) is not None
    code, out, err = _run_cli("checkpoint", "--json", cwd=folder, env={"CLEARING_KEY_FILE": str(key)})
    assert code == 0, err
    assert json.loads(out)["note"] == doc["note"]
    # --key-file wins over CLEARING_KEY_FILE
    wrong = foreign_key(tmp_path / "wrong.key")
    code, out, err = _run_cli("checkpoint", "--key-file", key, cwd=folder, env={"CLEARING_KEY_FILE": str(wrong)})
    assert code == 0, err
    code, out, err = _run_cli("checkpoint", "--key-file", wrong, cwd=folder, env={"CLEARING_KEY_FILE": str(key)})
    assert code == 2 and "error[wrong_key]" in err
    # prove finds the key the same way (it signs the checkpoint at the proven size)
    code, out, err = _run_cli("prove", "--account", "bob", "--seq", "9", cwd=folder,
                              env={"CLEARING_KEY_FILE": str(key)})
    assert code == 0, err
    assert json.loads(out)["account"] == "bob"
    assert [size for _, size, _ in stored_checkpoints(db)] == [6, 11, 9]  # one note per size


def test_key_file_defaults_to_store_dot_key(tmp_path):
    sub = tmp_path / "books"
    sub.mkdir()
    store = sub / "ledger.db"
    code, out, err = _run_cli("init", "--origin", ORIGIN, "--store", store, cwd=tmp_path)
    assert code == 0, err
    vk = out.strip()
    key = sub / "ledger.db.key"
    assert key.exists() and stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert "PRIVATE" not in meta_value(store, "verifier_key")  # the database holds no private key
    assert not (tmp_path / "clearing.db.key").exists()

    code, out, err = _run_cli("checkpoint", "--json", "--store", store, cwd=tmp_path)
    assert code == 0, err
    assert verifier.verify_note(json.loads(out)["note"], vk) is not None
    code, out, err = _run_cli("checkpoint", "--json", cwd=tmp_path, env={"CLEARING_STORE": str(store)})
    assert code == 0, err
    assert verifier.verify_note(json.loads(out)["note"], vk) is not None
    # Without its key beside it the store cannot sign.
    key.rename(sub / "elsewhere.key")
    code, out, err = _run_cli("checkpoint", "--store", store, cwd=tmp_path)
    assert code == 2
    assert [size for _, size, _ in stored_checkpoints(store)] == [0]  # signing again stores no copy


def test_missing_key_file_is_reported_as_an_error_not_a_traceback(base, tmp_path):
    folder, _ = copy_of(base, tmp_path / "ledger")
    (folder / "clearing.db.key").unlink()
    code, out, err = _run_cli("checkpoint", cwd=folder)
    assert code == 2
    assert "Traceback" not in err
    assert "error[" in err
