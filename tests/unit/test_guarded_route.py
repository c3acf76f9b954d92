"""`GuardedBodyRoute` answers every request exactly as FastAPI's generic handler does: the same route
declared both ways, the same requests, the same statuses and error lists, in the same order of checks."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from gateway.api.routes import GuardedBodyRoute


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
    nin: str = Field(max_length=20)
    count: int
    tags: list[str] | None = None


class Unauthorised(Exception):
    pass


async def guard(request: Request) -> str:
    token = request.headers.get("authorization")
    if token != "Bearer good":
        raise Unauthorised()
    return "caller-1"


def _app() -> FastAPI:
    app = FastAPI()
    generic, guarded = APIRouter(), APIRouter(route_class=GuardedBodyRoute)

    async def endpoint(request: Request, body: Body, caller: Annotated[str, Depends(guard)]) -> JSONResponse:
        return JSONResponse({"caller": caller, "body": body.model_dump(), "path": request.url.path})

    generic.post("/generic")(endpoint)
    guarded.post("/guarded")(endpoint)
    app.include_router(generic)
    app.include_router(guarded)

    @app.exception_handler(Unauthorised)
    async def _401(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": "unauthorised"}, status_code=401)

    @app.exception_handler(RequestValidationError)
    async def _422(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse({"errors": [{k: repr(v) for k, v in e.items()} for e in exc.errors()]}, status_code=422)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    return app


AUTH = {"authorization": "Bearer good"}
JSON = {"content-type": "application/json"}
CASES: list[tuple[str, dict[str, str], bytes]] = [
    ("valid", {**AUTH, **JSON}, b'{"nin": "123", "count": 2}'),
    ("valid, charset", {**AUTH, "content-type": "application/json; charset=utf-8"}, b'{"nin": "1", "count": 2}'),
    ("valid, +json", {**AUTH, "content-type": "application/problem+json"}, b'{"nin": "1", "count": 2}'),
    ("no token, valid", JSON, b'{"nin": "123", "count": 2}'),
    ("no token, not JSON", JSON, b'{"nin": '),
    ("no token, schema-invalid", JSON, b'{"nin": 5}'),
    ("not JSON", {**AUTH, **JSON}, b'{"nin": "1",, }'),
    ("unknown field", {**AUTH, **JSON}, b'{"nin": "1", "count": 2, "extra": true}'),
    ("wrong types", {**AUTH, **JSON}, b'{"nin": ["1"], "count": "two", "tags": [1]}'),
    ("too long", {**AUTH, **JSON}, b'{"nin": "' + b"9" * 50 + b'", "count": 1}'),
    ("missing fields", {**AUTH, **JSON}, b"{}"),
    ("array", {**AUTH, **JSON}, b"[1, 2]"),
    ("null", {**AUTH, **JSON}, b"null"),
    ("empty body", {**AUTH, **JSON}, b""),
    ("text/plain", {**AUTH, "content-type": "text/plain"}, b'{"nin": "1", "count": 2}'),
    ("no content type", AUTH, b'{"nin": "1", "count": 2}'),
    ("NaN", {**AUTH, **JSON}, b'{"nin": "1", "count": NaN}'),
    ("integer beyond 64 bits", {**AUTH, **JSON}, b'{"nin": "1", "count": 123456789012345678901234567890}'),
    ("lone surrogate", {**AUTH, **JSON}, b'{"nin": "\\ud800", "count": 1}'),
    ("invalid UTF-8", {**AUTH, **JSON}, b'{"nin": "\xff\xfe", "count": 1}'),
    ("UTF-16 with BOM", {**AUTH, **JSON}, '{"nin": "1", "count": 3}'.encode("utf-16")),
    ("nested too deep", {**AUTH, **JSON}, b"[" * 100_000 + b"]" * 100_000),
    ("duplicate keys", {**AUTH, **JSON}, b'{"nin": "1", "count": 1, "count": 4}'),
]


class Client:
    """Posts through the ASGI app in process."""

    def __init__(self) -> None:
        self.app = _app()

    async def post(self, path: str, headers: dict[str, str], content: bytes) -> httpx.Response:
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await http.post(path, headers=headers, content=content)


@pytest.fixture(scope="module")
def client() -> Client:
    return Client()


@pytest.mark.parametrize(("case", "headers", "body"), CASES, ids=[c[0] for c in CASES])
async def test_answers_like_fastapi(client: Client, case: str, headers: dict[str, str], body: bytes) -> None:
    generic = await client.post("/generic", headers=headers, content=body)
    guarded = await client.post("/guarded", headers=headers, content=body)
    assert guarded.status_code == generic.status_code, case
    answer = guarded.json()
    if "path" in answer:
        answer["path"] = "/generic"
    assert answer == generic.json(), case


async def test_checks_in_order(client: Client) -> None:
    """JSON syntax before the guard, the guard before the schema (stated, not only compared)."""
    assert (await client.post("/guarded", headers=JSON, content=b"{")).status_code == 422
    assert (await client.post("/guarded", headers=JSON, content=b'{"nin": 5}')).status_code == 401
    assert (await client.post("/guarded", headers={**AUTH, **JSON}, content=b'{"nin": 5}')).status_code == 422
    ok = await client.post("/guarded", headers={**AUTH, **JSON}, content=b'{"nin": "7", "count": 1}')
    assert ok.status_code == 200 and ok.json()["caller"] == "caller-1"


def test_refuses_other_shapes() -> None:
    router = APIRouter(route_class=GuardedBodyRoute)

    async def no_guard(request: Request, body: Body) -> Any:
        return None

    with pytest.raises(TypeError, match="GuardedBodyRoute"):
        router.post("/x")(no_guard)


def test_refuses_a_guard_with_parameters_of_its_own() -> None:
    router = APIRouter(route_class=GuardedBodyRoute)

    async def header_guard(request: Request, x_key: Annotated[str, Header()]) -> str:
        return x_key

    async def endpoint(request: Request, body: Body, caller: Annotated[str, Depends(header_guard)]) -> Any:
        return None

    with pytest.raises(TypeError, match="GuardedBodyRoute"):
        router.post("/y")(endpoint)
