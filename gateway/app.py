"""`create_app(settings)`: the one place where the gateway is wired. No logic lives here: each package
builds its own part from settings (`build_*` in its `component.py`); this composes them, in the order
they depend on each other, and mounts the routes and the access middleware (docs/architecture.md)."""

from __future__ import annotations

import contextlib
import gc
import inspect
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

from gateway import __version__
from gateway.api import audit, consents, events, identity, jobs, oauth, ops, problems, transparency
from gateway.api.routes import add_routes
from gateway.audit.component import build_audit_log
from gateway.audit.log import AccessLog
from gateway.auth.component import build_auth
from gateway.bulk.component import build_bulk
from gateway.clients import Clients, build_clients
from gateway.connectors.base import Connector
from gateway.connectors.component import build_connectors_router
from gateway.consent.store import ConsentStore
from gateway.console import build_console
from gateway.console import web as console_web
from gateway.datadir import secure_data_dir
from gateway.events.component import build_life_events
from gateway.identity.component import build_pseudonyms
from gateway.lifecycle import ConfigurationError, Lifecycle
from gateway.metrics import Metrics
from gateway.middleware import AccessMiddleware, RootPath
from gateway.policy.component import build_policies
from gateway.ratelimit.admission import Admitter
from gateway.ratelimit.component import build_limits
from gateway.ratelimit.limiter import Limiter
from gateway.scrape import build_metrics_listener
from gateway.services import Services
from gateway.settings import Settings
from gateway.storage.component import build_database

__all__ = ["ConfigurationError", "Replacements", "create_app"]

DESCRIPTION = """Verify people against the national civil register, under policy, consent and audit.

Every operation that names a person is a `POST` with the NIN in the body; every `/v1/*` and
`/oauth2/token` response carries a `transaction_id`, the id of its access-log event."""


def _freeze_startup_objects() -> None:
    """Move what start-up built (modules, routes, schemas, policies: ~170k objects) out of the cyclic
    collector's reach. A full collection walked all of it and paused the loop 80 to 120 ms, the gateway's
    p99 under load; requests' own garbage is young and is still collected. Unfrozen at shutdown, so a
    process that builds many apps (the test suite) does not keep their cycles."""
    gc.collect()
    gc.freeze()


