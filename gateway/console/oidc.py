"""Console sign-in through an OpenID Connect provider: authorization code with PKCE (S256), by Authlib's
client; the ID token checked with joserfc against the provider's published keys (issuer, audience,
expiry, nonce). The role and the administration are read from configured claims; an identity without a
valid role signs nobody in."""

from __future__ import annotations

import re
import time
import unicodedata
import warnings
from dataclasses import dataclass
from typing import Any

import httpx
from authlib.common.security import generate_token
from authlib.deprecate import AuthlibDeprecationWarning
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from gateway.console.accounts import ADMINISTRATION, AccountError, check_role

with warnings.catch_warnings():  # Authlib prefers httpx2 and says so on import; it works with httpx
    warnings.filterwarnings("ignore", category=AuthlibDeprecationWarning)
    from authlib.integrations.httpx_client import AsyncOAuth2Client

ALGORITHMS = ("RS256", "ES256", "EdDSA", "PS256")
LOGIN = re.compile(r"^[^\x00-\x20\x7f]{1,150}$")  # what a provider's login claim may be to stand in the log
METADATA_TTL_S = 300.0


class OidcError(Exception):
    """The provider's answer does not sign anybody in (the message says why; it is logged, not shown)."""


@dataclass(frozen=True)
class Identity:
    login: str
    role: str
    administration: str | None


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    client_id: str
    client_secret: str | None
    role_claim: str
    administration_claim: str
    login_claim: str


class OidcSignIn:
    def __init__(self, config: OidcConfig, redirect_uri: str, http: httpx.AsyncClient) -> None:
        self.config = config
        self.redirect_uri = redirect_uri
        self.http = http
        self._metadata: tuple[float, dict[str, Any]] | None = None
        self._keys: KeySet | None = None

    async def metadata(self) -> dict[str, Any]:
        if self._metadata is not None and time.monotonic() - self._metadata[0] < METADATA_TTL_S:
            return self._metadata[1]
        url = f"{self.config.issuer.rstrip('/')}/.well-known/openid-configuration"
        try:
            response = await self.http.get(url, timeout=5.0)
            response.raise_for_status()
            found = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise OidcError(f"the provider's configuration cannot be read: {exc}") from None
        if not isinstance(found, dict) or found.get("issuer") != self.config.issuer:
            raise OidcError("the provider's configuration names another issuer")
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(found.get(name), str):
                raise OidcError(f"the provider's configuration has no {name}")
        self._metadata = (time.monotonic(), found)
        return found

    def _client(self) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=self.config.client_id,
            client_secret=self.config.client_secret,
            scope="openid profile",
            redirect_uri=self.redirect_uri,
            code_challenge_method="S256",
            token_endpoint_auth_method="client_secret_basic" if self.config.client_secret else "none",
            timeout=10.0,
        )

    async def begin(self) -> tuple[str, dict[str, str]]:
        """The provider's authorization URL, and what the callback must find again (state, nonce, verifier)."""
        metadata = await self.metadata()
        verifier = generate_token(64)
        nonce = generate_token(32)
        async with self._client() as client:
            url, state = client.create_authorization_url(
                metadata["authorization_endpoint"], code_verifier=verifier, nonce=nonce
            )
        return url, {"state": state, "nonce": nonce, "verifier": verifier}

    async def finish(self, code: str, pending: dict[str, str]) -> Identity:
        metadata = await self.metadata()
        try:
            async with self._client() as client:
                token = await client.fetch_token(
                    metadata["token_endpoint"],
                    code=code,
                    code_verifier=pending["verifier"],
                    grant_type="authorization_code",
                )
        except Exception as exc:  # Authlib raises its own errors and httpx's
            raise OidcError(f"the code was not exchanged: {type(exc).__name__}: {exc}") from None
        id_token = token.get("id_token") if isinstance(token, dict) else None
        if not isinstance(id_token, str):
            raise OidcError("the provider sent no ID token")
        claims = await self._verified(id_token, metadata["jwks_uri"], pending["nonce"])
        return self._identity(claims)

    async def _verified(self, id_token: str, jwks_uri: str, nonce: str) -> dict[str, Any]:
        for refresh in (False, True):
            keys = await self._key_set(jwks_uri, refresh)
            try:
                decoded = jwt.decode(id_token, keys, algorithms=list(ALGORITHMS))
            except ValueError:  # no key of that id: the provider may have rotated its keys
                if refresh:
                    raise OidcError("the ID token is signed by a key the provider does not publish") from None
                continue
            except JoseError as exc:
                raise OidcError(f"the ID token's signature does not hold: {exc}") from None
            registry = JWTClaimsRegistry(
                leeway=60,
                iss={"essential": True, "value": self.config.issuer},
                aud={"essential": True, "value": self.config.client_id},
                sub={"essential": True},
                exp={"essential": True},
                nonce={"essential": True, "value": nonce},
            )
            try:
                registry.validate(decoded.claims)
            except JoseError as exc:
                raise OidcError(f"the ID token's claims do not hold: {exc}") from None
            return decoded.claims
        raise OidcError("no key to check the ID token")

    async def _key_set(self, jwks_uri: str, refresh: bool) -> KeySet:
        if self._keys is None or refresh:
            try:
                response = await self.http.get(jwks_uri, timeout=5.0)
                response.raise_for_status()
                self._keys = KeySet.import_key_set(response.json())
            except (httpx.HTTPError, ValueError, JoseError) as exc:
                raise OidcError(f"the provider's keys cannot be read: {exc}") from None
        return self._keys

    def _identity(self, claims: dict[str, Any]) -> Identity:
        c = self.config
        audience = claims.get("aud")
        several = isinstance(audience, list) and len(audience) > 1
        if (several or "azp" in claims) and claims.get("azp") != c.client_id:
            raise OidcError("the ID token was issued to another party (azp)")
        role = claims.get(c.role_claim)
        if isinstance(role, list):  # a provider may send its roles as a list: one of them must be ours
            ours = [r for r in role if r in ("officer", "dpa", "dpo")]
            if len(ours) != 1:
                raise OidcError(f"the ID token's {c.role_claim!r} must hold exactly one of officer, dpa, dpo")
            role = ours[0]
        administration = claims.get(c.administration_claim) if role == "dpo" else None
        login = claims.get(c.login_claim)
        if (
            not isinstance(login, str)
            or not LOGIN.fullmatch(login)
            or any(unicodedata.category(ch) in ("Cf", "Zl", "Zp", "Zs") for ch in login)
        ):  # no invisible tricks
            raise OidcError(f"the ID token's {c.login_claim!r} is not a login (1 to 150 visible characters)")
        if not isinstance(role, str):
            raise OidcError(f"the ID token carries no role in {c.role_claim!r}")
        if administration is not None and (
            not isinstance(administration, str) or not ADMINISTRATION.fullmatch(administration)
        ):
            raise OidcError(f"the ID token's {c.administration_claim!r} is not an administration id")
        try:
            check_role(role, administration)
        except AccountError as exc:
            raise OidcError(str(exc)) from None
        return Identity(f"oidc:{login}", role, administration)
