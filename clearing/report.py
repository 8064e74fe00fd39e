"""`clearing report --account A [--from TS] [--to TS] -o FILE.html` (interfaces §3): one
self-contained HTML incident report for one account, that works offline.

The report holds the account's equity, initial and maintenance margin over the period as a step
chart (one step per event) with its liquidations, bankruptcy and deleveraging marked; the price
path of the underlyings and collateral assets it was exposed to; the listing parameters in force
at the start and every change in the period (R4); the events that touched the account with its
figures after each (R6); the explanation of each decision that concerns it; and a footer with
the log position, the state root there and how to verify it (interfaces §5).

The period is the events with FROM <= ts <= TO (both optional; the default is the whole log).
The state at the start is the state after the last input with ts < FROM (R3.7), read once; the
period is then folded forward in one pass, one event of look-ahead, as ``projections.state``
folds the log. The end of the period is the state at TO (R3.7), so `clearing prove --at TO`
proves exactly the state the report ends with.

Money stays in integer minor units (R1.1) everywhere, the tables included; the charts need
floats, and the conversion happens only at the plotting boundary, on lines marked
``float-ok: plotting``. The charts are drawn by matplotlib's SVG backend and embedded inline;
text is drawn as paths (DejaVu Sans, shipped with matplotlib), so the report renders the same on
any machine without fonts, and the same input always gives the same bytes.
"""

from __future__ import annotations

import base64
import html
import importlib.util
import io
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Iterator

import click
import msgspec

from events import schema as s
from events.canonical import decode
from events.numbers import fmt_units, units_of
from events.store import LogStore, StoreError
from events.timestamps import format_ts, parse_ts
from projections import history, statetree
from projections.state import INSURANCE, LedgerState
from projections.valuation import value

from clearing import app

from projections.report import RULES
MAX_ROWS = 20_000  # events table rows kept (the charts always show the whole period)
MAX_EXPLAINED = 500  # decisions explained in full
MAX_EXPLANATION_LINES = 80  # lines of one explanation (a funding settlement lists every holder)

# The charts' fixed geometry: 12 in wide at 72 pt per inch; shown at 96 px per inch.
CHART_WIDTH_IN = 12.0
MARGIN_HEIGHT_IN = 4.5
PRICE_PANEL_IN = 1.75
PRICE_BASE_IN = 1.0
PX_PER_IN = 96

DECISION_TYPES = (s.Rejected, s.Liquidation, s.Bankruptcy, s.Deleverage, s.FundingSettled)


# --- the pass over the period ------------------------------------------------------------------
@dataclass(slots=True)
class Figures:
    cash: int
    equity: int
    im: int
    mm: int


@dataclass(slots=True)
class Row:
    seq: int
    ts_us: int
    type: str
    summary: str
    figures: Figures | None
    decision: bool = False  # a decision that concerns the account (explained below)
    ref: str = ""  # a decision's causing input id
    context: bool = False  # an input shown because it caused a decision for the account


@dataclass(slots=True)
class Marker:
    seq: int
    ts_us: int
    kind: str  # liquidation, bankruptcy, deleverage, adl_counterparty
    equity: int


@dataclass(slots=True)
class ParamChange:
    seq: int
    ts_us: int
    kind: str  # asset / instrument
    name: str
    before: dict[str, str] | None  # None: a first listing
    after: dict[str, str]


@dataclass
class Period:
    account: str
    from_us: int | None
    to_us: int | None
    start: dict[str, Any]  # parameters and marks at the start (plain data)
    start_seq: int
    start_figures: Figures | None
    end: LedgerState
    points: list[tuple[int, int, Figures]] = field(default_factory=list)  # (seq, ts_us, figures)
    rows: list[Row] = field(default_factory=list)
    rows_omitted: int = 0
    markers: list[Marker] = field(default_factory=list)
    changes: list[ParamChange] = field(default_factory=list)
    prices: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # asset -> (ts_us, units)
    assets_involved: set[str] = field(default_factory=set)
    instruments_involved: set[str] = field(default_factory=set)
    first_ts_us: int | None = None
    last_ts_us: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    min_equity: tuple[int, int, int] | None = None  # (equity, seq, ts_us)


def _events(store: LogStore, after: int, upto: int) -> Iterator[tuple[s.Event, s.Event | None]]:
    """Each event with after < seq <= upto, with the event after it (look-ahead, R3.5)."""
    head, _ = store.head()
    prev: s.Event | None = None
    for page in store.read_payloads(after_seq=after, upto_seq=min(upto + 1, head)):
        for _seq, _type, payload in page:
            event = decode(payload)
            if prev is not None:
                yield prev, event
            prev = event
    if prev is not None and prev.seq <= upto:
        yield prev, None


def _figures(state: LedgerState, account: str) -> Figures | None:
    acct = state.accounts.get(account)
    if acct is None:
        return None
    v = value(state, acct)
    return Figures(v.cash, v.equity, v.initial_margin, v.maintenance_margin)


def _params(state: LedgerState) -> dict[str, Any]:
    return {
        "assets": {
            a: {"haircut": info.haircut, "settlement": info.settlement}
            for a, info in sorted(state.assets.items())
        },
        "instruments": {
            i: {
                "underlying": info.underlying,
                "initial_margin": info.initial_margin,
                "maintenance_margin": info.maintenance_margin,
                "liquidation_fee": info.liquidation_fee,
            }
            for i, info in sorted(state.instruments.items())
        },
        "marks": {
            a: fmt_units(units, state.assets[a].price_decimals) for a, units in sorted(state.marks.items())
        },
        "settlement": state.settlement,
    }


