"""Two gateway replicas sharing one Redis and one signing key: an assertion spent at one is spent at both,
and a token issued by one is honoured by the other."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.keys import token_form
from tests.support.realm import Realm
from tests.support.servers import GatewayProcess

pytestmark = pytest.mark.e2e

SHARED_ISSUER = "http://127.0.0.1:9"  # what clients would call through the load balancer


@pytest.fixture(scope="module")
def replicas(realm: Realm, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[GatewayProcess]]:
    logs = tmp_path_factory.mktemp("replicas")
    prefix = "jamu-test:replicas:"
    servers = [
        GatewayProcess(
            realm.env(GATEWAY_REDIS_URL=redis_url, GATEWAY_REDIS_KEY_PREFIX=prefix, GATEWAY_ISSUER=SHARED_ISSUER)
        )
        for _ in range(2)
    ]
    for index, server in enumerate(servers):
        server.env["GATEWAY_ISSUER"] = SHARED_ISSUER
        server.start(logs / f"replica-{index}.log")
    yield servers
    for server in servers:
        server.stop()
    import redis as redis_sync

    client = redis_sync.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)
    client.close()


def test_assertion_replayed_at_another_replica_is_refused(replicas: list[GatewayProcess], realm: Realm) -> None:
    first, second = replicas
    form = token_form("elections-app", realm.keys["elections-app"], f"{SHARED_ISSUER}/oauth2/token")
    assert httpx.post(f"{first.base_url}/oauth2/token", data=form).status_code == 200
    replay = httpx.post(f"{second.base_url}/oauth2/token", data=form)
    assert replay.status_code == 401
    assert replay.json()["code"] == "invalid_client"


def test_token_from_one_replica_is_valid_at_the_other(replicas: list[GatewayProcess], realm: Realm) -> None:
    first, second = replicas
    form = token_form("elections-app", realm.keys["elections-app"], f"{SHARED_ISSUER}/oauth2/token")
    token = httpx.post(f"{first.base_url}/oauth2/token", data=form).json()["access_token"]
    response = httpx.get(f"{second.base_url}/v1/probe/verify", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    ready = httpx.get(f"{second.base_url}/readyz").json()
    assert ready["checks"]["rate_limit"] == "ok"
