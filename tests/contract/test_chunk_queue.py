"""The two ways chunks reach workers (in-process from the database; saq over Redis) under one contract:
every chunk of a queued job runs, a chunk whose worker died is taken over once its lease runs out, and a
chunk held by a live worker is never run twice at once."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway.bulk.records import JobSpec
from gateway.bulk.runner import ChunkQueue, LocalChunkQueue, SaqChunkQueue
from gateway.bulk.store import JobStore
from gateway.bulk.upload import Chunk
from gateway.identity.decide import Predicate
from gateway.storage.database import create_engine, database_url, migrate

SPEC = JobSpec("roll", ("family_name",), (Predicate("alive", None, None),), date(2026, 12, 1))
LEASE_S = 1.0
JOBS_DIR = "a" * 32


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[JobStore]:
    engine = create_engine(database_url(None, tmp_path))
    await migrate(engine)
    yield JobStore(engine)
    await engine.dispose()


@pytest.fixture(params=["local", "saq"])
async def make_queue(request: pytest.FixtureRequest, store: JobStore, redis_prefix: str) -> AsyncIterator[object]:
    made: list[ChunkQueue] = []
    name = f"{redis_prefix}bulk"

    def make(concurrency: int, jobs_dir: str = JOBS_DIR) -> ChunkQueue:
        queue: ChunkQueue
        if request.param == "local":
            queue = LocalChunkQueue(store, jobs_dir, concurrency, poll_s=0.2)
        else:
            queue = SaqChunkQueue(
                request.getfixturevalue("redis_url"), name, store, jobs_dir, concurrency, lease_s=LEASE_S, poll_s=0.2
            )
        made.append(queue)
        return queue

    yield make
    for queue in made:
        await queue.close()
    if request.param == "saq":
        redis = Redis.from_url(request.getfixturevalue("redis_url"))
        keys = [key async for key in redis.scan_iter(f"saq:*{name}*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


async def queued_job(store: JobStore, key: str, chunks: int, jobs_dir: str = JOBS_DIR) -> str:
    job, _ = await store.create(
        job_id=f"00000000-0000-4000-8000-{key:0>12}",
        administration="electoral",
        client_id="c",
        idempotency_key=key,
        request_hash="h",
        spec=SPEC,
        fmt="csv",
        declared_records=None,
    )
    await store.accept_input(
        job,
        total=chunks * 10,
        sha256="0" * 64,
        input_file="input-x",
        jobs_dir=jobs_dir,
        chunks=[Chunk(n, 2 + n * 10, n * 100, n * 100 + 100, 10) for n in range(chunks)],
        daily_limit=None,
    )
    return job.id


class Workers:
    """A handler that leases and finishes chunks as the runner does, counting what ran where."""

    def __init__(self, store: JobStore, owner: str, delay_s: float = 0.0) -> None:
        self.store, self.owner, self.delay_s = store, owner, delay_s
        self.ran: Counter[tuple[str, int]] = Counter()
        self.running = 0
        self.most_at_once = 0

    async def __call__(self, job_id: str, n: int) -> bool:
        leased = await self.store.lease(job_id, n, self.owner, LEASE_S)
        if leased is None:
            return False
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await asyncio.sleep(self.delay_s)
            self.ran[(job_id, n)] += 1  # counted before the commit a test may see the job complete by
            await self.store.finish_chunk(job_id, n, self.owner, 0)
        finally:
            self.running -= 1
        return True


async def until(check, within_s: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_every_chunk_of_a_queued_job_runs_once_within_the_concurrency(store: JobStore, make_queue) -> None:
    job_id = await queued_job(store, "1", 12)
    workers = Workers(store, "w1", delay_s=0.05)
    queue = make_queue(3)
    await queue.start(workers)
    await queue.submit(job_id, list(range(12)))

    async def completed() -> bool:
        job = await store.get(job_id)
        return job is not None and job.status == "completed"

    await until(completed)
    assert sorted(workers.ran) == [(job_id, n) for n in range(12)]
    assert set(workers.ran.values()) == {1}
    assert 1 < workers.most_at_once <= 3
    assert (await store.progress(job_id)).processed == 120


async def test_a_dead_workers_chunk_is_taken_over_after_its_lease(store: JobStore, make_queue) -> None:
    job_id = await queued_job(store, "2", 2)
    assert await store.lease(job_id, 0, "dead-worker", LEASE_S) is not None  # and then it dies
    workers = Workers(store, "w2")
    queue = make_queue(2)
    await queue.start(workers)
    await queue.submit(job_id, [0, 1])
    await until(lambda: _done(store, job_id))
    assert workers.ran == Counter({(job_id, 0): 1, (job_id, 1): 1})
    with pytest.raises(LookupError):  # the dead worker, back, cannot commit what it no longer holds
        await store.finish_chunk(job_id, 0, "dead-worker", 0)


async def test_a_process_that_runs_no_jobs_leaves_them_to_others(store: JobStore, make_queue) -> None:
    job_id = await queued_job(store, "3", 3)
    idle = make_queue(0)
    await idle.start(Workers(store, "idle"))
    await idle.submit(job_id, [0, 1, 2])
    await asyncio.sleep(0.5)
    assert (await store.progress(job_id)).chunks_done == 0
    workers = Workers(store, "w3")
    busy = make_queue(1)
    await busy.start(workers)
    await until(lambda: _done(store, job_id))  # found without being told: another process queued it
    assert len(workers.ran) == 3


async def test_a_job_goes_only_to_workers_that_see_its_input(store: JobStore, make_queue) -> None:
    elsewhere = await queued_job(store, "4", 2, jobs_dir="b" * 32)
    here = await queued_job(store, "5", 1)
    workers = Workers(store, "w4")
    queue = make_queue(2)
    await queue.start(workers)
    await queue.submit(here, [0])
    await until(lambda: _done(store, here))
    await asyncio.sleep(0.6)  # a few sweeps: the other directory's job is never taken here
    assert set(workers.ran) == {(here, 0)}
    assert (await store.progress(elsewhere)).chunks_done == 0


async def _done(store: JobStore, job_id: str) -> bool:
    job = await store.get(job_id)
    return job is not None and job.status == "completed"
