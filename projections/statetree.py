"""The state tree at sequence N (interfaces §5): an RFC 9162 tree with one leaf per account,
system accounts included, in ascending byte order of account id. A leaf is the canonical bytes
of the account's entry of interfaces §4 plus ``"account": id`` and ``"marks"``, the marks of
the assets its balances and positions depend on."""

from __future__ import annotations

import msgspec

from events import merkle
from events.merkle import inclusion_proof, inclusion_proof_in_memory, tree_nodes, tree_root
from events.verifier import leaf_hash
from events.numbers import fmt_units
from projections.report import account_entry
from projections.state import LedgerState

_encoder = msgspec.json.Encoder(order="sorted")


def account_ids(state: LedgerState) -> list[str]:
    return sorted(state.accounts, key=lambda a: a.encode())


def account_leaf(state: LedgerState, account_id: str) -> bytes:
    acct = state.accounts[account_id]
    entry = account_entry(state, acct)
    entry["account"] = account_id
    assets = {a for a in acct.balances}
    assets.update(state.instruments[i].underlying for i in acct.positions)
    entry["marks"] = {
        asset: fmt_units(state.marks[asset], state.assets[asset].price_decimals)
        for asset in sorted(assets)
        if asset in state.marks
    }
    return _encoder.encode(entry)


def leaves(state: LedgerState) -> list[bytes]:
    return [account_leaf(state, a) for a in account_ids(state)]


def state_root(state: LedgerState) -> bytes:
    """MTH of the state leaves; the empty tree's root for an empty state (RFC 9162)."""
    return tree_root([leaf_hash(leaf) for leaf in leaves(state)])


def account_proof(state: LedgerState, account_id: str) -> tuple[bytes, int, int, list[bytes]]:
    """(leaf, leaf index, tree size, inclusion path) of one account in the state tree."""
    ids = account_ids(state)
    index = ids.index(account_id)
    all_leaves = [account_leaf(state, a) for a in ids]
    hashes = [leaf_hash(leaf) for leaf in all_leaves]
    return all_leaves[index], index, len(ids), inclusion_proof_in_memory(index, hashes)


class StateTree:
    """The whole state tree at one size, built once: the leaves in tree order, the position of
    every account, and every complete node (``events.merkle`` node model, level 0 the leaf
    hashes). ``TLog.sign`` stores it (``LogStore.put_state_tree``) so that a proof at a signed
    size reads one leaf and its path instead of rebuilding the state."""

    __slots__ = ("ids", "leaves", "nodes", "root", "_index")

    def __init__(self, state: LedgerState) -> None:
        self.ids = account_ids(state)
        self.leaves = [account_leaf(state, a) for a in self.ids]
        hashes = [leaf_hash(leaf) for leaf in self.leaves]
        self.nodes = tree_nodes(hashes)
        self.root = merkle.root(len(hashes), self.nodes)  # MTH, as state_root computes it
        self._index = {a: i for i, a in enumerate(self.ids)}

    def __contains__(self, account_id: str) -> bool:
        return account_id in self._index

    def account_proof(self, account_id: str) -> tuple[bytes, int, int, list[bytes]]:
        """As ``account_proof`` of the state, from the nodes already built."""
        index = self._index[account_id]
        size = len(self.ids)
        return self.leaves[index], index, size, inclusion_proof(index, size, self.nodes)

    def leaf_rows(self) -> list[tuple[str, bytes, bytes]]:
        """(account, leaf hash, leaf bytes) in tree order, for ``LogStore.put_state_tree``."""
        return [(a, self.nodes[(0, i)], leaf) for i, (a, leaf) in enumerate(zip(self.ids, self.leaves))]

    def node_rows(self) -> list[tuple[int, int, bytes]]:
        """(level, idx, hash) of the complete nodes of level >= 1."""
        return [(level, idx, h) for (level, idx), h in self.nodes.items() if level >= 1]
