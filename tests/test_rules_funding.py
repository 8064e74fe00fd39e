"""R9 funding (tables: tests/rules_ledger.py)."""

from __future__ import annotations

from tests.rules_ledger import (  # noqa: F401  (audit_every_ledger is an autouse fixture)
    MARKET,
    audit_every_ledger,
    expect_decisions,
    expect_holdings,
    ledger,
)

# Mark 60000.01. alice long 0.0003, bob short 0.0002, @insurance short 0.0001, all at the mark:
#   alice      100 − 0.0003 × 60000.01 = 81.999997
#   bob        100 + 0.0002 × 60000.01 = 112.000002
#   @insurance 100 + 0.0001 × 60000.01 = 106.000001
HOLDERS = MARKET + """
    {"type":"price","asset":"BTC","price":"60000.01"}
    {"type":"deposit","account":"alice","asset":"USD","amount":"100"}
    {"type":"deposit","account":"bob","asset":"USD","amount":"100"}
    {"type":"deposit","account":"@insurance","asset":"USD","amount":"100"}
    {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"bob","qty":"0.0002","price":"60000.01","buyer_fee":"0","seller_fee":"0"}
    {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"@insurance","qty":"0.0001","price":"60000.01","buyer_fee":"0","seller_fee":"0"}
"""


def test_positive_rate_longs_pay_rounded_up_shorts_receive_rounded_down_dust_to_insurance():
    """R9.1, R9.2: x = q × mark × rate; payer ceil(|x|), receiver floor(|x|); @insurance is a
    holder like any other and also takes the dust."""
    lg = ledger(HOLDERS)
    decisions = lg.feed("""{"type":"funding","instrument":"BTC-PERP","rate":"0.0001"}""")
    #   alice       0.0003 × 60000.01 × 0.0001 =  0.0018000003 → pays     0.001801
    #   bob        −0.0002 × 60000.01 × 0.0001 = −0.0012000002 → receives 0.0012
    #   @insurance −0.0001 × 60000.01 × 0.0001 = −0.0006000001 → receives 0.0006
    #   dust = 0.001801 − 0.0018 = 0.000001
    expect_decisions(decisions, """
        funding_settled instrument=BTC-PERP rate=0.0001 price=60000.01 paid=0.001801 received=0.0018 dust=0.000001 payments=@insurance:0.0006,alice:-0.001801,bob:0.0012
    """)
    # @insurance: 106.000001 + 0.0006 + 0.000001
    expect_holdings(lg, """
        account     USD         BTC-PERP
        alice       81.998196   0.0003
        bob         112.001202  -0.0002
        @insurance  106.000602  -0.0001
    """)


def test_negative_rate_shorts_pay_rounded_up_longs_receive_rounded_down():
    """R9.1, R9.2 with rate < 0."""
    lg = ledger(HOLDERS)
    decisions = lg.feed("""{"type":"funding","instrument":"BTC-PERP","rate":"-0.0001"}""")
    #   alice      −0.0018000003 → receives 0.0018
    #   bob         0.0012000002 → pays     0.001201
    #   @insurance  0.0006000001 → pays     0.000601
    #   dust = 0.001802 − 0.0018 = 0.000002 → @insurance: 106.000001 − 0.000601 + 0.000002
    expect_decisions(decisions, """
        funding_settled rate=-0.0001 paid=0.001802 received=0.0018 dust=0.000002
    """)
    expect_holdings(lg, """
        account     USD         BTC-PERP
        alice       82.001797   0.0003
        bob         111.998801  -0.0002
        @insurance  105.999402  -0.0001
    """)


def test_zero_rate_and_an_instrument_nobody_holds_still_record_exactly_one_funding_settled():
    """R3.6: exactly one `funding_settled` per funding input, whatever it moves."""
    lg = ledger(HOLDERS)
    decisions = lg.feed("""
        {"type":"funding","instrument":"BTC-PERP","rate":"0"}
        {"type":"funding","instrument":"ETH-PERP","rate":"0.5"}
    """)
    expect_decisions(decisions, """
        funding_settled instrument=BTC-PERP rate=0   paid=0 received=0 dust=0
        funding_settled instrument=ETH-PERP rate=0.5 paid=0 received=0 dust=0 payments=
    """)
    expect_holdings(lg, """
        account     USD         BTC-PERP
        alice       81.999997   0.0003
        bob         112.000002  -0.0002
        @insurance  106.000001  -0.0001
    """)


def test_funding_runs_the_liquidation_pass():
    """R9.3: a payment that takes a holder below MM is handled at once (R10.3)."""
    lg = ledger(MARKET + """
        {"type":"deposit","account":"alice","asset":"USD","amount":"600"}
        {"type":"deposit","account":"bob","asset":"USD","amount":"10000"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"bob","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"0"}
    """)
    decisions = lg.feed("""{"type":"funding","instrument":"BTC-PERP","rate":"0.05"}""")
    # alice pays 0.1 × 60000 × 0.05 = 300: equity 300 = MM 300, not below it: no handling.
    expect_decisions(decisions, """
        funding_settled paid=300 received=300 dust=0 payments=alice:-300,bob:300
    """)
    decisions = lg.feed("""{"type":"funding","instrument":"BTC-PERP","rate":"0.0000001"}""")
    # alice pays 0.1 × 60000 × 0.0000001 = 0.0006: equity 299.9994 < MM 300 → R10.3.
    # unit 0.0001 × 60000 = 6; x = 0.06, y = 0.6, Q = 1000, A = P = 299.9994:
    #   0.06k + 0.6(1000 − k) <= 299.9994  ⇔  k >= 300.0006 / 0.54 = 555.5567 → k = 556:
    #   33.36 + 266.4 = 299.76 <= 299.9994; k = 555: 33.3 + 267 = 300.3 > 299.9994.
    expect_decisions(decisions, """
        funding_settled paid=0.0006 received=0.0006 dust=0
        liquidation rule=R10.3 account=alice instrument=BTC-PERP price=60000 qty=0.0556 k=556 penalty=33.36 equity_before=299.9994 equity_after=266.6394 initial_margin_after=266.4
    """)
