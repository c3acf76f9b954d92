"""The access log's store over segment files: the durable point of one gateway process's log, named by
its origin (docs/contract.md §13). `DurableAccessLog` (the one writer, group commit) hands it batches; each batch
is chained (`prev_hash`, `hash`, 0-based `seq`), encoded in its canonical form and written with one
`pwrite` and one `fdatasync`, off the event loop (both release the interpreter lock).

A log's directory holds, beside its segments:
- `origin`: the origin's name, written when the log is made; a directory is never reused for another.
- `link.json` (optional): the head of the log this one continues (a 1.0 SQL log, sealed when it was
  migrated). The first entry's `prev_hash` is that head's hash, so one walk checks both.
- `checkpoints.jsonl`: the signed checkpoints over this log, one line each, synced when written. They live
  beside the segments, outside the query database, so the index can be rebuilt without losing them. Each
  carries the C2SP checkpoint (`note`) over the log's Merkle tree; the last one is what every later tree
  must extend (`NotAnExtension` otherwise: nothing more is signed or appended).
- `tree/`: the Merkle tree's stored nodes (`tree.py`), extended with each batch.
- `vkey`: the log's public key as a C2SP vkey, written when the log is made; a log is only ever signed by
  that key (a new key begins a new origin).
- `witnessed.jsonl`: checkpoints with the witnesses' cosignatures gathered for them.
- `retired.json`: set when the log must not be written again (its key was rotated, or it was found
  behind a checkpoint it had signed: restored from an older copy); it names the origin that continues it.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from gateway.audit import notes
from gateway.audit.chain import GENESIS, Checkpoint, CheckpointSigner, checkpoint_valid, link
from gateway.audit.merkle import leaf_hash
from gateway.audit.record import rfc3339
from gateway.audit.segments import SegmentLog
from gateway.audit.tree import TreeStore

log = logging.getLogger(__name__)

ORIGIN_FILE = "origin"
LINK_FILE = "link.json"
CHECKPOINTS_FILE = "checkpoints.jsonl"
WRITER_LOCK_FILE = "writer.lock"
VKEY_FILE = "vkey"
WITNESSED_FILE = "witnessed.jsonl"
RETIRED_FILE = "retired.json"
RECENT_IDS = 100_000  # transaction id → seq kept in memory: receipts before the index has the event
PROBE_BYTES = 16 * 1024  # room a probe asks for after a failure: a large batch's worth


def entry_bytes(event: dict[str, Any]) -> bytes:
    """The entry as stored and hashed into proofs: JSON, sorted keys, compact, UTF-8."""
    return orjson.dumps(event, option=orjson.OPT_SORT_KEYS)


class LogMismatch(Exception):
    """The directory holds another origin's log."""


class NotAnExtension(Exception):
    """The log's tree is not an extension of its last signed checkpoint: history was rewritten, or the log
    was restored from an older copy. Nothing more is signed or appended; an operator must look."""


def read_vkey(directory: Path) -> str | None:
    try:
        return (directory / VKEY_FILE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None


def read_retired(directory: Path) -> dict[str, Any] | None:
    try:
        return dict(orjson.loads((directory / RETIRED_FILE).read_bytes()))
    except FileNotFoundError:
        return None


def retire(directory: Path, head: Link, reason: str, successor: str) -> None:
    """Mark a log as never to be written again, naming the origin that continues it and its head."""
    write_synced(
        directory / RETIRED_FILE,
        orjson.dumps({"reason": reason, "successor": successor, "time": rfc3339(datetime.now(UTC)), **head.__dict__}),
    )


def read_head(directory: Path, origin: str) -> Link:
    """The last entry of a log (read-only), or the head it continues when it has none."""
    segments = SegmentLog(directory, read_only=True)
    recovery = segments.open()
    if recovery.next_seq == 0:
        linked = read_link(directory)
        return Link(origin, -1, linked.hash if linked else GENESIS)
    last = next(segments.records(recovery.next_seq - 1))[1]
    return Link(origin, recovery.next_seq - 1, orjson.loads(last)["hash"])


def _tail_lines(path: Path, size: int) -> list[bytes]:
    """The lines of a file's last `size` bytes, last first (none when there is no file): its newest
    records, for files that grow a line at a time."""
    try:
        with open(path, "rb") as handle:
            end = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, end - size))
            return list(reversed(handle.read().split(b"\n")))
    except FileNotFoundError:
        return []


