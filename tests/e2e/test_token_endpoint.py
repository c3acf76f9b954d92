"""The token endpoint over real HTTP: who gets a token, with what scope, and every way to be refused."""

from __future__ import annotations

import base64
import time

import httpx
import pytest

from tests.support.keys import ASSERTION_TYPE, assertion, new_key, token_form
from tests.support.realm import Realm
from tests.support.servers import GatewayProcess

pytestmark = pytest.mark.e2e


def _post(gateway: GatewayProcess, form: dict[str, str], **kwargs) -> httpx.Response:
    return httpx.post(f"{gateway.base_url}/oauth2/token", data=form, timeout=10, **kwargs)


def _events(gateway: GatewayProcess) -> list[dict]:
    return httpx.get(f"{gateway.base_url}/test-state", timeout=5).json()["events"]


def _event(gateway: GatewayProcess, transaction_id: str) -> dict:
    matches = [e for e in _events(gateway) if e["id"] == transaction_id]
    assert len(matches) == 1, f"exactly one access-log event for {transaction_id}"
    return matches[0]


def _assert_problem(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == code
    assert body["status"] == status
    assert body["type"].endswith(f"/problems/{code}")
    assert body["transaction_id"]
    return body


def test_private_key_jwt_client_gets_an_rfc9068_token(gateway: GatewayProcess, realm: Realm) -> None:
    audience = f"{gateway.base_url}/oauth2/token"
    response = _post(gateway, token_form("elections-app", realm.keys["elections-app"], audience))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert 0 < body["expires_in"] <= 300
    assert set(body["scope"].split()) == {"identity:verify", "identity:lookup"}
    header = _segment(body["access_token"], 0)
    claims = _segment(body["access_token"], 1)
    jwks = httpx.get(f"{gateway.base_url}/.well-known/jwks.json").json()
    assert header["typ"] == "at+jwt"
    assert header["alg"] in {"Ed25519", "EdDSA", "ES256"}
    assert header["kid"] in {k["kid"] for k in jwks["keys"]}
    assert claims["iss"] == gateway.base_url
    assert claims["sub"] == claims["client_id"] == "elections-app"
    assert claims["aud"] == gateway.base_url
    assert claims["exp"] - claims["iat"] <= 300
    assert claims["jti"]
    event = _event(gateway, body["transaction_id"])
    assert (event["operation"], event["decision"], event["client_id"], event["administration"]) == (
        "token",
        "permit",
        "elections-app",
        "elections",
    )


def test_es256_client_and_issuer_as_audience(gateway: GatewayProcess, realm: Realm) -> None:
    response = _post(gateway, token_form("elections-es", realm.keys["elections-es"], gateway.base_url))
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "identity:verify"


def test_scope_narrows_and_cannot_widen(gateway: GatewayProcess, realm: Realm) -> None:
    audience = f"{gateway.base_url}/oauth2/token"
    key = realm.keys["elections-app"]
    narrow = _post(gateway, token_form("elections-app", key, audience, scope="identity:verify"))
    assert narrow.status_code == 200
    assert narrow.json()["scope"] == "identity:verify"
    token = narrow.json()["access_token"]
    allowed = httpx.get(f"{gateway.base_url}/v1/probe/verify", headers={"Authorization": f"Bearer {token}"})
    assert allowed.status_code == 200
    assert allowed.json()["scopes"] == ["identity:verify"]
    denied = httpx.post(
        f"{gateway.base_url}/v1/probe/lookup",
        json={"name": "x", "count": 1},
        headers={"Authorization": f"Bearer {token}"},
    )
    body = _assert_problem(denied, 403, "insufficient_scope")
    assert 'error="insufficient_scope"' in denied.headers["www-authenticate"]
    assert _event(gateway, body["transaction_id"])["reason"] == "insufficient_scope"

    wider = _post(gateway, token_form("elections-app", key, audience, scope="identity:verify audit:read"))
    body = _assert_problem(wider, 400, "invalid_request")
    assert body["error"] == "invalid_scope"


def test_client_secret_basic(gateway: GatewayProcess, realm: Realm) -> None:
    form = {"grant_type": "client_credentials"}
    good = _post(gateway, form, auth=("health-app", realm.secrets["health-app"]))
    assert good.status_code == 200, good.text
    assert good.json()["scope"] == "identity:verify"

    wrong = _post(gateway, form, auth=("health-app", realm.secrets["health-app"] + "x"))
    body = _assert_problem(wrong, 401, "invalid_client")
    assert wrong.headers["www-authenticate"].startswith("Basic")
    assert body["error"] == "invalid_client"
    assert realm.secrets["health-app"] not in wrong.text
    event = _event(gateway, body["transaction_id"])
    # A failed authentication is not that client's act: the claim is recorded as a claim only.
    assert (event["decision"], event["reason"], event["client_id"], event["administration"]) == (
        "deny",
        "invalid_client",
        None,
        None,
    )
    assert event["claimed_client_id"] == "health-app" and event["source"] == "127.0.0.1"

    unknown = _post(gateway, form, auth=("nobody", "secret"))
    body = _assert_problem(unknown, 401, "invalid_client")
    event = _event(gateway, body["transaction_id"])
    assert (event["client_id"], event["claimed_client_id"]) == (None, None)  # no such client: nothing recorded
    for typed in ("=HYPERLINK(x)", "120394857602914"):  # a formula, a NIN: never reach the log
        answer = _post(gateway, form, auth=(typed, "secret"))
        event = _event(gateway, _assert_problem(answer, 401, "invalid_client")["transaction_id"])
        assert event["claimed_client_id"] is None and typed not in str(event)
    as_form = _post(gateway, {**form, "client_id": "120394857602914", "client_secret": "x"})
    assert "120394857602914" not in str(_event(gateway, as_form.json()["transaction_id"]))


def test_garbage_assertions_are_not_blamed_on_the_client_they_name(gateway: GatewayProcess, realm: Realm) -> None:
    form = {
        "grant_type": "client_credentials",
        "client_id": "oversight-app",
        "client_assertion": "a.b.c",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
    }
    body = _assert_problem(_post(gateway, form), 401, "invalid_client")
    event = _event(gateway, body["transaction_id"])
    assert (event["client_id"], event["administration"], event["claimed_client_id"]) == (None, None, "oversight-app")


def test_secret_client_cannot_use_assertions_and_key_client_cannot_use_secrets(
    gateway: GatewayProcess, realm: Realm
) -> None:
    forged = _post(gateway, token_form("health-app", new_key(), gateway.base_url))
    _assert_problem(forged, 401, "invalid_client")
    basic = _post(gateway, {"grant_type": "client_credentials"}, auth=("elections-app", "anything"))
    _assert_problem(basic, 401, "invalid_client")


@pytest.mark.parametrize(
    ("case", "overrides"),
    [
        ("expired", {"exp": int(time.time()) - 3600}),
        ("too long-lived", {"lifetime": 3600}),
        ("wrong audience", {"aud": "https://elsewhere.example/token"}),
        ("issuer differs from subject", {"iss": "oversight-app"}),
        ("no jti", {"jti": None}),
        ("issued in the future", {"iat": int(time.time()) + 3600}),
    ],
)
def test_bad_assertions_are_refused(gateway: GatewayProcess, realm: Realm, case: str, overrides: dict) -> None:
    form = token_form("elections-app", realm.keys["elections-app"], f"{gateway.base_url}/oauth2/token", **overrides)
    _assert_problem(_post(gateway, form), 401, "invalid_client")


def test_replayed_assertion_is_refused(gateway: GatewayProcess, realm: Realm) -> None:
    form = token_form("elections-app", realm.keys["elections-app"], f"{gateway.base_url}/oauth2/token")
    assert _post(gateway, form).status_code == 200
    body = _assert_problem(_post(gateway, form), 401, "invalid_client")
    assert "already been used" in body["detail"]


def test_assertion_for_another_client_is_refused(gateway: GatewayProcess, realm: Realm) -> None:
    audience = f"{gateway.base_url}/oauth2/token"
    # Signed with elections-app's key but claiming to be oversight-app.
    impostor = assertion("oversight-app", realm.keys["elections-app"], audience)
    form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE, "client_assertion": impostor}
    _assert_problem(_post(gateway, form), 401, "invalid_client")
    # A genuine assertion for elections-app, presented with another client_id.
    form = token_form("elections-app", realm.keys["elections-app"], audience)
    _assert_problem(_post(gateway, {**form, "client_id": "oversight-app"}), 401, "invalid_client")


