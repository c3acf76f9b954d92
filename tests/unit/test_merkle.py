"""The RFC 9162 tree: roots, inclusion and consistency proofs over the RFC 6962 reference leaves, checked
against published values (the transparency-dev/merkle test data's roots and proofs) and against each
other for every size and index up to 40; every altered proof is refused."""

from __future__ import annotations

import base64
import itertools

import pytest

from gateway.audit.merkle import (
    EMPTY_ROOT,
    Frontier,
    InvalidProof,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

# The eight leaves of RFC 6962's reference tree, as every implementation's tests use them.
REFERENCE = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]
LEAVES = [leaf_hash(entry) for entry in REFERENCE]


def b64(text: str) -> bytes:
    return base64.b64decode(text)


# Published roots (base64) of the reference tree's prefixes.
ROOTS = {
    1: "bjQLnP+zepicpUTmu3gKLHiQHT+zNzh2hRGjBhevoB0=",
    2: "+sVCA+fMaWzw38tCySodnbr3CtnmIfS9jZhmLwDjwSU=",
    3: "rra8/idLcKFPsGel5VeCZNsPqbUa9eC6FZFY8yngbnc=",
    5: "Tju7H3tHjc/nH7YxYxUZo7yhLJrvyhYSv85ME6hiZNQ=",
    8: "XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=",
}


def test_roots_match_the_published_ones() -> None:
    assert root([]) == EMPTY_ROOT
    for size, expected in ROOTS.items():
        assert root(LEAVES[:size]) == b64(expected), size


def test_published_proofs_are_produced_and_accepted() -> None:
    inclusion = [
        b64(p)
        for p in (
            "lqKW0iTyhcZ77pPDD4owkVfw2qNdxbh+QQt4YwoJz8c=",
            "Xwg/ChozygdqlSeYMlgNs+DvRYS9/x9UyKNg9Q3jAx4=",
            "a0eq8p7jwq+a+Im8H7klTavTEXfxYjLdaqsDXKOb9uQ=",
        )
    ]
    assert inclusion_proof(0, LEAVES) == inclusion
    verify_inclusion(0, 8, LEAVES[0], inclusion, b64(ROOTS[8]))
    assert inclusion_proof(2, LEAVES[:3]) == [b64(ROOTS[2])]
    verify_inclusion(2, 3, b64("ApjRIpBtz8EIkstTpzmS/FufST6kybrbJ7eRtBJ6f+c="), [b64(ROOTS[2])], b64(ROOTS[3]))
    assert consistency_proof(1, LEAVES) == inclusion  # from one leaf: its path
    verify_consistency(1, 8, b64(ROOTS[1]), b64(ROOTS[8]), inclusion)
    two_to_five = [
        b64("Xwg/ChozygdqlSeYMlgNs+DvRYS9/x9UyKNg9Q3jAx4="),
        b64("vBoGQ7EuTS18d5GPROD095qDi2z57FtcKD4fTYhZnms="),
    ]
    assert consistency_proof(2, LEAVES[:5]) == two_to_five
    verify_consistency(2, 5, b64(ROOTS[2]), b64(ROOTS[5]), two_to_five)


def _altered(proof: list[bytes]) -> list[list[bytes]]:
    """Every single-bit flip of every hash, a hash dropped, and a hash added."""
    changed = []
    for i, node in enumerate(proof):
        for bit in (0, 7, 255):
            flipped = bytearray(node)
            flipped[bit // 8] ^= 1 << (bit % 8)
            changed.append([*proof[:i], bytes(flipped), *proof[i + 1 :]])
        changed.append(proof[:i] + proof[i + 1 :])
    return [*changed, [*proof, b"\x00" * 32], [b"\x00" * 32, *proof]]


def test_every_inclusion_proof_holds_and_every_alteration_is_refused() -> None:
    leaves = [leaf_hash(b"entry %d" % n) for n in range(40)]
    for size in range(1, 41):
        tree_root = root(leaves[:size])
        for index in range(size):
            proof = inclusion_proof(index, leaves[:size])
            verify_inclusion(index, size, leaves[index], proof, tree_root)
            with pytest.raises(InvalidProof):
                verify_inclusion(index, size, leaf_hash(b"another entry"), proof, tree_root)
            if size in (1, 7, 16, 33):
                for altered in _altered(proof):
                    with pytest.raises(InvalidProof):
                        verify_inclusion(index, size, leaves[index], altered, tree_root)
        with pytest.raises(InvalidProof):
            verify_inclusion(size, size, leaves[0], [], tree_root)


def test_every_consistency_proof_holds_and_every_alteration_is_refused() -> None:
    leaves = [leaf_hash(b"entry %d" % n) for n in range(40)]
    roots = [root(leaves[:size]) for size in range(41)]
    for old, new in itertools.combinations_with_replacement(range(41), 2):
        proof = consistency_proof(old, leaves[:new])
        verify_consistency(old, new, roots[old], roots[new], proof)
        if 0 < old < new:
            with pytest.raises(InvalidProof):
                verify_consistency(old, new, roots[old], root([*leaves[: new - 1], leaf_hash(b"x")]), proof)
            with pytest.raises(InvalidProof):
                verify_consistency(old, new, root([leaf_hash(b"x"), *leaves[1:old]]), roots[new], proof)
            if new in (9, 16, 33):
                for altered in _altered(proof):
                    with pytest.raises(InvalidProof):
                        verify_consistency(old, new, roots[old], roots[new], altered)
    with pytest.raises(InvalidProof):
        verify_consistency(5, 4, roots[5], roots[4], [])
    with pytest.raises(InvalidProof):
        verify_consistency(4, 4, roots[4], roots[5], [])


def test_the_frontier_gives_the_root_of_every_prefix() -> None:
    leaves = [leaf_hash(b"entry %d" % n) for n in range(70)]
    frontier = Frontier()
    assert frontier.root() == EMPTY_ROOT
    for size in range(1, 71):
        frontier.append(leaves[size - 1])
        assert frontier.size == size and frontier.root() == root(leaves[:size])
