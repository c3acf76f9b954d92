"""The one writer of the access log (docs/architecture.md), with group commit.

Requests hand their record to `append` and wait. A single task takes everything that queued up while
the previous batch was being written and hands it to the store as one batch (one write and one sync of
the segment files), so under load many events share one sync, and when idle an event is written alone
at once. Each request learns its event's seq. A timer seals the chain with a signed checkpoint every
`seal_interval_s`; the store also seals every `seal_every` events, and `close` seals the tail.
`on_durable` is told of every durable batch (the query index's follower).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from gateway.audit.log import AccessLogUnavailable
from gateway.audit.record import AccessRecord
from gateway.metrics import Metrics

log = logging.getLogger(__name__)


class LogStore(Protocol):
    """What the writer needs of a store: the segment store, or the 1.0 SQL store."""

    async def append(self, events: Sequence[dict[str, Any]], settle: Callable[..., None] | None = None) -> Any: ...
    async def probe(self) -> None: ...
    async def seal(self, older_than_s: float = 0.0) -> bool: ...


_Item = tuple[dict[str, Any], asyncio.Future[int | None]]


def _expired(done: asyncio.Future[int | None]) -> bool:
    """The wait ran out before the writer took the event (a cancelled wait still commits its event)."""
    return done.done() and not done.cancelled() and done.exception() is not None


class DurableAccessLog:
    def __init__(
        self,
        store: LogStore,
        metrics: Metrics,
        *,
        max_batch: int = 512,
        max_queue: int = 10_000,
        write_timeout_s: float = 5.0,
        seal_interval_s: float = 60.0,
        on_durable: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self._on_durable = on_durable
        self._metrics = metrics
        self._max_batch = max_batch
        self._write_timeout_s = write_timeout_s
        self._seal_interval_s = seal_interval_s
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue(max_queue)  # None: stop
        self._tasks: list[asyncio.Task[None]] = []
        self._failing = False
        self._closed = False
        self._room = asyncio.Event()  # the writer took a batch: bulk appends may queue more

    @property
    def origin(self) -> str:
        """The log's origin (it changes once if the store begins a successor before the writer starts)."""
        return str(getattr(self.store, "origin", ""))

    async def start(self) -> None:
        try:  # start the store's writer (SQLite: its process) now rather than on the first request
            await self.store.probe()
        except Exception as exc:
            log.warning("access log not writable at start: %s", exc)  # /readyz says so until it is
            self._failing = True
        self._tasks = [
            asyncio.create_task(self._commit_loop(), name="access-log-writer"),
            asyncio.create_task(self._seal_loop(), name="access-log-sealer"),
        ]

    async def append(self, record: AccessRecord) -> int | None:
        """Queue the event and wait until it is durable; its seq in this log (None from a store that does
        not number its entries)."""
        if self._closed or not self._tasks:
            raise AccessLogUnavailable("the access log is not running")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int | None] = loop.create_future()
        try:
            self._queue.put_nowait((record.event(), done))
        except asyncio.QueueFull:
            raise AccessLogUnavailable("the access log is saturated") from None
        # The deadline is a bare timer that fails the wait, not `asyncio.timeout`: that context costs ~5x
        # more (~5 µs a request), and nothing here needs its cancellation bookkeeping. A request cancelled
        # while waiting cancels only its wait: the event stays queued and commits.
        deadline = loop.call_later(self._write_timeout_s, self._expire, done)
        try:
            return await done
        finally:
            deadline.cancel()

    async def append_many(self, records: Sequence[AccessRecord]) -> list[int | None]:
        """Many events (a bulk job's chunk), durable when this returns. They go to the writer a slice at a
        time and only while the queue is less than half full, so a job never takes the room interactive
        requests need (their `append` refuses a full queue); the writer batches slices from several
        chunks as it batches concurrent requests. An event whose wait ran out is never written later."""
        loop = asyncio.get_running_loop()
        seqs: list[int | None] = []
        room = max(1, self._queue.maxsize // 2)
        start = 0
        while start < len(records):
            if self._closed or not self._tasks or self._tasks[0].done():
                raise AccessLogUnavailable("the access log is not running")
            if self._queue.qsize() >= room:
                self._room.clear()
                try:  # set by the writer as it takes batches off the queue
                    await asyncio.wait_for(self._room.wait(), self._write_timeout_s)
                except TimeoutError:
                    raise AccessLogUnavailable("the access log is not taking events") from None
                continue
            size = min(self._max_batch, room - self._queue.qsize())
            waits: list[asyncio.Future[int | None]] = []
            for record in records[start : start + size]:
                done: asyncio.Future[int | None] = loop.create_future()
                self._queue.put_nowait((record.event(), done))
                waits.append(done)
            start += size
            deadline = loop.call_later(self._write_timeout_s, self._expire_all, waits)
            try:
                seqs += await asyncio.gather(*waits)
            finally:
                deadline.cancel()
        return seqs

    def _expire_all(self, waits: list[asyncio.Future[int | None]]) -> None:
        for done in waits:
            self._expire(done)

    def _expire(self, done: asyncio.Future[int | None]) -> None:
        if not done.done():
            self._failing = True
            done.set_exception(AccessLogUnavailable("the access log did not confirm the event in time"))

    async def _commit_loop(self) -> None:
        stopping = False
        while not stopping:
            item = await self._queue.get()
            batch: list[_Item] = []
            while True:
                if item is None:
                    stopping = True
                elif not _expired(item[1]):  # its caller was told it failed: it is not written later
                    batch.append(item)
                if stopping or len(batch) >= self._max_batch or self._queue.empty():
                    break
                item = self._queue.get_nowait()
            self._metrics.access_log_queue_depth.set(self._queue.qsize())
            self._room.set()
            if batch:
                await self._commit(batch)

    async def _commit(self, batch: list[_Item]) -> None:
        started = time.perf_counter()

        def settle(first_seq: int | None = None) -> None:
            """The batch is durable: its requests go on at once (this may run in the writer's callback)."""
            self._failing = False
            self._metrics.access_log_commit.observe(time.perf_counter() - started)
            for offset, (_, done) in enumerate(batch):
                if not done.done():
                    done.set_result(None if first_seq is None else first_seq + offset)
            if self._on_durable is not None:
                self._on_durable()

        try:
            await self.store.append([event for event, _ in batch], settle)
        except Exception as exc:
            if not self._failing:
                log.error("access log commit failed (%d events): %s", len(batch), exc)
            self._failing = True
            for _, done in batch:
                if not done.done():
                    done.set_exception(AccessLogUnavailable(str(exc)))
            return
        self._metrics.access_log_batch.observe(len(batch))

    async def _seal_loop(self) -> None:
        # Twice an interval, sealing what is unsealed once the last checkpoint is half an interval old: a
        # checkpoint at least every interval while the log grows, an entry provable about half an interval
        # after its answer (receipts), never more than two signatures an interval.
        while True:
            await asyncio.sleep(self._seal_interval_s / 2)
            try:
                await self.store.seal(older_than_s=self._seal_interval_s / 2 * 0.9)
            except Exception as exc:
                log.warning("access log checkpoint failed: %s", exc)

    async def ready(self) -> bool:
        """Ready when an append could commit now: after a failure, proven by taking the writers' lock."""
        if self._closed or not self._tasks or any(task.done() for task in self._tasks):
            return False
        if self._failing:
            await self.store.probe()
            self._failing = False
        return True

    async def close(self) -> None:
        """Commit what is queued, seal the tail, stop."""
        if self._closed:
            return
        self._closed = True
        if not self._tasks:  # never started (a start that failed before it): nothing to commit or seal
            return
        if self._tasks:
            commit_loop, seal_loop = self._tasks
            seal_loop.cancel()
            if not commit_loop.done():
                await self._queue.put(None)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(commit_loop, self._write_timeout_s * 2)
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        try:
            await self.store.seal()
        except Exception as exc:
            log.warning("access log final checkpoint failed: %s", exc)