def recent_witnessed(directory: Path) -> Iterator[tuple[int, str]]:
    """(size, note with cosignatures) of the checkpoints witnesses cosigned lately, newest first."""
    for line in _tail_lines(directory / WITNESSED_FILE, 65536):
        try:
            found = orjson.loads(line)
            yield int(found["size"]), str(found["note"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # a line cut by a crash


def last_witnessed(directory: Path) -> tuple[int, str] | None:
    """(size, note with cosignatures) of the last checkpoint witnesses cosigned, if any."""
    return next(recent_witnessed(directory), None)


@dataclass(frozen=True)
class Link:
    """The head of the log a new log continues: its origin, last seq and last hash."""

    origin: str
    seq: int
    hash: str


def read_link(directory: Path) -> Link | None:
    try:
        return Link(**orjson.loads((directory / LINK_FILE).read_bytes()))
    except FileNotFoundError:
        return None


def read_origin(directory: Path) -> str | None:
    try:
        return (directory / ORIGIN_FILE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None


def checkpoint_of(line: bytes) -> Checkpoint | None:
    """A line of a checkpoints file, or None for what is not one (a line cut by a crash, never synced)."""
    try:
        return Checkpoint(**orjson.loads(line))
    except (orjson.JSONDecodeError, TypeError):
        return None


def last_checkpoint(directory: Path) -> Checkpoint | None:
    """The last whole checkpoint line, read from the file's end (the file grows by one a second)."""
    lines = _tail_lines(directory / CHECKPOINTS_FILE, 8192)
    return next((c for line in lines if (c := checkpoint_of(line)) is not None), None)


def read_checkpoints(directory: Path) -> list[Checkpoint]:
    """Every whole line of the checkpoints file (a line cut by a crash is ignored: it was never synced)."""
    try:
        data = (directory / CHECKPOINTS_FILE).read_bytes()
    except FileNotFoundError:
        return []
    return [c for line in data.split(b"\n") if (c := checkpoint_of(line)) is not None]


def hold_writer_lock(directory: Path) -> int | None:
    """An exclusive `flock` on the log's lock file, held for as long as the fd is open; None when another
    process holds it (it is writing the log)."""
    fd = os.open(directory / WRITER_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def write_synced(path: Path, data: bytes) -> None:
    """A small file made whole or not at all: written aside, synced, renamed, directory synced."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class SegmentStore:
    def __init__(
        self,
        directory: Path,
        *,
        origin: str = "",
        signer: CheckpointSigner | None = None,
        segment_bytes: int = 64 * 1024 * 1024,
        seal_every: int = 1000,
        link_to: Link | None = None,
        lock_wait_s: float = 3.0,
    ) -> None:
        self.directory = directory
        self.origin = origin
        self.log = SegmentLog(directory, segment_bytes=segment_bytes)
        self._signer = signer
        self._seal_every = seal_every
        self._link_to = link_to
        self._lock_wait_s = lock_wait_s
        self._head: tuple[int, str] | None = None  # (seq, hash) of the last entry, once opened
        self._sealed: tuple[int, float] = (-1, 0.0)  # the last checkpoint's seq, and when it was signed
        self._lock = asyncio.Lock()
        self._writer_lock: int | None = None
        self._append_failed = False
        self.torn_bytes = 0
        self.tree = TreeStore(directory)
        self._tree_behind = False  # a tree write failed after its entries were synced: redo before signing
        self._kept: notes.Checkpoint | None = None  # the last C2SP checkpoint signed: every tree extends it
        self._note: str | None = None
        self.refusal: str | None = None  # why nothing more is signed or appended (NotAnExtension)
        self.cut_short = False  # the refusal is entries a checkpoint covers gone (a restore, not a rewrite)
        self.recent: dict[str, int] = {}
        self.on_checkpoint: Callable[[str, int], None] | None = None  # the witnesses' client
        self.on_refusal: Callable[[str | None], None] | None = None  # the alarm (a metric)

    def _refuse(self, reason: str) -> None:
        """Stop signing and appending, loudly: the log no longer extends what it signed."""
        self.refusal = reason
        log.critical("access log %s: %s; nothing more is signed or appended", self.origin, reason)
        if self.on_refusal is not None:
            self.on_refusal(reason)

    @property
    def verifier(self) -> notes.Verifier | None:
        return None if self._signer is None else self._signer.note_signer(self.origin).verifier

    @property
    def signer_key_id(self) -> str:
        return "" if self._signer is None else self._signer.key_id

    def consistency(self, old: int, new: int) -> list[bytes]:
        """A consistency proof between two sizes the log signed (for the witnesses; off the loop)."""
        return self.tree.consistency(old, new)

    @property
    def signed_size(self) -> int:
        """The size of the last C2SP checkpoint signed (0 before the first)."""
        return 0 if self._kept is None else self._kept.size

    @property
    def latest_note(self) -> str | None:
        """The last signed checkpoint (C2SP note), None before the first."""
        return self._note

    def continue_from(self, link: Link) -> None:
        """Make a new log continue `link`'s log (no effect on a log that already exists)."""
        if self._head is None:
            self._link_to = link

    @property
    def opened(self) -> bool:
        return self._head is not None

    @property
    def next_seq(self) -> int:
        """How many entries the log holds: the next seq (0 before it is opened)."""
        return 0 if self._head is None else self._head[0] + 1

    async def _opened(self) -> tuple[int, str]:
        if self._head is None:
            self._head = await asyncio.to_thread(self._open)
        return self._head

    def _open(self) -> tuple[int, str]:
        """Take the writer's lock, then recover; the lock is let go if recovery fails."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        deadline = time.monotonic() + self._lock_wait_s  # another process finishing an idle log lets go soon
        while (lock := hold_writer_lock(self.directory)) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if lock is None:
            raise LogMismatch(f"{self.directory}: another process is writing this log")
        self._writer_lock = lock
        try:
            return self._recover()
        except BaseException:
            os.close(self._writer_lock)
            self._writer_lock = None
            raise

    def _recover(self) -> tuple[int, str]:
        """Check the origin, recover the segments, and read the chain's head from the last entry."""
        found = read_origin(self.directory)
        if found is None:
            if self._link_to is not None:
                write_synced(self.directory / LINK_FILE, orjson.dumps(self._link_to.__dict__))
            write_synced(self.directory / ORIGIN_FILE, self.origin.encode() + b"\n")
        elif self.origin and found != self.origin:
            raise LogMismatch(f"{self.directory} holds the log of {found!r}, not {self.origin!r}")
        if (retired := read_retired(self.directory)) is not None:
            raise LogMismatch(
                f"{self.directory}: the log was retired ({retired.get('reason')}); it continues as "
                f"{retired.get('successor')!r}"
            )
        self.origin = found or self.origin
        if self._signer is not None:
            vkey = self._signer.note_signer(self.origin).verifier.vkey()
            recorded = read_vkey(self.directory)
            if recorded is None:  # a new log, or one from before vkeys: only if this key signed it
                last = last_checkpoint(self.directory)
                if last is not None and checkpoint_valid(last, {self._signer.key_id: self._signer.public_key}):
                    raise LogMismatch(
                        f"{self.directory}: the log {self.origin!r} was not signed by this gateway's log key"
                    )
                write_synced(self.directory / VKEY_FILE, vkey.encode() + b"\n")
            elif recorded != vkey:
                raise LogMismatch(
                    f"{self.directory}: the log {self.origin!r} is signed by {recorded}, not by this "
                    "gateway's log key; a new key begins a new origin"
                )
        sealed = last_checkpoint(self.directory)
        recovery = self.log.open(protect_through=sealed.seq if sealed else -1)
        self.torn_bytes = recovery.torn_bytes
        if recovery.torn_bytes:
            log.warning(
                "access log %s: a torn write of %d bytes after seq %d was cut (never acknowledged)",
                self.origin,
                recovery.torn_bytes,
                recovery.next_seq - 1,
            )
        if sealed is not None:
            self._sealed = (sealed.seq, time.time())
        self._open_tree(recovery.next_seq, sealed)
        if recovery.next_seq == 0:
            linked = read_link(self.directory)
            return -1, linked.hash if linked else GENESIS
        newest = next(self.log.records(recovery.next_seq - 1))[1]
        return recovery.next_seq - 1, orjson.loads(newest)["hash"]

    def _open_tree(self, size: int, sealed: Checkpoint | None) -> None:
        """Resume the stored tree: keep it up to the last signed checkpoint (synced before that signature),
        hash what follows again from the segments, and check it still gives the checkpoint's root."""
        self.tree.open()
        signed = sealed.seq + 1 if sealed is not None else 0
        if size < signed:  # entries a checkpoint covers are gone: keep the tree as evidence, sign nothing
            self.cut_short = True
            self._refuse(
                f"the log holds {size} entries but its last checkpoint covers {signed}: entries were "
                "deleted from the end"
            )
            return
        keep = min(self.tree.size, signed)
        self.tree.truncate(keep)
        self._extend_tree_from(keep)
        if sealed is None or sealed.note is None or self.verifier is None:
            return  # a log from before notes: its first note begins the tree's record
        try:
            self._kept = notes.signed_checkpoint(sealed.note, [self.verifier])
        except notes.NoteError as exc:
            self._refuse(f"the last checkpoint of {self.origin!r} does not verify under the log's key ({exc})")
            return
        self._note = sealed.note
        if self._kept.origin != self.origin or self._kept.size != signed:
            self._refuse(f"the last checkpoint names {self._kept.origin!r} at size {self._kept.size}")
        elif self.tree.root(signed) != self._kept.root:
            self._refuse(
                f"the log's tree at size {signed} is not the one its last signed checkpoint covers: "
                f"entries before seq {signed} were rewritten"
            )

    def _extend_tree_from(self, start: int) -> None:
        batch: list[bytes] = []
        for _, payload in self.log.records(start):
            batch.append(leaf_hash(payload))
            if len(batch) >= 4096:
                self.tree.extend(batch)
                batch = []
        self.tree.extend(batch)

    def _write(self, payloads: list[bytes]) -> None:
        """Sync the entries, then add their leaves to the tree (derived data: a failure there is redone
        from the segments before the next signature, and the entries stand)."""
        self.log.append(payloads)
        if not self._tree_behind:
            try:
                self.tree.extend([leaf_hash(payload) for payload in payloads])
            except OSError as exc:
                log.error("access log %s: the tree could not be extended (%s); redone before signing", self.origin, exc)
                self._tree_behind = True

    def scrub(self) -> str | None:
        """Hash every entry the last checkpoint covers and compare it with the tree's leaf: an entry
        rewritten under an intact tree is found here, and named. Runs once after start, off the loop; on a
        difference the log refuses further appends."""
        kept = self._kept
        if kept is None or self.refusal:
            return self.refusal
        start, batch = 0, []
        for seq, payload in self.log.records(0):
            if seq >= kept.size:
                break
            batch.append(leaf_hash(payload))
            if len(batch) >= 8192:
                if self._differs(start, batch):
                    return self.refusal
                start, batch = start + len(batch), []
        self._differs(start, batch)
        return self.refusal

    def _differs(self, start: int, leaves: list[bytes]) -> bool:
        stored = self.tree.leaf_hashes(start, len(leaves))
        for offset, leaf in enumerate(leaves):
            if offset >= len(stored) or stored[offset] != leaf:
                self._refuse(
                    f"entry seq {start + offset} is not the entry the signed tree holds: it was "
                    "rewritten after it was logged"
                )
                return True
        return False

    def key_changed(self) -> bool:
        """Whether the log was made under another key than this gateway's (the log key was rotated): its
        vkey, or for a log from before vkeys, the key its last checkpoint names."""
        if self._signer is None or read_retired(self.directory) is not None:
            return False
        recorded = read_vkey(self.directory)
        if recorded is not None:
            return self.verifier is not None and recorded != self.verifier.vkey()
        last = last_checkpoint(self.directory)
        return last is not None and last.key_id != self._signer.key_id

    async def begin_successor(self, reason: str, tag: str) -> str:
        """Retire this log (never written again) and make the store write a new one, under the origin
        `successor_origin(origin, tag)`, whose first entry chains from this one's last. Before the writer
        starts only."""
        from gateway.audit.origin import log_directory, successor_origin

        async with self._lock:
            old_origin = self.origin or read_origin(self.directory) or ""
            if self._head is not None:
                head = Link(old_origin, *self._head)
            else:
                head = await asyncio.to_thread(read_head, self.directory, old_origin)
            successor = successor_origin(old_origin, tag)
            directory = log_directory(self.directory.parent, successor)  # raises before anything is retired
            await asyncio.to_thread(retire, self.directory, head, reason, successor)
            log.critical("access log %s retired (%s); it continues as %s", old_origin, reason, successor)
            self.log.close()
            self.tree.close()
            if self._writer_lock is not None:
                os.close(self._writer_lock)
                self._writer_lock = None
            self.directory = directory
            self.origin = successor
            self.log = SegmentLog(self.directory, segment_bytes=self.log.segment_bytes)
            self.tree = TreeStore(self.directory)
            self._link_to, self._head, self._sealed = head, None, (-1, 0.0)
            self._kept = self._note = self.refusal = None
            self.cut_short = False
            self.recent = {}
            if self.on_refusal is not None:
                self.on_refusal(None)
            return successor

    async def append(self, events: Sequence[dict[str, Any]], settle: Callable[[int], None] | None = None) -> int:
        """Chain and write `events`; they are durable when `settle` runs (with the first one's seq) and this
        returns that seq."""
        async with self._lock:  # one batch at a time: the chain has one order
            head_seq, head_hash = await self._opened()
            if self.refusal:
                raise NotAnExtension(self.refusal)
            linked = link(events, head_seq, head_hash)
            try:
                await asyncio.to_thread(self._write, [entry_bytes(e) for e in linked])
            except BaseException:
                self._append_failed = True
                raise
            self._head = linked[-1]["seq"], linked[-1]["hash"]
            recent = self.recent
            for event in linked:
                recent[event["id"]] = event["seq"]
            while len(recent) > RECENT_IDS:
                del recent[next(iter(recent))]
            if settle is not None:
                settle(head_seq + 1)
            if self._head[0] - self._sealed[0] >= self._seal_every:
                await self._seal_locked()
        return head_seq + 1

    async def probe(self) -> None:
        """Open (and so recover) the log, and after a failed append, make room for the next one (a new
        segment if need be): proves appends can proceed."""
        await self._opened()
        if self.refusal:
            raise NotAnExtension(self.refusal)
        if self._append_failed:
            async with self._lock:
                await asyncio.to_thread(self.log.ensure_room, PROBE_BYTES)
                self._append_failed = False

    async def seal(self, older_than_s: float = 0.0) -> bool:
        """Sign a checkpoint over the head if entries are unsealed and the last one is `older_than_s` old."""
        async with self._lock:
            await self._opened()
            if time.time() - self._sealed[1] < older_than_s:
                return False
            return await self._seal_locked()

    async def _seal_locked(self) -> bool:
        assert self._head is not None
        seq, head_hash = self._head
        if self._signer is None or seq <= self._sealed[0] or self.refusal:
            return False
        note = await asyncio.to_thread(self._sign, seq, head_hash)
        self._sealed = (seq, time.time())
        if self.on_checkpoint is not None:
            self.on_checkpoint(note, seq + 1)
        return True

    def _sign(self, seq: int, head_hash: str) -> str:
        """Sign the chain's head and the tree's root at `seq` in one line, once the tree is synced and shown
        to extend the last checkpoint."""
        assert self._signer is not None
        size = seq + 1
        if self._tree_behind:
            self.tree.truncate(min(self.tree.size, self._kept.size if self._kept else 0))
            self._extend_tree_from(self.tree.size)
            self._tree_behind = False
        self.tree.sync()
        kept = self._kept
        if kept is not None and (size < kept.size or self.tree.root(kept.size) != kept.root):
            self._refuse(
                f"the tree at size {size} does not extend the last signed checkpoint (size "
                f"{kept.size}): entries before seq {kept.size} were rewritten"
            )
            raise NotAnExtension(self.refusal)
        checkpoint = notes.Checkpoint(self.origin, size, self.tree.root(size))
        note = notes.sign(checkpoint.text(), self._signer.note_signer(self.origin))
        signed = self._signer.sign(seq, head_hash, rfc3339(datetime.now(UTC)))
        self._append_checkpoint(Checkpoint(**{**signed.__dict__, "note": note}))
        self._kept, self._note = checkpoint, note
        return note

    def record_witnessed(self, size: int, note: str) -> None:
        """Keep a checkpoint with the cosignatures gathered for it (synced: they cannot all be asked again)."""
        fd = os.open(self.directory / WITNESSED_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, orjson.dumps({"size": size, "note": note}) + b"\n")
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def _append_checkpoint(self, checkpoint: Checkpoint) -> None:
        fd = os.open(self.directory / CHECKPOINTS_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, orjson.dumps(checkpoint.__dict__) + b"\n")
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def checkpoints(self) -> list[Checkpoint]:
        return read_checkpoints(self.directory)

    def entries(self, from_seq: int = 0) -> Iterator[dict[str, Any]]:
        """Every entry from `from_seq`, decoded (for verification; the follower reads with `reader`)."""
        for _, payload in self.log.records(from_seq):
            yield orjson.loads(payload)

    async def close(self) -> None:
        async with self._lock:
            self.log.close()
            self.tree.close()
            if self._writer_lock is not None:
                os.close(self._writer_lock)
                self._writer_lock = None
