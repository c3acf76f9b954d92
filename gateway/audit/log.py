"""The access-log writer boundary, and an in-memory stand-in for tests that watch events directly."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

from gateway.audit.record import AccessRecord


class AccessLogUnavailable(Exception):
    """The log could not durably record an event; nothing may be released."""


class AccessLog(Protocol):
    """The single writer of docs/architecture.md: `append` returns only once the event is durable."""

    async def start(self) -> None: ...

    @property
    def origin(self) -> str: ...

    async def append(self, record: AccessRecord) -> int | None: ...

    async def append_many(self, records: Sequence[AccessRecord]) -> list[int | None]: ...

    async def ready(self) -> bool: ...

    async def close(self) -> None: ...


class StubAccessLog:
    """In memory only, not durable, not chained: for tests that inspect events as they are appended and
    inject a failing log. The gateway itself always runs `DurableAccessLog`."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.events: deque[dict[str, Any]] = deque(maxlen=capacity)
        self.failing = False
        self.origin = "stub"
        self._next_seq = 0

    async def start(self) -> None:
        return None

    async def append(self, record: AccessRecord) -> int | None:
        if self.failing:
            raise AccessLogUnavailable("access log is failing")
        self.events.append(record.event())
        self._next_seq += 1
        return self._next_seq - 1

    async def append_many(self, records: Sequence[AccessRecord]) -> list[int | None]:
        return [await self.append(record) for record in records]

    async def ready(self) -> bool:
        return not self.failing

    async def close(self) -> None:
        return None
