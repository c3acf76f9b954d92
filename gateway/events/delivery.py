"""Push: each subscription with an endpoint gets its feed as Standard Webhooks, in sequence.

- **Signing**: `webhook-signature: v1a,<Ed25519 over "id.timestamp.body">`; the public keys are served at
  `/v1/events/signing-keys`. `webhook-id` is the event's id, the same on every attempt and replay, so a
  receiver dedupes on it.
- **Order and retries**: one pusher per subscription delivers in sequence; a failure holds that
  subscription's later events (so nothing arrives out of order) and is retried with backoff, `Retry-After`
  honoured. An event still failing after the retry horizon (72 h) is set aside as a dead letter and the
  feed moves on; `410 Gone` disables the endpoint until a replay. The delivered position is kept in the
  register, so a restart resumes where it was: at worst an event is sent again, with the same id.
- **Bulkhead**: each pusher has its own task, client and connection; a slow or dead subscriber holds
  only its own feed.
- **Outbound safety**: an endpoint not marked internal must be https and every address its name resolves
  to must be public; the request goes to the address checked (the name kept for TLS), so a second DNS
  answer cannot point it inward. Redirects are never followed.
- **Access log**: each event is logged (`events.deliver`, with its subject and the attributes carried)
  before it leaves, as every release of data is.
- **Several processes** share the register: a lease in `deliveries` gives each subscription one pusher.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import logging
import random
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.audit.log import AccessLog, AccessLogUnavailable
from gateway.audit.record import AccessRecord
from gateway.events.feed import EventFeed, FeedItem, cloud_event
from gateway.events.register import BUSY_TIMEOUT_MS
from gateway.policy.model import AdministrationPolicy, SubscriptionPolicy
from gateway.policy.store import PolicyStore
from gateway.telemetry import Metrics

log = logging.getLogger(__name__)

# Standard Webhooks' example schedule: about three days in all.
DEFAULT_BACKOFF_S = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0)
DEFAULT_HORIZON_S = 72 * 3600.0
MAX_RETRY_AFTER_S = 3600.0
BATCH = 32  # events logged together, then sent one after another while the subscriber answers 2xx


class WebhookSigner:
    """Ed25519 per Standard Webhooks (`v1a`)."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.public_key = "whpk_" + base64.b64encode(raw).decode()
        self.kid = base64.urlsafe_b64encode(hashlib.sha256(raw).digest()[:12]).decode()

    def sign(self, msg_id: str, timestamp: int, body: bytes) -> str:
        signature = self._key.sign(f"{msg_id}.{timestamp}.".encode() + body)
        return "v1a," + base64.b64encode(signature).decode()

    def keys(self) -> list[dict[str, str]]:
        return [{"kid": self.kid, "public_key": self.public_key}]


