"""The route guard as a FastAPI dependency (async: `def` dependencies run in a thread pool)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request

from gateway.audit.record import AccessRecord
from gateway.auth.bearer import Caller, insufficient_scope
from gateway.errors import Problem, invalid_at
from gateway.policy.catalogue import EventOperation
from gateway.request_context import RequestContext, current


def request_context(request: Request) -> RequestContext:
    """What the access middleware set for this request (`gateway.request_context`)."""
    context = current(request.scope)
    if context is None:  # a route reached without the access middleware: nothing may be served
        raise Problem("audit_unavailable", "this route is reached without the access middleware")
    return context


def access_record(request: Request) -> AccessRecord:
    return request_context(request).record


def idempotency_key(value: str | None) -> str:
    """The `Idempotency-Key` a creating request must carry (bulk jobs, declarations), or `400` naming it."""
    if value is None or not value.strip() or not value.isprintable():
        raise invalid_at(
            "/headers/Idempotency-Key", "an Idempotency-Key header is required (1 to 200 printable characters)"
        )
    return value


def protected(operation: EventOperation, scope: str | None) -> Callable[[Request], Awaitable[Caller]]:
    """The caller that admission authenticated (and limited, before routing), holding `scope`.

    A route behind this guard releases data, so it refuses to run for a request that admission did not
    see: one the access log would not record (`503 audit_unavailable`)."""

    async def guard(request: Request) -> Caller:
        context = request_context(request)
        context.record.operation = operation
        admission = context.admission
        if admission is None:
            raise Problem("audit_unavailable", "this route is reached on a path the access log does not record")
        caller = admission.caller
        if caller is None:
            raise admission.problem or Problem("invalid_token")
        if scope is not None and scope not in caller.scopes:  # None: any valid token
            raise insufficient_scope(scope)
        return caller

    return guard
