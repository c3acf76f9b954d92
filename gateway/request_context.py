"""What the access middleware hands a request's route, typed: the request's `AccessRecord` and, on a path
the access log records, its `Admission` (the caller, or why there is none, and the limit applied with its
header fields). Set by the middleware for the request's own task and reset when the request ends, so
nothing of one request is seen by another."""

from __future__ import annotations

from contextvars import ContextVar, Token
from dataclasses import dataclass

from starlette.types import Scope

from gateway.audit.record import AccessRecord
from gateway.ratelimit.admission import Admission


@dataclass(slots=True)
class RequestContext:
    record: AccessRecord
    admission: Admission | None  # None: a path the access log does not record (no route there releases data)
    scope: Scope  # the request's own: a task started inside another request's send inherits that one's


_current: ContextVar[RequestContext | None] = ContextVar("jamu_request", default=None)


def enter(context: RequestContext) -> Token[RequestContext | None]:
    return _current.set(context)


def leave(token: Token[RequestContext | None]) -> None:
    _current.reset(token)


def current(scope: Scope) -> RequestContext | None:
    """The context of the request whose `scope` this is; None outside the access middleware (a route's
    function called directly) or when the context in reach is another request's (uvicorn starts a
    pipelined request's task from inside the previous one's response)."""
    context = _current.get()
    return context if context is not None and context.scope is scope else None