class UnsafeEndpoint(Exception):
    """The endpoint may not be reached: not https, or a name that resolves to a non-public address."""


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def resolve_public(url: str) -> tuple[str, str]:
    """The URL to connect to (its host replaced by a checked public address) and the host name for TLS."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme != "https":
        raise UnsafeEndpoint("not https")
    port = parts.port or 443
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UnsafeEndpoint(f"cannot resolve the endpoint's host: {exc.strerror or exc}") from None
    addresses = sorted({str(info[4][0]) for info in infos})
    if not addresses or not all(_public(a) for a in addresses):
        raise UnsafeEndpoint("the endpoint's host resolves to a non-public address")
    address = addresses[0]
    netloc = f"[{address}]" if ":" in address else address
    return urlunsplit(parts._replace(netloc=f"{netloc}:{port}")), host


@dataclass(slots=True)
class DeliveryState:
    delivered: int = 0
    attempts: int = 0
    first_failed_at: float | None = None
    next_at: float = 0.0
    disabled: str | None = None
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    error: str | None = None
    gone: bool = False
    retry_after: float | None = None


class DeliveryStore:
    """The pushers' state in the register file: position, retries, lease, dead letters."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._connection: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            self._connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                               timeout=BUSY_TIMEOUT_MS / 1000)
            self._connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        return self._connection

    async def _run(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        async with self._lock:
            return await asyncio.to_thread(work, self._db())

    async def lease(self, key: str, owner: str, lease_s: float) -> DeliveryState | None:
        """The subscription's state if this owner holds (or now takes) its lease; None if another does."""
        def work(db: sqlite3.Connection) -> DeliveryState | None:
            now = time.time()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("INSERT INTO deliveries (subscription) VALUES (?) ON CONFLICT DO NOTHING", (key,))
                taken = db.execute("UPDATE deliveries SET owner = ?, lease_until = ? WHERE subscription = ? "
                                   "AND (owner = ? OR owner IS NULL OR lease_until < ?)",
                                   (owner, now + lease_s, key, owner, now)).rowcount
                row = db.execute("SELECT delivered, attempts, first_failed_at, next_at, disabled, last_error "
                                 "FROM deliveries WHERE subscription = ?", (key,)).fetchone()
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return DeliveryState(*row) if taken else None

        return await self._run(work)

    async def save(self, key: str, owner: str, state: DeliveryState, dead: Sequence[tuple[int, str]] = ()) -> bool:
        """Write the state (and dead letters) if this owner still holds the lease."""
        def work(db: sqlite3.Connection) -> bool:
            db.execute("BEGIN IMMEDIATE")
            try:
                saved = db.execute(
                    "UPDATE deliveries SET delivered = ?, attempts = ?, first_failed_at = ?, next_at = ?, "
                    "disabled = ?, last_error = ? WHERE subscription = ? AND owner = ?",
                    (state.delivered, state.attempts, state.first_failed_at, state.next_at, state.disabled,
                     state.last_error, key, owner)).rowcount
                if saved:
                    db.executemany("INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?)",
                                   [(key, seq, event_id, time.time(), state.attempts, state.last_error)
                                    for seq, event_id in dead])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return bool(saved)

        return await self._run(work)

    async def release(self, key: str, owner: str) -> None:
        await self._run(lambda db: db.execute("UPDATE deliveries SET lease_until = 0 WHERE subscription = ? AND "
                                              "owner = ?", (key, owner)))

    async def replay(self, key: str, after: int) -> None:
        """Deliver again from just after `after`: the endpoint is enabled again, retries start afresh."""
        await self._run(lambda db: db.execute(
            "INSERT INTO deliveries (subscription, delivered) VALUES (?1, ?2) ON CONFLICT (subscription) DO UPDATE "
            "SET delivered = ?2, attempts = 0, first_failed_at = NULL, next_at = 0, disabled = NULL, last_error = NULL",
            (key, after)))

    async def status(self, key: str) -> tuple[DeliveryState, list[dict[str, Any]]]:
        def work(db: sqlite3.Connection) -> tuple[DeliveryState, list[dict[str, Any]]]:
            try:
                row = db.execute("SELECT delivered, attempts, first_failed_at, next_at, disabled, last_error "
                                 "FROM deliveries WHERE subscription = ?", (key,)).fetchone()
                dead = db.execute("SELECT sequence, event_id, failed_at, attempts, last_error FROM dead_letters "
                                  "WHERE subscription = ? ORDER BY sequence DESC LIMIT 1000", (key,)).fetchall()
            except sqlite3.OperationalError:
                return DeliveryState(), []
            return (DeliveryState(*row) if row else DeliveryState(),
                    [{"sequence": s, "event_id": e, "failed_at": f, "attempts": a, "last_error": m}
                     for s, e, f, a, m in dead])

        return await self._run(work)

    async def all_states(self) -> dict[str, DeliveryState]:
        def work(db: sqlite3.Connection) -> dict[str, DeliveryState]:
            try:
                rows = db.execute("SELECT subscription, delivered, attempts, first_failed_at, next_at, disabled, "
                                  "last_error FROM deliveries").fetchall()
            except sqlite3.OperationalError:
                return {}
            return {r[0]: DeliveryState(*r[1:]) for r in rows}

        return await self._run(work)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


@dataclass
class PushSettings:
    backoff_s: Sequence[float] = DEFAULT_BACKOFF_S
    horizon_s: float = DEFAULT_HORIZON_S
    timeout_s: float = 15.0
    poll_s: float = 1.0
    lease_s: float = 30.0
    clock: Callable[[], float] = time.time
    resolve: Callable[[str], Any] = field(default=resolve_public)


class Pusher:
    """One subscription's deliveries, in sequence, on its own task and its own connection."""

    def __init__(self, key: str, administration: str, name: str, deliveries: Deliveries) -> None:
        self.key, self.administration, self.name = key, administration, name
        self.d = deliveries
        self.wake = asyncio.Event()
        self.client = httpx.AsyncClient(limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                                        timeout=deliveries.settings.timeout_s, follow_redirects=False)
        self.task: asyncio.Task[None] | None = None
        self.state: DeliveryState | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"push:{self.key}")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        await self.client.aclose()
        with contextlib.suppress(Exception):
            await self.d.store.release(self.key, self.d.owner)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), max(0.0, seconds))
        self.wake.clear()

    async def _run(self) -> None:
        settings = self.d.settings
        while True:
            try:
                delay = await self.step()
            except asyncio.CancelledError:
                raise
            except AccessLogUnavailable:
                delay = settings.poll_s  # nothing leaves unlogged: wait for the log
            except Exception:
                log.exception("push delivery for %s failed", self.key)
                delay = settings.poll_s
            if delay:
                await self._sleep(delay)

    def _policy(self) -> tuple[AdministrationPolicy, SubscriptionPolicy] | None:
        administration = self.d.policies.current.administrations.get(self.administration)
        subscription = None if administration is None else administration.subscriptions.get(self.name)
        if administration is None or subscription is None or subscription.endpoint is None:
            return None
        return administration, subscription

    async def step(self) -> float:
        """One round: the seconds to wait before the next (0: go on at once)."""
        settings = self.d.settings
        state = await self.d.store.lease(self.key, self.d.owner, settings.lease_s)
        self.state = state
        if state is None or state.disabled:
            return settings.poll_s
        now = settings.clock()
        if state.next_at > now:
            return min(state.next_at - now, settings.poll_s)
        policy = self._policy()
        if policy is None:
            return settings.poll_s
        items = await self.d.feed.read(self.key, state.delivered, 1 if state.attempts else BATCH)
        if not items:
            return settings.poll_s
        administration, subscription = policy
        events = [self._event(item, administration, subscription) for item in items]
        await self.d.access_log.append_many([record for _, record in events])
        dead: list[tuple[int, str]] = []
        for item, (event, _) in zip(items, events, strict=True):
            outcome = await self._post(subscription, event)
            if outcome.ok:
                state.delivered, state.attempts, state.first_failed_at, state.last_error = item.sequence, 0, None, None
                state.next_at = 0.0
                self.d.metrics_delivered(self.administration)
                continue
            self.d.metrics_failed(self.administration)
            self._failed(state, item, outcome, dead)
            break
        await self.d.store.save(self.key, self.d.owner, state, dead)
        return 0.0 if not state.attempts and not state.disabled else min(
            max(0.0, state.next_at - settings.clock()), settings.poll_s)

    def _failed(self, state: DeliveryState, item: FeedItem, outcome: Outcome, dead: list[tuple[int, str]]) -> None:
        settings = self.d.settings
        now = settings.clock()
        state.last_error = outcome.error
        if outcome.gone:
            state.disabled = "the endpoint answered 410 Gone"
            return
        state.attempts += 1
        if state.first_failed_at is None:
            state.first_failed_at = now
        if now - state.first_failed_at >= settings.horizon_s:
            dead.append((item.sequence, item.event_id))  # set aside after the horizon: the feed goes on
            state.delivered, state.attempts, state.first_failed_at, state.next_at = item.sequence, 0, None, 0.0
            return
        schedule = settings.backoff_s
        wait = schedule[min(state.attempts - 1, len(schedule) - 1)] * random.uniform(0.9, 1.1)  # noqa: S311
        if outcome.retry_after is not None:
            wait = max(wait, outcome.retry_after)
        state.next_at = now + min(wait, settings.horizon_s)

    def _event(self, item: FeedItem, administration: AdministrationPolicy, subscription: SubscriptionPolicy
               ) -> tuple[bytes, AccessRecord]:
        subject_ref = self.d.subject_refs(self.administration, item.nin)
        body = orjson.dumps(cloud_event(item, subscription, subject_ref, self.d.source))
        purpose = administration.purposes[subscription.purpose]
        record = AccessRecord(id=str(uuid.uuid4()), operation="events.deliver", administration=self.administration,
                              client_id=None, purpose=subscription.purpose, legal_basis=purpose.legal_basis,
                              subject_hash=self.d.subjects(item.nin),
                              attributes_released=sorted(subscription.attributes))
        record.finish(200)
        return body, record

    async def _post(self, subscription: SubscriptionPolicy, body: bytes) -> Outcome:
        event_id = orjson.loads(body)["id"]
        url = subscription.endpoint or ""
        extensions: dict[str, Any] = {}
        headers = {"content-type": "application/cloudevents+json", "webhook-id": event_id}
        try:
            if not subscription.endpoint_internal:
                url, host = await self.d.settings.resolve(url)
                headers["host"] = urlsplit(subscription.endpoint or "").netloc
                extensions["sni_hostname"] = host
            timestamp = int(time.time())  # the attempt's own time, whatever clock schedules retries
            headers["webhook-timestamp"] = str(timestamp)
            headers["webhook-signature"] = self.d.signer.sign(event_id, timestamp, body)
            response = await self.client.post(url, content=body, headers=headers, extensions=extensions)
        except UnsafeEndpoint as exc:
            return Outcome(False, f"unsafe endpoint: {exc}")
        except httpx.HTTPError as exc:
            return Outcome(False, f"{type(exc).__name__}")
        if 200 <= response.status_code < 300:
            return Outcome(True)
        if response.status_code == 410:
            return Outcome(False, "410", gone=True)
        retry_after = None
        if response.status_code in (429, 503):
            value = response.headers.get("retry-after", "")
            if value.isdigit():
                retry_after = min(float(value), MAX_RETRY_AFTER_S)
        return Outcome(False, str(response.status_code), retry_after=retry_after)


