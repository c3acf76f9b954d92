"""The embedded register's one write path for declarations, and its outbox.

A declaration changes the person's row in `people`, records itself in `declarations` (the record's
versions, in commit order: `position`), and appends one row per subscription that must hear of it to
`feed` (`sequence` contiguous per subscription): all in one SQLite transaction, so the register never
changes without its events and no event exists for a change that did not happen. Pull and push read
`feed`; nothing is ever taken out of it.

Once declarations are taken, the register file is in write-ahead-log mode: a commit costs one fsync
(of the log) rather than a rollback journal's three, and the verifications reading the register on the
event loop never wait for a commit, nor a commit for them. Declarations arriving together share one
transaction (a group commit), each in its own savepoint: a rejected one is undone alone. `BEGIN
IMMEDIATE` takes the file's write lock first, so the gateway's processes, sharing the file, write one
after another, and sequences and NINs never repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson

from gateway.connectors.embedded import COLUMNS, create_register
from gateway.connectors.population import luhn_digit
from gateway.events.declarations import (
    RECORD_FIELDS,
    Change,
    Declaration,
    Rejected,
    judge,
    judge_amendment,
    judge_birth,
)
from gateway.events.feed import subscription_key
from gateway.policy.store import PolicyStore

log = logging.getLogger(__name__)

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS declarations (
        position INTEGER PRIMARY KEY,
        event_id TEXT NOT NULL UNIQUE,
        type TEXT NOT NULL,
        event_type TEXT NOT NULL,
        nin TEXT NOT NULL,
        spouse_nin TEXT,
        version INTEGER NOT NULL,
        amends TEXT,
        voided INTEGER NOT NULL DEFAULT 0,
        data TEXT NOT NULL,
        record TEXT,
        before TEXT NOT NULL,
        changed TEXT NOT NULL,
        declared_at TEXT NOT NULL,
        administration TEXT NOT NULL,
        client_id TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS declarations_nin ON declarations (nin, position)",
    "CREATE INDEX IF NOT EXISTS declarations_amends ON declarations (amends) WHERE amends IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS declarations_spouse ON declarations (spouse_nin) WHERE spouse_nin IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS declarations_father ON declarations (json_extract(data, '$.father_nin')) "
    "WHERE type = 'birth'",
    "CREATE INDEX IF NOT EXISTS declarations_mother ON declarations (json_extract(data, '$.mother_nin')) "
    "WHERE type = 'birth'",
    """CREATE TABLE IF NOT EXISTS declaration_keys (
        administration TEXT NOT NULL, key TEXT NOT NULL, request_hash TEXT NOT NULL,
        status INTEGER NOT NULL, answer TEXT NOT NULL, subject TEXT,
        PRIMARY KEY (administration, key)) WITHOUT ROWID""",
    "CREATE TABLE IF NOT EXISTS record_versions (nin TEXT PRIMARY KEY, version INTEGER NOT NULL) WITHOUT ROWID",
    """CREATE TABLE IF NOT EXISTS feed (
        subscription TEXT NOT NULL, sequence INTEGER NOT NULL, position INTEGER NOT NULL,
        PRIMARY KEY (subscription, sequence)) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS feed_position ON feed (position)",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
)

MAX_GROUP = 256
CHECKPOINT_S = 30.0
BUSY_TIMEOUT_MS = 10_000


def open_register(path: Path) -> sqlite3.Connection:
    """The register for writing, with the events' tables, in write-ahead-log mode (see the module's note)."""
    connection = create_register(path)
    connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    connection.execute("PRAGMA journal_mode=WAL")
    for statement in SCHEMA:
        connection.execute(statement)
    return connection


@dataclass(frozen=True, slots=True)
class Subscriber:
    """One subscription as routing sees it: `key` is `<administration>/<name>`."""

    key: str
    events: frozenset[str]


def subscribers(policies: PolicyStore) -> list[Subscriber]:
    """Every subscription of the policies in force, as the outbox routes to them."""
    return [
        Subscriber(subscription_key(admin.id, name), frozenset(sub.events))
        for admin in policies.current.administrations.values()
        for name, sub in admin.subscriptions.items()
    ]


