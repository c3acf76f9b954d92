"""One contract for both limiter backends: in-process, and Redis (a real server, its own clock)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from gateway.ratelimit.backends import LimiterBackend, MemoryBackend, RedisBackend
from gateway.ratelimit.gcra import Window

MINUTE = 60_000_000
PER_MINUTE = Window("minute", 5, MINUTE)
PER_HOUR = Window("hour", 7, 60 * MINUTE)


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest, redis_prefix: str) -> AsyncIterator[LimiterBackend]:
    if request.param == "memory":
        yield MemoryBackend()
        return
    redis = Redis.from_url(request.getfixturevalue("redis_url"))
    yield RedisBackend(redis, redis_prefix)
    keys = [k async for k in redis.scan_iter(match=f"{redis_prefix}*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


async def test_limit_then_refusal_with_retry(backend: LimiterBackend) -> None:
    verdicts = [await backend.acquire("adm:a", (PER_MINUTE,)) for _ in range(6)]
    assert [v.allowed for v in verdicts] == [True] * 5 + [False]
    assert [v.windows[0].remaining for v in verdicts[:5]] == [4, 3, 2, 1, 0]
    assert 11_000_000 <= verdicts[-1].retry_after_us <= 12_000_000  # one interval (12 s), less elapsed time


async def test_subjects_are_independent(backend: LimiterBackend) -> None:
    for _ in range(5):
        await backend.acquire("adm:a", (PER_MINUTE,))
    assert (await backend.acquire("adm:b", (PER_MINUTE,))).allowed


async def test_all_windows_together_and_refusals_consume_nothing(backend: LimiterBackend) -> None:
    windows = (PER_MINUTE, PER_HOUR)
    for _ in range(5):
        assert (await backend.acquire("adm:c", windows)).allowed
    refused = await backend.acquire("adm:c", windows)
    assert not refused.allowed
    # The hour window was not charged for the refusal: 7 - 5 = 2 left.
    assert refused.windows[1].remaining == 2
    # Only the hour window alone: still 2 left there.
    assert [(await backend.acquire("adm:c", (PER_HOUR,))).allowed for _ in range(3)] == [True, True, False]


async def test_changed_windows_for_one_key_are_counted_apart(backend: LimiterBackend) -> None:
    """A policy reload hands new window tuples for the same key: a changed limit is a new count, an
    unchanged one (an equal tuple, not the same object) keeps its count."""
    for _ in range(5):
        assert (await backend.acquire("adm:e", (PER_MINUTE,))).allowed
    assert not (await backend.acquire("adm:e", (Window("minute", 5, MINUTE),))).allowed
    assert (await backend.acquire("adm:e", (Window("minute", 6, MINUTE),))).allowed


async def test_memory_backend_forgets_expired_state() -> None:
    now = [1000.0]
    backend = MemoryBackend(clock=lambda: now[0], sweep_every=4)
    for key in ("a", "b", "c"):
        await backend.acquire(key, (PER_MINUTE,))
    assert len(backend) == 3
    now[0] += 3600
    await backend.acquire("d", (PER_MINUTE,))  # the fourth call sweeps what has expired
    assert len(backend) == 1


async def test_concurrent_requests_never_exceed_the_limit(backend: LimiterBackend) -> None:
    verdicts = await asyncio.gather(*(backend.acquire("adm:d", (PER_MINUTE,)) for _ in range(40)))
    assert sum(v.allowed for v in verdicts) == 5


async def test_redis_uses_one_script_call_and_keys_expire(redis_url: str, redis_prefix: str) -> None:
    redis = Redis.from_url(redis_url)
    try:
        backend = RedisBackend(redis, redis_prefix)
        await backend.acquire("adm:e", (PER_MINUTE, PER_HOUR))
        keys = backend.keys("adm:e", (PER_MINUTE, PER_HOUR))
        assert all("{adm:e}" in k for k in keys), "one hash tag: one Redis Cluster slot"
        ttls = [await redis.pttl(k) for k in keys]
        assert 0 < ttls[0] <= 12_001 and 0 < ttls[1] <= 514_287
        await redis.script_flush()  # NOSCRIPT is answered by reloading
        assert (await backend.acquire("adm:e", (PER_MINUTE, PER_HOUR))).allowed
        await redis.delete(*keys)
    finally:
        await redis.aclose()