def _names(ev: s.Event) -> tuple[str, ...]:
    """The accounts an event names (inputs: their parties; decisions: whom they concern)."""
    t = type(ev)
    if t is s.Deposit or t is s.Withdrawal:
        return (ev.account,)
    if t is s.Transfer:
        return (ev.from_, ev.to)
    if t is s.Trade:
        return (ev.buyer, ev.seller)
    if t is s.Rejected or t is s.Liquidation or t is s.Bankruptcy:
        return (ev.account,)
    if t is s.Deleverage:
        return (ev.account, ev.counterparty)
    if t is s.FundingSettled:
        return tuple(p.account for p in ev.payments)
    return ()


def _involve(period: Period, state: LedgerState) -> None:
    acct = state.accounts.get(period.account)
    if acct is None:
        return
    for asset, units in acct.balances.items():
        if units > 0:
            period.assets_involved.add(asset)
    for instrument in acct.positions:
        period.instruments_involved.add(instrument)


def fold_period(store: LogStore, account: str, from_us: int | None, to_us: int | None) -> Period:
    """The one pass over the period: start state once, then every event forward."""
    head, _ = store.head()
    start_seq = history.seq_at_time(store, from_us - 1) if from_us is not None else 0
    end_seq = history.seq_at_time(store, to_us) if to_us is not None else head
    end_seq = max(end_seq, start_seq)
    state = history.state_at_seq(store, start_seq)
    start_figures = _figures(state, account)
    period = Period(account, from_us, to_us, _params(state), start_seq, start_figures, state)
    _involve(period, state)
    counts = {"events": 0, "liquidation": 0, "bankruptcy": 0, "deleverage": 0,
              "adl_counterparty": 0, "rejected": 0, "funding": 0}
    last = start_figures
    if last is not None:
        period.min_equity = (last.equity, start_seq, state.ts_us)
    # The current input, when it did not touch the account: shown as the context of a decision
    # it caused for the account (its row is made only then).
    context: tuple[s.Event, bool, ParamChange | None, Figures | None] | None = None
    context_added = False
    input_concerns = False  # the current input names the account
    for ev, nxt in _events(store, start_seq, end_seq):
        t = type(ev)
        counts["events"] += 1
        state.touched.clear()
        change: ParamChange | None = None
        if t in DECISION_TYPES:
            state.apply_decision(ev)  # type: ignore[arg-type]
            rejected = False
        else:
            rejected = type(nxt) is s.Rejected and nxt.ref == ev.id  # type: ignore[union-attr]
            if not rejected and (t is s.Asset or t is s.Instrument):
                change = _listing_change(state, ev)
            state.apply_input(ev, rejected)  # type: ignore[arg-type]
            if t is s.Price and not rejected:
                period.prices.setdefault(ev.asset, []).append((state.ts_us, state.marks[ev.asset]))
        if period.first_ts_us is None:
            period.first_ts_us = state.ts_us
        period.last_ts_us = state.ts_us
        if change is not None:
            change.ts_us = state.ts_us
            period.changes.append(change)
        touched = account in state.touched
        if touched or (t in (s.Price, s.Asset, s.Instrument) and last is not None):
            if touched:
                _involve(period, state)
            figures = _figures(state, account)
            if figures is not None and figures != last:
                period.points.append((ev.seq, state.ts_us, figures))
                if period.min_equity is None or figures.equity < period.min_equity[0]:
                    period.min_equity = (figures.equity, ev.seq, state.ts_us)
            last = figures
        concerns = account in _names(ev)
        if t is s.Rejected:  # a rejection concerns the party that failed, or every party (no_mark)
            concerns = ev.account == account or (not ev.account and input_concerns)
        is_decision = t in DECISION_TYPES and concerns
        if t not in DECISION_TYPES:
            context = None
            context_added = False
            input_concerns = concerns
        if touched or concerns or is_decision:
            if is_decision and context is not None and not context_added:
                c_ev, c_rejected, c_change, c_figures = context
                _add_row(period, Row(c_ev.seq, parse_ts(c_ev.ts) or 0, _tag(c_ev),
                                     _summary(c_ev, account, c_rejected, c_change), c_figures, context=True))
                context_added = True
            _add_row(period, Row(ev.seq, state.ts_us, _tag(ev), _summary(ev, account, rejected, change),
                                 last, decision=is_decision, ref=ev.ref if is_decision else ""))
            if t not in DECISION_TYPES:
                context_added = True  # the input's own row is already there
        elif t not in DECISION_TYPES:
            context = (ev, rejected, change, last)
        if is_decision:
            kind = _tag(ev)
            if t is s.Deleverage and ev.account != account:
                kind = "adl_counterparty"
            if t is s.FundingSettled:
                kind = "funding"
            counts[kind] = counts.get(kind, 0) + 1
            if kind in ("liquidation", "bankruptcy", "deleverage", "adl_counterparty"):
                # A bankruptcy is marked at the bankrupt equity (−D, R10.4), the others after the move.
                at = units_of(ev.equity, state.scale) if t is s.Bankruptcy else (last.equity if last else 0)
                period.markers.append(Marker(ev.seq, state.ts_us, kind, at))
    period.end = state
    period.counts = counts
    return period


def _add_row(period: Period, row: Row) -> None:
    if len(period.rows) >= MAX_ROWS and not row.decision:
        period.rows_omitted += 1
        return
    period.rows.append(row)


def _tag(ev: s.Event) -> str:
    return ev.__struct_config__.tag  # type: ignore[attr-defined]


def _listing_change(state: LedgerState, ev: s.Asset | s.Instrument) -> ParamChange:
    """R4.2 / R4.3: what a listing event changes, read on the state before it."""
    if type(ev) is s.Asset:
        known = state.assets.get(ev.asset)
        before = {"haircut": known.haircut} if known is not None else None
        return ParamChange(ev.seq, 0, "asset", ev.asset, before, {"haircut": ev.haircut})
    info = state.instruments.get(ev.instrument)
    before = None
    if info is not None:
        before = {"initial_margin": info.initial_margin, "maintenance_margin": info.maintenance_margin,
                  "liquidation_fee": info.liquidation_fee}
    after = {"initial_margin": ev.initial_margin, "maintenance_margin": ev.maintenance_margin,
             "liquidation_fee": ev.liquidation_fee}
    return ParamChange(ev.seq, 0, "instrument", ev.instrument, before, after)


