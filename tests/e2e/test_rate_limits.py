"""Rate limits over real HTTP: the contract's fields, 429 with Retry-After, per-address limits for the
unauthenticated, two replicas sharing one Redis, and Redis stopped and restarted under traffic."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.keys import jwks_of, new_key, token_form
from tests.support.realm import Realm, build_realm
from tests.support.servers import GatewayProcess, RedisProcess, free_port

pytestmark = pytest.mark.e2e

LIMITS = {
    "limited": [{"name": "burst", "limit": 4, "window": "1m"}, {"name": "daily", "limit": 1000, "window": "1d"}],
    "shared": [{"name": "hourly", "limit": 20, "window": "1h"}],
    "failover": [{"name": "hourly", "limit": 10, "window": "1h"}],
}


@pytest.fixture(scope="module")
def limited_realm(tmp_path_factory: pytest.TempPathFactory) -> Realm:
    realm = build_realm(tmp_path_factory.mktemp("limits"))
    for admin, windows in LIMITS.items():
        client_id = f"{admin}-app"
        realm.keys[client_id] = new_key()
        (realm.policies_dir / f"{admin}.yaml").write_text(
            yaml.safe_dump(
                {
                    "id": admin,
                    "name": admin.title(),
                    "rate_limits": windows,
                    "clients": [
                        {
                            "client_id": client_id,
                            "auth": "private_key_jwt",
                            "jwks": jwks_of(realm.keys[client_id]),
                            "scopes": ["identity:verify"],
                        }
                    ],
                }
            )
        )
    return realm


def _serve(realm: Realm, logs: Path, name: str, **env: str) -> GatewayProcess:
    return GatewayProcess(realm.env(**env)).start(logs / f"{name}.log")


def _token(gateway: GatewayProcess, realm: Realm, client_id: str, issuer: str | None = None) -> str:
    form = token_form(client_id, realm.keys[client_id], f"{issuer or gateway.base_url}/oauth2/token")
    response = httpx.post(f"{gateway.base_url}/oauth2/token", data=form, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def _probe(gateway: GatewayProcess, token: str) -> httpx.Response:
    return httpx.get(f"{gateway.base_url}/v1/probe/verify", headers={"Authorization": f"Bearer {token}"}, timeout=10)


def _state(gateway: GatewayProcess) -> dict:
    return httpx.get(f"{gateway.base_url}/test-state", timeout=5).json()


def _metrics(gateway: GatewayProcess, realm: Realm, issuer: str | None = None) -> str:
    """`/metrics` on the client port, as a reader holding `metrics:read`."""
    token = _token(gateway, realm, "oversight-app", issuer)
    response = httpx.get(f"{gateway.base_url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code == 200, response.text
    return response.text


def _event(gateway: GatewayProcess, transaction_id: str) -> dict:
    """The event of that id, waiting for a counting event's second to close."""
    deadline = time.monotonic() + 5
    while True:
        found = [e for e in _state(gateway)["events"] if e["id"] == transaction_id]
        if found or time.monotonic() > deadline:
            assert len(found) == 1, transaction_id
            return found[0]
        time.sleep(0.2)


@pytest.fixture(scope="module")
def shared_gateways(
    limited_realm: Realm, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[GatewayProcess]]:
    logs = tmp_path_factory.mktemp("limit-logs")
    prefix = f"jamu-test:limits:{id(logs)}:"
    env = {"GATEWAY_REDIS_URL": redis_url, "GATEWAY_REDIS_KEY_PREFIX": prefix, "GATEWAY_ISSUER": "http://127.0.0.1:9"}
    servers = [_serve(limited_realm, logs, f"shared-{i}", **env) for i in range(2)]
    yield servers
    for server in servers:
        server.stop()
    import redis as redis_sync

    client = redis_sync.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)
    client.close()


