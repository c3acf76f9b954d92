"""Life events without a server: the declarations' form and facts, the register's one write path and its
outbox, cursors and payloads, subscription policies, and push's retry horizon under a simulated clock."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit.log import StubAccessLog
from gateway.connectors.population import luhn_digit, population, seed_register
from gateway.events.declarations import DeclarationBody, FormProblem, Rejected, judge, judge_birth, parse
from gateway.events.delivery import (
    Deliveries,
    DeliveryStore,
    Pusher,
    PushSettings,
    UnsafeEndpoint,
    WebhookSigner,
    check_endpoint,
    deliveries_path,
    public_address,
    retry_after,
)
from gateway.events.feed import EventFeed, FeedItem, cloud_event, decode_cursor, encode_cursor
from gateway.events.register import (
    SCHEMA,
    KeyConflict,
    RegisterUnavailable,
    RegisterWriter,
    Submission,
    Subscriber,
    request_hash,
)
from gateway.identity.pseudonyms import SubjectHasher, SubjectRefs
from gateway.metrics import Metrics
from gateway.policy.loader import PolicyError, load_policies
from gateway.policy.model import SubscriptionPolicy
from gateway.policy.store import PolicyStore
from tests.support.keys import jwks_of, new_key
from tests.support.realm import build_realm
from tests.support.webhook_receiver import Receiver

TODAY = date(2026, 12, 3)
ALIVE = {"nin": "AAA111", "birth_date": "1980-05-01", "record_status": "active", "death_date": None}
DEAD = {"nin": "BBB222", "birth_date": "1950", "record_status": "deceased", "death_date": "2020-01-01"}


def body(**fields: Any) -> DeclarationBody:
    return DeclarationBody.model_validate(fields)


def pointers(**fields: Any) -> list[str]:
    with pytest.raises(FormProblem) as caught:
        parse(body(**fields))
    return [e["pointer"] for e in caught.value.errors]


def test_each_type_takes_its_own_fields_and_no_other() -> None:
    assert pointers(type="death", nin="120000000001", data={"death_date": "2026-01-01", "cause": "x"}) == [
        "/data/cause"
    ]
    assert pointers(type="death", nin="120000000001", data={}) == ["/data/death_date"]
    assert pointers(type="death", nin="120000000001", data={"death_date": "2026-13-01"}) == ["/data/death_date"]
    assert pointers(type="marriage", nin="120000000001", data={"spouse_nin": "no!", "date": "2026"}) == [
        "/data/spouse_nin"
    ]
    assert pointers(type="death", data={"death_date": "2026-01-01"}) == ["/nin"]
    assert pointers(
        type="birth",
        nin="120000000001",
        data={"family_name": "A", "given_names": "B", "sex": "F", "birth_date": "2026-01-01", "birth_place": "C"},
    ) == ["/nin"]
    assert pointers(type="name_change", nin="120000000001", data={"effective_date": "2026-01-01"}) == ["/data"]
    assert pointers(type="death", voids="0" * 36, data={"death_date": "2026-01-01"}) == ["/data"]
    assert pointers(type="death", corrects="0" * 36, data={}) == ["/data"]
    assert "/voids" in pointers(type="death", corrects="0" * 36, voids="1" * 36, data={})
    correction = parse(body(type="death", corrects="0" * 36, data={"death_date": "2026-02-02"}))
    assert correction.data == {"death_date": "2026-02-02"} and correction.event_type == "death.corrected"
    assert parse(body(type="death", voids="0" * 36, data={})).event_type == "death.voided"


def test_impossible_facts_are_named() -> None:
    death = parse(body(type="death", nin="AAA111", data={"death_date": "2026-01-01"}))
    change = judge(death, ALIVE, None, False, TODAY)
    assert change.changed == {"death_date": "2026-01-01", "record_status": "deceased"}
    assert change.before == {"death_date": None, "record_status": "active"}
    cases = [
        (parse(body(type="death", nin="BBB222", data={"death_date": "2026-01-01"})), DEAD, None, "already_deceased"),
        (parse(body(type="death", nin="AAA111", data={"death_date": "1970-01-01"})), ALIVE, None, "death_before_birth"),
        (parse(body(type="death", nin="AAA111", data={"death_date": "2027-01-01"})), ALIVE, None, "date_in_future"),
        (death, None, None, "subject_not_found"),
        (
            parse(body(type="marriage", nin="AAA111", data={"spouse_nin": "BBB222", "date": "2026"})),
            ALIVE,
            DEAD,
            "subject_deceased",
        ),
        (
            parse(body(type="marriage", nin="AAA111", data={"spouse_nin": "AAA111", "date": "2026"})),
            ALIVE,
            ALIVE,
            "same_person",
        ),
        (
            parse(body(type="divorce", nin="AAA111", data={"spouse_nin": "CCC333", "date": "2026"})),
            ALIVE,
            {**ALIVE, "nin": "CCC333"},
            "not_married",
        ),
        (
            parse(body(type="marriage", nin="AAA111", data={"spouse_nin": "CCC333", "date": "1970"})),
            ALIVE,
            {**ALIVE, "nin": "CCC333"},
            "date_before_birth",
        ),
    ]
    for declaration, record, spouse, reason in cases:
        with pytest.raises(Rejected) as caught:
            judge(declaration, record, spouse, False, TODAY)
        assert caught.value.reason == reason
    with pytest.raises(Rejected) as caught:
        judge_birth("2", {"birth_date": "2026-01-01", "mother_nin": "AAA111"}, {"AAA111": None}, TODAY)
    assert caught.value.reason == "parent_not_found"
    with pytest.raises(Rejected) as caught:
        judge_birth("2", {"birth_date": "1970-01-01", "mother_nin": "AAA111"}, {"AAA111": ALIVE}, TODAY)
    assert caught.value.reason == "parent_born_after_child"


def _submission(key: str, declaration: dict[str, Any], administration: str = "centre") -> Submission:
    return Submission(parse(body(**declaration)), administration, "centre-app", key, request_hash(declaration))


@pytest.fixture
def register(tmp_path: Path) -> Path:
    path = tmp_path / "register.db"
    seed_register(path, 50, 7)
    return path


PEOPLE = [p for p in population(50, 7) if p["record_status"] == "active" and len(p["birth_date"]) == 10]


async def test_the_register_change_and_its_outbox_commit_together(register: Path) -> None:
    subs = [Subscriber("electoral/deaths", frozenset({"death"})), Subscriber("health/births", frozenset({"birth"}))]
    writer = RegisterWriter(register, lambda: subs, today=lambda: TODAY)
    await writer.start()
    try:
        nin = PEOPLE[0]["nin"]
        answers = await asyncio.gather(
            *(
                writer.declare(
                    _submission(f"k{i}", {"type": "death", "nin": p["nin"], "data": {"death_date": "2026-11-01"}})
                )
                for i, p in enumerate(PEOPLE[:5])
            )
        )
        assert [a.status for a in answers] == [201] * 5
        again = await writer.declare(
            _submission("k0", {"type": "death", "nin": nin, "data": {"death_date": "2026-11-01"}})
        )
        assert again.replayed and again.body == answers[0].body
        with pytest.raises(KeyConflict):
            await writer.declare(_submission("k0", {"type": "death", "nin": nin, "data": {"death_date": "2026-11-02"}}))
        second = await writer.declare(
            _submission("k9", {"type": "death", "nin": nin, "data": {"death_date": "2026-11-05"}})
        )
        assert second.status == 422 and second.body["reason"] == "already_deceased"
        born = await writer.declare(
            _submission(
                "b1",
                {
                    "type": "birth",
                    "data": {
                        "family_name": "Keita",
                        "given_names": "Sali",
                        "sex": "M",
                        "birth_date": "2026-11-20",
                        "birth_place": "Kati",
                        "father_nin": PEOPLE[6]["nin"],
                    },
                },
            )
        )
        assert born.status == 201 and born.body["version"] == 1
        # A correction of a birth, then its void: the record goes, the NIN is never given again.
        fix = await writer.declare(
            _submission("b2", {"type": "birth", "corrects": born.body["event_id"], "data": {"given_names": "Salif"}})
        )
        assert fix.status == 201 and fix.body["version"] == 2
        void = await writer.declare(_submission("b3", {"type": "birth", "voids": born.body["event_id"], "data": {}}))
        assert void.status == 201
    finally:
        await writer.close()
    with sqlite3.connect(register) as db:
        assert (
            db.execute(
                "SELECT count(*) FROM people WHERE record_status = 'deceased' AND death_date = '2026-11-01'"
            ).fetchone()[0]
            >= 5
        )
        assert db.execute("SELECT count(*) FROM people WHERE nin = ?", (born.body["nin"],)).fetchone()[0] == 0
        feed = db.execute("SELECT subscription, sequence FROM feed ORDER BY subscription, sequence").fetchall()
    assert [s for k, s in feed if k == "electoral/deaths"] == [1, 2, 3, 4, 5]
    assert [s for k, s in feed if k == "health/births"] == [1, 2, 3]  # the birth, its correction, its void
    items = await EventFeed(register).read("health/births", 0, 10)
    assert [i.event_type for i in items] == ["birth", "birth.corrected", "birth.voided"]
    assert items[1].record["given_names"] == "Salif" and items[2].amends == born.body["event_id"]


async def test_a_failed_commit_changes_nothing(register: Path) -> None:
    def boom() -> list[Subscriber]:
        raise sqlite3.OperationalError("disk I/O error")

    writer = RegisterWriter(register, boom, today=lambda: TODAY)
    await writer.start()
    try:
        with pytest.raises(RegisterUnavailable):
            await writer.declare(
                _submission("z", {"type": "death", "nin": PEOPLE[0]["nin"], "data": {"death_date": "2026-11-01"}})
            )
    finally:
        await writer.close()
    with sqlite3.connect(register) as db:
        assert (
            db.execute("SELECT record_status FROM people WHERE nin = ?", (PEOPLE[0]["nin"],)).fetchone()[0] == "active"
        )


def test_cursors_are_opaque_and_refuse_what_they_did_not_make() -> None:
    for n in (0, 1, 987654321):
        assert decode_cursor("a/deaths", encode_cursor("a/deaths", n)) == n
    for bad in (
        "",
        "abc",
        "ZmVlZDotMQ",
        encode_cursor("a/deaths", 1) + "A" * 40,
        "ZmVlZDp4",
        "!!!!",
        encode_cursor("b/deaths", 1),
    ):
        with pytest.raises(ValueError):
            decode_cursor("a/deaths", bad)


def test_a_payload_carries_only_what_the_subscription_lists() -> None:
    record = {"nin": "AAA111", "death_date": None, "family_name": "Traoré"}
    item = FeedItem(7, "e-1", "death.voided", "AAA111", 3, record, "2026-12-01T00:00:00.000000Z", "e-0")
    subscription = SubscriptionPolicy(purpose="roll", events=["death"], attributes=["death_date"])
    event = cloud_event(item, subscription, "ref", "https://gw/v1/declarations")
    assert event["data"] == {"death_date": None, "version": 3}
    assert event["sequence"] == "7" and event["type"] == "ml.etatcivil.death.voided" and event["voids"] == "e-0"
    assert event["subject"] == "ref" and "nin" not in str(event)


def _policy(directory: Path, subscriptions: dict[str, Any], consent: str = "not_required") -> list[str]:
    directory.mkdir(exist_ok=True)
    purpose: dict[str, Any] = {"consent": consent, "operations": ["verify"]}
    if consent == "not_required":
        purpose["legal_basis"] = "Loi"
    (directory / "a.yaml").write_text(
        yaml.safe_dump(
            {
                "id": "a",
                "name": "A",
                "clients": [
                    {
                        "client_id": "a-app",
                        "auth": "private_key_jwt",
                        "jwks": jwks_of(new_key()),
                        "scopes": ["events:read"],
                    }
                ],
                "purposes": {"roll": purpose},
                "subscriptions": subscriptions,
            }
        )
    )
    try:
        load_policies(directory)
    except PolicyError as exc:
        return [str(p) for p in exc.problems]
    return []


def test_subscriptions_are_validated(tmp_path: Path) -> None:
    good = {"purpose": "roll", "events": ["death", "death.voided"], "attributes": ["nin", "death_date"]}
    assert _policy(tmp_path, {"deaths": good}) == []
    assert _policy(tmp_path, {"deaths": {**good, "endpoint": "https://roll.example.ml/hooks"}}) == []
    assert _policy(tmp_path, {"deaths": {**good, "endpoint": "http://10.0.0.5/hooks", "endpoint_internal": True}}) == []
    refusals = {
        "purpose": {**good, "purpose": "other"},
        "events": {**good, "events": ["death", "burial"]},
        "attributes": {**good, "attributes": ["nin", "blood_type"]},
        "endpoint": {**good, "endpoint": "http://roll.example.ml/hooks"},
        "credentials": {**good, "endpoint": "https://u:p@roll.example.ml/hooks"},
        "unknown": {**good, "filter": "x"},
        "empty": {**good, "events": []},
    }
    for what, subscription in refusals.items():
        assert _policy(tmp_path, {"deaths": subscription}), what
    problems = _policy(tmp_path, {"deaths": good}, consent="required")
    assert problems and "legal basis" in problems[0]


def test_outbound_endpoints_must_be_public_addresses() -> None:
    for url in (
        "https://127.0.0.1/x",
        "https://10.1.2.3/x",
        "https://[::1]/x",
        "https://169.254.169.254/x",
        "http://93.184.215.14/x",
        "https://[::ffff:127.0.0.1]/x",
        "https://[64:ff9b::a9fe:a9fe]/x",
        "https://[2002:7f00:1::1]/x",
        "https://[::7f00:1]/x",
        "https://[fec0::1]/x",
        "https://roll.example.ml:99999/x",
    ):
        with pytest.raises(UnsafeEndpoint):
            check_endpoint(url, internal=False)
    check_endpoint("https://93.184.215.14:8443/hooks?a=1", internal=False)
    check_endpoint("https://roll.example.ml/hooks", internal=False)  # a name: checked as it resolves
    check_endpoint("http://127.0.0.1:8080/hooks", internal=True)
    assert public_address("93.184.215.14") and public_address("2606:4700::1111")
    assert not public_address("64:ff9b::a00:1") and not public_address("not an address")
    assert retry_after("120", 0) == 120 and retry_after("999999", 0) == 3600
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0) == 10.0
    assert retry_after("soon", 0) is None and retry_after("\u00b2", 0) is None  # a digit float() refuses
    with pytest.raises(UnsafeEndpoint):  # the client would connect to 127.0.0.1
        check_endpoint("https://\uff11\uff12\uff17\uff0e\uff10\uff0e\uff10\uff0e\uff11/x", internal=False)


def _deaths_pushed_to(
    register: Path, receiver: Receiver, attributes: list[str], log: StubAccessLog, settings: PushSettings
) -> tuple[RegisterWriter, Deliveries, Pusher]:
    """One administration whose `deaths` are pushed to `receiver`, the register's writer, and the pusher
    under `settings` (a simulated clock): the receiver trusts the pusher's key."""
    policies_dir = register.parent / "policies"
    policies_dir.mkdir()
    (policies_dir / "electoral.yaml").write_text(
        yaml.safe_dump(
            {
                "id": "electoral",
                "name": "E",
                "purposes": {"roll": {"legal_basis": "Loi", "consent": "not_required", "operations": ["verify"]}},
                "subscriptions": {
                    "deaths": {
                        "purpose": "roll",
                        "events": ["death"],
                        "attributes": attributes,
                        "endpoint": receiver.url,
                        "endpoint_internal": True,
                    }
                },
            }
        )
    )
    writer = RegisterWriter(
        register, lambda: [Subscriber("electoral/deaths", frozenset({"death"}))], today=lambda: TODAY
    )
    signer = WebhookSigner(Ed25519PrivateKey.generate())
    receiver.public_keys.append(signer.public_key)
    deliveries = Deliveries(
        PolicyStore(load_policies(policies_dir)),
        EventFeed(register),
        DeliveryStore(deliveries_path(register)),
        log,
        signer,
        SubjectHasher(b"k" * 32),
        SubjectRefs(b"s" * 32),
        "https://gw",
        Metrics(),
        settings,
    )
    return writer, deliveries, Pusher("electoral/deaths", "electoral", "deaths", deliveries)


