"""A configurable JSON-over-HTTP backend, and the IDP registry as a preset of it.

The NIN goes in the request body (never the URL); each attribute is read from the answer by a dotted
path; the answer is validated like every connector's before anything is used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, cast

import httpx
from pydantic import Field, ValidationError

from gateway.connectors.base import BackendError, BuildContext, Connector, PersonRecord, TraceContext
from gateway.connectors.resilience import RemoteConnector, RemoteSettings, ResiliencePolicy, Resilient, traceparent
from gateway.policy.catalogue import Attribute
from gateway.urls import SecureUrl

MISSING = object()


def dig(document: Any, path: str) -> Any:
    """`a.b.c` into nested objects; MISSING where a step is absent."""
    for step in path.split(".") if path else ():
        if not isinstance(document, dict) or step not in document:
            return MISSING
        document = document[step]
    return document


def plant(path: str, value: Any, into: dict[str, Any]) -> dict[str, Any]:
    """Set `a.b.c` in a nested object, creating the levels."""
    *parents, leaf = path.split(".")
    node = into
    for step in parents:
        node = node.setdefault(step, {})
    node[leaf] = value
    return into


def validated(connector: str, nin: str, values: Mapping[str, Any], asked: frozenset[str]) -> dict[str, Any]:
    """Check a backend's values like any record; answer exactly the asked attributes it serves."""
    try:
        record = PersonRecord.model_validate({**values, "nin": nin})
    except ValidationError as exc:
        fields = sorted({str(e["loc"][0]) for e in exc.errors() if e["loc"]})
        raise BackendError(connector, f"invalid {', '.join(fields) or 'record'}") from None
    return record.model_dump(include=set(values) | ({"nin"} & asked))


class RestConnector(RemoteConnector):
    def __init__(
        self,
        *,
        name: str,
        url: str,
        path: str,
        attributes: frozenset[str],
        mapping: dict[str, str],
        nin_field: str = "nin",
        body: dict[str, Any] | None = None,
        result: str = "",
        not_found_status: tuple[int, ...] = (404,),
        authoritative: bool = True,
        method: str = "POST",
        client: httpx.AsyncClient,
        policy: ResiliencePolicy,
    ) -> None:
        self.name = name
        self.attributes = attributes
        self.authoritative = authoritative
        self._url = url.rstrip("/") + path
        self._method = method
        self._mapping = mapping
        self._nin_field = nin_field
        self._body = body or {}
        self._result = result
        self._not_found = not_found_status
        self._http = Resilient(name, client, policy)
        self._health_url = url.rstrip("/") + "/"

    async def fetch(
        self, nin: str, attributes: frozenset[str], trace: TraceContext | None = None
    ) -> Mapping[str, Any] | None:
        body = plant(self._nin_field, nin, dict(self._body))
        headers = {"Accept": "application/json", **traceparent(trace)}

        async def attempt(client: httpx.AsyncClient, limits: httpx.Timeout) -> httpx.Response:
            return await client.request(self._method, self._url, json=body, headers=headers, timeout=limits)

        def parse(response: httpx.Response) -> dict[str, Any] | None:
            if response.status_code in self._not_found:
                return None
            if response.status_code != 200:
                raise BackendError(self.name, f"status {response.status_code}")
            try:
                document = response.json()
            except ValueError:
                raise BackendError(self.name, "not JSON") from None
            person = dig(document, self._result)
            if person is None:
                return None
            if not isinstance(person, dict):
                raise BackendError(self.name, "no person object")
            values = {}
            for attribute in attributes & self.attributes - {"nin"}:
                value = dig(person, self._mapping.get(attribute, attribute))
                values[attribute] = None if value is MISSING else value
            return validated(self.name, nin, values, attributes)

        return await self._http.call(attempt, parse)


IDP_MAPPING = {"displacement_status": "status", "displacement_site": "site", "idp_household_id": "household_id"}
IDP_ATTRIBUTES = frozenset(IDP_MAPPING)


# A path under the connector's URL: it starts with one "/" and holds no "@", "?", "#" or "\\", so joined
# to the URL it can never name another host (`http://127.0.0.1` + `@registry.example/x`) or scheme.
RequestPath = Annotated[str, Field(pattern=r"^/([^/@?#\\\s][^@?#\\\s]*)?$", max_length=500)]


class RestConfig(RemoteSettings):
    """`type: rest`: any JSON API, its fields mapped onto the catalogue's attributes."""

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

    def build(self, built: BuildContext) -> Connector:
        return RestConnector(
            name=self.name,
            url=self.url,
            path=self.path,
            attributes=frozenset(self.attributes),
            mapping={attribute: field for attribute, field in self.mapping.items()},
            nin_field=self.nin_field,
            body=self.body,
            result=self.result,
            not_found_status=tuple(self.not_found_status),
            authoritative="record_status" in self.attributes,
            method=self.method,
            client=built.client,
            policy=self.policy(),
        )


class IdpConfig(RemoteSettings):
    """`type: idp`: the displaced-persons registry's API, whose mapping is known."""

    name: str = "idp"
    type: Literal["idp"]
    url: SecureUrl
    path: RequestPath = "/v1/persons/search"
    attributes: list[Attribute] = sorted(cast("frozenset[Attribute]", IDP_ATTRIBUTES))

    def build(self, built: BuildContext) -> Connector:
        return RestConnector(
            name=self.name,
            url=self.url,
            path=self.path,
            attributes=frozenset(self.attributes),
            mapping=IDP_MAPPING,
            authoritative="record_status" in self.attributes,
            client=built.client,
            policy=self.policy(),
        )
