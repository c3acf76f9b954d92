"""The access log's durable point as append-only segment files: framed records, preallocated segments,
one `write` and one `fdatasync` per group commit, and recovery that cuts a torn tail but reports
corruption (the design of etcd's WAL and Kafka's log segments, for one writer per process).

A frame is a 16-byte header — payload length (u32), CRC32C (u32) of the sequence number and payload,
sequence number (u64), little-endian — then the payload (the event's canonical bytes). Sequence numbers
are 0-based and contiguous across segments. A segment is `<first seq, 20 digits>.seg`, preallocated to
`segment_bytes` and zero-filled: a header of zeros marks the end of what was written.

On open, every segment is read. In the last one, a frame that is cut short, or whose CRC fails, with no
whole record after it and past the last signed checkpoint, is a torn write: it was never acknowledged
(acknowledgement follows the sync), so it is zeroed and reported. Damage with a whole record after it,
damage to a record a checkpoint covers, a gap in sequence numbers, or any fault in an earlier segment is
corruption: `CorruptLog` names the segment, offset and sequence number, and nothing is repaired. (A bit
flipped in the very last records of a log, written since its last checkpoint and with nothing after
them, cannot be told from a torn write: checkpoints every second bound that window.)
"""

from __future__ import annotations

import bisect
import contextlib
import os
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from crc32c import crc32c

HEADER = struct.Struct("<IIQ")
_SEQ = struct.Struct("<Q")
SUFFIX = ".seg"
MAX_PAYLOAD = 1 << 24  # 16 MiB: an event is a few hundred bytes; a larger length is a damaged header
_ZERO_HEADER = bytes(HEADER.size)


class CorruptLog(Exception):
    """A record before the tail is damaged or missing: reported, never repaired silently."""

    def __init__(self, segment: Path, offset: int, seq: int, why: str) -> None:
        super().__init__(f"{segment.name} at offset {offset} (seq {seq}): {why}")
        self.segment, self.offset, self.seq, self.why = segment, offset, seq, why


def frame(seq: int, payload: bytes) -> bytes:
    return HEADER.pack(len(payload), crc32c(payload, crc32c(_SEQ.pack(seq))), seq) + payload


@dataclass(frozen=True)
class Recovery:
    """What opening the log found: the next sequence number and any torn tail that was cut."""

    next_seq: int
    segments: int
    torn_bytes: int


def _segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}{SUFFIX}"


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _frames(data: bytes, expected_seq: int) -> Iterator[tuple[int, int, bytes | None, str | None]]:
    """(offset, seq, payload, fault) for each frame in a segment's bytes, up to the zero header; a fault
    ends the walk."""
    offset = 0
    while offset + HEADER.size <= len(data):
        header = data[offset : offset + HEADER.size]
        if header == _ZERO_HEADER:
            return
        length, crc, seq = HEADER.unpack(header)
        end = offset + HEADER.size + length
        if length > MAX_PAYLOAD or end > len(data):
            yield offset, seq, None, "frame runs past the end of the segment"
            return
        payload = data[offset + HEADER.size : end]
        if crc32c(payload, crc32c(_SEQ.pack(seq))) != crc:
            yield offset, seq, None, "CRC mismatch"
            return
        if seq != expected_seq:
            yield offset, seq, None, f"sequence gap: expected {expected_seq}"
            return
        yield offset, seq, payload, None
        expected_seq += 1
        offset = end
    if offset < len(data):  # a header cut short at the very end of the file
        yield offset, expected_seq, None, "frame header cut short"


