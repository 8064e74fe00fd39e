"""The benchmark suite: each figure next to a baseline measured in the same run, on the same data.

    python -m bench --events 1000000 --accounts 10000      # the issue's ingest figure
    python -m bench --smoke                                # a few seconds; CI runs it so it cannot rot

Figures (events/second, and the ratio to the baseline of the same run):
- ingest: `clearing ingest` of a generated file (validated, rules applied, durable, hashed,
  read model excluded) vs raw sqlite3 `executemany` of the same canonical bytes in one
  transaction;
- replay: rebuild the full state from the log with no snapshot vs a raw scan of the rows plus
  msgspec decoding;
- audit: `clearing audit` vs the same raw scan plus decoding;
- state --at --account: p50 and p99 over random times and accounts (in-process, no process start-up);
- prove and verify: one account's proof, and its offline verification;
- peak RSS of each phase (each runs in its own process).
Machines here are shared and noisy: compare ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time


HERE = os.path.dirname(os.path.abspath(__file__))


def _rss_mib() -> float:  # float-ok: a measurement, not money
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase_ingest(store: str, inputs: str) -> dict:
    from clearing import app

    key_file = None
    if store.startswith("postgresql://"):  # a PostgreSQL ledger names its key file
        key_file = os.path.join(os.path.dirname(inputs), "postgres.key")
    app.init_ledger(store, "bench.example/ledger", key_file)
    ledger = app.open_ledger(store)
    seconds = 0.0
    summary = app.IngestSummary()
    with ledger.writer_lock():
        ingestor = app.Ingestor(ledger)
        for data in _files(inputs):  # the time to read the file is not counted
            started = time.perf_counter()
            accepted, _dups, errors = ingestor.check_file(inputs, data)
            assert errors is None
            ingestor.append_inputs(accepted, summary)
            ingestor.flush()
            seconds += time.perf_counter() - started
            del accepted, data  # one file in memory at a time
    head = ledger.head()[0]
    ledger.close()
    return {"events": head, "inputs": summary.appended, "seconds": seconds}


#: Inputs per ingested file. interfaces §3.1 checks a whole file before appending any of it, so
#: ingest holds one file in memory; a long log arrives as many files (one a day, say), and the
#: peak memory depends on the largest file and the number of accounts, not the log's length.
FILE_LINES = 200_000


def _files(inputs: str):
    """The workload as files of at most FILE_LINES lines (bytes), read one at a time."""
    with open(inputs, "rb") as f:
        while True:
            lines = [line for _, line in zip(range(FILE_LINES), f)]
            if not lines:
                return
            yield b"".join(lines)


def phase_raw_insert(store: str) -> dict:
    """Baseline: the same canonical bytes, raw executemany in one transaction."""
    src = sqlite3.connect(store)
    rows = src.execute("select originator_version, state from stored_events order by originator_version").fetchall()
    src.close()
    fd, path = tempfile.mkstemp(suffix=".db")
    os.close(fd)
    db = sqlite3.connect(path)
    db.execute("pragma journal_mode=wal")
    db.execute("create table raw (seq integer primary key, state blob)")
    started = time.perf_counter()
    with db:
        db.executemany("insert into raw values (?, ?)", rows)
    seconds = time.perf_counter() - started
    db.close()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    return {"events": len(rows), "seconds": seconds}


def phase_raw_scan(store: str) -> dict:
    """Baseline: a raw scan of the rows plus msgspec decoding into the event Structs."""
    from events.canonical import decode

    db = sqlite3.connect(store)
    started = time.perf_counter()
    n = 0
    for (payload,) in db.execute("select state from stored_events order by originator_version"):
        decode(payload)
        n += 1
    seconds = time.perf_counter() - started
    return {"events": n, "seconds": seconds}


def phase_replay(store: str) -> dict:
    from events.canonical import decode
    from events.store import open_store
    from projections.state import Folder, LedgerState

    ledger = open_store(store)
    started = time.perf_counter()
    folder = Folder(LedgerState())
    n = 0
    for page in ledger.read_payloads(0, None, batch=20_000):
        for _seq, _type, payload in page:
            folder.feed(decode(payload))
            n += 1
    folder.finish()
    seconds = time.perf_counter() - started
    return {"events": n, "seconds": seconds}


def phase_audit(store: str) -> dict:
    from clearing.audit import run_audit
    from events.store import open_store

    ledger = open_store(store)
    started = time.perf_counter()
    report = run_audit(ledger)
    seconds = time.perf_counter() - started
    assert report.ok, report.findings[:3]
    return {"events": report.events, "seconds": seconds}


def phase_state_at(store: str, samples: int) -> dict:
    """`clearing state --at TS --account A` in process: a random time and a random account
    each sample, timed from the store being open to the document built (interfaces §4)."""
    from clearing import app
    from events.store import open_store
    from events.timestamps import format_ts
    from projections import history

    ledger = open_store(store)
    head, last_us = ledger.head()
    first_us = ledger.get(1).ts_us
    names = sorted(history.state_at_seq(ledger, head).accounts)  # system accounts included
    rng = random.Random(5)
    times = []
    for _ in range(samples):
        at = format_ts(rng.randint(first_us, last_us))
        account = rng.choice(names)
        started = time.perf_counter()
        app.state_document(ledger, ts=at, account=account)
        times.append(time.perf_counter() - started)
    times.sort()
    return {"p50_ms": 1000 * times[len(times) // 2], "p99_ms": 1000 * times[min(len(times) - 1, len(times) * 99 // 100)],
            "samples": samples}


def phase_prove(store: str) -> dict:
    from clearing.tlog import TLog, resolve_point
    from events.store import open_store
    from events.verifier import dump_state_proof, verify_state_proof_text

    ledger = open_store(store)
    tlog = TLog(ledger)
    key = store + ".key"
    tlog.sign(ledger.head()[0], key)
    seq, at = resolve_point(ledger, None, None)
    started = time.perf_counter()
    doc = tlog.prove("a000001", seq, at, key)
    prove_s = time.perf_counter() - started
    data = dump_state_proof(doc)
    vk = ledger.meta()["verifier_key"]
    started = time.perf_counter()
    checks = verify_state_proof_text(data, vk)
    verify_s = time.perf_counter() - started
    assert all(c.ok for c in checks)
    return {"prove_ms": 1000 * prove_s, "verify_ms": 1000 * verify_s, "bytes": len(data)}


PHASES = {
    "ingest": lambda a: phase_ingest(a.store, a.inputs),
    "raw_insert": lambda a: phase_raw_insert(a.store),
    "raw_scan": lambda a: phase_raw_scan(a.store),
    "replay": lambda a: phase_replay(a.store),
    "audit": lambda a: phase_audit(a.store),
    "state_at": lambda a: phase_state_at(a.store, a.samples),
    "prove": lambda a: phase_prove(a.store),
}


def run_phase(name: str, store: str, inputs: str = "", samples: int = 100) -> dict:
    """Run one phase in its own process, so that its peak RSS is its own."""
    cmd = [sys.executable, "-m", "bench.run", "--phase", name, "--store", store, "--inputs", inputs,
           "--samples", str(samples)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(HERE))
    if out.returncode != 0:
        raise SystemExit(f"phase {name} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


#: The long audit last, so that a run cut short still has the other figures (``--phase``).
PHASE_ORDER = ("ingest", "raw_insert", "replay", "raw_scan", "state_at", "prove", "audit")


def _rates(results: dict) -> dict:
    return {k: results[k]["events"] / results[k]["seconds"] for k in ("ingest", "raw_insert", "replay", "raw_scan", "audit")}


def tabulate(results: dict, args) -> tuple[dict, list[str]]:
    """The JSON document and the printed table of a run's phase results."""
    rate = _rates(results)
    table = [
        ("ingest", rate["ingest"], rate["ingest"] / rate["raw_insert"], "raw executemany", rate["raw_insert"], results["ingest"]["peak_rss_mib"], ">= 0.35"),
        ("replay", rate["replay"], rate["replay"] / rate["raw_scan"], "raw scan + decode", rate["raw_scan"], results["replay"]["peak_rss_mib"], ">= 0.5"),
        ("audit", rate["audit"], rate["audit"] / rate["raw_scan"], "raw scan + decode", rate["raw_scan"], results["audit"]["peak_rss_mib"], ">= 0.25"),
    ]
    doc = {
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()},
        "events": results["ingest"]["events"], "inputs": args.events, "accounts": args.accounts, "seed": args.seed,
        "figures": results,
        "ratios": {name: round(ratio, 4) for name, _r, ratio, *_ in table},
    }
    lines = [f"{'figure':<10} {'events/s':>12} {'ratio':>8}  {'baseline':<18} {'events/s':>12} {'peak RSS MiB':>13}  goal"]
    for name, r, ratio, base_name, base, rss, goal in table:
        lines.append(f"{name:<10} {r:>12,.0f} {ratio:>8.3f}  {base_name:<18} {base:>12,.0f} {rss:>13.1f}  {goal}")
    sa, pr = results["state_at"], results["prove"]
    lines.append(f"state --at p50 {sa['p50_ms']:.1f} ms, p99 {sa['p99_ms']:.1f} ms (`state --at TS --account A`: "
                 f"{sa['samples']} random times, a random account each) "
                 f"(goal at 10 M events: p50 <= 50 ms, p99 <= 200 ms); peak RSS {sa['peak_rss_mib']:.1f} MiB")
    lines.append(f"prove {pr['prove_ms']:.1f} ms, verify {pr['verify_ms']:.1f} ms, proof {pr['bytes']:,} bytes "
                 f"(goal at 100 k accounts: <= 100 ms / <= 5 ms)")
    return doc, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--smoke", action="store_true", help="a tiny run (a few seconds), for CI")
    parser.add_argument("--out", default=os.path.join(HERE, "results.json"))
    parser.add_argument("--postgres", metavar="URL", default=None,
                        help="also run ingest and replay on PostgreSQL (a database that does not exist yet)")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        result = PHASES[args.phase](args)
        result["peak_rss_mib"] = round(_rss_mib(), 1)
        print(json.dumps(result))
        return
    if args.smoke:
        args.events, args.accounts, args.samples = 3_000, 200, 10
        if args.out == os.path.join(HERE, "results.json"):  # keep the committed table
            args.out = os.path.join(tempfile.gettempdir(), "clearing-bench-smoke.json")
    from bench.workload import write

    work = tempfile.mkdtemp(prefix="clearing-bench-")
    inputs = os.path.join(work, "inputs.jsonl")
    store = os.path.join(work, "clearing.db")
    print(f"generating {args.events:,} inputs over {args.accounts:,} accounts in {work} ...", file=sys.stderr)
    write(inputs, args.events, args.accounts, seed=args.seed)
    results = {}
    for name in PHASE_ORDER:
        print(f"  {name} ...", file=sys.stderr)
        results[name] = run_phase(name, store, inputs, args.samples)
        with open(os.path.join(work, "phases.json"), "w") as f:  # what a run cut short measured
            json.dump(results, f, indent=2)
    doc, lines = tabulate(results, args)
    if args.postgres:
        rate = _rates(results)
        print("  ingest and replay on PostgreSQL ...", file=sys.stderr)
        pg = {name: run_phase(name, args.postgres, inputs, args.samples) for name in ("ingest", "replay")}
        doc["figures"]["postgres"] = pg
        for name in ("ingest", "replay"):
            r = pg[name]["events"] / pg[name]["seconds"]
            base = "raw_insert" if name == "ingest" else "raw_scan"
            lines.append(f"postgresql {name}: {r:,.0f} events/s = {r / rate[name]:.3f} x the same on SQLite, "
                         f"{r / rate[base]:.3f} x the SQLite baseline; peak RSS {pg[name]['peak_rss_mib']:.1f} MiB")
    doc["table"] = lines
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=2)
    print(f"{doc['events']:,} events ({args.events:,} inputs, {args.accounts:,} accounts) on {doc['machine']['platform']}")
    print("\n".join(lines))
    print(f"written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
