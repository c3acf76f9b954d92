"""Life events over real HTTP against served gateways (docs/contract.md §15): declarations into the embedded
register, pull feeds with stable cursors, Standard Webhooks pushes to loopback subscribers, and the
access-log trail of each event released."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cloudevents.core.bindings.http import HTTPMessage, from_http_event

from gateway.connectors.population import population, seed_register
from tests.support.keys import jwks_of, new_key, token_form
from tests.support.realm import Realm, build_realm
from tests.support.servers import REPO, GatewayProcess, wait_until
from tests.support.webhook_receiver import Delivery, Receiver

pytestmark = pytest.mark.e2e
JAMU = [sys.executable, "-m", "gateway.cli"]
SEED, COUNT = 41, 300
PEOPLE = list(population(COUNT, SEED))
ALIVE = [
    p for p in PEOPLE if p["record_status"] == "active" and len(p["birth_date"]) == 10 and p["birth_date"] < "2000"
]
DEAD = [p for p in PEOPLE if p["record_status"] == "deceased"]
FAST_PUSH = {
    "GATEWAY_EVENTS_RETRY_BACKOFF_S": "0.2,0.4,0.8",
    "GATEWAY_EVENTS_POLL_S": "0.2",
    "GATEWAY_POLICY_RELOAD_INTERVAL_S": "0.3",
    "GATEWAY_AUDIT_SEAL_INTERVAL_S": "1",
}


def _client(realm: Realm, client_id: str, scopes: list[str]) -> dict[str, Any]:
    realm.keys[client_id] = new_key()
    return {"client_id": client_id, "auth": "private_key_jwt", "jwks": jwks_of(realm.keys[client_id]), "scopes": scopes}


def write_policies(
    realm: Realm,
    push_url: str | None,
    births_url: str | None = None,
    death_attributes: tuple[str, ...] = ("nin", "death_date"),
) -> None:
    keys = dict(realm.keys)
    (realm.policies_dir / "centre.yaml").write_text(
        yaml.safe_dump(
            {
                "id": "centre",
                "name": "Centre d'état civil de Ségou",
                "sector": "civil_registration",
                "clients": [_client(realm, "centre-app", ["register:declare"])],
            },
            allow_unicode=True,
        )
    )
    (realm.policies_dir / "centre2.yaml").write_text(
        yaml.safe_dump(
            {
                "id": "centre2",
                "name": "Centre d'état civil de Mopti",
                "sector": "civil_registration",
                "clients": [_client(realm, "centre2-app", ["register:declare"])],
            },
            allow_unicode=True,
        )
    )
    subscriptions: dict[str, Any] = {
        "deaths": {"purpose": "roll", "events": ["death"], "attributes": list(death_attributes)}
    }
    if push_url:
        subscriptions["deaths_push"] = {
            "purpose": "roll",
            "events": ["death"],
            "attributes": list(death_attributes),
            "endpoint": push_url,
            "endpoint_internal": True,
        }
    (realm.policies_dir / "electoral.yaml").write_text(
        yaml.safe_dump(
            {
                "id": "electoral",
                "name": "Commission électorale",
                "clients": [_client(realm, "electoral-app", ["events:read"])],
                "purposes": {
                    "roll": {
                        "legal_basis": "Loi électorale, art. 52",
                        "consent": "not_required",
                        "operations": ["verify"],
                    }
                },
                "subscriptions": subscriptions,
            },
            allow_unicode=True,
        )
    )
    insurance: dict[str, Any] = {
        "births": {"purpose": "coverage", "events": ["birth", "death"], "attributes": ["family_name", "birth_date"]}
    }
    if births_url:
        insurance["births"].update(endpoint=births_url, endpoint_internal=True)
    (realm.policies_dir / "insurance.yaml").write_text(
        yaml.safe_dump(
            {
                "id": "insurance",
                "name": "Caisse d'assurance maladie",
                "clients": [_client(realm, "insurance-app", ["events:read"])],
                "purposes": {
                    "coverage": {"legal_basis": "Loi AMO", "consent": "not_required", "operations": ["verify"]}
                },
                "subscriptions": insurance,
            },
            allow_unicode=True,
        )
    )
    for name, key in keys.items():  # a rewrite keeps the keys the clients already hold
        realm.keys.setdefault(name, key)


def build(root: Path, push_url: str | None = None, births_url: str | None = None) -> Realm:
    realm = build_realm(root)
    write_policies(realm, push_url, births_url)
    seed_register(realm.data_dir / "register.db", COUNT, SEED)
    return realm


class Api:
    def __init__(self, gateway: GatewayProcess, realm: Realm, client_id: str) -> None:
        self.gateway, self.realm, self.client_id = gateway, realm, client_id
        self.http = httpx.Client(base_url=gateway.base_url, timeout=30)
        self.refresh()

    def refresh(self) -> None:
        form = token_form(self.client_id, self.realm.keys[self.client_id], f"{self.gateway.base_url}/oauth2/token")
        token = httpx.post(f"{self.gateway.base_url}/oauth2/token", data=form, timeout=10).json()["access_token"]
        self.http.headers["Authorization"] = f"Bearer {token}"

    def declare(self, key: str, **body: Any) -> httpx.Response:
        return self.http.post("/v1/declarations", json=body, headers={"Idempotency-Key": key})

    def pull(self, subscription: str, after: str | None = None, limit: int = 100) -> httpx.Response:
        params: dict[str, Any] = {"subscription": subscription, "limit": limit}
        if after is not None:
            params["after"] = after
        return self.http.get("/v1/events", params=params)


def serve(realm: Realm, log: Path, **env: str) -> GatewayProcess:
    return GatewayProcess(realm.env(**{**FAST_PUSH, **env}), factory="tests.support.probe_app:create_durable").start(
        log
    )


def person(realm: Realm, nin: str) -> dict[str, Any] | None:
    with sqlite3.connect(realm.data_dir / "register.db") as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM people WHERE nin = ?", (nin,)).fetchone()
    return None if row is None else dict(row)


def register_state(realm: Realm) -> tuple[Any, ...]:
    with sqlite3.connect(realm.data_dir / "register.db") as db:
        return (
            db.execute(
                "SELECT count(*), group_concat(nin || record_status || coalesce(death_date, '')) FROM people"
            ).fetchone(),
            db.execute("SELECT count(*) FROM declarations").fetchone(),
            db.execute("SELECT count(*) FROM feed").fetchone(),
        )


def history(gateway: GatewayProcess, realm: Realm, nin: str) -> list[dict[str, Any]]:
    channel = Api(gateway, realm, "channel-app")
    response = channel.http.post(
        "/v1/subjects/access-history",
        json={"nin": nin, "evidence": {"method": "in_person", "reference": "FORM-2026-0042"}},
    )
    assert response.status_code == 200, response.text
    return response.json()["events"]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[tuple[GatewayProcess, Realm]]:
    root = tmp_path_factory.mktemp("life-events")
    realm = build(root, push_url=receiver.url)
    gateway = serve(realm, root / "gateway.log")
    trust_keys(gateway, realm, receiver)
    yield gateway, realm
    gateway.stop()


def _token(gateway: GatewayProcess, realm: Realm, client_id: str) -> str:
    form = token_form(client_id, realm.keys[client_id], f"{gateway.base_url}/oauth2/token")
    return httpx.post(f"{gateway.base_url}/oauth2/token", data=form, timeout=10).json()["access_token"]


def trust_keys(gateway: GatewayProcess, realm: Realm, *receivers: Receiver) -> None:
    """What a subscriber does once, out of band: fetch the gateway's push signing keys and trust them."""
    keys = httpx.get(
        f"{gateway.base_url}/v1/events/signing-keys",
        headers={"Authorization": f"Bearer {_token(gateway, realm, 'electoral-app')}"},
    ).json()["keys"]
    for receiver in receivers:
        receiver.public_keys[:] = [k["public_key"] for k in keys]


