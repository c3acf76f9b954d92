"""In-process regression tests for what an attacker's review found: headers that cannot break or inject,
a log nobody can flood without credentials, no data route around the log, private files, read-only keys,
formula-safe exports, and external tokens held to their administration's scopes."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import request_context
from gateway.api.deps import protected
from gateway.audit.log import StubAccessLog
from gateway.audit.offline import csv_row, spreadsheet_safe
from gateway.audit.record import AccessRecord
from gateway.audit.record import AccessRecord as Record
from gateway.audit.refusals import OVERFLOW_SOURCE, RefusalTally
from gateway.auth.bearer import Caller, external_scopes
from gateway.datadir import secure_data_dir
from gateway.errors import Problem
from gateway.ratelimit.admission import client_address, parse_networks, source_address
from gateway.ratelimit.gcra import Verdict, Window
from gateway.ratelimit.limiter import Limiter, Outcome
from gateway.request_context import RequestContext, current, enter, leave
from gateway.settings import Settings
from tests.support import probe_app
from tests.support.keys import b64, gateway_token
from tests.support.realm import Realm, build_realm
from tests.support.servers import REPO

ISSUER = "http://127.0.0.1:8000"


@pytest.fixture
def local_realm(tmp_path: Path) -> Realm:
    return build_realm(tmp_path)


def _app(realm: Realm, access_log: StubAccessLog, limiter: Limiter | None = None, **overrides: Any) -> FastAPI:
    settings_ = Settings(
        policies_dir=realm.policies_dir,
        data_dir=realm.data_dir,
        issuer=ISSUER,
        **{
            "unauthenticated_rate_limits": "burst:10000/1s",
            "unauthenticated_total_rate_limits": "burst:10000/1s",
            **overrides,
        },
    )
    return probe_app.create(settings_, access_log, limiter=limiter)


@asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its start-up and shutdown run, as a server would."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=("192.0.2.10", 50000))
        async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as http:
            yield http


def _token(realm: Realm, scope: str = "identity:verify identity:lookup", client: str = "elections-app") -> str:
    return gateway_token(realm.data_dir, ISSUER, client, scope)


# --- 8. nothing a client sends reaches a response header; no header value gives a 5xx ----------------------


@pytest.mark.slow
async def test_the_tokens_alg_is_never_echoed_into_a_header(local_realm: Realm) -> None:
    access_log = StubAccessLog()
    async with served(_app(local_realm, access_log)) as http:
        for alg in ('Ed25519", error="none', "Ed25519\u00e9\u4e2d", "x" * 300):
            token = f"{b64({'alg': alg, 'typ': 'at+jwt', 'kid': 'k'})}.{b64({'iss': ISSUER})}.c2ln"
            response = await http.get("/v1/probe/verify", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == 'Bearer realm="jamu", error="invalid_token"'
            assert alg not in response.text


READ_HEADERS = [
    b"authorization",
    b"content-type",
    b"content-length",
    b"traceparent",
    b"x-forwarded-for",
    b"accept",
    b"host",
    b"cookie",
    b"accept-language",
    b"idempotency-key",
    b"transfer-encoding",
]
PATHS = [
    ("GET", "/v1/probe/verify"),
    ("POST", "/v1/verify"),
    ("POST", "/oauth2/token"),
    ("GET", "/docs"),
    ("GET", "/metrics"),
    ("POST", "/v1/nope"),
    ("GET", "/healthz"),
    ("GET", "/v1/audit/events/"),
    ("POST", "/v1/verify/"),
]


def _asgi_call(
    app: FastAPI, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes
) -> tuple[int, list[tuple[bytes, bytes]]]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("192.0.2.7", 4000),
        "server": ("127.0.0.1", 8000),
    }
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if delivered:
            await asyncio.sleep(3600)
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], start["headers"]


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    realm = build_realm(tmp_path_factory.mktemp("fuzz"))
    return _app(realm, StubAccessLog())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    route=st.sampled_from(PATHS),
    headers=st.lists(
        st.tuples(
            st.sampled_from(READ_HEADERS),
            st.binary(max_size=300)
            | st.sampled_from(
                [
                    b"Bearer \xff\xfe",
                    b'Bearer a.b.c"',
                    b"Basic \xe9t\xe9",
                    b"application/json; charset=\xff",
                    b"-1",
                    b"99999999999999999999999",
                    b"00-" + b"f" * 32 + b"-" + b"1" * 16 + b"-01",
                    b"1.2.3.4, ::1, \xff",
                    b"Bearer " + b"A" * 9000,
                    b"Basic\t/ w==",
                    b"basic  \xff\xfe",
                    b"Basic",
                    b"Basic =",
                    b"Bearer\tx.y.z",
                ]
            ),
        ),
        max_size=6,
    ),
    body=st.sampled_from(
        [
            b"",
            b"{}",
            b'{"nin": "1"}',
            b"\xff" * 10,
            b"grant_type=client_credentials",
            b"grant_type=client_credentials&client_id=a&client_assertion=x.y.z",
        ]
    ),
)
@pytest.mark.slow
def test_no_header_value_gives_a_server_error(
    fuzz_app: FastAPI, route: tuple[str, str], headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    status, response_headers = _asgi_call(fuzz_app, route[0], route[1], headers, body)
    assert status < 500, status
    for _name, value in response_headers:
        assert b"\r" not in value and b"\n" not in value
        value.decode("latin-1")


@pytest.mark.slow
async def test_no_trailing_slash_redirect_echoes_the_host_or_path(local_realm: Realm) -> None:
    access_log = StubAccessLog()
    async with served(_app(local_realm, access_log)) as http:
        for path in ("/v1/audit/events/?x=%0d%0aSet-Cookie:a", "/v1/verify/", "/healthz/"):
            response = await http.get(path, headers={"Host": "evil.example"})
            assert response.status_code == 404, path
            assert "location" not in response.headers
            assert all("evil.example" not in value for value in response.headers.values())


@pytest.mark.slow
async def test_an_anonymous_flood_does_not_keep_clients_from_their_tokens(local_realm: Realm) -> None:
    access_log = StubAccessLog()
    app = _app(local_realm, access_log, unauthenticated_total_rate_limits="burst:5/1m", trusted_proxies="192.0.2.10/32")
    async with served(app) as http:
        flood = [await http.get("/v1/nope", headers={"X-Forwarded-For": f"198.51.100.{n}"}) for n in range(1, 21)]
        assert [f.status_code for f in flood].count(429) == 15  # the totals hold the flood
        token = await http.post(
            "/oauth2/token",
            content=b"grant_type=client_credentials",
            headers={"Content-Type": "application/x-www-form-urlencoded", "X-Forwarded-For": "203.0.113.5"},
        )
        assert token.status_code == 401 and token.json()["code"] == "invalid_client"  # heard, not refused


@pytest.mark.slow
@pytest.mark.parametrize("authorization", ["Basic\t/ w==", "basic  //79", "Basic\t\t", "BASIC AAAA"])
async def test_malformed_basic_credentials_are_invalid_client_not_a_crash(
    local_realm: Realm, authorization: str
) -> None:
    access_log = StubAccessLog()
    async with served(_app(local_realm, access_log)) as http:
        response = await http.post(
            "/oauth2/token",
            content=b"grant_type=client_credentials",
            headers={"Authorization": authorization, "Content-Type": "application/x-www-form-urlencoded"},
        )
    assert response.status_code in (400, 401), response.text
    assert response.json()["code"] in ("invalid_client", "invalid_request")


class BrokenLimiter:
    """A limiter whose backend answers what nobody expected."""

    async def acquire(self, key: str, windows: tuple[Window, ...]) -> Verdict:
        raise RuntimeError("an answer nobody expected")

    async def check(self, key: str, windows: tuple[Window, ...], subject: str) -> Outcome:
        raise RuntimeError("an answer nobody expected")

    def health(self) -> str:
        return "ok"


@pytest.mark.slow
async def test_a_failing_admission_is_a_logged_internal_error(local_realm: Realm) -> None:
    access_log = StubAccessLog()
    app = _app(local_realm, access_log, BrokenLimiter())
    async with served(app) as http:
        response = await http.get("/v1/probe/verify", headers={"Authorization": f"Bearer {_token(local_realm)}"})
    assert response.status_code == 500 and response.json()["code"] == "internal_error"
    assert "nobody expected" not in response.text
    assert [(e["id"], e["reason"], e["status"]) for e in access_log.events] == [
        (response.json()["transaction_id"], "internal_error", 500)
    ]


@pytest.mark.slow
async def test_many_sources_together_are_held_by_the_total_windows(local_realm: Realm) -> None:
    """Behind a trusted proxy, each request from another address (an attacker holding many): the
    per-source windows never refuse, the total ones do, and the refusals are counted."""
    access_log = StubAccessLog()
    app = _app(local_realm, access_log, unauthenticated_total_rate_limits="burst:5/1m", trusted_proxies="192.0.2.10/32")
    async with served(app) as http:
        answers = [
            await http.get("/v1/no-such-thing", headers={"X-Forwarded-For": f"198.51.100.{n}"}) for n in range(1, 31)
        ]
        assert [a.status_code for a in answers].count(404) == 5
        assert [a.status_code for a in answers].count(429) == 25
    counted = [e for e in access_log.events if e["operation"] == "unauthenticated"]
    assert sum(e["count"] for e in counted) == 25
    assert len([e for e in access_log.events if e["operation"] != "unauthenticated"]) == 5


# --- 4. the per-source limit before routing, refusals counted --------------------------------------------


@pytest.mark.slow
async def test_anonymous_floods_are_refused_before_routing_and_counted(local_realm: Realm) -> None:
    access_log = StubAccessLog()
    app = _app(local_realm, access_log, unauthenticated_rate_limits="burst:5/1s")
    async with served(app) as http:
        requests = [
            ("GET", "/v1/no-such-thing", None),
            ("DELETE", "/v1/verify", None),
            ("POST", "/v1/verify", b'{"nin": '),
            ("POST", "/oauth2/token", b"grant_type=x"),
        ]
        answers = [await http.request(method, path, content=body) for method, path, body in requests * 15]
        refused = [a for a in answers if a.status_code == 429]
        assert len(refused) >= 50
        assert all(
            a.headers["content-type"] == "application/problem+json" and "retry-after" in a.headers for a in refused
        )
        logged_one_by_one = [e for e in access_log.events if e["operation"] != "unauthenticated"]
        assert len(logged_one_by_one) <= 10  # at most the burst (twice, if the run straddles a second)
        # An authenticated caller is not under the per-source limit.
        ok = await http.get("/v1/probe/verify", headers={"Authorization": f"Bearer {_token(local_realm)}"})
        assert ok.status_code == 200
        await asyncio.sleep(1.4)
    counted = [e for e in access_log.events if e["operation"] == "unauthenticated"]
    assert 1 <= len(counted) <= 3
    assert sum(e["count"] for e in counted) == len(refused)
    assert all(
        (e["decision"], e["reason"], e["status"], e["source"]) == ("deny", "rate_limited", 429, "192.0.2.10")
        for e in counted
    )
    assert {a.json()["transaction_id"] for a in refused} == {e["id"] for e in counted}


async def test_the_tally_counts_per_source_and_second_with_a_bound() -> None:
    access_log = StubAccessLog()
    tally = RefusalTally(access_log, max_sources=2)
    first = tally.count("192.0.2.1", now=100.2)
    assert tally.count("192.0.2.1", now=100.9) == first
    tally.count("192.0.2.2", now=100.5)
    overflow = tally.count("192.0.2.3", now=100.5)  # a third source: over the bound
    assert tally.count("192.0.2.4", now=100.6) == overflow != first
    assert tally.count("192.0.2.1", now=101.0) not in (first, overflow)  # the next second
    assert await tally.flush(now=101.5) == 3  # second 100: two sources and the overflow
    events = {e["source"]: e for e in access_log.events}
    assert events["192.0.2.1"]["count"] == 2 and events[OVERFLOW_SOURCE]["count"] == 2
    assert events["192.0.2.1"]["id"] == first and events["192.0.2.1"]["time"].startswith("1970-01-01T00:01:40")
    assert tally.pending() == 1
    await tally.close()
    assert tally.pending() == 0 and len(access_log.events) == 4


def test_x_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    proxies = parse_networks("10.0.0.0/8, 2001:db8::/32")
    assert client_address("192.0.2.5", [b"198.51.100.1"], proxies) == "192.0.2.5"  # not a proxy: ignored
    assert client_address("10.1.2.3", [b"198.51.100.1"], proxies) == "198.51.100.1"
    assert client_address("10.1.2.3", [b"203.0.113.9, 198.51.100.1, 10.9.9.9"], proxies) == "198.51.100.1"
    assert client_address("10.1.2.3", [b"203.0.113.9", b"198.51.100.1"], proxies) == "198.51.100.1"
    assert client_address("10.1.2.3", [b"not-an-address"], proxies) == "10.1.2.3"
    assert client_address("10.1.2.3", [b"198.51.100.1, junk, 10.0.0.1"], proxies) == "10.0.0.1"
    assert client_address("10.1.2.3", [], proxies) == "10.1.2.3"
    assert client_address("10.1.2.3", [b"198.51.100.1"], ()) == "10.1.2.3"
    assert client_address("::ffff:10.1.2.3", [b"198.51.100.1"], proxies) == "198.51.100.1"  # a dual-stack peer
    assert source_address("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert source_address("::ffff:192.0.2.1") == "192.0.2.1"
    with pytest.raises(ValueError):
        parse_networks("10.0.0.0/8, banana")


# --- 2. no data route around the log ---------------------------------------------------------------------


@pytest.mark.slow
async def test_a_data_route_reached_outside_the_logged_paths_answers_503(local_realm: Realm) -> None:
    access_log = StubAccessLog()
    app = _app(local_realm, access_log)

    @app.get("/unlogged/verify", name="verify")
    async def unlogged(caller: Annotated[Caller, Depends(protected("verify", "identity:verify"))]) -> dict:
        return {"released": True}

    async with served(app) as http:
        response = await http.get("/unlogged/verify", headers={"Authorization": f"Bearer {_token(local_realm)}"})
    assert response.status_code == 503 and response.json()["code"] == "audit_unavailable"
    assert "released" not in response.text


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/jamu/v1/probe/verify", "/v1/probe/verify"])
async def test_gateway_root_path_answers_with_or_without_the_prefix_and_logs(local_realm: Realm, path: str) -> None:
    access_log = StubAccessLog()
    async with served(_app(local_realm, access_log, root_path="/jamu")) as http:
        response = await http.get(path, headers={"Authorization": f"Bearer {_token(local_realm)}"})
        assert response.status_code == 200, response.text
        assert [e["id"] for e in access_log.events] == [response.json()["transaction_id"]]
        assert access_log.events[0]["operation"] == "verify"


# --- 6. formula-safe CSV ---------------------------------------------------------------------------------


def test_csv_cells_a_spreadsheet_would_run_are_neutralised() -> None:
    for value in ('=HYPERLINK("http://x")', "+1", "-2+3", "@SUM(A1)", "\tx", "\rx"):
        assert spreadsheet_safe(value) == "'" + value
    assert spreadsheet_safe("voter_roll") == "voter_roll" and spreadsheet_safe(200) == 200
    record = AccessRecord(
        operation="verify",
        purpose="=cmd|' /C calc'!A0",
        client_id="-x",
        evidence={"method": "in_person", "reference": "=1+1"},
    )
    record.finish(200)
    row = csv_row({**record.event(), "seq": 1, "prev_hash": "0", "hash": "1"})
    assert row["purpose"].startswith("'=") and row["client_id"] == "'-x"
    assert row["evidence"] == '{"method":"in_person","reference":"=1+1"}'  # JSON text starts with "{"


# --- 1. external scopes ----------------------------------------------------------------------------------


def test_the_default_per_source_and_total_limits_are_the_documented_ones() -> None:
    defaults = Settings()
    assert defaults.unauthenticated_rate_limits == "burst:20/1s,hourly:1200/1h"
    assert defaults.unauthenticated_total_rate_limits == "burst:200/1s,hourly:100000/1h"
    assert defaults.metrics_host == "127.0.0.1" and defaults.root_path == "" and defaults.trusted_proxies == ""


@pytest.mark.parametrize(
    ("entry", "fault"),
    [
        ({"jwks_url": "http://idp.example.ml/jwks.json"}, "must be https"),
        ({"algorithms": ["HS256"]}, "algorithms must be among"),
        ({"max_lifetime_s": 0}, "max_lifetime_s"),
        ({"surprise": True}, "surprise"),
    ],
)
def test_a_bad_trusted_issuers_file_is_refused(tmp_path: Path, entry: dict, fault: str) -> None:
    from gateway.auth.trusted import load_trusted_issuers

    base = {
        "issuer": "https://idp.example.ml",
        "jwks_url": "https://idp.example.ml/jwks.json",
        "clients": {"ceni-portal": "ceni"},
    }
    path = tmp_path / "trusted.json"
    path.write_text(json.dumps({"issuers": [{**base, **entry}]}))
    with pytest.raises(ValueError) as caught:
        load_trusted_issuers(path)
    assert fault in str(caught.value)
    path.write_text(json.dumps({"issuers": [base]}))  # the same file, well-formed, as JSON
    [loaded] = load_trusted_issuers(path)
    assert (loaded.audience, loaded.max_lifetime_s, loaded.client_claim) == (None, 300, "client_id")
    assert loaded.mapping("ceni-portal").administration == "ceni"  # type: ignore[union-attr]


def test_external_scopes_are_an_intersection_and_never_sensitive_unless_mapped() -> None:
    claimed = frozenset({"identity:verify", "audit:read", "subject:history", "consent:write", "identity:lookup"})
    held = frozenset({"identity:verify", "audit:read", "consent:write"})
    assert external_scopes(claimed, held, None) == {"identity:verify"}
    assert external_scopes(claimed, held, ["audit:read"]) == {"audit:read"}
    assert external_scopes(claimed, held, ["identity:lookup", "identity:verify"]) == {"identity:verify"}


# --- 9. private data dir ---------------------------------------------------------------------------------


def test_the_data_dir_is_made_private_whatever_the_umask(tmp_path: Path) -> None:
    data = tmp_path / "var"
    old = os.umask(0o022)
    try:
        (data / "keys").mkdir(parents=True)
        for name in ("jamu.db", "jamu.db-wal", "jamu.db-shm", "register.db", "keys/subject-key"):
            (data / name).write_text("x")
            (data / name).chmod(0o644)
        (data / "keys").chmod(0o755)
        outside = tmp_path / "outside"
        outside.mkdir(mode=0o755)
        outside.chmod(0o755)
        (data / "outside-link").symlink_to(outside)
        secure_data_dir(data)
        assert os.umask(0o022) == 0o077  # and what the process creates from now on is private
    finally:
        os.umask(old)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700 and stat.S_IMODE((data / "keys").stat().st_mode) == 0o700
    for path in data.rglob("*"):
        if not path.is_symlink() and path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(outside.stat().st_mode) == 0o755  # a link is not followed


def test_a_data_dir_named_through_a_link_is_made_private(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    real.chmod(0o755)
    (tmp_path / "var").symlink_to(real)
    old = os.umask(0o022)
    try:
        secure_data_dir(tmp_path / "var")
    finally:
        os.umask(old)
    assert stat.S_IMODE(real.stat().st_mode) == 0o700


@pytest.mark.slow
def test_every_jamu_command_makes_the_data_dir_private(tmp_path: Path, local_realm: Realm) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    env = {**os.environ, **local_realm.env(GATEWAY_DATA_DIR=str(data))}
    seeded = subprocess.run(
        ["/bin/sh", "-c", f"umask 022; exec {sys.executable} -m gateway.cli register seed --count 20 --seed 3"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert seeded.returncode == 0, seeded.stderr
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    files = [p for p in data.rglob("*") if p.is_file()]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files), [
        (p.name, oct(p.stat().st_mode)) for p in files
    ]


# --- 13. keys mounted read-only, as the chart mounts them --------------------------------------------------


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_mtime_ns, p.lstat().st_size) for p in root.rglob("*")}


@pytest.mark.slow
def test_start_up_writes_nothing_beside_read_only_key_secrets(tmp_path: Path, local_realm: Realm) -> None:
    """Each key in a directory of its own, the file a link into `..data/` as the kubelet lays out a Secret
    (mode 0400, directories 0500); the gateway's data dir elsewhere."""
    secrets_root = tmp_path / "secrets"
    material = {
        "signing": b"",
        "subject": os.urandom(32).hex().encode(),
        "pseudonym": os.urandom(32).hex().encode(),
        "checkpoint": b"",
    }
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    for name in ("signing", "checkpoint"):
        material[name] = Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    paths = {}
    for name, data in material.items():
        folder = secrets_root / name
        (folder / "..2026_12_03").mkdir(parents=True)
        (folder / "..2026_12_03" / "key").write_bytes(data)
        (folder / "..data").symlink_to("..2026_12_03")
        (folder / "key").symlink_to("..data/key")
        (folder / "..2026_12_03" / "key").chmod(0o400)
        (folder / "..2026_12_03").chmod(0o500)
        folder.chmod(0o500)
        paths[name] = folder / "key"
    before = _snapshot(secrets_root)
    settings_ = Settings(
        policies_dir=local_realm.policies_dir,
        data_dir=tmp_path / "var",
        issuer=ISSUER,
        signing_key_file=paths["signing"],
        subject_key_file=paths["subject"],
        pseudonym_key_file=paths["pseudonym"],
        checkpoint_key_file=paths["checkpoint"],
    )
    from gateway.app import create_app

    async def start_and_stop() -> None:
        app = create_app(settings_)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as http:
                assert (await http.get("/readyz")).status_code == 200
                assert (await http.get("/.well-known/jwks.json")).json()["keys"]

    (tmp_path / "var").mkdir(mode=0o755)
    (tmp_path / "var").chmod(0o755)
    asyncio.run(start_and_stop())
    assert _snapshot(secrets_root) == before
    data_files = [p for p in (tmp_path / "var").rglob("*") if p.is_file()]
    assert stat.S_IMODE((tmp_path / "var").stat().st_mode) == 0o700  # the gateway's own start makes it private
    assert data_files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in data_files)
    for folder in secrets_root.iterdir():
        folder.chmod(0o700)


