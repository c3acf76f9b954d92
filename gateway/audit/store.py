"""The access log's storage: one SQL store for SQLite and PostgreSQL (SQLAlchemy Core).

Appends lock the chain head (`BEGIN IMMEDIATE` on SQLite, `SELECT … FOR UPDATE` on PostgreSQL), so any
number of writers, in any number of processes, extend one chain in one order. A batch of events is one
transaction and one flush to disk.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from sqlalchemy import Connection, Engine, Select, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.chain import Checkpoint, CheckpointSigner, link
from gateway.audit.record import rfc3339
from gateway.storage.database import WRITER, is_sqlite, row_dict, sync_twin
from gateway.storage.tables import access_checkpoints, access_events, access_log_head

_T = TypeVar("_T")
_LIST_FIELDS = ("attributes_requested", "attributes_released")


@dataclass(frozen=True)
class EventFilter:
    administration: str | None = None
    client_id: str | None = None
    operation: str | None = None
    decision: str | None = None
    subject_hash: str | None = None
    since: str | None = None  # RFC 3339 as `rfc3339` writes it
    until: str | None = None

    def apply(self, query: Select[Any]) -> Select[Any]:
        c = access_events.c
        for name in ("administration", "client_id", "operation", "decision", "subject_hash"):
            value = getattr(self, name)
            if value is not None:
                query = query.where(c[name] == value)
        if self.since is not None:
            query = query.where(c.time >= self.since)
        if self.until is not None:
            query = query.where(c.time < self.until)
        return query


def _to_row(event: dict[str, Any]) -> dict[str, Any]:
    row = dict(event)
    for name in _LIST_FIELDS:
        row[name] = orjson.dumps(row[name]).decode()
    return row


def _from_row(row: Any) -> dict[str, Any]:
    event = row_dict(row)
    for name in _LIST_FIELDS:
        event[name] = orjson.loads(event[name])
    return event


# Statements built once: the hot path pays execution, not construction.
_HEAD = select(access_log_head).where(access_log_head.c.id == 1)
_HEAD_FOR_UPDATE = _HEAD.with_for_update()
_ADVANCE = update(access_log_head).where(access_log_head.c.id == 1).values(
    seq=bindparam("new_seq"), hash=bindparam("new_hash"))
_SEALED = update(access_log_head).where(access_log_head.c.id == 1).values(
    checkpoint_seq=bindparam("new_seq"), checkpoint_at=bindparam("new_at"))
_INSERT_EVENTS = access_events.insert()
_INSERT_CHECKPOINT = access_checkpoints.insert()


class AccessLogStore:
    """Writes run as one synchronous function per transaction: on SQLite in a dedicated writer thread
    (one hop per batch instead of one per statement, which is what the async driver costs), on
    PostgreSQL through the async connection (`run_sync`)."""

    def __init__(self, engine: AsyncEngine, signer: CheckpointSigner, *, seal_every: int = 1000) -> None:
        self.engine = engine
        self._signer = signer
        self._seal_every = seal_every
        self._sqlite_writer: Engine | None = None
        self._thread: ThreadPoolExecutor | None = None
        if is_sqlite(engine):
            self._sqlite_writer = sync_twin(engine).execution_options(**WRITER)
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="access-log-sqlite")
        self._writer = engine.execution_options(**WRITER)

    async def _write(self, work: Callable[[Connection], _T]) -> _T:
        if self._sqlite_writer is not None and self._thread is not None:
            engine = self._sqlite_writer

            def run() -> _T:
                with engine.begin() as connection:
                    return work(connection)

            return await asyncio.get_running_loop().run_in_executor(self._thread, run)
        async with self._writer.begin() as connection:
            return await connection.run_sync(work)

    @staticmethod
    def _lock_head(connection: Connection) -> Any:
        # SQLite's BEGIN IMMEDIATE already holds the lock; PostgreSQL locks the row.
        return connection.execute(_HEAD if connection.dialect.name == "sqlite" else _HEAD_FOR_UPDATE).one()

    def _seal(self, connection: Connection, seq: int, head_hash: str) -> None:
        checkpoint = self._signer.sign(seq, head_hash, rfc3339(datetime.now(UTC)))
        connection.execute(_INSERT_CHECKPOINT, checkpoint.__dict__)
        connection.execute(_SEALED, {"new_seq": seq, "new_at": time.time()})

    async def append(self, events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Chain and store `events` in one transaction; they are durable when this returns."""

        def work(connection: Connection) -> list[dict[str, Any]]:
            head = self._lock_head(connection)
            linked = link(events, head.seq, head.hash)
            connection.execute(_INSERT_EVENTS, [_to_row(e) for e in linked])
            last = linked[-1]
            connection.execute(_ADVANCE, {"new_seq": last["seq"], "new_hash": last["hash"]})
            if last["seq"] - head.checkpoint_seq >= self._seal_every:
                self._seal(connection, last["seq"], last["hash"])
            return linked

        return await self._write(work)

    async def seal(self, older_than_s: float = 0.0) -> bool:
        """Write a checkpoint over the head if events are unsealed and the last checkpoint is at least
        `older_than_s` old (so replicas sharing a database do not each seal the same tail)."""

        def work(connection: Connection) -> bool:
            head = self._lock_head(connection)
            if head.seq <= head.checkpoint_seq or time.time() - head.checkpoint_at < older_than_s:
                return False
            self._seal(connection, head.seq, head.hash)
            return True

        return await self._write(work)

    async def probe(self) -> None:
        """Take and release the writers' lock: proves an append could commit now."""
        await self._write(self._lock_head)

    async def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=True)
        if self._sqlite_writer is not None:
            self._sqlite_writer.dispose()
        await self.engine.dispose()

    async def events(self, where: EventFilter, after_seq: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        query = where.apply(select(access_events).where(access_events.c.seq > after_seq))
        async with self.engine.connect() as connection:
            rows = await connection.execute(query.order_by(access_events.c.seq).limit(limit))
            return [_from_row(row) for row in rows]

    async def subject_events(self, subject_hash: str, operations: Sequence[str], limit: int
                             ) -> list[dict[str, Any]]:
        """One person's latest `limit` events of these operations, oldest first."""
        c = access_events.c
        query = (select(access_events).where(c.subject_hash == subject_hash, c.operation.in_(operations))
                 .order_by(c.seq.desc()).limit(limit))
        async with self.engine.connect() as connection:
            rows = [_from_row(row) for row in await connection.execute(query)]
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
