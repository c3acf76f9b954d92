"""Pages the gateway serves, in a real browser with no way out: headless Chromium (Debian's) driven by
Playwright, every request to another host refused and recorded. And the gateway served under a path
prefix, as behind an ingress: every request is still logged."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.browser import launched_browser, offline_page, screenshot
from tests.support.keys import token_form
from tests.support.realm import Realm
from tests.support.servers import GatewayProcess

pytestmark = pytest.mark.e2e

_EXTERNAL_REFERENCE = re.compile(r"""(?:src|href)\s*=\s*["'](?:https?:)?//""", re.IGNORECASE)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    yield from launched_browser()


def test_docs_render_offline_in_a_real_browser(gateway: GatewayProcess, browser: object) -> None:
    page, elsewhere = offline_page(browser, gateway.base_url)
    page.goto(f"{gateway.base_url}/docs", wait_until="networkidle")  # type: ignore[attr-defined]
    title = page.locator(".swagger-ui .info .title")  # type: ignore[attr-defined]
    title.wait_for(timeout=15_000)
    assert "Jamu gateway" in title.inner_text()
    assert page.locator(".opblock-summary-path", has_text="/v1/verify").count() >= 1  # type: ignore[attr-defined]
    screenshot(page, "docs")
    assert elsewhere == [], f"the page asked other hosts: {elsewhere}"


def test_no_served_page_references_another_host(gateway: GatewayProcess) -> None:
    html = httpx.get(f"{gateway.base_url}/docs", headers={"Accept": "text/html"}, timeout=10)
    assert html.status_code == 200 and "swagger" in html.text.lower()
    assert not _EXTERNAL_REFERENCE.search(html.text), html.text
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text)
    assert assets, "the page loads its script and style from the gateway"
    for asset in assets:
        response = httpx.get(f"{gateway.base_url}{asset}", timeout=10)
        assert response.status_code == 200, asset
    css = httpx.get(f"{gateway.base_url}/docs/assets/swagger-ui.css", timeout=10).text
    assert not re.search(r"url\(\s*['\"]?(?:https?:)?//", css)


def test_served_under_a_prefix_every_request_is_logged(realm: Realm, tmp_path: Path) -> None:
    """uvicorn --root-path /jamu (an ingress that forwards the prefix): data routes answer under the prefix,
    and each request is one event. Unknown paths under the prefix are logged too."""
    server = GatewayProcess(realm.env(GATEWAY_ROOT_PATH="/jamu"), extra_args=["--root-path", "/jamu"])
    server.start(tmp_path / "prefixed.log")
    try:
        form = token_form("elections-app", realm.keys["elections-app"], f"{server.base_url}/oauth2/token")
        token = httpx.post(f"{server.base_url}/jamu/oauth2/token", data=form, timeout=10)
        assert token.status_code == 200, token.text
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        answers = [
            httpx.get(f"{server.base_url}/jamu/v1/probe/verify", headers=headers, timeout=10),
            httpx.get(f"{server.base_url}/v1/probe/verify", headers=headers, timeout=10),
            httpx.get(f"{server.base_url}/jamu/v1/no-such-thing", headers=headers, timeout=10),
        ]
        assert [a.status_code for a in answers] == [200, 200, 404]
        events = httpx.get(f"{server.base_url}/jamu/test-state", timeout=10).json()["events"]
        logged = {e["id"]: e for e in events}
        for answer in (token, *answers):
            assert answer.json()["transaction_id"] in logged
        assert [logged[a.json()["transaction_id"]]["operation"] for a in answers[:2]] == ["verify", "verify"]
        docs = httpx.get(f"{server.base_url}/jamu/docs", headers={"Accept": "text/html"}, timeout=10).text
        assert "/jamu/openapi.json" in docs and "/jamu/docs/assets/swagger-ui-bundle.js" in docs
    finally:
        server.stop()