@contextlib.contextmanager
def pushing(
    tmp_path: Path, receiver: Receiver, births: Receiver | None = None, **env: str
) -> Iterator[tuple[GatewayProcess, Realm]]:
    """A gateway of its own pushing the death feed to `receiver` (and births to `births`), both trusted."""
    realm = build(tmp_path, push_url=receiver.url, births_url=births.url if births else None)
    gateway = serve(realm, tmp_path / "gateway.log", **env)
    try:
        trust_keys(gateway, realm, receiver, *([births] if births else []))
        yield gateway, realm
    finally:
        gateway.stop()
        receiver.stop()
        if births is not None:
            births.stop()


def _wait_pushed(receiver: Receiver, count: int, timeout: float = 20) -> list[Delivery]:
    wait_until(lambda: len(receiver.accepted()) >= count, timeout, f"{count} deliveries")
    return receiver.accepted()


# -- declarations -------------------------------------------------------------------------------------


def test_a_birth_gets_a_new_nin_and_a_death_versions_the_record(world: tuple[GatewayProcess, Realm]) -> None:
    gateway, realm = world
    centre = Api(gateway, realm, "centre-app")
    mother = ALIVE[0]
    born = centre.declare(
        "b-1",
        type="birth",
        data={
            "family_name": "Coulibaly",
            "given_names": "Awa",
            "sex": "F",
            "birth_date": "2026-11-30",
            "birth_place": "Ségou",
            "mother_nin": mother["nin"],
            "mother_name": "Fanta Coulibaly",
        },
    )
    assert born.status_code == 201, born.text
    doc = born.json()
    assert doc["version"] == 1 and len(doc["nin"]) == 15 and doc["nin"].startswith("2")
    assert doc["transaction_id"] and doc["event_id"]
    record = person(realm, doc["nin"])
    assert record is not None and record["family_name"] == "Coulibaly" and record["record_status"] == "active"

    died = centre.declare(
        "d-1", type="death", nin=ALIVE[1]["nin"], data={"death_date": "2026-11-01", "death_place": "Mopti"}
    )
    assert died.status_code == 201, died.text
    assert died.json()["version"] == 2 and died.json()["nin"] == ALIVE[1]["nin"]
    after = person(realm, ALIVE[1]["nin"])
    assert after is not None and after["record_status"] == "deceased" and after["death_date"] == "2026-11-01"
    # The person's history shows the declaration.
    assert any(
        e["operation"] == "declaration" and e["administration"] == "centre"
        for e in history(gateway, realm, ALIVE[1]["nin"])
    )