class SegmentLog:
    """One process's log. Not thread-safe: its one writer calls `append`; readers use `records` on a
    log of their own opened read-only, or after the writer has stopped."""

    def __init__(self, directory: Path, *, segment_bytes: int = 64 * 1024 * 1024, read_only: bool = False) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.read_only = read_only
        self._fd: int | None = None
        self._segment: Path | None = None
        self._offset = 0
        self.next_seq = 0
        self.recovery = Recovery(0, 0, 0)
        self._failed: tuple[Path, int, int] | None = None  # (segment, offset, length) of a failed write

    # Opening and recovery -------------------------------------------------------------------------
    def segments(self) -> list[Path]:
        return sorted(self.directory.glob(f"*{SUFFIX}"))

    def open(self, protect_through: int = -1) -> Recovery:
        """Read every segment, cut a torn tail in the last (unless read-only), and position for appends.
        Records up to `protect_through` (the last signed checkpoint's seq) were acknowledged and sealed:
        damage there is corruption, never a torn write."""
        if not self.read_only:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        paths = self.segments()
        seq, torn = 0, 0
        for index, path in enumerate(paths):
            first = int(path.stem)
            if first != seq:
                raise CorruptLog(path, 0, seq, f"segment starts at seq {first}, expected {seq}")
            data = path.read_bytes()
            end = 0
            for offset, frame_seq, payload, fault in _frames(data, seq):
                if payload is not None:
                    end, seq = offset + HEADER.size + len(payload), frame_seq + 1
                    continue
                # A whole frame with a good CRC out of sequence, damage in an earlier segment, or a good
                # frame after the damage: no torn write looks like that.
                gap = fault is not None and fault.startswith("sequence gap")
                if gap or index < len(paths) - 1 or seq <= protect_through or _valid_frame_after(data, offset, seq):
                    raise CorruptLog(path, offset, seq, fault or "damaged frame")
                torn = len(data[end:].rstrip(b"\x00"))  # the unacknowledged rest of the last write
                if not self.read_only:
                    self._zero(path, end, torn)
            if index == len(paths) - 1:
                self._segment, self._offset = path, end
        self.next_seq = seq
        self.recovery = Recovery(seq, len(paths), torn)
        return self.recovery

    def _zero(self, path: Path, start: int, length: int) -> None:
        with open(path, "r+b") as handle:
            handle.seek(start)
            handle.write(bytes(length))
            handle.flush()
            os.fdatasync(handle.fileno())

    # Appending -------------------------------------------------------------------------------------
    def append(self, payloads: Sequence[bytes]) -> int:
        """Frame `payloads` with the next sequence numbers, write them in one `write` and sync: they are
        durable when this returns. Returns the first sequence number. A batch that does not fit the
        current segment starts a new one (created, preallocated, synced, and its directory synced)."""
        if self.read_only:
            raise PermissionError("the log is open read-only")
        if not payloads:
            return self.next_seq
        first = self.next_seq
        data = b"".join(frame(first + i, payload) for i, payload in enumerate(payloads))
        self._clear_failed()  # before anything else is written, a new segment included
        if self._segment is None or self._offset + len(data) > max(self.segment_bytes, len(data)):
            self._roll(first, len(data))
        fd = self._open_fd()
        try:
            written = os.pwrite(fd, data, self._offset)
            if written != len(data):
                raise OSError(f"short write to {self._segment}: {written} of {len(data)} bytes")
            os.fdatasync(fd)
        except BaseException:
            # What reached the file was never acknowledged: it must not read as records (a follower, a
            # restart), so it is zeroed now, or before anything else is written if that fails too.
            self._failed = (cast(Path, self._segment), self._offset, len(data))
            with contextlib.suppress(OSError):
                self._clear_failed()
            raise
        self._offset += len(data)
        self.next_seq = first + len(payloads)
        return first

    def _clear_failed(self) -> None:
        """Zero and sync the bytes of a write that failed (raises while that cannot be done)."""
        if self._failed is not None:
            segment, offset, length = self._failed
            self._zero(segment, offset, length)
            self._failed = None

    def ensure_room(self, size: int) -> None:
        """Make sure an append of `size` bytes can go ahead: a failed write's bytes cleared, and a new
        segment made now if this one lacks the room. Proves the disk takes writes again after a failure
        (raises OSError when it does not)."""
        self._clear_failed()
        if self._segment is None or self._offset + size > self.segment_bytes:
            self._roll(self.next_seq, size)

    def _open_fd(self) -> int:
        if self._fd is None:
            assert self._segment is not None
            self._fd = os.open(self._segment, os.O_RDWR)
        return self._fd

    def _roll(self, first_seq: int, at_least: int) -> None:
        self.close()
        path = self.directory / _segment_name(first_seq)
        temporary = path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.posix_fallocate(fd, 0, max(self.segment_bytes, at_least))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
        fsync_dir(self.directory)
        if first_seq == 0:
            fsync_dir(self.directory.parent)  # a new log: its directory's entry made durable too
        self._segment, self._offset = path, 0

    # Reading ---------------------------------------------------------------------------------------
    def records(self, from_seq: int = 0) -> Iterator[tuple[int, bytes]]:
        """(seq, payload) of every record from `from_seq`, in order, across segments (memory: one
        segment at a time)."""
        paths = self.segments()
        for index, path in enumerate(paths):
            if index + 1 < len(paths) and int(paths[index + 1].stem) <= from_seq:
                continue  # every record of this segment comes before `from_seq`
            for _, seq, payload, _fault in _frames(path.read_bytes(), int(path.stem)):
                if payload is None:
                    break
                if seq >= from_seq:
                    yield seq, payload

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class SegmentReader:
    """A follower's cursor over a log that its writer is still appending to: it remembers the segment and
    offset it stopped at, so each read costs what it returns, not a re-read of the segment. It reads only
    records a sync has made whole (a zero header or a short frame ends a read; the next read retries)."""

    CHUNK = 1 << 20

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._segment: Path | None = None
        self._offset = 0
        self._next_seq = 0

    def _seek(self, seq: int) -> None:
        """Position at `seq`: find its segment by name, then walk that segment's frames to it."""
        paths = sorted(self.directory.glob(f"*{SUFFIX}"))
        chosen = None
        for path in paths:
            if int(path.stem) <= seq:
                chosen = path
        self._segment, self._offset, self._next_seq = chosen, 0, int(chosen.stem) if chosen else 0
        while self._next_seq < seq and self._step(seq - self._next_seq):
            pass

    def _step(self, limit: int, out: list[tuple[int, bytes]] | None = None) -> int:
        """Read up to `limit` whole records from the cursor; how many were read (0 at the end)."""
        if self._segment is None:
            return 0
        with open(self._segment, "rb") as handle:
            data = os.pread(handle.fileno(), self.CHUNK, self._offset)
        count, offset = 0, 0
        while count < limit and offset + HEADER.size <= len(data):
            length, crc, seq = HEADER.unpack_from(data, offset)
            if length == 0 and data[offset : offset + HEADER.size] == _ZERO_HEADER:
                break
            end = offset + HEADER.size + length
            if end > len(data):
                if offset == 0 and length <= MAX_PAYLOAD and HEADER.size + length > self.CHUNK:
                    raise ValueError(f"{self._segment.name}: a record larger than the read size")
                break
            if seq != self._next_seq:
                raise CorruptLog(self._segment, self._offset + offset, seq, f"expected seq {self._next_seq}")
            payload = data[offset + HEADER.size : end]
            if crc32c(payload, crc32c(_SEQ.pack(seq))) != crc:
                raise CorruptLog(self._segment, self._offset + offset, seq, "CRC mismatch")
            if out is not None:
                out.append((seq, payload))
            offset, count, self._next_seq = end, count + 1, seq + 1
        self._offset += offset
        if count == 0 and offset == 0:
            following = self.directory / _segment_name(self._next_seq)
            if following != self._segment and following.exists():
                self._segment, self._offset = following, 0  # the writer rolled to a new segment
                return self._step(limit, out)
        return count

    def read(self, from_seq: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to `limit` records from `from_seq` on, in order; fewer (or none) at the log's end."""
        if self._segment is None or self._next_seq != from_seq:
            self._seek(from_seq)
        out: list[tuple[int, bytes]] = []
        while len(out) < limit and self._step(limit - len(out), out):
            pass
        return out


def _valid_frame_after(data: bytes, offset: int, seq: int) -> bool:
    """Whether a whole, well-formed record of `seq` or one of the next few lies anywhere after `offset`:
    then the damage at `offset` is in the middle of the log, not a torn last write (the damaged header's
    own length may be garbage, so its word is not taken). Found by searching for the sequence number's
    bytes, so a long segment costs a few `find`s, not a walk."""
    data = data[: len(data.rstrip(b"\x00")) + HEADER.size]  # the written part (zeros after it hold nothing)
    for candidate in range(seq, seq + 4):
        needle = _SEQ.pack(candidate)
        at = data.find(needle, offset + 1)
        while at != -1:
            start = at - 8
            if start > offset and start + HEADER.size <= len(data):
                length, crc, _ = HEADER.unpack_from(data, start)
                end = start + HEADER.size + length
                if (
                    0 < length <= MAX_PAYLOAD
                    and end <= len(data)
                    and crc32c(data[start + HEADER.size : end], crc32c(needle)) == crc
                ):
                    return True
            at = data.find(needle, at + 1)
    return False


class EntryLocator:
    """Reads one record by seq without reading its segment whole (receipts): a sparse map of every
    `EVERY`-th frame's offset per segment, built from the frame headers the first time a segment is
    asked for and extended as it grows; a lookup then walks at most `EVERY` frames from a mark."""

    EVERY = 128
    CHUNK = 1 << 20

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._marks: dict[Path, list[tuple[int, int]]] = {}  # segment → [(seq, offset)], ascending
        self._ends: dict[Path, tuple[int, int]] = {}  # segment → (next seq, offset) walked so far
        self._lock = threading.Lock()  # lookups run on worker threads

    def _segment_of(self, seq: int) -> Path | None:
        chosen = None
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            if int(path.stem) <= seq:
                chosen = path
        return chosen

    def _walk(self, handle: Any, seq: int, offset: int, until: int) -> Iterator[tuple[int, int, int, int]]:
        """(seq, offset, length, crc) of whole frames from (seq, offset) while seq ≤ `until`."""
        while seq <= until:
            data = os.pread(handle.fileno(), self.CHUNK, offset)
            at = 0
            while at + HEADER.size <= len(data) and seq <= until:
                length, crc, frame_seq = HEADER.unpack_from(data, at)
                if frame_seq != seq or length == 0 or length > MAX_PAYLOAD:
                    return
                if at + HEADER.size + length > len(data):
                    if at == 0:
                        return  # a record larger than a chunk, or a torn tail: not one to serve
                    break
                yield seq, offset + at, length, crc
                at += HEADER.size + length
                seq += 1
            if at == 0:
                return
            offset += at

    def read(self, seq: int) -> bytes | None:
        """The payload of record `seq`, or None when the log does not hold it (yet)."""
        with self._lock:
            return self._read(seq)

    def scan(self, from_seq: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to `limit` records from `from_seq` on, in order (the tail a follower has not reached yet):
        positioned by the map, then read sequentially a chunk at a time."""
        out: list[tuple[int, bytes]] = []
        with self._lock:
            if self._read(from_seq) is None:  # maps the segment up to from_seq (or there is nothing)
                return out
            seq = from_seq
            while len(out) < limit:
                path = self._segment_of(seq)
                if path is None:
                    break
                marks = self._marks[path] if path in self._marks else [(int(path.stem), 0)]
                mark_seq, offset = marks[bisect.bisect_right(marks, (seq, 1 << 62)) - 1]
                got = self._sequential(path, mark_seq, offset, seq, limit - len(out))
                if not got:
                    break
                out += got
                seq = got[-1][0] + 1
        return out

    def _sequential(self, path: Path, seq: int, offset: int, start: int, limit: int) -> list[tuple[int, bytes]]:
        found: list[tuple[int, bytes]] = []
        with open(path, "rb") as handle:
            while len(found) < limit:
                data = os.pread(handle.fileno(), self.CHUNK, offset)
                at = 0
                while at + HEADER.size <= len(data) and len(found) < limit:
                    length, crc, frame_seq = HEADER.unpack_from(data, at)
                    if frame_seq != seq or length == 0 or length > MAX_PAYLOAD:
                        return found
                    end = at + HEADER.size + length
                    if end > len(data):
                        break
                    if seq >= start:
                        payload = data[at + HEADER.size : end]
                        if crc32c(payload, crc32c(_SEQ.pack(seq))) != crc:
                            return found
                        found.append((seq, payload))
                    at, seq = end, seq + 1
                if at == 0:
                    return found
                offset += at
        return found

    def _read(self, seq: int) -> bytes | None:
        path = self._segment_of(seq)
        if path is None:
            return None
        with open(path, "rb") as handle:
            marks = self._marks.setdefault(path, [(int(path.stem), 0)])
            next_seq, offset = self._ends.get(path, marks[0])
            if seq >= next_seq:  # map what was written since the last look
                for frame_seq, at, length, _ in self._walk(handle, next_seq, offset, seq):
                    if frame_seq % self.EVERY == 0 and frame_seq > marks[-1][0]:
                        marks.append((frame_seq, at))
                    next_seq, offset = frame_seq + 1, at + HEADER.size + length
                self._ends[path] = (next_seq, offset)
                if seq >= next_seq:
                    return None
            mark_seq, mark_offset = marks[bisect.bisect_right(marks, (seq, 1 << 62)) - 1]
            for frame_seq, at, length, crc in self._walk(handle, mark_seq, mark_offset, seq):
                if frame_seq == seq:
                    payload = os.pread(handle.fileno(), length, at + HEADER.size)
                    if crc32c(payload, crc32c(_SEQ.pack(seq))) != crc:
                        raise CorruptLog(path, at, seq, "CRC mismatch")
                    return payload
        return None
