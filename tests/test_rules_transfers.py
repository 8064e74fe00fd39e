"""R7 deposits, withdrawals and transfers; R11.2; R2.3; R3.5 (tables: tests/rules_ledger.py)."""

from __future__ import annotations

import copy

from tests.rules_ledger import (  # noqa: F401  (audit_every_ledger is an autouse fixture)
    MARKET,
    audit_every_ledger,
    expect_decisions,
    expect_holdings,
    expect_valuations,
    ledger,
)

# alice: cash 1000 − 0.2 × 60000 = −11000, 0.1 BTC worth 0.1 × 60000 × 0.9 = 5400, long 0.2
# worth 12000: equity 6400, IM 1200, MM 600.
ALICE_LONG = MARKET + """
    {"type":"deposit","account":"alice","asset":"USD","amount":"1000"}
    {"type":"deposit","account":"alice","asset":"BTC","amount":"0.1"}
    {"type":"deposit","account":"bob","asset":"USD","amount":"10000"}
    {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"bob","qty":"0.2","price":"60000","buyer_fee":"0","seller_fee":"0"}
"""


def test_withdrawal_rejections_in_first_match_order():
    """R7.2: unknown_account, then insufficient_balance, then insufficient_margin."""
    lg = ledger(ALICE_LONG)
    decisions = lg.feed("""
        {"type":"withdrawal","account":"carol","asset":"USD","amount":"1"}
        {"type":"withdrawal","account":"alice","asset":"USD","amount":"1"}
        {"type":"withdrawal","account":"alice","asset":"BTC","amount":"0.2"}
        {"type":"withdrawal","account":"alice","asset":"BTC","amount":"0.1"}
        {"type":"withdrawal","account":"alice","asset":"BTC","amount":"0.09"}
    """)
    # carol does not exist (R2.3).
    # 1 USD > cash −11000.
    # 0.2 BTC > 0.1 held; it would also breach margin, but the balance check comes first.
    # 0.1 BTC: equity after = 6400 − 5400 = 1000 < IM 1200.
    # 0.09 BTC: equity after = 6400 − (5400 − 0.01 × 60000 × 0.9) = 6400 − 4860 = 1540 >= 1200.
    expect_decisions(decisions, """
        rejected reason=unknown_account      account=carol
        rejected reason=insufficient_balance account=alice rule=R7.2 figures.balance=-11000 figures.amount=1
        rejected reason=insufficient_balance account=alice rule=R7.2 figures.balance=0.1 figures.amount=0.2
        rejected reason=insufficient_margin  account=alice rule=R7.2 figures.equity_after=1000 figures.initial_margin=1200
    """)
    expect_holdings(lg, """
        account    USD     BTC    BTC-PERP
        alice      -11000  0.01   0.2
        @external  -11000  -0.01  0
    """)
    expect_valuations(lg, """
        account  collateral  equity  IM    MM   liquidatable
        alice    540         1540    1200  600  false
    """)


def test_withdrawing_haircut_collateral_reduces_equity_by_its_floored_value():
    """R7.2, R6.2: the margin check values what is left at floor(b × mark × (1 − h))."""
    lg = ledger(MARKET + """
        {"type":"price","asset":"BTC","price":"60000.01"}
        {"type":"deposit","account":"alice","asset":"BTC","amount":"1"}
        {"type":"deposit","account":"bob","asset":"USD","amount":"100000"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"bob","qty":"1","price":"60000.01","buyer_fee":"0","seller_fee":"0"}
    """)
    # alice: cash −60000.01, position +60000.01, 1 BTC worth floor(54000.009) = 54000.009;
    # equity 54000.009, IM ceil(6000.001) = 6000.001. Equity after a withdrawal is the
    # floored value of what is left:
    #   leave 0.11111111: 0.11111111 × 54000.009 = 6000.00093999999 → 6000.000939 < 6000.001
    #   leave 0.11111112: 0.11111112 × 54000.009 = 6000.00148000008 → 6000.00148 >= 6000.001
    decisions = lg.feed("""
        {"type":"withdrawal","account":"alice","asset":"BTC","amount":"0.88888889"}
        {"type":"withdrawal","account":"alice","asset":"BTC","amount":"0.88888888"}
    """)
    expect_decisions(decisions, """
        rejected reason=insufficient_margin account=alice figures.equity_after=6000.000939 figures.initial_margin=6000.001
    """)
    expect_valuations(lg, """
        account  cash       collateral  position_value  equity      IM        free
        alice    -60000.01  6000.00148  60000.01        6000.00148  6000.001  0.00048
    """)


