"""Push: each subscription with an endpoint gets its feed as Standard Webhooks, in sequence.

- **Signing**: `webhook-signature: v1a,<Ed25519 over "id.timestamp.body">`; the public keys are served at
  `/v1/events/signing-keys`. `webhook-id` is the event's id, the same on every attempt and replay, so a
  receiver dedupes on it.
- **Order and retries**: one pusher per subscription delivers in sequence; a failure holds that
  subscription's later events (so nothing arrives out of order) and is retried with backoff, `Retry-After`
  honoured. An event still failing after the retry horizon (72 h) is set aside as a dead letter and the
  feed moves on; `410 Gone` disables the endpoint until a replay. The delivered position is kept in the
  register, so a restart resumes where it was: at worst an event is sent again, with the same id.
- **Bulkhead**: each pusher has its own task, HTTP session and one connection, and every attempt one
  deadline (name resolution included); a slow or dead subscriber holds only its own feed.
- **Outbound safety**: an endpoint not marked internal must be https and every address its name resolves
  to must be public (IPv4 inside IPv6 forms unwrapped); the connection goes to the addresses checked,
  the name kept for TLS, so a second DNS answer cannot point it inward. Redirects are never followed,
  and a response's body is never read.
- **Access log**: each event is logged (`events.deliver`, with its subject and the attributes carried)
  before it leaves, as every release of data is. The entries of the next few events are written while
  one is sent (a window that grows while the subscriber answers and falls to one after a failure), so
  when a subscriber that was answering fails, at most that window's entries were written for attempts
  not made; they are written again when the events go.
- **Several processes** share the register: a lease gives each subscription one pusher, renewed before
  any attempt could outlive it. The pushers' state lives in its own small file beside the register
  (`<register>-deliveries`), so bookkeeping never touches the file that verifications read.

The HTTP client is aiohttp: httpx spent about 2.5 ms of CPU on each POST here (about 400 a second
from one core), aiohttp about 0.4 ms.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import ipaddress
import logging
import random
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import orjson
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.audit.log import AccessLog, AccessLogUnavailable
from gateway.events.feed import EventFeed, FeedItem, cloud_event, release_record, subscription_key
from gateway.events.register import BUSY_TIMEOUT_MS
from gateway.metrics import Metrics
from gateway.policy.model import AdministrationPolicy, SubscriptionPolicy
from gateway.policy.store import PolicyStore

log = logging.getLogger(__name__)

# Standard Webhooks' example schedule: about three days in all.
DEFAULT_BACKOFF_S = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0)
DEFAULT_HORIZON_S = 72 * 3600.0
MAX_RETRY_AFTER_S = 3600.0
BATCH = 64  # events read from the feed at a time
WINDOW = 16  # access-log entries written ahead of the attempts, at most


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


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: a network's own translator
_T = TypeVar("_T")
_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # RFC 2765 IPv4-translated
_SITE_LOCAL = ipaddress.ip_network("fec0::/10")


def public_address(address: str) -> bool:
    """Whether connecting to `address` reaches the internet and nothing inside: the IPv4 address inside
    a mapped, compatible, 6to4 or NAT64 IPv6 address is what is judged."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _SITE_LOCAL or ip in _NAT64_LOCAL:
            return False
        inner = ip.ipv4_mapped or ip.sixtofour
        if inner is None and (ip in _NAT64 or ip in _TRANSLATED):
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if inner is None and int(ip) >> 32 == 0:  # ::a.b.c.d, IPv4-compatible
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if inner is not None:
            ip = inner
    return ip.is_global and not ip.is_multicast


# Name resolution for push on threads of its own: a resolver that hangs holds these, never the threads the
# register's commits and the log use.
_DNS_THREADS = ThreadPoolExecutor(4, thread_name_prefix="push-dns")