def test_fields_then_429_with_retry_after(shared_gateways: list[GatewayProcess], limited_realm: Realm) -> None:
    gateway = shared_gateways[0]
    token = _token(gateway, limited_realm, "limited-app", "http://127.0.0.1:9")
    calls_before = _state(gateway)["calls"]["verify"]
    answers = [_probe(gateway, token) for _ in range(5)]
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 429]
    for answer in answers:
        assert answer.headers["ratelimit-policy"] == '"burst";q=4;w=60, "daily";q=1000;w=86400'
    remaining = [int(re.match(r'"burst";r=(\d+);t=(\d+)', a.headers["ratelimit"]).group(1)) for a in answers]
    assert remaining == [3, 2, 1, 0, 0]
    assert re.fullmatch(r'"burst";r=\d+;t=\d+, "daily";r=99\d;t=\d+', answers[0].headers["ratelimit"])
    refused = answers[-1]
    assert refused.json()["code"] == "rate_limited"
    assert 1 <= int(refused.headers["retry-after"]) <= 15
    state = _state(gateway)
    assert state["calls"]["verify"] == calls_before + 4, "the refused call never reached the operation"
    event = next(e for e in state["events"] if e["id"] == refused.json()["transaction_id"])
    assert (event["decision"], event["reason"], event["status"], event["administration"]) == (
        "deny",
        "rate_limited",
        429,
        "limited",
    )
    metrics = _metrics(gateway, limited_realm, "http://127.0.0.1:9")
    assert 'jamu_ratelimit_refusals_total{administration="limited"} 1.0' in metrics


def test_two_replicas_never_exceed_the_shared_limit(
    shared_gateways: list[GatewayProcess], limited_realm: Realm
) -> None:
    token = _token(shared_gateways[0], limited_realm, "shared-app", "http://127.0.0.1:9")

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=20) as client:
            calls = [
                client.get(
                    f"{shared_gateways[i % 2].base_url}/v1/probe/verify", headers={"Authorization": f"Bearer {token}"}
                )
                for i in range(60)
            ]
            return [r.status_code for r in await asyncio.gather(*calls)]

    statuses = asyncio.run(burst())
    assert set(statuses) <= {200, 429}
    assert statuses.count(200) == 20, "one atomic script per request: no tolerance needed"


def test_unauthenticated_calls_are_limited_per_address(
    limited_realm: Realm, tmp_path_factory: pytest.TempPathFactory
) -> None:
    gateway = _serve(
        limited_realm, tmp_path_factory.mktemp("anon"), "anon", GATEWAY_UNAUTHENTICATED_RATE_LIMITS="burst:5/1m"
    )
    try:
        statuses = [_probe(gateway, "not.a.token").status_code for _ in range(5)]
        assert statuses == [401] * 5
        logged_before = len(_state(gateway)["events"])
        refused = _probe(gateway, "not.a.token")
        assert refused.status_code == 429 and refused.json()["code"] == "rate_limited"
        assert int(refused.headers["retry-after"]) >= 1
        form = token_form("limited-app", limited_realm.keys["limited-app"], f"{gateway.base_url}/oauth2/token")
        token_refused = httpx.post(f"{gateway.base_url}/oauth2/token", data=form)
        assert token_refused.status_code == 429, "the token endpoint shares the per-address budget"
        # Before routing and body parsing: unknown paths, wrong methods, malformed bodies, a spoofed
        # X-Forwarded-For from a peer that is not a trusted proxy.
        others = [
            httpx.get(f"{gateway.base_url}/v1/no-such-path"),
            httpx.delete(f"{gateway.base_url}/v1/verify"),
            httpx.post(
                f"{gateway.base_url}/v1/verify", content=b'{"nin": ', headers={"Content-Type": "application/json"}
            ),
            httpx.get(f"{gateway.base_url}/v1/probe/verify", headers={"X-Forwarded-For": "198.51.100.77"}),
        ]
        assert [o.status_code for o in others] == [429] * 4
        event = _event(gateway, token_refused.json()["transaction_id"])
        assert (event["operation"], event["decision"], event["reason"], event["source"]) == (
            "unauthenticated",
            "deny",
            "rate_limited",
            "127.0.0.1",
        )
        assert event["count"] >= 1 and event["administration"] is None
        time.sleep(1.3)  # every second with refusals is over: its counting event is logged
        counted = [e for e in _state(gateway)["events"] if e["operation"] == "unauthenticated"]
        assert sum(e["count"] for e in counted) == 6, "every refusal counted, none logged one by one"
        assert len(_state(gateway)["events"]) - logged_before == len(counted)
    finally:
        gateway.stop()