def test_system_accounts_withdraw_without_margin_check():
    """R11.2: @insurance and @fees skip the margin check of R7.2, not the balance check."""
    lg = ledger(MARKET + """
        {"type":"deposit","account":"@insurance","asset":"BTC","amount":"1"}
        {"type":"deposit","account":"alice","asset":"BTC","amount":"1"}
        {"type":"deposit","account":"bob","asset":"USD","amount":"100000"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"@insurance","seller":"bob","qty":"1","price":"60000","buyer_fee":"0","seller_fee":"0"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"bob","qty":"1","price":"60000","buyer_fee":"0","seller_fee":"5"}
    """)
    # @insurance and alice alike: cash −60000, 1 BTC worth 54000, long 1 worth 60000:
    # equity 54000, IM 6000. Without the BTC, equity would be −60000 + 60000 = 0 < 6000.
    decisions = lg.feed("""
        {"type":"withdrawal","account":"alice","asset":"BTC","amount":"1"}
        {"type":"withdrawal","account":"@insurance","asset":"BTC","amount":"1"}
        {"type":"withdrawal","account":"@insurance","asset":"USD","amount":"1"}
        {"type":"withdrawal","account":"@fees","asset":"USD","amount":"5.000001"}
        {"type":"withdrawal","account":"@fees","asset":"USD","amount":"5"}
    """)
    expect_decisions(decisions, """
        rejected reason=insufficient_margin  account=alice      figures.equity_after=0 figures.initial_margin=6000
        rejected reason=insufficient_balance account=@insurance figures.balance=-60000 figures.amount=1
        rejected reason=insufficient_balance account=@fees      figures.balance=5 figures.amount=5.000001
    """)
    expect_holdings(lg, """
        account     USD     BTC  BTC-PERP
        alice       -60000  1    1
        @insurance  -60000  0    1
        @fees       0       0    0
        bob         219995  0    -2
    """)
    expect_valuations(lg, """
        account     equity  IM    liquidatable
        @insurance  0       6000  false
    """)


def test_transfer_rejections_in_first_match_order_and_an_accepted_transfer_creates_the_receiver():
    """R7.3 (as a withdrawal from `from` would be, R7.2), R2.3."""
    lg = ledger(ALICE_LONG)
    decisions = lg.feed("""
        {"type":"transfer","from":"carol","to":"alice","asset":"USD","amount":"1"}
        {"type":"transfer","from":"alice","to":"bob","asset":"USD","amount":"1"}
        {"type":"transfer","from":"alice","to":"alice/iso","asset":"BTC","amount":"0.1"}
        {"type":"transfer","from":"alice","to":"alice/iso","asset":"BTC","amount":"0.09"}
        {"type":"transfer","from":"bob","to":"alice/iso","asset":"USD","amount":"500"}
    """)
    # as in the withdrawal table: −11000 cash; 0.1 BTC would leave equity 1000 < IM 1200;
    # 0.09 BTC leaves 1540 >= 1200. bob (cash 22000, short 0.2) keeps 21500 >= IM 1200.
    expect_decisions(decisions, """
        rejected reason=unknown_account      account=carol rule=R2.3
        rejected reason=insufficient_balance account=alice rule=R7.3 figures.balance=-11000
        rejected reason=insufficient_margin  account=alice rule=R7.3 figures.equity_after=1000 figures.initial_margin=1200
    """)
    expect_holdings(lg, """
        account    USD     BTC   BTC-PERP
        alice      -11000  0.01  0.2
        alice/iso  500     0.09  0
        bob        21500   0     -0.2
    """)
    expect_valuations(lg, """
        account    equity  IM    free  liquidatable
        alice      1540    1200  340   false
        alice/iso  5360    0     5360  false
    """)


def test_rejected_transfer_creates_nothing_and_the_receiver_stays_unknown():
    """R2.3: an account exists from its first accepted incoming transfer, not a rejected one."""
    lg = ledger(ALICE_LONG)
    decisions = lg.feed("""
        {"type":"transfer","from":"alice","to":"dave","asset":"BTC","amount":"0.1"}
        {"type":"withdrawal","account":"dave","asset":"BTC","amount":"0.1"}
        {"type":"transfer","from":"dave","to":"alice","asset":"BTC","amount":"0.1"}
    """)
    expect_decisions(decisions, """
        rejected reason=insufficient_margin account=alice
        rejected reason=unknown_account     account=dave
        rejected reason=unknown_account     account=dave
    """)
    assert "dave" not in lg.state.accounts


def test_rejected_input_changes_nothing_but_is_recorded_with_its_decision():
    """R3.5, R3.6: the input and one `rejected` are recorded; no balance or position moves."""
    lg = ledger(ALICE_LONG)
    before = copy.deepcopy(lg.state.accounts)
    seq = lg.state.seq
    lines = [
        """{"type":"withdrawal","account":"alice","asset":"BTC","amount":"0.1"}""",
        """{"type":"transfer","from":"alice","to":"erin","asset":"USD","amount":"5"}""",
        """{"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"bob","qty":"1","price":"60000","buyer_fee":"0","seller_fee":"0"}""",
        """{"type":"trade","instrument":"ETH-PERP","buyer":"alice","seller":"bob","qty":"1","price":"3000","buyer_fee":"0","seller_fee":"0"}""",
    ]
    for line in lines:
        decisions = lg.feed(line)
        assert len(decisions) == 1 and type(decisions[0]).__name__ == "Rejected"
        assert lg.state.accounts == before
    assert lg.state.seq == seq + 2 * len(lines)
    assert [type(e).__name__ for e in lg.events[seq:]] == ["Withdrawal", "Rejected",
                                                            "Transfer", "Rejected",
                                                            "Trade", "Rejected",
                                                            "Trade", "Rejected"]


def test_deposit_creates_the_account_and_is_never_rejected():
    """R7.1: a deposit moves the amount from @external, creating the account; to @insurance
    it capitalises the fund."""
    lg = ledger(MARKET)
    decisions = lg.feed("""
        {"type":"deposit","account":"frank","asset":"ETH","amount":"0.00000001"}
        {"type":"deposit","account":"@insurance","asset":"USD","amount":"250.5"}
        {"type":"deposit","account":"@fees","asset":"BTC","amount":"2"}
    """)
    assert decisions == []
    expect_holdings(lg, """
        account     USD     BTC  ETH
        frank       0       0    0.00000001
        @insurance  250.5   0    0
        @fees       0       2    0
        @external   -250.5  -2   -0.00000001
    """)
