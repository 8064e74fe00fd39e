"""Canonical bytes (interfaces §5) and the hashes built on them.

Compact JSON, UTF-8, object keys in ascending byte order, decimals as R1.1 strings, ``seq``
and the ``*_decimals`` fields as integers. The bytes of a recorded event are what the log
stores, what the Merkle tree hashes and what golden files pin.
"""

from __future__ import annotations

import hashlib

import msgspec

from events.schema import Event, Input

_encoder = msgspec.json.Encoder(order="sorted")
_decoder = msgspec.json.Decoder(Event)


def canonical(event: msgspec.Struct) -> bytes:
    """The canonical bytes of a record (an input with its ``seq``, or a decision)."""
    return _encoder.encode(event)


def decode(payload: bytes) -> Event:
    """A recorded event from its canonical bytes."""
    return _decoder.decode(payload)


def content(inp: Input) -> bytes:
    """R3.4: an input's canonical bytes without ``seq``, on which duplicates are compared.

    Keys are sorted and every input has the key ``id`` before ``seq``, so ``seq`` is never the
    first key; ``,"seq":`` cannot occur inside a JSON string (a quote there is escaped).
    """
    body = _encoder.encode(msgspec.structs.replace(inp, seq=0))
    stripped = body.replace(b',"seq":0', b"", 1)
    assert len(stripped) == len(body) - 8
    return stripped


def content_digest(inp: Input) -> bytes:
    return hashlib.sha256(content(inp)).digest()


def leaf_hash(payload: bytes) -> bytes:
    """RFC 9162 leaf hash: SHA-256(0x00 || canonical bytes)."""
    return hashlib.sha256(b"\x00" + payload).digest()
