"""R10.1 visiting order and R10.3 solvent (partial) liquidation (tables: tests/rules_ledger.py).

Every R10.3 close is also checked by brute force over all k (``assert_smallest_k``): the
engine's k must be the smallest k in 1..Q satisfying the R10.3 condition, or Q when none does.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from events import schema as s
from tests.rules_ledger import (  # noqa: F401  (audit_every_ledger is an autouse fixture)
    MARKET,
    audit_every_ledger,
    assert_smallest_k,
    expect_decisions,
    expect_holdings,
    expect_valuations,
    ledger,
)


def _closes(decisions):
    return [d for d in decisions if type(d) is s.Liquidation and d.rule == "R10.3"]


def test_partial_liquidation_closes_the_smallest_k_restoring_initial_margin():
    """R10.3: k smallest with min(ceil(k·x), P) + ceil((Q − k)·y) <= A; the units move to
    @insurance at mark and the penalty goes to @insurance."""
    lg = ledger(MARKET + """
        {"type":"deposit","account":"alice","asset":"USD","amount":"700"}
        {"type":"deposit","account":"bob","asset":"USD","amount":"100000"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"bob","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"0"}
    """)
    decisions = lg.feed("""{"type":"price","asset":"BTC","price":"55500"}""")
    # alice: cash 700 − 6000 = −5300, long 0.1 worth 5550: equity 250 < MM 277.5; IM 555.
    # unit 0.0001 × 55500 = 5.55: x = 0.0555, y = 0.555; Q = 1000; A = P = 250.
    #   k = 611: 611 × 0.0555 + 389 × 0.555 = 33.9105 + 215.895 = 249.8055 <= 250
    #   k = 610: 33.855 + 216.45 = 250.305 > 250
    expect_decisions(decisions, """
        liquidation rule=R10.3 account=alice instrument=BTC-PERP price=55500 qty=0.0611 k=611 position_before=0.1 position_after=0.0389 penalty=33.9105 penalty_uncapped=33.9105 equity_before=250 initial_margin_before=555 maintenance_margin_before=277.5 equity_after=216.0895 initial_margin_after=215.895 maintenance_margin_after=107.9475
    """)
    assert_smallest_k(lg, decisions[0])
    # alice cash −5300 + 0.0611 × 55500 − 33.9105 = −5300 + 3391.05 − 33.9105
    # @insurance: −3391.05 + 33.9105
    expect_holdings(lg, """
        account     USD         BTC-PERP
        alice       -1942.8605  0.0389
        @insurance  -3357.1395  0.0611
        bob         106000      -0.1
    """)
    expect_valuations(lg, """
        account  equity    IM       MM        liquidatable
        alice    216.0895  215.895  107.9475  false
    """)


def test_penalty_is_capped_at_equity_when_the_whole_position_must_go():
    """R10.3: penalty = min(ceil(k × unit × mark × LF), max(0, equity)); never below zero."""
    lg = ledger(MARKET + """
        {"type":"deposit","account":"alice","asset":"USD","amount":"600"}
        {"type":"deposit","account":"bob","asset":"USD","amount":"100000"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"bob","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"0"}
    """)
    decisions = lg.feed("""{"type":"price","asset":"BTC","price":"54060"}""")
    # alice: cash −5400, long worth 5406: equity 6 < MM 270.3. x = 0.05406, y = 0.5406, A = P = 6:
    # below the cap (ceil(k·x) < 6, k <= 110) the left side is >= 0.5406 × 890 > 6; at the cap
    # 6 + ceil((1000 − k) × 0.5406) <= 6 only for k = 1000. Penalty min(54.06, 6) = 6.
    expect_decisions(decisions, """
        liquidation rule=R10.3 account=alice qty=0.1 k=1000 position_after=0 penalty=6 penalty_uncapped=54.06 equity_before=6 equity_after=0
    """)
    assert_smallest_k(lg, decisions[0])
    expect_holdings(lg, """
        account     USD    BTC-PERP
        alice       0      0
        @insurance  -5400  0.1
    """)


def test_whole_position_closed_when_no_k_restores_then_the_next_position_is_chosen():
    """R10.3: the largest rounded MM contribution first; no k → the whole position; the
    loop goes on with the position chosen afresh."""
    lg = ledger(MARKET + """
        {"type":"price","asset":"ETH","price":"3000"}
        {"type":"deposit","account":"alice","asset":"USD","amount":"1800"}
        {"type":"deposit","account":"bob","asset":"USD","amount":"100000"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"bob","qty":"0.15","price":"60000","buyer_fee":"0","seller_fee":"0"}
        {"type":"trade","instrument":"ETH-PERP","buyer":"alice","seller":"bob","qty":"2","price":"3000","buyer_fee":"0","seller_fee":"0"}
    """)
    # IM 900 + 900 = 1800 = equity.
    decisions = lg.feed("""{"type":"price","asset":"ETH","price":"2400"}""")
    # alice: equity 1800 − 2 × 600 = 600; MM: BTC 450, ETH 0.075 × 4800 = 360 → 810 > 600.
    # Close 1, BTC-PERP (MM 450 > 360): A = 600 − IM(ETH) 720 = −120 < 0: no k → all 0.15,
    #   penalty min(ceil(0.15 × 60000 × 0.01) = 90, 600) = 90. Equity 510 < IM 720.
    # Close 2, ETH-PERP: unit 0.001 × 2400 = 2.4, x = 0.036, y = 0.36, Q = 2000, A = P = 510:
    #   k = 649: 23.364 + 1351 × 0.36 = 23.364 + 486.36 = 509.724 <= 510
    #   k = 648: 23.328 + 486.72 = 510.048 > 510
    expect_decisions(decisions, """
        liquidation rule=R10.3 account=alice instrument=BTC-PERP price=60000 qty=0.15 k=1500 position_after=0 penalty=90 equity_before=600 equity_after=510 initial_margin_after=720
        liquidation rule=R10.3 account=alice instrument=ETH-PERP price=2400 qty=0.649 k=649 position_after=1.351 penalty=23.364 equity_before=510 equity_after=486.636 initial_margin_after=486.36 maintenance_margin_after=243.18
    """)
    for close in decisions:
        assert_smallest_k(lg, close)
    # alice: 1800 − 9000 − 6000 + 9000 − 90 + 0.649 × 2400 − 23.364
    # @insurance: −9000 + 90 − 1557.6 + 23.364
    expect_holdings(lg, """
        account     USD         BTC-PERP  ETH-PERP
        alice       -2755.764   0         1.351
        @insurance  -10444.236  0.15      0.649
        bob         115000      -0.15     -2
    """)


# A-PERP and B-PERP are both on BTC; B's MMF is 1e-11 higher, so its exact MM is larger,
# but both round up to the same minor unit.
TWINS = MARKET + """
    {"type":"instrument","instrument":"A-PERP","underlying":"BTC","qty_decimals":4,"initial_margin":"0.1","maintenance_margin":"0.05","liquidation_fee":"0.01"}
    {"type":"instrument","instrument":"B-PERP","underlying":"BTC","qty_decimals":4,"initial_margin":"0.1","maintenance_margin":"0.05000000001","liquidation_fee":"0.01"}
    {"type":"price","asset":"BTC","price":"65000"}
    {"type":"deposit","account":"alice","asset":"USD","amount":"1301.3"}
    {"type":"deposit","account":"bob","asset":"USD","amount":"100000"}
    {"type":"trade","instrument":"B-PERP","buyer":"alice","seller":"bob","qty":"0.1001","price":"65000","buyer_fee":"0","seller_fee":"0"}
    {"type":"trade","instrument":"A-PERP","buyer":"alice","seller":"bob","qty":"0.1001","price":"65000","buyer_fee":"0","seller_fee":"0"}
"""


def test_position_chosen_by_rounded_maintenance_contribution_ties_by_instrument_id():
    """R10.3: compare ceil(|q| × mark × MMF), not the exact products; ties: id ascending."""
    lg = ledger(TWINS)  # IM 2 × 650.65 = 1301.3 = equity
    decisions = lg.feed("""{"type":"price","asset":"BTC","price":"60000.01"}""")
    # notional each 0.1001 × 60000.01 = 6006.001001
    #   MM A: × 0.05          = 300.30005005       → 300.300051
    #   MM B: × 0.05000000001 = 300.30005011006... → 300.300051   (tie: A-PERP first)
    #   IM each ceil(600.6001001) = 600.600101
    # alice: cash 1301.3 − 2 × 6506.5 = −11711.7, equity −11711.7 + 12012.002002 = 300.302002
    #   < MM 600.600102.
    # Close 1, A-PERP: A = 300.302002 − 600.600101 < 0: whole position, unit 6.000001,
    #   penalty ceil(1001 × 0.06000001 = 60.06001001) = 60.060011. Equity 240.241991.
    # Close 2, B-PERP: x = 0.06000001, y = 0.6000001, Q = 1001, A = P = 240.241991:
    #   k = 668: ceil(40.08000668) + ceil(333 × 0.6000001 = 199.8000333)
    #          = 40.080007 + 199.800034 = 239.880041 <= 240.241991
    #   k = 667: 40.020007 + ceil(200.4000334) = 40.020007 + 200.400034 = 240.420041 > A
    expect_decisions(decisions, """
        liquidation rule=R10.3 account=alice instrument=A-PERP qty=0.1001 k=1001 penalty=60.060011 equity_before=300.302002 maintenance_margin_before=600.600102 equity_after=240.241991
        liquidation rule=R10.3 account=alice instrument=B-PERP qty=0.0668 k=668 position_after=0.0333 penalty=40.080007 equity_after=200.161984 initial_margin_after=199.800034 maintenance_margin_after=99.900017
    """)
    for close in decisions:
        assert_smallest_k(lg, close)


def test_visits_accounts_in_byte_order_of_id():
    """R10.1: ascending byte order, so "B" (0x42) is handled before "a" (0x61)."""
    lg = ledger(MARKET + """
        {"type":"deposit","account":"a","asset":"USD","amount":"700"}
        {"type":"deposit","account":"B","asset":"USD","amount":"700"}
        {"type":"deposit","account":"s","asset":"USD","amount":"100000"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"a","seller":"s","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"0"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"B","seller":"s","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"0"}
    """)
    decisions = lg.feed("""{"type":"price","asset":"BTC","price":"55500"}""")
    # both as in the first test of this module: equity 250, k = 611.
    expect_decisions(decisions, """
        liquidation account=B k=611 penalty=33.9105
        liquidation account=a k=611 penalty=33.9105
    """)


# --- brute force over several parameter sets -------------------------------------------------
# An instrument on MIC (price grid 0.01, unit 0.0001, so one unit at mark m is m minor units
# when m is written in cents). alice goes long at the mark with equity = IM, then a funding
# payment of IM − target takes her to `target` equity (< MM), and R10.3 runs.
def _mic_scenario(imf, mmf, lf, mark, qty, target, relist=None):
    notional = Decimal(qty) * Decimal(mark)
    im = (notional * Decimal(imf)).quantize(Decimal("0.000001"), rounding="ROUND_CEILING")
    pay = im - Decimal(target or "0")  # target is unused when relisting
    # rate rounded down to 18 places so that ceil(notional × rate) = pay exactly (R9.2).
    rate = (pay / notional).quantize(Decimal("1e-18"), rounding="ROUND_FLOOR")
    rate = format(rate.normalize(), "f")
    lines = f"""
        {{"type":"asset","asset":"USD","decimals":6,"price_decimals":0,"haircut":"0","settlement":true}}
        {{"type":"asset","asset":"MIC","decimals":0,"price_decimals":2,"haircut":"0.5"}}
        {{"type":"instrument","instrument":"MIC-PERP","underlying":"MIC","qty_decimals":4,"initial_margin":"{imf}","maintenance_margin":"{mmf}","liquidation_fee":"{lf}"}}
        {{"type":"price","asset":"MIC","price":"{mark}"}}
        {{"type":"deposit","account":"alice","asset":"USD","amount":"{format(im.normalize(), 'f')}"}}
        {{"type":"deposit","account":"bob","asset":"USD","amount":"1000000"}}
        {{"type":"trade","instrument":"MIC-PERP","buyer":"alice","seller":"bob","qty":"{qty}","price":"{mark}","buyer_fee":"0","seller_fee":"0"}}
    """
    lg = ledger(lines)
    if relist is None:
        decisions = lg.feed(f"""{{"type":"funding","instrument":"MIC-PERP","rate":"{rate}"}}""")
    else:  # R4.4: raise the requirements instead
        imf2, mmf2, lf2 = relist
        decisions = lg.feed(
            f"""{{"type":"instrument","instrument":"MIC-PERP","underlying":"MIC","qty_decimals":4,"initial_margin":"{imf2}","maintenance_margin":"{mmf2}","liquidation_fee":"{lf2}"}}"""
        )
    return lg, _closes(decisions)


def test_sub_minor_unit_window_where_the_condition_is_not_monotone_in_k():
    """R10.3: with unit × mark × (IMF − LF) = 0.5 minor unit, k = 8000 holds, 8001 does not,
    8002 does again: the smallest k, not a bisection's answer."""
    # IMF 0.0009, MMF 0.0006, LF 0.0004; mark 10 → one unit is 0.001 (1000 minor units):
    # x = 0.4, y = 0.9 minor units; 1 MIC-PERP = Q 10000: IM 0.009, MM 0.006.
    # Funding 10 × 0.0004 = 0.004 takes equity to 0.005 = 5000 minor = A = P.
    #   k = 7999: ceil(3199.6) + ceil(1800.9) = 3200 + 1801 = 5001 > 5000
    #   k = 8000: 3200 + 1800 = 5000 <= 5000   ← smallest
    #   k = 8001: ceil(3200.4) + ceil(1799.1) = 3201 + 1800 = 5001 > 5000
    #   k = 8002: ceil(3200.8) + ceil(1798.2) = 3201 + 1799 = 5000 <= 5000
    lg, closes = _mic_scenario("0.0009", "0.0006", "0.0004", "10", "1", "0.005")
    expect_decisions(closes, """
        liquidation account=alice instrument=MIC-PERP qty=0.8 k=8000 position_after=0.2 penalty=0.0032 equity_before=0.005 equity_after=0.0018 initial_margin_after=0.0018 maintenance_margin_after=0.0012
    """)
    assert assert_smallest_k(lg, closes[0]), "this parameter set should be non-monotone"


@pytest.mark.parametrize(
    "imf, mmf, lf, mark, qty, target, relist, k, non_monotone",
    [
        # x, y: one unit at mark × LF, × IMF, in minor units; Q = qty / 0.0001. The R10.3
        # window is 2 / (y − x) wide. k and non_monotone from the R10.3 condition by hand.
        ("0.0009", "0.0006", "0.0004", "10", "1", "0.005005", None, 7990, True),  # x .4, y .9
        ("0.0009", "0.0006", "0.0004", "10", "0.7", "0.004195", None, 4210, True),
        ("0.0009", "0.0006", "0.0004", "10", "0.7", "0", None, 7000, False),  # P = 0: all, free
        ("0.1", "0.05", "0.01", "555", "0.1", "2.5", None, 611, False),  # x 555, y 5550
        ("0.5", "0.3", "0.2", "0.01", "1", "0.002668", None, 7774, False),  # x .2, y .5
        ("0.000003", "0.000002", "0.000001", "10", "1", "0.000018", None, 6000, True),  # y−x .002
        ("0.33", "0.22", "0.11", "0.07", "1.2345", "0.016234", None, 7977, False),  # x .77 y 2.31
        # R4.4: equity = the old IM, then a re-listing raises MM above it.
        ("0.0009", "0.0006", "0.0004", "10", "1", None, ("0.0011", "0.001", "0.0007"), 5000, False),
        # x 61.7, y 246.8, A = P = 1851000: 61.7k + 246.8(15000 − k) <= 1851000 from k = 10000
        ("0.1", "0.05", "0.01", "12.34", "1.5", None, ("0.2", "0.15", "0.05"), 10000, False),
    ],
)
def test_engine_k_is_the_smallest_by_brute_force(
    imf, mmf, lf, mark, qty, target, relist, k, non_monotone
):
    """R10.3 on several parameter sets, including y − x below one minor unit."""
    lg, closes = _mic_scenario(imf, mmf, lf, mark, qty, target, relist)
    assert [close.k for close in closes] == [k]
    assert assert_smallest_k(lg, closes[0]) == non_monotone


def test_raising_a_haircut_runs_the_pass():
    """R4.4, R10.3: a re-listing that raises a haircut can make a collateral holder
    liquidatable; it is handled after the listing event."""
    lg = ledger(MARKET + """
        {"type":"deposit","account":"alice","asset":"BTC","amount":"0.1"}
        {"type":"deposit","account":"bob","asset":"USD","amount":"100000"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"bob","qty":"0.5","price":"60000","buyer_fee":"0","seller_fee":"0"}
    """)
    # alice: cash −30000, long 30000, 0.1 BTC worth 5400: equity 5400 >= IM 3000.
    decisions = lg.feed("""
        {"type":"asset","asset":"BTC","decimals":8,"price_decimals":2,"haircut":"0.5"}
        {"type":"asset","asset":"BTC","decimals":8,"price_decimals":2,"haircut":"0.8"}
    """)
    # haircut 0.5: BTC worth 3000, equity 3000 >= MM 1500: nothing.
    # haircut 0.8: BTC worth 0.1 × 60000 × 0.2 = 1200 < MM 1500. unit 6: x 0.06, y 0.6,
    #   Q 5000, A = P = 1200: k = 3334: 200.04 + 1666 × 0.6 = 200.04 + 999.6 = 1199.64;
    #   k = 3333: 199.98 + 1000.2 = 1200.18 > 1200.
    expect_decisions(decisions, """
        liquidation rule=R10.3 account=alice instrument=BTC-PERP qty=0.3334 k=3334 penalty=200.04 equity_before=1200 equity_after=999.96 initial_margin_after=999.6 maintenance_margin_after=499.8
    """)
    assert_smallest_k(lg, decisions[0])
    expect_valuations(lg, """
        account  collateral  equity  IM     MM     liquidatable
        alice    1200        999.96  999.6  499.8  false
    """)
