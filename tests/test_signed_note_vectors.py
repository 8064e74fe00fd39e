"""C2SP signed-note / tlog-checkpoint conformance of events/verifier.py against
../shared/vectors/signed-note/vectors.json, plus strictness of the note format."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from events.verifier import Checkpoint, parse_checkpoint, parse_verifier_key, verify_note

ROOT = Path(__file__).resolve().parents[1]
VECTORS = json.loads((ROOT / ".." / "shared" / "vectors" / "signed-note" / "vectors.json").read_text())
REFERENCE_ROOT = base64.b64decode("XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=")

C2SP = VECTORS["c2sp_example"]
GO = VECTORS["go_sumdb_note"]
CP_KEYS = VECTORS["checkpoint_keys"]
CP = VECTORS["checkpoint_8_leaf_reference_tree"]


# ----------------------------------------------------------------------------- test signer
# Signing lives in the tests (the verifier never needs a private key): C2SP format,
# built from cryptography directly.


def parse_signer(signer_key: str) -> tuple[str, bytes, Ed25519PrivateKey]:
    """PRIVATE+KEY+<name>+<id hex>+<base64(0x01 || seed)> -> (name, key id, key)."""
    private, key, name, id_hex, b64 = signer_key.split("+", 4)
    assert (private, key) == ("PRIVATE", "KEY")
    raw = base64.b64decode(b64)
    assert raw[0] == 1 and len(raw) == 33
    return name, bytes.fromhex(id_hex), Ed25519PrivateKey.from_private_bytes(raw[1:])


def make_key(name: str, seed: bytes) -> tuple[str, str]:
    """(signer key, verifier key) strings for ``name`` from a 32-byte seed."""
    sk = Ed25519PrivateKey.from_private_bytes(seed)
    pub = sk.public_key().public_bytes_raw()
    kid = hashlib.sha256(name.encode() + b"\n\x01" + pub).digest()[:4]
    seed_b64 = base64.b64encode(b"\x01" + seed).decode()
    pub_b64 = base64.b64encode(b"\x01" + pub).decode()
    signer = f"PRIVATE+KEY+{name}+{kid.hex()}+{seed_b64}"
    verifier = f"{name}+{kid.hex()}+{pub_b64}"
    return signer, verifier


def signature_line(text: str, signer_key: str) -> str:
    name, kid, sk = parse_signer(signer_key)
    return f"\u2014 {name} {base64.b64encode(kid + sk.sign(text.encode())).decode()}\n"


def sign_note(text: str, *signer_keys: str) -> str:
    assert text.endswith("\n")
    return text + "\n" + "".join(signature_line(text, k) for k in signer_keys)


def go_note() -> str:
    return GO["text"] + "\n" + "".join(line + "\n" for line in GO["signature_lines"])


# ----------------------------------------------------------------------------- keys


def test_verifier_keys_parse_with_matching_key_ids():
    for vk in [C2SP["verifier_key"], *GO["verifier_keys"], CP_KEYS["log_verifier_key"]]:
        name, kid, pub = parse_verifier_key(vk)
        assert vk.startswith(f"{name}+{kid.hex()}+")
        assert len(pub.public_bytes_raw()) == 32


def test_signer_and_verifier_keys_agree():
    for signer, verifier in [(GO["signer_key"], GO["verifier_keys"][0]),
                             (CP_KEYS["log_signer_key"], CP_KEYS["log_verifier_key"])]:
        name, kid, sk = parse_signer(signer)
        vname, vkid, pub = parse_verifier_key(verifier)
        assert (name, kid) == (vname, vkid)
        assert sk.public_key().public_bytes_raw() == pub.public_bytes_raw()


@pytest.mark.parametrize("bad", [
    "",
    "Log",
    "Log+2271c621",
    "Log+2271c622+AemuH5ooBpEPcr+W8onrjA1NfuzBVHdezakU81Ekarvs",  # wrong key id
    "Log+2271C621+AemuH5ooBpEPcr+W8onrjA1NfuzBVHdezakU81Ekarvs",  # id not lowercase hex
    "Log+2271c62+AemuH5ooBpEPcr+W8onrjA1NfuzBVHdezakU81Ekarvs",   # short id
    "Lo+2271c621+AemuH5ooBpEPcr+W8onrjA1NfuzBVHdezakU81Ekarvs",   # other name
    "Log+2271c621+AemuH5ooBpEPcr+W8onrjA1NfuzBVHdezakU81Ekarv",   # truncated base64
    "Log+2271c621+AmmuH5ooBpEPcr+W8onrjA1NfuzBVHdezakU81Ekarvs",  # type byte 0x02
    "Log+2271c621+AemuH5ooBpEPcr+W8onrjA1NfuzBVHdezakU81Ekarvs\n",
    "Log+2271c621+AemuH5ooBpEPcr+W8onrjA1NfuzBVHdezakU81Ekarvt",  # non-canonical last char
    "Lo g+2271c621+AemuH5ooBpEPcr+W8onrjA1NfuzBVHdezakU81Ekarvs",
])
def test_malformed_verifier_keys_raise(bad):
    with pytest.raises(ValueError):
        parse_verifier_key(bad)


# ----------------------------------------------------------------------------- notes


def test_c2sp_example_verifies():
    assert C2SP["valid"] is True
    assert verify_note(C2SP["note"], C2SP["verifier_key"]) == "This is an example message.\n"


def test_go_note_verifies_with_each_of_its_keys():
    note = go_note()
    for vk in GO["verifier_keys"]:
        assert verify_note(note, vk) == GO["text"]
    # Each signature line alone.
    for line, vk in zip(GO["signature_lines"], GO["verifier_keys"]):
        single = GO["text"] + "\n" + line + "\n"
        assert verify_note(single, vk) == GO["text"]
        other = [k for k in GO["verifier_keys"] if k != vk][0]
        assert verify_note(single, other) is None  # that key did not sign it


def test_go_signing_is_deterministic_and_reproduced():
    assert GO["note_signing_is_deterministic"] is True
    line = signature_line(GO["text"], GO["signer_key"])
    assert line == GO["signature_lines"][0] + "\n"


def test_checkpoint_note_verifies_parses_and_is_reproduced():
    text = verify_note(CP["note"], CP_KEYS["log_verifier_key"])
    assert text == "Log\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n"
    cp = parse_checkpoint(text)
    assert cp == Checkpoint("Log", 8, REFERENCE_ROOT, [])
    assert sign_note(text, CP_KEYS["log_signer_key"]) == CP["note"]


ALL_VALID = [
    (C2SP["note"], C2SP["verifier_key"]),
    (go_note(), GO["verifier_keys"][0]),
    (go_note(), GO["verifier_keys"][1]),
    (CP["note"], CP_KEYS["log_verifier_key"]),
]


@pytest.mark.parametrize("i", range(len(ALL_VALID)))
def test_wrong_key_fails(i):
    note, vk = ALL_VALID[i]
    _, other = make_key(parse_verifier_key(vk)[0], bytes(range(32)))  # same name, other key
    assert verify_note(note, other) is None
    for wrong in [C2SP["verifier_key"], CP_KEYS["log_verifier_key"], *GO["verifier_keys"]]:
        if wrong != vk and not (note == go_note() and wrong in GO["verifier_keys"]):
            assert verify_note(note, wrong) is None
    assert verify_note(note, "not a key") is None


@pytest.mark.parametrize("i", range(len(ALL_VALID)))
def test_any_modification_fails(i):
    note, vk = ALL_VALID[i]
    assert verify_note(note, vk) is not None
    for pos in range(len(note)):
        ch = note[pos]
        for repl in {chr(ord(ch) ^ 1), "x" if ch != "x" else "y", ""}:
            changed = note[:pos] + repl + note[pos + 1:]
            if changed == note:
                continue
            text = verify_note(changed, vk)
            # Only a change to ANOTHER key's signature line may leave the note valid.
            if text is not None:
                sig_start = note.index("\n\n") + 2
                assert pos >= sig_start, (pos, repl)
                own = [ln for ln in note[sig_start:].splitlines(keepends=True)
                       if ln.startswith("\u2014 " + parse_verifier_key(vk)[0] + " ")]
                assert all(ln in changed for ln in own)
                assert text == note[: sig_start - 1]


def test_format_is_strict():
    text = "hello\n"
    signer, vk = make_key("example.org/k", b"\x07" * 32)
    good = sign_note(text, signer)
    assert verify_note(good, vk) == text
    line = good[len(text) + 1:]
    other_signer, _ = make_key("example.org/other", b"\x08" * 32)
    bad = [
        good[:-1],                                   # no final newline
        text + line,                                 # no blank line
        text + "\n\n" + line,                        # two blank lines: text would be "hello\n\n"
        good + "\n",                                 # trailing blank line
        good.replace("\u2014 ", "- "),               # ASCII dash
        good.replace("\u2014 ", "\u2014  "),         # two spaces
        good.replace("\u2014 ", "\u2014"),           # no space
        good.replace("\n", "\r\n"),                  # CRLF
        good.replace(line, line[:-1] + " \n"),       # trailing space
        good + "garbage\n",                          # a line that is not a signature
        good.replace("k ", "k\u00a0"),               # a Unicode space, not a space
        "hel\x01lo\n\n" + line,                      # control character
        "\ud800" + good,                             # not encodable as UTF-8
        text + "\n",                                 # no signatures at all
        "",
        None,
    ]
    for b in bad:
        assert verify_note(b, vk) is None, repr(b)
    # Non-canonical base64 of the same signature bytes (unused trailing bits set).
    b64 = line.split(" ")[2].rstrip("\n")
    raw = base64.b64decode(b64)
    assert base64.b64encode(raw).decode() == b64 and b64.endswith("=")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = b64[-2]
    tweaked = b64[:-2] + alphabet[alphabet.index(last) | 1] + "="
    assert base64.b64decode(tweaked) == raw and tweaked != b64
    assert verify_note(good.replace(b64, tweaked), vk) is None
    # Unknown signatures are ignored; a second valid key's line does not hurt.
    assert verify_note(sign_note(text, other_signer, signer), vk) == text
    assert verify_note(sign_note(text, other_signer), vk) is None
    # A bad signature under this key's name and id rejects the note even with a good one.
    forged = text + "\n" + line + signature_line("other text\n", signer)
    assert verify_note(forged, vk) is None
    # The LAST blank line separates the text: texts may hold empty lines.
    multi = "a\n\nb\n"
    assert verify_note(sign_note(multi, signer), vk) == multi


# ----------------------------------------------------------------------------- checkpoints


def test_parse_checkpoint_with_extensions():
    root = base64.b64encode(REFERENCE_ROOT).decode()
    cp = parse_checkpoint(f"example.org/log\n0\n{root}\nstate {root}\nmore\n")
    assert cp == Checkpoint("example.org/log", 0, REFERENCE_ROOT, [f"state {root}", "more"])
    assert parse_checkpoint(f"o\n18446744073709551615\n{root}\n").size == 2**64 - 1


@pytest.mark.parametrize("size", ["08", "+8", " 8", "8 ", "-8", "\uff18", "1_0", "", "0x8", "8.0",
                                  "18446744073709551616", "\u0668"])
def test_parse_checkpoint_rejects_bad_sizes(size):
    root = base64.b64encode(REFERENCE_ROOT).decode()
    with pytest.raises(ValueError):
        parse_checkpoint(f"Log\n{size}\n{root}\n")


@pytest.mark.parametrize("text", [
    "Log\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=",           # no final newline
    "Log\n8\n",                                                        # no root
    "\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n",             # empty origin
    "Log\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n\n",        # empty extension
    "Log\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyh=\n",          # non-canonical base64
    "Log\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQw==\n",          # 31 bytes
    "Log\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg\n",           # unpadded
    "Log\r\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n",        # CR
    "Log\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n\n\u2014 Log x\n",  # a whole note
])
def test_parse_checkpoint_rejects_malformed(text):
    with pytest.raises(ValueError):
        parse_checkpoint(text)


def test_the_ledgers_own_signer_reproduces_the_vectors_byte_for_byte():
    """clearing/keys.py and clearing/tlog.py (what `clearing checkpoint` signs with) give the
    Go example's signature line and the reference checkpoint note exactly."""
    from clearing.keys import parse_signer_key, verifier_key
    from clearing.tlog import sign_note as ledger_sign_note

    name, private = parse_signer_key(GO["signer_key"])
    assert verifier_key(name, private) == GO["verifier_keys"][0]
    assert ledger_sign_note(GO["text"], name, private) == GO["text"] + "\n" + GO["signature_lines"][0] + "\n"
    name, private = parse_signer_key(CP_KEYS["log_signer_key"])
    text = "Log\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n"
    assert ledger_sign_note(text, name, private) == CP["note"]