class PublicResolver(AbstractResolver):
    """Resolves as the system does and refuses a name with any non-public address: the connection then
    goes only to the addresses checked."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        infos = await asyncio.get_running_loop().run_in_executor(
            _DNS_THREADS, functools.partial(socket.getaddrinfo, host, port, family, socket.SOCK_STREAM)
        )
        answers: list[ResolveResult] = [
            ResolveResult(
                hostname=host,
                host=str(address[0]),
                port=int(address[1]),
                family=found,
                proto=proto,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
            for found, _, proto, _, address in infos
            if found in (socket.AF_INET, socket.AF_INET6)
        ]
        if not answers or not all(public_address(a["host"]) for a in answers):
            raise UnsafeEndpoint("the endpoint's host resolves to a non-public address")
        return answers

    async def close(self) -> None:
        return None


def check_endpoint(url: str, internal: bool) -> None:
    """What can be refused before connecting: a scheme, a port, a host that is an address. The host is
    judged as the HTTP client will connect to it (an address in fullwidth digits becomes its ASCII form)."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 (raises on a port out of range)
        host = yarl.URL(url).raw_host or ""
    except (ValueError, UnicodeError):
        raise UnsafeEndpoint("the endpoint's host or port is not valid") from None
    if internal:
        return
    if parts.scheme != "https":
        raise UnsafeEndpoint("not https")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return  # a name: PublicResolver checks what it resolves to
    if not public_address(host):
        raise UnsafeEndpoint("the endpoint is a non-public address")


def retry_after(value: str | None, now: float) -> float | None:
    """`Retry-After` in seconds or as an HTTP date, at most an hour."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdecimal():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, OverflowError):
        return None
    return min(max(0.0, when - now), MAX_RETRY_AFTER_S)


@dataclass(slots=True)
class DeliveryState:
    delivered: int = 0
    attempts: int = 0
    first_failed_at: float | None = None
    next_at: float = 0.0
    disabled: str | None = None
    last_error: str | None = None
    replays: int = 0  # bumped by a replay: a pusher's state from before it is not written back
    epoch: int = 0  # bumped whenever the lease changes hands or lapses: a lapsed holder's state is stale


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    error: str | None = None
    gone: bool = False
    retry_after: float | None = None


DELIVERY_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS deliveries (
        subscription TEXT PRIMARY KEY, delivered INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
        first_failed_at REAL, next_at REAL NOT NULL DEFAULT 0, disabled TEXT, last_error TEXT,
        replays INTEGER NOT NULL DEFAULT 0, epoch INTEGER NOT NULL DEFAULT 0, owner TEXT,
        lease_until REAL NOT NULL DEFAULT 0) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS dead_letters (
        subscription TEXT NOT NULL, sequence INTEGER NOT NULL, event_id TEXT NOT NULL, failed_at REAL NOT NULL,
        attempts INTEGER NOT NULL, last_error TEXT, PRIMARY KEY (subscription, sequence)) WITHOUT ROWID""",
)
_STATE = "delivered, attempts, first_failed_at, next_at, disabled, last_error, replays, epoch"


def deliveries_path(register: Path) -> Path:
    return register.with_name(register.name + "-deliveries")


