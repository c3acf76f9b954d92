"""Running a job's chunks: each record through the same policy → connectors → decide path as
`POST /v1/verify`, one access-log event per record, results written once.

A chunk goes: lease → policy check → read its lines → verify each → note where its events will go →
append the events (only those an earlier attempt did not) → write its results → finish (conditional on
the lease). A worker killed anywhere in that leaves the chunk leased; the lease runs out and another
worker takes it over. Event ids are derived from (job, line), and the log positions of earlier attempts
are kept with the chunk, so the one taking over reads those stretches of the log and appends only the
events that are missing: every record has one event, whatever was killed when.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from gateway.audit.log import AccessLog
from gateway.audit.origin import log_directory
from gateway.audit.record import AccessRecord
from gateway.audit.segments import SegmentReader
from gateway.bulk.files import JobFiles
from gateway.bulk.records import (
    MAX_LINE_BYTES,
    InvalidRecord,
    JobSpec,
    Record,
    check_header,
    event_id,
    invalid_result,
    loose_ref,
    parse_record,
    result_of,
    write_error,
    write_result,
)
from gateway.bulk.store import JobStore, LeasedChunk
from gateway.connectors.base import TraceContext, unusable
from gateway.errors import Problem
from gateway.identity import decide
from gateway.policy.catalogue import EventOperation
from gateway.policy.enforce import authorise
from gateway.policy.model import PurposePolicy
from gateway.policy.store import PolicyStore

log = logging.getLogger(__name__)

OPERATION: EventOperation = "verify.bulk"
ABANDONED_S = 86400.0  # a job with no accepted input this long after its creation fails
MAX_FAILURES = 20  # a chunk failing this often (about an hour of backoff) fails its job
_LANES = 32  # records of a chunk in flight at once (remote connectors answer in parallel)


class Fetch(Protocol):
    async def fetch(self, nin: str, attributes: frozenset[str], context: TraceContext | None = None) -> Any: ...


@dataclass(frozen=True, slots=True)
class _Outcome:
    line: int
    ref: str | None
    result: dict[str, Any]
    event: AccessRecord
    reason: str | None = None  # set for an invalid record


class JobRefused(Exception):
    """The job can no longer run (its purpose withdrawn, made consent-based): it fails with this reason."""


class ChunkRunner:
    def __init__(
        self,
        store: JobStore,
        files: JobFiles,
        *,
        policies: PolicyStore,
        connectors: Fetch,
        subjects: Callable[[str], str],
        access_log: AccessLog,
        log_position: Callable[[], tuple[str, int] | None],
        log_root: Path,
        owner: str,
        lease_s: float,
    ) -> None:
        self.store = store
        self.files = files
        self.policies = policies
        self.connectors = connectors
        self.subjects = subjects
        self.access_log = access_log
        self.log_position = log_position
        self.log_root = log_root
        self.owner = owner
        self.lease_s = lease_s
        self._headers: dict[str, list[str]] = {}
        self.ran = 0  # chunks finished by this runner (tests and metrics)

    async def run(self, job_id: str, n: int) -> bool:
        """Run the chunk if it can be taken; whether it was finished here."""
        owner = f"{self.owner}/{uuid.uuid4().hex[:12]}"  # each attempt holds its own lease, even in one process
        leased = await self.store.lease(job_id, n, owner, self.lease_s)
        if leased is None:
            return False
        lost = asyncio.Event()
        attempt = _Attempt()
        keeper = asyncio.create_task(self._keep(job_id, n, owner, lost), name=f"bulk-lease-{job_id}-{n}")
        try:
            await self._run(leased, owner, lost, attempt)
        except JobRefused as exc:
            log.warning("bulk job %s stops: %s", job_id, exc)
            await self.store.fail(job_id, str(exc))
            self.files.delete_input(job_id)
            return False
        except _LeaseLost:
            if not attempt.appending:
                await self.store.release(job_id, n, owner)  # a cancelled job's chunk: dropped
            return False
        except asyncio.CancelledError:  # shutting down: the chunk goes back now rather than when its lease ends
            if not attempt.appending:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.store.release(job_id, n, owner))
            raise
        except Exception as exc:
            # A backend or the log unavailable: the chunk is tried again later. Once its events were handed
            # to the log, what became of them is settled within the write's timeout (an event whose wait
            # ran out is never written later), so the chunk is then left to its lease (at least four
            # timeouts) rather than given back: whoever takes it over reads a settled log.
            log.warning("bulk job %s chunk %d failed (failure %d): %s", job_id, n, leased.failures + 1, exc)
            failures = await self.store.failed(
                job_id, n, owner, release_in_s=None if attempt.appending else min(2.0 ** (leased.failures + 1), 300.0)
            )
            if failures >= MAX_FAILURES:
                await self.store.fail(job_id, f"chunk {n} failed {failures} times; the last: {exc}")
                self.files.delete_input(job_id)
            return False
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)  # a cancel of this task still propagates
        self.ran += 1
        return True

    async def _keep(self, job_id: str, n: int, owner: str, lost: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                held = await self.store.renew(job_id, n, owner, self.lease_s)
            except Exception as exc:
                log.warning("bulk lease renewal failed: %s", exc)
                continue
            if not held:
                lost.set()  # taken over, or the job cancelled: stop before the next step
                return

    def _policy(self, leased: LeasedChunk) -> PurposePolicy:
        job, spec = leased.job, leased.job.spec
        administration = self.policies.current.administrations.get(job.administration)
        try:
            policy = authorise(
                administration, spec.purpose, "verify", claims=spec.claims, predicates={p.name for p in spec.predicates}
            )
        except Problem as exc:
            raise JobRefused(f"the policy no longer allows this job: {exc.detail}") from None
        if policy.consent == "required":
            raise JobRefused("the purpose now requires a consent per person, which a bulk job cannot carry")
        return policy

    async def _header(self, job_id: str, input_file: str, spec: JobSpec) -> list[str]:
        header = self._headers.get(job_id)
        if header is None:
            first = await asyncio.to_thread(self.files.read_range, job_id, input_file, 0, MAX_LINE_BYTES + 2)
            header = check_header(first.split(b"\n", 1)[0], spec)
            if len(self._headers) > 64:
                self._headers.clear()
            self._headers[job_id] = header
        return header

    async def _run(self, leased: LeasedChunk, owner: str, lost: asyncio.Event, attempt: _Attempt) -> None:
        job, chunk, spec = leased.job, leased.chunk, leased.job.spec
        policy = self._policy(leased)
        try:
            if job.input_file is None:
                raise FileNotFoundError(job.id)
            raw = await asyncio.to_thread(
                self.files.read_range, job.id, job.input_file, chunk.byte_start, chunk.byte_end
            )
            header = await self._header(job.id, job.input_file, spec) if job.format == "csv" else None
        except FileNotFoundError:
            raise JobRefused("the job's input is gone") from None
        lines = raw.split(b"\n")
        if raw.endswith(b"\n"):
            lines.pop()
        if len(lines) != chunk.records:
            raise JobRefused(f"chunk {chunk.n} of the input does not hold the records it was cut with")
        outcomes = await self._verify_all(leased, policy, lines, header)
        _check(lost)

        if not await self.store.renew(job.id, chunk.n, owner, self.lease_s):
            raise _LeaseLost  # cancelled (or taken over) while verifying: nothing logged, nothing answered
        already = await asyncio.to_thread(self._logged_before, leased)
        if already:
            log.info(
                "bulk job %s chunk %d taken over: %d of its %d events were already logged",
                job.id,
                chunk.n,
                len(already),
                len(outcomes),
            )
        position = self.log_position()
        if position is not None and not await self.store.logging_at(leased, owner, *position):
            raise _LeaseLost
        _check(lost)
        missing = [o.event for o in outcomes if o.event.id not in already]
        attempt.appending = True
        await self.access_log.append_many(missing)
        # From here the events are durable: the chunk commits its results even if the job was cancelled
        # meanwhile, so every logged check has its answer.

        results = [write_result(job.format, o.ref or "", o.result, spec) for o in outcomes]
        errors = [write_error(job.format, o.line, o.ref, o.reason) for o in outcomes if o.reason is not None]
        await asyncio.to_thread(self.files.write_chunk, job.id, chunk.n, results, errors)
        try:
            ended = await self.store.finish_chunk(job.id, chunk.n, owner, len(errors))
        except LookupError:
            raise _LeaseLost from None
        if ended is not None:
            self.files.delete_input(job.id)  # it holds NINs: gone as soon as the job ends

    async def _verify_all(
        self, leased: LeasedChunk, policy: PurposePolicy, lines: Sequence[bytes], header: list[str] | None
    ) -> list[_Outcome]:
        """Every line, in `_LANES` lanes: remote connectors answer in parallel, while the embedded register
        (answering without suspending) costs no task per record. Each lane gives the loop back between
        records, so interactive requests served by this process wait at most one record's work."""
        spec = leased.job.spec
        needed = decide.needed_attributes(dict.fromkeys(spec.claims, ""), list(spec.predicates))
        outcomes: list[_Outcome | None] = [None] * len(lines)
        first = leased.chunk.first_line

        async def lane(start: int) -> None:
            for i in range(start, len(lines), _LANES):
                outcomes[i] = await self._verify(leased, policy, lines[i], first + i, header, needed)
                await asyncio.sleep(0)

        tasks = [asyncio.create_task(lane(start)) for start in range(min(_LANES, len(lines)))]
        try:
            await asyncio.gather(*tasks)
        except BaseException:  # a lane failed, or this task is cancelled: no lane outlives the chunk
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return [o for o in outcomes if o is not None]

    def _event(self, leased: LeasedChunk, policy: PurposePolicy, line: int) -> AccessRecord:
        job = leased.job
        return AccessRecord(
            id=event_id(job.id, line),
            operation=OPERATION,
            administration=job.administration,
            client_id=job.client_id,
            purpose=job.spec.purpose,
            legal_basis=policy.legal_basis,
            job_id=job.id,
        )

    async def _verify(
        self,
        leased: LeasedChunk,
        policy: PurposePolicy,
        raw: bytes,
        line: int,
        header: list[str] | None,
        needed: frozenset[str],
    ) -> _Outcome:
        spec, fmt = leased.job.spec, leased.job.format
        event = self._event(leased, policy, line)
        try:
            record = parse_record(raw, line, fmt, spec, header)
        except InvalidRecord as exc:
            event.finish(400)  # deny, invalid_request: the record could not be read, nobody was looked up
            return _Outcome(line, loose_ref(raw, fmt, header), invalid_result(spec), event, str(exc))
        event.subject_hash = self.subjects(record.nin)
        event.attributes_requested = sorted(record.claims)
        answer = await self._answer(record, spec, policy, needed, event)
        event.finish(200)
        return _Outcome(line, record.ref, result_of(answer, spec), event)

    async def _answer(
        self, record: Record, spec: JobSpec, policy: PurposePolicy, needed: frozenset[str], event: AccessRecord
    ) -> dict[str, Any]:
        person = await self.connectors.fetch(record.nin, needed, TraceContext(event.id.replace("-", "")))
        event.outcome = unusable(person)
        # As /v1/verify: an unknown or suspended person's stand-in is judged and masked, never answered.
        return decide.verify(
            None if event.outcome else person,
            record.claims,
            list(spec.predicates),
            today=spec.today,
            threshold=policy.fuzzy_threshold,
            claim_details=False,
            stand_in=person,
        )

    def _logged_before(self, leased: LeasedChunk) -> set[str]:
        """The ids of this chunk's events that earlier attempts appended (read from their logs)."""
        if not leased.log_positions:
            return set()
        wanted = {event_id(leased.job.id, leased.chunk.first_line + i) for i in range(leased.chunk.records)}
        job_marker = leased.job.id.encode()
        found: set[str] = set()
        for origin, from_seq in leased.log_positions:
            directory = log_directory(self.log_root, origin)
            if not directory.is_dir():  # an earlier attempt on a host whose logs are not here: leave it
                raise EarlierLogUnreadable(f"the log {origin} of an earlier attempt is not readable here")
            reader = SegmentReader(directory)
            seq = from_seq
            while batch := reader.read(seq, 4096):
                for entry_seq, payload in batch:
                    seq = entry_seq + 1
                    if job_marker in payload:
                        event = orjson.loads(payload)
                        if event.get("job_id") == leased.job.id and event.get("id") in wanted:
                            found.add(event["id"])
        return found


