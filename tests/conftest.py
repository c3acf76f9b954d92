"""Shared fixtures: a policy realm with real keys, served gateways, and a Redis server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.storage.database import create_engine, database_url, migrate
from tests.support.realm import Realm, build_realm
from tests.support.servers import GatewayProcess, PostgresProcess, RedisProcess


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


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("JAMU_TEST_DATABASE_URL")
    if url:
        yield url
        return
    if not PostgresProcess.available():
        _missing("PostgreSQL", "JAMU_TEST_DATABASE_URL")
    server = PostgresProcess(tmp_path_factory.mktemp("postgres"))
    try:
        server.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        _missing(f"PostgreSQL ({exc})", "JAMU_TEST_DATABASE_URL")
    yield server.url
    server.stop()


@pytest.fixture
def postgres_schema(postgres_url: str) -> Iterator[str]:
    """A schema of the test's own (the code under test creates it), dropped afterwards."""
    schema = f"jamu_test_{uuid.uuid4().hex[:12]}"
    yield schema

    async def drop() -> None:
        engine = create_engine(database_url(postgres_url, Path(".")))
        async with engine.begin() as connection:
            await connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await engine.dispose()

    asyncio.run(drop())


@pytest.fixture(params=["sqlite", "postgres"])
async def migrated_engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """The gateway's database, migrated, on each engine a store must work on (a contract test's two sides)."""
    if request.param == "sqlite":
        url, schema = database_url(None, tmp_path), None
    else:
        url, schema = (
            database_url(request.getfixturevalue("postgres_url"), tmp_path),
            request.getfixturevalue("postgres_schema"),
        )
    engine = create_engine(url, schema=schema)
    await migrate(engine, schema)
    yield engine
    await engine.dispose()
