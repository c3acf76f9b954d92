"""The access log's store over segment files: the durable point of one gateway process's log, named by
its origin (CONTRACT §13). `DurableAccessLog` (the one writer, group commit) hands it batches; each batch
is chained (`prev_hash`, `hash`, 0-based `seq`), encoded in its canonical form and written with one
`pwrite` and one `fdatasync`, off the event loop (both release the interpreter lock).

A log's directory holds, beside its segments:
- `origin`: the origin's name, written when the log is made; a directory is never reused for another.
- `link.json` (optional): the head of the log this one continues (a 1.0 SQL log, sealed when it was
  migrated). The first entry's `prev_hash` is that head's hash, so one walk checks both.
- `checkpoints.jsonl`: the signed checkpoints over this log, one line each, synced when written. They live
  beside the segments, outside the query database, so the index can be rebuilt without losing them.
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

from gateway.audit.chain import GENESIS, Checkpoint, CheckpointSigner, link
from gateway.audit.record import rfc3339
from gateway.audit.segments import SegmentLog

log = logging.getLogger(__name__)

ORIGIN_FILE = "origin"
LINK_FILE = "link.json"
CHECKPOINTS_FILE = "checkpoints.jsonl"
WRITER_LOCK_FILE = "writer.lock"
PROBE_BYTES = 16 * 1024  # room a probe asks for after a failure: a large batch's worth


def entry_bytes(event: dict[str, Any]) -> bytes:
    """The entry as stored and hashed into proofs: JSON, sorted keys, compact, UTF-8."""
    return orjson.dumps(event, option=orjson.OPT_SORT_KEYS)


class LogMismatch(Exception):
    """The directory holds another origin's log."""


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
    try:
        with open(directory / CHECKPOINTS_FILE, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - 8192))
            tail = handle.read()
    except FileNotFoundError:
        return None
    return next((c for line in reversed(tail.split(b"\n")) if (c := checkpoint_of(line)) is not None), None)


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


def _write_synced(path: Path, data: bytes) -> None:
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
    def __init__(self, directory: Path, *, origin: str = "", signer: CheckpointSigner | None = None,
                 segment_bytes: int = 64 * 1024 * 1024, seal_every: int = 1000, link_to: Link | None = None,
                 lock_wait_s: float = 3.0) -> None:
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
                _write_synced(self.directory / LINK_FILE, orjson.dumps(self._link_to.__dict__))
            _write_synced(self.directory / ORIGIN_FILE, self.origin.encode() + b"\n")
        elif self.origin and found != self.origin:
            raise LogMismatch(f"{self.directory} holds the log of {found!r}, not {self.origin!r}")
        self.origin = found or self.origin
        sealed = last_checkpoint(self.directory)
        recovery = self.log.open(protect_through=sealed.seq if sealed else -1)
        self.torn_bytes = recovery.torn_bytes
        if recovery.torn_bytes:
            log.warning("access log %s: a torn write of %d bytes after seq %d was cut (never acknowledged)",
                        self.origin, recovery.torn_bytes, recovery.next_seq - 1)
        if sealed is not None:
            self._sealed = (sealed.seq, time.time())
        if recovery.next_seq == 0:
            linked = read_link(self.directory)
            return -1, linked.hash if linked else GENESIS
        last = next(self.log.records(recovery.next_seq - 1))[1]
        return recovery.next_seq - 1, orjson.loads(last)["hash"]

    async def append(self, events: Sequence[dict[str, Any]], settle: Callable[[int], None] | None = None) -> int:
        """Chain and write `events`; they are durable when `settle` runs (with the first one's seq) and this
        returns that seq."""
        async with self._lock:  # one batch at a time: the chain has one order
            head_seq, head_hash = await self._opened()
            linked = link(events, head_seq, head_hash)
            try:
                await asyncio.to_thread(self.log.append, [entry_bytes(e) for e in linked])
            except BaseException:
                self._append_failed = True
                raise
            self._head = linked[-1]["seq"], linked[-1]["hash"]
            if settle is not None:
                settle(head_seq + 1)
            if self._head[0] - self._sealed[0] >= self._seal_every:
                await self._seal_locked()
        return head_seq + 1

    async def probe(self) -> None:
        """Open (and so recover) the log, and after a failed append, make room for the next one (a new
        segment if need be): proves appends can proceed."""
        await self._opened()
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
        if self._signer is None or seq <= self._sealed[0]:
            return False
        checkpoint = self._signer.sign(seq, head_hash, rfc3339(datetime.now(UTC)))
        await asyncio.to_thread(self._append_checkpoint, checkpoint)
        self._sealed = (seq, time.time())
        return True

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
            if self._writer_lock is not None:
                os.close(self._writer_lock)
                self._writer_lock = None
