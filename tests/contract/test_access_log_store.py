"""One contract for the access log over both stores: SQLite (the embedded default) and PostgreSQL (real)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.chain import ChainVerifier, CheckpointSigner
from gateway.audit.log import AccessLogUnavailable
from gateway.audit.record import AccessRecord
from gateway.audit.rows import EventFilter
from gateway.audit.store import AccessLogStore
from gateway.audit.writer import DurableAccessLog
from gateway.metrics import Metrics
from gateway.storage.database import create_engine, database_url, migrate

SIGNER = CheckpointSigner(Ed25519PrivateKey.generate())
EngineFactory = Callable[[], AsyncEngine]
StoreFactory = Callable[..., AccessLogStore]


@pytest.fixture(params=["sqlite", "postgres"])
async def engines(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EngineFactory]:
    """Makes engines on one fresh database; each engine stands for one gateway process."""
    made: list[AsyncEngine] = []
    if request.param == "sqlite":
        url, schema = database_url(None, tmp_path), None
    else:
        url = database_url(request.getfixturevalue("postgres_url"), tmp_path)
        schema = request.getfixturevalue("postgres_schema")

    def make() -> AsyncEngine:
        engine = create_engine(url, schema=schema, statement_timeout_s=2.0)
        made.append(engine)
        return engine

    await migrate(make(), schema)
    yield make
    for engine in made:
        await engine.dispose()


@pytest.fixture
async def stores(engines: EngineFactory) -> AsyncIterator[StoreFactory]:
    """Makes stores, each on its own engine (its own process, as it were), closed afterwards."""
    made: list[AccessLogStore] = []

    def make(**options: Any) -> AccessLogStore:
        store = AccessLogStore(engines(), SIGNER, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


@contextlib.asynccontextmanager
async def lock_held(engine: AsyncEngine) -> AsyncIterator[None]:
    if engine.dialect.name == "sqlite":
        held = sqlite3.connect(str(engine.url.database), isolation_level=None)
        held.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            held.execute("ROLLBACK")
            held.close()
        return
    async with engine.connect() as connection:
        await connection.execute(text("LOCK TABLE access_log_head IN ACCESS EXCLUSIVE MODE"))
        try:
            yield
        finally:
            await connection.rollback()


def record(n: int, **fields: Any) -> AccessRecord:
    rec = AccessRecord(
        operation="verify",
        administration=fields.pop("administration", "ceni"),
        client_id="ceni-app",
        subject_hash=fields.pop("subject_hash", f"{n:064x}"),
        **fields,
    )
    rec.finish(fields.pop("status", 200))
    return rec


def events_of(*records: AccessRecord) -> list[dict[str, Any]]:
    return [r.event() for r in records]


async def verify(store: AccessLogStore, *, sealed: bool) -> Any:
    verifier = ChainVerifier(await store.checkpoints(), {SIGNER.key_id: SIGNER.public_key}, require_sealed=sealed)
    async for event in store.stream(chunk=7):
        verifier.feed(event)
    return verifier.finish()


async def test_appended_events_come_back_exactly_and_chain(stores: StoreFactory) -> None:
    store = stores(seal_every=1000)
    first = record(1, attributes_requested=["family_name"], legal_basis="Loi électorale n°2016-048")
    first.attributes_released = ["family_name"]
    await store.append(events_of(first))
    await store.append(events_of(record(2), record(3, status=403)))
    events = [e async for e in store.stream()]
    assert [e["seq"] for e in events] == [1, 2, 3]
    assert events[0] | {} == {**first.event(), "seq": 1, "prev_hash": "0" * 64, "hash": events[0]["hash"]}
    assert events[2]["decision"] == "deny"
    assert await store.head() == (3, events[2]["hash"])
    report = await verify(store, sealed=False)
    assert report.ok and report.unsealed_events == 3


async def test_settle_runs_once_when_the_events_are_durable_and_never_for_a_failed_write(
    engines: EngineFactory, stores: StoreFactory
) -> None:
    store = stores(seal_every=1000)
    settled: list[int] = []
    await store.append(events_of(record(1), record(2)), lambda: settled.append(1))
    assert settled == [1] and [e["seq"] async for e in store.stream()] == [1, 2]
    async with lock_held(engines()):  # this write cannot commit
        with pytest.raises(Exception):  # noqa: B017 - whatever the driver raises
            await asyncio.wait_for(store.append(events_of(record(3)), lambda: settled.append(2)), 5)
    assert settled == [1]


async def test_seals_every_n_events_and_on_demand(stores: StoreFactory) -> None:
    store = stores(seal_every=5)
    for n in range(12):
        await store.append(events_of(record(n)))
    assert [c.seq for c in await store.checkpoints()] == [5, 10]
    assert not (await verify(store, sealed=True)).ok
    assert await store.seal() is True
    assert await store.seal() is False  # nothing new to seal
    assert [c.seq for c in await store.checkpoints()] == [5, 10, 12]
    report = await verify(store, sealed=True)
    assert report.ok and report.last_checkpoint["seq"] == 12


async def test_writers_in_separate_processes_extend_one_chain(stores: StoreFactory) -> None:
    writers = [stores(seal_every=7) for _ in range(3)]

    async def write(store: AccessLogStore, offset: int) -> None:
        for n in range(10):
            await store.append(events_of(record(offset + n), record(offset + n + 100)))

    await asyncio.gather(*(write(s, i * 1000) for i, s in enumerate(writers)))
    await writers[0].seal()
    report = await verify(writers[1], sealed=True)
    assert report.ok, report.problems
    assert report.events_checked == 60


async def test_filters_pages_and_one_persons_events(stores: StoreFactory) -> None:
    store = stores()
    person = "ab" * 32
    batch = [
        record(n, administration="ceni" if n % 2 else "canam", subject_hash=person if n % 3 == 0 else None)
        for n in range(30)
    ]
    batch[4].operation = "lookup"
    await store.append(events_of(*batch))
    canam = await store.events(EventFilter(administration="canam"), 0, 100)
    assert len(canam) == 15 and {e["administration"] for e in canam} == {"canam"}
    page1 = await store.events(EventFilter(administration="canam"), 0, 10)
    page2 = await store.events(EventFilter(administration="canam"), page1[-1]["seq"], 10)
    assert [e["seq"] for e in page1 + page2] == [e["seq"] for e in canam]
    assert [e["seq"] for e in await store.events(EventFilter(operation="lookup"), 0, 10)] == [5]
    mine = await store.events(EventFilter(subject_hash=person), 0, 100)
    assert [e["seq"] for e in mine] == [n + 1 for n in range(0, 30, 3)]
    latest = await store.subject_events(person, ("audit.",), 3)
    assert [e["seq"] for e in latest] == [22, 25, 28]
    audited = record(99, subject_hash=person)
    audited.operation = "audit.search"
    await store.append(events_of(audited))
    assert [e["seq"] for e in await store.subject_events(person, ("audit.",), 3)] == [22, 25, 28]
    assert [e["seq"] for e in await store.subject_events(person, (), 1)] == [31]
    times = sorted(e["time"] for e in canam)
    window = await store.events(EventFilter(since=times[2], until=times[5]), 0, 100)
    assert all(times[2] <= e["time"] < times[5] for e in window) and window


async def test_the_writer_commits_concurrent_events_in_groups(stores: StoreFactory) -> None:
    metrics = Metrics()
    log = DurableAccessLog(stores(), metrics, seal_interval_s=3600)
    await log.start()
    await asyncio.gather(*(log.append(record(n)) for n in range(300)))
    await log.close()
    store = stores()
    report = await verify(store, sealed=True)  # close sealed the tail
    assert report.ok and report.events_checked == 300
    commits = metrics.registry.get_sample_value("jamu_access_log_batch_events_count")
    assert commits is not None and commits < 150, commits  # many events per transaction


async def test_a_write_that_cannot_commit_fails_the_append_and_readiness_then_recovers(
    engines: EngineFactory, stores: StoreFactory
) -> None:
    log = DurableAccessLog(stores(), Metrics(), write_timeout_s=2.0, seal_interval_s=3600)
    await log.start()
    await log.append(record(1))
    # Another session holds the log locked, as a stuck writer or an operator's transaction would.
    async with lock_held(engines()):
        with pytest.raises(AccessLogUnavailable):
            await log.append(record(2))
        with pytest.raises(Exception):  # noqa: B017 - whatever the driver raises, readiness is not granted
            await asyncio.wait_for(log.ready(), 3)
    assert await log.ready() is True
    await log.append(record(3))
    await log.close()
    ids = [e["id"] async for e in stores().stream()]
    assert len(ids) in (2, 3)  # the refused event may still have committed after its timeout, never half


async def test_append_after_close_is_refused(stores: StoreFactory) -> None:
    log = DurableAccessLog(stores(), Metrics())
    await log.start()
    await log.close()
    with pytest.raises(AccessLogUnavailable):
        await log.append(record(1))
    assert await log.ready() is False
