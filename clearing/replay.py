"""`clearing replay`: the timeline of the log, or of one account, with its figures after each
event (interfaces §3).

The timeline starts from the state just before ``--from`` (projections.history.state_at_seq of
the last event with ts < FROM: a snapshot plus at most one snapshot interval of events) and
folds forward one input group at a time: an input and the decisions it caused (R3.6). Folding
by groups settles the fold's look-ahead: an input's effect depends on whether its own
``rejected`` decision follows it (R3.5), and that decision is in the same group.

An event *concerns* an account when it moved the account's cash, balances or positions
(``LedgerState.touched``), or names it (an input's account fields; a rejection's account and the
accounts of the input it rejects; a liquidation's or bankruptcy's account; both sides of a
deleverage step; every holder in a ``funding_settled``). The input that caused decisions
concerning the account is shown too (``relation`` "caused"): its line holds the account's
figures after the input and before the pass (R10.1), which is the moment before the
liquidation an auditor wants to see; the decisions' lines hold the moments after.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Iterator

import click
import msgspec

from events import schema as s
from events.canonical import decode
from events.numbers import fmt_units
from events.store import LogStore, StoreError
from projections.history import state_at_seq
from projections.state import LedgerState, is_system
from projections.valuation import Valuation, value

from clearing import app

__all__ = ["Group", "Row", "Timeline", "read_groups", "replay", "replay_command", "summary"]


# --- the log as input groups (R3.6) ---------------------------------------------------------
@dataclass
class Group:
    """An input and the decisions it caused, with their stored canonical bytes."""

    inp: s.Input
    decisions: list[s.Decision] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)  # the input's first

    @property
    def rejected(self) -> bool:  # R3.5
        return any(type(d) is s.Rejected and d.ref == self.inp.id for d in self.decisions)

    @property
    def last_seq(self) -> int:
        return self.decisions[-1].seq if self.decisions else self.inp.seq


def read_groups(
    store: LogStore, after_seq: int = 0, upto_seq: int | None = None, batch: int = 4096
) -> Iterator[Group]:
    """The input groups with after_seq < seq <= upto_seq; ``after_seq`` must end a group."""
    current: Group | None = None
    for page in store.read_payloads(after_seq=after_seq, upto_seq=upto_seq, batch=batch):
        for _seq, tag, payload in page:
            event = decode(payload)
            if tag in s.DECISION_TAGS:
                assert current is not None, f"decision at seq {_seq} without its input"
                current.decisions.append(event)  # type: ignore[arg-type]
                current.payloads.append(payload)
            else:
                if current is not None:
                    yield current
                current = Group(event, [], [payload])  # type: ignore[arg-type]
    if current is not None:
        yield current


def apply_event(state: LedgerState, event: s.Event, group: Group) -> None:
    """Fold one event of a group (the input with its R3.5 outcome, or a decision)."""
    if event is group.inp:
        state.apply_input(group.inp, group.rejected)
    else:
        state.apply_decision(event)  # type: ignore[arg-type]


# --- who an event names, and what it says ----------------------------------------------------
def input_accounts(inp: s.Input) -> list[str]:
    if isinstance(inp, (s.Deposit, s.Withdrawal)):
        return [inp.account]
    if isinstance(inp, s.Transfer):
        return [inp.from_, inp.to]
    if isinstance(inp, s.Trade):
        return [inp.buyer, inp.seller]
    return []


def named_accounts(event: s.Event, group: Group) -> list[str]:
    """The accounts an event names, in a stable order, each once."""
    if isinstance(event, s.Rejected):
        names = [event.account, *input_accounts(group.inp)]
    elif isinstance(event, (s.Liquidation, s.Bankruptcy)):
        names = [event.account]
    elif isinstance(event, s.Deleverage):
        names = [event.account, event.counterparty]
    elif isinstance(event, s.FundingSettled):
        names = [p.account for p in event.payments]
    else:
        names = input_accounts(event)  # type: ignore[arg-type]
    return list(dict.fromkeys(n for n in names if n))


def tag(event: s.Event) -> str:
    return event.__struct_config__.tag  # type: ignore[attr-defined]


def summary(event: s.Event) -> str:
    """A one-line description of an event, in the rulebook's terms."""
    e: Any = event
    if isinstance(e, s.Asset):
        if e.settlement:
            return f"list {e.asset}: the settlement asset, {e.decimals} decimals (R4.1)"
        return f"list {e.asset}: {e.decimals} decimals, price grid 10^-{e.price_decimals}, haircut {e.haircut}"
    if isinstance(e, s.Instrument):
        return (
            f"list {e.instrument} on {e.underlying}: IMF {e.initial_margin}, "
            f"MMF {e.maintenance_margin}, LF {e.liquidation_fee}"
        )
    if isinstance(e, s.Price):
        return f"mark {e.asset} {e.price}"
    if isinstance(e, s.Deposit):
        return f"deposit {e.amount} {e.asset} to {e.account}"
    if isinstance(e, s.Withdrawal):
        return f"withdraw {e.amount} {e.asset} from {e.account}"
    if isinstance(e, s.Transfer):
        return f"transfer {e.amount} {e.asset} {e.from_} -> {e.to}"
    if isinstance(e, s.Trade):
        return (
            f"{e.buyer} buys {e.qty} {e.instrument} from {e.seller} at {e.price}"
            f" (fees {e.buyer_fee} / {e.seller_fee})"
        )
    if isinstance(e, s.Funding):
        return f"funding {e.instrument} at rate {e.rate}"
    if isinstance(e, s.Rejected):
        who = f", {e.account}" if e.account else ""
        return f"rejects {e.ref}: {e.reason} ({e.rule}{who})"
    if isinstance(e, s.Liquidation):
        if e.rule == "R10.5":
            return f"R10.5 {e.account} {e.instrument} {e.position_before} to @insurance at {e.price}"
        return (
            f"R10.3 {e.account} closes {e.qty} {e.instrument} ({e.position_before} -> "
            f"{e.position_after}) at {e.price}, penalty {e.penalty}"
        )
    if isinstance(e, s.Bankruptcy):
        seized = "".join(f", seized {x.amount} {x.asset}" for x in e.seized)
        return f"{e.account} bankrupt: D {e.deficit}, C {e.cover}, R {e.remainder}{seized}"
    if isinstance(e, s.Deleverage):
        return (
            f"R10.6 {e.account} {e.instrument} {e.qty} against {e.counterparty} at {e.price}, "
            f"paid {e.paid}"
        )
    if isinstance(e, s.FundingSettled):
        return (
            f"{e.instrument} funding at {e.price}: {len(e.payments)} payments, paid {e.paid}, "
            f"received {e.received}, dust {e.dust}"
        )
    return tag(event)


