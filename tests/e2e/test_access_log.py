"""The access log over real HTTP, on a gateway serving its own durable log: every request recorded and
readable by security officers, a person's history for citizens, fail-closed when the log cannot be
written, survival of SIGKILL under load, and an offline verifier that locates tampering."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import itertools
import json
import os
import re
import shutil
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

from tests.support.keys import token_form
from tests.support.realm import Realm, build_realm
from tests.support.servers import GatewayProcess

pytestmark = pytest.mark.e2e
JAMU = [sys.executable, "-m", "gateway.cli"]
DURABLE = "tests.support.probe_app:create_durable"
# NINs queried in this module; none may be found at rest anywhere.
AMINATA, BAKARY, NOBODY = "120394857602914", "220394857602915", "999999999999999"


def serve(realm: Realm, log: Path, **env: str) -> GatewayProcess:
    settings = {"GATEWAY_DATABASE_TIMEOUT_S": "1", "GATEWAY_AUDIT_SEAL_INTERVAL_S": "1", **env}
    return GatewayProcess(realm.env(**settings), factory=DURABLE).start(log)


def token(gateway: GatewayProcess, realm: Realm, client_id: str) -> dict[str, str]:
    form = token_form(client_id, realm.keys[client_id], f"{gateway.base_url}/oauth2/token")
    response = httpx.post(f"{gateway.base_url}/oauth2/token", data=form, timeout=10)
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def person(gateway: GatewayProcess, headers: dict[str, str], nin: str) -> httpx.Response:
    return httpx.post(f"{gateway.base_url}/v1/probe/person", json={"nin": nin}, headers=headers, timeout=10)


@pytest.fixture(scope="module")
def realm(tmp_path_factory: pytest.TempPathFactory) -> Realm:
    return build_realm(tmp_path_factory.mktemp("audit"))


@pytest.fixture(scope="module")
def gateway(realm: Realm) -> Iterator[GatewayProcess]:
    server = serve(realm, realm.data_dir.parent / "gateway.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def traffic(gateway: GatewayProcess, realm: Realm) -> dict[str, Any]:
    """A small history: two people verified, one denial, one refused token."""
    elections = token(gateway, realm, "elections-app")
    ids = {
        "aminata": [person(gateway, elections, AMINATA).json()["transaction_id"] for _ in range(3)],
        "bakary": [person(gateway, elections, BAKARY).json()["transaction_id"]],
    }
    denied = httpx.post(
        f"{gateway.base_url}/v1/probe/person",
        json={"nin": AMINATA},
        headers={"Authorization": "Bearer not-a-token"},
        timeout=10,
    )
    assert denied.status_code == 401
    ids["denied"] = denied.json()["transaction_id"]
    bad_client = httpx.post(
        f"{gateway.base_url}/oauth2/token",
        data={"grant_type": "client_credentials"},
        auth=("nobody", "wrong"),
        timeout=10,
    )
    ids["token_refused"] = bad_client.json()["transaction_id"]
    return {
        "ids": ids,
        "officer": token(gateway, realm, "oversight-app"),
        "channel": token(gateway, realm, "channel-app"),
        "elections": elections,
    }


def events(gateway: GatewayProcess, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    response = httpx.get(f"{gateway.base_url}/v1/audit/events", params=params, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def every_event_id(gateway: GatewayProcess, headers: dict[str, str]) -> set[str]:
    found: set[str] = set()
    cursor = None
    while True:
        page = events(gateway, headers, limit=1000, **({"cursor": cursor} if cursor else {}))
        found |= {e["id"] for e in page["events"]}
        cursor = page["next_cursor"]
        if cursor is None:
            return found


def test_every_request_is_an_event_with_the_contract_fields(gateway: GatewayProcess, traffic: dict) -> None:
    listing = events(gateway, traffic["officer"], limit=1000)
    by_id = {e["id"]: e for e in listing["events"]}
    for tx in traffic["ids"]["aminata"] + traffic["ids"]["bakary"]:
        event = by_id[tx]
        assert (event["administration"], event["client_id"], event["operation"]) == (
            "elections",
            "elections-app",
            "verify",
        )
        assert (event["decision"], event["status"], event["reason"]) == ("permit", 200, None)
        assert event["attributes_released"] == ["family_name"] and event["purpose"] == "voter_roll"
        assert len(event["subject_hash"]) == 64 and len(event["trace_id"]) == 32
    denied = by_id[traffic["ids"]["denied"]]
    assert (denied["decision"], denied["reason"], denied["status"], denied["administration"]) == (
        "deny",
        "invalid_token",
        401,
        None,
    )
    refused = by_id[traffic["ids"]["token_refused"]]
    assert (refused["operation"], refused["decision"], refused["reason"]) == ("token", "deny", "invalid_client")
    expected = {
        "origin",
        "seq",
        "id",
        "time",
        "administration",
        "client_id",
        "operation",
        "purpose",
        "legal_basis",
        "consent_id",
        "subject_hash",
        "attributes_requested",
        "attributes_released",
        "decision",
        "reason",
        "status",
        "latency_ms",
        "trace_id",
        "prev_hash",
        "hash",
        "claimed_client_id",
        "evidence",
        "job_id",
        "count",
        "source",
    }
    assert set(denied) == expected
    assert listing["next_cursor"] is None
    by_seq = sorted(listing["events"], key=lambda e: e["seq"])
    assert [e["seq"] for e in by_seq] == list(range(len(by_seq)))  # one origin, numbered from 0
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(by_seq))
    assert [e["id"] for e in listing["events"]] == [e["id"] for e in by_seq]  # one origin: indexed in log order
    assert listing["indexed_through"] == {by_seq[0]["origin"]: listing["indexed_through"][by_seq[0]["origin"]]}
    assert listing["indexed_through"][by_seq[0]["origin"]] >= len(by_seq)


def test_every_response_names_its_event(gateway: GatewayProcess, realm: Realm, traffic: dict) -> None:
    """Audit-Log-Position: <origin> <seq>, the event that carries the response's transaction id."""
    answered = [
        person(gateway, traffic["elections"], AMINATA),
        httpx.post(f"{gateway.base_url}/v1/probe/person", json={"nin": AMINATA}, timeout=10),
        httpx.post(
            f"{gateway.base_url}/v1/probe/person", content=b"{not json", headers=traffic["elections"], timeout=10
        ),
    ]
    listing = {e["id"]: e for e in events(gateway, traffic["officer"], limit=1000)["events"]}
    positions = []
    for response in answered:
        origin, seq = response.headers["audit-log-position"].split(" ")
        event = listing[response.json()["transaction_id"]]
        assert (event["origin"], event["seq"]) == (origin, int(seq))
        assert origin.startswith("127.0.0.1:") and "/access-log/" in origin
        positions.append(int(seq))
    assert positions == sorted(positions) and len(set(positions)) == 3


