"""Tokens from a trusted external issuer (a national IdP) served for real on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
import yaml

from tests.support.fake_idp import FakeIdP
from tests.support.keys import access_claims, new_key, sign
from tests.support.realm import Realm
from tests.support.servers import GatewayProcess

pytestmark = pytest.mark.e2e

AUDIENCE = "https://jamu.test/api"
REFRESH_INTERVAL = 2


@pytest.fixture(scope="module")
def idp() -> Iterator[FakeIdP]:
    server = FakeIdP().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def federated(realm: Realm, idp: FakeIdP, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("federated")
    trusted = root / "trusted.yaml"
    trusted.write_text(yaml.safe_dump(idp.config(
        AUDIENCE,
        **{"portal-ceni": "elections", "portal-narrow": {"administration": "elections", "scopes": ["identity:lookup"]},
           "portal-orphan": "no-such-administration"})))
    server = GatewayProcess(realm.env(GATEWAY_TRUSTED_ISSUERS_FILE=str(trusted),
                                      GATEWAY_JWKS_REFRESH_INTERVAL_S=str(REFRESH_INTERVAL)))
    server.start(root / "gateway.log")
    yield server
    server.stop()


def _idp_token(idp: FakeIdP, client_id: str, scope: str = "identity:verify", key=None, **overrides) -> str:
    key = key or idp.keys[0]
    claims = access_claims(idp.issuer, client_id, scope, audience=AUDIENCE, sub=f"user-{client_id}", **overrides)
    return sign({"alg": "ES256", "typ": "at+jwt", "kid": key.thumbprint()}, claims, key)


def _probe(gateway: GatewayProcess, token: str) -> httpx.Response:
    return httpx.get(f"{gateway.base_url}/v1/probe/verify", headers={"Authorization": f"Bearer {token}"}, timeout=10)


def test_idp_token_maps_to_administration(federated: GatewayProcess, idp: FakeIdP) -> None:
    response = _probe(federated, _idp_token(idp, "portal-ceni"))
    assert response.status_code == 200, response.text
    assert response.json()["administration"] == "elections"
    assert response.json()["client_id"] == "portal-ceni"


def test_mapping_can_restrict_scopes(federated: GatewayProcess, idp: FakeIdP) -> None:
    response = _probe(federated, _idp_token(idp, "portal-narrow", "identity:verify identity:lookup"))
    assert response.status_code == 403
    assert response.json()["code"] == "insufficient_scope"


@pytest.mark.parametrize(("case", "client_id", "overrides"), [
    ("unmapped client", "portal-unknown", {}),
    ("mapped to an unknown administration", "portal-orphan", {}),
    ("wrong audience", "portal-ceni", {"aud": "https://other.example"}),
    ("expired", "portal-ceni", {"exp": int(time.time()) - 600}),
])
def test_idp_tokens_refused(federated: GatewayProcess, idp: FakeIdP, case: str, client_id: str,
                            overrides: dict) -> None:
    response = _probe(federated, _idp_token(idp, client_id, **overrides))
    assert response.status_code == 401, case
    assert response.json()["code"] == "invalid_token", case


def test_algorithm_outside_the_issuers_list_is_refused(federated: GatewayProcess, idp: FakeIdP) -> None:
    key = new_key("Ed25519")
    claims = access_claims(idp.issuer, "portal-ceni", "identity:verify", audience=AUDIENCE)
    token = sign({"alg": "Ed25519", "typ": "at+jwt", "kid": key.thumbprint()}, claims, key)
    assert _probe(federated, token).status_code == 401


def test_rotation_is_picked_up_and_unknown_kids_do_not_flood_the_idp(federated: GatewayProcess, idp: FakeIdP) -> None:
    assert _probe(federated, _idp_token(idp, "portal-ceni")).status_code == 200
    time.sleep(REFRESH_INTERVAL + 0.2)
    new = idp.rotate()
    before = idp.fetches
    response = _probe(federated, _idp_token(idp, "portal-ceni", key=new))
    assert response.status_code == 200, response.text
    assert idp.fetches == before + 1, "an unknown kid refetches the JWKS once"

    before = idp.fetches
    stranger = new_key("ES256")
    for _ in range(30):
        assert _probe(federated, _idp_token(idp, "portal-ceni", key=stranger)).status_code == 401
    assert idp.fetches - before <= 1, "refetches on unknown kids are rate-limited"