def test_impossible_and_malformed_declarations_change_nothing(world: tuple[GatewayProcess, Realm]) -> None:
    gateway, realm = world
    centre = Api(gateway, realm, "centre-app")
    before = register_state(realm)
    cases = [
        (
            centre.declare("x-1", type="death", nin=DEAD[0]["nin"], data={"death_date": "2026-10-01"}),
            422,
            "already_deceased",
        ),
        (
            centre.declare(
                "x-2",
                type="birth",
                data={
                    "family_name": "Diarra",
                    "given_names": "Ali",
                    "sex": "M",
                    "birth_date": "2099-01-01",
                    "birth_place": "Kayes",
                },
            ),
            422,
            "date_in_future",
        ),
        (
            centre.declare("x-3", type="death", nin=ALIVE[2]["nin"], data={"death_date": "1901-01-01"}),
            422,
            "death_before_birth",
        ),
        (
            centre.declare("x-4", type="death", nin="100000000000000", data={"death_date": "2026-10-01"}),
            422,
            "subject_not_found",
        ),
        (
            centre.declare(
                "x-5", type="marriage", nin=DEAD[0]["nin"], data={"spouse_nin": ALIVE[3]["nin"], "date": "2026-01-01"}
            ),
            422,
            "subject_deceased",
        ),
    ]
    for response, status, reason in cases:
        assert response.status_code == status, response.text
        assert response.json()["code"] == "declaration_rejected" and response.json()["reason"] == reason
        assert response.headers["content-type"].startswith("application/problem+json")
    malformed = [
        centre.declare("m-1", type="death", nin=ALIVE[2]["nin"], data={"death_date": "2026-10-01", "cause": "x"}),
        centre.declare("m-2", type="death", nin=ALIVE[2]["nin"], data={"death_date": 20261001}),
        centre.declare("m-3", type="death", nin=ALIVE[2]["nin"], data={"death_date": "2026-02-30"}),
        centre.declare("m-4", type="death", data={"death_date": "2026-10-01"}),
        centre.declare("m-5", type="exodus", nin=ALIVE[2]["nin"], data={}),
        centre.declare("m-6", type="birth", nin=ALIVE[2]["nin"], data={}),
        centre.http.post(
            "/v1/declarations",
            content=b'{"type": "death", "nin": ',
            headers={"Idempotency-Key": "m-7", "content-type": "application/json"},
        ),
        centre.http.post(
            "/v1/declarations", json={"type": "death", "nin": ALIVE[2]["nin"], "data": {"death_date": "2026-10-01"}}
        ),  # no key
        centre.declare("m-9", type="death", nin="\uff11\uff12\uff13\u202e", data={"death_date": "2026-10-01"}),
    ]
    pointers = []
    for response in malformed:
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "invalid_request"
        pointers.append(response.json()["errors"][0]["pointer"])
    assert "/data/cause" in pointers and "/headers/Idempotency-Key" in pointers and "/nin" in pointers
    assert register_state(realm) == before


