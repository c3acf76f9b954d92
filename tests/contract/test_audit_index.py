"""The index follower on SQLite and on PostgreSQL: every entry of a segment log indexed once, in batches,
the watermark moved with the rows, a failed batch leaving neither behind, origins kept apart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.index import IndexFollower
from gateway.audit.record import AccessRecord
from gateway.audit.segment_store import SegmentStore
from gateway.audit.writer import DurableAccessLog
from gateway.storage.database import create_engine, database_url, migrate
from gateway.storage.tables import audit_index
from gateway.telemetry import Metrics


@pytest.fixture(params=["sqlite", "postgres"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        url, schema = database_url(None, tmp_path), None
    else:
        url, schema = (database_url(request.getfixturevalue("postgres_url"), tmp_path),
                       request.getfixturevalue("postgres_schema"))
    engine = create_engine(url, schema=schema)
    await migrate(engine, schema)
    yield engine
    await engine.dispose()


async def _log(directory: Path, count: int) -> SegmentStore:
    store = SegmentStore(directory, segment_bytes=16384)
    writer = DurableAccessLog(store, Metrics(), max_batch=64)  # type: ignore[arg-type]
    await writer.start()
    for n in range(count):
        record = AccessRecord(operation="verify", administration="ceni" if n % 2 else "canam",
                              subject_hash=f"{n % 7:064x}", evidence={"method": "otp", "reference": f"R{n}"}
                              if n % 10 == 0 else None)
        record.finish(200 if n % 3 else 403)
        await writer.append(record)
    await writer.close()
    reader = SegmentStore(directory, segment_bytes=16384)
    await reader.probe()
    return reader


async def _rows(engine: AsyncEngine, origin: str) -> list[int]:
    async with engine.connect() as connection:
        result = await connection.execute(select(audit_index.c.seq).where(audit_index.c.origin == origin)
                                          .order_by(audit_index.c.seq))
        return [row.seq for row in result]


async def test_the_follower_indexes_every_entry_once_and_resumes(engine: AsyncEngine, tmp_path: Path) -> None:
    store = await _log(tmp_path / "a", 250)
    follower = IndexFollower(engine, "gw.example/access-log/a-0", store.entries, batch=64)
    assert await follower.watermark() == 0
    assert await follower.catch_up() == 250
    assert await follower.watermark() == 250
    assert await _rows(engine, follower.origin) == list(range(250))
    assert await follower.catch_up() == 0  # nothing new: nothing added
    async with engine.connect() as connection:
        row = (await connection.execute(select(audit_index).where(audit_index.c.seq == 10))).one()
    assert row.evidence == '{"method":"otp","reference":"R10"}' and row.decision == "permit"
    more = await _log(tmp_path / "a", 40)  # the same log, reopened and appended to
    follower = IndexFollower(engine, follower.origin, more.entries, batch=64)
    assert await follower.catch_up() == 40
    assert await _rows(engine, follower.origin) == list(range(290))


async def test_a_failed_batch_moves_neither_rows_nor_watermark(engine: AsyncEngine, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    store = await _log(tmp_path / "b", 100)
    follower = IndexFollower(engine, "gw.example/access-log/b-0", store.entries, batch=30)
    calls = 0
    original = follower._read

    def read_then_fail(from_seq: int) -> list[dict]:
        nonlocal calls
        calls += 1
        batch = original(from_seq)
        if calls == 3:  # the third batch: a row that cannot be stored (status must not be null)
            batch = [*batch[:-1], {**batch[-1], "status": None}]
        return batch

    monkeypatch.setattr(follower, "_read", read_then_fail)
    with pytest.raises(Exception):  # noqa: B017 (the database's own error, whichever engine)
        await follower.catch_up()
    assert await follower.watermark() == 60 and await _rows(engine, follower.origin) == list(range(60))
    monkeypatch.setattr(follower, "_read", original)
    assert await follower.catch_up() == 40  # the replay starts at the watermark: nothing twice
    assert await _rows(engine, follower.origin) == list(range(100))


async def test_origins_are_indexed_apart(engine: AsyncEngine, tmp_path: Path) -> None:
    first, second = await _log(tmp_path / "w0", 30), await _log(tmp_path / "w1", 20)
    followers = [IndexFollower(engine, "gw/access-log/host-0", first.entries),
                 IndexFollower(engine, "gw/access-log/host-1", second.entries)]
    assert await asyncio.gather(*(f.catch_up() for f in followers)) == [30, 20]
    async with engine.connect() as connection:
        assert await connection.scalar(select(func.count()).select_from(audit_index)) == 50
    assert await _rows(engine, "gw/access-log/host-1") == list(range(20))
