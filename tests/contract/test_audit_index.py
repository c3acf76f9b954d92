"""The index follower on SQLite and on PostgreSQL: every entry of a segment log indexed once, in batches,
the watermark moved with the rows, a failed batch leaving neither behind, origins kept apart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.chain import CheckpointSigner
from gateway.audit.index import (
    ROW_COLUMNS,
    AuditIndex,
    IndexFollower,
    LogBehindIndex,
    adopt_idle_logs,
    import_legacy,
)
from gateway.audit.origin import log_directory
from gateway.audit.record import AccessRecord
from gateway.audit.rows import EventFilter
from gateway.audit.segment_store import Link, SegmentStore, read_checkpoints
from gateway.audit.store import AccessLogStore
from gateway.audit.writer import DurableAccessLog
from gateway.metrics import Metrics
from gateway.storage.database import create_engine, database_url, migrate
from gateway.storage.tables import audit_index


@pytest.fixture(params=["sqlite", "postgres"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        url, schema = database_url(None, tmp_path), None
    else:
        url, schema = (
            database_url(request.getfixturevalue("postgres_url"), tmp_path),
            request.getfixturevalue("postgres_schema"),
        )
    engine = create_engine(url, schema=schema)
    await migrate(engine, schema)
    yield engine
    await engine.dispose()


SIGNER = CheckpointSigner(Ed25519PrivateKey.generate())
KEYS = {SIGNER.key_id: SIGNER.public_key}


async def _log(
    directory: Path, count: int, origin: str = "gw.example/access-log/a-0", *, link_to: Link | None = None
) -> int:
    """Write `count` events to the log in `directory` (made or reopened), sealed; returns its size."""
    store = SegmentStore(directory, origin=origin, signer=SIGNER, segment_bytes=16384, seal_every=100)
    if link_to is not None:
        store.continue_from(link_to)
    writer = DurableAccessLog(store, Metrics(), max_batch=64)  # type: ignore[arg-type]
    await writer.start()
    for n in range(count):
        record = AccessRecord(
            operation="verify",
            administration="ceni" if n % 2 else "canam",
            subject_hash=f"{n % 7:064x}",
            evidence={"method": "otp", "reference": f"R{n}"} if n % 10 == 0 else None,
        )
        record.finish(200 if n % 3 else 403)
        await writer.append(record)
    await writer.close()
    await store.close()
    return store.next_seq


async def _rows(engine: AsyncEngine, origin: str) -> list[int]:
    async with engine.connect() as connection:
        result = await connection.execute(
            select(audit_index.c.seq).where(audit_index.c.origin == origin).order_by(audit_index.c.seq)
        )
        return [row.seq for row in result]


async def test_the_follower_indexes_every_entry_once_and_resumes(engine: AsyncEngine, tmp_path: Path) -> None:
    await _log(tmp_path / "a", 250)
    follower = IndexFollower(engine, tmp_path / "a", batch=64)
    assert follower.origin == "gw.example/access-log/a-0"  # read from the log's directory
    assert await follower.watermark() == 0
    assert await follower.catch_up() == 250
    assert await follower.watermark() == 250 and follower.indexed_through == 250
    assert await _rows(engine, follower.origin) == list(range(250))
    assert await follower.catch_up() == 0  # nothing new: nothing added
    async with engine.connect() as connection:
        row = (await connection.execute(select(audit_index).where(audit_index.c.seq == 10))).one()
    assert row.evidence == '{"method":"otp","reference":"R10"}' and row.decision == "permit"
    await _log(tmp_path / "a", 40)  # the same log, reopened and appended to
    assert await follower.catch_up(until=270) == 20  # only what is durable up to `until`
    assert await IndexFollower(engine, tmp_path / "a", batch=64).catch_up() == 20
    assert await _rows(engine, follower.origin) == list(range(290))
    index = AuditIndex(engine)
    assert [c.seq for c in await index.checkpoints(follower.origin)] == [99, 199, 249, 289]
    [state] = await index.origins()
    assert (state.origin, state.next_seq, state.first_seq, state.link) == (follower.origin, 290, 0, None)
    assert (await index.verify(state, KEYS, require_sealed=True)).finish().ok


async def test_a_failed_batch_moves_neither_rows_nor_watermark(
    engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _log(tmp_path / "b", 100)
    follower = IndexFollower(engine, tmp_path / "b", batch=30)
    calls = 0
    original = follower._read

    def read_then_fail(from_seq: int, until: int) -> tuple[list[tuple], list]:
        nonlocal calls
        calls += 1
        rows, checkpoints = original(from_seq, until)
        if calls == 3:  # the third batch: a row that cannot be stored (status must not be null)
            status = ROW_COLUMNS.index("status")
            rows = [*rows[:-1], (*rows[-1][:status], None, *rows[-1][status + 1 :])]
        return rows, checkpoints

    monkeypatch.setattr(follower, "_read", read_then_fail)
    with pytest.raises(Exception):  # noqa: B017 (the database's own error, whichever engine)
        await follower.catch_up()
    assert await follower.watermark() == 60 and await _rows(engine, follower.origin) == list(range(60))
    monkeypatch.setattr(follower, "_read", original)
    assert await follower.catch_up() == 40  # the replay starts at the watermark: nothing twice
    assert await _rows(engine, follower.origin) == list(range(100))
    assert [c.seq for c in await AuditIndex(engine).checkpoints(follower.origin)] == [99]


async def test_origins_are_indexed_apart_and_read_together(engine: AsyncEngine, tmp_path: Path) -> None:
    await _log(tmp_path / "w0", 30, "gw/access-log/host-0")
    await _log(tmp_path / "w1", 20, "gw/access-log/host-1")
    followers = [IndexFollower(engine, tmp_path / "w0"), IndexFollower(engine, tmp_path / "w1")]
    assert await asyncio.gather(*(f.catch_up() for f in followers)) == [30, 20]
    assert await _rows(engine, "gw/access-log/host-1") == list(range(20))
    index = AuditIndex(engine)
    assert await index.count() == 50
    everything = [e async for e in index.stream(chunk=7)]
    assert len(everything) == 50 and {e["origin"] for e in everything} == {
        "gw/access-log/host-0",
        "gw/access-log/host-1",
    }
    assert [e["seq"] for e in everything if e["origin"] == "gw/access-log/host-1"] == list(range(20))
    where = EventFilter(administration="ceni", decision="permit")
    page, after = await index.page(where, None, 5)
    assert len(page) == 5 and all(e["administration"] == "ceni" and e["decision"] == "permit" for e in page)
    assert after is not None and (after.origin, after.seq) == (page[-1]["origin"], page[-1]["seq"])
    rest, _ = await index.page(where, after, 100)
    assert [(e["origin"], e["seq"]) for e in page + rest] == [
        (e["origin"], e["seq"]) for e in await index.events(where, None, 100)
    ]
    # An event indexed after a page was read comes on a later page, whatever its time.
    await _log(tmp_path / "w0", 2, "gw/access-log/host-0")
    await followers[0].catch_up()
    _, read_so_far = await index.page(EventFilter(), None, 50)
    later, _ = await index.page(EventFilter(), read_so_far, 10)
    assert [(e["origin"], e["seq"]) for e in later] == [("gw/access-log/host-0", 30), ("gw/access-log/host-0", 31)]
    person = await index.subject_events(f"{3:064x}", ("audit.",), 4)
    assert len(person) == 4 and all(e["subject_hash"] == f"{3:064x}" for e in person)
    assert [e["time"] for e in person] == sorted(e["time"] for e in person)
    states = await index.origins()
    assert [s.origin for s in states] == ["gw/access-log/host-0", "gw/access-log/host-1"]
    for state in states:
        assert (await index.verify(state, KEYS, require_sealed=True)).finish().ok


async def test_a_1_0_log_is_imported_sealed_and_continued(engine: AsyncEngine, tmp_path: Path) -> None:
    """An existing SQL log: sealed, copied under its own origin and numbering, and the new log's first
    entry chained to its head, so both verify as one history."""
    legacy = AccessLogStore(engine, SIGNER, seal_every=1000)
    for n in range(12):
        rec = AccessRecord(operation="verify", administration="ceni", subject_hash=f"{n:064x}")
        rec.finish(200)
        await legacy.append([rec.event()])
    await legacy.close_writer()
    link = await import_legacy(engine, "gw/access-log/1.0")
    assert link is not None and link.seq == 12
    assert await import_legacy(engine, "gw/access-log/1.0") == link  # idempotent
    await _log(tmp_path / "new", 5, "gw/access-log/host-0", link_to=link)
    await IndexFollower(engine, tmp_path / "new").catch_up()
    index = AuditIndex(engine)
    states = {s.origin: s for s in await index.origins()}
    old, new = states["gw/access-log/1.0"], states["gw/access-log/host-0"]
    assert (old.first_seq, old.next_seq, new.first_seq, new.next_seq) == (1, 13, 0, 5)
    assert new.link == link
    assert (await index.verify(old, KEYS)).finish().ok
    assert (await index.verify(new, KEYS, require_sealed=True)).finish().ok
    first_new = await anext(index.origin_entries("gw/access-log/host-0"))
    assert first_new["prev_hash"] == link.hash


async def test_the_legacy_import_is_skipped_for_an_empty_1_0_log(engine: AsyncEngine) -> None:
    assert await import_legacy(engine, "gw/access-log/1.0") is None
    assert await AuditIndex(engine).origins() == []


async def test_idle_logs_are_finished_only_when_this_gateway_signed_them(engine: AsyncEngine, tmp_path: Path) -> None:
    """A log left by a process that died is sealed and indexed by the next one; a directory someone made
    (its chain recomputed, but no checkpoint under this gateway's key) is neither signed nor indexed."""
    root = tmp_path / "log"
    own = log_directory(root, "gw/access-log/host-0")
    await _log(log_directory(root, "gw/access-log/host-9"), 30, "gw/access-log/host-9")  # sealed by SIGNER
    stranger = CheckpointSigner(Ed25519PrivateKey.generate())
    forged = SegmentStore(
        log_directory(root, "gw/access-log/forged"), origin="gw/access-log/forged", signer=stranger, seal_every=5
    )
    writer = DurableAccessLog(forged, Metrics())  # type: ignore[arg-type]
    await writer.start()
    for n in range(12):
        record = AccessRecord(operation="verify", administration="ceni", subject_hash=f"{n:064x}")
        record.finish(200)
        await writer.append(record)
    await writer.close()
    await forged.close()
    before = len(read_checkpoints(forged.directory))
    added = await adopt_idle_logs(engine, root, own, SIGNER)
    assert added == {"gw/access-log/host-9": 30}
    assert [s.origin for s in await AuditIndex(engine).origins()] == ["gw/access-log/host-9"]
    assert len(read_checkpoints(forged.directory)) == before  # nothing signed over it


async def test_an_origin_is_known_before_its_first_batch_and_an_index_ahead_of_its_log_stops_it(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    await _log(tmp_path / "a", 5)
    follower = IndexFollower(engine, tmp_path / "a")
    await follower.register()  # what a process does at start, before any batch
    [state] = await AuditIndex(engine).origins()
    assert (state.origin, state.next_seq, state.lag_s) == (follower.origin, 0, 0.0) and state.reported_at > 0
    assert await follower.catch_up() == 5
    with pytest.raises(LogBehindIndex):  # the log holds fewer entries than the index: restored or lost
        await follower.catch_up(until=3)
