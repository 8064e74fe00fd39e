"""R10.4 bankruptcy, R10.5 takeover by @insurance, R10.6 auto-deleveraging, R10.7 records,
and the R10.1 visiting order across them (tables: tests/rules_ledger.py)."""

from __future__ import annotations

from tests.rules_ledger import (  # noqa: F401  (audit_every_ledger is an autouse fixture)
    MARKET,
    audit_every_ledger,
    expect_decisions,
    expect_holdings,
    expect_valuations,
    ledger,
)

# A second perpetual on BTC, so that one price input can hurt an account that is short
# BTC-PERP (it is long XBT-PERP).
XBT = """
    {"type":"instrument","instrument":"XBT-PERP","underlying":"BTC","qty_decimals":4,"initial_margin":"0.1","maintenance_margin":"0.05","liquidation_fee":"0.01"}
"""


def test_bankruptcy_covered_by_the_fund_seizes_collateral_and_moves_positions_to_insurance():
    """R10.4, R10.5, R10.7: D, C = min(D, F), R = 0; collateral bought by @insurance at
    floor(b × mark × (1 − h)) (0 without a mark); positions to @insurance at mark, no penalty;
    the account ends at zero."""
    lg = ledger(MARKET + """
        {"type":"deposit","account":"@insurance","asset":"USD","amount":"1000"}
        {"type":"deposit","account":"alice","asset":"USD","amount":"100"}
        {"type":"deposit","account":"alice","asset":"BTC","amount":"0.01234567"}
        {"type":"deposit","account":"alice","asset":"ETH","amount":"1"}
        {"type":"deposit","account":"bob","asset":"USD","amount":"100000"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"bob","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"0"}
    """)
    # at 60000: cash −5900 + BTC 0.01234567 × 54000 = 666.66618 + long 6000 = 766.66618 >= 600
    decisions = lg.feed("""{"type":"price","asset":"BTC","price":"50000.01"}""")
    # BTC: 0.01234567 × 50000.01 × 0.9 = 555.55526111103 → 555.555261; ETH has no mark: 0.
    # equity = −5900 + 555.555261 + 5000.001 = −344.443739 → D = 344.443739, F = 1000,
    # C = D, R = 0. MM = 0.05 × 5000.001 = 250.00005.
    expect_decisions(decisions, """
        bankruptcy account=alice equity=-344.443739 maintenance_margin=250.00005 deficit=344.443739 insurance_fund=1000 cover=344.443739 remainder=0 residual=0 seized=BTC:0.01234567@50000.01=555.555261,ETH:1@0=0
        liquidation rule=R10.5 account=alice instrument=BTC-PERP price=50000.01 qty=0.1 position_before=0.1 position_after=0 penalty=0
    """)
    # alice: −5900 + 555.555261 + 344.443739 + 5000.001 = 0
    # @insurance: 1000 − 555.555261 − 344.443739 − 5000.001 = −4900
    expect_holdings(lg, """
        account     USD    BTC         ETH  BTC-PERP
        alice       0      0           0    0
        @insurance  -4900  0.01234567  1    0.1
        bob         106000 0           0    -0.1
    """)
    # R10.4: @insurance's equity is what it had minus C: 1000 − 344.443739.
    expect_valuations(lg, """
        account     equity      liquidatable
        alice       0           false
        @insurance  655.556261  false
    """)


def test_bankrupt_account_without_positions_is_paid_its_remainder_by_insurance_alone():
    """R10.6 first point: no position, so @insurance moves R; only the `bankruptcy` is
    recorded, and @insurance's cash goes negative."""
    lg = ledger(MARKET + """
        {"type":"deposit","account":"@insurance","asset":"USD","amount":"5"}
        {"type":"deposit","account":"alice","asset":"BTC","amount":"1"}
        {"type":"deposit","account":"bob","asset":"USD","amount":"1000"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"bob","qty":"0.1","price":"60000","buyer_fee":"10","seller_fee":"0"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"bob","seller":"alice","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"10"}
    """)
    # alice: no position, cash −20 (two fees), 1 BTC worth 54000.
    decisions = lg.feed("""{"type":"price","asset":"BTC","price":"0.01"}""")
    # BTC worth floor(1 × 0.01 × 0.9) = 0.009: equity −19.991 < MM 0. D 19.991, F 5, C 5,
    # R 14.991, paid by @insurance alone.
    expect_decisions(decisions, """
        bankruptcy account=alice equity=-19.991 maintenance_margin=0 deficit=19.991 insurance_fund=5 cover=5 remainder=14.991 residual=14.991 seized=BTC:1@0.01=0.009
    """)
    # @insurance: 5 − 0.009 − 5 − 14.991 = −15
    expect_holdings(lg, """
        account     USD   BTC  BTC-PERP
        alice       0     0    0
        @insurance  -15   1    0
        @fees       20    0    0
        bob         1000  0    0
    """)
    expect_valuations(lg, """
        account     equity   liquidatable
        @insurance  -14.991  false
    """)


