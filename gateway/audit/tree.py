"""A log's Merkle tree on disk: every complete subtree's hash, one file per level, extended as entries
are synced (an integrator that only ever appends: nothing is rebuilt) and read for proofs.

Level h's file holds, at offset 32·i, the hash of the leaves [i·2^h, (i+1)·2^h): level 0 the leaf hashes,
level 1 their pairs, and so on. These are the hashes C2SP tlog-tiles serves, kept at every level rather
than every eighth, so a proof is one 32-byte read per hash (about log2(n) reads) instead of a tile read
and up to 255 hashes per step. Space is 64 bytes an entry (640 MB at 10 million).

The files are derived data: the segments are the durable point. They are synced before each checkpoint
is signed, so at start everything up to the last signed checkpoint is on disk; what follows it is cut
and hashed again from the segments.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path

from gateway.audit.merkle import EMPTY_ROOT, consistency_path, inclusion_path, leaf_hash, node_hash

HASH = 32
TREE_DIR = "tree"


class TreeStore:
    """One log's stored tree. One writer (the log's writer) extends it; readers (proofs, other processes)
    open it read-only and read sizes they know were checkpointed."""

    def __init__(self, log_directory: Path, *, writable: bool = True) -> None:
        self.directory = log_directory / TREE_DIR
        self._writable = writable
        self._fds: list[int] = []
        self._dirty: set[int] = set()
        self._levels = threading.Lock()
        self.size = 0

    def open(self) -> int:
        """Open the level files; the size is what level 0 holds whole, and every higher level is cut or
        completed to agree with it (a crash between two levels' writes leaves them out of step)."""
        if self._writable:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        level = 0
        while True:
            path = self.directory / f"level-{level}"
            if not self._writable and not path.exists():
                break
            if self._writable and level > 0 and not path.exists() and (self.size >> level) == 0:
                break
            self._fds.append(os.open(path, (os.O_RDWR | os.O_CREAT) if self._writable else os.O_RDONLY, 0o600))
            if level == 0:
                self.size = os.fstat(self._fds[0]).st_size // HASH
            level += 1
        if self._writable:
            self.truncate(self.size)
        return self.size

    def _fd(self, level: int) -> int:
        while len(self._fds) <= level:
            self._fds.append(os.open(self.directory / f"level-{len(self._fds)}", os.O_RDWR | os.O_CREAT, 0o600))
        return self._fds[level]

    def node(self, level: int, index: int) -> bytes:
        """The hash of the complete subtree of 2^level leaves starting at leaf index·2^level."""
        if not self._writable and level >= len(self._fds):  # a level the writer began since
            with self._levels:  # proofs run on several threads: one opens each new level, in order
                while len(self._fds) <= level and (path := self.directory / f"level-{len(self._fds)}").exists():
                    self._fds.append(os.open(path, os.O_RDONLY))
        data = os.pread(self._fds[level], HASH, index * HASH) if level < len(self._fds) else b""
        if len(data) != HASH:
            raise LookupError(f"no stored node {index} at level {level}")
        return data

    def leaf_hashes(self, start: int, count: int) -> list[bytes]:
        if not self._fds:
            return []
        data = os.pread(self._fds[0], count * HASH, start * HASH)
        return [data[i : i + HASH] for i in range(0, len(data) - HASH + 1, HASH)]

    def extend(self, leaves: list[bytes]) -> None:
        """Append leaf hashes and every subtree they complete: one write per level touched."""
        nodes, first, level = leaves, self.size, 0
        while nodes:
            os.pwrite(self._fd(level), b"".join(nodes), first * HASH)
            self._dirty.add(level)
            parents = []
            j = 0
            if first & 1:  # the first new node is a right child: its left sibling is already stored
                parents.append(node_hash(self.node(level, first - 1), nodes[0]))
                j = 1
            while j + 1 < len(nodes):
                parents.append(node_hash(nodes[j], nodes[j + 1]))
                j += 2
            nodes, first, level = parents, first >> 1, level + 1
        self.size += len(leaves)

    def extend_entries(self, entries: Iterable[bytes]) -> None:
        self.extend([leaf_hash(entry) for entry in entries])

    def truncate(self, size: int) -> None:
        """Cut the tree back to `size` leaves (at start: what follows the last checkpoint is hashed again),
        completing any level a crash left short."""
        for level, fd in enumerate(self._fds):
            os.ftruncate(fd, min(os.fstat(fd).st_size // HASH, size >> level) * HASH)
        self.size = size
        for level in range(1, len(self._fds)):
            have, want = os.fstat(self._fds[level]).st_size // HASH, size >> level
            for index in range(have, want):
                os.pwrite(
                    self._fds[level],
                    node_hash(self.node(level - 1, 2 * index), self.node(level - 1, 2 * index + 1)),
                    index * HASH,
                )
        self._dirty.update(range(len(self._fds)))

    def sync(self) -> None:
        """Make what was written durable (before a checkpoint over it is signed)."""
        for level in sorted(self._dirty):
            os.fdatasync(self._fds[level])
        self._dirty.clear()

    def subtree(self, start: int, end: int) -> bytes:
        """MTH of the leaves [start, end), from stored nodes: a whole aligned subtree is one read, any other
        range splits as RFC 9162 does (only the right edge of a proof's tree needs it)."""
        width = end - start
        if width & (width - 1) == 0 and start % width == 0:
            return self.node(width.bit_length() - 1, start // width)
        k = 1 << ((width - 1).bit_length() - 1)
        return node_hash(self.subtree(start, start + k), self.subtree(start + k, end))

    def root(self, size: int) -> bytes:
        self._check(size)
        return EMPTY_ROOT if size == 0 else self.subtree(0, size)

    def inclusion(self, index: int, size: int) -> list[bytes]:
        self._check(size)
        return inclusion_path(index, size, self.subtree)

    def consistency(self, old_size: int, new_size: int) -> list[bytes]:
        self._check(new_size)
        return consistency_path(old_size, new_size, self.subtree)

    def _check(self, size: int) -> None:
        if self._writable and size > self.size:
            raise LookupError(f"the tree holds {self.size} leaves, not {size}")

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
