"""The bulk job store on SQLite and on PostgreSQL: idempotent creation, the day's allowance charged once
and race-free, leases that fence, the last chunk completing its job, cancel keeping a running chunk."""

from __future__ import annotations

import asyncio
from datetime import date

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.bulk.records import JobSpec
from gateway.bulk.store import IdempotencyConflict, JobStore, NotAwaitingInput, QuotaExceeded
from gateway.bulk.upload import Chunk
from gateway.identity.decide import Predicate

SPEC = JobSpec("roll", ("family_name",), (Predicate("alive", None, None),), date(2026, 12, 1))
DIR = "d" * 32


@pytest.fixture
def store(migrated_engine: AsyncEngine) -> JobStore:
    return JobStore(migrated_engine)


async def new_job(store: JobStore, key: str, administration: str = "ceni", request_hash: str = "h") -> str:
    number = int.from_bytes(f"{administration}/{key}".encode()[-6:], "big")
    job, _ = await store.create(
        job_id=f"00000000-0000-4000-8000-{number:012x}",
        administration=administration,
        client_id="c",
        idempotency_key=key,
        request_hash=request_hash,
        spec=SPEC,
        fmt="csv",
        declared_records=None,
    )
    return job.id


def chunks(count: int) -> list[Chunk]:
    return [Chunk(n, 2 + n * 10, n * 100, n * 100 + 100, 10) for n in range(count)]


async def test_a_key_answers_its_job_and_refuses_another_request(store: JobStore) -> None:
    job_id = await new_job(store, "1")
    again, replayed = await store.create(
        job_id="00000000-0000-4000-8000-999999999999",
        administration="ceni",
        client_id="c",
        idempotency_key="1",
        request_hash="h",
        spec=SPEC,
        fmt="csv",
        declared_records=None,
    )
    assert replayed and again.id == job_id and again.spec == SPEC
    with pytest.raises(IdempotencyConflict):
        await new_job(store, "1", request_hash="other")
    assert await new_job(store, "1", administration="other") != job_id  # keys are per administration
    assert await store.get(job_id, "other") is None and (await store.get(job_id, "ceni")) is not None


async def test_the_allowance_is_charged_once_per_upload_even_when_two_race(store: JobStore) -> None:
    first, second, third = [await store.get(await new_job(store, k)) for k in ("a", "b", "c")]
    results = await asyncio.gather(
        store.accept_input(
            first, total=60, sha256="0" * 64, input_file="i", jobs_dir=DIR, chunks=chunks(6), daily_limit=100
        ),
        store.accept_input(
            second, total=60, sha256="0" * 64, input_file="i", jobs_dir=DIR, chunks=chunks(6), daily_limit=100
        ),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["NoneType", "QuotaExceeded"]
    assert await store.bulk_left("ceni", 100) == 40
    await store.accept_input(
        third, total=40, sha256="0" * 64, input_file="i", jobs_dir=DIR, chunks=chunks(4), daily_limit=100
    )
    with pytest.raises(NotAwaitingInput):
        await store.accept_input(
            third, total=1, sha256="0" * 64, input_file="i", jobs_dir=DIR, chunks=chunks(1), daily_limit=None
        )
    assert await store.bulk_left("ceni", 100) == 0
    with pytest.raises(QuotaExceeded):
        await store.accept_input(
            await store.get(await new_job(store, "d")),
            total=1,
            sha256="0" * 64,
            input_file="i",
            jobs_dir=DIR,
            chunks=chunks(1),
            daily_limit=100,
        )


async def test_leases_fence_and_the_last_chunks_finishing_together_complete_the_job(store: JobStore) -> None:
    job = await store.get(await new_job(store, "2"))
    await store.accept_input(
        job, total=20, sha256="0" * 64, input_file="i", jobs_dir=DIR, chunks=chunks(2), daily_limit=None
    )
    assert await store.takeable(DIR) == [(job.id, 0), (job.id, 1)] and await store.takeable("x" * 32) == []
    a, b = await store.lease(job.id, 0, "a", 30), await store.lease(job.id, 1, "b", 30)
    assert a is not None and b is not None and a.attempts == 1
    assert await store.lease(job.id, 0, "c", 30) is None  # held
    assert await store.logging_at(a, "a", "origin-a", 7) and not await store.logging_at(a, "c", "origin-c", 0)
    ends = await asyncio.gather(store.finish_chunk(job.id, 0, "a", 1), store.finish_chunk(job.id, 1, "b", 0))
    assert [e is not None for e in ends].count(True) == 1  # exactly one of them completes the job
    done = await store.get(job.id)
    assert done.status == "completed" and done.expires_at is not None
    progress = await store.progress(job.id)
    assert (progress.processed, progress.errors, progress.chunks_done) == (20, 1, 2)
    with pytest.raises(LookupError):
        await store.finish_chunk(job.id, 0, "a", 0)


async def test_cancel_drops_waiting_chunks_and_lets_a_running_one_commit(store: JobStore) -> None:
    job = await store.get(await new_job(store, "3"))
    await store.accept_input(
        job, total=30, sha256="0" * 64, input_file="i", jobs_dir=DIR, chunks=chunks(3), daily_limit=None
    )
    assert await store.lease(job.id, 0, "a", 30) is not None
    assert await store.cancel(job.id) and not await store.cancel(job.id)
    assert not await store.renew(job.id, 0, "a", 30)  # the worker learns of it at its next step
    assert await store.finish_chunk(job.id, 0, "a", 0) is None  # its events were durable: it commits
    assert await store.takeable(DIR) == []
    cancelled = await store.get(job.id)
    assert cancelled.status == "cancelled" and (await store.progress(job.id)).processed == 10
    await store.release(job.id, 1, "nobody")
    assert await store.done_chunks(job.id) == [0]