def _summary(ev: s.Event, account: str, rejected: bool, change: ParamChange | None) -> str:
    t = type(ev)
    note = " — rejected (see the next event)" if rejected else ""
    if t is s.Deposit:
        return f"{ev.account} deposited {ev.amount} {ev.asset}{note}"
    if t is s.Withdrawal:
        return f"{ev.account} withdrew {ev.amount} {ev.asset}{note}"
    if t is s.Transfer:
        return f"{ev.from_} transferred {ev.amount} {ev.asset} to {ev.to}{note}"
    if t is s.Trade:
        return (f"{ev.buyer} bought {ev.qty} {ev.instrument} from {ev.seller} at {ev.price} "
                f"(fees {ev.buyer_fee} / {ev.seller_fee}){note}")
    if t is s.Price:
        return f"{ev.asset} marked at {ev.price}"
    if t is s.Funding:
        return f"funding on {ev.instrument} at rate {ev.rate}"
    if t is s.Asset or t is s.Instrument:
        name = ev.asset if t is s.Asset else ev.instrument
        if change is None or change.before is None:
            what = ", ".join(f"{_PARAM_LABEL[k]} {v}" for k, v in (change.after if change else {}).items())
            return f"{name} listed: {what}" if what else f"{name} listed"
        diffs = [f"{_PARAM_LABEL[k]} {change.before[k]} → {v}" for k, v in change.after.items()
                 if change.before[k] != v]
        return f"{name} re-listed: " + (", ".join(diffs) if diffs else "unchanged")
    if t is s.Rejected:
        figures = ", ".join(f"{k} {v}" for k, v in ev.figures.items())
        who = f" of {ev.account}" if ev.account else ""
        return f"input {ev.ref}{who} rejected: {ev.reason} ({ev.rule}" + (f"; {figures})" if figures else ")")
    if t is s.Liquidation:
        return (f"liquidation ({ev.rule}): {ev.qty} {ev.instrument} moved to {INSURANCE} at {ev.price}, "
                f"position {ev.position_before} → {ev.position_after}, penalty {ev.penalty}")
    if t is s.Bankruptcy:
        seized = "".join(f", seized {z.amount} {z.asset} for {z.value}" for z in ev.seized)
        return (f"bankruptcy (R10.4): equity {ev.equity}, deficit {ev.deficit}, cover {ev.cover} "
                f"from the insurance fund ({ev.insurance_fund}), remainder {ev.remainder}{seized}")
    if t is s.Deleverage:
        if ev.account == account:
            return (f"deleveraging (R10.6): {ev.qty} {ev.instrument} closed against {ev.counterparty} "
                    f"at {ev.price}; {ev.counterparty} paid {ev.paid} of the share {ev.share}")
        return (f"auto-deleveraged as counterparty #{ev.rank} of bankrupt {ev.account} (R10.6): "
                f"{ev.qty} {ev.instrument} closed at {ev.price}, paid {ev.paid}")
    if t is s.FundingSettled:
        mine = [p for p in ev.payments if p.account == account]
        part = (f"; {account} (position {mine[0].position}) "
                f"{'received' if not mine[0].amount.startswith('-') else 'paid'} "
                f"{mine[0].amount.lstrip('-')}") if mine else ""
        return f"funding on {ev.instrument} settled at {ev.price}, rate {ev.rate}{part}"
    return _tag(ev)  # pragma: no cover - a new event type


_PARAM_LABEL = {"haircut": "haircut", "initial_margin": "IMF", "maintenance_margin": "MMF",
                "liquidation_fee": "LF"}


# --- explanations ------------------------------------------------------------------------------
def _explainer():
    """``clearing.explain.explain(store, seq)``, when that module exists (it is optional here)."""
    if importlib.util.find_spec("clearing.explain") is None:
        return None
    from clearing import explain as module  # noqa: PLC0415 - optional, imported lazily

    return getattr(module, "explain", None)


def _group_explainer():
    """``clearing.explain.explain_input(store, id)`` (the input with all its decisions explained
    in ``caused``, in one walk of its group), when it exists: a crash tick can cause a hundred
    decisions for one account, and one walk is far cheaper than one ``explain`` each."""
    if importlib.util.find_spec("clearing.explain") is None:
        return None
    from clearing import explain as module  # noqa: PLC0415

    return getattr(module, "explain_input", None)


def _fallback_explanation(ev: s.Event, account: str) -> list[str]:
    """The decision's recorded figures, with the rules it applies, when `explain` is absent."""
    t = type(ev)
    rules = {
        s.Rejected: getattr(ev, "rule", ""),
        s.Liquidation: getattr(ev, "rule", ""),
        s.Bankruptcy: "R10.4, R10.7",
        s.Deleverage: "R10.6",
        s.FundingSettled: "R9.1, R9.2",
    }[t]
    out = [f"{_tag(ev)} caused by input {ev.ref} (rules {rules}); recorded figures:"]
    fields = msgspec.structs.asdict(ev)  # type: ignore[arg-type]
    for key, val in fields.items():
        if key in ("seq", "ts", "ref"):
            continue
        if key == "payments":
            for p in val:
                if p.account == account:
                    out.append(f"  payment of {account}: position {p.position}, amount {p.amount}")
            out.append(f"  payments: {len(val)} holders")
            continue
        if key == "seized":
            for z in val:
                out.append(f"  seized: {z.amount} {z.asset} at {z.price}, paid {z.value}")
            continue
        if isinstance(val, dict):
            val = ", ".join(f"{k} {v}" for k, v in val.items()) or "-"
        out.append(f"  {key}: {val}")
    return out


