"""Alerts kept, and the watcher that raises them: it follows the query index in its order (every origin,
so a client spread over several gateway processes is seen whole), feeds the rules and records what they
find. One watcher evaluates at a time, under a lease in the database; another process takes over when
the lease runs out, first replaying the last hour (without raising anything) to rebuild the windows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.audit.record import rfc3339
from gateway.console.alerts import SAMPLE, AlertRules, Evaluator, Finding, WatchedEvent
from gateway.storage.database import WRITER
from gateway.storage.tables import audit_index, console_alert_notes, console_alerts, console_watcher

log = logging.getLogger(__name__)

OPEN = ("open", "acknowledged")
_WATCHED = [audit_index.c[name] for name in WatchedEvent._fields]


@dataclass(frozen=True)
class Alert:
    id: str
    rule: str
    key: str
    administration: str | None
    status: str
    figures: dict[str, Any]
    events: list[str]
    first_seen: str
    last_seen: str
    created_at: float
    updated_at: float
    notes: tuple[dict[str, Any], ...] = ()


def _alert(row: Any, notes: tuple[dict[str, Any], ...] = ()) -> Alert:
    return Alert(
        row.id,
        row.rule,
        row.key,
        row.administration,
        row.status,
        orjson.loads(row.figures),
        orjson.loads(row.events),
        row.first_seen,
        row.last_seen,
        row.created_at,
        row.updated_at,
        notes,
    )


class AlertStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def record(self, findings: list[Finding], connection: AsyncConnection | None = None) -> int:
        """Each finding opens an alert, or updates the open one of its rule and key; a finding no later
        than a closed alert's last event is that alert's again (a replay) and is dropped. In the caller's
        transaction when given (the watcher's, which also moves its place). New alerts."""
        if connection is None:
            async with self.engine.execution_options(**WRITER).begin() as own:
                return await self._record(own, findings)
        return await self._record(connection, findings)

    async def _record(self, connection: AsyncConnection, findings: list[Finding]) -> int:
        opened = 0
        now = time.time()
        t = console_alerts.c
        for finding in findings:
            rows = list(
                await connection.execute(
                    select(console_alerts)
                    .where(t.rule == finding.rule, t.key == finding.key)
                    .order_by(t.created_at.desc())
                    .limit(1)
                    .with_for_update()
                )
            )
            latest = rows[0] if rows else None
            if latest is not None and latest.status in OPEN:
                events = list(dict.fromkeys([*orjson.loads(latest.events), *finding.events]))[-SAMPLE:]
                updated = await connection.execute(
                    update(console_alerts)
                    .where(t.id == latest.id, t.status.in_(OPEN))
                    .values(
                        figures=orjson.dumps(finding.figures).decode(),
                        events=orjson.dumps(events).decode(),
                        last_seen=max(latest.last_seen, finding.last_seen),
                        updated_at=now,
                    )
                )
                if updated.rowcount == 1:
                    continue  # (else an officer closed it meanwhile: this is news, a new alert)
            elif latest is not None and finding.last_seen <= latest.last_seen:
                continue
            await connection.execute(
                insert(console_alerts).values(
                    id=str(uuid.uuid4()),
                    rule=finding.rule,
                    key=finding.key,
                    administration=finding.administration,
                    status="open",
                    figures=orjson.dumps(finding.figures).decode(),
                    events=orjson.dumps(finding.events).decode(),
                    first_seen=finding.first_seen,
                    last_seen=finding.last_seen,
                    created_at=now,
                    updated_at=now,
                )
            )
            opened += 1
        return opened

    async def list(
        self, *, statuses: tuple[str, ...] = OPEN, administration: str | None = None, limit: int = 200
    ) -> list[Alert]:
        t = console_alerts.c
        query = select(console_alerts).where(t.status.in_(statuses))
        if administration is not None:
            query = query.where(t.administration == administration)
        async with self.engine.connect() as connection:
            rows = await connection.execute(query.order_by(t.created_at.desc()).limit(limit))
            return [_alert(row) for row in rows]

    async def count_open(self, administration: str | None = None) -> int:
        t = console_alerts.c
        query = select(func.count()).select_from(console_alerts).where(t.status.in_(OPEN))
        if administration is not None:
            query = query.where(t.administration == administration)
        async with self.engine.connect() as connection:
            return int(await connection.scalar(query) or 0)

    async def get(self, alert_id: str) -> Alert | None:
        async with self.engine.connect() as connection:
            row = (await connection.execute(select(console_alerts).where(console_alerts.c.id == alert_id))).first()
            if row is None:
                return None
            n = console_alert_notes.c
            notes = tuple(
                r._asdict()
                for r in await connection.execute(
                    select(n.n, n.login, n.action, n.note, n.at).where(n.alert_id == alert_id).order_by(n.n)
                )
            )
        return _alert(row, notes)

    async def act(self, alert_id: str, login: str, action: str, note: str) -> bool:
        """Acknowledge or close an alert, with the officer's note; False when it is closed already."""
        status = {"acknowledge": "acknowledged", "close": "closed"}[action]
        t = console_alerts.c
        async with self.engine.execution_options(**WRITER).begin() as connection:
            done = await connection.execute(
                update(console_alerts)
                .where(t.id == alert_id, t.status.in_(OPEN))
                .values(status=status, updated_at=time.time())
            )
            if done.rowcount == 0:
                return False
            n = console_alert_notes.c
            last = await connection.scalar(select(func.max(n.n)).where(n.alert_id == alert_id))
            await connection.execute(
                insert(console_alert_notes).values(
                    alert_id=alert_id, n=(last or 0) + 1, login=login, action=action, note=note, at=time.time()
                )
            )
        return True


class LeaseLost(Exception):
    """Another watcher holds the lease now: what this one found is not recorded."""


class AlertWatcher:
    """Follows the index into the rules, `batch` events at a time, every `poll_s` when idle. What a batch
    found and the place it reached are written in one transaction that holds only while this watcher
    still holds the lease; a failure or a lost lease starts it over from the recorded place with fresh
    rules (their windows rebuilt from the last `warm_up_s` of events, the clients' baselines reloaded)."""

    def __init__(
        self,
        engine: AsyncEngine,
        rules: AlertRules,
        store: AlertStore,
        owner: str,
        *,
        batch: int = 5000,
        poll_s: float = 1.0,
        lease_s: float = 30.0,
        warm_up_s: float = 3600.0,
    ) -> None:
        self.engine = engine
        self.rules = rules
        self.evaluator = Evaluator(rules)
        self.store = store
        self.owner = owner
        self.batch = batch
        self.poll_s = poll_s
        self.lease_s = lease_s
        self.warm_up_s = warm_up_s
        self.position: int | None = None  # where this watcher is, while it holds the lease
        self.evaluated = 0
        self._saved_baseline = -1
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="console-alert-watcher")

    def notify(self) -> None:
        self._wake.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            async with self.engine.execution_options(**WRITER).begin() as connection:
                await connection.execute(
                    update(console_watcher)
                    .where(console_watcher.c.id == 1, console_watcher.c.owner == self.owner)
                    .values(lease_until=0)
                )

    async def _run(self) -> None:
        while True:
            try:
                busy = await self.step()
            except asyncio.CancelledError:
                raise
            except LeaseLost:
                self.position = None
                busy = False
            except Exception:
                log.exception("the alert watcher failed; it starts over from its recorded place")
                self.position = None
                busy = False
            if not busy:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)

    async def step(self) -> bool:
        """One pass: hold the lease, evaluate the next batch; True when more is waiting."""
        if not await self._lease():
            self.position = None
            return False
        if self.position is None:
            self.position = await self._take_over()
        rows = await self._read(self.position, self.batch)
        if not rows:
            return False
        findings = self.evaluator.feed(WatchedEvent(*row[1:]) for row in rows)
        reached = rows[-1][0]
        w = console_watcher.c
        values: dict[str, Any] = {"position": reached}
        if self.evaluator.baseline_version != self._saved_baseline:
            values["state"] = orjson.dumps({"baseline": self.evaluator.baseline()}).decode()
        async with self.engine.execution_options(**WRITER).begin() as connection:
            held = await connection.execute(
                update(console_watcher)
                .where(w.id == 1, w.owner == self.owner, w.lease_until > time.time())
                .values(**values)
            )
            if held.rowcount != 1:
                raise LeaseLost  # rolls back: nothing recorded, the place not moved
            if findings:
                await self.store.record(findings, connection)
        self._saved_baseline = self.evaluator.baseline_version
        self.position = reached
        self.evaluated += len(rows)
        return len(rows) == self.batch

    async def _read(self, after: int, limit: int) -> list[Any]:
        async with self.engine.connect() as connection:
            return list(
                await connection.execute(
                    select(audit_index.c.position, *_WATCHED)
                    .where(audit_index.c.position > after)
                    .order_by(audit_index.c.position)
                    .limit(limit)
                )
            )

    async def _lease(self) -> bool:
        now = time.time()
        w = console_watcher.c
        async with self.engine.execution_options(**WRITER).begin() as connection:
            done = await connection.execute(
                update(console_watcher)
                .where(w.id == 1, or_(w.owner == self.owner, w.lease_until < now))
                .values(owner=self.owner, lease_until=now + self.lease_s)
            )
            if done.rowcount == 1:
                return True
            if await connection.scalar(select(w.id).where(w.id == 1)) is not None:
                return False
        start = await self._hour_ago()
        try:
            async with self.engine.execution_options(**WRITER).begin() as connection:
                await connection.execute(
                    insert(console_watcher).values(
                        id=1, position=start, owner=self.owner, lease_until=now + self.lease_s
                    )
                )
        except IntegrityError:
            return False
        return True

    async def _hour_ago(self) -> int:
        """The index position just before the last `warm_up_s` of events: where a first watcher starts."""
        since = rfc3339_ago(self.warm_up_s)
        async with self.engine.connect() as connection:
            first = await connection.scalar(select(func.min(audit_index.c.position)).where(audit_index.c.time >= since))
            if first is None:
                first = (await connection.scalar(select(func.max(audit_index.c.position))) or 0) + 1
        return int(first) - 1

    async def _warm_up_start(self, position: int) -> int:
        """The index position just before the `warm_up_s` of events that lead up to `position` (by their
        time: a watcher far behind rebuilds the windows of where it is, not of now)."""
        c = audit_index.c
        async with self.engine.connect() as connection:
            at = await connection.scalar(
                select(c.time).where(c.position <= position).order_by(c.position.desc()).limit(1)
            )
            if at is None:
                return position
            since = rfc3339(datetime.fromisoformat(at) - timedelta(seconds=self.warm_up_s))
            # The first event of that time (by the time index: one seek, however far behind).
            first = await connection.scalar(select(c.position).where(c.time >= since).order_by(c.time).limit(1))
        return position if first is None else int(first) - 1

    async def _take_over(self) -> int:
        """Fresh rules, the clients' baselines as last saved, the windows rebuilt from the events of the
        last `warm_up_s` before the recorded place (evaluated already: their findings are not recorded
        again; the lease is renewed as it goes); the recorded place."""
        self.evaluator = Evaluator(self.rules)
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(
                    select(console_watcher.c.position, console_watcher.c.state).where(console_watcher.c.id == 1)
                )
            ).first()
        position = int(row.position) if row is not None else 0
        if row is not None and row.state:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                self.evaluator.restore_baseline(orjson.loads(row.state).get("baseline") or {})
        self._saved_baseline = self.evaluator.baseline_version
        start = min(position, await self._warm_up_start(position))
        while start < position:
            rows = [row for row in await self._read(start, self.batch) if row[0] <= position]
            if not rows:
                break
            self.evaluator.feed(WatchedEvent(*row[1:]) for row in rows)
            start = rows[-1][0]
            if not await self._lease():
                raise LeaseLost
        return position


def rfc3339_ago(seconds: float) -> str:
    return rfc3339(datetime.now(UTC) - timedelta(seconds=seconds))
