"""`GuardedBodyRoute` answers every request exactly as FastAPI's generic handler does: the same route
declared both ways, the same requests, the same statuses and error lists, in the same order of checks."""

from __future__ import annotations

import json
from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException

from gateway.api.identity import LookupRequest, VerifyRequest
from gateway.api.routes import GuardedBodyRoute, add_routes, parse_body, read_valid_body


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


def test_refuses_a_body_that_is_not_a_model() -> None:
    router = APIRouter(route_class=GuardedBodyRoute)

    async def endpoint(request: Request, body: list[int], caller: Annotated[str, Depends(guard)]) -> Any:
        return None

    with pytest.raises(TypeError, match="pydantic model"):
        router.post("/z")(endpoint)


# Documents near the identity bodies, mostly valid so both outcomes are exercised: right and wrong keys,
# values of every JSON type, odd strings (lone surrogates, fullwidth digits, NULs), big and float numbers.
_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=12) | st.sampled_from(
    [
        "voter_roll",
        "1984-06-15",
        "1984-06",
        "1984",
        "2023-02-30",
        "Diarra",
        "Awa Kadiatou",
        "\ud800",
        "1e2",
        " ",
        "",
        "ML\uff11\uff12\uff13\uff14\uff15\uff16\uff17",
        "a\x00b",
    ]
)
_NINS = st.from_regex(r"[0-9A-Z]{6,32}", fullmatch=True) | st.from_regex(r" ?[0-9a-z]{5,12} ?", fullmatch=True) | _TEXT
_DATES = st.dates().map(str) | st.sampled_from(["1984", "1984-06", "2023-02-30", "84-06-15"]) | _TEXT
_NUMBERS = (
    st.integers(-5, 200)
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.sampled_from([18.0, 18.5, True])
)
_SCALARS = st.none() | st.booleans() | _NUMBERS | _TEXT
_KEYS = st.sampled_from(["nin", "purpose", "claims", "predicates", "attributes", "name", "value", "extra"]) | _TEXT
_VALUES = st.recursive(
    _SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=4), max_leaves=8
)
_CLAIMS = st.dictionaries(
    st.sampled_from(["family_name", "given_names", "birth_date", "birth_place", "sex", "nin", "favourite"]),
    _DATES | _TEXT | _SCALARS,
    max_size=4,
)
_PREDICATES = st.lists(
    st.one_of(
        st.fixed_dictionaries({"name": st.just("age_at_least"), "value": _NUMBERS | _TEXT}, optional={"as_of": _DATES}),
        st.fixed_dictionaries({"name": st.sampled_from(["alive", "registered_idp"])}, optional={"value": _SCALARS}),
        st.fixed_dictionaries({"name": st.just("resides_in"), "value": _TEXT | _SCALARS}),
        st.fixed_dictionaries({"name": _TEXT}),
    ),
    max_size=3,
)
_GOOD_NINS = st.from_regex(r"[0-9A-Z]{6,32}", fullmatch=True)
_GOOD_CLAIMS = st.dictionaries(
    st.sampled_from(["family_name", "given_names", "birth_place"]),
    st.sampled_from(["Diarra", "Awa Kadiatou", "Ségou", "N'Diaye"]) | _TEXT,
    max_size=2,
) | st.fixed_dictionaries({"birth_date": _DATES})
_GOOD_PREDICATES = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {"name": st.just("age_at_least"), "value": st.integers(0, 150) | st.just(18.0)},
            optional={"as_of": st.dates().map(str)},
        ),
        st.fixed_dictionaries({"name": st.sampled_from(["alive", "registered_idp"])}),
        st.fixed_dictionaries({"name": st.just("resides_in"), "value": st.sampled_from(["Ségou", "Mopti"]) | _TEXT}),
    ),
    min_size=1,
    max_size=3,
)
_NEAR_VERIFY = st.fixed_dictionaries(
    {"nin": _GOOD_NINS | _NINS, "purpose": st.just("voter_roll"), "predicates": _GOOD_PREDICATES},
    optional={"claims": _GOOD_CLAIMS, "consent_id": st.none() | st.just("c-1")},
)
_NEAR_LOOKUP = st.fixed_dictionaries(
    {
        "nin": _GOOD_NINS | _NINS,
        "purpose": st.just("file_check"),
        "attributes": st.lists(st.sampled_from(["family_name", "birth_date", "favourite"]), min_size=1, max_size=3),
    },
    optional={"consent_id": st.none() | st.just("c-1") | _SCALARS},
)
_NEAR_BODY = st.fixed_dictionaries(
    {"nin": _TEXT, "count": _NUMBERS}, optional={"tags": st.lists(_TEXT, max_size=2) | st.none()}
)
_ANY_DOCUMENT = st.one_of(
    st.fixed_dictionaries(
        {"nin": _NINS, "purpose": st.sampled_from(["voter_roll", "", "x" * 65]) | _TEXT},
        optional={
            "claims": _CLAIMS | _VALUES,
            "predicates": _PREDICATES | _VALUES,
            "consent_id": _TEXT | st.none(),
            "extra": _SCALARS,
            "attributes": st.lists(st.sampled_from(["family_name", "birth_date", "x"]), max_size=3) | _VALUES,
        },
    ),
    st.fixed_dictionaries(
        {"nin": _TEXT, "count": _NUMBERS | _SCALARS}, optional={"tags": st.lists(_TEXT, max_size=2) | _VALUES}
    ),
    _VALUES,
)
_CASES = st.one_of(
    st.tuples(st.just(VerifyRequest), _NEAR_VERIFY),
    st.tuples(st.just(LookupRequest), _NEAR_LOOKUP),
    st.tuples(st.just(Body), _NEAR_BODY),
    st.tuples(st.sampled_from([VerifyRequest, LookupRequest, Body]), _ANY_DOCUMENT),
)