class EarlierLogUnreadable(Exception):
    """This chunk's earlier events went to a log this process cannot read: it cannot tell which are there."""


@dataclass
class _Attempt:
    appending: bool = False  # the chunk's events were handed to the log: their fate is the writer's


class _LeaseLost(Exception):
    """Another worker holds the chunk now, or its job was cancelled: this attempt stops, writing nothing."""


def _check(lost: asyncio.Event) -> None:
    if lost.is_set():
        raise _LeaseLost


# -- dispatch ------------------------------------------------------------------------------------------------

ChunkHandler = Callable[[str, int], Awaitable[bool]]


class ChunkQueue(Protocol):
    """How chunks reach the workers of this process: `submit` when a job is queued; the queue also finds
    chunks no one holds (a killed worker's) by itself."""

    async def start(self, handler: ChunkHandler) -> None: ...
    async def submit(self, job_id: str, chunks: Sequence[int]) -> None: ...
    async def close(self) -> None: ...


class LocalChunkQueue:
    """Without Redis: this process's workers take chunks straight from the database, woken at once when a
    job is queued here and every `poll_s` otherwise (for jobs queued by other processes, and chunks whose
    lease ran out)."""

    def __init__(self, store: JobStore, jobs_dir: str, concurrency: int, *, poll_s: float = 2.0) -> None:
        self.store = store
        self.jobs_dir = jobs_dir
        self.concurrency = concurrency
        self.poll_s = poll_s
        self._wake = asyncio.Event()
        self._work: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        self._pending: set[tuple[str, int]] = set()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, handler: ChunkHandler) -> None:
        if self.concurrency <= 0:
            return
        self._tasks = [asyncio.create_task(self._feed(), name="bulk-feed")] + [
            asyncio.create_task(self._work_loop(handler), name=f"bulk-worker-{i}") for i in range(self.concurrency)
        ]

    async def submit(self, job_id: str, chunks: Sequence[int]) -> None:
        self._wake.set()

    async def _feed(self) -> None:
        while True:
            try:
                if self._work.qsize() < self.concurrency:
                    for key in await self.store.takeable(self.jobs_dir, limit=self.concurrency * 4):
                        if key not in self._pending:
                            self._pending.add(key)
                            self._work.put_nowait(key)
            except Exception as exc:
                log.warning("bulk chunks could not be listed: %s", exc)
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s if self._work.empty() else 0.2)

    async def _work_loop(self, handler: ChunkHandler) -> None:
        while True:
            key = await self._work.get()
            try:
                await handler(*key)
            except Exception:
                log.exception("bulk chunk %s failed", key)
            finally:
                self._pending.discard(key)
            if self._work.empty():
                self._wake.set()

    async def close(self) -> None:
        await _stop(self._tasks)


