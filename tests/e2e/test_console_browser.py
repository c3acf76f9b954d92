"""The officers' console in a real browser (Debian's Chromium, headless, no way to other hosts): the
journeys an officer takes, by keyboard where a person would, each page's screenshot saved under the run's
artefacts (docs/console.md shows them)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.connectors.population import population
from tests.support.browser import launched_browser, offline_page, screenshot
from tests.support.console import (
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
from tests.support.servers import GatewayProcess

pytestmark = pytest.mark.e2e
SEED, COUNT = 23, 200
PEOPLE = list(population(COUNT, SEED))
ALERTS = "enumeration: {window_s: 120, min_checks: 20, max_unknown_share: 0.5}\n"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launched_browser()


@pytest.fixture(scope="module")
def realm(tmp_path_factory: pytest.TempPathFactory) -> Realm:
    return console_realm(tmp_path_factory.mktemp("console-browser"), COUNT, SEED, ALERTS)


@pytest.fixture(scope="module")
def gateway(realm: Realm) -> Iterator[GatewayProcess]:
    server = serve_console(realm)
    elections = api_token(server, realm, "elections-app")
    for person in PEOPLE[:12]:  # some ordinary traffic for the charts and the search
        verify(server, elections, person["nin"])
    yield server
    server.stop()


class Officer:
    """A browser page signed in (or not yet) as one officer, that fails the test if the page asks any
    other host or the browser reports a script error or a refused resource."""

    def __init__(self, browser: Any, gateway: GatewayProcess, account: OfficerAccount) -> None:
        self.gateway, self.account = gateway, account
        self.page, self.elsewhere = offline_page(browser, gateway.base_url, locale="fr-FR")
        self.problems: list[str] = []
        self.page.on("console", lambda m: self.problems.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.problems.append(str(e)))

    def go(self, path: str) -> Any:
        return self.page.goto(f"{self.gateway.base_url}{path}", wait_until="load")

    def sign_in_by_keyboard(self, code: str | None = None) -> None:
        self.go("/console/login")
        keyboard = self.page.keyboard
        self.page.locator("#login").focus()
        keyboard.type(self.account.login)
        keyboard.press("Tab")
        keyboard.type(self.account.password)
        keyboard.press("Tab")
        keyboard.type(code or self.account.totp.now())
        with self.page.expect_navigation(wait_until="load"):
            keyboard.press("Enter")

    def clean(self) -> None:
        assert self.elsewhere == [], f"the console asked other hosts: {self.elsewhere}"
        refused = [
            p
            for p in self.problems
            if "401" not in p and "403" not in p and "404" not in p and "423" not in p and "400" not in p
        ]
        assert refused == [], refused


def officer(
    browser: Any, gateway: GatewayProcess, login: str, role: str = "officer", administration: str | None = None
) -> Officer:
    return Officer(browser, gateway, add_officer(gateway.env, login, role, administration))


def test_sign_in_with_totp_by_keyboard_and_see_the_overview(browser: Any, gateway: GatewayProcess) -> None:
    awa = officer(browser, gateway, "awa")
    awa.go("/console/")
    assert awa.page.url.endswith("/console/login")  # no session: sent to sign in
    screenshot(awa.page, "console-login")
    awa.sign_in_by_keyboard()
    assert awa.page.url.endswith("/console/")
    assert awa.page.locator("#officer").inner_text() == "awa"
    assert awa.page.locator("figure.chart svg").count() == 4
    assert awa.page.get_by_role("navigation").count() == 1 and awa.page.get_by_role("main").count() == 1
    screenshot(awa.page, "console-overview")
    awa.go("/console/?lang=en")
    assert awa.page.locator("h1").inner_text() == "Overview"
    awa.clean()


def test_a_wrong_code_is_refused_and_five_failures_lock_the_account(browser: Any, gateway: GatewayProcess) -> None:
    bintou = officer(browser, gateway, "bintou")
    wrong = f"{(int(bintou.account.totp.now()) + 500_000) % 1_000_000:06d}"
    bintou.sign_in_by_keyboard(code=wrong)
    assert bintou.page.url.endswith("/console/login")
    assert "incorrect" in bintou.page.locator("#message").inner_text()
    screenshot(bintou.page, "console-login-refused")
    for _ in range(4):
        bintou.sign_in_by_keyboard(code=wrong)
    bintou.sign_in_by_keyboard()  # the right code, too late (the answer does not say the account exists)
    assert "15 minutes" in bintou.page.locator("#message").inner_text()
    assert bintou.page.locator("#officer").count() == 0
    bintou.clean()


def test_search_by_person_keeps_the_nin_out_of_every_address(
    browser: Any, gateway: GatewayProcess, realm: Realm
) -> None:
    target = PEOPLE[2]["nin"]
    transaction = verify(gateway, api_token(gateway, realm, "elections-app"), target)
    coumba = officer(browser, gateway, "coumba")
    addresses: list[str] = []
    coumba.page.on("request", lambda request: addresses.append(request.url))
    coumba.sign_in_by_keyboard()
    coumba.go("/console/person")
    coumba.page.get_by_label("NIN").fill(target)
    coumba.page.locator("#reason").fill("signalement du centre de Sikasso")
    with coumba.page.expect_navigation(wait_until="load"):
        coumba.page.get_by_role("button", name="Rechercher").click()
    assert "/console/person?search=" in coumba.page.url
    assert coumba.page.locator(f"a.tx:text-is('{transaction}')").count() == 1
    assert coumba.page.locator("#search-reason").inner_text() == "signalement du centre de Sikasso"
    screenshot(coumba.page, "console-person")
    assert not [a for a in addresses if target in a]
    with coumba.page.expect_navigation(wait_until="load"):
        coumba.page.locator(f"a.tx:text-is('{transaction}')").click()
    for _ in range(20):  # a signed checkpoint covers the event within a second
        if coumba.page.locator("#proof-status").get_attribute("data-status") == "ok":
            break
        coumba.page.wait_for_timeout(300)
        coumba.page.reload(wait_until="load")
    assert coumba.page.locator("#proof-status").get_attribute("data-status") == "ok"
    screenshot(coumba.page, "console-event")
    coumba.clean()


def test_an_enumeration_alert_is_opened_and_acknowledged(browser: Any, gateway: GatewayProcess, realm: Realm) -> None:
    elections = api_token(gateway, realm, "elections-app")
    for n in range(25):  # a client trying NINs that do not exist
        verify(gateway, elections, f"8{n:014d}")
    djeneba = officer(browser, gateway, "djeneba")
    djeneba.sign_in_by_keyboard()
    for _ in range(50):
        djeneba.go("/console/alerts")
        if djeneba.page.locator("tr[data-rule='enumeration']").count():
            break
        djeneba.page.wait_for_timeout(300)
    row = djeneba.page.locator("tr[data-rule='enumeration']")
    assert row.count() == 1 and "elections-app" in row.inner_text()
    screenshot(djeneba.page, "console-alerts")
    with djeneba.page.expect_navigation(wait_until="load"):
        row.get_by_role("link").click()
    assert djeneba.page.locator("#alert-events li").count() >= 10
    djeneba.page.get_by_label("Note").fill("client suspendu en attendant l'enquête")
    with djeneba.page.expect_navigation(wait_until="load"):
        djeneba.page.get_by_role("button", name="Prendre en compte").click()
    assert djeneba.page.locator("#alert-status").get_attribute("data-status") == "acknowledged"
    assert "client suspendu" in djeneba.page.locator("#notes").inner_text()
    screenshot(djeneba.page, "console-alert")
    djeneba.clean()


def test_export_downloads_the_search_as_csv(browser: Any, gateway: GatewayProcess, tmp_path: Path) -> None:
    fanta = officer(browser, gateway, "fanta")
    fanta.sign_in_by_keyboard()
    fanta.go("/console/events?operation=verify")
    assert fanta.page.locator("table.events tbody tr").count() >= 10
    screenshot(fanta.page, "console-events")
    with fanta.page.expect_download() as download:
        fanta.page.locator("#export-csv").click()
    saved = tmp_path / "events.csv"
    download.value.save_as(saved)
    lines = saved.read_text().splitlines()
    assert lines[0].startswith("origin,seq,id,time") and len(lines) >= 11
    assert all(",verify," in line for line in lines[1:])
    fanta.go("/console/integrity")
    assert fanta.page.locator("#integrity").get_attribute("data-ok") == "true"
    screenshot(fanta.page, "console-integrity")
    fanta.clean()


def test_a_dpo_cannot_reach_another_administrations_events(browser: Any, gateway: GatewayProcess, realm: Realm) -> None:
    event = verify(gateway, api_token(gateway, realm, "elections-app"), PEOPLE[8]["nin"])
    gaoussou = officer(browser, gateway, "gaoussou", "dpo", "health")
    gaoussou.sign_in_by_keyboard()
    gaoussou.go("/console/events")
    assert event not in gaoussou.page.content()
    assert gaoussou.page.locator("select[name=administration] option").all_inner_texts()[1:] == ["health"]
    response = gaoussou.go("/console/events?administration=elections")
    assert response.status == 403 and event not in gaoussou.page.content()
    assert gaoussou.go(f"/console/events/{event}").status == 404
    gaoussou.clean()


def test_an_expired_session_is_sent_back_to_sign_in(browser: Any, gateway: GatewayProcess, realm: Realm) -> None:
    hawa = officer(browser, gateway, "hawa")
    hawa.sign_in_by_keyboard()
    assert hawa.go("/console/alerts").status == 200
    with sqlite3.connect(realm.data_dir / "jamu.db") as db:
        db.execute("UPDATE console_sessions SET last_seen = last_seen - 16 * 60 WHERE login = 'hawa'")
    hawa.go("/console/alerts")
    assert hawa.page.url.endswith("/console/login")
    hawa.clean()


def test_a_form_with_a_forged_csrf_token_is_refused(browser: Any, gateway: GatewayProcess, realm: Realm) -> None:
    issa = officer(browser, gateway, "issa")
    issa.sign_in_by_keyboard()
    issa.go("/console/person")
    issa.page.locator("#main input[name=csrf]").evaluate("input => { input.value = 'forged' }")
    issa.page.get_by_label("NIN").fill(PEOPLE[1]["nin"])
    issa.page.locator("#reason").fill("essai")
    with (
        issa.page.expect_response(lambda r: r.request.method == "POST") as posted,
        issa.page.expect_navigation(wait_until="load"),
    ):
        issa.page.get_by_role("button", name="Rechercher").click()
    assert posted.value.status == 403
    assert "expiré" in issa.page.locator("#message").inner_text()
    refused = [e for e in audit_events(gateway, realm, operation="console.person") if e["client_id"] == "issa"]
    assert refused[-1]["decision"] == "deny" and refused[-1]["subject_hash"] is None
    issa.clean()


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeOidcProvider]:
    server = FakeOidcProvider().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def oidc_gateway(
    realm: Realm, provider: FakeOidcProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    data = tmp_path_factory.mktemp("oidc-data")
    env = {
        **realm.env(),
        "GATEWAY_DATA_DIR": str(data),
        "GATEWAY_CONSOLE_OIDC_ISSUER": provider.issuer,
        "GATEWAY_CONSOLE_OIDC_CLIENT_ID": provider.client_id,
        "GATEWAY_CONSOLE_OIDC_CLIENT_SECRET": provider.client_secret,
    }
    server = GatewayProcess(env, factory="tests.support.probe_app:create_durable")
    server.start(data.parent / "oidc-gateway.log")
    yield server
    server.stop()


def test_sign_in_through_an_openid_provider_with_pkce(
    browser: Any, oidc_gateway: GatewayProcess, provider: FakeOidcProvider, realm: Realm
) -> None:
    page, elsewhere = offline_page(browser, oidc_gateway.base_url, locale="fr-FR")
    page.goto(f"{oidc_gateway.base_url}/console/login")
    assert page.locator("#password").count() == 0  # with a provider, no local accounts
    provider.user = {
        "sub": "u-7",
        "preferred_username": "kadia",
        "jamu_role": "dpo",
        "jamu_administration": "elections",
    }
    page.locator("#oidc").click()
    page.wait_for_url(f"{oidc_gateway.base_url}/console/")
    assert page.locator("#officer").inner_text() == "oidc:u-7"  # the provider's stable subject
    assert "dpo, elections" in page.locator(".who").inner_text()
    assert provider.refusals == []
    logins = audit_events(oidc_gateway, realm, operation="console.login")
    assert [(e["client_id"], e["administration"], e["decision"]) for e in logins] == [
        ("oidc:u-7", "elections", "permit")
    ]
    # A token whose nonce is not this browser's, or a user without a role, signs nobody in.
    for user, nonce in (
        ({"sub": "u-8", "preferred_username": "x", "jamu_role": "officer"}, "another"),
        ({"sub": "u-9", "preferred_username": "y"}, None),
    ):
        other, _ = offline_page(browser, oidc_gateway.base_url)
        provider.user, provider.nonce_override = user, nonce
        other.goto(f"{oidc_gateway.base_url}/console/login/oidc")
        other.wait_for_load_state("load")
        assert other.url.startswith(f"{oidc_gateway.base_url}/console/login")
        assert other.locator("#officer").count() == 0
    provider.nonce_override = None
    refused = [e for e in audit_events(oidc_gateway, realm, operation="console.login") if e["decision"] == "deny"]
    assert len(refused) == 2
    assert elsewhere == []
