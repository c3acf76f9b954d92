"""The embedded register: a SQLite file in the data dir, one row per person keyed by NIN (a clustered
primary key, `WITHOUT ROWID`), birth dates stored as written (`1975`, `1975-03`, `1975-03-02`), so
their precision travels with them.

It changes by `jamu register seed` (a new file put in place atomically, gateway stopped), `jamu
register import` (one transaction) and the centres' declarations (`gateway.events.register`, which puts
the file in write-ahead-log mode: readers and the writer never wait for each other). A point read by
primary key costs the same at 50,000 and at 5,000,000 rows (a B-tree a level or two deeper) and the
gateway holds no part of the register in memory beyond SQLite's bounded page cache.
Reads run on the event loop by default: a few µs from the page cache, less than the hand-off to a
thread and back. `reads: thread` in the connectors file runs them in a small thread pool with one
read-only connection per thread instead, for registers on storage slow enough that a page-cache miss
must not block the loop.

A read asks for the columns it needs only. On the loop, reads share one read transaction for at most
`SNAPSHOT_S`: each transaction takes and drops a lock and checks whether the file changed, which costs
more than the read itself. A read therefore sees a change at most that long after it commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from gateway.connectors.base import (
    BackendUnavailable,
    BuildContext,
    Connector,
    ConnectorSettings,
    StandIn,
    TraceContext,
)
from gateway.identity.pseudonyms import normalise_nin
from gateway.policy.catalogue import ATTRIBUTES, Attribute

COLUMNS = ATTRIBUTES  # nin first
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS people ("
    + ", ".join(f"{c} TEXT" + (" PRIMARY KEY" if c == "nin" else "") for c in COLUMNS)
    + ") WITHOUT ROWID"
)
CACHE_KIB = 16 * 1024  # per reading thread
SNAPSHOT_S = 0.05  # how long reads on the loop share one read transaction


def create_register(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the register for writing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute(SCHEMA)
    return connection


def write_people(connection: sqlite3.Connection, rows: Iterable[Mapping[str, Any]], *, replace: bool = True) -> int:
    verb = "INSERT OR REPLACE" if replace else "INSERT"
    statement = f"{verb} INTO people ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    cursor = connection.executemany(statement, ([row.get(c) for c in COLUMNS] for row in rows))
    return cursor.rowcount


@functools.lru_cache(maxsize=len(COLUMNS) + 1)
def _absent(width: int) -> tuple[None, ...]:
    return (None,) * width


class EmbeddedRegister:
    authoritative = True

    def __init__(
        self,
        path: Path,
        *,
        name: str = "register",
        attributes: Iterable[str] = ATTRIBUTES,
        threads: int = 2,
        inline_reads: bool = True,
    ) -> None:
        self.name = name
        self.attributes = frozenset(attributes)
        self.path = path
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="register")
        self._inline = inline_reads
        self._statements: dict[frozenset[str], tuple[str, tuple[str, ...]]] = {}
        self._snapshot: sqlite3.Connection | None = None
        self._snapshot_until = 0.0
        create_register(path).close()

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
            )
            connection.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    def _statement(self, attributes: frozenset[str]) -> tuple[str, tuple[str, ...]]:
        """One statement per set of attributes (a purpose asks for few sets). It reads the first row at or
        after the NIN asked, so a known NIN and an unknown one both descend the tree and decode one row
        (docs/contract.md §4: existence never shows, not even in time); `nin` is always read, to tell which."""
        statement = self._statements.get(attributes)
        if statement is None:
            names = ("nin", *(c for c in COLUMNS if c in attributes and c != "nin"))
            columns = ", ".join(names)
            sql = (
                f"SELECT {columns} FROM (SELECT {columns} FROM people WHERE nin >= ?1 ORDER BY nin LIMIT 1) "  # noqa: S608
                f"UNION ALL SELECT {columns} FROM (SELECT {columns} FROM people ORDER BY nin LIMIT 1) LIMIT 1"
            )
            statement = self._statements[attributes] = (sql, names)
        return statement

    def _read(self, nin: str, attributes: frozenset[str]) -> tuple[dict[str, Any], bool]:
        """The row read and whether it is the person's. A miss reads and decodes a neighbour's row instead
        (the first one after, or the register's first), so it costs what a hit does."""
        sql, names = self._statement(attributes)
        row = self._connection().execute(sql, (nin,)).fetchone()
        record = dict(zip(names, row if row is not None else _absent(len(names)), strict=True))
        return record, record["nin"] == nin

    def _read_in_snapshot(self, nin: str, attributes: frozenset[str]) -> tuple[dict[str, Any], bool]:
        now = time.monotonic()
        if self._snapshot is not None and now >= self._snapshot_until:
            self._end_snapshot()  # its timer did not run (a busy or closed loop): never read an old one
        if self._snapshot is None:
            connection = self._connection()
            connection.execute("BEGIN")
            self._snapshot, self._snapshot_until = connection, now + SNAPSHOT_S
            asyncio.get_running_loop().call_later(SNAPSHOT_S, self._end_snapshot)
        try:
            return self._read(nin, attributes)
        except sqlite3.Error:
            self._end_snapshot()
            raise

    def _end_snapshot(self) -> None:
        connection, self._snapshot = self._snapshot, None
        if connection is not None:
            with contextlib.suppress(sqlite3.Error):  # closed with the register: nothing left to end
                if connection.in_transaction:
                    connection.execute("COMMIT")

    async def fetch(
        self, nin: str, attributes: frozenset[str], trace: TraceContext | None = None
    ) -> Mapping[str, Any] | None:
        try:
            if self._inline:  # a primary-key read from the page cache, on the loop: no thread hop
                row, found = self._read_in_snapshot(normalise_nin(nin), attributes)
            else:
                row, found = await asyncio.get_running_loop().run_in_executor(
                    self._pool, self._read, normalise_nin(nin), attributes
                )
        except sqlite3.Error as exc:
            raise BackendUnavailable(self.name, type(exc).__name__) from None
        answer = {name: row.get(name) for name in attributes}
        # A miss answers the neighbour's row as a stand-in: the decision then works on a real record, with
        # real names, as it does for a known person, and masks the result.
        return answer if found else StandIn(answer)

    async def health(self) -> bool:
        await asyncio.get_running_loop().run_in_executor(
            self._pool, lambda: self._connection().execute("SELECT 1 FROM people LIMIT 1").fetchall()
        )
        return True

    def count(self) -> int:
        with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True) as connection:
            counted: int = connection.execute("SELECT count(*) FROM people").fetchone()[0]
            return counted

    async def close(self) -> None:
        self._end_snapshot()
        self._pool.shutdown(wait=True)
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()


class EmbeddedConfig(ConnectorSettings):
    """`type: embedded`: the register in a SQLite file the gateway holds (the demo's, a pilot's)."""

    name: str = "register"
    type: Literal["embedded"]
    attributes: list[Attribute] = list(ATTRIBUTES)
    path: str | None = None  # default: <data dir>/register.db
    reads: Literal["thread", "inline"] = "inline"

    def build(self, built: BuildContext) -> Connector:
        path = Path(self.path) if self.path else built.data_dir / "register.db"
        return EmbeddedRegister(path, name=self.name, attributes=self.attributes, inline_reads=self.reads == "inline")