@pytest.mark.slow
async def test_an_event_failing_past_the_horizon_is_set_aside_and_the_endpoint_waits_for_a_replay(
    register: Path,
) -> None:
    """A simulated clock: three days of failures pass in a few rounds; the event becomes a dead letter, the
    endpoint is disabled with the rest of the feed kept, and a replay from after it delivers the rest."""
    receiver = Receiver(answer=lambda d: (500, {}, 0.0) if d.event["sequence"] == "1" else (200, {}, 0.0)).start()
    clock = {"now": 1_000_000.0}
    log = StubAccessLog()
    writer, deliveries, pusher = _deaths_pushed_to(
        register,
        receiver,
        ["death_date"],
        log,
        PushSettings(backoff_s=(3600.0,), horizon_s=72 * 3600.0, poll_s=0.05, clock=lambda: clock["now"]),
    )
    await writer.start()
    for i, p in enumerate(PEOPLE[:2]):
        await writer.declare(_submission(f"h{i}", {"type": "death", "nin": p["nin"], "data": {"death_date": "2026"}}))
    await writer.close()
    try:
        for _ in range(360):  # 90 simulated hours, a quarter of an hour a round
            await pusher.step()
            clock["now"] += 900.0
        state, dead = await deliveries.store.status("electoral/deaths")
        assert [d["sequence"] for d in dead] == [1] and dead[0]["last_error"] == "500"
        assert state.delivered == 1 and state.disabled and "72 h" in state.disabled
        assert receiver.accepted() == []  # the second event waits, in order, for the subscriber to be fixed
        attempts = [d for d in receiver.received if d.event["sequence"] == "1"]
        assert 60 <= len(attempts) <= 82  # about one an hour (±10 %) for 72 hours, then set aside
        # Each attempt left one access-log entry; the only other is the second event's, written ahead while
        # the first went out the first time (the window falls to one after a failure).
        assert len(log.events) == len(receiver.received) + 1
        assert {e["operation"] for e in log.events} == {"events.deliver"}
        await deliveries.store.replay("electoral/deaths", 1)
        await pusher.step()
        assert [d.event["sequence"] for d in receiver.accepted()] == ["2"]
        state, _ = await deliveries.store.status("electoral/deaths")
        assert state.delivered == 2 and state.disabled is None
    finally:
        await pusher.stop()
        deliveries.store.close()
        receiver.stop()


