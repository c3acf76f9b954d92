"""Counted refusals (docs/contract.md §8): requests without a valid token that the per-source limit refuses are
not logged one by one, or a flood of them would cost one durable write each. They are counted instead:
one event per source address and second (`operation` `unauthenticated`, `decision` `deny`, `reason`
`rate_limited`, `count`), whose id each refusal in that second answers with.

Each counting event goes to the one access-log writer like any other record, as soon as its second is
over; the refusals themselves are answered at once (they release nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime

from gateway.audit.log import AccessLog
from gateway.audit.record import AccessRecord
from gateway.policy.catalogue import UNAUTHENTICATED

log = logging.getLogger(__name__)

OVERFLOW_SOURCE = "other"  # sources beyond `max_sources` open at once share one counting event a second


class RefusalTally:
    def __init__(self, access_log: AccessLog, *, max_sources: int = 256, flush_interval_s: float = 0.25) -> None:
        self._log = access_log
        self._max_sources = max_sources
        self._flush_interval_s = flush_interval_s
        self._open: dict[tuple[str, int], AccessRecord] = {}
        self._task: asyncio.Task[None] | None = None
        self.lost = 0  # counting events the log refused (also logged as a warning)

    def count(self, source: str, now: float | None = None) -> str:
        """Count one refusal from `source`; the id of the event that will carry it."""
        second = int(time.time() if now is None else now)
        key = (source, second)
        record = self._open.get(key)
        if record is None:
            if len(self._open) >= self._max_sources:
                key = (OVERFLOW_SOURCE, second)
                record = self._open.get(key)
            if record is None:
                record = self._open[key] = AccessRecord(
                    time=datetime.fromtimestamp(second, UTC),
                    operation=UNAUTHENTICATED,
                    reason="rate_limited",
                    source=key[0],
                    count=0,
                )
        record.count = (record.count or 0) + 1
        return record.id

    def pending(self) -> int:
        return len(self._open)

    async def flush(self, now: float | None = None) -> int:
        """Append the events of every second that is over (all of them when `now` is infinite)."""
        second = int(time.time() if now is None else min(now, 2**62))
        done = [key for key in self._open if key[1] < second]
        records = [self._open.pop(key) for key in done]
        for record in records:
            record.finish(429)
            record.latency_ms = 0.0
        results = await asyncio.gather(*(self._log.append(r) for r in records), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                self.lost += 1
                log.warning("a counting event for refused requests could not be logged: %s", result)
        return len(records)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval_s)
            await self.flush()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="refusal-tally")

    async def close(self) -> None:
        """Stop the timer and log every open count, the current second's included."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush(float("inf"))