def test_an_idempotency_key_answers_the_first_answer_or_409(world: tuple[GatewayProcess, Realm]) -> None:
    gateway, realm = world
    centre = Api(gateway, realm, "centre-app")
    body = {
        "type": "displacement",
        "nin": ALIVE[4]["nin"],
        "data": {
            "displacement_status": "displaced",
            "displacement_site": "Site de Faladié",
            "effective_date": "2026-09-01",
        },
    }
    first = centre.declare("k-1", **body)
    assert first.status_code == 201, first.text
    state = register_state(realm)
    again = centre.declare("k-1", **body)
    assert again.status_code == 201
    assert {k: v for k, v in again.json().items() if k != "transaction_id"} == {
        k: v for k, v in first.json().items() if k != "transaction_id"
    }
    other = centre.declare("k-1", **{**body, "data": {**body["data"], "displacement_site": "Site de Sénou"}})
    assert other.status_code == 409 and other.json()["code"] == "conflict"
    assert register_state(realm) == state
    # Another administration's key space is its own: its k-1 is a new declaration, not a conflict.
    other_centre = Api(gateway, realm, "centre2-app")
    theirs = other_centre.declare(
        "k-1",
        type="displacement",
        nin=ALIVE[6]["nin"],
        data={"displacement_status": "returned", "effective_date": "2026-10-01"},
    )
    assert theirs.status_code == 201 and theirs.json()["event_id"] != first.json()["event_id"]
    # A client without register:declare is refused.
    electoral = Api(gateway, realm, "electoral-app")
    assert electoral.declare("k-1", **body).status_code == 403


def test_corrections_and_voids_reach_every_subscriber_of_the_original(
    world: tuple[GatewayProcess, Realm], receiver: Receiver
) -> None:
    gateway, realm = world
    centre = Api(gateway, realm, "centre-app")
    nin = ALIVE[5]["nin"]
    died = centre.declare("v-1", type="death", nin=nin, data={"death_date": "2026-10-10"}).json()
    corrected = centre.declare("v-2", type="death", corrects=died["event_id"], data={"death_date": "2026-10-11"})
    assert corrected.status_code == 201, corrected.text
    assert person(realm, nin)["death_date"] == "2026-10-11"
    wrong_type = centre.declare("v-3", type="birth", voids=died["event_id"], data={})
    assert wrong_type.status_code == 422 and wrong_type.json()["reason"] == "type_mismatch"
    voided = centre.declare("v-4", type="death", voids=died["event_id"], data={})
    assert voided.status_code == 201, voided.text
    record = person(realm, nin)
    assert record["record_status"] == "active" and record["death_date"] is None and voided.json()["version"] == 4
    again = centre.declare("v-5", type="death", voids=died["event_id"], data={})
    assert again.status_code == 422 and again.json()["reason"] == "already_voided"

    # `deaths` (pull) and `births` (insurance, lists death too) got the death: both get its void, though
    # neither lists death.voided; the pushed subscription as well.
    for client_id, subscription in (("electoral-app", "deaths"), ("insurance-app", "births")):
        api = Api(gateway, realm, client_id)
        events = api.pull(subscription, limit=1000).json()["events"]
        chain = [
            e
            for e in events
            if e["id"] == died["event_id"]
            or e.get("corrects") == died["event_id"]
            or e.get("voids") == died["event_id"]
        ]
        assert [e["type"] for e in chain] == [
            "ml.etatcivil.death",
            "ml.etatcivil.death.corrected",
            "ml.etatcivil.death.voided",
        ], (subscription, chain)
    pushed = _wait_pushed(receiver, 1)
    wait_until(lambda: any(d.event.get("voids") == died["event_id"] for d in receiver.accepted()), 20, "void pushed")
    assert pushed


# -- pull -----------------------------------------------------------------------------------------------


