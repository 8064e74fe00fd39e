"""The command line (interfaces §3): a thin shell where each command is one library call.

Data goes to standard output (one JSON document with ``--json``), progress and messages to
standard error. Exit codes: 0 success, 1 findings, 2 usage errors, malformed input, a missing
store or any other failure (an unexpected exception never exits 1).
"""

from __future__ import annotations

import importlib
import sys
import traceback

import click
import msgspec

from events.store import StoreError

from clearing import app

_json = msgspec.json.Encoder()


def _emit_json(doc: object) -> None:
    sys.stdout.buffer.write(_json.encode(doc) + b"\n")
    sys.stdout.flush()


def _fail(code: str, message: str) -> None:
    click.echo(f"error[{code}]: {message}", err=True)
    sys.exit(2)


store_option = click.option(
    "--store",
    "store",
    envvar="CLEARING_STORE",
    default=None,
    help="SQLite file (default clearing.db) or postgresql://user@host:port/dbname; env CLEARING_STORE.",
)
key_file_option = click.option(
    "--key-file", default=None, envvar="CLEARING_KEY_FILE",
    help="Signing key file (default <store>.key for an SQLite store); env CLEARING_KEY_FILE.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")


class LazyGroup(click.Group):
    """A group whose commands in ``LAZY_COMMANDS`` are imported when they are used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS:
            module, attribute = LAZY_COMMANDS[name].split(":")
            return getattr(importlib.import_module(module), attribute)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """clearing: an event-sourced clearinghouse ledger for cross-margined derivatives."""


@cli.command()
@store_option
@click.option("--origin", required=True, help="The ledger's name, e.g. example.org/clearing.")
@click.option("--key-file", default=None, envvar="CLEARING_KEY_FILE", help="Signing key file (default <store>.key).")
def init(store: str | None, origin: str, key_file: str | None) -> None:
    """Create an empty ledger and its Ed25519 signing key; print the verifier key."""
    url = app.store_url(store)
    verifier = app.init_ledger(url, origin, key_file)
    click.echo(verifier)
    click.echo(f"created ledger {origin!r} at {url}; key file {app.key_file_for(url, key_file)}", err=True)


@cli.command()
@store_option
@click.argument("files", nargs=-1, required=True, type=click.Path(allow_dash=True))
@click.option("--checkpoint", is_flag=True, help="Sign a checkpoint at the end (see `clearing checkpoint`).")
@key_file_option
@json_option
def ingest(store: str | None, files: tuple[str, ...], checkpoint: bool, key_file: str | None, as_json: bool) -> None:
    """Append the input events of each FILE (`-` = standard input)."""
    url = app.store_url(store)
    summary = app.IngestSummary()
    failed = False
    ledger = app.open_ledger(url)
    try:
        with ledger.writer_lock():
            ingestor = app.Ingestor(ledger)
            for name in files:
                data = _read_input(name)
                inputs, duplicates, errors = ingestor.check_file(name, data)
                if errors is not None:
                    for line in errors.lines():
                        click.echo(line, err=True)
                    failed = True
                    continue
                summary.duplicates += duplicates
                if len(inputs) >= 20_000 and sys.stderr.isatty():
                    with click.progressbar(length=len(inputs), label=f"ingesting {name}", file=sys.stderr) as bar:
                        ingestor.append_inputs(inputs, summary, bar.update)
                else:
                    ingestor.append_inputs(inputs, summary)
            summary.head_seq = ledger.head()[0]
        if checkpoint:
            from clearing.tlog import TLog

            signed = TLog(ledger).sign(summary.head_seq, app.key_file_for(ledger.url, key_file))
            click.echo(signed.note, err=True, nl=False)
        app.update_read_model(ledger)
    finally:
        ledger.close()
    if as_json:
        _emit_json(summary.as_json())
    else:
        click.echo(
            f"appended {summary.appended} inputs with {summary.decisions} decisions "
            f"({summary.rejected} rejected, {summary.duplicates} duplicates skipped); head seq {summary.head_seq}",
            err=True,
        )
    if failed:
        sys.exit(2)


def _read_input(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        with open(name, "rb") as f:
            return f.read()
    except OSError as exc:
        _fail("unreadable_file", f"{name}: {exc.strerror}")
        raise  # unreachable


@cli.command()
@store_option
@click.option("--at", "at", default=None, help="State after the last input with ts <= AT (RFC 3339, UTC).")
@click.option("--seq", "seq", type=int, default=None, help="State after event SEQ.")
@click.option("--account", default=None, help="Only this account.")
@json_option
def state(store: str | None, at: str | None, seq: int | None, account: str | None, as_json: bool) -> None:
    """The state at a point of the log (default: now)."""
    if at is not None and seq is not None:
        raise click.UsageError("give --at or --seq, not both")
    ledger = app.open_ledger(app.store_url(store))
    try:
        doc = app.state_document(ledger, seq=seq, ts=at, account=account)
    finally:
        ledger.close()
    if as_json:
        _emit_json(doc)
        return
    click.echo(_render_state(doc))


def _render_state(doc: dict) -> str:
    out = [f"seq {doc['seq']}  ts {doc['ts']}  rules {doc['rules']}"]
    if doc["marks"]:
        out.append("marks: " + "  ".join(f"{a} {p}" for a, p in doc["marks"].items()))
    out.append(f"insurance fund: {doc['insurance_fund']}")
    header = f"{'account':<24} {'equity':>18} {'IM':>16} {'MM':>16} {'free':>18}  liq  holdings"
    out.append(header)
    for name, entry in doc["accounts"].items():
        holdings = ", ".join(
            [f"{a} {v}" for a, v in entry["balances"].items()]
            + [f"{i} {q}" for i, q in entry["positions"].items()]
        )
        out.append(
            f"{name:<24} {entry['equity']:>18} {entry['initial_margin']:>16} "
            f"{entry['maintenance_margin']:>16} {entry['free_collateral']:>18}  "
            f"{'YES' if entry['liquidatable'] else 'no ':<3}  {holdings}"
        )
    if doc["exposure"]:
        out.append("exposure (long / short / @insurance):")
        for instrument, e in doc["exposure"].items():
            out.append(f"  {instrument}: {e['long']} / {e['short']} / {e['insurance']}")
    return "\n".join(out)


@cli.command()
@store_option
@key_file_option
@json_option
def checkpoint(store: str | None, key_file: str | None, as_json: bool) -> None:
    """Sign and store a checkpoint of the log as it is now; print it (interfaces §5)."""
    from clearing.tlog import TLog

    ledger = app.open_ledger(app.store_url(store))
    try:
        with ledger.writer_lock():
            signed = TLog(ledger).sign(ledger.head()[0], app.key_file_for(ledger.url, key_file))
    finally:
        ledger.close()
    if as_json:
        _emit_json(signed.as_json())
    else:
        click.echo(signed.note, nl=False)


@cli.command()
@store_option
@key_file_option
@click.option("--account", required=True, help="The account whose state is proven.")
@click.option("--at", "at", default=None, help="The state after the last input with ts <= AT.")
@click.option("--seq", "seq", type=int, default=None, help="The state after event SEQ (default: the head).")
@click.option("-o", "output", default=None, help="Write the proof here (default: standard output).")
def prove(store: str | None, key_file: str | None, account: str, at: str | None, seq: int | None,
          output: str | None) -> None:
    """Write a state-at-time proof for an account that verifies offline (interfaces §5)."""
    if at is not None and seq is not None:
        raise click.UsageError("give --at or --seq, not both")
    from clearing.tlog import TLog, resolve_point
    from events.verifier import dump_state_proof

    ledger = app.open_ledger(app.store_url(store))
    try:
        with ledger.writer_lock():  # it may sign and store checkpoints
            point, when = resolve_point(ledger, at, seq)
            doc = TLog(ledger).prove(account, point, when, app.key_file_for(ledger.url, key_file))
    finally:
        ledger.close()
    data = dump_state_proof(doc)
    if output is None:
        sys.stdout.buffer.write(data)
    else:
        with open(output, "wb") as f:
            f.write(data)
        click.echo(f"wrote the proof of {account} at seq {point} ({when}) to {output}", err=True)


@cli.command()
@click.argument("proof", type=click.Path(allow_dash=True))
@click.option("--key", "key", required=True, help="The ledger's verifier key (or a file holding it).")
@json_option
def verify(proof: str, key: str, as_json: bool) -> None:
    """Check a state proof offline, with nothing but the verifier key. Exit 0 valid, 1 invalid."""
    import os

    from events.verifier import verify_state_proof_text

    if os.path.isfile(key):
        with open(key) as f:
            key = f.read().strip()
    data = _read_input(proof)
    checks = verify_state_proof_text(data, key)
    ok = bool(checks) and all(c.ok for c in checks)
    if as_json:
        _emit_json({"valid": ok, "checks": [{"check": c.name, "ok": c.ok, "detail": c.detail} for c in checks]})
    else:
        for c in checks:
            click.echo(f"{'ok  ' if c.ok else 'FAIL'}  {c.name:<20} {c.detail}")
        click.echo("the proof is valid" if ok else "the proof is NOT valid")
    sys.exit(0 if ok else 1)


@cli.command()
@store_option
@json_option
def audit(store: str | None, as_json: bool) -> None:
    """Re-derive everything from the log and check it (interfaces §3.2). Exit 1 on findings."""
    from clearing.audit import run_audit

    ledger = app.open_ledger(app.store_url(store))
    try:
        with click.progressbar(length=ledger.head()[0], label="auditing", file=sys.stderr) as bar:
            report = run_audit(ledger, progress=bar.update)
    finally:
        ledger.close()
    if as_json:
        _emit_json(report.as_json())
    else:
        for f in report.findings:
            click.echo(f"seq {f.seq}: [{f.rule}] {f.message}")
        click.echo(
            f"audited {report.events:,} events: "
            + ("no findings" if report.ok else f"{len(report.findings)} findings"),
            err=True,
        )
    sys.exit(0 if report.ok else 1)


@cli.command()
@click.option("--dir", "directory", default=None, help="Folder for the demo ledger (default: a fresh folder here).")
def demo(directory: str | None) -> None:
    """Build a realistic ledger with a market crash, and tour it."""
    from clearing.demo import run_demo

    run_demo(directory)


# --- commands of other modules, imported only when used (a fast start for every command) --
LAZY_COMMANDS = {
    "statement": "clearing.reconcile:statement",
    "reconcile": "clearing.reconcile:reconcile_command",
    "export": "clearing.export:export",
    "report": "clearing.report:report",
    "replay": "clearing.replay:replay_command",
    "explain": "clearing.explain:explain_command",
}
# (end of the commands of other modules)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(2)
    except StoreError as exc:
        _fail(exc.code, exc.message)
    except SystemExit:
        raise
    except BrokenPipeError:
        sys.exit(2)
    except Exception:  # a programmer's mistake: never exit 1, which means "findings"
        traceback.print_exc(file=sys.stderr)
        sys.exit(2)
