"""The access middleware: every request passes its stages in this order, each a method of its own.

1. **Path**: the route path, without any prefix (`route_path`; `RootPath` strips `GATEWAY_ROOT_PATH`
   before this), decides whether the request is logged (`is_logged`), never the raw path, so no mount
   point takes a request around the log.
2. **Admission** (`_admit`, logged paths only): who calls (bearer token) and under which limit, before
   routing or reading the body. Refused without a caller: counted, answered at once.
3. **Record** (`_record`): the request's `AccessRecord` and its `RequestContext`
   (`gateway.request_context`), which the route reads; an authenticated caller over its limit is answered
   here, logged as usual.
4. **Body limit** (`BodyLimit`): declared or streamed, past `max_body_bytes` (or its path's own limit).
5. **Last resort** (`_run_route`): an exception a route lets out becomes `500 internal_error`.
6. **Durable append** (`_logged`): the record goes to the one access-log writer before the response's
   first byte (`_append`); an answer that would release something without its event becomes `503`;
   the others carry `no-store` and their event's place in the log (`_logged_headers`).

Routes that release data also refuse to run without the admission stage 2 gives only to logged
requests (`gateway.api.deps.protected`). Pure ASGI rather than BaseHTTPMiddleware: it must hold the
response start until the event is durable, and it costs less on the hot path.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Sequence

from opentelemetry import trace
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.audit.log import AccessLog
from gateway.audit.record import AccessRecord
from gateway.audit.refusals import RefusalTally
from gateway.errors import Problem, send_problem
from gateway.metrics import Metrics
from gateway.observability import request_trace_id
from gateway.policy.catalogue import EventOperation, is_event_operation
from gateway.ratelimit.admission import Admission, Admitter, Network, client_address, source_address
from gateway.request_context import RequestContext, enter, leave

log = logging.getLogger(__name__)

_TRACEPARENT = re.compile(rb"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
TOKEN_PATH = "/oauth2/token"  # noqa: S105 (a path, not a secret)
_STANDARD_HEADERS = ((b"x-content-type-options", b"nosniff"),)


class BodyTooLarge(HTTPException):
    """Raised from `receive` so the framework passes it through untouched (it re-raises HTTPException)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body exceeds {limit} bytes")


def is_logged(route_path: str) -> bool:
    """docs/contract.md §7: every /v1/* and /oauth2/token request appends one event."""
    return route_path.startswith("/v1/") or route_path == TOKEN_PATH


