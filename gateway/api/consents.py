"""Consents (docs/contract.md §6): recorded and revoked by a consent channel, read by it and by the grantee.
Anyone else gets 404, as if the consent did not exist."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from gateway.api.deps import access_record, protected
from gateway.api.fields import Nin
from gateway.api.responses import FastJSONResponse
from gateway.audit.record import rfc3339
from gateway.auth.bearer import Caller
from gateway.consent.store import Consent, now_text
from gateway.errors import Problem, invalid_at
from gateway.identity.pseudonyms import reference_names_person
from gateway.policy.catalogue import Attribute, PurposeOperation, predicate_reads
from gateway.services import services

router = APIRouter(tags=["Consents"])

ConsentId = Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class Evidence(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Literal["signed_form", "otp", "biometric", "other"]
    reference: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None


class ConsentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    nin: Nin
    grantee: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    purpose: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    attributes: list[Attribute] = Field(max_length=32)
    operations: list[PurposeOperation] = Field(min_length=1, max_length=2)
    expires_at: AwareDatetime
    max_uses: int | None = Field(None, ge=1, le=1_000_000)
    evidence: Evidence

    @model_validator(mode="after")
    def _reference_is_not_an_identity_number(self) -> ConsentRequest:
        reference = self.evidence.reference
        if reference is not None and reference_names_person(reference, self.nin):
            raise ValueError("evidence.reference must name the channel's own record, not the person's NIN")
        return self


def _answer(request: Request, consent: Consent, status: int = 200) -> FastJSONResponse:
    return FastJSONResponse(
        {"transaction_id": access_record(request).id, **consent.public(now_text())}, status_code=status
    )


@router.post("/v1/consents", name="consent.create", status_code=201, summary="Record a person's consent")
async def create_consent(
    request: Request,
    body: ConsentRequest,
    caller: Annotated[Caller, Depends(protected("consent.create", "consent:write"))],
) -> FastJSONResponse:
    """For one grantee's consent-based purpose, within what that purpose allows, until a date no later
    than the purpose's maximum consent duration."""
    app = services(request)
    record = access_record(request)
    record.subject_hash = app.subjects(body.nin)
    record.attributes_requested = sorted(set(body.attributes))
    if body.grantee == caller.administration:
        raise Problem("operation_not_permitted", "a channel cannot record consent for its own administration")
    grantee = app.policies.current.administrations.get(body.grantee)
    if grantee is None:
        raise invalid_at("/grantee", "no such administration")
    purpose = grantee.purposes.get(body.purpose)
    if purpose is None or purpose.consent != "required":
        raise invalid_at("/purpose", "the grantee has no consent-based purpose by this name")
    record.purpose = body.purpose  # a purpose of the grantee's own policy: never a made-up one
    # Within what the purpose may touch: released attributes, claims, and what its predicates read.
    outside = sorted(
        set(body.attributes) - set(purpose.attributes) - set(purpose.claims) - predicate_reads(purpose.predicates)
    )
    if outside:
        raise Problem(
            "attribute_not_permitted", "the purpose does not cover these attributes", extra={"attributes": outside}
        )
    operations = sorted(set(body.operations) - set(purpose.operations))
    if operations:
        raise Problem("operation_not_permitted", f"the purpose does not allow {', '.join(operations)}")
    now = datetime.now(UTC)
    if body.expires_at <= now:
        raise invalid_at("/expires_at", "must be in the future")
    if body.expires_at > now + timedelta(days=purpose.max_consent_days):
        raise invalid_at("/expires_at", f"at most {purpose.max_consent_days} days ahead for this purpose")
    consent = await app.consents.create(
        subject_hash=record.subject_hash,
        grantee=body.grantee,
        purpose=body.purpose,
        attributes=body.attributes,
        operations=body.operations,
        issued_by=caller.administration,
        issued_by_client=caller.client_id,
        evidence_method=body.evidence.method,
        evidence_reference=body.evidence.reference,
        expires_at=rfc3339(body.expires_at),
        max_uses=body.max_uses,
    )
    record.consent_id = consent.id
    return _answer(request, consent, 201)


@router.get("/v1/consents/{consent_id}", name="consent.read", summary="Read a consent (its channel or grantee)")
async def read_consent(
    request: Request,
    consent_id: ConsentId,
    caller: Annotated[Caller, Depends(protected("consent.read", "consent:read"))],
) -> FastJSONResponse:
    record = access_record(request)
    consent = await services(request).consents.get(consent_id)
    if consent is None or caller.administration not in (consent.issued_by, consent.grantee):
        raise Problem("not_found", "no such consent")
    # Logged only once the consent is known to be the caller's.
    record.consent_id, record.subject_hash, record.purpose = consent.id, consent.subject_hash, consent.purpose
    return _answer(request, consent)


@router.post("/v1/consents/{consent_id}/revoke", name="consent.revoke", summary="Revoke a consent (its channel)")
async def revoke_consent(
    request: Request,
    consent_id: ConsentId,
    caller: Annotated[Caller, Depends(protected("consent.revoke", "consent:write"))],
) -> FastJSONResponse:
    """Effective for the very next request. Revoking twice answers the same revoked consent."""
    record = access_record(request)
    consent = await services(request).consents.revoke(consent_id, caller.administration)
    if consent is None:
        raise Problem("not_found", "no such consent")
    record.consent_id, record.subject_hash, record.purpose = consent.id, consent.subject_hash, consent.purpose
    return _answer(request, consent)
