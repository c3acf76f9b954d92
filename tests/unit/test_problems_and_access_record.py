"""In-process checks of the request stage every route shares: problem+json for every error, the access
record handed to the writer before the answer leaves, and fail-closed behaviour when it cannot be."""

from __future__ import annotations

import gc
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.audit.log import StubAccessLog
from gateway.audit.record import EVENT_FIELDS, AccessRecord, new_id, rfc3339
from gateway.errors import CATALOGUE
from gateway.settings import Settings
from tests.support import probe_app
from tests.support.keys import gateway_token
from tests.support.realm import Realm, build_realm

ISSUER = "http://127.0.0.1:8000"
NIN = "120394857602914"


@pytest.fixture
def local_realm(tmp_path: Path) -> Realm:
    return build_realm(tmp_path)


@pytest.fixture
def access_log() -> StubAccessLog:
    return StubAccessLog()


@pytest.fixture
async def client(local_realm: Realm, access_log: StubAccessLog) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(policies_dir=local_realm.policies_dir, data_dir=local_realm.data_dir, issuer=ISSUER)
    app = probe_app.create(settings, access_log)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as http:
        yield http


def _token(realm: Realm, scope: str = "identity:verify identity:lookup", client: str = "elections-app") -> str:
    return gateway_token(realm.data_dir, ISSUER, client, scope)


def _problem(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert set(body) >= {"type", "title", "status", "detail", "code", "transaction_id"}
    assert (body["status"], body["code"]) == (status, code)
    assert "Traceback" not in response.text
    return body


@pytest.mark.parametrize(
    ("content", "pointer"),
    [
        (b'{"name": "x", "count": "many"}', "/count"),
        (b'{"name": "x"}', "/count"),
        (b'{"name": "x", "count": 1, "nin": "' + NIN.encode() + b'"}', "/nin"),
        (b'{"name": "x", "count": 1', ""),
        (b"", ""),
        (b'["not", "an", "object"]', ""),
        (b'{"name": "\\ud800", "count": 1}', None),
        (b'{"name": "' + "\u202e".encode() + b'\\u0000", "count": 1.5}', "/count"),
        (b'{"name": "\x00", "count": 1}', ""),
    ],
)
async def test_validation_errors_point_at_the_fault(
    client: httpx.AsyncClient, local_realm: Realm, access_log: StubAccessLog, content: bytes, pointer: str | None
) -> None:
    response = await client.post(
        "/v1/probe/lookup",
        content=content,
        headers={"Authorization": f"Bearer {_token(local_realm)}", "content-type": "application/json"},
    )
    if response.status_code == 200:  # a lone surrogate is a valid JSON string escape
        assert pointer is None
        return
    body = _problem(response, 400, "invalid_request")
    assert body["errors"], body
    if pointer is not None:
        assert pointer in [e.get("pointer") for e in body["errors"]]
    assert NIN not in response.text, "validation errors never echo what was sent"
    event = access_log.events[-1]
    assert (event["id"], event["decision"], event["reason"], event["operation"]) == (
        body["transaction_id"],
        "deny",
        "invalid_request",
        "lookup",
    )


async def test_unknown_route_and_method(client: httpx.AsyncClient, access_log: StubAccessLog) -> None:
    body = _problem(await client.get("/v1/nothing-here"), 404, "not_found")
    assert access_log.events[-1]["id"] == body["transaction_id"]
    response = await client.delete("/oauth2/token")
    _problem(response, 405, "invalid_request")
    assert "POST" in response.headers["allow"]


async def test_unexpected_exception_is_a_bare_500(
    client: httpx.AsyncClient, local_realm: Realm, access_log: StubAccessLog
) -> None:
    response = await client.get("/v1/probe/crash", headers={"Authorization": f"Bearer {_token(local_realm)}"})
    body = _problem(response, 500, "internal_error")
    assert "secret stack detail" not in response.text and NIN not in response.text
    event = access_log.events[-1]
    assert (event["id"], event["decision"], event["reason"], event["status"]) == (
        body["transaction_id"],
        "error",
        "internal_error",
        500,
    )


async def test_every_response_is_logged_before_it_leaves(
    client: httpx.AsyncClient, local_realm: Realm, access_log: StubAccessLog
) -> None:
    response = await client.get("/v1/probe/verify", headers={"Authorization": f"Bearer {_token(local_realm)}"})
    assert response.status_code == 200
    event = access_log.events[-1]
    assert event["id"] == response.json()["transaction_id"]
    assert event["decision"] == "permit" and event["status"] == 200 and event["latency_ms"] >= 0
    assert len(event["trace_id"]) == 32
    # Routes outside /v1 and the token endpoint are not access events.
    count = len(access_log.events)
    await client.get("/healthz")
    assert len(access_log.events) == count


async def test_traceparent_is_honoured(
    client: httpx.AsyncClient, local_realm: Realm, access_log: StubAccessLog
) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    await client.get(
        "/v1/probe/verify",
        headers={"Authorization": f"Bearer {_token(local_realm)}", "traceparent": f"00-{trace}-00f067aa0ba902b7-01"},
    )
    assert access_log.events[-1]["trace_id"] == trace


async def test_no_log_no_data(client: httpx.AsyncClient, local_realm: Realm, access_log: StubAccessLog) -> None:
    access_log.failing = True
    response = await client.get("/v1/probe/verify", headers={"Authorization": f"Bearer {_token(local_realm)}"})
    _problem(response, 503, "audit_unavailable")
    assert "elections-app" not in response.text, "the operation's answer is withheld"
    # A refusal releases nothing, so it is still answered as what it is.
    _problem(await client.get("/v1/probe/verify"), 401, "invalid_token")
    ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["access_log"] == "failing"
    access_log.failing = False
    assert (await client.get("/readyz")).status_code == 200


async def test_docs_document_every_problem_code(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/docs", headers={"Accept": "application/json"})).json()
    assert spec["openapi"].startswith("3.")
    assert set(spec["components"]["schemas"]["Problem"]["properties"]["code"]["enum"]) == set(CATALOGUE)
    for code in CATALOGUE:
        assert f"`{code}`" in spec["info"]["description"]
    assert "/oauth2/token" in spec["paths"]
    html = await client.get("/docs", headers={"Accept": "text/html"})
    assert html.status_code == 200 and "swagger" in html.text.lower()
    described = (await client.get("/problems/consent_invalid")).json()
    assert described["status"] == 403
    _problem(await client.get("/problems/nope"), 404, "not_found")


async def test_metrics_exposition(client: httpx.AsyncClient, local_realm: Realm) -> None:
    await client.get("/v1/probe/verify", headers={"Authorization": f"Bearer {_token(local_realm)}"})
    _problem(await client.get("/metrics"), 401, "invalid_token")
    _problem(
        await client.get("/metrics", headers={"Authorization": f"Bearer {_token(local_realm)}"}),
        403,
        "insufficient_scope",
    )
    reader = _token(local_realm, "metrics:read", "oversight-app")
    response = await client.get("/metrics", headers={"Authorization": f"Bearer {reader}"})
    assert response.status_code == 200
    text = response.text
    assert (
        'http_server_request_duration_seconds_count{http_request_method="GET",'
        'http_response_status_code="200",http_route="/v1/probe/verify"}'
    ) in text
    assert 'jamu_access_decisions_total{administration="elections",decision="permit",operation="verify"}' in text


@given(
    st.datetimes(
        min_value=datetime(1000, 1, 1),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=-9, minutes=-30)), timezone(timedelta(hours=5, minutes=45))]
        ),
    )
)
def test_rfc3339_is_fixed_width_utc(moment: datetime) -> None:
    text = rfc3339(moment)
    assert text == moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert len(text) == 27 and text.endswith("Z")


