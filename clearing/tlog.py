"""The tamper-evident log (interfaces §5): signed checkpoints and state-at-time proofs.

The log's Merkle nodes are written with the events (clearing/app.py keeps a ``Frontier``);
here they are read back to sign checkpoints (C2SP tlog-checkpoint signed notes, Ed25519) and to
build proofs. A checkpoint is signed only for a tree that is consistent with every checkpoint
already stored, so no inconsistent checkpoint can be made through this module.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import serialization

from events import merkle, verifier
from events.store import LogStore, StoreError
from events.timestamps import format_ts
from projections import history, statetree

from clearing import keys
from clearing.app import instant

PROOF_FORMAT = "clearing-state-proof/1"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def sign_note(text: str, name: str, private: Ed25519PrivateKey) -> str:
    """A C2SP signed note: the text, an empty line, and ``— <name> <base64(key id ‖ sig)>``."""
    assert text.endswith("\n")
    public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    signature = private.sign(text.encode())
    return f"{text}\n\u2014 {name} {_b64(keys.key_id(name, public) + signature)}\n"


def checkpoint_text(origin: str, size: int, root: bytes, state_root: bytes) -> str:
    """interfaces §5: origin, tree size, base64 log root, then ``state <base64 state root>``."""
    return f"{origin}\n{size}\n{_b64(root)}\nstate {_b64(state_root)}\n"


@dataclass(frozen=True)
class Checkpoint:
    size: int
    root: bytes
    state_root: bytes
    note: str

    def as_json(self) -> dict:
        return {
            "size": self.size,
            "root": _b64(self.root),
            "state_root": _b64(self.state_root),
            "note": self.note,
        }


class TLog:
    def __init__(self, store: LogStore) -> None:
        self.store = store
        self.nodes = merkle.store_nodes(store)
        self._stored: list[Checkpoint] | None = None  # verified once; this TLog appends to it
        self.meta = store.meta()

    def root(self, size: int) -> bytes:
        return merkle.root(size, self.nodes)

    def verified_state(self, size: int, root: bytes):
        """The state at ``size``, folded from a snapshot and the stored events after it, once
        those events are shown to be the ones the log's Merkle tree commits to: they re-hash,
        on top of the stored subtrees before them, to the root being signed. (An event changed
        in place after the snapshot would otherwise give a signed but false state root.)"""
        frontier: list[merkle.Frontier] = []
        folded: list[int] = []

        def observe(seq: int, payload: bytes) -> None:
            if not frontier:
                frontier.append(merkle.Frontier.from_nodes(seq - 1, self.nodes))
            frontier[0].append([verifier.leaf_hash(payload)])
            folded.append(seq)

        state = history.state_at_seq(self.store, size, observe)
        if frontier and frontier[0].root() != root:
            raise StoreError(
                "inconsistent",
                f"the stored events from seq {size - len(folded) + 1} to {size} do not match the"
                " log's Merkle tree; run `clearing audit`",
            )
        return state

    def stored(self) -> list[Checkpoint]:
        """The stored checkpoints; one whose signature fails is tampering, never ignored."""
        if self._stored is not None:
            return self._stored
        out = []
        for size, note in self.store.checkpoints():
            text = verifier.verify_note(note, self.meta["verifier_key"])
            if text is None:
                raise StoreError(
                    "inconsistent",
                    f"the stored checkpoint of size {size} does not verify with the ledger's key;"
                    " run `clearing audit`",
                )
            cp = verifier.parse_checkpoint(text)
            state = [e for e in cp.extensions if e.startswith("state ")]
            state_root = base64.b64decode(state[0][6:]) if state else b""
            out.append(Checkpoint(cp.size, cp.root, state_root, note))
        self._stored = out
        return out

    def latest(self) -> Checkpoint | None:
        stored = self.stored()
        return max(stored, key=lambda c: c.size) if stored else None

    def at_size(self, size: int) -> Checkpoint | None:
        for cp in self.stored():
            if cp.size == size:
                return cp
        return None

    def consistent(self, size1: int, root1: bytes, size2: int, root2: bytes) -> bool:
        """Whether two tree heads can be of one append-only log (RFC 9162 §2.1.4)."""
        (m, root_m), (n, root_n) = sorted([(size1, root1), (size2, root2)])
        if m == n:
            return root_m == root_n
        if m == 0:
            return root_m == verifier.EMPTY_ROOT
        proof = merkle.consistency_proof(m, n, self.nodes)
        return verifier.verify_consistency(m, n, root_m, root_n, proof)

    def sign(self, size: int, key_path: str, tree: statetree.StateTree | None = None) -> Checkpoint:
        """Sign and store a checkpoint of the first ``size`` events, and keep its state tree.
        ``tree``: the state tree at ``size`` when the caller has built it (``_state_tree``)."""
        head, _ = self.store.head()
        if not 0 <= size <= head:
            raise StoreError("seq_out_of_range", f"size {size} is not between 0 and the head {head}")
        try:
            name, private = keys.read_key(key_path)
        except (OSError, ValueError) as exc:
            raise StoreError("key_file", f"cannot read the signing key {key_path}: {exc}") from exc
        if name != self.meta["origin"]:
            raise StoreError("wrong_key", f"key {key_path} is for {name!r}, not {self.meta['origin']!r}")
        if keys.verifier_key(name, private) != self.meta["verifier_key"]:
            raise StoreError("wrong_key", f"key {key_path} is not this ledger's signing key")
        root = self.root(size)
        for other in self.stored():  # never sign a tree that contradicts a stored checkpoint
            if not self.consistent(size, root, other.size, other.root):
                raise StoreError(
                    "inconsistent",
                    f"the log at size {size} is not consistent with the checkpoint at size {other.size}",
                )
        if tree is None:
            tree = statetree.StateTree(self.verified_state(size, root))
        note = sign_note(checkpoint_text(self.meta["origin"], size, root, tree.root), name, private)
        signed = Checkpoint(size, root, tree.root, note)
        # The tree first: a proof at this size reads it instead of rebuilding the state.
        self.store.put_state_tree(size, tree.leaf_rows(), tree.node_rows())
        if all(other.note != note for other in self.stored()):  # Ed25519 signing is deterministic
            self.store.put_checkpoint(size, note)
            self.stored().append(signed)
        return signed

    def _state_tree(self, size: int) -> statetree.StateTree:
        return statetree.StateTree(self.verified_state(size, self.root(size)))

    def prove(self, account: str, seq: int, at: str, key_path: str) -> dict:
        """The clearing-state-proof/1 document for ``account`` at ``seq`` (interfaces §5)."""
        head, _ = self.store.head()
        if not 1 <= seq <= head:
            raise StoreError("seq_out_of_range", f"no state to prove at seq {seq} (head {head})")
        checkpoint = self.at_size(seq)
        found = self._kept_proof(checkpoint, account) if checkpoint is not None else None
        if found is None:  # no usable state tree kept for this size: build it
            tree = self._state_tree(seq)
            if account not in tree:
                raise StoreError("unknown_account", f"account {account!r} does not exist at seq {seq}")
            if checkpoint is None:
                checkpoint = self.sign(seq, key_path, tree)
            elif tree.root == checkpoint.state_root:
                self.store.put_state_tree(seq, tree.leaf_rows(), tree.node_rows())
            found = tree.account_proof(account)
            if not _proves(found, checkpoint.state_root):
                raise StoreError(
                    "inconsistent",
                    f"the state at seq {seq} rebuilt from the store is not the state the checkpoint"
                    " of that size signed; run `clearing audit`",
                )
        latest = self.latest()
        assert latest is not None
        if latest.size < min(head, seq + 1):  # the boundary needs event seq+1 when there is one
            latest = self.sign(head, key_path)
        leaf, index, size, path = found
        boundary = []
        for event_seq in (seq, seq + 1):
            if event_seq > latest.size:
                break
            record = self.store.get(event_seq)
            assert record is not None
            boundary.append({
                "seq": event_seq,
                "leaf": _b64(record.payload),
                "path": [_b64(h) for h in merkle.inclusion_proof(event_seq - 1, latest.size, self.nodes)],
            })
        consistency = merkle.consistency_proof(seq, latest.size, self.nodes)
        return {
            "format": PROOF_FORMAT,
            "account": account,
            "seq": seq,
            "at": at,
            "leaf": _b64(leaf),
            "leaf_index": index,
            "state_size": size,
            "state_path": [_b64(h) for h in path],
            "checkpoint": checkpoint.note,
            "latest": latest.note,
            "consistency": [_b64(h) for h in consistency],
            "boundary": boundary,
        }

    def _kept_proof(self, checkpoint: Checkpoint, account: str):
        """(leaf, index, tree size, path) of ``account`` from the state tree kept for the
        checkpoint's size, or None when there is none or what is kept does not verify under the
        signed state root (derived data is never trusted: a changed row means a rebuild).

        The stored events after the latest snapshot are also checked against the signed log
        root, as signing checks them (``verified_state``): a proof from a kept tree is refused
        exactly when one rebuilt from the store would be."""
        size = checkpoint.size
        kept = self.store.state_leaf(size, account)
        if kept is None:
            return None
        index, tree_size, leaf = kept
        if type(index) is not int or type(tree_size) is not int or not 0 <= index < tree_size:
            return None
        try:
            path = merkle.inclusion_proof(index, tree_size, _KeptStateNodes(self.store, size))
        except KeyError:
            return None
        found = (bytes(leaf), index, tree_size, path)
        if not (_proves(found, checkpoint.state_root) and _names(found[0], account)):
            return None
        self._check_events_since_snapshot(size, checkpoint.root)
        return found

    def _check_events_since_snapshot(self, size: int, root: bytes) -> None:
        start = self.store.latest_snapshot_seq(size)
        hashes = [
            verifier.leaf_hash(payload)
            for page in self.store.read_payloads(after_seq=start, upto_seq=size)
            for _seq, _type, payload in page
        ]
        if len(hashes) != size - start or merkle.root_extending(start, hashes, self.nodes) != root:
            raise StoreError(
                "inconsistent",
                f"the stored events from seq {start + 1} to {size} do not match the log's Merkle"
                " tree; run `clearing audit`",
            )


class _KeptStateNodes:
    """``events.merkle`` batched node access on the state tree kept for one size."""

    __slots__ = ("store", "size")

    def __init__(self, store: LogStore, size: int) -> None:
        self.store, self.size = store, size

    def many(self, keys):
        return self.store.get_state_nodes(self.size, keys)


def _proves(found: tuple[bytes, int, int, list[bytes]], state_root: bytes) -> bool:
    """Whether (leaf, index, size, path) verifies under ``state_root``, as `verify` checks it."""
    leaf, index, size, path = found
    return verifier.verify_inclusion(index, size, verifier.leaf_hash(leaf), path, state_root)


def _names(leaf: bytes, account: str) -> bool:
    try:
        entry = json.loads(leaf)
    except ValueError:
        return False
    return isinstance(entry, dict) and entry.get("account") == account


def resolve_point(store: LogStore, at: str | None, seq: int | None) -> tuple[int, str]:
    """(seq, at) for `prove`: ``--at T`` gives the last event with ts <= T (R3.7); ``--seq N``
    (or nothing: the head) gives that event and its own ts."""
    ts_us = instant(at)
    if ts_us is not None:
        return history.seq_at_time(store, ts_us), format_ts(ts_us)
    head, _ = store.head()
    n = head if seq is None else seq
    record = store.get(n) if n >= 1 else None
    if record is None:
        raise StoreError("seq_out_of_range", f"no event {n} (head {head})")
    following = store.get(n + 1)
    if following is not None and following.ts_us == record.ts_us:
        # R3.7: the state at a time includes every event of that time, so a state in the middle
        # of them is the state at no time, and no boundary could show ts(N) <= at < ts(N+1).
        last = history.seq_at_time(store, record.ts_us)
        raise StoreError(
            "not_a_time",
            f"the state at seq {n} is not the state at any time: event {n + 1} has the same ts;"
            f" prove --seq {last} (or --at {format_ts(record.ts_us)}) instead",
        )
    return n, format_ts(record.ts_us)
