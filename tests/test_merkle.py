"""events/merkle.py against a naive RFC 9162 reference, through the SQLite store, and
verify_state_proof of events/verifier.py on a small hand-built document."""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import json
import random

import pytest

from events import merkle
from events.store import LogRecord, StoreError, open_store
from events.verifier import (
    Check,
    dump_state_proof,
    leaf_hash,
    node_hash,
    parse_timestamp,
    verify_consistency,
    verify_inclusion,
    verify_state_proof,
    verify_state_proof_text,
)
from tests.test_signed_note_vectors import make_key, sign_note

# ----------------------------------------------------------------------------- reference
# RFC 9162 §2.1, written as literally as possible over a list of leaf hashes.


def k_of(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


class Reference:
    def __init__(self, leaves: list[bytes]):
        self.leaves = leaves

    @functools.lru_cache(maxsize=None)
    def mth(self, start: int, end: int) -> bytes:
        n = end - start
        if n == 0:
            return hashlib.sha256(b"").digest()
        if n == 1:
            return self.leaves[start]
        k = k_of(n)
        return node_hash(self.mth(start, start + k), self.mth(start + k, end))

    def path(self, m: int, start: int, end: int) -> list[bytes]:
        n = end - start
        if n == 1:
            return []
        k = k_of(n)
        if m < k:
            return self.path(m, start, start + k) + [self.mth(start + k, end)]
        return self.path(m - k, start + k, end) + [self.mth(start, start + k)]

    def subproof(self, m: int, start: int, end: int, b: bool) -> list[bytes]:
        n = end - start
        if m == n:
            return [] if b else [self.mth(start, end)]
        k = k_of(n)
        if m <= k:
            return self.subproof(m, start, start + k, b) + [self.mth(start + k, end)]
        return self.subproof(m - k, start + k, end, False) + [self.mth(start, start + k)]

    def proof(self, m: int, n: int) -> list[bytes]:
        return self.subproof(m, 0, n, True)


def leaves_for(n: int, salt: bytes = b"") -> list[bytes]:
    return [leaf_hash(salt + b"leaf %d" % i) for i in range(n)]


def all_nodes(leaves: list[bytes]) -> dict:
    """Every complete aligned node, computed independently of events.merkle."""
    nodes = {(0, i): h for i, h in enumerate(leaves)}
    level, row = 0, leaves
    while len(row) > 1:
        row = [node_hash(row[2 * i], row[2 * i + 1]) for i in range(len(row) // 2)]
        level += 1
        nodes.update({(level, i): h for i, h in enumerate(row)})
    return nodes


# ----------------------------------------------------------------------------- proofs


def test_small_sizes_all_proofs_match_reference_and_verify():
    leaves = leaves_for(70)
    nodes = all_nodes(leaves)
    ref = Reference(leaves)
    for n in range(1, 71):
        root = merkle.root(n, nodes)
        assert root == ref.mth(0, n)
        for i in range(n):
            p = merkle.inclusion_proof(i, n, nodes)
            assert p == ref.path(i, 0, n), (i, n)
            assert verify_inclusion(i, n, leaves[i], p, root)
            if i + 1 < n:
                assert not verify_inclusion(i + 1, n, leaves[i], p, root)
        for m in range(1, n + 1):
            c = merkle.consistency_proof(m, n, nodes)
            assert c == ref.proof(m, n), (m, n)
            assert verify_consistency(m, n, ref.mth(0, m), root, c)
            wrong = bytes([root[0] ^ 1]) + root[1:]
            assert not verify_consistency(m, n, ref.mth(0, m), wrong, c)
    assert merkle.root(0, nodes) == hashlib.sha256(b"").digest()


def test_random_larger_sizes():
    rng = random.Random(9162)
    leaves = leaves_for(5000, b"big")
    nodes = all_nodes(leaves)
    ref = Reference(leaves)
    for n in [127, 128, 129, 1000, 1023, 1024, 1025, 4095, 4096, 4097, 5000] + \
             [rng.randrange(2, 5001) for _ in range(10)]:
        root = merkle.root(n, nodes)
        assert root == ref.mth(0, n)
        for i in {0, n - 1, *(rng.randrange(n) for _ in range(10))}:
            p = merkle.inclusion_proof(i, n, nodes)
            assert p == ref.path(i, 0, n)
            assert verify_inclusion(i, n, leaves[i], p, root)
            bad = list(p)
            if bad:
                j = rng.randrange(len(bad))
                bad[j] = bytes([bad[j][0] ^ 1]) + bad[j][1:]
                assert not verify_inclusion(i, n, leaves[i], bad, root)
        for m in {1, n - 1, n, *(rng.randrange(1, n + 1) for _ in range(10))}:
            c = merkle.consistency_proof(m, n, nodes)
            assert c == ref.proof(m, n)
            assert verify_consistency(m, n, ref.mth(0, m), root, c)
            if c:
                assert not verify_consistency(m, n, ref.mth(0, m), root, c[:-1])


def test_proof_arguments_are_checked():
    nodes = all_nodes(leaves_for(8))
    for bad in [(-1, 8), (8, 8), (0, 0)]:
        with pytest.raises(ValueError):
            merkle.inclusion_proof(*bad, nodes)
    for bad in [(0, 8), (9, 8), (-1, 3)]:
        with pytest.raises(ValueError):
            merkle.consistency_proof(*bad, nodes)
    assert merkle.consistency_proof(8, 8, nodes) == []
    with pytest.raises(KeyError):
        merkle.root(9, nodes)  # leaf 8 is not there


def test_node_access_styles_and_batching():
    leaves = leaves_for(37)
    nodes = all_nodes(leaves)
    calls = []

    class Batched:
        def many(self, keys):
            calls.append(list(keys))
            return {k: nodes[k] for k in keys}

    want = merkle.inclusion_proof(5, 37, nodes)
    assert merkle.inclusion_proof(5, 37, lambda level, i: nodes[(level, i)]) == want
    assert merkle.inclusion_proof(5, 37, Batched()) == want
    assert merkle.consistency_proof(13, 37, Batched()) == merkle.consistency_proof(13, 37, nodes)
    assert len(calls) == 2  # one fetch per proof
    assert all(len(c) == len(set(c)) for c in calls)


def test_stored_nodes_suffice():
    """Proofs only touch leaves and complete nodes: exactly what the store keeps."""
    rng = random.Random(1)
    leaves = leaves_for(300)
    touched = set()

    def get(level, i):
        assert (i + 1) << level <= 300
        touched.add((level, i))
        return all_nodes_300[(level, i)]

    all_nodes_300 = all_nodes(leaves)
    for _ in range(200):
        n = rng.randrange(1, 301)
        merkle.inclusion_proof(rng.randrange(n), n, get)
        merkle.consistency_proof(rng.randrange(1, n + 1), n, get)
        merkle.root(n, get)
    assert touched <= set(all_nodes_300)


# ----------------------------------------------------------------------------- frontier


def test_frontier_uneven_batches_same_roots_and_nodes():
    rng = random.Random(7)
    leaves = leaves_for(1500, b"f")
    ref = Reference(leaves)
    want_nodes = {k: v for k, v in all_nodes(leaves).items() if k[0] >= 1}
    for trial in range(4):
        f = merkle.Frontier()
        got: dict = {}
        pos = 0
        while pos < len(leaves):
            step = rng.choice([1, 1, 2, 3, 7, 64, 100, 513]) if trial else 1
            batch = leaves[pos:pos + step]
            created = f.append(batch)
            pos += len(batch)
            for level, idx, h in created:
                assert level >= 1 and (idx + 1) << level <= pos
                assert (level, idx) not in got  # each node reported once
                got[(level, idx)] = h
            assert f.size == pos
            assert f.root() == ref.mth(0, pos)
            # Only nodes that this batch completed.
            assert all((idx + 1) << level > pos - len(batch) for level, idx, _ in created)
        complete = {k: v for k, v in want_nodes.items() if (k[1] + 1) << k[0] <= pos}
        assert got == complete


def test_frontier_from_nodes_continues():
    leaves = leaves_for(777, b"r")
    nodes = all_nodes(leaves)
    ref = Reference(leaves)
    for n in [0, 1, 2, 3, 64, 65, 100, 511, 512, 513, 700]:
        f = merkle.Frontier.from_nodes(n, nodes)
        assert f.size == n and f.root() == ref.mth(0, n)
        assert [(lv, i) for lv, i, _ in f.edge()] == merkle.subtree_keys(0, n)
        g = f.copy()
        created = g.append(leaves[n:])
        assert g.root() == ref.mth(0, 777) and f.size == n
        assert all(nodes[(lv, i)] == h for lv, i, h in created)
    assert merkle.Frontier().root() == hashlib.sha256(b"").digest()


def test_in_memory_helpers():
    for n in range(1, 40):
        hashes = leaves_for(n, b"s")
        root = merkle.tree_root(hashes)
        assert root == Reference(hashes).mth(0, n)
        for i in range(n):
            assert verify_inclusion(i, n, hashes[i], merkle.inclusion_proof_in_memory(i, hashes), root)


def test_proof_sizes_63k():
    n = 63_000
    leaves = leaves_for(n, b"63k")
    f = merkle.Frontier()
    nodes = {(0, i): h for i, h in enumerate(leaves)}
    for level, idx, h in f.append(leaves):
        nodes[(level, idx)] = h
    assert len(nodes) == 2 * n - bin(n).count("1")  # n leaves + n - popcount(n) inner nodes
    root = f.root()
    inc = [len(merkle.inclusion_proof(i, n, nodes)) for i in range(0, n, 97)] + \
          [len(merkle.inclusion_proof(n - 1, n, nodes))]
    assert max(inc) == 16 and min(inc) >= 9
    for m in [1, 2, 1000, 32768, 40000, 62999]:
        c = merkle.consistency_proof(m, n, nodes)
        assert len(c) <= 2 * 16
        assert verify_consistency(m, n, merkle.root(m, nodes), root, c)


# ----------------------------------------------------------------------------- the store

T0 = 1_772_323_200_000_000  # 2026-03-01T00:00:00Z in µs


def ts_text(us: int) -> str:
    secs, micro = divmod(us, 1_000_000)
    t = datetime.datetime.fromtimestamp(secs, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{micro:06d}".rstrip("0")
    return t + (f".{frac}" if frac else "") + "Z"


def event_bytes(seq: int, ts_us: int) -> bytes:
    return json.dumps({"id": f"d{seq}", "seq": seq, "ts": ts_text(ts_us), "type": "deposit"},
                      separators=(",", ":"), sort_keys=True).encode()


def event_record(seq: int, ts_us: int) -> LogRecord:
    payload = event_bytes(seq, ts_us)
    return LogRecord(seq, ts_us, "deposit", f"d{seq}", payload, leaf_hash(payload),
                     hashlib.sha256(b"in" + payload).digest())


@pytest.fixture
def ledger(tmp_path):
    s = open_store(str(tmp_path / "ledger.db"))
    s.create({"origin": "test"})
    yield s
    s.close()


def test_store_nodes_and_proofs_through_sqlite(ledger):
    rng = random.Random(3)
    f = merkle.Frontier()
    records = [event_record(s, T0 + s * 1000) for s in range(1, 1201)]
    pos = 0
    while pos < len(records):
        batch = records[pos:pos + rng.choice([1, 5, 31, 200])]
        ledger.append(batch, f.append(r.leaf for r in batch))
        pos += len(batch)
    leaves = [r.leaf for r in records]
    ref = Reference(leaves)
    nodes = merkle.store_nodes(ledger)
    mem = all_nodes(leaves)
    with ledger._tx() as cur:
        stored = cur.execute("SELECT count(*) FROM merkle_nodes").fetchone()[0]
    assert stored == len(mem) - 1200  # every complete node of level >= 1, once
    for n in [1, 2, 3, 511, 512, 513, 1199, 1200]:
        root = merkle.root(n, nodes)
        assert root == ref.mth(0, n)
        for i in {0, n - 1, rng.randrange(n)}:
            p = merkle.inclusion_proof(i, n, nodes)
            assert p == ref.path(i, 0, n) and verify_inclusion(i, n, leaves[i], p, root)
        m = rng.randrange(1, n + 1)
        assert merkle.consistency_proof(m, n, nodes) == ref.proof(m, n)
    again = merkle.Frontier.from_nodes(1200, nodes)
    assert again.root() == f.root() == ref.mth(0, 1200)
    # get_nodes: absent keys are left out; level 0 reads the events' leaves.
    got = ledger.get_nodes([(0, 0), (0, 1199), (0, 1200), (1, 599), (1, 600), (10, 0), (11, 0)])
    assert got == {(0, 0): leaves[0], (0, 1199): leaves[1199], (1, 599): mem[(1, 599)],
                   (10, 0): mem[(10, 0)]}


# ----------------------------------------------------------------------------- state proofs

ORIGIN = "test.example/clearing"
SIGNER, VERIFIER = make_key(ORIGIN, bytes(range(1, 33)))
OTHER_SIGNER, OTHER_VERIFIER = make_key(ORIGIN, bytes(range(2, 34)))
N_EVENTS = 20
TS = {s: T0 + s * 1_500_000 + (250_000 if s % 3 == 0 else 0) for s in range(1, N_EVENTS + 1)}
EVENTS = {s: event_bytes(s, TS[s]) for s in TS}
ACCOUNTS = ["@fees", "@insurance", "alice", "alice/iso", "bob"]


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def state_leaf(account: str, n: int) -> bytes:
    return json.dumps({"account": account, "balances": {"USD": str(100 * n + len(account))},
                       "marks": {}}, separators=(",", ":"), sort_keys=True).encode()


def checkpoint_note(size: int, state_root: bytes, signer: str = SIGNER, origin: str = ORIGIN,
                    extensions: list[str] | None = None) -> str:
    leaves = [leaf_hash(EVENTS[s]) for s in range(1, size + 1)]
    ext = extensions if extensions is not None else [f"state {b64(state_root)}"]
    text = f"{origin}\n{size}\n{b64(merkle.tree_root(leaves))}\n" + "".join(e + "\n" for e in ext)
    return sign_note(text, signer)


def make_doc(seq: int = 14, latest_size: int = N_EVENTS, account: str = "alice", at: str | None = None,
             **over) -> dict:
    leaves = [leaf_hash(EVENTS[s]) for s in range(1, N_EVENTS + 1)]
    log_nodes = merkle.tree_nodes(leaves)
    state = [state_leaf(a, seq) for a in ACCOUNTS]
    state_hashes = [leaf_hash(x) for x in state]
    idx = ACCOUNTS.index(account)
    boundary = [{"seq": s, "leaf": b64(EVENTS[s]),
                 "path": [b64(h) for h in merkle.inclusion_proof(s - 1, latest_size, log_nodes)]}
                for s in ([seq, seq + 1] if seq < latest_size else [seq])]
    latest_state = merkle.tree_root([leaf_hash(state_leaf(a, latest_size)) for a in ACCOUNTS])
    doc = {
        "format": "clearing-state-proof/1",
        "account": account, "seq": seq,
        "at": at or ts_text(TS[seq] + 400_000),
        "leaf": b64(state[idx]),
        "leaf_index": idx, "state_size": len(state),
        "state_path": [b64(h) for h in merkle.inclusion_proof_in_memory(idx, state_hashes)],
        "checkpoint": checkpoint_note(seq, merkle.tree_root(state_hashes)),
        "latest": checkpoint_note(latest_size, latest_state),
        "consistency": [b64(h) for h in merkle.consistency_proof(seq, latest_size, log_nodes)],
        "boundary": boundary,
    }
    doc.update(over)
    return doc


def failed(checks: list[Check]) -> list[str]:
    return [c.name for c in checks if not c.ok]


def test_valid_state_proof_passes():
    doc = make_doc()
    checks = verify_state_proof(doc, VERIFIER)
    assert failed(checks) == [], checks
    assert [c.name for c in checks] == [
        "format", "key", "checkpoint_signature", "latest_signature", "origin", "checkpoint_size",
        "state_root", "account", "state_inclusion", "consistency", "boundary_seq",
        "boundary_inclusion", "boundary_time"]
    data = dump_state_proof(doc)
    assert failed(verify_state_proof_text(data, VERIFIER)) == []
    assert failed(verify_state_proof_text(data.decode(), VERIFIER)) == []
    assert verify_state_proof_text(data, VERIFIER)[0].name == "encoding"


def test_state_proof_edge_shapes():
    # at exactly ts(seq); the last event (no seq+1); checkpoint == latest; first event.
    assert failed(verify_state_proof(make_doc(at=ts_text(TS[14])), VERIFIER)) == []
    assert failed(verify_state_proof(make_doc(seq=20, at=ts_text(TS[20] + 10**9)), VERIFIER)) == []
    assert failed(verify_state_proof(make_doc(seq=7, latest_size=7), VERIFIER)) == []
    assert failed(verify_state_proof(make_doc(seq=1), VERIFIER)) == []
    for acct in ACCOUNTS:
        assert failed(verify_state_proof(make_doc(account=acct), VERIFIER)) == []


def test_state_proof_rejections():
    good = make_doc()
    cases = {
        "boundary_time": [make_doc(at=ts_text(TS[15])), make_doc(at=ts_text(TS[14] - 1)),
                          make_doc(seq=20, at=ts_text(TS[20] - 1))],
        "format": [make_doc(at="2026-03-01T00:00:21.50Z"), make_doc(at="2026-03-01T00:00:21+00:00"),
                   make_doc(seq=True), make_doc(extra=1), make_doc(format="clearing-state-proof/2"),
                   {k: v for k, v in good.items() if k != "latest"},
                   make_doc(boundary=[dict(good["boundary"][0], x=1), good["boundary"][1]]),
                   make_doc(state_path=good["state_path"] + ["AAAA"])],
        "account": [make_doc(account="bob", leaf=good["leaf"], leaf_index=2, state_path=good["state_path"])],
        "checkpoint_signature": [make_doc(checkpoint=checkpoint_note(14, b"\0" * 32, OTHER_SIGNER)),
                                 make_doc(checkpoint=good["checkpoint"].replace("\n14\n", "\n15\n"))],
        "checkpoint_size": [dict(good, seq=13), dict(good, seq=15)],
        "origin": [make_doc(latest=checkpoint_note(20, b"\0" * 32, origin="other.example/x"))],
        "state_root": [make_doc(checkpoint=checkpoint_note(14, b"", extensions=[])),
                       make_doc(checkpoint=checkpoint_note(14, b"", extensions=["x", "y"]))],
        "state_inclusion": [make_doc(leaf_index=3), make_doc(state_size=4),
                            make_doc(state_path=good["state_path"][::-1])],
        "consistency": [make_doc(consistency=good["consistency"][:-1]),
                        make_doc(latest=checkpoint_note(19, b"\0" * 32))],
        "boundary_seq": [make_doc(boundary=good["boundary"][:1]),
                         make_doc(boundary=good["boundary"][::-1])],
        "boundary_inclusion": [make_doc(boundary=[good["boundary"][0],
                                                  dict(good["boundary"][1], path=good["boundary"][0]["path"])])],
    }
    for name, docs in cases.items():
        for doc in docs:
            f = failed(verify_state_proof(doc, VERIFIER))
            assert name in f, (name, f)
    assert "checkpoint_signature" in failed(verify_state_proof(good, OTHER_VERIFIER))
    assert failed(verify_state_proof(good, "junk")) == [
        "key", "checkpoint_signature", "latest_signature", "origin", "checkpoint_size",
        "state_root", "state_inclusion", "consistency", "boundary_seq", "boundary_inclusion",
        "boundary_time"]
    for junk in [None, [], "x", {"format": 1}, {k: None for k in good}]:
        checks = verify_state_proof(junk, VERIFIER)
        assert len(checks) == 13 and "format" in failed(checks)


def test_every_byte_flip_of_a_state_proof_fails():
    """Change each byte of the document (two different ways); every result must fail to
    verify, except the changes the format cannot bind (see verify_state_proof): ``at``
    moved within [ts(seq), ts(seq+1)), and ``state_size`` moved to a size whose RFC 9162
    path for ``leaf_index`` is the same (index 2 of 5 == of 6, 7 or 8)."""
    doc = make_doc(seq=14, at=ts_text(TS[14] + 200_000))
    data = dump_state_proof(doc)
    assert failed(verify_state_proof_text(data, VERIFIER)) == []
    ts14, ts15 = TS[14], TS[15]
    benign = []
    for pos in range(len(data)):
        for mask in (0x01, 0x02):
            changed = data[:pos] + bytes([data[pos] ^ mask]) + data[pos + 1:]
            checks = verify_state_proof_text(changed, VERIFIER)
            if not failed(checks):
                new = json.loads(changed)
                diff = {k for k in doc if new[k] != doc[k]}
                assert diff in ({"at"}, {"state_size"}), (pos, mask, diff)
                if diff == {"at"}:
                    assert ts14 <= parse_timestamp(new["at"]) < ts15
                else:
                    assert new["state_size"] in (6, 7, 8)
                benign.append((pos, diff.pop()))
    # The benign changes are confined to those two values.
    at_span = data.index(b'"at": ') + 6, data.index(b'"at": ') + 6 + len(doc["at"]) + 2
    size_pos = data.index(b'"state_size": 5') + len(b'"state_size": ')
    for pos, field in benign:
        assert (at_span[0] <= pos < at_span[1]) if field == "at" else pos == size_pos
    # '5' ^ 0x02 == '7': index 2 of 7 leaves has the same path as index 2 of 5.
    assert (size_pos, "state_size") in benign


def test_whitespace_and_key_order_are_bound_by_the_text_check():
    doc = make_doc()
    data = dump_state_proof(doc)
    variants = [
        json.dumps(doc, indent=2, ensure_ascii=False).encode(),          # no final newline
        json.dumps(doc, indent=2).encode() + b"\n",                      # \u escapes
        json.dumps(doc, separators=(",", ":")).encode() + b"\n",
        json.dumps(dict(reversed(list(doc.items()))), indent=2, ensure_ascii=False).encode() + b"\n",
        data.replace(b'"seq": 14,', b'"seq": 14, "seq": 14,'),           # duplicate key
        data.replace(b"\n  ", b"\n\t", 1),
        b"\xef\xbb\xbf" + data,                                          # BOM
    ]
    for v in variants:
        assert v != data
        assert not all(c.ok for c in verify_state_proof_text(v, VERIFIER))


def test_store_checkpoints_round_trip(ledger):
    ledger.append([event_record(s, TS[s]) for s in range(1, 6)])
    ledger.put_checkpoint(5, "note five a")
    ledger.put_checkpoint(2, "note two")
    ledger.put_checkpoint(5, "note five b")
    ledger.put_checkpoint(0, "empty")
    assert ledger.checkpoints() == [(0, "empty"), (2, "note two"), (5, "note five a"), (5, "note five b")]
    with pytest.raises(StoreError) as ei:
        ledger.put_checkpoint(6, "beyond")
    assert ei.value.code == "append_invalid"
    assert len(ledger.checkpoints()) == 4
