"""Cutting an upload into chunks as it streams past, without holding it: line count, chunk boundaries
(byte offsets) and the SHA-256 of what was received, in one pass over each piece."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from gateway.bulk.records import MAX_LINE_BYTES, Format, InvalidRecord, JobSpec, check_header


class UploadRefused(ValueError):
    """The upload as a whole cannot be a job's input; the message says why."""


@dataclass(frozen=True, slots=True)
class Chunk:
    n: int
    first_line: int  # 1-based line number in the file
    byte_start: int
    byte_end: int
    records: int


@dataclass
class InputSplitter:
    """Feed the body piece by piece; `finish` gives the chunks. Lines are numbered as in the file (a CSV
    header is line 1); every line after the header is a record, an empty one included (it is reported)."""

    fmt: Format
    spec: JobSpec
    chunk_records: int
    max_records: int
    received: int = 0
    records: int = 0
    header: list[str] | None = None
    chunks: list[Chunk] = field(default_factory=list)
    _sha: hashlib._Hash = field(default_factory=hashlib.sha256)
    _chunk_start: int = 0  # byte offset where the open chunk starts
    _chunk_first_line: int = 1
    _chunk_records: int = 0
    _line_start: int = 0  # byte offset of the line being read
    _header_bytes: bytearray | None = None

    def __post_init__(self) -> None:
        if self.fmt == "csv":
            self._header_bytes = bytearray()

    def feed(self, piece: bytes) -> None:
        self._sha.update(piece)
        base = self.received
        self.received += len(piece)
        at = 0
        if self._header_bytes is not None:  # the CSV header: the first line, read whole
            end = piece.find(b"\n")
            self._header_bytes += piece if end < 0 else piece[: end + 1]
            if len(self._header_bytes) > MAX_LINE_BYTES:
                raise UploadRefused("the header row is too long")
            if end < 0:
                return
            self._header_done(base + end + 1)
            at = end + 1
        while True:
            end = piece.find(b"\n", at)
            if end < 0:
                break
            if base + end - self._line_start > MAX_LINE_BYTES:
                self._too_long()
            self._line_end(base + end + 1)
            at = end + 1
        if self.received - self._line_start > MAX_LINE_BYTES:  # a line no worker should have to hold
            self._too_long()

    def _too_long(self) -> None:
        raise UploadRefused(
            f"line {self._chunk_first_line + self._chunk_records} is longer than {MAX_LINE_BYTES} bytes"
        )

    def _header_done(self, offset: int) -> None:
        assert self._header_bytes is not None
        try:
            self.header = check_header(bytes(self._header_bytes), self.spec)
        except InvalidRecord as exc:
            raise UploadRefused(str(exc)) from None
        self._header_bytes = None
        self._chunk_start = self._line_start = offset
        self._chunk_first_line = 2

    def _line_end(self, offset: int) -> None:
        self.records += 1
        if self.records > self.max_records:
            raise UploadRefused(f"more than {self.max_records} records")
        self._chunk_records += 1
        self._line_start = offset
        if self._chunk_records == self.chunk_records:
            self._close_chunk(offset)

    def _close_chunk(self, offset: int) -> None:
        self.chunks.append(
            Chunk(len(self.chunks), self._chunk_first_line, self._chunk_start, offset, self._chunk_records)
        )
        self._chunk_first_line += self._chunk_records
        self._chunk_start, self._chunk_records = offset, 0

    def finish(self) -> list[Chunk]:
        if self._header_bytes is not None:
            if not self._header_bytes:
                raise UploadRefused("the file is empty: a CSV input starts with a header row")
            self._header_done(self.received)
        if self.received > self._line_start:  # a last line without its newline
            self._line_end(self.received)
        if self._chunk_records:
            self._close_chunk(self.received)
        if not self.records:
            raise UploadRefused("the file holds no records")
        return self.chunks

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()
