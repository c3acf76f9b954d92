"""Trusted external issuers (a national IdP): their configuration and their cached JWKS.

Keys are fetched with the shared httpx client, kept for `jwks_max_age_s`, and refetched early when a
token names an unknown `kid` — at most once every `jwks_refresh_interval_s`, so a flood of tokens with
made-up key ids cannot turn the gateway into a load generator against the IdP. A key that has left the
JWKS stops validating at the next refresh, tokens already verified and cached included: the bearer check
asks for the key on every use of an external token.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
import orjson
import yaml
from joserfc.jwk import Key, KeySet
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.policy.catalogue import ASYMMETRIC_ALGORITHMS, Scope
from gateway.policy.loader import check_client_jwks
from gateway.policy.model import Identifier
from gateway.urls import SecureUrl

log = logging.getLogger(__name__)

_MAX_JWKS_BYTES = 256 * 1024


class ClientMapping(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    administration: Identifier
    scopes: list[Scope] | None = None


class TrustedIssuerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    issuer: Annotated[str, Field(min_length=1)]
    jwks_url: SecureUrl
    audience: str | None = None
    algorithms: list[str] = Field(default_factory=lambda: ["Ed25519", "EdDSA", "ES256", "PS256", "RS256"])
    client_claim: str = "client_id"
    # The longest `exp - iat` accepted: an IdP's token for the gateway is short-lived like our own.
    max_lifetime_s: int = Field(300, ge=1, le=86_400)
    clients: dict[str, Identifier | ClientMapping]

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        bad = [a for a in value if a not in ASYMMETRIC_ALGORITHMS]
        if bad or not value:
            raise ValueError(f"algorithms must be among {', '.join(ASYMMETRIC_ALGORITHMS)}")
        return value

    def mapping(self, client_id: str) -> ClientMapping | None:
        entry = self.clients.get(client_id)
        if isinstance(entry, str):
            return ClientMapping(administration=entry)
        return entry


class TrustedIssuersFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    issuers: list[TrustedIssuerConfig] = []


def load_trusted_issuers(path: Path) -> list[TrustedIssuerConfig]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return TrustedIssuersFile.model_validate(raw).issuers
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot be read: {exc}") from None
    except ValidationError as exc:
        lines = [f"{path}: {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise ValueError("\n".join(lines)) from None


@dataclass
class _IssuerKeys:
    config: TrustedIssuerConfig
    keys: dict[str, Key] = field(default_factory=dict)
    fetched_at: float = float("-inf")
    attempted_at: float = float("-inf")
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class TrustedIssuers:
    """The external issuers we accept tokens from, and their keys."""

    def __init__(
        self,
        configs: list[TrustedIssuerConfig],
        http: httpx.AsyncClient,
        *,
        refresh_interval_s: float,
        max_age_s: float,
        timeout_s: float,
    ) -> None:
        self._issuers = {c.issuer: _IssuerKeys(c) for c in configs}
        self._http = http
        self._refresh_interval_s = refresh_interval_s
        self._max_age_s = max_age_s
        self._timeout_s = timeout_s
        self.fetches = 0

    def config(self, issuer: str) -> TrustedIssuerConfig | None:
        entry = self._issuers.get(issuer)
        return entry.config if entry else None

    async def key(self, issuer: str, kid: str) -> Key | None:
        """The issuer's key `kid` as of its latest JWKS (refetched when older than `max_age_s`, or early
        for an unknown kid); None once the key has left the JWKS."""
        entry = self._issuers.get(issuer)
        if entry is None:
            return None
        now = time.monotonic()
        # Stale keys are refetched, but no more often than every refresh interval: an IdP that is down
        # is not hammered (the keys already held keep working meanwhile).
        if now - entry.fetched_at > self._max_age_s and now - entry.attempted_at >= self._refresh_interval_s:
            await self._refresh(entry, now)
        key = entry.keys.get(kid)
        if key is None and now - entry.attempted_at >= self._refresh_interval_s:
            await self._refresh(entry, now)
            key = entry.keys.get(kid)
        return key

    async def _refresh(self, entry: _IssuerKeys, asked_at: float) -> None:
        async with entry.lock:
            if entry.attempted_at >= asked_at:  # another request refreshed while we waited
                return
            entry.attempted_at = time.monotonic()
            self.fetches += 1
            try:
                keys = await self._fetch(entry.config.jwks_url)
            except Exception as exc:  # keep serving the keys we had; the IdP may be back soon
                log.warning("cannot refresh JWKS of issuer %s: %s", entry.config.issuer, exc)
                return
            entry.keys = keys
            entry.fetched_at = time.monotonic()

    async def _fetch(self, url: str) -> dict[str, Key]:
        async with self._http.stream("GET", url, timeout=self._timeout_s) as response:
            response.raise_for_status()
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > _MAX_JWKS_BYTES:
                    raise ValueError("JWKS document too large")
        jwks: Any = orjson.loads(bytes(body))
        keyset: KeySet = check_client_jwks(jwks)
        return {k.kid: k for k in keyset.keys if k.kid}
