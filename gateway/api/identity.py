"""Verification and attribute release (docs/contract.md §4, §5).

Each follows the request flow: authenticate and rate-limit (`protected`), authorise against the
purpose (the one enforcement point), consent, fetch from the connectors that hold the attributes,
decide, and leave the access record for the one writer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from gateway.api.deps import access_record, protected
from gateway.api.fields import Nin
from gateway.api.responses import FastJSONResponse
from gateway.api.routes import GuardedBodyRoute
from gateway.audit.record import AccessRecord
from gateway.auth.bearer import Caller
from gateway.connectors.base import TraceContext, unusable
from gateway.consent.check import find_consent, use_consent
from gateway.errors import Problem
from gateway.identity import decide
from gateway.identity.dates import PartialDate
from gateway.policy.catalogue import Attribute, Claim
from gateway.policy.enforce import authorise
from gateway.policy.model import PurposePolicy
from gateway.services import Services, services

# Served by the lean handler (gateway/api/routes.py): each route here takes exactly (request, body, caller),
# `caller` from one guard with no sub-dependencies; anything else is refused when the route is declared.
router = APIRouter(tags=["Identity"], route_class=GuardedBodyRoute)

Purpose = Annotated[str, StringConstraints(min_length=1, max_length=64)]
ClaimValue = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class _Body(BaseModel):
    # Only keys go in the JSON parser's process-wide string cache: NINs and names are not kept there.
    model_config = ConfigDict(extra="forbid", cache_strings="keys")
    nin: Nin
    purpose: Purpose
    consent_id: str | None = Field(None, max_length=64)


class PredicateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["age_at_least", "alive", "resides_in", "registered_idp"]
    value: int | str | None = None
    as_of: date | None = None

    @model_validator(mode="after")
    def _shape(self) -> PredicateRequest:
        if self.name == "age_at_least":
            if not isinstance(self.value, int) or isinstance(self.value, bool) or not 0 <= self.value <= 150:
                raise ValueError("age_at_least needs an integer value from 0 to 150")
        elif self.name == "resides_in":
            if not isinstance(self.value, str) or not 0 < len(self.value) <= 100:
                raise ValueError("resides_in needs a place name as value")
        elif self.value is not None:
            raise ValueError(f"{self.name} takes no value")
        if self.as_of is not None and self.name != "age_at_least":
            raise ValueError("only age_at_least takes as_of")
        return self


class VerifyRequest(_Body):
    claims: dict[Claim, ClaimValue] | None = None
    predicates: list[PredicateRequest] | None = Field(None, max_length=10)

    @field_validator("claims")
    @classmethod
    def _dates(cls, claims: dict[str, str] | None) -> dict[str, str] | None:
        for name in ("birth_date", "death_date"):
            if claims and name in claims:
                try:
                    PartialDate.parse(claims[name])
                except ValueError as exc:
                    raise ValueError(f"{name}: {exc}") from None
        return claims

    @model_validator(mode="after")
    def _something(self) -> VerifyRequest:
        if not self.claims and not self.predicates:
            raise ValueError("send at least one of claims, predicates")
        return self


class LookupRequest(_Body):
    attributes: list[Attribute] = Field(min_length=1, max_length=32)

    @field_validator("attributes")
    @classmethod
    def _unique(cls, attributes: list[str]) -> list[str]:
        return list(dict.fromkeys(attributes))


async def _start(
    request: Request,
    caller: Caller,
    body: _Body,
    operation: str,
    *,
    claims: Iterable[str] = (),
    predicates: Iterable[str] = (),
    attributes: Iterable[str] = (),
) -> tuple[Services, PurposePolicy]:
    """Policy, then consent: both before any connector is asked."""
    app = services(request)
    record = access_record(request)
    record.subject_hash = app.subjects(body.nin)
    administration = app.policies.current.administrations.get(caller.administration)
    if administration is not None and body.purpose in administration.purposes:
        record.purpose = body.purpose  # one of the caller's own purposes: a made-up one is never logged
    with app.tracer.start_as_current_span("authorise"):
        policy = authorise(
            administration, body.purpose, operation, claims=claims, predicates=predicates, attributes=attributes
        )
    record.legal_basis = policy.legal_basis
    if policy.consent == "required":
        # A verification uses the claimed attributes and what its predicates read; a lookup the released ones.
        with app.tracer.start_as_current_span("consent"):
            consent = await find_consent(
                app.consents, body.consent_id, subject_hash=record.subject_hash, grantee=caller.administration
            )
            record.consent_id = consent.id  # logged only once it is known to be the caller's
            await use_consent(
                app.consents,
                consent,
                purpose=body.purpose,
                operation=operation,
                attributes=[*claims, *attributes],
                predicates=predicates,
            )
    return app, policy


async def _person(
    app: Services, record: AccessRecord, nin: str, attributes: frozenset[str]
) -> tuple[Mapping[str, Any] | None, bool]:
    """What the register read for this NIN (the person, a suspended person, a stand-in or nothing), and
    whether it is a usable record of this person. Unknown and suspended answer alike; the access log
    keeps which."""
    person = await app.connectors.fetch(nin, attributes, TraceContext(record.trace_id or "0" * 32))
    record.outcome = unusable(person)
    return person, record.outcome is None


@router.post("/v1/verify", name="verify", summary="Verify claims and predicates about a person")
async def verify(
    request: Request,
    body: VerifyRequest,
    caller: Annotated[Caller, Depends(protected("verify", "identity:verify"))],
) -> FastJSONResponse:
    """Answers booleans only; an unknown or suspended NIN answers like a person who matches nothing."""
    claims: dict[str, str] = {name: value for name, value in (body.claims or {}).items()}
    predicates = [decide.Predicate(p.name, p.value, p.as_of) for p in body.predicates or ()]
    record = access_record(request)
    record.attributes_requested = sorted(claims)
    app, policy = await _start(request, caller, body, "verify", claims=claims, predicates={p.name for p in predicates})
    person, usable = await _person(app, record, body.nin, decide.needed_attributes(claims, predicates))
    # An unusable record's stand-in (a neighbour's, or the suspended record) is judged and masked: the
    # same work as a real answer, never its result.
    answer = decide.verify(
        person if usable else None,
        claims,
        predicates,
        today=datetime.now(UTC).date(),
        threshold=policy.fuzzy_threshold,
        claim_details=policy.claim_details,
        stand_in=person,
    )
    record.releases_data = True
    return FastJSONResponse(
        {"transaction_id": record.id, "subject_ref": app.subject_refs(caller.administration, body.nin), **answer}
    )


@router.post("/v1/lookup", name="lookup", summary="Release a person's attributes")
async def lookup(
    request: Request,
    body: LookupRequest,
    caller: Annotated[Caller, Depends(protected("lookup", "identity:lookup"))],
) -> FastJSONResponse:
    """Every requested attribute must be granted by the purpose (and the consent, where required)."""
    record = access_record(request)
    record.attributes_requested = list(body.attributes)
    app, _ = await _start(request, caller, body, "lookup", attributes=body.attributes)
    person, usable = await _person(app, record, body.nin, frozenset(body.attributes))
    if not usable or person is None:  # nothing of a stand-in or a suspended record is ever released
        raise Problem("subject_not_found", "no usable record for this person")
    record.releases_data = True
    record.attributes_released = list(body.attributes)
    return FastJSONResponse(
        {
            "transaction_id": record.id,
            "subject_ref": app.subject_refs(caller.administration, body.nin),
            "attributes": {name: person.get(name) for name in body.attributes},
        }
    )