def test_deleveraging_ranks_counterparties_and_splits_the_remainder_by_quantity():
    """R10.6: equity > 0 first, by effective leverage compared exactly (ties by id), then
    equity <= 0 by id; each pays floor(R × Δ / |q_A|), the last what is left of R. The
    counterparties with equity <= 0 are then handled in the same visit (ids after alice)."""
    lg = ledger(MARKET + XBT + """
        {"type":"deposit","account":"@insurance","asset":"USD","amount":"3899.999993"}
        {"type":"deposit","account":"alice","asset":"USD","amount":"6000"}
        {"type":"deposit","account":"a0","asset":"USD","amount":"4000"}
        {"type":"deposit","account":"c0","asset":"USD","amount":"600"}
        {"type":"deposit","account":"c1","asset":"USD","amount":"2000"}
        {"type":"deposit","account":"c2","asset":"USD","amount":"1999.999999"}
        {"type":"deposit","account":"c3","asset":"USD","amount":"1000"}
        {"type":"deposit","account":"z1","asset":"USD","amount":"7200"}
        {"type":"deposit","account":"z2","asset":"USD","amount":"3000"}
        {"type":"deposit","account":"xs","asset":"USD","amount":"10000"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"a0","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"0"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"c0","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"0"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"c1","qty":"0.2","price":"60000","buyer_fee":"0","seller_fee":"0"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"c2","qty":"0.2","price":"60000","buyer_fee":"0","seller_fee":"0"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"c3","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"0"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"z1","qty":"0.2","price":"60000","buyer_fee":"0","seller_fee":"0"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"z2","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"0"}
        {"type":"trade","instrument":"XBT-PERP","buyer":"z1","seller":"xs","qty":"1","price":"60000","buyer_fee":"0","seller_fee":"0"}
        {"type":"trade","instrument":"XBT-PERP","buyer":"z2","seller":"xs","qty":"0.4","price":"60000","buyer_fee":"0","seller_fee":"0"}
    """)
    decisions = lg.feed("""{"type":"price","asset":"BTC","price":"50000"}""")
    # At 50000 (each short gains 10000 per BTC, each long loses it):
    #   account  equity                 gross notional  leverage
    #   alice    6000 − 10000 = −4000   50000           bankrupt: D 4000, F 3899.999993, R 100.000007
    #   a0       4000 + 1000  = 5000    5000            1
    #   c0       600 + 1000   = 1600    5000            3.125
    #   c1       2000 + 2000  = 4000    10000           2.5
    #   c2       3999.999999            10000           2.500000000625 (2.5 to 9 places)
    #   c3       1000 + 1000  = 2000    5000            2.5 (ties c1: by id)
    #   z1       7200 + 2000 − 10000 = −800   60000     equity <= 0: last, by id
    #   z2       3000 + 1000 − 4000  = 0      25000
    # Ranking c0, c2, c1, c3, a0, z1, z2. Paid floor(100.000007 × Δ / 1):
    #   Δ 0.1 → floor(10.0000007) = 10; Δ 0.2 → floor(20.0000014) = 20.000001;
    #   the last (z2) pays 100.000007 − 90.000003 = 10.000004.
    # Then, in the same visit: z1 (−820.000001 after paying, long 1 XBT-PERP) and z2
    # (−10.000004, long 0.4 XBT-PERP) are bankrupt with F = 0: R = D, paid by xs.
    expect_decisions(decisions, """
        bankruptcy account=alice equity=-4000 maintenance_margin=2500 deficit=4000 insurance_fund=3899.999993 cover=3899.999993 remainder=100.000007 residual=0
        deleverage account=alice counterparty=c0 instrument=BTC-PERP price=50000 qty=0.1 share=100.000007 paid=10        rank=1 counterparty_equity=1600 counterparty_notional=5000
        deleverage account=alice counterparty=c2 qty=0.2 paid=20.000001 rank=2 counterparty_equity=3999.999999 counterparty_notional=10000
        deleverage account=alice counterparty=c1 qty=0.2 paid=20.000001 rank=3 counterparty_equity=4000
        deleverage account=alice counterparty=c3 qty=0.1 paid=10        rank=4 counterparty_equity=2000
        deleverage account=alice counterparty=a0 qty=0.1 paid=10        rank=5 counterparty_equity=5000
        deleverage account=alice counterparty=z1 qty=0.2 paid=20.000001 rank=6 counterparty_equity=-800 counterparty_notional=60000
        deleverage account=alice counterparty=z2 qty=0.1 paid=10.000004 rank=7 counterparty_equity=0 counterparty_notional=25000
        bankruptcy account=z1 equity=-820.000001 maintenance_margin=2500 deficit=820.000001 insurance_fund=0 cover=0 remainder=820.000001
        deleverage account=z1 counterparty=xs instrument=XBT-PERP qty=1 position_before=1 counterparty_position_before=-1.4 share=820.000001 paid=820.000001 rank=1
        bankruptcy account=z2 equity=-10.000004 maintenance_margin=1000 deficit=10.000004 insurance_fund=0 cover=0 remainder=10.000004
        deleverage account=z2 counterparty=xs instrument=XBT-PERP qty=0.4 counterparty_position_before=-0.4 paid=10.000004
    """)
    # Each counterparty closed at 50000 (its short gain kept as cash) and paid its share:
    #   c0 600 + 6000 − 5000 − 10; c2 1999.999999 + 12000 − 10000 − 20.000001; ...
    #   xs 10000 + 84000 − 50000 − 820.000001 − 20000 − 10.000004
    expect_holdings(lg, """
        account     USD           BTC-PERP  XBT-PERP
        alice       0             0         0
        a0          4990          0         0
        c0          1590          0         0
        c1          3979.999999   0         0
        c2          3979.999998   0         0
        c3          1990          0         0
        z1          0             0         0
        z2          0             0         0
        xs          23169.999995  0         0
        @insurance  0             0         0
    """)


