"""`clearing replay` through the real command line: the timeline of the log and of one account,
its --from/--to bounds, and the JSON Lines it prints (interfaces §3)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.conftest import ORIGIN
from tests.rules_ledger import MARKET

START = datetime(2026, 3, 1, tzinfo=timezone.utc)


def write_inputs(path: Path, text: str) -> Path:
    """Input lines in the notation of interfaces §1; a line without ``id`` gets ``e<n>`` and one
    without ``ts`` gets START + n seconds (n: its 1-based place in the file)."""
    out = []
    for raw in text.strip().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = json.loads(line)
        n = len(out) + 1
        fields.setdefault("id", f"e{n}")
        fields.setdefault("ts", (START + timedelta(seconds=n)).strftime("%Y-%m-%dT%H:%M:%SZ"))
        out.append(json.dumps(fields))
    path.write_text("\n".join(out) + "\n")
    return path


def make_ledger(directory: Path, run_cli, text: str) -> Path:
    code, _, err = run_cli("init", "--origin", ORIGIN, cwd=directory)
    assert code == 0, err
    code, _, err = run_cli("ingest", write_inputs(directory / "inputs.jsonl", text), cwd=directory)
    assert code == 0, err
    return directory


def json_lines(out: str) -> list[dict]:
    lines = out.splitlines()
    assert lines, "no output"
    return [json.loads(line) for line in lines]  # every line of stdout is one JSON object


def test_replay_without_account_lists_every_event_with_the_named_accounts(run_cli, shared_ten_ledger):
    code, out, err = run_cli("replay", "--json", cwd=shared_ten_ledger)
    assert code == 0, err
    rows = json_lines(out)
    assert [r["seq"] for r in rows] == list(range(1, 12))
    assert [r["type"] for r in rows] == [
        "asset", "asset", "instrument", "price", "deposit", "deposit", "withdrawal", "transfer",
        "trade", "funding", "funding_settled",
    ]
    assert rows[10]["ref"] == "f1" and rows[9]["ref"] == "f1"  # the decision names its input
    trade = rows[8]
    assert set(trade) == {"seq", "ts", "type", "ref", "summary", "accounts"}
    assert trade["ts"] == "2026-03-01T00:00:05Z"
    assert "alice buys 0.5 BTC-PERP from bob at 60010.5" in trade["summary"]
    assert trade["accounts"]["alice"] == {
        "equity": "9391.75", "initial_margin": "3000", "maintenance_margin": "1500",
        "margin_buffer": "7891.75", "health": "ok",
    }
    assert set(rows[10]["accounts"]) == {"alice", "bob"}  # the funding payments name both
    assert rows[3]["accounts"] == {}  # a price names no account


def test_replay_human_table_is_aligned(run_cli, shared_ten_ledger):
    code, out, err = run_cli("replay", cwd=shared_ten_ledger)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["seq", "ts", "type", "ref", "summary"]
    assert len(lines) == 12  # header + 11 events
    column = lines[0].index("summary")
    assert all(line[column - 2: column] == "  " for line in lines[1:])  # one column edge for all
    assert "11 events" in err


def test_replay_of_an_account_gives_its_figures_after_each_event(run_cli, shared_ten_ledger):
    code, out, err = run_cli("replay", "--account", "alice", "--json", cwd=shared_ten_ledger)
    assert code == 0, err
    rows = json_lines(out)
    # d1, w1, x1, t1 moved alice's cash; f1 caused the funding_settled that moved it.
    assert [(r["seq"], r["relation"]) for r in rows] == [
        (5, "moved"), (7, "moved"), (8, "moved"), (9, "moved"), (10, "caused"), (11, "moved"),
    ]
    after_trade = rows[3]
    assert after_trade["account"] == "alice" and after_trade["exists"] is True
    assert after_trade["cash"] == "-20608.25"  # 9400 − 0.5 × 60010.5 − 3
    assert after_trade["positions"] == {"BTC-PERP": "0.5"}
    assert (after_trade["equity"], after_trade["initial_margin"], after_trade["maintenance_margin"]) == (
        "9391.75", "3000", "1500")
    assert after_trade["free_collateral"] == "6391.75"
    assert after_trade["margin_buffer"] == "7891.75"  # equity − MM
    assert after_trade["health"] == "ok" and after_trade["liquidatable"] is False
    # the funding input itself changes nothing; its decision takes the 3 alice pays (R9.2)
    assert rows[4]["cash"] == "-20608.25" and rows[5]["cash"] == "-20611.25"
    assert rows[5]["equity"] == "9388.75"  # as `clearing state` (interfaces §4)
    for row in rows:  # decimals are R1.1 strings
        assert all(isinstance(row[k], str) for k in ("cash", "equity", "initial_margin", "margin_buffer"))


def test_replay_of_the_other_side(run_cli, shared_ten_ledger):
    code, out, err = run_cli("replay", "--account", "bob", "--json", cwd=shared_ten_ledger)
    assert code == 0, err
    rows = json_lines(out)
    assert [r["seq"] for r in rows] == [6, 9, 10, 11]
    assert rows[-1]["cash"] == "40006.75"  # 10000 + 30005.25 − 1.5 + 3 of funding received


def test_from_and_to_bound_the_timeline_by_instant_and_start_from_the_state_before(run_cli, shared_ten_ledger):
    code, out, err = run_cli(
        "replay", "--account", "alice", "--from", "2026-03-01T00:00:03.000Z",
        "--to", "2026-03-01T00:00:05Z", "--json", cwd=shared_ten_ledger,
    )
    assert code == 0, err
    rows = json_lines(out)
    assert [r["seq"] for r in rows] == [7, 8, 9]  # ts 3 s to 5 s, both inclusive
    assert rows[0]["cash"] == "9900"  # folded from the state before --from (cash 10000)
    code, out, err = run_cli(
        "replay", "--account", "alice", "--from", "2026-03-01T00:00:03Z",
        "--to", "2026-03-01T00:00:04.999999Z", cwd=shared_ten_ledger,
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[1].split()[:3] == ["start", "2026-03-01T00:00:02Z", "(state"]
    assert "10000" in lines[1] and "the state at seq 6" in lines[1]
    assert [line.split()[0] for line in lines[2:]] == ["7", "8"]


def test_an_empty_range_prints_nothing_and_says_so(run_cli, shared_ten_ledger):
    code, out, err = run_cli("replay", "--from", "2026-03-02T00:00:00Z", "--json", cwd=shared_ten_ledger)
    assert code == 0
    assert out == ""
    assert "no events" in err


@pytest.mark.parametrize(
    "args, code_text",
    [
        (["--from", "2026-03-01 00:00:00"], "error[bad_ts]"),
        (["--to", "2026-03-01T00:00:00+00:00"], "error[bad_ts]"),
        (["--from", "2026-03-01T00:00:05Z", "--to", "2026-03-01T00:00:04Z"], "error[bad_range]"),
    ],
)
def test_bad_bounds_are_usage_errors(run_cli, shared_ten_ledger, args, code_text):
    code, out, err = run_cli("replay", *args, cwd=shared_ten_ledger)
    assert code == 2
    assert out == ""
    assert code_text in err


def test_replay_needs_a_ledger(run_cli, tmp_path):
    code, out, err = run_cli("replay", "--json", cwd=tmp_path)
    assert code == 2 and out == ""
    assert "error[store_missing]" in err


def test_the_minute_before_and_the_minute_after_a_liquidation(run_cli, tmp_path):
    """The price that makes alice liquidatable is on her timeline (relation "caused") with her
    figures after the move and before the pass (R10.1); the R10.3 close follows with the
    figures after it (the scenario of tests/test_rules_liquidation.py, k = 611)."""
    make_ledger(tmp_path, run_cli, MARKET + """
        {"type":"deposit","account":"alice","asset":"USD","amount":"700"}
        {"type":"deposit","account":"bob","asset":"USD","amount":"100000"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"bob","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"0"}
        {"type":"price","asset":"BTC","price":"58000","ts":"2026-03-01T14:00:00Z"}
        {"type":"price","asset":"BTC","price":"55500","ts":"2026-03-01T14:01:00Z"}
        {"type":"price","asset":"BTC","price":"55400","ts":"2026-03-01T14:02:00Z"}
    """)
    code, out, err = run_cli("replay", "--account", "alice", "--json", cwd=tmp_path)
    assert code == 0, err
    rows = json_lines(out)
    # prices 58000 and 55400 neither moved nor named alice nor caused a decision about her
    assert [(r["seq"], r["type"], r["relation"]) for r in rows] == [
        (7, "deposit", "moved"), (9, "trade", "moved"), (11, "price", "caused"), (12, "liquidation", "moved"),
    ]
    before, after = rows[2], rows[3]
    assert before["ts"] == after["ts"] == "2026-03-01T14:01:00Z"
    assert (before["equity"], before["maintenance_margin"], before["health"]) == ("250", "277.5", "liquidatable")
    assert before["margin_buffer"] == "-27.5" and before["liquidatable"] is True
    assert before["positions"] == {"BTC-PERP": "0.1"}
    assert (after["equity"], after["initial_margin"], after["health"]) == ("216.0895", "215.895", "ok")
    assert after["positions"] == {"BTC-PERP": "0.0389"} and after["cash"] == "-1942.8605"
    assert "R10.3 alice closes 0.0611 BTC-PERP" in after["summary"]

    # The same minute, for the whole log: @insurance took the other side.
    code, out, err = run_cli("replay", "--from", "2026-03-01T14:01:00Z", "--to", "2026-03-01T14:01:59Z",
                             "--json", cwd=tmp_path)
    assert code == 0, err
    rows = json_lines(out)
    assert [r["seq"] for r in rows] == [11, 12]
    assert rows[1]["accounts"]["alice"]["health"] == "ok"
    code, out, err = run_cli("replay", "--account", "@insurance", "--json", cwd=tmp_path)
    assert code == 0, err
    rows = json_lines(out)
    assert rows[-1]["seq"] == 12 and rows[-1]["health"] == "system"
    assert rows[-1]["positions"] == {"BTC-PERP": "0.0611"}  # the other side of the close


def test_a_rejected_trade_is_on_the_timeline_of_both_parties(run_cli, tmp_path):
    """R3.5: the rejected input and its rejection name both parties and change nothing."""
    make_ledger(tmp_path, run_cli, MARKET + """
        {"type":"deposit","account":"alice","asset":"USD","amount":"100"}
        {"type":"deposit","account":"bob","asset":"USD","amount":"10000"}
        {"type":"trade","instrument":"BTC-PERP","buyer":"alice","seller":"bob","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"0"}
    """)
    code, out, err = run_cli("replay", "--account", "bob", "--json", cwd=tmp_path)
    assert code == 0, err
    rows = json_lines(out)
    assert [(r["seq"], r["type"], r["relation"]) for r in rows] == [
        (8, "deposit", "moved"), (9, "trade", "named"), (10, "rejected", "named"),
    ]
    assert rows[1]["cash"] == rows[2]["cash"] == "10000" and rows[2]["positions"] == {}
    assert "insufficient_margin" in rows[2]["summary"] and "R8.4" in rows[2]["summary"]
    code, out, err = run_cli("replay", "--account", "carol", "--json", cwd=tmp_path)
    assert code == 0 and out == ""
    assert "no events concerning carol" in err
