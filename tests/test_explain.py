"""`clearing explain` through the real command line on small ledgers with known answers (the
scenarios of tests/test_rules_*.py), and in-process on every decision of the demo ledger: the
figures re-derived from the rules agree with what was recorded (R12.5)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.rules_ledger import MARKET
from tests.test_replay import make_ledger

XBT = """
    {"type":"instrument","instrument":"XBT-PERP","underlying":"BTC","qty_decimals":4,"initial_margin":"0.1","maintenance_margin":"0.05","liquidation_fee":"0.01"}
"""


def explain_json(run_cli, cwd: Path, *args: str) -> dict:
    code, out, err = run_cli("explain", "--json", *args, cwd=cwd)
    assert code == 0, err
    assert len(out.splitlines()) == 1  # one JSON document, nothing else on stdout
    doc = json.loads(out)
    assert doc["matches_recorded"] is True and doc["differences"] == []
    return doc


# --- rejections (R3.5) -----------------------------------------------------------------------
REJECTIONS = MARKET + """
    {"type":"deposit","account":"alice","asset":"USD","amount":"100"}
    {"type":"deposit","account":"bob","asset":"USD","amount":"10000"}
    {"type":"withdrawal","account":"alice","asset":"USD","amount":"150"}
    {"type":"withdrawal","account":"nobody","asset":"USD","amount":"1"}
    {"type":"transfer","from":"alice","to":"dave","asset":"USD","amount":"200"}
    {"type":"trade","instrument":"BTC-PERP","buyer":"bob","seller":"carol","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"0"}
    {"type":"trade","instrument":"BTC-PERP","buyer":"bob","seller":"bob","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"0"}
    {"type":"trade","instrument":"ETH-PERP","buyer":"bob","seller":"alice","qty":"1","price":"3000","buyer_fee":"0","seller_fee":"0"}
    {"type":"trade","instrument":"BTC-PERP","buyer":"bob","seller":"alice","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"1"}
    {"type":"trade","instrument":"BTC-PERP","buyer":"@insurance","seller":"bob","qty":"0.5","price":"60000","buyer_fee":"0","seller_fee":"0"}
    {"type":"withdrawal","account":"bob","asset":"USD","amount":"7500"}
"""
# seq: 1-6 market, 7 8 deposits, then each rejected input is followed by its rejection:
#   9/10 withdrawal alice 150 of 100; 11/12 nobody; 13/14 transfer alice 200 of 100;
#   15/16 unknown seller carol; 17/18 self trade; 19/20 ETH has no mark;
#   21/22 alice sells 0.1 at 60000 with fee 1: equity 99, IM 600;
#   23 bob sells 0.5 to @insurance (accepted: cash 40000, equity 10000, IM 3000);
#   24/25 bob withdraws 7500 of his 40000: equity after 2500 < IM 3000.


@pytest.fixture(scope="module")
def rejections(tmp_path_factory) -> Path:
    from tests.conftest import _run_cli

    return make_ledger(tmp_path_factory.mktemp("rejections"), _run_cli, REJECTIONS)


@pytest.mark.parametrize(
    "seq, reason, rule, account, headline",
    [
        (10, "insufficient_balance", "R7.2", "alice", {"amount_minus_balance": "50"}),
        (12, "unknown_account", "R2.3", "nobody", {}),
        (14, "insufficient_balance", "R7.3", "alice", {"amount_minus_balance": "100"}),
        (16, "unknown_account", "R8.2", "carol", {}),
        (18, "self_trade", "R8.2", "bob", {}),
        (20, "no_mark", "R5.2", "", {}),
        (22, "insufficient_margin", "R8.4", "alice", {"equity_after_minus_initial_margin": "-501"}),
        (25, "insufficient_margin", "R7.2", "bob", {"equity_after_minus_initial_margin": "-500"}),
    ],
)
def test_explain_a_rejection_names_the_failed_check_and_by_how_much(
    run_cli, rejections, seq, reason, rule, account, headline
):
    doc = explain_json(run_cli, rejections, str(seq))
    assert (doc["seq"], doc["type"], doc["input_seq"]) == (seq, "rejected", seq - 1)
    figures = doc["figures"]
    assert (figures["reason"], figures["rule"], figures["account"]) == (reason, rule, account)
    assert {k: figures[k] for k in headline} == headline
    assert figures["failed"]["passes"] is False
    assert "R3.5" in doc["rules"] and rule in doc["rules"]
    assert doc["recorded"]["reason"] == reason
    assert any(reason in line for line in doc["explanation"])


def test_explain_the_margin_rejections_in_figures(run_cli, rejections):
    failed = explain_json(run_cli, rejections, "22")["figures"]["failed"]
    # alice sells 0.1 at 60000 paying a fee of 1: equity 100 − 1 = 99, IM 0.1 × 6000 = 600
    assert failed == {
        "check": "margin", "rule": "R8.4", "account": "alice", "reduction": False,
        "equity_after": "99", "initial_margin_after": "600",
        "equity_after_minus_initial_margin": "-501", "passes": False,
    }
    failed = explain_json(run_cli, rejections, "25")["figures"]["failed"]
    assert (failed["equity_before"], failed["equity_after"], failed["initial_margin"]) == ("10000", "2500", "3000")
    code, out, err = run_cli("explain", "10", cwd=rejections)  # the text, for a reader
    assert code == 0, err
    assert "amount − balance = 50: insufficient_balance" in out
    assert "R12.5: re-running the rules gives exactly the recorded event" in out


def test_explain_a_rejected_input_points_to_its_rejection(run_cli, rejections):
    doc = explain_json(run_cli, rejections, "21")
    assert doc["type"] == "trade" and doc["decisions"] == [22]
    assert doc["figures"]["reason"] == "insufficient_margin"
    assert any("R3.5" in line and "seq 22" in line for line in doc["explanation"])
    # and an accepted trade: both parties' effects (R8.3) and the margin check (R8.4)
    doc = explain_json(run_cli, rejections, "23")
    insurance, bob = doc["figures"]["parties"]
    assert (bob["position_after"], bob["cash_change"], bob["equity_after"], bob["initial_margin_after"]) == (
        "-0.5", "30000", "10000", "3000")
    assert insurance["margin_check"].startswith("system account")
    assert doc["decisions"] == [] and "R8.3" in doc["rules"] and "R8.4" in doc["rules"]


def test_unknown_seq_and_id_and_bad_usage_exit_2(run_cli, rejections):
    for args, text in [
        (["999"], "error[unknown_seq]"),
        (["0"], "error[unknown_seq]"),
        (["--id", "nope"], "error[unknown_id]"),
        ([], "exactly one"),
        (["3", "--id", "e3"], "exactly one"),
    ]:
        code, out, err = run_cli("explain", "--json", *args, cwd=rejections)
        assert code == 2, (args, err)
        assert out == ""
        assert text in err


# --- R10.3 -------------------------------------------------------------------------------------
def test_explain_a_partial_liquidation_shows_k_and_k_minus_1(run_cli, tmp_path):
    make_ledger(tmp_path, run_cli, MARKET + """
        {"type":"deposit","account":"alice","asset":"USD","amount":"700"}
        {"type":"deposit","account":"bob","asset":"USD","amount":"100000"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"bob","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"0"}
        {"type":"price","asset":"BTC","price":"55500"}
    """)
    doc = explain_json(run_cli, tmp_path, "11")
    f = doc["figures"]
    # equity 250 < MM 277.5; unit 0.0001 × 55500: x = 0.0555, y = 0.555 (minor: 55500, 555000)
    assert f["trigger"] == {"seq": 11, "equity": "250", "initial_margin": "555", "maintenance_margin": "277.5"}
    assert (f["chosen"], f["Q"], f["x_minor"], f["y_minor"], f["A_minor"], f["P_minor"]) == (
        "BTC-PERP", 1000, "55500", "555000", "250000000", "250000000")
    assert f["k"] == 611 and f["whole_position"] is False
    assert f["evaluations"] == [
        {"k": 611, "penalty_part_minor": "33910500", "margin_part_minor": "215895000",
         "left_minor": "249805500", "holds": True},
        {"k": 610, "penalty_part_minor": "33855000", "margin_part_minor": "216450000",
         "left_minor": "250305000", "holds": False},
    ]
    assert (f["penalty"], f["cap_applied"], f["position_after"]) == ("33.9105", False, "0.0389")
    assert (f["equity_after"], f["initial_margin_after"]) == ("216.0895", "215.895")
    assert f["contributions"] == [{"instrument": "BTC-PERP", "position": "0.1", "mark": "55500",
                                   "notional": "5550", "maintenance_margin_fraction": "0.05",
                                   "contribution": "277.5"}]
    assert {"R10.2", "R10.3"} <= set(doc["rules"])
    # the price input lists the decision it caused
    doc = explain_json(run_cli, tmp_path, "10")
    assert doc["decisions"] == [11]
    assert any("alice: equity 250, MM 277.5" in line for line in doc["explanation"])


def test_explain_the_penalty_cap(run_cli, tmp_path):
    """R10.3: penalty = min(ceil(k·x), P). The cap binds only where the capped condition
    min(ceil(k·x), P) + ceil((Q − k)·y) <= A holds, i.e. (A − P = −IM of the others <= 0)
    at k = Q: a capped close always closes the whole position."""
    make_ledger(tmp_path, run_cli, MARKET + """
        {"type":"deposit","account":"alice","asset":"USD","amount":"600"}
        {"type":"deposit","account":"bob","asset":"USD","amount":"100000"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"bob","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"0"}
        {"type":"price","asset":"BTC","price":"54060"}
    """)
    f = explain_json(run_cli, tmp_path, "11")["figures"]
    assert (f["equity"], f["maintenance_margin"]) == ("6", "270.3")
    assert (f["k"], f["Q"], f["whole_position"], f["none_restores"]) == (1000, 1000, True, False)
    assert (f["penalty_uncapped"], f["penalty"], f["cap_applied"]) == ("54.06", "6", True)
    assert f["evaluations"][0] == {"k": 1000, "penalty_part_minor": "6000000", "margin_part_minor": "0",
                                   "left_minor": "6000000", "holds": True}
    assert f["evaluations"][1]["k"] == 999 and f["evaluations"][1]["holds"] is False
    assert f["equity_after"] == "0"
    code, out, err = run_cli("explain", "11", cwd=tmp_path)
    assert "the cap applied" in out


def test_explain_a_whole_position_close_then_the_next_position(run_cli, tmp_path):
    make_ledger(tmp_path, run_cli, MARKET + """
        {"type":"price","asset":"ETH","price":"3000"}
        {"type":"deposit","account":"alice","asset":"USD","amount":"1800"}
        {"type":"deposit","account":"bob","asset":"USD","amount":"100000"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"bob","qty":"0.15","price":"60000","buyer_fee":"0","seller_fee":"0"}
        {"type":"trade","instrument":"ETH-PERP","buyer":"alice","seller":"bob","qty":"2","price":"3000","buyer_fee":"0","seller_fee":"0"}
        {"type":"price","asset":"ETH","price":"2400"}
    """)
    first = explain_json(run_cli, tmp_path, "13")["figures"]
    # MM: BTC 450 > ETH 360 → BTC-PERP; A = 600 − IM(ETH) 720 = −120: no k restores
    assert [c["contribution"] for c in first["contributions"]] == ["450", "360"]
    assert first["chosen"] == "BTC-PERP"
    assert (first["A_minor"], first["none_restores"], first["whole_position"], first["k"]) == (
        "-120000000", True, True, 1500)
    assert first["evaluations"] == [{"k": 1500, "penalty_part_minor": "90000000", "margin_part_minor": "0",
                                     "left_minor": "90000000", "holds": False}]
    assert (first["penalty"], first["cap_applied"], first["equity_after"]) == ("90", False, "510")
    second = explain_json(run_cli, tmp_path, "14")["figures"]
    assert second["continuing"] is True and second["trigger"]["seq"] == 13
    assert (second["chosen"], second["k"], second["penalty"]) == ("ETH-PERP", 649, "23.364")
    assert [e["holds"] for e in second["evaluations"]] == [True, False]  # k = 649 holds, 648 fails


# --- R10.4, R10.5 ------------------------------------------------------------------------------
def test_explain_a_bankruptcy_covered_by_the_fund(run_cli, tmp_path):
    make_ledger(tmp_path, run_cli, MARKET + """
        {"type":"deposit","account":"@insurance","asset":"USD","amount":"1000"}
        {"type":"deposit","account":"alice","asset":"USD","amount":"100"}
        {"type":"deposit","account":"alice","asset":"BTC","amount":"0.01234567"}
        {"type":"deposit","account":"alice","asset":"ETH","amount":"1"}
        {"type":"deposit","account":"bob","asset":"USD","amount":"100000"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"bob","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"0"}
        {"type":"price","asset":"BTC","price":"50000.01"}
    """)
    doc = explain_json(run_cli, tmp_path, "14")
    f = doc["figures"]
    # equity −5900 + 555.555261 + 5000.001 = −344.443739
    assert (f["equity"], f["maintenance_margin"]) == ("-344.443739", "250.00005")
    assert (f["D"], f["F"], f["C"], f["R"]) == ("344.443739", "1000", "344.443739", "0")
    assert f["seized"] == [
        {"asset": "BTC", "amount": "0.01234567", "price": "50000.01", "haircut": "0.1", "value": "555.555261"},
        {"asset": "ETH", "amount": "1", "price": "0", "haircut": "0.2", "value": "0"},  # no mark: 0 (R5.2)
    ]
    assert f["next"] == "R10.5" and doc["decisions"] == [15]
    assert {"R10.2", "R10.4", "R10.5", "R10.7"} <= set(doc["rules"])
    take_over = explain_json(run_cli, tmp_path, "15")
    assert take_over["recorded"]["rule"] == "R10.5"
    t = take_over["figures"]
    assert t["bankruptcy"]["remainder"] == "0" and t["penalty"] == "0"
    assert (t["position"], t["mark"], t["notional"]) == ("0.1", "50000.01", "5000.001")
    # --id: the price input and every decision it caused
    code, out, err = run_cli("explain", "--id", "e13", "--json", cwd=tmp_path)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["seq"] == 13 and [c["seq"] for c in doc["caused"]] == [14, 15]
    assert [c["type"] for c in doc["caused"]] == ["bankruptcy", "liquidation"]
    code, out, err = run_cli("explain", "--id", "e13", cwd=tmp_path)
    assert code == 0 and "seq 14  bankruptcy" in out and "seq 15  liquidation (R10.5)" in out


# --- R10.6 -------------------------------------------------------------------------------------
DELEVERAGE = MARKET + XBT + """
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
    {"type":"price","asset":"BTC","price":"50000"}
"""
# seq: 1-6 market, 7 XBT-PERP, 8-17 deposits, 18-26 trades, 27 price; 28 bankruptcy of alice,
# 29-35 her deleverage steps (c0, c2, c1, c3, a0, z1, z2), then z1 and z2 (tests/test_rules_bankruptcy.py).


def test_explain_a_deleverage_with_several_counterparties(run_cli, tmp_path):
    make_ledger(tmp_path, run_cli, DELEVERAGE)
    bankruptcy = explain_json(run_cli, tmp_path, "28")
    f = bankruptcy["figures"]
    assert (f["D"], f["F"], f["C"], f["R"], f["next"]) == ("4000", "3899.999993", "3899.999993", "100.000007", "R10.6")
    assert bankruptcy["decisions"] == list(range(29, 36))

    doc = explain_json(run_cli, tmp_path, "30")
    plan, step = doc["figures"]["plan"], doc["figures"]["step"]
    assert (plan["bankruptcy_seq"], plan["R"], plan["leftover_minor_units"]) == (28, "100.000007", 0)
    btc = plan["instruments"]["BTC-PERP"]
    assert (btc["m"], btc["share"]) == ("2500", "100.000007")  # one position: R_i = R
    ranking = btc["ranking"]
    assert [r["account"] for r in ranking] == ["c0", "c2", "c1", "c3", "a0", "z1", "z2"]
    assert [r["group"] for r in ranking] == ["equity > 0"] * 5 + ["equity <= 0"] * 2
    c0, c2, c1 = ranking[0], ranking[1], ranking[2]
    assert (c0["equity"], c0["notional"], c0["leverage"], c0["leverage_approx"]) == ("1600", "5000", "25/8", "3.125")
    # 10000 / 3999.999999 just above 2.5: before c1 (2.5 exactly) though it reads 2.5 rounded
    assert (c2["leverage"], c2["leverage_approx"]) == ("10000000000/3999999999", "2.5")
    assert (c1["leverage"], ranking[3]["leverage"]) == ("5/2", "5/2")  # c1 before c3: by id
    assert ranking[5]["leverage"] is None and ranking[5]["equity"] == "-800"
    # this step: c2 (rank 2) closes 0.2 and pays floor(100.000007 × 0.2 / 1) = 20.000001
    assert (step["counterparty"], step["rank"], step["qty"], step["paid"]) == ("c2", 2, "0.2", "20.000001")
    assert (step["position_before"], step["position_after"]) == ("0.9", "0.7")
    assert [s["paid"] for s in btc["steps"]] == ["10", "20.000001", "20.000001", "10", "10", "20.000001", "10.000004"]
    assert btc["steps"][-1]["last"] is True and "what is left" in btc["steps"][-1]["how"]
    assert doc["rules"] == ["R10.6", "R10.7"]
    code, out, err = run_cli("explain", "30", cwd=tmp_path)
    assert code == 0, err
    assert "2. c2: position -0.2, equity 3999.999999" in out
    assert "floor(100.000007 × 0.2 / 1) = 20.000001" in out


# --- R9 ------------------------------------------------------------------------------------------
def test_explain_funding_payments_with_their_rounding(run_cli, ten_ledger, tmp_path):
    doc = explain_json(run_cli, ten_ledger, "11")
    assert [(p["account"], p["x"], p["amount"], p["rounding"]) for p in doc["figures"]["payments"]] == [
        ("alice", "3", "-3", "ceil"), ("bob", "-3", "3", "floor"),
    ]
    extra = tmp_path / "more.jsonl"
    extra.write_text('{"id":"f2","ts":"2026-03-01T16:00:00Z","type":"funding","instrument":"BTC-PERP","rate":"0.00000000001"}\n')
    code, _, err = run_cli("ingest", extra, cwd=ten_ledger)
    assert code == 0, err
    doc = explain_json(run_cli, ten_ledger, "13")
    f = doc["figures"]
    # x = ±0.5 × 60000 × 1e-11 = ±0.0000003: alice pays ceil 0.000001, bob receives floor 0
    assert [(p["account"], p["x"], p["amount"]) for p in f["payments"]] == [
        ("alice", "0.0000003", "-0.000001"), ("bob", "-0.0000003", "0"),
    ]
    assert (f["rate"], f["mark"], f["paid"], f["received"], f["dust"]) == (
        "0.00000000001", "60000", "0.000001", "0", "0.000001")
    assert {"R1.3", "R9.1", "R9.2"} <= set(doc["rules"])


def test_explain_reports_a_recorded_decision_the_rules_do_not_give(run_cli, tmp_path):
    """A decision changed outside the ledger: the re-run (R12.5) and the derived figures
    disagree with it, and the command says so with exit 1 (a finding)."""
    make_ledger(tmp_path, run_cli, MARKET + """
        {"type":"deposit","account":"alice","asset":"USD","amount":"700"}
        {"type":"deposit","account":"bob","asset":"USD","amount":"100000"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"bob","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"0"}
        {"type":"price","asset":"BTC","price":"55500"}
    """)
    with sqlite3.connect(tmp_path / "clearing.db") as db:
        (payload,) = db.execute("select state from stored_events where originator_version = 11").fetchone()
        tampered = bytes(payload).replace(b'"penalty":"33.9105"', b'"penalty":"33.9106"')
        assert tampered != bytes(payload)
        db.execute("update stored_events set state = ? where originator_version = 11", (tampered,))
    code, out, err = run_cli("explain", "--json", "11", cwd=tmp_path)
    assert code == 1, err
    doc = json.loads(out)
    assert doc["matches_recorded"] is False
    assert doc["recorded"]["penalty"] == "33.9106" and doc["rerun"]["penalty"] == "33.9105"
    assert "penalty: recorded 33.9106, derived 33.9105" in doc["differences"]
    assert "disagrees with the record at seq 11" in err


# --- every decision of the demo --------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_store(tmp_path_factory) -> str:
    from tests.conftest import _run_cli

    directory = tmp_path_factory.mktemp("demo") / "ledger"
    code, out, err = _run_cli("demo", "--dir", directory, cwd=directory.parent, timeout=300)
    assert code == 0, err
    return str(directory / "clearing.db")


def test_explain_agrees_with_the_record_on_every_decision_of_the_demo(demo_store):
    from clearing import app
    from clearing.explain import explain, explain_log
    from events import schema as s

    store = app.open_ledger(demo_store)
    try:
        decisions = sum(
            1 for page in store.read_payloads() for _seq, tag, _p in page if tag in s.DECISION_TAGS
        )
        explained, first, wrong = 0, {}, []
        for e in explain_log(store):
            explained += 1
            first.setdefault((e.type, e.recorded.get("rule")), e)
            if not e.matches_recorded or e.differences:
                wrong.append((e.seq, e.type, e.differences))
        assert not wrong, wrong[:5]
        assert explained == decisions > 1000
        kinds = {kind for kind, _rule in first}
        assert kinds == {"rejected", "liquidation", "bankruptcy", "deleverage", "funding_settled"}
        assert ("liquidation", "R10.3") in first and ("liquidation", "R10.5") in first
        # One decision alone (state_at_seq: a snapshot plus the events after it) says the same
        # as the walk over the whole log.
        for key in [("deleverage", None), ("liquidation", "R10.3"), ("bankruptcy", None)]:
            walked = first[key]
            alone = explain(store, walked.seq)
            assert alone.as_json() == walked.as_json()
    finally:
        store.close()
