"""Contract tests for ``events.store.LogStore``.

``StoreContract`` is backend-neutral: a backend test class subclasses it and
implements ``make_store()`` (a store object for a location where no ledger has
been created yet). Cross-process tests open the same ledger in a child Python
process with ``open_store(store.url)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from events.store import LOG_ID, LogRecord, LogStore, StoreError, open_store

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000_123_456  # µs, with a sub-second part


def rec(seq: int, ts_us: int | None = None, *, decision: bool = False, ref: str | None = None,
        payload: bytes | None = None, type_: str | None = None) -> LogRecord:
    """A test record: inputs have ref 'in-<seq>' and a digest; decisions point at ref."""
    if payload is None:
        payload = b'{"seq":%d,"x":"' % seq + bytes([seq % 251]) * 40 + b'"}'
    ts = T0 + seq * 1000 if ts_us is None else ts_us
    if decision:
        return LogRecord(seq, ts, type_ or "rejected", ref or "in-unknown", payload,
                         hashlib.sha256(b"\x00" + payload).digest(), None)
    return LogRecord(seq, ts, type_ or "deposit", ref or f"in-{seq}", payload,
                     hashlib.sha256(b"\x00" + payload).digest(),
                     hashlib.sha256(b"input:" + payload).digest())


def recs(first: int, n: int, **kw) -> list[LogRecord]:
    return [rec(s, **kw) for s in range(first, first + n)]


def all_records(store: LogStore, **kw) -> list[LogRecord]:
    return [r for page in store.read(**kw) for r in page]


def run_child(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))


def spawn_child(code: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=str(ROOT))


class StoreContract:
    """Backend-neutral contract. Subclasses implement ``make_store``."""

    def make_store(self) -> LogStore:  # pragma: no cover - abstract hook
        raise NotImplementedError

    @pytest.fixture
    def store(self):
        s = self.make_store()
        yield s
        s.close()

    @pytest.fixture
    def ledger(self, store):
        store.create({"ledger": "test", "created_by": "pytest"})
        return store

    # ------------------------------------------------------------ lifecycle

    def test_missing_store_raises_store_missing_everywhere(self, store):
        assert store.exists() is False
        calls = [
            lambda: store.meta(),
            lambda: store.head(),
            lambda: store.append([rec(1)]),
            lambda: store.read(),
            lambda: store.read_payloads(),
            lambda: store.get(1),
            lambda: store.seq_at_time(T0),
            lambda: store.find_inputs(["in-1"]),
            lambda: store.put_snapshot(1, b"s"),
            lambda: store.latest_snapshot(1),
            lambda: store.get_nodes([(0, 0)]),
            lambda: store.put_checkpoint(0, "note"),
            lambda: store.checkpoints(),
            lambda: store.writer_lock().__enter__(),
        ]
        for call in calls:
            with pytest.raises(StoreError) as ei:
                call()
            assert ei.value.code == "store_missing"
        assert store.exists() is False  # nothing above created a ledger
        store.close()
        store.close()  # idempotent

    def test_create_then_exists_and_meta(self, store):
        store.create({"ledger": "L1", "k": "v"})
        assert store.exists()
        assert store.meta() == {"ledger": "L1", "k": "v"}
        assert store.head() == (0, 0)
        assert all_records(store) == []
        other = open_store(store.url)
        try:
            assert other.exists()
            assert other.meta() == {"ledger": "L1", "k": "v"}
        finally:
            other.close()

    def test_create_twice_is_store_exists(self, store):
        store.create({"a": "1"})
        with pytest.raises(StoreError) as ei:
            store.create({"a": "2"})
        assert ei.value.code == "store_exists"
        other = open_store(store.url)
        try:
            with pytest.raises(StoreError) as ei:
                other.create({"a": "3"})
            assert ei.value.code == "store_exists"
        finally:
            other.close()
        assert store.meta() == {"a": "1"}

    def test_store_error_has_code_and_message(self):
        e = StoreError("append_conflict", "seq 5 overlaps")
        assert e.code == "append_conflict" and e.message == "seq 5 overlaps"
        assert str(e) == "seq 5 overlaps"

    # ------------------------------------------------------------ append / read

    def test_append_read_round_trip_is_byte_identical(self, ledger):
        batch1 = recs(1, 5) + [rec(6, decision=True, ref="in-5", payload=b"\x00\xff\x00binary")]
        batch2 = recs(7, 4)
        ledger.append(batch1)
        ledger.append(batch2)
        got = all_records(ledger)
        assert [r.seq for r in got] == list(range(1, 11))
        for want, have in zip(batch1 + batch2, got):
            assert isinstance(have.payload, bytes) and have.payload == want.payload
            assert (have.seq, have.ts_us, have.type, have.ref, have.leaf) == \
                   (want.seq, want.ts_us, want.type, want.ref, want.leaf)
            assert have.input_digest in (None, want.input_digest)
        payloads = [t for page in ledger.read_payloads() for t in page]
        assert payloads == [(r.seq, r.type, r.payload) for r in batch1 + batch2]
        # get() returns the full record, digest included for inputs.
        assert ledger.get(3) == batch1[2]
        assert ledger.get(6) == batch1[5] and ledger.get(6).input_digest is None
        assert ledger.get(0) is None and ledger.get(11) is None

    def test_read_ranges_and_pages(self, ledger):
        ledger.append(recs(1, 25))
        pages = list(ledger.read(batch=10))
        assert [len(p) for p in pages] == [10, 10, 5]
        assert [r.seq for p in pages for r in p] == list(range(1, 26))
        assert [r.seq for r in all_records(ledger, after_seq=7, upto_seq=12)] == [8, 9, 10, 11, 12]
        assert all_records(ledger, after_seq=25) == []
        assert all_records(ledger, after_seq=5, upto_seq=5) == []
        assert [r.seq for r in all_records(ledger, after_seq=20, upto_seq=100)] == [21, 22, 23, 24, 25]
        ppages = list(ledger.read_payloads(after_seq=3, upto_seq=17, batch=4))
        assert [len(p) for p in ppages] == [4, 4, 4, 2]
        assert [t[0] for p in ppages for t in p] == list(range(4, 18))

    def test_read_without_upto_stops_at_head_when_started(self, ledger):
        ledger.append(recs(1, 10))
        it = ledger.read(batch=4)
        first = next(it)
        ledger.append(recs(11, 10))  # appended while iterating
        rest = [r for p in it for r in p]
        assert [r.seq for r in first + rest] == list(range(1, 11))
        assert [r.seq for r in all_records(ledger)] == list(range(1, 21))

    def test_head_tracks_last_seq_and_ts(self, ledger):
        assert ledger.head() == (0, 0)
        ledger.append([rec(1, T0)])
        assert ledger.head() == (1, T0)
        ledger.append([rec(2, T0 + 5), rec(3, T0 + 7)])
        assert ledger.head() == (3, T0 + 7)

    def test_empty_append_is_a_noop(self, ledger):
        ledger.append([])
        assert ledger.head() == (0, 0)

    def test_append_50000_in_one_transaction(self, ledger):
        big = [LogRecord(s, T0 + s, "trade", f"in-{s}", b"p%d" % s, b"L" * 32, b"D" * 32)
               for s in range(1, 50_001)]
        ledger.append(big)
        assert ledger.head() == (50_000, T0 + 50_000)
        n = 0
        for page in ledger.read_payloads(batch=10_000):
            assert len(page) <= 10_000
            n += len(page)
        assert n == 50_000
        assert ledger.get(49_999).payload == b"p49999"

    # ------------------------------------------------------------ conflicts and atomicity

    def _assert_unchanged(self, store, expected: list[LogRecord]):
        assert store.head() == ((expected[-1].seq, expected[-1].ts_us) if expected else (0, 0))
        assert [r[:6] for r in all_records(store)] == [r[:6] for r in expected]

    def test_gap_is_append_conflict(self, ledger):
        base = recs(1, 3)
        ledger.append(base)
        with pytest.raises(StoreError) as ei:
            ledger.append(recs(5, 2))
        assert ei.value.code == "append_conflict"
        self._assert_unchanged(ledger, base)
        assert ledger.find_inputs(["in-5", "in-6"]) == {}

    def test_first_append_must_start_at_1(self, ledger):
        with pytest.raises(StoreError) as ei:
            ledger.append(recs(2, 3))
        assert ei.value.code == "append_conflict"
        self._assert_unchanged(ledger, [])

    def test_overlap_is_append_conflict(self, ledger):
        base = recs(1, 3)
        ledger.append(base)
        for bad in (recs(3, 2), recs(1, 1), recs(2, 5)):
            with pytest.raises(StoreError) as ei:
                ledger.append(bad)
            assert ei.value.code == "append_conflict"
        self._assert_unchanged(ledger, base)

    def test_non_contiguous_batch_is_append_conflict(self, ledger):
        base = recs(1, 2)
        ledger.append(base)
        for bad in ([rec(3), rec(5)], [rec(3), rec(3)], [rec(4), rec(3)]):
            with pytest.raises(StoreError) as ei:
                ledger.append(bad)
            assert ei.value.code == "append_conflict"
        self._assert_unchanged(ledger, base)
        ledger.append([rec(3), rec(4)])  # the right batch still goes in
        assert ledger.head()[0] == 4

    def test_duplicate_input_id_rejects_whole_batch(self, ledger):
        base = recs(1, 3)
        ledger.append(base)
        again = recs(4, 3)
        again[2] = rec(6, ref="in-2")  # input id already recorded at seq 2
        with pytest.raises(StoreError) as ei:
            ledger.append(again)
        assert ei.value.code == "append_conflict"
        self._assert_unchanged(ledger, base)
        assert ledger.find_inputs(["in-4", "in-5"]) == {}

    def test_failure_midway_through_transaction_leaves_nothing(self, ledger):
        base = recs(1, 3)
        ledger.append(base)
        batch = recs(4, 100)
        # The last record violates NOT NULL on the leaf: the events before it
        # were already inserted inside the transaction when it fails.
        batch[-1] = batch[-1]._replace(leaf=None)
        with pytest.raises(Exception):
            ledger.append(batch)
        self._assert_unchanged(ledger, base)
        assert ledger.find_inputs([r.ref for r in batch]) == {}
        ledger.append(recs(4, 2))  # store still usable, no hole was burnt
        assert [r.seq for r in all_records(ledger)] == [1, 2, 3, 4, 5]

    def test_timestamps_must_not_go_backwards(self, ledger):
        ledger.append([rec(1, T0 + 10)])
        with pytest.raises(StoreError) as ei:
            ledger.append([rec(2, T0 + 9)])
        assert ei.value.code == "append_invalid"
        with pytest.raises(StoreError) as ei:
            ledger.append([rec(2, T0 + 20), rec(3, T0 + 19)])
        assert ei.value.code == "append_invalid"
        assert ledger.head() == (1, T0 + 10)
        ledger.append([rec(2, T0 + 10), rec(3, T0 + 10)])  # equal is fine
        assert ledger.head() == (3, T0 + 10)

    # ------------------------------------------------------------ time, inputs, snapshots

    def test_seq_at_time(self, ledger):
        t = T0
        ledger.append([rec(1, t), rec(2, t + 1_500), rec(3, t + 1_500), rec(4, t + 1_500)])
        ledger.append([rec(5, t + 2_000_001), rec(6, t + 2_000_001)])
        assert ledger.seq_at_time(t - 1) == 0
        assert ledger.seq_at_time(0) == 0
        assert ledger.seq_at_time(t) == 1
        assert ledger.seq_at_time(t + 1_499) == 1           # between events
        assert ledger.seq_at_time(t + 1_500) == 4           # equal timestamps: the last of them
        assert ledger.seq_at_time(t + 2_000_000) == 4
        assert ledger.seq_at_time(t + 2_000_001) == 6
        assert ledger.seq_at_time(t + 10**12) == 6

    def test_seq_at_time_empty(self, ledger):
        assert ledger.seq_at_time(T0) == 0

    def test_find_inputs_handles_thousands_of_ids(self, ledger):
        rows = []
        for s in range(1, 6001):
            rows.append(rec(s, decision=(s % 3 == 0), ref=f"in-{s - 1}" if s % 3 == 0 else None))
        for i in range(0, len(rows), 2000):
            ledger.append(rows[i:i + 2000])
        inputs = {r.ref: (r.seq, r.input_digest) for r in rows if r.input_digest is not None}
        assert len(inputs) == 4000
        query = list(inputs) + [f"nope-{i}" for i in range(2500)] + ["in-1", "in-1"]
        found = ledger.find_inputs(query)
        assert found == inputs
        assert ledger.find_inputs([]) == {}
        assert ledger.find_inputs(["in-3"]) == {}  # seq 3 is a decision, not an input
        assert ledger.find_inputs(["in-2"]) == {"in-2": inputs["in-2"]}

    def test_snapshots_latest_at_or_before(self, ledger):
        ledger.append(recs(1, 50))
        assert ledger.latest_snapshot(50) is None
        ledger.put_snapshot(10, b"s10")
        ledger.put_snapshot(30, b"s30\x00")
        ledger.put_snapshot(20, b"s20")
        assert ledger.latest_snapshot(9) is None
        assert ledger.latest_snapshot(10) == (10, b"s10")
        assert ledger.latest_snapshot(29) == (20, b"s20")
        assert ledger.latest_snapshot(30) == (30, b"s30\x00")
        assert ledger.latest_snapshot(10**9) == (30, b"s30\x00")
        ledger.put_snapshot(20, b"s20-rebuilt")
        assert ledger.latest_snapshot(25) == (20, b"s20-rebuilt")

    def test_data_survives_reopen(self, ledger):
        batch = recs(1, 20)
        ledger.append(batch)
        ledger.put_snapshot(20, b"snap")
        ledger.close()
        again = open_store(ledger.url)
        try:
            assert again.head() == (20, batch[-1].ts_us)
            assert all_records(again) == batch
            assert again.latest_snapshot(20) == (20, b"snap")
            again.append(recs(21, 1))
            assert again.head()[0] == 21
        finally:
            again.close()

    # ------------------------------------------------------------ Merkle nodes, checkpoints

    @staticmethod
    def _nodes_for(records: list[LogRecord]) -> list[tuple[int, int, bytes]]:
        """Fake but well-placed nodes: every complete subtree of level >= 1 that the
        records' seqs complete (the store treats hashes as opaque)."""
        out = []
        for r in records:
            size, level = r.seq, 1
            while size % (1 << level) == 0:
                out.append((level, (size >> level) - 1, hashlib.sha256(b"n%d/%d" % (level, size)).digest()))
                level += 1
        return out

    def test_append_with_nodes_and_get_nodes(self, ledger):
        b1, b2 = recs(1, 5), recs(6, 11)
        n1, n2 = self._nodes_for(b1), self._nodes_for(b2)
        assert (2, 0) in {(lv, i) for lv, i, _ in n1} and (4, 0) in {(lv, i) for lv, i, _ in n2}
        ledger.append(b1, n1)
        ledger.append(b2, n2)
        ledger.append(recs(17, 1))  # nodes are optional
        want = {(lv, i): h for lv, i, h in n1 + n2}
        assert ledger.get_nodes(list(want)) == want
        leaves = {(0, r.seq - 1): r.leaf for r in b1 + b2}
        assert ledger.get_nodes(list(leaves)) == leaves
        mixed = [(0, 0), (1, 0), (0, 16), (0, 17), (1, 8), (4, 0), (4, 1), (5, 0), (0, 0)]
        got = ledger.get_nodes(mixed)
        assert got == {(0, 0): b1[0].leaf, (1, 0): want[(1, 0)], (0, 16): ledger.get(17).leaf,
                       (4, 0): want[(4, 0)]}
        assert ledger.get_nodes([]) == {}

    def test_get_nodes_many_keys(self, ledger):
        batch = recs(1, 3000)
        nodes = self._nodes_for(batch)
        ledger.append(batch, nodes)
        want = {(lv, i): h for lv, i, h in nodes}
        assert len(want) == 3000 - bin(3000).count("1")
        keys = list(want) + [(0, i) for i in range(3000)] + [(1, 5000), (12, 0), (0, 3000)]
        got = ledger.get_nodes(keys)
        assert len(got) == len(want) + 3000
        assert all(got[k] == v for k, v in want.items())
        assert all(got[(0, r.seq - 1)] == r.leaf for r in batch)

    def test_nodes_are_written_atomically_with_the_events(self, ledger):
        base = recs(1, 4)
        ledger.append(base, self._nodes_for(base))
        batch = recs(5, 4)
        nodes = self._nodes_for(batch)
        bad_hash = nodes[:-1] + [(nodes[-1][0], nodes[-1][1], None)]  # NOT NULL fails last
        with pytest.raises(Exception):
            ledger.append(batch, bad_hash)
        self._assert_unchanged(ledger, base)
        assert ledger.get_nodes([(lv, i) for lv, i, _ in nodes]) == {}
        # A node already stored: append_conflict, nothing written.
        with pytest.raises(StoreError) as ei:
            ledger.append(batch, nodes + [(2, 0, b"x" * 32)])
        assert ei.value.code == "append_conflict"
        self._assert_unchanged(ledger, base)
        assert ledger.get_nodes([(1, 2)]) == {}
        ledger.append(batch, nodes)
        assert ledger.get_nodes([(3, 0)]) == {(3, 0): nodes[-1][2]}

    def test_misplaced_nodes_are_append_invalid(self, ledger):
        ledger.append(recs(1, 2), self._nodes_for(recs(1, 2)))
        for bad in ([(1, 2, b"h" * 32)],        # covers seq 5..6, log ends at 4
                    [(0, 2, b"h" * 32)],        # level 0 is the events' leaves
                    [(3, 0, b"h" * 32)],        # covers seq 1..8
                    [(1, -1, b"h" * 32)],
                    [(True, 1, b"h" * 32)]):
            with pytest.raises(StoreError) as ei:
                ledger.append(recs(3, 2), bad)
            assert ei.value.code == "append_invalid"
        assert ledger.head()[0] == 2
        with pytest.raises(StoreError) as ei:
            ledger.append([], [(1, 0, b"h" * 32)])
        assert ei.value.code == "append_invalid"
        ledger.append(recs(3, 2), [(1, 1, b"h" * 32), (2, 0, b"g" * 32)])
        assert ledger.get_nodes([(1, 1), (2, 0)]) == {(1, 1): b"h" * 32, (2, 0): b"g" * 32}

    def test_checkpoints(self, ledger):
        assert ledger.checkpoints() == []
        ledger.put_checkpoint(0, "empty\n")
        ledger.append(recs(1, 10))
        ledger.put_checkpoint(10, "ten a\n")
        ledger.put_checkpoint(3, "three\n\n\u2014 sig\n")
        ledger.put_checkpoint(10, "ten b\n")
        ledger.put_checkpoint(3, "three again\n")
        want = [(0, "empty\n"), (3, "three\n\n\u2014 sig\n"), (3, "three again\n"),
                (10, "ten a\n"), (10, "ten b\n")]
        assert ledger.checkpoints() == want
        for size in (11, -1):
            with pytest.raises(StoreError) as ei:
                ledger.put_checkpoint(size, "too far\n")
            assert ei.value.code == "append_invalid"
        assert ledger.checkpoints() == want
        ledger.close()
        again = open_store(ledger.url)
        try:
            assert again.checkpoints() == want
        finally:
            again.close()

    def test_nodes_survive_reopen(self, ledger):
        batch = recs(1, 8)
        nodes = self._nodes_for(batch)
        ledger.append(batch, nodes)
        ledger.close()
        again = open_store(ledger.url)
        try:
            assert again.get_nodes([(3, 0), (0, 7)]) == {(3, 0): nodes[-1][2], (0, 7): batch[-1].leaf}
        finally:
            again.close()

    # ------------------------------------------------------------ processes

    def test_writer_lock_excludes_a_second_process(self, ledger):
        child = spawn_child(
            """
            import sys
            from events.store import open_store
            s = open_store(sys.argv[1])
            with s.writer_lock(timeout=5):
                print("locked", flush=True)
                sys.stdin.readline()          # hold until told to go
            print("released", flush=True)
            """,
            ledger.url,
        )
        try:
            assert child.stdout.readline().strip() == "locked"
            t = time.monotonic()
            with pytest.raises(StoreError) as ei:
                with ledger.writer_lock(timeout=0.3):
                    pytest.fail("acquired a lock held by another process")
            assert ei.value.code == "store_locked"
            assert 0.25 <= time.monotonic() - t < 5
            child.stdin.write("go\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "released"
            with ledger.writer_lock(timeout=5):
                ledger.append(recs(1, 1))
            assert ledger.head()[0] == 1
        finally:
            child.kill()
            child.wait()

    def test_writer_lock_released_when_holder_dies(self, ledger):
        child = spawn_child(
            """
            import sys, time
            from events.store import open_store
            s = open_store(sys.argv[1])
            with s.writer_lock(timeout=5):
                print("locked", flush=True)
                time.sleep(60)
            """,
            ledger.url,
        )
        try:
            assert child.stdout.readline().strip() == "locked"
            with pytest.raises(StoreError):
                with ledger.writer_lock(timeout=0.1):
                    pass
        finally:
            child.kill()
            child.wait()
        with ledger.writer_lock(timeout=5):
            pass  # the OS released the dead holder's lock

    def test_writer_lock_is_exclusive_within_a_process_too(self, ledger):
        other = open_store(ledger.url)
        try:
            with ledger.writer_lock(timeout=1):
                with pytest.raises(StoreError) as ei:
                    with other.writer_lock(timeout=0.1):
                        pass
                assert ei.value.code == "store_locked"
            with other.writer_lock(timeout=1):
                pass
        finally:
            other.close()

    def test_concurrent_reader_process_sees_whole_batches_only(self, ledger):
        batch, batches = 1000, 30
        total = batch * batches
        reader = spawn_child(
            """
            import json, sys, time
            from events.store import open_store
            s = open_store(sys.argv[1]); total = int(sys.argv[2])
            print("ready", flush=True)
            heads, reads = [], []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                h = s.head()[0]
                seqs = [r.seq for page in s.read(batch=700) for r in page]
                heads.append(h)
                reads.append([len(seqs), seqs[-1] if seqs else 0,
                              seqs == list(range(1, len(seqs) + 1))])
                if h >= total and len(seqs) >= total:
                    break
            print(json.dumps({"heads": heads, "reads": reads}), flush=True)
            """,
            ledger.url, str(total),
        )
        try:
            assert reader.stdout.readline().strip() == "ready"
            for b in range(batches):
                ledger.append(recs(b * batch + 1, batch))
            out, err = reader.communicate(timeout=90)
        finally:
            reader.kill()
            reader.wait()
        assert reader.returncode == 0, err
        obs = json.loads(out.strip().splitlines()[-1])
        assert obs["heads"][-1] == total
        assert all(h % batch == 0 for h in obs["heads"]), "saw a partial batch"
        for n, last, contiguous in obs["reads"]:
            assert contiguous and n == last and n % batch == 0
        assert len(set(obs["heads"])) > 1 or obs["heads"] == [total]


class TestSQLiteStore(StoreContract):
    @pytest.fixture(autouse=True)
    def _tmp(self, tmp_path):
        self.tmp_path = tmp_path

    def make_store(self) -> LogStore:
        return open_store(str(self.tmp_path / "ledger.db"))

    def test_open_does_not_create_the_file(self, store):
        path = self.tmp_path / "ledger.db"
        assert not path.exists()
        for call in (store.head, store.meta, lambda: store.get(1)):
            with pytest.raises(StoreError):
                call()
        assert store.exists() is False
        assert not path.exists()
        store.create({})
        assert path.exists()

    def test_create_on_foreign_file_is_refused(self, tmp_path):
        junk = tmp_path / "junk.db"
        junk.write_bytes(b"this is not a database" * 100)
        s = open_store(str(junk))
        assert s.exists() is False
        with pytest.raises(StoreError) as ei:
            s.head()
        assert ei.value.code == "store_invalid"
        with pytest.raises(StoreError) as ei:
            s.create({})
        assert ei.value.code == "store_invalid"
        assert junk.read_bytes().startswith(b"this is not a database")

    def test_postgres_url_opens_a_postgres_store(self):
        from events.postgres_store import PostgresLogStore

        s = open_store("postgresql://localhost/ledger")  # opening connects to nothing
        try:
            assert isinstance(s, PostgresLogStore) and s.url == "postgresql://localhost/ledger"
        finally:
            s.close()

    def test_uses_library_table_wal_and_full_sync(self, ledger):
        import sqlite3

        batch = recs(1, 5) + [rec(6, decision=True, ref="in-5")]
        ledger.append(batch)
        # The library's own API reads our events: notification id == seq.
        notes = ledger.recorder.select_notifications(start=1, limit=100)
        assert [(n.id, n.originator_id, n.originator_version, n.topic, n.state) for n in notes] == \
               [(r.seq, LOG_ID, r.seq, r.type, r.payload) for r in batch]
        events = ledger.recorder.select_events(LOG_ID, gt=2, lte=4)
        assert [e.originator_version for e in events] == [3, 4]
        path = self.tmp_path / "ledger.db"
        con = sqlite3.connect(str(path))
        try:
            assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            rows = con.execute("SELECT originator_id, originator_version, topic, state "
                               "FROM stored_events ORDER BY rowid").fetchall()
            assert rows == [(LOG_ID.hex, r.seq, r.type, r.payload) for r in batch]
        finally:
            con.close()
        with ledger._tx() as cur:  # a library transaction on the pool's connection
            assert cur.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL

    def test_recorder_accepts_plain_stored_events_and_lazy_batch(self, ledger):
        from eventsourcing.persistence import StoredEvent

        from events.sqlite_store import LogEventBatch

        r1 = rec(1)
        # Generic path: a list of the library's StoredEvent objects + side rows.
        ledger.recorder.insert_events(
            [StoredEvent(LOG_ID, 1, r1.type, r1.payload)],
            index_rows=[(1, r1.ts_us, r1.type, r1.ref, r1.leaf)],
            input_rows=[(r1.ref, 1, r1.input_digest)],
            expect_head=(0, r1.ts_us),
        )
        assert ledger.get(1) == r1
        # The batch append() uses is a real Sequence[StoredEvent].
        batch = LogEventBatch(recs(2, 3))
        assert len(batch) == 3
        assert list(batch) == [StoredEvent(LOG_ID, s, "deposit", rec(s).payload) for s in (2, 3, 4)]
        assert batch[-1].originator_version == 4 and len(batch[1:]) == 2

    def test_forced_failure_after_events_inserted_rolls_back(self, ledger, monkeypatch):
        from events.sqlite_store import LedgerRecorder

        base = recs(1, 2)
        ledger.append(base)
        seen = {}
        orig = LedgerRecorder._insert_side_rows

        def boom(self, c, index_rows, input_rows):
            orig(self, c, index_rows, input_rows)
            c.execute("SELECT count(*) FROM stored_events")
            seen["inside"] = c.fetchone()[0]
            raise RuntimeError("crash inside the transaction")

        monkeypatch.setattr(LedgerRecorder, "_insert_side_rows", boom)
        with pytest.raises(RuntimeError):
            ledger.append(recs(3, 500))
        assert seen["inside"] == 502  # the rows were in the transaction ...
        monkeypatch.undo()
        self._assert_unchanged(ledger, base)  # ... and are gone after rollback
        assert ledger.find_inputs(["in-3"]) == {}
        ledger.append(recs(3, 1))
        assert ledger.head()[0] == 3

    def test_forced_failure_in_node_insert_rolls_back(self, ledger, monkeypatch):
        from events.sqlite_store import LedgerRecorder

        base = recs(1, 2)
        ledger.append(base, self._nodes_for(base))
        orig = LedgerRecorder._insert_nodes
        seen = {}

        def boom(self, c, node_rows):
            orig(self, c, node_rows)
            c.execute("SELECT count(*) FROM merkle_nodes")
            seen["inside"] = c.fetchone()[0]
            raise RuntimeError("crash after the nodes")

        monkeypatch.setattr(LedgerRecorder, "_insert_nodes", boom)
        batch = recs(3, 6)
        with pytest.raises(RuntimeError):
            ledger.append(batch, self._nodes_for(batch))
        assert seen["inside"] == 1 + 6  # (1,0) before; (1,1) (2,0) (1,2) (1,3) (2,1) (3,0) in the tx
        monkeypatch.undo()
        self._assert_unchanged(ledger, base)
        assert ledger.get_nodes([(1, 1), (2, 0)]) == {}

    def test_merkle_tables_schema(self, ledger):
        with ledger._tx() as cur:
            sql = dict(cur.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'").fetchall())
            version = cur.execute("PRAGMA user_version").fetchone()[0]
        assert "WITHOUT ROWID" in sql["merkle_nodes"] and "PRIMARY KEY (level, idx)" in sql["merkle_nodes"]
        assert "AUTOINCREMENT" in sql["checkpoints"]
        assert version == 2

    def test_concurrent_creates_one_wins(self, tmp_path):
        url = str(tmp_path / "race.db")
        code = """
            import sys, time
            from events.store import open_store, StoreError
            s = open_store(sys.argv[1]); t = float(sys.argv[2])
            while time.time() < t: pass
            try:
                s.create({"who": sys.argv[3]}); print("created")
            except StoreError as e:
                print(e.code)
            """
        start = str(time.time() + 1.0)
        procs = [spawn_child(code, url, start, str(i)) for i in range(4)]
        outs = []
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
            outs.append(out.strip())
        assert sorted(outs) == ["created"] + ["store_exists"] * 3
        s = open_store(url)
        try:
            assert s.meta()["who"] in {"0", "1", "2", "3"}
        finally:
            s.close()


class TestPostgresStore(StoreContract):
    """The same contract on PostgreSQL: one fresh schema of the session's database per test."""

    @pytest.fixture(autouse=True)
    def _pg(self, pg_database):
        import uuid

        self.database_url = pg_database
        self.schema = f"t_{uuid.uuid4().hex[:12]}"

    def make_store(self) -> LogStore:
        return open_store(f"{self.database_url}?schema={self.schema}")

    # ------------------------------------------------------------ PostgreSQL only

    def _admin(self):
        import psycopg

        return psycopg.connect(self.database_url, autocommit=True)

    def test_uses_library_table_and_side_tables_in_its_schema(self, ledger):
        from events.postgres_store import MARKER

        batch = recs(1, 5) + [rec(6, decision=True, ref="in-5")]
        ledger.append(batch)
        # The library's own API reads our events from "<app>_events".
        rec_ = ledger.recorder
        assert rec_.events_table_name == "clearing_events"
        assert rec_.datastore.schema == self.schema and rec_.datastore.enable_db_functions is False
        notes = rec_.select_notifications(start=1, limit=100)
        assert [(n.originator_id, n.originator_version, n.topic, n.state) for n in notes] == \
               [(LOG_ID, r.seq, r.type, r.payload) for r in batch]
        assert [e.originator_version for e in rec_.select_events(LOG_ID, gt=2, lte=4)] == [3, 4]
        with self._admin() as con:
            rows = con.execute(
                f"SELECT originator_id, originator_version, topic, state FROM {self.schema}.clearing_events "
                "ORDER BY notification_id").fetchall()
            assert rows == [(LOG_ID, r.seq, r.type, r.payload) for r in batch]
            tables = {t for (t,) in con.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s", (self.schema,))}
            assert tables == {f"clearing_{t}" for t in (
                "events", "event_index", "input_ids", "merkle_nodes", "snapshots", "checkpoints", "meta")}
            assert con.execute("SELECT obj_description(%s::regclass, 'pg_class')",
                               (f"{self.schema}.clearing_meta",)).fetchone()[0] == MARKER
            # The library's optional insert function (it drops the table lock) is not created.
            assert con.execute("SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                               "WHERE n.nspname = %s", (self.schema,)).fetchone()[0] == 0
            # Nothing outside the ledger's schema.
            assert con.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'clearing%%' "
                               "AND schemaname <> ALL(%s)",
                               ([s for (s,) in con.execute(
                                   "SELECT nspname FROM pg_namespace WHERE nspname LIKE 't\\_%%'")],)
                               ).fetchone()[0] == 0

    def test_failed_append_burns_notification_ids_but_not_seqs(self, ledger):
        ledger.append(recs(1, 3))
        bad = recs(4, 10)
        bad[-1] = bad[-1]._replace(leaf=None)
        with pytest.raises(Exception):
            ledger.append(bad)
        ledger.append(recs(4, 2))
        assert [r.seq for r in all_records(ledger)] == [1, 2, 3, 4, 5]
        ids = [n.id for n in ledger.recorder.select_notifications(start=1, limit=100)]
        assert ids[:3] == [1, 2, 3] and ids[3] > 4  # a gap in notification ids; seq has none

    def test_forced_failure_after_events_inserted_rolls_back(self, ledger, monkeypatch):
        from events.postgres_store import PgLedgerRecorder

        base = recs(1, 2)
        ledger.append(base, self._nodes_for(base))
        orig = PgLedgerRecorder._insert_nodes
        seen = {}

        def boom(self, curs, node_chunks):
            orig(self, curs, node_chunks)
            seen["events"] = curs.execute(f"SELECT count(*) FROM {self.t_events.as_string(curs)}").fetchone()[0]
            seen["nodes"] = curs.execute(f"SELECT count(*) FROM {self.t_nodes.as_string(curs)}").fetchone()[0]
            raise RuntimeError("crash after the nodes")

        monkeypatch.setattr(PgLedgerRecorder, "_insert_nodes", boom)
        batch = recs(3, 500)
        with pytest.raises(RuntimeError):
            ledger.append(batch, self._nodes_for(recs(1, 2) + batch)[1:])
        assert seen["events"] == 502 and seen["nodes"] > 1  # in the transaction ...
        monkeypatch.undo()
        self._assert_unchanged(ledger, base)  # ... and gone after the rollback
        assert ledger.find_inputs(["in-3"]) == {} and ledger.get_nodes([(1, 1)]) == {}
        ledger.append(recs(3, 1))
        assert ledger.head()[0] == 3

    def test_text_fields_with_copy_special_characters(self, ledger):
        odd = "a\tb\nc\rd\\e\u00e9\u2014\x01"
        batch = [rec(1, ref=odd, type_="t\\\t\n"), rec(2, decision=True, ref=odd)]
        ledger.append(batch)
        assert all_records(ledger) == [batch[0], batch[1]]
        assert ledger.get(1) == batch[0]
        assert ledger.find_inputs([odd]) == {odd: (1, batch[0].input_digest)}
        ledger.put_checkpoint(2, "note\twith\ttabs\n\\n\n")
        assert ledger.checkpoints() == [(2, "note\twith\ttabs\n\\n\n")]

    def test_schemas_isolate_ledgers_in_one_database(self, ledger):
        other = open_store(f"{self.database_url}?schema={self.schema}_b")
        try:
            assert other.exists() is False
            other.create({"ledger": "B"})
            ledger.append(recs(1, 3))
            other.append(recs(1, 1, ts_us=T0))
            assert ledger.head()[0] == 3 and other.head() == (1, T0)
            assert other.meta() == {"ledger": "B"} and ledger.meta()["ledger"] == "test"
            with ledger.writer_lock(timeout=1):
                with other.writer_lock(timeout=1):  # a different ledger: not excluded
                    pass
        finally:
            other.close()

    def test_default_schema_and_missing_database(self, pg_database):
        import uuid

        import psycopg

        server, _, _ = pg_database.rpartition("/")
        name = f"clearing_test_new_{uuid.uuid4().hex[:8]}"
        s = open_store(f"{server}/{name}")
        try:
            assert s.exists() is False
            with pytest.raises(StoreError) as ei:
                s.head()
            assert ei.value.code == "store_missing" and f"database {name!r} does not exist" in ei.value.message
            s.create({"k": "v"})  # creates the database, as SQLite creates its file
            assert s.schema == "public" and s.meta() == {"k": "v"}
            again = open_store(f"{server}/{name}?schema=public")
            try:
                again.append(recs(1, 2))
                assert s.head()[0] == 2
            finally:
                again.close()
        finally:
            s.close()
            with psycopg.connect(f"{server}/postgres", autocommit=True) as con:
                con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def test_concurrent_creates_of_a_missing_database(self, pg_database):
        import uuid

        import psycopg

        server = pg_database.rpartition("/")[0]
        name = f"clearing_test_race_{uuid.uuid4().hex[:8]}"
        code = """
            import sys, time
            from events.store import open_store, StoreError
            s = open_store(sys.argv[1]); t = float(sys.argv[2])
            while time.time() < t: pass
            try:
                s.create({"who": sys.argv[3]}); print("created")
            except StoreError as e:
                print(e.code)
            """
        start = str(time.time() + 1.5)
        try:
            procs = [spawn_child(code, f"{server}/{name}", start, str(i)) for i in range(3)]
            outs = []
            for p in procs:
                out, err = p.communicate(timeout=60)
                assert p.returncode == 0, err
                outs.append(out.strip())
            assert sorted(outs) == ["created"] + ["store_exists"] * 2
        finally:
            with psycopg.connect(f"{server}/postgres", autocommit=True) as con:
                con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def test_unreachable_server_is_store_unavailable(self):
        s = open_store("postgresql://nobody:secret@127.0.0.1:1/nothing")
        try:
            for call in (s.exists, s.head, lambda: s.create({})):
                with pytest.raises(StoreError) as ei:
                    call()
                assert ei.value.code == "store_unavailable"
                assert "secret" not in ei.value.message and "127.0.0.1:1" in ei.value.message
        finally:
            s.close()

    def test_foreign_clearing_tables_are_store_invalid(self, store):
        with self._admin() as con:
            con.execute(f"CREATE SCHEMA {self.schema}")
            con.execute(f"CREATE TABLE {self.schema}.clearing_meta (key text, value text)")
        assert store.exists() is False
        for call in (store.head, lambda: store.create({})):
            with pytest.raises(StoreError) as ei:
                call()
            assert ei.value.code == "store_invalid"

    def test_other_tables_in_the_schema_are_not_a_ledger(self, store):
        with self._admin() as con:
            con.execute(f"CREATE SCHEMA {self.schema}")
            con.execute(f"CREATE TABLE {self.schema}.unrelated (x int)")
        with pytest.raises(StoreError) as ei:
            store.head()
        assert ei.value.code == "store_missing"
        store.create({})
        assert store.head() == (0, 0)

    def test_writer_lock_message_names_the_holder(self, ledger):
        child = spawn_child(
            """
            import os, sys
            from events.store import open_store
            s = open_store(sys.argv[1])
            with s.writer_lock(timeout=5):
                print(os.getpid(), flush=True)
                sys.stdin.readline()
            """,
            ledger.url,
        )
        try:
            pid = int(child.stdout.readline())
            with pytest.raises(StoreError) as ei:
                with ledger.writer_lock(timeout=0.2):
                    pass
            assert ei.value.code == "store_locked"
            assert f"clearing writer pid {pid}" in ei.value.message and "0.2 s" in ei.value.message
        finally:
            child.kill()
            child.wait()

    def test_writer_lock_waits_for_release(self, ledger):
        child = spawn_child(
            """
            import sys, time
            from events.store import open_store
            s = open_store(sys.argv[1])
            with s.writer_lock(timeout=5):
                print("locked", flush=True)
                time.sleep(0.7)
            """,
            ledger.url,
        )
        try:
            assert child.stdout.readline().strip() == "locked"
            t = time.monotonic()
            with ledger.writer_lock(timeout=20):
                waited = time.monotonic() - t
            assert 0.2 < waited < 10
        finally:
            child.kill()
            child.wait()

    def test_two_appending_processes_never_interleave(self, ledger):
        code = """
            import sys
            from events.store import LogRecord, StoreError, open_store
            s = open_store(sys.argv[1]); w = sys.argv[2]
            done = conflicts = 0
            while done < 25:
                h, ts = s.head()
                batch = [LogRecord(h + i, ts, "deposit", f"{w}-{done}-{i}", f"{w}".encode(),
                                   b"L" * 32, b"D" * 32) for i in range(1, 41)]
                try:
                    s.append(batch)
                    done += 1
                except StoreError as e:
                    assert e.code == "append_conflict", e
                    conflicts += 1
            print(conflicts)
            """
        procs = [spawn_child(code, ledger.url, w) for w in ("A", "B")]
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
        got = all_records(ledger)
        assert [r.seq for r in got] == list(range(1, 2001))
        for i in range(0, 2000, 40):  # every append is whole and contiguous
            assert len({r.payload for r in got[i:i + 40]}) == 1
            assert {r.ref.rsplit("-", 1)[1] for r in got[i:i + 40]} == {str(k) for k in range(1, 41)}

    def test_concurrent_creates_one_wins_and_other_schemas_succeed(self):
        code = """
            import sys, time
            from events.store import open_store, StoreError
            s = open_store(sys.argv[1]); t = float(sys.argv[2])
            while time.time() < t: pass
            try:
                s.create({"who": sys.argv[3]}); print("created")
            except StoreError as e:
                print(e.code)
            """
        same = f"{self.database_url}?schema={self.schema}"
        start = str(time.time() + 1.5)
        procs = [spawn_child(code, same, start, str(i)) for i in range(4)]
        procs += [spawn_child(code, f"{same}_{i}", start, str(i)) for i in range(4)]
        outs = []
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
            outs.append(out.strip())
        assert sorted(outs[:4]) == ["created"] + ["store_exists"] * 3
        assert outs[4:] == ["created"] * 4  # no "tuple concurrently updated"
        s = open_store(same)
        try:
            assert s.meta()["who"] in {"0", "1", "2", "3"}
        finally:
            s.close()


class TestPostgresURL:
    """URL forms (no server needed)."""

    def test_forms(self):
        from events.postgres_store import parse_url

        loc = parse_url("postgresql://alice@db.example:6543/ledger")
        assert (loc.user, loc.password, loc.host, loc.port, loc.dbname, loc.schema) == \
               ("alice", None, "db.example", 6543, "ledger", None)
        loc = parse_url("postgres://bob:p%40ss%2Fw@127.0.0.1/ledger%20x?schema=desk_1")
        assert (loc.user, loc.password, loc.host, loc.port, loc.dbname, loc.schema) == \
               ("bob", "p@ss/w", "127.0.0.1", 5432, "ledger x", "desk_1")
        assert "p@ss" not in loc.display() and ":***@" in loc.display()
        loc = parse_url("postgresql://[::1]:5433/l?sslmode=require&connect_timeout=3")
        assert (loc.host, loc.port, loc.extra) == ("::1", 5433, {"sslmode": "require", "connect_timeout": "3"})
        loc = parse_url("postgresql:///l?host=/var/run/postgresql")
        assert (loc.user, loc.host, loc.dbname) == (None, "/var/run/postgresql", "l")

    @pytest.mark.parametrize("bad", [
        "postgresql://u@h:5432/",                # no database
        "postgresql://u@h:5432/a/b",
        "postgresql://u@h:99999/db",             # bad port
        "postgresql://u@h/db?schema=Bad-Name",   # not a lowercase identifier
        "postgresql://u@h/db?schema=",
        "postgresql://u@h/db?bogus=1",
        "mysql://u@h/db",
    ])
    def test_bad_urls(self, bad):
        from events.postgres_store import parse_url

        with pytest.raises(ValueError):
            parse_url(bad)
        if bad.startswith("postgres"):
            with pytest.raises(StoreError) as ei:
                open_store(bad)
            assert ei.value.code == "bad_store_url"

    def test_writer_keys_differ_per_schema(self):
        from events.postgres_store import advisory_key

        keys = {advisory_key("writer", s) for s in ("public", "a", "b")} | {advisory_key("create")}
        assert len(keys) == 4 and all(-2**63 <= k < 2**63 for k in keys)
