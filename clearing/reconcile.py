"""Statements and reconciliation (interfaces §3, §3.3).

A statement is CSV with the header ``account,kind,code,amount``: ``kind`` is ``balance``
(``code`` an asset) or ``position`` (``code`` an instrument), ``amount`` an R1.1 decimal.

* ``clearing statement --at T [--account A] -o FILE.csv`` writes the ledger's own statement at
  T: one line per non-zero balance and per non-zero position of every account (system accounts
  included), rows in byte order of (account, kind, code), ``\\n`` line ends. An account that
  exists but holds nothing gets one ``balance`` line of 0 in the settlement asset, so that every
  account of the ledger is named and a reconciliation at another time compares it too.
* ``clearing reconcile STATEMENT.csv [--at T] [--json]`` compares an external statement with
  the ledger at T (default: the head). For every account named in the statement, every balance
  and position that either side holds is compared, a missing line counting as 0; an account
  the ledger does not have at T is compared against 0. A difference is a *break*
  (``difference`` = ledger − statement); any break exits 1.

The statement is parsed strictly, as inputs are (R3.3): a malformed line is reported as
``STATEMENT:LINE: error[CODE]: message`` (LINE 1-based, the header being line 1) and nothing is
compared (exit 2). Empty lines are ignored, as in input files (interfaces §1).

Amounts are integer grid units throughout (R1.1, R1.4: a statement amount off its asset's or
instrument's grid is malformed); binary floating point is never used.
"""

from __future__ import annotations

import csv
import re
import sys
from typing import NamedTuple

import click

from events.numbers import fmt_units, is_decimal, normalize, to_units
from events.parse import MAX_INTEGER_DIGITS, Malformed, show_value
from events.store import StoreError
from events.timestamps import format_ts, parse_ts
from projections.state import Account, LedgerState

from clearing import app
from clearing.cli import _emit_json, _read_input, json_option, store_option

HEADER = "account,kind,code,amount"
BALANCE, POSITION = "balance", "position"
_BOM = b"\xef\xbb\xbf"
# R2.1 / R2.2: an account id, or one of the three system accounts (as events.schema.AccountId).
_ACCOUNT_RE = re.compile(r"^([A-Za-z0-9._:/-]{1,64}|@insurance|@fees|@external)\Z")

Key = tuple[str, str]  # (kind, code)


class StatementLine(NamedTuple):
    account: str
    kind: str
    code: str
    units: int  # the amount in grid units of the code (see ``scale_of``)


class Break(NamedTuple):
    account: str
    kind: str
    code: str
    statement: str
    ledger: str
    difference: str  # ledger - statement

    def as_json(self) -> dict[str, str]:  # interfaces §3.3, keys in this order
        return {
            "account": self.account,
            "kind": self.kind,
            "code": self.code,
            "statement": self.statement,
            "ledger": self.ledger,
            "difference": self.difference,
        }


class Reconciliation(NamedTuple):
    at: str | None
    seq: int
    accounts: int  # accounts named in the statement
    missing: frozenset[str]  # of those, the ones the ledger does not have at ``at``
    lines: int  # statement lines compared
    breaks: list[Break]

    def as_json(self) -> dict:
        return {"at": self.at, "seq": self.seq, "breaks": [b.as_json() for b in self.breaks]}


# --- the ledger's side ------------------------------------------------------------------------
def scale_of(state: LedgerState, kind: str, code: str) -> int:
    """Decimal places of an amount of ``code``: the asset's ``decimals`` for a balance (the
    settlement asset's is S), the instrument's ``qty_decimals`` for a position (R1.4)."""
    if kind == BALANCE:
        return state.assets[code].decimals
    return state.instruments[code].qty_decimals


def holdings(state: LedgerState, acct: Account) -> dict[Key, int]:
    """The account's non-zero balances and positions, in grid units."""
    held: dict[Key, int] = {}
    if acct.cash and state.settlement is not None:
        held[(BALANCE, state.settlement)] = acct.cash
    for asset, units in acct.balances.items():
        held[(BALANCE, asset)] = units
    for instrument, units in acct.positions.items():
        held[(POSITION, instrument)] = units
    return held


def statement_lines(state: LedgerState, account: str | None = None) -> list[StatementLine]:
    """The ledger's own statement at its state, in byte order of (account, kind, code)."""
    if account is None:
        ids = sorted(state.accounts)
    elif account in state.accounts:
        ids = [account]
    else:
        raise StoreError("unknown_account", f"account {account!r} does not exist {_when(state)}")
    out: list[StatementLine] = []
    for name in ids:
        held = holdings(state, state.accounts[name])
        if not held and state.settlement is not None:
            held = {(BALANCE, state.settlement): 0}  # named, holding nothing
        out.extend(StatementLine(name, k, c, held[(k, c)]) for k, c in sorted(held))
    return out