def _shorten(lines: list[str], account: str, seq: int) -> list[str]:
    """A long explanation (a funding settlement lists every holder, a deleveraging every
    counterparty) keeps its head, its tail and every line that names the account."""
    if len(lines) <= MAX_EXPLANATION_LINES:
        return lines
    head, tail = 12, 6
    named = re.compile(rf"(?<![A-Za-z0-9._:/@-]){re.escape(account)}(?![A-Za-z0-9._/-]|:[A-Za-z0-9._:/-])")
    kept: list[str] = []
    skipped = 0
    for i, line in enumerate(lines):
        if i < head or i >= len(lines) - tail or named.search(line):
            if skipped:
                kept.append(f"    … {skipped} lines left out (clearing explain {seq} shows them all)")
                skipped = 0
            kept.append(line)
        else:
            skipped += 1
    return kept


def explanations(store: LogStore, period: Period) -> tuple[list[tuple[Row, list[str], str]], bool, int]:
    """(row, lines, source) per decision row; whether `clearing explain` was used; how many
    decisions were left out."""
    explain = _explainer()
    explain_group = _group_explainer() if explain is not None else None
    wanted = [row for row in period.rows if row.decision]
    left_out = max(0, len(wanted) - MAX_EXPLAINED)
    wanted = wanted[:MAX_EXPLAINED]
    per_ref: dict[str, int] = {}
    for row in wanted:
        per_ref[row.ref] = per_ref.get(row.ref, 0) + 1
    grouped: dict[str, dict[int, Any]] = {}  # ref -> seq -> Explanation
    out = []
    for row in wanted:
        source = "clearing explain"
        lines: list[str] | None = None
        if explain is not None:
            try:
                found = None
                if explain_group is not None and per_ref[row.ref] > 1:
                    if row.ref not in grouped:
                        grouped[row.ref] = {c.seq: c for c in explain_group(store, row.ref).caused}
                    found = grouped[row.ref].get(row.seq)
                text = (found if found is not None else explain(store, row.seq)).text()
                lines = list(text) if not isinstance(text, str) else text.splitlines()
            except Exception as exc:  # noqa: BLE001 - the report stays useful; the failure is shown
                source = f"recorded figures (clearing explain failed: {type(exc).__name__}: {exc})"
        if lines is None:
            record = store.get(row.seq)
            assert record is not None
            lines = _fallback_explanation(decode(record.payload), period.account)
            if explain is None:
                source = "recorded figures (clearing explain is not available)"
        out.append((row, _shorten(lines, period.account, row.seq), source))
    return out, explain is not None, left_out


# --- charts (matplotlib, SVG backend) ----------------------------------------------------------
_RC = {
    "svg.hashsalt": "clearing-report",
    "svg.fonttype": "path",  # glyphs as paths: identical rendering offline, with no fonts
    "font.family": "DejaVu Sans",
    "font.size": 9.0,
    "axes.titlesize": 10.0,
    "axes.titleweight": "bold",
    "axes.grid": True,
    "grid.color": "#e3e3e3",
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "legend.fontsize": 8.5,
    "timezone": "UTC",
    "path.simplify": True,
    "axes.formatter.useoffset": False,
}
COLOURS = {"equity": "#1f5fbf", "im": "#e08a00", "mm": "#c0262d", "zero": "#777777",
           "liquidation": "#e08a00", "bankruptcy": "#111111", "deleverage": "#7b3fb5",
           "adl_counterparty": "#7b3fb5", "price": ("#2a7f62", "#1f5fbf", "#9a4a00", "#7b3fb5",
                                                      "#c0262d", "#555555")}
MARKER_STYLE = {
    "liquidation": ("v", "liquidation (R10.3 / R10.5)"),
    "bankruptcy": ("X", "bankruptcy (R10.4)"),
    "deleverage": ("D", "deleveraged (R10.6)"),
    "adl_counterparty": ("d", "ADL counterparty (R10.6)"),
}


def _x(ts_us: int) -> float:  # float-ok: plotting
    return ts_us / 86_400_000_000  # float-ok: plotting (matplotlib date numbers, days since 1970)


def _money(units: int, scale: int) -> float:  # float-ok: plotting
    return units / 10**scale  # float-ok: plotting


def _x_range(period: Period) -> tuple[int, int]:
    lo = period.from_us if period.from_us is not None else period.first_ts_us
    hi = period.to_us if period.to_us is not None else period.last_ts_us
    if lo is None:
        lo = hi if hi is not None else 0
    if hi is None or hi < lo:
        hi = lo
    if hi == lo:  # a period of one instant: a minute either side
        lo, hi = lo - 60_000_000, hi + 60_000_000
    return lo, hi


