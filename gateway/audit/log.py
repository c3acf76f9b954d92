"""The access-log writer boundary, and the stand-in used until the durable log is wired."""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

from gateway.audit.record import AccessRecord


class AccessLogUnavailable(Exception):
    """The log could not durably record an event; nothing may be released."""


class AccessLog(Protocol):
    """The single writer of ARCHITECTURE.md: `append` returns only once the event is durable."""

    async def append(self, record: AccessRecord) -> None: ...

    async def ready(self) -> bool: ...

    async def close(self) -> None: ...


class StubAccessLog:
    """STUB: keeps the most recent events in memory only. Not durable, not chained.

    It holds the writer's place so every stage already hands its record to one writer; the durable,
    hash-chained store replaces it without touching any caller.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self.events: deque[dict[str, Any]] = deque(maxlen=capacity)
        self.failing = False

    async def append(self, record: AccessRecord) -> None:
        if self.failing:
            raise AccessLogUnavailable("access log is failing")
        self.events.append(record.event())

    async def ready(self) -> bool:
        return not self.failing

    async def close(self) -> None:
        return None
