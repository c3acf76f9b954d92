"""Driving the officers' console over HTTP as a browser would, and making its officers with the CLI.

httpx keeps no `Secure` cookie on plain http (the console's `__Host-` cookies all are), so this client
keeps the cookies itself, as a browser on loopback does.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyotp

from gateway.connectors.population import seed_register
from tests.support.keys import token_form
from tests.support.realm import Realm, build_realm
from tests.support.servers import GatewayProcess

JAMU = [sys.executable, "-m", "gateway.cli"]
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_COOKIE = re.compile(r"^([^=;\s]+)=([^;]*)(.*)$")


@dataclass
class OfficerAccount:
    login: str
    password: str
    otpauth_uri: str

    @property
    def totp(self) -> pyotp.TOTP:
        return pyotp.parse_uri(self.otpauth_uri)  # type: ignore[return-value]


def add_officer(env: dict[str, str], login: str, role: str, administration: str | None = None) -> OfficerAccount:
    command = [*JAMU, "officers", "add", login, "--role", role, "--json"]
    if administration:
        command += ["--administration", administration]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return OfficerAccount(**json.loads(done.stdout.strip().splitlines()[-1]))


class ConsoleClient:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.cookies: dict[str, str] = {}
        self.http = httpx.Client(base_url=base_url, timeout=20, follow_redirects=False)

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        response = self.http.request(method, path, headers=headers, **kwargs)
        for line in response.headers.get_list("set-cookie"):
            match = _COOKIE.match(line)
            assert match, line
            name, value, attributes = match.groups()
            if "max-age=0" in attributes.lower() or value in ('""', ""):
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return response

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, data: dict[str, str], **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, data=data, **kwargs)

    def csrf(self, path: str = "/console/person") -> str:
        page = self.get(path)
        assert page.status_code == 200, page.text
        match = _CSRF.search(page.text)
        assert match, page.text
        return match.group(1)

    def login(self, account: OfficerAccount, code: str | None = None, password: str | None = None) -> httpx.Response:
        token = self.csrf("/console/login")
        return self.post(
            "/console/login",
            {
                "login": account.login,
                "password": password or account.password,
                "totp": code if code is not None else account.totp.now(),
                "csrf": token,
            },
        )

    def signed_in(self, account: OfficerAccount) -> ConsoleClient:
        response = self.login(account)
        assert response.status_code == 303, response.text
        assert response.headers["location"] == "/console/"
        return self


def api_token(gateway: GatewayProcess, realm: Realm, client_id: str) -> dict[str, str]:
    form = token_form(client_id, realm.keys[client_id], f"{gateway.base_url}/oauth2/token")
    response = httpx.post(f"{gateway.base_url}/oauth2/token", data=form, timeout=10)
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def verify(gateway: GatewayProcess, headers: dict[str, str], nin: str) -> str:
    response = httpx.post(
        f"{gateway.base_url}/v1/verify",
        headers=headers,
        timeout=10,
        json={"nin": nin, "purpose": "voter_roll", "claims": {"family_name": "Traoré"}},
    )
    assert response.status_code == 200, response.text
    return response.json()["transaction_id"]


def audit_events(gateway: GatewayProcess, realm: Realm, **query: str) -> list[dict[str, Any]]:
    headers = api_token(gateway, realm, "oversight-app")
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {**query, "limit": "1000", **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{gateway.base_url}/v1/audit/events", params=params, headers=headers, timeout=10)
        assert page.status_code == 200, page.text
        found += page.json()["events"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return found


def console_realm(root: Path, count: int, seed: int, alerts: str) -> Realm:
    """A realm with a seeded register and an alert rules file, for a gateway serving the console."""
    realm = build_realm(root)
    seed_register(realm.data_dir / "register.db", count, seed)
    (realm.data_dir.parent / "alerts.yaml").write_text(alerts)
    return realm


def serve_console(realm: Realm) -> GatewayProcess:
    """A gateway on `console_realm`'s realm: checkpoints every half second, alerts looked for five times a
    second, its rules from the realm's file."""
    env = realm.env(
        GATEWAY_AUDIT_SEAL_INTERVAL_S="0.5",
        GATEWAY_CONSOLE_ALERT_POLL_S="0.2",
        GATEWAY_ALERTS_FILE=str(realm.data_dir.parent / "alerts.yaml"),
    )
    server = GatewayProcess(env, factory="tests.support.probe_app:create_durable")
    return server.start(realm.data_dir.parent / "gateway.log")
