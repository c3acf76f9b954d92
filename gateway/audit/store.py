"""The access log's storage: one SQL store for SQLite and PostgreSQL (SQLAlchemy Core).

Appends lock the chain head (`BEGIN IMMEDIATE` on SQLite, `SELECT … FOR UPDATE` on PostgreSQL), so any
number of writers, in any number of processes, extend one chain in one order. A batch of events is one
transaction and one flush to disk.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Select, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.audit.chain import Checkpoint, CheckpointSigner, link
from gateway.storage.database import WRITER
from gateway.storage.tables import access_checkpoints, access_events, access_log_head

_LIST_FIELDS = ("attributes_requested", "attributes_released")


def rfc3339(moment: datetime) -> str:
    """Fixed width, microseconds, `Z`: text order is time order."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
    event = {str(name): value for name, value in row._mapping.items()}  # names are str subclasses
    for name in _LIST_FIELDS:
        event[name] = orjson.loads(event[name])
    return event


class AccessLogStore:
    def __init__(self, engine: AsyncEngine, signer: CheckpointSigner, *, seal_every: int = 1000) -> None:
        self.engine = engine
        self._writer = engine.execution_options(**WRITER)
        self._signer = signer
        self._seal_every = seal_every

    async def _lock_head(self, connection: AsyncConnection) -> Any:
        query = select(access_log_head).where(access_log_head.c.id == 1)
        if connection.dialect.name != "sqlite":  # SQLite's BEGIN IMMEDIATE already holds the lock
            query = query.with_for_update()
        return (await connection.execute(query)).one()

    async def _seal(self, connection: AsyncConnection, seq: int, head_hash: str) -> None:
        checkpoint = self._signer.sign(seq, head_hash, rfc3339(datetime.now(UTC)))
        await connection.execute(access_checkpoints.insert().values(**checkpoint.__dict__))
        await connection.execute(update(access_log_head).where(access_log_head.c.id == 1).values(
            checkpoint_seq=seq, checkpoint_at=time.time()))

    async def append(self, events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Chain and store `events` in one transaction; they are durable when this returns."""
        async with self._writer.begin() as connection:
            head = await self._lock_head(connection)
            linked = link(events, head.seq, head.hash)
            await connection.execute(access_events.insert(), [_to_row(e) for e in linked])
            last = linked[-1]
            await connection.execute(update(access_log_head).where(access_log_head.c.id == 1).values(
                seq=last["seq"], hash=last["hash"]))
            if last["seq"] - head.checkpoint_seq >= self._seal_every:
                await self._seal(connection, last["seq"], last["hash"])
        return linked

    async def seal(self, older_than_s: float = 0.0) -> bool:
        """Write a checkpoint over the head if events are unsealed and the last checkpoint is at least
        `older_than_s` old (so replicas sharing a database do not each seal the same tail)."""
        async with self._writer.begin() as connection:
            head = await self._lock_head(connection)
            if head.seq <= head.checkpoint_seq or time.time() - head.checkpoint_at < older_than_s:
                return False
            await self._seal(connection, head.seq, head.hash)
            return True

    async def probe(self) -> None:
        """Take and release the writers' lock: proves an append could commit now."""
        async with self._writer.begin() as connection:
            await self._lock_head(connection)

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
