"""The single enforcement point (docs/architecture.md): what an administration may ask, for which purpose,
decided from its policy before any connector is called. Pure: policy and request in, purpose out or a
refusal with the contract's code.

A claim, predicate or released attribute outside the purpose is one refusal, `attribute_not_permitted`,
naming every name refused (claims and predicates by their own names)."""

from __future__ import annotations

from collections.abc import Iterable

from gateway.errors import Problem
from gateway.policy.model import AdministrationPolicy, PurposePolicy


def authorise(
    administration: AdministrationPolicy | None,
    purpose: str,
    operation: str,
    *,
    claims: Iterable[str] = (),
    predicates: Iterable[str] = (),
    attributes: Iterable[str] = (),
) -> PurposePolicy:
    policy = administration.purposes.get(purpose) if administration is not None else None
    if policy is None:
        raise Problem("purpose_not_permitted", "this administration has no such purpose")
    if operation not in policy.operations:
        raise Problem("operation_not_permitted", f"the purpose does not allow {operation}")
    refused = sorted(
        (set(claims) - set(policy.claims))
        | (set(predicates) - set(policy.predicates))
        | (set(attributes) - set(policy.attributes))
    )
    if refused:
        raise Problem(
            "attribute_not_permitted", f"the purpose does not grant {', '.join(refused)}", extra={"attributes": refused}
        )
    return policy