def statement_csv(state: LedgerState, lines: list[StatementLine]) -> bytes:
    """Deterministic bytes: the header, one row per line, ``\\n`` after each. Ids are plain
    ``A-Z a-z 0-9 . _ : / - @`` (R2.1), so no field ever needs CSV quoting."""
    rows = [HEADER]
    rows.extend(
        f"{ln.account},{ln.kind},{ln.code},{fmt_units(ln.units, scale_of(state, ln.kind, ln.code))}"
        for ln in lines
    )
    return ("\n".join(rows) + "\n").encode("ascii")


# --- the statement's side ---------------------------------------------------------------------
def parse_statement(
    data: bytes, state: LedgerState
) -> tuple[list[StatementLine], list[tuple[int, Malformed]]]:
    """The statement's lines, checked against the listings of ``state``; or every malformed
    line with its 1-based line number (then the lines are not to be used)."""
    if data.startswith(_BOM):
        return [], [(1, Malformed("bom", "the file starts with a byte-order mark"))]
    raw_lines = data.split(b"\n")
    if raw_lines[-1] == b"":  # the last line's end
        raw_lines.pop()
    if not raw_lines:
        return [], [(1, Malformed("bad_header", f"empty file: expected the header {HEADER}"))]
    header = raw_lines[0].removesuffix(b"\r")
    if header != HEADER.encode():
        shown = show_value(header.decode("utf-8", "replace"))
        return [], [(1, Malformed("bad_header", f"expected the header {HEADER}, got {shown}"))]
    lines: list[StatementLine] = []
    errors: list[tuple[int, Malformed]] = []
    seen: dict[tuple[str, str, str], int] = {}
    for number, raw in enumerate(raw_lines[1:], start=2):
        result = _parse_row(raw.removesuffix(b"\r"), state)
        if result is None:
            continue
        if isinstance(result, Malformed):
            errors.append((number, result))
            continue
        key = (result.account, result.kind, result.code)
        first = seen.setdefault(key, number)
        if first != number:
            repeated = f"{result.account},{result.kind},{result.code} is already on line {first}"
            errors.append((number, Malformed("duplicate_line", repeated)))
            continue
        lines.append(result)
    return lines, errors


def _parse_row(raw: bytes, state: LedgerState) -> StatementLine | Malformed | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return Malformed("not_utf8", f"not UTF-8 at byte {error.start} ({error.reason})")
    if text == "":
        return None  # an empty line
    try:
        fields = next(csv.reader([text], strict=True))
    except csv.Error as error:
        return Malformed("bad_csv", f"not a CSV row: {error}")
    if len(fields) != 4:
        return Malformed("bad_csv", f"expected 4 fields {HEADER}, got {len(fields)}")
    account, kind, code, amount = fields
    if _ACCOUNT_RE.match(account) is None:
        if account.startswith("@"):
            return Malformed(
                "system_account",
                f"`account`: {show_value(account)} is not a system account; only @insurance, "
                "@fees and @external exist (R2.2)",
            )
        return Malformed(
            "bad_account",
            f"`account`: expected an account id of 1 to 64 characters A-Z a-z 0-9 . _ : / - "
            f"(R2.1), got {show_value(account)}",
        )
    if kind == BALANCE:
        if code not in state.assets:
            listed = f"is not an asset listed {_when(state)}"
            return Malformed("unknown_asset", f"`code`: {show_value(code)} {listed}")
    elif kind == POSITION:
        if code not in state.instruments:
            listed = f"is not an instrument listed {_when(state)}"
            return Malformed("unknown_instrument", f"`code`: {show_value(code)} {listed}")
    else:
        wanted = "expected balance or position"
        return Malformed("bad_kind", f"`kind`: {wanted}, got {show_value(kind)}")
    normal = normalize(amount)
    if normal is None:
        if is_decimal(amount):
            return Malformed("bad_decimal", f"`amount`: negative zero {show_value(amount)} (R1.1)")
        wanted = "expected a decimal string -?(0|[1-9][0-9]*)(.[0-9]+)? (R1.1)"
        return Malformed("bad_decimal", f"`amount`: {wanted}, got {show_value(amount)}")
    if len(normal.partition(".")[0].lstrip("-")) > MAX_INTEGER_DIGITS:  # as inputs (R3.3)
        too_long = f"more than {MAX_INTEGER_DIGITS} digits before the point"
        return Malformed("out_of_range", f"`amount`: {too_long}")
    scale = scale_of(state, kind, code)
    units = to_units(normal, scale)
    if units is None:
        grid = f"{'decimals' if kind == BALANCE else 'qty_decimals'} of {code}, R1.4"
        off = f"is not a multiple of 10^-{scale} ({grid})"
        return Malformed("off_grid", f"`amount`: {show_value(amount)} {off}")
    return StatementLine(account, kind, code, units)


