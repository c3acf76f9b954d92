"""What a write transaction on the access log does, written once for both stores.

Each function runs inside a transaction that already holds the writers' lock and sees the database
through `Writes`: five statements, implemented over SQLAlchemy (PostgreSQL) and over plain sqlite3 (the
SQLite writer process).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

import orjson
from sqlalchemy import Connection, Table, bindparam, select, update
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect

from gateway.audit.chain import OPTIONAL_HASHED_FIELDS, CheckpointSigner, link
from gateway.audit.record import rfc3339
from gateway.audit.rows import JSON_FIELDS, LIST_FIELDS
from gateway.storage.tables import access_checkpoints, access_events, access_log_head


class Head(NamedTuple):
    seq: int
    hash: str
    checkpoint_seq: int
    checkpoint_at: float


class Writes(Protocol):
    def head(self) -> Head: ...
    def insert_events(self, rows: list[dict[str, Any]]) -> None: ...
    def advance(self, seq: int, head_hash: str) -> None: ...
    def insert_checkpoint(self, checkpoint: dict[str, Any]) -> None: ...
    def mark_sealed(self, seq: int, at: float) -> None: ...


def to_row(event: dict[str, Any]) -> dict[str, Any]:
    row = dict(event)
    for name in LIST_FIELDS:
        row[name] = orjson.dumps(row[name]).decode()
    for name in OPTIONAL_HASHED_FIELDS:
        row.setdefault(name, None)  # events written before these fields existed have none of them
    for name in JSON_FIELDS:
        value = row[name]
        row[name] = None if value is None else orjson.dumps(value).decode()
    return row


def seal(writes: Writes, signer: CheckpointSigner, seq: int, head_hash: str) -> None:
    checkpoint = signer.sign(seq, head_hash, rfc3339(datetime.now(UTC)))
    writes.insert_checkpoint(checkpoint.__dict__)
    writes.mark_sealed(seq, time.time())


def append_events(writes: Writes, signer: CheckpointSigner, events: Sequence[dict[str, Any]], seal_every: int) -> None:
    """Chain `events` after the head and store them; seal when `seal_every` events are unsealed."""
    head = writes.head()
    linked = link(events, head.seq, head.hash)
    writes.insert_events([to_row(e) for e in linked])
    last = linked[-1]
    writes.advance(last["seq"], last["hash"])
    if last["seq"] - head.checkpoint_seq >= seal_every:
        seal(writes, signer, last["seq"], last["hash"])


def seal_head(writes: Writes, signer: CheckpointSigner, older_than_s: float) -> bool:
    """A checkpoint over the head, if events are unsealed and the last one is `older_than_s` old."""
    head = writes.head()
    if head.seq <= head.checkpoint_seq or time.time() - head.checkpoint_at < older_than_s:
        return False
    seal(writes, signer, head.seq, head.hash)
    return True


# Statements built once: the hot path pays execution, not construction.
_HEAD_FOR_UPDATE = select(access_log_head).where(access_log_head.c.id == 1).with_for_update()
_ADVANCE = (
    update(access_log_head)
    .where(access_log_head.c.id == 1)
    .values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))
)
_SEALED = (
    update(access_log_head)
    .where(access_log_head.c.id == 1)
    .values(checkpoint_seq=bindparam("new_seq"), checkpoint_at=bindparam("new_at"))
)
_INSERT_EVENTS = access_events.insert()
_INSERT_CHECKPOINT = access_checkpoints.insert()


class EngineWrites:
    """Through SQLAlchemy (PostgreSQL): `SELECT … FOR UPDATE` locks the head row."""

    def __init__(self, connection: Connection) -> None:
        self._c = connection

    def head(self) -> Head:
        return Head(*self._c.execute(_HEAD_FOR_UPDATE).one()[1:])

    def insert_events(self, rows: list[dict[str, Any]]) -> None:
        self._c.execute(_INSERT_EVENTS, rows)

    def advance(self, seq: int, head_hash: str) -> None:
        self._c.execute(_ADVANCE, {"new_seq": seq, "new_hash": head_hash})

    def insert_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._c.execute(_INSERT_CHECKPOINT, checkpoint)

    def mark_sealed(self, seq: int, at: float) -> None:
        self._c.execute(_SEALED, {"new_seq": seq, "new_at": at})


def _insert_sql(table: Table) -> str:
    """The table's INSERT as SQLite text with named parameters, compiled from the table definition."""
    return str(table.insert().compile(dialect=sqlite_dialect(paramstyle="named")))


class SqliteWrites:
    """Plain sqlite3 (SQLite): `BEGIN IMMEDIATE` already holds the lock. The same statements as above,
    without the engine's per-statement work."""

    _HEAD = "SELECT seq, hash, checkpoint_seq, checkpoint_at FROM access_log_head WHERE id = 1"
    _INSERT_EVENTS = _insert_sql(access_events)
    _INSERT_CHECKPOINT = _insert_sql(access_checkpoints)
    _ADVANCE = "UPDATE access_log_head SET seq = ?, hash = ? WHERE id = 1"
    _SEALED = "UPDATE access_log_head SET checkpoint_seq = ?, checkpoint_at = ? WHERE id = 1"

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._c = connection

    def head(self) -> Head:
        return Head(*self._c.execute(self._HEAD).fetchone())

    def insert_events(self, rows: list[dict[str, Any]]) -> None:
        self._c.executemany(self._INSERT_EVENTS, rows)

    def advance(self, seq: int, head_hash: str) -> None:
        self._c.execute(self._ADVANCE, (seq, head_hash))

    def insert_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._c.execute(self._INSERT_CHECKPOINT, checkpoint)

    def mark_sealed(self, seq: int, at: float) -> None:
        self._c.execute(self._SEALED, (seq, at))
