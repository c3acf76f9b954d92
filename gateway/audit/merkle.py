"""The Merkle tree of RFC 9162 (§2.1) over a log's entries: pure functions, no I/O.

A leaf is `SHA-256(0x00 ‖ entry)`, an inner node `SHA-256(0x01 ‖ left ‖ right)`, a tree over n > 1
leaves splits at the largest power of two below n. Proofs are generated from the leaf hashes and checked
with the RFC's verification algorithms, which is all a client needs: the verifiers are the part anyone
outside can run against a signed tree head. Written here rather than taken from a package: the one
maintained Python implementation is GPL with an exact dependency pin, and the algorithms are short.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

EMPTY_ROOT = hashlib.sha256(b"").digest()


class InvalidProof(ValueError):
    """A proof that does not hold, or is not well formed."""


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return node_hash(root(leaves[:k]), root(leaves[k:]))


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(index, D[n]): the hashes that lead from leaf `index` to the root."""
    if not 0 <= index < len(leaves):
        raise ValueError(f"leaf {index} is not in a tree of {len(leaves)}")
    if len(leaves) == 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return [*inclusion_proof(index, leaves[:k]), root(leaves[k:])]
    return [*inclusion_proof(index - k, leaves[k:]), root(leaves[:k])]


def consistency_proof(old_size: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]): what shows the tree of the first `old_size` leaves is a prefix of this one."""
    if not 0 <= old_size <= len(leaves):
        raise ValueError(f"no tree of {old_size} within a tree of {len(leaves)}")
    if old_size in (0, len(leaves)):
        return []
    return _subproof(old_size, leaves, True)


def _subproof(m: int, leaves: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [root(leaves)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, leaves[:k], complete), root(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), root(leaves[:k])]


Subtree = Callable[[int, int], bytes]
"""The root of the leaves [start, end): how proofs read a stored tree."""


def inclusion_path(index: int, size: int, subtree: Subtree) -> list[bytes]:
    """PATH(index, D[size]) read through `subtree`: the same proof as `inclusion_proof`, from stored nodes.
    Walks the tree top-down, so only the siblings on the way are asked for (every one a whole, aligned
    subtree except those on the right edge)."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size}")
    path: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            path.append(subtree(start + k, end))
            end = start + k
        else:
            path.append(subtree(start, start + k))
            start += k
    path.reverse()
    return path


def consistency_path(old_size: int, new_size: int, subtree: Subtree) -> list[bytes]:
    """PROOF(old_size, D[new_size]) read through `subtree` (RFC 9162 SUBPROOF, unrolled)."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"no tree of {old_size} within a tree of {new_size}")
    if old_size in (0, new_size):
        return []
    path: list[bytes] = []
    start, end, m, complete = 0, new_size, old_size, True
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            path.append(subtree(start + k, end))
            end = start + k
        else:
            path.append(subtree(start, start + k))
            start, m, complete = start + k, m - k, False
    if not complete:
        path.append(subtree(start, end))
    path.reverse()
    return path


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], expected_root: bytes) -> None:
    """RFC 9162 §2.1.3.2; raises InvalidProof unless the proof leads from `leaf` to `expected_root`."""
    if not 0 <= index < size:
        raise InvalidProof(f"leaf {index} is not in a tree of {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise InvalidProof("the proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise InvalidProof("the proof is shorter than the tree is deep")
    if r != expected_root:
        raise InvalidProof("the proof does not lead to the root")


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> None:
    """RFC 9162 §2.1.4.2; raises InvalidProof unless the old tree is a prefix of the new one."""
    if not 0 <= old_size <= new_size:
        raise InvalidProof(f"a tree of {old_size} cannot precede a tree of {new_size}")
    if old_size == new_size:
        if proof:
            raise InvalidProof("trees of one size need an empty proof")
        if old_root != new_root:
            raise InvalidProof("two roots for one tree size")
        return
    if old_size == 0:
        if proof:
            raise InvalidProof("the empty tree needs an empty proof")
        return
    if not proof:
        raise InvalidProof("an empty proof")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is a node of the new tree
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise InvalidProof("the proof is longer than the trees are deep")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise InvalidProof("the proof is shorter than the trees are deep")
    if fr != old_root:
        raise InvalidProof("the proof does not lead to the old root")
    if sr != new_root:
        raise InvalidProof("the proof does not lead to the new root")


class Frontier:
    """The right edge of a growing tree (one hash per set bit of its size): appending a leaf costs one
    node hash on average, and the root is computed from at most log2(n) hashes, with no leaves kept."""

    def __init__(self) -> None:
        self.size = 0
        self._nodes: list[bytes] = []  # roots of the perfect subtrees, largest first

    def append(self, leaf: bytes) -> None:
        node, size = leaf, self.size
        while size & 1:
            node = node_hash(self._nodes.pop(), node)
            size >>= 1
        self._nodes.append(node)
        self.size += 1

    def root(self) -> bytes:
        if not self._nodes:
            return EMPTY_ROOT
        node = self._nodes[-1]
        for left in reversed(self._nodes[:-1]):
            node = node_hash(left, node)
        return node
