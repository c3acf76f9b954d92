"""Reading a subscription's feed, and the CloudEvent each item becomes for one administration.

The payload is built at release, under the policy in force then (docs/contract.md §15): a subscription that
lost an attribute never sends it again, in a retry or a replay. What it may carry is read from the
record as the declaration left it, so a replay sends the same facts as the first delivery.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from gateway.audit.record import AccessRecord
from gateway.policy.catalogue import EventOperation
from gateway.policy.model import AdministrationPolicy, SubscriptionPolicy

EVENT_TYPE_PREFIX = "ml.etatcivil."


@dataclass(frozen=True, slots=True)
class FeedItem:
    sequence: int
    event_id: str
    event_type: str
    nin: str
    version: int
    record: dict[str, Any]
    declared_at: str
    amends: str | None


def subscription_key(administration: str, name: str) -> str:
    """A subscription's name in the feed and the push state: its administration's id, then its own."""
    return f"{administration}/{name}"


def release_record(
    administration: AdministrationPolicy,
    subscription: SubscriptionPolicy,
    subject_hash: str,
    operation: EventOperation,
    client_id: str | None,
) -> AccessRecord:
    """The access-log event of one event released (pulled or pushed): its person, its purpose and legal
    basis, and the attributes it carried."""
    record = AccessRecord(
        operation=operation,
        administration=administration.id,
        client_id=client_id,
        purpose=subscription.purpose,
        legal_basis=administration.purposes[subscription.purpose].legal_basis,
        subject_hash=subject_hash,
        attributes_released=sorted(subscription.attributes),
    )
    record.finish(200)
    return record


def _tag(subscription: str) -> str:
    return hashlib.sha256(subscription.encode()).hexdigest()[:8]


def encode_cursor(subscription: str, sequence: int) -> str:
    """Opaque to clients; stable, so a cursor kept for a year still names the same place; marked with
    its feed, so another feed's cursor is refused rather than read as a position here."""
    return base64.urlsafe_b64encode(f"{_tag(subscription)}:{sequence}".encode()).decode().rstrip("=")


def decode_cursor(subscription: str, cursor: str) -> int:
    """ValueError for anything `encode_cursor` did not make for this subscription."""
    if len(cursor) > 40:
        raise ValueError("not a cursor of this feed")
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("not a cursor of this feed") from None
    tag, _, number = text.partition(":")
    if tag != _tag(subscription) or not number.isdigit() or len(number) > 15:
        raise ValueError("not a cursor of this feed")
    return int(number)


def cloud_event(item: FeedItem, subscription: SubscriptionPolicy, subject_ref: str, source: str) -> dict[str, Any]:
    """CloudEvents 1.0, structured JSON. `corrects`/`voids` (extension attributes) name the amended event."""
    data: dict[str, Any] = {name: item.record.get(name) for name in subscription.attributes}
    data["version"] = item.version
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": item.event_id,
        "source": source,
        "type": EVENT_TYPE_PREFIX + item.event_type,
        "time": item.declared_at,
        "sequence": str(item.sequence),
        "subject": subject_ref,
        "datacontenttype": "application/json",
        "data": data,
    }
    if item.amends is not None:
        event["voids" if item.event_type.endswith(".voided") else "corrects"] = item.amends
    return event


class EventFeed:
    """Read-only over the register's `feed` and `declarations`, off the event loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            self._connection = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None, timeout=10
            )
        return self._connection

    def _run(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            try:
                return work(self._db())
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc) or "unable to open" in str(exc):
                    self.close_unlocked()
                    return None  # no register here, or nothing declared yet: an empty feed
                raise

    async def read(self, subscription: str, after: int, limit: int) -> list[FeedItem]:
        def work(db: sqlite3.Connection) -> list[FeedItem]:
            rows = db.execute(
                "SELECT f.sequence, d.event_id, d.event_type, d.nin, d.version, d.record, d.declared_at, d.amends "
                "FROM feed f JOIN declarations d ON d.position = f.position "
                "WHERE f.subscription = ? AND f.sequence > ? ORDER BY f.sequence LIMIT ?",
                (subscription, after, limit),
            ).fetchall()
            return [FeedItem(r[0], r[1], r[2], r[3], r[4], orjson.loads(r[5]), r[6], r[7]) for r in rows]

        return await asyncio.to_thread(self._run, work) or []

    async def heads(self, subscriptions: list[str]) -> dict[str, int]:
        """Each subscription's last sequence (0: none yet), one primary-key descent each."""

        def work(db: sqlite3.Connection) -> dict[str, int]:
            return {
                key: db.execute(
                    "SELECT coalesce(max(sequence), 0) FROM feed WHERE subscription = ?", (key,)
                ).fetchone()[0]
                for key in subscriptions
            }

        return await asyncio.to_thread(self._run, work) or {}

    def close(self) -> None:
        with self._lock:
            self.close_unlocked()

    def close_unlocked(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
