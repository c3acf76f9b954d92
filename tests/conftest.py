"""Shared fixtures: a policy realm with real keys, served gateways, and a Redis server."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from tests.support.realm import Realm, build_realm
from tests.support.servers import GatewayProcess, RedisProcess


def _missing(what: str, variable: str) -> None:
    message = f"{what} unavailable: set {variable} or put the server binary on PATH"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    print(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def realm(tmp_path_factory: pytest.TempPathFactory) -> Realm:
    return build_realm(tmp_path_factory.mktemp("realm"))


@pytest.fixture(scope="module")
def gateway(realm: Realm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    server = GatewayProcess(realm.env())
    server.start(tmp_path_factory.mktemp("logs") / "gateway.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("JAMU_TEST_REDIS_URL")
    if url:
        yield url
        return
    if not RedisProcess.available():
        _missing("Redis", "JAMU_TEST_REDIS_URL")
    server = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


@pytest.fixture
def redis_prefix() -> str:
    return f"jamu-test:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def redis(redis_url: str, redis_prefix: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    keys = [k async for k in client.scan_iter(match=f"{redis_prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
