"""The access log's query index: a follower of the segment logs, and the reads that use it.

`IndexFollower` reads a log's entries past the index's watermark and adds them to `audit_index` in
batches, moving the watermark in the same transaction, with the checkpoints those entries reached. A
crash between two batches loses nothing and adds nothing twice: the next run starts where the last
committed batch ended. The index can always be rebuilt from the segments (`jamu audit reindex`), so it
needs no durability of its own beyond that.

`AuditIndex` answers the officers' and citizens' questions from it, over every origin at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import operator
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import delete, func, insert, literal, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.audit.chain import GENESIS, ChainVerifier, Checkpoint, CheckpointSigner
from gateway.audit.rows import JSON_FIELDS, LIST_FIELDS, EventFilter, event_from_row, person_query
from gateway.audit.segment_store import CHECKPOINTS_FILE, Link, checkpoint_of, read_link, read_origin
from gateway.audit.segments import SegmentLog, SegmentReader
from gateway.metrics import Metrics
from gateway.storage.database import WRITER
from gateway.storage.tables import (
    access_checkpoints,
    access_events,
    audit_index,
    audit_index_checkpoints,
    audit_index_watermarks,
    audit_rollup,
)

log = logging.getLogger(__name__)
_origins = audit_index_watermarks


class _CheckpointTail:
    """The checkpoints file read from where the last read stopped (whole lines only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def read(self) -> list[Checkpoint]:
        try:
            with open(self.path, "rb") as handle:
                data = os.pread(handle.fileno(), 1 << 20, self._offset)
        except FileNotFoundError:
            return []
        whole = data[: data.rfind(b"\n") + 1]
        self._offset += len(whole)
        found = []
        for line in whole.split(b"\n"):
            if line.strip():
                checkpoint = checkpoint_of(line)
                if checkpoint is None:
                    log.warning("%s: a checkpoint line that is not one, skipped", self.path)
                else:
                    found.append(checkpoint)
        return found


# The index's columns but `position` (the database numbers rows), in table order: rows go in as tuples.
ROW_COLUMNS = tuple(c.name for c in audit_index.c if c.name != "position")
_ROW_FIELDS = ROW_COLUMNS[1:]  # after `origin`
_JSON_TEXT = frozenset((*LIST_FIELDS, *JSON_FIELDS))


_FIELDS_OF = operator.itemgetter(*_ROW_FIELDS)
_JSON_AT = tuple(i for i, name in enumerate(_ROW_FIELDS) if name in _JSON_TEXT)
_LATENCY_AT = _ROW_FIELDS.index("latency_ms")


def _index_row(origin: str, payload: bytes) -> tuple[Any, ...]:
    """One entry as an index row: its fields in column order, lists and objects as JSON text."""
    entry = orjson.loads(payload)
    try:
        values = [origin, *_FIELDS_OF(entry)]
    except KeyError:  # an entry without the fields added since (none are written so now)
        values = [origin, *(entry.get(name) for name in _ROW_FIELDS)]
    for at in _JSON_AT:
        if values[at + 1] is not None:
            values[at + 1] = orjson.dumps(values[at + 1]).decode()
    if values[_LATENCY_AT + 1] is not None:
        values[_LATENCY_AT + 1] = float(values[_LATENCY_AT + 1])
    return tuple(values)


_SQLITE_INSERT = str(
    insert(audit_index).compile(dialect=sqlite_dialect(paramstyle="qmark"), column_keys=list(ROW_COLUMNS))
)


async def _positions_in_commit_order(connection: AsyncConnection) -> None:
    """PostgreSQL hands out `position`s when rows are inserted, not when they commit: two followers'
    batches could commit out of order, and a page read between them would pass over the later one's
    rows for good. One transaction-scoped lock over the index's inserts keeps the two orders one (SQLite's
    writers are serialised by BEGIN IMMEDIATE already)."""
    if connection.dialect.name == "postgresql":
        await connection.execute(text("SELECT pg_advisory_xact_lock(7402167)"))


async def _insert_rows(connection: AsyncConnection, rows: list[tuple[Any, ...]]) -> None:
    """A batch of index rows, in the caller's transaction, by each driver's fastest way: PostgreSQL's
    COPY (asyncpg), SQLite's executemany of one prepared statement. Going through the engine's
    statement cost 15 µs a row of the event loop's time in parameter processing alone."""
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    if connection.dialect.name == "postgresql":
        await _positions_in_commit_order(connection)
        await driver.copy_records_to_table("audit_index", records=rows, columns=ROW_COLUMNS)  # type: ignore[union-attr]
    else:
        await driver.executemany(_SQLITE_INSERT, rows)  # type: ignore[union-attr]


def _rollup_statement(dialect: str, origin: str, first_seq: int, end: int) -> Any:
    """The hourly counts of one origin's events `first_seq`..`end` (just added), added to `audit_rollup`
    in the caller's transaction: the overview's charts read these instead of the events."""
    c = audit_index.c
    keys = (
        func.substr(c.time, 1, 13),
        func.coalesce(c.administration, ""),
        func.coalesce(c.operation, ""),
        c.decision,
        func.coalesce(c.reason, ""),
    )
    counts = (
        select(c.origin, *keys, func.count())
        .where(c.origin == origin, c.seq >= first_seq, c.seq < end)
        .group_by(c.origin, *keys)
    )
    upsert = (pg_insert if dialect == "postgresql" else sqlite_insert)(audit_rollup).from_select(
        ["origin", "hour", "administration", "operation", "decision", "reason", "count"], counts
    )
    return upsert.on_conflict_do_update(
        index_elements=["origin", "hour", "administration", "operation", "decision", "reason"],
        set_={"count": audit_rollup.c.count + upsert.excluded.count},
    )


class IndexFollower:
    """Follows one log directory into the index."""

    def __init__(
        self,
        engine: AsyncEngine,
        directory: Path,
        *,
        origin: str | None = None,
        batch: int = 4000,
        report_lag: Callable[[int], float] | None = None,
    ) -> None:
        self._engine = engine
        self.report_lag = report_lag  # seconds behind once the index holds the entries below the given seq
        self.directory = directory
        found = read_origin(directory)
        self.origin = origin or found or ""
        self._reader = SegmentReader(directory)
        self._checkpoints = _CheckpointTail(directory / CHECKPOINTS_FILE)
        self._pending_checkpoints: list[Checkpoint] = []
        self._batch = batch
        self.indexed_through = 0  # the next seq the index lacks, as of the last catch-up

    def retarget(self, directory: Path, origin: str) -> None:
        """Follow another log instead (the store began a successor before the follower started)."""
        self.directory, self.origin = directory, origin
        self._reader = SegmentReader(directory)
        self._checkpoints = _CheckpointTail(directory / CHECKPOINTS_FILE)
        self._pending_checkpoints = []
        self.indexed_through = 0

    async def watermark(self) -> int:
        """The next seq the index lacks (0 for a log it has never seen)."""
        async with self._engine.connect() as connection:
            found = await connection.scalar(select(_origins.c.next_seq).where(_origins.c.origin == self.origin))
        return int(found or 0)

    def _read(self, from_seq: int, until: int) -> tuple[list[tuple[Any, ...]], list[Checkpoint]]:
        records = self._reader.read(from_seq, min(self._batch, until - from_seq)) if until > from_seq else []
        rows = [_index_row(self.origin, payload) for _, payload in records]
        self._pending_checkpoints += self._checkpoints.read()
        return rows, self._pending_checkpoints

    async def catch_up(self, until: int | None = None) -> int:
        """Index every entry past the watermark up to `until` (the log's durable end; by default what the
        segments hold), a batch a transaction; how many were added."""
        if until is None:
            until = await asyncio.to_thread(lambda: SegmentLog(self.directory, read_only=True).open().next_seq)
        added = 0
        while True:
            async with self._engine.execution_options(**WRITER).begin() as connection:
                found = (
                    await connection.execute(
                        select(_origins.c.next_seq).where(_origins.c.origin == self.origin).with_for_update()
                    )
                ).first()
                next_seq = 0 if found is None else int(found[0])
                self.indexed_through = next_seq
                if next_seq > until:
                    raise LogBehindIndex(f"{self.origin}: the index holds {next_seq} entries, the log {until}")
                rows, checkpoints = await asyncio.to_thread(self._read, next_seq, until)
                if rows and rows[0][1] != next_seq:
                    raise ValueError(f"{self.origin}: the log gives seq {rows[0][1]}, the index expects {next_seq}")
                end = rows[-1][1] + 1 if rows else next_seq
                if rows:
                    await _insert_rows(connection, rows)
                    await connection.execute(_rollup_statement(connection.dialect.name, self.origin, next_seq, end))
                covered = [c for c in checkpoints if c.seq < end]
                if covered:
                    known = set(
                        (
                            await connection.execute(
                                select(audit_index_checkpoints.c.seq).where(
                                    audit_index_checkpoints.c.origin == self.origin,
                                    audit_index_checkpoints.c.seq.in_([c.seq for c in covered]),
                                )
                            )
                        ).scalars()
                    )
                    fresh = [{**c.__dict__, "origin": self.origin} for c in covered if c.seq not in known]
                    if fresh:
                        await connection.execute(insert(audit_index_checkpoints), fresh)
                if not rows:
                    if found is not None and self.report_lag is not None:  # a heartbeat: still following
                        await connection.execute(
                            update(_origins).where(_origins.c.origin == self.origin).values(**self._lag_report(end))
                        )
                elif found is None:
                    link = read_link(self.directory)  # written when the log was made
                    await connection.execute(
                        insert(_origins).values(
                            origin=self.origin,
                            next_seq=end,
                            first_seq=0,
                            link_origin=link.origin if link else None,
                            link_seq=link.seq if link else None,
                            link_hash=link.hash if link else None,
                            **self._lag_report(end),
                        )
                    )
                else:
                    await connection.execute(
                        update(_origins)
                        .where(_origins.c.origin == self.origin)
                        .values(next_seq=end, **self._lag_report(end))
                    )
            self._pending_checkpoints = [c for c in checkpoints if c.seq >= end]  # once committed
            self.indexed_through = end
            added += len(rows)
            if not rows:
                return added

    def _lag_report(self, end: int) -> dict[str, float]:
        if self.report_lag is None:
            return {}
        return {"lag_s": round(self.report_lag(end), 3), "reported_at": time.time()}

    async def register(self) -> None:
        """Put this origin in the index before its first batch, reporting no lag, so every process's reads
        know of it (and of its silence, should its follower never get further)."""
        link = read_link(self.directory)
        async with self._engine.execution_options(**WRITER).begin() as connection:
            known = (
                await connection.execute(
                    select(_origins.c.next_seq).where(_origins.c.origin == self.origin).with_for_update()
                )
            ).first()
            report = {"lag_s": 0.0, "reported_at": time.time()}
            if known is None:
                await connection.execute(
                    insert(_origins).values(
                        origin=self.origin,
                        next_seq=0,
                        first_seq=0,
                        link_origin=link.origin if link else None,
                        link_seq=link.seq if link else None,
                        link_hash=link.hash if link else None,
                        **report,
                    )
                )
            else:
                await connection.execute(update(_origins).where(_origins.c.origin == self.origin).values(**report))

    async def mark_stopped(self) -> None:
        """Say this origin's follower stopped with the index caught up: its silence is not a lag."""
        async with self._engine.execution_options(**WRITER).begin() as connection:
            await connection.execute(
                update(_origins).where(_origins.c.origin == self.origin).values(lag_s=STOPPED, reported_at=time.time())
            )

    async def forget(self) -> None:
        """Drop this origin from the index (before a rebuild)."""
        await forget_origin(self._engine, self.origin)
        self._reader = SegmentReader(self.directory)
        self._checkpoints = _CheckpointTail(self.directory / CHECKPOINTS_FILE)
        self._pending_checkpoints = []
        self.indexed_through = 0


_MAX_COMMITS_NOTED = 4096
STOPPED = -1.0  # the lag a follower reports when it stopped caught up


class IndexTask:
    """The gateway's follower of its own log: woken by each commit, it waits `gather_s` so one transaction
    takes many commits, then catches up to the log's durable end. Its lag is a metric, part of `/readyz`,
    and what audit reads check before they answer."""

    def __init__(
        self,
        follower: IndexFollower,
        durable_end: Callable[[], int],
        metrics: Metrics,
        *,
        gather_s: float = 0.05,
        retry_s: float = 1.0,
    ) -> None:
        self.follower = follower
        follower.report_lag = self.waited  # each batch tells the other processes how far behind it is
        self.durable_end = durable_end
        self._metrics = metrics
        self._gather_s = gather_s
        self._retry_s = retry_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._commits: deque[tuple[int, float]] = deque()  # (durable end after a commit, when), oldest first
        self._round = asyncio.Event()  # set, and replaced, after each catch-up attempt
        self._urgent = False
        self._hurry = asyncio.Event()  # a read is waiting: the gathering pause ends at once
        self._adoption: asyncio.Task[Any] | None = None
        self.failing = False

    def adopt(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run `work` (finishing idle logs) beside the follower; reads wait for it as for the follower."""
        self._adoption = asyncio.create_task(work, name="access-log-adoption")

    def notify(self) -> None:
        """A commit made entries durable: index them soon."""
        self._note_commit()
        self._wake.set()

    def _note_commit(self) -> None:
        end, now = self.durable_end(), time.monotonic()
        if len(self._commits) >= _MAX_COMMITS_NOTED:  # a long stall: the newest commits share one time,
            self._commits[-1] = (end, self._commits[-1][1])  # which can only overstate the lag
        else:
            self._commits.append((end, now))

    def waited(self, indexed_through: int) -> float:
        """Seconds the oldest entry from `indexed_through` on has waited since its commit (0 if none).
        Reads only: a batch that reports this may still fail to commit."""
        for end, at in self._commits:
            if end > indexed_through:
                return time.monotonic() - at
        return 0.0

    def lag(self) -> tuple[int, float]:
        """(entries not yet searchable, seconds the oldest of them has waited)."""
        indexed = self.follower.indexed_through
        commits = self._commits
        while commits and commits[0][0] <= indexed:  # what the index holds now waits no more
            commits.popleft()
        return max(0, self.durable_end() - indexed), self.waited(indexed)

    def start(self) -> None:
        self._note_commit()  # entries written before a crash or a stop count from now
        self._task = asyncio.create_task(self._run(), name="access-log-index")
        self._wake.set()  # …and are indexed at start

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._retry_s)
            self._wake.clear()
            if not self._urgent:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), self._gather_s)
            self._urgent = False
            self._hurry.clear()
            end = self.durable_end()
            try:
                await self.follower.catch_up(end)
                if self.failing:
                    log.info("access log index: caught up again")
                self.failing = False
            except Exception as exc:
                if not self.failing:
                    log.error("access log index: cannot catch up (%s); retrying every %.0f s", exc, self._retry_s)
                self.failing = True
            behind, waited = self.lag()
            self._metrics.audit_index_lag_events.set(behind)
            self._metrics.audit_index_lag_seconds.set(waited)
            self._round.set()
            self._round = asyncio.Event()

    async def reach(self, timeout_s: float) -> bool:
        """Wait until the index holds every entry this process has made durable so far (what it has
        answered), at most `timeout_s`: an audit read then sees this process's own events at once."""
        target = self.durable_end()
        deadline = time.monotonic() + timeout_s
        if self._adoption is not None and not self._adoption.done():
            await asyncio.wait({self._adoption}, timeout=timeout_s)
            if not self._adoption.done():
                return False
        while self.follower.indexed_through < target:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._task is None or self._task.done():
                return False
            self._urgent = True
            self._hurry.set()
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._round.wait(), remaining)
        return True

    async def flush(self, timeout_s: float = 5.0) -> None:
        """Index what is durable now (at shutdown, and in tests that read at once)."""
        await asyncio.wait_for(self.follower.catch_up(self.durable_end()), timeout_s)

    async def close(self) -> None:
        if self._adoption is not None:
            self._adoption.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._adoption
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await self.flush()
            await self.follower.mark_stopped()
        except Exception as exc:
            log.warning("access log index: not caught up at shutdown (%s); it will be at the next start", exc)


@dataclass(frozen=True)
class Position:
    """Where a page stopped: the last event's place in the index, and its name (origin, seq)."""

    position: int
    origin: str
    seq: int


@dataclass(frozen=True)
class OriginState:
    origin: str
    next_seq: int
    first_seq: int
    link: Link | None
    lag_s: float = 0.0
    reported_at: float = 0.0
    continued_by: str | None = None

    def behind(self, max_lag_s: float, now: float, fresh_s: float) -> str | None:
        """Why reads cannot trust this origin's rows to be complete now, or None: its follower's last
        report says it is too far behind, or is too old to say anything (its process died or hangs)."""
        if self.lag_s == STOPPED or self.reported_at == 0:
            return None  # stopped caught up, or never followed live (a 1.0 log, a rebuilt origin)
        if now - self.reported_at > fresh_s:
            return f"{self.origin}: its follower has not reported for {now - self.reported_at:.0f} s"
        # A follower that was behind at its last report is at least that far behind plus the time since.
        if self.lag_s > 0 and self.lag_s + (now - self.reported_at) > max_lag_s:
            return f"{self.origin}: {self.lag_s + now - self.reported_at:.1f} s behind"
        return None

    @property
    def indexed(self) -> int:
        """How many of the origin's events are searchable."""
        return self.next_seq - self.first_seq


class AuditIndex:
    """Reads over the index of every origin: events in the order they became searchable."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def locate(self, transaction_id: str) -> tuple[str, int] | None:
        """(origin, seq) of an indexed event by its id: where to read it in its log (receipts)."""
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(
                    select(audit_index.c.origin, audit_index.c.seq).where(audit_index.c.id == transaction_id).limit(1)
                )
            ).first()
        return None if row is None else (row.origin, row.seq)

    async def page(
        self, where: EventFilter, after: Position | None = None, limit: int = 100
    ) -> tuple[list[dict[str, Any]], Position | None]:
        """Up to `limit` events after `after`, and where the page stopped."""
        c = audit_index.c
        query = where.apply(select(audit_index), audit_index)
        if after is not None:
            query = query.where(c.position > after.position)
        query = query.order_by(c.position).limit(limit)
        async with self.engine.connect() as connection:
            rows = list(await connection.execute(query))
        last = Position(rows[-1].position, rows[-1].origin, rows[-1].seq) if rows else None
        return [event_from_row(row) for row in rows], last

    async def event(self, origin: str, seq: int) -> dict[str, Any] | None:
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(
                    select(audit_index).where(audit_index.c.origin == origin, audit_index.c.seq == seq)
                )
            ).first()
        return None if row is None else event_from_row(row)

    async def latest(
        self, where: EventFilter, before: tuple[str, int] | None = None, limit: int = 50
    ) -> tuple[list[dict[str, Any]], tuple[str, int] | None]:
        """Up to `limit` events, newest first (by time, then index position), older than `before`; and
        where the page stopped. Time order lets the (administration, time), (decision, time) and
        (subject, time) indexes serve a filtered page without sorting."""
        c = audit_index.c
        query = where.apply(select(audit_index), audit_index)
        if before is not None:
            moment, position = before
            # The bound on time alone first, so the time indexes serve it; then the tie on position.
            query = query.where(c.time <= moment, or_(c.time < moment, c.position < position))
        query = query.order_by(c.time.desc(), c.position.desc()).limit(limit)
        async with self.engine.connect() as connection:
            rows = list(await connection.execute(query))
        last = (rows[-1].time, rows[-1].position) if rows else None
        return [{**event_from_row(row), "origin": row.origin} for row in rows], last

    async def events(self, where: EventFilter, after: Position | None = None, limit: int = 100) -> list[dict[str, Any]]:
        return (await self.page(where, after, limit))[0]

    async def stream(self, where: EventFilter | None = None, chunk: int = 2000) -> AsyncIterator[dict[str, Any]]:
        """Every matching event, `chunk` at a time (keyset pages: constant memory)."""
        where = where or EventFilter()
        after = None
        while True:
            page, last = await self.page(where, after, chunk)
            for event in page:
                yield event
            if len(page) < chunk:
                return
            after = last

    async def subject_events(
        self, subject_hash: str, hidden_prefixes: Sequence[str], limit: int
    ) -> list[dict[str, Any]]:
        """One person's latest `limit` events, oldest first, but for operations that start with one of
        `hidden_prefixes`."""
        query = person_query(audit_index, subject_hash, hidden_prefixes)
        query = query.order_by(audit_index.c.position.desc()).limit(limit)
        async with self.engine.connect() as connection:
            rows = [event_from_row(row) for row in await connection.execute(query)]
        rows.reverse()
        return rows

    async def origins(self) -> list[OriginState]:
        async with self.engine.connect() as connection:
            rows = await connection.execute(select(_origins).order_by(_origins.c.origin))
            return [
                OriginState(
                    r.origin,
                    r.next_seq,
                    r.first_seq,
                    Link(r.link_origin, r.link_seq, r.link_hash) if r.link_origin else None,
                    r.lag_s,
                    r.reported_at,
                    r.continued_by,
                )
                for r in rows
            ]

    async def checkpoints(self, origin: str) -> list[Checkpoint]:
        t = audit_index_checkpoints
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                select(t.c.seq, t.c.head_hash, t.c.time, t.c.key_id, t.c.signature)
                .where(t.c.origin == origin)
                .order_by(t.c.seq)
            )
            return [Checkpoint(**row._asdict()) for row in rows]

    async def origin_entries(self, origin: str, from_seq: int = 0, chunk: int = 2000) -> AsyncIterator[dict[str, Any]]:
        """One origin's events in seq order (for the chain check)."""
        c = audit_index.c
        after = from_seq - 1
        while True:
            query = select(audit_index).where(c.origin == origin, c.seq > after).order_by(c.seq).limit(chunk)
            async with self.engine.connect() as connection:
                page = [event_from_row(row) for row in await connection.execute(query)]
            for event in page:
                yield event
            if len(page) < chunk:
                return
            after = page[-1]["seq"]

    async def verify(self, state: OriginState, keys: Any, *, require_sealed: bool = False) -> ChainVerifier:
        """Walk one origin's indexed chain against its checkpoints; the caller finishes the verifier."""
        verifier = ChainVerifier(
            await self.checkpoints(state.origin),
            keys,
            require_sealed=require_sealed,
            first_seq=state.first_seq,
            start_hash=state.link.hash if state.link else GENESIS,
        )
        async for event in self.origin_entries(state.origin, state.first_seq):
            verifier.feed(event)
        return verifier

    async def count(self) -> int:
        async with self.engine.connect() as connection:
            return int(await connection.scalar(select(func.count()).select_from(audit_index)) or 0)


async def legacy_head(engine: AsyncEngine) -> tuple[int, str] | None:
    """The 1.0 log's head (seq, hash), when the database holds one with events."""
    from gateway.storage.tables import access_log_head

    async with engine.connect() as connection:
        head = (
            await connection.execute(
                select(access_log_head.c.seq, access_log_head.c.hash).where(access_log_head.c.id == 1)
            )
        ).first()
    return None if head is None or head.seq == 0 else (int(head.seq), str(head.hash))


async def import_legacy(engine: AsyncEngine, origin: str, *, continued_by: str | None = None) -> Link | None:
    """A 1.0 log (the `access_events` chain) into the index as origin `origin`, numbered as it was; the
    head it ends on, for the new log to continue from. Idempotent; None when there is no such log. The
    caller seals the 1.0 log first, so its last events are covered by a checkpoint."""
    head = await legacy_head(engine)
    if head is None:
        return None
    link = Link(origin, *head)
    columns = [c.name for c in access_events.c]
    try:
        async with engine.execution_options(**WRITER).begin() as connection:
            known = await connection.scalar(select(_origins.c.origin).where(_origins.c.origin == origin))
            if known is not None:
                return link
            await connection.execute(
                insert(_origins).values(origin=origin, next_seq=link.seq + 1, first_seq=1, continued_by=continued_by)
            )
            await _positions_in_commit_order(connection)
            await connection.execute(
                insert(audit_index).from_select(
                    ["origin", *columns],
                    select(literal(origin), *[access_events.c[n] for n in columns]).order_by(access_events.c.seq),
                )
            )
            await connection.execute(_rollup_statement(connection.dialect.name, origin, 0, link.seq + 1))
            cp = access_checkpoints.c
            await connection.execute(
                insert(audit_index_checkpoints).from_select(
                    ["origin", "seq", "head_hash", "time", "key_id", "signature"],
                    select(literal(origin), cp.seq, cp.head_hash, cp.time, cp.key_id, cp.signature),
                )
            )
    except IntegrityError:
        pass  # another process imported it first
    return link


async def forget_origin(engine: AsyncEngine, origin: str) -> None:
    """Drop an origin's rows, checkpoints and watermark from the index, in one transaction."""
    async with engine.execution_options(**WRITER).begin() as connection:
        for table in (audit_index, audit_index_checkpoints, audit_rollup, _origins):
            await connection.execute(delete(table).where(table.c.origin == origin))


async def adopt_idle_logs(engine: AsyncEngine, log_root: Path, own: Path, signer: CheckpointSigner) -> dict[str, int]:
    """Finish other local logs that no process is writing: a log left behind when its process died, and
    whose origin no process now has (its issuer or slot changed). Each is opened as its writer would
    (recovered, its writer lock held) and its tail sealed with a checkpoint; the lock is let go before the
    log is indexed to its end, so a worker starting on that log waits for no more than the recovery."""
    from gateway.audit.origin import local_logs
    from gateway.audit.segment_store import LogMismatch, SegmentStore

    added: dict[str, int] = {}
    for directory in local_logs(log_root):
        if directory == own:
            continue
        store = SegmentStore(directory, signer=signer, lock_wait_s=0)
        try:
            await store.probe()
        except LogMismatch:
            continue  # its writer runs, with its own follower
        except Exception as exc:  # a damaged log is reported, and the others are still finished
            log.error("access log %s cannot be opened (%s): run jamu audit verify", directory.name, exc)
            continue
        try:
            why_not = await asyncio.to_thread(_not_ours, store, signer)
        except Exception as exc:  # garbage where a checkpoint or an entry should be
            why_not = f"it cannot be read ({exc})"
        if why_not is not None:
            log.error("access log %s is not finished automatically: %s; run jamu audit verify", store.origin, why_not)
            await store.close()
            continue
        try:
            await store.seal()
        except Exception as exc:
            log.error("access log %s: cannot seal its tail (%s)", store.origin, exc)
        finally:
            await store.close()
        try:
            follower = IndexFollower(engine, directory, origin=store.origin)
            added[store.origin] = await follower.catch_up(store.next_seq)
            await follower.mark_stopped()
        except Exception as exc:
            log.error("access log index: cannot index the idle log %s (%s)", store.origin, exc)
    return added


class LogBehindIndex(Exception):
    """The index holds more of an origin than its log: the log was restored from an older copy or lost."""


async def log_behind_index(engine: AsyncEngine, origin: str, next_seq: int) -> str | None:
    """Why the log must not be written further, when the index already knows more of it (its next entries
    would reuse (origin, seq) pairs the index holds, and a checkpoint past them was signed): the log was
    restored from an older copy, or lost its tail. None when the index is not ahead."""
    async with engine.connect() as connection:
        indexed = await connection.scalar(select(_origins.c.next_seq).where(_origins.c.origin == origin))
    if indexed is not None and indexed > next_seq:
        return (
            f"restored from an older copy: the log holds {next_seq} entries but the index already holds "
            f"{indexed} (the rows after seq {next_seq - 1} stay in the index as evidence)"
        )
    return None


async def check_log_not_behind_index(engine: AsyncEngine, origin: str, next_seq: int) -> None:
    """Raise LogBehindIndex when the index knows more of the log than it holds (offline tools)."""
    why = await log_behind_index(engine, origin, next_seq)
    if why is not None:
        raise LogBehindIndex(f"the access log {origin!r}: {why}")


def _not_ours(store: Any, signer: CheckpointSigner) -> str | None:
    """Why an idle log must not be sealed with this gateway's key, or None: only a log this gateway
    signed before (its last checkpoint valid under our key) whose entries since then chain from it."""
    from gateway.audit.chain import checkpoint_valid, event_hash
    from gateway.audit.origin import log_directory
    from gateway.audit.segment_store import last_checkpoint

    if store.directory != log_directory(store.directory.parent, store.origin):
        return "its directory does not carry its origin's name"
    sealed = last_checkpoint(store.directory)
    if sealed is None:
        return "it has no signed checkpoint"
    invalid = checkpoint_valid(sealed, {signer.key_id: signer.public_key})
    if invalid:
        return invalid
    previous = None
    for seq, payload in store.log.records(sealed.seq):
        entry = orjson.loads(payload)
        if entry.get("seq") != seq or event_hash(entry) != entry.get("hash"):
            return f"entry {seq} does not match its hash"
        if previous is None and entry["hash"] != sealed.head_hash:
            return "its last checkpoint does not match its entries"
        if previous is not None and entry["prev_hash"] != previous:
            return f"the chain breaks at entry {seq}"
        previous = entry["hash"]
    return None if previous is not None else "its checkpoint covers an entry that is gone"
