"""A real browser for pages: Debian's Chromium, headless, driven by Playwright, with every request to
another host refused and recorded (the pages must work with no internet)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

ARTEFACTS = Path(os.environ.get("JAMU_TEST_ARTEFACTS", "var/test-artefacts"))


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = "Chromium unavailable: install Debian's chromium package (.ci/run does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        print(message)
        pytest.skip(message)
    return path


def launched_browser() -> Iterator[Any]:
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield launched
        launched.close()


def offline_page(browser: Any, base_url: str, **context: Any) -> tuple[Any, list[str]]:
    """A page that may reach the gateway's host only; what it tried to reach elsewhere is listed."""
    ctx = browser.new_context(viewport={"width": 1366, "height": 768}, **context)
    elsewhere: list[str] = []
    own_host = urlsplit(base_url).hostname

    def route(route: Any) -> None:
        url = route.request.url
        if urlsplit(url).hostname == own_host:
            route.continue_()
        else:
            elsewhere.append(url)
            route.abort()

    ctx.route("**/*", route)
    return ctx.new_page(), elsewhere


def screenshot(page: Any, name: str) -> Path:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTEFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path
