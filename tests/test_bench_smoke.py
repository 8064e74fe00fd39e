"""The benchmark suite runs (a tiny size), so it cannot rot. No time is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_smoke_prints_every_figure_with_its_baseline(tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    doc = json.loads(out.read_text())
    assert set(doc["ratios"]) == {"ingest", "replay", "audit"}
    assert all(ratio > 0 for ratio in doc["ratios"].values())
    for figure in ("ingest", "raw_insert", "replay", "raw_scan", "audit"):
        assert doc["figures"][figure]["events"] == doc["events"]
    assert "raw executemany" in run.stdout and "state --at p50" in run.stdout and "verify" in run.stdout
