"""Life events, built from settings: the register writer that takes declarations (only with an embedded
register that holds records' status), the feed read from the register's outbox, and the pushers that
deliver each subscription's events (docs/life-events.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.audit.log import AccessLog
from gateway.connectors.base import Connector
from gateway.connectors.embedded import EmbeddedRegister
from gateway.events.delivery import Deliveries, DeliveryStore, PushSettings, WebhookSigner, deliveries_path
from gateway.events.feed import EventFeed
from gateway.events.register import RegisterWriter, subscribers
from gateway.identity.pseudonyms import SubjectHasher, SubjectRefs
from gateway.keyfiles import load_or_create_ed25519
from gateway.lifecycle import Component, close_each
from gateway.metrics import Metrics
from gateway.policy.store import PolicyStore
from gateway.settings import Settings


@dataclass
class LifeEvents:
    register: RegisterWriter | None  # declarations: only with the embedded register
    feed: EventFeed
    deliveries: Deliveries
    component: Component


def build_life_events(
    settings: Settings,
    *,
    policies: PolicyStore,
    connectors: Sequence[Connector],
    access_log: AccessLog,
    subjects: SubjectHasher,
    subject_refs: SubjectRefs,
    metrics: Metrics,
    owner: str,
) -> LifeEvents:
    # Without an embedded register (a remote one) the feeds are read from the register file all the
    # same, and stay empty.
    embedded = next(
        (c for c in connectors if isinstance(c, EmbeddedRegister) and "record_status" in c.attributes), None
    )
    register_path = embedded.path if embedded is not None else settings.data_dir / "register.db"
    feed = EventFeed(register_path)
    deliveries = Deliveries(
        policies,
        feed,
        DeliveryStore(deliveries_path(register_path)),
        access_log,
        WebhookSigner(load_or_create_ed25519(settings.keys_dir / "events-signing-key.pem")),
        subjects,
        subject_refs,
        source=f"{settings.issuer}/v1/declarations",
        metrics=metrics,
        owner=owner,
        settings=PushSettings(
            backoff_s=settings.events_backoff,
            horizon_s=settings.events_retry_horizon_s,
            timeout_s=settings.events_push_timeout_s,
            poll_s=settings.events_poll_s,
            lease_s=max(60.0, 4 * settings.events_push_timeout_s),
        ),
    )
    register = (
        RegisterWriter(register_path, lambda: subscribers(policies), on_commit=deliveries.notify)
        if embedded is not None
        else None
    )

    async def start() -> None:
        if register is not None:
            await register.start()
        await deliveries.start()

    async def close() -> None:
        await close_each("life events", deliveries.close, register.close if register else lambda: None, feed.close)

    async def events_ready() -> dict[str, object]:
        # Never "failing": the gateway serves whatever a subscriber does; a backlog or a failing push is degraded.
        try:
            return await asyncio.wait_for(deliveries.backlog(), 0.5)
        except Exception as exc:
            return {"status": "degraded", "reason": f"the push state could not be read: {type(exc).__name__}"}

    return LifeEvents(register, feed, deliveries, Component("life events", start, close, {"events": events_ready}))