@dataclass(frozen=True, slots=True)
class Submission:
    declaration: Declaration
    administration: str
    client_id: str
    key: str
    request_hash: str


@dataclass(frozen=True, slots=True)
class Answer:
    """What the declaration's caller is told, the first time and on every replay of its key."""

    status: int  # 201, 422
    body: dict[str, Any]
    replayed: bool = False
    subject: str | None = None  # the NIN it is about, for the access record


class KeyConflict(Exception):
    """The Idempotency-Key was used for another declaration."""


class RegisterUnavailable(Exception):
    """The register could not be written: nothing was changed."""


def request_hash(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class RegisterWriter:
    """Applies declarations, many to a transaction, on one thread at a time."""

    def __init__(
        self,
        path: Path,
        subscribers: Callable[[], Sequence[Subscriber]],
        on_commit: Callable[[], None] | None = None,
        today: Callable[[], date] | None = None,
    ) -> None:
        self.path = path
        self._subscribers = subscribers
        self._on_commit = on_commit or (lambda: None)
        self._today = today or (lambda: datetime.now(UTC).date())
        self._connection: sqlite3.Connection | None = None
        self._pending: list[tuple[Submission, asyncio.Future[Answer]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # The lock waits and fsyncs on a thread of their own: whatever holds the shared pool (a hanging name
        # lookup), a commit that holds the file's write lock never waits for a thread to finish.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="register-writer")
        self._checkpointed = time.monotonic()

    async def start(self) -> None:
        self._connection = await asyncio.to_thread(self._open)
        self._task = asyncio.create_task(self._run(), name="register-writer")

    def _open(self) -> sqlite3.Connection:
        connection = open_register(self.path)
        connection.close()
        connection = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
        )
        connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        connection.execute("PRAGMA synchronous=FULL")  # a declaration answered 201 survives a power cut
        # A group's changes stay in the cache until its commit: a spill would wait for the lock on the loop.
        connection.execute("PRAGMA cache_size=-65536")
        connection.execute("PRAGMA journal_size_limit=67108864")  # a log reset after a checkpoint shrinks to this
        return connection

    async def declare(self, submission: Submission) -> Answer:
        if self._task is None or self._task.done() or self._closing:
            raise RegisterUnavailable("the register writer is not running")
        done: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._pending.append((submission, done))
        self._wake.set()
        return await done

    async def _run(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            while self._pending and not self._closing:
                group, self._pending = self._pending[:MAX_GROUP], self._pending[MAX_GROUP:]
                try:
                    answers = await self._commit([s for s, _ in group])
                except Exception as exc:
                    log.error("declarations could not be committed: %s", exc)
                    for _, done in group:
                        if not done.done():
                            done.set_exception(RegisterUnavailable(type(exc).__name__))
                    continue
                for (_, done), answer in zip(group, answers, strict=True):
                    if not done.done():
                        done.set_result(answer) if not isinstance(answer, Exception) else done.set_exception(answer)
                self._on_commit()
            if time.monotonic() - self._checkpointed > CHECKPOINT_S:
                await self._checkpoint()

    async def _checkpoint(self) -> None:
        """Readers on the loop keep a snapshot open for 50 ms at a time, so the automatic (passive)
        checkpoint may never find the log free to start again from its beginning, and it would grow.
        Every half minute, between groups, a restarting checkpoint waits for the readers of the moment."""
        self._checkpointed = time.monotonic()
        connection = self._connection
        assert connection is not None
        try:
            await self._off_loop(connection.execute, "PRAGMA wal_checkpoint(RESTART)")
        except sqlite3.Error as exc:
            log.warning("the register's write-ahead log could not be checkpointed: %s", exc)

    async def _off_loop(self, work: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, work, *args)

    async def _commit(self, submissions: Sequence[Submission]) -> list[Answer | Exception]:
        """Waiting for the file's lock and the commit's fsyncs happen on a thread; the statements run on
        the loop, from pages already in the cache. Run on a thread they would take the interpreter's
        lock back after every statement, each time behind the busy loop, and a group of thirty took
        fifty milliseconds instead of five."""
        connection = self._connection
        assert connection is not None
        subscribers = list(self._subscribers())
        today = self._today()
        await self._off_loop(connection.execute, "BEGIN IMMEDIATE")
        try:
            apply = _Transaction(connection, subscribers, today)
            answers = [apply.submit(s) for s in submissions]
            await self._off_loop(connection.execute, "COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                await asyncio.shield(self._off_loop(connection.execute, "ROLLBACK"))
            raise
        return answers

    async def close(self) -> None:
        """The group being committed finishes (its connection is in use on a thread); the rest are refused."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for _, done in self._pending:
            if not done.done():
                done.set_exception(RegisterUnavailable("the gateway is stopping"))
        self._pending.clear()
        self._thread.shutdown(wait=True)
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class _Transaction:
    """The declarations of one group commit, each in its own savepoint."""

    def __init__(self, connection: sqlite3.Connection, subscribers: Iterable[Subscriber], today: date) -> None:
        self.db = connection
        self.subscribers = list(subscribers)
        self.today = today
        self.sequences: dict[str, int] = {}
        self.subject: str | None = None  # the person the current declaration is about, once known

    def submit(self, submission: Submission) -> Answer | Exception:
        """One declaration in its own savepoint: refused or failed, it is undone alone."""
        row = self.db.execute(
            "SELECT request_hash, status, answer, subject FROM declaration_keys WHERE administration = ? AND key = ?",
            (submission.administration, submission.key),
        ).fetchone()
        if row is not None:
            if row[0] != submission.request_hash:
                return KeyConflict("this Idempotency-Key was used for another declaration")
            return Answer(row[1], orjson.loads(row[2]), replayed=True, subject=row[3])
        self.subject = submission.declaration.nin
        sequences = dict(self.sequences)  # undone with the savepoint: a sequence never skips
        self.db.execute("SAVEPOINT declaration")
        try:
            answer = self._apply(submission)
        except Rejected as exc:
            self.db.execute("ROLLBACK TO declaration")
            self.sequences = sequences
            answer = Answer(422, {"reason": exc.reason, "detail": exc.detail}, subject=self.subject)
        except Exception as exc:  # this declaration's own fault (a constraint, a bad value): the others go on
            self.db.execute("ROLLBACK TO declaration")
            self.db.execute("RELEASE declaration")
            self.sequences = sequences
            log.error("a declaration could not be written: %s", type(exc).__name__)
            return RegisterUnavailable(type(exc).__name__)
        except BaseException:
            self.db.execute("ROLLBACK TO declaration")
            self.db.execute("RELEASE declaration")
            self.sequences = sequences
            raise
        self.db.execute("RELEASE declaration")
        self.db.execute(
            "INSERT INTO declaration_keys VALUES (?, ?, ?, ?, ?, ?)",
            (
                submission.administration,
                submission.key,
                submission.request_hash,
                answer.status,
                orjson.dumps(answer.body),
                answer.subject,
            ),
        )
        return answer

    # -- reading --------------------------------------------------------------------------------------

    def person(self, nin: str | None) -> dict[str, Any] | None:
        if nin is None:
            return None
        row = self.db.execute(f"SELECT {', '.join(COLUMNS)} FROM people WHERE nin = ?", (nin,)).fetchone()  # noqa: S608
        return None if row is None else dict(zip(COLUMNS, row, strict=True))

    def married(self, a: str, b: str) -> bool:
        row = self.db.execute(
            "SELECT type FROM declarations WHERE amends IS NULL AND voided = 0 AND type IN ('marriage', 'divorce') "
            "AND ((nin = ?1 AND spouse_nin = ?2) OR (nin = ?2 AND spouse_nin = ?1)) ORDER BY position DESC LIMIT 1",
            (a, b),
        ).fetchone()
        return row is not None and row[0] == "marriage"

    def original(self, event_id: str) -> dict[str, Any] | None:
        row = self.db.execute(
            "SELECT position, type, nin, amends, voided, before, changed, spouse_nin "
            "FROM declarations WHERE event_id = ?",
            (event_id,),
        ).fetchone()
        if row is None:
            return None
        return {
            "position": row[0],
            "type": row[1],
            "nin": row[2],
            "amends": row[3],
            "voided": bool(row[4]),
            "before": orjson.loads(row[5]),
            "changed": orjson.loads(row[6]),
            "spouse_nin": row[7],
        }

    def chain(self, event_id: str, original: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Each field as the original and its corrections, in order, left it; and each such field's value
        before the first of them changed it (what a void puts back)."""
        values, before = dict(original["changed"]), dict(original["before"])
        for changed_text, before_text in self.db.execute(
            "SELECT changed, before FROM declarations WHERE amends = ? ORDER BY position", (event_id,)
        ):
            values.update(orjson.loads(changed_text))
            for name, value in orjson.loads(before_text).items():
                before.setdefault(name, value)
        return values, before

    def later(self, event_id: str, original: Mapping[str, Any], fields: set[str], *, voiding: bool) -> str | None:
        """A standing declaration made after `original` that relies on it: one on the same person that
        changed one of `fields`, a later marriage or divorce of the same two people, anything at all on a
        person whose birth is being voided (their own declarations, a union, a child's birth)."""
        voided = {
            e
            for (e,) in self.db.execute(
                "SELECT event_id FROM declarations WHERE voided = 1 AND position > ? AND nin = ?",
                (original["position"], original["nin"]),
            )
        }
        whole = original["type"] == "birth" and voiding
        for event, amends, kind, spouse, changed in self.db.execute(
            "SELECT event_id, amends, type, spouse_nin, changed FROM declarations WHERE nin = ? AND position > ? "
            "ORDER BY position",
            (original["nin"], original["position"]),
        ):
            root = amends or event
            if root == event_id or root in voided:
                continue
            if whole or fields & set(orjson.loads(changed)):
                return str(event)
            if (
                kind in ("marriage", "divorce")
                and original["type"] in ("marriage", "divorce")
                and spouse == original["spouse_nin"]
            ):
                return str(event)
        if whole:  # each term on its own index
            for condition in (
                "spouse_nin = ?2",
                "type = 'birth' AND json_extract(data, '$.father_nin') = ?2",
                "type = 'birth' AND json_extract(data, '$.mother_nin') = ?2",
            ):
                row = self.db.execute(
                    f"SELECT event_id FROM declarations WHERE {condition} AND position > ?1 AND voided = 0 "  # noqa: S608
                    "AND amends IS NULL LIMIT 1",
                    (original["position"], original["nin"]),
                ).fetchone()
                if row is not None:
                    return str(row[0])
        if original["type"] in ("marriage", "divorce"):
            row = self.db.execute(
                "SELECT event_id FROM declarations WHERE position > ? AND voided = 0 AND amends IS NULL AND "
                "type IN ('marriage', 'divorce') AND nin = ? AND spouse_nin = ? LIMIT 1",
                (original["position"], original["spouse_nin"], original["nin"]),
            ).fetchone()
            if row is not None:
                return str(row[0])
        return None

    # -- writing --------------------------------------------------------------------------------------

    def _apply(self, submission: Submission) -> Answer:
        declaration = submission.declaration
        amends = declaration.amends
        spouse_nin = declaration.data.get("spouse_nin")
        original: dict[str, Any] | None = None
        if amends is not None:
            original = self.original(amends)
            if original is None or original["amends"] is not None:
                raise Rejected(
                    "original_not_found",
                    "corrects/voids names no declaration of the register (amend the original, not a correction)",
                )
            self.subject = original["nin"]
            record = self.person(original["nin"])
            values, first_before = self.chain(amends, original)
            touched = set(values) | (set(declaration.data) & set(RECORD_FIELDS[declaration.type]))
            change = judge_amendment(
                declaration,
                original,
                values,
                first_before,
                record,
                self.today,
                self.later(amends, original, touched, voiding=declaration.voids is not None),
            )
            spouse_nin = original["spouse_nin"]
        elif declaration.type == "birth":
            parents = {
                nin: self.person(nin)
                for nin in (declaration.data.get("father_nin"), declaration.data.get("mother_nin"))
                if nin
            }
            change = judge_birth(self._new_nin(declaration.data["birth_date"]), declaration.data, parents, self.today)
            self.subject = change.nin
        else:
            record = self.person(declaration.nin)
            spouse = self.person(spouse_nin)
            married = spouse is not None and record is not None and self.married(record["nin"], spouse["nin"])
            change = judge(declaration, record, spouse, married, self.today)
        born = declaration.type == "birth" and amends is None
        self._write_person(change, created=born)
        version = self._next_version(change.nin, born=born)
        event_id = str(uuid.uuid4())
        cursor = self.db.execute(
            "INSERT INTO declarations (event_id, type, event_type, nin, spouse_nin, version, amends, data, record, "
            "before, changed, declared_at, administration, client_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                event_id,
                declaration.type,
                declaration.event_type,
                change.nin,
                spouse_nin,
                version,
                amends,
                orjson.dumps(declaration.data),
                orjson.dumps(change.record or self._last_record(change)),
                orjson.dumps(change.before),
                orjson.dumps(change.changed),
                _now(),
                submission.administration,
                submission.client_id,
            ),
        )
        position = cursor.lastrowid
        assert position is not None
        if declaration.voids:
            self.db.execute("UPDATE declarations SET voided = 1 WHERE event_id = ?", (amends,))
        self._route(position, declaration.event_type, None if original is None else original["position"])
        return Answer(201, {"event_id": event_id, "nin": change.nin, "version": version}, subject=change.nin)

    def _last_record(self, change: Change) -> dict[str, Any]:
        return {**change.before}  # a voided birth: the record as it was, for the void's payload

    def _write_person(self, change: Change, *, created: bool) -> None:
        if change.record is None:
            self.db.execute("DELETE FROM people WHERE nin = ?", (change.nin,))
            return
        if created:
            self.db.execute(
                f"INSERT INTO people ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",  # noqa: S608
                [change.record.get(c) for c in COLUMNS],
            )
        elif change.changed:
            names = sorted(change.changed)
            self.db.execute(
                f"UPDATE people SET {', '.join(f'{n} = ?' for n in names)} WHERE nin = ?",  # noqa: S608
                [*(change.changed[n] for n in names), change.nin],
            )

    def _next_version(self, nin: str, *, born: bool) -> int:
        """A birth is version 1; a record loaded by import or seed is at version 1 until its first
        declaration makes version 2."""
        row = self.db.execute(
            "INSERT INTO record_versions VALUES (?, ?) ON CONFLICT (nin) "
            "DO UPDATE SET version = version + 1 RETURNING version",
            (nin, 1 if born else 2),
        ).fetchone()
        return int(row[0])

    def _new_nin(self, birth_date: str) -> str:
        """15 digits: 2 (declared at birth), 00, birth year (2), serial (9), Luhn: never one the seed makes,
        and never one the register holds or ever gave (an imported record may carry any NIN)."""
        while True:
            row = self.db.execute(
                "INSERT INTO counters VALUES ('nin_serial', 1) ON CONFLICT (name) "
                "DO UPDATE SET value = value + 1 RETURNING value"
            ).fetchone()
            body = f"200{int(birth_date[:4]) % 100:02d}{row[0]:09d}"
            nin = body + luhn_digit(body)
            taken = self.db.execute(
                "SELECT 1 FROM people WHERE nin = ?1 UNION ALL SELECT 1 FROM record_versions WHERE nin = ?1 LIMIT 1",
                (nin,),
            ).fetchone()
            if taken is None:
                return nin

    def _route(self, position: int, event_type: str, original_position: int | None) -> None:
        """The outbox: one feed row per subscription that lists the event's type, and, for a correction or
        a void, per subscription whose feed holds the original, whatever it lists now."""
        keys = {s.key for s in self.subscribers if event_type in s.events}
        if original_position is not None:
            keys |= {
                k for (k,) in self.db.execute("SELECT subscription FROM feed WHERE position = ?", (original_position,))
            }
        for key in sorted(keys):
            sequence = self.sequences.get(key)
            if sequence is None:
                row = self.db.execute("SELECT max(sequence) FROM feed WHERE subscription = ?", (key,)).fetchone()
                sequence = row[0] or 0
            sequence += 1
            self.sequences[key] = sequence
            self.db.execute("INSERT INTO feed VALUES (?, ?, ?)", (key, sequence, position))
