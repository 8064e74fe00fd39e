"""Ed25519 keys in the C2SP signed-note formats (signer and verifier key strings).

- verifier key: ``<name>+<key id hex>+<base64(0x01 || 32-byte public key)>``
- signer key:   ``PRIVATE+KEY+<name>+<key id hex>+<base64(0x01 || 32-byte seed)>``
- key id: the first 4 bytes of SHA-256(name || 0x0A || 0x01 || public key).
"""

from __future__ import annotations

import base64
import hashlib
import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ALG_ED25519 = b"\x01"


def key_id(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + ALG_ED25519 + public).digest()[:4]


def _public_bytes(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def signer_key(name: str, private: Ed25519PrivateKey) -> str:
    seed = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = _public_bytes(private)
    b64 = base64.b64encode(ALG_ED25519 + seed).decode()
    return f"PRIVATE+KEY+{name}+{key_id(name, public).hex()}+{b64}"


def verifier_key(name: str, private: Ed25519PrivateKey) -> str:
    public = _public_bytes(private)
    b64 = base64.b64encode(ALG_ED25519 + public).decode()
    return f"{name}+{key_id(name, public).hex()}+{b64}"


def parse_signer_key(text: str) -> tuple[str, Ed25519PrivateKey]:
    """(name, private key) from a C2SP signer key string; ValueError when malformed."""
    parts = text.strip().split("+", 4)  # base64 may itself hold "+"
    if len(parts) != 5 or parts[0] != "PRIVATE" or parts[1] != "KEY":
        raise ValueError("not a C2SP signer key")
    name, _, b64 = parts[2], parts[3], parts[4]
    raw = base64.b64decode(b64, validate=True)
    if len(raw) != 33 or raw[:1] != ALG_ED25519:
        raise ValueError("not an Ed25519 signer key")
    return name, Ed25519PrivateKey.from_private_bytes(raw[1:])


def write_new_key(path: str, name: str) -> str:
    """Make a fresh signing key, write it to ``path`` readable only by its owner (mode 0600),
    and return the verifier key. Refuses to overwrite an existing file."""
    private = Ed25519PrivateKey.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(signer_key(name, private) + "\n")
    os.chmod(path, 0o600)
    return verifier_key(name, private)


def read_key(path: str) -> tuple[str, Ed25519PrivateKey]:
    with open(path) as f:
        return parse_signer_key(f.read())
