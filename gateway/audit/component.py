"""The access log and everything around it, built from settings: this process's segment store under its
origin, the writer, the query index's follower, the witnesses' client, proofs over the local logs and
the refusal tally (docs/architecture.md, "Where the data lives")."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.ext.asyncio import AsyncEngine

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
    Slot,
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
from gateway.audit.witness import WitnessClient, WitnessesFile, load_witnesses
from gateway.audit.writer import DurableAccessLog
from gateway.keyfiles import load_or_create_ed25519
from gateway.lifecycle import Component, ConfigurationError, ReadinessCheck, close_each
from gateway.metrics import Metrics
from gateway.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class AuditLog:
    access_log: AccessLog
    store: SegmentStore  # this process's own log
    index: AuditIndex  # reads of the query index (search, a person's history, integrity)
    follower: IndexTask  # what keeps the query index up with the log
    views: LogViews  # proofs and receipts over the local logs
    witnesses: WitnessesFile | None
    witness_client: WitnessClient | None
    refusals: RefusalTally
    checkpoint_keys: dict[str, Ed25519PublicKey]
    slot: Slot
    component: Component


def build_audit_log(
    settings: Settings,
    engine: AsyncEngine,
    http: httpx.AsyncClient,
    metrics: Metrics,
    access_log: AccessLog | None = None,
) -> AuditLog:
    """`access_log`: a stand-in for the durable writer (tests that watch events as they are appended)."""
    signer = CheckpointSigner(load_or_create_ed25519(settings.checkpoint_key_path))
    try:
        slot = claim_slot(settings.log_dir)
    except SlotsExhausted as exc:
        raise ConfigurationError(str(exc)) from None
    try:
        origin, retired_head = current_origin(
            settings.log_dir, log_origin(settings.issuer, settings.log_origin, slot.index, settings.workers)
        )
        directory = log_directory(settings.log_dir, origin)
    except ValueError as exc:
        slot.release()
        raise ConfigurationError(f"GATEWAY_LOG_ORIGIN: {exc}") from None
    try:
        witnesses = load_witnesses(settings.witnesses_file) if settings.witnesses_file else None
    except ValueError as exc:
        slot.release()
        raise ConfigurationError(f"GATEWAY_WITNESSES_FILE: {exc}") from None
    store = SegmentStore(
        directory,
        origin=origin,
        signer=signer,
        link_to=retired_head,
        segment_bytes=settings.audit_segment_bytes,
        seal_every=settings.audit_seal_every,
    )
    follower = IndexFollower(engine, store.directory, origin=origin)
    index = IndexTask(follower, lambda: store.next_seq, metrics)
    writer: AccessLog = access_log or DurableAccessLog(
        store,
        metrics,
        max_batch=settings.audit_max_batch,
        write_timeout_s=settings.database_timeout_s,
        seal_interval_s=settings.audit_seal_interval_s,
        on_durable=index.notify,
    )
    witness_client = (
        None
        if witnesses is None
        else WitnessClient(
            witnesses,
            origin,
            store.consistency,
            store.record_witnessed,
            http,
            metrics,
            timeout_s=settings.witness_timeout_s,
            retry_s=settings.witness_retry_s,
        )
    )
    if witness_client is not None:
        store.on_checkpoint = witness_client.checkpoint_signed
    store.on_refusal = lambda reason: metrics.audit_log_refusing.set(0 if reason is None else 1)
    views = LogViews(settings.log_dir)
    refusals = RefusalTally(writer)
    scrub: list[asyncio.Task[str | None]] = []

    async def start() -> None:
        await continue_legacy_log(engine, signer, settings, store)
        await settle_log(store, follower, engine, witness_client)
        if witness_client is not None:
            witness_client.start()
        await writer.start()
        scrub.append(asyncio.create_task(asyncio.to_thread(store.scrub), name="access-log-scrub"))
        await follower.register()
        index.start()
        index.adopt(adopt_idle_logs(engine, settings.log_dir, store.directory, signer))
        refusals.start()

    async def close_witnesses() -> None:
        if witness_client is not None:
            with contextlib.suppress(Exception):  # the shutdown checkpoint, once, without a retry
                await asyncio.wait_for(witness_client.round(), 3 * settings.witness_timeout_s + 1)
            await witness_client.close()

    async def close() -> None:
        await close_each(
            "the access log",
            refusals.close,
            writer.close,
            close_witnesses,
            lambda: [task.cancel() for task in scrub],
            views.close,
            index.close,
            store.close,
            slot.release,
        )

    async def access_log_ready() -> bool | dict[str, str]:
        if store.refusal:  # the log's tree does not extend its last checkpoint: say why
            return {"status": "failing", "reason": store.refusal}
        return await writer.ready()

    async def index_ready() -> str:
        # Verification goes on whatever the index does: a lagging index is degraded, not unready.
        _, waited = index.lag()
        return "degraded" if index.failing or waited > settings.audit_index_max_lag_s else "ok"

    readiness: dict[str, ReadinessCheck] = {"access_log": access_log_ready, "audit_index": index_ready}
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

    return AuditLog(
        access_log=writer,
        store=store,
        index=AuditIndex(engine),
        follower=index,
        views=views,
        witnesses=witnesses,
        witness_client=witness_client,
        refusals=refusals,
        checkpoint_keys={**retired_log_keys(settings.checkpoint_key_path), signer.key_id: signer.public_key},
        slot=slot,
        component=Component("access log", start, close, readiness, abandon=slot.release),
    )


async def settle_log(
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
