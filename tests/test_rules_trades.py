"""R8 trades (tables: tests/rules_ledger.py)."""

from __future__ import annotations

from tests.rules_ledger import (  # noqa: F401  (audit_every_ledger is an autouse fixture)
    MARKET,
    audit_every_ledger,
    expect_decisions,
    expect_holdings,
    expect_valuations,
    ledger,
)


def test_trade_rejections_in_first_match_order():
    """R8.2: unknown_account (buyer, then seller); self_trade; no_mark; insufficient_margin
    (buyer, then seller)."""
    lg = ledger(MARKET + """
        {"type":"deposit","account":"alice","asset":"USD","amount":"1000"}
        {"type":"deposit","account":"bob","asset":"USD","amount":"1000"}
    """)
    decisions = lg.feed("""
        {"type":"trade","instrument":"BTC-PERP","buyer":"carol","seller":"dave","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"0"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"dave","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"0"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"carol","seller":"carol","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"0"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"alice","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"0"}
        {"type":"trade","instrument":"ETH-PERP","buyer":"carol","seller":"bob","qty":"0.1","price":"3000","buyer_fee":"0","seller_fee":"0"}
        {"type":"trade","instrument":"ETH-PERP","buyer":"bob","seller":"bob","qty":"0.1","price":"3000","buyer_fee":"0","seller_fee":"0"}
        {"type":"trade","instrument":"ETH-PERP","buyer":"alice","seller":"bob","qty":"0.1","price":"3000","buyer_fee":"0","seller_fee":"0"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"bob","qty":"0.2","price":"60000","buyer_fee":"0","seller_fee":"0"}
        {"type":"deposit","account":"carol","asset":"USD","amount":"10000"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"carol","seller":"bob","qty":"0.2","price":"60000","buyer_fee":"0","seller_fee":"0"}
    """)
    # ETH has no mark. 0.2 BTC-PERP at 60000: IM 1200 > equity 1000 for alice and for bob;
    # the buyer is named. With carol (10000) buying, the seller bob is named.
    expect_decisions(decisions, """
        rejected reason=unknown_account     account=carol rule=R8.2
        rejected reason=unknown_account     account=dave  rule=R8.2
        rejected reason=unknown_account     account=carol
        rejected reason=self_trade          account=alice rule=R8.2
        rejected reason=unknown_account     account=carol
        rejected reason=self_trade          account=bob
        rejected reason=no_mark             rule=R5.2 figures.asset=ETH
        rejected reason=insufficient_margin account=alice rule=R8.4 figures.equity_after=1000 figures.initial_margin_after=1200
        rejected reason=insufficient_margin account=bob   rule=R8.4 figures.equity_after=1000 figures.initial_margin_after=1200
    """)
    expect_holdings(lg, """
        account  USD    BTC-PERP  ETH-PERP
        alice    1000   0         0
        bob      1000   0         0
        carol    10000  0         0
    """)


def test_margin_check_values_the_trade_at_mark_and_accepts_equity_equal_to_im():
    """R8.4: equity after the trade (cash at the trade price, position at the mark) >= IM."""
    lg = ledger(MARKET + """
        {"type":"deposit","account":"alice","asset":"USD","amount":"1000"}
        {"type":"deposit","account":"carol","asset":"USD","amount":"100000"}
    """)
    decisions = lg.feed("""
        {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"carol","qty":"0.1","price":"64000.01","buyer_fee":"0","seller_fee":"0"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"carol","qty":"0.1","price":"63000","buyer_fee":"1000","seller_fee":"0"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"carol","qty":"0.1","price":"64000","buyer_fee":"0","seller_fee":"0"}
    """)
    # equity after = 1000 − 0.1 × (price − 60000) − fee; IM = 0.1 × 60000 × 0.1 = 600
    #   64000.01: 1000 − 400.001 = 599.999 < 600
    #   63000 + fee 1000: 1000 − 300 − 1000 = −300 < 600
    #   64000: 1000 − 400 = 600 >= 600
    expect_decisions(decisions, """
        rejected reason=insufficient_margin account=alice figures.equity_after=599.999 figures.initial_margin_after=600
        rejected reason=insufficient_margin account=alice figures.equity_after=-300    figures.initial_margin_after=600
    """)
    expect_valuations(lg, """
        account  cash    equity  IM   MM   liquidatable
        alice    -5400   600     600  300  false
        carol    106400  100400  600  300  false
    """)