def test_the_pull_feed_pages_with_stable_cursors_and_logs_each_release(world: tuple[GatewayProcess, Realm]) -> None:
    gateway, realm = world
    centre = Api(gateway, realm, "centre-app")
    nins = [p["nin"] for p in ALIVE[10:16]]
    for i, nin in enumerate(nins):
        assert centre.declare(f"p-{i}", type="death", nin=nin, data={"death_date": "2026-11-15"}).status_code == 201
    electoral = Api(gateway, realm, "electoral-app")
    pages, cursor, seen = [], None, []
    while True:
        response = electoral.pull("deaths", after=cursor, limit=2)
        assert response.status_code == 200, response.text
        doc = response.json()
        assert "next_cursor" in doc and doc["transaction_id"]
        pages.append(doc)
        seen += doc["events"]
        if not doc["events"]:
            assert doc["next_cursor"] == cursor  # nothing new: the same position
            break
        cursor = doc["next_cursor"]
    sequences = [int(e["sequence"]) for e in seen]
    assert sequences == list(range(1, len(seen) + 1))  # contiguous per subscription
    ours = [e for e in seen if e["data"].get("nin") in nins]
    assert len(ours) == len(nins)
    for event in ours:
        parsed = from_http_event(
            HTTPMessage(
                headers={"content-type": "application/cloudevents+json"}, body=httpx.Response(200, json=event).content
            )
        )
        assert parsed.get_type() == "ml.etatcivil.death" and parsed.get_id() == event["id"]
        assert set(event["data"]) == {"nin", "death_date", "version"}  # only the subscription's attributes
        assert event["subject"] and event["subject"] != event["data"]["nin"]
    # A replay from an old cursor gives the same events.
    replay = electoral.pull("deaths", after=pages[1]["next_cursor"], limit=2).json()["events"]
    assert replay == pages[2]["events"]
    # Without a cursor the feed starts at its first event.
    assert electoral.pull("deaths", limit=1).json()["events"][0]["sequence"] == "1"
    # Each event released is in that person's history, with who received it.
    wait_until(
        lambda: any(
            e["operation"] == "events.read" and e["administration"] == "electoral"
            for e in history(gateway, realm, nins[0])
        ),
        10,
        "events.read in history",
    )


def test_a_feed_is_its_administrations_own(world: tuple[GatewayProcess, Realm]) -> None:
    gateway, realm = world
    insurance = Api(gateway, realm, "insurance-app")
    assert insurance.pull("deaths").status_code == 404
    assert insurance.pull("nothing").status_code == 404
    assert insurance.http.get("/v1/events/subscriptions/deaths").status_code == 404
    assert insurance.pull("births", after="not-a-cursor").status_code == 400
    assert insurance.pull("births", after="ZmVlZDox" + "A" * 40).status_code == 400
    assert insurance.pull("births", limit=0).status_code == 400
    centre = Api(gateway, realm, "centre-app")
    assert centre.pull("births").status_code == 403  # no events:read
    assert httpx.get(f"{gateway.base_url}/v1/events", params={"subscription": "births"}).status_code == 401


# -- push -----------------------------------------------------------------------------------------------


def test_pushed_events_are_signed_cloudevents_in_sequence(
    world: tuple[GatewayProcess, Realm], receiver: Receiver
) -> None:
    gateway, realm = world
    centre = Api(gateway, realm, "centre-app")
    nin = ALIVE[20]["nin"]
    declared = time.monotonic()
    event_id = centre.declare("push-1", type="death", nin=nin, data={"death_date": "2026-11-20"}).json()["event_id"]
    wait_until(lambda: any(d.event["id"] == event_id for d in receiver.accepted()), 5, "pushed within 5 s")
    assert time.monotonic() - declared < 5
    assert not receiver.refused  # every delivery carried a valid v1a signature
    deliveries = receiver.accepted()
    sequences = [int(d.event["sequence"]) for d in deliveries]
    assert sequences == sorted(sequences) and sequences[0] == 1
    mine = next(d for d in deliveries if d.event["id"] == event_id)
    assert mine.headers["webhook-id"] == event_id
    assert mine.headers["content-type"] == "application/cloudevents+json"
    assert mine.event["data"] == {"nin": nin, "death_date": "2026-11-20", "version": 2}
    wait_until(
        lambda: any(
            e["operation"] == "events.deliver" and e["administration"] == "electoral"
            for e in history(gateway, realm, nin)
        ),
        10,
        "events.deliver in history",
    )
    status = Api(gateway, realm, "electoral-app").http.get("/v1/events/subscriptions/deaths_push").json()
    assert status["push"]["disabled"] is None and status["dead_letters"] == []


