"""`clearing report --account A [--from TS] [--to TS] -o FILE.html` (interfaces §3): a
self-contained HTML incident report that works offline, the same bytes for the same input.

A small ledger built with the command line has listings, prices, a haircut change, trades, a
rejected withdrawal and trade, funding, and a crash that first liquidates alice (R10.3), then
makes her bankrupt (R10.4) with an uncovered remainder that carol pays by deleveraging (R10.6).
The report is checked as text (sections, figures, no external reference, determinism) and in
headless Chromium (a screenshot that is not blank, the charts at their size, no request at all).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tokenize
from pathlib import Path

import pytest

from tests.conftest import ORIGIN, _run_cli

ROOT = Path(__file__).resolve().parent.parent

# --- the ledger ---------------------------------------------------------------------------------
T0 = "2026-03-01T"
PART_1 = [
    {"id": "a-usd", "ts": T0 + "00:00:00Z", "type": "asset", "asset": "USD", "decimals": 6,
     "price_decimals": 0, "haircut": "0", "settlement": True},
    {"id": "a-btc", "ts": T0 + "00:00:00Z", "type": "asset", "asset": "BTC", "decimals": 8,
     "price_decimals": 2, "haircut": "0.1"},
    {"id": "a-eth", "ts": T0 + "00:00:00Z", "type": "asset", "asset": "ETH", "decimals": 8,
     "price_decimals": 2, "haircut": "0.2"},
    {"id": "i-btc", "ts": T0 + "00:00:00Z", "type": "instrument", "instrument": "BTC-PERP",
     "underlying": "BTC", "qty_decimals": 4, "initial_margin": "0.1", "maintenance_margin": "0.05",
     "liquidation_fee": "0.01"},
    {"id": "p1", "ts": T0 + "00:00:01Z", "type": "price", "asset": "BTC", "price": "60000"},
    {"id": "p2", "ts": T0 + "00:00:01Z", "type": "price", "asset": "ETH", "price": "3000"},
    {"id": "d0", "ts": T0 + "00:00:02Z", "type": "deposit", "account": "@insurance", "asset": "USD",
     "amount": "1000"},
    {"id": "d1", "ts": T0 + "00:00:02Z", "type": "deposit", "account": "alice", "asset": "USD", "amount": "10000"},
    {"id": "d2", "ts": T0 + "00:00:02Z", "type": "deposit", "account": "alice", "asset": "ETH", "amount": "1"},
    {"id": "d3", "ts": T0 + "00:00:02Z", "type": "deposit", "account": "bob", "asset": "USD", "amount": "100000"},
    {"id": "d4", "ts": T0 + "00:00:02Z", "type": "deposit", "account": "carol", "asset": "USD", "amount": "50000"},
    {"id": "t1", "ts": T0 + "01:00:00Z", "type": "trade", "instrument": "BTC-PERP", "buyer": "alice",
     "seller": "bob", "qty": "0.6", "price": "60000", "buyer_fee": "6", "seller_fee": "3"},
    {"id": "t2", "ts": T0 + "01:10:00Z", "type": "trade", "instrument": "BTC-PERP", "buyer": "alice",
     "seller": "carol", "qty": "0.4", "price": "60010", "buyer_fee": "4", "seller_fee": "2"},
    {"id": "p3", "ts": T0 + "02:00:00Z", "type": "price", "asset": "BTC", "price": "58500"},
    {"id": "t-big", "ts": T0 + "02:10:00Z", "type": "trade", "instrument": "BTC-PERP", "buyer": "alice",
     "seller": "bob", "qty": "2", "price": "58500", "buyer_fee": "0", "seller_fee": "0"},
    {"id": "w1", "ts": T0 + "02:30:00Z", "type": "withdrawal", "account": "alice", "asset": "USD", "amount": "5000"},
    {"id": "a-eth2", "ts": T0 + "03:00:00Z", "type": "asset", "asset": "ETH", "decimals": 8,
     "price_decimals": 2, "haircut": "0.25"},
]
PART_2 = [
    {"id": "p4", "ts": T0 + "03:30:00Z", "type": "price", "asset": "ETH", "price": "2900"},
    {"id": "f1", "ts": T0 + "08:00:00Z", "type": "funding", "instrument": "BTC-PERP", "rate": "0.0001"},
    {"id": "p5", "ts": T0 + "09:00:00Z", "type": "price", "asset": "BTC", "price": "55000"},
    {"id": "p6", "ts": T0 + "09:05:00Z", "type": "price", "asset": "BTC", "price": "50000"},
    {"id": "t3", "ts": T0 + "09:10:00Z", "type": "trade", "instrument": "BTC-PERP", "buyer": "bob",
     "seller": "@insurance", "qty": "0.1", "price": "50000", "buyer_fee": "0", "seller_fee": "0"},
    {"id": "p7", "ts": T0 + "09:20:00Z", "type": "price", "asset": "ETH", "price": "2500"},
    {"id": "p8", "ts": T0 + "09:30:00Z", "type": "price", "asset": "BTC", "price": "42000"},
    {"id": "p9", "ts": T0 + "10:00:00Z", "type": "price", "asset": "BTC", "price": "44000"},
]


def _lines(records: list[dict]) -> str:
    return "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)


def build_ledger(folder: Path) -> str:
    """The ledger, built with the command line, with a checkpoint after the first file;
    returns the verifier key that `clearing init` printed."""
    code, key, err = _run_cli("init", "--origin", ORIGIN, cwd=folder)
    assert code == 0, err
    (folder / "part1.jsonl").write_text(_lines(PART_1))
    (folder / "part2.jsonl").write_text(_lines(PART_2))
    code, out, err = _run_cli("ingest", "--checkpoint", "--json", "part1.jsonl", cwd=folder)
    assert code == 0, err
    code, out, err = _run_cli("ingest", "--json", "part2.jsonl", cwd=folder)
    assert code == 0, err
    return key.strip()


def decisions(folder: Path) -> list[dict]:
    with sqlite3.connect(folder / "clearing.db") as db:
        rows = db.execute("select state from stored_events order by rowid").fetchall()
    events = [json.loads(r[0]) for r in rows]
    return [e for e in events if e["type"] in ("rejected", "liquidation", "bankruptcy", "deleverage",
                                                 "funding_settled")]


def report(folder: Path, *args: str, name: str = "report.html") -> bytes:
    code, out, err = _run_cli("report", *args, "-o", name, cwd=folder)
    assert code == 0, err
    assert out == ""
    return (folder / name).read_bytes()


@pytest.fixture(scope="module")
def ledger(tmp_path_factory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("report-ledger")
    key = build_ledger(folder)
    return folder, key


@pytest.fixture(scope="module")
def alice_report(ledger) -> bytes:
    folder, _ = ledger
    return report(folder, "--account", "alice", name="alice.html")


# --- the ledger is what the test means it to be ----------------------------------------------------
def test_the_ledger_has_every_kind_of_decision_for_alice(ledger):
    folder, _ = ledger
    mine = [d for d in decisions(folder) if d.get("account") == "alice" or d["type"] == "funding_settled"]
    kinds = [(d["type"], d.get("reason") or d.get("rule") or "") for d in mine]
    assert ("rejected", "insufficient_margin") in kinds  # the trade t-big (R8.4)
    assert ("rejected", "insufficient_balance") in kinds  # the withdrawal w1 (R7.2)
    assert ("liquidation", "R10.3") in kinds
    bankrupt = [d for d in mine if d["type"] == "bankruptcy"]
    assert len(bankrupt) == 1 and bankrupt[0]["remainder"] != "0" and bankrupt[0]["seized"]
    assert [d["counterparty"] for d in mine if d["type"] == "deleverage"] == ["carol"]


# --- content ------------------------------------------------------------------------------------
SECTIONS = ('id="summary"', 'id="margin"', 'id="prices"', 'id="parameters"', 'id="events"',
            'id="decisions"', 'id="verification"')


def test_report_has_every_section_and_the_figures(ledger, alice_report):
    folder, key = ledger
    text = alice_report.decode()
    assert text.startswith("<!DOCTYPE html>")
    for section in SECTIONS:
        assert section in text, section
    assert text.count("<svg ") == 2
    assert '<svg id="chart-margin"' in text and '<svg id="chart-prices"' in text
    assert "Incident report: account <code>alice</code>" in text
    # parameters: at the start of the whole log nothing is listed; the changes hold the haircut
    assert "haircut 0.2 → 0.25" in text
    assert "listed: IMF 0.1, MMF 0.05, LF 0.01" in text
    # the events table: one row per event that touched alice, with her figures after it
    found = decisions(folder)
    liq = next(d for d in found if d["type"] == "liquidation")
    bank = next(d for d in found if d["type"] == "bankruptcy")
    adl = next(d for d in found if d["type"] == "deleverage")
    for d in (liq, bank, adl):
        assert f'id="seq-{d["seq"]}"' in text
        assert f'id="explain-{d["seq"]}"' in text
    row = re.search(rf'<tr class="bankruptcy decision" id="seq-{bank["seq"]}">(.*?)</tr>', text).group(1)
    assert f">{bank['equity']}<" in row  # equity after the bankrupt valuation is the deficit
    assert "remainder " + bank["remainder"] in row
    liq_row = re.search(rf'id="seq-{liq["seq"]}">(.*?)</tr>', text).group(1)
    assert f">{liq['equity_after']}<" in liq_row and f">{liq['initial_margin_after']}<" in liq_row
    # the price that caused the liquidation is shown as its context
    assert f'<tr class="price context" id="seq-{liq["seq"] - 1}">' in text
    # the rejected inputs and the funding payment
    assert "insufficient_margin (R8.4" in text or "insufficient_margin (R8" in text
    assert "insufficient_balance (R7.2" in text
    assert "alice (position 1) paid 5.85" in text
    # cards
    assert "<b>1</b><span>bankruptcies</span>" in text
    assert "<b>1</b><span>deleveraging steps</span>" in text
    # footer: log position, state root, checkpoint and how to verify
    assert "seq 31, ts 2026-03-01T10:00:00Z" in text  # the end of the period and the head (31 events)
    assert key in text
    assert "clearing prove --account alice --at 2026-03-01T10:00:00Z -o proof.json" in text
    assert f"clearing verify proof.json --key {key}" in text
    assert "tree size 19" in text  # the checkpoint `ingest --checkpoint` signed after part 1


def test_state_root_in_the_footer_is_the_one_a_proof_verifies(tmp_path):
    key = build_ledger(tmp_path)
    text = report(tmp_path, "--account", "alice", "--to", T0 + "09:10:00Z").decode()
    root = re.search(r"state root at seq (\d+)</dt><dd><code>([^<]+)</code>", text)
    assert root is not None
    seq, state_root = int(root.group(1)), root.group(2)
    code, out, err = _run_cli("prove", "--account", "alice", "--at", T0 + "09:10:00Z", "-o", "proof.json",
                              cwd=tmp_path)
    assert code == 0, err
    proof = json.loads((tmp_path / "proof.json").read_text())
    assert proof["seq"] == seq
    signed = proof["checkpoint"].splitlines()
    assert signed[1] == str(seq) and signed[3] == f"state {state_root}"
    code, out, err = _run_cli("verify", "proof.json", "--key", key, cwd=tmp_path)
    assert code == 0, out + err
    # the proof's leaf holds the last figures of the report
    leaf = json.loads(base64.b64decode(proof["leaf"]))
    last_row = re.findall(r'<tr class="[^"]*" id="seq-\d+">.*?</tr>', text)[-1]
    cells = re.findall(r'<td class="n[^"]*">([^<]+)</td>', last_row)
    assert cells[1:] == [leaf["equity"], leaf["initial_margin"], leaf["maintenance_margin"]]


def test_report_is_deterministic(ledger, alice_report):
    folder, _ = ledger
    assert report(folder, "--account", "alice", name="again.html") == alice_report
    window = ("--account", "alice", "--from", T0 + "09:00:00Z", "--to", T0 + "09:30:00Z")
    assert report(folder, *window, name="w1.html") == report(folder, *window, name="w2.html")


def test_report_is_self_contained(alice_report):
    text = alice_report.decode()
    assert "http://" not in text and "https://" not in text
    # no protocol-relative reference either ("//host/x"); base64 text (roots, keys) may hold "//"
    assert not re.search(r"""(["'(=\s])//[A-Za-z0-9.-]+/""", re.sub(r"<pre>.*?</pre>", "", text, flags=re.S))
    for attr, target in re.findall(r"""\b(src|href|xlink:href|action|poster|srcset)\s*=\s*["']([^"']*)""", text):
        assert target.startswith(("#", "data:")), (attr, target)
    for target in re.findall(r"url\(\s*([^)]*)\)", text):
        assert target.strip("'\"").startswith(("#", "data:")), target
    lowered = text.lower()
    for banned in ("<script", "<link", "<iframe", "<object", "<embed", "@import", "@font-face"):
        assert banned not in lowered, banned
    assert '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'' in text


def test_period_bounds_the_report(ledger):
    folder, _ = ledger
    text = report(folder, "--account", "alice", "--from", T0 + "09:00:00Z", "--to", T0 + "09:30:00Z",
                  name="window.html").decode()
    stamps = re.findall(r'<td class="ts">([^<]+)</td>', re.search(r'id="events".*?</table>', text, re.S).group(0))
    assert stamps and all(T0 + "09:00:00Z" <= ts <= T0 + "09:30:00Z" for ts in stamps)
    # the parameters in force at the start are those after the haircut change
    start = re.search(r"At the start of the period \(after seq (\d+)\).*?</table>", text, re.S)
    assert start is not None and "<td>ETH</td><td>0.25</td><td>2900</td>" in start.group(0)
    assert "No listing event in the period." in text
    assert "clearing prove --account alice --at 2026-03-01T09:30:00Z -o proof.json" in text
    # funding at 08:00 is outside; the equity at the start is the one after it
    assert "funding_settled" not in re.search(r'id="events".*?</table>', text, re.S).group(0)


def test_report_for_unknown_account_or_bad_arguments_exits_2(ledger):
    folder, _ = ledger
    code, out, err = _run_cli("report", "--account", "nobody", "-o", "x.html", cwd=folder)
    assert code == 2 and "error[unknown_account]" in err and out == ""
    assert not (folder / "x.html").exists()
    # an account created after the period is unknown in it
    code, out, err = _run_cli("report", "--account", "alice", "--to", "2026-02-01T00:00:00Z", "-o", "x.html",
                              cwd=folder)
    assert code == 2 and "error[unknown_account]" in err
    code, out, err = _run_cli("report", "--account", "alice", "--from", "yesterday", "-o", "x.html", cwd=folder)
    assert code == 2 and "error[bad_ts]" in err
    code, out, err = _run_cli("report", "--account", "alice", "--from", T0 + "10:00:00Z", "--to",
                              T0 + "09:00:00Z", "-o", "x.html", cwd=folder)
    assert code == 2 and "error[bad_period]" in err
    code, out, err = _run_cli("report", "--account", "alice", "-o", "x.html", cwd=folder / "..")
    assert code == 2 and "error[store_missing]" in err


def test_floats_only_at_the_plotting_boundary():
    """The house rule: no floats for money (R1.1); the charts convert on marked lines only."""
    path = ROOT / "clearing" / "report.py"
    with open(path) as f:
        tokens = list(tokenize.generate_tokens(f.readline))
    unmarked = [
        (tok.start[0], tok.line.strip())
        for tok in tokens
        if (tok.type == tokenize.OP and tok.string in ("/", "/="))
        or (tok.type == tokenize.NAME and tok.string == "float")
        if "float-ok: plotting" not in tok.line
    ]
    assert unmarked == []


# --- explanations ---------------------------------------------------------------------------------
def _in_process(folder: Path, monkeypatch, explainer, group_explainer=None) -> str:
    from clearing import report as module
    from events.store import open_store

    monkeypatch.setattr(module, "_explainer", lambda: explainer)
    monkeypatch.setattr(module, "_group_explainer", lambda: group_explainer)
    store = open_store(str(folder / "clearing.db"))
    try:
        return module.build_report(store, "alice", None, None).decode()
    finally:
        store.close()


def test_decisions_use_clearing_explain_when_it_exists(ledger, monkeypatch):
    folder, _ = ledger

    class Explanation:
        def __init__(self, seq: int) -> None:
            self.seq = seq

        def text(self) -> str:
            return f"EXPLAINED {self.seq}: by R10.4\nsecond line"

    text = _in_process(folder, monkeypatch, lambda store, seq: Explanation(seq))
    found = decisions(folder)
    bank = next(d for d in found if d["type"] == "bankruptcy")
    adl = next(d for d in found if d["type"] == "deleverage")
    assert f"EXPLAINED {bank['seq']}: by R10.4\nsecond line" in text
    assert "From <code>clearing explain SEQ</code>" in text

    # The bankruptcy and the deleveraging share their input (p8): one walk explains both.
    class Group:
        def __init__(self, ref: str) -> None:
            assert ref == "p8"
            self.caused = [Explanation(bank["seq"]), Explanation(adl["seq"])]

    walks: list[str] = []

    def explain_input(store, ref):
        walks.append(ref)
        return Group(ref)

    text = _in_process(folder, monkeypatch, lambda store, seq: Explanation(seq), explain_input)
    assert walks == ["p8"]
    assert f"EXPLAINED {adl['seq']}: by R10.4" in text


def test_the_real_explain_is_used_and_agrees_with_the_record(alice_report):
    """With `clearing explain` present (it is optional for the report), its text is embedded."""
    pytest.importorskip("clearing.explain")
    text = alice_report.decode()
    assert "From <code>clearing explain SEQ</code>" in text
    assert "R12.5: re-running the rules gives exactly the recorded event" in text


def test_decisions_fall_back_to_recorded_figures(ledger, monkeypatch):
    folder, _ = ledger
    text = _in_process(folder, monkeypatch, None)
    assert "clearing explain</code> was not available" in text
    assert "bankruptcy caused by input p8 (rules R10.4, R10.7); recorded figures:" in text
    assert "seized: 1 ETH at 2500, paid 1875" in text

    def broken(store, seq):
        raise RuntimeError("boom")

    text = _in_process(folder, monkeypatch, broken)
    assert "clearing explain failed: RuntimeError: boom" in text
    assert "recorded figures:" in text


def test_long_explanations_keep_the_lines_naming_the_account():
    from clearing.report import MAX_EXPLANATION_LINES, _shorten

    lines = ["head"] + [f"  acct-{i}: q {i}" for i in range(200)] + ["tail"]
    out = _shorten(lines, "acct-150", 7)
    assert len(out) < MAX_EXPLANATION_LINES
    assert out[0] == "head" and out[-1] == "tail"
    assert "  acct-150: q 150" in out
    assert "  acct-15: q 15" not in out and "  acct-1500: q 1500" not in out
    assert any("lines left out (clearing explain 7 shows them all)" in line for line in out)
    assert _shorten(lines[:50], "acct-150", 7) == lines[:50]


# --- headless Chromium ---------------------------------------------------------------------------
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--enable-logging=stderr", "--v=0",
]


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if path is None:
        reason = "chromium is not installed (apt-get install -y chromium; .ci/run installs it)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def run_chromium(chromium: str, page: Path, work: Path, *args: str) -> tuple[str, str, list[str]]:
    """(stdout, the log, the URLs the page itself requested from the network).

    The net log lists every request of the network service. Chromium's own background requests
    (browser-initiated: ``initiator`` "not an origin") are left out; a request made by the page
    (a file:// page has the opaque origin "null") is kept."""
    profile = work / f"profile-{len(list(work.glob('profile-*')))}"
    profile.mkdir(parents=True)
    netlog = profile.with_suffix(".netlog.json")
    run = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--log-net-log={netlog}", *args,
         page.resolve().as_uri()],
        capture_output=True, timeout=180,
    )
    assert run.returncode == 0, run.stderr.decode(errors="replace")[-3000:]
    doc = json.loads(netlog.read_text())
    names = {number: name for name, number in doc["constants"]["logEventTypes"].items()}
    requested = [
        e["params"]["url"]
        for e in doc["events"]
        if names.get(e["type"]) == "URL_REQUEST_START_JOB" and "url" in (e.get("params") or {})
        and e["params"].get("initiator") != "not an origin"
    ]
    return run.stdout.decode(errors="replace"), run.stderr.decode(errors="replace"), requested


