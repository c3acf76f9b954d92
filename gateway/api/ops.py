"""Operations endpoints (docs/contract.md §9): liveness, readiness, metrics, the API description."""

from __future__ import annotations

import asyncio
import importlib.resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import Response

from gateway.api.responses import FastJSONResponse
from gateway.auth.bearer import insufficient_scope
from gateway.errors import CATALOGUE, Problem
from gateway.lifecycle import ReadinessCheck
from gateway.services import services

router = APIRouter(tags=["Operations"])

_CHECK_TIMEOUT_S = 1.0


@router.get("/healthz", summary="The process is alive")
async def healthz() -> FastJSONResponse:
    return FastJSONResponse({"status": "ok"})


async def _run_check(check: ReadinessCheck) -> str | dict[str, Any]:
    """`ok`, `degraded` or `failing`; or a dict with that `status` and figures (lags, the reason)."""
    try:
        result = await asyncio.wait_for(check(), _CHECK_TIMEOUT_S)
    except Exception:  # a failing or hanging dependency is simply not ready
        return "failing"
    if isinstance(result, str | dict):
        return result
    return "ok" if result else "failing"


@router.get("/readyz", summary="The access log, rate-limit backend and connectors are reachable")
async def readyz(request: Request) -> FastJSONResponse:
    checks = services(request).readiness
    results = await asyncio.gather(*(_run_check(c) for c in checks.values()))
    report = dict(zip(checks, results, strict=True))
    ready = all((r if isinstance(r, str) else r.get("status")) != "failing" for r in results)
    return FastJSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": report},
        status_code=200 if ready else 503,
    )


@router.get("/metrics", summary="Prometheus metrics (bearer token with scope metrics:read)", response_class=Response)
async def metrics(request: Request) -> Response:
    """Per-administration volumes are not public: on this listener a token with `metrics:read` is needed.
    The cluster's scraper uses the separate listener of `GATEWAY_METRICS_PORT`, which needs none."""
    app = services(request)
    caller = await app.auth.bearer.authenticate(request.headers.get("authorization"))
    if "metrics:read" not in caller.scopes:
        raise insufficient_scope("metrics:read")
    registry = app.metrics
    return Response(registry.render(), media_type=registry.content_type)


DOCS_ASSETS_PATH = "/docs/assets"
# Swagger UI's script, style and icon as a kept Python package ships them: the page works on a network with
# no internet, and nothing is copied into this repository.
DOCS_ASSETS_DIR = importlib.resources.files("fastapi_offline") / "static"


@router.get("/docs", include_in_schema=False)
async def docs(request: Request) -> Response:
    """The OpenAPI description as JSON for tools (Accept: application/json), Swagger UI for people; every
    asset from this gateway, none from another host (no CDN, no online validator)."""
    accept = request.headers.get("accept", "")
    if "application/json" in accept and "text/html" not in accept:
        return FastJSONResponse(request.app.openapi())
    base = request.scope.get("root_path", "")
    return get_swagger_ui_html(
        openapi_url=f"{base}/openapi.json",
        title="Jamu gateway API",
        swagger_js_url=f"{base}{DOCS_ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{base}{DOCS_ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{base}{DOCS_ASSETS_PATH}/favicon.png",
        swagger_ui_parameters={"validatorUrl": None},
    )


@router.get("/problems/{code}", summary="What a problem code means")
async def problem_type(code: str) -> FastJSONResponse:
    kind = CATALOGUE.get(code)
    if kind is None:
        raise Problem("not_found", "no such problem type")
    return FastJSONResponse(
        {"code": kind.code, "status": kind.status, "title": kind.title, "description": kind.description}
    )
