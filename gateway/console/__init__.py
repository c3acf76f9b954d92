"""The officers' console (docs/console.md): a server-rendered web application at `/console/` reading the
access log's query index, with its own sign-in, sessions and alerts. `build_console` makes it from the
settings; `create_app` mounts its routes and runs its watcher."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

import httpx
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.log import AccessLog
from gateway.audit.refusals import RefusalTally
from gateway.console.accounts import OfficerStore, TotpSeal
from gateway.console.alerts import AlertRules, Evaluator, load_alert_rules
from gateway.console.oidc import OidcConfig, OidcSignIn
from gateway.console.sessions import SessionStore
from gateway.console.watch import AlertStore, AlertWatcher
from gateway.keyfiles import load_or_create_secret
from gateway.ratelimit.admission import Network
from gateway.settings import Settings

PACKAGE = Path(__file__).parent
STATIC_DIR = PACKAGE / "static"
TEMPLATES_DIR = PACKAGE / "templates"


@dataclass
class Console:
    officers: OfficerStore
    sessions: SessionStore
    alerts: AlertStore
    watcher: AlertWatcher
    rules: AlertRules
    oidc: OidcSignIn | None
    templates: Environment
    key: bytes  # signs the sign-in form's CSRF token and the OpenID Connect state cookie
    refusals: RefusalTally
    trusted_proxies: tuple[Network, ...]
    access_log: AccessLog

    def sign(self, purpose: str, value: str) -> str:
        return hmac.new(self.key, f"{purpose}\0{value}".encode(), hashlib.sha256).hexdigest()

    def start(self) -> None:
        self.watcher.start()

    async def close(self) -> None:
        await self.watcher.close()


def console_key_path(settings: Settings) -> Path:
    return settings.keys_dir / "console-key"


def officer_store(settings: Settings, engine: AsyncEngine) -> OfficerStore:
    """The local accounts (also what `jamu officers` works on)."""
    return OfficerStore(engine, TotpSeal(load_or_create_secret(console_key_path(settings))))


def build_console(settings: Settings, engine: AsyncEngine, http: httpx.AsyncClient, access_log: AccessLog,
                  refusals: RefusalTally, trusted_proxies: tuple[Network, ...], owner: str) -> Console:
    """ValueError when `GATEWAY_ALERTS_FILE` or the OpenID Connect settings are not usable."""
    rules = load_alert_rules(settings.alerts_file)
    alerts = AlertStore(engine)
    oidc = None
    if settings.console_oidc_issuer:
        if not settings.console_oidc_client_id:
            raise ValueError("GATEWAY_CONSOLE_OIDC_CLIENT_ID is required with GATEWAY_CONSOLE_OIDC_ISSUER")
        oidc = OidcSignIn(OidcConfig(settings.console_oidc_issuer, settings.console_oidc_client_id,
                                     settings.console_oidc_client_secret, settings.console_oidc_role_claim,
                                     settings.console_oidc_administration_claim, settings.console_oidc_login_claim),
                          f"{settings.issuer}{settings.root_path}/console/login/callback", http)
    templates = Environment(loader=FileSystemLoader(TEMPLATES_DIR), autoescape=select_autoescape(["html"]),
                            enable_async=False, trim_blocks=True, lstrip_blocks=True)
    return Console(
        officers=officer_store(settings, engine), sessions=SessionStore(engine), alerts=alerts,
        watcher=AlertWatcher(engine, Evaluator(rules), alerts, owner, poll_s=settings.console_alert_poll_s),
        rules=rules, oidc=oidc, templates=templates, key=load_or_create_secret(console_key_path(settings)),
        refusals=refusals, trusted_proxies=trusted_proxies, access_log=access_log)
