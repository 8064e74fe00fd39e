"""`clearing state` end to end (interfaces §4; rulebook R3.7, R6).

The tests only read the ledger, so they share one (``ten_ledger`` here is read-only).
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import state_json


def _entry(balances, positions, equity, im, mm, free, liquidatable=False):
    return {
        "balances": balances,
        "positions": positions,
        "equity": equity,
        "initial_margin": im,
        "maintenance_margin": mm,
        "free_collateral": free,
        "liquidatable": liquidatable,
    }


ZERO = _entry({}, {}, "0", "0", "0", "0")

# interfaces §4 for the ten lines of §1, with the accounts its excerpt leaves out worked by hand:
# bob: 10000 + 0.5 × 60010.5 − 1.5 fee + 3 funding received = 40006.75 cash,
#      equity 40006.75 − 0.5 × 60000 = 10006.75, IM 3000, MM 1500;
# @fees 3 + 1.5; @external −(10000 + 10000 − 100); alice/iso the 500 transferred.
TEN_STATE = {
    "rules": "clearing-rulebook/1",
    "seq": 11,
    "ts": "2026-03-01T08:00:00Z",
    "marks": {"BTC": "60000"},
    "accounts": {
        "@external": _entry({"USD": "-19900"}, {}, "-19900", "0", "0", "-19900"),
        "@fees": _entry({"USD": "4.5"}, {}, "4.5", "0", "0", "4.5"),
        "@insurance": ZERO,
        "alice": _entry({"USD": "-20611.25"}, {"BTC-PERP": "0.5"}, "9388.75", "3000", "1500", "6388.75"),
        "alice/iso": _entry({"USD": "500"}, {}, "500", "0", "0", "500"),
        "bob": _entry({"USD": "40006.75"}, {"BTC-PERP": "-0.5"}, "10006.75", "3000", "1500", "7006.75"),
    },
    "insurance_fund": "0",
    "exposure": {"BTC-PERP": {"long": "0.5", "short": "0.5", "insurance": "0"}},
}

@pytest.fixture
def ten_ledger(shared_ten_ledger):
    return shared_ten_ledger


EMPTY = {
    "rules": "clearing-rulebook/1",
    "seq": 0,
    "ts": None,
    "marks": {},
    "accounts": {},
    "insurance_fund": "0",
    "exposure": {},
}


def test_state_of_the_ten_lines_is_the_document_of_interfaces_4(ten_ledger):
    raw, doc = state_json(ten_ledger)
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1, "stdout holds one JSON document"
    assert doc == TEN_STATE


def test_state_figures_of_alice_as_in_interfaces_4(ten_ledger):
    _, doc = state_json(ten_ledger)
    alice = doc["accounts"]["alice"]
    assert alice["balances"] == {"USD": "-20611.25"}
    assert alice["positions"] == {"BTC-PERP": "0.5"}
    assert alice["equity"] == "9388.75"
    assert alice["initial_margin"] == "3000"
    assert alice["maintenance_margin"] == "1500"
    assert alice["free_collateral"] == "6388.75"
    assert alice["liquidatable"] is False
    assert doc["exposure"]["BTC-PERP"] == {"long": "0.5", "short": "0.5", "insurance": "0"}
    assert doc["insurance_fund"] == "0"
    assert doc["accounts"]["@insurance"] == ZERO


def test_every_amount_is_a_decimal_string(ten_ledger):
    _, doc = state_json(ten_ledger)

    def walk(value, path):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, path + [k])
        elif path[-1] not in ("seq", "liquidatable", "ts", "rules"):
            assert isinstance(value, str), (path, value)

    walk(doc, [])


def test_state_of_an_empty_ledger(ledger):
    _, doc = state_json(ledger)
    assert doc == EMPTY


def test_state_at_a_time_before_the_first_event_is_empty(ten_ledger):
    _, doc = state_json(ten_ledger, "--at", "2026-02-28T23:59:59.999999Z")
    assert doc == EMPTY


def test_state_at_equal_instants_with_and_without_fraction(ten_ledger):
    plain, doc = state_json(ten_ledger, "--at", "2026-03-01T00:00:05Z")
    fraction, _ = state_json(ten_ledger, "--at", "2026-03-01T00:00:05.000Z")
    assert plain == fraction
    assert doc["seq"] == 9  # the trade t1
    assert doc["ts"] == "2026-03-01T00:00:05Z"
    assert doc["accounts"]["alice"]["positions"] == {"BTC-PERP": "0.5"}
    # before the funding: alice has paid the trade and its fee only
    assert doc["accounts"]["alice"]["balances"] == {"USD": "-20608.25"}


@pytest.mark.parametrize(
    "at, seq, ts",
    [
        ("2026-03-01T00:00:00Z", 3, "2026-03-01T00:00:00Z"),  # the three listings share a ts
        ("2026-03-01T00:00:00.5Z", 3, "2026-03-01T00:00:00Z"),
        ("2026-03-01T00:00:02Z", 6, "2026-03-01T00:00:02Z"),  # both deposits
        ("2026-03-01T00:00:03.5Z", 7, "2026-03-01T00:00:03Z"),  # between w1 and x1
        ("2026-03-01T07:59:59.999999Z", 9, "2026-03-01T00:00:05Z"),
        ("2026-03-01T08:00:00Z", 11, "2026-03-01T08:00:00Z"),  # funding with its decision (R3.7)
        ("2030-01-01T00:00:00Z", 11, "2026-03-01T08:00:00Z"),
    ],
)
def test_state_at_a_time_is_after_the_last_input_at_or_before_it(ten_ledger, at, seq, ts):
    _, doc = state_json(ten_ledger, "--at", at)
    assert (doc["seq"], doc["ts"]) == (seq, ts)


def test_state_at_a_time_between_events(ten_ledger):
    _, doc = state_json(ten_ledger, "--at", "2026-03-01T00:00:03.5Z")
    assert doc["seq"] == 7
    assert doc["accounts"]["alice"] == _entry({"USD": "9900"}, {}, "9900", "0", "0", "9900")
    assert doc["accounts"]["bob"] == _entry({"USD": "10000"}, {}, "10000", "0", "0", "10000")
    assert "alice/iso" not in doc["accounts"]  # the transfer x1 comes later
    assert doc["accounts"]["@external"]["balances"] == {"USD": "-19900"}
    assert doc["exposure"] == {"BTC-PERP": {"long": "0", "short": "0", "insurance": "0"}}


def test_state_at_the_first_listings_holds_the_system_accounts(ten_ledger):
    # R2.2: the system accounts exist from the first event; the listed instrument has exposure 0
    _, doc = state_json(ten_ledger, "--at", "2026-03-01T00:00:00Z")
    assert doc["accounts"] == {"@external": ZERO, "@fees": ZERO, "@insurance": ZERO}
    assert doc["marks"] == {}
    assert doc["exposure"] == {"BTC-PERP": {"long": "0", "short": "0", "insurance": "0"}}


def test_state_at_seq(ten_ledger):
    _, doc9 = state_json(ten_ledger, "--seq", "9")
    _, at9 = state_json(ten_ledger, "--at", "2026-03-01T00:00:05Z")
    assert doc9 == at9
    # seq 10 is the funding input, seq 11 its funding_settled decision (R3.7: after event N)
    _, doc10 = state_json(ten_ledger, "--seq", "10")
    assert doc10["seq"] == 10 and doc10["ts"] == "2026-03-01T08:00:00Z"
    assert doc10["accounts"]["alice"]["balances"] == {"USD": "-20608.25"}
    assert doc10["accounts"]["bob"]["balances"] == {"USD": "40003.75"}
    _, doc11 = state_json(ten_ledger, "--seq", "11")
    assert doc11 == TEN_STATE
    _, doc1 = state_json(ten_ledger, "--seq", "1")
    assert doc1["seq"] == 1 and doc1["marks"] == {} and doc1["exposure"] == {}
    _, doc0 = state_json(ten_ledger, "--seq", "0")
    assert doc0 == EMPTY


def test_state_for_one_account(ten_ledger):
    _, doc = state_json(ten_ledger, "--account", "alice")
    assert doc["accounts"] == {"alice": TEN_STATE["accounts"]["alice"]}
    assert {k: v for k, v in doc.items() if k != "accounts"} == {
        k: v for k, v in TEN_STATE.items() if k != "accounts"
    }
    _, sys_doc = state_json(ten_ledger, "--account", "@fees", "--seq", "9")
    assert sys_doc["accounts"] == {"@fees": _entry({"USD": "4.5"}, {}, "4.5", "0", "0", "4.5")}


def test_human_output_mentions_the_accounts_and_their_figures(run_cli, ten_ledger):
    code, out, err = run_cli("state", cwd=ten_ledger)
    assert code == 0, err
    assert "alice" in out and "bob" in out
    assert "9388.75" in out and "-20611.25" in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


def test_human_output_for_one_account(run_cli, ten_ledger):
    code, out, err = run_cli("state", "--account", "bob", cwd=ten_ledger)
    assert code == 0, err
    assert "bob" in out and "10006.75" in out
    assert "alice" not in out


def test_state_output_is_byte_identical_between_runs(run_cli, ten_ledger):
    first, _ = state_json(ten_ledger)
    second, _ = state_json(ten_ledger)
    assert first == second
    code1, human1, _ = run_cli("state", cwd=ten_ledger)
    code2, human2, _ = run_cli("state", cwd=ten_ledger)
    assert code1 == code2 == 0
    assert human1 == human2


def test_state_is_the_same_for_a_ledger_built_in_several_ingests(run_cli, ledger, ten_ledger, ten_lines, tmp_path):
    assert ledger != ten_ledger
    lines = ten_lines.read_text().splitlines(keepends=True)
    for i, line in enumerate(lines):
        f = tmp_path / f"part{i}.jsonl"
        f.write_text(line)
        code, out, err = run_cli("ingest", f, cwd=ledger)
        assert code == 0, err
    assert state_json(ledger)[0] == state_json(ten_ledger)[0]


@pytest.mark.parametrize(
    "at",
    ["garbage", "2026-03-01", "2026-03-01T00:00:05+00:00", "2026-03-01t00:00:05z", "2026-02-30T00:00:00Z", ""],
)
def test_state_at_garbage_exits_2(run_cli, ten_ledger, at):
    code, out, err = run_cli("state", "--json", "--at", at, cwd=ten_ledger)
    assert code == 2
    assert out == ""
    assert err.strip()


def test_state_at_and_seq_together_is_a_usage_error(run_cli, ten_ledger):
    code, out, err = run_cli("state", "--json", "--at", "2026-03-01T00:00:05Z", "--seq", "3", cwd=ten_ledger)
    assert code == 2
    assert out == ""


def test_state_seq_not_a_number_is_a_usage_error(run_cli, ten_ledger):
    code, out, err = run_cli("state", "--json", "--seq", "five", cwd=ten_ledger)
    assert code == 2
    assert out == ""


def test_state_on_a_missing_store_exits_2(run_cli, tmp_path):
    code, out, err = run_cli("state", "--json", cwd=tmp_path)
    assert code == 2
    assert out == ""
    assert "error[" in err
    assert not (tmp_path / "clearing.db").exists()


def test_state_on_a_file_that_is_not_a_ledger_exits_2(run_cli, tmp_path):
    (tmp_path / "clearing.db").write_bytes(b"hello, not sqlite" * 100)
    code, out, err = run_cli("state", "--json", cwd=tmp_path)
    assert code == 2
    assert out == ""
    assert (tmp_path / "clearing.db").read_bytes() == b"hello, not sqlite" * 100