def test_remainder_split_over_positions_by_maintenance_leftover_to_largest_tie_by_id():
    """R10.6: R_i = floor(R × m_i / Σm); the leftover minor units one each to the largest m_i
    first, ties instrument id ascending; positions handled in instrument id order."""
    lg = ledger(MARKET + """
        {"type":"instrument","instrument":"A-PERP","underlying":"BTC","qty_decimals":4,"initial_margin":"0.1","maintenance_margin":"0.05","liquidation_fee":"0.01"}
        {"type":"instrument","instrument":"B-PERP","underlying":"BTC","qty_decimals":4,"initial_margin":"0.1","maintenance_margin":"0.05","liquidation_fee":"0.01"}
        {"type":"instrument","instrument":"C-PERP","underlying":"BTC","qty_decimals":4,"initial_margin":"0.1","maintenance_margin":"0.05","liquidation_fee":"0.01"}
        {"type":"deposit","account":"@insurance","asset":"USD","amount":"958.999999"}
        {"type":"deposit","account":"alice","asset":"USD","amount":"1440"}
        {"type":"deposit","account":"cp","asset":"USD","amount":"10000"}
        {"type":"trade","instrument":"C-PERP","buyer":"alice","seller":"cp","qty":"0.04","price":"60000","buyer_fee":"0","seller_fee":"0"}
        {"type":"trade","instrument":"B-PERP","buyer":"alice","seller":"cp","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"0"}
        {"type":"trade","instrument":"A-PERP","buyer":"alice","seller":"cp","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"0"}
    """)
    decisions = lg.feed("""{"type":"price","asset":"BTC","price":"50000"}""")
    # alice: 1440 − 0.24 × 10000 = −960; D 960, F 958.999999, R 1.000001 = 1000001 minor.
    # m: A 250, B 250, C 100 (Σ 600):
    #   R_A = floor(1000001 × 250 / 600) = floor(416667.08) = 416667; R_B the same;
    #   R_C = floor(1000001 × 100 / 600) = floor(166666.83) = 166666; leftover 1 → A (ties B
    #   at 250, A-PERP < B-PERP). (By largest fraction it would have gone to C.)
    expect_decisions(decisions, """
        bankruptcy account=alice deficit=960 cover=958.999999 remainder=1.000001
        deleverage account=alice counterparty=cp instrument=A-PERP qty=0.1  share=0.416668 paid=0.416668
        deleverage account=alice counterparty=cp instrument=B-PERP qty=0.1  share=0.416667 paid=0.416667
        deleverage account=alice counterparty=cp instrument=C-PERP qty=0.04 share=0.166666 paid=0.166666
    """)
    # cp: 10000 + 14400 − 12000 − 1.000001
    expect_holdings(lg, """
        account     USD           A-PERP  B-PERP  C-PERP
        alice       0             0       0       0
        cp          12398.999999  0       0       0
        @insurance  0             0       0       0
    """)


