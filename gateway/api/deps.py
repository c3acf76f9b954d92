"""The authentication stage as a FastAPI dependency (async: `def` dependencies run in a thread pool)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request

from gateway.audit.record import AccessRecord
from gateway.auth.bearer import Caller, insufficient_scope
from gateway.errors import Problem
from gateway.services import services


def access_record(request: Request) -> AccessRecord:
    return request.scope["state"]["access_record"]  # set by the middleware; no State wrapper per call


def protected(operation: str, scope: str) -> Callable[[Request], Awaitable[Caller]]:
    """Authenticate the bearer token, note the caller, apply its rate limits, demand `scope`."""

    async def guard(request: Request) -> Caller:
        record = access_record(request)
        record.operation = operation
        app = services(request)
        try:
            with app.tracer.start_as_current_span("authenticate"):
                caller = await app.bearer.authenticate(request.headers.get("authorization"))
        except Problem:
            # Unauthenticated callers are limited per address: guessing tokens is not free.
            with app.tracer.start_as_current_span("rate_limit"):
                await app.rate_limits.source(request.state, request.client.host if request.client else None)
            raise
        record.administration = caller.administration
        record.client_id = caller.client_id
        with app.tracer.start_as_current_span("rate_limit", attributes={"jamu.administration": caller.administration}):
            await app.rate_limits.administration(request.state, caller.administration)
        if scope not in caller.scopes:
            raise insufficient_scope(scope)
        return caller

    return guard