def _when(state: LedgerState) -> str:
    return f"at seq {state.seq}" + (f" ({format_ts(state.ts_us)})" if state.seq else "")


# --- the comparison ---------------------------------------------------------------------------
def reconcile(state: LedgerState, lines: list[StatementLine], at: str | None) -> Reconciliation:
    """§3.3: every balance and position either side holds, for every account the statement
    names; breaks in byte order of (account, kind, code)."""
    stated: dict[str, dict[Key, int]] = {}
    for ln in lines:
        stated.setdefault(ln.account, {})[(ln.kind, ln.code)] = ln.units
    breaks: list[Break] = []
    missing: set[str] = set()
    for account in sorted(stated):
        acct = state.accounts.get(account)
        if acct is None:
            missing.add(account)
        held = holdings(state, acct) if acct is not None else {}
        theirs = stated[account]
        for kind, code in sorted(theirs.keys() | held.keys()):
            x, y = theirs.get((kind, code), 0), held.get((kind, code), 0)
            if x != y:
                scale = scale_of(state, kind, code)
                breaks.append(Break(account, kind, code, fmt_units(x, scale), fmt_units(y, scale),
                                    fmt_units(y - x, scale)))
    return Reconciliation(at, state.seq, len(stated), frozenset(missing), len(lines), breaks)


def render(name: str, result: Reconciliation) -> str:
    """The readable report (standard error)."""
    where = f"the ledger at {result.at} (seq {result.seq})" if result.at else "the empty ledger"
    counted = f"{_count(result.lines, 'line')} of {_count(result.accounts, 'account')}"
    if not result.breaks:
        return f"{name} agrees with {where}: {counted}, no breaks"
    out = [f"{name} against {where}: {_count(len(result.breaks), 'break')} ({counted})"]
    head = ("account", "kind", "code", "statement", "ledger", "difference")
    rows = [head] + [tuple(b) for b in result.breaks]
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    for r in rows:
        line = "  ".join([r[i].ljust(widths[i]) for i in range(3)]  # ids left, amounts right
                         + [r[i].rjust(widths[i]) for i in range(3, 6)])
        if r is not head and r[0] in result.missing:
            line += "  (no such account in the ledger)"
        out.append(line.rstrip())
    return "\n".join(out)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


# --- the commands -----------------------------------------------------------------------------
def _state(store: str | None, at: str | None) -> tuple[LedgerState, str | None]:
    """The state at ``at`` (default: the head) and the time it is reported at: ``at`` in its
    normal form, or the head's ``ts`` (None for an empty ledger)."""
    ledger = app.open_ledger(app.store_url(store))
    try:
        state = app.state_at(ledger, ts=at)
    finally:
        ledger.close()
    if at is not None:
        when = format_ts(parse_ts(at))  # app.state_at refused anything parse_ts cannot read
    else:
        when = format_ts(state.ts_us) if state.seq else None
    return state, when


@click.command()
@store_option
@click.option("--at", "at", required=True,
              help="The state after the last input with ts <= AT (RFC 3339, UTC).")
@click.option("--account", default=None,
              help="Only this account (default: every account, system ones included).")
@click.option("-o", "output", required=True, type=click.Path(allow_dash=True),
              help="Write the CSV here (`-` = standard output).")
def statement(store: str | None, at: str, account: str | None, output: str) -> None:
    """Write the ledger's own statement at a time (CSV account,kind,code,amount)."""
    state, when = _state(store, at)
    lines = statement_lines(state, account)
    data = statement_csv(state, lines)
    if output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        try:
            with open(output, "wb") as f:
                f.write(data)
        except OSError as exc:
            raise StoreError("unwritable_file", f"{output}: {exc.strerror}") from exc
    accounts = len({ln.account for ln in lines})
    click.echo(
        f"wrote the statement at {when} (seq {state.seq}): {_count(len(lines), 'line')} of "
        f"{_count(accounts, 'account')} to {output}",
        err=True,
    )

@click.command("reconcile")
@store_option
@click.argument("statement_file", metavar="STATEMENT.csv", type=click.Path(allow_dash=True))
@click.option("--at", "at", default=None,
              help="Compare with the state at AT (default: now, the head).")
@json_option
def reconcile_command(store: str | None, statement_file: str, at: str | None,
                      as_json: bool) -> None:
    """Compare an external statement with the ledger; exit 1 when anything differs."""
    data = _read_input(statement_file)
    state, when = _state(store, at)
    lines, errors = parse_statement(data, state)
    if errors:
        for number, err in errors:
            click.echo(f"{statement_file}:{number}: error[{err.code}]: {err.message}", err=True)
        sys.exit(2)
    result = reconcile(state, lines, when)
    if as_json:
        _emit_json(result.as_json())
    click.echo(render(statement_file, result), err=True)
    sys.exit(1 if result.breaks else 0)
