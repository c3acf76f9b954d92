"""Proofs over the local logs, read from their files: checkpoints (with the cosignatures gathered),
inclusion and consistency proofs from the stored tree, entries by seq, and receipts in the C2SP
tlog-proof format. Any log in this data dir can be read, whichever process writes it (its writer
only appends, and only sizes a signed checkpoint covers are served), so every worker answers for all.
"""

from __future__ import annotations

import asyncio
import base64
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from gateway.audit import merkle, notes
from gateway.audit.origin import local_logs
from gateway.audit.segment_store import last_checkpoint, last_witnessed, read_origin, read_vkey, recent_witnessed
from gateway.audit.segments import EntryLocator
from gateway.audit.tree import TreeStore

PROOF_HEADER = "c2sp.org/tlog-proof@v1"


class NotProvable(LookupError):
    """No signed checkpoint covers what was asked (yet)."""


@dataclass(frozen=True)
class SignedHead:
    """A signed checkpoint of a log, with the cosignatures known for it."""

    size: int
    root: bytes
    note: str  # the log's signature and any cosignatures


def cosigned_count(note: str, witnesses: list[notes.Verifier]) -> int:
    """How many distinct witnesses' cosignatures in `note` hold (0 when none does)."""
    try:
        _, good = notes.verified(note, witnesses)
    except notes.NoteError:
        return 0
    return len({signature.name for signature in good})


def proof_text(index: int, hashes: list[bytes], note: str) -> str:
    """A C2SP tlog-proof@v1: header, index, inclusion proof lines, blank line, checkpoint verbatim."""
    lines = [PROOF_HEADER, f"index {index}", *(base64.b64encode(h).decode() for h in hashes)]
    return "\n".join(lines) + "\n\n" + note


@dataclass(frozen=True)
class ParsedProof:
    index: int
    hashes: list[bytes]
    note: str


def parse_proof(text: str) -> ParsedProof:
    """Split a tlog-proof@v1 (raises NoteError when it is not one)."""
    head, sep, note = text.partition("\n\n")
    lines = head.split("\n")
    if not sep or len(lines) < 2 or lines[0] != PROOF_HEADER:
        raise notes.NoteError("not a c2sp.org/tlog-proof@v1")
    at = 1
    if lines[1].startswith("extra "):
        at = 2
    if at >= len(lines) or not lines[at].startswith("index "):
        raise notes.NoteError("a proof names its entry's index")
    raw = lines[at][len("index ") :]
    if not re.fullmatch(r"0|[1-9][0-9]{0,18}", raw):
        raise notes.NoteError("a proof's index is a decimal with no leading zeroes")
    hashes = []
    for line in lines[at + 1 :]:
        try:
            value = base64.b64decode(line, validate=True)
        except ValueError:
            raise notes.NoteError("a proof line is a base64 hash") from None
        if len(value) != 32:
            raise notes.NoteError("a proof line is a 32-byte hash")
        hashes.append(value)
    if len(hashes) > 63:
        raise notes.NoteError("a proof has at most 63 hashes")
    return ParsedProof(int(raw), hashes, note)


class LogView:
    """One local log as its files show it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.origin = read_origin(directory) or ""
        vkey = read_vkey(directory)
        self.verifier = notes.Verifier.parse(vkey) if vkey else None
        self._tree: TreeStore | None = None
        self._tree_lock = threading.Lock()
        self.entries = EntryLocator(directory)

    @property
    def vkey(self) -> str | None:
        return None if self.verifier is None else self.verifier.vkey()

    def tree(self) -> TreeStore:
        with self._tree_lock:
            if self._tree is None:
                tree = TreeStore(self.directory, writable=False)
                tree.open()
                self._tree = tree
            return self._tree

    def signed(self) -> SignedHead | None:
        """The last checkpoint the log signed, with the cosignatures gathered for it so far."""
        last = last_checkpoint(self.directory)
        if last is None or last.note is None or self.verifier is None:
            return None
        checkpoint = notes.signed_checkpoint(last.note, [self.verifier])
        note = last.note
        witnessed = last_witnessed(self.directory)
        if witnessed is not None and witnessed[0] == checkpoint.size:
            note = witnessed[1]
        return SignedHead(checkpoint.size, checkpoint.root, note)

    def witnessed(self) -> list[SignedHead]:
        """The checkpoints witnesses cosigned lately (whether or not a quorum), newest first."""
        if self.verifier is None:
            return []
        heads = []
        for _, note in recent_witnessed(self.directory):
            checkpoint = notes.signed_checkpoint(note, [self.verifier])
            heads.append(SignedHead(checkpoint.size, checkpoint.root, note))
        return heads

    def _covered(self, size: int) -> SignedHead:
        head = self.signed()
        if head is None or size > head.size:
            raise NotProvable(f"no signed checkpoint of {self.origin!r} covers size {size} yet")
        return head

    def inclusion(self, seq: int, size: int) -> tuple[bytes, list[bytes]]:
        """(leaf hash, proof) of entry `seq` in the tree of `size` (a size a signed checkpoint covers)."""
        self._covered(size)
        if not 0 <= seq < size:
            raise ValueError(f"seq {seq} is not in a tree of {size}")
        tree = self.tree()
        return tree.node(0, seq), tree.inclusion(seq, size)

    def consistency(self, old: int, new: int) -> list[bytes]:
        self._covered(new)
        if not 0 <= old <= new:
            raise ValueError("old must lie between 0 and new")
        return self.tree().consistency(old, new)

    def entry(self, seq: int) -> bytes | None:
        return self.entries.read(seq)

    def close(self) -> None:
        if self._tree is not None:
            self._tree.close()


class LogViews:
    """The local logs by origin, found under the log root and kept open."""

    def __init__(self, log_root: Path) -> None:
        self.log_root = log_root
        self._views: dict[str, LogView] = {}
        self._lock = threading.Lock()
        # One search of the unindexed tails at a time (receipts): a burst of unknown ids costs one worker
        # thread, not the pool the access log's writes share.
        self.tail_scans = asyncio.Semaphore(1)

    def _refresh(self) -> None:
        for directory in local_logs(self.log_root):
            origin = read_origin(directory)
            if origin and origin not in self._views and read_vkey(directory):
                self._views[origin] = LogView(directory)

    def get(self, origin: str) -> LogView | None:
        with self._lock:
            if origin not in self._views:
                self._refresh()
            return self._views.get(origin)

    def all(self) -> list[LogView]:
        with self._lock:
            self._refresh()
            return sorted(self._views.values(), key=lambda view: view.origin)

    def close(self) -> None:
        for view in self._views.values():
            view.close()


def receipt_proof(view: LogView, seq: int, head: SignedHead) -> tuple[bytes, str]:
    """The entry's bytes and a tlog-proof of it under `head`, checked before it is handed out."""
    entry = view.entry(seq)
    if entry is None:
        raise NotProvable(f"the log {view.origin!r} holds no entry {seq}")
    leaf, hashes = view.inclusion(seq, head.size)
    if leaf != merkle.leaf_hash(entry):
        raise merkle.InvalidProof(f"entry {seq} is not the one the tree holds")
    merkle.verify_inclusion(seq, head.size, leaf, hashes, head.root)
    return entry, proof_text(seq, hashes, head.note)