def _standard(model: type[BaseModel], raw: bytes) -> BaseModel | None:
    try:
        received = parse_body(raw, "application/json")
        return model.model_validate(received)
    except (RequestValidationError, HTTPException, ValidationError):
        return None


@pytest.mark.slow
@settings(max_examples=600, deadline=None)
@given(_CASES, st.sampled_from(["", " ", "\n"]))
def test_the_one_pass_read_accepts_only_what_the_standard_path_accepts_and_alike(
    case: tuple[type[BaseModel], Any], padding: str
) -> None:
    model, document = case
    raw = padding.encode() + json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogatepass")
    fast = read_valid_body(model, raw, "application/json")
    standard = _standard(model, raw)
    if fast is not None:
        assert standard is not None
        assert fast.model_dump() == standard.model_dump()
        assert repr(fast) == repr(standard)  # the same types too (1 is not 1.0, "1" is not 1)
    assert read_valid_body(model, raw, "application/json; charset=utf-8") is None  # the standard path's


def _routed_app(*routers: APIRouter) -> FastAPI:
    app = FastAPI()
    add_routes(app, *routers)
    return app


async def test_added_routes_answer_as_included_ones() -> None:
    """Routes added flat answer, refuse a wrong method and document themselves as included ones do."""

    def build() -> tuple[APIRouter, APIRouter]:
        first, second = APIRouter(tags=["First"]), APIRouter(tags=["Second"])

        @first.get("/a/{name}", responses={418: {"description": "teapot"}})
        async def a(name: str) -> dict[str, str]:
            return {"a": name}

        @second.post("/b")
        async def b() -> dict[str, str]:
            return {"b": "yes"}

        return first, second

    flat = _routed_app(*build())
    included = FastAPI()
    for router in build():
        included.include_router(router)
    assert flat.openapi() == included.openapi()
    assert all(type(route).__name__ in ("APIRoute", "Route") for route in flat.router.routes)
    # Matching walks the table in order: the application's routes first, the framework's own after.
    paths = [getattr(route, "path", None) for route in flat.router.routes]
    assert paths[:2] == ["/a/{name}", "/b"] and "/openapi.json" in paths[2:], paths
    for app in (flat, included):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            assert (await client.get("/a/x")).json() == {"a": "x"}
            assert (await client.post("/b")).json() == {"b": "yes"}
            assert (await client.get("/b")).status_code == 405
            assert (await client.get("/c")).status_code == 404
            assert (await client.get("/openapi.json")).json() == included.openapi()


async def test_routes_added_later_go_after_the_earlier_ones_and_before_the_framework_s() -> None:
    first, later = APIRouter(), APIRouter()

    @first.get("/a")
    async def a() -> dict[str, str]:
        return {"a": "first"}

    @later.get("/later")
    async def b() -> dict[str, str]:
        return {"b": "later"}

    app = _routed_app(first)
    add_routes(app, later)
    paths = [getattr(route, "path", None) for route in app.router.routes]
    assert paths[:2] == ["/a", "/later"] and set(paths[2:]) == {
        "/openapi.json",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
    }, paths
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (await client.get("/later")).json() == {"b": "later"}
        assert set((await client.get("/openapi.json")).json()["paths"]) == {"/a", "/later"}


def test_add_routes_refuses_what_it_would_drop() -> None:
    with pytest.raises(TypeError, match="prefix"):
        _routed_app(APIRouter(prefix="/v2"))
    with pytest.raises(TypeError, match="shutdown"):
        _routed_app(APIRouter(on_shutdown=[lambda: None]))
