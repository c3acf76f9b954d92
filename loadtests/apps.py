"""App factories for benchmarks: the probe gateway with its durable log, and with a writer that discards
(the baseline that isolates what the log costs)."""

from __future__ import annotations

from typing import Any

from fastapi.routing import APIRoute, request_response
from pydantic import BaseModel

from gateway.api.responses import FastJSONResponse
from gateway.api.routes import GuardedBodyRoute
from gateway.audit.record import AccessRecord
from tests.support.probe_app import create


class DiscardingAccessLog:
    """Accepts every event and keeps none: a baseline only, never a gateway's log."""

    origin = "discarding"

    async def start(self) -> None:
        return None

    async def append(self, record: AccessRecord) -> int | None:
        record.event()  # the serialisation every writer pays
        return None

    async def append_many(self, records: list[AccessRecord]) -> list[int | None]:
        return [await self.append(record) for record in records]

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        return None


def create_discarding() -> Any:
    return create(access_log=DiscardingAccessLog())


def create_discarding_with_bare() -> Any:
    """The same, with a writer that discards: what the durable log costs, by difference."""
    app = create(access_log=DiscardingAccessLog())
    _add_bare(app)
    return app


class BareClaims(BaseModel):
    family_name: str | None = None
    given_names: str | None = None
    birth_date: str | None = None


class BarePredicate(BaseModel):
    name: str
    value: int | None = None


class BareBody(BaseModel):
    """A verification's body, parsed as the baseline's only work: what any JSON API pays."""

    nin: str
    purpose: str
    claims: BareClaims = BareClaims()
    predicates: list[BarePredicate] = []


def _add_bare(app: Any) -> None:
    """`POST /bare`, the baseline: a FastAPI route that parses a JSON body like a verification's into a
    pydantic model and answers a small dict, not authenticated, not logged. It is matched first, as
    `/v1/verify` is: a route at the end of the table pays for matching every route before it (~70 µs on
    this stack), which would flatter the ratio.

    And `POST /v1/bare`, the same under `/v1/`, so it is logged like every `/v1/*` request: it does
    nothing but parse and wait for its event to be durable, which tells what the access log alone costs.
    It comes right after the identity routes, which keep their places."""

    async def bare(body: BareBody) -> FastJSONResponse:
        return FastJSONResponse({"status": "ok", "match": True})

    app.add_api_route("/bare", bare, methods=["POST"], include_in_schema=False)
    app.router.routes.insert(0, app.router.routes.pop())

    app.add_api_route("/v1/bare", bare, methods=["POST"], name="logged_bare", include_in_schema=False)
    routes = app.router.routes
    routes.insert(next(i for i, r in enumerate(routes) if getattr(r, "path", "") == "/v1/lookup") + 1, routes.pop())


def create_durable() -> Any:
    """The gateway with everything on, plus `POST /bare` and `POST /v1/bare` (see `_add_bare`)."""
    app = create(durable=True)
    _add_bare(app)
    return app


class WebhookSink:
    """A subscriber's endpoint for the push benchmark: answers 204 to every POST and counts them (`GET`
    answers the count), so the gateway, not the receiver, is what is measured."""

    def __init__(self) -> None:
        self.received = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "POST":
            more = True
            while more:
                message = await receive()
                more = message.get("more_body", False)
            self.received += 1
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        body = str(self.received).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


def create_webhook_sink() -> Any:
    return WebhookSink()


def create_durable_plain_routes() -> Any:
    """`create_durable` with FastAPI's own request handler on the identity and declaration routes (their
    lean `GuardedBodyRoute` handler set aside): what the lean handler saves, by difference."""
    app = create_durable()
    for route in app.router.routes:
        if isinstance(route, GuardedBodyRoute):
            route.app = request_response(APIRoute.get_route_handler(route))
    return app
