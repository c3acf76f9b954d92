"""The outermost request stage: transaction id, body limit, last-resort error handling, and the hand-off
of the request's AccessRecord to the one access-log writer before the response leaves.

Pure ASGI rather than BaseHTTPMiddleware: it must hold the response start until the event is durable,
and it costs less on the hot path.
"""

from __future__ import annotations

import logging
import re
import secrets
import time

from opentelemetry import trace
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.audit.log import AccessLog
from gateway.audit.record import AccessRecord
from gateway.errors import Problem, send_problem
from gateway.observability import request_trace_id
from gateway.telemetry import Metrics

log = logging.getLogger(__name__)

_TRACEPARENT = re.compile(rb"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
_OPERATIONS = frozenset({
    "token", "verify", "lookup", "consent.create", "consent.read", "consent.revoke",
    "audit.search", "audit.integrity", "subject.history",
})


class BodyTooLarge(HTTPException):
    """Raised from `receive` so the framework passes it through untouched (it re-raises HTTPException)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body exceeds {limit} bytes")


def is_logged(path: str) -> bool:
    """CONTRACT §7: every /v1/* and /oauth2/token request appends one event."""
    return path.startswith("/v1/") or path == "/oauth2/token"


def _trace_id(scope: Scope) -> str:
    context = trace.get_current_span().get_span_context()
    if context.is_valid:  # tracing on: the server span's trace, which honoured traceparent already
        return format(context.trace_id, "032x")
    for name, value in scope["headers"]:
        if name == b"traceparent":
            match = _TRACEPARENT.match(value.strip())
            if match and match.group(1) != b"0" * 32:
                return match.group(1).decode()
            break
    return secrets.token_hex(16)


class AccessMiddleware:
    def __init__(self, app: ASGIApp, *, access_log: AccessLog, metrics: Metrics, max_body_bytes: int,
                 problem_base: str, tracer: trace.Tracer) -> None:
        self.app = app
        self.tracer = tracer
        self.access_log = access_log
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.problem_base = problem_base

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        logged = is_logged(path)
        record = AccessRecord(trace_id=_trace_id(scope))
        request_trace_id.set(record.trace_id)
        scope.setdefault("state", {})["access_record"] = record
        started = time.perf_counter()
        response_started = False
        withheld = False
        limit = self.max_body_bytes

        async def send_wrapper(message: Message) -> None:
            nonlocal response_started, withheld
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                if logged:
                    if record.operation is None:
                        route = scope.get("route")
                        name = getattr(route, "name", None)
                        record.operation = name if name in _OPERATIONS else None
                    record.finish(status)
                    if not await self._append(record) and status < 400:
                        # Nothing is released without its trace: the answer becomes 503.
                        withheld = True
                        await send_problem(send, Problem("audit_unavailable"), record.id, self.problem_base)
                        self._observe(scope, 503, started)
                        return
                    self.metrics.labelled(self.metrics.decisions, record.administration or "",
                                          record.operation or "", record.decision or "").inc()
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                headers += scope["state"].get("rate_limit_headers", ())
                if logged and not any(k == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
                self._observe(scope, status, started)
            elif withheld:
                return
            await send(message)

        content_length = _content_length(scope)
        if content_length is not None and content_length > limit:
            record.reason = "invalid_request"
            await send_problem(send_wrapper, Problem(
                "invalid_request", f"the request body exceeds {limit} bytes", status=413), record.id,
                self.problem_base)
            return

        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        try:
            await self.app(scope, receive_limited, send_wrapper)
        except Exception:
            log.exception("unhandled error in %s %s (transaction %s)", scope["method"], path, record.id)
            if response_started:
                return  # the status is gone; the server closes the connection
            record.reason = "internal_error"
            await send_problem(send_wrapper, Problem("internal_error", "an unexpected error occurred"),
                               record.id, self.problem_base)

    async def _append(self, record: AccessRecord) -> bool:
        started = time.perf_counter()
        try:
            with self.tracer.start_as_current_span("access_log.append"):
                await self.access_log.append(record)
        except Exception:
            log.exception("access log append failed (transaction %s)", record.id)
            self.metrics.access_log_failures.inc()
            return False
        self.metrics.access_log_append.observe(time.perf_counter() - started)
        return True

    def _observe(self, scope: Scope, status: int, started: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        self.metrics.labelled(self.metrics.request_duration, scope["method"], template, str(status)).observe(
            time.perf_counter() - started)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
