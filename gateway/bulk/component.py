"""Bulk verification jobs, built from settings: their store and files, the queue that hands chunks to
this process's workers (saq over Redis when there is one, in process otherwise) and retention."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.log import AccessLog
from gateway.bulk.files import JobFiles
from gateway.bulk.runner import ChunkQueue, ChunkRunner, Fetch, LocalChunkQueue, Retention, SaqChunkQueue
from gateway.bulk.store import JobStore
from gateway.lifecycle import Component, close_each
from gateway.policy.store import PolicyStore
from gateway.settings import Settings


@dataclass
class Bulk:
    jobs: JobStore
    files: JobFiles
    queue: ChunkQueue
    component: Component


def build_bulk(
    settings: Settings,
    engine: AsyncEngine,
    *,
    policies: PolicyStore,
    connectors: Fetch,
    subjects: Callable[[str], str],
    access_log: AccessLog,
    log_position: Callable[[], tuple[str, int] | None],
    owner: str,
) -> Bulk:
    jobs = JobStore(engine, results_days=settings.bulk_results_days)
    files = JobFiles(settings.jobs_path)
    runner = ChunkRunner(
        jobs,
        files,
        policies=policies,
        connectors=connectors,
        subjects=subjects,
        access_log=access_log,
        log_position=log_position,
        log_root=settings.log_dir,
        owner=owner,
        lease_s=settings.bulk_lease_s,
    )
    queue: ChunkQueue = (
        SaqChunkQueue(
            settings.redis_url,
            f"{settings.redis_key_prefix}bulk",
            jobs,
            files.identity,
            settings.bulk_workers,
            lease_s=settings.bulk_lease_s,
        )
        if settings.redis_url
        else LocalChunkQueue(jobs, files.identity, settings.bulk_workers)
    )
    retention = Retention(jobs, files)

    async def start() -> None:
        await queue.start(runner.run)
        retention.start()

    async def close() -> None:
        await close_each("bulk jobs", queue.close, retention.close)

    return Bulk(jobs, files, queue, Component("bulk jobs", start, close))