def without_csp(data: bytes) -> bytes:
    """The report without its Content-Security-Policy, so that the browser checks the content
    itself: with the policy, an external reference would be blocked before any request."""
    stripped = re.sub(rb'<meta http-equiv="Content-Security-Policy"[^>]*>\n', b"", data)
    assert stripped != data
    return stripped


def check_screenshot(png: Path) -> None:
    import numpy as np
    from matplotlib import image

    pixels = image.imread(str(png))
    assert pixels.shape[:2] == (2400, 1280)
    rgb = np.rint(pixels[..., :3] * 255).astype(np.int32)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    assert len(np.unique(packed)) > 200  # text, charts, tables: not a blank page

    def near(colour: str) -> "np.ndarray":
        target = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
        return (np.abs(rgb - target) <= 6).all(axis=-1)

    from clearing.report import COLOURS

    equity = near(COLOURS["equity"])
    for key in ("equity", "im", "mm"):
        assert near(COLOURS[key]).sum() > 200, key  # each series is drawn
    ys, xs = np.nonzero(equity)
    assert xs.max() - xs.min() > 900  # the equity line spans the chart's width
    # the chart area (from its first to its last equity pixel) is drawn, not blank
    top, bottom = ys.min(), ys.min() + 300
    area = rgb[top:bottom, xs.min():xs.max()]
    non_white = (area < 245).any(axis=-1).mean()
    assert non_white > 0.01
    assert len(np.unique(packed[top:bottom, xs.min():xs.max()])) > 30


