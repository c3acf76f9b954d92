"""What every remote connector goes through: a concurrency bulkhead, a circuit breaker, bounded retries
with jitter on idempotent reads, and timeouts, so a slow or dead backend gives a timely 503, never a
pile-up. Written here (a few dozen lines) rather than pulled in: the libraries that offer it
(tenacity, aiobreaker, purgatory) each cover one piece and none shares our error mapping.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx
from pydantic import Field

from gateway.connectors.base import BackendError, BackendUnavailable, ConnectorSettings, TraceContext

_T = TypeVar("_T")


@dataclass(frozen=True)
class ResiliencePolicy:
    connect_timeout_s: float = 1.0
    read_timeout_s: float = 2.0
    retries: int = 2  # extra attempts after the first, on transport failures and 5xx
    backoff_s: float = 0.05  # base of exponential backoff, full jitter
    max_concurrency: int = 32  # bulkhead
    queue_timeout_s: float = 0.5  # how long a call waits for a bulkhead slot
    failure_threshold: int = 5  # consecutive failures that open the breaker
    open_s: float = 10.0  # how long the breaker stays open before one trial call

    @property
    def deadline_s(self) -> float:
        """The longest one call can take, retries and waits included."""
        attempt = self.connect_timeout_s + self.read_timeout_s
        backoff: float = self.retries * self.backoff_s * 2**self.retries
        return self.queue_timeout_s + (self.retries + 1) * attempt + backoff


class CircuitBreaker:
    """Closed → open after `failure_threshold` consecutive failures → half-open after `open_s`: one trial
    call; success closes, failure reopens."""

    def __init__(self, failure_threshold: int, open_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._threshold = failure_threshold
        self._open_s = open_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial = False

    STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}  # as the metric reports them

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half_open" if self._clock() - self._opened_at >= self._open_s else "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._trial:
            self._trial = True
            return True
        return False

    def success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._trial = False

    def failure(self) -> None:
        self._failures += 1
        self._trial = False
        if self._opened_at is not None or self._failures >= self._threshold:
            self._opened_at = self._clock()


def traceparent(trace: TraceContext | None) -> dict[str, str]:
    if trace is None:
        return {}
    return {"traceparent": f"00-{trace.trace_id}-{secrets.token_hex(8)}-{'01' if trace.sampled else '00'}"}


class Resilient:
    """Runs one connector's HTTP calls under its policy. `call` takes a function that performs one
    attempt with the shared client and returns the parsed answer (raising BackendError if malformed)."""

    def __init__(self, name: str, client: httpx.AsyncClient, policy: ResiliencePolicy) -> None:
        self.name = name
        self.client = client
        self.policy = policy
        self.breaker = CircuitBreaker(policy.failure_threshold, policy.open_s)
        self._slots = asyncio.Semaphore(policy.max_concurrency)
        self.timeout = httpx.Timeout(policy.read_timeout_s, connect=policy.connect_timeout_s)

    async def call(
        self,
        attempt: Callable[[httpx.AsyncClient, httpx.Timeout], Awaitable[httpx.Response]],
        parse: Callable[[httpx.Response], _T],
    ) -> _T:
        if not self.breaker.allow():
            raise BackendUnavailable(self.name, "circuit open")
        try:
            async with asyncio.timeout(self.policy.queue_timeout_s):
                await self._slots.acquire()
        except TimeoutError:
            raise BackendUnavailable(self.name, "too many calls in flight") from None
        try:
            result = await self._attempts(attempt, parse)
        except (BackendUnavailable, BackendError):  # the backend failed: the breaker counts it
            self.breaker.failure()
            raise
        finally:
            self._slots.release()
        self.breaker.success()
        return result

    async def _attempts(
        self,
        attempt: Callable[[httpx.AsyncClient, httpx.Timeout], Awaitable[httpx.Response]],
        parse: Callable[[httpx.Response], _T],
    ) -> _T:
        why = "no attempt"
        for number in range(self.policy.retries + 1):
            if number:
                await asyncio.sleep(random.uniform(0, self.policy.backoff_s * 2**number))  # noqa: S311
            try:
                response = await attempt(self.client, self.timeout)
            except httpx.TimeoutException:
                why = "timed out"
                continue
            except httpx.TransportError as exc:
                why = f"unreachable: {type(exc).__name__}"
                continue
            if response.status_code >= 500 or response.status_code == 429:
                why = f"status {response.status_code}"
                continue
            return parse(response)
        raise BackendUnavailable(self.name, why)


class RemoteConnector:
    """What every remote connector shares: its resilient client, whose breaker is its health (and a
    metric), and nothing of its own to close (the HTTP client belongs to the gateway)."""

    _http: Resilient

    @property
    def breaker(self) -> CircuitBreaker:
        return self._http.breaker

    async def health(self) -> bool:
        return self._http.breaker.state != "open"

    async def close(self) -> None:
        return None


class RemoteSettings(ConnectorSettings):
    """The resilience settings every remote connector's entry takes (docs/connectors.md)."""

    connect_timeout_s: float = Field(1.0, gt=0, le=30)
    read_timeout_s: float = Field(2.0, gt=0, le=60)
    retries: int = Field(2, ge=0, le=5)
    max_concurrency: int = Field(32, ge=1, le=1000)
    failure_threshold: int = Field(5, ge=1)
    open_s: float = Field(10.0, gt=0)

    def policy(self) -> ResiliencePolicy:
        return ResiliencePolicy(
            connect_timeout_s=self.connect_timeout_s,
            read_timeout_s=self.read_timeout_s,
            retries=self.retries,
            max_concurrency=self.max_concurrency,
            failure_threshold=self.failure_threshold,
            open_s=self.open_s,
        )
