"""The outermost request stage: transaction id, the path prefix, admission (who calls, under which limit),
body limit, last-resort error handling, and the hand-off of the request's AccessRecord to the one
access-log writer before the response leaves.

Whether a request is logged is decided on its route path (the path with any prefix removed: the
server's `root_path` or `GATEWAY_ROOT_PATH`), never the raw path, so no mount point can take a request
around the log. Routes that release data also refuse to run without the admission this stage gives only
to logged requests (`gateway.api.deps.protected`).

Pure ASGI rather than BaseHTTPMiddleware: it must hold the response start until the event is durable,
and it costs less on the hot path.
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
from gateway.policy.catalogue import EVENT_OPERATIONS
from gateway.ratelimit.admission import Admission, Admitter, Network, client_address, source_address

log = logging.getLogger(__name__)

_TRACEPARENT = re.compile(rb"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
_OPERATIONS = frozenset(EVENT_OPERATIONS)
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
        root_path: str,
        routes: Sequence[BaseRoute],
        body_limits: Sequence[tuple[re.Pattern[str], int]] = (),
    ) -> None:
        self.app = app
        self.tracer = tracer
        self.access_log = access_log
        self._origin = (access_log.origin, access_log.origin.encode())  # re-read: a successor renames it
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.problem_base = problem_base
        self.admitter = admitter
        self.refusals = refusals
        self.trusted_proxies = trusted_proxies
        self.root_path = root_path
        self.routes = routes
        self.body_limits = body_limits  # paths that take larger bodies than max_body_bytes (uploads)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        if self.root_path and (path == self.root_path or path.startswith(self.root_path + "/")):
            # GATEWAY_ROOT_PATH: a path that carries the prefix is answered without it (on top of any
            # root_path the server was given), one that a proxy already stripped as it is.
            scope["root_path"] = scope.get("root_path", "") + self.root_path
            path = route_path(scope)
        if not is_logged(path):
            scope.setdefault("state", {})
            await self._serve(scope, receive, send, None, None)
            return
        started = time.perf_counter()
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
            empty = Admission(None, None, None)
            await send_problem(
                self._logged(scope, send, record, empty, started),
                Problem("internal_error", "an unexpected error occurred"),
                record.id,
                self.problem_base,
            )
            return
        refusal = admission.limit.refusal() if admission.limit is not None else None
        if refusal is not None and admission.caller is None:
            # Refused before any work: counted, not logged one by one, answered at once.
            transaction_id = self.refusals.count(source)
            await send_problem(self._standard(send, admission), refusal, transaction_id, self.problem_base)
            self._observe(scope, refusal.status, started)
            return
        record = AccessRecord(trace_id=_trace_id(scope))
        if admission.caller is not None:
            record.administration = admission.caller.administration
            record.client_id = admission.caller.client_id
        else:  # no authenticated caller (the token endpoint's requests always): the address stands for it
            record.source = source
        scope.setdefault("state", {})["admission"] = admission
        if refusal is not None:  # an authenticated caller over its administration's limit: logged as usual
            record.operation = self._operation_of(scope)
            record.reason = refusal.code
            await send_problem(
                self._logged(scope, send, record, admission, started), refusal, record.id, self.problem_base
            )
            return
        await self._serve(scope, receive, send, record, admission, started)

    def _operation_of(self, scope: Scope) -> str | None:
        """The operation of the route a request would reach (only when it is refused before routing)."""
        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                name = getattr(route, "name", None)
                return name if name in _OPERATIONS else None
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
        """`send` that appends the record, durably, before the response starts; an answer that would
        release something without its event becomes `503 audit_unavailable`."""
        send = self._standard(send, admission)
        withheld = False

        async def send_logged(message: Message) -> None:
            nonlocal withheld
            if message["type"] == "http.response.start":
                status = message["status"]
                if record.operation is None:
                    name = getattr(scope.get("route"), "name", None)
                    record.operation = name if name in _OPERATIONS else None
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
                headers = list(message.get("headers", []))
                if not any(k == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                if record.seq is not None:
                    if self._origin[0] != (origin := self.access_log.origin):
                        self._origin = (origin, origin.encode())
                    headers.append((b"audit-log-position", self._origin[1] + b" %d" % record.seq))
                message = {**message, "headers": headers}
                self._observe(scope, status, started)
            elif withheld:
                return
            await send(message)

        return send_logged

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        record: AccessRecord | None,
        admission: Admission | None,
        started: float | None = None,
    ) -> None:
        started = time.perf_counter() if started is None else started
        if record is None:
            record = AccessRecord(trace_id=_trace_id(scope))  # unlogged paths still get a transaction id
            send_wrapper = self._unlogged(scope, send, started)
        else:
            send_wrapper = self._logged(scope, send, record, admission or Admission(None, None, None), started)
        request_trace_id.set(record.trace_id)
        scope["state"]["access_record"] = record
        response_started = False

        async def send_tracking(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send_wrapper(message)

        limit = self.max_body_bytes
        content_length = _content_length(scope)
        if content_length is not None and content_length > limit:
            limit = self._body_limit(scope)  # only a body past the usual limit asks whether its path takes more
        if content_length is not None and content_length > limit:
            record.reason = "invalid_request"
            await send_problem(
                send_tracking,
                Problem("invalid_request", f"the request body exceeds {limit} bytes", status=413),
                record.id,
                self.problem_base,
            )
            return

        received = 0

        async def receive_limited() -> Message:
            nonlocal received, limit
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit and (limit := self._body_limit(scope)) < received:
                    raise BodyTooLarge(limit)
            return message

        try:
            await self.app(scope, receive_limited, send_tracking)
        except Exception:
            log.exception("unhandled error in %s %s (transaction %s)", scope["method"], scope["path"], record.id)
            if response_started:
                return  # the status is gone; the server closes the connection
            record.reason = "internal_error"
            await send_problem(
                send_tracking, Problem("internal_error", "an unexpected error occurred"), record.id, self.problem_base
            )

    def _body_limit(self, scope: Scope) -> int:
        """The limit of this request's path: asked only of a body past `max_body_bytes`, so the common
        request pays nothing for the few paths (uploads) that take more."""
        path = route_path(scope)
        for pattern, limit in self.body_limits:
            if pattern.match(path):
                return limit
        return self.max_body_bytes

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


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
