"""Bearer tokens on protected routes, over real HTTP: forged, stale and misdirected tokens are refused,
the refusal is logged, and the protected operation never runs."""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest

from tests.support.keys import access_claims, b64, hs256, load_pem, new_key, sign, token_form
from tests.support.realm import Realm
from tests.support.servers import GatewayProcess

pytestmark = pytest.mark.e2e


def _state(gateway: GatewayProcess) -> dict:
    return httpx.get(f"{gateway.base_url}/test-state", timeout=5).json()


def _probe(gateway: GatewayProcess, authorization: str | None) -> httpx.Response:
    headers = {"Authorization": authorization} if authorization is not None else {}
    return httpx.get(f"{gateway.base_url}/v1/probe/verify", headers=headers, timeout=10)


def _issued_token(gateway: GatewayProcess, realm: Realm) -> str:
    form = token_form("elections-app", realm.keys["elections-app"], f"{gateway.base_url}/oauth2/token")
    response = httpx.post(f"{gateway.base_url}/oauth2/token", data=form, timeout=10)
    assert response.status_code == 200
    return response.json()["access_token"]


def _gateway_key(realm: Realm):
    return load_pem(realm.data_dir / "keys" / "signing-key.pem")


def _header(realm: Realm, **overrides) -> dict:
    key = _gateway_key(realm)
    header = {"alg": "Ed25519", "typ": "at+jwt", "kid": key.thumbprint()}
    header.update(overrides)
    return {k: v for k, v in header.items() if v is not None}


def test_valid_token_reaches_the_operation(gateway: GatewayProcess, realm: Realm) -> None:
    token = _issued_token(gateway, realm)
    before = _state(gateway)["calls"]["verify"]
    for _ in range(3):  # the second and third use the verified-token cache
        response = _probe(gateway, f"Bearer {token}")
        assert response.status_code == 200, response.text
        assert response.json()["administration"] == "elections"
        assert response.json()["client_id"] == "elections-app"
    state = _state(gateway)
    assert state["calls"]["verify"] == before + 3
    event = next(e for e in state["events"] if e["id"] == response.json()["transaction_id"])
    assert (event["operation"], event["decision"], event["administration"]) == ("verify", "permit", "elections")


def test_hand_signed_token_with_the_gateway_key_is_accepted(gateway: GatewayProcess, realm: Realm) -> None:
    """The control for the refusals below: the same construction, correct, passes."""
    token = sign(
        _header(realm), access_claims(gateway.base_url, "elections-app", "identity:verify"), _gateway_key(realm)
    )
    assert _probe(gateway, f"Bearer {token}").status_code == 200


def _refusals(gateway: GatewayProcess, realm: Realm) -> dict[str, str]:
    issuer = gateway.base_url
    key = _gateway_key(realm)
    good_claims = access_claims(issuer, "elections-app", "identity:verify")
    now = int(time.time())
    other = new_key()
    real = _issued_token(gateway, realm)
    head, payload, signature = real.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["scope"] = "identity:verify identity:lookup audit:read"
    public_x = base64.urlsafe_b64decode(key.as_dict()["x"] + "==")
    jwks_text = json.dumps(key.as_dict(private=False)).encode()
    return {
        "alg none": f"{b64(_header(realm, alg='none'))}.{b64(good_claims)}.",
        "alg none with junk signature": f"{b64(_header(realm, alg='none'))}.{b64(good_claims)}.AAAA",
        "HS256 with the public key as secret": hs256(_header(realm, alg="HS256"), good_claims, public_x),
        "HS256 with the JWK as secret": hs256(_header(realm, alg="HS256"), good_claims, jwks_text),
        "unknown kid": sign(_header(realm, kid="no-such-key"), good_claims, key),
        "another issuer's key under our kid": sign(_header(realm), good_claims, other),
        "another key, its own kid": sign(_header(realm, kid=other.thumbprint()), good_claims, other),
        "expired": sign(_header(realm), {**good_claims, "exp": now - 600, "iat": now - 900}, key),
        "nbf in the future": sign(_header(realm), {**good_claims, "nbf": now + 600}, key),
        "iat in the future": sign(_header(realm), {**good_claims, "iat": now + 600}, key),
        "wrong iss": sign(_header(realm), {**good_claims, "iss": "https://idp.example"}, key),
        "wrong aud": sign(_header(realm), {**good_claims, "aud": "https://other.example"}, key),
        "no aud": sign(_header(realm), {**good_claims, "aud": None}, key),
        "no exp": sign(_header(realm), {k: v for k, v in good_claims.items() if k != "exp"}, key),
        "missing typ": sign(_header(realm, typ=None), good_claims, key),
        "typ JWT": sign(_header(realm, typ="JWT"), good_claims, key),
        "unregistered client": sign(_header(realm), {**good_claims, "sub": "ghost", "client_id": "ghost"}, key),
        "client_id differs from sub": sign(_header(realm), {**good_claims, "client_id": "oversight-app"}, key),
        "tampered payload": f"{head}.{b64(claims)}.{signature}",
        "tampered signature": f"{head}.{payload}.{signature[:-4]}AAAA",
        "not a JWT": "abc.def",
        "garbage segments": "!!!.???.***",
        "oversized": "a" * 9000 + ".b.c",
    }


def test_forged_and_misdirected_tokens_are_refused(gateway: GatewayProcess, realm: Realm) -> None:
    before = _state(gateway)["calls"]["verify"]
    for case, token in _refusals(gateway, realm).items():
        response = _probe(gateway, f"Bearer {token}")
        assert response.status_code == 401, f"{case}: {response.text}"
        body = response.json()
        assert body["code"] == "invalid_token", case
        assert 'error="invalid_token"' in response.headers["www-authenticate"], case
        event = next(e for e in _state(gateway)["events"] if e["id"] == body["transaction_id"])
        assert (event["decision"], event["reason"], event["operation"]) == ("deny", "invalid_token", "verify"), case
        assert event["client_id"] is None, case
    assert _state(gateway)["calls"]["verify"] == before, "a refused token never reaches the operation"


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer  x",
        "Basic dXNlcjpwYXNz",
        "Token abc.def.ghi",
        "Bearer a.b.c d.e.f",
        "bearer",
        "Bearer \u00e9t\u00e9.x.y",
    ],
)
def test_malformed_authorization_header(gateway: GatewayProcess, authorization: str | None) -> None:
    if authorization is not None and not authorization.isascii():
        response = httpx.get(
            f"{gateway.base_url}/v1/probe/verify", headers=[(b"Authorization", authorization.encode("utf-8"))]
        )
    else:
        response = _probe(gateway, authorization)
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "invalid_token"


def test_oversized_body_to_protected_route(gateway: GatewayProcess, realm: Realm) -> None:
    token = _issued_token(gateway, realm)
    response = httpx.post(
        f"{gateway.base_url}/v1/probe/lookup",
        content=b'{"name": "' + b"x" * 100_000 + b'"}',
        headers={"Authorization": f"Bearer {token}", "content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["code"] == "invalid_request"


def test_chunked_oversized_body_is_cut_off(gateway: GatewayProcess, realm: Realm) -> None:
    token = _issued_token(gateway, realm)

    def chunks():
        for _ in range(200):
            yield b"x" * 1024

    response = httpx.post(
        f"{gateway.base_url}/v1/probe/lookup",
        content=chunks(),
        headers={"Authorization": f"Bearer {token}", "content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["code"] == "invalid_request"
