"""The gateway as served in end-to-end tests, plus probe routes that stand for protected operations.

Built through `create_app` like production; the probes only add routes that exercise the bearer check,
validation and the access record, and a read-out of what the (stub) access log holds.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.deps import access_record, protected
from gateway.app import Replacements, create_app
from gateway.audit.log import AccessLog, StubAccessLog
from gateway.auth.bearer import Caller
from gateway.ratelimit.limiter import Limiter
from gateway.services import services
from gateway.settings import Settings


class PersonBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    nin: str = Field(max_length=64)
    purpose: str = Field("voter_roll", max_length=100)


class ProbeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=100)
    count: int


def create_durable() -> Any:
    """The probes over the gateway's own durable access log (what production runs)."""
    return create(durable=True)


def create(
    settings: Settings | None = None,
    access_log: AccessLog | None = None,
    *,
    durable: bool = False,
    limiter: Limiter | None = None,
) -> Any:
    access_log = None if durable else access_log or StubAccessLog()
    app = create_app(settings or Settings(), replace=Replacements(access_log=access_log, limiter=limiter))
    calls = {"verify": 0, "lookup": 0}

    @app.get("/v1/probe/verify", name="verify")
    async def probe_verify(
        request: Request, caller: Annotated[Caller, Depends(protected("verify", "identity:verify"))]
    ) -> dict[str, Any]:
        calls["verify"] += 1
        return {
            "transaction_id": access_record(request).id,
            "administration": caller.administration,
            "client_id": caller.client_id,
            "scopes": sorted(caller.scopes),
        }

    @app.post("/v1/probe/lookup", name="lookup")
    async def probe_lookup(
        request: Request,
        body: ProbeBody,
        caller: Annotated[Caller, Depends(protected("lookup", "identity:lookup"))],
    ) -> dict[str, Any]:
        calls["lookup"] += 1
        return {"transaction_id": access_record(request).id, "name": body.name}

    @app.post("/v1/probe/person", name="verify")
    async def probe_person(
        request: Request,
        body: PersonBody,
        caller: Annotated[Caller, Depends(protected("verify", "identity:verify"))],
    ) -> dict[str, Any]:
        """Stands for an operation on one person: records their pseudonym and what was released."""
        record = access_record(request)
        record.subject_hash = services(request).subjects(body.nin)
        record.purpose = body.purpose
        record.attributes_requested = ["family_name"]
        record.attributes_released = ["family_name"]
        record.releases_data = True
        return {"transaction_id": record.id, "match": True}

    @app.get("/v1/probe/crash", name="verify")
    async def probe_crash() -> dict[str, Any]:
        raise RuntimeError("a secret stack detail 120394857602914")

    @app.get("/test-state")
    async def state() -> dict[str, Any]:
        events = list(access_log.events) if isinstance(access_log, StubAccessLog) else []
        return {"calls": calls, "events": events}

    return app
