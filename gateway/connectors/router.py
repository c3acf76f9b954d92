"""Which connector serves which attribute (`GATEWAY_CONNECTORS_FILE`), and the fetch that asks each
connector a request needs, concurrently.

```yaml
connectors:
  - {name: register, type: embedded, attributes: [nin, family_name, …, record_status]}
  - {name: idp, type: idp, url: https://idp.example.ml/api,
     attributes: [displacement_status, displacement_site, idp_household_id]}
```

Every attribute is served by exactly one connector; exactly one connector is authoritative (it serves
`record_status`: when it has no record, the person is unknown); the others only lack those attributes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import yaml
from opentelemetry import trace
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.connectors.base import Connector, StandIn, TraceContext
from gateway.connectors.embedded import EmbeddedRegister
from gateway.connectors.fhir import FhirConnector
from gateway.connectors.resilience import CircuitBreaker, RemoteConnector, ResiliencePolicy
from gateway.connectors.rest import IDP_ATTRIBUTES, IDP_MAPPING, RestConnector
from gateway.errors import Problem
from gateway.observability import OffTracer
from gateway.policy.catalogue import ATTRIBUTES
from gateway.policy.model import Attribute
from gateway.telemetry import Metrics
from gateway.urls import SecureUrl


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Strict):
    connect_timeout_s: float = Field(1.0, gt=0, le=30)
    read_timeout_s: float = Field(2.0, gt=0, le=60)
    retries: int = Field(2, ge=0, le=5)
    max_concurrency: int = Field(32, ge=1, le=1000)
    failure_threshold: int = Field(5, ge=1)
    open_s: float = Field(10.0, gt=0)

    def policy(self) -> ResiliencePolicy:
        return ResiliencePolicy(**self.model_dump(include=set(Timeouts.model_fields)))


# A path under the connector's URL: it starts with one "/" and holds no "@", "?", "#" or "\\", so joined
# to the URL it can never name another host (`http://127.0.0.1` + `@registry.example/x`) or scheme.
RequestPath = Annotated[str, Field(pattern=r"^/([^/@?#\\\s][^@?#\\\s]*)?$", max_length=500)]


class EmbeddedConfig(_Strict):
    name: str = "register"
    type: Literal["embedded"]
    attributes: list[Attribute] = list(ATTRIBUTES)
    path: str | None = None  # default: <data dir>/register.db
    reads: Literal["thread", "inline"] = "inline"


class RestConfig(Timeouts):
    name: str
    type: Literal["rest"]
    url: SecureUrl
    path: RequestPath = "/"
    method: Literal["POST", "PUT"] = "POST"  # the NIN travels in the body, never in a URL
    attributes: list[Attribute]
    mapping: dict[Attribute, str] = {}
    nin_field: str = "nin"
    body: dict[str, Any] = {}
    result: str = ""
    not_found_status: list[int] = [404]


class IdpConfig(Timeouts):
    name: str = "idp"
    type: Literal["idp"]
    url: SecureUrl
    path: RequestPath = "/v1/persons/search"
    attributes: list[Attribute] = sorted(IDP_ATTRIBUTES)


class FhirConfig(Timeouts):
    name: str
    type: Literal["fhir"]
    url: SecureUrl
    identifier_system: str = "urn:ml:nina"
    attributes: list[Attribute]


ConnectorConfig = Annotated[EmbeddedConfig | RestConfig | IdpConfig | FhirConfig, Field(discriminator="type")]


class ConnectorsFile(_Strict):
    connectors: list[ConnectorConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _coverage(self) -> ConnectorsFile:
        owners: dict[str, str] = {}
        names = [c.name for c in self.connectors]
        if len(set(names)) != len(names):
            raise ValueError("connector names must be unique")
        for connector in self.connectors:
            for attribute in connector.attributes:
                if attribute in owners:
                    raise ValueError(f"{attribute} is served by both {owners[attribute]} and {connector.name}")
                owners[attribute] = connector.name
        missing = [a for a in ATTRIBUTES if a not in owners]
        if missing:
            raise ValueError(f"no connector serves {', '.join(missing)}")
        return self


MAX_PLANS = 1024  # sets of attributes whose routing is remembered (a handful in practice)
DEFAULT = ConnectorsFile(connectors=[EmbeddedConfig(type="embedded")])


def load_connectors_file(path: Path | None) -> ConnectorsFile:
    if path is None:
        return DEFAULT
    try:
        return ConnectorsFile.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not YAML ({exc})") from None
    except ValidationError as exc:
        faults = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{path}: {faults}") from None


def build_connectors(config: ConnectorsFile, data_dir: Path, client: httpx.AsyncClient) -> list[Connector]:
    made: list[Connector] = []
    for entry in config.connectors:
        attributes = frozenset(entry.attributes)
        authoritative = "record_status" in attributes
        if isinstance(entry, EmbeddedConfig):
            path = Path(entry.path) if entry.path else data_dir / "register.db"
            made.append(
                EmbeddedRegister(path, name=entry.name, attributes=attributes, inline_reads=entry.reads == "inline")
            )
        elif isinstance(entry, RestConfig):
            made.append(
                RestConnector(
                    name=entry.name,
                    url=entry.url,
                    path=entry.path,
                    attributes=attributes,
                    mapping=dict(entry.mapping),
                    nin_field=entry.nin_field,
                    body=entry.body,
                    result=entry.result,
                    not_found_status=tuple(entry.not_found_status),
                    authoritative=authoritative,
                    method=entry.method,
                    client=client,
                    policy=entry.policy(),
                )
            )
        elif isinstance(entry, IdpConfig):
            made.append(
                RestConnector(
                    name=entry.name,
                    url=entry.url,
                    path=entry.path,
                    attributes=attributes,
                    mapping=IDP_MAPPING,
                    authoritative=authoritative,
                    client=client,
                    policy=entry.policy(),
                )
            )
        else:
            made.append(
                FhirConnector(
                    name=entry.name,
                    url=entry.url,
                    identifier_system=entry.identifier_system,
                    attributes=attributes,
                    authoritative=authoritative,
                    client=client,
                    policy=entry.policy(),
                )
            )
    return made


_NO_ANSWER: Mapping[str, Any] = {}


class ConnectorRouter:
    def __init__(
        self, connectors: list[Connector], metrics: Metrics | None = None, tracer: trace.Tracer | None = None
    ) -> None:
        self.connectors = connectors
        self._metrics = metrics or Metrics()
        self._tracer = tracer or OffTracer()
        self._owner = {attribute: c for c in connectors for attribute in c.attributes}
        for connector in connectors:
            if isinstance(connector, RemoteConnector):
                self._metrics.connector_breaker_state.labels(connector.name).set_function(
                    lambda b=connector.breaker: CircuitBreaker.STATE_VALUES[b.state]
                )
        self._authority = next(c for c in connectors if c.authoritative)
        self._plans: dict[frozenset[str], list[tuple[Connector, frozenset[str]]]] = {}

    async def fetch(
        self, nin: str, attributes: frozenset[str], context: TraceContext | None = None
    ) -> dict[str, Any] | None:
        """The person's `attributes` (and record status), or None when the register has no such person.
        Each connector involved is asked once; several are asked concurrently."""
        ordered = self._plan(attributes)
        if len(ordered) == 1:  # the common case: no task to schedule
            connector, asked = ordered[0]
            answers = [await self._ask(connector, nin, asked, context)]
        else:
            answers = await asyncio.gather(*(self._ask(c, nin, a, context) for c, a in ordered))
        person: dict[str, Any] = {}
        unknown: Mapping[str, Any] | None = _NO_ANSWER  # the authority's answer when it knows nobody
        for (connector, asked), answer in zip(ordered, answers, strict=True):
            if answer is None or isinstance(answer, StandIn):
                if connector is self._authority:
                    unknown = answer  # a stand-in is merged like a record below: the same work
                elif answer is not None:
                    answer = _NO_ANSWER  # another connector's stand-in is no attribute of this person
            person.update({a: (answer or _NO_ANSWER).get(a) for a in asked})
        if unknown is _NO_ANSWER:
            return person
        return StandIn(person) if unknown is not None else None

    def _plan(self, attributes: frozenset[str]) -> list[tuple[Connector, frozenset[str]]]:
        """Which connector is asked for what (the record status always): worked out once per set of
        attributes, since purposes ask for few sets."""
        plan = self._plans.get(attributes)
        if plan is None:
            groups: dict[str, tuple[Connector, set[str]]] = {}
            for attribute in attributes | {"record_status"}:
                owner = self._owner[attribute]
                groups.setdefault(owner.name, (owner, set()))[1].add(attribute)
            plan = [(connector, frozenset(asked)) for connector, asked in groups.values()]
            if len(self._plans) < MAX_PLANS:
                self._plans[attributes] = plan
        return plan

    async def _ask(
        self, connector: Connector, nin: str, attributes: frozenset[str], context: TraceContext | None
    ) -> Mapping[str, Any] | None:
        started = time.perf_counter()
        outcome = "ok"
        with self._tracer.start_as_current_span(
            f"connector {connector.name}", attributes={"jamu.connector": connector.name}
        ):
            try:
                return await connector.fetch(nin, attributes, context)
            except Problem as exc:
                outcome = exc.code
                self._metrics.labelled(self._metrics.connector_errors, connector.name, exc.code).inc()
                raise
            finally:
                self._metrics.labelled(self._metrics.connector_duration, connector.name, outcome).observe(
                    time.perf_counter() - started
                )

    async def health(self) -> dict[str, bool]:
        results = await asyncio.gather(*(c.health() for c in self.connectors), return_exceptions=True)
        report = {c.name: r is True for c, r in zip(self.connectors, results, strict=True)}
        for name, up in report.items():
            self._metrics.connector_up.labels(name).set(1 if up else 0)
        return report

    async def close(self) -> None:
        for connector in self.connectors:
            await connector.close()
