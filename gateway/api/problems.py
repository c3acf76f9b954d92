"""Every error as problem+json: our own refusals, validation failures, unknown routes and methods.

Validation errors name where the fault is (a JSON pointer into the body) and why, never the value
sent: a body may hold a NIN, and `detail` must not echo personal data.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException

from gateway.api.responses import ProblemResponse
from gateway.errors import CATALOGUE, PROBLEM_MEDIA_TYPE, Problem, problem_document
from gateway.request_context import current


def _pointer(parts: tuple[Any, ...]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _validation_entry(error: dict[str, Any]) -> dict[str, Any]:
    loc = tuple(error.get("loc", ()))
    kind = error.get("type", "")
    where, rest = (loc[0], loc[1:]) if loc else ("body", ())
    if kind == "json_invalid":
        return {"pointer": "", "detail": "the body is not valid JSON"}
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if where == "body":
        if kind == "missing" and not rest:
            return {"pointer": "", "detail": "a JSON body is required"}
        if kind == "extra_forbidden":
            message = "unknown field"
        return {"pointer": _pointer(rest), "detail": message}
    return {"in": str(where), "parameter": ".".join(map(str, rest)), "detail": message}


def _respond(request: Request, problem: Problem) -> ProblemResponse:
    context = current(request.scope)
    record = context.record if context is not None else None
    if record is not None:
        record.reason = problem.code
    base = request.app.state.services.settings.issuer
    return ProblemResponse(
        problem_document(problem, record.id if record else None, base),
        status_code=problem.status,
        headers={"Cache-Control": "no-store", **problem.headers},
    )


async def on_problem(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, Problem)
    return _respond(request, exc)


async def on_validation(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [_validation_entry(e) for e in exc.errors()][:50]
    return _respond(request, Problem("invalid_request", "the request is not valid", extra={"errors": errors}))


async def on_http(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        problem = Problem("not_found", "no such resource")
    elif exc.status_code == 405:
        problem = Problem("invalid_request", "this method is not allowed here", status=405)
    elif exc.status_code >= 500:
        problem = Problem("internal_error", "an unexpected error occurred")
    else:
        detail = exc.detail if isinstance(exc.detail, str) else "the request is not valid"
        problem = Problem("invalid_request", detail, status=exc.status_code)
    problem.headers.update(headers)
    return _respond(request, problem)


def install(app: FastAPI) -> None:
    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)


_PROBLEM_SCHEMA = {
    "type": "object",
    "description": "RFC 9457 problem details. `code` is stable; `detail` is for people.",
    "required": ["type", "title", "status", "code", "transaction_id"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string", "enum": list(CATALOGUE)},
        "transaction_id": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {"type": "object", "properties": {"pointer": {"type": "string"}, "detail": {"type": "string"}}},
        },
        "attributes": {"type": "array", "items": {"type": "string"}},
    },
}


def describe(app: FastAPI) -> None:
    """Document the problem catalogue in the OpenAPI description: every route may answer a Problem."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        table = "\n".join(f"| `{p.code}` | {p.status} | {p.description} |" for p in CATALOGUE.values())
        description = (
            (app.description or "")
            + "\n\n## Errors\n\nEvery error is `application/problem+json`.\n\n| code | status | meaning |\n"
            + "|---|---|---|\n"
            + table
        )
        schema = get_openapi(title=app.title, version=app.version, description=description, routes=app.routes)
        schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = _PROBLEM_SCHEMA
        problem_ref = {"content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                responses = operation.setdefault("responses", {})
                if responses.get("422", {}).get("description") == "Validation Error":
                    responses.pop("422")  # FastAPI's own: validation failures are 400 here
                for status, answer in responses.items():
                    if status.startswith(("4", "5")):
                        answer.update(problem_ref)
                responses["default"] = {"description": "A problem (see the error table)", **problem_ref}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