class Deliveries:
    """Keeps one pusher per subscription that has an endpoint, as the policies change."""

    def __init__(self, policies: PolicyStore, feed: EventFeed, store: DeliveryStore, access_log: AccessLog,
                 signer: WebhookSigner, subjects: Callable[[str], str], subject_refs: Callable[[str, str], str],
                 source: str, metrics: Metrics, settings: PushSettings | None = None) -> None:
        self.policies, self.feed, self.store, self.access_log = policies, feed, store, access_log
        self.signer, self.subjects, self.subject_refs, self.source = signer, subjects, subject_refs, source
        self.metrics = metrics
        self.settings = settings or PushSettings()
        self.owner = str(uuid.uuid4())
        self.pushers: dict[str, Pusher] = {}
        self._task: asyncio.Task[None] | None = None

    def metrics_delivered(self, administration: str) -> None:
        self.metrics.labelled(self.metrics.events_delivered, administration).inc()

    def metrics_failed(self, administration: str) -> None:
        self.metrics.labelled(self.metrics.events_delivery_failures, administration).inc()

    def subscriptions(self) -> dict[str, tuple[str, str]]:
        """`key → (administration, name)` of every subscription with an endpoint."""
        return {f"{admin.id}/{name}": (admin.id, name)
                for admin in self.policies.current.administrations.values()
                for name, sub in admin.subscriptions.items() if sub.endpoint is not None}

    def notify(self) -> None:
        """New feed rows were committed: every pusher looks now rather than at its next poll."""
        for pusher in self.pushers.values():
            pusher.wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._reconcile(), name="push-deliveries")

    async def _reconcile(self) -> None:
        while True:
            wanted = self.subscriptions()
            for key in [k for k in self.pushers if k not in wanted]:
                await self.pushers.pop(key).stop()
            for key, (administration, name) in wanted.items():
                if key not in self.pushers:
                    pusher = self.pushers[key] = Pusher(key, administration, name, self)
                    pusher.start()
            await asyncio.sleep(self.settings.poll_s * 5)

    async def backlog(self) -> dict[str, Any]:
        """What `/readyz` and the metrics say: events not yet delivered, subscriptions failing or disabled."""
        wanted = sorted(self.subscriptions())
        heads = await self.feed.heads(wanted)
        states = await self.store.all_states()
        backlog, failing, disabled = 0, [], []
        for key in wanted:
            state = states.get(key, DeliveryState())
            backlog += max(0, heads.get(key, 0) - state.delivered)
            if state.disabled:
                disabled.append(key)
            elif state.attempts:
                failing.append(key)
        self.metrics.events_outbox_backlog.set(backlog)
        self.metrics.events_subscriptions_failing.set(len(failing) + len(disabled))
        return {"status": "degraded" if failing or disabled else "ok", "backlog": backlog, "failing": failing,
                "disabled": disabled}

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for pusher in self.pushers.values():
            await pusher.stop()
        self.pushers.clear()
