"""Admission's limits, built from settings: each administration's windows (its policy), the per-source
and total windows for callers without a valid token, and which proxies may name the client."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from gateway.lifecycle import Component, ConfigurationError, ReadinessCheck
from gateway.metrics import Metrics
from gateway.policy.store import PolicyStore
from gateway.ratelimit.admission import Network, parse_networks
from gateway.ratelimit.backends import RedisBackend
from gateway.ratelimit.limiter import Limiter, RateLimiter, RateLimits, parse_windows
from gateway.settings import Settings


@dataclass
class Limits:
    rate_limits: RateLimits
    trusted_proxies: tuple[Network, ...]
    component: Component


def build_limits(
    settings: Settings, policies: PolicyStore, redis: Redis | None, metrics: Metrics, limiter: Limiter | None = None
) -> Limits:
    """`limiter`: a stand-in for the one built here (in process, or Redis shared by the replicas)."""
    try:
        unauthenticated = parse_windows(settings.unauthenticated_rate_limits)
        unauthenticated_total = parse_windows(settings.unauthenticated_total_rate_limits)
    except ValueError as exc:
        raise ConfigurationError(f"GATEWAY_UNAUTHENTICATED_(TOTAL_)RATE_LIMITS: {exc}") from None
    try:
        trusted_proxies = parse_networks(settings.trusted_proxies)
    except ValueError as exc:
        raise ConfigurationError(f"GATEWAY_TRUSTED_PROXIES: {exc}") from None
    built = limiter or RateLimiter(
        RedisBackend(redis, settings.redis_key_prefix) if redis is not None else None,
        replicas=settings.replicas,
        retry_shared_after_s=settings.redis_retry_s,
        timeout_s=settings.redis_timeout_s,
        metrics=metrics,
    )
    readiness: dict[str, ReadinessCheck] = {}
    if redis is not None:
        shared = redis

        async def rate_limit_ready() -> str:
            # Without Redis the limits still hold, locally: degraded, not unready.
            try:
                await shared.ping()
            except Exception:
                return "degraded"
            return built.health()

        readiness["rate_limit"] = rate_limit_ready
    return Limits(
        RateLimits(built, policies, unauthenticated, unauthenticated_total),
        trusted_proxies,
        Component("rate limits", readiness=readiness),
    )