async def test_amendments_follow_the_records_history(register: Path) -> None:
    writer = RegisterWriter(register, lambda: [], today=lambda: TODAY)
    await writer.start()
    person = PEOPLE[8]
    nin = person["nin"]

    async def declare(key: str, **declaration: Any) -> Any:
        return await writer.declare(_submission(key, declaration))

    try:
        first = await declare("n1", type="name_change", nin=nin, data={"given_names": "Awa", "effective_date": "2026"})
        widen = await declare("n1c", type="name_change", corrects=first.body["event_id"], data={"family_name": "Touré"})
        assert widen.status == 201
        # A void puts back every field the original and its corrections changed, as they were before.
        void = await declare("n1v", type="name_change", voids=first.body["event_id"], data={})
        assert void.status == 201
        with sqlite3.connect(register) as db:
            row = db.execute("SELECT family_name, given_names FROM people WHERE nin = ?", (nin,)).fetchone()
        assert row == (person["family_name"], person["given_names"])
        # A later declaration that changed the same field stands on the earlier one: no void under it, even
        # when it set the value back.
        a = await declare("a", type="name_change", nin=nin, data={"given_names": "B", "effective_date": "2026"})
        await declare("b", type="name_change", nin=nin, data={"given_names": "C", "effective_date": "2026"})
        await declare("c", type="name_change", nin=nin, data={"given_names": "B", "effective_date": "2026"})
        refused = await declare("av", type="name_change", voids=a.body["event_id"], data={})
        assert refused.status == 422 and refused.body["reason"] == "superseded"
        assert refused.subject == nin  # the refusal's access record names the person
        # A birth with a later death cannot be voided from under it; a marriage not after its divorce.
        born = await declare(
            "bb",
            type="birth",
            data={
                "family_name": "K",
                "given_names": "S",
                "sex": "F",
                "birth_date": "2026-01-01",
                "birth_place": "Kati",
            },
        )
        await declare("bd", type="death", nin=born.body["nin"], data={"death_date": "2026-02-01"})
        assert (await declare("bv", type="birth", voids=born.body["event_id"], data={})).body["reason"] == "superseded"
        spouse = PEOPLE[9]["nin"]
        married = await declare("m", type="marriage", nin=nin, data={"spouse_nin": spouse, "date": "2026-03-01"})
        assert married.status == 201
        assert (await declare("m2", type="marriage", nin=spouse, data={"spouse_nin": nin, "date": "2026-03-02"})).body[
            "reason"
        ] == "already_married"
        assert (
            await declare("d", type="divorce", nin=spouse, data={"spouse_nin": nin, "date": "2026-04-01"})
        ).status == 201
        assert (await declare("mv", type="marriage", voids=married.body["event_id"], data={})).body[
            "reason"
        ] == "superseded"
        # A correction never blanks a field.
        with pytest.raises(FormProblem):
            parse(body(type="name_change", corrects=first.body["event_id"], data={"family_name": None}))
    finally:
        await writer.close()


