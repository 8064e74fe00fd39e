"""Building RFC 9162 Merkle trees over the log and proving from stored nodes.

Node model
----------
Node (level L, index i) is the root of the complete, aligned subtree over leaves
[i * 2^L, (i+1) * 2^L). Level 0 nodes are the leaf hashes (stored per event in the
log's ``leaf`` column); every complete node of level >= 1 is stored once, when the
append that completes it happens (``Frontier.append`` returns them). A subtree
that is not complete yet (on the right edge of the current tree) is never stored:
its hash is computed from the complete nodes it decomposes into.

Node access
-----------
The functions below take ``nodes``, any of:

* a mapping ``{(level, index): hash}`` (level 0 = leaf hashes);
* a callable ``get_node(level, index) -> bytes``;
* a callable with a ``many(keys) -> {key: hash}`` attribute, used to fetch all the
  nodes a computation needs in one batch (``store_nodes(store)`` makes one from a
  ``LogStore``).

Each computation first works out which complete nodes it needs (pure index
arithmetic, O(log n) keys), fetches them once, then hashes. A missing node raises
``KeyError``.

Hashing and verification are in ``events.verifier`` (standard library only), so
that what we prove with and what an auditor verifies with are the same functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterable, Sequence

from events.verifier import EMPTY_ROOT, node_hash

__all__ = [
    "Frontier",
    "consistency_proof",
    "inclusion_proof",
    "inclusion_proof_in_memory",
    "root",
    "root_extending",
    "store_nodes",
    "subtree_keys",
    "tree_nodes",
    "tree_root",
]

Key = tuple[int, int]  # (level, index)
Node = tuple[int, int, bytes]  # (level, index, hash)


# ----------------------------------------------------------------------------- ranges


def _largest_power_of_two_below(n: int) -> int:
    """The k of RFC 9162 §2.1.1: the largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def subtree_keys(start: int, end: int) -> list[Key]:
    """The complete aligned subtrees that leaves [start, end) decompose into, largest
    first, for the ranges a proof or root needs: ``start`` must be a multiple of the
    largest power of two <= end - start (true of every range RFC 9162 hashes)."""
    keys = []
    while start < end:
        level = (end - start).bit_length() - 1
        if start & ((1 << level) - 1):
            raise ValueError(f"range [{start}, {end}) is not aligned")
        keys.append((level, start >> level))
        start += 1 << level
    return keys


def _fold(hashes: list[bytes]) -> bytes:
    """MTH of a range from the hashes of its decomposition (largest first): the
    right edge folds from the right, as RFC 9162 splits at the largest power of 2."""
    r = hashes[-1]
    for h in reversed(hashes[:-1]):
        r = node_hash(h, r)
    return r


