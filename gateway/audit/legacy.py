"""Carrying a 1.0 access log (one SQL chain, numbered from 1) into the segment logs of 1.1.

At the first start of 1.1 on a data dir or database that holds a 1.0 log, that log is sealed (a last
signed checkpoint over its head), copied into the query index under its own origin and numbering, and
left as it was, read-only. The first new log to claim it (one claim, in the database) then continues
from its head: its entry 0's
`prev_hash` is the 1.0 head's hash, recorded in the new log's `link.json`, so one walk covers both and
nothing written before the upgrade is lost or left unverified.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.chain import CheckpointSigner
from gateway.audit.index import import_legacy, legacy_head
from gateway.audit.origin import legacy_origin
from gateway.audit.segment_store import Link, SegmentStore, read_origin
from gateway.audit.store import AccessLogStore
from gateway.settings import Settings
from gateway.storage.database import WRITER
from gateway.storage.tables import audit_index_watermarks


async def _imported(engine: AsyncEngine, origin: str) -> bool:
    async with engine.connect() as connection:
        return (
            await connection.scalar(
                select(audit_index_watermarks.c.origin).where(audit_index_watermarks.c.origin == origin)
            )
            is not None
        )


async def continue_legacy_log(
    engine: AsyncEngine, signer: CheckpointSigner, settings: Settings, store: SegmentStore
) -> Link | None:
    """Import the 1.0 log once; if `store` is a new log and no other log continues the 1.0 one yet, claim
    it and make `store` continue from its head (one claim in the database, so replicas never fork it).
    The link, if any."""
    if await legacy_head(engine) is None:
        return None
    origin = legacy_origin(settings.issuer)
    if not await _imported(engine, origin):
        legacy = AccessLogStore(engine, signer)
        try:
            await legacy.seal()
        finally:
            await legacy.close_writer()
    link = await import_legacy(engine, origin)
    if link is not None and read_origin(store.directory) is None and await _claim(engine, origin, store.origin):
        store.continue_from(link)
    return link


async def _claim(engine: AsyncEngine, legacy: str, successor: str) -> bool:
    """Record `successor` as the one log continuing `legacy`, unless another already is."""
    w = audit_index_watermarks.c
    async with engine.execution_options(**WRITER).begin() as connection:
        claimed = await connection.execute(
            update(audit_index_watermarks)
            .where(w.origin == legacy, w.continued_by.is_(None))
            .values(continued_by=successor)
        )
        if claimed.rowcount == 1:
            return True
        holder = await connection.scalar(select(w.continued_by).where(w.origin == legacy))
    return holder == successor
