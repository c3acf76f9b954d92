"""The policy schema (docs/contract.md §12). Unknown fields are refused so a typo never silently widens access."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeGuard
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from gateway.policy.catalogue import (
    LIFE_EVENT_TYPES,
    Attribute,
    AuthMethod,
    Claim,
    Predicate,
    PurposeOperation,
    Scope,
)

EventType = Literal[LIFE_EVENT_TYPES]  # type: ignore[valid-type]  # built from DeclarationType, see catalogue

IDENTIFIER_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
Identifier = Annotated[str, StringConstraints(pattern=IDENTIFIER_PATTERN)]


def is_identifier(value: object) -> TypeGuard[str]:
    """A well-formed administration, client or purpose id: what may be copied from a request into the log."""
    return isinstance(value, str) and _IDENTIFIER.fullmatch(value) is not None


_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)

# A purpose's name, as the access log may record it (docs/contract.md §7): a little wider than other identifiers.
PurposeName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.:-]{0,63}$")]

_WINDOW = re.compile(r"^([1-9][0-9]{0,6})([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _unique(values: list[Any], what: str) -> list[Any]:
    seen: set[Any] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{what} {value!r} is listed twice")
        seen.add(value)
    return values


class ClientPolicy(_Strict):
    client_id: Identifier
    auth: AuthMethod
    jwks: dict[str, Any] | None = None
    jwks_file: str | None = None
    secret_hash: Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")] | None = None
    scopes: list[Scope] = Field(min_length=1)

    @field_validator("scopes")
    @classmethod
    def _scopes_unique(cls, value: list[str]) -> list[str]:
        return _unique(value, "scope")

    @model_validator(mode="after")
    def _credentials_match_method(self) -> ClientPolicy:
        if self.auth == "private_key_jwt":
            if (self.jwks is None) == (self.jwks_file is None):
                raise ValueError("private_key_jwt needs exactly one of jwks or jwks_file")
            if self.secret_hash is not None:
                raise ValueError("secret_hash is only for client_secret_basic")
        else:
            if self.secret_hash is None:
                raise ValueError('client_secret_basic needs secret_hash: "sha256:<hex>"')
            if self.jwks is not None or self.jwks_file is not None:
                raise ValueError("jwks and jwks_file are only for private_key_jwt")
        return self


class PurposePolicy(_Strict):
    legal_basis: Annotated[str, StringConstraints(min_length=1, max_length=500)] | None = None
    consent: Literal["required", "not_required"]
    operations: list[PurposeOperation] = Field(min_length=1)
    claims: list[Claim] = []
    predicates: list[Predicate] = []
    attributes: list[Attribute] = []
    claim_details: bool = False
    fuzzy_threshold: Annotated[float, Field(ge=0, le=1)] | None = None
    max_consent_days: Annotated[int, Field(ge=1, le=3660)] = 365

    @field_validator("operations", "claims", "predicates", "attributes")
    @classmethod
    def _lists_unique(cls, value: list[str]) -> list[str]:
        return _unique(value, "entry")

    @model_validator(mode="after")
    def _basis_for_processing(self) -> PurposePolicy:
        if self.consent == "not_required" and not self.legal_basis:
            raise ValueError("consent: not_required needs a legal_basis")
        return self


class SubscriptionPolicy(_Strict):
    """A feed of life events to this administration (docs/contract.md §15): what it hears of, under which of its
    purposes, and the attributes its payloads may carry beyond `subject_ref` and the record's version."""

    purpose: PurposeName
    events: list[EventType] = Field(min_length=1)
    attributes: list[Attribute] = []
    endpoint: Annotated[str, StringConstraints(max_length=2000)] | None = None
    endpoint_internal: bool = False

    @field_validator("events", "attributes")
    @classmethod
    def _lists_unique(cls, value: list[str]) -> list[str]:
        return _unique(value, "entry")

    @field_validator("endpoint")
    @classmethod
    def _endpoint_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if (
            parts.scheme not in ("https", "http")
            or not parts.hostname
            or parts.username
            or parts.password
            or parts.fragment
            or any(c.isspace() or not c.isprintable() for c in value)
        ):
            raise ValueError("endpoint must be an absolute http(s) URL without credentials or fragment")
        try:
            parts.port  # noqa: B018 (raises on a port out of range)
            parts.hostname.encode("idna")
        except (ValueError, UnicodeError):
            raise ValueError("endpoint: not a valid host and port") from None
        return value

    @model_validator(mode="after")
    def _https_unless_internal(self) -> SubscriptionPolicy:
        if self.endpoint is not None and not self.endpoint_internal and not self.endpoint.startswith("https://"):
            raise ValueError("endpoint must be https (endpoint_internal: true allows http on an internal network)")
        return self


class RateLimitWindow(_Strict):
    name: Identifier
    limit: Annotated[int, Field(ge=1)]
    window: str

    @field_validator("window")
    @classmethod
    def _window_syntax(cls, value: str) -> str:
        if not _WINDOW.match(value):
            raise ValueError("window must be a count and a unit: 1s, 10m, 1h, 1d")
        return value

    @model_validator(mode="after")
    def _rate(self) -> RateLimitWindow:
        if self.limit > self.seconds * 1_000_000:
            raise ValueError("limit: at most 1000000 requests per second")
        return self

    @property
    def seconds(self) -> int:
        match = _WINDOW.match(self.window)
        assert match is not None
        return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


class AdministrationPolicy(_Strict):
    id: Identifier
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    sector: Annotated[str, StringConstraints(min_length=1, max_length=50)] | None = None
    clients: list[ClientPolicy] = []
    purposes: dict[PurposeName, PurposePolicy] = {}
    rate_limits: list[RateLimitWindow] = []
    # A consent channel's daily cap on reads of people's access histories (docs/contract.md §7); none: no cap.
    history_reads_per_day: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    # Records this administration's bulk jobs may check per UTC day (docs/contract.md §16); none: no cap.
    bulk_records_per_day: Annotated[int, Field(ge=1, le=1_000_000_000)] | None = None
    # Feeds of life events to this administration (docs/contract.md §15), by name.
    subscriptions: dict[Identifier, SubscriptionPolicy] = {}

    @property
    def scopes(self) -> frozenset[str]:
        """Every scope some client of this administration holds: the most an external token may carry."""
        return frozenset(scope for client in self.clients for scope in client.scopes)

    @model_validator(mode="after")
    def _names_unique(self) -> AdministrationPolicy:
        _unique([c.client_id for c in self.clients], "client_id")
        _unique([w.name for w in self.rate_limits], "rate limit")
        for name, subscription in self.subscriptions.items():
            purpose = self.purposes.get(subscription.purpose)
            if purpose is None:
                raise ValueError(f"subscription {name}: purpose {subscription.purpose!r} is not one of this policy's")
            if purpose.consent != "not_required":
                # A feed releases without the person asking: only a legal basis can allow it.
                raise ValueError(
                    f"subscription {name}: purpose {subscription.purpose!r} needs a legal basis "
                    "(consent: not_required): a feed is not released on a person's consent"
                )
        return self