class DeliveryStore:
    """The pushers' state: position, retries, lease, dead letters. A small SQLite file of its own in
    write-ahead-log mode with `synchronous=NORMAL`: a power cut may forget the last positions, and the
    events after them are sent again, with the same `webhook-id`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._connection: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            connection = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
            )
            connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            for statement in DELIVERY_SCHEMA:
                connection.execute(statement)
            self._connection = connection
        return self._connection

    async def _run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        async with self._lock:
            return await asyncio.to_thread(self._transaction, work)

    def _transaction(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            result = work(db)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return result

    async def lease(self, key: str, owner: str, lease_s: float, now: float) -> DeliveryState | None:
        """The subscription's state if this owner holds (or now takes) its lease until `now + lease_s`;
        None if another owner holds it."""

        def work(db: sqlite3.Connection) -> DeliveryState | None:
            db.execute("INSERT INTO deliveries (subscription) VALUES (?) ON CONFLICT DO NOTHING", (key,))
            taken = db.execute(
                "UPDATE deliveries SET epoch = epoch + (owner IS NOT ?1 OR lease_until < ?4), owner = ?1, "
                "lease_until = ?2 WHERE subscription = ?3 AND (owner = ?1 OR owner IS NULL OR lease_until < ?4)",
                (owner, now + lease_s, key, now),
            ).rowcount
            row = db.execute(f"SELECT {_STATE} FROM deliveries WHERE subscription = ?", (key,)).fetchone()  # noqa: S608
            return DeliveryState(*row) if taken else None

        return await self._run(work)

    async def save(self, key: str, owner: str, state: DeliveryState, dead: Sequence[tuple[int, str]] = ()) -> bool:
        """Write the state (and dead letters) if this owner still holds the lease and no replay came since."""

        def work(db: sqlite3.Connection) -> bool:
            saved = db.execute(
                "UPDATE deliveries SET delivered = ?, attempts = ?, first_failed_at = ?, next_at = ?, "
                "disabled = ?, last_error = ? WHERE subscription = ? AND owner = ? AND replays = ? AND epoch = ?",
                (
                    state.delivered,
                    state.attempts,
                    state.first_failed_at,
                    state.next_at,
                    state.disabled,
                    state.last_error,
                    key,
                    owner,
                    state.replays,
                    state.epoch,
                ),
            ).rowcount
            if saved:
                db.executemany(
                    "INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?)",
                    [(key, seq, event_id, time.time(), state.attempts, state.last_error) for seq, event_id in dead],
                )
            return bool(saved)

        return await self._run(work)

    async def release(self, key: str, owner: str) -> None:
        await self._run(
            lambda db: db.execute(
                "UPDATE deliveries SET lease_until = 0 WHERE subscription = ? AND owner = ?", (key, owner)
            )
        )

    async def replay(self, key: str, after: int) -> None:
        """Deliver again from just after `after`: the endpoint is enabled again, retries start afresh, and
        a pusher's state from before is not written back over it."""
        await self._run(
            lambda db: db.execute(
                "INSERT INTO deliveries (subscription, delivered) VALUES (?1, ?2) ON CONFLICT (subscription) DO UPDATE "
                "SET delivered = ?2, attempts = 0, first_failed_at = NULL, next_at = 0, disabled = NULL, "
                "last_error = NULL, replays = replays + 1",
                (key, after),
            )
        )

    async def status(self, key: str) -> tuple[DeliveryState, list[dict[str, Any]]]:
        def work(db: sqlite3.Connection) -> tuple[DeliveryState, list[dict[str, Any]]]:
            row = db.execute(f"SELECT {_STATE} FROM deliveries WHERE subscription = ?", (key,)).fetchone()  # noqa: S608
            dead = db.execute(
                "SELECT sequence, event_id, failed_at, attempts, last_error FROM dead_letters "
                "WHERE subscription = ? ORDER BY sequence DESC LIMIT 1000",
                (key,),
            ).fetchall()
            return (
                DeliveryState(*row) if row else DeliveryState(),
                [
                    {"sequence": s, "event_id": e, "failed_at": f, "attempts": a, "last_error": m}
                    for s, e, f, a, m in dead
                ],
            )

        return await self._run(work)

    async def all_states(self) -> dict[str, DeliveryState]:
        def work(db: sqlite3.Connection) -> dict[str, DeliveryState]:
            rows = db.execute(f"SELECT subscription, {_STATE} FROM deliveries").fetchall()  # noqa: S608
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
    lease_s: float = 60.0
    clock: Callable[[], float] = time.time


