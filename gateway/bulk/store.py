"""Jobs and their chunks in the gateway's database (SQLite or PostgreSQL).

The database is the truth about a job: its status, its chunks and who holds each. A chunk is leased by one
conditional UPDATE, so two workers can never both take it; a lease that is not renewed runs out and the
chunk is taken over. Finishing a chunk is conditional on still holding its lease, so a worker that lost
its chunk cannot commit it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.bulk.records import Format, JobSpec
from gateway.bulk.upload import Chunk
from gateway.storage.database import WRITER, row_dict
from gateway.storage.tables import bulk_usage, verification_chunks, verification_jobs

FINAL = frozenset({"completed", "failed", "cancelled"})


class IdempotencyConflict(Exception):
    """The key was used for another request by this administration."""


class QuotaExceeded(Exception):
    def __init__(self, left: int) -> None:
        super().__init__(f"{left} bulk records left today")
        self.left = left


class NotAwaitingInput(Exception):
    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    administration: str
    client_id: str
    spec: JobSpec
    format: Format
    declared_records: int | None
    status: str
    total: int | None
    input_sha256: str | None
    input_file: str | None
    jobs_dir: str | None
    reason: str | None
    created_at: float
    queued_at: float | None
    started_at: float | None
    finished_at: float | None
    expires_at: float | None
    request_hash: str

    @property
    def ended(self) -> bool:
        return self.status in FINAL


@dataclass(frozen=True, slots=True)
class LeasedChunk:
    job: Job
    chunk: Chunk
    attempts: int
    failures: int
    log_positions: list[tuple[str, int]]  # where earlier attempts appended this chunk's events: (origin, from seq)


@dataclass(frozen=True, slots=True)
class Progress:
    processed: int
    errors: int
    chunks_done: int
    chunks: int


def utc_day(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).date().isoformat()


def _job(row: Any) -> Job:
    values = row_dict(row)
    values["spec"] = JobSpec.from_json(orjson.loads(values["spec"]))
    return Job(**{name: values[name] for name in Job.__dataclass_fields__})


def _chunk(values: dict[str, Any]) -> Chunk:
    return Chunk(values["n"], values["first_line"], values["byte_start"], values["byte_end"], values["records"])


async def _lock_job(connection: Any, job_id: str) -> str | None:
    """The job's status, its row locked first: every transaction touching a job and its chunks takes the
    job, then the chunks, so two cannot wait on each other, and the last chunk's finish sees the others'
    (PostgreSQL; SQLite's writers are serialised anyway)."""
    status: str | None = (
        await connection.execute(
            select(verification_jobs.c.status).where(verification_jobs.c.id == job_id).with_for_update()
        )
    ).scalar()
    return status


class JobStore:
    def __init__(self, engine: AsyncEngine, *, results_days: float = 7.0) -> None:
        self.engine = engine
        self.results_s = results_days * 86400

    # -- creation and input ------------------------------------------------------------------------------

    async def create(
        self,
        *,
        job_id: str,
        administration: str,
        client_id: str,
        idempotency_key: str,
        request_hash: str,
        spec: JobSpec,
        fmt: Format,
        declared_records: int | None,
    ) -> tuple[Job, bool]:
        """The new job, or the one this key made before (True) when the request is the same."""
        row = {
            "id": job_id,
            "administration": administration,
            "client_id": client_id,
            "idempotency_key": idempotency_key,
            "request_hash": request_hash,
            "spec": orjson.dumps(spec.to_json()).decode(),
            "format": fmt,
            "declared_records": declared_records,
            "status": "awaiting_input",
            "created_at": time.time(),
        }
        try:
            async with self.engine.execution_options(**WRITER).begin() as connection:
                await connection.execute(verification_jobs.insert().values(**row))
        except IntegrityError:
            async with self.engine.connect() as connection:
                found = (
                    await connection.execute(
                        select(verification_jobs).where(
                            verification_jobs.c.administration == administration,
                            verification_jobs.c.idempotency_key == idempotency_key,
                        )
                    )
                ).first()
            if found is None:
                raise
            job = _job(found)
            if job.request_hash != request_hash:
                raise IdempotencyConflict(idempotency_key) from None
            return job, True
        made = await self.get(job_id)
        assert made is not None
        return made, False

    async def by_key(self, administration: str, idempotency_key: str) -> Job | None:
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(
                    select(verification_jobs).where(
                        verification_jobs.c.administration == administration,
                        verification_jobs.c.idempotency_key == idempotency_key,
                    )
                )
            ).first()
        return None if row is None else _job(row)

    async def get(self, job_id: str, administration: str | None = None) -> Job | None:
        query = select(verification_jobs).where(verification_jobs.c.id == job_id)
        if administration is not None:
            query = query.where(verification_jobs.c.administration == administration)
        async with self.engine.connect() as connection:
            row = (await connection.execute(query)).first()
        return None if row is None else _job(row)

    async def bulk_left(self, administration: str, limit: int | None, now: float | None = None) -> int | None:
        if limit is None:
            return None
        async with self.engine.connect() as connection:
            used = (
                await connection.execute(
                    select(bulk_usage.c.records).where(
                        bulk_usage.c.administration == administration, bulk_usage.c.day == utc_day(now or time.time())
                    )
                )
            ).scalar()
        return max(0, limit - (used or 0))

    async def accept_input(
        self,
        job: Job,
        *,
        total: int,
        sha256: str,
        input_file: str,
        jobs_dir: str,
        chunks: Sequence[Chunk],
        daily_limit: int | None,
    ) -> None:
        """The upload becomes the job's input: chunks written, the day's allowance charged, the job queued;
        all in one transaction, or nothing (QuotaExceeded, NotAwaitingInput)."""
        now = time.time()
        day = utc_day(now)
        async with self.engine.execution_options(**WRITER).begin() as connection:
            status = await _lock_job(connection, job.id)
            if status != "awaiting_input":
                raise NotAwaitingInput(str(status))
            if daily_limit is not None:
                # The day's row exists before it is locked: two first uploads of a day cannot both insert it.
                dialect_insert = pg_insert if connection.dialect.name == "postgresql" else sqlite_insert
                await connection.execute(
                    dialect_insert(bulk_usage)
                    .values(administration=job.administration, day=day, records=0)
                    .on_conflict_do_nothing()
                )
                used = (
                    await connection.execute(
                        select(bulk_usage.c.records)
                        .where(bulk_usage.c.administration == job.administration, bulk_usage.c.day == day)
                        .with_for_update()
                    )
                ).scalar() or 0
                if used + total > daily_limit:
                    raise QuotaExceeded(max(0, daily_limit - used))
                await connection.execute(
                    update(bulk_usage)
                    .where(bulk_usage.c.administration == job.administration, bulk_usage.c.day == day)
                    .values(records=bulk_usage.c.records + total)
                )
            for start in range(0, len(chunks), 1000):
                await connection.execute(
                    verification_chunks.insert(),
                    [
                        {
                            "job_id": job.id,
                            "n": c.n,
                            "first_line": c.first_line,
                            "byte_start": c.byte_start,
                            "byte_end": c.byte_end,
                            "records": c.records,
                            "state": "pending",
                            "attempts": 0,
                        }
                        for c in chunks[start : start + 1000]
                    ],
                )
            await connection.execute(
                update(verification_jobs)
                .where(verification_jobs.c.id == job.id)
                .values(
                    status="queued",
                    total=total,
                    input_sha256=sha256,
                    input_file=input_file,
                    jobs_dir=jobs_dir,
                    queued_at=now,
                )
            )

    # -- running -------------------------------------------------------------------------------------------

    def _takeable(self, now: float) -> Any:
        """No one holds it: pending (after its retry time, kept in `lease_until`), or its lease ran out."""
        return and_(
            verification_chunks.c.state.in_(("pending", "leased")),
            or_(verification_chunks.c.lease_until.is_(None), verification_chunks.c.lease_until < now),
        )

    async def takeable(self, jobs_dir: str, limit: int = 100) -> list[tuple[str, int]]:
        """Chunks of live jobs whose input is in `jobs_dir` that no one holds: (job id, n), oldest job
        first."""
        now = time.time()
        query = (
            select(verification_chunks.c.job_id, verification_chunks.c.n)
            .join(verification_jobs, verification_jobs.c.id == verification_chunks.c.job_id)
            .where(
                verification_jobs.c.status.in_(("queued", "running")),
                verification_jobs.c.jobs_dir == jobs_dir,
                self._takeable(now),
            )
            .order_by(verification_jobs.c.queued_at, verification_chunks.c.job_id, verification_chunks.c.n)
            .limit(limit)
        )
        async with self.engine.connect() as connection:
            return [(row.job_id, row.n) for row in await connection.execute(query)]

    async def lease(self, job_id: str, n: int, owner: str, lease_s: float) -> LeasedChunk | None:
        """Take the chunk if no one holds it and its job is live; the job starts running."""
        now = time.time()
        async with self.engine.execution_options(**WRITER).begin() as connection:
            job_row = (
                await connection.execute(
                    select(verification_jobs).where(verification_jobs.c.id == job_id).with_for_update()
                )
            ).first()
            if job_row is None or job_row.status not in ("queued", "running"):
                return None
            taken = await connection.execute(
                update(verification_chunks)
                .where(verification_chunks.c.job_id == job_id, verification_chunks.c.n == n, self._takeable(now))
                .values(
                    state="leased",
                    lease_owner=owner,
                    lease_until=now + lease_s,
                    attempts=verification_chunks.c.attempts + 1,
                )
            )
            if taken.rowcount != 1:
                return None
            if job_row.status == "queued":
                await connection.execute(
                    update(verification_jobs)
                    .where(verification_jobs.c.id == job_id)
                    .values(status="running", started_at=now)
                )
            row = row_dict(
                (
                    await connection.execute(
                        select(verification_chunks).where(
                            verification_chunks.c.job_id == job_id, verification_chunks.c.n == n
                        )
                    )
                ).one()
            )
        job = await self.get(job_id)
        assert job is not None
        positions = [(str(o), int(s)) for o, s in orjson.loads(row["log_positions"] or "[]")]
        return LeasedChunk(job, _chunk(row), row["attempts"], row["failures"], positions)

    async def renew(self, job_id: str, n: int, owner: str, lease_s: float) -> bool:
        """Still holding the chunk (and its job still live): the lease runs on."""
        async with self.engine.execution_options(**WRITER).begin() as connection:
            result = await connection.execute(
                update(verification_chunks)
                .where(
                    verification_chunks.c.job_id == job_id,
                    verification_chunks.c.n == n,
                    verification_chunks.c.lease_owner == owner,
                    verification_chunks.c.state == "leased",
                )
                .values(lease_until=time.time() + lease_s)
            )
            status = (
                await connection.execute(select(verification_jobs.c.status).where(verification_jobs.c.id == job_id))
            ).scalar()
        return result.rowcount == 1 and status in ("queued", "running")

    async def logging_at(self, leased: LeasedChunk, owner: str, origin: str, from_seq: int) -> bool:
        """Where this attempt's events go, added to the earlier attempts' before any is appended."""
        positions = [*leased.log_positions, (origin, from_seq)]
        async with self.engine.execution_options(**WRITER).begin() as connection:
            result = await connection.execute(
                update(verification_chunks)
                .where(
                    verification_chunks.c.job_id == leased.job.id,
                    verification_chunks.c.n == leased.chunk.n,
                    verification_chunks.c.lease_owner == owner,
                    verification_chunks.c.state == "leased",
                )
                .values(log_positions=orjson.dumps(positions).decode())
            )
        return result.rowcount == 1

    async def release(self, job_id: str, n: int, owner: str, retry_in_s: float = 0.0) -> None:
        """Give the chunk back (a backend down), to be tried again in `retry_in_s`; a chunk of a job that
        has ended is dropped."""
        async with self.engine.execution_options(**WRITER).begin() as connection:
            status = await _lock_job(connection, job_id)
            await connection.execute(
                update(verification_chunks)
                .where(
                    verification_chunks.c.job_id == job_id,
                    verification_chunks.c.n == n,
                    verification_chunks.c.lease_owner == owner,
                    verification_chunks.c.state == "leased",
                )
                .values(
                    state="dropped" if status in FINAL else "pending",
                    lease_owner=None,
                    lease_until=time.time() + retry_in_s if retry_in_s else None,
                )
            )

    async def failed(self, job_id: str, n: int, owner: str, release_in_s: float | None) -> int:
        """One more failure of the chunk; given back to be retried in `release_in_s`, or (None) left to its
        lease. The chunk's failures so far."""
        async with self.engine.execution_options(**WRITER).begin() as connection:
            status = await _lock_job(connection, job_id)
            values: dict[str, Any] = {"failures": verification_chunks.c.failures + 1}
            if release_in_s is not None:
                values.update(
                    state="dropped" if status in FINAL else "pending",
                    lease_owner=None,
                    lease_until=time.time() + release_in_s,
                )
            await connection.execute(
                update(verification_chunks)
                .where(
                    verification_chunks.c.job_id == job_id,
                    verification_chunks.c.n == n,
                    verification_chunks.c.lease_owner == owner,
                    verification_chunks.c.state == "leased",
                )
                .values(**values)
            )
            return int(
                (
                    await connection.execute(
                        select(verification_chunks.c.failures).where(
                            verification_chunks.c.job_id == job_id, verification_chunks.c.n == n
                        )
                    )
                ).scalar()
                or 0
            )

    async def finish_chunk(self, job_id: str, n: int, owner: str, errors: int) -> Job | None:
        """The chunk is done (its results are on disk, its events durable). Returns the job when this was
        its last chunk (the job is then completed); raises LookupError if the lease was lost."""
        now = time.time()
        async with self.engine.execution_options(**WRITER).begin() as connection:
            await _lock_job(connection, job_id)
            done = await connection.execute(
                update(verification_chunks)
                .where(
                    verification_chunks.c.job_id == job_id,
                    verification_chunks.c.n == n,
                    verification_chunks.c.lease_owner == owner,
                    verification_chunks.c.state == "leased",
                )
                .values(state="done", errors=errors, done_at=now, lease_until=None)
            )
            if done.rowcount != 1:
                raise LookupError(f"chunk {n} of job {job_id} is no longer held by {owner}")
            left = (
                await connection.execute(
                    select(func.count()).where(
                        verification_chunks.c.job_id == job_id, verification_chunks.c.state != "done"
                    )
                )
            ).scalar()
            if left:
                return None
            ended = await connection.execute(
                update(verification_jobs)
                .where(verification_jobs.c.id == job_id, verification_jobs.c.status.in_(("queued", "running")))
                .values(status="completed", finished_at=now, expires_at=now + self.results_s)
            )
        return await self.get(job_id) if ended.rowcount == 1 else None

    async def fail(self, job_id: str, reason: str) -> bool:
        return await self._end(job_id, "failed", reason)

    async def cancel(self, job_id: str) -> bool:
        return await self._end(job_id, "cancelled", None)

    async def _end(self, job_id: str, status: str, reason: str | None) -> bool:
        now = time.time()
        async with self.engine.execution_options(**WRITER).begin() as connection:
            await _lock_job(connection, job_id)
            result = await connection.execute(
                update(verification_jobs)
                .where(verification_jobs.c.id == job_id, verification_jobs.c.status.not_in(tuple(FINAL)))
                .values(status=status, reason=reason, finished_at=now, expires_at=now + self.results_s)
            )
            # A chunk being run keeps its lease: once its events are durable it commits its results.
            await connection.execute(
                update(verification_chunks)
                .where(verification_chunks.c.job_id == job_id, verification_chunks.c.state == "pending")
                .values(state="dropped")
            )
        return result.rowcount == 1

    async def progress(self, job_id: str) -> Progress:
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(
                    select(
                        func.coalesce(
                            func.sum(verification_chunks.c.records).filter(verification_chunks.c.state == "done"), 0
                        ),
                        func.coalesce(func.sum(verification_chunks.c.errors), 0),
                        func.count().filter(verification_chunks.c.state == "done"),
                        func.count(),
                    ).where(verification_chunks.c.job_id == job_id)
                )
            ).one()
        return Progress(int(row[0]), int(row[1]), int(row[2]), int(row[3]))

    async def done_chunks(self, job_id: str) -> list[int]:
        async with self.engine.connect() as connection:
            return [
                row.n
                for row in await connection.execute(
                    select(verification_chunks.c.n)
                    .where(verification_chunks.c.job_id == job_id, verification_chunks.c.state == "done")
                    .order_by(verification_chunks.c.n)
                )
            ]

    # -- retention -----------------------------------------------------------------------------------------

    async def ended_since(self, jobs_dir: str, since: float) -> list[str]:
        """Jobs in `jobs_dir` that ended after `since` (their input is to be deleted)."""
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                select(verification_jobs.c.id).where(
                    or_(verification_jobs.c.jobs_dir == jobs_dir, verification_jobs.c.jobs_dir.is_(None)),
                    verification_jobs.c.status.in_(tuple(FINAL)),
                    verification_jobs.c.finished_at >= since,
                )
            )
            return [row.id for row in rows]

    async def abandoned(self, before: float) -> list[str]:
        """Jobs still awaiting their input since before `before`."""
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                select(verification_jobs.c.id).where(
                    verification_jobs.c.status == "awaiting_input", verification_jobs.c.created_at < before
                )
            )
            return [row.id for row in rows]

    async def expired(self, jobs_dir: str, now: float | None = None) -> list[str]:
        """Jobs in `jobs_dir` past their results' retention (a job never uploaded has no directory entry:
        it expires wherever it is seen)."""
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                select(verification_jobs.c.id).where(
                    or_(verification_jobs.c.jobs_dir == jobs_dir, verification_jobs.c.jobs_dir.is_(None)),
                    verification_jobs.c.expires_at < (now or time.time()),
                )
            )
            return [row.id for row in rows]

    async def forget(self, job_id: str) -> None:
        """A job past its retention: its chunk rows go; the job row stays, so its id still answers."""
        async with self.engine.execution_options(**WRITER).begin() as connection:
            await _lock_job(connection, job_id)
            await connection.execute(delete(verification_chunks).where(verification_chunks.c.job_id == job_id))
            await connection.execute(
                update(verification_jobs)
                .where(verification_jobs.c.id == job_id)
                .values(expires_at=None, reason="results deleted after their retention")
            )