def test_a_subscriber_down_gets_everything_afterwards_in_sequence(tmp_path: Path) -> None:
    down = {"until": time.time() + 1e9}
    receiver = Receiver(answer=lambda d: (503, {}, 0.0) if time.time() < down["until"] else (200, {}, 0.0)).start()
    with pushing(tmp_path, receiver) as (gateway, realm):
        centre = Api(gateway, realm, "centre-app")
        ids = [
            centre.declare(f"down-{i}", type="death", nin=p["nin"], data={"death_date": "2026-11-02"}).json()[
                "event_id"
            ]
            for i, p in enumerate(ALIVE[:12])
        ]
        wait_until(lambda: len(receiver.received) >= 3, 20, "retries while down")
        electoral = Api(gateway, realm, "electoral-app")
        push = electoral.http.get("/v1/events/subscriptions/deaths_push").json()["push"]
        assert push["attempts"] >= 1 and push["last_error"] == "503" and push["backlog"] == 12
        ready = httpx.get(f"{gateway.base_url}/readyz").json()
        assert (
            ready["checks"]["events"]["backlog"] == 12
            and "electoral/deaths_push" in ready["checks"]["events"]["failing"]
        )
        down["until"] = 0  # back up
        delivered = _wait_pushed(receiver, 12, timeout=30)
        assert [d.event["id"] for d in delivered] == ids  # in sequence, none lost
        assert [int(d.event["sequence"]) for d in delivered] == list(range(1, 13))
        by_id: dict[str, set[str]] = {}
        for d in receiver.received:  # a retried event always came with the same webhook-id
            by_id.setdefault(d.event["id"], set()).add(d.headers["webhook-id"])
        assert all(ids == {event_id} for event_id, ids in by_id.items())
        wait_until(
            lambda: httpx.get(f"{gateway.base_url}/readyz").json()["checks"]["events"]["backlog"] == 0,
            10,
            "backlog drained",
        )


def test_sigkill_between_the_register_change_and_delivery_loses_nothing(tmp_path: Path) -> None:
    up = {"ok": False}
    receiver = Receiver(answer=lambda d: (200, {}, 0.0) if up["ok"] else (500, {}, 0.0)).start()
    with pushing(tmp_path, receiver) as (gateway, realm):
        centre = Api(gateway, realm, "centre-app")
        ids = [
            centre.declare(f"kill-{i}", type="death", nin=p["nin"], data={"death_date": "2026-11-03"}).json()[
                "event_id"
            ]
            for i, p in enumerate(ALIVE[:5])
        ]
        assert gateway.proc is not None
        os.kill(gateway.proc.pid, signal.SIGKILL)
        gateway.proc.wait(10)
        up["ok"] = True
        assert not any(d.headers.get("x-acknowledged") for d in receiver.received)
        again = GatewayProcess(gateway.env, factory=gateway.factory, port=gateway.port).start(tmp_path / "again.log")
        try:
            delivered = _wait_pushed(receiver, 5, timeout=40)
            assert [d.event["id"] for d in delivered] == ids
            electoral = Api(again, realm, "electoral-app")
            assert [e["id"] for e in electoral.pull("deaths").json()["events"]] == ids
        finally:
            again.stop()


def test_gone_disables_retry_after_is_honoured_and_a_slow_subscriber_holds_only_itself(tmp_path: Path) -> None:
    gone = Receiver(answer=lambda d: (410, {}, 0.0)).start()
    slow = Receiver(answer=lambda d: (200, {}, 3.0)).start()  # the insurance fund's endpoint: 3 s an answer
    with pushing(tmp_path, gone, births=slow) as (gateway, realm):
        centre = Api(gateway, realm, "centre-app")
        electoral = Api(gateway, realm, "electoral-app")
        declared = time.monotonic()
        for i, p in enumerate(ALIVE[:3]):
            assert (
                centre.declare(f"g-{i}", type="death", nin=p["nin"], data={"death_date": "2026-11-04"}).status_code
                == 201
            )
        wait_until(
            lambda: electoral.http.get("/v1/events/subscriptions/deaths_push").json()["push"]["disabled"],
            15,
            "410 disables the endpoint",
        )
        # The insurance fund's endpoint holds its one connection 3 s an answer; the electoral endpoint was
        # served meanwhile, on its own.
        assert time.monotonic() - declared < 2.5
        assert len(slow.received) <= 1
        time.sleep(1)
        assert len(gone.received) == 1  # disabled at once: no retries against a 410
        # A replay enables the endpoint again and starts from the cursor given.
        calls = {"n": 0}

        def later(_: Delivery) -> tuple[int, dict[str, str], float]:
            calls["n"] += 1
            return (429, {"Retry-After": "2"}, 0.0) if calls["n"] == 1 else (200, {}, 0.0)

        gone.answer = later
        gone.received.clear()
        assert electoral.http.post("/v1/events/subscriptions/deaths_push/replay", json={}).status_code == 202
        wait_until(lambda: len(gone.accepted()) == 3, 20, "replayed after 429")
        first, second = gone.received[0], gone.received[1]
        assert second.at - first.at >= 1.8  # Retry-After: 2 was honoured
        assert [d.event["sequence"] for d in gone.accepted()] == ["1", "2", "3"]


