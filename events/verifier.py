"""Stand-alone verifier for the ledger's tamper-evident log (interfaces §5).

This module is meant to be read in one sitting by someone who does not trust the
rest of the project. It imports only the Python standard library and the
``cryptography`` package (for Ed25519), and it never needs a private key.

Contents
--------
1. RFC 9162 Merkle tree hashing and proof verification (§2.1.3.2 inclusion,
   §2.1.4.2 consistency).
2. C2SP signed notes (https://c2sp.org/signed-note) with Ed25519 keys.
3. C2SP checkpoints (https://c2sp.org/tlog-checkpoint).
4. The ``clearing-state-proof/1`` document: ``verify_state_proof`` (a parsed
   document) and ``verify_state_proof_text`` (its exact bytes).

No function here raises on bad input, except the ``parse_*`` functions, which
raise ``ValueError`` (and say so). Verification functions return False / None /
failed checks instead.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
import re
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = [
    "EMPTY_ROOT",
    "Check",
    "Checkpoint",
    "STATE_PROOF_FIELDS",
    "STATE_PROOF_FORMAT",
    "dump_state_proof",
    "leaf_hash",
    "node_hash",
    "parse_checkpoint",
    "parse_timestamp",
    "parse_verifier_key",
    "verify_consistency",
    "verify_inclusion",
    "verify_note",
    "verify_state_proof",
    "verify_state_proof_text",
]

HASH_SIZE = 32

#: MTH({}) = SHA-256 of the empty string: the root of the empty tree.
EMPTY_ROOT = hashlib.sha256(b"").digest()


# =============================================================================
# 1. RFC 9162 Merkle trees
# =============================================================================


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 §2.1.1: MTH({d}) = SHA-256(0x00 || d)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 §2.1.1: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _is_hash(h: object) -> bool:
    return isinstance(h, bytes) and len(h) == HASH_SIZE


def _is_size(n: object) -> bool:
    # bool is an int subclass; True must not pass for 1.
    return type(n) is int and 0 <= n < 2**64


def verify_inclusion(
    leaf_index: int, tree_size: int, leaf_hash: bytes, proof: list[bytes], root: bytes
) -> bool:
    """RFC 9162 §2.1.3.2: does ``proof`` show the leaf ``leaf_hash`` at ``leaf_index``
    in the tree of ``tree_size`` leaves with root ``root``? Never raises."""
    try:
        if not (_is_size(leaf_index) and _is_size(tree_size)):
            return False
        if not (_is_hash(leaf_hash) and _is_hash(root)):
            return False
        if not isinstance(proof, (list, tuple)) or not all(_is_hash(p) for p in proof):
            return False
        # 1. leaf_index must be < tree_size (this also rejects tree_size 0).
        if leaf_index >= tree_size:
            return False
        # 2. fn = leaf_index, sn = tree_size - 1.
        fn, sn = leaf_index, tree_size - 1
        # 3. r = hash.
        r = leaf_hash
        # 4. For each p in the inclusion path:
        for p in proof:
            if sn == 0:
                return False
            if fn & 1 or fn == sn:
                r = node_hash(p, r)
                while not fn & 1 and fn != 0:  # until LSB(fn) is set or fn is 0
                    fn >>= 1
                    sn >>= 1
            else:
                r = node_hash(r, p)
            fn >>= 1
            sn >>= 1
        # 5. sn must be 0 and r must equal the root.
        return sn == 0 and r == root
    except Exception:  # pragma: no cover - defensive: never raise on input
        return False


def verify_consistency(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: list[bytes]
) -> bool:
    """RFC 9162 §2.1.4.2: does ``proof`` show that the tree (size1, root1) is a
    prefix of the tree (size2, root2)? Never raises.

    Edge cases (the RFC's algorithm is stated for 0 < size1 < size2):

    * size1 > size2: rejected.
    * size1 == size2: accepted iff the proof is empty and root1 == root2 (for size 0
      both must also be the empty-tree root SHA-256("")). Nothing else is known about
      the roots then, so they are compared as given (the corpus accepts equal
      12-byte "roots" at size 1).
    * size1 == 0 < size2: rejected. Every tree extends the empty tree, so such a
      "proof" proves nothing; the RFC defines no proof for it.
    """
    try:
        if not (_is_size(size1) and _is_size(size2)):
            return False
        if not isinstance(root1, bytes) or not isinstance(root2, bytes):
            return False
        if not isinstance(proof, (list, tuple)) or not all(isinstance(p, bytes) for p in proof):
            return False
        if size1 > size2:
            return False
        if size1 == size2:
            if proof:
                return False
            if size1 == 0 and root1 != EMPTY_ROOT:
                return False
            return root1 == root2
        if size1 == 0:
            return False
        if not (_is_hash(root1) and _is_hash(root2)) or not all(_is_hash(p) for p in proof):
            return False
        # 1. An empty path fails.
        if not proof:
            return False
        path = list(proof)
        # 2. If size1 is an exact power of 2, prepend root1.
        if size1 & (size1 - 1) == 0:
            path.insert(0, root1)
        # 3. fn = first - 1, sn = second - 1.
        fn, sn = size1 - 1, size2 - 1
        # 4. If LSB(fn) is set, right-shift both until it is not.
        while fn & 1:
            fn >>= 1
            sn >>= 1
        # 5. fr = sr = first value of the path.
        fr = sr = path[0]
        # 6. For each subsequent value c:
        for c in path[1:]:
            if sn == 0:
                return False
            if fn & 1 or fn == sn:
                fr = node_hash(c, fr)
                sr = node_hash(c, sr)
                while not fn & 1 and fn != 0:  # until LSB(fn) is set or fn is 0
                    fn >>= 1
                    sn >>= 1
            else:
                sr = node_hash(sr, c)
            fn >>= 1
            sn >>= 1
        # 7. fr == root1, sr == root2, sn == 0.
        return fr == root1 and sr == root2 and sn == 0
    except Exception:  # pragma: no cover - defensive
        return False


# =============================================================================
# 2. C2SP signed notes, Ed25519
# =============================================================================

_ALG_ED25519 = 0x01
_SIG_PREFIX = "\u2014 "  # em dash, space
_MAX_SIGNATURES = 100  # the spec asks verifiers to accept at least 16


def _b64decode(s: object) -> bytes:
    """Standard base64 (RFC 4648 §4) in its one canonical spelling; ValueError if not.

    Canonical: padded, alphabet only, and unused trailing bits zero, so that each
    byte string has exactly one accepted encoding.
    """
    if not isinstance(s, str) or not s.isascii():
        raise ValueError("not base64")
    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None
    if base64.b64encode(raw).decode("ascii") != s:
        raise ValueError("not canonical base64")
    return raw


def _valid_key_name(name: str) -> bool:
    return bool(name) and not any(ch.isspace() or ch == "+" for ch in name) and not _has_control(name)


def _has_control(s: str) -> bool:
    """An ASCII control character (below U+0020), which notes must not hold but for "\n"."""
    return any(ord(ch) < 0x20 for ch in s)


def _key_id(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([_ALG_ED25519]) + public).digest()[:4]


def parse_verifier_key(text: str) -> tuple[str, bytes, Ed25519PublicKey]:
    """``<name>+<key id, 8 hex digits>+<base64(0x01 || 32-byte Ed25519 key)>``
    -> (name, 4-byte key id, public key). Raises ValueError when malformed,
    including when the key id is not SHA-256(name || 0x0A || 0x01 || key)[:4]."""
    if not isinstance(text, str):
        raise ValueError("verifier key must be a string")
    parts = text.split("+", 2)  # the base64 may itself hold "+"
    if len(parts) != 3:
        raise ValueError("verifier key must be name+keyid+base64")
    name, id_hex, b64 = parts
    if not _valid_key_name(name):
        raise ValueError("invalid key name")
    if not re.fullmatch(r"[0-9a-f]{8}", id_hex):
        raise ValueError("key id must be 8 lowercase hex digits")
    raw = _b64decode(b64)
    if len(raw) != 33 or raw[0] != _ALG_ED25519:
        raise ValueError("not an Ed25519 verifier key")
    public = raw[1:]
    kid = bytes.fromhex(id_hex)
    if _key_id(name, public) != kid:
        raise ValueError("key id does not match the key")
    return name, kid, Ed25519PublicKey.from_public_bytes(public)


def _split_note(note: str) -> tuple[str, list[tuple[str, bytes]]] | None:
    """(text, [(key name, decoded signature)]) of a well-formed note, else None."""
    if not isinstance(note, str) or len(note) > 1_000_000:
        return None
    try:
        note.encode("utf-8")  # no lone surrogates
    except UnicodeEncodeError:
        return None
    if _has_control(note.replace("\n", "")):
        return None
    if not note.endswith("\n"):
        return None
    split = note.rfind("\n\n")  # the LAST empty line separates text and signatures
    if split < 0:
        return None
    text, sig_block = note[: split + 1], note[split + 2 :]
    if not sig_block:
        return None
    lines = sig_block[:-1].split("\n")  # sig_block ends with "\n" (note does)
    if len(lines) > _MAX_SIGNATURES:
        return None
    sigs = []
    for line in lines:
        if not line.startswith(_SIG_PREFIX):
            return None
        fields = line[len(_SIG_PREFIX) :].split(" ")
        if len(fields) != 2 or not _valid_key_name(fields[0]):
            return None
        try:
            sig = _b64decode(fields[1])
        except ValueError:
            return None
        if len(sig) < 5:
            return None
        sigs.append((fields[0], sig))
    return text, sigs


def verify_note(note: str, verifier_key: str) -> str | None:
    """The text of ``note`` if it is a well-formed C2SP signed note carrying a valid
    Ed25519 signature by ``verifier_key``; otherwise None. Never raises.

    Format: text (ending in "\\n"), an empty line, then one or more lines
    "— <key name> <base64(4-byte key id || signature)>\\n". The text is everything
    before the last empty line, including its final newline; it is what is signed.
    Signatures by other keys (different name or id) are ignored; if any signature
    that names this key (same name and id) fails to verify, the note is rejected.
    """
    try:
        name, kid, public = parse_verifier_key(verifier_key)
    except (ValueError, TypeError):
        return None
    parsed = _split_note(note)
    if parsed is None:
        return None
    text, sigs = parsed
    message = text.encode("utf-8")
    verified = False
    for sig_name, sig in sigs:
        if sig_name != name or sig[:4] != kid:
            continue  # an unknown key: ignore
        if len(sig) != 4 + 64:
            return None
        try:
            public.verify(sig[4:], message)
        except InvalidSignature:
            return None
        verified = True
    return text if verified else None


# =============================================================================
# 3. C2SP checkpoints
# =============================================================================


class Checkpoint(NamedTuple):
    origin: str
    size: int
    root: bytes
    extensions: list[str]


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse the TEXT of a checkpoint note (as returned by ``verify_note``): lines
    origin, decimal tree size (no leading zeros), base64 32-byte root, then
    extension lines; every line non-empty and ended by "\\n". Raises ValueError."""
    if not isinstance(text, str) or not text.endswith("\n"):
        raise ValueError("checkpoint text must end with a newline")
    if _has_control(text.replace("\n", "")):
        raise ValueError("control character in checkpoint")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise ValueError("checkpoint needs origin, size and root lines")
    if any(line == "" for line in lines):
        raise ValueError("empty line in checkpoint")
    origin, size_s, root_s, *extensions = lines
    if not re.fullmatch(r"0|[1-9][0-9]*", size_s, flags=re.ASCII) or len(size_s) > 20:
        raise ValueError("tree size must be a decimal number without leading zeros")
    size = int(size_s)
    if size >= 2**64:
        raise ValueError("tree size too large")
    root = _b64decode(root_s)
    if len(root) != HASH_SIZE:
        raise ValueError("root hash must be 32 bytes")
    return Checkpoint(origin, size, root, extensions)


# =============================================================================
# 4. clearing-state-proof/1
# =============================================================================

STATE_PROOF_FORMAT = "clearing-state-proof/1"

#: The fields of a state proof document, in the order ``dump_state_proof`` writes them.
STATE_PROOF_FIELDS = (
    "format", "account", "seq", "at", "leaf", "leaf_index", "state_size", "state_path",
    "checkpoint", "latest", "consistency", "boundary",
)
_BOUNDARY_FIELDS = ("seq", "leaf", "path")


class Check(NamedTuple):
    name: str
    ok: bool
    detail: str


_TS_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,6}))?Z"
)
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def parse_timestamp(s: str) -> int:
    """Microseconds since the Unix epoch of an RFC 3339 UTC timestamp in the ledger's
    normal form ``YYYY-MM-DDTHH:MM:SS[.f]Z`` (1 to 6 fraction digits, no trailing
    zero, no fraction when it is zero). Raises ValueError otherwise."""
    m = _TS_RE.fullmatch(s) if isinstance(s, str) else None
    if m is None:
        raise ValueError(f"not a normal-form UTC timestamp: {s!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    frac = m.group(7)
    if frac is not None and frac.endswith("0"):
        raise ValueError(f"timestamp fraction has a trailing zero: {s!r}")
    micro = int((frac or "").ljust(6, "0"))
    # datetime validates the calendar (month lengths, leap years, no leap second).
    t = datetime.datetime(year, month, day, hour, minute, second, micro, tzinfo=datetime.timezone.utc)
    delta = t - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _strict_json_object(data: bytes) -> Any:
    """Parse JSON bytes strictly: UTF-8, no duplicate keys, no NaN/Infinity."""

    def pairs(items: list[tuple[str, Any]]) -> dict:
        d = {}
        for k, v in items:
            if k in d:
                raise ValueError(f"duplicate key {k!r}")
            d[k] = v
        return d

    def bad_constant(name: str) -> Any:
        raise ValueError(f"{name} is not allowed")

    return json.loads(data.decode("utf-8"), object_pairs_hook=pairs, parse_constant=bad_constant)


def _hash_list(v: object) -> list[bytes]:
    if not isinstance(v, list) or len(v) > 128:
        raise ValueError("not a list of hashes")
    out = [_b64decode(x) for x in v]
    if not all(len(h) == HASH_SIZE for h in out):
        raise ValueError("hash of the wrong length")
    return out


def _format_problems(doc: object) -> list[str]:
    """Structural problems of a state proof document (empty when well-formed)."""
    if not isinstance(doc, dict):
        return ["document is not a JSON object"]
    problems = []
    keys = set(doc)
    missing = [k for k in STATE_PROOF_FIELDS if k not in keys]
    unknown = sorted(k for k in keys if k not in STATE_PROOF_FIELDS)
    if missing:
        problems.append(f"missing fields {missing}")
    if unknown:
        problems.append(f"unknown fields {unknown}")

    def check(name: str, ok: bool, what: str) -> None:
        if name in doc and not ok:
            problems.append(f"{name}: {what}")

    def is_int(v: object, lo: int = 0) -> bool:
        return type(v) is int and lo <= v < 2**63

    def is_b64(v: object) -> bool:
        try:
            _b64decode(v)
            return True
        except ValueError:
            return False

    def is_hashes(v: object) -> bool:
        try:
            _hash_list(v)
            return True
        except ValueError:
            return False

    def is_ts(v: object) -> bool:
        try:
            parse_timestamp(v)  # type: ignore[arg-type]
            return True
        except (ValueError, OverflowError):
            return False

    check("format", doc.get("format") == STATE_PROOF_FORMAT, f"must be {STATE_PROOF_FORMAT!r}")
    check("account", isinstance(doc.get("account"), str) and doc.get("account") != "",
          "must be a non-empty string")
    check("seq", is_int(doc.get("seq"), 1), "must be an integer >= 1")
    check("at", is_ts(doc.get("at")), "must be a normal-form UTC timestamp")
    check("leaf", is_b64(doc.get("leaf")), "must be canonical base64")
    check("leaf_index", is_int(doc.get("leaf_index")), "must be an integer >= 0")
    check("state_size", is_int(doc.get("state_size"), 1), "must be an integer >= 1")
    check("state_path", is_hashes(doc.get("state_path")), "must be a list of base64 hashes")
    check("checkpoint", isinstance(doc.get("checkpoint"), str), "must be a string")
    check("latest", isinstance(doc.get("latest"), str), "must be a string")
    check("consistency", is_hashes(doc.get("consistency")), "must be a list of base64 hashes")
    b = doc.get("boundary")
    if "boundary" in doc:
        if not isinstance(b, list) or len(b) not in (1, 2):
            problems.append("boundary: must be a list of 1 or 2 entries")
        else:
            for i, e in enumerate(b):
                if not isinstance(e, dict) or set(e) != set(_BOUNDARY_FIELDS):
                    problems.append(f"boundary[{i}]: must have exactly the fields {list(_BOUNDARY_FIELDS)}")
                    continue
                if not is_int(e["seq"], 1):
                    problems.append(f"boundary[{i}].seq: must be an integer >= 1")
                if not is_b64(e["leaf"]):
                    problems.append(f"boundary[{i}].leaf: must be canonical base64")
                if not is_hashes(e["path"]):
                    problems.append(f"boundary[{i}].path: must be a list of base64 hashes")
    return problems


def _state_root(cp: Checkpoint) -> bytes:
    """The state root of a ledger checkpoint: exactly one extension ``state <base64>``."""
    if len(cp.extensions) != 1 or not cp.extensions[0].startswith("state "):
        raise ValueError("checkpoint must have exactly one extension line 'state <base64>'")
    root = _b64decode(cp.extensions[0][len("state ") :])
    if len(root) != HASH_SIZE:
        raise ValueError("state root must be 32 bytes")
    return root


class _Unchecked(Exception):
    pass


def _need(**deps: Any) -> None:
    missing = [name for name, value in deps.items() if value is None]
    if missing:
        raise _Unchecked("not checked: needs " + ", ".join(missing))


def verify_state_proof(doc: dict, verifier_key: str) -> list[Check]:
    """Check a parsed ``clearing-state-proof/1`` document against the ledger's verifier
    key. Every check is reported; the proof is valid iff all of them are ok.

    Checks, in order:

    * ``format``: exactly the fields of ``STATE_PROOF_FIELDS`` with the right types
      (integers as JSON integers, hashes and leaves as canonical base64, ``at`` a
      normal-form UTC timestamp, boundary entries of exactly seq/leaf/path);
    * ``key``: the verifier key parses;
    * ``checkpoint_signature``, ``latest_signature``: each note verifies with the key
      and its text is a well-formed checkpoint;
    * ``origin``: both checkpoints have the same origin, the key's name;
    * ``checkpoint_size``: the checkpoint's tree size is ``seq``;
    * ``state_root``: the checkpoint's one extension line is ``state <base64 root>``
      (and ``latest`` has one too, the same one if it has the same size);
    * ``account``: the leaf is a JSON object whose ``account`` is the document's;
    * ``state_inclusion``: the leaf is leaf ``leaf_index`` of a ``state_size``-leaf
      tree with that state root (``state_path``);
    * ``consistency``: the checkpoint's tree is a prefix of the latest one;
    * ``boundary_seq``: the boundary holds events ``seq`` and ``seq+1`` (only ``seq``
      when it is the latest size), whose leaves are JSON objects with that ``seq``
      and a normal-form ``ts``;
    * ``boundary_inclusion``: each boundary event is leaf seq-1 of the latest tree;
    * ``boundary_time``: ts(seq) <= at < ts(seq+1) (only the first when seq is the
      latest size).

    A check whose inputs did not survive an earlier check fails with
    "not checked: needs ...".

    Limits of what a document can bind (the interfaces fix its content): ``at`` is
    the time asked about, and any ``at`` in [ts(seq), ts(seq+1)) is an equally true
    claim about the same state; the state tree's size is not signed anywhere, so an
    RFC 9162 path that is valid for ``state_size`` can be valid for a few larger
    sizes too. JSON whitespace is bound only by ``verify_state_proof_text``.
    """
    checks: list[Check] = []

    def add(name: str, fn) -> Any:
        """Run fn() -> (ok, detail, value); record the check; value, or None on failure."""
        try:
            ok, detail, value = fn()
        except _Unchecked as e:
            ok, detail, value = False, str(e), None
        except Exception as e:  # bad input of any kind fails the check, never raises
            ok, detail, value = False, f"malformed: {type(e).__name__}: {e}", None
        checks.append(Check(name, bool(ok), detail))
        return value if ok else None

    d = doc if isinstance(doc, dict) else {}
    problems = _format_problems(doc)
    well_formed = add("format", lambda: (not problems, "; ".join(problems) or STATE_PROOF_FORMAT, True))

    def key():
        name, _, _ = parse_verifier_key(verifier_key)
        return True, f"verifier key {name}", name

    key_name = add("key", key)

    def signed(field: str):
        def fn():
            _need(key=key_name)
            text = verify_note(d[field], verifier_key)
            if text is None:
                return False, f"{field}: malformed note or no valid signature by the key", None
            cp = parse_checkpoint(text)
            return True, f"{field}: checkpoint of size {cp.size}", cp
        return fn

    cp = add("checkpoint_signature", signed("checkpoint"))
    latest = add("latest_signature", signed("latest"))

    def origin():
        _need(checkpoint_signature=cp, latest_signature=latest)
        if cp.origin != latest.origin:
            return False, f"origins differ: {cp.origin!r} and {latest.origin!r}", None
        if cp.origin != key_name:
            return False, f"origin {cp.origin!r} is not the key name {key_name!r}", None
        return True, f"origin {cp.origin}", None

    add("origin", origin)

    seq = d.get("seq") if well_formed else None

    def checkpoint_size():
        _need(format=seq, checkpoint_signature=cp)
        return cp.size == seq, f"checkpoint size {cp.size}, document seq {seq}", None

    add("checkpoint_size", checkpoint_size)

    def state_root():
        _need(checkpoint_signature=cp, latest_signature=latest)
        root, latest_root = _state_root(cp), _state_root(latest)
        if latest.size == cp.size and latest_root != root:
            return False, "the latest checkpoint has the same size but another state root", None
        return True, "state " + base64.b64encode(root).decode(), root

    sroot = add("state_root", state_root)
    leaf = _b64decode(d["leaf"]) if well_formed else None

    def account():
        _need(format=leaf)
        obj = _strict_json_object(leaf)
        named = obj.get("account") if isinstance(obj, dict) else None
        if named != d["account"]:
            return False, f"the leaf names account {named!r}, not {d['account']!r}", None
        return True, f"account {named}", None

    add("account", account)

    def state_inclusion():
        _need(format=leaf, state_root=sroot)
        ok = verify_inclusion(d["leaf_index"], d["state_size"], leaf_hash(leaf),
                              _hash_list(d["state_path"]), sroot)
        where = f"leaf {d['leaf_index']} of {d['state_size']} under the state root"
        return ok, where if ok else where + ": the path does not verify", None

    add("state_inclusion", state_inclusion)

    def consistency():
        _need(format=well_formed, checkpoint_signature=cp, latest_signature=latest)
        ok = verify_consistency(cp.size, latest.size, cp.root, latest.root, _hash_list(d["consistency"]))
        what = f"tree size {cp.size} -> {latest.size}"
        return ok, what if ok else what + ": the proof does not verify", None

    add("consistency", consistency)

    boundary = d["boundary"] if well_formed else None

    def boundary_seq():
        _need(format=boundary, latest_signature=latest)
        if seq > latest.size:
            return False, f"seq {seq} is beyond the latest checkpoint's size {latest.size}", None
        want = [seq] if seq == latest.size else [seq, seq + 1]
        got = [e["seq"] for e in boundary]
        if got != want:
            return False, f"boundary events {got}, expected {want}", None
        times = []
        for e in boundary:
            obj = _strict_json_object(_b64decode(e["leaf"]))
            if not isinstance(obj, dict) or type(obj.get("seq")) is not int or obj["seq"] != e["seq"]:
                return False, f"the boundary leaf given for event {e['seq']} is not that event", None
            times.append(parse_timestamp(obj.get("ts")))
        return True, f"boundary events {got}", times

    times = add("boundary_seq", boundary_seq)

    def boundary_inclusion():
        _need(format=boundary, latest_signature=latest)
        bad = [e["seq"] for e in boundary
               if not verify_inclusion(e["seq"] - 1, latest.size, leaf_hash(_b64decode(e["leaf"])),
                                       _hash_list(e["path"]), latest.root)]
        if bad:
            return False, f"the inclusion proofs of events {bad} do not verify", None
        return True, f"events {[e['seq'] for e in boundary]} in the tree of size {latest.size}", None

    add("boundary_inclusion", boundary_inclusion)

    def boundary_time():
        _need(format=well_formed, boundary_seq=times)
        at = parse_timestamp(d["at"])
        if not times[0] <= at:
            return False, f"at {d['at']} is before event {seq}", None
        if len(times) == 2 and not at < times[1]:
            return False, f"at {d['at']} is not before event {seq + 1}", None
        if len(times) == 2:
            return True, f"ts({seq}) <= {d['at']} < ts({seq + 1})", None
        return True, f"ts({seq}) <= {d['at']}; event {seq} is the latest", None

    add("boundary_time", boundary_time)
    return checks


def dump_state_proof(doc: dict) -> bytes:
    """The one accepted serialization of a state proof document: the fields in
    ``STATE_PROOF_FIELDS`` order (boundary entries: seq, leaf, path), JSON with
    2-space indentation, ", " / ": " separators as Python's ``json.dumps(indent=2)``
    writes them, non-ASCII characters as UTF-8 (not escaped), and a final newline."""

    def in_order(d: dict, fields: tuple[str, ...]) -> dict:
        out = {k: d[k] for k in fields if k in d}
        out.update((k, v) for k, v in d.items() if k not in out)  # unknown fields last
        return out

    ordered = in_order(doc, STATE_PROOF_FIELDS)
    if isinstance(ordered.get("boundary"), list):
        ordered["boundary"] = [in_order(e, _BOUNDARY_FIELDS) if isinstance(e, dict) else e
                               for e in ordered["boundary"]]
    return (json.dumps(ordered, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def verify_state_proof_text(data: bytes | str, verifier_key: str) -> list[Check]:
    """Check a state proof document given as its bytes: the checks of
    ``verify_state_proof`` preceded by ``encoding`` (strict UTF-8 JSON with no
    duplicate keys, byte for byte in the form ``dump_state_proof`` writes)."""
    if isinstance(data, str):
        try:
            data = data.encode("utf-8")
        except UnicodeEncodeError:
            return [Check("encoding", False, "not valid UTF-8")]
    try:
        doc = _strict_json_object(data)
    except Exception as e:
        return [Check("encoding", False, f"not a JSON document: {e}")]
    try:
        canonical = isinstance(doc, dict) and dump_state_proof(doc) == data
    except Exception:
        canonical = False
    enc = Check("encoding", canonical,
                "canonical JSON" if canonical else "not in the canonical form of dump_state_proof")
    return [enc] + verify_state_proof(doc, verifier_key)
