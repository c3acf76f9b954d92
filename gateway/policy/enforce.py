"""The single enforcement point (ARCHITECTURE.md): what an administration may ask, for which purpose,
decided from its policy before any connector is called. Pure: policy and request in, purpose out or a
refusal with the contract's code."""

from __future__ import annotations

from collections.abc import Iterable

from gateway.errors import Problem
from gateway.policy.model import AdministrationPolicy, PurposePolicy


def authorise(administration: AdministrationPolicy | None, purpose: str, operation: str, *,
              claims: Iterable[str] = (), predicates: Iterable[str] = (), attributes: Iterable[str] = ()
              ) -> PurposePolicy:
    policy = administration.purposes.get(purpose) if administration is not None else None
    if policy is None:
        raise Problem("purpose_not_permitted", "this administration has no such purpose")
    if operation not in policy.operations:
        raise Problem("operation_not_permitted", f"the purpose does not allow {operation}")
    claims_out = sorted(set(claims) - set(policy.claims))
    if claims_out:
        raise Problem("operation_not_permitted", f"the purpose does not allow the claims {', '.join(claims_out)}",
                      extra={"claims": claims_out})
    predicates_out = sorted(set(predicates) - set(policy.predicates))
    if predicates_out:
        raise Problem("operation_not_permitted",
                      f"the purpose does not allow the predicates {', '.join(predicates_out)}",
                      extra={"predicates": predicates_out})
    attributes_out = sorted(set(attributes) - set(policy.attributes))
    if attributes_out:
        raise Problem("attribute_not_permitted", "the purpose does not grant these attributes",
                      extra={"attributes": attributes_out})
    return policy
