"""The clients every part shares: one HTTP client (connectors, witnesses, trusted issuers' keys, the
console's OpenID provider), Redis when `GATEWAY_REDIS_URL` is set, and the tracer. Built first, so
closed last."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from redis.asyncio import Redis

from gateway.lifecycle import Component
from gateway.observability import tracer_for, tracer_provider
from gateway.settings import Settings


@dataclass
class Clients:
    http: httpx.AsyncClient
    redis: Redis | None
    provider: TracerProvider | None  # None: tracing off (no OTEL_* variable asks for it)
    tracer: trace.Tracer
    component: Component


def build_clients(settings: Settings) -> Clients:
    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=100), follow_redirects=False)
    redis = (
        Redis.from_url(
            settings.redis_url, socket_timeout=settings.redis_timeout_s, socket_connect_timeout=settings.redis_timeout_s
        )
        if settings.redis_url
        else None
    )
    provider = tracer_provider()

    async def close() -> None:
        if provider is not None:
            provider.shutdown()
        await http.aclose()
        if redis is not None:
            await redis.aclose()

    def abandon() -> None:
        if provider is not None:  # its exporter's thread runs from the start
            provider.shutdown()

    return Clients(http, redis, provider, tracer_for(provider), Component("clients", close=close, abandon=abandon))