# The gateway's telemetry is its own (OpenTelemetry instrumentation with the gateway's spans, Prometheus
# metrics), so the framework's built-in telemetry (FastAPI ≥ 0.165) stays off: it would record validation
# failures with their input, which can hold a NIN, and it asks the OpenTelemetry API on every request
# whether providers are configured (about 5 µs a request).
FRAMEWORK_TELEMETRY_OFF: dict[str, Any] = (
    {
        "telemetry": {
            "tracing": False,
            "metrics": False,
            "logs": False,
            "operation_spans": False,
            "auto_configure": False,
        }
    }
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


@dataclass(frozen=True)
class Replacements:
    """Stand-ins a test passes for production parts, each meeting the protocol the part meets: no
    patching of a built app."""

    access_log: AccessLog | None = None  # e.g. `StubAccessLog`, to watch events as they are appended
    limiter: Limiter | None = None
    connectors: Sequence[Connector] | None = None


def create_app(settings: Settings | None = None, *, replace: Replacements | None = None) -> FastAPI:
    settings = settings or Settings()
    replace = replace or Replacements()
    secure_data_dir(settings.data_dir)
    lifecycle = Lifecycle()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            await lifecycle.start()
            _freeze_startup_objects()
            yield
        finally:
            gc.unfreeze()
            await lifecycle.close()

    try:
        app_services, clients = _compose(settings, replace, lifecycle)
        return _mount(settings, app_services, clients, lifespan)
    except BaseException:  # no app: what the parts built so far hold is let go
        lifecycle.abandon()
        raise


def _compose(settings: Settings, replace: Replacements, lifecycle: Lifecycle) -> tuple[Services, Clients]:
    """Every part, built from settings in the order they depend on each other; started in that order,
    closed in reverse."""
    clients = build_clients(settings)
    lifecycle.add(clients.component)
    metrics = Metrics()
    policies = build_policies(settings, metrics)
    lifecycle.add(policies.component)
    auth = build_auth(settings, policies.store, clients.http, clients.redis)
    lifecycle.add(auth.component)
    database = build_database(settings)
    lifecycle.add(database.component)
    log = build_audit_log(settings, database.engine, clients.http, metrics, replace.access_log)
    lifecycle.add(log.component)
    connectors = build_connectors_router(settings, clients.http, metrics, clients.tracer, replace.connectors)
    lifecycle.add(connectors.component)
    limits = build_limits(settings, policies.store, clients.redis, metrics, replace.limiter)
    lifecycle.add(limits.component, build_metrics_listener(settings, metrics))
    pseudonyms = build_pseudonyms(settings)
    bulk = build_bulk(
        settings,
        database.engine,
        policies=policies.store,
        connectors=connectors.router,
        subjects=pseudonyms.subjects,
        access_log=log.access_log,
        log_position=lambda: (log.store.origin, log.store.next_seq),
        owner=f"{log.store.origin}#{uuid.uuid4()}",
    )
    lifecycle.add(bulk.component)
    life_events = build_life_events(
        settings,
        policies=policies.store,
        connectors=connectors.router.connectors,
        access_log=log.access_log,
        subjects=pseudonyms.subjects,
        subject_refs=pseudonyms.subject_refs,
        metrics=metrics,
        owner=f"{socket.gethostname()}:{settings.log_dir.resolve()}:slot:{log.slot.index}",
    )
    lifecycle.add(life_events.component)
    console = build_console(
        settings,
        database.engine,
        clients.http,
        log.access_log,
        log.refusals,
        limits.trusted_proxies,
        owner=f"{socket.gethostname()}:{log.store.origin}#{uuid.uuid4()}",
    )
    lifecycle.add(console.component)
    services = Services(
        settings=settings,
        policies=policies.store,
        auth=auth,
        log=log,
        connectors=connectors.router,
        rate_limits=limits.rate_limits,
        trusted_proxies=limits.trusted_proxies,
        consents=ConsentStore(database.engine),
        subjects=pseudonyms.subjects,
        subject_refs=pseudonyms.subject_refs,
        bulk=bulk,
        events=life_events,
        console=console,
        tracer=clients.tracer,
        metrics=metrics,
        readiness=lifecycle.readiness,
    )
    return services, clients


def _mount(
    settings: Settings,
    services: Services,
    clients: Clients,
    lifespan: Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]],
) -> FastAPI:
    """The app: its routes, the access middleware in front of them, tracing outermost when it is on."""
    app = FastAPI(
        # No redirect to the path with(out) a trailing slash: its Location would be built from what the
        # client sent (Host, path, query), and nothing a client sends is echoed into a header.
        redirect_slashes=False,
        title="Jamu gateway",
        version=__version__,
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        **FRAMEWORK_TELEMETRY_OFF,
    )
    app.state.services = services
    problems.install(app)
    problems.describe(app)
    # The busiest routes first: matching walks the table in order.
    add_routes(
        app,
        identity.router,
        oauth.router,
        events.router,
        ops.router,
        consents.router,
        audit.router,
        transparency.router,
        jobs.router,
        console_web.router,
    )
    app.mount(ops.DOCS_ASSETS_PATH, StaticFiles(directory=str(ops.DOCS_ASSETS_DIR)), name="docs-assets")
    app.add_middleware(
        AccessMiddleware,
        access_log=services.log.access_log,
        metrics=services.metrics,
        max_body_bytes=settings.max_body_bytes,
        problem_base=settings.issuer,
        tracer=services.tracer,
        admitter=Admitter(services.auth.bearer, services.rate_limits),
        refusals=services.log.refusals,
        trusted_proxies=services.trusted_proxies,
        routes=app.router.routes,
        body_limits=[(jobs.UPLOAD_PATH, settings.bulk_max_upload_bytes)],
    )
    if settings.root_path:
        app.add_middleware(RootPath, root_path=settings.root_path)
    if clients.provider is not None:
        # Outermost, so the access record takes the server span's trace id.
        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=clients.provider,
            excluded_urls="healthz,readyz,metrics",
            exclude_spans=["receive", "send"],
        )
        HTTPXClientInstrumentor.instrument_client(clients.http, tracer_provider=clients.provider)
    return app
