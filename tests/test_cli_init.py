"""`clearing init` end to end (interfaces §2, §3): the store, the signing key and its file."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.conftest import ORIGIN, state_json

# C2SP signed-note verifier key: <name>+<8 hex key id>+<base64(0x01 || 32-byte public key)>
VERIFIER = re.compile(r"^(?P<name>[^+\s]+)\+(?P<id>[0-9a-f]{8})\+(?P<b64>[A-Za-z0-9+/]+={0,2})$")
SIGNER = re.compile(r"^PRIVATE\+KEY\+(?P<name>[^+\s]+)\+(?P<id>[0-9a-f]{8})\+(?P<b64>[A-Za-z0-9+/]+={0,2})$")


def _init(run_cli, cwd: Path, *args: str, env=None):
    return run_cli("init", "--origin", ORIGIN, *args, cwd=cwd, env=env)


def _store_bytes(path: Path) -> bytes:
    """The database file with its WAL, if any: everything the store wrote."""
    data = b""
    for suffix in ("", "-wal", "-shm", "-journal"):
        p = Path(str(path) + suffix)
        if p.exists():
            data += p.read_bytes()
    return data


def test_init_prints_the_verifier_key_in_c2sp_form_on_stdout(run_cli, tmp_path):
    code, out, err = _init(run_cli, tmp_path)
    assert code == 0, err
    assert out.endswith("\n") and out.count("\n") == 1, "stdout holds only the verifier key"
    m = VERIFIER.match(out.strip())
    assert m, out
    assert m["name"] == ORIGIN
    raw = base64.b64decode(m["b64"], validate=True)
    assert len(raw) == 33 and raw[0] == 0x01  # Ed25519 algorithm byte + 32-byte public key
    # key id = first 4 bytes of SHA-256(name || 0x0A || 0x01 || public key)
    expected_id = hashlib.sha256(ORIGIN.encode() + b"\n" + raw).digest()[:4].hex()
    assert m["id"] == expected_id
    assert err.strip(), "a message goes to standard error"


def test_init_key_file_is_mode_0600_and_matches_the_printed_verifier_key(run_cli, tmp_path):
    code, out, err = _init(run_cli, tmp_path)
    assert code == 0, err
    key_file = tmp_path / "clearing.db.key"
    assert key_file.exists()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    m = SIGNER.match(key_file.read_text().strip())
    assert m, "the key file holds a C2SP signer key"
    assert m["name"] == ORIGIN
    seed = base64.b64decode(m["b64"], validate=True)
    assert len(seed) == 33 and seed[0] == 0x01
    public = Ed25519PrivateKey.from_private_bytes(seed[1:]).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    verifier = VERIFIER.match(out.strip())
    assert verifier["id"] == m["id"]
    assert base64.b64decode(verifier["b64"]) == b"\x01" + public


def test_private_key_is_never_stored_in_the_database(run_cli, tmp_path, ten_lines):
    code, out, err = _init(run_cli, tmp_path)
    assert code == 0, err
    # work the store a little, so that anything it might copy the key into is written
    code, _, err = run_cli("ingest", ten_lines, cwd=tmp_path)
    assert code == 0, err
    m = SIGNER.match((tmp_path / "clearing.db.key").read_text().strip())
    b64 = m["b64"]
    seed = base64.b64decode(b64)[1:]
    db = _store_bytes(tmp_path / "clearing.db")
    assert len(db) > 0
    assert b64.encode() not in db
    assert seed not in db
    assert seed.hex().encode() not in db
    assert b"PRIVATE+KEY" not in db
    # the key file is beside the store, not inside it
    assert sorted(p.name for p in tmp_path.glob("clearing.db*") if not p.name.endswith(("-wal", "-shm", ".lock"))) == [
        "clearing.db",
        "clearing.db.key",
        "clearing.db.read.db",  # the read model beside the store
    ]
    assert b"PRIVATE+KEY" not in _store_bytes(tmp_path / "clearing.db.read.db")


def test_init_twice_fails_with_exit_2_and_keeps_the_key(run_cli, tmp_path):
    code, first, err = _init(run_cli, tmp_path)
    assert code == 0, err
    key_before = (tmp_path / "clearing.db.key").read_bytes()
    code, out, err = _init(run_cli, tmp_path)
    assert code == 2
    assert out == ""
    assert "error[" in err and "exists" in err
    assert (tmp_path / "clearing.db.key").read_bytes() == key_before
    # the first ledger still works
    _, doc = state_json(tmp_path)
    assert doc["seq"] == 0


def test_init_refuses_an_existing_key_file_and_creates_no_ledger(run_cli, tmp_path):
    key = tmp_path / "taken.key"
    key.write_text("not mine\n")
    code, out, err = _init(run_cli, tmp_path, "--key-file", str(key))
    assert code == 2
    assert out == ""
    assert "error[" in err
    assert key.read_text() == "not mine\n"
    # no half-made ledger is left behind: a later init with a free key file works
    code, out, err = _init(run_cli, tmp_path)
    assert code == 0, err


def test_init_with_store_option_names_another_file(run_cli, tmp_path, ten_lines):
    code, out, err = _init(run_cli, tmp_path, "--store", "other.db")
    assert code == 0, err
    assert (tmp_path / "other.db").exists()
    assert stat.S_IMODE((tmp_path / "other.db.key").stat().st_mode) == 0o600
    assert not (tmp_path / "clearing.db").exists()
    assert not (tmp_path / "clearing.db.key").exists()
    code, out, err = run_cli("ingest", "--store", "other.db", "--json", ten_lines, cwd=tmp_path)
    assert code == 0, err
    _, doc = state_json(tmp_path, "--store", "other.db")
    assert doc["seq"] == 11
    # the default store was never made
    code, out, err = run_cli("state", "--json", cwd=tmp_path)
    assert code == 2 and out == ""
    assert not (tmp_path / "clearing.db").exists()


def test_clearing_store_environment_variable_names_the_store(run_cli, tmp_path, ten_lines):
    env = {"CLEARING_STORE": str(tmp_path / "env.db")}
    code, out, err = _init(run_cli, tmp_path, env=env)
    assert code == 0, err
    assert (tmp_path / "env.db").exists()
    assert (tmp_path / "env.db.key").exists()
    assert not (tmp_path / "clearing.db").exists()
    code, out, err = run_cli("ingest", ten_lines, cwd=tmp_path, env=env)
    assert code == 0, err
    code, out, err = run_cli("state", "--json", cwd=tmp_path, env=env)
    assert code == 0, err
    assert json.loads(out)["seq"] == 11
    _, doc = state_json(tmp_path, "--store", "env.db")
    assert doc["seq"] == 11


def test_store_option_wins_over_the_environment_variable(run_cli, tmp_path):
    env = {"CLEARING_STORE": str(tmp_path / "env.db")}
    code, out, err = _init(run_cli, tmp_path, "--store", "flag.db", env=env)
    assert code == 0, err
    assert (tmp_path / "flag.db").exists()
    assert not (tmp_path / "env.db").exists()


def test_key_file_option_names_the_key_file(run_cli, tmp_path):
    (tmp_path / "keys").mkdir()
    key = tmp_path / "keys" / "signing.key"
    code, out, err = _init(run_cli, tmp_path, "--key-file", str(key))
    assert code == 0, err
    assert key.exists()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert not (tmp_path / "clearing.db.key").exists()
    assert SIGNER.match(key.read_text().strip())["id"] == VERIFIER.match(out.strip())["id"]


def test_clearing_key_file_environment_variable_names_the_key_file(run_cli, tmp_path):
    key = tmp_path / "env.key"
    code, out, err = _init(run_cli, tmp_path, env={"CLEARING_KEY_FILE": str(key)})
    assert code == 0, err
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert not (tmp_path / "clearing.db.key").exists()
    assert SIGNER.match(key.read_text().strip())["id"] == VERIFIER.match(out.strip())["id"]


def test_each_init_makes_a_fresh_key(run_cli, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    code_a, out_a, _ = _init(run_cli, tmp_path / "a")
    code_b, out_b, _ = _init(run_cli, tmp_path / "b")
    assert code_a == code_b == 0
    assert out_a != out_b


def test_init_requires_an_origin(run_cli, tmp_path):
    code, out, err = run_cli("init", cwd=tmp_path)
    assert code == 2
    assert out == ""
    assert "--origin" in err
    assert not (tmp_path / "clearing.db").exists()


@pytest.mark.parametrize("origin", ["", "has space", "plus+sign"])
def test_init_refuses_an_origin_that_is_not_a_key_name(run_cli, tmp_path, origin):
    code, out, err = run_cli("init", "--origin", origin, cwd=tmp_path)
    assert code == 2
    assert out == ""
    assert not (tmp_path / "clearing.db").exists()
    assert not (tmp_path / "clearing.db.key").exists()


def test_init_with_an_unwritable_key_file_exits_2_and_creates_no_ledger(run_cli, tmp_path):
    code, out, err = _init(run_cli, tmp_path, "--key-file", str(tmp_path / "no-such-dir" / "k.key"))
    assert code == 2
    assert out == ""
    assert not (tmp_path / "clearing.db").exists()