def _svg(fig, name: str, label: str) -> str:
    """The figure as an inline <svg>: no XML prolog, no namespaces or metadata naming other
    sites, ids prefixed so that several charts can share one page, size in CSS pixels."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"<!--.*?-->\s*", "", text, flags=re.S)
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)
    text = re.sub(r'\sid="([^"]+)"', rf' id="{name}-\1"', text)
    text = text.replace('xlink:href="#', f'xlink:href="#{name}-').replace("url(#", f"url(#{name}-")
    width_in, height_in = fig.get_size_inches()
    width_px = round(width_in * PX_PER_IN)  # float-ok: plotting (figure size to CSS pixels)
    height_px = round(height_in * PX_PER_IN)  # float-ok: plotting
    head_end = text.index(">")
    head = text[:head_end]
    viewbox = re.search(r'viewBox="([^"]+)"', head)
    assert viewbox is not None
    new_head = (f'<svg id="{name}" class="chart" width="{width_px}" height="{height_px}" '
                f'viewBox="{viewbox.group(1)}" role="img" aria-label="{html.escape(label)}"')
    text = new_head + text[head_end:]
    assert "http:" not in text and "https:" not in text
    return text.strip() + "\n"


def _date_axis(ax, lo: int, hi: int) -> None:
    from matplotlib import dates as mdates

    locator = mdates.AutoDateLocator(minticks=4, maxticks=10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz="UTC"))
    pad = (hi - lo) // 100
    ax.set_xlim(_x(lo - pad), _x(hi + pad))


def charts(period: Period) -> tuple[str, str | None, list[str]]:
    """(the margin chart, the price chart or None, the assets in the price chart)."""
    import matplotlib

    matplotlib.use("svg")
    from matplotlib import ticker
    from matplotlib.figure import Figure

    state = period.end
    scale = state.scale
    lo, hi = _x_range(period)
    with matplotlib.rc_context():
        matplotlib.rcdefaults()  # never a user's matplotlibrc: the same bytes on every machine
        matplotlib.rcParams.update(_RC)

        # Equity, IM and MM, one step per event.
        fig = Figure(figsize=(CHART_WIDTH_IN, MARGIN_HEIGHT_IN), dpi=72)
        fig.subplots_adjust(left=0.075, right=0.985, top=0.8, bottom=0.1)
        ax = fig.add_subplot(1, 1, 1)
        series: list[tuple[int, Figures]] = []
        if period.start_figures is not None:
            series.append((lo, period.start_figures))
        series += [(ts, f) for _seq, ts, f in period.points]
        if series:
            xs = [_x(ts) for ts, _ in series] + [_x(hi)]
            for key, label, style in (("equity", "equity (R6.4)", "-"), ("im", "initial margin (R6.5)", "-"),
                                      ("mm", "maintenance margin (R6.5)", "--")):
                ys = [_money(getattr(f, key), scale) for _, f in series]
                ys.append(ys[-1])
                ax.plot(xs, ys, drawstyle="steps-post", color=COLOURS[key], linestyle=style,
                        linewidth=1.8 if key == "equity" else 1.3, label=label)
        ax.axhline(0.0, color=COLOURS["zero"], linewidth=0.8)
        for kind in ("liquidation", "deleverage", "adl_counterparty", "bankruptcy"):  # bankruptcy on top
            marks = [m for m in period.markers if m.kind == kind]
            if not marks:
                continue
            symbol, label = MARKER_STYLE[kind]
            ax.plot([_x(m.ts_us) for m in marks], [_money(m.equity, scale) for m in marks],
                    linestyle="none", marker=symbol, markersize=10 if kind == "bankruptcy" else 7,
                    markeredgecolor="white" if kind == "bankruptcy" else COLOURS[kind],
                    color=COLOURS[kind], markerfacecolor="white" if kind == "adl_counterparty" else COLOURS[kind],
                    label=f"{label} ×{len(marks)}", zorder=5)
        for m in period.markers:
            if m.kind == "bankruptcy":
                ax.axvline(_x(m.ts_us), color=COLOURS["bankruptcy"], linewidth=0.8, linestyle=":")
        settlement = state.settlement or ""
        ax.set_title(f"{period.account}: equity, initial and maintenance margin ({settlement})", loc="left",
                     pad=40)
        ax.yaxis.set_major_formatter(ticker.StrMethodFormatter("{x:,.0f}"))
        _date_axis(ax, lo, hi)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=4, borderaxespad=0.2,
                      handlelength=2.2, columnspacing=1.4)
        if not series:
            ax.text(0.5, 0.5, "the account does not exist in this period", transform=ax.transAxes,
                    ha="center", va="center")
        margin_svg = _svg(fig, "chart-margin", f"equity, initial and maintenance margin of {period.account}")

        # Price path of the underlyings and collateral involved.
        assets = sorted({state.instruments[i].underlying for i in period.instruments_involved}
                        | {a for a in period.assets_involved if a != state.settlement})
        price_svg = None
        if assets:
            n = len(assets)
            fig = Figure(figsize=(CHART_WIDTH_IN, PRICE_BASE_IN + PRICE_PANEL_IN * n), dpi=72)
            top_in, bottom_in = 0.45, 0.4
            height_in = PRICE_BASE_IN + PRICE_PANEL_IN * n
            top = 1 - top_in / height_in  # float-ok: plotting (figure fractions)
            bottom = bottom_in / height_in  # float-ok: plotting
            fig.subplots_adjust(left=0.075, right=0.985, top=top, bottom=bottom, hspace=0.35)
            axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
            start_marks = period.start["marks"]
            for k, (asset, axp) in enumerate(zip(assets, axes)):
                decimals = state.assets[asset].price_decimals
                pts: list[tuple[int, int]] = []
                if asset in start_marks:
                    pts.append((lo, units_of(start_marks[asset], decimals)))
                pts += period.prices.get(asset, [])
                colour = COLOURS["price"][k % len(COLOURS["price"])]
                if pts:
                    xs = [_x(ts) for ts, _ in pts] + [_x(hi)]
                    ys = [_money(units, decimals) for _, units in pts]
                    ys.append(ys[-1])
                    axp.plot(xs, ys, drawstyle="steps-post", color=colour, linewidth=1.4)
                    first, last = pts[0][1], pts[-1][1]
                    axp.set_title(f"{asset} mark: {fmt_units(first, decimals)} → {fmt_units(last, decimals)}"
                                  f"  ({len(period.prices.get(asset, []))} price events)",
                                  loc="left", fontsize=9.0)
                else:
                    axp.set_title(f"{asset}: no mark in this period", loc="left", fontsize=9.0)
                for m in period.markers:
                    if m.kind in ("bankruptcy", "liquidation"):
                        axp.axvline(_x(m.ts_us), color=COLOURS[m.kind], linewidth=0.7, linestyle=":")
                places = 0 if not pts or max(u for _, u in pts) >= 1000 * 10**decimals else min(decimals, 4)
                axp.yaxis.set_major_formatter(ticker.StrMethodFormatter(f"{{x:,.{places}f}}"))
            _date_axis(axes[-1], lo, hi)
            price_svg = _svg(fig, "chart-prices", "price path of " + ", ".join(assets))
    return margin_svg, price_svg, assets


# --- the HTML ----------------------------------------------------------------------------------
CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f4f5f7; color: #1b1f24;
       font: 14px/1.45 "DejaVu Sans", "Liberation Sans", Arial, Helvetica, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 20px 24px 40px; }
header h1 { margin: 0 0 4px; font-size: 24px; }
header p { margin: 2px 0; color: #4a5360; }
section, footer { background: #fff; border: 1px solid #dde1e6; border-radius: 6px; margin: 18px 0;
                  padding: 14px 18px; }
h2 { font-size: 17px; margin: 0 0 10px; }
h3 { font-size: 14px; margin: 14px 0 6px; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin-top: 12px; }
.card { background: #fff; border: 1px solid #dde1e6; border-radius: 6px; padding: 8px 12px; min-width: 150px; }
.card b { display: block; font-size: 17px; font-variant-numeric: tabular-nums; }
.card span { color: #4a5360; font-size: 12px; }
.card.bad b { color: #b3141b; }
svg.chart { display: block; max-width: 100%; height: auto; }
table { border-collapse: collapse; width: 100%; font-size: 12.5px; }
th, td { border-bottom: 1px solid #e6e9ed; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f0f2f5; position: sticky; top: 0; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.ts, td.seq { white-space: nowrap; font-variant-numeric: tabular-nums; }
tr.decision td { background: #fff4e5; }
tr.liquidation td, tr.deleverage td { background: #ffedd5; }
tr.bankruptcy td { background: #fde2e2; font-weight: bold; }
tr.rejected td { background: #f3f0ff; }
tr.context td { color: #4a5360; font-style: italic; }
tr.involved td { font-weight: bold; }
.neg { color: #b3141b; }
pre { background: #f7f8fa; border: 1px solid #e6e9ed; border-radius: 4px; padding: 8px 10px; margin: 6px 0 12px;
      white-space: pre-wrap; font: 12px/1.4 "DejaVu Sans Mono", "Liberation Mono", monospace; }
code { font: 12px "DejaVu Sans Mono", "Liberation Mono", monospace; background: #f0f2f5; padding: 1px 4px;
       border-radius: 3px; word-break: break-all; }
.muted { color: #5b6572; font-size: 12.5px; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 4px 14px; margin: 0; }
dt { color: #4a5360; } dd { margin: 0; }
"""

