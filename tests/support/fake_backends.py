"""Remote register backends served on loopback for connector tests: a plain REST service, an IDP
registry and a FHIR R4 server, holding the same people, each switchable to slow, failing or malformed."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.servers import ThreadedServer


def fhir_patient(person: Mapping[str, Any]) -> dict[str, Any]:
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:ml:nina", "value": person["nin"]}],
        "active": person["record_status"] != "suspended",
        "name": [{"use": "official", "family": person["family_name"], "given": person["given_names"].split()}],
        "gender": {"F": "female", "M": "male"}[person["sex"]],
        "birthDate": person["birth_date"],
        "address": [
            {
                "use": "home",
                "state": person["residence_region"],
                "district": person["residence_cercle"],
                "city": person["residence_commune"],
            }
        ],
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                "valueAddress": {"city": person["birth_place"]},
            },
            {
                "url": "http://hl7.org/fhir/StructureDefinition/patient-nationality",
                "extension": [{"url": "code", "valueCodeableConcept": {"coding": [{"code": person["nationality"]}]}}],
            },
        ],
    }
    if person["death_date"]:
        patient["deceasedDateTime"] = person["death_date"]
    return patient


class FakeBackends:
    def __init__(self, people: list[dict[str, Any]]) -> None:
        self.people = {p["nin"]: p for p in people}
        self.mode = "ok"  # ok | slow | fail | malformed
        self.requests: list[dict[str, Any]] = []

        async def trouble() -> Response | None:
            if self.mode == "slow":
                await asyncio.sleep(5)
            if self.mode == "fail":
                return JSONResponse({"error": "boom"}, status_code=500)
            if self.mode == "malformed":
                return Response(b'{"person": {"family_name": 42, "sex": "X"', media_type="application/json")
            return None

        async def note(request: Request) -> bytes:
            body = await request.body()
            self.requests.append({"url": str(request.url), "headers": dict(request.headers), "body": body})
            return body

        async def rest(request: Request) -> Response:
            await note(request)
            problem = await trouble()
            if problem is not None:
                return problem
            nin = (await request.json())["query"]["nin"]
            person = self.people.get(nin)
            if person is None:
                return JSONResponse({"error": "unknown"}, status_code=404)
            return JSONResponse(
                {
                    "person": {
                        k: v for k, v in person.items() if not k.startswith("displacement") and k != "idp_household_id"
                    }
                }
            )

        async def idp(request: Request) -> Response:
            await note(request)
            problem = await trouble()
            if problem is not None:
                return problem
            person = self.people.get((await request.json())["nin"])
            if person is None or person["displacement_status"] is None:
                return JSONResponse({"error": "not registered"}, status_code=404)
            return JSONResponse(
                {
                    "status": person["displacement_status"],
                    "site": person["displacement_site"],
                    "household_id": person["idp_household_id"],
                }
            )

        async def fhir(request: Request) -> Response:
            body = await note(request)
            problem = await trouble()
            if problem is not None:
                return problem
            form = parse_qs(body.decode())
            _, _, nin = form.get("identifier", [""])[0].partition("|")
            person = self.people.get(nin)
            entries = [] if person is None else [{"resource": fhir_patient(person), "search": {"mode": "match"}}]
            return JSONResponse(
                {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries},
                media_type="application/fhir+json",
            )

        app = Starlette(
            routes=[
                Route("/people/search", rest, methods=["POST"]),
                Route("/v1/persons/search", idp, methods=["POST"]),
                Route("/fhir/Patient/_search", fhir, methods=["POST"]),
            ]
        )
        self.server = ThreadedServer(app, "fake backends")
        self.base = self.server.base

    def start(self) -> FakeBackends:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def connectors_file(self, **timeouts: Any) -> dict[str, Any]:
        """A connectors file: the register over REST, displacement from the IDP registry."""
        register = [a for a in REST_ATTRIBUTES]
        return {
            "connectors": [
                {
                    "name": "register",
                    "type": "rest",
                    "url": self.base,
                    "path": "/people/search",
                    "nin_field": "query.nin",
                    "result": "person",
                    "attributes": register,
                    **timeouts,
                },
                {"name": "idp", "type": "idp", "url": self.base, **timeouts},
            ]
        }


REST_ATTRIBUTES = (
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
)