def route_path(scope: Scope) -> str:
    """The path routes are matched on: without the `root_path` prefix when the path carries it (the
    rule Starlette's router applies)."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :]
    return path


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


def _header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope["headers"]:
        if name == wanted:
            return bytes(value).decode("latin-1")
    return None


class RootPath:
    """`GATEWAY_ROOT_PATH`: a path that carries the prefix is answered without it (on top of any
    `root_path` the server was given), one that a proxy already stripped as it is."""

    def __init__(self, app: ASGIApp, *, root_path: str) -> None:
        self.app = app
        self.root_path = root_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = route_path(scope)
            if path == self.root_path or path.startswith(self.root_path + "/"):
                scope["root_path"] = scope.get("root_path", "") + self.root_path
        await self.app(scope, receive, send)


class BodyLimit:
    """Stage 4: the body's size, declared (`Content-Length`) or as it streams in. Only a body past
    `max_body_bytes` asks whether its path takes more (uploads), so the common request pays nothing."""

    def __init__(self, max_body_bytes: int, by_path: Sequence[tuple[re.Pattern[str], int]]) -> None:
        self.max_body_bytes = max_body_bytes
        self.by_path = by_path

    def limit(self, scope: Scope) -> int:
        path = route_path(scope)
        for pattern, limit in self.by_path:
            if pattern.match(path):
                return limit
        return self.max_body_bytes

    def refusal(self, scope: Scope) -> Problem | None:
        """The answer to a body declared too large, before any of it is read."""
        declared = _content_length(scope)
        if declared is None or declared <= self.max_body_bytes:
            return None
        limit = self.limit(scope)
        return (
            Problem("invalid_request", f"the request body exceeds {limit} bytes", status=413)
            if declared > limit
            else None
        )

    def receive(self, scope: Scope, receive: Receive) -> Receive:
        """`receive` that raises `BodyTooLarge` once the body streamed in passes the limit."""
        received = 0
        limit = self.max_body_bytes

        async def receive_limited() -> Message:
            nonlocal received, limit
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit and (limit := self.limit(scope)) < received:
                    raise BodyTooLarge(limit)
            return message

        return receive_limited


class AccessMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        access_log: AccessLog,
        metrics: Metrics,
        max_body_bytes: int,
        problem_base: str,
        tracer: trace.Tracer,
        admitter: Admitter,
        refusals: RefusalTally,
        trusted_proxies: tuple[Network, ...],
        routes: Sequence[BaseRoute],
        body_limits: Sequence[tuple[re.Pattern[str], int]] = (),
    ) -> None:
        self.app = app
        self.tracer = tracer
        self.access_log = access_log
        self._origin = (access_log.origin, access_log.origin.encode())  # re-read: a successor renames it
        self.metrics = metrics
        self.body = BodyLimit(max_body_bytes, body_limits)  # paths that take larger bodies (uploads)
        self.problem_base = problem_base
        self.admitter = admitter
        self.refusals = refusals
        self.trusted_proxies = trusted_proxies
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = route_path(scope)  # stage 1
        if not is_logged(path):
            record = AccessRecord(trace_id=_trace_id(scope))  # unlogged paths still get a transaction id
            await self._serve(scope, receive, self._unlogged(scope, send, started), RequestContext(record, None, scope))
            return
        admitted = await self._admit(scope, send, path, started)  # stage 2
        if admitted is None:
            return  # answered already
        admission, source = admitted
        record = _record(scope, admission, source)  # stage 3
        send = self._logged(scope, send, record, admission, started)
        refusal = admission.limit.refusal() if admission.limit is not None else None
        if refusal is not None:  # an authenticated caller over its administration's limit: logged as usual
            record.operation = self._operation_of(scope)
            record.reason = refusal.code
            await send_problem(send, refusal, record.id, self.problem_base)
            return
        await self._serve(scope, receive, send, RequestContext(record, admission, scope))

    async def _admit(self, scope: Scope, send: Send, path: str, started: float) -> tuple[Admission, str] | None:
        """Stage 2: the caller and its limit, or None once a refusal has been answered."""
        try:
            source = source_address(
                client_address(
                    scope["client"][0] if scope.get("client") else None,
                    [v for k, v in scope["headers"] if k == b"x-forwarded-for"],
                    self.trusted_proxies,
                )
            )
            with self.tracer.start_as_current_span("admission"):
                admission = await self.admitter.admit(
                    _header(scope, b"authorization"), source, token_endpoint=path == TOKEN_PATH
                )
        except Exception:
            # Admission itself failed (a backend's unexpected answer): answered and logged like any failure.
            record = AccessRecord(trace_id=_trace_id(scope), reason="internal_error")
            log.exception("admission failed in %s %s (transaction %s)", scope["method"], path, record.id)
            await send_problem(
                self._logged(scope, send, record, Admission(None, None, None), started),
                Problem("internal_error", "an unexpected error occurred"),
                record.id,
                self.problem_base,
            )
            return None
        if admission.caller is None and admission.limit is not None:
            refusal = admission.limit.refusal()
            if refusal is not None:
                transaction_id = self.refusals.count(source)  # counted, not logged one by one
                await send_problem(self._standard(send, admission), refusal, transaction_id, self.problem_base)
                self._observe(scope, refusal.status, started)
                return None
        return admission, source

    def _operation_of(self, scope: Scope) -> EventOperation | None:
        """The operation of the route a request would reach (only when it is refused before routing)."""
        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                name = getattr(route, "name", None)
                return name if is_event_operation(name) else None
        return None

    def _standard(self, send: Send, admission: Admission | None) -> Send:
        """`send` with the headers every answer carries, the limit's fields included."""
        extra = list(_STANDARD_HEADERS)
        if admission is not None and admission.limit is not None:
            extra += admission.limit.headers

        async def send_standard(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return send_standard

    def _unlogged(self, scope: Scope, send: Send, started: float) -> Send:
        send = self._standard(send, None)

        async def send_unlogged(message: Message) -> None:
            if message["type"] == "http.response.start":
                self._observe(scope, message["status"], started)
            await send(message)

        return send_unlogged

    def _logged(self, scope: Scope, send: Send, record: AccessRecord, admission: Admission, started: float) -> Send:
        """Stage 6: `send` that appends the record, durably, before the response starts; an answer that
        would release something without its event becomes `503 audit_unavailable`."""
        send = self._standard(send, admission)
        withheld = False

        async def send_logged(message: Message) -> None:
            nonlocal withheld
            if message["type"] == "http.response.start":
                status = message["status"]
                if record.operation is None:
                    name = getattr(scope.get("route"), "name", None)
                    record.operation = name if is_event_operation(name) else None
                record.finish(status)
                if not await self._append(record) and status < 400:
                    # Nothing is released without its trace: the answer becomes 503.
                    withheld = True
                    await send_problem(send, Problem("audit_unavailable"), record.id, self.problem_base)
                    self._observe(scope, 503, started)
                    return
                self.metrics.labelled(
                    self.metrics.decisions, record.administration or "", record.operation or "", record.decision or ""
                ).inc()
                message = {**message, "headers": self._logged_headers(message, record)}
                self._observe(scope, status, started)
            elif withheld:
                return
            await send(message)

        return send_logged

    def _logged_headers(self, start: Message, record: AccessRecord) -> list[tuple[bytes, bytes]]:
        """A logged answer's headers: never cached, and where its event lies in the log."""
        headers = list(start.get("headers", []))
        if not any(k == b"cache-control" for k, _ in headers):
            headers.append((b"cache-control", b"no-store"))
        if record.seq is not None:
            if self._origin[0] != (origin := self.access_log.origin):
                self._origin = (origin, origin.encode())
            headers.append((b"audit-log-position", self._origin[1] + b" %d" % record.seq))
        return headers

    async def _serve(self, scope: Scope, receive: Receive, send: Send, context: RequestContext) -> None:
        """Stages 4 and 5 around the route, with the request's context set for it."""
        record = context.record
        request_trace_id.set(record.trace_id)
        too_large = self.body.refusal(scope)
        if too_large is not None:
            record.reason = "invalid_request"
            await send_problem(send, too_large, record.id, self.problem_base)
            return
        token = enter(context)
        try:
            await self._run_route(scope, self.body.receive(scope, receive), send, record)
        finally:
            leave(token)

    async def _run_route(self, scope: Scope, receive: Receive, send: Send, record: AccessRecord) -> None:
        """Stage 5: the route; an exception it lets out is `500 internal_error`, logged by transaction."""
        response_started = False

        async def send_tracking(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception:
            log.exception("unhandled error in %s %s (transaction %s)", scope["method"], scope["path"], record.id)
            if response_started:
                return  # the status is gone; the server closes the connection
            record.reason = "internal_error"
            await send_problem(
                send_tracking, Problem("internal_error", "an unexpected error occurred"), record.id, self.problem_base
            )

    async def _append(self, record: AccessRecord) -> bool:
        started = time.perf_counter()
        try:
            with self.tracer.start_as_current_span("access_log.append"):
                record.seq = await self.access_log.append(record)
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
            time.perf_counter() - started
        )


def _record(scope: Scope, admission: Admission, source: str) -> AccessRecord:
    """Stage 3: the request's record, naming its caller, or, without one (the token endpoint's requests
    always), its source address."""
    record = AccessRecord(trace_id=_trace_id(scope))
    if admission.caller is not None:
        record.administration = admission.caller.administration
        record.client_id = admission.caller.client_id
    else:
        record.source = source
    return record


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
