"""R10.3 ``smallest_k`` against brute force: a table, then a property test.

The condition, in minor units: min(ceil(k·x), P) + ceil((Q − k)·y) <= A, k in 1..Q, with
x = unit × mark × LF, y = unit × mark × IMF (so y > x > 0), A = equity − IM of the other
positions and P = max(0, equity). ``smallest_k`` returns the smallest such k, or None.
"""

from __future__ import annotations

from fractions import Fraction as F
from math import ceil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clearing.liquidation import smallest_k


def brute_force(q: int, x: F, y: F, a: int, p: int) -> int | None:
    for k in range(1, q + 1):
        if min(ceil(k * x), p) + ceil((q - k) * y) <= a:
            return k
    return None


@pytest.mark.parametrize(
    "q, x, y, a, p, expected",
    [
        # 0.1 BTC-PERP at 55500 (tests/test_rules_liquidation.py): 33.9105 + 215.895 <= 250
        (1000, F(55500), F(555000), 250_000_000, 250_000_000, 611),
        # exact boundary: 2000 × 50000 + 1000 × 500000 = 600000000
        (3000, F(50000), F(500000), 600_000_000, 600_000_000, 2000),
        # A = 0 with P > 0: every k pays ceil(k·x) >= 1 > 0
        (2000, F(48000), F(480000), 0, 900_000_000, None),
        # A < 0: nothing restores
        (10, F(1), F(2), -1, 5, None),
        # the cap: only k = Q, where the penalty is P = 6000000 = A
        (1000, F(54060), F(540600), 6_000_000, 6_000_000, 1000),
        # x = 0.4, y = 0.9: 8000 holds, 8001 does not, 8002 does (3201 + 1799)
        (10000, F(2, 5), F(9, 10), 5000, 5000, 8000),
        # same with A = 5005: 7990 holds (3196 + 1809), 7991 does not (3197 + 1809)
        (10000, F(2, 5), F(9, 10), 5005, 5005, 7990),
        # P = 0: no penalty at all; ceil((100 − k) × 0.7) <= 0 only at k = 100
        (100, F(1, 3), F(7, 10), 0, 0, 100),
        # k = 1 already holds: 1 + 18 = 19 <= 100
        (10, F(1), F(2), 100, 100, 1),
        # Q = 1: closing the unit leaves the penalty ceil(3) = 3
        (1, F(3), F(5), 3, 10, 1),
        (1, F(3), F(5), 2, 10, None),
        # y − x = 0.001 minor unit, a window of 2000 k values: h(k) = 10 − 0.001k <= 8 from
        # k = 2000, where 2 + 6 = 8; k = 1999: ceil(1.999) + ceil(6.002) = 2 + 7 = 9
        (5000, F(1, 1000), F(2, 1000), 8, 8, 2000),
        # same, A = P = 3: the capped part only, k = Q (penalty min(5, 3) = 3, nothing left)
        (5000, F(1, 1000), F(2, 1000), 3, 3, 5000),
    ],
)
def test_smallest_k_table(q, x, y, a, p, expected):
    assert brute_force(q, x, y, a, p) == expected  # the table itself is right
    assert smallest_k(q, x, y, a, p) == expected


fractions = st.builds(
    F,
    st.integers(min_value=1, max_value=5000),
    st.sampled_from([1, 2, 3, 7, 10, 100, 1000, 10**6]),
)


@settings(max_examples=600, deadline=None)
@given(
    q=st.integers(min_value=1, max_value=400),
    x=fractions,
    gap=fractions,
    equity=st.integers(min_value=0, max_value=2000),
    im_others=st.integers(min_value=0, max_value=300),
)
def test_smallest_k_matches_brute_force_on_engine_inputs(q, x, gap, equity, im_others):
    """R10.3 inputs as the engine builds them: A = equity − IM(others), P = equity >= 0."""
    y = x + gap
    a, p = equity - im_others, equity
    assert smallest_k(q, x, y, a, p) == brute_force(q, x, y, a, p)


@settings(max_examples=400, deadline=None)
@given(
    q=st.integers(min_value=1, max_value=300),
    x=fractions,
    gap=st.builds(F, st.integers(min_value=1, max_value=50), st.sampled_from([100, 1000, 10**4])),
    a=st.integers(min_value=-5, max_value=400),
    p=st.integers(min_value=0, max_value=400),
)
def test_smallest_k_matches_brute_force_when_y_minus_x_is_below_a_minor_unit(q, x, gap, a, p):
    """R10.3: the wide window (unit × mark × (IMF − LF) < 1 minor unit); A and P free."""
    y = x + gap
    assert smallest_k(q, x, y, a, p) == brute_force(q, x, y, a, p)
