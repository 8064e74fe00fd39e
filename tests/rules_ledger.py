"""Scenario tables for the rules tests (tests/test_rules_*.py).

A scenario is written in the ledger's own notation: input lines in the JSON Lines of
interfaces §1, fed one by one through ``clearing.engine.process``; then tables of what is
expected, in the rulebook's own terms:

    holdings     account  USD  BTC  BTC-PERP        balances and positions ("0" = none)
    valuations   account  equity IM MM free ...     R6 figures in settlement units
    decisions    type key=value ...                 one row per decision, in log order

Input lines may leave out ``id`` (``e<seq>``), ``ts`` (one fixed instant; R3.2 allows equal
``ts``) and, on an asset, ``settlement`` (recorded as false, interfaces §1). Decimals must
already be in R1.1 normal form: there is no parser here (events/parse.py is not used).

Every ``Ledger`` made during a test is audited when the test ends (``audit_every_ledger``):
R12.1 to R12.4 on the live state, and the fold of the recorded events (projections.state.Folder)
must give exactly the live state. R12.1 to R12.4 are also checked after every input.
"""

from __future__ import annotations

import json
from fractions import Fraction
from math import ceil

import msgspec
import pytest

from clearing.engine import process
from events import schema as s
from events.numbers import fmt_units
from projections.state import EXTERNAL, Folder, LedgerState, is_system
from projections.valuation import is_liquidatable, value

DEFAULT_TS = "2026-03-01T00:00:00Z"

# The market most scenarios start from. S = 6. BTC has a mark; ETH is listed without one.
#   BTC-PERP: unit 0.0001 BTC; IMF 0.1, MMF 0.05, LF 0.01
#   ETH-PERP: unit 0.001 ETH; IMF 0.15, MMF 0.075, LF 0.015
MARKET = """
{"type":"asset","asset":"USD","decimals":6,"price_decimals":0,"haircut":"0","settlement":true}
{"type":"asset","asset":"BTC","decimals":8,"price_decimals":2,"haircut":"0.1"}
{"type":"asset","asset":"ETH","decimals":8,"price_decimals":2,"haircut":"0.2"}
{"type":"instrument","instrument":"BTC-PERP","underlying":"BTC","qty_decimals":4,"initial_margin":"0.1","maintenance_margin":"0.05","liquidation_fee":"0.01"}
{"type":"instrument","instrument":"ETH-PERP","underlying":"ETH","qty_decimals":3,"initial_margin":"0.15","maintenance_margin":"0.075","liquidation_fee":"0.015"}
{"type":"price","asset":"BTC","price":"60000"}
"""

_LIVE: list["Ledger"] = []


class Ledger:
    """A state fed through the engine, with every recorded event kept in log order."""

    def __init__(self) -> None:
        self.state = LedgerState()
        self.events: list[s.Event] = []
        _LIVE.append(self)

    def feed(self, lines: str) -> list[s.Decision]:
        """Process the input lines in order; the decisions they caused, in log order."""
        decisions: list[s.Decision] = []
        for raw in lines.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            fields = json.loads(line)
            fields.setdefault("id", f"e{self.state.seq + 1}")
            fields.setdefault("ts", DEFAULT_TS)
            if fields.get("type") == "asset":
                fields.setdefault("settlement", False)
            inp = msgspec.convert(fields, s.Input)
            inp = msgspec.structs.replace(inp, seq=self.state.seq + 1)
            caused = process(self.state, inp)
            self.events.append(inp)
            self.events.extend(caused)
            assert [d.seq for d in caused] == list(range(inp.seq + 1, inp.seq + 1 + len(caused)))
            check_invariants(self.state, after=line)
            decisions.extend(caused)
        return decisions

    def audit(self) -> None:
        check_invariants(self.state, after="the scenario")
        folded = Folder(LedgerState())
        folded.feed_all(self.events)
        replayed = folded.finish()
        assert replayed.seq == self.state.seq == len(self.events)
        assert replayed.accounts == self.state.accounts, "fold of the log != engine state"
        assert replayed.marks == self.state.marks
        assert _index(replayed.holders) == _index(self.state.holders)
        assert _index(replayed.collateral_holders) == _index(self.state.collateral_holders)

    # --- reading the state in settlement units -----------------------------------------------
    def money(self, minor: int) -> str:
        return fmt_units(minor, self.state.scale)

    def holding(self, account: str, code: str) -> str:
        state = self.state
        acct = state.accounts[account]
        if code == state.settlement:
            return self.money(acct.cash)
        if code in state.instruments:
            return fmt_units(acct.positions.get(code, 0), state.instruments[code].qty_decimals)
        return fmt_units(acct.balances.get(code, 0), state.assets[code].decimals)


