"""Verification and attribute release over real HTTP against a served gateway: the embedded register
by default, remote REST and IDP backends on loopback when a connectors file says so."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.connectors.population import population, seed_register
from tests.support.fake_backends import FakeBackends
from tests.support.keys import jwks_of, new_key, token_form
from tests.support.realm import Realm, build_realm
from tests.support.servers import GatewayProcess

pytestmark = pytest.mark.e2e
SEED, COUNT = 21, 3000
PEOPLE = list(population(COUNT, SEED))
ACTIVE = [
    p for p in PEOPLE if p["record_status"] == "active" and len(p["birth_date"]) == 10 and p["birth_date"] < "2000"
]
PERSON = ACTIVE[0]
DECEASED = next(p for p in PEOPLE if p["record_status"] == "deceased")
SUSPENDED = next(p for p in PEOPLE if p["record_status"] == "suspended")
DISPLACED = next(p for p in PEOPLE if p["displacement_status"] == "displaced")
UNKNOWN = "100000000000000"

POLICIES = {
    "electoral": {
        "scopes": ["identity:verify", "identity:lookup"],
        "purposes": {
            "voter_roll": {
                "legal_basis": "Loi électorale",
                "consent": "not_required",
                "operations": ["verify"],
                "claims": ["family_name", "given_names", "birth_date", "birth_place"],
                "predicates": ["age_at_least", "alive", "resides_in"],
            }
        },
    },
    "health": {
        "scopes": ["identity:verify", "identity:lookup"],
        "purposes": {
            "care": {
                "legal_basis": "Code de la santé publique",
                "consent": "not_required",
                "operations": ["verify", "lookup"],
                "claims": ["family_name", "given_names", "birth_date", "sex"],
                "predicates": ["alive"],
                "attributes": ["family_name", "given_names", "birth_date", "sex"],
                "claim_details": True,
                "fuzzy_threshold": 0.9,
            },
            "enrolment": {"consent": "required", "operations": ["lookup"], "attributes": ["family_name"]},
        },
    },
    "social": {
        "scopes": ["identity:verify"],
        "purposes": {
            "idp_check": {
                "legal_basis": "Programme PDI",
                "consent": "not_required",
                "operations": ["verify"],
                "claims": ["family_name"],
                "predicates": ["registered_idp", "alive"],
            }
        },
    },
}


def build(root: Path) -> Realm:
    realm = build_realm(root)
    for admin, spec in POLICIES.items():
        client_id = f"{admin}-client"
        realm.keys[client_id] = new_key()
        (realm.policies_dir / f"{admin}.yaml").write_text(
            yaml.safe_dump(
                {
                    "id": admin,
                    "name": admin.title(),
                    "purposes": spec["purposes"],
                    "rate_limits": [{"name": "burst", "limit": 1000, "window": "1s"}],
                    "clients": [
                        {
                            "client_id": client_id,
                            "auth": "private_key_jwt",
                            "jwks": jwks_of(realm.keys[client_id]),
                            "scopes": spec["scopes"],
                        }
                    ],
                },
                allow_unicode=True,
            )
        )
    seed_register(realm.data_dir / "register.db", COUNT, SEED)
    return realm


@pytest.fixture(scope="module")
def realm(tmp_path_factory: pytest.TempPathFactory) -> Realm:
    return build(tmp_path_factory.mktemp("identity"))


@pytest.fixture(scope="module")
def gateway(realm: Realm) -> Iterator[GatewayProcess]:
    server = GatewayProcess(realm.env(), factory="tests.support.probe_app:create_durable")
    server.start(realm.data_dir.parent / "gateway.log")
    yield server
    server.stop()


class Client:
    def __init__(self, gateway: GatewayProcess, realm: Realm, client_id: str) -> None:
        form = token_form(client_id, realm.keys[client_id], f"{gateway.base_url}/oauth2/token")
        token = httpx.post(f"{gateway.base_url}/oauth2/token", data=form, timeout=10).json()["access_token"]
        self.http = httpx.Client(base_url=gateway.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=15)

    def verify(self, body: dict[str, Any]) -> httpx.Response:
        return self.http.post("/v1/verify", json=body)

    def lookup(self, body: dict[str, Any]) -> httpx.Response:
        return self.http.post("/v1/lookup", json=body)


@pytest.fixture(scope="module")
def clients(gateway: GatewayProcess, realm: Realm) -> dict[str, Client]:
    return {name: Client(gateway, realm, f"{name}-client") for name in POLICIES} | {
        "officer": Client(gateway, realm, "oversight-app")
    }


def voter(nin: str, **claims: str) -> dict[str, Any]:
    return {
        "nin": nin,
        "purpose": "voter_roll",
        "claims": claims or {"family_name": PERSON["family_name"]},
        "predicates": [
            {"name": "age_at_least", "value": 18, "as_of": "2027-06-01"},
            {"name": "alive"},
            {"name": "resides_in", "value": PERSON["residence_cercle"]},
        ],
    }


def test_a_voter_is_verified(clients: dict[str, Client]) -> None:
    claims = {
        "family_name": PERSON["family_name"].upper(),
        "given_names": " ".join(reversed(PERSON["given_names"].split())),
        "birth_date": PERSON["birth_date"],
    }
    response = clients["electoral"].verify(voter(PERSON["nin"], **claims))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["match"] is True and "claims" not in body  # no per-claim detail for this purpose
    assert [p["result"] for p in body["predicates"]] == [True, True, True]
    assert len(body["subject_ref"]) >= 20 and body["transaction_id"]
    assert response.headers["RateLimit-Policy"] == '"burst";q=1000;w=1'
    wrong = clients["electoral"].verify(voter(PERSON["nin"], birth_date=PERSON["birth_date"][:4] + "-13-01"))
    assert wrong.status_code == 400  # not a date
    other_year = str(int(PERSON["birth_date"][:4]) + 1)
    assert clients["electoral"].verify(voter(PERSON["nin"], birth_date=other_year)).json()["match"] is False
    assert clients["electoral"].verify(voter(PERSON["nin"], birth_date=PERSON["birth_date"][:4])).json()["match"]


def test_claim_details_and_close_spellings_where_the_purpose_allows(clients: dict[str, Client]) -> None:
    person = next(p for p in ACTIVE if p["family_name"] == "Coulibaly")
    body = {
        "nin": person["nin"],
        "purpose": "care",
        "claims": {"family_name": "Coulibali", "sex": person["sex"]},
        "predicates": [{"name": "alive"}],
    }
    answer = clients["health"].verify(body).json()
    assert answer["claims"] == {"family_name": True, "sex": True} and answer["match"] is True
    far = clients["health"].verify({**body, "claims": {"family_name": "Zzzzzz"}}).json()
    assert far["claims"] == {"family_name": False} and far["match"] is False


def test_unknown_and_suspended_answer_like_nobody_and_only_the_log_knows(clients: dict[str, Client]) -> None:
    unknown = clients["electoral"].verify(voter(UNKNOWN)).json()
    suspended = clients["electoral"].verify(voter(SUSPENDED["nin"], family_name=SUSPENDED["family_name"])).json()
    for body in (unknown, suspended):
        assert body["match"] is False and [p["result"] for p in body["predicates"]] == [False, False, False]
        assert set(body) == {"transaction_id", "subject_ref", "match", "predicates"}
    dead = clients["electoral"].verify(voter(DECEASED["nin"], family_name=DECEASED["family_name"])).json()
    assert dead["match"] is True and dead["predicates"][1] == {"name": "alive", "result": False}
    events = clients["officer"].http.get("/v1/audit/events", params={"operation": "verify", "limit": 1000}).json()
    by_id = {e["id"]: e for e in events["events"]}
    assert by_id[unknown["transaction_id"]]["reason"] == "subject_not_found"
    assert by_id[suspended["transaction_id"]]["reason"] == "subject_suspended"
    event = by_id[dead["transaction_id"]]
    assert (event["decision"], event["purpose"], event["legal_basis"]) == ("permit", "voter_roll", "Loi électorale")
    assert event["attributes_requested"] == ["family_name"] and event["attributes_released"] == []


def test_subject_refs_are_stable_per_administration_and_unlinkable_across(clients: dict[str, Client]) -> None:
    first = clients["electoral"].verify(voter(PERSON["nin"])).json()["subject_ref"]
    again = clients["electoral"].verify(voter(" ".join(PERSON["nin"]))).json()["subject_ref"]
    other = (
        clients["health"]
        .verify({"nin": PERSON["nin"], "purpose": "care", "claims": {"sex": PERSON["sex"]}})
        .json()["subject_ref"]
    )
    assert first == again and first != other


def test_registered_idp(clients: dict[str, Client]) -> None:
    body = {"nin": DISPLACED["nin"], "purpose": "idp_check", "predicates": [{"name": "registered_idp"}]}
    assert clients["social"].verify(body).json()["predicates"] == [{"name": "registered_idp", "result": True}]
    body["nin"] = PERSON["nin"]
    assert clients["social"].verify(body).json()["predicates"][0]["result"] is (
        PERSON["displacement_status"] == "displaced"
    )


def test_lookup_releases_what_the_purpose_grants(clients: dict[str, Client]) -> None:
    wanted = ["family_name", "birth_date"]
    response = clients["health"].lookup({"nin": PERSON["nin"], "purpose": "care", "attributes": wanted})
    assert response.status_code == 200, response.text
    assert response.json()["attributes"] == {k: PERSON[k] for k in wanted}
    denied = clients["health"].lookup(
        {"nin": PERSON["nin"], "purpose": "care", "attributes": ["family_name", "residence_commune", "father_name"]}
    )
    assert denied.status_code == 403
    assert denied.json()["code"] == "attribute_not_permitted"
    assert denied.json()["attributes"] == ["father_name", "residence_commune"]
    assert PERSON["family_name"] not in denied.text
    for nin, outcome in ((UNKNOWN, "subject_not_found"), (SUSPENDED["nin"], "subject_suspended")):
        missing = clients["health"].lookup({"nin": nin, "purpose": "care", "attributes": ["family_name"]})
        assert missing.status_code == 404 and missing.json()["code"] == "subject_not_found"
        event = clients["officer"].http.post("/v1/audit/search", json={"nin": nin}).json()["events"][-1]
        assert (event["reason"], event["attributes_released"]) == (outcome, [])
    released = clients["officer"].http.post("/v1/audit/search", json={"nin": PERSON["nin"]}).json()["events"]
    assert any(e["operation"] == "lookup" and e["attributes_released"] == wanted for e in released)


@pytest.mark.parametrize(
    "client, body, status, code",
    [
        (
            "electoral",
            {"nin": "120394857602914", "purpose": "marketing", "claims": {"family_name": "X"}},
            403,
            "purpose_not_permitted",
        ),
        (
            "electoral",
            {"nin": "120394857602914", "purpose": "voter_roll", "claims": {"sex": "F"}},
            403,
            "attribute_not_permitted",
        ),
        (
            "social",
            {
                "nin": "120394857602914",
                "purpose": "idp_check",
                "predicates": [{"name": "resides_in", "value": "Mopti"}],
            },
            403,
            "attribute_not_permitted",
        ),
        (
            "health",
            {"nin": "120394857602914", "purpose": "enrolment", "claims": {"family_name": "X"}},
            403,
            "operation_not_permitted",
        ),
    ],
)
def test_policy_refusals(clients: dict[str, Client], client: str, body: dict, status: int, code: str) -> None:
    response = clients[client].verify(body)
    assert (response.status_code, response.json()["code"]) == (status, code)
    if code == "attribute_not_permitted":  # docs/contract.md §4: names what was refused, claim or predicate
        assert response.json()["attributes"] == [
            *body.get("claims", {}),
            *(p["name"] for p in body.get("predicates", [])),
        ]


def test_consent_based_purposes_need_a_consent(clients: dict[str, Client]) -> None:
    body = {"nin": PERSON["nin"], "purpose": "enrolment", "attributes": ["family_name"]}
    assert clients["health"].lookup(body).json()["code"] == "consent_required"
    assert clients["health"].lookup({**body, "consent_id": "c-unknown"}).json()["code"] == "consent_invalid"
    electoral = clients["electoral"].lookup(
        {"nin": PERSON["nin"], "purpose": "voter_roll", "attributes": ["family_name"]}
    )
    assert electoral.json()["code"] == "operation_not_permitted"


@pytest.mark.parametrize(
    "raw, pointer",
    [
        (b'{"nin": "120394857602914", "purpose": "voter_roll"', ""),
        (b'{"nin": 120394857602914, "purpose": "voter_roll", "claims": {"family_name": "X"}}', "/nin"),
        (b'{"nin": "12", "purpose": "voter_roll", "claims": {"family_name": "X"}}', "/nin"),
        (b'{"nin": "120394857602914", "purpose": "voter_roll"}', ""),
        (b'{"nin": "120394857602914", "purpose": "voter_roll", "claims": {"shoe_size": "42"}}', "/claims/shoe_size"),
        (
            b'{"nin": "120394857602914", "purpose": "voter_roll", "predicates": [{"name": "age_at_least"}]}',
            "/predicates/0",
        ),
        (
            b'{"nin": "120394857602914", "purpose": "voter_roll", "predicates": [{"name": "alive", "value": 3}]}',
            "/predicates/0",
        ),
        (b'{"nin": "120394857602914", "purpose": "voter_roll", "claims": {"family_name": ""}}', "/claims/family_name"),
        (b"[]", ""),
    ],
)
def test_bad_bodies_are_400_with_a_pointer(clients: dict[str, Client], raw: bytes, pointer: str) -> None:
    response = clients["electoral"].http.post("/v1/verify", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    problem = response.json()
    assert problem["code"] == "invalid_request"
    assert any(e.get("pointer", "").startswith(pointer) for e in problem["errors"]), problem["errors"]
    assert "120394857602914" not in response.text


def test_unicode_tricks_are_just_names(clients: dict[str, Client]) -> None:
    family = PERSON["family_name"]
    for spelled in ("\u200b" + family, "\u202e" + family, family.upper() + "\u0301", f" {family}\u00a0"):
        response = clients["electoral"].verify(voter(PERSON["nin"], family_name=spelled))
        assert response.status_code == 200
        assert response.json()["match"] is True, repr(spelled)
    fullwidth = "".join(chr(ord(c) + 0xFEE0) for c in PERSON["nin"])  # the NIN in fullwidth digits
    assert clients["electoral"].verify(voter(fullwidth)).json()["match"] is True
    odd = clients["electoral"].verify(voter(PERSON["nin"], family_name="\ud800"[:0] + "\U0001f600" * 50))
    assert odd.status_code == 200 and odd.json()["match"] is False


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, FakeBackends, Realm]]:
    root = tmp_path_factory.mktemp("remote")
    realm = build(root)
    backends = FakeBackends(PEOPLE).start()
    connectors = root / "connectors.yaml"
    connectors.write_text(
        yaml.safe_dump(
            backends.connectors_file(read_timeout_s=0.5, connect_timeout_s=0.5, retries=1, failure_threshold=1000)
        )
    )
    server = GatewayProcess(
        realm.env(GATEWAY_CONNECTORS_FILE=str(connectors)), factory="tests.support.probe_app:create_durable"
    )
    server.start(root / "gateway.log")
    yield server, backends, realm
    server.stop()
    backends.stop()


def test_remote_backends_serve_and_fail_cleanly(remote: tuple[GatewayProcess, FakeBackends, Realm]) -> None:
    server, backends, realm = remote
    social = Client(server, realm, "social-client")
    body = {
        "nin": DISPLACED["nin"],
        "purpose": "idp_check",
        "claims": {"family_name": DISPLACED["family_name"]},
        "predicates": [{"name": "registered_idp"}, {"name": "alive"}],
    }
    backends.mode = "ok"
    backends.requests.clear()
    ok = social.verify(body)
    assert ok.status_code == 200 and ok.json()["match"] is True
    assert ok.json()["predicates"][0]["result"] is True
    assert len(backends.requests) == 2  # the register and the IDP registry, once each
    assert all(
        r["headers"]["traceparent"].split("-")[1] == backends.requests[0]["headers"]["traceparent"].split("-")[1]
        for r in backends.requests
    )
    backends.requests.clear()
    refused = social.verify({**body, "purpose": "voter_roll"})
    assert refused.status_code == 403 and backends.requests == []  # policy first, no backend asked
    backends.mode = "slow"
    started = time.monotonic()
    slow = social.verify(body)
    assert (slow.status_code, slow.json()["code"]) == (503, "backend_unavailable")
    assert time.monotonic() - started < 4
    backends.mode = "malformed"
    bad = social.verify(body)
    assert (bad.status_code, bad.json()["code"]) == (502, "backend_error")
    assert "family_name" not in bad.json()["detail"] or DISPLACED["family_name"] not in bad.text
    backends.mode = "ok"
    assert social.verify(body).status_code == 200
    officer = Client(server, realm, "oversight-app")
    events = officer.http.get("/v1/audit/events", params={"operation": "verify", "limit": 100}).json()["events"]
    decisions = {e["id"]: (e["decision"], e["reason"]) for e in events}
    assert decisions[slow.json()["transaction_id"]] == ("error", "backend_unavailable")
    assert decisions[bad.json()["transaction_id"]] == ("error", "backend_error")
