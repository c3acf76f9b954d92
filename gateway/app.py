"""`create_app(settings)`: the one place where the gateway is wired. No logic lives here: each package
builds its own part from settings (`build_*` in its `component.py`); this composes them, in the order
they depend on each other, and mounts the routes and the access middleware (docs/architecture.md)."""

from __future__ import annotations

import contextlib
import gc
import inspect
import socket
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from redis.asyncio import Redis

from gateway import __version__
from gateway.api import audit, consents, events, identity, jobs, oauth, ops, problems, transparency
from gateway.api.routes import add_routes
from gateway.audit.component import build_audit_log
from gateway.audit.log import AccessLog
from gateway.auth.component import build_auth
from gateway.bulk.component import build_bulk
from gateway.connectors.base import Connector
from gateway.connectors.component import build_router
from gateway.consent.store import ConsentStore
from gateway.console import build_console
from gateway.console import web as console_web
from gateway.datadir import secure_data_dir
from gateway.events.component import build_life_events
from gateway.identity.pseudonyms import SubjectHasher, SubjectRefs
from gateway.keyfiles import load_or_create_secret
from gateway.lifecycle import Component, ConfigurationError, Lifecycle, started
from gateway.metrics import Metrics
from gateway.middleware import AccessMiddleware, RootPath
from gateway.observability import tracer_for, tracer_provider
from gateway.policy.loader import load_policies
from gateway.policy.reload import PolicyReloader
from gateway.policy.store import PolicyStore
from gateway.ratelimit.admission import Admitter
from gateway.ratelimit.component import build_limits
from gateway.ratelimit.limiter import Limiter
from gateway.scrape import ScrapeListener
from gateway.services import Services
from gateway.settings import Settings
from gateway.storage.component import build_database
from gateway.urls import secure_url

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
    try:
        secure_url(settings.token_endpoint)
    except ValueError:
        raise ConfigurationError(
            f"GATEWAY_ISSUER must be https (plain http only on loopback): {settings.issuer}"
        ) from None
    lifecycle = Lifecycle()

    # Shared clients: added first, so closed last.
    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=100), follow_redirects=False)
    redis = (
        Redis.from_url(
            settings.redis_url, socket_timeout=settings.redis_timeout_s, socket_connect_timeout=settings.redis_timeout_s
        )
        if settings.redis_url
        else None
    )
    provider = tracer_provider()
    tracer = tracer_for(provider)

    async def close_clients() -> None:
        if provider is not None:
            provider.shutdown()
        await http.aclose()
        if redis is not None:
            await redis.aclose()

    lifecycle.add(Component("clients", close=close_clients))
    metrics = Metrics()
    policies = PolicyStore(load_policies(settings.policies_dir))
    auth = build_auth(settings, policies, http, redis)
    engine, database = build_database(settings)
    lifecycle.add(database)
    audit_log = build_audit_log(settings, engine, http, metrics, replace.access_log)
    lifecycle.add(audit_log.component)
    connectors, connectors_component = build_router(settings, http, metrics, tracer, replace.connectors)
    lifecycle.add(connectors_component)
    limits = build_limits(settings, policies, redis, metrics, replace.limiter)
    lifecycle.add(limits.component)
    if settings.metrics_port:
        scrape = ScrapeListener(metrics, settings.metrics_host, settings.metrics_port)
        lifecycle.add(Component("metrics listener", scrape.start, scrape.close))
    reloader = PolicyReloader(policies, settings.policies_dir, metrics, settings.policy_reload_interval_s)
    lifecycle.add(Component("policy reloader", started(reloader.start), reloader.stop))
    subjects = SubjectHasher(load_or_create_secret(settings.subject_key_path))
    subject_refs = SubjectRefs(load_or_create_secret(settings.pseudonym_key_path))
    bulk = build_bulk(
        settings,
        engine,
        policies=policies,
        connectors=connectors,
        subjects=subjects,
        access_log=audit_log.access_log,
        log_position=lambda: (audit_log.store.origin, audit_log.store.next_seq),
        owner=f"{audit_log.store.origin}#{uuid.uuid4()}",
    )
    lifecycle.add(bulk.component)
    life_events = build_life_events(
        settings,
        policies=policies,
        connectors=connectors.connectors,
        access_log=audit_log.access_log,
        subjects=subjects,
        subject_refs=subject_refs,
        metrics=metrics,
        owner=f"{socket.gethostname()}:{settings.log_dir.resolve()}:slot:{audit_log.slot.index}",
    )
    lifecycle.add(life_events.component)
    try:
        console = build_console(
            settings,
            engine,
            http,
            audit_log.access_log,
            audit_log.refusals,
            limits.trusted_proxies,
            owner=f"{socket.gethostname()}:{audit_log.store.origin}#{uuid.uuid4()}",
        )
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    lifecycle.add(Component("console", console.start, console.close))

    app_services = Services(
        settings=settings,
        policies=policies,
        signing_keys=auth.signing_keys,
        tokens=auth.tokens,
        bearer=auth.bearer,
        access_log=audit_log.access_log,
        audit=audit_log.audit,
        index=audit_log.index,
        log_views=audit_log.views,
        log_store=audit_log.store,
        witnesses=audit_log.witnesses,
        witness_client=audit_log.witness_client,
        checkpoint_keys=audit_log.checkpoint_keys,
        subjects=subjects,
        subject_refs=subject_refs,
        connectors=connectors,
        consents=ConsentStore(engine),
        tracer=tracer,
        metrics=metrics,
        rate_limits=limits.rate_limits,
        readiness=lifecycle.readiness,
        jobs=bulk.jobs,
        job_files=bulk.files,
        chunk_queue=bulk.queue,
        register=life_events.register,
        feed=life_events.feed,
        deliveries=life_events.deliveries,
        webhook_signer=life_events.deliveries.signer,
        events_source=life_events.deliveries.source,
        console=console,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            await lifecycle.start()
            _freeze_startup_objects()
            yield
        finally:
            gc.unfreeze()
            await lifecycle.close()

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
    app.state.services = app_services
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
        access_log=audit_log.access_log,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        problem_base=settings.issuer,
        tracer=tracer,
        admitter=Admitter(auth.bearer, limits.rate_limits),
        refusals=audit_log.refusals,
        trusted_proxies=limits.trusted_proxies,
        routes=app.router.routes,
        body_limits=[(jobs.UPLOAD_PATH, settings.bulk_max_upload_bytes)],
    )
    if settings.root_path:
        app.add_middleware(RootPath, root_path=settings.root_path)
    if provider is not None:
        # Outermost, so the access record takes the server span's trace id.
        FastAPIInstrumentor.instrument_app(
            app, tracer_provider=provider, excluded_urls="healthz,readyz,metrics", exclude_spans=["receive", "send"]
        )
        HTTPXClientInstrumentor.instrument_client(http, tracer_provider=provider)
    return app