# --- an account's figures ---------------------------------------------------------------------
def health(account_id: str, v: Valuation) -> str:
    """R6.7, R10.2: system / bankrupt / liquidatable / below IM / ok."""
    if is_system(account_id):
        return "system"  # R6.7: never liquidatable
    if v.equity < 0:
        return "bankrupt"  # R10.2 (equity < 0 <= MM)
    if v.equity < v.maintenance_margin:
        return "liquidatable"
    if v.equity < v.initial_margin:
        return "below IM"
    return "ok"


def account_figures(state: LedgerState, account_id: str) -> dict[str, Any] | None:
    """The account's holdings and R6 figures as R1.1 strings; None if it does not exist."""
    acct = state.accounts.get(account_id)
    if acct is None:
        return None
    v = value(state, acct)
    money = lambda units: fmt_units(units, state.scale)  # noqa: E731
    return {
        "cash": money(acct.cash),
        "balances": {
            asset: fmt_units(units, state.assets[asset].decimals)
            for asset, units in sorted(acct.balances.items())
        },
        "positions": {
            instrument: fmt_units(qty, state.instruments[instrument].qty_decimals)
            for instrument, qty in sorted(acct.positions.items())
        },
        "equity": money(v.equity),
        "initial_margin": money(v.initial_margin),
        "maintenance_margin": money(v.maintenance_margin),
        "free_collateral": money(v.free_collateral),
        "margin_buffer": money(v.equity - v.maintenance_margin),
        "health": health(account_id, v),
        "liquidatable": (not is_system(account_id)) and v.equity < v.maintenance_margin,
    }


