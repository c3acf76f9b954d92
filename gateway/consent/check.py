"""The consent check of a consent-based purpose: this consent, for this person, this grantee, this
purpose, this operation and these attributes, still valid, with uses left; then one use is counted.
Each refusal says why in terms the caller can act on, and nothing about anyone else: a consent that
names another administration is, to the caller, no consent at all."""

from __future__ import annotations

from collections.abc import Iterable

from gateway.consent.store import Consent, ConsentStore, now_text
from gateway.errors import Problem
from gateway.policy.catalogue import predicate_reads


def consent_invalid(reason: str, detail: str, **extra: object) -> Problem:
    return Problem("consent_invalid", detail, extra={"reason": reason, **extra})


async def find_consent(store: ConsentStore, consent_id: str | None, *, subject_hash: str, grantee: str) -> Consent:
    """The consent this grantee may use for this person, or the refusal an unknown id gets."""
    if consent_id is None:
        raise Problem("consent_required", "this purpose needs the person's consent: send consent_id")
    consent = await store.get(consent_id)
    # Another person's consent is, to the caller, no consent at all: the same answer as an unknown id,
    # or a consent id would tell whether two NINs belong to the same person.
    if consent is None or consent.grantee != grantee or consent.subject_hash != subject_hash:
        raise consent_invalid("unknown", "no consent with this id was given to this administration")
    return consent


async def use_consent(
    store: ConsentStore,
    consent: Consent,
    *,
    purpose: str,
    operation: str,
    attributes: Iterable[str],
    predicates: Iterable[str] = (),
) -> None:
    """`attributes`: what the operation claims or releases; `predicates`: whose reads the consent must
    cover too (a predicate answers about attributes as surely as a claim does)."""
    if consent.purpose != purpose:
        raise consent_invalid("purpose", f"the consent was given for the purpose {consent.purpose}")
    if operation not in consent.operations:
        raise consent_invalid("operation", f"the consent does not cover {operation}")
    uncovered = sorted((set(attributes) | predicate_reads(predicates)) - set(consent.attributes))
    if uncovered:
        raise consent_invalid("attributes", "the consent does not cover these attributes", attributes=uncovered)
    if await store.use(consent.id, consent.subject_hash, consent.grantee, purpose):
        return
    # Not usable now: say why (re-read: a revocation may have raced with this use).
    current = await store.get(consent.id) or consent
    status = current.status(now_text())
    if status == "revoked":
        raise consent_invalid("revoked", "the consent was revoked")
    if status == "expired":
        raise consent_invalid("expired", "the consent has expired")
    raise consent_invalid("exhausted", "the consent's uses are exhausted")