async def test_one_failing_declaration_fails_alone(register: Path) -> None:
    """A NIN the register would give already taken by an imported record is skipped; a declaration whose
    write fails (here: a constraint) is refused alone, and the others of its group commit."""
    with sqlite3.connect(register) as db:
        db.execute("PRAGMA journal_mode=WAL")
        for statement in SCHEMA:
            db.execute(statement)
        body_ = "20026000000001"

        db.execute(
            "INSERT INTO people (nin, family_name, record_status) VALUES (?, 'X', 'active')",
            (body_ + luhn_digit(body_),),
        )
        db.execute(
            f"CREATE TRIGGER refuse AFTER UPDATE ON people WHEN NEW.nin = '{PEOPLE[11]['nin']}' BEGIN "
            "SELECT RAISE(ABORT, 'refused'); END"
        )
    writer = RegisterWriter(register, lambda: [], today=lambda: TODAY)
    await writer.start()
    try:
        birth = {
            "type": "birth",
            "data": {
                "family_name": "K",
                "given_names": "S",
                "sex": "F",
                "birth_date": "2026-01-01",
                "birth_place": "Kati",
            },
        }
        results = await asyncio.gather(
            writer.declare(_submission("ok1", birth)),
            writer.declare(
                _submission("bad", {"type": "death", "nin": PEOPLE[11]["nin"], "data": {"death_date": "2026-01-01"}})
            ),
            writer.declare(
                _submission("ok2", {"type": "death", "nin": PEOPLE[12]["nin"], "data": {"death_date": "2026-01-01"}})
            ),
            return_exceptions=True,
        )
        assert results[0].status == 201 and results[0].body["nin"] != body_ + luhn_digit(body_)
        assert isinstance(results[1], RegisterUnavailable)
        assert results[2].status == 201
    finally:
        await writer.close()
    with sqlite3.connect(register) as db:
        assert (
            db.execute("SELECT record_status FROM people WHERE nin = ?", (PEOPLE[12]["nin"],)).fetchone()[0]
            == "deceased"
        )
        assert (
            db.execute("SELECT record_status FROM people WHERE nin = ?", (PEOPLE[11]["nin"],)).fetchone()[0] == "active"
        )


