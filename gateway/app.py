"""`create_app(settings)`: the one place where the gateway is wired. No logic lives here."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
import socket
import uuid
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway import __version__
from gateway.api import audit, consents, events, identity, jobs, oauth, ops, problems, transparency
from gateway.api.routes import add_routes
from gateway.audit.chain import CheckpointSigner
from gateway.audit.index import (
    AuditIndex,
    IndexFollower,
    IndexTask,
    LogBehindIndex,
    adopt_idle_logs,
    log_behind_index,
)
from gateway.audit.legacy import continue_legacy_log
from gateway.audit.log import AccessLog
from gateway.audit.offline import retired_log_keys
from gateway.audit.origin import (
    SlotsExhausted,
    claim_slot,
    current_origin,
    log_directory,
    log_origin,
    restore_tag,
    rotation_tag,
    successor_origin,
)
from gateway.audit.proofs import LogViews
from gateway.audit.refusals import RefusalTally
from gateway.audit.segment_store import NotAnExtension, SegmentStore
from gateway.audit.witness import WitnessClient, load_witnesses
from gateway.audit.writer import DurableAccessLog
from gateway.auth.bearer import BearerValidator
from gateway.auth.keys import load_signing_keys
from gateway.auth.replay import MemoryReplayGuard, RedisReplayGuard, ReplayGuard
from gateway.auth.server import TokenService
from gateway.auth.trusted import TrustedIssuers, load_trusted_issuers
from gateway.bulk.files import JobFiles
from gateway.bulk.runner import ChunkQueue, ChunkRunner, LocalChunkQueue, Retention, SaqChunkQueue
from gateway.bulk.store import JobStore
from gateway.connectors.embedded import EmbeddedRegister
from gateway.connectors.router import ConnectorRouter, build_connectors, load_connectors_file
from gateway.consent.store import ConsentStore
from gateway.console import build_console
from gateway.console import web as console_web
from gateway.datadir import secure_data_dir
from gateway.events.delivery import Deliveries, DeliveryStore, PushSettings, WebhookSigner, deliveries_path
from gateway.events.feed import EventFeed
from gateway.events.register import RegisterWriter, subscribers
from gateway.identity.pseudonyms import SubjectHasher, SubjectRefs
from gateway.keyfiles import load_or_create_ed25519, load_or_create_secret
from gateway.middleware import AccessMiddleware
from gateway.observability import tracer_for, tracer_provider
from gateway.policy.loader import load_policies
from gateway.policy.reload import PolicyReloader
from gateway.policy.store import PolicyStore
from gateway.ratelimit.admission import Admitter, parse_networks
from gateway.ratelimit.backends import RedisBackend
from gateway.ratelimit.limiter import RateLimiter, RateLimits, parse_windows
from gateway.scrape import ScrapeListener
from gateway.services import ReadinessCheck, Services
from gateway.settings import Settings
from gateway.storage.database import DatabaseConfigError, create_engine, database_url, migrate
from gateway.telemetry import Metrics
from gateway.urls import secure_url

log = logging.getLogger(__name__)

DESCRIPTION = """Verify people against the national civil register, under policy, consent and audit.

