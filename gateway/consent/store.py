"""Consents through the shared storage layer (SQLite or PostgreSQL). The NIN is kept only as a keyed
hash; ids are 144 random bits. A use is one conditional UPDATE, so two concurrent uses of a one-use
consent cannot both succeed, and a revocation is effective for the very next request."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.record import rfc3339
from gateway.storage.database import WRITER, row_dict
from gateway.storage.tables import consents


@dataclass(frozen=True)
class Consent:
    id: str
    subject_hash: str
    grantee: str
    purpose: str
    attributes: list[str]
    operations: list[str]
    issued_by: str
    issued_by_client: str
    evidence_method: str
    evidence_reference: str | None
    created_at: str
    expires_at: str
    revoked_at: str | None
    max_uses: int | None
    uses: int

    def status(self, now: str) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.expires_at <= now else "active"

    def public(self, now: str) -> dict[str, Any]:
        """docs/contract.md §6: never the NIN, nor its hash."""
        return {
            "id": self.id,
            "grantee": self.grantee,
            "purpose": self.purpose,
            "attributes": self.attributes,
            "operations": self.operations,
            "status": self.status(now),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "issued_by": self.issued_by,
            "max_uses": self.max_uses,
            "uses": self.uses,
            "evidence": {"method": self.evidence_method, "reference": self.evidence_reference},
        }


def now_text() -> str:
    return rfc3339(datetime.now(UTC))


def _from_row(row: Any) -> Consent:
    values = row_dict(row)
    values["attributes"] = orjson.loads(values["attributes"])
    values["operations"] = orjson.loads(values["operations"])
    return Consent(**values)


class ConsentStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._writer = engine.execution_options(**WRITER)  # SQLite: take the write lock at BEGIN

    async def create(
        self,
        *,
        subject_hash: str,
        grantee: str,
        purpose: str,
        attributes: Sequence[str],
        operations: Sequence[str],
        issued_by: str,
        issued_by_client: str,
        evidence_method: str,
        evidence_reference: str | None,
        expires_at: str,
        max_uses: int | None,
    ) -> Consent:
        consent = Consent(
            id="cns_" + secrets.token_urlsafe(18),
            subject_hash=subject_hash,
            grantee=grantee,
            purpose=purpose,
            attributes=sorted(set(attributes)),
            operations=sorted(set(operations)),
            issued_by=issued_by,
            issued_by_client=issued_by_client,
            evidence_method=evidence_method,
            evidence_reference=evidence_reference,
            created_at=now_text(),
            expires_at=expires_at,
            revoked_at=None,
            max_uses=max_uses,
            uses=0,
        )
        row = {
            **consent.__dict__,
            "attributes": orjson.dumps(consent.attributes).decode(),
            "operations": orjson.dumps(consent.operations).decode(),
        }
        async with self._writer.begin() as connection:
            await connection.execute(consents.insert().values(**row))
        return consent

    async def get(self, consent_id: str) -> Consent | None:
        async with self.engine.connect() as connection:
            row = (await connection.execute(select(consents).where(consents.c.id == consent_id))).first()
        return None if row is None else _from_row(row)

    async def revoke(self, consent_id: str, issued_by: str) -> Consent | None:
        """Revoke (idempotent) a consent this channel recorded; None if it did not record one by that id."""
        async with self._writer.begin() as connection:
            await connection.execute(
                update(consents)
                .where(consents.c.id == consent_id, consents.c.issued_by == issued_by, consents.c.revoked_at.is_(None))
                .values(revoked_at=now_text())
            )
            row = (
                await connection.execute(
                    select(consents).where(consents.c.id == consent_id, consents.c.issued_by == issued_by)
                )
            ).first()
        return None if row is None else _from_row(row)

    async def use(self, consent_id: str, subject_hash: str, grantee: str, purpose: str) -> bool:
        """Count one use if the consent is still usable by this grantee for this person and purpose, now;
        atomic: the condition and the increment are one statement."""
        c = consents.c
        statement = (
            update(consents)
            .where(
                c.id == consent_id,
                c.subject_hash == subject_hash,
                c.grantee == grantee,
                c.purpose == purpose,
                c.revoked_at.is_(None),
                c.expires_at > now_text(),
                (c.max_uses.is_(None)) | (c.uses < c.max_uses),
            )
            .values(uses=c.uses + 1)
        )
        async with self._writer.begin() as connection:
            result = await connection.execute(statement)
        return result.rowcount == 1
