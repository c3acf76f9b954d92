"""What the access middleware hands a request's route, typed: the request's `AccessRecord` and, on a path
the access log records, its `Admission` (the caller, or why there is none, and the limit applied with its
header fields). Set by the middleware for the request's own task and reset when the request ends, so
nothing of one request is seen by another."""

from __future__ import annotations

from contextvars import ContextVar, Token
from dataclasses import dataclass

from gateway.audit.record import AccessRecord
from gateway.ratelimit.admission import Admission


@dataclass(slots=True)
class RequestContext:
    record: AccessRecord
    admission: Admission | None  # None: a path the access log does not record (no route there releases data)


_current: ContextVar[RequestContext | None] = ContextVar("jamu_request", default=None)


def enter(context: RequestContext) -> Token[RequestContext | None]:
    return _current.set(context)


def leave(token: Token[RequestContext | None]) -> None:
    _current.reset(token)


def current() -> RequestContext | None:
    """The running request's context; None outside the access middleware (a test calling a route's
    function directly)."""
    return _current.get()
