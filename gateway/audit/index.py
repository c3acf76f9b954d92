"""The query index as a follower of a segment log: it reads the entries past its watermark and adds them
to `audit_index` in batches, moving the watermark in the same transaction. A crash between two batches
loses nothing and adds nothing twice: the next run starts where the last committed batch ended. The index
can always be rebuilt from the segments, so it needs no durability of its own beyond that.

Not yet what the gateway's audit reads use: the switch comes with the segment store's wiring.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.writes import to_row
from gateway.storage.database import WRITER
from gateway.storage.tables import audit_index, audit_index_watermarks

Entries = Callable[[int], Iterator[dict[str, Any]]]  # the log's entries from a seq on, in order


class IndexFollower:
    def __init__(self, engine: AsyncEngine, origin: str, entries: Entries, *, batch: int = 2000) -> None:
        self._engine = engine
        self.origin = origin
        self._entries = entries
        self._batch = batch

    async def watermark(self) -> int:
        """The next seq the index lacks (0 for a log it has never seen)."""
        async with self._engine.connect() as connection:
            found = await connection.scalar(select(audit_index_watermarks.c.next_seq)
                                            .where(audit_index_watermarks.c.origin == self.origin))
        return int(found or 0)

    def _read(self, from_seq: int) -> list[dict[str, Any]]:
        return list(islice(self._entries(from_seq), self._batch))

    async def catch_up(self) -> int:
        """Index every entry past the watermark, a batch a transaction; how many were added."""
        added = 0
        while True:
            async with self._engine.execution_options(**WRITER).begin() as connection:
                next_seq = int(await connection.scalar(
                    select(audit_index_watermarks.c.next_seq)
                    .where(audit_index_watermarks.c.origin == self.origin).with_for_update()) or 0)
                entries = await asyncio.to_thread(self._read, next_seq)
                if not entries:
                    return added
                if entries[0]["seq"] != next_seq:
                    raise ValueError(f"{self.origin}: the log gives seq {entries[0]['seq']}, the index "
                                     f"expects {next_seq}")
                await connection.execute(insert(audit_index),
                                         [{**to_row(entry), "origin": self.origin} for entry in entries])
                moved = await connection.execute(
                    update(audit_index_watermarks).where(audit_index_watermarks.c.origin == self.origin)
                    .values(next_seq=entries[-1]["seq"] + 1))
                if moved.rowcount == 0:
                    await connection.execute(insert(audit_index_watermarks).values(
                        origin=self.origin, next_seq=entries[-1]["seq"] + 1))
            added += len(entries)
