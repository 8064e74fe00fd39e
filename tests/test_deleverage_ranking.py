"""R10.6: the lazy ranking of clearing/liquidation.py (a heap on an exact integer key, runs of equal keys ordered by the
rule's own comparison) gives the order of a full sort by the rule's comparison."""

from __future__ import annotations

from functools import cmp_to_key

from hypothesis import given, settings
from hypothesis import strategies as st

import heapq

from clearing.liquidation import order_run, outranks, pop_run, rank_key


def ranked(candidates, standing):
    """The order ``Pass.counterparties`` pops candidates in: a heap of ``rank_key`` entries,
    each run of equal keys put in order by ``order_run``."""
    heap = [rank_key(other, *standing[other]) for other in candidates]
    heapq.heapify(heap)
    while heap:
        yield from order_run([entry[2] for entry in pop_run(heap)], standing.__getitem__)

# Equities and notionals that make exact ties (equal leverage, different ids), leverages that
# differ by less than 2^-64 (the same heap key), equity 0 and below, and huge minor-unit sums.
_big = 10**30
_figures = st.one_of(
    st.tuples(st.integers(-5, 5), st.integers(0, 12)),
    st.tuples(st.sampled_from([_big, _big + 1, 2 * _big, 3 * _big - 1]),
              st.sampled_from([_big, _big + 1, 2 * _big + 2, 3 * _big])),
    st.tuples(st.integers(-(10**40), 10**40), st.integers(0, 10**40)),
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text("abcz@-", min_size=1, max_size=4), _figures, max_size=40))
def test_ranked_is_the_full_sort_by_the_r10_6_comparison(standing):
    candidates = list(standing)
    expected = sorted(candidates, key=cmp_to_key(lambda a, b: outranks(a, b, standing)))
    assert list(ranked(candidates, standing)) == expected


def test_equity_above_zero_first_then_leverage_then_id():
    from clearing.liquidation import _LEVERAGE_BITS

    assert (_big << _LEVERAGE_BITS) // _big == ((_big + 1) << _LEVERAGE_BITS) // _big  # one run
    standing = {
        "z": (10, 50),   # leverage 5
        "a": (20, 100),  # leverage 5, id first
        "n": (_big, _big),      # leverage 1
        "m": (_big, _big + 1),  # leverage 1 + 10^-30: the same heap key as "n", ranks before it
        "b": (0, 900),   # equity <= 0: after every positive one, by id
        "c": (-7, 1),
    }
    assert list(ranked(list(standing), standing)) == ["a", "z", "m", "n", "b", "c"]


def test_ranked_is_lazy():
    standing = {f"h{i:05d}": (i + 1, 3 * i) for i in range(20000)}
    order = ranked(list(standing), standing)
    assert next(order) == "h19999"  # the highest leverage, without ordering the rest
