"""The authentication stage as a FastAPI dependency (async: `def` dependencies run in a thread pool)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request

from gateway.audit.record import AccessRecord
from gateway.auth.bearer import Caller, insufficient_scope
from gateway.services import services


def access_record(request: Request) -> AccessRecord:
    return request.state.access_record


def protected(operation: str, scope: str) -> Callable[[Request], Awaitable[Caller]]:
    """Authenticate the bearer token, note the caller on the access record, demand `scope`."""

    async def guard(request: Request) -> Caller:
        record = access_record(request)
        record.operation = operation
        caller = await services(request).bearer.authenticate(request.headers.get("authorization"))
        record.administration = caller.administration
        record.client_id = caller.client_id
        if scope not in caller.scopes:
            raise insufficient_scope(scope)
        return caller

    return guard