def _fetch(nodes: Any, keys: Iterable[Key]) -> dict[Key, bytes]:
    wanted = list(dict.fromkeys(keys))
    if isinstance(nodes, Mapping):
        got = {k: nodes[k] for k in wanted}
    elif hasattr(nodes, "many"):
        got = dict(nodes.many(wanted))
    else:
        got = {k: nodes(*k) for k in wanted}
    missing = [k for k in wanted if got.get(k) is None]
    if missing:
        raise KeyError(f"Merkle nodes not stored: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return got


class _Ranges:
    """Collect the ranges a computation needs, then fetch their nodes in one batch."""

    def __init__(self) -> None:
        self.ranges: list[tuple[int, int]] = []

    def add(self, start: int, end: int) -> None:
        self.ranges.append((start, end))

    def hashes(self, nodes: Any) -> list[bytes]:
        decomposed = [subtree_keys(a, b) for a, b in self.ranges]
        got = _fetch(nodes, (k for keys in decomposed for k in keys))
        return [_fold([got[k] for k in keys]) for keys in decomposed]


# ----------------------------------------------------------------------------- proofs


def root(size: int, nodes: Any) -> bytes:
    """MTH of the first ``size`` leaves (SHA-256("") for size 0)."""
    if size < 0:
        raise ValueError("size must be >= 0")
    if size == 0:
        return EMPTY_ROOT
    r = _Ranges()
    r.add(0, size)
    return r.hashes(nodes)[0]


def _path(m: int, start: int, end: int, out: _Ranges) -> None:
    """RFC 9162 §2.1.3.1 PATH(m, D[start:end]), as ranges, deepest first."""
    n = end - start
    if n == 1:
        return
    k = _largest_power_of_two_below(n)
    if m < k:
        _path(m, start, start + k, out)
        out.add(start + k, end)
    else:
        _path(m - k, start + k, end, out)
        out.add(start, start + k)


def inclusion_proof(index: int, size: int, nodes: Any) -> list[bytes]:
    """RFC 9162 inclusion proof of leaf ``index`` in the tree of ``size`` leaves."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is not in a tree of size {size}")
    r = _Ranges()
    _path(index, 0, size, r)
    return r.hashes(nodes)


def _subproof(m: int, start: int, end: int, complete: bool, out: _Ranges) -> None:
    """RFC 9162 §2.1.4.1 SUBPROOF(m, D[start:end], b), as ranges."""
    n = end - start
    if m == n:
        if not complete:
            out.add(start, end)
        return
    k = _largest_power_of_two_below(n)
    if m <= k:
        _subproof(m, start, start + k, complete, out)
        out.add(start + k, end)
    else:
        _subproof(m - k, start + k, end, False, out)
        out.add(start, start + k)


def consistency_proof(size1: int, size2: int, nodes: Any) -> list[bytes]:
    """RFC 9162 consistency proof from tree size ``size1`` to ``size2``
    (0 < size1 <= size2; empty when they are equal)."""
    if not 0 < size1 <= size2:
        raise ValueError(f"no consistency proof from size {size1} to size {size2}")
    r = _Ranges()
    _subproof(size1, 0, size2, True, r)
    return r.hashes(nodes)


# ----------------------------------------------------------------------------- frontier


class Frontier:
    """The right edge of the tree: the roots of its maximal complete subtrees.

    For size n these are the subtrees of the binary decomposition of n, largest
    (leftmost) first. ``append`` adds leaves and reports the complete nodes of
    level >= 1 that they create, which is what the store keeps.
    """

    __slots__ = ("size", "_edge")

    def __init__(self) -> None:
        self.size = 0
        self._edge: list[tuple[int, bytes]] = []  # (level, hash), levels strictly decreasing

    @classmethod
    def from_nodes(cls, size: int, nodes: Any) -> "Frontier":
        """The frontier of the stored tree of ``size`` leaves."""
        f = cls()
        if size < 0:
            raise ValueError("size must be >= 0")
        keys = subtree_keys(0, size)
        got = _fetch(nodes, keys)
        f.size = size
        f._edge = [(level, got[(level, idx)]) for level, idx in keys]
        return f

    def copy(self) -> "Frontier":
        f = Frontier()
        f.size = self.size
        f._edge = list(self._edge)
        return f

    def edge(self) -> list[Node]:
        """The frontier as (level, index, hash), largest subtree first."""
        out, start = [], 0
        for level, h in self._edge:
            out.append((level, start >> level, h))
            start += 1 << level
        return out

    def append(self, leaf_hashes: Iterable[bytes]) -> list[Node]:
        """Append leaves (their hashes); the new complete nodes of level >= 1, in the
        order they were completed. O(1) amortised per leaf."""
        edge = self._edge
        size = self.size
        created: list[Node] = []
        for h in leaf_hashes:
            level = 0
            size += 1
            # The new leaf merges with every equal-level subtree at the edge: one per
            # trailing 1-bit of the old size.
            while edge and edge[-1][0] == level:
                h = node_hash(edge.pop()[1], h)
                level += 1
                created.append((level, (size >> level) - 1, h))
            edge.append((level, h))
        self.size = size
        return created

    def root(self) -> bytes:
        """MTH of the current size."""
        if not self._edge:
            return EMPTY_ROOT
        return _fold([h for _, h in self._edge])


def root_extending(start: int, leaf_hashes: Sequence[bytes], nodes: Any) -> bytes:
    """MTH of the tree of ``start + len(leaf_hashes)`` leaves whose first ``start`` leaves are
    stored (``nodes``) and whose others are ``leaf_hashes``: the root that
    ``Frontier.from_nodes(start, nodes)``, ``append(leaf_hashes)`` and ``root()`` give, with
    each new complete subtree hashed a whole level at a time instead of leaf by leaf."""
    size = start + len(leaf_hashes)
    if size == 0:
        return EMPTY_ROOT
    # The subtrees wholly before ``start`` that a root of ``size`` needs are the maximal ones of
    # [0, start): the frontier at ``start``.
    before = {(level, idx): h for level, idx, h in Frontier.from_nodes(start, nodes).edge()}

    def subtree(level: int, idx: int) -> bytes:
        first, end = idx << level, (idx + 1) << level
        if end <= start:
            return before[(level, idx)]
        if first >= start:
            layer = leaf_hashes[first - start : end - start]
            while len(layer) > 1:
                layer = [node_hash(layer[i], layer[i + 1]) for i in range(0, len(layer), 2)]
            return layer[0]
        return node_hash(subtree(level - 1, 2 * idx), subtree(level - 1, 2 * idx + 1))

    return _fold([subtree(level, idx) for level, idx in subtree_keys(0, size)])


# ----------------------------------------------------------------------------- small trees


def tree_nodes(leaf_hashes: Sequence[bytes]) -> dict[Key, bytes]:
    """Every complete node (level 0 included) of the tree over ``leaf_hashes``."""
    nodes: dict[Key, bytes] = {(0, i): h for i, h in enumerate(leaf_hashes)}
    f = Frontier()
    for level, idx, h in f.append(leaf_hashes):
        nodes[(level, idx)] = h
    return nodes


def tree_root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH of an in-memory list of leaf HASHES (not leaf data)."""
    f = Frontier()
    f.append(leaf_hashes)
    return f.root()


def inclusion_proof_in_memory(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """Inclusion proof of leaf ``index`` in the tree over ``leaf_hashes``."""
    return inclusion_proof(index, len(leaf_hashes), tree_nodes(leaf_hashes))


# ----------------------------------------------------------------------------- stores


class store_nodes:
    """Node access on a ``LogStore``: ``nodes = store_nodes(store)``; batched via
    ``store.get_nodes``."""

    __slots__ = ("store",)

    def __init__(self, store: Any) -> None:
        self.store = store

    def many(self, keys: Sequence[Key]) -> dict[Key, bytes]:
        return self.store.get_nodes(keys)

    def __call__(self, level: int, index: int) -> bytes:
        return self.many([(level, index)])[(level, index)]

