"""The console's local accounts: argon2id passwords, a TOTP second factor, lockout after failures.

Used when no OpenID Connect provider is configured (docs/console.md). The rules (what locks an account,
which TOTP steps are accepted) are pure functions; `OfficerStore` keeps the accounts in the gateway's
database so every process of a deployment sees the same lockouts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import getpass
import hashlib
import hmac
import os
import re
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.audit.record import AccessRecord, rfc3339
from gateway.storage.database import WRITER
from gateway.storage.tables import console_account_changes, console_officers, console_sessions

Role = Literal["officer", "dpa", "dpo"]
ROLES: tuple[Role, ...] = ("officer", "dpa", "dpo")
LOGIN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
ADMINISTRATION = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")

MAX_FAILURES = 5  # failures within LOCKOUT_S lock the account for LOCKOUT_S
LOCKOUT_S = 15 * 60
TOTP_STEP_S = 30
TOTP_DIGITS = 6
TOTP_ISSUER = "Jamu"

_hasher = PasswordHasher()  # argon2id, the library's defaults (RFC 9106's second recommended profile)
# Compared against when the login is unknown, so an unknown login costs what a known one does.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class AccountError(ValueError):
    """An account request that cannot be done: unknown login, bad role, login taken."""


@dataclass(frozen=True)
class Officer:
    login: str
    role: Role
    administration: str | None
    disabled: bool = False
    locked_until: float | None = None


@dataclass(frozen=True)
class Credentials:
    """What `add` and `reset` hand out once: nothing keeps the password in clear."""

    login: str
    password: str
    otpauth_uri: str


SignIn = Literal["ok", "invalid", "locked", "disabled"]


@dataclass(frozen=True)
class Attempt:
    outcome: SignIn
    officer: Officer | None
    locked_now: bool = False  # this failure locked the account


def check_role(role: str, administration: str | None) -> None:
    """A `dpo` belongs to one administration; `officer` and `dpa` see all of them and name none."""
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}")
    if role == "dpo" and administration is None:
        raise AccountError("a dpo needs --administration")
    if role != "dpo" and administration is not None:
        raise AccountError(f"an {role} sees every administration: give --administration only for a dpo")
    if administration is not None and not ADMINISTRATION.fullmatch(administration):
        raise AccountError("not an administration id")


def totp_step(code: str, secret: str, now: float, last_step: int) -> int | None:
    """The step a code belongs to (this one or the previous, to allow for a slow typist), or None. A step
    at or before `last_step` (a code already used) is refused: a code signs in once."""
    if not (len(code) == TOTP_DIGITS and code.isascii() and code.isdigit()):
        return None
    totp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_STEP_S)
    current = int(now // TOTP_STEP_S)
    for step in (current, current - 1):
        if step > last_step and hmac.compare_digest(totp.at(step * TOTP_STEP_S), code):
            return step
    return None


def after_failure(failures: int, first_failure_at: float | None, now: float) -> tuple[int, float, float | None]:
    """(failures, first_failure_at, locked_until) once another failure is counted: failures older than
    the lockout window are forgotten; the fifth within it locks the account for LOCKOUT_S."""
    if first_failure_at is None or now - first_failure_at > LOCKOUT_S:
        failures, first_failure_at = 0, now
    failures += 1
    return failures, first_failure_at, (now + LOCKOUT_S if failures >= MAX_FAILURES else None)


class TotpSeal:
    """TOTP secrets sealed at rest (AES-GCM under the data dir's console key): a copy of the database
    alone gives no second factor."""

    def __init__(self, key: bytes) -> None:
        # A key of its own, derived: the console's key also signs its cookies (HMAC).
        self._aead = AESGCM(hmac.new(key, b"jamu console: TOTP seal", hashlib.sha256).digest())

    def seal(self, login: str, secret: str) -> str:
        nonce = secrets.token_bytes(12)
        return base64.b64encode(nonce + self._aead.encrypt(nonce, secret.encode(), login.encode())).decode()

    def open(self, login: str, sealed: str) -> str:
        raw = base64.b64decode(sealed)
        return self._aead.decrypt(raw[:12], raw[12:], login.encode()).decode()


def _officer(row: Any) -> Officer:
    return Officer(row.login, row.role, row.administration, bool(row.disabled), row.locked_until)


class OfficerStore:
    def __init__(self, engine: AsyncEngine, seal: TotpSeal, checks: PasswordChecks | None = None) -> None:
        self.engine = engine
        self.seal = seal
        self.checks = checks or PasswordChecks(threads=1, max_waiting=0)
        self.actor = _actor()

    def _credentials(self, login: str) -> tuple[Credentials, str, str]:
        password = secrets.token_urlsafe(15)
        secret = pyotp.random_base32()
        uri = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_STEP_S).provisioning_uri(
            name=login, issuer_name=TOTP_ISSUER
        )
        # Said outright, though they are the format's defaults: some authenticator apps assume otherwise.
        uri += f"&algorithm=SHA1&digits={TOTP_DIGITS}&period={TOTP_STEP_S}"
        return Credentials(login, password, uri), _hasher.hash(password), self.seal.seal(login, secret)

    async def add(self, login: str, role: str, administration: str | None = None) -> Credentials:
        if not LOGIN.fullmatch(login):
            raise AccountError("a login is 1 to 64 of a-z 0-9 . _ -, starting with a letter or digit")
        check_role(role, administration)
        credentials, password_hash, sealed = await asyncio.to_thread(self._credentials, login)
        now = time.time()
        try:
            async with self.engine.execution_options(**WRITER).begin() as connection:
                await connection.execute(
                    insert(console_officers).values(
                        login=login,
                        role=role,
                        administration=administration,
                        password_hash=password_hash,
                        totp_sealed=sealed,
                        created_at=now,
                        updated_at=now,
                    )
                )
                await self._changed(connection, login, "add", role, administration)
        except IntegrityError:
            raise AccountError(f"{login} exists already (reset it with `jamu officers reset`)") from None
        return credentials

    async def reset(self, login: str) -> Credentials:
        """A new password and TOTP secret; the lockout cleared and every session of the officer ended."""
        credentials, password_hash, sealed = await asyncio.to_thread(self._credentials, login)
        async with self.engine.execution_options(**WRITER).begin() as connection:
            done = await connection.execute(
                update(console_officers)
                .where(console_officers.c.login == login)
                .values(
                    password_hash=password_hash,
                    totp_sealed=sealed,
                    last_totp_step=0,
                    failures=0,
                    first_failure_at=None,
                    locked_until=None,
                    updated_at=time.time(),
                )
            )
            if done.rowcount == 0:
                raise AccountError(f"no officer {login}")
            await connection.execute(delete(console_sessions).where(console_sessions.c.login == login))
            await self._changed(connection, login, "reset")
        return credentials

    async def set_disabled(self, login: str, disabled: bool) -> None:
        """Disabling ends the officer's sessions at once."""
        async with self.engine.execution_options(**WRITER).begin() as connection:
            done = await connection.execute(
                update(console_officers)
                .where(console_officers.c.login == login)
                .values(disabled=int(disabled), updated_at=time.time())
            )
            if done.rowcount == 0:
                raise AccountError(f"no officer {login}")
            if disabled:
                await connection.execute(delete(console_sessions).where(console_sessions.c.login == login))
            await self._changed(connection, login, "disable" if disabled else "enable")

    async def _changed(
        self,
        connection: AsyncConnection,
        login: str,
        action: str,
        role: str | None = None,
        administration: str | None = None,
    ) -> None:
        """The change, in its own transaction, for a gateway to log (`AccountChanges`)."""
        await connection.execute(
            insert(console_account_changes).values(
                at=time.time(), login=login, action=action, role=role, administration=administration, actor=self.actor
            )
        )

    async def list(self) -> list[Officer]:
        async with self.engine.connect() as connection:
            rows = await connection.execute(select(console_officers).order_by(console_officers.c.login))
            return [_officer(row) for row in rows]

    async def sign_in(self, login: str, password: str, code: str, now: float | None = None) -> Attempt:
        """Check a password and a TOTP code. Every attempt costs one argon2 check, whether the login
        exists, is locked or not. The decision is taken in one locked transaction: attempts sent together
        are judged one after the other, a lock, a disable or a reset that lands meanwhile refuses the rest,
        and a success spends the code's step."""
        now = time.time() if now is None else now
        async with self.engine.connect() as connection:
            row = (
                (await connection.execute(select(console_officers).where(console_officers.c.login == login))).first()
                if LOGIN.fullmatch(login)
                else None
            )
        password_ok = await self.checks.verify(row.password_hash if row is not None else _DUMMY_HASH, password)
        if row is None:
            return Attempt("invalid", None)
        secret = self.seal.open(login, row.totp_sealed)
        async with self.engine.execution_options(**WRITER).begin() as connection:
            current = (
                await connection.execute(
                    select(console_officers).where(console_officers.c.login == login).with_for_update()
                )
            ).first()
            if current is None:
                return Attempt("invalid", None)
            officer = _officer(current)
            if current.locked_until is not None and current.locked_until > now:
                return Attempt("locked", officer)
            if (current.password_hash, current.totp_sealed) != (row.password_hash, row.totp_sealed):
                return Attempt("invalid", officer)  # reset while this was being checked: the old ones are void
            step = totp_step(code, secret, now, current.last_totp_step) if password_ok else None
            if step is not None and current.disabled:
                return Attempt("disabled", officer)
            if step is not None:
                await connection.execute(
                    update(console_officers)
                    .where(console_officers.c.login == login)
                    .values(failures=0, first_failure_at=None, locked_until=None, last_totp_step=step)
                )
                return Attempt("ok", officer)
            failures, first, locked_until = after_failure(current.failures, current.first_failure_at, now)
            await connection.execute(
                update(console_officers)
                .where(console_officers.c.login == login)
                .values(failures=failures, first_failure_at=first, locked_until=locked_until)
            )
        return Attempt("invalid", officer, locked_now=locked_until is not None)


class PasswordChecks:
    """argon2 checks on threads of their own, a few at a time: each costs tens of milliseconds and 64 MiB,
    so a flood of sign-ins must neither take the threads the access log writes with nor the memory. Past
    `max_waiting` checks in line, a sign-in is refused at once (`Busy`)."""

    def __init__(self, threads: int = 2, max_waiting: int = 8) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="console-argon2")
        self._slots = asyncio.Semaphore(threads + max_waiting)

    async def verify(self, password_hash: str, password: str) -> bool:
        if self._slots.locked():
            raise Busy
        async with self._slots:
            return await asyncio.get_running_loop().run_in_executor(self._pool, _verify, password_hash, password)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class Busy(Exception):
    """Too many sign-ins are being checked: try again shortly."""