def test_a_policy_change_removes_an_attribute_from_retries_and_replays(tmp_path: Path) -> None:
    failing = {"on": True}
    receiver = Receiver(answer=lambda d: (500, {}, 0.0) if failing["on"] else (200, {}, 0.0)).start()
    with pushing(tmp_path, receiver) as (gateway, realm):
        centre = Api(gateway, realm, "centre-app")
        nin = ALIVE[0]["nin"]
        assert centre.declare("pc-1", type="death", nin=nin, data={"death_date": "2026-11-05"}).status_code == 201
        wait_until(lambda: len(receiver.received) >= 1, 10, "first attempt")
        assert "nin" in receiver.received[0].event["data"]
        electoral = Api(gateway, realm, "electoral-app")
        assert "nin" in electoral.pull("deaths").json()["events"][0]["data"]
        write_policies(realm, receiver.url, death_attributes=("death_date",))
        wait_until(lambda: "nin" not in electoral.pull("deaths").json()["events"][0]["data"], 10, "policy reloaded")
        failing["on"] = False
        delivered = _wait_pushed(receiver, 1)
        assert delivered[0].event["data"] == {"death_date": "2026-11-05", "version": 2}
        entries = [e for e in history(gateway, realm, nin) if e["operation"] in ("events.read", "events.deliver")]
        assert entries and entries[-1]["attributes_released"] == ["death_date"]


def test_an_endpoint_outside_the_internal_network_must_resolve_to_public_addresses(tmp_path: Path) -> None:
    realm = build(tmp_path)
    policy = yaml.safe_load((realm.policies_dir / "electoral.yaml").read_text())
    policy["subscriptions"]["deaths_push"] = {
        "purpose": "roll",
        "events": ["death"],
        "attributes": ["death_date"],
        "endpoint": "https://localhost:9/hooks",
    }
    (realm.policies_dir / "electoral.yaml").write_text(yaml.safe_dump(policy))
    gateway = serve(realm, tmp_path / "gateway.log")
    try:
        centre = Api(gateway, realm, "centre-app")
        assert (
            centre.declare("s-1", type="death", nin=ALIVE[0]["nin"], data={"death_date": "2026-11-05"}).status_code
            == 201
        )
        electoral = Api(gateway, realm, "electoral-app")
        wait_until(
            lambda: (
                electoral.http.get("/v1/events/subscriptions/deaths_push").json()["push"]["last_error"] or ""
            ).startswith("unsafe endpoint"),
            10,
            "refused to reach loopback",
        )
    finally:
        gateway.stop()


def test_dead_letters_are_shown_and_replayed_and_metrics_follow(tmp_path: Path) -> None:
    broken = {"on": True}
    receiver = Receiver(answer=lambda d: (500, {}, 0.0) if broken["on"] else (200, {}, 0.0)).start()
    with pushing(tmp_path, receiver, GATEWAY_EVENTS_RETRY_HORIZON_S="1.5") as (gateway, realm):
        centre = Api(gateway, realm, "centre-app")
        ids = [
            centre.declare(f"dl-{i}", type="death", nin=p["nin"], data={"death_date": "2026-11-06"}).json()["event_id"]
            for i, p in enumerate(ALIVE[:3])
        ]
        electoral = Api(gateway, realm, "electoral-app")
        wait_until(
            lambda: electoral.http.get("/v1/events/subscriptions/deaths_push").json()["dead_letters"],
            15,
            "a dead letter after the horizon",
        )
        status = electoral.http.get("/v1/events/subscriptions/deaths_push").json()
        assert [d["event_id"] for d in status["dead_letters"]] == [ids[0]]
        assert status["push"]["disabled"] and status["push"]["backlog"] == 2  # the rest kept, in order
        oversight = Api(gateway, realm, "oversight-app")
        wait_until(
            lambda: "jamu_events_outbox_backlog 2.0" in oversight.http.get("/metrics").text,
            10,
            "the backlog gauge follows",
        )  # refreshed every few polls, without /readyz
        metrics = oversight.http.get("/metrics").text
        assert "jamu_events_subscriptions_failing 1.0" in metrics
        assert 'jamu_events_delivery_failures_total{administration="electoral"}' in metrics
        broken["on"] = False
        replay = electoral.http.post(
            "/v1/events/subscriptions/deaths_push/replay", json={"after": status["dead_letters"][0]["replay_from"]}
        )
        assert replay.status_code == 202, replay.text
        delivered = _wait_pushed(receiver, 3)
        assert [d.event["id"] for d in delivered] == ids
        ahead = electoral.http.post(
            "/v1/events/subscriptions/deaths_push/replay", json={"after": status["head_cursor"][:-2] + "xx"}
        )
        assert ahead.status_code == 400


