"""The consent store on SQLite and on PostgreSQL: uses counted atomically, revocation effective at once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.record import rfc3339
from gateway.consent.check import find_consent, use_consent
from gateway.consent.store import ConsentStore
from gateway.errors import Problem

PERSON, OTHER = "a" * 64, "b" * 64


@pytest.fixture
def store(migrated_engine: AsyncEngine) -> ConsentStore:
    return ConsentStore(migrated_engine)


async def grant(
    store: ConsentStore,
    *,
    max_uses: int | None = None,
    expires_in: timedelta = timedelta(days=30),
    attributes: tuple[str, ...] = ("family_name", "birth_date"),
) -> str:
    consent = await store.create(
        subject_hash=PERSON,
        grantee="canam",
        purpose="amo_enrolment",
        attributes=list(attributes),
        operations=["lookup", "verify"],
        issued_by="cec",
        issued_by_client="cec-counter",
        evidence_method="signed_form",
        evidence_reference="F-2026-001",
        expires_at=rfc3339(datetime.now(UTC) + expires_in),
        max_uses=max_uses,
    )
    return consent.id


async def check(store: ConsentStore, consent_id: str | None, **overrides: object) -> None:
    asked: dict = {
        "subject_hash": PERSON,
        "grantee": "canam",
        "purpose": "amo_enrolment",
        "operation": "lookup",
        "attributes": ["family_name"],
        **overrides,
    }
    consent = await find_consent(
        store, consent_id, subject_hash=asked.pop("subject_hash"), grantee=asked.pop("grantee")
    )
    await use_consent(store, consent, **asked)


async def reason(store: ConsentStore, consent_id: str | None, **overrides: object) -> tuple[str, object]:
    with pytest.raises(Problem) as caught:
        await check(store, consent_id, **overrides)
    return caught.value.code, caught.value.extra.get("reason")


async def test_a_consent_reads_back_without_the_person(store: ConsentStore) -> None:
    consent_id = await grant(store, max_uses=3)
    consent = await store.get(consent_id)
    assert consent is not None and consent.uses == 0 and consent.attributes == ["birth_date", "family_name"]
    public = consent.public(rfc3339(datetime.now(UTC)))
    assert public["status"] == "active" and "subject_hash" not in public and PERSON not in str(public)
    assert len(consent_id) >= 24 and consent_id != await grant(store)


async def test_every_mismatch_has_its_reason(store: ConsentStore) -> None:
    consent_id = await grant(store)
    assert await reason(store, None) == ("consent_required", None)
    assert await reason(store, "cns_nope") == ("consent_invalid", "unknown")
    assert await reason(store, consent_id, grantee="dnds") == ("consent_invalid", "unknown")
    assert await reason(store, consent_id, purpose="other") == ("consent_invalid", "purpose")
    assert await reason(store, consent_id, subject_hash=OTHER) == ("consent_invalid", "unknown")
    assert await reason(store, consent_id, operation="audit") == ("consent_invalid", "operation")
    assert await reason(store, consent_id, attributes=["family_name", "residence_commune"]) == (
        "consent_invalid",
        "attributes",
    )
    await check(store, consent_id)
    assert (await store.get(consent_id)).uses == 1  # type: ignore[union-attr]


async def test_another_persons_consent_answers_exactly_like_an_unknown_one(store: ConsentStore) -> None:
    consent_id = await grant(store)

    async def refusal(consent: str, subject: str) -> tuple:
        with pytest.raises(Problem) as caught:
            await check(store, consent, subject_hash=subject)
        problem = caught.value
        return problem.code, problem.status, problem.detail, problem.extra, problem.headers

    assert await refusal(consent_id, OTHER) == await refusal("cns_" + "x" * 24, OTHER)
    assert (await store.get(consent_id)).uses == 0  # type: ignore[union-attr]


async def test_a_predicate_needs_the_consent_to_cover_what_it_reads(store: ConsentStore) -> None:
    consent_id = await grant(store, attributes=("family_name",))
    with pytest.raises(Problem) as caught:
        await check(store, consent_id, operation="verify", attributes=[], predicates=["alive"])
    assert caught.value.code == "consent_invalid"
    assert caught.value.extra["attributes"] == ["death_date", "record_status"]
    wide = await grant(store, attributes=("family_name", "death_date", "record_status"))
    await check(store, wide, operation="verify", attributes=[], predicates=["alive"])


async def test_uses_run_out(store: ConsentStore) -> None:
    consent_id = await grant(store, max_uses=2)
    await check(store, consent_id)
    await check(store, consent_id)
    assert await reason(store, consent_id) == ("consent_invalid", "exhausted")
    assert (await store.get(consent_id)).uses == 2  # type: ignore[union-attr]


async def test_two_concurrent_uses_of_a_one_use_consent_one_succeeds(store: ConsentStore) -> None:
    for _ in range(5):
        consent_id = await grant(store, max_uses=1)
        results = await asyncio.gather(*(check(store, consent_id) for _ in range(2)), return_exceptions=True)
        assert sum(r is None for r in results) == 1, results
        assert [r.extra["reason"] for r in results if isinstance(r, Problem)] == ["exhausted"]
        assert (await store.get(consent_id)).uses == 1  # type: ignore[union-attr]


async def test_revocation_races_with_use_and_wins_from_then_on(store: ConsentStore) -> None:
    consent_id = await grant(store)
    outcomes = await asyncio.gather(check(store, consent_id), store.revoke(consent_id, "cec"), return_exceptions=True)
    assert outcomes[1] is not None and outcomes[1].revoked_at is not None  # type: ignore[union-attr]
    assert await reason(store, consent_id) == ("consent_invalid", "revoked")
    again = await store.revoke(consent_id, "cec")
    assert again is not None and again.revoked_at == outcomes[1].revoked_at  # type: ignore[union-attr]
    assert await store.revoke(consent_id, "someone-else") is None


async def test_an_expired_consent_is_refused(store: ConsentStore) -> None:
    consent_id = await grant(store, expires_in=timedelta(seconds=1))
    await check(store, consent_id)
    await asyncio.sleep(1.2)
    assert await reason(store, consent_id) == ("consent_invalid", "expired")
