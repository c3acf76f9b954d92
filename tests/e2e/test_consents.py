"""Consents over real HTTP, tried the way attackers try them, and policies reloaded without a restart."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.connectors.population import population, seed_register
from tests.support.keys import jwks_of, new_key, token_form
from tests.support.realm import Realm, build_realm
from tests.support.servers import GatewayProcess, free_port, wait_until

pytestmark = pytest.mark.e2e
PEOPLE = [p for p in population(500, 31) if p["record_status"] == "active"]
PERSON, NEIGHBOUR = PEOPLE[0], PEOPLE[1]
ENROLMENT = {
    "consent": "required",
    "operations": ["verify", "lookup"],
    "claims": ["family_name", "birth_date"],
    "predicates": ["alive"],
    "attributes": ["family_name", "given_names", "birth_date", "residence_commune"],
    "max_consent_days": 90,
}
ADMINISTRATIONS = {
    "health": (
        ["identity:verify", "identity:lookup", "consent:read"],
        {
            "enrolment": ENROLMENT,
            "care": {
                "legal_basis": "Code de la santé",
                "consent": "not_required",
                "operations": ["verify"],
                "claims": ["family_name"],
            },
        },
    ),
    "counter": (["consent:write", "consent:read"], {}),
    "intruder": (["consent:write", "consent:read", "identity:lookup"], {"enrolment": ENROLMENT}),
    "desk": (["subject:history"], {}),
}
HISTORY_READS_PER_DAY = 2  # the desk's quota


def build(root: Path) -> Realm:
    realm = build_realm(root)
    for admin, (scopes, purposes) in ADMINISTRATIONS.items():
        realm.keys[admin] = new_key()
        (realm.policies_dir / f"{admin}.yaml").write_text(
            yaml.safe_dump(
                {
                    "id": admin,
                    "name": admin.title(),
                    "purposes": purposes,
                    **({"history_reads_per_day": HISTORY_READS_PER_DAY} if admin == "desk" else {}),
                    "clients": [
                        {
                            "client_id": admin,
                            "auth": "private_key_jwt",
                            "jwks": jwks_of(realm.keys[admin]),
                            "scopes": scopes,
                        }
                    ],
                },
                allow_unicode=True,
            )
        )
    seed_register(realm.data_dir / "register.db", 500, 31)
    return realm


class Client:
    def __init__(self, gateway: GatewayProcess, realm: Realm, client_id: str) -> None:
        form = token_form(client_id, realm.keys[client_id], f"{gateway.base_url}/oauth2/token")
        response = httpx.post(f"{gateway.base_url}/oauth2/token", data=form, timeout=10)
        assert response.status_code == 200, response.text
        self.headers = {"Authorization": f"Bearer {response.json()['access_token']}"}
        self.http = httpx.Client(base_url=gateway.base_url, headers=self.headers, timeout=15)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("consents")
    realm = build(root)
    metrics_port = free_port()
    server = GatewayProcess(
        realm.env(
            GATEWAY_POLICY_RELOAD_INTERVAL_S="0.3",
            GATEWAY_METRICS_PORT=str(metrics_port),
            GATEWAY_METRICS_HOST="127.0.0.1",
        ),
        factory="tests.support.probe_app:create_durable",
    )
    server.start(root / "gateway.log")
    server.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"  # type: ignore[attr-defined]
    clients = {name: Client(server, realm, name) for name in ADMINISTRATIONS}
    clients["officer"] = Client(server, realm, "oversight-app")
    clients["channel"] = Client(server, realm, "channel-app")
    yield {"server": server, "realm": realm, "root": root, **clients}
    server.stop()


def consent_body(**overrides: Any) -> dict[str, Any]:
    expires = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    return {
        "nin": PERSON["nin"],
        "grantee": "health",
        "purpose": "enrolment",
        "attributes": ["family_name", "birth_date"],
        "operations": ["lookup", "verify"],
        "expires_at": expires,
        "evidence": {"method": "signed_form", "reference": "F-001"},
        **overrides,
    }


def record(world: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    response = world["counter"].http.post("/v1/consents", json=consent_body(**overrides))
    assert response.status_code == 201, response.text
    return response.json()


def lookup(
    world: dict[str, Any],
    consent_id: str | None,
    nin: str = PERSON["nin"],
    attributes: tuple[str, ...] = ("family_name",),
    who: str = "health",
) -> httpx.Response:
    body = {"nin": nin, "purpose": "enrolment", "attributes": list(attributes)}
    if consent_id:
        body["consent_id"] = consent_id
    return world[who].http.post("/v1/lookup", json=body)


def test_a_consent_opens_exactly_what_it_names(world: dict[str, Any]) -> None:
    consent = record(world)
    assert consent["status"] == "active" and consent["uses"] == 0 and consent["issued_by"] == "counter"
    assert PERSON["nin"] not in str(consent) and "nin" not in consent
    assert lookup(world, None).json()["code"] == "consent_required"
    released = lookup(world, consent["id"], attributes=("family_name", "birth_date"))
    assert released.status_code == 200, released.text
    assert released.json()["attributes"] == {"family_name": PERSON["family_name"], "birth_date": PERSON["birth_date"]}
    verified = world["health"].http.post(
        "/v1/verify",
        json={
            "nin": PERSON["nin"],
            "purpose": "enrolment",
            "consent_id": consent["id"],
            "claims": {"family_name": PERSON["family_name"]},
        },
    )
    assert verified.status_code == 200 and verified.json()["match"] is True
    seen = world["health"].http.get(f"/v1/consents/{consent['id']}").json()
    assert seen["uses"] == 2 and seen["grantee"] == "health"
    assert world["counter"].http.get(f"/v1/consents/{consent['id']}").json()["uses"] == 2


def test_others_cannot_see_revoke_or_use_it(world: dict[str, Any]) -> None:
    consent = record(world)
    url = f"/v1/consents/{consent['id']}"
    assert world["intruder"].http.get(url).status_code == 404
    assert world["intruder"].http.post(f"{url}/revoke").status_code == 404
    assert world["health"].http.post(f"{url}/revoke").status_code == 403  # the grantee cannot write consents
    stolen = lookup(world, consent["id"], who="intruder")
    assert (stolen.json()["code"], stolen.json()["reason"]) == ("consent_invalid", "unknown")
    assert world["counter"].http.get("/v1/consents/cns_doesnotexist").status_code == 404
    assert world["counter"].http.get("/v1/consents/..%2F..%2Fetc").status_code in (404, 400)
    widened = lookup(world, consent["id"], attributes=("family_name", "residence_commune"))
    assert (widened.json()["reason"], widened.json()["attributes"]) == ("attributes", ["residence_commune"])
    other = lookup(world, consent["id"], nin=NEIGHBOUR["nin"])
    unknown = lookup(world, "cns_" + "A" * 24, nin=NEIGHBOUR["nin"])
    # Another person's consent is no consent at all: the very answer an unknown id gets.
    assert (other.status_code, other.headers["content-type"]) == (unknown.status_code, unknown.headers["content-type"])
    assert {k: v for k, v in other.json().items() if k != "transaction_id"} == {
        k: v for k, v in unknown.json().items() if k != "transaction_id"
    }
    assert other.json()["reason"] == "unknown" and NEIGHBOUR["family_name"] not in other.text
    assert world["counter"].http.get(url).json()["uses"] == 0  # refusals used nothing


def test_recording_a_consent_is_checked_against_the_grantees_purpose(world: dict[str, Any]) -> None:
    post = world["counter"].http.post
    cases = [
        (consent_body(grantee="counter"), 403, "operation_not_permitted"),
        (consent_body(grantee="nobody"), 400, "invalid_request"),
        (consent_body(purpose="care"), 400, "invalid_request"),  # not consent-based
        (consent_body(attributes=["family_name", "father_name"]), 403, "attribute_not_permitted"),
        (consent_body(expires_at=(datetime.now(UTC) + timedelta(days=91)).isoformat()), 400, "invalid_request"),
        (consent_body(expires_at=(datetime.now(UTC) - timedelta(minutes=1)).isoformat()), 400, "invalid_request"),
        (consent_body(expires_at="2027-01-01T00:00:00"), 400, "invalid_request"),  # no zone
        (consent_body(max_uses=0), 400, "invalid_request"),
        (consent_body(evidence={"method": "telepathy"}), 400, "invalid_request"),
        (consent_body(nin="12"), 400, "invalid_request"),
        (consent_body(evidence={"method": "signed_form", "reference": f"CNI {PERSON['nin']}"}), 400, "invalid_request"),
    ]
    for body, status, code in cases:
        response = post("/v1/consents", json=body)
        assert (response.status_code, response.json()["code"]) == (status, code), body
        assert PERSON["nin"] not in response.text
    own = world["intruder"].http.post("/v1/consents", json=consent_body(grantee="intruder"))
    assert own.json()["code"] == "operation_not_permitted"  # a channel granting consent to itself
    assert world["health"].http.post("/v1/consents", json=consent_body()).json()["code"] == "insufficient_scope"


def test_a_consent_must_cover_what_a_predicate_reads(world: dict[str, Any]) -> None:
    narrow = record(world, attributes=["family_name"])
    body = {"nin": PERSON["nin"], "purpose": "enrolment", "consent_id": narrow["id"], "predicates": [{"name": "alive"}]}
    refused = world["health"].http.post("/v1/verify", json=body)
    assert (refused.status_code, refused.json()["code"]) == (403, "consent_invalid")
    assert refused.json()["attributes"] == ["death_date", "record_status"] and "result" not in refused.text
    wide = record(world, attributes=["family_name", "death_date", "record_status"])
    answered = world["health"].http.post("/v1/verify", json={**body, "consent_id": wide["id"]})
    assert answered.status_code == 200, answered.text
    assert answered.json()["predicates"] == [{"name": "alive", "result": True}]


def test_only_the_callers_own_purposes_and_consents_are_logged(world: dict[str, Any]) -> None:
    stranger = record(world)  # given to health; the intruder names it
    made_up = world["intruder"].http.post(
        "/v1/lookup", json={"nin": PERSON["nin"], "purpose": "police_investigation", "attributes": ["family_name"]}
    )
    assert made_up.json()["code"] == "purpose_not_permitted"
    borrowed = lookup(world, stranger["id"], who="intruder")
    assert borrowed.json()["code"] == "consent_invalid"
    widened = world["intruder"].http.post(
        "/v1/lookup", json={"nin": PERSON["nin"], "purpose": "enrolment", "attributes": ["sex"]}
    )
    assert widened.json()["code"] == "attribute_not_permitted"
    events = world["officer"].http.post("/v1/audit/search", json={"nin": PERSON["nin"], "limit": 1000}).json()
    by_id = {e["id"]: e for e in events["events"]}
    assert (by_id[made_up.json()["transaction_id"]]["purpose"], by_id[made_up.json()["transaction_id"]]["reason"]) == (
        None,
        "purpose_not_permitted",
    )
    assert by_id[borrowed.json()["transaction_id"]]["consent_id"] is None
    # Its own purpose, refused for what it asked: the purpose is recorded, with the reason.
    assert (by_id[widened.json()["transaction_id"]]["purpose"], by_id[widened.json()["transaction_id"]]["reason"]) == (
        "enrolment",
        "attribute_not_permitted",
    )
    history = (
        world["channel"]
        .http.post(
            "/v1/subjects/access-history",
            json={"nin": PERSON["nin"], "evidence": {"method": "in_person", "reference": "G-1"}},
        )
        .json()
    )
    assert "police_investigation" not in str(history)


def test_a_channel_reads_histories_within_its_daily_quota(world: dict[str, Any]) -> None:
    desk = Client(world["server"], world["realm"], "desk")
    body = {"nin": NEIGHBOUR["nin"], "evidence": {"method": "otp", "reference": "OTP-5"}}
    answers = [desk.http.post("/v1/subjects/access-history", json=body) for _ in range(HISTORY_READS_PER_DAY + 1)]
    assert [a.status_code for a in answers] == [200] * HISTORY_READS_PER_DAY + [429]
    assert answers[-1].json()["code"] == "rate_limited" and int(answers[-1].headers["retry-after"]) > 0


def test_one_use_raced_and_revocation(world: dict[str, Any]) -> None:
    consent = record(world, max_uses=1)

    async def race() -> list[int]:
        async with httpx.AsyncClient(
            base_url=world["server"].base_url, headers=world["health"].headers, timeout=15
        ) as client:
            body = {
                "nin": PERSON["nin"],
                "purpose": "enrolment",
                "consent_id": consent["id"],
                "attributes": ["family_name"],
            }
            responses = await asyncio.gather(*(client.post("/v1/lookup", json=body) for _ in range(4)))
        return sorted(r.status_code for r in responses)

    assert asyncio.run(race()) == [200, 403, 403, 403]
    assert lookup(world, consent["id"]).json()["reason"] == "exhausted"
    second = record(world)
    assert lookup(world, second["id"]).status_code == 200
    revoked = world["counter"].http.post(f"/v1/consents/{second['id']}/revoke").json()
    assert revoked["status"] == "revoked" and revoked["revoked_at"]
    assert lookup(world, second["id"]).json()["reason"] == "revoked"


def test_consents_are_in_the_log_and_in_the_persons_history(world: dict[str, Any]) -> None:
    consent = record(world)
    world["health"].http.get(f"/v1/consents/{consent['id']}")
    events = world["officer"].http.post("/v1/audit/search", json={"nin": PERSON["nin"]}).json()["events"]
    created = next(e for e in events if e["id"] == consent["transaction_id"])
    assert (created["operation"], created["consent_id"], created["client_id"]) == (
        "consent.create",
        consent["id"],
        "counter",
    )
    history = (
        world["channel"]
        .http.post(
            "/v1/subjects/access-history",
            json={"nin": PERSON["nin"], "evidence": {"method": "signed_form", "reference": "F-77"}},
        )
        .json()
    )
    operations = {e["operation"] for e in history["events"]}
    assert {"consent.create", "consent.read", "lookup"} <= operations


def _policy(world: dict[str, Any], admin: str) -> Path:
    return world["realm"].policies_dir / f"{admin}.yaml"


def _care_verify(world: dict[str, Any], purpose: str) -> httpx.Response:
    return world["health"].http.post(
        "/v1/verify", json={"nin": PERSON["nin"], "purpose": purpose, "claims": {"family_name": PERSON["family_name"]}}
    )


def _metric(world: dict[str, Any], name: str) -> float:
    for line in httpx.get(world["server"].metrics_url, timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_policies_reload_without_restart_and_a_bad_set_is_refused(world: dict[str, Any]) -> None:
    path = _policy(world, "health")
    original = path.read_text()
    assert _care_verify(world, "triage").json()["code"] == "purpose_not_permitted"
    document = yaml.safe_load(original)
    document["purposes"]["triage"] = {
        "legal_basis": "Urgences",
        "consent": "not_required",
        "operations": ["verify"],
        "claims": ["family_name"],
    }
    path.write_text(yaml.safe_dump(document, allow_unicode=True))
    wait_until(lambda: _care_verify(world, "triage").status_code == 200, 10, "the new purpose")
    failures = _metric(world, "jamu_policy_reload_failures_total")
    broken = dict(
        document, purposes={**document["purposes"], "triage": {**document["purposes"]["triage"], "colour": "blue"}}
    )
    path.write_text(yaml.safe_dump(broken, allow_unicode=True))
    wait_until(lambda: _metric(world, "jamu_policy_reload_failures_total") > failures, 10, "the refusal")
    assert _care_verify(world, "triage").status_code == 200  # the previous set is still in force
    assert "health.yaml" in world["server"].logs() and "colour" in world["server"].logs()
    path.write_text(original)
    wait_until(lambda: _care_verify(world, "triage").status_code == 403, 10, "the original set")


def test_sighup_reloads_at_once(tmp_path: Path) -> None:
    realm = build(tmp_path)
    server = GatewayProcess(
        realm.env(GATEWAY_POLICY_RELOAD_INTERVAL_S="0"), factory="tests.support.probe_app:create_durable"
    )
    server.start(tmp_path / "gateway.log")
    try:
        world = {"server": server, "realm": realm, "health": Client(server, realm, "health")}
        path = _policy(world, "health")
        document = yaml.safe_load(path.read_text())
        document["purposes"]["triage"] = {
            "legal_basis": "Urgences",
            "consent": "not_required",
            "operations": ["verify"],
            "claims": ["family_name"],
        }
        path.write_text(yaml.safe_dump(document, allow_unicode=True))
        time.sleep(0.5)
        assert _care_verify(world, "triage").status_code == 403  # nothing watches the files here
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGHUP)
        wait_until(lambda: _care_verify(world, "triage").status_code == 200, 10, "reload on SIGHUP")
        assert server.proc.poll() is None  # reloaded, not restarted
    finally:
        server.stop()