def test_transaction_ids_are_version_4_uuids() -> None:
    ids = [new_id() for _ in range(2000)]
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # canonical lower-case 8-4-4-4-12 text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
    assert len(set(ids)) == len(ids)
    assert {text[19] for text in ids} == set("89ab")  # the variant digit takes all four values


@given(st.text(max_size=700), st.lists(st.text(max_size=600), max_size=80))
def test_event_has_every_field_bounded(text: str, items: list[str]) -> None:
    """Whatever a stage copied into the record, the event names each field once, in bounds."""
    record = AccessRecord(
        operation=text,
        administration=text,
        client_id=text,
        purpose=text,
        legal_basis=text,
        consent_id=text,
        subject_hash=text,
        reason=text,
        trace_id=text,
        attributes_requested=items,
        attributes_released=items,
    )
    record.finish(200)
    event = record.event()
    assert sorted(event) == sorted(EVENT_FIELDS)
    bounded = text.replace("\x00", "")[:512]
    for name in (
        "operation",
        "administration",
        "client_id",
        "purpose",
        "legal_basis",
        "consent_id",
        "subject_hash",
        "trace_id",
    ):
        assert event[name] == bounded
    assert event["reason"] is None  # a permit has no reason
    assert event["attributes_requested"] == [item.replace("\x00", "")[:512] for item in items[:64]]
    assert event["status"] == 200 and event["decision"] == "permit" and event["id"] == record.id
    assert event["time"] == rfc3339(record.time)


def test_framework_telemetry_stays_off_when_providers_are_configured(
    local_realm: Realm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FastAPI's own telemetry would log validation failures with their input (a NIN, say) once an
    OpenTelemetry provider is configured; the gateway's telemetry is its own, so the framework's stays off."""
    from fastapi import FastAPI
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    native = getattr(FastAPI(), "_native_telemetry", None)
    if native is None:
        pytest.skip("this FastAPI has no built-in telemetry")
    monkeypatch.setattr(trace, "get_tracer_provider", TracerProvider)  # as if one were configured
    assert native.enabled()  # the framework's default: on
    settings = Settings(policies_dir=local_realm.policies_dir, data_dir=local_realm.data_dir, issuer=ISSUER)
    assert not probe_app.create(settings, StubAccessLog())._native_telemetry.enabled()


@pytest.mark.slow
async def test_startup_objects_frozen_while_serving(local_realm: Realm) -> None:
    """What start-up built is out of the cyclic collector's reach while serving, and back at shutdown."""
    settings = Settings(policies_dir=local_realm.policies_dir, data_dir=local_realm.data_dir, issuer=ISSUER)
    app = probe_app.create(settings, StubAccessLog())
    gc.unfreeze()
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() > 10_000
    assert gc.get_freeze_count() == 0