def ledger(lines: str) -> Ledger:
    lg = Ledger()
    lg.feed(lines)
    return lg


def _index(index: dict[str, set[str]]) -> dict[str, set[str]]:
    return {key: owners for key, owners in index.items() if owners}


@pytest.fixture(autouse=True)
def audit_every_ledger():
    """R12.1–R12.4 and fold == live state, at the end of every scenario (import this fixture
    into a test module to switch it on there)."""
    _LIVE.clear()
    yield
    ledgers = list(_LIVE)
    _LIVE.clear()
    for lg in ledgers:
        lg.audit()


# --- R12 ------------------------------------------------------------------------------------
def check_invariants(state: LedgerState, after: str) -> None:
    for asset in state.assets:
        if asset == state.settlement:
            total = sum(a.cash for a in state.accounts.values())
        else:
            total = sum(a.balances.get(asset, 0) for a in state.accounts.values())
        assert total == 0, f"R12.1: {asset} sums to {total} after {after}"
    for instrument in state.instruments:
        total = sum(a.positions.get(instrument, 0) for a in state.accounts.values())
        assert total == 0, f"R12.2: {instrument} sums to {total} after {after}"
    for acct in state.accounts.values():
        if acct.id != EXTERNAL:
            negative = {k: v for k, v in acct.balances.items() if v < 0}
            assert not negative, f"R12.3: {acct.id} holds {negative} after {after}"
        if not is_system(acct.id):
            v = value(state, acct)
            assert not is_liquidatable(state, acct), (
                f"R12.4: {acct.id} liquidatable (equity {v.equity} < MM {v.maintenance_margin})"
                f" after {after}"
            )


# --- tables ---------------------------------------------------------------------------------
def _rows(table: str) -> list[list[str]]:
    rows = []
    for raw in table.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            rows.append(line.split())
    return rows


def expect_holdings(lg: Ledger, table: str) -> None:
    """Header ``account CODE...`` (assets and instruments), one row per account. Every
    non-zero balance and position of a listed account must appear in a column."""
    header, *rows = _rows(table)
    assert header[0] == "account"
    codes = header[1:]
    problems = []
    for row in rows:
        account, cells = row[0], row[1:]
        assert len(cells) == len(codes), f"row {row} does not match header {header}"
        if account not in lg.state.accounts:
            problems.append(f"{account}: does not exist")
            continue
        for code, expected in zip(codes, cells):
            actual = lg.holding(account, code)
            if actual != expected:
                problems.append(f"{account} {code}: expected {expected}, ledger {actual}")
        acct = lg.state.accounts[account]
        held = set(acct.balances) | set(acct.positions)
        if acct.cash:
            held.add(lg.state.settlement)
        for code in sorted(held - set(codes)):
            problems.append(f"{account} also holds {code} {lg.holding(account, code)}")
    assert not problems, "\n".join(problems)


_VALUATION_COLUMNS = {
    "cash": lambda v: v.cash,
    "collateral": lambda v: v.collateral,
    "position_value": lambda v: v.position_value,
    "equity": lambda v: v.equity,
    "IM": lambda v: v.initial_margin,
    "MM": lambda v: v.maintenance_margin,
    "free": lambda v: v.free_collateral,
}


def expect_valuations(lg: Ledger, table: str) -> None:
    """Header ``account`` then any of cash collateral position_value equity IM MM free
    liquidatable (R6.1–R6.7), in settlement units."""
    header, *rows = _rows(table)
    assert header[0] == "account"
    problems = []
    for row in rows:
        assert len(row) == len(header), f"row {row} does not match header {header}"
        acct = lg.state.accounts[row[0]]
        v = value(lg.state, acct)
        for column, expected in zip(header[1:], row[1:]):
            if column == "liquidatable":
                actual = str(is_liquidatable(lg.state, acct)).lower()
            else:
                actual = lg.money(_VALUATION_COLUMNS[column](v))
            if actual != expected:
                problems.append(f"{row[0]} {column}: expected {expected}, ledger {actual}")
    assert not problems, "\n".join(problems)