def test_report_renders_in_headless_chromium_offline(chromium, ledger, alice_report, tmp_path):
    page = tmp_path / "alice.html"
    page.write_bytes(without_csp(alice_report))
    png = tmp_path / "shot.png"
    _out, log, requested = run_chromium(chromium, page, tmp_path, f"--screenshot={png}", "--window-size=1280,2400")
    assert png.exists()
    assert "net::ERR_" not in log
    assert requested == []
    check_screenshot(png)
    shutil.copy(png, ledger[0] / "alice-screenshot.png")  # for a person to look at

    dom, log, requested = run_chromium(chromium, page, tmp_path, "--dump-dom")
    assert "net::ERR_" not in log and requested == []
    svgs = dict(re.findall(r'<svg id="(chart-[a-z]+)" class="chart" width="(\d+" height="\d+)"', dom))
    assert svgs == {"chart-margin": '1152" height="432', "chart-prices": '1152" height="432'}
    assert dom.count("<path ") > 100  # the charts' lines and glyphs are in the DOM


def test_the_network_check_catches_a_page_request(chromium, tmp_path):
    """The check above would see an external reference: a page with one is caught."""
    page = tmp_path / "external.html"
    page.write_text('<!DOCTYPE html><html><body><p>x</p><img src="http://192.0.2.1/pixel.png"></body></html>')
    _out, _log, requested = run_chromium(chromium, page, tmp_path, "--dump-dom")
    assert requested == ["http://192.0.2.1/pixel.png"]


