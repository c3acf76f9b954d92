"""Bearer-token validation for protected routes (RFC 6750, RFC 9068).

Strict where it matters: an explicit algorithm allow-list (no `none`, no HMAC), `typ: at+jwt`, a `kid`
that names a key we hold, `iss`, `aud`, `exp`/`nbf`/`iat` with a small leeway. Fast on the hot path:
a verified token is cached until it expires, so a busy client pays one signature check per token.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from joserfc import jws
from joserfc.errors import ExpiredTokenError, JoseError, MissingClaimError
from joserfc.jwk import Key
from joserfc.jws import JWSRegistry
from joserfc.jwt import JWTClaimsRegistry

from gateway.auth.keys import SigningKeys
from gateway.auth.trusted import TrustedIssuers
from gateway.errors import Problem
from gateway.policy.catalogue import SCOPES, SENSITIVE_SCOPES
from gateway.policy.store import PolicyStore

_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
_OWN_ALGORITHMS = ("Ed25519", "EdDSA", "ES256")
_KNOWN_SCOPES = frozenset(SCOPES)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling, as far as every later stage is concerned."""

    administration: str
    client_id: str
    scopes: frozenset[str]
    issuer: str
    token_id: str
    expires_at: float
    key_id: str = ""  # for an external token: re-checked against the issuer's JWKS on every use


# The challenge is a constant: nothing a client sent (an `alg`, a claim) is ever echoed into a header,
# where a quote would add parameters and a non-Latin-1 character would break the response.
_INVALID_TOKEN_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="jamu", error="invalid_token"'}


def _unauthorized(detail: str) -> Problem:
    return Problem("invalid_token", detail, headers=_INVALID_TOKEN_CHALLENGE)


def insufficient_scope(scope: str) -> Problem:
    return Problem(
        "insufficient_scope",
        f"this operation needs the scope {scope}",
        headers={"WWW-Authenticate": f'Bearer realm="jamu", error="insufficient_scope", scope="{scope}"'},
    )


def _segment(part: str) -> dict[str, Any]:
    try:
        value = orjson.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (binascii.Error, ValueError):
        raise _unauthorized("token is not a well-formed JWT") from None
    if not isinstance(value, dict):
        raise _unauthorized("token is not a well-formed JWT")
    return value