Every operation that names a person is a `POST` with the NIN in the body; every `/v1/*` and
`/oauth2/token` response carries a `transaction_id`, the id of its access-log event."""


class ConfigurationError(Exception):
    """The settings cannot make a safe gateway; the message says which and why."""


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
FRAMEWORK_TELEMETRY_OFF: dict[str, object] = (
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


async def _settle_log(
    store: SegmentStore, follower: IndexFollower, engine: AsyncEngine, witnesses: WitnessClient | None
) -> None:
    """Before the first append: a log made under a rotated key, or found behind what was already signed
    of it — entries a checkpoint covers gone, the index holding more, or witnesses holding a larger tree
    (restored from an older copy) — is retired and continued under a new origin, rather than signing a
    tree that does not extend its last checkpoint. Its entries not yet indexed are indexed first. Any
    failure here is left to the writer, which reports it (and /readyz) as it starts."""
    try:
        reason, tag = await _successor_needed(store, engine, witnesses)
        if reason is None or tag is None:
            return
        with contextlib.suppress(LogBehindIndex):  # a log behind the index has nothing more to give it
            await follower.catch_up()
        await store.begin_successor(reason, tag)
    except Exception as exc:
        log.error("access log %s cannot be settled before writing: %s", store.origin, exc)
        return
    follower.retarget(store.directory, store.origin)
    if witnesses is not None:
        witnesses.origin = store.origin


async def _successor_needed(
    store: SegmentStore, engine: AsyncEngine, witnesses: WitnessClient | None
) -> tuple[str | None, str | None]:
    if await asyncio.to_thread(store.key_changed):
        tag = rotation_tag(store.signer_key_id)
        if await log_behind_index(engine, successor_origin(store.origin, tag), 0) is not None:
            tag = restore_tag(store.directory.parent, store.origin)  # that name was used: a data dir restored
        return "the log key was rotated", tag
    try:
        await store.probe()
    except NotAnExtension:
        if not store.cut_short:
            return None, None  # a rewrite: the log refuses, and says why, until someone has looked
        reason: str | None = f"restored from an older copy: {store.refusal}"
    else:
        reason = await log_behind_index(engine, store.origin, store.next_seq)
        if reason is None and witnesses is not None and store.latest_note is not None:
            reason = await witnesses.ahead_of(store.latest_note, store.signed_size)
    return reason, None if reason is None else restore_tag(store.directory.parent, store.origin)


def create_app(settings: Settings | None = None, *, access_log: AccessLog | None = None) -> FastAPI:
    settings = settings or Settings()
    secure_data_dir(settings.data_dir)
    try:
        secure_url(settings.token_endpoint)
    except ValueError:
        raise ConfigurationError(
            f"GATEWAY_ISSUER must be https (plain http only on loopback): {settings.issuer}"
        ) from None

    policies = PolicyStore(load_policies(settings.policies_dir))
    signing_keys = load_signing_keys(
        settings.signing_key_path,
        settings.keys_dir,
        settings.signing_alg,
        retire_after_s=settings.token_lifetime_s + settings.clock_leeway_s,
    )
    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=100), follow_redirects=False)
    redis = (
        Redis.from_url(
            settings.redis_url, socket_timeout=settings.redis_timeout_s, socket_connect_timeout=settings.redis_timeout_s
        )
        if settings.redis_url
        else None
    )
    replay: ReplayGuard = (
        RedisReplayGuard(redis, settings.redis_key_prefix) if redis is not None else MemoryReplayGuard()
    )
    trusted = None
    if settings.trusted_issuers_file is not None:
        try:
            configs = load_trusted_issuers(settings.trusted_issuers_file)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        trusted = TrustedIssuers(
            configs,
            http,
            refresh_interval_s=settings.jwks_refresh_interval_s,
            max_age_s=settings.jwks_max_age_s,
            timeout_s=settings.jwks_fetch_timeout_s,
        )
    metrics = Metrics()
    try:
        engine = create_engine(
            database_url(settings.database_url, settings.data_dir),
            schema=settings.database_schema,
            statement_timeout_s=settings.database_timeout_s,
        )
    except DatabaseConfigError as exc:
        raise ConfigurationError(f"GATEWAY_DATABASE_URL: {exc}") from None
    signer = CheckpointSigner(load_or_create_ed25519(settings.checkpoint_key_path))
    try:
        slot = claim_slot(settings.log_dir)
    except SlotsExhausted as exc:
        raise ConfigurationError(str(exc)) from None
    try:
        origin, retired_head = current_origin(
            settings.log_dir, log_origin(settings.issuer, settings.log_origin, slot.index, settings.workers)
        )
        log_dir = log_directory(settings.log_dir, origin)
    except ValueError as exc:
        raise ConfigurationError(f"GATEWAY_LOG_ORIGIN: {exc}") from None
    segment_store = SegmentStore(
        log_dir,
        origin=origin,
        signer=signer,
        link_to=retired_head,
        segment_bytes=settings.audit_segment_bytes,
        seal_every=settings.audit_seal_every,
    )
    index_follower = IndexFollower(engine, segment_store.directory, origin=origin)
    index_task = IndexTask(index_follower, lambda: segment_store.next_seq, metrics)
    audit_index = AuditIndex(engine)
    access_log = access_log or DurableAccessLog(
        segment_store,
        metrics,
        max_batch=settings.audit_max_batch,
        write_timeout_s=settings.database_timeout_s,
        seal_interval_s=settings.audit_seal_interval_s,
        on_durable=index_task.notify,
    )
    try:
        witnesses = load_witnesses(settings.witnesses_file) if settings.witnesses_file else None
    except ValueError as exc:
        raise ConfigurationError(f"GATEWAY_WITNESSES_FILE: {exc}") from None
    witness_client = (
        None
        if witnesses is None
        else WitnessClient(
            witnesses,
            origin,
            segment_store.consistency,
            segment_store.record_witnessed,
            http,
            metrics,
            timeout_s=settings.witness_timeout_s,
            retry_s=settings.witness_retry_s,
        )
    )
    if witness_client is not None:
        segment_store.on_checkpoint = witness_client.checkpoint_signed
    log_views = LogViews(settings.log_dir)
    segment_store.on_refusal = lambda reason: metrics.audit_log_refusing.set(0 if reason is None else 1)

    try:
        unauthenticated = parse_windows(settings.unauthenticated_rate_limits)
        unauthenticated_total = parse_windows(settings.unauthenticated_total_rate_limits)
    except ValueError as exc:
        raise ConfigurationError(f"GATEWAY_UNAUTHENTICATED_(TOTAL_)RATE_LIMITS: {exc}") from None
    limiter = RateLimiter(
        RedisBackend(redis, settings.redis_key_prefix) if redis is not None else None,
        replicas=settings.replicas,
        retry_shared_after_s=settings.redis_retry_s,
        timeout_s=settings.redis_timeout_s,
        metrics=metrics,
    )
    rate_limits = RateLimits(limiter, policies, unauthenticated, unauthenticated_total)
    try:
        trusted_proxies = parse_networks(settings.trusted_proxies)
    except ValueError as exc:
        raise ConfigurationError(f"GATEWAY_TRUSTED_PROXIES: {exc}") from None
    bearer = BearerValidator(
        issuer=settings.issuer,
        audience=settings.audience,
        signing_keys=signing_keys,
        policies=policies,
        trusted=trusted,
        leeway_s=settings.clock_leeway_s,
        max_token_bytes=settings.max_token_bytes,
        cache_size=settings.token_cache_size,
    )
    refusals = RefusalTally(access_log)
    scrape = ScrapeListener(metrics, settings.metrics_host, settings.metrics_port) if settings.metrics_port else None

    try:
        connectors_config = load_connectors_file(settings.connectors_file)
    except ValueError as exc:
        raise ConfigurationError(f"GATEWAY_CONNECTORS_FILE: {exc}") from None
    provider = tracer_provider()
    tracer = tracer_for(provider)
    connectors = build_connectors(connectors_config, settings.data_dir, http)
    router = ConnectorRouter(connectors, metrics, tracer)

    async def connectors_ready() -> bool:
        return all((await router.health()).values())

    async def index_ready() -> str:
        # Verification goes on whatever the index does: a lagging index is degraded, not unready.
        _, waited = index_task.lag()
        return "degraded" if index_task.failing or waited > settings.audit_index_max_lag_s else "ok"

    async def access_log_ready() -> bool | dict[str, str]:
        if segment_store.refusal:  # the log's tree does not extend its last checkpoint: say why
            return {"status": "failing", "reason": segment_store.refusal}
        return await access_log.ready()

    readiness: dict[str, ReadinessCheck] = {
        "access_log": access_log_ready,
        "audit_index": index_ready,
        "connectors": connectors_ready,
    }
    if witness_client is not None:
        client = witness_client

        async def witnesses_ready() -> dict[str, object]:
            # Never "failing": without witnesses the log goes on (durable, signed); only its publication waits.
            lag = client.lag()
            return {
                "status": "degraded" if lag > settings.witness_max_lag_s or client.problems() else "ok",
                "lag_s": round(lag, 1),
                "published_size": client.published.size if client.published else None,
                "witnesses": client.status(),
            }

        readiness["witnesses"] = witnesses_ready
    if redis is not None:
        redis_client = redis

        async def rate_limit_ready() -> str:
            # Without Redis the limits still hold, locally: degraded, not unready.
            try:
                await redis_client.ping()
            except Exception:
                return "degraded"
            return limiter.health()

        readiness["rate_limit"] = rate_limit_ready

    job_store = JobStore(engine, results_days=settings.bulk_results_days)
    job_files = JobFiles(settings.jobs_path)
    subjects = SubjectHasher(load_or_create_secret(settings.subject_key_path))
    chunk_runner = ChunkRunner(
        job_store,
        job_files,
        policies=policies,
        identity=router,
        subjects=subjects,
        access_log=access_log,
        log_position=lambda: (segment_store.origin, segment_store.next_seq),
        log_root=settings.log_dir,
        owner=f"{segment_store.origin}#{uuid.uuid4()}",
        lease_s=settings.bulk_lease_s,
    )
    chunk_queue: ChunkQueue = (
        SaqChunkQueue(
            settings.redis_url,
            f"{settings.redis_key_prefix}bulk",
            job_store,
            job_files.identity,
            settings.bulk_workers,
            lease_s=settings.bulk_lease_s,
        )
        if settings.redis_url
        else LocalChunkQueue(job_store, job_files.identity, settings.bulk_workers)
    )
    retention = Retention(job_store, job_files)

    # Life events: declarations write the embedded register that holds the records' status; without one
    # (a remote register) the feeds are read from the register file all the same, and stay empty.
    register_path = next(
        (c.path for c in connectors if isinstance(c, EmbeddedRegister) and "record_status" in c.attributes),
        settings.data_dir / "register.db",
    )
    has_register = any(isinstance(c, EmbeddedRegister) and "record_status" in c.attributes for c in connectors)
    subject_refs = SubjectRefs(load_or_create_secret(settings.pseudonym_key_path))
    event_feed = EventFeed(register_path)
    deliveries = Deliveries(
        policies,
        event_feed,
        DeliveryStore(deliveries_path(register_path)),
        access_log,
        WebhookSigner(load_or_create_ed25519(settings.keys_dir / "events-signing-key.pem")),
        subjects,
        subject_refs,
        source=f"{settings.issuer}/v1/declarations",
        metrics=metrics,
        owner=f"{socket.gethostname()}:{settings.log_dir.resolve()}:slot:{slot.index}",
        settings=PushSettings(
            backoff_s=settings.events_backoff,
            horizon_s=settings.events_retry_horizon_s,
            timeout_s=settings.events_push_timeout_s,
            poll_s=settings.events_poll_s,
            lease_s=max(60.0, 4 * settings.events_push_timeout_s),
        ),
    )
    register_writer = (
        RegisterWriter(register_path, lambda: subscribers(policies), on_commit=deliveries.notify)
        if has_register
        else None
    )

    async def events_ready() -> dict[str, object]:
        # Never "failing": the gateway serves whatever a subscriber does; a backlog or a failing push is degraded.
        try:
            return await asyncio.wait_for(deliveries.backlog(), 0.5)
        except Exception as exc:
            return {"status": "degraded", "reason": f"the push state could not be read: {type(exc).__name__}"}

    readiness["events"] = events_ready

    try:
        console = build_console(
            settings,
            engine,
            http,
            access_log,
            refusals,
            trusted_proxies,
            owner=f"{socket.gethostname()}:{segment_store.origin}#{uuid.uuid4()}",
        )
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None

    app_services = Services(
        settings=settings,
        policies=policies,
        signing_keys=signing_keys,
        tokens=TokenService(
            token_endpoint=settings.token_endpoint,
            issuer=settings.issuer,
            audience=settings.audience,
            policies=policies,
            keys=signing_keys,
            replay=replay,
            token_lifetime_s=settings.token_lifetime_s,
            leeway_s=settings.clock_leeway_s,
            assertion_max_lifetime_s=settings.client_assertion_max_lifetime_s,
        ),
        bearer=bearer,
        access_log=access_log,
        audit=audit_index,
        index=index_task,
        log_views=log_views,
        log_store=segment_store,
        witnesses=witnesses,
        witness_client=witness_client,
        checkpoint_keys={**retired_log_keys(settings.checkpoint_key_path), signer.key_id: signer.public_key},
        subjects=subjects,
        subject_refs=subject_refs,
        identity=router,
        consents=ConsentStore(engine),
        tracer=tracer,
        metrics=metrics,
        rate_limits=rate_limits,
        readiness=readiness,
        jobs=job_store,
        job_files=job_files,
        chunk_queue=chunk_queue,
        register=register_writer,
        feed=event_feed,
        deliveries=deliveries,
        webhook_signer=deliveries.signer,
        events_source=deliveries.source,
        console=console,
    )

    reloader = PolicyReloader(policies, settings.policies_dir, metrics, settings.policy_reload_interval_s)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await migrate(engine, settings.database_schema)
        await continue_legacy_log(engine, signer, settings, segment_store)
        await _settle_log(segment_store, index_follower, engine, witness_client)
        if witness_client is not None:
            witness_client.start()
        await access_log.start()
        scrub = asyncio.create_task(asyncio.to_thread(segment_store.scrub), name="access-log-scrub")
        await index_follower.register()
        index_task.start()
        index_task.adopt(adopt_idle_logs(engine, settings.log_dir, segment_store.directory, signer))
        refusals.start()
        if scrape is not None:
            await scrape.start()
        reloader.start()
        await chunk_queue.start(chunk_runner.run)
        retention.start()
        if register_writer is not None:
            await register_writer.start()
        await deliveries.start()
        console.start()
        _freeze_startup_objects()
        try:
            yield
        finally:
            gc.unfreeze()
            await console.close()
            await chunk_queue.close()
            await retention.close()
            await deliveries.close()
            if register_writer is not None:
                await register_writer.close()
            event_feed.close()
            await reloader.stop()
            if scrape is not None:
                await scrape.close()
            await refusals.close()
            await access_log.close()
            if witness_client is not None:
                with contextlib.suppress(Exception):  # the shutdown checkpoint, once, without a retry
                    await asyncio.wait_for(witness_client.round(), 3 * settings.witness_timeout_s + 1)
                await witness_client.close()
            scrub.cancel()
            log_views.close()
            await index_task.close()
            await segment_store.close()
            slot.release()
            await engine.dispose()
            await router.close()
            if provider is not None:
                provider.shutdown()
            await http.aclose()
            if redis is not None:
                await redis.aclose()

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
        access_log=access_log,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        problem_base=settings.issuer,
        tracer=tracer,
        admitter=Admitter(bearer, rate_limits),
        refusals=refusals,
        trusted_proxies=trusted_proxies,
        root_path=settings.root_path,
        routes=app.router.routes,
        body_limits=[(jobs.UPLOAD_PATH, settings.bulk_max_upload_bytes)],
    )
    if provider is not None:
        # Outermost, so the access record takes the server span's trace id.
        FastAPIInstrumentor.instrument_app(
            app, tracer_provider=provider, excluded_urls="healthz,readyz,metrics", exclude_spans=["receive", "send"]
        )
        HTTPXClientInstrumentor.instrument_client(http, tracer_provider=provider)
    return app