def test_x_forwarded_for_from_a_trusted_proxy_names_the_source(
    limited_realm: Realm, tmp_path_factory: pytest.TempPathFactory
) -> None:
    gateway = _serve(
        limited_realm,
        tmp_path_factory.mktemp("proxied"),
        "proxied",
        GATEWAY_UNAUTHENTICATED_RATE_LIMITS="burst:3/1m",
        GATEWAY_TRUSTED_PROXIES="127.0.0.1/32",
    )

    def call(client: str) -> httpx.Response:
        return httpx.get(f"{gateway.base_url}/v1/probe/verify", headers={"X-Forwarded-For": client}, timeout=10)

    try:
        assert [call("198.51.100.1").status_code for _ in range(4)] == [401, 401, 401, 429]
        assert call("198.51.100.2").status_code == 401, "another caller behind the same proxy has its own budget"
        answer = call("198.51.100.2")
        event = _event(gateway, answer.json()["transaction_id"])
        assert event["source"] == "198.51.100.2"
    finally:
        gateway.stop()


def test_redis_stopped_and_restarted_under_traffic(
    limited_realm: Realm, tmp_path_factory: pytest.TempPathFactory
) -> None:
    if not RedisProcess.available():
        pytest.skip("stopping Redis needs a throwaway redis-server on PATH")
    redis = RedisProcess(tmp_path_factory.mktemp("redis-failover")).start()
    metrics_port = free_port()
    gateway = _serve(
        limited_realm,
        tmp_path_factory.mktemp("failover"),
        "failover",
        GATEWAY_REDIS_URL=redis.url,
        GATEWAY_REPLICAS="2",
        GATEWAY_REDIS_RETRY_S="1",
        GATEWAY_REDIS_TIMEOUT_S="0.2",
        GATEWAY_METRICS_PORT=str(metrics_port),
        GATEWAY_METRICS_HOST="127.0.0.1",
    )
    scraped = f"http://127.0.0.1:{metrics_port}/metrics"  # no token: the scraper's listener
    try:
        token = _token(gateway, limited_realm, "failover-app")
        assert [_probe(gateway, token).status_code for _ in range(2)] == [200, 200]
        assert httpx.get(f"{gateway.base_url}/readyz").json()["checks"]["rate_limit"] == "ok"

        redis.stop()
        statuses = [_probe(gateway, token).status_code for _ in range(8)]
        assert set(statuses) <= {200, 429}, "never a 500, never unlimited"
        assert statuses.count(200) == 5, "local fallback: the policy's 10 divided by 2 replicas"
        ready = httpx.get(f"{gateway.base_url}/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["rate_limit"] == "degraded"
        assert "jamu_ratelimit_degraded 1.0" in httpx.get(scraped).text
        assert httpx.get(f"{gateway.base_url}/metrics").status_code == 401  # the client port needs a token

        redis.start()
        asyncio.run(asyncio.sleep(1.2))  # past the retry pause
        assert _probe(gateway, token).status_code == 200, "back on the (fresh) shared state"
        assert httpx.get(f"{gateway.base_url}/readyz").json()["checks"]["rate_limit"] == "ok"
        assert "jamu_ratelimit_degraded 0.0" in httpx.get(scraped).text
    finally:
        gateway.stop()
        redis.stop()
