"""Operations endpoints (CONTRACT §9): liveness, readiness, metrics, the API description."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import Response

from gateway.api.responses import FastJSONResponse
from gateway.errors import CATALOGUE, Problem
from gateway.services import ReadinessCheck, services

router = APIRouter(tags=["Operations"])

_CHECK_TIMEOUT_S = 1.0


@router.get("/healthz", summary="The process is alive")
async def healthz() -> FastJSONResponse:
    return FastJSONResponse({"status": "ok"})


async def _run_check(check: ReadinessCheck) -> str:
    try:
        result = await asyncio.wait_for(check(), _CHECK_TIMEOUT_S)
    except Exception:  # a failing or hanging dependency is simply not ready
        return "failing"
    if isinstance(result, str):
        return result
    return "ok" if result else "failing"


@router.get("/readyz", summary="The access log, rate-limit backend and connectors are reachable")
async def readyz(request: Request) -> FastJSONResponse:
    checks = services(request).readiness
    results = await asyncio.gather(*(_run_check(c) for c in checks.values()))
    report = dict(zip(checks, results, strict=True))
    ready = "failing" not in results
    return FastJSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": report},
        status_code=200 if ready else 503,
    )


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    registry = services(request).metrics
    return Response(registry.render(), media_type=registry.content_type)


@router.get("/docs", include_in_schema=False)
async def docs(request: Request) -> Response:
    """The OpenAPI description as JSON for tools (Accept: application/json), Swagger UI for people."""
    accept = request.headers.get("accept", "")
    if "application/json" in accept and "text/html" not in accept:
        return FastJSONResponse(request.app.openapi())
    return get_swagger_ui_html(openapi_url="/openapi.json", title="Jamu gateway API")


@router.get("/problems/{code}", summary="What a problem code means")
async def problem_type(code: str) -> FastJSONResponse:
    kind = CATALOGUE.get(code)
    if kind is None:
        raise Problem("not_found", "no such problem type")
    return FastJSONResponse(
        {"code": kind.code, "status": kind.status, "title": kind.title, "description": kind.description})