def test_insurance_holding_part_of_the_opposite_side_takes_the_last_step_and_pays_the_rest():
    """R10.6: the rest of the position moves at mark to @insurance, which pays what is left of
    R_i even when its cash goes negative (rank 0)."""
    lg = ledger(MARKET + """
        {"type":"deposit","account":"alice","asset":"USD","amount":"1800.000001"}
        {"type":"deposit","account":"bob","asset":"USD","amount":"1000"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"bob","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"0"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"@insurance","qty":"0.2","price":"60000","buyer_fee":"0","seller_fee":"0"}
        {"type":"withdrawal","account":"@insurance","asset":"USD","amount":"12000"}
    """)
    # The withdrawal leaves @insurance at equity −12000 < IM 1200: no margin check (R11.2).
    decisions = lg.feed("""{"type":"price","asset":"BTC","price":"50000"}""")
    # alice: 1800.000001 − 3000 = −1199.999999; F = 0: C = 0, R = 1199.999999.
    # bob (0.1 of 0.3): floor(1199.999999 / 3) = floor(399.999999667) = 399.999999;
    # @insurance takes the last 0.2 and pays 1199.999999 − 399.999999 = 800.
    expect_decisions(decisions, """
        bankruptcy account=alice deficit=1199.999999 insurance_fund=0 cover=0 remainder=1199.999999 residual=0
        deleverage account=alice counterparty=bob        qty=0.1 share=1199.999999 paid=399.999999 rank=1
        deleverage account=alice counterparty=@insurance qty=0.2 share=1199.999999 paid=800        rank=0
    """)
    # bob: 1000 + 6000 − 5000 − 399.999999; @insurance: 12000 − 12000 − 10000 − 800
    expect_holdings(lg, """
        account     USD          BTC-PERP
        alice       0            0
        bob         1600.000001  0
        @insurance  -10800       0
    """)
    expect_valuations(lg, """
        account     equity  liquidatable
        @insurance  -10800  false
    """)


def test_insurance_fund_with_negative_cash_covers_nothing():
    """R10.4: C = min(D, max(0, F)); F is the cash of @insurance, here negative."""
    lg = ledger(MARKET + """
        {"type":"deposit","account":"alice","asset":"USD","amount":"600"}
        {"type":"deposit","account":"bob","asset":"USD","amount":"10000"}
        {"type":"deposit","account":"carol","asset":"USD","amount":"10000"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"@insurance","seller":"bob","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"0"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"carol","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"0"}
    """)
    decisions = lg.feed("""{"type":"price","asset":"BTC","price":"50000"}""")
    # alice: 600 − 1000 = −400. F = −6000: C = 0, R = 400. bob and carol (short 0.1 each,
    # equity 11000, leverage 5000 / 11000 both): tie, by id; bob's 0.1 covers all of alice's.
    expect_decisions(decisions, """
        bankruptcy account=alice deficit=400 insurance_fund=-6000 cover=0 remainder=400
        deleverage account=alice counterparty=bob qty=0.1 share=400 paid=400 rank=1 counterparty_equity=11000
    """)
    expect_holdings(lg, """
        account     USD     BTC-PERP
        alice       0       0
        bob         10600   0
        carol       16000   -0.1
        @insurance  -6000   0.1
    """)


