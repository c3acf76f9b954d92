"""One-time use of client-assertion ids (RFC 7523 `jti`), in-process or shared through Redis.

A replayed assertion must fail even when it reaches another replica, so production shares the seen
set through Redis; the in-process guard serves the single-process embedded default.
"""

from __future__ import annotations

import time
from typing import Protocol

from redis.asyncio import Redis


class ReplayGuard(Protocol):
    async def first_use(self, key: str, ttl_s: float) -> bool:
        """True the first time `key` is presented within `ttl_s`; False for every later presentation."""
        ...


class MemoryReplayGuard:
    """Seen ids with their expiry; expired ones are swept as new ones arrive."""

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self._seen: dict[str, float] = {}
        self._max_entries = max_entries

    async def first_use(self, key: str, ttl_s: float) -> bool:
        now = time.monotonic()
        expires = self._seen.get(key)
        if expires is not None and expires > now:
            return False
        if len(self._seen) >= self._max_entries:
            self._sweep(now)
        if len(self._seen) >= self._max_entries:
            # Full of live ids: refusing is the safe answer (fail closed), not forgetting one.
            return False
        self._seen[key] = now + max(ttl_s, 1.0)
        return True

    def _sweep(self, now: float) -> None:
        self._seen = {k: v for k, v in self._seen.items() if v > now}


class RedisReplayGuard:
    """`SET key 1 NX PX ttl`: atomic across replicas, and the key expires on its own."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix

    async def first_use(self, key: str, ttl_s: float) -> bool:
        ttl_ms = max(int(ttl_s * 1000), 1000)
        return bool(await self._redis.set(f"{self._prefix}jti:{key}", b"1", nx=True, px=ttl_ms))