class Pusher:
    """One subscription's deliveries, in sequence, on its own task and its own connection."""

    def __init__(self, key: str, administration: str, name: str, deliveries: Deliveries) -> None:
        self.key, self.administration, self.name = key, administration, name
        self.d = deliveries
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.state: DeliveryState | None = None
        self._lease_until = 0.0
        self._session: aiohttp.ClientSession | None = None
        self._session_internal: bool | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"push:{self.key}")

    async def _client(self, internal: bool) -> aiohttp.ClientSession:
        """One connection, its own resolver: nothing shared with another subscriber."""
        if self._session is None or self._session_internal != internal:
            if self._session is not None:
                await self._session.close()
            connector = aiohttp.TCPConnector(limit=1, resolver=None if internal else PublicResolver(), ttl_dns_cache=60)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.d.settings.timeout_s),
                skip_auto_headers=("User-Agent",),
                headers={"user-agent": "jamu-events"},
            )
            self._session_internal = internal
        return self._session

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        if self._session is not None:
            await self._session.close()
        with contextlib.suppress(Exception):
            await self.d.store.release(self.key, self.d.owner)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), max(0.0, seconds))
        self.wake.clear()

    async def _run(self) -> None:
        settings = self.d.settings
        failures = 0
        while True:
            try:
                delay = await self.step()
                failures = 0
            except asyncio.CancelledError:
                raise
            except AccessLogUnavailable:
                delay = settings.poll_s  # nothing leaves unlogged: wait for the log
            except Exception:
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:  # said, not repeated every round
                    log.exception("push delivery for %s failed (%d times in a row)", self.key, failures)
                self.state = None
                delay = min(settings.poll_s * 2 ** min(failures, 10), 300.0)
            if delay:
                await self._sleep(delay)

    def _policy(self) -> tuple[AdministrationPolicy, SubscriptionPolicy] | None:
        administration = self.d.policies.current.administrations.get(self.administration)
        subscription = None if administration is None else administration.subscriptions.get(self.name)
        if administration is None or subscription is None or subscription.endpoint is None:
            return None
        return administration, subscription

    async def _hold(self) -> DeliveryState | None:
        """The state, with the lease held long enough for one more attempt (renewed when it is not)."""
        settings = self.d.settings
        now = time.time()
        if self.state is None or self._lease_until - now < settings.timeout_s + settings.lease_s / 2:
            epoch = None if self.state is None else self.state.epoch
            state = await self.d.store.lease(self.key, self.d.owner, settings.lease_s, now)
            if state is None or (epoch is not None and state.epoch != epoch):
                self.state = None  # lost meanwhile (another process delivered): this round's state is stale
                return None
            self.state = state
            self._lease_until = now + settings.lease_s
        if self._lease_until - time.time() <= settings.timeout_s:  # the renewal itself waited too long
            self.state = None
            return None
        return self.state

    async def step(self) -> float:
        """One round: the seconds to wait before the next (0: go on at once)."""
        settings = self.d.settings
        self.state = None  # read afresh each round: a replay may have moved or enabled it
        state = await self._hold()
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
        dead: list[tuple[int, str]] = []
        window = 1 if state.attempts else WINDOW
        logged = 0  # items[:logged] have their access-log entries
        try:
            for index, item in enumerate(items):
                if logged <= index:
                    ahead = items[index : index + window]
                    await self.d.access_log.append_many(
                        [
                            release_record(administration, subscription, self.d.subjects(i.nin), "events.deliver", None)
                            for i in ahead
                        ]
                    )
                    logged = index + len(ahead)
                if await self._hold() is None:
                    break  # the lease is gone: another process delivers from the saved position
                outcome = await self._post(subscription, self._body(item, subscription))
                if outcome.ok:
                    state.delivered, state.attempts, state.first_failed_at, state.last_error = (
                        item.sequence,
                        0,
                        None,
                        None,
                    )
                    state.next_at = 0.0
                    self.d.metrics_delivered(self.administration)
                    continue
                self.d.metrics_failed(self.administration)
                self._failed(state, item, outcome, dead)
                break
        finally:
            saved = await self.d.store.save(self.key, self.d.owner, state, dead)
        if not saved or state.disabled:
            return settings.poll_s
        if state.attempts:
            return min(max(0.0, state.next_at - settings.clock()), settings.poll_s)
        return 0.0

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
        deadline = state.first_failed_at + settings.horizon_s
        if now >= deadline:
            # Failing for the whole horizon: this event is set aside and the endpoint disabled, so the rest of
            # the feed waits (in order, nothing lost) for the subscriber to be fixed and a replay.
            dead.append((item.sequence, item.event_id))
            state.delivered, state.attempts, state.first_failed_at, state.next_at = item.sequence, 0, None, 0.0
            state.disabled = f"failing for {settings.horizon_s / 3600:g} h ({outcome.error}); replay to resume"
            return
        schedule = settings.backoff_s
        wait = schedule[min(state.attempts - 1, len(schedule) - 1)] * random.uniform(0.9, 1.1)  # noqa: S311
        if outcome.retry_after is not None:
            wait = max(wait, outcome.retry_after)
        state.next_at = min(now + wait, deadline)

    def _body(self, item: FeedItem, subscription: SubscriptionPolicy) -> bytes:
        subject_ref = self.d.subject_refs(self.administration, item.nin)
        return orjson.dumps(cloud_event(item, subscription, subject_ref, self.d.source))

    async def _post(self, subscription: SubscriptionPolicy, body: bytes) -> Outcome:
        """One attempt; whatever goes wrong is a failed attempt, never an escape."""
        event_id = orjson.loads(body)["id"]
        url = subscription.endpoint or ""
        try:
            check_endpoint(url, subscription.endpoint_internal)
            timestamp = int(time.time())  # the attempt's own time, whatever clock schedules retries
            headers = {
                "content-type": "application/cloudevents+json",
                "webhook-id": event_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": self.d.signer.sign(event_id, timestamp, body),
            }
            session = await self._client(subscription.endpoint_internal)
            async with session.post(url, data=body, headers=headers, allow_redirects=False) as response:
                status, after = response.status, response.headers.get("retry-after")
            if 200 <= status < 300:
                return Outcome(True)
            if status == 410:
                return Outcome(False, "410", gone=True)
            wait = retry_after(after, time.time()) if status in (429, 503) else None
            return Outcome(False, str(status), retry_after=wait)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return Outcome(False, _failure(exc))


