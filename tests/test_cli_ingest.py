"""`clearing ingest` end to end (interfaces §3, §3.1; rulebook R3.3 to R3.6)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import state_json

TEN_SUMMARY = {"appended": 10, "duplicates": 0, "rejected": 0, "decisions": 1, "head_seq": 11}
ERROR_LINE = re.compile(r"^(?P<file>.+):(?P<line>[0-9]+): error\[(?P<code>[a-z_]+)\]: (?P<message>.+)$")

# a ts after the ten lines' last one (2026-03-01T08:00:00Z)
LATER = "2026-03-01T09:00:00Z"


def _ingest(run_cli, cwd: Path, *files, input=None):
    code, out, err = run_cli("ingest", "--json", *files, cwd=cwd, input=input)
    return code, out, err


def _summary(out: str) -> dict:
    assert out.endswith("\n") and out.count("\n") == 1, f"stdout holds one JSON document: {out!r}"
    return json.loads(out)


def _errors(err: str) -> list[tuple[str, int, str, str]]:
    """The `FILE:LINE: error[CODE]: message` lines of stderr."""
    found = []
    for line in err.splitlines():
        m = ERROR_LINE.match(line)
        if m:
            found.append((m["file"], int(m["line"]), m["code"], m["message"]))
    return found


def _write(path: Path, lines: list[str], end: str = "\n") -> Path:
    path.write_bytes("".join(line + end for line in lines).encode())
    return path


def _dep(id_: str, account: str = "alice", amount: str = "1", ts: str = LATER, asset: str = "USD") -> str:
    return json.dumps(
        {"id": id_, "ts": ts, "type": "deposit", "account": account, "asset": asset, "amount": amount},
        separators=(",", ":"),
    )


# --- the ten lines -------------------------------------------------------------------------
def test_ingest_ten_lines_prints_exactly_the_summary_of_interfaces_3_1(run_cli, ledger, ten_lines):
    code, out, err = _ingest(run_cli, ledger, ten_lines)
    assert code == 0, err
    assert _summary(out) == TEN_SUMMARY


def test_ingest_without_json_prints_nothing_on_stdout(run_cli, ledger, ten_lines):
    code, out, err = run_cli("ingest", ten_lines, cwd=ledger)
    assert code == 0, err
    assert out == ""
    assert "10" in err  # the summary goes to stderr
    _, doc = state_json(ledger)
    assert doc["seq"] == 11


def test_reingest_counts_all_as_duplicates_and_keeps_the_head(run_cli, ten_ledger, ten_lines):
    before, _ = state_json(ten_ledger)
    code, out, err = _ingest(run_cli, ten_ledger, ten_lines)
    assert code == 0, err
    assert _summary(out) == {"appended": 0, "duplicates": 10, "rejected": 0, "decisions": 0, "head_seq": 11}
    after, _ = state_json(ten_ledger)
    assert after == before


def test_duplicate_with_other_key_order_whitespace_and_trailing_zeros_is_a_duplicate(run_cli, ten_ledger, tmp_path):
    # R3.4: content is compared on the normalised input
    same_d1 = '{ "amount" : "10000.000", "asset":"USD", "account":"alice", "type":"deposit", "ts":"2026-03-01T00:00:02.000Z", "id":"d1" }'
    # R3.4: a duplicate is skipped whatever its ts (no ts_regression here), and omitted
    # `settlement` on a non-settlement asset equals an explicit false (interfaces §1)
    same_a2 = '{"id":"a2","ts":"2026-03-01T00:00:00Z","type":"asset","asset":"BTC","decimals":8,"price_decimals":2,"haircut":"0.10","settlement":false}'
    f = _write(tmp_path / "again.jsonl", [same_d1, same_a2])
    code, out, err = _ingest(run_cli, ten_ledger, f)
    assert code == 0, err
    assert _summary(out) == {"appended": 0, "duplicates": 2, "rejected": 0, "decisions": 0, "head_seq": 11}


def test_same_id_with_other_content_is_an_id_conflict(run_cli, ten_ledger, tmp_path):
    before, _ = state_json(ten_ledger)
    f = _write(tmp_path / "conflict.jsonl", [_dep("d1", amount="10001", ts="2026-03-01T00:00:02Z")])
    code, out, err = _ingest(run_cli, ten_ledger, f)
    assert code == 2
    [(name, line, error_code, message)] = _errors(err)
    assert (name, line, error_code) == (str(f), 1, "id_conflict")
    assert "d1" in message  # the message names the input
    after, _ = state_json(ten_ledger)
    assert after == before


def test_id_twice_in_one_file_is_a_duplicate_when_identical_and_malformed_otherwise(run_cli, ten_ledger, tmp_path):
    f = _write(tmp_path / "twice.jsonl", [_dep("n1"), _dep("n1")])
    code, out, err = _ingest(run_cli, ten_ledger, f)
    assert code == 0, err
    assert _summary(out) == {"appended": 1, "duplicates": 1, "rejected": 0, "decisions": 0, "head_seq": 12}

    g = _write(tmp_path / "twice_other.jsonl", [_dep("n2"), _dep("n2", amount="2")])
    code, out, err = _ingest(run_cli, ten_ledger, g)
    assert code == 2
    assert [(line, c) for _, line, c, _ in _errors(err)] == [(2, "id_conflict")]
    _, doc = state_json(ten_ledger)
    assert doc["seq"] == 12  # n2 not appended either: the file is refused whole (R3.3)


# --- malformed files (R3.3) ----------------------------------------------------------------
# (line content, expected code); one line per case of R3.3. All use a ts at or after the log's
# last ts unless the case is about ts, so each line is malformed for its own reason only.
MALFORMED = [
    ('[1, 2, 3]', "not_object"),
    ('"just a string"', "not_object"),
    ("not json at all", "invalid_json"),
    ('{"id":"m1","ts":"%s","type":"deposit","account":"alice","account":"bob","asset":"USD","amount":"1"}' % LATER, "duplicate_key"),
    ('{"id":"m2","ts":"%s","type":"loan","account":"alice","asset":"USD","amount":"1"}' % LATER, "unknown_type"),
    ('{"id":"m3","ts":"%s","type":"deposit","account":"alice","asset":"USD"}' % LATER, "missing_field"),
    ('{"id":"m4","ts":"%s","type":"deposit","account":"alice","asset":"USD","amount":"1","memo":"x"}' % LATER, "unknown_field"),
    ('{"id":"m5","ts":"%s","type":"deposit","account":"alice","asset":"USD","amount":100}' % LATER, "wrong_type"),
    ('{"id":"m6","ts":"%s","type":"deposit","account":"alice","asset":"USD","amount":"1e3"}' % LATER, "bad_decimal"),
    ('{"id":"m7","ts":"%s","type":"deposit","account":"alice","asset":"USD","amount":"01.5"}' % LATER, "bad_decimal"),
    ('{"id":"m8","ts":"%s","type":"deposit","account":"alice","asset":"USD","amount":"0.0000001"}' % LATER, "off_grid"),
    ('{"id":"m9","ts":"%s","type":"price","asset":"BTC","price":"60000.001"}' % LATER, "off_grid"),
    ('{"id":"m10","ts":"%s","type":"deposit","account":"alice","asset":"ETH","amount":"1"}' % LATER, "unknown_asset"),
    ('{"id":"m11","ts":"%s","type":"funding","instrument":"ETH-PERP","rate":"0.0001"}' % LATER, "unknown_instrument"),
    ('{"id":"m12","ts":"%s","type":"withdrawal","account":"@external","asset":"USD","amount":"1"}' % LATER, "system_account"),
    ('{"id":"m13","ts":"%s","type":"transfer","from":"@fees","to":"alice","asset":"USD","amount":"1"}' % LATER, "system_account"),
    ('{"id":"m14","ts":"%s","type":"trade","instrument":"BTC-PERP","buyer":"@fees","seller":"bob","qty":"0.1","price":"60000","buyer_fee":"0","seller_fee":"0"}' % LATER, "system_account"),
    ('{"id":"m15","ts":"2026-03-01T07:59:59.999999Z","type":"deposit","account":"alice","asset":"USD","amount":"1"}', "ts_regression"),
    ('{"id":"m16","ts":"%s","type":"asset","asset":"BTC","decimals":6,"price_decimals":2,"haircut":"0.1"}' % LATER, "bad_listing"),
    ('{"id":"f1","ts":"%s","type":"funding","instrument":"BTC-PERP","rate":"0.0002"}' % LATER, "id_conflict"),
]


def test_malformed_file_is_refused_whole_and_every_bad_line_reported(run_cli, ten_ledger, tmp_path):
    before, _ = state_json(ten_ledger)
    lines = ["# malformed inputs, one per case of R3.3", ""]
    expected: list[tuple[int, str]] = []
    for i, (text, code) in enumerate(MALFORMED):
        # good lines between the bad ones: they would be appended if the file were well formed
        lines.append(_dep(f"good{i}", ts=LATER))
        if i % 3 == 0:
            lines.append("   ")  # whitespace-only lines count as physical lines
        if i % 4 == 0:
            lines.append("# a comment")
        lines.append(text)
        expected.append((len(lines), code))
    lines.append(_dep("good-last", ts=LATER))
    f = _write(tmp_path / "bad.jsonl", lines)

    code, out, err = _ingest(run_cli, ten_ledger, f)
    assert code == 2
    reported = _errors(err)
    assert [(line, c) for _, line, c, _ in reported] == expected
    assert all(name == str(f) for name, _, _, _ in reported)
    assert all(message.strip() for _, _, _, message in reported)
    # every stderr line that looks like an error is in the documented format
    assert sum("error[" in line for line in err.splitlines()) == len(expected)
    after, _ = state_json(ten_ledger)
    assert after == before  # byte for byte: nothing of the file was appended
    # stdout, if anything, is still one JSON document
    if out:
        assert _summary(out)["head_seq"] == 11


def test_each_malformed_case_alone_refuses_its_file(run_cli, ten_ledger, tmp_path):
    """The same cases one file each, so one bad line refuses the good lines around it."""
    before, _ = state_json(ten_ledger)
    for i, (text, code) in enumerate(MALFORMED):
        f = _write(tmp_path / f"one{i}.jsonl", [_dep(f"ok{i}"), text])
        rc, out, err = _ingest(run_cli, ten_ledger, f)
        assert rc == 2, (text, err)
        assert [(line, c) for _, line, c, _ in _errors(err)] == [(2, code)], (text, err)
    after, _ = state_json(ten_ledger)
    assert after == before


def test_malformed_lines_in_crlf_file_get_physical_line_numbers(run_cli, ten_ledger, tmp_path):
    lines = ["# header", "", _dep("c1"), "not json", "", "# x", '{"id":"c2"}']
    f = _write(tmp_path / "crlf_bad.jsonl", lines, end="\r\n")
    code, out, err = _ingest(run_cli, ten_ledger, f)
    assert code == 2
    assert [(line, c) for _, line, c, _ in _errors(err)] == [(4, "invalid_json"), (7, "missing_field")]


def test_ts_earlier_than_an_earlier_line_of_the_same_file_is_malformed(run_cli, ten_ledger, tmp_path):
    # interfaces §3.1: each line is checked as if the earlier good lines were recorded
    f = _write(tmp_path / "order.jsonl", [_dep("o1", ts="2026-03-01T10:00:00Z"), _dep("o2", ts="2026-03-01T09:30:00Z")])
    code, out, err = _ingest(run_cli, ten_ledger, f)
    assert code == 2
    assert [(line, c) for _, line, c, _ in _errors(err)] == [(2, "ts_regression")]


def test_byte_order_mark_refuses_the_file(run_cli, ledger, ten_lines, tmp_path):
    f = tmp_path / "bom.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + ten_lines.read_bytes())
    code, out, err = _ingest(run_cli, ledger, f)
    assert code == 2
    assert [(line, c) for _, line, c, _ in _errors(err)] == [(1, "bom")]
    _, doc = state_json(ledger)
    assert doc["seq"] == 0


def test_first_input_must_list_the_settlement_asset(run_cli, ledger, tmp_path):
    f = _write(tmp_path / "first.jsonl", [_dep("z1", ts="2026-03-01T00:00:00Z")])
    code, out, err = _ingest(run_cli, ledger, f)
    assert code == 2
    assert [(line, c) for _, line, c, _ in _errors(err)] == [(1, "bad_listing")]


def test_invalid_utf8_is_reported_on_its_own_line_with_the_other_bad_lines(run_cli, ten_ledger, tmp_path):
    f = tmp_path / "latin1.jsonl"
    f.write_bytes((_dep("u1") + "\nnot json\n" + _dep("u2", account="alXce") + "\n").encode().replace(b"X", b"\xff"))
    assert f.read_bytes().count(b"\xff") == 1
    code, out, err = _ingest(run_cli, ten_ledger, f)
    assert code == 2
    assert [line for _, line, _, _ in _errors(err)] == [2, 3]


# --- line ends, comments, stdin ----------------------------------------------------------
def test_crlf_line_ends_give_the_same_ledger(run_cli, ledger, ten_lines, tmp_path):
    reference = tmp_path / "ref"
    reference.mkdir()
    assert run_cli("init", "--origin", "x", cwd=reference)[0] == 0
    assert run_cli("ingest", ten_lines, cwd=reference)[0] == 0

    crlf = tmp_path / "crlf.jsonl"
    crlf.write_bytes(ten_lines.read_bytes().replace(b"\n", b"\r\n"))
    assert b"\r\n" in crlf.read_bytes()
    code, out, err = _ingest(run_cli, ledger, crlf)
    assert code == 0, err
    assert _summary(out) == TEN_SUMMARY
    assert state_json(ledger)[0] == state_json(reference)[0]


def test_comments_and_blank_lines_are_ignored(run_cli, ledger, ten_lines, tmp_path):
    reference = tmp_path / "ref"
    reference.mkdir()
    assert run_cli("init", "--origin", "x", cwd=reference)[0] == 0
    assert run_cli("ingest", ten_lines, cwd=reference)[0] == 0

    mixed = []
    for i, line in enumerate(ten_lines.read_text().splitlines()):
        mixed += ["# comment before line %d" % i, "", " \t ", line, "#" + line]
    f = _write(tmp_path / "mixed.jsonl", mixed + ["", "#"])
    code, out, err = _ingest(run_cli, ledger, f)
    assert code == 0, err
    assert _summary(out) == TEN_SUMMARY
    assert state_json(ledger)[0] == state_json(reference)[0]


def test_file_without_a_final_line_end_is_read_whole(run_cli, ledger, ten_lines, tmp_path):
    f = tmp_path / "noeol.jsonl"
    f.write_bytes(ten_lines.read_bytes().rstrip(b"\n"))
    code, out, err = _ingest(run_cli, ledger, f)
    assert code == 0, err
    assert _summary(out) == TEN_SUMMARY


def test_indented_hash_line_is_not_a_comment(run_cli, ten_ledger, tmp_path):
    f = _write(tmp_path / "indented.jsonl", [_dep("h1"), "  # not a comment: first character is a space"])
    code, out, err = _ingest(run_cli, ten_ledger, f)
    assert code == 2
    assert [(line, c) for _, line, c, _ in _errors(err)] == [(2, "invalid_json")]


def test_dash_reads_standard_input(run_cli, ledger, ten_lines):
    code, out, err = _ingest(run_cli, ledger, "-", input=ten_lines.read_bytes())
    assert code == 0, err
    assert _summary(out) == TEN_SUMMARY
    _, doc = state_json(ledger)
    assert doc["accounts"]["alice"]["balances"] == {"USD": "-20611.25"}


def test_malformed_standard_input_is_reported_as_dash(run_cli, ledger, ten_lines):
    data = ten_lines.read_bytes() + b"\n# blank above\nnope\n"
    code, out, err = _ingest(run_cli, ledger, "-", input=data)
    assert code == 2
    assert [(name, line, c) for name, line, c, _ in _errors(err)] == [("-", 13, "invalid_json")]
    _, doc = state_json(ledger)
    assert doc["seq"] == 0


# --- recorded outcomes -------------------------------------------------------------------
def test_rejected_input_is_recorded_with_exit_0(run_cli, ten_ledger, tmp_path):
    _, before = state_json(ten_ledger)
    too_much = json.dumps({"id": "w2", "ts": LATER, "type": "withdrawal", "account": "alice",
                           "asset": "USD", "amount": "1000000"})
    f = _write(tmp_path / "reject.jsonl", [too_much])
    code, out, err = _ingest(run_cli, ten_ledger, f)
    assert code == 0, err
    # R3.5: the input and its `rejected` decision are both recorded
    assert _summary(out) == {"appended": 1, "duplicates": 0, "rejected": 1, "decisions": 1, "head_seq": 13}
    _, after = state_json(ten_ledger)
    assert after["seq"] == 13
    assert after["ts"] == LATER
    assert after["accounts"] == before["accounts"]  # it changes no balance or position
    # ... and re-submitting it is a duplicate, not a second rejection
    code, out, err = _ingest(run_cli, ten_ledger, f)
    assert code == 0, err
    assert _summary(out) == {"appended": 0, "duplicates": 1, "rejected": 0, "decisions": 0, "head_seq": 13}


def test_unknown_account_is_a_rejection_not_malformed(run_cli, ten_ledger, tmp_path):
    # R2.3: naming an account that does not exist is rejected (recorded), exit 0
    line = json.dumps({"id": "w3", "ts": LATER, "type": "withdrawal", "account": "carol",
                       "asset": "USD", "amount": "1"})
    f = _write(tmp_path / "carol.jsonl", [line])
    code, out, err = _ingest(run_cli, ten_ledger, f)
    assert code == 0, err
    assert _summary(out)["rejected"] == 1
    _, doc = state_json(ten_ledger)
    assert "carol" not in doc["accounts"]


def test_later_line_can_use_an_asset_listed_earlier_in_the_same_file(run_cli, ten_ledger, tmp_path):
    lines = [
        json.dumps({"id": "a3", "ts": LATER, "type": "asset", "asset": "ETH", "decimals": 8,
                    "price_decimals": 2, "haircut": "0.2"}),
        _dep("e1", asset="ETH", amount="1.5"),
        json.dumps({"id": "i2", "ts": LATER, "type": "instrument", "instrument": "ETH-PERP",
                    "underlying": "ETH", "qty_decimals": 3, "initial_margin": "0.2",
                    "maintenance_margin": "0.1", "liquidation_fee": "0.02"}),
        json.dumps({"id": "p2", "ts": LATER, "type": "price", "asset": "ETH", "price": "3000"}),
        json.dumps({"id": "f2", "ts": LATER, "type": "funding", "instrument": "ETH-PERP", "rate": "0"}),
    ]
    f = _write(tmp_path / "listing.jsonl", lines)
    code, out, err = _ingest(run_cli, ten_ledger, f)
    assert code == 0, err
    assert _summary(out) == {"appended": 5, "duplicates": 0, "rejected": 0, "decisions": 1, "head_seq": 17}
    _, doc = state_json(ten_ledger)
    assert doc["accounts"]["alice"]["balances"]["ETH"] == "1.5"
    assert doc["marks"] == {"BTC": "60000", "ETH": "3000"}
    assert doc["exposure"]["ETH-PERP"] == {"long": "0", "short": "0", "insurance": "0"}


def test_asset_used_before_its_listing_in_the_same_file_is_malformed(run_cli, ten_ledger, tmp_path):
    lines = [
        _dep("e1", asset="ETH", amount="1"),
        json.dumps({"id": "a3", "ts": LATER, "type": "asset", "asset": "ETH", "decimals": 8,
                    "price_decimals": 2, "haircut": "0.2"}),
    ]
    f = _write(tmp_path / "too_early.jsonl", lines)
    code, out, err = _ingest(run_cli, ten_ledger, f)
    assert code == 2
    assert [(line, c) for _, line, c, _ in _errors(err)] == [(1, "unknown_asset")]


def test_listing_in_a_refused_file_does_not_leak_into_the_next_file(run_cli, ten_ledger, tmp_path):
    listing = json.dumps({"id": "a3", "ts": LATER, "type": "asset", "asset": "ETH", "decimals": 8,
                          "price_decimals": 2, "haircut": "0.2"})
    first = _write(tmp_path / "first.jsonl", [listing, "broken"])
    second = _write(tmp_path / "second.jsonl", [_dep("e1", asset="ETH")])
    code, out, err = _ingest(run_cli, ten_ledger, first, second)
    assert code == 2
    assert [(Path(n).name, line, c) for n, line, c, _ in _errors(err)] == [
        ("first.jsonl", 2, "invalid_json"),
        ("second.jsonl", 1, "unknown_asset"),
    ]
    _, doc = state_json(ten_ledger)
    assert doc["seq"] == 11


# --- stores and several files ------------------------------------------------------------
def test_ingest_on_a_missing_store_exits_2_and_creates_nothing(run_cli, tmp_path, ten_lines):
    code, out, err = _ingest(run_cli, tmp_path, ten_lines)
    assert code == 2
    assert out == ""
    assert "error[" in err
    assert not (tmp_path / "clearing.db").exists()


def test_ingest_of_a_missing_file_exits_2(run_cli, ledger):
    code, out, err = _ingest(run_cli, ledger, "no-such-file.jsonl")
    assert code == 2
    assert "no-such-file.jsonl" in err
    _, doc = state_json(ledger)
    assert doc["seq"] == 0


def test_two_files_second_malformed_appends_the_first_only(run_cli, ledger, ten_lines, tmp_path):
    second = _write(tmp_path / "second.jsonl", [_dep("s1"), "{oops", _dep("s2")])
    code, out, err = _ingest(run_cli, ledger, ten_lines, second)
    assert code == 2
    assert [(name, line, c) for name, line, c, _ in _errors(err)] == [(str(second), 2, "invalid_json")]
    _, doc = state_json(ledger)
    assert doc["seq"] == 11
    assert doc["accounts"]["alice"]["balances"] == {"USD": "-20611.25"}  # s1, s2 not appended
    if out:
        assert _summary(out) == TEN_SUMMARY


def test_the_same_file_twice_in_one_command_is_duplicates_the_second_time(run_cli, ledger, ten_lines):
    code, out, err = _ingest(run_cli, ledger, ten_lines, ten_lines)
    assert code == 0, err
    assert _summary(out) == {"appended": 10, "duplicates": 10, "rejected": 0, "decisions": 1, "head_seq": 11}


def test_an_empty_file_appends_nothing(run_cli, ten_ledger, tmp_path):
    f = tmp_path / "empty.jsonl"
    f.write_bytes(b"")
    code, out, err = _ingest(run_cli, ten_ledger, f)
    assert code == 0, err
    assert _summary(out) == {"appended": 0, "duplicates": 0, "rejected": 0, "decisions": 0, "head_seq": 11}


def test_two_good_files_are_appended_in_order(run_cli, ledger, ten_lines, tmp_path):
    second = _write(tmp_path / "second.jsonl", [_dep("s1", amount="0.5"), _dep("s2", account="carol", amount="7")])
    code, out, err = _ingest(run_cli, ledger, ten_lines, second)
    assert code == 0, err
    assert _summary(out) == {"appended": 12, "duplicates": 0, "rejected": 0, "decisions": 1, "head_seq": 13}
    _, doc = state_json(ledger)
    assert doc["accounts"]["alice"]["balances"] == {"USD": "-20610.75"}
    assert doc["accounts"]["carol"]["balances"] == {"USD": "7"}


def test_ingest_requires_a_file(run_cli, ledger):
    code, out, err = run_cli("ingest", cwd=ledger)
    assert code == 2
    assert out == ""
