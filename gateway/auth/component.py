"""The gateway as an OAuth2 authorization server (tokens it issues) and as a resource server (bearer
tokens it accepts, its own and trusted issuers'), built from settings."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from redis.asyncio import Redis

from gateway.auth.bearer import BearerValidator
from gateway.auth.keys import SigningKeys, load_signing_keys
from gateway.auth.replay import MemoryReplayGuard, RedisReplayGuard, ReplayGuard
from gateway.auth.server import TokenService
from gateway.auth.trusted import TrustedIssuers, load_trusted_issuers
from gateway.lifecycle import Component, ConfigurationError
from gateway.policy.store import PolicyStore
from gateway.settings import Settings
from gateway.urls import secure_url


@dataclass
class Auth:
    signing_keys: SigningKeys
    tokens: TokenService
    bearer: BearerValidator
    component: Component  # nothing to start or close: keys are read at build, trusted issuers' on use


def build_auth(settings: Settings, policies: PolicyStore, http: httpx.AsyncClient, redis: Redis | None) -> Auth:
    try:
        secure_url(settings.token_endpoint)
    except ValueError:
        raise ConfigurationError(
            f"GATEWAY_ISSUER must be https (plain http only on loopback): {settings.issuer}"
        ) from None
    signing_keys = load_signing_keys(
        settings.signing_key_path,
        settings.keys_dir,
        settings.signing_alg,
        retire_after_s=settings.token_lifetime_s + settings.clock_leeway_s,
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
    tokens = TokenService(
        token_endpoint=settings.token_endpoint,
        issuer=settings.issuer,
        audience=settings.audience,
        policies=policies,
        keys=signing_keys,
        replay=replay,
        token_lifetime_s=settings.token_lifetime_s,
        leeway_s=settings.clock_leeway_s,
        assertion_max_lifetime_s=settings.client_assertion_max_lifetime_s,
    )
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
    return Auth(signing_keys, tokens, bearer, Component("tokens"))
