"""`clearing statement` and `clearing reconcile` (interfaces §3.3), through the installed CLI.

The ledgers are small and their figures known: the ten lines of interfaces §1 (alice buys 0.5
BTC-PERP from bob at 60010.5, funding at 08:00), and for the collateral cases the same plus
carol, who deposits USD and BTC at 09:00.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import ORIGIN, TEN_LINES, _run_cli, state_json

HEADER = "account,kind,code,amount\n"
T_TRANSFER = "2026-03-01T00:00:04Z"  # after x1: seq 8, no positions yet
T_HEAD = "2026-03-01T08:00:00Z"  # after f1 and its funding_settled: seq 11

STATEMENT_AT_HEAD = (
    HEADER
    + "@external,balance,USD,-19900\n"
    "@fees,balance,USD,4.5\n"
    "@insurance,balance,USD,0\n"
    "alice,balance,USD,-20611.25\n"
    "alice,position,BTC-PERP,0.5\n"
    "alice/iso,balance,USD,500\n"
    "bob,balance,USD,40006.75\n"
    "bob,position,BTC-PERP,-0.5\n"
)

CAROL_LINES = (
    '{"id":"d3","ts":"2026-03-01T09:00:00Z","type":"deposit","account":"carol","asset":"USD","amount":"1000"}\n'
    '{"id":"d4","ts":"2026-03-01T09:00:00Z","type":"deposit","account":"carol","asset":"BTC","amount":"0.125"}\n'
)


def _statement(cwd: Path, out: Path, *args: str) -> str:
    code, stdout, err = _run_cli("statement", *args, "-o", out, cwd=cwd)
    assert code == 0, err
    assert stdout == ""
    return out.read_text()


def _reconcile(cwd: Path, statement: Path, *args: str) -> tuple[int, dict, str]:
    code, stdout, err = _run_cli("reconcile", statement, "--json", *args, cwd=cwd)
    assert code in (0, 1), err
    return code, json.loads(stdout), err


def _break(account: str, kind: str, code: str, statement: str, ledger: str, difference: str) -> dict:
    return {"account": account, "kind": kind, "code": code, "statement": statement,
            "ledger": ledger, "difference": difference}


@pytest.fixture(scope="module")
def carol_ledger(tmp_path_factory) -> Path:
    """The ten lines, then carol deposits 1000 USD and 0.125 BTC at 09:00 (seq 13)."""
    path = tmp_path_factory.mktemp("carol-ledger")
    assert _run_cli("init", "--origin", ORIGIN, cwd=path)[0] == 0
    assert _run_cli("ingest", TEN_LINES, cwd=path)[0] == 0
    (path / "carol.jsonl").write_text(CAROL_LINES)
    code, out, err = _run_cli("ingest", "--json", "carol.jsonl", cwd=path)
    assert code == 0, err
    assert json.loads(out)["head_seq"] == 13
    return path


# --- statement --------------------------------------------------------------------------------
def test_statement_lists_every_account_in_byte_order_with_decimal_strings(shared_ten_ledger, tmp_path):
    text = _statement(shared_ten_ledger, tmp_path / "s.csv", "--at", T_HEAD)
    assert text == STATEMENT_AT_HEAD
    assert (tmp_path / "s.csv").read_bytes() == STATEMENT_AT_HEAD.encode()  # \n only, ASCII


def test_statement_is_deterministic_bytes(shared_ten_ledger, tmp_path):
    first = _statement(shared_ten_ledger, tmp_path / "a.csv", "--at", T_HEAD)
    again = _statement(shared_ten_ledger, tmp_path / "b.csv", "--at", "2026-03-01T08:30:00Z")
    assert first == again  # same state (seq 11): same bytes


def test_statement_puts_collateral_before_cash_in_code_order(carol_ledger, tmp_path):
    text = _statement(carol_ledger, tmp_path / "c.csv", "--at", "2026-03-01T09:00:00Z", "--account", "carol")
    assert text == HEADER + "carol,balance,BTC,0.125\ncarol,balance,USD,1000\n"


def test_statement_names_an_account_that_holds_nothing_with_a_zero_cash_line(shared_ten_ledger, tmp_path):
    text = _statement(shared_ten_ledger, tmp_path / "i.csv", "--at", T_HEAD, "--account", "@insurance")
    assert text == HEADER + "@insurance,balance,USD,0\n"


def test_statement_for_one_account_at_an_earlier_time(shared_ten_ledger, tmp_path):
    text = _statement(shared_ten_ledger, tmp_path / "a.csv", "--at", T_TRANSFER, "--account", "alice")
    assert text == HEADER + "alice,balance,USD,9400\n"


def test_statement_before_the_first_event_is_the_header_only(shared_ten_ledger, tmp_path):
    text = _statement(shared_ten_ledger, tmp_path / "e.csv", "--at", "2026-02-28T00:00:00Z")
    assert text == HEADER


def test_statement_of_an_unknown_account_is_a_usage_error(shared_ten_ledger, tmp_path):
    code, out, err = _run_cli("statement", "--at", T_HEAD, "--account", "zed", "-o", tmp_path / "z.csv",
                              cwd=shared_ten_ledger)
    assert code == 2
    assert "error[unknown_account]" in err
    assert not (tmp_path / "z.csv").exists()


def test_statement_needs_at_and_output(shared_ten_ledger):
    assert _run_cli("statement", "-o", "x.csv", cwd=shared_ten_ledger)[0] == 2
    assert _run_cli("statement", "--at", T_HEAD, cwd=shared_ten_ledger)[0] == 2


# --- reconcile: no breaks ---------------------------------------------------------------------
@pytest.mark.parametrize("at", ["2026-03-01T00:00:01Z", T_TRANSFER, "2026-03-01T00:00:05Z", T_HEAD])
def test_statement_at_t_reconciled_at_t_has_no_breaks(shared_ten_ledger, tmp_path, at):
    path = tmp_path / "s.csv"
    _statement(shared_ten_ledger, path, "--at", at)
    code, doc, err = _reconcile(shared_ten_ledger, path, "--at", at)
    assert code == 0
    assert doc["breaks"] == []
    assert doc["at"] == at
    assert "no breaks" in err


def test_reconcile_defaults_to_the_head(shared_ten_ledger, tmp_path):
    path = tmp_path / "s.csv"
    path.write_text(STATEMENT_AT_HEAD)
    code, doc, _ = _reconcile(shared_ten_ledger, path)
    assert (code, doc) == (0, {"at": T_HEAD, "seq": 11, "breaks": []})


def test_trailing_zeros_and_crlf_line_ends_are_accepted(shared_ten_ledger, tmp_path):
    path = tmp_path / "s.csv"
    body = STATEMENT_AT_HEAD.replace("-20611.25", "-20611.250").replace(",0.5\n", ",0.5000\n")
    path.write_bytes(body.replace("\n", "\r\n").encode())
    code, doc, _ = _reconcile(shared_ten_ledger, path)
    assert (code, doc["breaks"]) == (0, [])


def test_a_header_only_statement_names_no_account_and_has_no_breaks(shared_ten_ledger, tmp_path):
    path = tmp_path / "h.csv"
    path.write_text(HEADER)
    code, doc, err = _reconcile(shared_ten_ledger, path)
    assert (code, doc) == (0, {"at": T_HEAD, "seq": 11, "breaks": []})
    assert "0 lines of 0 accounts, no breaks" in err


# --- reconcile: breaks ------------------------------------------------------------------------
def test_statement_from_t1_reconciled_at_t2_gives_exactly_the_differences(shared_ten_ledger, tmp_path):
    path = tmp_path / "s.csv"
    _statement(shared_ten_ledger, path, "--at", T_TRANSFER)
    code, doc, err = _reconcile(shared_ten_ledger, path, "--at", T_HEAD)
    assert code == 1
    assert doc == {
        "at": T_HEAD,
        "seq": 11,
        "breaks": [
            _break("@fees", "balance", "USD", "0", "4.5", "4.5"),
            _break("alice", "balance", "USD", "9400", "-20611.25", "-30011.25"),
            _break("alice", "position", "BTC-PERP", "0", "0.5", "0.5"),
            _break("bob", "balance", "USD", "10000", "40006.75", "30006.75"),
            _break("bob", "position", "BTC-PERP", "0", "-0.5", "-0.5"),
        ],
    }
    assert "5 breaks" in err


def test_differences_between_two_times_match_the_state_documents(carol_ledger, tmp_path):
    """The breaks are the holdings of `clearing state` at T2 minus those at T1, exactly."""
    t1, t2 = "2026-03-01T00:00:05Z", "2026-03-01T09:00:00Z"
    path = tmp_path / "s.csv"
    _statement(carol_ledger, path, "--at", t1)
    code, doc, _ = _reconcile(carol_ledger, path, "--at", t2)
    _, before = state_json(carol_ledger, "--at", t1)
    _, after = state_json(carol_ledger, "--at", t2)

    def held(entry: dict | None) -> dict[tuple[str, str], str]:
        if entry is None:
            return {}
        return ({("balance", a): x for a, x in entry["balances"].items()}
                | {("position", i): q for i, q in entry["positions"].items()})

    expected = []
    for account in sorted(before["accounts"]):  # the accounts the T1 statement names
        x_of, y_of = held(before["accounts"][account]), held(after["accounts"].get(account))
        for kind, code_ in sorted(x_of.keys() | y_of.keys()):
            x, y = x_of.get((kind, code_), "0"), y_of.get((kind, code_), "0")
            if x != y:
                expected.append((account, kind, code_, x, y))
    got = [(b["account"], b["kind"], b["code"], b["statement"], b["ledger"]) for b in doc["breaks"]]
    assert got == expected
    assert code == 1
    assert "carol" not in {b["account"] for b in doc["breaks"]}  # not named at T1


def test_a_wrong_balance_is_a_break(shared_ten_ledger, tmp_path):
    path = tmp_path / "s.csv"
    path.write_text(STATEMENT_AT_HEAD.replace("alice,balance,USD,-20611.25", "alice,balance,USD,-20000"))
    code, doc, err = _reconcile(shared_ten_ledger, path)
    assert code == 1
    assert doc["breaks"] == [_break("alice", "balance", "USD", "-20000", "-20611.25", "-611.25")]
    assert re.search(r"alice\s+balance\s+USD\s+-20000\s+-20611\.25\s+-611\.25", err)


def test_a_missing_position_line_is_a_break_against_zero(shared_ten_ledger, tmp_path):
    path = tmp_path / "s.csv"
    path.write_text(STATEMENT_AT_HEAD.replace("bob,position,BTC-PERP,-0.5\n", ""))
    code, doc, _ = _reconcile(shared_ten_ledger, path)
    assert code == 1
    assert doc["breaks"] == [_break("bob", "position", "BTC-PERP", "0", "-0.5", "-0.5")]


def test_a_line_the_ledger_does_not_hold_is_a_break(shared_ten_ledger, tmp_path):
    path = tmp_path / "s.csv"
    path.write_text(STATEMENT_AT_HEAD + "alice/iso,position,BTC-PERP,0.1\nalice,balance,BTC,0.5\n")
    code, doc, _ = _reconcile(shared_ten_ledger, path)
    assert code == 1
    assert doc["breaks"] == [
        _break("alice", "balance", "BTC", "0.5", "0", "-0.5"),
        _break("alice/iso", "position", "BTC-PERP", "0.1", "0", "-0.1"),
    ]


def test_an_account_the_ledger_does_not_have_is_all_breaks_against_zero(shared_ten_ledger, tmp_path):
    path = tmp_path / "s.csv"
    path.write_text(STATEMENT_AT_HEAD + "carol,balance,USD,100\ncarol,position,BTC-PERP,-0.25\n")
    code, doc, err = _reconcile(shared_ten_ledger, path)
    assert code == 1
    assert doc["breaks"] == [
        _break("carol", "balance", "USD", "100", "0", "-100"),
        _break("carol", "position", "BTC-PERP", "-0.25", "0", "0.25"),
    ]
    assert err.count("(no such account in the ledger)") == 2


def test_only_the_accounts_named_are_compared(shared_ten_ledger, tmp_path):
    path = tmp_path / "s.csv"
    path.write_text(HEADER + "bob,balance,USD,40006.75\n")  # bob's position is left out
    code, doc, _ = _reconcile(shared_ten_ledger, path)
    assert (code, doc["breaks"]) == (1, [_break("bob", "position", "BTC-PERP", "0", "-0.5", "-0.5")])


def test_json_output_is_exactly_the_interfaces_shape(shared_ten_ledger, tmp_path):
    path = tmp_path / "s.csv"
    path.write_text(HEADER + "alice,balance,USD,-20611.2\nalice,position,BTC-PERP,0.5\n")
    code, out, err = _run_cli("reconcile", path, "--json", cwd=shared_ten_ledger)
    assert code == 1
    assert out == (
        '{"at":"2026-03-01T08:00:00Z","seq":11,"breaks":[{"account":"alice","kind":"balance",'
        '"code":"USD","statement":"-20611.2","ledger":"-20611.25","difference":"-0.05"}]}\n'
    )
    doc = json.loads(out)
    assert list(doc) == ["at", "seq", "breaks"]
    assert list(doc["breaks"][0]) == ["account", "kind", "code", "statement", "ledger", "difference"]
    assert "alice" in err  # the table goes to standard error


def test_without_json_nothing_goes_to_standard_output(shared_ten_ledger, tmp_path):
    path = tmp_path / "s.csv"
    path.write_text(HEADER + "alice,balance,USD,1\n")
    code, out, err = _run_cli("reconcile", path, cwd=shared_ten_ledger)
    assert (code, out) == (1, "")
    assert err.splitlines()[1].split() == ["account", "kind", "code", "statement", "ledger", "difference"]


# --- reconcile: malformed statements ----------------------------------------------------------
def test_malformed_lines_are_reported_with_file_and_line_and_exit_2(shared_ten_ledger, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(
        HEADER
        + "alice,balanse,USD,1\n"  # 2
        "alice,balance,EUR,1\n"  # 3
        "bob,balance,USD,1e3\n"  # 4
        "bob,balance,USD,1.0000001\n"  # 5
        "bob,position,BTC-PERP,0.5\n"  # 6 (fine)
        "bob,position,BTC-PERP,0.50\n"  # 7 (repeats line 6)
        "@bank,balance,USD,1\n"  # 8
        "x,y\n"  # 9
        "\n"  # 10 (empty: ignored)
        "carol,position,ETH-PERP,1\n"  # 11
        "bob,balance,USD,-0\n"  # 12
    )
    code, out, err = _run_cli("reconcile", path, "--json", cwd=shared_ten_ledger)
    assert code == 2
    assert out == ""
    found = [re.match(r"^(.*):(\d+): error\[(\w+)\]: ", line).groups() for line in err.splitlines()]
    assert found == [
        (str(path), "2", "bad_kind"),
        (str(path), "3", "unknown_asset"),
        (str(path), "4", "bad_decimal"),
        (str(path), "5", "off_grid"),
        (str(path), "7", "duplicate_line"),
        (str(path), "8", "system_account"),
        (str(path), "9", "bad_csv"),
        (str(path), "11", "unknown_instrument"),
        (str(path), "12", "bad_decimal"),
    ]


@pytest.mark.parametrize(
    "content",
    [b"", b"account,kind,code\n", b"Account,Kind,Code,Amount\n", b"\xef\xbb\xbfaccount,kind,code,amount\n"],
)
def test_a_bad_header_is_line_1(shared_ten_ledger, tmp_path, content):
    path = tmp_path / "h.csv"
    path.write_bytes(content)
    code, out, err = _run_cli("reconcile", path, cwd=shared_ten_ledger)
    assert code == 2
    assert re.match(rf"^{re.escape(str(path))}:1: error\[(bad_header|bom)\]: ", err)


def test_a_code_listed_later_is_unknown_at_an_earlier_time(shared_ten_ledger, tmp_path):
    path = tmp_path / "s.csv"
    path.write_text(HEADER + "alice,balance,USD,1\n")
    code, _, err = _run_cli("reconcile", path, "--at", "2026-02-28T00:00:00Z", cwd=shared_ten_ledger)
    assert code == 2
    assert err.startswith(f"{path}:2: error[unknown_asset]: ")


def test_a_bad_time_or_a_missing_store_exits_2(shared_ten_ledger, tmp_path):
    path = tmp_path / "s.csv"
    path.write_text(HEADER)
    code, _, err = _run_cli("reconcile", path, "--at", "yesterday", cwd=shared_ten_ledger)
    assert (code, err.startswith("error[bad_ts]")) == (2, True)
    code, _, err = _run_cli("reconcile", path, cwd=tmp_path)
    assert (code, err.startswith("error[store_missing]")) == (2, True)
    code, _, err = _run_cli("reconcile", tmp_path / "nowhere.csv", cwd=shared_ten_ledger)
    assert (code, err.startswith("error[unreadable_file]")) == (2, True)
