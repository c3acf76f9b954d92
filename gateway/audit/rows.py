"""An access event as a row of the SQL tables that hold events (the 1.0 log's `access_events`, the query
index's `audit_index`), and the officers' filter over either: one mapping for both."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Select, Table, or_, select

from gateway.storage.database import row_dict

LIST_FIELDS = ("attributes_requested", "attributes_released")
JSON_FIELDS = ("evidence",)  # nullable JSON objects, stored as text


def event_from_row(row: Any) -> dict[str, Any]:
    """The event a row holds, its JSON text decoded (an index row's `position` is the index's, not the
    event's)."""
    event = row_dict(row)
    event.pop("position", None)
    for name in LIST_FIELDS:
        event[name] = orjson.loads(event[name])
    for name in JSON_FIELDS:
        if event[name] is not None:
            event[name] = orjson.loads(event[name])
    return event


def person_query(table: Table, subject_hash: str, hidden_prefixes: Sequence[str]) -> Select[Any]:
    """One person's events but for operations that start with one of `hidden_prefixes` (what a citizen
    is not shown); the caller orders and limits."""
    query = select(table).where(table.c.subject_hash == subject_hash)
    for prefix in hidden_prefixes:
        query = query.where(table.c.operation.not_like(prefix.replace("_", "\\_") + "%", escape="\\"))
    return query


@dataclass(frozen=True)
class EventFilter:
    administration: str | None = None
    client_id: str | None = None
    operation: str | None = None
    decision: str | None = None
    subject_hash: str | None = None
    since: str | None = None  # RFC 3339 as `rfc3339` writes it
    until: str | None = None
    purpose: str | None = None
    hidden_prefixes: tuple[str, ...] = ()  # operations left out (the console hides officers' own reads)

    def apply(self, query: Select[Any], table: Table) -> Select[Any]:
        c = table.c
        for name in ("administration", "client_id", "operation", "decision", "subject_hash", "purpose"):
            value = getattr(self, name)
            if value is not None:
                query = query.where(c[name] == value)
        for prefix in self.hidden_prefixes:  # an event with no operation (an unknown path) is not hidden
            query = query.where(
                or_(c.operation.is_(None), c.operation.not_like(prefix.replace("_", "\\_") + "%", escape="\\"))
            )
        if self.since is not None:
            query = query.where(c.time >= self.since)
        if self.until is not None:
            query = query.where(c.time < self.until)
        return query
