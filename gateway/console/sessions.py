"""Console sessions: a random cookie value, only its hash stored; 15 minutes idle, 8 hours at most; one
CSRF token per session. In the database, so every process of a deployment knows every session and a
disabled officer is signed out everywhere at once."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import orjson
from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.storage.database import WRITER
from gateway.storage.tables import console_officers, console_sessions

COOKIE = "__Host-jamu_console"
IDLE_S = 15 * 60
MAX_S = 8 * 3600
_TOUCH_EVERY_S = 10.0  # last_seen is written at most this often: a page view is not a database write


@dataclass(frozen=True)
class Session:
    id_hash: str
    login: str
    role: str
    administration: str | None
    csrf: str
    created_at: float
    last_seen: float
    search: dict[str, str] | None = None  # the last person search: its handle, subject hash and reason

    def csrf_ok(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode("utf-8", "replace"), self.csrf.encode())


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def expired(created_at: float, last_seen: float, now: float) -> bool:
    return now - last_seen > IDLE_S or now - created_at > MAX_S


class SessionStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(self, login: str, role: str, administration: str | None) -> str:
        """A new session (a new value at every sign-in: no fixation); the cookie's value."""
        value = secrets.token_urlsafe(32)
        now = time.time()
        async with self.engine.execution_options(**WRITER).begin() as connection:
            await connection.execute(delete(console_sessions).where(console_sessions.c.last_seen < now - IDLE_S))
            await connection.execute(
                insert(console_sessions).values(
                    id_hash=_hash(value),
                    login=login,
                    role=role,
                    administration=administration,
                    csrf=secrets.token_urlsafe(32),
                    created_at=now,
                    last_seen=now,
                )
            )
        return value

    async def get(self, value: str | None, now: float | None = None) -> Session | None:
        """The live session a cookie names, its idle clock restarted; None when none (or it expired)."""
        if not value or len(value) > 128:
            return None
        now = time.time() if now is None else now
        id_hash = _hash(value)
        o = console_officers.c
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(
                    select(console_sessions, o.disabled, o.updated_at)
                    .select_from(console_sessions.outerjoin(console_officers, o.login == console_sessions.c.login))
                    .where(console_sessions.c.id_hash == id_hash)
                )
            ).first()
        if row is None:
            return None
        # A local account disabled or reset since this session began ends it, however the two interleaved.
        revoked = row.updated_at is not None and (bool(row.disabled) or row.updated_at > row.created_at)
        if revoked or expired(row.created_at, row.last_seen, now):
            await self.end(value)
            return None
        if now - row.last_seen > _TOUCH_EVERY_S:
            async with self.engine.execution_options(**WRITER).begin() as connection:
                await connection.execute(
                    update(console_sessions).where(console_sessions.c.id_hash == id_hash).values(last_seen=now)
                )
        search = orjson.loads(row.search) if getattr(row, "search", None) else None
        return Session(id_hash, row.login, row.role, row.administration, row.csrf, row.created_at, now, search)

    async def remember_search(self, session: Session, subject_hash: str, reason: str) -> str:
        """Keep a person search with the session (never in a URL): the handle the results page is asked by."""
        handle = secrets.token_urlsafe(16)
        search = orjson.dumps({"handle": handle, "subject_hash": subject_hash, "reason": reason}).decode()
        async with self.engine.execution_options(**WRITER).begin() as connection:
            await connection.execute(
                update(console_sessions).where(console_sessions.c.id_hash == session.id_hash).values(search=search)
            )
        return handle

    async def end(self, value: str) -> None:
        async with self.engine.execution_options(**WRITER).begin() as connection:
            await connection.execute(delete(console_sessions).where(console_sessions.c.id_hash == _hash(value)))
