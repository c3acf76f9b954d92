"""The one writer's waiting rules, over a store whose answers the test holds back: a request waits for
its event's commit at most `write_timeout_s`, and a request that stops waiting leaves its event queued."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from gateway.audit.log import AccessLogUnavailable
from gateway.audit.record import AccessRecord
from gateway.audit.writer import DurableAccessLog
from gateway.metrics import Metrics


class HeldStore:
    """Commits a batch only when the test opens the gate."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.committed: list[dict[str, Any]] = []
        self.probes = 0
        self.seals = 0

    async def probe(self) -> None:
        self.probes += 1

    async def append(self, events: list[dict[str, Any]], settle: Callable[[], None] | None = None) -> None:
        await self.gate.wait()
        self.committed += events
        if settle is not None:
            settle()

    async def seal(self, older_than_s: float = 0.0) -> bool:
        self.seals += 1
        return False


def record(n: int) -> AccessRecord:
    rec = AccessRecord(operation="verify", administration="ceni", client_id="ceni-app", subject_hash=f"{n:064x}")
    rec.finish(200)
    return rec


@pytest.mark.slow
async def test_a_commit_that_does_not_come_in_time_fails_the_wait_and_readiness_asks_the_store() -> None:
    store = HeldStore()
    log = DurableAccessLog(store, Metrics(), write_timeout_s=0.2, seal_interval_s=3600)  # type: ignore[arg-type]
    await log.start()
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(AccessLogUnavailable, match="in time"):  # not wait_for's TimeoutError
            await asyncio.wait_for(log.append(record(1)), 3.0)
        assert 0.15 < asyncio.get_running_loop().time() - started < 2.0
        probes = store.probes
        assert await log.ready() is True and store.probes == probes + 1  # failing: proven by a probe
        store.gate.set()
        await log.append(record(2))  # the writer recovered: the next wait succeeds
        assert [e["subject_hash"] for e in store.committed] == [f"{1:064x}", f"{2:064x}"]
        assert await log.ready() is True and store.probes == probes + 1  # healthy again: no probe needed
    finally:
        store.gate.set()
        await log.close()


async def test_a_request_that_stops_waiting_leaves_its_event_to_commit() -> None:
    store = HeldStore()
    log = DurableAccessLog(store, Metrics(), write_timeout_s=5.0, seal_interval_s=3600)  # type: ignore[arg-type]
    await log.start()
    try:
        waiting = asyncio.create_task(log.append(record(1)))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        store.gate.set()
        await log.append(record(2))
        assert [e["subject_hash"] for e in store.committed] == [f"{1:064x}", f"{2:064x}"]
        assert await log.ready() is True and store.probes == 1  # the cancelled wait marked nothing failing
    finally:
        await log.close()


async def test_a_bulk_append_never_takes_the_room_requests_need() -> None:
    store = HeldStore()
    log = DurableAccessLog(store, Metrics(), max_batch=8, max_queue=40, seal_interval_s=3600)  # type: ignore[arg-type]
    await log.start()
    bulk = asyncio.create_task(log.append_many([record(n) for n in range(200)]))
    await asyncio.sleep(0.05)  # the writer is stuck on its first batch; the bulk append waits for room
    assert log._queue.qsize() <= 20
    requests = [asyncio.create_task(log.append(record(1000 + n))) for n in range(15)]
    await asyncio.sleep(0)
    assert not any(task.done() for task in requests)  # queued, not refused as saturated
    store.gate.set()
    seqs = await bulk
    await asyncio.gather(*requests)
    assert len(seqs) == 200 and len(store.committed) == 215
    await log.close()


@pytest.mark.slow
async def test_an_event_whose_wait_ran_out_is_never_written_later() -> None:
    store = HeldStore()
    log = DurableAccessLog(store, Metrics(), write_timeout_s=0.2, seal_interval_s=3600)  # type: ignore[arg-type]
    await log.start()
    first = asyncio.create_task(log.append(record(1)))  # taken by the writer at once, then stuck in the store
    await asyncio.sleep(0.05)
    second = asyncio.create_task(log.append(record(2)))  # waits in the queue behind it
    for waiting in (first, second):
        with pytest.raises(AccessLogUnavailable):
            await waiting
    store.gate.set()
    await log.close()
    assert [e["subject_hash"] for e in store.committed] == [f"{1:064x}"]  # the one already being written


async def test_a_writer_that_never_started_closes_without_touching_its_log() -> None:
    """Its start never ran (an earlier step of the log's start failed): closing it seals nothing, so a log
    that was never set up is not created by the close."""
    store = HeldStore()
    log = DurableAccessLog(store, Metrics(), seal_interval_s=3600)  # type: ignore[arg-type]
    await log.close()
    assert store.seals == 0 and store.probes == 0


async def test_a_started_writer_seals_its_tail_when_it_closes() -> None:
    store = HeldStore()
    log = DurableAccessLog(store, Metrics(), seal_interval_s=3600)  # type: ignore[arg-type]
    await log.start()
    await log.close()
    assert store.seals == 1
