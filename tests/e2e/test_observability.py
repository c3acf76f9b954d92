"""Traces, metrics and logs of a gateway under varied traffic with known NINs: every stage has its span,
logs are JSON with trace ids, and no NIN appears in a log line, a span or a metric label."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_consents import ADMINISTRATIONS, PEOPLE, Client, build
from tests.support.servers import GatewayProcess

pytestmark = pytest.mark.e2e


def test_no_nin_in_logs_spans_or_metrics_and_every_stage_traced(tmp_path: Path) -> None:
    realm = build(tmp_path)
    server = GatewayProcess(
        realm.env(OTEL_TRACES_EXPORTER="console", OTEL_TRACES_SAMPLER="always_on", OTEL_SERVICE_NAME="jamu-test"),
        factory="tests.support.probe_app:create_durable",
    )
    log = tmp_path / "gateway.log"
    server.start(log)
    nins = [p["nin"] for p in PEOPLE[:4]] + ["100000000000000"]
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    try:
        clients = {name: Client(server, realm, name) for name in (*ADMINISTRATIONS, "oversight-app", "channel-app")}
        health, counter = clients["health"].http, clients["counter"].http
        for nin in nins:
            health.post(
                "/v1/verify",
                json={"nin": nin, "purpose": "care", "claims": {"family_name": "Traoré"}},
                headers={"traceparent": traceparent},
            )
            expires = (datetime.now(UTC) + timedelta(days=3)).isoformat()
            consent = counter.post(
                "/v1/consents",
                json={
                    "nin": nin,
                    "grantee": "health",
                    "purpose": "enrolment",
                    "attributes": ["family_name"],
                    "operations": ["lookup"],
                    "expires_at": expires,
                    "evidence": {"method": "otp"},
                },
            ).json()
            health.post(
                "/v1/lookup",
                json={
                    "nin": nin,
                    "purpose": "enrolment",
                    "consent_id": consent.get("id"),
                    "attributes": ["family_name"],
                },
            )
            health.post("/v1/lookup", json={"nin": nin, "purpose": "enrolment", "attributes": ["family_name"]})
            health.post("/v1/verify", json={"nin": nin, "purpose": "care", "claims": {"sex": 3}})  # invalid
            health.post(
                "/v1/verify",
                content=f'{{"nin": "{nin}", "purpose": '.encode(),
                headers={"Content-Type": "application/json"},
            )  # malformed
            clients["oversight-app"].http.post("/v1/audit/search", json={"nin": nin})
            clients["channel-app"].http.post(
                "/v1/subjects/access-history",
                json={"nin": nin, "evidence": {"method": "in_person", "reference": "G-7"}},
            )
            httpx.post(f"{server.base_url}/v1/verify", json={"nin": nin}, headers={"Authorization": "Bearer x"})
        httpx.get(f"{server.base_url}/v1/probe/crash", timeout=10)
        metrics = clients["oversight-app"].http.get("/metrics").text
    finally:
        server.stop()
    text = log.read_text()
    for nin in nins:
        assert nin not in text, f"a NIN reached the logs or spans: {nin}"
        assert nin not in metrics, f"a NIN reached the metrics: {nin}"

    spans = []
    decoder = json.JSONDecoder()
    index = text.find('{\n    "name"')
    while index != -1:
        span, end = decoder.raw_decode(text, index)
        spans.append(span)
        index = text.find('{\n    "name"', end)
    names = {s["name"] for s in spans}
    assert {
        "admission",
        "authorise",
        "consent",
        "connector register",
        "access_log.append",
        "POST /v1/verify",
    } <= names, names
    verify_spans = [s for s in spans if s["name"] == "POST /v1/verify"]
    assert any(s["context"]["trace_id"] == "0x0af7651916cd43dd8448eb211c80319c" for s in verify_spans)
    assert all(s["resource"]["attributes"]["service.name"] == "jamu-test" for s in spans)

    lines = [json.loads(line) for line in text.splitlines() if line.startswith('{"time"')]
    assert lines and all({"time", "level", "logger", "message"} <= set(entry) for entry in lines)
    crash = next(entry for entry in lines if "unhandled error" in entry["message"])
    assert len(crash["trace_id"]) == 32 and "RuntimeError" in crash["exception"]

    assert 'jamu_connector_request_duration_seconds_count{connector="register",outcome="ok"}' in metrics
    assert "http_server_request_duration_seconds_bucket" in metrics
    assert 'jamu_access_decisions_total{administration="health",decision="permit",operation="verify"}' in metrics
