"""One contract for both replay guards: the in-process one and the Redis one (against a real server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from gateway.auth.replay import MemoryReplayGuard, RedisReplayGuard, ReplayGuard


@pytest.fixture(params=["memory", "redis"])
async def guard(request: pytest.FixtureRequest, redis_prefix: str) -> AsyncIterator[ReplayGuard]:
    if request.param == "memory":
        yield MemoryReplayGuard()
        return
    redis = Redis.from_url(request.getfixturevalue("redis_url"))
    yield RedisReplayGuard(redis, redis_prefix)
    keys = [k async for k in redis.scan_iter(match=f"{redis_prefix}*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


async def test_first_use_only(guard: ReplayGuard) -> None:
    assert await guard.first_use("client:jti-1", 60) is True
    assert await guard.first_use("client:jti-1", 60) is False
    assert await guard.first_use("client:jti-2", 60) is True


async def test_concurrent_presentations_admit_exactly_one(guard: ReplayGuard) -> None:
    results = await asyncio.gather(*(guard.first_use("client:race", 60) for _ in range(20)))
    assert results.count(True) == 1


@pytest.mark.slow
async def test_memory_guard_sweeps_expired_ids_and_fails_closed_when_full() -> None:
    guard = MemoryReplayGuard(max_entries=2)
    assert await guard.first_use("a", 0.001)
    assert await guard.first_use("b", 60)
    await asyncio.sleep(1.1)  # "a" expired (minimum TTL is 1 s)
    assert await guard.first_use("c", 60), "room made by sweeping the expired id"
    assert await guard.first_use("d", 60) is False, "full of live ids: refuse rather than forget one"


async def test_redis_keys_carry_the_prefix_and_expire(redis: Redis, redis_prefix: str) -> None:
    guard = RedisReplayGuard(redis, redis_prefix)
    assert await guard.first_use("client:jti", 30)
    ttl = await redis.pttl(f"{redis_prefix}jti:client:jti")
    assert 0 < ttl <= 30_000
