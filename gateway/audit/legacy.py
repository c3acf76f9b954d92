"""Carrying a 1.0 access log (one SQL chain, numbered from 1) into the segment logs of 1.1.

At the first start of 1.1 on a data dir or database that holds a 1.0 log, that log is sealed (a last
signed checkpoint over its head), copied into the query index under its own origin and numbering, and
left as it was, read-only. The first new log (slot 0's) then continues from its head: its entry 0's
`prev_hash` is the 1.0 head's hash, recorded in the new log's `link.json`, so one walk covers both and
nothing written before the upgrade is lost or left unverified.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.chain import CheckpointSigner
from gateway.audit.index import import_legacy
from gateway.audit.origin import legacy_origin
from gateway.audit.segment_store import Link, SegmentStore
from gateway.audit.store import AccessLogStore
from gateway.settings import Settings
from gateway.storage.tables import access_log_head, audit_index_watermarks


async def _legacy_head(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(select(access_log_head.c.seq).where(access_log_head.c.id == 1)) or 0)


async def _imported(engine: AsyncEngine, origin: str) -> bool:
    async with engine.connect() as connection:
        return await connection.scalar(select(audit_index_watermarks.c.origin)
                                       .where(audit_index_watermarks.c.origin == origin)) is not None


async def continue_legacy_log(engine: AsyncEngine, signer: CheckpointSigner, settings: Settings,
                              store: SegmentStore, *, slot: int) -> Link | None:
    """Import the 1.0 log once; link slot 0's log to it if that log is new. The link, if any."""
    if await _legacy_head(engine) == 0:
        return None
    origin = legacy_origin(settings.issuer)
    if not await _imported(engine, origin):
        legacy = AccessLogStore(engine, signer)
        try:
            await legacy.seal()
        finally:
            await legacy.close_writer()
    link = await import_legacy(engine, origin)
    if link is not None and slot == 0:
        store.continue_from(link)
    return link
