"""The officers' console over real HTTP on a served gateway (the browser journeys are in
test_console_browser.py): sign-in with password and TOTP, lockout, sessions and their expiry, CSRF, the
headers every page sends, roles held on the query itself, person search by form, alerts raised by a
simulated enumeration, exports, and every page an access-log event readable through the API."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
import pytest

from gateway.connectors.population import population
from tests.support.console import (
    JAMU,
    ConsoleClient,
    OfficerAccount,
    add_officer,
    api_token,
    audit_events,
    console_realm,
    serve_console,
    verify,
)
from tests.support.fake_idp import FakeOidcProvider
from tests.support.realm import Realm
from tests.support.servers import GatewayProcess, wait_until

pytestmark = pytest.mark.e2e
SEED, COUNT = 11, 200
PEOPLE = list(population(COUNT, SEED))
ALERTS = """
enumeration: {window_s: 120, min_checks: 20, max_unknown_share: 0.5}
token_failures: {window_s: 120, max_failures: 8}
scraping: {enabled: false}
"""


@pytest.fixture(scope="module")
def realm(tmp_path_factory: pytest.TempPathFactory) -> Realm:
    return console_realm(tmp_path_factory.mktemp("console"), COUNT, SEED, ALERTS)


@pytest.fixture(scope="module")
def gateway(realm: Realm) -> Iterator[GatewayProcess]:
    server = serve_console(realm)
    yield server
    server.stop()


def officer(
    gateway: GatewayProcess, login: str, role: str = "officer", administration: str | None = None
) -> OfficerAccount:
    return add_officer(gateway.env, login, role, administration)


def client(gateway: GatewayProcess) -> Iterator[ConsoleClient]:
    c = ConsoleClient(gateway.base_url)
    yield c
    c.close()


@pytest.fixture
def console(gateway: GatewayProcess) -> Iterator[ConsoleClient]:
    yield from client(gateway)


def test_a_page_without_a_session_is_sent_to_sign_in_and_logged_nowhere(
    gateway: GatewayProcess, realm: Realm, console: ConsoleClient
) -> None:
    def console_events() -> int:
        return sum(1 for e in audit_events(gateway, realm) if (e["operation"] or "").startswith("console."))

    before = console_events()
    for path in (
        "/console/",
        "/console/events",
        "/console/alerts",
        "/console/integrity",
        "/console/person",
        "/console/export?format=csv",
        f"/console/events/{'0' * 8}-0000-4000-8000-{'0' * 12}",
    ):
        response = console.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/console/login"
        assert "unsafe-inline" not in response.headers["content-security-policy"].split("script-src")[1].split(";")[0]
    assert console.post("/console/person", {"nin": PEOPLE[0]["nin"], "reason": "x" * 10}).status_code == 303
    assert console_events() == before


def test_sign_in_with_password_and_totp_sets_the_session_cookie_as_the_contract_says(
    gateway: GatewayProcess, realm: Realm, console: ConsoleClient
) -> None:
    account = officer(gateway, "officer-signin")
    response = console.login(account)
    assert response.status_code == 303 and response.headers["location"] == "/console/"
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("__Host-jamu_console="))
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"secure", "httponly", "path", "samesite"} <= attributes
    assert "samesite=strict" in cookie.lower() and "path=/" in cookie.lower() and "domain" not in cookie.lower()
    page = console.get("/console/")
    assert page.status_code == 200
    assert page.text.count("<svg") >= 4  # the overview's charts, rendered on the server
    assert "<script" not in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    assert page.headers["cache-control"] == "no-store"
    logins = [e for e in audit_events(gateway, realm, operation="console.login") if e["client_id"] == account.login]
    assert [e["decision"] for e in logins] == ["permit"]


def test_a_wrong_code_or_password_fails_is_logged_and_five_lock_the_account(
    gateway: GatewayProcess, realm: Realm, console: ConsoleClient
) -> None:
    account = officer(gateway, "officer-lockout")
    wrong_code = f"{(int(account.totp.now()) + 1) % 1_000_000:06d}"
    first = console.login(account, code=wrong_code)
    assert first.status_code == 401
    assert "incorrect" in first.text
    for _ in range(3):
        assert console.login(account, password="not-the-password").status_code == 401
    fifth = console.login(account, code="000000" if account.totp.now() != "000000" else "111111")
    assert fifth.status_code == 401
    locked = console.login(account)  # the right password and code: still refused, for 15 minutes
    assert locked.status_code == 401 and "location" not in locked.headers
    assert locked.text.replace(account.login, "") == first.text.replace(account.login, "").replace(
        _csrf_of(first.text), _csrf_of(locked.text)
    )  # the same answer: nothing tells a locked account apart
    events = [
        e
        for e in audit_events(gateway, realm, operation="console.login")
        if e.get("claimed_client_id") == account.login
    ]
    assert [e["reason"] for e in events] == ["invalid_credentials"] * 4 + ["account_locked"] * 2
    assert all(e["decision"] == "deny" and e["client_id"] is None and e["source"] for e in events)
    # A reset (new password and TOTP secret) lifts the lock.
    done = subprocess.run(
        [*JAMU, "officers", "reset", account.login, "--json"],
        env=gateway.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    fresh = OfficerAccount(**json.loads(done.stdout.strip().splitlines()[-1]))
    assert console.login(account).status_code == 401  # the old password no longer signs in
    assert ConsoleClient(gateway.base_url).login(fresh).status_code == 303


def _csrf_of(page: str) -> str:
    return page.split('name="csrf" value="')[1].split('"')[0]


def test_a_code_signs_in_once(gateway: GatewayProcess, console: ConsoleClient) -> None:
    account = officer(gateway, "officer-replay")
    code = account.totp.now()
    assert console.login(account, code=code).status_code == 303
    other = ConsoleClient(gateway.base_url)
    assert other.login(account, code=code).status_code == 401


def test_a_disabled_officer_is_signed_out_and_cannot_sign_in(
    gateway: GatewayProcess, realm: Realm, console: ConsoleClient
) -> None:
    def disable(login: str) -> None:
        done = subprocess.run(
            [*JAMU, "officers", "disable", login],
            env=gateway.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr

    signed_in = officer(gateway, "officer-disabled")
    console.signed_in(signed_in)
    assert console.get("/console/").status_code == 200
    disable(signed_in.login)
    assert console.get("/console/").status_code == 303
    never = officer(gateway, "officer-disabled-early")
    disable(never.login)
    assert ConsoleClient(gateway.base_url).login(never).status_code == 401  # right password, right code
    refused = [
        e for e in audit_events(gateway, realm, operation="console.login") if e.get("claimed_client_id") == never.login
    ]
    assert [e["reason"] for e in refused] == ["account_disabled"]
    listing = subprocess.run(
        [*JAMU, "officers", "list", "--json"], env=gateway.env, capture_output=True, text=True, timeout=60, check=False
    )
    states = {json.loads(line)["login"]: json.loads(line)["state"] for line in listing.stdout.splitlines()}
    assert states[signed_in.login] == states[never.login] == "disabled"


def test_state_changing_requests_need_the_csrf_token(
    gateway: GatewayProcess, realm: Realm, console: ConsoleClient
) -> None:
    console.signed_in(officer(gateway, "officer-csrf"))
    before = len(audit_events(gateway, realm, operation="console.person"))
    for data in (
        {"nin": PEOPLE[0]["nin"], "reason": "enquête 12"},
        {"nin": PEOPLE[0]["nin"], "reason": "enquête 12", "csrf": "forged"},
    ):
        refused = console.post("/console/person", data)
        assert refused.status_code == 403
        assert "location" not in refused.headers
    assert console.post("/console/logout", {"csrf": "forged"}).status_code == 403
    assert console.get("/console/").status_code == 200  # still signed in
    after = audit_events(gateway, realm, operation="console.person")
    assert len(after) == before + 2 and all(e["subject_hash"] is None for e in after[before:])
    # The sign-in form has its own token, bound to a cookie of the browser that asked for the form.
    fresh = ConsoleClient(gateway.base_url)
    fresh.csrf("/console/login")
    assert (
        fresh.post("/console/login", {"login": "x", "password": "y", "totp": "123456", "csrf": "0" * 64}).status_code
        == 403
    )


def test_the_session_ends_after_15_idle_minutes_and_after_8_hours(
    gateway: GatewayProcess, realm: Realm, console: ConsoleClient
) -> None:
    database = realm.data_dir / "jamu.db"
    idle = officer(gateway, "officer-idle")
    console.signed_in(idle)
    assert console.get("/console/alerts").status_code == 200
    with sqlite3.connect(database) as db:
        db.execute("UPDATE console_sessions SET last_seen = last_seen - 901 WHERE login = ?", (idle.login,))
    assert console.get("/console/alerts").status_code == 303
    busy = officer(gateway, "officer-busy")
    console.signed_in(busy)
    with sqlite3.connect(database) as db:  # active all along (seen just now), but signed in 8 hours ago
        db.execute("UPDATE console_sessions SET created_at = created_at - 8 * 3600 - 1 WHERE login = ?", (busy.login,))
    assert console.get("/console/alerts").status_code == 303


def test_person_search_posts_the_nin_and_a_reason_and_shows_that_persons_events(
    gateway: GatewayProcess, realm: Realm, console: ConsoleClient
) -> None:
    elections = api_token(gateway, realm, "elections-app")
    target = PEOPLE[3]["nin"]
    ids = [verify(gateway, elections, target) for _ in range(2)]
    verify(gateway, elections, PEOPLE[4]["nin"])
    console.signed_in(officer(gateway, "officer-person"))
    token = console.csrf()
    posted = console.post("/console/person", {"nin": target, "reason": "plainte n° 2026-118", "csrf": token})
    assert posted.status_code == 303
    location = posted.headers["location"]
    assert location.startswith("/console/person?search=") and target not in location
    results = console.get(location)
    assert results.status_code == 200
    assert all(i in results.text for i in ids)
    assert target not in results.text
    assert "plainte n° 2026-118" in results.text
    searches = [
        e
        for e in audit_events(gateway, realm, operation="console.person")
        if e["client_id"] == "officer-person" and e["subject_hash"]
    ]
    assert len(searches) == 2  # the search posted, and its results shown
    assert all(e["evidence"] == {"reason": "plainte n° 2026-118"} for e in searches)
    assert len({e["subject_hash"] for e in searches}) == 1
    # A bad NIN or no reason is refused, with nothing remembered.
    assert console.post("/console/person", {"nin": "12", "reason": "plainte", "csrf": token}).status_code == 400
    assert console.post("/console/person", {"nin": target, "reason": "", "csrf": token}).status_code == 400
    for reason in (
        f"plainte sur {target}",
        f"voir {target[:5]}-{target[5:10]}-{target[10:]}",
        "dossier 123456789012345",
    ):  # the reason is logged: no identity number in it
        assert console.post("/console/person", {"nin": target, "reason": reason, "csrf": token}).status_code == 400
    assert console.get("/console/person?search=not-a-handle").status_code == 404


def test_a_dpo_sees_its_administration_only_even_by_forging_the_query(
    gateway: GatewayProcess, realm: Realm, console: ConsoleClient
) -> None:
    elections_event = verify(gateway, api_token(gateway, realm, "elections-app"), PEOPLE[5]["nin"])
    health = httpx.post(
        f"{gateway.base_url}/oauth2/token",
        data={"grant_type": "client_credentials"},
        auth=("health-app", realm.secrets["health-app"]),
        timeout=10,
    )
    assert health.status_code == 200
    console.signed_in(officer(gateway, "dpo-health", "dpo", "health"))
    page = console.get("/console/events")
    assert page.status_code == 200
    wait_until(
        lambda: health.json()["transaction_id"] in console.get("/console/events").text,
        10,
        "the health token request in the dpo's search",
    )
    assert elections_event not in page.text
    forged = console.get("/console/events?" + urlencode({"administration": "elections"}))
    assert forged.status_code == 403
    assert elections_event not in forged.text
    assert console.get(f"/console/events/{elections_event}").status_code == 404
    exported = console.get("/console/export?format=jsonl")
    assert exported.status_code == 200
    administrations = {json.loads(line)["administration"] for line in exported.text.splitlines()}
    assert administrations <= {"health"}
    assert console.get("/console/export?format=jsonl&administration=elections").status_code == 403
    # An officer sees both.
    officer_client = ConsoleClient(gateway.base_url).signed_in(officer(gateway, "officer-all"))
    assert officer_client.get(f"/console/events/{elections_event}").status_code == 200


def test_only_the_dpa_sees_officers_console_events(
    gateway: GatewayProcess, realm: Realm, console: ConsoleClient
) -> None:
    console.signed_in(officer(gateway, "officer-watched"))
    console.get("/console/integrity")
    watched = [e for e in audit_events(gateway, realm, client_id="officer-watched")]
    assert {"console.login", "console.integrity"} <= {e["operation"] for e in watched}
    assert all(e["administration"] is None for e in watched)
    one = next(e for e in watched if e["operation"] == "console.integrity")
    assert console.get(f"/console/events/{one['id']}").status_code == 404
    assert console.get("/console/events?operation=console.integrity").status_code == 403
    dpa = ConsoleClient(gateway.base_url).signed_in(officer(gateway, "dpa-1", "dpa"))
    assert dpa.get(f"/console/events/{one['id']}").status_code == 200
    listing = dpa.get(
        "/console/events?" + urlencode({"operation": "console.integrity", "client_id": "officer-watched"})
    )
    assert one["id"] in listing.text


def test_event_detail_shows_its_inclusion_proof_checked(
    gateway: GatewayProcess, realm: Realm, console: ConsoleClient
) -> None:
    event = verify(gateway, api_token(gateway, realm, "elections-app"), PEOPLE[6]["nin"])
    console.signed_in(officer(gateway, "officer-proof"))

    def proved() -> bool:
        page = console.get(f"/console/events/{event}")
        assert page.status_code == 200
        return 'data-status="ok"' in page.text

    wait_until(proved, 15, "a signed checkpoint covering the event")
    page = console.get(f"/console/events/{event}")
    assert "c2sp.org/tlog-proof@v1" in page.text
    assert console.get("/console/events/not-an-id").status_code == 404
    assert console.get(f"/console/events/{'1' * 8}-1111-4111-8111-{'1' * 12}").status_code == 404


def test_an_enumeration_raises_an_alert_that_is_acknowledged_and_closed_with_notes(
    gateway: GatewayProcess, realm: Realm, console: ConsoleClient
) -> None:
    elections = api_token(gateway, realm, "elections-app")
    unknown = [verify(gateway, elections, f"9{n:014d}") for n in range(30)]
    console.signed_in(officer(gateway, "officer-alerts"))

    def raised() -> bool:
        return 'data-rule="enumeration"' in console.get("/console/alerts").text

    wait_until(raised, 20, "the enumeration alert")
    page = console.get("/console/alerts").text
    alert_id = page.split('data-rule="enumeration"')[1].split("/console/alerts/")[1].split('"')[0]
    detail = console.get(f"/console/alerts/{alert_id}")
    assert "elections-app" in detail.text and any(i in detail.text for i in unknown)
    token = console.csrf(f"/console/alerts/{alert_id}")
    assert (
        console.post(f"/console/alerts/{alert_id}", {"action": "acknowledge", "note": "", "csrf": token}).status_code
        == 400
    )
    acked = console.post(
        f"/console/alerts/{alert_id}",
        {"action": "acknowledge", "csrf": token, "note": "appelé le responsable du client"},
    )
    assert acked.status_code == 303 and acked.headers["location"] == f"/console/alerts/{alert_id}"
    assert 'data-status="acknowledged"' in console.get(f"/console/alerts/{alert_id}").text
    closed = console.post(f"/console/alerts/{alert_id}", {"action": "close", "csrf": token, "note": "clé révoquée"})
    assert closed.status_code == 303
    detail = console.get(f"/console/alerts/{alert_id}").text
    assert 'data-status="closed"' in detail and "clé révoquée" in detail and "appelé le responsable" in detail
    actions = [
        e
        for e in audit_events(gateway, realm, operation="console.alert")
        if e["client_id"] == "officer-alerts" and "action" in (e["evidence"] or {})
    ]
    assert [e["evidence"]["action"] for e in actions] == ["acknowledge", "close"]


def test_token_failure_bursts_raise_an_alert_per_source(gateway: GatewayProcess, console: ConsoleClient) -> None:
    for _ in range(10):
        httpx.post(
            f"{gateway.base_url}/oauth2/token",
            data={"grant_type": "client_credentials"},
            auth=("health-app", "wrong"),
            timeout=10,
        )
    console.signed_in(officer(gateway, "officer-tokens"))
    wait_until(
        lambda: 'data-rule="token_failures"' in console.get("/console/alerts").text, 20, "the token-failure alert"
    )
    assert "127.0.0.1" in console.get("/console/alerts").text


def test_exports_stream_every_matching_event(gateway: GatewayProcess, realm: Realm, console: ConsoleClient) -> None:
    refused = [
        httpx.post(
            f"{gateway.base_url}/oauth2/token",
            data={"grant_type": "client_credentials"},
            auth=("health-app", "wrong"),
            timeout=10,
        ).json()["transaction_id"]
        for _ in range(3)
    ]
    console.signed_in(officer(gateway, "officer-export"))
    wait_until(
        lambda: refused[-1] in console.get("/console/events?operation=token").text,
        10,
        "the refused token requests searchable",
    )
    exported = console.get("/console/export?format=csv&operation=token&decision=deny")
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("text/csv")
    assert "attachment" in exported.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert set(refused) <= {r["id"] for r in rows}
    assert all(r["operation"] == "token" and r["decision"] == "deny" for r in rows)
    assert next(r for r in rows if r["id"] == refused[0])["claimed_client_id"] == "health-app"
    lines = console.get("/console/export?format=jsonl&operation=token&decision=deny").text.splitlines()
    assert {orjson.loads(line)["id"] for line in lines} == {r["id"] for r in rows}
    exports = [
        e for e in audit_events(gateway, realm, operation="console.export") if e["client_id"] == "officer-export"
    ]
    assert len(exports) == 2
    assert console.get("/console/export?format=xlsx").status_code == 400


def test_bad_input_gets_a_clear_answer_and_no_500(gateway: GatewayProcess, console: ConsoleClient) -> None:
    console.signed_in(officer(gateway, "officer-fuzz"))
    token = console.csrf()
    cases = [
        ("GET", "/console/events?decision=maybe"),
        ("GET", "/console/events?since=yesterday"),
        ("GET", "/console/events?cursor=%%%"),
        ("GET", "/console/events?cursor=WzEsMl0"),
        ("GET", "/console/events?client_id=%00"),
        ("GET", "/console/events?operation=" + "x" * 300),
        ("GET", "/console/events?since=99999-01-01T00:00"),
        ("GET", "/console/alerts/../../etc"),
        ("GET", "/console/events?" + "a=1&" * 2000),
    ]
    for method, path in cases:
        response = console.request(method, path)
        assert 400 <= response.status_code < 500, (path, response.status_code)
    posts: list[tuple[str, Any]] = [
        ("/console/person", {"content": b"\xff\xfe", "headers": {"content-type": "application/x-www-form-urlencoded"}}),
        ("/console/person", {"json": {"nin": PEOPLE[0]["nin"], "reason": "abc", "csrf": token}}),
        (
            "/console/person",
            {"content": b"a=" + b"x" * 20_000, "headers": {"content-type": "application/x-www-form-urlencoded"}},
        ),
        ("/console/person", {"data": {"nin": PEOPLE[0]["nin"], "reason": "a\u202eb\x00c", "csrf": token}}),
        (
            "/console/login",
            {"content": b"login=a&" * 50, "headers": {"content-type": "application/x-www-form-urlencoded"}},
        ),
    ]
    for path, kwargs in posts:
        response = console.request("POST", path, **kwargs)
        assert 400 <= response.status_code < 500, (path, kwargs, response.status_code, response.text[-300:])
    assert console.get("/console/").status_code == 200


def test_pages_speak_french_by_default_and_english_on_request(gateway: GatewayProcess, console: ConsoleClient) -> None:
    console.signed_in(officer(gateway, "officer-lang"))
    assert "Vue d'ensemble" in console.get("/console/").text or "Vue d&#39;ensemble" in console.get("/console/").text
    english = console.get("/console/?lang=en")
    assert "Overview" in english.text and '<html lang="en">' in english.text
    assert '<html lang="en">' in console.get("/console/alerts").text  # the choice is remembered
    fresh = ConsoleClient(gateway.base_url)
    assert '<html lang="en">' in fresh.get("/console/login", headers={"Accept-Language": "en-GB,en;q=0.8"}).text
    assert '<html lang="fr">' in fresh.get("/console/login").text


def test_account_changes_made_with_the_cli_are_logged(gateway: GatewayProcess, realm: Realm) -> None:
    officer(gateway, "dpa-new", "dpa")
    done = subprocess.run(
        [*JAMU, "officers", "disable", "dpa-new"],
        env=gateway.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr

    def logged() -> list[dict[str, Any]]:
        return [
            e
            for e in audit_events(gateway, realm, operation="console.account")
            if (e["evidence"] or {}).get("login") == "dpa-new"
        ]

    wait_until(lambda: len(logged()) == 2, 15, "the two account changes in the access log")
    add, disable = logged()
    assert {k: add["evidence"][k] for k in ("login", "action", "role")} == {
        "login": "dpa-new",
        "action": "add",
        "role": "dpa",
    }
    assert disable["evidence"]["action"] == "disable" and "role" not in disable["evidence"]
    assert int(disable["evidence"]["change"]) > int(add["evidence"]["change"])
    assert add["evidence"]["at"] <= disable["evidence"]["at"] <= disable["time"]
    assert add["client_id"].startswith("cli:") and add["decision"] == "permit"


def test_the_alert_rules_file_is_checked_like_a_policy_file(realm: Realm, tmp_path: Path) -> None:
    bad = tmp_path / "alerts.yaml"
    bad.write_text("enumeration: {min_checks: 0}\nscrapping: {}\n")
    checked = subprocess.run(
        [*JAMU, "alerts", "check", str(bad)], capture_output=True, text=True, timeout=60, check=False
    )
    assert checked.returncode == 1
    assert "enumeration.min_checks" in checked.stderr and "scrapping" in checked.stderr
    good = tmp_path / "good.yaml"
    good.write_text("scraping: {enabled: false}\n")
    assert (
        subprocess.run(
            [*JAMU, "alerts", "check", str(good)], capture_output=True, text=True, timeout=60, check=False
        ).returncode
        == 0
    )
    server = GatewayProcess(
        realm.env(GATEWAY_ALERTS_FILE=str(bad), GATEWAY_DATA_DIR=str(tmp_path / "var")),
        factory="tests.support.probe_app:create_durable",
    )
    with pytest.raises(RuntimeError, match="gateway exited"):
        server.start(tmp_path / "refused.log")
    assert "enumeration.min_checks" in server.logs()


def test_sign_in_attempts_are_limited_per_source_and_counted_not_logged(realm: Realm, tmp_path: Path) -> None:
    env = realm.env(GATEWAY_DATA_DIR=str(tmp_path / "var"), GATEWAY_CONSOLE_LOGIN_RATE_LIMITS="minute:3/1m")
    server = GatewayProcess(env, factory="tests.support.probe_app:create_durable").start(tmp_path / "limited.log")
    try:
        account = add_officer(server.env, "officer-limited", "officer")
        console = ConsoleClient(server.base_url)
        answers = [console.login(account, password="wrong").status_code for _ in range(5)]
        assert answers == [401, 401, 401, 429, 429]

        def counted() -> list[dict[str, Any]]:
            return [e for e in audit_events(server, realm) if e["operation"] == "unauthenticated"]

        wait_until(lambda: sum(e["count"] for e in counted()) == 2, 10, "the refusals counted")
        assert counted()[0]["reason"] == "rate_limited"
        assert len(audit_events(server, realm, operation="console.login")) == 3
    finally:
        server.stop()


def test_sign_in_through_an_openid_provider_over_http(realm: Realm, tmp_path: Path) -> None:
    """The authorization code flow with PKCE against a provider on loopback, followed by hand (the browser
    journey is in test_console_browser.py): the provider checks the client's secret, the redirect URI and
    the verifier; the console checks the state, the nonce and the ID token."""
    provider = FakeOidcProvider().start()
    env = realm.env(
        GATEWAY_DATA_DIR=str(tmp_path / "var"),
        GATEWAY_CONSOLE_OIDC_ISSUER=provider.issuer,
        GATEWAY_CONSOLE_OIDC_CLIENT_ID=provider.client_id,
        GATEWAY_CONSOLE_OIDC_CLIENT_SECRET=provider.client_secret,
    )
    server = GatewayProcess(env, factory="tests.support.probe_app:create_durable").start(tmp_path / "oidc.log")
    try:
        provider.user = {"sub": "agent-42", "jamu_role": ["reader", "dpa"]}
        console = ConsoleClient(server.base_url)
        begin = console.get("/console/login/oidc")
        assert begin.status_code == 303
        authorize = begin.headers["location"]
        assert authorize.startswith(f"{provider.issuer}/authorize?") and "code_challenge_method=S256" in authorize
        back = httpx.get(authorize, timeout=10)
        assert back.status_code == 302 and back.headers["location"].startswith(
            f"{server.base_url}/console/login/callback?"
        )
        callback = back.headers["location"].removeprefix(server.base_url)
        forged = ConsoleClient(server.base_url)
        forged.cookies = {k: v for k, v in console.cookies.items() if k != "__Host-jamu_console_oidc"}
        assert forged.get(callback).status_code == 401  # not this browser's sign-in
        landed = console.get(callback)
        assert landed.status_code == 200 and 'http-equiv="refresh"' in landed.text
        assert provider.refusals == []
        page = console.get("/console/")
        assert page.status_code == 200 and "oidc:agent-42" in page.text and "(dpa)" in page.text
        assert console.get(callback).status_code == 401  # a code and a state are good once
        for user in (
            {"sub": "agent-43", "jamu_role": ["dpa", "officer"]},  # two of our roles: which one?
            {"sub": "agent-44", "jamu_role": "dpo"},  # a dpo with no administration
            {"sub": "agent 45", "jamu_role": "officer"},
        ):  # not a login
            provider.user = user
            other = ConsoleClient(server.base_url)
            step = httpx.get(other.get("/console/login/oidc").headers["location"], timeout=10)
            assert other.get(step.headers["location"].removeprefix(server.base_url)).status_code == 401, user
        logins = audit_events(server, realm, operation="console.login")
        assert [(e["client_id"], e["decision"]) for e in logins].count(("oidc:agent-42", "permit")) == 1
        assert len([e for e in logins if e["decision"] == "deny"]) == 5
    finally:
        server.stop()
        provider.stop()
