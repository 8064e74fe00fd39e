"""The state tree at sequence N (interfaces §5): an RFC 9162 tree with one leaf per account,
system accounts included, in ascending byte order of account id. A leaf is the canonical bytes
of the account's entry of interfaces §4 plus ``"account": id`` and ``"marks"``, the marks of
the assets its balances and positions depend on."""

from __future__ import annotations

import msgspec

from events.merkle import inclusion_proof_in_memory, tree_root
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