# --- the request's context: its own record and admission, gone when it ends ----------------------------------


@pytest.mark.slow
async def test_concurrent_requests_each_see_their_own_record_and_none_is_left_behind(local_realm: Realm) -> None:
    access_log = StubAccessLog()
    async with served(_app(local_realm, access_log)) as http:
        token = _token(local_realm)
        answers = await asyncio.gather(
            *(http.get("/v1/probe/verify", headers={"Authorization": f"Bearer {token}"}) for _ in range(20))
        )
        answers.append(await http.get("/v1/probe/verify", headers={"Authorization": f"Bearer {token}"}))
        assert request_context._current.get() is None  # the transport ran that one in this task: gone with it
    assert all(a.status_code == 200 for a in answers)
    ids = [a.json()["transaction_id"] for a in answers]
    assert len(set(ids)) == 21
    assert sorted(ids) == sorted(e["id"] for e in access_log.events if e["operation"] == "verify")
    assert all(a.headers["ratelimit-policy"] for a in answers)  # the limit's fields reached every answer


async def test_a_guarded_route_without_the_access_middleware_refuses_to_run() -> None:
    request = Request({"type": "http", "method": "GET", "path": "/v1/probe/verify", "headers": []})
    with pytest.raises(Problem) as refused:
        await protected("verify", "identity:verify")(request)
    assert refused.value.code == "audit_unavailable"


def test_a_context_in_reach_is_only_its_own_requests() -> None:
    """A task started from inside another request's response (uvicorn's pipelining) inherits that
    request's context: it is not this request's, and a guarded route refuses rather than take it."""
    theirs: dict[str, Any] = {"type": "http", "method": "GET", "path": "/v1/probe/verify", "headers": []}
    ours: dict[str, Any] = {**theirs}
    context = RequestContext(Record(), None, theirs)
    token = enter(context)
    try:
        assert current(theirs) is context and current(ours) is None
    finally:
        leave(token)
