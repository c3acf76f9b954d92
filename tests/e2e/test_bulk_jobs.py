"""Bulk verification jobs over real HTTP against served gateways (docs/contract.md §16): a roll checked against
the embedded register, malformed lines reported by line, cancel, a worker killed mid-job, another
administration kept out, the daily allowance, and a 10-million-line upload that streams."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from gateway.connectors.population import population, seed_register
from tests.support.keys import jwks_of, new_key, token_form
from tests.support.realm import Realm, build_realm
from tests.support.servers import GatewayProcess, free_port, wait_until

pytestmark = pytest.mark.e2e
SEED, COUNT = 33, 4000
PEOPLE = list(population(COUNT, SEED))
ACTIVE = [p for p in PEOPLE if p["record_status"] == "active"]
DECEASED = [p for p in PEOPLE if p["record_status"] == "deceased"]
SUSPENDED = [p for p in PEOPLE if p["record_status"] == "suspended"]
UNKNOWN = "100000000000000"
DURABLE = "tests.support.probe_app:create_durable"


def build(root: Path, *, bulk_per_day: int | None = None) -> Realm:
    realm = build_realm(root)
    for admin in ("electoral", "social"):
        client_id = f"{admin}-client"
        realm.keys[client_id] = new_key()
        policy: dict[str, Any] = {
            "id": admin,
            "name": admin.title(),
            "purposes": {
                "roll_revision": {
                    "legal_basis": "Loi électorale, art. 45",
                    "consent": "not_required",
                    "operations": ["verify"],
                    "claims": ["family_name", "given_names", "birth_date"],
                    "predicates": ["alive", "age_at_least"],
                },
                "enrolment": {"consent": "required", "operations": ["verify"], "claims": ["family_name"]},
            },
            "rate_limits": [{"name": "burst", "limit": 1000, "window": "1s"}],
            "clients": [
                {
                    "client_id": client_id,
                    "auth": "private_key_jwt",
                    "jwks": jwks_of(realm.keys[client_id]),
                    "scopes": ["identity:verify"],
                }
            ],
        }
        if bulk_per_day is not None and admin == "electoral":
            policy["bulk_records_per_day"] = bulk_per_day
        (realm.policies_dir / f"{admin}.yaml").write_text(yaml.safe_dump(policy, allow_unicode=True))
    seed_register(realm.data_dir / "register.db", COUNT, SEED)
    return realm


def serve(realm: Realm, log: Path, **env: str) -> GatewayProcess:
    settings = {"GATEWAY_AUDIT_SEAL_INTERVAL_S": "1", "GATEWAY_BULK_CHUNK_RECORDS": "250", **env}
    return GatewayProcess(realm.env(**settings), factory=DURABLE).start(log)


class Client:
    def __init__(self, gateway: GatewayProcess, realm: Realm, client_id: str) -> None:
        form = token_form(client_id, realm.keys[client_id], f"{gateway.base_url}/oauth2/token")
        token = httpx.post(f"{gateway.base_url}/oauth2/token", data=form, timeout=10).json()["access_token"]
        self.http = httpx.Client(base_url=gateway.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60)

    def create(self, key: str, **body: Any) -> httpx.Response:
        doc = {
            "purpose": "roll_revision",
            "claims": ["family_name"],
            "predicates": [{"name": "alive"}],
            "format": "csv",
            **body,
        }
        return self.http.post("/v1/verification-jobs", json=doc, headers={"Idempotency-Key": key})

    def upload(self, job: dict[str, Any], data: Any, **headers: str) -> httpx.Response:
        return self.http.put(job["input_url"], content=data, headers=headers)

    def status(self, job_id: str) -> httpx.Response:
        return self.http.get(f"/v1/verification-jobs/{job_id}")

    def wait(
        self, job_id: str, until: tuple[str, ...] = ("completed", "failed", "cancelled"), timeout: float = 120
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            doc = self.status(job_id).json()
            if doc["status"] in until:
                return doc
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} still {doc['status']}")

    def events(self, officer: Client, job_id: str) -> list[dict[str, Any]]:
        del self
        found, cursor = [], None
        while True:
            params: dict[str, Any] = {"operation": "verify.bulk", "limit": 1000}
            if cursor:
                params["cursor"] = cursor
            page = officer.http.get("/v1/audit/events", params=params).json()
            found += [e for e in page["events"] if e.get("job_id") == job_id]
            cursor = page.get("next_cursor")
            if not cursor or not page["events"]:
                return found


def roll_csv(rows: list[dict[str, str]], columns: tuple[str, ...] = ("ref", "nin", "family_name")) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row.get(c, "") for c in columns])
    return out.getvalue().encode()


def parse_results(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture(scope="module")
def realm(tmp_path_factory: pytest.TempPathFactory) -> Realm:
    return build(tmp_path_factory.mktemp("bulk"), bulk_per_day=20_000)


@pytest.fixture(scope="module")
def gateway(realm: Realm) -> Iterator[GatewayProcess]:
    server = serve(realm, realm.data_dir.parent / "gateway.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def clients(gateway: GatewayProcess, realm: Realm) -> dict[str, Client]:
    return {
        "electoral": Client(gateway, realm, "electoral-client"),
        "social": Client(gateway, realm, "social-client"),
        "officer": Client(gateway, realm, "oversight-app"),
    }


def test_a_roll_is_checked_record_by_record_with_one_event_each(
    clients: dict[str, Client], realm: Realm, gateway: GatewayProcess
) -> None:
    electoral = clients["electoral"]
    alive, dead, suspended = ACTIVE[0], DECEASED[0], SUSPENDED[0]
    rows = [
        {"ref": "v1", "nin": alive["nin"], "family_name": alive["family_name"]},  # verified
        {"ref": "v2", "nin": alive["nin"], "family_name": "Zzzyxw"},  # wrong name
        {"ref": "v3", "nin": UNKNOWN, "family_name": alive["family_name"]},  # unknown person
        {"ref": "v4", "nin": dead["nin"], "family_name": dead["family_name"]},  # match, not alive
        {"ref": "v5", "nin": suspended["nin"], "family_name": suspended["family_name"]},  # like unknown
        {"ref": "v6", "nin": "12", "family_name": "Traoré"},  # malformed NIN
        {"ref": "", "nin": alive["nin"], "family_name": "Traoré"},  # no ref
    ]
    body = (
        roll_csv(rows)
        + b'v8,"unterminated\n'
        + b"\n"
        + b"v10,%s,%s\n" % (ACTIVE[1]["nin"].encode(), ACTIVE[1]["family_name"].encode())
    )
    created = electoral.create("roll-2026", records=20)
    assert created.status_code == 201, created.text
    job = created.json()
    assert job["status"] == "awaiting_input" and job["input_url"] == f"/v1/verification-jobs/{job['id']}/input"
    assert created.headers["Audit-Log-Position"]
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    uploaded = electoral.upload(job, body, **{"Content-Type": "text/csv", "Content-Digest": f"sha-256=:{digest}:"})
    assert uploaded.status_code == 202, uploaded.text
    assert uploaded.json()["total"] == 10 and uploaded.json()["input_sha256"] == hashlib.sha256(body).hexdigest()
    done = electoral.wait(job["id"])
    assert done["status"] == "completed", done
    assert (done["total"], done["processed"], done["errors"], done["eta_s"]) == (10, 10, 4, 0.0)
    assert done["started_at"] is not None
    replay = electoral.create("roll-2026", records=20)  # the same request again: the same job, as it is now
    assert replay.status_code == 201 and (replay.json()["id"], replay.json()["status"]) == (job["id"], "completed")

    results = electoral.http.get(f"/v1/verification-jobs/{job['id']}/results")
    assert results.status_code == 200 and results.headers["content-type"].startswith("text/csv")
    assert results.text.splitlines()[0] == "ref,match,code,alive"
    lines = parse_results(results.text)
    assert [(r["ref"], r["match"], r["code"], r["alive"]) for r in lines] == [
        ("v1", "true", "verified", "true"),
        ("v2", "false", "not_verified", "true"),
        ("v3", "false", "not_verified", "false"),
        ("v4", "true", "not_verified", "false"),
        ("v5", "false", "not_verified", "false"),
        ("v6", "", "invalid_input", ""),
        ("", "", "invalid_input", ""),
        ("v8", "", "invalid_input", ""),
        ("", "", "invalid_input", ""),
        ("v10", "true", "verified", "true"),
    ]
    # Nothing from the register comes back: no names, no dates, no NINs.
    for person in (alive, dead, suspended):
        assert person["nin"] not in results.text and person["birth_date"] not in results.text

    errors = electoral.http.get(f"/v1/verification-jobs/{job['id']}/errors")
    assert errors.status_code == 200
    reported = list(csv.DictReader(io.StringIO(errors.text)))
    assert [(e["line"], e["ref"]) for e in reported] == [("7", "v6"), ("8", ""), ("9", "v8"), ("10", "")]
    assert "nin" in reported[0]["reason"] and "empty" in reported[3]["reason"]

    # One access-log event per record, with the job id, each in that person's history.
    deadline = time.monotonic() + 10
    while len(events := electoral.events(clients["officer"], job["id"])) < 10 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert len(events) == 10 and len({e["id"] for e in events}) == 10
    assert all(e["administration"] == "electoral" and e["purpose"] == "roll_revision" for e in events)
    decisions = [(e["decision"], e["reason"]) for e in events]
    assert decisions.count(("deny", "invalid_request")) == 4
    assert ("permit", "subject_not_found") in decisions and ("permit", "subject_suspended") in decisions
    assert sum(1 for e in events if e["subject_hash"]) == 6
    # The input (it holds NINs) is gone once the job ended.
    assert not list((realm.data_dir / "jobs" / job["id"]).glob("input*"))
    # The person sees the check in their history, like any verification.
    channel = Client(gateway, realm, "channel-app")
    history = channel.http.post(
        "/v1/subjects/access-history",
        json={"nin": dead["nin"], "evidence": {"method": "in_person", "reference": "counter-7"}},
    )
    assert history.status_code == 200, history.text
    assert [e["purpose"] for e in history.json()["events"] if e["operation"] == "verify.bulk"] == ["roll_revision"]


def test_ndjson_records_and_fields_checked_per_line(clients: dict[str, Client]) -> None:
    electoral = clients["electoral"]
    person = ACTIVE[2]
    job = electoral.create(
        "nd-1",
        format="ndjson",
        claims=["family_name", "birth_date"],
        predicates=[{"name": "age_at_least", "value": 18}, {"name": "alive"}],
    ).json()
    lines = [
        {"ref": "a", "nin": person["nin"], "family_name": person["family_name"], "birth_date": person["birth_date"]},
        {"ref": "b", "nin": person["nin"], "family_name": person["family_name"], "birth_date": "1990-02-31"},
        {
            "ref": "c",
            "nin": person["nin"],
            "family_name": person["family_name"],
            "birth_date": person["birth_date"],
            "phone": "+22370000000",
        },
        [1, 2],
    ]
    body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    assert electoral.upload(job, body, **{"Content-Type": "application/x-ndjson"}).status_code == 202
    assert electoral.wait(job["id"])["status"] == "completed"
    results = electoral.http.get(f"/v1/verification-jobs/{job['id']}/results")
    assert results.headers["content-type"].startswith("application/x-ndjson")
    answers = [json.loads(line) for line in results.text.splitlines()]
    adult = person["birth_date"] <= "2008"
    assert answers[0] == {
        "ref": "a",
        "match": True,
        "age_at_least": adult,
        "alive": True,
        "code": "verified" if adult else "not_verified",
    }
    assert [a["code"] for a in answers[1:]] == ["invalid_input"] * 3
    errors = [
        json.loads(line) for line in electoral.http.get(f"/v1/verification-jobs/{job['id']}/errors").text.splitlines()
    ]
    assert [(e["line"], e["ref"]) for e in errors] == [(2, "b"), (3, "c"), (4, None)]
    assert "birth_date" in errors[0]["reason"] and "phone" in errors[1]["reason"]
    assert "+22370000000" not in json.dumps(errors)  # the reason names the field, never echoes the value


def test_creation_is_idempotent_and_validated(clients: dict[str, Client]) -> None:
    electoral = clients["electoral"]
    first = electoral.create("same-key", records=5)
    again = electoral.create("same-key", records=5)
    assert first.status_code == again.status_code == 201 and first.json()["id"] == again.json()["id"]
    other = electoral.create("same-key", records=6)
    assert other.status_code == 409 and other.json()["code"] == "conflict"
    missing = electoral.http.post(
        "/v1/verification-jobs", json={"purpose": "roll_revision", "format": "csv", "claims": ["family_name"]}
    )
    assert missing.status_code == 400 and missing.headers["content-type"] == "application/problem+json"
    cases = [
        ({"purpose": "roll_revision", "format": "xlsx", "claims": ["family_name"]}, 400, "invalid_request"),
        ({"purpose": "roll_revision", "format": "csv", "claims": ["nin"]}, 400, "invalid_request"),
        (
            {"purpose": "roll_revision", "format": "csv", "claims": ["family_name"], "records": "many"},
            400,
            "invalid_request",
        ),
        ({"purpose": "roll_revision", "format": "csv", "claims": ["family_name"], "extra": 1}, 400, "invalid_request"),
        ({"purpose": "roll_revision", "format": "csv", "claims": ["sex"]}, 403, "attribute_not_permitted"),
        ({"purpose": "fishing", "format": "csv", "claims": ["family_name"]}, 403, "purpose_not_permitted"),
        ({"purpose": "enrolment", "format": "csv", "claims": ["family_name"]}, 403, "consent_required"),
        ({"purpose": "roll_revision", "format": "csv"}, 400, "invalid_request"),
    ]
    for i, (body, status, code) in enumerate(cases):
        answer = electoral.http.post("/v1/verification-jobs", json=body, headers={"Idempotency-Key": f"bad-{i}"})
        assert (answer.status_code, answer.json()["code"]) == (status, code), (body, answer.text)
    broken = electoral.http.post(
        "/v1/verification-jobs",
        content=b'{"purpose": ',
        headers={"Idempotency-Key": "broken", "Content-Type": "application/json"},
    )
    assert broken.status_code == 400


def test_a_bad_upload_keeps_nothing(clients: dict[str, Client], realm: Realm) -> None:
    electoral = clients["electoral"]
    job = electoral.create("bad-upload").json()
    body = roll_csv([{"ref": "1", "nin": ACTIVE[0]["nin"], "family_name": "X"}])
    wrong = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    answer = electoral.upload(job, body, **{"Content-Digest": f"sha-256=:{wrong}:"})
    assert answer.status_code == 400 and answer.json()["errors"][0]["pointer"] == "/headers/Content-Digest"
    header = electoral.upload(job, roll_csv([{"ref": "1"}], ("ref", "nin", "family_name", "phone")))
    assert header.status_code == 400 and "phone" in header.json()["detail"]
    assert electoral.upload(job, b"").status_code == 400
    assert electoral.upload(job, b"ref,nin,family_name\n" + b"x" * 20_000 + b"\n").status_code == 400
    assert electoral.status(job["id"]).json()["status"] == "awaiting_input"
    assert not [p for p in (realm.data_dir / "jobs" / job["id"]).iterdir()]  # nothing kept on disk
    assert electoral.upload(job, body).status_code == 202
    assert electoral.upload(job, body).status_code == 409  # the input is taken once


def test_a_cancel_during_the_upload_keeps_nothing(clients: dict[str, Client], realm: Realm) -> None:
    electoral = clients["electoral"]
    job = electoral.create("cancel-mid-upload").json()
    row = b"r,%s,Traore\n" % ACTIVE[0]["nin"].encode()

    def slow() -> Iterator[bytes]:
        yield b"ref,nin,family_name\n"
        for _ in range(20):
            yield row * 100
            time.sleep(0.05)

    result: dict[str, httpx.Response] = {}
    uploading = threading.Thread(target=lambda: result.update(put=electoral.upload(job, slow())))
    uploading.start()
    time.sleep(0.3)
    assert electoral.http.delete(f"/v1/verification-jobs/{job['id']}").json()["status"] == "cancelled"
    uploading.join(30)
    assert result["put"].status_code == 409 and result["put"].json()["code"] == "conflict"
    assert not list((realm.data_dir / "jobs" / job["id"]).iterdir())


def test_another_administration_sees_no_job(clients: dict[str, Client]) -> None:
    electoral, social = clients["electoral"], clients["social"]
    job = electoral.create("private").json()
    body = roll_csv([{"ref": "1", "nin": ACTIVE[0]["nin"], "family_name": "X"}])
    for answer in (
        social.status(job["id"]),
        social.upload(job, body),
        social.http.get(f"/v1/verification-jobs/{job['id']}/results"),
        social.http.get(f"/v1/verification-jobs/{job['id']}/errors"),
        social.http.delete(f"/v1/verification-jobs/{job['id']}"),
    ):
        assert answer.status_code == 404 and answer.json()["code"] == "not_found"
    assert electoral.status(job["id"]).json()["status"] == "awaiting_input"
    assert electoral.status("00000000-0000-0000-0000-000000000000").status_code == 404
    assert electoral.http.get("/v1/verification-jobs/..%2F..%2Fetc").status_code in (404, 400)


def test_the_daily_allowance_refuses_a_job_at_submission(clients: dict[str, Client], realm: Realm) -> None:
    electoral = clients["electoral"]
    declared = electoral.create("too-many", records=20_001)
    assert declared.status_code == 429 and declared.json()["code"] == "rate_limited"
    assert int(declared.headers["Retry-After"]) > 0
    job = electoral.create("over-on-upload").json()
    rows = [{"ref": str(i), "nin": ACTIVE[i % len(ACTIVE)]["nin"], "family_name": "X"} for i in range(20_001)]
    refused = electoral.upload(job, roll_csv(rows))
    assert refused.status_code == 429 and refused.json()["code"] == "rate_limited"
    assert electoral.status(job["id"]).json()["status"] == "awaiting_input"
    assert not list((realm.data_dir / "jobs" / job["id"]).iterdir())  # the refused file is not kept
    declared_small = electoral.create("declared-5", records=5).json()
    over_declared = electoral.upload(declared_small, roll_csv(rows[:6]))
    assert over_declared.status_code == 400 and "more than 5" in over_declared.json()["detail"]


def test_cancel_stops_a_running_job(clients: dict[str, Client], realm: Realm) -> None:
    electoral = clients["electoral"]
    job = electoral.create("to-cancel").json()
    rows = [
        {"ref": str(i), "nin": PEOPLE[i % COUNT]["nin"], "family_name": PEOPLE[i % COUNT]["family_name"]}
        for i in range(15_000)
    ]
    assert electoral.upload(job, roll_csv(rows)).status_code == 202
    electoral.wait(job["id"], until=("running",), timeout=30)
    while (running := electoral.status(job["id"]).json())["processed"] == 0:
        time.sleep(0.05)
    assert running["status"] == "running" and running["eta_s"] > 0 and running["started_at"]
    cancelled = electoral.http.delete(f"/v1/verification-jobs/{job['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    time.sleep(1.5)  # a chunk in progress stops at its next step
    after = electoral.status(job["id"]).json()
    assert after["status"] == "cancelled" and 0 < after["processed"] < 15_000
    results = parse_results(electoral.http.get(f"/v1/verification-jobs/{job['id']}/results").text)
    assert len(results) == after["processed"]
    assert not list((realm.data_dir / "jobs" / job["id"]).glob("input*"))
    # Every record checked before the cancel has its answer, and only those are in the log.
    deadline = time.monotonic() + 10
    while len(electoral.events(clients["officer"], job["id"])) < len(results):
        assert time.monotonic() < deadline
        time.sleep(0.3)
    time.sleep(1.5)
    assert len(electoral.events(clients["officer"], job["id"])) == len(results)
    assert electoral.http.delete(f"/v1/verification-jobs/{job['id']}").json()["status"] == "cancelled"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def open_realm(tmp_path_factory: pytest.TempPathFactory) -> Realm:
    return build(tmp_path_factory.mktemp("bulk-open"))


def test_a_worker_killed_mid_job_resumes_with_one_result_and_one_event_per_record(open_realm: Realm) -> None:
    logs = open_realm.data_dir.parent
    env = {"GATEWAY_BULK_LEASE_S": "2", "GATEWAY_DATABASE_TIMEOUT_S": "0.5", "GATEWAY_BULK_CHUNK_RECORDS": "500"}
    first = serve(open_realm, logs / "first.log", **env)
    total = 40_000
    try:
        electoral = Client(first, open_realm, "electoral-client")
        job = electoral.create("kill-me").json()
        rows = [
            {"ref": f"r{i}", "nin": PEOPLE[i % COUNT]["nin"], "family_name": PEOPLE[i % COUNT]["family_name"]}
            for i in range(total)
        ]
        assert electoral.upload(job, roll_csv(rows)).status_code == 202
        deadline = time.monotonic() + 60
        while (processed := electoral.status(job["id"]).json()["processed"]) < total // 5:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert first.proc is not None
        os.kill(first.proc.pid, signal.SIGKILL)  # mid-chunk: events appended, results not yet committed
        first.proc.wait(timeout=10)
        first.proc = None
    finally:
        first.stop()
    assert processed < total
    second = serve(open_realm, logs / "second.log", **env)
    try:
        electoral = Client(second, open_realm, "electoral-client")
        done = electoral.wait(job["id"], timeout=240)
        assert done["status"] == "completed" and done["processed"] == total and done["errors"] == 0
        results = parse_results(electoral.http.get(f"/v1/verification-jobs/{job['id']}/results").text)
        assert [r["ref"] for r in results] == [f"r{i}" for i in range(total)]  # each once, in input order
        officer = Client(second, open_realm, "oversight-app")
        deadline = time.monotonic() + 20
        while len(events := electoral.events(officer, job["id"])) < total and time.monotonic() < deadline:
            time.sleep(0.5)
        ids = [e["id"] for e in events]
        assert len(ids) == total and len(set(ids)) == total  # one event per record: none lost, none twice
    finally:
        second.stop()


def test_a_ten_million_line_upload_streams_in_bounded_memory(open_realm: Realm) -> None:
    gateway = serve(
        open_realm,
        open_realm.data_dir.parent / "upload.log",
        GATEWAY_BULK_WORKERS="0",
        GATEWAY_BULK_CHUNK_RECORDS="5000",
    )
    try:
        electoral = Client(gateway, open_realm, "electoral-client")
        job = electoral.create("ten-million").json()
        assert gateway.proc is not None
        before = rss_kib(gateway.proc.pid)
        line = b"r,%s,Traore\n" % ACTIVE[0]["nin"].encode()
        block = line * (1024 * 1024 // len(line))
        lines_per_block = block.count(b"\n")
        records = 10_000_000
        peak = [before]

        def body() -> Iterator[bytes]:
            yield b"ref,nin,family_name\n"
            sent = 0
            while sent < records:
                n = min(lines_per_block, records - sent)
                yield block if n == lines_per_block else line * n
                sent += n
                if sent % (lines_per_block * 50) == 0:
                    peak[0] = max(peak[0], rss_kib(gateway.proc.pid))

        answer = electoral.http.put(job["input_url"], content=body(), timeout=300)
        assert answer.status_code == 202, answer.text
        assert answer.json()["total"] == records
        peak[0] = max(peak[0], rss_kib(gateway.proc.pid))
        # The file is ~270 MB; the gateway holds a few pieces of it at a time.
        assert peak[0] - before < 80 * 1024, f"RSS grew from {before} KiB to {peak[0]} KiB"
        assert electoral.status(job["id"]).json()["total"] == records
        assert electoral.http.delete(f"/v1/verification-jobs/{job['id']}").json()["status"] == "cancelled"
        assert not list((open_realm.data_dir / "jobs" / job["id"]).glob("input*"))
    finally:
        gateway.stop()


def test_jamu_jobs_submits_follows_and_writes_the_results(
    gateway: GatewayProcess, realm: Realm, tmp_path: Path
) -> None:
    pem = tmp_path / "electoral.pem"
    pem.write_bytes(realm.keys["electoral-client"].as_pem(private=True))
    roll = tmp_path / "roll.csv"
    rows = [{"ref": f"p{i}", "nin": ACTIVE[i]["nin"], "family_name": ACTIVE[i]["family_name"]} for i in range(600)]
    rows[3]["nin"] = "bad"
    roll.write_bytes(roll_csv(rows))
    base = ["--client", "electoral-client", "--key", str(pem), "--gateway", gateway.base_url]
    jamu = [sys.executable, "-m", "gateway.cli", "jobs"]
    env = {**os.environ}
    done = subprocess.run(
        [
            *jamu,
            "submit",
            str(roll),
            *base,
            "--purpose",
            "roll_revision",
            "--claims",
            "family_name",
            "--predicate",
            "alive",
            "--predicate",
            "age_at_least=18@2027-06-01",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["status"], summary["total"], summary["errors"]) == ("completed", 600, 1)
    assert "100.0%" in done.stderr and "600/600" in done.stderr  # the progress bar's last state
    results = parse_results((tmp_path / "roll.csv.results.csv").read_text())
    assert [r["ref"] for r in results] == [f"p{i}" for i in range(600)]
    assert results[3]["code"] == "invalid_input" and results[0]["match"] == "true"
    assert list(results[0]) == ["ref", "match", "code", "alive", "age_at_least"]
    assert "p3" in (tmp_path / "roll.csv.errors.csv").read_text()
    again = subprocess.run(
        [
            *jamu,
            "submit",
            str(roll),
            *base,
            "--purpose",
            "roll_revision",
            "--claims",
            "family_name",
            "--predicate",
            "alive",
            "--predicate",
            "age_at_least=18@2027-06-01",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert json.loads(again.stdout)["id"] == summary["id"]  # the same submission finds the same job
    status = subprocess.run([*jamu, "status", summary["id"], *base], capture_output=True, text=True, timeout=30)
    assert json.loads(status.stdout)["processed"] == 600
    out = tmp_path / "errors.csv"
    fetched = subprocess.run(
        [*jamu, "results", summary["id"], *base, "--out", str(out), "--errors"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert fetched.returncode == 0 and out.read_text().startswith("line,ref,reason")
    results_out = tmp_path / "again.csv"
    fetched = subprocess.run(
        [*jamu, "results", summary["id"], *base, "--out", str(results_out)], capture_output=True, text=True, timeout=30
    )
    assert fetched.returncode == 0 and results_out.read_text() == (tmp_path / "roll.csv.results.csv").read_text()
    waiting = Client(gateway, realm, "electoral-client").create("cli-cancel").json()
    cancelled = subprocess.run([*jamu, "cancel", waiting["id"], *base], capture_output=True, text=True, timeout=30)
    assert cancelled.returncode == 0 and json.loads(cancelled.stdout)["status"] == "cancelled"
    refused = subprocess.run(
        [*jamu, "status", "00000000-0000-0000-0000-000000000000", *base], capture_output=True, text=True, timeout=30
    )
    assert refused.returncode == 1 and "not_found" in refused.stderr


def test_jobs_run_in_a_worker_process_at_idle_priority_beside_the_interactive_one(open_realm: Realm) -> None:
    logs = open_realm.data_dir.parent
    interactive = serve(open_realm, logs / "interactive.log", GATEWAY_BULK_WORKERS="0")
    port = free_port()
    env = {**os.environ, **open_realm.env(GATEWAY_BULK_CHUNK_RECORDS="250")}
    env.pop("GATEWAY_ISSUER", None)
    with open(logs / "worker.log", "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "jobs", "worker", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200, 30, "jamu jobs worker")
        policy = int(Path(f"/proc/{worker.pid}/stat").read_text().rsplit(")", 1)[1].split()[38])
        assert policy == 5  # SCHED_IDLE: it takes only the CPU the interactive process leaves
        electoral = Client(interactive, open_realm, "electoral-client")
        job = electoral.create("in-the-worker").json()
        rows = [{"ref": f"w{i}", "nin": PEOPLE[i]["nin"], "family_name": PEOPLE[i]["family_name"]} for i in range(1000)]
        assert electoral.upload(job, roll_csv(rows)).status_code == 202
        done = electoral.wait(job["id"], timeout=60)
        assert done["status"] == "completed" and done["processed"] == 1000
        interactive_origin = electoral.status(job["id"]).headers["Audit-Log-Position"].rsplit(" ", 1)[0]
        with sqlite3.connect(open_realm.data_dir / "jamu.db") as db:
            positions = [
                json.loads(row[0])
                for row in db.execute("SELECT log_positions FROM verification_chunks WHERE job_id = ?", (job["id"],))
            ]
        origins = {origin for chunk in positions for origin, _ in chunk}
        assert len(positions) == 4 and origins and interactive_origin not in origins  # all run in the worker
    finally:
        worker.terminate()
        worker.wait(timeout=15)
        interactive.stop()


def test_with_redis_chunks_are_dispatched_through_saq(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    realm = build(tmp_path / "saq")
    gateway = serve(realm, tmp_path / "saq.log", GATEWAY_REDIS_URL=redis_url, GATEWAY_REDIS_KEY_PREFIX=redis_prefix)
    try:
        electoral = Client(gateway, realm, "electoral-client")
        job = electoral.create("over-saq").json()
        rows = [{"ref": f"s{i}", "nin": PEOPLE[i]["nin"], "family_name": PEOPLE[i]["family_name"]} for i in range(900)]
        assert electoral.upload(job, roll_csv(rows)).status_code == 202
        done = electoral.wait(job["id"], timeout=60)
        assert done["status"] == "completed" and done["processed"] == 900
        assert [
            r["ref"] for r in parse_results(electoral.http.get(f"/v1/verification-jobs/{job['id']}/results").text)
        ] == [f"s{i}" for i in range(900)]
        client = redis.Redis.from_url(redis_url)
        saq_keys = [k.decode() for k in client.scan_iter(f"saq:*{redis_prefix}bulk*")]
        assert any(job["id"] in key for key in saq_keys), saq_keys  # the chunks went through the queue
        for key in client.scan_iter(f"saq:*{redis_prefix}*"):
            client.delete(key)
        client.close()
    finally:
        gateway.stop()
