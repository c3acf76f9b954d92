"""The access log's storage: one SQL store for SQLite and PostgreSQL (SQLAlchemy Core; on SQLite the
writes go through a writer process running the same statements over plain sqlite3).

Appends lock the chain head (`BEGIN IMMEDIATE` on SQLite, `SELECT … FOR UPDATE` on PostgreSQL), so any
number of writers, in any number of processes, extend one chain in one order. A batch of events is one
transaction and one flush to disk.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.chain import Checkpoint, CheckpointSigner
from gateway.audit.rows import EventFilter, event_from_row, person_query
from gateway.audit.sqlite_writer import SqliteWriterProcess
from gateway.audit.writes import EngineWrites, Writes, append_events, seal_head
from gateway.storage.database import WRITER, is_sqlite, sqlite_file
from gateway.storage.tables import access_checkpoints, access_events, access_log_head

_T = TypeVar("_T")


class AccessLogStore:
    """Writes are one transaction each: on SQLite in the writer process (`sqlite_writer`), on
    PostgreSQL as one synchronous function over the async connection (`run_sync`). Reads go through the
    engine on both."""

    def __init__(self, engine: AsyncEngine, signer: CheckpointSigner, *, seal_every: int = 1000) -> None:
        self.engine = engine
        self._signer = signer
        self._seal_every = seal_every
        self._process: SqliteWriterProcess | None = None
        if is_sqlite(engine):
            path, timeout_s = sqlite_file(engine)
            self._process = SqliteWriterProcess(path, timeout_s=timeout_s, signer=signer, seal_every=seal_every)
        self._writer = engine.execution_options(**WRITER)

    async def _write(self, work: Callable[[Writes], _T]) -> _T:
        async with self._writer.begin() as connection:
            return await connection.run_sync(lambda sync: work(EngineWrites(sync)))

    async def append(self, events: Sequence[dict[str, Any]], settle: Callable[[], None] | None = None) -> None:
        """Chain and store `events` in one transaction; they are durable when this returns. `settle` runs
        as soon as they are, before this coroutine resumes (on SQLite, in the callback that reads the
        writer's answer: one loop turn sooner)."""
        if self._process is not None:
            await self._process.call({"op": "append", "events": events}, settle)
            return
        await self._write(lambda writes: append_events(writes, self._signer, events, self._seal_every))
        if settle is not None:
            settle()

    async def seal(self, older_than_s: float = 0.0) -> bool:
        """Write a checkpoint over the head if events are unsealed and the last checkpoint is at least
        `older_than_s` old (so replicas sharing a database do not each seal the same tail)."""
        if self._process is not None:
            return bool(await self._process.call({"op": "seal", "older_than_s": older_than_s}))
        return await self._write(lambda writes: seal_head(writes, self._signer, older_than_s))

    async def probe(self) -> None:
        """Take and release the writers' lock: proves an append could commit now."""
        if self._process is not None:
            await self._process.call({"op": "probe"})
            return
        await self._write(lambda writes: writes.head())

    async def close_writer(self) -> None:
        """Stop the SQLite writer process, leaving the engine to its other users."""
        if self._process is not None:
            await self._process.close()
            self._process = None

    async def close(self) -> None:
        await self.close_writer()
        await self.engine.dispose()

    async def events(self, where: EventFilter, after_seq: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        query = where.apply(select(access_events).where(access_events.c.seq > after_seq), access_events)
        async with self.engine.connect() as connection:
            rows = await connection.execute(query.order_by(access_events.c.seq).limit(limit))
            return [event_from_row(row) for row in rows]

    async def subject_events(
        self, subject_hash: str, hidden_prefixes: Sequence[str], limit: int
    ) -> list[dict[str, Any]]:
        """One person's latest `limit` events, oldest first, but for operations that start with one of
        `hidden_prefixes`."""
        query = person_query(access_events, subject_hash, hidden_prefixes)
        query = query.order_by(access_events.c.seq.desc()).limit(limit)
        async with self.engine.connect() as connection:
            rows = [event_from_row(row) for row in await connection.execute(query)]
        rows.reverse()
        return rows

    async def stream(self, where: EventFilter | None = None, chunk: int = 2000) -> AsyncIterator[dict[str, Any]]:
        """Every matching event in seq order, `chunk` at a time (keyset pages: constant memory)."""
        where = where or EventFilter()
        after = 0
        while True:
            page = await self.events(where, after, chunk)
            for event in page:
                yield event
            if len(page) < chunk:
                return
            after = page[-1]["seq"]

    async def checkpoints(self) -> list[Checkpoint]:
        async with self.engine.connect() as connection:
            rows = await connection.execute(select(access_checkpoints).order_by(access_checkpoints.c.seq))
            return [Checkpoint(**row._asdict()) for row in rows]

    async def head(self) -> tuple[int, str]:
        async with self.engine.connect() as connection:
            row = (await connection.execute(select(access_log_head).where(access_log_head.c.id == 1))).one()
            return row.seq, row.hash