def test_unknown_client_by_assertion(gateway: GatewayProcess) -> None:
    form = token_form("ghost", new_key(), f"{gateway.base_url}/oauth2/token")
    _assert_problem(_post(gateway, form), 401, "invalid_client")


@pytest.mark.parametrize(
    ("case", "content", "headers"),
    [
        ("json instead of form", b'{"grant_type": "client_credentials"}', {"content-type": "application/json"}),
        ("repeated parameter", b"grant_type=client_credentials&grant_type=client_credentials", None),
        ("unsupported grant", b"grant_type=password&username=a&password=b", None),
        ("no grant", b"scope=identity%3Averify", None),
        ("not utf-8", b"grant_type=\xff\xfe", None),
        ("nul and control bytes", b"grant_type=client_credentials%00%01", None),
    ],
)
def test_malformed_token_requests(
    gateway: GatewayProcess, realm: Realm, case: str, content: bytes, headers: dict | None
) -> None:
    response = httpx.post(
        f"{gateway.base_url}/oauth2/token",
        content=content,
        headers=headers or {"content-type": "application/x-www-form-urlencoded"},
        auth=("health-app", realm.secrets["health-app"]),
        timeout=10,
    )
    assert response.status_code in {400, 401}, response.text
    assert response.json()["code"] in {"invalid_request", "invalid_client"}
    assert "access_token" not in response.text


def test_malformed_basic_header(gateway: GatewayProcess) -> None:
    for value in [
        "Basic !!!notbase64",
        "Basic " + base64.b64encode(b"\xff\xfe:x").decode(),
        "Basic " + base64.b64encode(b"no-colon").decode(),
    ]:
        response = httpx.post(
            f"{gateway.base_url}/oauth2/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": value},
        )
        _assert_problem(response, 401, "invalid_client")


def test_oversized_token_request(gateway: GatewayProcess) -> None:
    response = httpx.post(
        f"{gateway.base_url}/oauth2/token",
        content=b"a=" + b"x" * 200_000,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    body = _assert_problem(response, 413, "invalid_request")
    assert _event(gateway, body["transaction_id"])["decision"] == "deny"


def test_discovery_documents(gateway: GatewayProcess) -> None:
    meta = httpx.get(f"{gateway.base_url}/.well-known/oauth-authorization-server").json()
    assert meta["issuer"] == gateway.base_url
    assert meta["token_endpoint"] == f"{gateway.base_url}/oauth2/token"
    assert meta["jwks_uri"] == f"{gateway.base_url}/.well-known/jwks.json"
    assert meta["grant_types_supported"] == ["client_credentials"]
    assert set(meta["token_endpoint_auth_methods_supported"]) == {"private_key_jwt", "client_secret_basic"}
    jwks = httpx.get(meta["jwks_uri"]).json()
    assert jwks["keys"] and all("d" not in k for k in jwks["keys"])


def _segment(token: str, index: int) -> dict:
    import json

    part = token.split(".")[index]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