_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src 'none'; "
        "base-uri 'none'; form-action 'none'")


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _num(units: int | None, scale: int) -> str:
    if units is None:
        return '<td class="n">–</td>'
    cls = "n neg" if units < 0 else "n"
    return f'<td class="{cls}">{_e(fmt_units(units, scale))}</td>'


def render(store: LogStore, period: Period) -> bytes:
    state = period.end
    scale = state.scale
    meta = store.meta()
    head_seq, head_us = store.head()
    account = period.account
    margin_svg, price_svg, price_assets = charts(period)
    explained, used_explain, left_out = explanations(store, period)
    lo, hi = _x_range(period)
    period_from = format_ts(period.from_us) if period.from_us is not None else "the start of the log"
    period_to = format_ts(period.to_us) if period.to_us is not None else "the head of the log"
    end_ts = format_ts(state.ts_us) if state.seq else None
    out: list[str] = []
    w = out.append
    w("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n")
    w(f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n')
    w('<meta name="viewport" content="width=device-width, initial-scale=1">\n')
    w(f"<title>Incident report: {_e(account)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n")

    # Header and summary cards.
    w('<header id="summary">\n')
    w(f"<h1>Incident report: account <code>{_e(account)}</code></h1>\n")
    w(f"<p>Ledger <b>{_e(meta.get('origin', ''))}</b>, rules <code>{_e(meta.get('rules', RULES))}</code>. "
      f"Period: events from {_e(period_from)} to {_e(period_to)} "
      f"(seq {period.start_seq + 1 if period.counts['events'] else '–'} to {state.seq}; "
      f"{period.counts['events']:,} events in the log, {len(period.rows):,} of them shown below).</p>\n")
    w("<p>All amounts are exact decimals (R1.1) in the settlement asset "
      f"<code>{_e(state.settlement or '')}</code>; the charts alone are drawn with binary floating "
      "point.</p>\n")
    start_eq = period.start_figures.equity if period.start_figures else None
    end_f = _figures(state, account)
    cards = [
        ("equity at the start", fmt_units(start_eq, scale) if start_eq is not None else "–", False),
        ("equity at the end", fmt_units(end_f.equity, scale) if end_f else "–",
         bool(end_f and end_f.equity < 0)),
    ]
    if period.min_equity is not None:
        cards.append((f"lowest equity (seq {period.min_equity[1]})", fmt_units(period.min_equity[0], scale),
                      period.min_equity[0] < 0))
    c = period.counts
    cards += [
        ("liquidations", str(c["liquidation"]), c["liquidation"] > 0),
        ("bankruptcies", str(c["bankruptcy"]), c["bankruptcy"] > 0),
        ("deleveraging steps", str(c["deleverage"] + c["adl_counterparty"]),
         c["deleverage"] + c["adl_counterparty"] > 0),
        ("rejected inputs", str(c["rejected"]), False),
        ("funding settlements", str(c["funding"]), False),
    ]
    w('<div class="cards">\n')
    for label, figure, bad in cards:
        w(f'<div class="card{" bad" if bad else ""}"><b>{_e(figure)}</b><span>{_e(label)}</span></div>\n')
    w("</div>\n</header>\n")

    # Charts.
    w('<section id="margin">\n<h2>Equity and margin requirements</h2>\n')
    w('<p class="muted">A step per event that changed the figures (R6.4, R6.5); the account is '
      "liquidatable below the maintenance margin (R6.7). Markers: the account's liquidations, "
      "bankruptcy and deleveraging steps, at the equity after each. Time in UTC.</p>\n")
    w(margin_svg)
    w("</section>\n")
    w('<section id="prices">\n<h2>Price path of the underlyings and collateral</h2>\n')
    if price_svg is not None:
        w(f'<p class="muted">Marks (R5.1) of {_e(", ".join(price_assets))}: the assets the account held '
          "as collateral and the underlyings of its positions in the period. Dotted lines: its "
          "liquidations and bankruptcy.</p>\n")
        w(price_svg)
    else:
        w('<p class="muted">The account held no position and no collateral asset in this period.</p>\n')
    w("</section>\n")

    # Parameters.
    involved_assets = set(price_assets) | {state.settlement}
    w('<section id="parameters">\n<h2>Parameters in force</h2>\n')
    w(f'<h3>At the start of the period (after seq {period.start_seq})</h3>\n')
    _params_tables(w, period.start, involved_assets, period.instruments_involved, "at the start of the period")
    w("<h3>Changes in the period (listing events, R4; a liquidation pass follows each, R4.4)</h3>\n")
    if not period.changes:
        w('<p class="muted">No listing event in the period.</p>\n')
    else:
        w('<table class="changes"><thead><tr><th>seq</th><th>ts</th><th>listing</th><th>change</th>'
          "</tr></thead><tbody>\n")
        for ch in period.changes:
            cls = ' class="involved"' if (ch.name in involved_assets or ch.name in period.instruments_involved) else ""
            if ch.before is None:
                what = "listed: " + ", ".join(f"{_PARAM_LABEL[k]} {v}" for k, v in ch.after.items())
            else:
                diffs = [f"{_PARAM_LABEL[k]} {ch.before[k]} → {v}" for k, v in ch.after.items() if ch.before[k] != v]
                what = ", ".join(diffs) or "re-listed unchanged"
            w(f"<tr{cls}><td class=\"seq\">{ch.seq}</td><td class=\"ts\">{_e(format_ts(ch.ts_us))}</td>"
              f"<td>{_e(ch.kind)} {_e(ch.name)}</td><td>{_e(what)}</td></tr>\n")
        w("</tbody></table>\n")
    if period.changes:
        w(f'<h3>At the end of the period (after seq {state.seq})</h3>\n')
        _params_tables(w, _params(state), involved_assets, period.instruments_involved, "at the end")
    w('<p class="muted">In bold: what the account was exposed to in the period.</p>\n')
    w("</section>\n")

    # Events.
    w('<section id="events">\n<h2>Events that touched the account</h2>\n')
    w('<p class="muted">Every event that moved the account\'s cash, balances or positions or that '
      "names it; in italics, the input that caused a decision for it. Figures after the event "
      "(R6): cash, equity, initial margin (IM) and maintenance margin (MM). Price moves are in "
      "the charts above.</p>\n")
    w('<table class="events"><thead><tr><th>seq</th><th>ts</th><th>type</th><th>summary</th>'
      '<th>cash</th><th>equity</th><th>IM</th><th>MM</th></tr></thead><tbody>\n')
    for row in period.rows:
        classes = [row.type] + (["decision"] if row.decision else []) + (["context"] if row.context else [])
        f = row.figures
        seq_cell = f'<a href="#explain-{row.seq}">{row.seq}</a>' if row.decision else str(row.seq)
        w(f'<tr class="{" ".join(classes)}" id="seq-{row.seq}"><td class="seq">{seq_cell}</td>'
          f'<td class="ts">{_e(format_ts(row.ts_us))}</td><td>{_e(row.type)}</td><td>{_e(row.summary)}</td>'
          + _num(f.cash if f else None, scale) + _num(f.equity if f else None, scale)
          + _num(f.im if f else None, scale) + _num(f.mm if f else None, scale) + "</tr>\n")
    w("</tbody></table>\n")
    if period.rows_omitted:
        w(f'<p class="muted">{period.rows_omitted:,} further rows left out (at most {MAX_ROWS:,}); '
          f"see <code>clearing replay --account {_e(account)}</code>.</p>\n")
    w("</section>\n")

    # Decisions.
    w('<section id="decisions">\n<h2>Decisions explained</h2>\n')
    if used_explain:
        w('<p class="muted">From <code>clearing explain SEQ</code>: the figures before and after and the '
          "rules applied, by number.</p>\n")
    else:
        w('<p class="muted">The recorded figures of each decision and the rules it applies '
          "(<code>clearing explain</code> was not available when this report was made).</p>\n")
    default_source = "clearing explain" if used_explain else "recorded figures (clearing explain is not available)"
    if not explained:
        w('<p class="muted">No decision concerned the account in this period.</p>\n')
    for row, lines, source in explained:
        w(f'<h3 id="explain-{row.seq}">seq {row.seq} · {_e(format_ts(row.ts_us))} · {_e(row.type)}</h3>\n')
        note = "" if source == default_source else f" <span>({_e(source)})</span>"
        w(f'<p class="muted">{_e(row.summary)}{note}</p>\n')
        w("<pre>" + _e("\n".join(lines)) + "</pre>\n")
    if left_out:
        w(f'<p class="muted">{left_out:,} further decisions left out (at most {MAX_EXPLAINED}).</p>\n')
    w("</section>\n")

    # Footer: log position and verification.
    from clearing.tlog import TLog
    from events import merkle

    tlog = TLog(store)
    latest = tlog.latest()
    at_end = tlog.at_size(state.seq) if state.seq else None
    root = statetree.state_root(state)
    log_root = merkle.root(state.seq, tlog.nodes) if state.seq else None
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    at = format_ts(period.to_us) if period.to_us is not None else end_ts
    key = meta.get("verifier_key", "")
    w('<footer id="verification">\n<h2>Log position and verification</h2>\n<dl>\n')
    w(f"<dt>end of the period</dt><dd>seq {state.seq}, ts {_e(end_ts or '–')}</dd>\n")
    w(f"<dt>head of the log</dt><dd>seq {head_seq}, ts {_e(format_ts(head_us) if head_seq else '–')}</dd>\n")
    if log_root is not None:
        w(f"<dt>log root at seq {state.seq}</dt><dd><code>{_e(b64(log_root))}</code> (RFC 9162)</dd>\n")
    w(f"<dt>state root at seq {state.seq}</dt><dd><code>{_e(b64(root))}</code> "
      f"(one leaf per account, interfaces §5)</dd>\n")
    if at_end is not None:
        same = "matches" if at_end.state_root == root else "DOES NOT MATCH"
        w(f"<dt>checkpoint at seq {state.seq}</dt><dd>signed; its state root {same} the one above</dd>\n")
    if latest is not None:
        w(f"<dt>latest checkpoint</dt><dd>tree size {latest.size}, root <code>{_e(b64(latest.root))}</code>, "
          f"state root <code>{_e(b64(latest.state_root))}</code><pre>{_e(latest.note)}</pre></dd>\n")
    else:
        w("<dt>latest checkpoint</dt><dd>none yet (<code>clearing checkpoint</code> signs one)</dd>\n")
    w(f"<dt>verifier key</dt><dd><code>{_e(key)}</code></dd>\n</dl>\n")
    w("<h3>How to verify</h3>\n")
    w("<p>Prove the account's state at the end of the period with the ledger (signs a checkpoint at "
      "that size if there is none), then check the proof offline with nothing but the verifier key:</p>\n")
    if at is not None:
        w(f"<pre>clearing prove --account {_e(account)} --at {_e(at)} -o proof.json\n"
          f"clearing verify proof.json --key {_e(key)}</pre>\n")
    w('<p class="muted">The proof\'s leaf holds the account\'s balances, positions, equity, IM and MM '
      f"at seq {state.seq}, which are the last figures of this report. Add <code>--store</code> as "
      "used for this report. Each decision above can be re-derived with "
      "<code>clearing explain SEQ</code>, and <code>clearing audit</code> re-checks the whole log.</p>\n")
    w("</footer>\n</main>\n</body>\n</html>\n")
    return "".join(out).encode()


def _params_tables(w, params: dict[str, Any], assets: set[str | None], instruments: set[str],
                   when: str) -> None:
    if not params["assets"]:
        w(f'<p class="muted">Nothing was listed yet {when}.</p>\n')
        return
    w('<table class="params"><thead><tr><th>asset</th><th>haircut (R4.2)</th><th>mark</th>'
      "<th>settlement</th></tr></thead><tbody>\n")
    for asset, info in params["assets"].items():
        cls = ' class="involved"' if asset in assets else ""
        w(f"<tr{cls}><td>{_e(asset)}</td><td>{_e(info['haircut'])}</td>"
          f"<td>{_e(params['marks'].get(asset, '1' if info['settlement'] else '–'))}</td>"
          f"<td>{'yes' if info['settlement'] else ''}</td></tr>\n")
    w("</tbody></table>\n")
    if params["instruments"]:
        w('<table class="params"><thead><tr><th>instrument</th><th>underlying</th><th>IMF (R4.3)</th>'
          "<th>MMF</th><th>LF</th></tr></thead><tbody>\n")
        for inst, info in params["instruments"].items():
            cls = ' class="involved"' if inst in instruments else ""
            w(f"<tr{cls}><td>{_e(inst)}</td><td>{_e(info['underlying'])}</td>"
              f"<td>{_e(info['initial_margin'])}</td><td>{_e(info['maintenance_margin'])}</td>"
              f"<td>{_e(info['liquidation_fee'])}</td></tr>\n")
        w("</tbody></table>\n")


def build_report(store: LogStore, account: str, from_ts: str | None, to_ts: str | None) -> bytes:
    """The report's bytes (the same store and arguments always give the same bytes)."""
    from_us = _parse(from_ts, "--from")
    to_us = _parse(to_ts, "--to")
    if from_us is not None and to_us is not None and from_us > to_us:
        raise StoreError("bad_period", f"--from {from_ts} is after --to {to_ts}")
    period = fold_period(store, account, from_us, to_us)
    if account not in period.end.accounts:
        raise StoreError("unknown_account",
                         f"account {account!r} does not exist at the end of the period (seq {period.end.seq})")
    return render(store, period)


_parse = app.instant


@click.command("report")
@click.option("--store", "store", envvar="CLEARING_STORE", default=None,
              help="SQLite file (default clearing.db) or postgresql://...; env CLEARING_STORE.")
@click.option("--account", required=True, help="The account the report is about.")
@click.option("--from", "from_ts", default=None, help="First instant of the period (RFC 3339, UTC).")
@click.option("--to", "to_ts", default=None, help="Last instant of the period (RFC 3339, UTC).")
@click.option("-o", "output", required=True, type=click.Path(allow_dash=True),
              help="The HTML file to write (`-` = standard output).")
def report(store: str | None, account: str, from_ts: str | None, to_ts: str | None, output: str) -> None:
    """Write a self-contained HTML incident report for one account (works offline)."""
    ledger = app.open_ledger(app.store_url(store))
    try:
        data = build_report(ledger, account, from_ts, to_ts)
    finally:
        ledger.close()
    if output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    try:
        with open(output, "wb") as f:
            f.write(data)
    except OSError as exc:
        raise StoreError("unwritable_file", f"{output}: {exc.strerror}") from exc
    click.echo(f"wrote the report of {account} to {output} ({len(data):,} bytes)", err=True)
