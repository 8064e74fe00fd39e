"""`clearing explain`: why an event had the effect it had, in words and figures, citing the
rulebook by number (interfaces §3).

Every figure is derived again from the rules, on the state the rules saw: the state before the
causing input (projections.history.state_at_seq: a snapshot plus at most one snapshot interval
of events, never the whole log), then the input and the recorded decisions before the one
explained, folded one by one. The input is also re-run through the engine
(``clearing.engine.process`` on a copy of that state) and each decision of the re-run is
compared, as canonical bytes, with the recorded one (R12.5): ``matches_recorded``.
Independently of that, the figures derived here are compared field by field with what the
decision recorded; any disagreement is listed in ``differences``.

Readings (rulebook preamble: written down where they are used):
- The trigger of an R10.3 close is the state when the pass visited the account (the first
  close of the run of closes of one handling); later closes of the same handling continue
  while equity < IM.
- R10.6 counterparties are read on the state right after the ``bankruptcy`` decision (R10.6
  starts after R10.4). Which accounts hold the opposite side of instrument i is read when i is
  handled; the steps on other instruments before it move no position in i, so the two reads
  agree.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from fractions import Fraction
from math import ceil
from typing import Any, Iterator

import click
import msgspec

from events import schema as s
from events.canonical import canonical
from events.numbers import fmt_units, units_of
from events.store import LogStore, StoreError
from projections.history import state_at_seq
from projections.state import INSURANCE, Account, LedgerState, clone_state, copy_value, is_system
from projections.valuation import (
    collateral_value, gross_notional, maintenance_contribution, margin_term, notional, value,
)

from clearing import app
from clearing.engine import process
from clearing.liquidation import smallest_k
from clearing.replay import Group, read_groups, summary, tag

__all__ = ["Explanation", "clone_state", "explain", "explain_command", "explain_input", "explain_log"]


# --- copies of the state ----------------------------------------------------------------------
# --- the result -------------------------------------------------------------------------------
@dataclass
class Explanation:
    seq: int
    ts: str
    type: str
    ref: str
    input_seq: int
    rules: list[str]
    figures: dict[str, Any]
    lines: list[str]
    matches_recorded: bool
    decisions: list[int]
    recorded: dict[str, Any]
    rerun: Any = None  # what the re-run gives at this seq, when it differs (None: it matches)
    differences: list[str] = field(default_factory=list)
    caused: list["Explanation"] = field(default_factory=list)  # with --id: the decisions

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "seq": self.seq,
            "ts": self.ts,
            "type": self.type,
            "ref": self.ref,
            "input_seq": self.input_seq,
            "rules": self.rules,
            "figures": self.figures,
            "explanation": self.lines,
            "matches_recorded": self.matches_recorded,
            "differences": self.differences,
            "decisions": self.decisions,
            "recorded": self.recorded,
            "rerun": self.rerun,
        }
        if self.caused:
            doc["caused"] = [c.as_json() for c in self.caused]
        return doc

    def text(self) -> str:
        head = f"seq {self.seq}  {self.type}"
        rule = self.recorded.get("rule")
        if self.type == "liquidation" and rule:
            head += f" ({rule})"
        head += f"  ts {self.ts}  ref {self.ref}"
        if self.input_seq != self.seq:
            head += f" (input seq {self.input_seq})"
        out = [head, "  rules: " + ", ".join(self.rules)]
        out += [f"  {line}" for line in self.lines]
        if self.matches_recorded:
            out.append("  R12.5: re-running the rules gives exactly the recorded event (canonical bytes equal).")
        else:
            out.append("  R12.5: re-running the rules does NOT give the recorded event:")
            out.append(f"    recorded: {msgspec.json.encode(self.recorded).decode()}")
            out.append(f"    re-run:   {msgspec.json.encode(self.rerun).decode()}")
        for diff in self.differences:
            out.append(f"  DIFFERENCE {diff}")
        text = "\n".join(out)
        for caused in self.caused:
            text += "\n\n" + caused.text()
        return text


def _rules(*numbers: str) -> list[str]:
    """Rule numbers, each once, in rulebook order."""
    def key(rule: str) -> tuple[int, ...]:
        return tuple(int(p) for p in rule[1:].split("."))
    return sorted(set(numbers), key=key)


def _exact(fr: Fraction) -> str:
    """An exact value: a finite decimal when it has one, else numerator/denominator."""
    num, den = fr.numerator, fr.denominator
    rest, twos, fives = den, 0, 0
    while rest % 2 == 0:
        rest, twos = rest // 2, twos + 1
    while rest % 5 == 0:
        rest, fives = rest // 5, fives + 1
    if rest != 1:
        return f"{num}/{den}"
    places = max(twos, fives)
    return fmt_units(num * 10**places // den, places)


def _approx(fr: Fraction, places: int = 6) -> str:
    """For reading only: rounded half up to ``places`` decimals (never used in a comparison)."""
    scaled = fr * 10**places
    return fmt_units((scaled.numerator * 2 + scaled.denominator) // (2 * scaled.denominator), places)


def _signed(amount: str) -> str:
    """A change, for reading: "+5999" or "-6000" (JSON keeps the R1.1 string)."""
    return amount if amount.startswith("-") or amount == "0" else "+" + amount


def _cmp(ok: bool) -> str:
    return "<=" if ok else ">"


# --- one input group, walked event by event ----------------------------------------------------
class _Walk:
    """Explains the events of one input group. ``state`` is the state before the input; the
    walk folds the recorded events into it as it goes (so it ends after the group)."""

    def __init__(self, state: LedgerState, group: Group) -> None:
        assert state.seq == group.inp.seq - 1, f"state at {state.seq} for input {group.inp.seq}"
        self.state = state
        self.group = group
        self.inp = group.inp
        listing = isinstance(group.inp, (s.Asset, s.Instrument))
        self.rerun = process(clone_state(state, listing), group.inp)  # R12.5: the rules again
        self.rerun_bytes = {d.seq: canonical(d) for d in self.rerun}
        self.recorded_bytes = {d.seq: p for d, p in zip(group.decisions, group.payloads[1:])}
        self.group_matches = [canonical(d) for d in self.rerun] == group.payloads[1:]
        self.prev: s.Decision | None = None
        self.trigger: dict[str, dict[str, Any]] = {}  # account -> its R10.3 handling's trigger
        self.bankruptcies: dict[str, dict[str, Any]] = {}  # account -> its latest bankruptcy
        self.plans: dict[str, dict[str, Any]] = {}  # account -> its R10.6 plan

    # formatting in the state's grids
    def money(self, minor: int) -> str:
        return fmt_units(minor, self.state.scale)

    def qty(self, instrument: str, units: int) -> str:
        return fmt_units(units, self.state.instruments[instrument].qty_decimals)

    def price(self, asset: str, units: int) -> str:
        return fmt_units(units, self.state.assets[asset].price_decimals)

    def amount(self, asset: str, units: int) -> str:
        return fmt_units(units, self.state.assets[asset].decimals)

    def run(self, wanted: set[int] | None = None, finish: bool = True) -> dict[int, Explanation]:
        """Explanations of the wanted seqs (all when None), in log order."""
        out: dict[int, Explanation] = {}
        state, group = self.state, self.group
        if wanted is None or self.inp.seq in wanted:
            pre = self._input_before()
            state.apply_input(self.inp, group.rejected)
            out[self.inp.seq] = self._input(pre)
        else:
            state.apply_input(self.inp, group.rejected)
        for index, dec in enumerate(group.decisions):
            if not finish and wanted is not None and wanted <= out.keys():
                break
            self._note_before(dec)
            if wanted is None or dec.seq in wanted:
                out[dec.seq] = self._decision(dec, index)
            state.apply_decision(dec)
            self._note_after(dec)
            self.prev = dec
        return out

    # --- bookkeeping along the group ---------------------------------------------------------
    def _note_before(self, dec: s.Decision) -> None:
        if type(dec) is s.Liquidation and dec.rule == "R10.3":
            prev = self.prev
            continuing = (
                type(prev) is s.Liquidation and prev.rule == "R10.3" and prev.account == dec.account
            )
            if not continuing:  # the pass visits the account: this state is the trigger
                v = value(self.state, self.state.accounts[dec.account])
                self.trigger[dec.account] = {
                    "seq": dec.seq,
                    "equity": self.money(v.equity),
                    "initial_margin": self.money(v.initial_margin),
                    "maintenance_margin": self.money(v.maintenance_margin),
                }

    def _note_after(self, dec: s.Decision) -> None:
        if type(dec) is s.Bankruptcy:
            self.bankruptcies[dec.account] = {
                "seq": dec.seq, "deficit": dec.deficit, "cover": dec.cover, "remainder": dec.remainder,
            }
            remainder = units_of(dec.remainder, self.state.scale)
            if remainder > 0 and self.state.accounts[dec.account].positions:
                self.plans[dec.account] = self._plan(dec.account, remainder, dec.seq)

    def _explanation(self, event: s.Event, rules: list[str], figures: dict[str, Any],
                     lines: list[str], decisions: list[int], differences: list[str]) -> Explanation:
        seq = event.seq
        if event is self.inp:
            payload = self.group.payloads[0]
            matches = self.group_matches
            rerun = None
            if not matches:
                rerun = [msgspec.json.decode(canonical(d)) for d in self.rerun]
                seqs = sorted(set(self.recorded_bytes) | set(self.rerun_bytes))
                first = next(x for x in seqs if self.recorded_bytes.get(x) != self.rerun_bytes.get(x))
                differences = differences + [
                    f"decisions: recorded {len(self.group.decisions)}, the re-run gives "
                    f"{len(self.rerun)}; the first difference is at seq {first}"
                ]
        else:
            payload = self.recorded_bytes[seq]
            again = self.rerun_bytes.get(seq)
            matches = again == payload
            rerun = None if matches else (msgspec.json.decode(again) if again is not None else None)
        return Explanation(
            seq=seq,
            ts=event.ts,
            type=tag(event),
            ref=getattr(event, "ref", None) or self.inp.id,
            input_seq=self.inp.seq,
            rules=rules,
            figures=figures,
            lines=lines,
            matches_recorded=matches,
            decisions=decisions,
            recorded=msgspec.json.decode(payload),
            rerun=rerun,
            differences=differences,
        )

    # --- inputs ----------------------------------------------------------------------------------
    def _input_before(self) -> dict[str, Any]:
        """What an input's explanation needs from the state before it."""
        state, inp = self.state, self.inp
        pre: dict[str, Any] = {"exists": {}, "holdings": {}}
        for account_id in _accounts_of(inp):
            acct = state.accounts.get(account_id)
            pre["exists"][account_id] = acct is not None
            if acct is not None:
                pre["holdings"][account_id] = copy_value(acct)
        if isinstance(inp, s.Withdrawal):
            pre["check"] = _outflow_check(state, inp.account, inp.asset, inp.amount, "R7.2")
        elif isinstance(inp, s.Transfer):
            pre["check"] = _outflow_check(state, inp.from_, inp.asset, inp.amount, "R7.3")
        elif isinstance(inp, s.Trade):
            pre["check"] = _trade_check(state, inp)
        elif isinstance(inp, s.Price):
            pre["mark"] = state.marks.get(inp.asset)
        elif isinstance(inp, s.Asset):
            known = state.assets.get(inp.asset)
            pre["haircut"] = known.haircut if known is not None else None
        elif isinstance(inp, s.Instrument):
            known = state.instruments.get(inp.instrument)
            pre["params"] = (
                (known.initial_margin, known.maintenance_margin, known.liquidation_fee) if known else None
            )
        return pre

    def _input(self, pre: dict[str, Any]) -> Explanation:
        inp, group = self.inp, self.group
        lines: list[str] = []
        figures: dict[str, Any] = {}
        rules: list[str] = []
        differences: list[str] = []
        handler = {
            s.Asset: self._asset, s.Instrument: self._instrument, s.Price: self._price,
            s.Deposit: self._deposit, s.Withdrawal: self._outflow, s.Transfer: self._outflow,
            s.Trade: self._trade, s.Funding: self._funding,
        }[type(inp)]
        handler(pre, lines, figures, rules, differences)
        if group.rejected:
            rejection = next(d for d in group.decisions if type(d) is s.Rejected)
            rules += ["R3.5"]
            lines.append(
                f"R3.5: recorded with its rejection (seq {rejection.seq}: {rejection.reason}, "
                f"{rejection.rule}); it changed no balance or position."
            )
        if group.decisions:
            rules.append("R3.6")
            lines.append(f"R3.6: recorded with {len(group.decisions)} decision(s) in the same append:")
            lines += [f"  seq {d.seq} {tag(d)}: {summary(d)}" for d in group.decisions]
        else:
            lines.append("R3.6: it caused no decision.")
        figures["decisions"] = [{"seq": d.seq, "type": tag(d), "summary": summary(d)} for d in group.decisions]
        return self._explanation(inp, _rules(*rules), figures, lines,
                                 [d.seq for d in group.decisions], differences)

    def _pass_line(self, lines: list[str], rules: list[str], why: str) -> None:
        """R10.1: the accounts the pass handled, with their figures before it."""
        rules += ["R10.1"]
        handled = list(dict.fromkeys(
            d.account for d in self.group.decisions if type(d) in (s.Liquidation, s.Bankruptcy)
        ))
        if not handled:
            lines.append(f"R10.1: the liquidation pass ran {why}; no account was liquidatable.")
            return
        lines.append(f"R10.1: the liquidation pass ran {why} and handled, in this order:")
        for account_id in handled:
            v = value(self.state, self.state.accounts[account_id])
            where = "bankrupt (R10.2)" if v.equity < 0 else "liquidatable (R6.7)"
            lines.append(
                f"  {account_id}: equity {self.money(v.equity)}, MM {self.money(v.maintenance_margin)} "
                f"after this input: {where}" if v.equity < v.maintenance_margin else
                f"  {account_id}: equity {self.money(v.equity)} >= MM {self.money(v.maintenance_margin)} "
                f"after this input; liquidatable only after an earlier handling in the pass (R10.6 payment)"
            )

    def _asset(self, pre, lines, figures, rules, differences) -> None:
        inp: s.Asset = self.inp  # type: ignore[assignment]
        figures.update(asset=inp.asset, decimals=inp.decimals, price_decimals=inp.price_decimals,
                       haircut=inp.haircut, settlement=inp.settlement, haircut_before=pre["haircut"])
        if pre["haircut"] is None:
            rules += ["R4.1", "R4.2"]
            if inp.settlement:
                lines.append(
                    f"R4.1: lists {inp.asset} as the settlement asset: fixed price 1, haircut 0; "
                    f"R1.2: S = {inp.decimals}, every money figure is a multiple of 10^-{inp.decimals}."
                )
            else:
                lines.append(
                    f"R4.2: lists {inp.asset}: balances on 10^-{inp.decimals}, prices on "
                    f"10^-{inp.price_decimals}, haircut {inp.haircut} (R6.2: collateral counts "
                    f"floor(b × mark × (1 − {inp.haircut})))."
                )
        else:
            rules += ["R4.2"]
            lines.append(
                f"R4.2: re-lists {inp.asset}; only the haircut changes: {pre['haircut']} -> {inp.haircut}."
            )
        rules += ["R4.4"]
        self._pass_line(lines, rules, "after the listing (R4.4)")

    def _instrument(self, pre, lines, figures, rules, differences) -> None:
        inp: s.Instrument = self.inp  # type: ignore[assignment]
        figures.update(instrument=inp.instrument, underlying=inp.underlying, qty_decimals=inp.qty_decimals,
                       initial_margin=inp.initial_margin, maintenance_margin=inp.maintenance_margin,
                       liquidation_fee=inp.liquidation_fee)
        rules += ["R4.3", "R4.4"]
        if pre["params"] is None:
            lines.append(
                f"R4.3: lists the perpetual {inp.instrument} on {inp.underlying} (unit "
                f"10^-{inp.qty_decimals}): IMF {inp.initial_margin}, MMF {inp.maintenance_margin}, "
                f"LF {inp.liquidation_fee}."
            )
        else:
            before = pre["params"]
            figures["before"] = {"initial_margin": before[0], "maintenance_margin": before[1],
                                 "liquidation_fee": before[2]}
            lines.append(
                f"R4.3: re-lists {inp.instrument}: IMF {before[0]} -> {inp.initial_margin}, "
                f"MMF {before[1]} -> {inp.maintenance_margin}, LF {before[2]} -> {inp.liquidation_fee}."
            )
        self._pass_line(lines, rules, "after the listing (R4.4)")

    def _price(self, pre, lines, figures, rules, differences) -> None:
        inp: s.Price = self.inp  # type: ignore[assignment]
        before = pre["mark"]
        on_it = self.state.by_underlying.get(inp.asset, [])
        figures.update(asset=inp.asset, mark=inp.price,
                       mark_before=self.price(inp.asset, before) if before is not None else None,
                       instruments=list(on_it))
        rules += ["R5.1", "R5.3"]
        was = self.price(inp.asset, before) if before is not None else "no mark (R5.2: counted 0)"
        lines.append(
            f"R5.1: the mark of {inp.asset} moves from {was} to {inp.price}; it is the mark of "
            f"{', '.join(on_it) or 'no instrument'} and values {inp.asset} collateral (R6.2)."
        )
        self._pass_line(lines, rules, "after the price (R5.3)")

    def _deposit(self, pre, lines, figures, rules, differences) -> None:
        inp: s.Deposit = self.inp  # type: ignore[assignment]
        rules += ["R7.1"]
        new = not pre["exists"][inp.account]
        lines.append(
            f"R7.1: moves {inp.amount} {inp.asset} from @external to {inp.account}; never rejected "
            "once well formed."
        )
        if new:
            rules += ["R2.3"]
            lines.append(f"R2.3: {inp.account} exists from this first deposit.")
        figures.update(account=inp.account, asset=inp.asset, amount=inp.amount, created=new,
                       **self._balance_change(inp.account, inp.asset, pre))

    def _balance_change(self, account_id: str, asset: str, pre: dict[str, Any]) -> dict[str, Any]:
        before = pre["holdings"].get(account_id)
        after = self.state.accounts.get(account_id)

        def held(acct: Account | None) -> int:
            if acct is None:
                return 0
            return acct.cash if asset == self.state.settlement else acct.balances.get(asset, 0)

        out: dict[str, Any] = {
            "balance_before": self.amount(asset, held(before)),
            "balance_after": self.amount(asset, held(after)),
        }
        if after is not None:
            v = value(self.state, after)
            out["equity_after"] = self.money(v.equity)
            out["initial_margin_after"] = self.money(v.initial_margin)
        return out

    def _outflow(self, pre, lines, figures, rules, differences) -> None:
        inp = self.inp
        check = pre["check"]
        if isinstance(inp, s.Withdrawal):
            rule, source, asset, amount = "R7.2", inp.account, inp.asset, inp.amount
            lines.append(f"R7.2: {source} asks to withdraw {amount} {asset} to @external.")
        else:
            assert isinstance(inp, s.Transfer)
            rule, source, asset, amount = "R7.3", inp.from_, inp.asset, inp.amount
            lines.append(
                f"R7.3: {source} asks to transfer {amount} {asset} to {inp.to} (checked as a withdrawal)."
            )
        rules += [rule]
        figures.update(account=source, asset=asset, amount=amount, checks=check["checks"],
                       reason=check["reason"])
        lines += _check_lines(check)
        rules += [c["rule"] for c in check["checks"]]
        if check["reason"] is None:
            lines.append(f"{rule}: every check passes: the amount moves.")
            figures.update(self._balance_change(source, asset, pre))
            if isinstance(inp, s.Transfer):
                created = not pre["exists"].get(inp.to, False)
                figures["created"] = created
                if created:
                    rules += ["R2.3"]
                    lines.append(f"R2.3: {inp.to} exists from this first accepted incoming transfer.")
            lines.append(
                "R12.4: a withdrawal or transfer that keeps equity >= IM cannot make an account liquidatable."
            )
        self._agree(check, differences)

    def _agree(self, check: dict[str, Any], differences: list[str]) -> None:
        """The derived verdict against the recorded one (a rejection, or none)."""
        rejection = next((d for d in self.group.decisions if type(d) is s.Rejected), None)
        recorded = rejection.reason if rejection is not None else None
        if recorded != check["reason"]:
            differences.append(
                f"verdict: recorded {recorded or 'accepted'}, derived {check['reason'] or 'accepted'}"
            )

    def _trade(self, pre, lines, figures, rules, differences) -> None:
        inp: s.Trade = self.inp  # type: ignore[assignment]
        check = pre["check"]
        rules += ["R8.1", "R8.2"]
        lines.append(
            f"R8.1: {inp.buyer} buys {inp.qty} {inp.instrument} from {inp.seller} at {inp.price}; "
            f"fees {inp.buyer_fee} (buyer), {inp.seller_fee} (seller)."
        )
        margin_checks = [c for c in check["checks"] if c["check"] == "margin"]
        lines += [_check_text(c) for c in check["checks"] if c["check"] != "margin"]
        rules += [c["rule"] for c in check["checks"]]
        figures.update(instrument=inp.instrument, qty=inp.qty, price=inp.price, reason=check["reason"],
                       checks=check["checks"], parties=check["parties"])
        if check["parties"]:
            rules += ["R8.3"]
            done = "" if check["reason"] is None else " (had it been accepted)"
            for party in check["parties"]:
                lines.append(
                    f"R8.3{done}: {party['account']}: position {party['position_before']} -> "
                    f"{party['position_after']}, cash {_signed(party['cash_change'])} "
                    f"({party['side']} {inp.qty} × {inp.price} = {check['notional']}, fee {party['fee']})."
                )
            total_fees = units_of(inp.buyer_fee, self.state.scale) + units_of(inp.seller_fee, self.state.scale)
            lines.append(f"R8.3{done}: @fees cash +{self.money(total_fees)}.")
            figures["fees_to_fees_account"] = self.money(total_fees)
            for party in check["parties"]:
                if "margin_check" in party:
                    lines.append(f"R8.4: {party['account']}: {party['margin_check']}.")
            lines += [_check_text(c) for c in margin_checks]
        if check["reason"] is None:
            for party in check["parties"]:  # the actual state after the trade, for the record
                acct = self.state.accounts[party["account"]]
                v = value(self.state, acct)
                if not is_system(party["account"]) and "equity_after" in party:
                    if party["equity_after"] != self.money(v.equity):
                        differences.append(
                            f"{party['account']} equity after: derived {party['equity_after']}, "
                            f"folded {self.money(v.equity)}"
                        )
            self._pass_line(lines, rules, "after the accepted trade, over buyer and seller")
        self._agree(check, differences)

    def _funding(self, pre, lines, figures, rules, differences) -> None:
        inp: s.Funding = self.inp  # type: ignore[assignment]
        info = self.state.instruments[inp.instrument]
        mark = self.state.marks.get(info.underlying)
        rules += ["R9.1", "R9.3"]
        holders = sorted(self.state.holders.get(inp.instrument, ()))
        figures.update(instrument=inp.instrument, rate=inp.rate,
                       mark=self.price(info.underlying, mark) if mark is not None else None,
                       holders=len(holders))
        settled = [d.seq for d in self.group.decisions if type(d) is s.FundingSettled]
        lines.append(
            f"R9.1: funding of {inp.instrument} at rate {inp.rate} on the mark "
            f"{figures['mark']} for its {len(holders)} holders; R3.6: the payments belong to "
            f"funding_settled (seq {', '.join(map(str, settled)) or 'none'})."
        )
        self._pass_line(lines, rules, "after the funding (R9.3)")

    # --- decisions --------------------------------------------------------------------------------
    def _decision(self, dec: s.Decision, index: int) -> Explanation:
        handler = {
            s.Rejected: self._rejected, s.Liquidation: self._liquidation, s.Bankruptcy: self._bankruptcy,
            s.Deleverage: self._deleverage, s.FundingSettled: self._funding_settled,
        }[type(dec)]
        return handler(dec, index)

    def _rejected(self, dec: s.Rejected, index: int) -> Explanation:
        inp, state = self.inp, self.state  # the rejected input changed nothing (R3.5)
        if isinstance(inp, s.Withdrawal):
            check = _outflow_check(state, inp.account, inp.asset, inp.amount, "R7.2")
        elif isinstance(inp, s.Transfer):
            check = _outflow_check(state, inp.from_, inp.asset, inp.amount, "R7.3")
        elif isinstance(inp, s.Trade):
            check = _trade_check(state, inp)
        else:  # only R7 and R8 inputs can be rejected
            check = {"reason": None, "account": "", "rule": "", "checks": [], "figures": {}}
        lines = [
            f"R3.5: input seq {inp.seq} ({tag(inp)} {inp.id}: {summary(inp)}) is well formed but the "
            f"rules do not allow it: recorded with this rejection, it changes no balance or position."
        ]
        failed = [c for c in check["checks"] if not c["passes"]]
        passed = [c for c in check["checks"] if c["passes"]]
        if passed:
            lines.append("First matching reason wins; these checks passed first:")
            lines += [f"  {_check_text(c)}" for c in passed]
        if failed:
            lines.append("The check that failed:")
            lines += [f"  {_check_text(failed[0])}"]
        rules = _rules("R3.5", dec.rule, *(c["rule"] for c in check["checks"]))
        differences: list[str] = []
        derived = {"reason": check["reason"], "account": check["account"], "rule": check["rule"]}
        for key, val in derived.items():
            if getattr(dec, key) != val:
                differences.append(f"{key}: recorded {getattr(dec, key)!r}, derived {val!r}")
        for key, val in dec.figures.items():
            if check["figures"].get(key) != val:
                differences.append(f"figures.{key}: recorded {val}, derived {check['figures'].get(key)}")
        figures = {"reason": check["reason"], "account": check["account"], "rule": check["rule"],
                   "checks": check["checks"], "failed": failed[0] if failed else None}
        figures.update(check.get("headline", {}))
        return self._explanation(dec, rules, figures, lines, [], differences)

    def _liquidation(self, dec: s.Liquidation, index: int) -> Explanation:
        if dec.rule == "R10.5":
            return self._take_over(dec)
        state = self.state
        acct = state.accounts[dec.account]
        v = value(state, acct)
        money = self.money
        trigger = self.trigger[dec.account]
        lines: list[str] = []
        if trigger["seq"] == dec.seq:
            lines.append(
                f"R6.7, R10.1: when the pass visited {dec.account}, equity {trigger['equity']} < "
                f"MM {trigger['maintenance_margin']}: liquidatable."
            )
        else:
            lines.append(
                f"R10.3: continues the handling of {dec.account} that began at seq {trigger['seq']} "
                f"(equity {trigger['equity']} < MM {trigger['maintenance_margin']} then): after the "
                f"previous close equity {money(v.equity)} is still below IM {money(v.initial_margin)}."
            )
        lines.append(f"R10.2: equity {money(v.equity)} >= 0: solvent, so R10.3 closes part of it.")
        # The position with the largest rounded maintenance contribution; ties by instrument id.
        contributions = []
        for instrument in sorted(acct.positions):
            info = state.instruments[instrument]
            mark = state.marks[info.underlying]
            q = acct.positions[instrument]
            contributions.append({
                "instrument": instrument,
                "position": self.qty(instrument, q),
                "mark": self.price(info.underlying, mark),
                "notional": money(notional(info, q, mark)),
                "maintenance_margin_fraction": info.maintenance_margin,
                "contribution": margin_term(notional(info, q, mark), info.mmf_num, info.mmf_den),
            })
        contributions.sort(key=lambda c: (-c["contribution"], c["instrument"]))
        chosen = contributions[0]["instrument"]
        lines.append(
            "R10.3: the position with the largest maintenance contribution ceil(|q| × mark × MMF) "
            "(rounded, ties by instrument id):"
        )
        for c in contributions:
            lines.append(
                f"  {c['instrument']}: |{c['position']}| × {c['mark']} × {c['maintenance_margin_fraction']}"
                f" -> {money(c['contribution'])}{'   <- chosen' if c['instrument'] == chosen else ''}"
            )
        for c in contributions:
            c["contribution"] = money(c["contribution"])
        info = state.instruments[chosen]
        mark = state.marks[info.underlying]
        q = acct.positions[chosen]
        big_q = abs(q)
        unit_value = mark * info.notional_scale  # one unit at mark, in minor units
        x = Fraction(unit_value * info.lf_num, info.lf_den)
        y = Fraction(unit_value * info.imf_num, info.imf_den)
        im_this = margin_term(big_q * unit_value, info.imf_num, info.imf_den)
        mm_this = margin_term(big_q * unit_value, info.mmf_num, info.mmf_den)
        a = v.equity - (v.initial_margin - im_this)
        p = max(0, v.equity)

        def lhs(k: int) -> tuple[int, int, int]:
            penalty_part = min(ceil(k * x), p)
            margin_part = ceil((big_q - k) * y)
            return penalty_part, margin_part, penalty_part + margin_part

        unit = fmt_units(1, info.qty_decimals)
        lines.append(
            f"R10.3: unit {unit}, Q = |q| / unit = {big_q}; in minor units (10^-{state.scale}): "
            f"x = unit × mark × LF = {unit} × {self.price(info.underlying, mark)} × {info.liquidation_fee} "
            f"= {_exact(x)}, y = unit × mark × IMF = {_exact(y)}, "
            f"A = equity − IM of the other positions = {v.equity} − {v.initial_margin - im_this} = {a}, "
            f"P = max(0, equity) = {p}."
        )
        found = smallest_k(big_q, x, y, a, p)
        k = big_q if found is None else found
        condition = "min(ceil(k·x), P) + ceil((Q − k)·y) <= A"
        evaluations = []
        # At k and at k − 1 (k − 1 fails: k is the smallest); when none holds, at Q.
        for kk in ([k, k - 1] if k > 1 and found is not None else [k]):
            pen, mar, total = lhs(kk)
            evaluations.append({"k": kk, "penalty_part_minor": str(pen), "margin_part_minor": str(mar),
                                "left_minor": str(total), "holds": total <= a})
        if found is not None:
            lines.append(
                f"R10.3: k = {k} is the smallest k in 1..{big_q} with {condition} (the window of "
                f"R10.3 checked exactly, then the capped part; never a bisection):"
            )
        else:
            lines.append(f"R10.3: no k in 1..{big_q} satisfies {condition}, so the whole position closes:")
        for e in evaluations:
            lines.append(
                f"  k = {e['k']}: min(ceil({e['k']}·x), P) + ceil(({big_q} − {e['k']})·y) = "
                f"{e['penalty_part_minor']} + {e['margin_part_minor']} = {e['left_minor']} "
                f"{_cmp(e['holds'])} A = {a}: {'holds' if e['holds'] else 'fails'}"
            )
        uncapped = ceil(k * x)
        penalty = min(uncapped, p)
        capped = uncapped > p
        after = q - k if q > 0 else q + k
        rest = abs(after) * unit_value
        equity_after = v.equity - penalty
        im_after = v.initial_margin - im_this + margin_term(rest, info.imf_num, info.imf_den)
        mm_after = v.maintenance_margin - mm_this + margin_term(rest, info.mmf_num, info.mmf_den)
        lines.append(
            f"R10.3: {self.qty(chosen, k)} ({k} units) move at the mark {self.price(info.underlying, mark)} "
            f"to @insurance: {chosen} {self.qty(chosen, q)} -> {self.qty(chosen, after)} "
            "(equity unchanged by the move)."
        )
        lines.append(
            f"R10.3: penalty = min(ceil(k × unit × mark × LF), max(0, equity)) = min({money(uncapped)}, "
            f"{money(p)}) = {money(penalty)} to @insurance; "
            + ("the cap applied: the penalty is limited to the equity before the close."
               if capped else "below the cap.")
        )
        restored = equity_after >= im_after
        lines.append(
            f"After: equity {money(equity_after)} {'>=' if restored else '<'} IM {money(im_after)}"
            f" (MM {money(mm_after)}): "
            + ("initial margin restored." if restored else
               ("no position left." if not acct.positions.keys() - {chosen} and after == 0 else
                "still below IM: R10.3 goes on with the position chosen afresh."))
        )
        derived = {
            "instrument": chosen, "price": self.price(info.underlying, mark), "qty": self.qty(chosen, k),
            "k": k, "position_before": self.qty(chosen, q), "position_after": self.qty(chosen, after),
            "penalty": money(penalty), "penalty_uncapped": money(uncapped),
            "equity_before": money(v.equity), "initial_margin_before": money(v.initial_margin),
            "maintenance_margin_before": money(v.maintenance_margin), "equity_after": money(equity_after),
            "initial_margin_after": money(im_after), "maintenance_margin_after": money(mm_after),
        }
        figures = {
            "account": dec.account,
            "trigger": trigger,
            "continuing": trigger["seq"] != dec.seq,
            "equity": money(v.equity),
            "initial_margin": money(v.initial_margin),
            "maintenance_margin": money(v.maintenance_margin),
            "contributions": contributions,
            "chosen": chosen,
            "unit": unit,
            "Q": big_q,
            "x_minor": _exact(x),
            "y_minor": _exact(y),
            "A_minor": str(a),
            "P_minor": str(p),
            "k": k,
            "whole_position": k == big_q,
            "none_restores": found is None,
            "condition": condition,
            "evaluations": evaluations,
            "penalty_uncapped": money(uncapped),
            "penalty": money(penalty),
            "cap_applied": capped,
            "position_after": self.qty(chosen, after),
            "equity_after": money(equity_after),
            "initial_margin_after": money(im_after),
            "maintenance_margin_after": money(mm_after),
        }
        rules = _rules("R1.3", "R6.5", "R6.7", "R10.1", "R10.2", "R10.3")
        return self._explanation(dec, rules, figures, lines, [], _compare(dec, derived))

    def _take_over(self, dec: s.Liquidation) -> Explanation:
        state, money = self.state, self.money
        acct = state.accounts[dec.account]
        v = value(state, acct)
        bankrupt = self.bankruptcies.get(dec.account, {})
        info = state.instruments[dec.instrument]
        mark = state.marks[info.underlying]
        q = acct.positions.get(dec.instrument, 0)
        n = notional(info, q, mark)
        lines = [
            f"R10.4: {dec.account} went bankrupt at seq {bankrupt.get('seq')}: deficit D "
            f"{bankrupt.get('deficit')}, cover C {bankrupt.get('cover')} from the insurance fund, "
            f"remainder R = D − C = {bankrupt.get('remainder')}.",
            "R10.5: R = 0, so every position moves at mark to @insurance, with no penalty.",
            f"R10.5: {dec.instrument} {self.qty(dec.instrument, q)} at the mark "
            f"{self.price(info.underlying, mark)} (notional {money(n)}) -> 0; the account's cash changes "
            f"by the position's value, so its equity {money(v.equity)} is unchanged.",
        ]
        derived = {
            "instrument": dec.instrument, "price": self.price(info.underlying, mark),
            "qty": self.qty(dec.instrument, abs(q)), "k": abs(q), "position_before": self.qty(dec.instrument, q),
            "position_after": "0", "penalty": "0", "penalty_uncapped": "0", "equity_before": money(v.equity),
            "equity_after": money(v.equity), "initial_margin_before": money(v.initial_margin),
            "maintenance_margin_before": money(v.maintenance_margin),
            "initial_margin_after": money(v.initial_margin - margin_term(n, info.imf_num, info.imf_den)),
            "maintenance_margin_after": money(v.maintenance_margin - margin_term(n, info.mmf_num, info.mmf_den)),
        }
        differences = _compare(dec, derived)
        if bankrupt.get("remainder") not in ("0", None):
            differences.append(f"R10.5 after a bankruptcy with R = {bankrupt.get('remainder')} > 0")
        figures = {"account": dec.account, "bankruptcy": bankrupt, "instrument": dec.instrument,
                   "position": self.qty(dec.instrument, q), "mark": self.price(info.underlying, mark),
                   "notional": money(n), "penalty": "0", "equity": money(v.equity)}
        return self._explanation(dec, _rules("R10.4", "R10.5", "R10.7"), figures, lines, [], differences)

    def _bankruptcy(self, dec: s.Bankruptcy, index: int) -> Explanation:
        state, money = self.state, self.money
        acct = state.accounts[dec.account]
        v = value(state, acct)
        deficit = -v.equity
        fund = state.accounts[INSURANCE].cash
        cover = min(deficit, max(0, fund))
        remainder = deficit - cover
        seized = []
        for asset in sorted(acct.balances):
            units = acct.balances[asset]
            if units <= 0:
                continue
            a_info = state.assets[asset]
            mark = state.marks.get(asset)
            seized.append({
                "asset": asset,
                "amount": self.amount(asset, units),
                "price": self.price(asset, mark) if mark is not None else "0",
                "haircut": a_info.haircut,
                "value": money(collateral_value(state, asset, units)),
            })
        residual = remainder if remainder > 0 and not acct.positions else 0
        following = []
        for later in self.group.decisions[index + 1:]:
            if later.account != dec.account or not (
                (type(later) is s.Liquidation and later.rule == "R10.5") or type(later) is s.Deleverage
            ):
                break
            following.append(later.seq)
        lines = [
            f"R6.7: equity {money(v.equity)} < MM {money(v.maintenance_margin)}: liquidatable; "
            f"R10.2: equity < 0: bankrupt.",
            f"R10.4: deficit D = −equity = {money(deficit)}; insurance fund F = cash of @insurance = "
            f"{money(fund)}; cover C = min(D, max(0, F)) = {money(cover)}; remainder R = D − C = "
            f"{money(remainder)}.",
        ]
        if seized:
            lines.append("R10.4: collateral seized by @insurance, paid at floor(b × mark × (1 − haircut)) "
                         "(0 without a mark, R5.2); equity unchanged:")
            lines += [f"  {x['asset']} {x['amount']} × {x['price']} × (1 − {x['haircut']}) -> {x['value']}"
                      for x in seized]
        else:
            lines.append("R10.4: no collateral to seize.")
        lines.append(f"R10.4: @insurance moves C = {money(cover)} to {dec.account}'s cash.")
        rules = ["R6.7", "R10.2", "R10.4", "R10.7"]
        if remainder == 0:
            rules.append("R10.5")
            seqs = ", ".join(map(str, following)) or "none"
            lines.append(f"R10.5: R = 0: every position moves at mark to @insurance (seq {seqs}).")
        elif residual:
            rules.append("R10.6")
            lines.append(f"R10.6: R > 0 and no position: @insurance alone pays R = {money(residual)} "
                         "(its cash may go negative); no other decision.")
        else:
            rules.append("R10.6")
            lines.append(f"R10.6: R > 0: auto-deleveraging against the counterparties (seq "
                         f"{', '.join(map(str, following))}).")
        lines.append("The account ends with no positions, no collateral and cash 0.")
        derived = {
            "equity": money(v.equity), "maintenance_margin": money(v.maintenance_margin),
            "deficit": money(deficit), "insurance_fund": money(fund), "cover": money(cover),
            "remainder": money(remainder), "residual": money(residual),
        }
        differences = _compare(dec, derived)
        recorded_seized = [{"asset": x.asset, "amount": x.amount, "price": x.price, "value": x.value}
                           for x in dec.seized]
        if recorded_seized != [{k: x[k] for k in ("asset", "amount", "price", "value")} for x in seized]:
            differences.append(f"seized: recorded {recorded_seized}, derived {seized}")
        figures = {"account": dec.account, **{k: v2 for k, v2 in derived.items()},
                   "D": money(deficit), "F": money(fund), "C": money(cover), "R": money(remainder),
                   "seized": seized, "next": "R10.5" if remainder == 0 else "R10.6"}
        return self._explanation(dec, _rules(*rules), figures, lines, following, differences)

    def _plan(self, account_id: str, remainder: int, bankruptcy_seq: int) -> dict[str, Any]:
        """R10.6 on the state as it starts (after R10.4): shares, rankings and steps."""
        state, money = self.state, self.money
        acct = state.accounts[account_id]
        instruments = sorted(acct.positions)
        m = {i: maintenance_contribution(state, i, acct.positions[i]) for i in instruments}
        total_m = sum(m.values())
        base = {i: remainder * m[i] // total_m for i in instruments}  # floor, to the minor unit
        leftover = remainder - sum(base.values())
        bonus_to = sorted(instruments, key=lambda i: (-m[i], i))[:leftover]
        shares = {i: base[i] + (1 if i in bonus_to else 0) for i in instruments}
        seen: dict[str, tuple[int, int]] = {}
        for instrument in instruments:
            for other in state.holders.get(instrument, ()):
                if other != account_id and not is_system(other) and other not in seen:
                    other_acct = state.accounts[other]
                    seen[other] = (value(state, other_acct).equity, gross_notional(state, other_acct))

        def rank_key(other: str) -> tuple:
            equity, gross = seen[other]
            if equity > 0:  # higher effective leverage first, exactly (Fraction compares exactly)
                return (0, -Fraction(gross, equity), other)
            return (1, 0, other)

        per_instrument: dict[str, Any] = {}
        for instrument in instruments:
            info = state.instruments[instrument]
            mark = state.marks[info.underlying]
            q_a = acct.positions[instrument]
            size = abs(q_a)
            opposite = [
                other for other in state.holders.get(instrument, ())
                if other != account_id and not is_system(other)
                and (state.accounts[other].positions[instrument] > 0) != (q_a > 0)
            ]
            opposite.sort(key=rank_key)
            ranking = []
            for rank, other in enumerate(opposite, start=1):
                equity, gross = seen[other]
                lev = Fraction(gross, equity) if equity > 0 else None
                ranking.append({
                    "rank": rank, "account": other,
                    "position": self.qty(instrument, state.accounts[other].positions[instrument]),
                    "equity": money(equity), "notional": money(gross),
                    "group": "equity > 0" if equity > 0 else "equity <= 0",
                    "leverage": f"{lev.numerator}/{lev.denominator}" if lev is not None else None,
                    "leverage_approx": _approx(lev) if lev is not None else None,
                })
            steps = []
            left, pos, paid_total = size, q_a, 0
            takers = []
            for entry in ranking:
                if left == 0:
                    break
                other = entry["account"]
                delta = min(abs(state.accounts[other].positions[instrument]), left)
                left -= delta
                takers.append((other, delta, entry["rank"]))
            if left:
                takers.append((INSURANCE, left, 0))  # R10.6: the rest is held by @insurance
            for index, (other, delta, rank) in enumerate(takers):
                last = index == len(takers) - 1
                share = shares[instrument]
                if last:
                    paid = share - paid_total
                    how = (f"the last step pays what is left of R_i: {money(share)} − "
                           f"{money(paid_total)} = {money(paid)}")
                else:
                    paid = share * delta // size
                    how = (f"floor(R_i × Δ / |q_A|) = floor({money(share)} × {self.qty(instrument, delta)} / "
                           f"{self.qty(instrument, size)}) = {money(paid)}")
                paid_total += paid
                equity, gross = seen.get(other, (0, 0))
                steps.append({
                    "counterparty": other, "rank": rank, "qty": self.qty(instrument, delta),
                    "position_before": self.qty(instrument, pos),
                    "counterparty_position_before": self.qty(
                        instrument, state.accounts[other].positions.get(instrument, 0)),
                    "paid": money(paid), "how": how, "last": last,
                    "counterparty_equity": money(equity), "counterparty_notional": money(gross),
                })
                pos = pos - delta if pos > 0 else pos + delta
                steps[-1]["position_after"] = self.qty(instrument, pos)
            per_instrument[instrument] = {
                "position": self.qty(instrument, q_a), "mark": self.price(info.underlying, mark),
                "m": money(m[instrument]), "share": money(shares[instrument]),
                "share_floor": money(base[instrument]), "leftover_unit": instrument in bonus_to,
                "ranking": ranking, "steps": steps,
                "insurance_rest": self.qty(instrument, left) if left else "0",
            }
        return {
            "bankruptcy_seq": bankruptcy_seq, "R": money(remainder), "sum_m": money(total_m),
            "leftover_minor_units": leftover, "instruments": per_instrument,
        }

    def _deleverage(self, dec: s.Deleverage, index: int) -> Explanation:
        plan = self.plans.get(dec.account)
        differences: list[str] = []
        if plan is None or dec.instrument not in plan["instruments"]:
            lines = [f"R10.6: no deleveraging plan for {dec.account} {dec.instrument} on the folded state."]
            differences.append("no R10.6 plan derived for this step")
            return self._explanation(dec, _rules("R10.6"), {}, lines, [], differences)
        here = plan["instruments"][dec.instrument]
        step = next((st for st in here["steps"] if st["counterparty"] == dec.counterparty), None)
        lines = [
            f"R10.4, R10.6: {dec.account} went bankrupt at seq {plan['bankruptcy_seq']} with R = "
            f"{plan['R']} left after the insurance fund's cover.",
            f"R10.6: R is split over the positions by maintenance contribution m_i (Σm = {plan['sum_m']}): "
            f"R_i = floor(R × m_i / Σm); {plan['leftover_minor_units']} leftover minor unit(s) one each "
            "to the largest m_i first (ties by instrument id):",
        ]
        for instrument, p in plan["instruments"].items():
            lines.append(
                f"  {instrument}: q {p['position']}, m {p['m']}, floor share {p['share_floor']}"
                f"{' + 1 leftover unit' if p['leftover_unit'] else ''} -> R_i {p['share']}"
            )
        lines.append(
            f"R10.6: counterparties on {dec.instrument} (the other side of {here['position']}), ranked: "
            "equity > 0 first, by higher effective leverage = notional / equity (compared exactly), "
            "then equity <= 0; ties by account id; equity and notional as R10.6 started:"
        )
        # The text shows the counterparties that took a step and the next two (JSON: all of them).
        shown = max([st["rank"] for st in here["steps"]] + [0]) + 2
        for r in here["ranking"][:shown]:
            lev = f"leverage {r['leverage']} ≈ {r['leverage_approx']}" if r["leverage"] else "equity <= 0"
            took = next((st["qty"] for st in here["steps"] if st["counterparty"] == r["account"]), None)
            lines.append(f"  {r['rank']}. {r['account']}: position {r['position']}, equity {r['equity']}, "
                         f"notional {r['notional']}, {lev}" + (f"; closes {took}" if took else "; no step"))
        if len(here["ranking"]) > shown:
            lines.append(f"  ... and {len(here['ranking']) - shown} more ranked below, who take no step")
        if here["insurance_rest"] != "0":
            lines.append(f"  (the rest, {here['insurance_rest']}, is held by @insurance: it takes the last step)")
        if step is None:
            differences.append(f"{dec.counterparty} takes no step in the derived plan")
        else:
            who = (f"{dec.counterparty} (rank {step['rank']}) closes Δ = min(|q_c|, what is left) = {step['qty']}"
                   if dec.counterparty != INSURANCE else
                   f"@insurance takes the rest, {step['qty']}, at mark (rank 0)")
            lines.append(f"R10.6: this step: {who} against {dec.account} at the mark {here['mark']} "
                         f"({dec.account} {step['position_before']} -> {step['position_after']}); "
                         f"{step['how']}.")
            derived = {k: step[k] for k in ("counterparty", "rank", "qty", "position_before",
                                            "counterparty_position_before", "paid",
                                            "counterparty_equity", "counterparty_notional")}
            derived.update(instrument=dec.instrument, price=here["mark"], share=here["share"])
            differences += _compare(dec, derived)
        figures = {"account": dec.account, "instrument": dec.instrument, "plan": plan, "step": step}
        return self._explanation(dec, _rules("R10.6", "R10.7"), figures, lines, [], differences)

    def _funding_settled(self, dec: s.FundingSettled, index: int) -> Explanation:
        state, money = self.state, self.money
        info = state.instruments[dec.instrument]
        mark = state.marks.get(info.underlying, 0)
        rate_units = units_of(dec.rate, 18)
        payments = []
        paid = received = 0
        lines = [
            f"R9.1: for each holder of {dec.instrument}, x = q × mark × rate = q × "
            f"{self.price(info.underlying, mark)} × {dec.rate}, paid by the holder when x > 0, received "
            "when x < 0 (with a positive rate longs pay shorts).",
            "R9.2, R1.3: a payer pays ceil(|x|) (counts against it), a receiver gets floor(|x|) (counts for it):",
        ]
        for account_id in sorted(state.holders.get(dec.instrument, ())):
            q = state.accounts[account_id].positions[dec.instrument]
            x_num = q * mark * info.notional_scale * rate_units  # x in minor units × 10^18
            exact = fmt_units(x_num, 18 + state.scale)
            if x_num > 0:
                amount = -(-x_num // 10**18)
                paid += amount
                signed, how = -amount, "pays ceil"
            else:
                amount = (-x_num) // 10**18
                received += amount
                signed, how = amount, "receives floor"
            payments.append({"account": account_id, "position": self.qty(dec.instrument, q),
                             "x": exact, "amount": money(signed),
                             "rounding": "ceil" if x_num > 0 else "floor"})
            lines.append(f"  {account_id}: q {self.qty(dec.instrument, q)}, x = {exact} -> {how} "
                         f"{money(amount)}")
        dust = paid - received
        lines.append(f"R9.2: paid {money(paid)}, received {money(received)}; the dust {money(dust)} "
                     "(paid − received) goes to @insurance.")
        derived = {"instrument": dec.instrument, "rate": dec.rate,
                   "price": self.price(info.underlying, mark) if info.underlying in state.marks else "0",
                   "paid": money(paid), "received": money(received), "dust": money(dust)}
        differences = _compare(dec, derived)
        recorded = [{"account": p.account, "position": p.position, "amount": p.amount} for p in dec.payments]
        if recorded != [{k: p[k] for k in ("account", "position", "amount")} for p in payments]:
            differences.append("payments differ from the derived ones")
        figures = {"instrument": dec.instrument, "rate": dec.rate, "mark": derived["price"],
                   "payments": payments, "paid": money(paid), "received": money(received),
                   "dust": money(dust)}
        return self._explanation(dec, _rules("R1.3", "R9.1", "R9.2"), figures, lines, [], differences)


def _compare(dec: s.Decision, derived: dict[str, Any]) -> list[str]:
    out = []
    for key, val in derived.items():
        recorded = getattr(dec, key)
        if recorded != val:
            out.append(f"{key}: recorded {recorded}, derived {val}")
    return out


def _accounts_of(inp: s.Input) -> list[str]:
    if isinstance(inp, (s.Deposit, s.Withdrawal)):
        return [inp.account]
    if isinstance(inp, s.Transfer):
        return [inp.from_, inp.to]
    if isinstance(inp, s.Trade):
        return [inp.buyer, inp.seller]
    return []


# --- the checks of R7.2, R7.3 and R8.2, derived on a state --------------------------------------
def _outflow_check(state: LedgerState, account_id: str, asset: str, amount: str, rule: str) -> dict[str, Any]:
    """R7.2 (R7.3 for the sender), first matching reason wins. Also returns the figures the
    engine records with a rejection, derived here on a hypothetical copy of the account."""
    checks: list[dict[str, Any]] = []
    out: dict[str, Any] = {"reason": None, "account": account_id, "rule": rule, "checks": checks,
                           "figures": {}, "headline": {}}
    acct = state.accounts.get(account_id)
    checks.append({"check": "account exists", "rule": "R2.3", "account": account_id, "passes": acct is not None})
    if acct is None:
        out.update(reason="unknown_account", rule="R2.3")
        return out
    info = state.assets[asset]
    units = units_of(amount, info.decimals)
    balance = acct.cash if asset == state.settlement else acct.balances.get(asset, 0)
    fmt = lambda u: fmt_units(u, info.decimals)  # noqa: E731
    checks.append({"check": "balance", "rule": rule, "account": account_id, "asset": asset,
                   "balance": fmt(balance), "amount": amount,
                   "amount_minus_balance": fmt(units - balance), "passes": units <= balance})
    if units > balance:
        out.update(reason="insufficient_balance", figures={"balance": fmt(balance), "amount": amount},
                   headline={"amount_minus_balance": fmt(units - balance)})
        return out
    if is_system(account_id):
        checks.append({"check": "margin", "rule": "R11.2", "account": account_id, "skipped": True,
                       "passes": True})
        return out
    hypothetical = copy_value(acct)
    if asset == state.settlement:
        hypothetical.cash -= units
    elif balance - units:
        hypothetical.balances[asset] = balance - units
    else:
        del hypothetical.balances[asset]
    before, after = value(state, acct), value(state, hypothetical)
    money = lambda u: fmt_units(u, state.scale)  # noqa: E731
    diff = after.equity - after.initial_margin
    checks.append({"check": "margin", "rule": rule, "account": account_id,
                   "equity_before": money(before.equity), "equity_after": money(after.equity),
                   "initial_margin": money(after.initial_margin),
                   "equity_after_minus_initial_margin": money(diff), "passes": diff >= 0})
    if diff < 0:
        out.update(reason="insufficient_margin",
                   figures={"equity_after": money(after.equity), "initial_margin": money(after.initial_margin)},
                   headline={"equity_after_minus_initial_margin": money(diff)})
    return out


def _trade_check(state: LedgerState, inp: s.Trade) -> dict[str, Any]:
    """R8.2 in order (unknown_account buyer then seller, self_trade, no_mark, insufficient_margin
    buyer then seller per R8.4), each party's R8.3 effect on a hypothetical copy of its account."""
    checks: list[dict[str, Any]] = []
    out: dict[str, Any] = {"reason": None, "account": "", "rule": "R8.2", "checks": checks,
                           "figures": {}, "headline": {}, "parties": [], "notional": None}
    for party in (inp.buyer, inp.seller):
        exists = party in state.accounts
        checks.append({"check": "account exists", "rule": "R2.3", "account": party, "passes": exists})
        if not exists:
            out.update(reason="unknown_account", account=party, rule="R8.2")
            return out
    checks.append({"check": "buyer differs from seller", "rule": "R8.2", "passes": inp.buyer != inp.seller})
    if inp.buyer == inp.seller:
        out.update(reason="self_trade", account=inp.buyer, rule="R8.2")
        return out
    info = state.instruments[inp.instrument]
    mark = state.marks.get(info.underlying)
    checks.append({"check": "underlying has a mark", "rule": "R5.2", "asset": info.underlying,
                   "passes": mark is not None})
    if mark is None:
        out.update(reason="no_mark", account="", rule="R5.2", figures={"asset": info.underlying})
        return out
    money = lambda u: fmt_units(u, state.scale)  # noqa: E731
    qdec = info.qty_decimals
    qty = units_of(inp.qty, qdec)
    price = units_of(inp.price, state.assets[info.underlying].price_decimals)
    trade_notional = qty * price * info.notional_scale
    out["notional"] = money(trade_notional)
    for party, signed, fee_text, side in (
        (inp.buyer, qty, inp.buyer_fee, "pays"), (inp.seller, -qty, inp.seller_fee, "receives")
    ):
        acct = state.accounts[party]
        fee = units_of(fee_text, state.scale)
        before = acct.positions.get(inp.instrument, 0)
        after = before + signed
        change = -signed * price * info.notional_scale - fee  # R8.3
        entry: dict[str, Any] = {
            "account": party, "side": side, "position_before": fmt_units(before, qdec),
            "position_after": fmt_units(after, qdec), "cash_change": money(change), "fee": fee_text,
        }
        out["parties"].append(entry)
        if is_system(party):
            entry["margin_check"] = "system account: no margin check (R8.4 applies to non-system parties)"
            continue
        # R8.4: only reducing (strictly smaller, not crossing; to zero included) always passes.
        reduction = before != 0 and abs(after) < abs(before) and (after == 0 or (after > 0) == (before > 0))
        hypothetical = copy_value(acct)
        hypothetical.cash += change
        if after:
            hypothetical.positions[inp.instrument] = after
        else:
            hypothetical.positions.pop(inp.instrument, None)
        v = value(state, hypothetical)
        diff = v.equity - v.initial_margin
        entry.update(equity_after=money(v.equity), initial_margin_after=money(v.initial_margin),
                     equity_after_minus_initial_margin=money(diff), reduction=reduction)
        passes = reduction or diff >= 0
        checks.append({"check": "margin", "rule": "R8.4", "account": party, "reduction": reduction,
                       "equity_after": money(v.equity), "initial_margin_after": money(v.initial_margin),
                       "equity_after_minus_initial_margin": money(diff), "passes": passes})
        if not passes and out["reason"] is None:
            out.update(reason="insufficient_margin", account=party, rule="R8.4",
                       figures={"equity_after": money(v.equity), "initial_margin_after": money(v.initial_margin)},
                       headline={"equity_after_minus_initial_margin": money(diff)})
            return out
    return out


def _check_text(c: dict[str, Any]) -> str:
    rule = c["rule"]
    if c["check"] == "account exists":
        return (f"{rule}: {c['account']} exists" if c["passes"] else
                f"{rule}: {c['account']} does not exist (an account exists from its first deposit or "
                "first accepted incoming transfer): unknown_account")
    if c["check"] == "balance":
        if c["passes"]:
            return f"{rule}: {c['account']} holds {c['balance']} {c['asset']} >= the amount {c['amount']}"
        return (f"{rule}: {c['account']} holds {c['balance']} {c['asset']} < the amount {c['amount']}: "
                f"amount − balance = {c['amount_minus_balance']}: insufficient_balance")
    if c["check"] == "margin" and c.get("skipped"):
        return f"{rule}: {c['account']} is a system account: no margin check"
    if c["check"] == "margin" and rule == "R8.4":
        if c["reduction"]:
            return f"R8.4: {c['account']}: the trade only reduces its position: passes without the IM check"
        verdict = "passes" if c["passes"] else "insufficient_margin"
        return (f"R8.4: {c['account']} after the trade at current marks: equity {c['equity_after']} "
                f"{'>=' if c['passes'] else '<'} IM {c['initial_margin_after']} (equity after − IM after = "
                f"{c['equity_after_minus_initial_margin']}): {verdict}")
    if c["check"] == "margin":
        verdict = "passes" if c["passes"] else "insufficient_margin"
        return (f"{rule}: {c['account']} after it: equity {c['equity_before']} -> {c['equity_after']} "
                f"{'>=' if c['passes'] else '<'} IM {c['initial_margin']} (equity after − IM = "
                f"{c['equity_after_minus_initial_margin']}): {verdict}")
    if c["check"] == "buyer differs from seller":
        return "R8.2: buyer and seller differ" if c["passes"] else "R8.2: buyer = seller: self_trade"
    if c["check"] == "underlying has a mark":
        return (f"R5.2: {c['asset']} has a mark" if c["passes"] else
                f"R5.2: the underlying {c['asset']} has no mark yet: no_mark")
    return str(c)


def _check_lines(check: dict[str, Any]) -> list[str]:
    return [_check_text(c) for c in check["checks"]]


# --- the library calls --------------------------------------------------------------------------
def _input_seq(store: LogStore, seq: int) -> int:
    """The seq of the input that is, or caused, the event at ``seq``."""
    record = store.get(seq) if seq > 0 else None
    if record is None:
        head, _ = store.head()
        raise StoreError("unknown_seq", f"no event with seq {seq} (the log holds seq 1 to {head})")
    if record.type not in s.DECISION_TAGS:
        return seq
    found = store.find_inputs([record.ref])
    assert record.ref in found, f"decision {seq} names input {record.ref!r}, which is not recorded"
    return found[record.ref][0]


def _walk_for(store: LogStore, input_seq: int) -> _Walk:
    state = state_at_seq(store, input_seq - 1)
    group = next(read_groups(store, input_seq - 1, None, batch=512))
    assert group.inp.seq == input_seq
    return _Walk(state, group)


def explain(store: LogStore, seq: int) -> Explanation:
    """Why the event at ``seq`` had the effect it had (StoreError ``unknown_seq`` if none)."""
    input_seq = _input_seq(store, seq)
    return _walk_for(store, input_seq).run({seq}, finish=False)[seq]


def explain_input(store: LogStore, input_id: str) -> Explanation:
    """The input with this id, with the explanations of all its decisions in ``caused``."""
    found = store.find_inputs([input_id])
    if input_id not in found:
        raise StoreError("unknown_id", f"no recorded input has the id {input_id!r}")
    input_seq = found[input_id][0]
    explained = _walk_for(store, input_seq).run(None)
    first = explained.pop(input_seq)
    first.caused = list(explained.values())
    return first


def explain_log(store: LogStore, inputs: bool = False) -> Iterator[Explanation]:
    """Every decision of the log explained (and every input too with ``inputs``), in one pass
    over the log: each input group is explained on the state folded so far."""
    state = LedgerState()
    for group in read_groups(store):
        if group.decisions or inputs:
            wanted = None if inputs else {d.seq for d in group.decisions}
            yield from _Walk(state, group).run(wanted).values()
        else:
            state.apply_input(group.inp, False)


# --- the command --------------------------------------------------------------------------------
_encoder = msgspec.json.Encoder()


@click.command("explain")
@click.option("--store", "store", envvar="CLEARING_STORE", default=None,
              help="SQLite file (default clearing.db) or postgresql://...; env CLEARING_STORE.")
@click.argument("seq", type=int, required=False)
@click.option("--id", "input_id", default=None, help="Explain the input with this id, and its decisions.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def explain_command(store: str | None, seq: int | None, input_id: str | None, as_json: bool) -> None:
    """Why an event had the effect it had: the figures and the rules applied, by number."""
    if (seq is None) == (input_id is None):
        raise click.UsageError("give SEQ or --id ID (exactly one)")
    ledger = app.open_ledger(app.store_url(store))
    try:
        if seq is not None:
            result = explain(ledger, seq)
        else:
            assert input_id is not None
            result = explain_input(ledger, input_id)
    finally:
        ledger.close()
    if as_json:
        sys.stdout.buffer.write(_encoder.encode(result.as_json()) + b"\n")
        sys.stdout.flush()
    else:
        click.echo(result.text())
    # A re-run that disagrees with the record is an R12.5 finding: exit 1 (interfaces §3).
    mismatched = [e.seq for e in [result, *result.caused] if not e.matches_recorded or e.differences]
    if mismatched:
        click.echo(f"the re-run disagrees with the record at seq {', '.join(map(str, mismatched))} "
                   "(R12.5; run `clearing audit`)", err=True)
        sys.exit(1)