def test_filters_and_cursor_pages(gateway: GatewayProcess, traffic: dict) -> None:
    officer = traffic["officer"]
    permits = events(gateway, officer, administration="elections", decision="permit", operation="verify")
    assert {e["id"] for e in permits["events"]} >= set(traffic["ids"]["aminata"])
    assert all(e["administration"] == "elections" and e["decision"] == "permit" for e in permits["events"])
    first = events(gateway, officer, limit=2)
    assert len(first["events"]) == 2 and first["next_cursor"]
    second = events(gateway, officer, limit=2, cursor=first["next_cursor"])
    whole = events(gateway, officer, limit=4)["events"]
    assert [e["id"] for e in first["events"] + second["events"]] == [e["id"] for e in whole]
    future = events(gateway, officer, since="2999-01-01T00:00:00Z")
    assert future["events"] == []
    past = events(gateway, officer, until="2000-01-01T00:00:00Z")
    assert past["events"] == []
    for params in (
        {"cursor": "bm9wZQ"},
        {"limit": 0},
        {"limit": 5000},
        {"decision": "maybe"},
        {"since": "yesterday"},
        {"since": "2026-01-01T00:00:00"},
    ):
        response = httpx.get(f"{gateway.base_url}/v1/audit/events", params=params, headers=officer, timeout=10)
        assert response.status_code == 400, params
        assert response.json()["code"] == "invalid_request"


def test_search_by_person_finds_their_events_and_only_theirs(gateway: GatewayProcess, traffic: dict) -> None:
    url = f"{gateway.base_url}/v1/audit/search"
    found = httpx.post(url, json={"nin": AMINATA}, headers=traffic["officer"], timeout=10).json()
    ids = {e["id"] for e in found["events"]}
    assert set(traffic["ids"]["aminata"]) <= ids
    assert not ids & set(traffic["ids"]["bakary"])
    spaced = httpx.post(url, json={"nin": " ".join(AMINATA)}, headers=traffic["officer"], timeout=10).json()
    assert {e["id"] for e in spaced["events"]} >= set(traffic["ids"]["aminata"])
    nobody = httpx.post(url, json={"nin": NOBODY}, headers=traffic["officer"], timeout=10).json()
    assert nobody["events"] == []
    for body in ({"nin": "12"}, {"nin": 120394857602914}, {"nin": AMINATA, "extra": 1}, {}):
        response = httpx.post(url, json=body, headers=traffic["officer"], timeout=10)
        assert response.status_code == 400, body
        assert AMINATA not in response.text