@pytest.mark.slow
async def test_a_subscriber_down_for_a_simulated_hour_gets_everything_in_sequence(register: Path) -> None:
    """The default schedule (5 s, 5 min, 30 min, 2 h…) under a simulated clock: the subscriber is down for
    an hour while deaths keep coming; afterwards it has every event once, in sequence, and any event it
    saw twice came with the same webhook-id."""
    clock = {"now": 2_000_000.0}
    up_at = clock["now"] + 3600.0
    receiver = Receiver(answer=lambda d: (503, {}, 0.0) if clock["now"] < up_at else (204, {}, 0.0)).start()
    writer, deliveries, pusher = _deaths_pushed_to(
        register, receiver, ["nin"], StubAccessLog(), PushSettings(poll_s=0.01, clock=lambda: clock["now"])
    )
    await writer.start()
    try:
        declared = []
        for minute in range(0, 4 * 60):  # four simulated hours, a minute a round
            if minute % 10 == 0 and len(declared) < 12:  # a death every ten minutes for two hours
                person = PEOPLE[len(declared)]
                answer = await writer.declare(
                    _submission(f"s{minute}", {"type": "death", "nin": person["nin"], "data": {"death_date": "2026"}})
                )
                declared.append(answer.body["event_id"])
            await pusher.step()
            clock["now"] += 60.0
        accepted = receiver.accepted()
        assert [d.event["id"] for d in accepted] == declared  # every one, once, in sequence
        assert [int(d.event["sequence"]) for d in accepted] == list(range(1, len(declared) + 1))
        ids: dict[str, set[str]] = {}
        for delivery in receiver.received:
            ids.setdefault(delivery.event["id"], set()).add(delivery.headers["webhook-id"])
        assert all(ids[event] == {event} for event in ids)
        assert any(d.headers.get("x-acknowledged") is None for d in receiver.received)  # it was down
    finally:
        await pusher.stop()
        await writer.close()
        deliveries.store.close()
        receiver.stop()


def test_the_openapi_document_names_the_declarations_key_and_their_refusals(tmp_path: Path) -> None:
    from gateway.app import create_app
    from gateway.settings import Settings

    realm = build_realm(tmp_path)  # the repository's demo policies need their demo keys made first
    app = create_app(Settings(data_dir=realm.data_dir, policies_dir=realm.policies_dir))
    operation = app.openapi()["paths"]["/v1/declarations"]["post"]
    assert [p["name"] for p in operation["parameters"]] == ["Idempotency-Key"]
    assert {"201", "409", "422"} <= set(operation["responses"])
    assert "declaration_rejected" in app.openapi()["info"]["description"]


async def test_a_gateway_without_a_register_file_has_empty_feeds(tmp_path: Path) -> None:
    feed = EventFeed(tmp_path / "absent" / "register.db")
    assert await feed.heads(["a/deaths"]) == {} and await feed.read("a/deaths", 0, 10) == []