# -- the command line and the reference consumer ------------------------------------------------------


def _pem(realm: Realm, client_id: str, directory: Path) -> Path:
    path = directory / f"{client_id}.pem"
    path.write_bytes(realm.keys[client_id].as_pem(private=True))
    path.chmod(0o600)
    return path


def test_the_reference_consumer_strikes_deceased_voters(world: tuple[GatewayProcess, Realm], tmp_path: Path) -> None:
    gateway, realm = world
    voters = ALIVE[30:40]
    roll = tmp_path / "roll.csv"
    roll.write_text(
        "nin,family_name,status\n" + "".join(f"{p['nin']},{p['family_name']},listed\n" for p in voters),
        encoding="utf-8",
    )
    declarations = tmp_path / "deaths.jsonl"
    dying = [*voters[:3], ALIVE[41]]  # the last one is not on this roll
    declarations.write_text(
        "".join(
            json.dumps({"type": "death", "nin": p["nin"], "data": {"death_date": "2026-11-25"}}) + "\n" for p in dying
        )
        + json.dumps({"type": "death", "nin": DEAD[1]["nin"], "data": {"death_date": "2026-11-25"}})
        + "\n"
    )
    declare = [
        *JAMU,
        "events",
        "declare",
        str(declarations),
        "--client",
        "centre-app",
        "--key",
        str(_pem(realm, "centre-app", tmp_path)),
        "--gateway",
        gateway.base_url,
    ]
    run = subprocess.run(declare, capture_output=True, text=True, timeout=60)
    answers = [json.loads(line) for line in run.stdout.splitlines()]
    assert run.returncode == 1  # one line was refused, and said so
    assert [a["status"] for a in answers] == [201, 201, 201, 201, 422]
    assert answers[-1]["reason"] == "already_deceased" and answers[-1]["line"] == 5
    again = subprocess.run(declare, capture_output=True, text=True, timeout=60)  # idempotent by line
    assert [json.loads(line).get("event_id") for line in again.stdout.splitlines()] == [
        a.get("event_id") for a in answers
    ]

    consumer = [
        sys.executable,
        str(REPO / "examples" / "strike_deceased_voters" / "strike.py"),
        "--gateway",
        gateway.base_url,
        "--client",
        "electoral-app",
        "--key",
        str(_pem(realm, "electoral-app", tmp_path)),
        "--subscription",
        "deaths",
        "--roll",
        str(roll),
    ]

    def strike() -> dict[str, int]:
        done = subprocess.run(consumer, capture_output=True, text=True, timeout=60, cwd=REPO)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def statuses() -> dict[str, str]:
        with open(roll, newline="", encoding="utf-8") as handle:
            return {row["nin"]: row["status"] for row in csv.DictReader(handle)}

    first = strike()
    assert first["changed"] == 3
    assert {n for n, s in statuses().items() if s == "struck"} == {p["nin"] for p in voters[:3]}
    centre = Api(gateway, realm, "centre-app")
    assert centre.declare("void-roll", type="death", voids=answers[1]["event_id"], data={}).status_code == 201
    second = strike()
    assert second == {"events": 1, "duplicates": 0, "changed": 1}
    assert {n for n, s in statuses().items() if s == "struck"} == {voters[0]["nin"], voters[2]["nin"]}
    # Its own dedupe: from the start of the feed again, every event is recognised and nothing changes.
    state = roll.with_name(roll.name + ".state.json")
    doc = json.loads(state.read_text())
    state.write_text(json.dumps({**doc, "cursor": None}))
    third = strike()
    assert third["events"] == 0 and third["changed"] == 0 and third["duplicates"] >= 5
    assert {n for n, s in statuses().items() if s == "struck"} == {voters[0]["nin"], voters[2]["nin"]}