def _actor() -> str:
    """Who changes accounts: the operating-system user and host running `jamu officers`."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"cli:{user}@{socket.gethostname()}"[:200]


class AccountChanges:
    """Turns the account changes `jamu officers` made into `console.account` access-log events, across
    every gateway process: a change is claimed (`logged` set to the claim's time), appended, then marked
    done (`logged = -1`); a claim not marked done within `reclaim_s` (its process died) is taken again, so
    no change goes unlogged."""

    def __init__(
        self, engine: AsyncEngine, append: Callable[[AccessRecord], Awaitable[int | None]], *, reclaim_s: float = 60.0
    ) -> None:
        self.engine = engine
        self.append = append
        self.reclaim_s = reclaim_s

    async def relay(self) -> int:
        t = console_account_changes.c
        now = time.time()
        waiting = (t.logged == 0) | ((t.logged > 0) & (t.logged < int(now - self.reclaim_s)))
        async with self.engine.connect() as connection:
            pending = list(
                await connection.execute(select(console_account_changes).where(waiting).order_by(t.id).limit(100))
            )
        relayed = 0
        for change in pending:
            async with self.engine.execution_options(**WRITER).begin() as connection:
                claimed = await connection.execute(
                    update(console_account_changes)
                    .where(t.id == change.id, t.logged == change.logged)
                    .values(logged=max(1, int(time.time())))
                )
            if claimed.rowcount != 1:
                continue  # another process took it
            facts = (
                ("change", str(change.id)),
                ("at", rfc3339(datetime.fromtimestamp(change.at, UTC))),
                ("login", change.login),
                ("action", change.action),
                ("role", change.role),
                ("administration", change.administration),
            )
            record = AccessRecord(
                operation="console.account", client_id=change.actor, evidence={k: v for k, v in facts if v}
            )
            record.finish(200)
            try:
                await self.append(record)
            except BaseException:
                with contextlib.suppress(Exception):  # back in line at once (else after reclaim_s)
                    async with self.engine.execution_options(**WRITER).begin() as connection:
                        await connection.execute(
                            update(console_account_changes).where(t.id == change.id).values(logged=0)
                        )
                raise
            async with self.engine.execution_options(**WRITER).begin() as connection:
                await connection.execute(update(console_account_changes).where(t.id == change.id).values(logged=-1))
            relayed += 1
        return relayed


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