_FIGURE_KEYS = (
    "cash", "balances", "positions", "equity", "initial_margin", "maintenance_margin",
    "free_collateral", "margin_buffer", "health", "liquidatable",
)
_BRIEF_KEYS = ("equity", "initial_margin", "maintenance_margin", "margin_buffer", "health")


# --- the timeline -----------------------------------------------------------------------------
@dataclass
class Row:
    seq: int
    ts: str
    type: str
    ref: str
    summary: str
    relation: str | None = None  # with an account: "moved", "named" or "caused"
    figures: dict[str, Any] | None = None  # with an account: its figures after the event
    accounts: dict[str, dict[str, Any]] | None = None  # without: the named accounts' figures

    def as_json(self, account: str | None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "seq": self.seq, "ts": self.ts, "type": self.type, "ref": self.ref, "summary": self.summary,
        }
        if account is None:
            doc["accounts"] = self.accounts or {}
            return doc
        doc["account"] = account
        doc["relation"] = self.relation
        doc["exists"] = self.figures is not None
        for key in _FIGURE_KEYS:
            doc[key] = self.figures[key] if self.figures is not None else None
        return doc


class Timeline:
    """The events with FROM <= ts <= TO, folded from the state just before FROM."""

    def __init__(self, store: LogStore, account: str | None = None,
                 from_ts: str | None = None, to_ts: str | None = None) -> None:
        self.store = store
        self.account = account
        head, _ = store.head()
        from_us = _instant(from_ts, "--from")
        to_us = _instant(to_ts, "--to")
        if from_us is not None and to_us is not None and from_us > to_us:
            raise StoreError("bad_range", f"--from {from_ts} is after --to {to_ts}")
        # R3.2: timestamps compare as instants (integer microseconds), so ts < FROM is
        # ts <= FROM − 1 µs; a group shares its input's ts, so both bounds fall between groups.
        self.start_seq = store.seq_at_time(from_us - 1) if from_us is not None else 0
        self.end_seq = store.seq_at_time(to_us) if to_us is not None else head
        self.state = state_at_seq(store, self.start_seq)
        self.start_ts = self.state.ts
        # The account's figures in the state the timeline starts from (None: no account, or
        # it does not exist yet); taken now, because ``rows`` folds the same state forward.
        self.opening = account_figures(self.state, account) if account else None

    def rows(self) -> Iterator[Row]:
        state, account = self.state, self.account
        if self.end_seq <= self.start_seq:
            return
        for group in read_groups(self.store, self.start_seq, self.end_seq):
            rows: list[Row] = []
            concerned = False
            for event in (group.inp, *group.decisions):
                state.touched.clear()
                apply_event(state, event, group)
                names = named_accounts(event, group)
                row = Row(event.seq, event.ts, tag(event), _ref(event), summary(event))
                if account is None:
                    row.accounts = {}
                    for name in names:
                        figures = account_figures(state, name)
                        if figures is not None:
                            row.accounts[name] = {k: figures[k] for k in _BRIEF_KEYS}
                    rows.append(row)
                    continue
                if account in state.touched:
                    row.relation = "moved"
                elif account in names:
                    row.relation = "named"
                if row.relation is not None or (event is group.inp and group.decisions):
                    row.figures = account_figures(state, account)
                    rows.append(row)
                    if event is not group.inp and row.relation is not None:
                        concerned = True
            if account is not None:
                first = rows[0] if rows and rows[0].seq == group.inp.seq else None
                if first is not None and first.relation is None:
                    if concerned:
                        first.relation = "caused"  # its decisions concern the account
                    else:
                        rows.pop(0)
            yield from rows


def replay(store: LogStore, account: str | None = None, from_ts: str | None = None,
           to_ts: str | None = None) -> Timeline:
    """The library call behind `clearing replay`."""
    return Timeline(store, account, from_ts, to_ts)


_instant = app.instant


def _ref(event: s.Event) -> str:
    return getattr(event, "ref", None) or getattr(event, "id")


