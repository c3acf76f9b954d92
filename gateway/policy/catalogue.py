"""The closed vocabularies every policy is checked against (docs/contract.md §2, §3, §4, §12)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Literal, TypeGuard, get_args

Scope = Literal[
    "identity:verify",
    "identity:lookup",
    "consent:write",
    "consent:read",
    "audit:read",
    "subject:history",
    "register:declare",
    "events:read",
    "metrics:read",
]
SCOPES: tuple[Scope, ...] = get_args(Scope)

# Scopes an external issuer's token never carries unless its mapping lists them (docs/contract.md §2).
SENSITIVE_SCOPES = frozenset({"audit:read", "subject:history", "consent:write"})

Attribute = Literal[
    "nin",
    "family_name",
    "given_names",
    "sex",
    "birth_date",
    "birth_place",
    "father_name",
    "mother_name",
    "nationality",
    "residence_region",
    "residence_cercle",
    "residence_commune",
    "death_date",
    "record_status",
    "displacement_status",
    "displacement_site",
    "idp_household_id",
]
ATTRIBUTES: tuple[Attribute, ...] = get_args(Attribute)

# A claim is compared against the record; the NIN is the key, never a claim.
Claim = Literal[
    "family_name",
    "given_names",
    "sex",
    "birth_date",
    "birth_place",
    "father_name",
    "mother_name",
    "nationality",
    "residence_region",
    "residence_cercle",
    "residence_commune",
    "death_date",
    "record_status",
    "displacement_status",
    "displacement_site",
    "idp_household_id",
]
CLAIMS: tuple[Claim, ...] = get_args(Claim)  # every attribute but the NIN (a test holds them to that)

Predicate = Literal[
    "age_at_least",
    "alive",
    "resides_in",
    "registered_idp",
]
PREDICATES: tuple[Predicate, ...] = get_args(Predicate)

# What each predicate reads from the record: a consent must cover these to let the predicate answer.
PREDICATE_READS: dict[str, frozenset[str]] = {
    "age_at_least": frozenset({"birth_date"}),
    "alive": frozenset({"record_status", "death_date"}),
    "resides_in": frozenset({"residence_region", "residence_cercle", "residence_commune"}),
    "registered_idp": frozenset({"displacement_status"}),
}


def predicate_reads(predicates: Iterable[str]) -> set[str]:
    """Every attribute the named predicates read."""
    return {attribute for name in predicates for attribute in PREDICATE_READS[name]}


PurposeOperation = Literal["verify", "lookup"]  # what a purpose may permit
OPERATIONS: tuple[PurposeOperation, ...] = get_args(PurposeOperation)

# Declarations the centres make (docs/contract.md §15), and the events a subscription may list: each type, its
# correction and its void.
DeclarationType = Literal[
    "birth",
    "death",
    "marriage",
    "divorce",
    "name_change",
    "displacement",
]
DECLARATION_TYPES: tuple[DeclarationType, ...] = get_args(DeclarationType)
LIFE_EVENT_TYPES = tuple(f"{t}{suffix}" for t in DECLARATION_TYPES for suffix in ("", ".corrected", ".voided"))

AuthMethod = Literal["private_key_jwt", "client_secret_basic"]
CLIENT_AUTH_METHODS: tuple[AuthMethod, ...] = get_args(AuthMethod)

# Algorithms a client may sign its assertion with, and an external issuer its tokens with.
ASYMMETRIC_ALGORITHMS = ("Ed25519", "EdDSA", "ES256", "PS256", "RS256")

# Every operation an access-log event may name (docs/contract.md §7): the routes' names, the guards, the
# middleware's record, the console's pages and the audit search's filter all take this one type.
EventOperation = Literal[
    "token",
    "verify",
    "lookup",
    "consent.create",
    "consent.read",
    "consent.revoke",
    "audit.search",
    "audit.integrity",
    "subject.history",
    "audit.proof",
    "receipt",
    "verify.bulk",
    "verify.bulk.create",
    "verify.bulk.upload",
    "verify.bulk.status",
    "verify.bulk.cancel",
    "verify.bulk.results",
    "verify.bulk.errors",
    "declaration",
    "events.read",
    "events.deliver",
    "events.keys",
    "events.subscription",
    "events.replay",
    "console.login",
    "console.logout",
    "console.overview",
    "console.events",
    "console.event",
    "console.person",
    "console.alerts",
    "console.alert",
    "console.integrity",
    "console.export",
    "console.account",
]
EVENT_OPERATIONS: tuple[EventOperation, ...] = get_args(EventOperation)

# Requests refused before any work, without a caller, are counted in one event per source and second under
# this operation (docs/contract.md §7): an event's operation is an `EventOperation` or this.
UNAUTHENTICATED: Final = "unauthenticated"
RecordedOperation = Literal[EventOperation, "unauthenticated"]
RECORDED_OPERATIONS: tuple[RecordedOperation, ...] = (*EVENT_OPERATIONS, UNAUTHENTICATED)


def is_event_operation(name: object) -> TypeGuard[EventOperation]:
    """Whether a route's name is an operation the access log records (a probe or a page is not)."""
    return name in _EVENT_OPERATIONS


_EVENT_OPERATIONS = frozenset(EVENT_OPERATIONS)
