"""Conformance of events/verifier.py (and events/merkle.py) with the published RFC 6962 /
RFC 9162 corpus under ../shared/vectors/rfc6962 (transparency-dev/merkle testdata)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from events import merkle
from events.verifier import EMPTY_ROOT, leaf_hash, verify_consistency, verify_inclusion

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / ".." / "shared" / "vectors"
RFC6962 = VECTORS / "rfc6962"

#: vectors/README.md: the 8-leaf reference tree.
REFERENCE_LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
)]
REFERENCE_ROOT = base64.b64decode("XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=")

INCLUSION = sorted((RFC6962 / "inclusion").rglob("*.json"))
CONSISTENCY = sorted((RFC6962 / "consistency").rglob("*.json"))


def b64(s: str) -> bytes:
    return base64.b64decode(s)


def proof_of(v: dict) -> list[bytes]:
    return [b64(p) for p in (v["proof"] or [])]  # "proof": null in some files


def case_id(path: Path) -> str:
    return str(path.relative_to(RFC6962))


def test_corpus_is_there():
    # Guard against silently testing nothing if the vectors move.
    assert len(INCLUSION) >= 90 and len(CONSISTENCY) >= 90
    assert any(json.loads(p.read_text())["wantErr"] is False for p in INCLUSION)


@pytest.mark.parametrize("path", INCLUSION, ids=case_id)
def test_inclusion_vector(path: Path):
    v = json.loads(path.read_text())
    ok = verify_inclusion(v["leafIdx"], v["treeSize"], b64(v["leafHash"]), proof_of(v), b64(v["root"]))
    assert ok is (not v["wantErr"]), v["desc"]


@pytest.mark.parametrize("path", CONSISTENCY, ids=case_id)
def test_consistency_vector(path: Path):
    v = json.loads(path.read_text())
    ok = verify_consistency(v["size1"], v["size2"], b64(v["root1"]), b64(v["root2"]), proof_of(v))
    assert ok is (not v["wantErr"]), v["desc"]


def reference_nodes() -> dict:
    return merkle.tree_nodes([leaf_hash(d) for d in REFERENCE_LEAVES])


def test_reference_tree_root():
    hashes = [leaf_hash(d) for d in REFERENCE_LEAVES]
    assert merkle.tree_root(hashes) == REFERENCE_ROOT
    assert merkle.root(8, reference_nodes()) == REFERENCE_ROOT
    f = merkle.Frontier()
    f.append(hashes)
    assert f.root() == REFERENCE_ROOT
    assert merkle.tree_root([]) == EMPTY_ROOT == b64("47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=")


@pytest.mark.parametrize("path", [p for p in INCLUSION if p.name == "happy-path.json"], ids=case_id)
def test_our_inclusion_proofs_equal_the_corpus(path: Path):
    """Every happy path is over a prefix of the reference tree: we produce the same proof."""
    v = json.loads(path.read_text())
    size, idx = v["treeSize"], v["leafIdx"]
    nodes = merkle.tree_nodes([leaf_hash(d) for d in REFERENCE_LEAVES[:size]])
    assert merkle.root(size, nodes) == b64(v["root"])
    assert nodes[(0, idx)] == b64(v["leafHash"])
    assert merkle.inclusion_proof(idx, size, nodes) == proof_of(v)


@pytest.mark.parametrize("path", [p for p in CONSISTENCY if p.name == "happy-path.json"], ids=case_id)
def test_our_consistency_proofs_equal_the_corpus(path: Path):
    v = json.loads(path.read_text())
    s1, s2 = v["size1"], v["size2"]
    nodes = reference_nodes()
    assert merkle.root(s1, nodes) == b64(v["root1"])
    assert merkle.root(s2, nodes) == b64(v["root2"])
    assert merkle.consistency_proof(s1, s2, nodes) == proof_of(v)
