"""A leaner request handler for the identity operations, the gateway's hot path.

FastAPI's generic handler solves a dependency graph on every request: for `(request, body, caller)` that
costs 70-120 µs of a verification's CPU, 10-15 % (`loadtests/bench_fastpath.py`, docs/decisions.md).
`GuardedBodyRoute` keeps the route as FastAPI declares it (the same OpenAPI document, the same body
model) and serves it directly, in FastAPI's order and with its errors: a body that is not JSON first,
then the guard (authentication, rate limit, scope), then the body's schema, so an unauthenticated caller
learns nothing about what a valid body looks like.

A plain `application/json` body is first read in one pass by pydantic's own JSON parser. When that
succeeds the body was valid JSON and valid against the schema, and the value is the one the standard
path gives (a test compares them on generated documents); anything it refuses takes the standard path
above, which finds the first error in FastAPI's order and answers it in FastAPI's words.

`add_routes` puts every router's routes on the app's own table, so no request pays for a nested router.

FastAPI internals this module relies on (FastAPI is pinned to the series they were checked against, in
pyproject.toml): `fastapi.dependencies.models.Dependant`, `fastapi.dependencies.utils.request_body_to_args`,
and an `APIRoute`'s `dependant` (its `call`, `dependencies`, `body_params`, request-part parameters) and
`body_field`. A route served by `GuardedBodyRoute` takes its request, its body and one guard, and no
sub-dependencies (the guard does what they would).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Coroutine
from email.message import Message
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import request_body_to_args
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response


def _is_json(content_type: str | None) -> bool:
    """FastAPI's test: `application/json` or `application/*+json`, parameters allowed."""
    if not content_type:
        return False
    if content_type == "application/json":
        return True
    message = Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def parse_body(raw: bytes, content_type: str | None) -> Any:
    """What FastAPI hands to validation: nothing, the decoded JSON, or (not JSON) the raw bytes, which
    then fail the schema. The standard decoder, as FastAPI's: orjson would read integers beyond 64 bits
    as floats and refuse NaN, changing what is accepted."""
    if not raw:
        return PydanticUndefined  # FastAPI's marker for "no body": a missing-body error follows
    if not _is_json(content_type):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", exc.pos),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": exc.msg},
                }
            ],
            body=exc.doc,
        ) from None
    except Exception:  # not UTF-8/16/32, nested too deep: FastAPI's answer to a body it cannot read
        raise HTTPException(400, "There was an error parsing the body") from None


def _reads_request_parts(dependant: Dependant) -> bool:
    """Path, query, header or cookie parameters: what this handler does not fill."""
    return bool(dependant.path_params or dependant.query_params or dependant.header_params or dependant.cookie_params)


def read_valid_body(model: type[BaseModel], raw: bytes, content_type: str | None) -> BaseModel | None:
    """The body as `model`, when it is plain `application/json` that is valid JSON and valid against the
    model; None sends it down the standard path (which also finds an error's place in the order)."""
    if content_type != "application/json" or not raw:
        return None
    try:
        return model.model_validate_json(raw)
    except ValidationError:
        return None


class GuardedBodyRoute(APIRoute):
    """For endpoints `async def f(request, body, caller) -> Response` whose `caller` comes from one async
    guard dependency without sub-dependencies, and whose body is a pydantic model; anything else is
    refused when the route is declared."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        own = self.dependant
        endpoint, guards, body_field = own.call, own.dependencies, self.body_field
        if (
            endpoint is None
            or body_field is None
            or len(own.body_params) != 1
            or _reads_request_parts(own)
            or len(guards) != 1
            or guards[0].call is None
            or _reads_request_parts(guards[0])
            or guards[0].body_params
            or guards[0].dependencies
        ):
            raise TypeError(f"{self.path}: GuardedBodyRoute serves (request, body, caller) endpoints only")
        model = body_field.field_info.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"{self.path}: GuardedBodyRoute needs a pydantic model as body")
        guard: Callable[[Request], Awaitable[Any]] = guards[0].call
        body_name, caller_name = body_field.name, guards[0].name
        if caller_name is None:
            raise TypeError(f"{self.path}: GuardedBodyRoute needs a named guard parameter")
        fields = [body_field]

        async def handle(request: Request) -> Response:
            raw = await request.body()
            content_type = request.headers.get("content-type")
            body = read_valid_body(model, raw, content_type)
            if body is not None:
                caller = await guard(request)
            else:
                received = parse_body(raw, content_type)
                caller = await guard(request)
                values, errors = await request_body_to_args(fields, received, embed_body_fields=False)
                if errors:
                    raise RequestValidationError(errors, body=received)
                body = values[body_name]
            response: Response = await endpoint(**{"request": request, body_name: body, caller_name: caller})
            return response

        return handle


def add_routes(app: FastAPI, *routers: APIRouter) -> None:
    """Each router's routes straight onto the app's own table, in order.

    `include_router` keeps each router as a nested layer (FastAPI 0.165) that matches a request twice
    and keeps context at each step: about 5% of a verification's instructions. A route
    declared on an `APIRouter` already carries the router's tags, responses and dependencies, so
    for routers without a prefix or start-up and shutdown handlers of their own (checked here) the
    table and the OpenAPI document are the same either way. The framework's own routes go after them,
    so the first routes matched are the busiest.
    """
    # What FastAPI declared itself (`/openapi.json`, the docs): rarely asked, so matched last.
    own_paths = {app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url} - {None}
    framework = [route for route in app.router.routes if getattr(route, "path", None) in own_paths]
    routes = [route for route in app.router.routes if route not in framework]
    for router in routers:
        if router.prefix or router.on_startup or router.on_shutdown:
            raise TypeError("add_routes takes routers without a prefix or start-up and shutdown handlers")
        routes.extend(router.routes)
    app.router.routes[:] = routes + framework
