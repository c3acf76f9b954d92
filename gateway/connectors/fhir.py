"""A FHIR R4 server holding people as `Patient` resources.

`POST [base]/Patient/_search` with the identifier in the form body (the NIN stays out of URLs), the
Bundle validated with fhir.resources (its R4B models: `Patient` and `Bundle` are the same as R4's for
every element read here), then mapped:

| attribute | from |
|---|---|
| family_name, given_names | the `official` name (else the first): `family`, `given` joined by spaces |
| sex | `gender` male → M, female → F (other, unknown → null) |
| birth_date | `birthDate`, with its precision (`1975`, `1975-03`, `1975-03-02`) |
| birth_place | extension `patient-birthPlace` → `valueAddress.city` |
| residence_region / _cercle / _commune | first `home` address (else the first): `state` / `district` / `city` |
| death_date, record_status | `deceasedDateTime` (its date) or `deceasedBoolean`; `active: false` → suspended |
| nationality | extension `patient-nationality` → code of `code.coding[0]` |
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import httpx
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.patient import Patient
from pydantic import ValidationError

from gateway.connectors.base import BackendError, BuildContext, Connector, TraceContext
from gateway.connectors.resilience import RemoteConnector, RemoteSettings, ResiliencePolicy, Resilient, traceparent
from gateway.connectors.rest import validated
from gateway.policy.catalogue import Attribute
from gateway.urls import SecureUrl

BIRTH_PLACE = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"
NATIONALITY = "http://hl7.org/fhir/StructureDefinition/patient-nationality"
FHIR_ATTRIBUTES = frozenset(
    {
        "nin",
        "family_name",
        "given_names",
        "sex",
        "birth_date",
        "birth_place",
        "nationality",
        "residence_region",
        "residence_cercle",
        "residence_commune",
        "death_date",
        "record_status",
    }
)


def _extension(patient: Patient, url: str) -> Any:
    for extension in patient.extension or ():
        if extension.url == url:
            return extension
    return None


def patient_attributes(patient: Patient) -> dict[str, Any]:
    names = patient.name or []
    name = next((n for n in names if n.use == "official"), names[0] if names else None)
    addresses = patient.address or []
    address = next((a for a in addresses if a.use == "home"), addresses[0] if addresses else None)
    birth_place = _extension(patient, BIRTH_PLACE)
    nationality = None
    held = _extension(patient, NATIONALITY)
    for extension in (held.extension if held is not None else None) or ():
        if extension.url == "code" and extension.valueCodeableConcept and extension.valueCodeableConcept.coding:
            nationality = extension.valueCodeableConcept.coding[0].code
    death_date = None
    if patient.deceasedDateTime is not None:
        death_date = str(patient.deceasedDateTime)[:10]
    deceased = bool(patient.deceasedBoolean) or death_date is not None
    status = "deceased" if deceased else "suspended" if patient.active is False else "active"
    return {
        "family_name": name.family if name else None,
        "given_names": (" ".join(g for g in name.given if g) or None) if name and name.given else None,
        "sex": {"male": "M", "female": "F"}.get(patient.gender or ""),
        "birth_date": str(patient.birthDate) if patient.birthDate is not None else None,
        "birth_place": birth_place.valueAddress.city if birth_place and birth_place.valueAddress else None,
        "nationality": nationality,
        "residence_region": address.state if address else None,
        "residence_cercle": address.district if address else None,
        "residence_commune": address.city if address else None,
        "death_date": death_date,
        "record_status": status,
    }


class FhirConnector(RemoteConnector):
    def __init__(
        self,
        *,
        name: str,
        url: str,
        identifier_system: str,
        attributes: frozenset[str],
        authoritative: bool = True,
        client: httpx.AsyncClient,
        policy: ResiliencePolicy,
    ) -> None:
        self.name = name
        self.attributes = attributes
        self.authoritative = authoritative
        self._url = url.rstrip("/") + "/Patient/_search"
        self._system = identifier_system
        self._http = Resilient(name, client, policy)

    async def fetch(
        self, nin: str, attributes: frozenset[str], trace: TraceContext | None = None
    ) -> Mapping[str, Any] | None:
        form = {"identifier": f"{self._system}|{nin}"}
        headers = {"Accept": "application/fhir+json", **traceparent(trace)}

        async def attempt(client: httpx.AsyncClient, limits: httpx.Timeout) -> httpx.Response:
            return await client.post(self._url, data=form, headers=headers, timeout=limits)

        def parse(response: httpx.Response) -> dict[str, Any] | None:
            if response.status_code == 404:
                return None
            if response.status_code != 200:
                raise BackendError(self.name, f"status {response.status_code}")
            try:
                bundle = Bundle.model_validate_json(response.content)
            except (ValidationError, ValueError):
                raise BackendError(self.name, "not a FHIR Bundle") from None
            patients = [
                e.resource
                for e in bundle.entry or ()
                if isinstance(e.resource, Patient) and (e.search is None or e.search.mode in (None, "match"))
            ]
            if not patients:
                return None
            if len(patients) > 1:
                raise BackendError(self.name, "several patients carry this identifier")
            mapped = patient_attributes(patients[0])
            return validated(self.name, nin, {a: mapped[a] for a in attributes & self.attributes - {"nin"}}, attributes)

        return await self._http.call(attempt, parse)


class FhirConfig(RemoteSettings):
    """`type: fhir`: a FHIR R4B server's `Patient` search by identifier."""

    name: str
    type: Literal["fhir"]
    url: SecureUrl
    identifier_system: str = "urn:ml:nina"
    attributes: list[Attribute]

    def build(self, built: BuildContext) -> Connector:
        return FhirConnector(
            name=self.name,
            url=self.url,
            identifier_system=self.identifier_system,
            attributes=frozenset(self.attributes),
            authoritative="record_status" in self.attributes,
            client=built.client,
            policy=self.policy(),
        )