def test_counterparty_made_liquidatable_by_its_payment_is_handled_later_in_the_pass():
    """R10.1, R10.6: a counterparty whose id is after the bankrupt account's is handled in
    the same visit; one whose id is before it, in the next visit."""
    lg = ledger(MARKET + XBT + """
        {"type":"deposit","account":"m","asset":"USD","amount":"1200"}
        {"type":"deposit","account":"b","asset":"USD","amount":"3000"}
        {"type":"deposit","account":"x","asset":"USD","amount":"3000"}
        {"type":"deposit","account":"y","asset":"USD","amount":"1100"}
        {"type":"deposit","account":"s","asset":"USD","amount":"10000"}
        {"type":"deposit","account":"w","asset":"USD","amount":"100000"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"m","seller":"b","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"0"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"m","seller":"x","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"0"}
        {"type":"trade","instrument":"XBT-PERP","buyer":"b","seller":"w","qty":"0.3","price":"60000","buyer_fee":"0","seller_fee":"0"}
        {"type":"trade","instrument":"XBT-PERP","buyer":"x","seller":"w","qty":"0.3","price":"60000","buyer_fee":"0","seller_fee":"0"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"y","seller":"s","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"0"}
    """)
    decisions = lg.feed("""{"type":"price","asset":"BTC","price":"50000"}""")
    # At 50000:
    #   b, x: cash 3000 + 6000 − 18000 = −9000, positions −5000 + 15000: equity 1000 = MM
    #         250 + 750, healthy; leverage 20000 / 1000 = 20 each.
    #   m: 1200 − 2000 = −800, bankrupt, F = 0: R = 800; counterparties b, x (tie: by id),
    #      then s (11000 equity, leverage 0.45): b and x close 0.1 each and pay 400 each.
    #   b, x then: equity 600 < MM 750 (0.3 XBT-PERP), solvent. XBT unit 5, x 0.05, y 0.5,
    #      Q 3000, A = P = 600: k = 2000 (100 + 500 = 600); k = 1999: 99.95 + 500.5 > 600.
    #   y: 1100 − 1000 = 100 < MM 250: k = 889 (44.45 + 111 × 0.5 = 99.95 <= 100;
    #      k = 888: 44.4 + 56 = 100.4 > 100).
    # Visit 1: b (healthy), m, s, w, x (after m: same visit), y. Visit 2: b.
    expect_decisions(decisions, """
        bankruptcy account=m equity=-800 deficit=800 insurance_fund=0 cover=0 remainder=800
        deleverage account=m counterparty=b instrument=BTC-PERP qty=0.1 share=800 paid=400 rank=1 counterparty_equity=1000 counterparty_notional=20000
        deleverage account=m counterparty=x instrument=BTC-PERP qty=0.1 share=800 paid=400 rank=2 counterparty_equity=1000 counterparty_notional=20000
        liquidation rule=R10.3 account=x instrument=XBT-PERP qty=0.2 k=2000 penalty=100 equity_before=600 equity_after=500 initial_margin_after=500
        liquidation rule=R10.3 account=y instrument=BTC-PERP qty=0.0889 k=889 penalty=44.45 equity_before=100 equity_after=55.55 initial_margin_after=55.5
        liquidation rule=R10.3 account=b instrument=XBT-PERP qty=0.2 k=2000 penalty=100 equity_before=600 equity_after=500 initial_margin_after=500
    """)
    # b, x: −9000 − 5000 − 400 + 10000 − 100 = −4500; y: −4900 + 4445 − 44.45
    # @insurance: −4445 + 44.45 − 2 × (10000 − 100)
    expect_holdings(lg, """
        account     USD        BTC-PERP  XBT-PERP
        m           0          0         0
        b           -4500      0         0.1
        x           -4500      0         0.1
        y           -499.45    0.0111    0
        s           16000      -0.1      0
        w           136000     0         -0.6
        @insurance  -24200.55  0.0889    0.4
    """)
