"""The officers' console (docs/console.md): a server-rendered web application at `/console/` reading the
access log's query index, with its own sign-in, sessions and alerts. `build_console` makes it from the
settings; `create_app` mounts its routes and runs its watcher."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.log import AccessLog
from gateway.audit.refusals import RefusalTally
from gateway.console.accounts import AccountChanges, OfficerStore, PasswordChecks, TotpSeal
from gateway.console.alerts import AlertRules, load_alert_rules
from gateway.console.oidc import OidcConfig, OidcSignIn
from gateway.console.sessions import SessionStore
from gateway.console.watch import AlertStore, AlertWatcher
from gateway.keyfiles import load_or_create_secret
from gateway.lifecycle import Component, ConfigurationError
from gateway.ratelimit.admission import Network
from gateway.ratelimit.gcra import Window
from gateway.ratelimit.limiter import parse_windows
from gateway.settings import Settings

log = logging.getLogger(__name__)
PACKAGE = Path(__file__).parent
STATIC_DIR = PACKAGE / "static"
TEMPLATES_DIR = PACKAGE / "templates"


class IntegrityRuns:
    """The integrity report, computed off the page: a walk of every origin's chain takes minutes on a
    log of tens of millions of events, so a page shows the latest finished report (and its age), starts a
    new walk when that one is older than `max_age_s` or ten times as long as the last walk took, whichever
    is longer (one at a time, whatever the page views), and waits a little for it."""

    def __init__(self, max_age_s: float = 300.0) -> None:
        self.max_age_s = max_age_s
        self.report: dict[str, Any] | None = None
        self.finished_at: float | None = None
        self.started_at: float | None = None
        self.failure: str | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def latest(self, walk: Callable[[], Awaitable[dict[str, Any]]], wait_s: float = 2.0) -> None:
        took = (self.finished_at or 0) - (self.started_at or 0)
        stale_after = max(self.max_age_s, 10 * took)
        if not self.running and (self.finished_at is None or time.time() - self.finished_at > stale_after):
            self.started_at = time.time()
            self._task = asyncio.create_task(self._run(walk), name="console-integrity")
        if self._task is not None and not self._task.done():
            await asyncio.wait({self._task}, timeout=wait_s)

    async def _run(self, walk: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        try:
            self.report, self.failure = await walk(), None
        except Exception as exc:
            log.warning("the console's integrity walk failed: %s", exc)
            self.failure = type(exc).__name__
        self.finished_at = time.time()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


class ExportSlots:
    """Exports running at once in this process: one per officer, `most` in all (each walks the index for
    as long as the officer's browser reads). A slot is given back when its answer ends, however it ends; one
    not given back within `stale_s` expires all the same."""

    def __init__(self, most: int = 2, stale_s: float = 3600.0) -> None:
        self.most, self.stale_s = most, stale_s
        self._running: dict[object, tuple[str, float]] = {}  # token: (login, since)

    def take(self, login: str) -> object | None:
        """A token for the slot, or None when the officer has one already or all are taken."""
        now = time.monotonic()
        self._running = {k: v for k, v in self._running.items() if now - v[1] < self.stale_s}
        if any(who == login for who, _ in self._running.values()) or len(self._running) >= self.most:
            return None
        token = object()
        self._running[token] = (login, now)
        return token

    def give_back(self, token: object) -> None:
        self._running.pop(token, None)


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
    login_windows: tuple[Window, ...]  # password sign-ins allowed per source address
    changes: AccountChanges  # `jamu officers`' changes, to be logged
    poll_s: float = 1.0
    integrity: IntegrityRuns = field(default_factory=IntegrityRuns)
    exports: ExportSlots = field(default_factory=ExportSlots)
    _relay: asyncio.Task[None] | None = None

    def sign(self, purpose: str, value: str) -> str:
        return hmac.new(self.key, f"{purpose}\0{value}".encode(), hashlib.sha256).hexdigest()

    async def start(self) -> None:
        self.watcher.start()
        self._relay = asyncio.create_task(self._relay_changes(), name="console-account-changes")

    async def _relay_changes(self) -> None:
        failing = False
        while True:
            try:
                await self.changes.relay()
                failing = False
            except Exception as exc:
                if not failing:
                    log.warning("account changes cannot be logged yet (%s); retrying", exc)
                failing = True
            await asyncio.sleep(self.poll_s)

    @property
    def component(self) -> Component:
        return Component("console", self.start, self.close)

    async def close(self) -> None:
        if self._relay is not None:
            self._relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._relay
        await self.watcher.close()
        await self.integrity.close()
        self.officers.checks.close()


def console_key_path(settings: Settings) -> Path:
    """Every process of a deployment must share it (the accounts' TOTP secrets are sealed with it)."""
    return settings.console_key_file or settings.keys_dir / "console-key"


def officer_store(settings: Settings, engine: AsyncEngine) -> OfficerStore:
    """The local accounts, as `jamu officers` works on them."""
    return OfficerStore(engine, TotpSeal(load_or_create_secret(console_key_path(settings))))


def build_console(
    settings: Settings,
    engine: AsyncEngine,
    http: httpx.AsyncClient,
    access_log: AccessLog,
    refusals: RefusalTally,
    trusted_proxies: tuple[Network, ...],
    owner: str,
) -> Console:
    """ConfigurationError when `GATEWAY_ALERTS_FILE`, the sign-in limits or the OpenID Connect settings
    are not usable."""
    try:
        rules = load_alert_rules(settings.alerts_file)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    try:
        login_windows = parse_windows(settings.console_login_rate_limits)
    except ValueError as exc:
        raise ConfigurationError(f"GATEWAY_CONSOLE_LOGIN_RATE_LIMITS: {exc}") from None
    alerts = AlertStore(engine)
    oidc = None
    if settings.console_oidc_issuer:
        if not settings.console_oidc_client_id:
            raise ConfigurationError("GATEWAY_CONSOLE_OIDC_CLIENT_ID is required with GATEWAY_CONSOLE_OIDC_ISSUER")
        oidc = OidcSignIn(
            OidcConfig(
                settings.console_oidc_issuer,
                settings.console_oidc_client_id,
                settings.console_oidc_client_secret,
                settings.console_oidc_role_claim,
                settings.console_oidc_administration_claim,
                settings.console_oidc_login_claim,
            ),
            f"{settings.issuer}{settings.root_path}/console/login/callback",
            http,
        )
    templates = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=select_autoescape(["html"]),
        enable_async=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    try:
        key = load_or_create_secret(console_key_path(settings))
    except ValueError as exc:
        raise ConfigurationError(f"GATEWAY_CONSOLE_KEY_FILE: {exc}") from None
    return Console(
        officers=OfficerStore(engine, TotpSeal(key), PasswordChecks()),
        sessions=SessionStore(engine),
        alerts=alerts,
        watcher=AlertWatcher(engine, rules, alerts, owner, poll_s=settings.console_alert_poll_s),
        rules=rules,
        oidc=oidc,
        templates=templates,
        key=key,
        refusals=refusals,
        trusted_proxies=trusted_proxies,
        access_log=access_log,
        login_windows=login_windows,
        changes=AccountChanges(engine, access_log.append),
        poll_s=settings.console_alert_poll_s,
    )
