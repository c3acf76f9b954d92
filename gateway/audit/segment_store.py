"""The access log's store over segment files: what `DurableAccessLog` (the one writer, group commit)
needs of a store — `append(events, settle)`, `probe`, `seal`, `close` — with the segments as the durable
point instead of SQL. Each batch is chained (`prev_hash`, `hash`, 0-based `seq`, as the log's entries
are numbered for proofs), encoded in its canonical form and written with one `pwrite` and one
`fdatasync`, off the event loop (both release the interpreter lock).

Not the gateway's log yet: the query index that follows the segments comes next.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from gateway.audit.chain import GENESIS, link
from gateway.audit.segments import SegmentLog


def entry_bytes(event: dict[str, Any]) -> bytes:
    """The entry as stored and hashed into proofs: JSON, sorted keys, compact, UTF-8."""
    return orjson.dumps(event, option=orjson.OPT_SORT_KEYS)


class SegmentStore:
    def __init__(self, directory: Path, *, segment_bytes: int = 64 * 1024 * 1024) -> None:
        self.log = SegmentLog(directory, segment_bytes=segment_bytes)
        self._head: tuple[int, str] | None = None  # (seq, hash) of the last entry, once opened
        self._lock = asyncio.Lock()

    async def _opened(self) -> tuple[int, str]:
        if self._head is None:
            self._head = await asyncio.to_thread(self._open)
        return self._head

    def _open(self) -> tuple[int, str]:
        """Recover the segments and read the chain's head from the last entry."""
        recovery = self.log.open()
        if recovery.next_seq == 0:
            return -1, GENESIS
        last = next(self.log.records(recovery.next_seq - 1))[1]
        return recovery.next_seq - 1, orjson.loads(last)["hash"]

    async def append(self, events: Sequence[dict[str, Any]], settle: Callable[[], None] | None = None) -> None:
        """Chain and write `events`; they are durable when `settle` runs and this returns."""
        async with self._lock:  # one batch at a time: the chain has one order
            head_seq, head_hash = await self._opened()
            linked = link(events, head_seq, head_hash)
            await asyncio.to_thread(self.log.append, [entry_bytes(e) for e in linked])
            self._head = linked[-1]["seq"], linked[-1]["hash"]
        if settle is not None:
            settle()

    async def probe(self) -> None:
        """Open (and so recover) the log: proves appends can proceed."""
        await self._opened()

    async def seal(self, older_than_s: float = 0.0) -> bool:
        """Checkpoints over the segments come with the Merkle tree; nothing to seal here yet."""
        return False

    def entries(self, from_seq: int = 0) -> Iterator[dict[str, Any]]:
        """Every entry from `from_seq`, decoded (for verification and the index follower)."""
        for _, payload in self.log.records(from_seq):
            yield orjson.loads(payload)

    async def close(self) -> None:
        self.log.close()