def test_reads_need_their_scope_and_are_themselves_logged(gateway: GatewayProcess, traffic: dict) -> None:
    for method, path in (("GET", "/v1/audit/events"), ("GET", "/v1/audit/integrity"), ("POST", "/v1/audit/search")):
        response = httpx.request(
            method, f"{gateway.base_url}{path}", json={"nin": AMINATA}, headers=traffic["elections"], timeout=10
        )
        assert response.status_code == 403 and response.json()["code"] == "insufficient_scope"
    history = httpx.post(
        f"{gateway.base_url}/v1/subjects/access-history",
        json={"nin": AMINATA, "evidence": EVIDENCE},
        headers=traffic["officer"],
        timeout=10,
    )
    assert history.status_code == 403
    search = httpx.post(
        f"{gateway.base_url}/v1/audit/search", json={"nin": BAKARY}, headers=traffic["officer"], timeout=10
    ).json()
    reads = events(gateway, traffic["officer"], operation="audit.search", limit=1000)["events"]
    logged = {e["id"]: e for e in reads}
    assert search["transaction_id"] in logged
    assert logged[search["transaction_id"]]["client_id"] == "oversight-app"
    assert logged[search["transaction_id"]]["subject_hash"]  # which person was searched, as a pseudonym
    refused = events(gateway, traffic["officer"], decision="deny", limit=1000)["events"]
    assert any(e["operation"] == "audit.search" and e["reason"] == "insufficient_scope" for e in refused)


def test_counting_events_are_filterable_and_bad_time_bounds_refused(gateway: GatewayProcess, traffic: dict) -> None:
    listed = httpx.get(
        f"{gateway.base_url}/v1/audit/events",
        params={"operation": "unauthenticated"},
        headers=traffic["officer"],
        timeout=10,
    )
    assert listed.status_code == 200, listed.text
    for bound in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"):
        response = httpx.get(
            f"{gateway.base_url}/v1/audit/events", params={"since": bound}, headers=traffic["officer"], timeout=10
        )
        assert response.status_code == 400 and response.json()["code"] == "invalid_request", response.text
        searched = httpx.post(
            f"{gateway.base_url}/v1/audit/search",
            json={"nin": AMINATA, "until": bound},
            headers=traffic["officer"],
            timeout=10,
        )
        assert searched.status_code == 400 and searched.json()["errors"][0]["pointer"] == "/until"


def test_integrity_report(gateway: GatewayProcess, traffic: dict) -> None:
    response = httpx.get(f"{gateway.base_url}/v1/audit/integrity", headers=traffic["officer"], timeout=10)
    report = response.json()
    assert response.status_code == 200
    assert report["ok"] is True and report["problems"] == []
    assert report["events_checked"] == report["last_seq"] + 1 >= 7
    [origin] = report["origins"]
    assert origin["tree_size"] >= origin["indexed_through"] >= report["events_checked"]
    assert origin["problems"] == [] and origin["cosignatures"] == [] and "/access-log/" in origin["origin"]
    time.sleep(1.6)  # a checkpoint is written every second here
    later = httpx.get(f"{gateway.base_url}/v1/audit/integrity", headers=traffic["officer"], timeout=10).json()
    assert later["last_checkpoint"]["seq"] >= report["last_seq"]
    logged = events(gateway, traffic["officer"], operation="audit.integrity", limit=1000)["events"]
    assert report["transaction_id"] in {e["id"] for e in logged}


EVIDENCE = {"method": "in_person", "reference": "GUICHET-2026-0042"}


def test_a_citizen_sees_who_used_their_record(gateway: GatewayProcess, traffic: dict) -> None:
    url = f"{gateway.base_url}/v1/subjects/access-history"
    searched = httpx.post(
        f"{gateway.base_url}/v1/audit/search", json={"nin": AMINATA}, headers=traffic["officer"], timeout=10
    )
    assert searched.status_code == 200  # an officer's read of this person's events: not shown to the person
    history = httpx.post(
        url, json={"nin": AMINATA, "evidence": EVIDENCE}, headers=traffic["channel"], timeout=10
    ).json()
    verifications = [e for e in history["events"] if e["operation"] == "verify"]
    assert len(verifications) >= 3
    assert verifications[0] == {
        "time": verifications[0]["time"],
        "administration": "elections",
        "administration_name": "Commission électorale",
        "operation": "verify",
        "purpose": "voter_roll",
        "attributes_released": ["family_name"],
        "decision": "permit",
    }
    assert all(not e["operation"].startswith("audit.") for e in history["events"])
    assert history["events"][-1]["operation"] == "subject.history"  # this read, shown to the person
    again = httpx.post(url, json={"nin": AMINATA, "evidence": EVIDENCE}, headers=traffic["channel"], timeout=10).json()
    reads = [e for e in again["events"] if e["operation"] == "subject.history"]
    assert len(reads) >= 2 and reads[-2]["administration"] == "channel"  # the earlier read, from the log
    nobody = httpx.post(url, json={"nin": NOBODY, "evidence": EVIDENCE}, headers=traffic["channel"], timeout=10)
    assert [e["operation"] for e in nobody.json()["events"]] == ["subject.history"]
    logged = {
        e["id"]: e for e in events(gateway, traffic["officer"], operation="subject.history", limit=1000)["events"]
    }
    assert logged[history["transaction_id"]]["evidence"] == EVIDENCE


