"""The connector protocol and the person record every connector answers with."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.errors import Problem
from gateway.identity.dates import PartialDate
from gateway.identity.pseudonyms import NIN_PATTERN, normalise_nin
from gateway.policy.catalogue import ATTRIBUTES

Text = Field(default=None, max_length=200)


class StandIn(dict[str, Any]):
    """Another person's attributes, read in place of an unknown person's so that an unknown NIN costs what a
    known one does. A connector may answer one instead of None; it means "no such person" everywhere: it is
    never released and never matched as the person asked."""


def unusable(person: Mapping[str, Any] | None) -> str | None:
    """Why a connector's answer is no usable record of the person asked (`subject_not_found`: nobody or a
    stand-in; `subject_suspended`), or None when it is. Unknown and suspended answer alike; the access log
    keeps which."""
    if person is None or isinstance(person, StandIn):
        return "subject_not_found"
    if person.get("record_status") == "suspended":
        return "subject_suspended"
    return None


class PersonRecord(BaseModel):
    """One person as a backend reports them; every connector's answer is checked against this."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    nin: str
    family_name: str | None = Text
    given_names: str | None = Text
    sex: Literal["F", "M"] | None = None
    birth_date: str | None = None
    birth_place: str | None = Text
    father_name: str | None = Text
    mother_name: str | None = Text
    nationality: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")
    residence_region: str | None = Text
    residence_cercle: str | None = Text
    residence_commune: str | None = Text
    death_date: str | None = None
    record_status: Literal["active", "deceased", "suspended"] | None = None
    displacement_status: Literal["displaced", "returned"] | None = None
    displacement_site: str | None = Text
    idp_household_id: str | None = Field(default=None, max_length=64)

    @field_validator("nin")
    @classmethod
    def _nin(cls, value: str) -> str:
        value = normalise_nin(value)
        if not NIN_PATTERN.match(value):
            raise ValueError("not a NIN: 6 to 32 digits or capital letters")
        return value

    @field_validator("birth_date", "death_date")
    @classmethod
    def _date(cls, value: str | None) -> str | None:
        return None if value is None else str(PartialDate.parse(value))


assert set(PersonRecord.model_fields) == set(ATTRIBUTES)


class BackendUnavailable(Problem):
    def __init__(self, connector: str, why: str) -> None:
        super().__init__("backend_unavailable", f"the {connector} backend is unavailable ({why})")


class BackendError(Problem):
    def __init__(self, connector: str, why: str) -> None:
        super().__init__("backend_error", f"the {connector} backend gave an unusable answer ({why})")


@dataclass(frozen=True)
class TraceContext:
    """W3C trace context to pass on: the request's trace id; each outgoing call gets its own span id."""

    trace_id: str
    sampled: bool = False


class Connector(Protocol):
    name: str
    attributes: frozenset[str]
    authoritative: bool  # True: "no record" means the person is unknown; False: only these attributes are

    async def fetch(
        self, nin: str, attributes: frozenset[str], trace: TraceContext | None = None
    ) -> Mapping[str, Any] | None: ...

    async def health(self) -> bool: ...

    async def close(self) -> None: ...


class ConnectorSettings(BaseModel):
    """One entry of `GATEWAY_CONNECTORS_FILE`. Each connector type's module declares its own subclass,
    with a `type` literal and `build`; the router's `ConnectorConfig` union is the table of them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    attributes: list[Any]

    def build(self, built: BuildContext) -> Connector:
        raise NotImplementedError


@dataclass(frozen=True)
class BuildContext:
    """What a connector may need from the gateway to build itself."""

    data_dir: Path
    client: httpx.AsyncClient
