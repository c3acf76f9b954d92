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
    trusted.write_text(
        yaml.safe_dump(
            idp.config(
                AUDIENCE,
                **{
                    "portal-ceni": "elections",
                    "portal-narrow": {"administration": "elections", "scopes": ["identity:lookup"]},
                    "portal-orphan": "no-such-administration",
                    "portal-oversight": {"administration": "oversight", "scopes": ["audit:read", "identity:verify"]},
                },
            )
        )
    )
    server = GatewayProcess(
        realm.env(GATEWAY_TRUSTED_ISSUERS_FILE=str(trusted), GATEWAY_JWKS_REFRESH_INTERVAL_S=str(REFRESH_INTERVAL))
    )
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


@pytest.mark.parametrize(
    ("case", "client_id", "overrides"),
    [
        ("unmapped client", "portal-unknown", {}),
        ("mapped to an unknown administration", "portal-orphan", {}),
        ("wrong audience", "portal-ceni", {"aud": "https://other.example"}),
        ("expired", "portal-ceni", {"exp": int(time.time()) - 600}),
    ],
)
def test_idp_tokens_refused(
    federated: GatewayProcess, idp: FakeIdP, case: str, client_id: str, overrides: dict
) -> None:
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


SENSITIVE = "audit:read subject:history consent:write"


def test_external_scopes_are_capped_by_the_administrations_policy(federated: GatewayProcess, idp: FakeIdP) -> None:
    """A client mapped to `elections` (whose clients hold identity:verify and identity:lookup) claiming the
    log, history and consent scopes gets none of them."""
    claimed = f"identity:verify identity:lookup {SENSITIVE} events:read"
    response = _probe(federated, _idp_token(idp, "portal-ceni", claimed))
    assert response.status_code == 200, response.text
    assert response.json()["scopes"] == ["identity:lookup", "identity:verify"]
    history = httpx.post(
        f"{federated.base_url}/v1/subjects/access-history",
        timeout=10,
        headers={"Authorization": f"Bearer {_idp_token(idp, 'portal-ceni', claimed)}"},
        json={"nin": "120394857602914", "evidence": {"method": "in_person", "reference": "F-1"}},
    )
    assert history.status_code == 403 and history.json()["code"] == "insufficient_scope"
    events = httpx.get(
        f"{federated.base_url}/v1/audit/events",
        timeout=10,
        headers={"Authorization": f"Bearer {_idp_token(idp, 'portal-ceni', claimed)}"},
    )
    assert events.status_code == 403 and events.json()["code"] == "insufficient_scope"


def test_a_sensitive_scope_comes_only_from_a_mapping_that_lists_it(federated: GatewayProcess, idp: FakeIdP) -> None:
    # `oversight` holds audit:read in its own policy and the mapping lists it; identity:verify is listed by
    # the mapping but held by no client of `oversight`, so it is not granted.
    token = _idp_token(idp, "portal-oversight", f"{SENSITIVE} identity:verify")
    response = httpx.get(
        f"{federated.base_url}/v1/audit/events?limit=1", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert response.status_code == 200, response.text
    assert _probe(federated, token).status_code == 403


@pytest.mark.parametrize(
    ("case", "overrides"),
    [
        ("lives 30 days", {"exp": int(time.time()) + 30 * 86400}),
        ("lives 301 s", {"iat": int(time.time()) - 10, "exp": int(time.time()) + 291}),
        ("no iat", {"iat": None}),
        ("iat not a number", {"iat": "yesterday"}),
    ],
)
def test_external_token_lifetime_is_bounded(
    federated: GatewayProcess, idp: FakeIdP, case: str, overrides: dict
) -> None:
    response = _probe(federated, _idp_token(idp, "portal-ceni", **overrides))
    assert response.status_code == 401, case
    assert response.json()["code"] == "invalid_token", case


def test_a_key_removed_from_the_jwks_stops_validating_cached_tokens(
    realm: Realm, tmp_path_factory: pytest.TempPathFactory
) -> None:
    idp = FakeIdP().start()
    root = tmp_path_factory.mktemp("removal")
    trusted = root / "trusted.yaml"
    trusted.write_text(yaml.safe_dump(idp.config(AUDIENCE, **{"portal-ceni": "elections"})))
    server = GatewayProcess(
        realm.env(
            GATEWAY_TRUSTED_ISSUERS_FILE=str(trusted), GATEWAY_JWKS_MAX_AGE_S="1", GATEWAY_JWKS_REFRESH_INTERVAL_S="1"
        )
    )
    try:
        server.start(root / "gateway.log")
        old = idp.keys[0]
        token = _idp_token(idp, "portal-ceni", key=old)
        assert _probe(server, token).status_code == 200  # verified, and now cached
        assert _probe(server, token).status_code == 200
        idp.keys = [new_key("ES256")]  # the IdP withdraws the key (compromised, say)
        time.sleep(1.3)
        response = _probe(server, token)
        assert response.status_code == 401, response.text
        assert response.json()["code"] == "invalid_token"
    finally:
        server.stop()
        idp.stop()
