"""Golden canonical bytes (interfaces §5): the bytes of every event type are pinned.

The log stores, hashes (RFC 9162 leaves) and signs these bytes, so they must never change for
an event already recorded (rulebook preamble: replaying an old log gives the same state byte
for byte). ``tests/golden/canonical.jsonl`` holds one line per sample below, in order, written
once and reviewed by hand; it is never regenerated. A renamed field, a changed default, a
changed type tag or encoder makes this test fail. A new event type needs a new sample and a new
golden line (the coverage test fails until it has one).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import msgspec
import pytest

from events import canonical
from events import schema as s

GOLDEN = Path(__file__).parent / "golden" / "canonical.jsonl"

TS = "2026-03-01T00:00:05.25Z"

SAMPLES: list[msgspec.Struct] = [
    # inputs (interfaces §1) with their seq; settlement left to its default on BTC
    s.Asset(id="a1", ts="2026-03-01T00:00:00Z", asset="USD", decimals=6, price_decimals=0,
            haircut="0", settlement=True, seq=1),
    s.Asset(id="a2", ts="2026-03-01T00:00:00Z", asset="BTC", decimals=8, price_decimals=2,
            haircut="0.1", seq=2),
    s.Instrument(id="i1", ts="2026-03-01T00:00:00Z", instrument="BTC-PERP", underlying="BTC",
                 qty_decimals=4, initial_margin="0.1", maintenance_margin="0.05",
                 liquidation_fee="0.01", seq=3),
    s.Price(id="p1", ts="2026-03-01T00:00:01Z", asset="BTC", price="60000", seq=4),
    s.Deposit(id="d1", ts="2026-03-01T00:00:02Z", account="alice", asset="USD",
              amount="10000", seq=5),
    s.Withdrawal(id="w1", ts="2026-03-01T00:00:03Z", account="alice", asset="USD",
                 amount="100", seq=6),
    s.Transfer(id="x1", ts="2026-03-01T00:00:04Z", from_="alice", to="alice/iso", asset="USD",
               amount="500", seq=7),
    s.Trade(id="t1", ts=TS, instrument="BTC-PERP", buyer="alice", seller="@insurance",
            qty="0.5", price="60010.5", buyer_fee="3", seller_fee="0", seq=8),
    s.Funding(id="f1", ts="2026-03-01T08:00:00Z", instrument="BTC-PERP", rate="-0.0001", seq=9),
    # decisions (R3.6): seq, ts, type, ref and their own fields
    s.Rejected(seq=10, ts=TS, ref="w2", reason="insufficient_margin", account="alice",
               rule="R7.2", figures={"equity_after": "-1.5", "initial_margin_after": "3000"}),
    s.Rejected(seq=11, ts=TS, ref="x2", reason="unknown_account", account="carol", rule="R2.3"),
    s.Liquidation(seq=12, ts=TS, ref="p2", rule="R10.3", account="alice",
                  instrument="BTC-PERP", price="50000", qty="0.1", k=1000,
                  position_before="0.5", position_after="0.4", penalty="50",
                  penalty_uncapped="50", equity_before="1000", initial_margin_before="2500",
                  maintenance_margin_before="1250", equity_after="950",
                  initial_margin_after="2000", maintenance_margin_after="1000"),
    s.Bankruptcy(seq=13, ts=TS, ref="p3", account="bob", equity="-700.5",
                 maintenance_margin="900", deficit="700.5", insurance_fund="500", cover="500",
                 remainder="200.5", residual="0",
                 seized=[s.Seizure(asset="BTC", amount="0.01", price="40000", value="360"),
                         s.Seizure(asset="ETH", amount="2", price="0", value="0")]),
    s.Deleverage(seq=14, ts=TS, ref="p3", account="bob", counterparty="carol",
                 instrument="BTC-PERP", price="40000", qty="0.25", position_before="-0.5",
                 counterparty_position_before="0.25", share="200.5", paid="100.25", rank=1,
                 counterparty_equity="5000", counterparty_notional="10000"),
    s.FundingSettled(seq=15, ts="2026-03-01T08:00:00Z", ref="f1", instrument="BTC-PERP",
                     rate="0.0001", price="60000",
                     paid="3.000001", received="3", dust="0.000001",
                     payments=[s.Payment(account="alice", position="0.5", amount="-3.000001"),
                               s.Payment(account="bob", position="-0.5", amount="3")]),
]

# SHA-256(0x00 || canonical bytes) of each golden line (interfaces §5), in hex.
LEAF_HASHES = [
    "b4672442c271474a14b1b75c29dcd6d04889f885c3b403001745570268c71131",  # Asset USD
    "4cfb7f0e69bb12b966be91e97d68ff5d9e98995d75fc2a3bf13713de96017256",  # Asset BTC
    "4c9b03615403d5dfec654dd8694eb20715b1ed2c4511bb00d11e114f627cce52",  # Instrument
    "8255ab1f6dd6f9a5223b27053b3e538e838d7e08e99d0e02e35b27ea15f6b2b1",  # Price
    "da9686a39f313db7f88f4e816203e40a5547253e85cb1ccc706335bb9d220fad",  # Deposit
    "6f94f2fa68cc7e6963754a7ef03d90589362d432dd6c1523d7e86c22992ef651",  # Withdrawal
    "fe8212ea0f68cd1ec2a9e226b3e465ed888f52ff8e8c89e0e580cff87d0503c9",  # Transfer
    "1a6bd4b043c470e9b8e629d38f4ddba975150648f52eedcea17573320d701f8d",  # Trade
    "b07635e0ff8b9d2c92c31174072093477b0b18389542a34b5b1cd4dbbe09460a",  # Funding
    "0f1afa712c1ad5e82efae4219520049b4139ea88bd89b0d220f058c0431e3fd4",  # Rejected with figures
    "6803aa98584058df812f40f9164510f74c8fdcc7e72c7e4d42416273be2f18f3",  # Rejected, default figures
    "fd50a7f41baaea4e3695378fc47c39efc81f9a4d26d46649bfb18dce997fb84b",  # Liquidation
    "c698585fb95000e8ecf3c6a84409b70c323cfe4f374563c2efb3df333de29fe2",  # Bankruptcy
    "9a324f2e5ecd2a5f199f4f6973fcdf0d4c27220d8b90bff1faecf5425b43488f",  # Deleverage
    "d1b77cf9a104800ad77c717cf861678997f09224d28c5a5598675079db90f4a8",  # FundingSettled
]


def _golden_lines() -> list[bytes]:
    return GOLDEN.read_bytes().split(b"\n")[:-1]


def test_golden_file_has_one_line_per_sample_and_ends_with_a_line_feed():
    data = GOLDEN.read_bytes()
    assert data.endswith(b"\n")
    assert len(_golden_lines()) == len(SAMPLES) == len(LEAF_HASHES)


def test_every_event_type_has_a_golden_sample():
    sampled = {type(event) for event in SAMPLES}
    assert sampled == set(s.INPUT_TYPES) | set(s.DECISION_TYPES)


@pytest.mark.parametrize("index", range(len(SAMPLES)), ids=lambda i: type(SAMPLES[i]).__name__)
def test_canonical_bytes_match_golden_line(index):
    """interfaces §5: the canonical bytes of every event type never change."""
    assert canonical.canonical(SAMPLES[index]) == _golden_lines()[index]


@pytest.mark.parametrize("index", range(len(SAMPLES)), ids=lambda i: type(SAMPLES[i]).__name__)
def test_golden_line_decodes_to_the_sample(index):
    assert canonical.decode(_golden_lines()[index]) == SAMPLES[index]


@pytest.mark.parametrize("index", range(len(SAMPLES)), ids=lambda i: type(SAMPLES[i]).__name__)
def test_leaf_hash_of_golden_line_is_pinned(index):
    """interfaces §5 / RFC 9162: leaf hash = SHA-256(0x00 || canonical bytes)."""
    assert canonical.leaf_hash(_golden_lines()[index]).hex() == LEAF_HASHES[index]


@pytest.mark.parametrize("index", range(len(SAMPLES)), ids=lambda i: type(SAMPLES[i]).__name__)
def test_golden_line_is_compact_json_with_sorted_keys(index):
    """interfaces §5: compact, UTF-8, keys in ascending order, decimals as strings, seq and
    *_decimals as integers."""
    line = _golden_lines()[index]
    record = json.loads(line)
    again = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert again.encode() == line
    assert type(record["seq"]) is int
    for key, value in record.items():
        if key.endswith("decimals"):
            assert type(value) is int
        elif key not in ("seq", "k", "rank", "settlement", "figures", "seized", "payments"):
            assert type(value) is str, key


def test_decision_lines_hold_seq_ts_type_and_ref():
    for line, event in zip(_golden_lines(), SAMPLES):
        if type(event) in s.DECISION_TYPES:
            assert {"seq", "ts", "type", "ref"} <= set(json.loads(line))


def test_omitted_settlement_is_recorded_as_false():
    """interfaces §1: a non-settlement asset without `settlement` records `false`."""
    assert json.loads(_golden_lines()[1])["settlement"] is False


def test_content_of_an_input_is_its_canonical_bytes_without_seq():
    """R3.4: duplicates are compared on the canonical bytes without seq."""
    deposit = SAMPLES[4]
    assert canonical.content(deposit) == (
        b'{"account":"alice","amount":"10000","asset":"USD","id":"d1",'
        b'"ts":"2026-03-01T00:00:02Z","type":"deposit"}'
    )
    assert canonical.content(msgspec.structs.replace(deposit, seq=999)) == canonical.content(deposit)


INPUT_INDEXES = [i for i, event in enumerate(SAMPLES) if type(event) in s.INPUT_TYPES]


@pytest.mark.parametrize("index", INPUT_INDEXES, ids=lambda i: type(SAMPLES[i]).__name__)
def test_content_of_every_input_is_the_golden_record_without_seq(index):
    record = json.loads(_golden_lines()[index])
    del record["seq"]
    expected = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical.content(SAMPLES[index]) == expected.encode()
    assert canonical.content_digest(SAMPLES[index]) == hashlib.sha256(expected.encode()).digest()