# --- the demo ledger --------------------------------------------------------------------------------
@pytest.mark.slow
def test_report_on_the_demo_ledger(tmp_path_factory, chromium):
    folder = tmp_path_factory.mktemp("report-demo") / "ledger"
    code, out, err = _run_cli("demo", "--dir", folder, cwd=folder.parent, timeout=600)
    assert code == 0, err
    store = str(folder / "clearing.db")
    with sqlite3.connect(store) as db:
        rows = db.execute(
            "select state from stored_events where topic in ('bankruptcy', 'deleverage') order by rowid"
        ).fetchall()
    adl = [json.loads(r[0]) for r in rows]
    account = "zeta-capital"  # the whale: bankrupt at the crash, deleveraged against many
    mine = [d for d in adl if d["account"] == account]
    assert [d["type"] for d in mine][:1] == ["bankruptcy"] and len(mine) > 2
    args = ("--store", store, "--account", account)
    first = report(folder, *args, name="zeta.html")
    assert report(folder, *args, name="zeta-again.html") == first
    text = first.decode()
    for section in SECTIONS:
        assert section in text
    assert "http://" not in text and "https://" not in text
    for d in mine:
        assert f'id="seq-{d["seq"]}"' in text and f'id="explain-{d["seq"]}"' in text
    assert f"<b>{len(mine) - 1}</b><span>deleveraging steps</span>" in text
    window = report(folder, *args, "--from", "2026-03-02T13:45:00Z", "--to", "2026-03-02T14:30:00Z",
                    name="zeta-crash.html")
    assert window.count(b'class="deleverage decision"') == len(mine) - 1
    page = folder / "zeta-crash-offline.html"
    page.write_bytes(without_csp(window))
    png = folder / "zeta-crash.png"
    _out, log, requested = run_chromium(chromium, page, folder, f"--screenshot={png}", "--window-size=1280,2400")
    assert "net::ERR_" not in log and requested == []
    check_screenshot(png)