def _render(field: str, value: object) -> str:
    if isinstance(value, list):
        if field == "seized":  # R10.4: asset:amount@price=value
            return ",".join(f"{x['asset']}:{x['amount']}@{x['price']}={x['value']}" for x in value)
        if field == "payments":  # R9.2: account:signed amount
            return ",".join(f"{x['account']}:{x['amount']}" for x in value)
    return str(value)


def _lookup(builtins: dict, key: str) -> str:
    if "." in key:  # figures.equity_after
        outer, inner = key.split(".", 1)
        return str(builtins[outer].get(inner, "<missing>"))
    return _render(key, builtins.get(key, "<missing>"))


def expect_decisions(decisions: list[s.Decision], table: str) -> None:
    """One row per decision, in log order: ``type key=value ...`` (a dotted key looks inside a
    dict field, ``figures.equity_after=1000``; ``seized`` and ``payments`` are compared in the
    compact forms ``asset:amount@price=value`` and ``account:amount``, comma-separated)."""
    rows = _rows(table)
    actual = [msgspec.to_builtins(d) for d in decisions]
    skipped = ("type", "seq", "ts", "ref")

    def show(a: dict) -> str:
        pairs = " ".join(f"{k}={_render(k, v)}" for k, v in a.items() if k not in skipped)
        return f"  {a['type']} {pairs}"

    shown = "\n".join(show(a) for a in actual)
    assert len(rows) == len(actual), f"expected {len(rows)} decisions, got {len(actual)}:\n{shown}"
    problems = []
    for index, (row, got) in enumerate(zip(rows, actual)):
        kind, *pairs = row
        if got["type"] != kind:
            problems.append(f"#{index}: expected {kind}, got {got['type']}")
            continue
        for pair in pairs:
            key, _, expected = pair.partition("=")
            found = _lookup(got, key)
            if found != expected:
                problems.append(f"#{index} {kind} {key}: expected {expected}, got {found}")
    assert not problems, "\n".join(problems) + "\nactual:\n" + shown


# --- R10.3 by brute force -------------------------------------------------------------------
def r10_3_condition(lg: Ledger, dec: s.Liquidation) -> tuple[list[bool], int, Fraction]:
    """For a ``liquidation`` decision of R10.3, the R10.3 condition for every k = 1..Q,
    computed from the decision's ``before`` figures and the listing with exact fractions
    (independent of clearing/liquidation.py), plus Q and x = unit × mark × LF in money."""
    state = lg.state
    info = state.instruments[dec.instrument]
    minor = Fraction(1, 10**state.scale)

    def up(v: Fraction) -> Fraction:  # R1.3: against the account
        return ceil(v / minor) * minor

    unit = Fraction(1, 10**info.qty_decimals)
    mark = Fraction(dec.price)
    imf, lf = Fraction(info.initial_margin), Fraction(info.liquidation_fee)
    q = abs(Fraction(dec.position_before))
    big_q = int(q / unit)
    equity = Fraction(dec.equity_before)
    im_this = up(q * mark * imf)
    a = equity - (Fraction(dec.initial_margin_before) - im_this)  # equity − IM of the others
    p = max(Fraction(0), equity)
    x, y = unit * mark * lf, unit * mark * imf
    holds = [min(up(k * x), p) + up((big_q - k) * y) <= a for k in range(1, big_q + 1)]
    return holds, big_q, x


def assert_smallest_k(lg: Ledger, dec: s.Liquidation) -> bool:
    """R10.3: the engine's k is the smallest k satisfying the condition (or Q when none does)
    and its penalty is min(ceil(k·x), max(0, equity)). Returns whether the condition was
    non-monotone in k (some k holds and k + 1 does not)."""
    assert dec.rule == "R10.3"
    holds, big_q, x = r10_3_condition(lg, dec)
    expected = next((k for k, ok in enumerate(holds, start=1) if ok), big_q)
    assert dec.k == expected, f"R10.3: engine closed k={dec.k}, smallest is {expected}"
    minor = Fraction(1, 10**lg.state.scale)
    uncapped = ceil(expected * x / minor) * minor
    penalty = min(uncapped, max(Fraction(0), Fraction(dec.equity_before)))
    assert Fraction(dec.penalty) == penalty and Fraction(dec.penalty_uncapped) == uncapped
    return any(holds[i] and not holds[i + 1] for i in range(len(holds) - 1))
