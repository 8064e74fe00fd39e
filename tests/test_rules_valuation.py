"""R6 valuation, in the rulebook's own terms (tables: tests/rules_ledger.py)."""

from __future__ import annotations

import pytest

from projections.state import Account
from projections.valuation import is_liquidatable, value
from tests.rules_ledger import (  # noqa: F401  (audit_every_ledger is an autouse fixture)
    MARKET,
    audit_every_ledger,
    expect_holdings,
    expect_valuations,
    ledger,
)


def test_collateral_value_is_floored_per_balance_and_an_asset_without_mark_counts_zero():
    """R6.2, R1.3, R5.2: floor(b × mark × (1 − haircut)); ETH has no mark yet."""
    lg = ledger(MARKET + """
        {"type":"price","asset":"BTC","price":"60000.01"}
        {"type":"deposit","account":"carol","asset":"BTC","amount":"0.12345678"}
        {"type":"deposit","account":"carol","asset":"ETH","amount":"2"}
        {"type":"deposit","account":"carol","asset":"USD","amount":"1"}
    """)
    # BTC: 0.12345678 × 60000.01 = 7407.4080345678; × 0.9 = 6666.66723111102 → floor 6666.667231
    # ETH: no mark → 0. equity = 1 + 6666.667231.
    expect_valuations(lg, """
        account  cash  collateral   position_value  equity       IM  MM  free         liquidatable
        carol    1     6666.667231  0               6667.667231  0   0   6667.667231  false
    """)
    lg.feed("""{"type":"price","asset":"ETH","price":"2500"}""")
    # ETH now counts: floor(2 × 2500 × (1 − 0.2)) = 4000.
    expect_valuations(lg, """
        account  collateral   equity
        carol    10666.667231 10667.667231
    """)


def test_margin_terms_are_rounded_up_per_instrument_before_summing():
    """R6.5, R1.3: each ceil(|q| × mark × fraction) on its own, then the sum."""
    lg = ledger(MARKET + """
        {"type":"price","asset":"BTC","price":"60000.01"}
        {"type":"price","asset":"ETH","price":"3000.01"}
        {"type":"deposit","account":"alice","asset":"USD","amount":"100"}
        {"type":"deposit","account":"bob","asset":"USD","amount":"100"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"bob","qty":"0.0001","price":"60000.01","buyer_fee":"0","seller_fee":"0"}
        {"type":"trade","instrument":"ETH-PERP","buyer":"alice","seller":"bob","qty":"0.001","price":"3000.01","buyer_fee":"0","seller_fee":"0"}
    """)
    # BTC-PERP: 0.0001 × 60000.01 = 6.000001   IM ceil(0.6000001) = 0.600001
    #                                          MM ceil(0.30000005) = 0.300001
    # ETH-PERP: 0.001 × 3000.01   = 3.00001    IM ceil(0.4500015) = 0.450002
    #                                          MM ceil(0.22500075) = 0.225001
    # IM = 1.050003 (rounding the sum instead: ceil(1.0500016) = 1.050002)
    # MM = 0.525002 (rounding the sum instead: ceil(0.5250008) = 0.525001)
    # alice cash = 100 − 6.000001 − 3.00001 = 90.999989, position value 9.000011
    expect_valuations(lg, """
        account  cash        position_value  equity  IM        MM        free       liquidatable
        alice    90.999989   9.000011        100     1.050003  0.525002  98.949997  false
        bob      109.000011  -9.000011       100     1.050003  0.525002  98.949997  false
    """)


def test_equity_adds_negative_cash_collateral_and_position_value():
    """R6.1–R6.6: cash may be negative; equity = cash + collateral + position value."""
    lg = ledger(MARKET + """
        {"type":"deposit","account":"alice","asset":"USD","amount":"10000"}
        {"type":"deposit","account":"alice","asset":"BTC","amount":"0.1"}
        {"type":"deposit","account":"bob","asset":"USD","amount":"100000"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"bob","qty":"0.5","price":"60000","buyer_fee":"0","seller_fee":"0"}
    """)
    # alice cash = 10000 − 0.5 × 60000 = −20000; collateral = 0.1 × 60000 × 0.9 = 5400;
    # position value 30000; equity 15400; IM 3000; MM 1500; free 12400.
    expect_holdings(lg, """
        account    USD      BTC   BTC-PERP
        alice      -20000   0.1   0.5
        bob        130000   0     -0.5
        @external  -110000  -0.1  0
    """)
    expect_valuations(lg, """
        account     cash     collateral  position_value  equity  IM    MM    free   liquidatable
        alice       -20000   5400        30000           15400   3000  1500  12400  false
        bob         130000   0           -30000          100000  3000  1500  97000  false
        @external   -110000  0           0               -110000 0     0     -110000 false
    """)


def test_account_without_positions_and_negative_equity_is_liquidatable():
    """R6.7: with no positions MM is 0, so any negative equity is below it; zero is not."""
    lg = ledger(MARKET)
    state = lg.state
    assert is_liquidatable(state, Account("zed", cash=-1))  # equity −0.000001 < MM 0
    assert not is_liquidatable(state, Account("zed", cash=0))  # 0 < 0 is false
    v = value(state, Account("zed", cash=-1, balances={"ETH": 10**8}))  # ETH has no mark
    assert (v.equity, v.maintenance_margin) == (-1, 0)


@pytest.mark.parametrize("system", ["@insurance", "@fees", "@external"])
def test_system_accounts_are_never_liquidatable(system):
    """R6.7, R2.2: even with negative equity and positions, a system account is not."""
    lg = ledger(MARKET)
    acct = Account(system, cash=-10**12, positions={"BTC-PERP": 10_000})
    v = value(lg.state, acct)
    assert v.equity < v.maintenance_margin  # −1000000 + 60000 < 3000
    assert not is_liquidatable(lg.state, acct)