@pytest.mark.parametrize(
    "body",
    [
        {"nin": AMINATA},
        {"nin": AMINATA, "evidence": {"method": "telepathy", "reference": "x"}},
        {"nin": AMINATA, "evidence": {"method": "in_person"}},
        {"nin": AMINATA, "evidence": {"method": "otp", "reference": f"NIN {AMINATA}"}},
        {
            "nin": AMINATA,
            "evidence": {"method": "otp", "reference": ".".join(AMINATA[i : i + 3] for i in range(0, 15, 3))},
        },
        {"nin": AMINATA, "evidence": {"method": "otp", "reference": "/".join(AMINATA)}},
    ],
)
def test_a_history_read_needs_evidence_of_the_person(gateway: GatewayProcess, traffic: dict, body: dict) -> None:
    response = httpx.post(
        f"{gateway.base_url}/v1/subjects/access-history", json=body, headers=traffic["channel"], timeout=10
    )
    assert response.status_code == 400 and response.json()["code"] == "invalid_request"
    assert AMINATA not in response.text


def test_no_nin_at_rest(gateway: GatewayProcess, realm: Realm, traffic: dict, tmp_path: Path) -> None:
    events(gateway, traffic["officer"])  # the traffic has happened
    export = tmp_path / "export.jsonl"
    env = {**os.environ, **realm.env()}
    subprocess.run(
        [*JAMU, "audit", "export", "--format", "jsonl", "--output", str(export)],
        env=env,
        check=True,
        timeout=60,
        capture_output=True,
    )
    files = [*realm.data_dir.rglob("*"), realm.data_dir.parent / "gateway.log", export]
    scanned = 0
    for path in files:
        if path.is_file():
            data = path.read_bytes()
            scanned += 1
            for nin in (AMINATA, BAKARY, NOBODY):
                assert nin.encode() not in data, f"{nin} found in {path}"
                assert nin.encode("utf-16-le") not in data
    assert scanned >= 4 and export.stat().st_size > 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: a disk that really fills up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root or CAP_SYS_ADMIN): {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_releases_nothing_and_recovers_when_space_returns(
    realm: Realm, tmp_path: Path, small_disk: Path
) -> None:
    """The segments fill their disk: answers become 503 audit_unavailable, /readyz says so, nothing is
    released; when space returns, the same process answers again and no acknowledged event is lost."""
    data = small_disk / "var"
    server = serve(realm, tmp_path / "full.log", GATEWAY_DATA_DIR=str(data), GATEWAY_AUDIT_SEGMENT_BYTES=str(64 * 1024))
    try:
        elections = token(server, realm, "elections-app")
        acknowledged = [person(server, elections, AMINATA).json()["transaction_id"]]
        filler = small_disk / "filler"
        with contextlib.suppress(OSError), open(filler, "wb", buffering=0) as out:  # take every free byte
            while True:
                out.write(b"\0" * 65536)
        refused = None
        for _ in range(2000):  # the current segment fills, the next cannot be made
            answer = person(server, elections, AMINATA)
            if answer.status_code != 200:
                refused = answer
                break
            acknowledged.append(answer.json()["transaction_id"])
        assert refused is not None, "the log never ran out of space"
        assert refused.status_code == 503 and refused.json()["code"] == "audit_unavailable"
        assert "match" not in refused.text  # nothing released
        ready = httpx.get(f"{server.base_url}/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["checks"]["access_log"] == "failing"
        filler.unlink()  # space returns
        deadline = time.monotonic() + 10
        while httpx.get(f"{server.base_url}/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "not ready again after space returned"
            time.sleep(0.2)
        again = person(server, elections, AMINATA)
        assert again.status_code == 200
        acknowledged.append(again.json()["transaction_id"])
        officer = token(server, realm, "oversight-app")
        assert not set(acknowledged) - every_event_id(server, officer)
    finally:
        server.stop()


def test_sigkill_under_load_loses_no_acknowledged_event(realm: Realm, tmp_path: Path) -> None:
    data = tmp_path / "var"
    server = serve(realm, tmp_path / "killed.log", GATEWAY_DATA_DIR=str(data))
    try:  # stopped whatever fails before the kill, so no gateway outlives the test
        acknowledged: list[str] = []
        headers = token(server, realm, "elections-app")

        async def load(stop_at: float) -> None:
            async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=5) as client:

                async def worker() -> None:
                    while time.monotonic() < stop_at:
                        try:
                            response = await client.post("/v1/probe/person", json={"nin": AMINATA})
                        except httpx.HTTPError:
                            return  # the server is gone
                        if response.is_success:
                            acknowledged.append(response.json()["transaction_id"])

                await asyncio.gather(*(worker() for _ in range(8)))

        async def run() -> None:
            loader = asyncio.create_task(load(time.monotonic() + 10))
            await asyncio.sleep(1.5)
            assert server.proc is not None
            os.kill(server.proc.pid, signal.SIGKILL)
            await loader

        asyncio.run(run())
        server.proc.wait(timeout=10)  # type: ignore[union-attr]
        server.proc = None
    finally:
        server.stop()
    assert len(acknowledged) > 20

    restarted = serve(realm, tmp_path / "restarted.log", GATEWAY_DATA_DIR=str(data))
    try:
        officer = token(restarted, realm, "oversight-app")
        found = every_event_id(restarted, officer)
        missing = set(acknowledged) - found
        assert not missing, f"{len(missing)} acknowledged events lost"
    finally:
        restarted.stop()
    verified = subprocess.run(
        [*JAMU, "audit", "verify"],
        env={**os.environ, **realm.env(GATEWAY_DATA_DIR=str(data))},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


def _copy(data: Path, target: Path) -> tuple[Path, Path]:
    """A copy of a stopped gateway's data dir, as an officer would take one: (its log's only segment,
    its index database)."""
    shutil.copytree(data, target)
    [log_dir] = [d for d in (target / "log").iterdir() if (d / "origin").is_file()]
    [segment] = sorted(log_dir.glob("*.seg"))
    return segment, target / "jamu.db"


def _frames(segment: Path) -> list[tuple[int, int]]:
    """(offset, length) of each frame in a segment."""
    from gateway.audit.segments import HEADER

    data, found, offset = segment.read_bytes(), [], 0
    while offset + HEADER.size <= len(data) and data[offset : offset + HEADER.size] != bytes(HEADER.size):
        length = HEADER.unpack_from(data, offset)[0]
        found.append((offset, HEADER.size + length))
        offset += HEADER.size + length
    return found


def test_offline_verify_and_export_of_a_copy(realm: Realm, tmp_path: Path) -> None:
    data = tmp_path / "var"
    server = serve(realm, tmp_path / "copy.log", GATEWAY_DATA_DIR=str(data))
    try:
        elections = token(server, realm, "elections-app")
        for nin in (AMINATA, BAKARY) * 5:
            assert person(server, elections, nin).status_code == 200
    finally:
        server.stop()  # a clean stop seals the tail and indexes it
    env = {**os.environ, **realm.env(GATEWAY_DATA_DIR=str(data))}
    public_key = tmp_path / "checkpoint-key.pub.pem"  # as an officer receives it: `jamu audit public-key`
    public_key.write_text(
        subprocess.run(
            [*JAMU, "audit", "public-key"], env=env, capture_output=True, text=True, check=True, timeout=60
        ).stdout
    )

    def verify(copy: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*JAMU, "audit", "verify", "--public-key", str(public_key), *extra],
            env={**env, "GATEWAY_DATA_DIR": str(copy)},
            capture_output=True,
            text=True,
            timeout=60,
        )

    ok = verify(data)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("ok: 127.0.0.1:") and ": 11 events, last seq 10, sealed up to seq 10" in ok.stdout

    def flip(segment: Path, db: Path) -> None:
        offset, length = _frames(segment)[4]
        raw = bytearray(segment.read_bytes())
        raw[offset + length - 3] ^= 0x01  # one bit of entry 4
        segment.write_bytes(bytes(raw))

    def remove(segment: Path, db: Path) -> None:
        frames = _frames(segment)
        raw = segment.read_bytes()
        (start, length), end = frames[6], frames[-1][0] + frames[-1][1]
        segment.write_bytes(raw[:start] + raw[start + length : end] + bytes(len(raw) - end + length))

    def truncate(segment: Path, db: Path) -> None:
        with open(segment, "r+b") as handle:
            handle.truncate(_frames(segment)[8][0])

    def change_row(segment: Path, db: Path) -> None:
        with sqlite3.connect(db) as index:
            index.execute("UPDATE audit_index SET decision = 'deny' WHERE seq = 3")

    def delete_row(segment: Path, db: Path) -> None:
        with sqlite3.connect(db) as index:
            index.execute("DELETE FROM audit_index WHERE seq = 5")

    def drop_origin(segment: Path, db: Path) -> None:
        with sqlite3.connect(db) as index:
            index.execute("DELETE FROM audit_index")
            index.execute("DELETE FROM audit_index_watermarks")

    cases = {
        flip: (4, "CRC mismatch"),
        remove: (6, "sequence gap: expected 6"),
        truncate: (8, "a checkpoint covers seq 10"),
        change_row: (3, "differs from the log"),
        delete_row: (5, "index row missing"),
        drop_origin: (0, "the index holds none of this log's 11"),
    }
    for tamper, (bad_seq, why) in cases.items():
        copy = tmp_path / tamper.__name__
        tamper(*_copy(data, copy))
        broken = verify(copy)
        assert broken.returncode == 1, tamper.__name__
        first = next(line for line in broken.stdout.splitlines() if line.startswith("BROKEN"))
        assert "/access-log/" in first and f" seq {bad_seq}: " in first, (tamper.__name__, first)
        assert why in broken.stdout, (tamper.__name__, broken.stdout)

    # A forged entry appended with a recomputed chain and a good CRC, but no checkpoint can be made for it.
    from gateway.audit.chain import link
    from gateway.audit.segment_store import entry_bytes
    from gateway.audit.segments import frame

    segment, _ = _copy(data, tmp_path / "forged")
    offset, length = _frames(segment)[-1]
    last = json.loads(segment.read_bytes()[offset + 16 : offset + length])
    fields = {k: v for k, v in last.items() if k not in ("seq", "prev_hash", "hash")}
    forged = link([{**fields, "id": "forged"}], last["seq"], last["hash"])[0]
    with open(segment, "r+b") as handle:
        handle.seek(offset + length)
        handle.write(frame(forged["seq"], entry_bytes(forged)))
    broken = verify(tmp_path / "forged")
    assert broken.returncode == 1 and " seq 11: " in broken.stdout, broken.stdout
    assert "not covered by a signed checkpoint" in broken.stdout
    assert verify(tmp_path / "forged", "--allow-unsealed").returncode == 0  # a live copy's tail is not a fault

    missing = subprocess.run(
        [*JAMU, "audit", "verify", "--database-url", f"sqlite:///{tmp_path}/none.db"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "no database" in missing.stderr
    empty = verify(tmp_path / "empty")
    assert empty.returncode == 2 and "no access log" in empty.stderr

    out = tmp_path / "events.csv"
    exported = subprocess.run(
        [
            *JAMU,
            "audit",
            "export",
            "--format",
            "csv",
            "--output",
            str(out),
            "--administration",
            "elections",
            "--since",
            "2000-01-01T00:00:00Z",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert len(rows) == 11 and {r["administration"] for r in rows} == {"elections"}  # its token, 10 calls
    assert rows[0]["operation"] == "token" and rows[1]["attributes_released"] == "family_name"
    assert "/access-log/" in rows[0]["origin"]
    lines = subprocess.run(
        [*JAMU, "audit", "export", "--format", "jsonl", "--until", "2000-01-01T00:00:00Z"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert lines.returncode == 0 and lines.stdout == ""
    everything = subprocess.run([*JAMU, "audit", "export"], env=env, capture_output=True, text=True, timeout=60)
    parsed = [json.loads(line) for line in everything.stdout.splitlines()]
    assert [e["seq"] for e in parsed] == list(range(11))

    # The index is a follower: dropped and rebuilt from the segments, it says the same.
    with sqlite3.connect(data / "jamu.db") as index:
        index.execute("DELETE FROM audit_index")
        index.execute("DELETE FROM audit_index_checkpoints")
        index.execute("DELETE FROM audit_index_watermarks")
    rebuilt = subprocess.run([*JAMU, "audit", "reindex"], env=env, capture_output=True, text=True, timeout=60)
    assert rebuilt.returncode == 0 and ": 11 events indexed" in rebuilt.stdout, rebuilt.stdout + rebuilt.stderr
    assert verify(data).returncode == 0
    again = subprocess.run([*JAMU, "audit", "export"], env=env, capture_output=True, text=True, timeout=60)
    assert again.stdout == everything.stdout


@pytest.mark.postgres
def test_a_gateway_on_postgresql_logs_and_verifies(
    realm: Realm, tmp_path: Path, postgres_url: str, postgres_schema: str
) -> None:
    server = serve(
        realm,
        tmp_path / "pg.log",
        GATEWAY_DATA_DIR=str(tmp_path / "var"),
        GATEWAY_DATABASE_URL=postgres_url,
        GATEWAY_DATABASE_SCHEMA=postgres_schema,
    )
    try:
        elections = token(server, realm, "elections-app")
        sent = [person(server, elections, AMINATA).json()["transaction_id"] for _ in range(5)]
        officer = token(server, realm, "oversight-app")
        found = httpx.post(
            f"{server.base_url}/v1/audit/search", json={"nin": AMINATA}, headers=officer, timeout=10
        ).json()
        assert [e["id"] for e in found["events"]] == sent
        report = httpx.get(f"{server.base_url}/v1/audit/integrity", headers=officer, timeout=10).json()
        assert report["ok"] and report["events_checked"] >= 8
    finally:
        server.stop()
    env = {
        **os.environ,
        **realm.env(
            GATEWAY_DATA_DIR=str(tmp_path / "var"),
            GATEWAY_DATABASE_URL=postgres_url,
            GATEWAY_DATABASE_SCHEMA=postgres_schema,
        ),
    }
    verified = subprocess.run([*JAMU, "audit", "verify"], env=env, capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert AMINATA not in verified.stdout


@pytest.mark.postgres
def test_with_the_index_database_down_verification_goes_on_and_the_index_catches_up(
    realm: Realm, tmp_path: Path, postgres_url: str, postgres_schema: str
) -> None:
    """The index's PostgreSQL goes away (a proxy cut): answers keep coming, each durable in the segments;
    audit reads answer 503 with Retry-After rather than miss events; /readyz says the index is degraded
    but the gateway ready; once the database is back, the index catches up and every event is found."""
    from urllib.parse import urlsplit

    from tests.support.tcp_proxy import CuttableProxy

    target = urlsplit(postgres_url)
    proxy = CuttableProxy(target.hostname or "127.0.0.1", target.port or 5432).start()
    proxied = postgres_url.replace(f"{target.hostname}:{target.port or 5432}", f"127.0.0.1:{proxy.port}")
    server = serve(
        realm,
        tmp_path / "index-down.log",
        GATEWAY_DATA_DIR=str(tmp_path / "var"),
        GATEWAY_DATABASE_URL=proxied,
        GATEWAY_DATABASE_SCHEMA=postgres_schema,
    )
    try:
        elections, officer = token(server, realm, "elections-app"), token(server, realm, "oversight-app")
        assert person(server, elections, AMINATA).status_code == 200
        proxy.cut()
        during = [person(server, elections, AMINATA) for _ in range(5)]
        assert [r.status_code for r in during] == [200] * 5
        assert all(r.headers["audit-log-position"] for r in during)
        for method, path, body in (
            ("GET", "/v1/audit/events", None),
            ("POST", "/v1/audit/search", {"nin": AMINATA}),
            ("GET", "/v1/audit/integrity", None),
        ):
            refused = httpx.request(method, f"{server.base_url}{path}", json=body, headers=officer, timeout=10)
            assert refused.status_code == 503 and refused.json()["code"] == "audit_unavailable", refused.text
            assert refused.headers["retry-after"] == "1"
        ready = httpx.get(f"{server.base_url}/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json()["checks"]["audit_index"] == "degraded", ready.text
        proxy.restore()
        deadline = time.monotonic() + 15
        while True:
            listed = httpx.get(
                f"{server.base_url}/v1/audit/events", params={"limit": 1000}, headers=officer, timeout=10
            )
            if listed.status_code == 200:
                break
            assert time.monotonic() < deadline, listed.text
            time.sleep(0.5)
        found = {e["id"] for e in listed.json()["events"]}
        assert {r.json()["transaction_id"] for r in during} <= found
        assert httpx.get(f"{server.base_url}/readyz", timeout=10).json()["checks"]["audit_index"] == "ok"
    finally:
        server.stop()
        proxy.close()


def test_a_1_0_log_is_carried_over_and_verifies_as_one_history(realm: Realm, tmp_path: Path) -> None:
    """A data dir from 1.0 (its log one SQL chain): the upgraded gateway seals it, shows its events under
    their own origin and numbering, and continues from its head; `jamu audit verify` covers both."""
    from gateway.audit.chain import CheckpointSigner
    from gateway.audit.record import AccessRecord
    from gateway.audit.store import AccessLogStore
    from gateway.keyfiles import load_or_create_ed25519
    from gateway.settings import Settings
    from gateway.storage.database import create_engine, database_url, migrate

    data = tmp_path / "var"
    signer = CheckpointSigner(load_or_create_ed25519(Settings(data_dir=data).checkpoint_key_path))

    async def write_1_0_log() -> list[str]:
        engine = create_engine(database_url(None, data))
        await migrate(engine)
        store = AccessLogStore(engine, signer, seal_every=1000)
        ids = []
        for n in range(6):
            record = AccessRecord(
                operation="verify", administration="elections", client_id="elections-app", subject_hash=f"{n:064x}"
            )
            record.finish(200)
            await store.append([record.event()])
            ids.append(record.id)
        await store.close()  # unsealed: 1.0 stopped without a checkpoint over its last events
        return ids

    old_ids = asyncio.run(write_1_0_log())
    server = serve(realm, tmp_path / "upgraded.log", GATEWAY_DATA_DIR=str(data))
    try:
        answered = person(server, token(server, realm, "elections-app"), AMINATA)
        assert answered.status_code == 200
        listing = events(server, token(server, realm, "oversight-app"), limit=1000)["events"]
        old = [e for e in listing if e["id"] in old_ids]
        assert [e["seq"] for e in old] == [1, 2, 3, 4, 5, 6]
        assert {e["origin"] for e in old} == {f"{server.base_url.split('//')[1]}/access-log/1.0"}
        new = sorted((e for e in listing if e["id"] not in old_ids), key=lambda e: e["seq"])
        assert new[0]["seq"] == 0 and new[0]["prev_hash"] == old[-1]["hash"]  # the new log continues the old
    finally:
        server.stop()
    verified = subprocess.run(
        [*JAMU, "audit", "verify"],
        env={**os.environ, **realm.env(GATEWAY_DATA_DIR=str(data))},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "/access-log/1.0: 6 events, last seq 6, sealed up to seq 6 (1.0 log)" in verified.stdout


def test_a_log_restored_from_an_older_copy_is_continued_under_a_new_origin(realm: Realm, tmp_path: Path) -> None:
    """The log directory goes back to an earlier copy while the index knows more of it (a checkpoint past
    the copy was signed): writing on would sign a tree that does not extend it, and reuse (origin, seq)
    pairs the index holds. The gateway retires the restored log and begins a new origin chained to it."""
    data = tmp_path / "var"
    first = serve(realm, tmp_path / "first.log", GATEWAY_DATA_DIR=str(data), GATEWAY_LOG_ORIGIN="gw.example/log")
    try:
        elections = token(first, realm, "elections-app")
        assert person(first, elections, AMINATA).status_code == 200
        time.sleep(1.5)  # a checkpoint over the early entries
        backup = tmp_path / "backup"
        shutil.copytree(data / "log", backup)  # a copy of the log, taken early
        for _ in range(5):
            assert person(first, elections, AMINATA).status_code == 200
    finally:
        first.stop()
    shutil.rmtree(data / "log")
    shutil.copytree(backup, data / "log")
    restored = serve(realm, tmp_path / "restored.log", GATEWAY_DATA_DIR=str(data), GATEWAY_LOG_ORIGIN="gw.example/log")
    try:
        answered = person(restored, token(restored, realm, "elections-app"), AMINATA)
        assert answered.status_code == 200
        successor = answered.headers["audit-log-position"].rsplit(" ", 1)[0]
        assert re.fullmatch(r"gw\.example/log/r[0-9]{8}t[0-9]{6}", successor)
        retired = json.loads((data / "log" / "gw%2Eexample%2Flog" / "retired.json").read_text())
        assert retired["successor"] == successor and "restored from an older copy" in retired["reason"]
        listing = events(restored, token(restored, realm, "oversight-app"), limit=1000)["events"]
        new = sorted((e for e in listing if e["origin"] == successor), key=lambda e: e["seq"])
        assert new[0]["seq"] == 0 and new[0]["prev_hash"] == retired["hash"]  # chained to the restored head
        assert len([e for e in listing if e["origin"] == "gw.example/log"]) > retired["seq"] + 1  # kept as evidence
    finally:
        restored.stop()
    assert (tmp_path / "restored.log").read_text().count("retired") >= 1


def test_reindex_refuses_a_log_its_gateway_is_writing(gateway: GatewayProcess, realm: Realm, traffic: dict) -> None:
    env = {**os.environ, **realm.env()}
    refused = subprocess.run([*JAMU, "audit", "reindex"], env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "a running gateway writes this log; stop it first" in refused.stderr
    assert events(gateway, traffic["officer"], limit=5)["events"]  # the index was left as it was
