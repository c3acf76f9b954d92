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
import functools
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import httpx
import yaml
from opentelemetry import trace
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.connectors.base import BuildContext, Connector, StandIn, TraceContext
from gateway.connectors.embedded import EmbeddedConfig
from gateway.connectors.fhir import FhirConfig
from gateway.connectors.resilience import CircuitBreaker, RemoteConnector
from gateway.connectors.rest import IdpConfig, RestConfig
from gateway.errors import Problem
from gateway.metrics import Metrics
from gateway.observability import OffTracer
from gateway.policy.catalogue import ATTRIBUTES

# The table of connector types: each module owns its configuration entry and how it builds itself
# (`ConnectorSettings.build`). A new type is a module with such a subclass and one more member here.
ConnectorConfig = Annotated[EmbeddedConfig | RestConfig | IdpConfig | FhirConfig, Field(discriminator="type")]


class ConnectorsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

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
    context = BuildContext(data_dir, client)
    return [entry.build(context) for entry in config.connectors]


_NO_ANSWER: Mapping[str, Any] = {}


def _breaker_value(breaker: CircuitBreaker) -> float:
    return CircuitBreaker.STATE_VALUES[breaker.state]


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
                    functools.partial(_breaker_value, connector.breaker)
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