class BearerValidator:
    """Turns an `Authorization` header into a `Caller`, or raises `invalid_token`."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        signing_keys: SigningKeys,
        policies: PolicyStore,
        trusted: TrustedIssuers | None,
        leeway_s: int,
        max_token_bytes: int,
        cache_size: int,
    ) -> None:
        self._issuer = issuer
        self._audience = audience
        self._keys = signing_keys
        self._policies = policies
        self._trusted = trusted
        self._leeway = leeway_s
        self._max_token_bytes = max_token_bytes
        self._cache_size = cache_size
        self._cache: dict[str, tuple[Caller, int]] = {}
        self._registries: dict[tuple[str, ...], JWSRegistry] = {}
        self.signature_checks = 0

    async def authenticate(self, authorization: str | None) -> Caller:
        if not authorization:
            raise _unauthorized("a bearer token is required")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized("the Authorization header must be 'Bearer <token>'")
        if len(token) > self._max_token_bytes:
            raise _unauthorized("token is too large")
        now = time.time()
        cached = self._cache.get(token)
        if cached is not None:
            caller, generation = cached
            if (
                generation == self._policies.generation
                and now < caller.expires_at + self._leeway
                and await self._key_still_published(caller)
            ):
                return caller
            self._cache.pop(token, None)
        caller = await self._verify(token, now)
        if self._cache_size:
            if len(self._cache) >= self._cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[token] = (caller, self._policies.generation)
        return caller

    async def _key_still_published(self, caller: Caller) -> bool:
        """Our own keys retire by expiry; an external issuer's key is valid while its JWKS lists it."""
        if caller.issuer == self._issuer or self._trusted is None:
            return True
        return await self._trusted.key(caller.issuer, caller.key_id) is not None

    def _registry(self, algorithms: tuple[str, ...]) -> JWSRegistry:
        registry = self._registries.get(algorithms)
        if registry is None:
            registry = self._registries[algorithms] = JWSRegistry(algorithms=list(algorithms))
        return registry

    async def _verify(self, token: str, now: float) -> Caller:
        if not _COMPACT_JWS.fullmatch(token):
            raise _unauthorized("token is not a well-formed JWT")
        header_part, payload_part, _ = token.split(".")
        header = _segment(header_part)
        claims = _segment(payload_part)
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in _ACCESS_TOKEN_TYPES:
            raise _unauthorized("token type must be at+jwt")
        if "crit" in header:
            raise _unauthorized("token uses unsupported critical header parameters")
        kid, alg, iss = header.get("kid"), header.get("alg"), claims.get("iss")
        if not isinstance(kid, str) or not isinstance(alg, str) or not isinstance(iss, str):
            raise _unauthorized("token lacks kid, alg or iss")

        external = None
        key: Key | None
        algorithms: tuple[str, ...]
        if iss == self._issuer:
            algorithms, audience = _OWN_ALGORITHMS, self._audience
            key = self._keys.public_key(kid)
        elif self._trusted is not None and (external := self._trusted.config(iss)) is not None:
            algorithms, audience = tuple(external.algorithms), external.audience or self._audience
            key = await self._trusted.key(iss, kid) if alg in algorithms else None
        else:
            raise _unauthorized("token issuer is not trusted")
        if alg not in algorithms:
            raise _unauthorized("token algorithm is not accepted")
        if key is None:
            raise _unauthorized("token is signed by an unknown key")

        self.signature_checks += 1
        try:
            jws.deserialize_compact(token, key, registry=self._registry(algorithms))
        except (JoseError, ValueError, TypeError):
            raise _unauthorized("token signature is invalid") from None

        registry = JWTClaimsRegistry(
            now=int(now),
            leeway=self._leeway,
            iss={"essential": True, "value": iss},
            aud={"essential": True, "value": audience},
            exp={"essential": True},
            sub={"essential": True},
        )
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise _unauthorized(_claim_problem(exc)) from None

        scope = claims.get("scope", "")
        if not isinstance(scope, str):
            raise _unauthorized("token scope must be a string")
        granted = frozenset(scope.split()) & _KNOWN_SCOPES
        token_id = str(claims.get("jti", ""))

        if external is None:
            client_id = claims.get("client_id", claims["sub"])
            client = self._policies.current.client(client_id) if isinstance(client_id, str) else None
            if client is None or client_id != claims["sub"]:
                raise _unauthorized("token client is not registered")
            # A policy that narrowed a client's scopes takes effect on tokens already issued.
            granted &= frozenset(client.policy.scopes)
            administration = client.administration
        else:
            client_id = claims.get(external.client_claim)
            mapping = external.mapping(client_id) if isinstance(client_id, str) else None
            admin = self._policies.current.administrations.get(mapping.administration) if mapping else None
            if mapping is None or admin is None:
                raise _unauthorized("token client is not mapped to an administration")
            granted = external_scopes(granted, admin.scopes, mapping.scopes)
            lifetime = _lifetime(claims)
            if lifetime is None:
                raise _unauthorized("token lacks a numeric iat")
            if lifetime > external.max_lifetime_s:
                raise _unauthorized("token lifetime exceeds what this issuer is trusted for")
            administration = mapping.administration

        return Caller(
            administration=administration,
            client_id=client_id,
            scopes=granted,
            issuer=iss,
            token_id=token_id,
            expires_at=float(claims["exp"]),
            key_id=kid,
        )


def external_scopes(
    claimed: frozenset[str], administration: frozenset[str], mapped: Sequence[str] | None
) -> frozenset[str]:
    """What an external token may do (docs/contract.md §2): what it claims, within what the administration's own
    clients hold, within the mapping's list when it has one; the scopes that read the log, a person's
    history or record consents only when the mapping names them."""
    granted = claimed & administration
    if mapped is None:
        return granted - SENSITIVE_SCOPES
    return granted & frozenset(mapped)


def _lifetime(claims: dict[str, Any]) -> float | None:
    iat, exp = claims.get("iat"), claims.get("exp")
    numeric = (int, float)
    if not isinstance(iat, numeric) or isinstance(iat, bool) or not isinstance(exp, numeric):
        return None
    return float(exp) - float(iat)


def _claim_problem(exc: JoseError) -> str:
    if isinstance(exc, ExpiredTokenError):
        return "token has expired"
    if isinstance(exc, MissingClaimError):
        return "token lacks a required claim"
    description = str(getattr(exc, "description", "") or exc.error)
    return "token claims are invalid: " + re.sub(r"[^ -~]", "", description).replace('"', "'")[:120]