def _failure(exc: BaseException) -> str:
    """What `last_error` says: an unsafe endpoint named as such, anything else by its kind."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, UnsafeEndpoint):
            return f"unsafe endpoint: {seen}"
        seen = getattr(seen, "os_error", None) or seen.__cause__ or seen.__context__
    return "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__


class Deliveries:
    """Keeps one pusher per subscription that has an endpoint, as the policies change."""

    def __init__(
        self,
        policies: PolicyStore,
        feed: EventFeed,
        store: DeliveryStore,
        access_log: AccessLog,
        signer: WebhookSigner,
        subjects: Callable[[str], str],
        subject_refs: Callable[[str, str], str],
        source: str,
        metrics: Metrics,
        settings: PushSettings | None = None,
        owner: str | None = None,
    ) -> None:
        self.policies, self.feed, self.store, self.access_log = policies, feed, store, access_log
        self.signer, self.subjects, self.subject_refs, self.source = signer, subjects, subject_refs, source
        self.metrics = metrics
        self.settings = settings or PushSettings()
        # The process's slot in the data dir (exclusive while it lives): a restarted process takes its
        # predecessor's leases at once instead of waiting for them to run out.
        self.owner = owner or str(uuid.uuid4())
        self.pushers: dict[str, Pusher] = {}
        self._task: asyncio.Task[None] | None = None

    def metrics_delivered(self, administration: str) -> None:
        self.metrics.labelled(self.metrics.events_delivered, administration).inc()

    def metrics_failed(self, administration: str) -> None:
        self.metrics.labelled(self.metrics.events_delivery_failures, administration).inc()

    def subscriptions(self) -> dict[str, tuple[str, str]]:
        """`key → (administration, name)` of every subscription with an endpoint."""
        return {
            subscription_key(admin.id, name): (admin.id, name)
            for admin in self.policies.current.administrations.values()
            for name, sub in admin.subscriptions.items()
            if sub.endpoint is not None
        }

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
            with contextlib.suppress(Exception):  # the metrics follow without anyone asking /readyz
                await self.backlog()
            await asyncio.sleep(self.settings.poll_s * 5)

    async def backlog(self) -> dict[str, Any]:
        """What `/readyz` and the metrics say: events not yet delivered, subscriptions failing or disabled."""
        wanted = sorted(self.subscriptions())
        heads = await self.feed.heads(wanted)
        states = await self.store.all_states() if wanted else {}
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
        return {
            "status": "degraded" if failing or disabled else "ok",
            "backlog": backlog,
            "failing": failing,
            "disabled": disabled,
        }

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for pusher in self.pushers.values():
            await pusher.stop()
        self.pushers.clear()
        self.store.close()
