"""A chunk run twice logs each record once: the runner over a real segment log, a real embedded register
and the job store on SQLite, with an attempt cut short between its events and its results."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from gateway.audit.log import AccessLogUnavailable
from gateway.audit.origin import log_directory
from gateway.audit.record import AccessRecord
from gateway.audit.segment_store import SegmentStore
from gateway.audit.segments import SegmentReader
from gateway.audit.writer import DurableAccessLog
from gateway.bulk.files import JobFiles
from gateway.bulk.records import JobSpec, event_id
from gateway.bulk.runner import MAX_FAILURES, ChunkRunner, Retention
from gateway.bulk.store import JobStore
from gateway.bulk.upload import InputSplitter
from gateway.connectors.base import BackendUnavailable
from gateway.connectors.embedded import EmbeddedRegister
from gateway.connectors.population import population, seed_register
from gateway.identity.decide import Predicate
from gateway.identity.pseudonyms import SubjectHasher
from gateway.metrics import Metrics
from gateway.policy.loader import load_policies
from gateway.policy.store import PolicyStore
from gateway.storage.database import create_engine, database_url, migrate

ORIGIN = "gw.test/access-log/bulk"
PEOPLE = list(population(200, 5))
SPEC = JobSpec("roll_revision", ("family_name",), (Predicate("alive", None, None),), date(2026, 12, 1))
RECORDS = 50


class Flaky:
    """The access log, failing every append after the first `through`: an attempt cut short mid-chunk."""

    def __init__(self, log: DurableAccessLog, through: int) -> None:
        self.log, self.through, self.origin = log, through, log.origin

    async def append(self, record: AccessRecord) -> int | None:
        if self.through <= 0:
            raise AccessLogUnavailable("cut short")
        self.through -= 1
        return await self.log.append(record)

    async def append_many(self, records: list[AccessRecord]) -> list[int | None]:
        return [await self.append(record) for record in records]


class Setup:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.log_root = tmp / "log"
        self.store_dir = log_directory(self.log_root, ORIGIN)

    async def __aenter__(self) -> Setup:
        policies = self.tmp / "policies"
        policies.mkdir()
        (policies / "electoral.yaml").write_text(
            yaml.safe_dump(
                {
                    "id": "electoral",
                    "name": "CENI",
                    "purposes": {
                        "roll_revision": {
                            "legal_basis": "Loi électorale",
                            "consent": "not_required",
                            "operations": ["verify"],
                            "claims": ["family_name"],
                            "predicates": ["alive"],
                        }
                    },
                }
            )
        )
        self.policies = PolicyStore(load_policies(policies))
        seed_register(self.tmp / "register.db", 200, 5)
        self.register = EmbeddedRegister(self.tmp / "register.db")
        self.engine = create_engine(database_url(None, self.tmp))
        await migrate(self.engine)
        self.jobs = JobStore(self.engine)
        self.files = JobFiles(self.tmp / "jobs")
        self.segments = SegmentStore(self.store_dir, origin=ORIGIN)
        self.log = DurableAccessLog(self.segments, Metrics(), max_batch=16)  # type: ignore[arg-type]
        await self.log.start()
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.log.close()
        await self.segments.close()
        await self.register.close()
        await self.engine.dispose()

    def runner(self, owner: str, access_log: Any, lease_s: float = 30) -> ChunkRunner:
        return ChunkRunner(
            self.jobs,
            self.files,
            policies=self.policies,
            connectors=self.register,
            subjects=SubjectHasher(b"k" * 32),
            access_log=access_log,
            log_position=lambda: (ORIGIN, self.segments.next_seq),
            log_root=self.log_root,
            owner=owner,
            lease_s=lease_s,
        )

    async def job(self, spec: JobSpec = SPEC, key: str = "k") -> str:
        job, _ = await self.jobs.create(
            job_id=f"00000000-0000-4000-8000-{key.encode().hex():0>12}",
            administration="electoral",
            client_id="ceni-app",
            idempotency_key=key,
            request_hash="h",
            spec=spec,
            fmt="csv",
            declared_records=None,
        )
        body = b"ref,nin,family_name\n" + b"".join(
            b"r%d,%s,%s\n" % (i, PEOPLE[i]["nin"].encode(), PEOPLE[i]["family_name"].encode()) for i in range(RECORDS)
        )
        splitter = InputSplitter("csv", spec, 1000, 1000)
        splitter.feed(body)
        chunks = splitter.finish()
        upload = self.files.start_upload(job.id)
        upload.write(body)
        name = upload.keep()
        await self.jobs.accept_input(
            job,
            total=RECORDS,
            sha256=splitter.sha256,
            input_file=name,
            chunks=chunks,
            jobs_dir=self.files.identity,
            daily_limit=None,
        )
        return job.id

    def logged(self, job_id: str) -> list[str]:
        return [
            orjson.loads(payload)["id"]
            for _, payload in SegmentReader(self.store_dir).read(0, 10_000)
            if orjson.loads(payload).get("job_id") == job_id
        ]


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    async with Setup(tmp_path) as ready:
        yield ready


@pytest.mark.slow
@pytest.mark.parametrize("through", [0, 20, RECORDS])
async def test_an_attempt_cut_short_is_finished_by_the_next_with_each_event_once(setup: Setup, through: int) -> None:
    job_id = await setup.job()
    first = setup.runner("first", Flaky(setup.log, through), lease_s=0.3)
    if through == RECORDS:  # every event durable, then the results cannot be written: the worker stops there
        original = setup.files.write_chunk
        setup.files.write_chunk = lambda *a: (_ for _ in ()).throw(OSError("disk gone"))  # type: ignore[method-assign]
    assert await first.run(job_id, 0) is False
    if through == RECORDS:
        setup.files.write_chunk = original  # type: ignore[method-assign]
    await asyncio.sleep(0.05)
    assert len(setup.logged(job_id)) == through
    assert (await setup.jobs.progress(job_id)).chunks_done == 0
    second = setup.runner("second", setup.log)
    # Its events were handed to the log: the chunk is not given back, but left to its lease.
    assert await second.run(job_id, 0) is False
    await asyncio.sleep(0.35)

    assert await second.run(job_id, 0) is True
    logged = setup.logged(job_id)
    assert sorted(logged) == sorted(event_id(job_id, line) for line in range(2, RECORDS + 2))
    assert len(logged) == RECORDS  # the second attempt appended only what the first had not
    job = await setup.jobs.get(job_id)
    assert job is not None and job.status == "completed"
    assert not list(setup.files.directory(job_id).glob("input*"))


async def test_a_purpose_withdrawn_fails_the_job_with_its_reason(setup: Setup) -> None:
    job_id = await setup.job()
    policies = setup.tmp / "policies" / "electoral.yaml"
    policies.write_text(yaml.safe_dump({"id": "electoral", "name": "CENI", "purposes": {}}))
    setup.policies.replace(load_policies(setup.tmp / "policies"))
    assert await setup.runner("w", setup.log).run(job_id, 0) is False
    job = await setup.jobs.get(job_id)
    assert job is not None and job.status == "failed" and "no such purpose" in (job.reason or "")
    assert setup.logged(job_id) == []


@pytest.mark.slow
async def test_results_are_deleted_after_their_retention_and_the_input_when_the_job_ends(setup: Setup) -> None:
    job_id = await setup.job()
    setup.jobs.results_s = 0.2
    assert await setup.runner("w", setup.log).run(job_id, 0) is True
    directory = setup.files.directory(job_id)
    assert not list(directory.glob("input*")) and list(directory.glob("results-*"))
    retention = Retention(setup.jobs, setup.files)
    await retention.sweep()
    assert list(directory.glob("results-*"))  # still within its retention
    await asyncio.sleep(0.3)
    await retention.sweep()
    assert not directory.exists()
    job = await setup.jobs.get(job_id)
    assert job is not None and job.expires_at is None and "retention" in (job.reason or "")
    assert await setup.jobs.expired(setup.files.identity) == []


async def test_an_input_left_by_a_job_that_ended_elsewhere_is_swept(setup: Setup) -> None:
    job_id = await setup.job()
    assert await setup.jobs.cancel(job_id)  # as another process would: the row ends, the file stays here
    assert list(setup.files.directory(job_id).glob("input*"))
    await Retention(setup.jobs, setup.files).sweep()
    assert not list(setup.files.directory(job_id).glob("input*"))


async def test_a_job_never_uploaded_fails_after_a_day_and_a_dead_upload_is_swept(setup: Setup) -> None:
    job, _ = await setup.jobs.create(
        job_id="00000000-0000-4000-8000-000000000002",
        administration="electoral",
        client_id="ceni-app",
        idempotency_key="never",
        request_hash="h",
        spec=SPEC,
        fmt="csv",
        declared_records=None,
    )
    upload = setup.files.start_upload(job.id)  # and its process dies mid-stream
    upload.write(b"ref,nin,family_name\n")
    stale = upload.partial
    os.utime(stale, (1_000_000, 1_000_000))
    async with setup.engine.begin() as connection:  # created two days ago
        await connection.exec_driver_sql("UPDATE verification_jobs SET created_at = created_at - 172800")
    await Retention(setup.jobs, setup.files).sweep()
    assert not stale.exists()
    failed = await setup.jobs.get(job.id)
    assert failed is not None and failed.status == "failed" and "within a day" in (failed.reason or "")


@pytest.mark.slow
async def test_a_chunk_that_keeps_failing_fails_its_job(setup: Setup) -> None:
    job_id = await setup.job()
    runner = setup.runner("w", Flaky(setup.log, 0), lease_s=0.05)  # the log refuses every event
    for attempt in range(1, MAX_FAILURES + 1):
        await asyncio.sleep(0.06)  # its lease runs out (its events' fate was the writer's)
        assert await runner.run(job_id, 0) is False
        job = await setup.jobs.get(job_id)
        assert job is not None and job.status == ("failed" if attempt == MAX_FAILURES else "running"), attempt
    assert f"failed {MAX_FAILURES} times" in (job.reason or "")
    assert not list(setup.files.directory(job_id).glob("input*"))


class DownRegister:
    async def fetch(self, nin: str, attributes: frozenset[str], context: Any = None) -> Any:
        raise BackendUnavailable("register", "connection refused")


@pytest.mark.slow
async def test_a_backend_down_gives_the_chunk_back_to_be_retried_later_with_nothing_logged(setup: Setup) -> None:
    job_id = await setup.job()
    runner = setup.runner("w", setup.log)
    runner.connectors = DownRegister()
    assert await runner.run(job_id, 0) is False
    assert setup.logged(job_id) == []
    assert await setup.jobs.takeable(setup.files.identity) == []  # not before its retry time (2 s)
    await asyncio.sleep(2.1)
    assert await setup.jobs.takeable(setup.files.identity) == [(job_id, 0)]
    runner.connectors = setup.register
    assert await runner.run(job_id, 0) is True and len(setup.logged(job_id)) == RECORDS


async def test_every_record_is_judged_as_of_the_jobs_one_date(setup: Setup) -> None:
    (setup.tmp / "policies" / "electoral.yaml").write_text(
        yaml.safe_dump(
            {
                "id": "electoral",
                "name": "CENI",
                "purposes": {
                    "roll_revision": {
                        "legal_basis": "Loi électorale",
                        "consent": "not_required",
                        "operations": ["verify"],
                        "claims": ["family_name"],
                        "predicates": ["alive", "age_at_least"],
                    }
                },
            }
        )
    )
    setup.policies.replace(load_policies(setup.tmp / "policies"))
    adults: dict[str, list[str]] = {}
    for key, today in (("old", date(1800, 1, 1)), ("new", date(2200, 1, 1))):
        spec = JobSpec("roll_revision", ("family_name",), (Predicate("age_at_least", 18, None),), today)
        job_id = await setup.job(spec, key)
        assert await setup.runner("w", setup.log).run(job_id, 0) is True
        chunks = await setup.jobs.done_chunks(job_id)
        text = b"".join([piece async for piece in setup.files.stream(job_id, "results", chunks, b"")]).decode()
        adults[key] = [line.split(",")[3] for line in text.splitlines()]
    dated = [i for i in range(RECORDS) if PEOPLE[i].get("birth_date")]
    assert dated and all(adults["old"][i] == "false" for i in dated)  # nobody is 18 in 1800
    assert all(adults["new"][i] == "true" for i in dated)  # everybody is in 2200
