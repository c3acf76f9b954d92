"""Rate limits: which windows apply to whom, the shared backend with its local fallback, and the
`RateLimit-Policy` / `RateLimit` fields (IETF httpapi draft syntax). Admission (`admission.py`) applies
them to every request of a logged path before it is routed.

When Redis fails or is slow (bounded timeout), the gateway never fails open: it limits locally at the
policy's limit divided by the replica count, flags itself degraded (metric and /readyz), and retries
Redis after a short pause so a dead Redis does not cost a timeout on every request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Protocol

from redis.exceptions import RedisError

from gateway.errors import Problem
from gateway.metrics import Metrics
from gateway.policy.model import AdministrationPolicy
from gateway.policy.store import PolicyStore
from gateway.ratelimit.backends import LimiterBackend, MemoryBackend
from gateway.ratelimit.gcra import Verdict, Window

log = logging.getLogger(__name__)

_SPEC = re.compile(r"^([a-z0-9_-]+):([1-9][0-9]*)/([1-9][0-9]*)([smhd])$")
_UNIT_US = {"s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}


def parse_windows(spec: str) -> tuple[Window, ...]:
    """`burst:20/1s,hourly:600/1h` → windows (the unauthenticated limits setting)."""
    windows = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        match = _SPEC.match(part)
        if not match:
            raise ValueError(f"rate limit {part!r} is not name:limit/window (e.g. burst:20/1s)")
        name, limit, count, unit = match.groups()
        windows.append(Window(name, int(limit), int(count) * _UNIT_US[unit]))
    return tuple(windows)


def policy_windows(admin: AdministrationPolicy) -> tuple[Window, ...]:
    return tuple(Window(w.name, w.limit, w.seconds * 1_000_000) for w in admin.rate_limits)


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    headers: list[tuple[bytes, bytes]]

    def refusal(self) -> Problem | None:
        if self.verdict.allowed:
            return None
        retry = max(math.ceil(self.verdict.retry_after_us / 1_000_000), 1)
        return Problem(
            "rate_limited", f"rate limit exceeded; retry after {retry} s", headers={"Retry-After": str(retry)}
        )


@functools.lru_cache(maxsize=256)
def _policy_field(windows: tuple[Window, ...]) -> bytes:
    """`RateLimit-Policy` depends on the windows only: built once per set of windows."""
    return ", ".join(f'"{w.name}";q={w.limit};w={w.period_s}' for w in windows).encode()


def _fields(verdict: Verdict) -> list[tuple[bytes, bytes]]:
    state = ", ".join(
        f'"{s.window.name}";r={s.remaining};t={math.ceil(s.reset_us / 1_000_000)}' for s in verdict.windows
    )
    policy = _policy_field(tuple(s.window for s in verdict.windows))
    return [(b"ratelimit-policy", policy), (b"ratelimit", state.encode())]


class Limiter(Protocol):
    """What the limits ask of a limiter: a verdict for a key under its windows (`check` also counts and
    words a refusal), and its health."""

    async def acquire(self, key: str, windows: tuple[Window, ...]) -> Verdict: ...

    async def check(self, key: str, windows: tuple[Window, ...], subject: str) -> Outcome: ...

    def health(self) -> str: ...


class RateLimiter:
    def __init__(
        self,
        shared: LimiterBackend | None,
        *,
        replicas: int,
        retry_shared_after_s: float,
        timeout_s: float,
        metrics: Metrics,
    ) -> None:
        self._shared = shared
        self._local = MemoryBackend()
        self._replicas = max(replicas, 1)
        self._retry_after_s = retry_shared_after_s
        self._timeout_s = timeout_s
        self._metrics = metrics
        self._shared_down_until = 0.0
        self._local_windows: dict[tuple[Window, ...], tuple[Window, ...]] = {}

    @property
    def degraded(self) -> bool:
        return self._shared is not None and time.monotonic() < self._shared_down_until

    def _scaled(self, windows: tuple[Window, ...]) -> tuple[Window, ...]:
        scaled = self._local_windows.get(windows)
        if scaled is None:
            scaled = tuple(Window(w.name, max(w.limit // self._replicas, 1), w.period_us) for w in windows)
            self._local_windows[windows] = scaled
        return scaled

    async def acquire(self, key: str, windows: tuple[Window, ...]) -> Verdict:
        if self._shared is not None and not self.degraded:
            try:
                async with asyncio.timeout(self._timeout_s):
                    return await self._shared.acquire(key, windows)
            except (RedisError, OSError, TimeoutError) as exc:
                self._shared_down_until = time.monotonic() + self._retry_after_s
                self._metrics.ratelimit_backend_errors.inc()
                log.warning(
                    "rate-limit backend failed (%s); limiting locally at 1/%d of each limit",
                    type(exc).__name__,
                    self._replicas,
                )
        if self._shared is None:
            return await self._local.acquire(key, windows)
        self._metrics.ratelimit_degraded.set(1)
        verdict = await self._local.acquire(key, self._scaled(windows))
        return verdict

    async def check(self, key: str, windows: tuple[Window, ...], subject: str) -> Outcome:
        verdict = await self.acquire(key, windows)
        if self._shared is not None and not self.degraded:
            self._metrics.ratelimit_degraded.set(0)
        if not verdict.allowed:
            self._metrics.ratelimit_refusals.labels(subject).inc()
        return Outcome(verdict, _fields(verdict))

    def health(self) -> str:
        return "degraded" if self.degraded else "ok"


class RateLimits:
    """Which limit a caller is under: its administration's windows, or, without a valid token, the
    per-source windows (`GATEWAY_UNAUTHENTICATED_RATE_LIMITS`)."""

    def __init__(
        self,
        limiter: Limiter,
        policies: PolicyStore,
        unauthenticated: tuple[Window, ...],
        unauthenticated_total: tuple[Window, ...] = (),
    ) -> None:
        self.limiter = limiter
        self._policies = policies
        self._unauthenticated = unauthenticated
        self._unauthenticated_total = unauthenticated_total
        self._windows: dict[str, tuple[Window, ...]] = {}
        self._generation = -1

    def windows_for(self, administration: str) -> tuple[Window, ...]:
        if self._generation != self._policies.generation:
            self._windows, self._generation = {}, self._policies.generation
        windows = self._windows.get(administration)
        if windows is None:
            admin = self._policies.current.administrations.get(administration)
            windows = self._windows[administration] = policy_windows(admin) if admin else ()
        return windows

    async def _check(self, key: str, windows: tuple[Window, ...], subject: str) -> Outcome | None:
        return await self.limiter.check(key, windows, subject) if windows else None

    async def administration(self, administration: str) -> Outcome | None:
        """The verdict of the administration's windows (None: its policy sets none)."""
        return await self._check(f"adm:{administration}", self.windows_for(administration), administration)

    async def source(self, source: str, *, token_endpoint: bool = False) -> Outcome | None:
        """The same for a caller without a valid token, keyed by its source address (`source_address`),
        then all such callers together: many addresses (an IPv6 /48 holds 65,536 /64s) still cannot add
        up to more individually logged requests than the total windows allow. The token endpoint has
        totals of its own, so a flood of other anonymous requests never keeps clients from their tokens."""
        outcome = await self._check(f"ip:{source}", self._unauthenticated, "unauthenticated")
        if outcome is not None and not outcome.verdict.allowed:
            return outcome
        total = await self._check(
            "ip:*token" if token_endpoint else "ip:*", self._unauthenticated_total, "unauthenticated"
        )
        return total if total is not None and not total.verdict.allowed else outcome