def test_reduce_only_trades_pass_below_im_but_a_flip_is_checked_in_full():
    """R8.4: a trade that only reduces a position passes even when equity < IM after it,
    closing to exactly zero included; crossing to the other side is not a reduction. A
    reduction that leaves the party bankrupt is handled at once by the pass (R10.1)."""
    lg = ledger(MARKET + """
        {"type":"deposit","account":"@insurance","asset":"USD","amount":"1000"}
        {"type":"deposit","account":"alice","asset":"USD","amount":"1000"}
        {"type":"deposit","account":"carol","asset":"USD","amount":"100000"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"carol","qty":"0.1","price":"64000","buyer_fee":"0","seller_fee":"0"}
        {"type":"price","asset":"BTC","price":"57000"}
    """)
    # alice: cash 1000 − 6400 = −5400, long 0.1 worth 5700: equity 300, IM 570, MM 285 —
    # below IM, not liquidatable.
    expect_valuations(lg, """
        account  equity  IM   MM   liquidatable
        alice    300     570  285  false
    """)
    decisions = lg.feed("""
        {"type":"trade","instrument":"BTC-PERP","buyer":"carol","seller":"alice","qty":"0.15","price":"56000","buyer_fee":"0","seller_fee":"0"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"carol","seller":"alice","qty":"0.05","price":"56000","buyer_fee":"0","seller_fee":"0"}
    """)
    # 0.15 flips alice from +0.1 to −0.05 (smaller in size, but it crosses): checked in full,
    #   equity after 300 − 0.15 × 1000 = 150 < IM ceil(0.05 × 57000 × 0.1) = 285. carol (the
    #   buyer, checked first) flips too, from −0.1 to +0.05, and passes: 100850 >= 285.
    # 0.05 reduces alice to +0.05: equity after 300 − 50 = 250 < IM 285, and passes.
    expect_decisions(decisions, """
        rejected reason=insufficient_margin account=alice figures.equity_after=150 figures.initial_margin_after=285
    """)
    expect_valuations(lg, """
        account  cash   equity  IM   MM     liquidatable
        alice    -2600  250     285  142.5  false
    """)
    decisions = lg.feed("""
        {"type":"trade","instrument":"BTC-PERP","buyer":"carol","seller":"alice","qty":"0.05","price":"56000","buyer_fee":"0","seller_fee":"300"}
    """)
    # Closing to exactly zero with a fee of 300: equity after 250 − 50 − 300 = −100 < IM 0,
    # accepted as a reduction. The pass finds alice bankrupt without positions (R10.4):
    # D 100, F 1000, C 100, R 0.
    expect_decisions(decisions, """
        bankruptcy account=alice equity=-100 deficit=100 insurance_fund=1000 cover=100 remainder=0 residual=0 seized=
    """)
    expect_holdings(lg, """
        account     USD     BTC-PERP
        alice       0       0
        carol       100800  0
        @insurance  900     0
        @fees       300     0
    """)


