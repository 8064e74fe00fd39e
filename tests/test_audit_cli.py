"""`clearing audit` through the command line: exit 0 and no findings on a clean ledger, exit 1
with the finding at the right seq once a stored event is changed in place (interfaces §3.2)."""

from __future__ import annotations

import json
import sqlite3


def test_audit_exits_0_on_a_clean_ledger_and_1_on_a_changed_event(run_cli, ten_ledger):
    code, out, err = run_cli("audit", "--json", cwd=ten_ledger)
    assert code == 0, err
    assert json.loads(out) == {"ok": True, "events": 11, "findings": []}

    db = sqlite3.connect(ten_ledger / "clearing.db")
    with db:
        (state,) = db.execute("select state from stored_events where originator_version = 7").fetchone()
        assert b'"amount":"100"' in state  # alice's withdrawal
        db.execute("update stored_events set state = ? where originator_version = 7",
                   (state.replace(b'"amount":"100"', b'"amount":"10"'),))
    db.close()
    code, out, err = run_cli("audit", "--json", cwd=ten_ledger)
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False and report["events"] == 11
    assert any(f["seq"] == 7 and f["rule"] == "§5" for f in report["findings"])
    code, out, err = run_cli("audit", cwd=ten_ledger)
    assert code == 1 and "seq 7:" in out