async def _stop(tasks: list[asyncio.Task[Any]], within_s: float = 10.0) -> None:
    """Cancel the tasks and wait, a bounded time, for them to end (emptying the list)."""
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(list(tasks), timeout=within_s)
    tasks.clear()


class Retention:
    """Deletes what a job may no longer keep: its input once it ends, its results after their retention."""

    def __init__(self, store: JobStore, files: JobFiles, *, interval_s: float = 60.0) -> None:
        self.store = store
        self.files = files
        self.interval_s = interval_s
        self._since = 0.0
        self._task: asyncio.Task[None] | None = None

    async def sweep(self) -> None:
        now = time.time()
        for job_id in await self.store.ended_since(self.files.identity, self._since):
            await asyncio.to_thread(self.files.delete_input, job_id)
        self._since = now - 3600  # jobs that ended while this process was away are swept at its first pass
        for job_id in await self.store.expired(self.files.identity, now):
            await asyncio.to_thread(self.files.delete, job_id)
            await self.store.forget(job_id)
        for job_id in await self.store.abandoned(now - ABANDONED_S):
            await self.store.fail(job_id, "no input was uploaded within a day")
        # Uploads cut off by a killed process.
        await asyncio.to_thread(self.files.sweep_uploads, now - ABANDONED_S)

    def start(self) -> None:
        async def loop() -> None:
            while True:
                try:
                    await self.sweep()
                except Exception as exc:
                    log.warning("bulk retention sweep failed: %s", exc)
                await asyncio.sleep(self.interval_s)

        self._task = asyncio.create_task(loop(), name="bulk-retention")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class SaqChunkQueue:
    """With Redis: chunks are dispatched through a saq queue, so the workers of every process that sees the
    same jobs directory share them.

    saq brings the dispatch, the concurrency limit, heartbeats and the sweep of jobs whose worker died; the
    database's leases stay the truth about who runs a chunk (a duplicate delivery finds the chunk taken
    and does nothing). A periodic pass enqueues chunks that no one holds and saq does not know of (a
    Redis restarted empty, a lease that ran out), keyed by chunk so a chunk is queued once at a time."""

    def __init__(
        self,
        redis_url: str,
        name: str,
        store: JobStore,
        jobs_dir: str,
        concurrency: int,
        *,
        lease_s: float,
        poll_s: float = 2.0,
    ) -> None:
        import saq  # only with Redis configured

        self._saq = saq
        # One queue per jobs directory: a chunk goes only to workers that can read its input.
        self.queue = saq.Queue.from_url(redis_url, name=f"{name}:{jobs_dir}")
        self.store = store
        self.jobs_dir = jobs_dir
        self.concurrency = concurrency
        self.lease_s = lease_s
        self.poll_s = poll_s
        self._worker: Any = None
        self._tasks: list[asyncio.Task[Any]] = []

    async def start(self, handler: ChunkHandler) -> None:
        await self.queue.connect()
        lease_s = self.lease_s

        async def run_chunk(ctx: dict[str, Any], *, job_id: str, n: int) -> bool:
            job = ctx["job"]

            async def touch() -> None:  # saq's heartbeat: a live worker's chunk is never swept
                while True:
                    await asyncio.sleep(lease_s / 3)
                    with contextlib.suppress(Exception):
                        await job.update()

            toucher = asyncio.create_task(touch())
            try:
                return await handler(job_id, n)
            finally:
                toucher.cancel()

        if self.concurrency > 0:
            self._worker = self._saq.Worker(
                self.queue,
                functions=[("run_chunk", run_chunk)],
                concurrency=self.concurrency,
                timers={"schedule": 1, "worker_info": 10, "sweep": max(1, int(lease_s)), "abort": 1},
                dequeue_timeout=1.0,
            )
            self._worker.SIGNALS = []  # the server's own signal handling stays in charge
            self._tasks.append(asyncio.create_task(self._worker.start(), name="bulk-saq-worker"))
        self._tasks.append(asyncio.create_task(self._sweep(), name="bulk-saq-sweep"))

    async def submit(self, job_id: str, chunks: Sequence[int]) -> None:
        """Queued in the background: the upload's answer does not wait for thousands of Redis calls, and
        chunks not queued (Redis down) are found by the sweep."""
        task = asyncio.create_task(self._enqueue_all(job_id, chunks), name=f"bulk-enqueue-{job_id}")
        self._tasks.append(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        if task in self._tasks:
            self._tasks.remove(task)

    async def _enqueue_all(self, job_id: str, chunks: Sequence[int]) -> None:
        try:
            for n in chunks:
                await self._enqueue(job_id, n)
        except Exception as exc:
            log.warning("bulk job %s: chunks left to the sweep: %s", job_id, exc)

    async def _enqueue(self, job_id: str, n: int) -> None:
        await self.queue.enqueue(
            "run_chunk",
            job_id=job_id,
            n=n,
            key=f"{job_id}:{n}",
            timeout=0,
            heartbeat=max(1, int(self.lease_s)),
            retries=3,
            ttl=600,
        )

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                for job_id, n in await self.store.takeable(self.jobs_dir, limit=max(self.concurrency, 1) * 16):
                    await self._enqueue(job_id, n)
            except Exception as exc:
                log.warning("bulk chunks could not be swept into the queue: %s", exc)

    async def close(self) -> None:
        if self._worker is not None:
            with contextlib.suppress(Exception):
                await self._worker.stop()
        await _stop(self._tasks)
        with contextlib.suppress(Exception):
            await self.queue.disconnect()