# --- the human table --------------------------------------------------------------------------
def _holdings(figures: dict[str, Any] | None) -> str:
    if figures is None:
        return "(no account)"
    parts = [f"{i} {q}" for i, q in figures["positions"].items()]
    parts += [f"{a} {b}" for a, b in figures["balances"].items()]
    return ", ".join(parts) or "-"


def _brief(accounts: dict[str, dict[str, Any]], limit: int = 3) -> str:
    parts = [f"{name} {f['equity']} ({f['health']})" for name, f in list(accounts.items())[:limit]]
    if len(accounts) > limit:
        parts.append(f"+{len(accounts) - limit} more")
    return "; ".join(parts)


_RIGHT = {"seq", "cash", "equity", "IM", "MM", "buffer"}


def render_table(timeline: Timeline, rows: list[Row]) -> str:
    if timeline.account is not None:
        header = ["seq", "ts", "type", "ref", "relation", "cash", "equity", "IM", "MM", "buffer",
                  "health", "holdings", "summary"]
        cells: list[list[str]] = []
        opening = timeline.opening
        start_ts = timeline.start_ts or "-"
        cells.append(_account_cells("start", start_ts, "(state before)", "", "", opening,
                                    f"the state at seq {timeline.start_seq}"))
        for row in rows:
            cells.append(_account_cells(str(row.seq), row.ts, row.type, row.ref, row.relation or "",
                                        row.figures, row.summary))
    else:
        header = ["seq", "ts", "type", "ref", "summary", "accounts named (equity, health after)"]
        cells = [[str(r.seq), r.ts, r.type, r.ref, r.summary, _brief(r.accounts or {})] for r in rows]
    widths = [max(len(header[i]), *(len(c[i]) for c in cells)) if cells else len(header[i])
              for i in range(len(header))]
    lines = []
    for line in [header, *cells]:
        out = []
        for i, (name, cell) in enumerate(zip(header, line)):
            if i == len(header) - 1:
                out.append(cell)
            elif name in _RIGHT:
                out.append(cell.rjust(widths[i]))
            else:
                out.append(cell.ljust(widths[i]))
        lines.append("  ".join(out).rstrip())
    return "\n".join(lines)


def _account_cells(seq: str, ts: str, kind: str, ref: str, relation: str,
                   figures: dict[str, Any] | None, text: str) -> list[str]:
    if figures is None:
        numbers = ["-"] * 5 + ["-"]
    else:
        numbers = [figures["cash"], figures["equity"], figures["initial_margin"],
                   figures["maintenance_margin"], figures["margin_buffer"], figures["health"]]
    return [seq, ts, kind, ref, relation, *numbers, _holdings(figures), text]


# --- the command --------------------------------------------------------------------------------
_encoder = msgspec.json.Encoder()


@click.command("replay")
@click.option("--store", "store", envvar="CLEARING_STORE", default=None,
              help="SQLite file (default clearing.db) or postgresql://...; env CLEARING_STORE.")
@click.option("--account", default=None, help="Only the events that concern this account, with its figures.")
@click.option("--from", "from_ts", default=None, help="Start at this instant (RFC 3339 UTC, inclusive).")
@click.option("--to", "to_ts", default=None, help="End at this instant (RFC 3339 UTC, inclusive).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON Lines: one object per event.")
def replay_command(store: str | None, account: str | None, from_ts: str | None,
                   to_ts: str | None, as_json: bool) -> None:
    """The timeline of events, with the account's figures after each (JSON Lines with --json)."""
    ledger = app.open_ledger(app.store_url(store))
    count = 0
    try:
        timeline = replay(ledger, account, from_ts, to_ts)
        if as_json:
            out = sys.stdout.buffer
            for row in timeline.rows():
                out.write(_encoder.encode(row.as_json(account)) + b"\n")
                count += 1
            sys.stdout.flush()
        else:
            rows = list(timeline.rows())
            count = len(rows)
            if rows:
                click.echo(render_table(timeline, rows))
    finally:
        ledger.close()
    if count == 0:
        what = f"concerning {account} " if account else ""
        click.echo(f"no events {what}between seq {timeline.start_seq} and {timeline.end_seq}", err=True)
    else:
        click.echo(f"{count} events (seq {timeline.start_seq + 1} to {timeline.end_seq})", err=True)