def test_fees_go_to_fees_account_as_in_the_interfaces_example():
    """R8.3, R9, R6: the ten lines of interfaces §1 give the state of interfaces §4."""
    lines = """
{"id":"a1","ts":"2026-03-01T00:00:00Z","type":"asset","asset":"USD","decimals":6,"price_decimals":0,"haircut":"0","settlement":true}
{"id":"a2","ts":"2026-03-01T00:00:00Z","type":"asset","asset":"BTC","decimals":8,"price_decimals":2,"haircut":"0.1"}
{"id":"i1","ts":"2026-03-01T00:00:00Z","type":"instrument","instrument":"BTC-PERP","underlying":"BTC","qty_decimals":4,"initial_margin":"0.1","maintenance_margin":"0.05","liquidation_fee":"0.01"}
{"id":"p1","ts":"2026-03-01T00:00:01Z","type":"price","asset":"BTC","price":"60000"}
{"id":"d1","ts":"2026-03-01T00:00:02Z","type":"deposit","account":"alice","asset":"USD","amount":"10000"}
{"id":"d2","ts":"2026-03-01T00:00:02Z","type":"deposit","account":"bob","asset":"USD","amount":"10000"}
{"id":"w1","ts":"2026-03-01T00:00:03Z","type":"withdrawal","account":"alice","asset":"USD","amount":"100"}
{"id":"x1","ts":"2026-03-01T00:00:04Z","type":"transfer","from":"alice","to":"alice/iso","asset":"USD","amount":"500"}
{"id":"t1","ts":"2026-03-01T00:00:05Z","type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"bob","qty":"0.5","price":"60010.5","buyer_fee":"3","seller_fee":"1.5"}
{"id":"f1","ts":"2026-03-01T08:00:00Z","type":"funding","instrument":"BTC-PERP","rate":"0.0001"}
"""
    lg = ledger(lines)
    assert lg.state.seq == 11  # ten inputs and one funding_settled
    # alice: 10000 − 100 − 500 − 0.5 × 60010.5 − 3 = −20608.25; funding 0.5 × 60000 × 0.0001 = 3
    #   paid → −20611.25. bob: 10000 + 30005.25 − 1.5 + 3 = 40006.75. @fees: 3 + 1.5.
    expect_decisions(lg.events[-1:], """
        funding_settled instrument=BTC-PERP rate=0.0001 price=60000 paid=3 received=3 dust=0 payments=alice:-3,bob:3
    """)
    expect_holdings(lg, """
        account     USD        BTC-PERP
        alice       -20611.25  0.5
        alice/iso   500        0
        bob         40006.75   -0.5
        @fees       4.5        0
        @insurance  0          0
        @external   -19900     0
    """)
    expect_valuations(lg, """
        account  equity    IM    MM    free     liquidatable
        alice    9388.75   3000  1500  6388.75  false
        bob      10006.75  3000  1500  7006.75  false
    """)


def test_insurance_trades_as_a_party_without_margin_check():
    """R8.1, R8.4, R11.2: @insurance may buy or sell; only the other party is checked."""
    lg = ledger(MARKET + """
        {"type":"deposit","account":"bob","asset":"USD","amount":"10000"}
        {"type":"deposit","account":"carol","asset":"USD","amount":"10000"}
    """)
    decisions = lg.feed("""
        {"type":"trade","instrument":"BTC-PERP","buyer":"@insurance","seller":"bob","qty":"1","price":"60000","buyer_fee":"0","seller_fee":"2"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"carol","seller":"@insurance","qty":"0.5","price":"61000","buyer_fee":"1","seller_fee":"0"}
    """)
    # @insurance: cash −60000 + 30500 = −29500, long 0.5: equity 500 < IM 3000, never checked.
    # bob: equity 10000 − 2 = 9998 >= IM 6000. carol: 10000 − 0.5 × 1000 − 1 = 9499 >= 3000.
    assert decisions == []
    expect_holdings(lg, """
        account     USD     BTC-PERP
        @insurance  -29500  0.5
        bob         69998   -1
        carol       -20501  0.5
        @fees       3       0
    """)
    expect_valuations(lg, """
        account     equity  IM    liquidatable
        @insurance  500     3000  false
        bob         9998    6000  false
        carol       9499    3000  false
    """)
