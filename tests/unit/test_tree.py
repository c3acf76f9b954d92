"""The stored tree against the in-memory reference of RFC 9162 (`merkle.py`, itself checked against the
published vectors): every root and proof read from disk equals the one computed from all the leaves."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from gateway.audit import merkle
from gateway.audit.tree import TreeStore


def _leaves(n: int) -> list[bytes]:
    return [merkle.leaf_hash(f"entry {i}".encode()) for i in range(n)]


# A second, independent implementation (the bottom-up one of CT's compact trees: each level pairs its
# nodes left to right and carries an unpaired last node up unchanged), sharing nothing with merkle.py but
# SHA-256, to check the stored tree's roots and proofs against.
def _levels(leaves: list[bytes]) -> list[list[bytes]]:
    levels = [leaves]
    while len(levels[-1]) > 1:
        below = levels[-1]
        levels.append(
            [
                hashlib.sha256(b"\x01" + below[i] + below[i + 1]).digest() if i + 1 < len(below) else below[i]
                for i in range(0, len(below), 2)
            ]
        )
    return levels


def _reference_inclusion(index: int, leaves: list[bytes]) -> tuple[bytes, list[bytes]]:
    proof = []
    for level in _levels(leaves)[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            proof.append(level[sibling])
        index //= 2
    return _levels(leaves)[-1][0], proof


def test_the_stored_tree_agrees_with_an_independent_implementation(tmp_path: Path) -> None:
    leaves = _leaves(1100)
    tree = TreeStore(tmp_path)
    tree.open()
    tree.extend(leaves)
    rng = random.Random(11)
    for size in [*range(1, 40), 255, 256, 257, 511, 1023, 1024, 1025, 1100]:
        for index in {0, size - 1, *rng.sample(range(size), min(size, 6))}:
            root, proof = _reference_inclusion(index, leaves[:size])
            assert tree.root(size) == root
            assert tree.inclusion(index, size) == proof
    tree.close()


@pytest.mark.slow
def test_paths_read_through_ranges_equal_the_recursive_definitions() -> None:
    for size in range(1, 70):
        leaves = _leaves(size)

        def subtree(start: int, end: int, leaves: list[bytes] = leaves) -> bytes:
            return merkle.root(leaves[start:end])

        for index in range(size):
            assert merkle.inclusion_path(index, size, subtree) == merkle.inclusion_proof(index, leaves)
        for old in range(size + 1):
            assert merkle.consistency_path(old, size, subtree) == merkle.consistency_proof(old, leaves)


def test_a_tree_extended_in_uneven_batches_serves_every_root_and_proof(tmp_path: Path) -> None:
    rng = random.Random(7)
    leaves = _leaves(300)
    tree = TreeStore(tmp_path)
    tree.open()
    done = 0
    while done < len(leaves):
        step = rng.choice([1, 1, 2, 3, 7, 16, 33])
        tree.extend(leaves[done : done + step])
        done = min(len(leaves), done + step)
        assert tree.size == done
        assert tree.root(done) == merkle.root(leaves[:done])
    for size in (1, 2, 3, 255, 256, 257, 300):
        for index in rng.sample(range(size), min(size, 12)):
            assert tree.inclusion(index, size) == merkle.inclusion_proof(index, leaves[:size])
            merkle.verify_inclusion(index, size, leaves[index], tree.inclusion(index, size), tree.root(size))
        for old in rng.sample(range(size + 1), min(size + 1, 12)):
            proof = tree.consistency(old, size)
            assert proof == merkle.consistency_proof(old, leaves[:size])
            merkle.verify_consistency(old, size, tree.root(old), tree.root(size), proof)
    with pytest.raises(LookupError):
        tree.root(301)
    tree.close()


def test_a_reopened_tree_resumes_and_a_reader_sees_what_was_written(tmp_path: Path) -> None:
    leaves = _leaves(1000)
    tree = TreeStore(tmp_path)
    tree.open()
    tree.extend(leaves[:517])
    tree.sync()
    tree.close()
    again = TreeStore(tmp_path)
    assert again.open() == 517
    again.extend(leaves[517:])
    reader = TreeStore(tmp_path, writable=False)
    reader.open()
    assert reader.root(1000) == again.root(1000) == merkle.root(leaves)
    assert reader.inclusion(999, 1000) == merkle.inclusion_proof(999, leaves)
    again.close()
    reader.close()


def test_a_crash_between_levels_is_made_whole_and_a_cut_drops_the_tail(tmp_path: Path) -> None:
    leaves = _leaves(600)
    tree = TreeStore(tmp_path)
    tree.open()
    tree.extend(leaves)
    tree.close()
    for level in (1, 3, 5):  # higher levels lost their last writes
        path = tmp_path / "tree" / f"level-{level}"
        os.truncate(path, max(0, path.stat().st_size - 64))
    again = TreeStore(tmp_path)
    assert again.open() == 600
    assert again.root(600) == merkle.root(leaves)
    again.truncate(300)
    assert again.size == 300
    again.extend(leaves[300:450])
    assert again.root(450) == merkle.root(leaves[:450])
    assert again.inclusion(449, 450) == merkle.inclusion_proof(449, leaves[:450])
    again.close()


def test_an_altered_node_changes_the_root(tmp_path: Path) -> None:
    leaves = _leaves(64)
    tree = TreeStore(tmp_path)
    tree.open()
    tree.extend(leaves)
    good = tree.root(64)
    os.pwrite(tree._fds[0], hashlib.sha256(b"forged").digest(), 5 * 32)
    tree.truncate(64)  # a rebuild above level 0 would not restore the old root either
    assert tree.root(64) == good  # upper levels still hold the original hashes...
    assert merkle.root(tree.leaf_hashes(0, 64)) != good  # ...which the leaves no longer produce
    tree.close()
