"""The OAuth 2.0 token endpoint: `client_credentials` with `private_key_jwt` or `client_secret_basic`.

Authlib's authorization server runs the grant and client authentication; this module adapts it to
an async gateway (Authlib's server integrations target Flask and Django) and adds what a government
API needs on top: algorithm allow-lists, a bound on assertion lifetime, single use of each assertion
`jti` across replicas, and RFC 9068 access tokens with a `kid`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

import orjson
from authlib.oauth2.rfc6749 import (
    AuthorizationServer,
    ClientMixin,
    InvalidClientError,
    InvalidScopeError,
    OAuth2Request,
)
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from joserfc import jwt
from joserfc.errors import JoseError
from redis.exceptions import RedisError
from starlette.datastructures import Headers

from gateway.auth.keys import SigningKeys
from gateway.auth.replay import ReplayGuard
from gateway.errors import Problem
from gateway.policy.catalogue import ASYMMETRIC_ALGORITHMS
from gateway.policy.loader import RegisteredClient
from gateway.policy.model import is_identifier
from gateway.policy.store import PolicyStore

_MAX_FORM_FIELDS = 16
_MAX_JTI_LENGTH = 256
# The assertion whose signature and claims passed, waiting for its jti to be spent (one per request task).
_verified_assertion: ContextVar[dict[str, Any] | None] = ContextVar("verified_assertion", default=None)


class OAuthClient(ClientMixin):
    """A registered client as Authlib sees it: confidential, client_credentials only."""

    def __init__(self, registered: RegisteredClient) -> None:
        self.registered = registered

    def get_client_id(self) -> str:
        return self.registered.client_id

    def get_default_redirect_uri(self) -> str | None:
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        allowed = self.registered.policy.scopes
        if not scope:
            return " ".join(allowed)
        return " ".join(s for s in allowed if s in scope.split())

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        expected = self.registered.policy.secret_hash
        if expected is None:
            return False
        presented = "sha256:" + hashlib.sha256(client_secret.encode("utf-8", "surrogatepass")).hexdigest()
        return hmac.compare_digest(presented.encode(), expected.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return endpoint == "token" and method == self.registered.policy.auth

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"


class PrivateKeyJWT(JWTBearerClientAssertion):
    """RFC 7523 client authentication with an explicit algorithm allow-list and bounded `exp`."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, audiences: list[str], leeway: int, max_lifetime_s: int) -> None:
        super().__init__(validate_jti=True, leeway=leeway)
        self._audiences = audiences
        self._max_lifetime_s = max_lifetime_s

    def get_audiences(self) -> list[str]:
        return self._audiences

    def resolve_client_public_key(self, client: OAuthClient) -> Any:
        keys = client.registered.keys
        if keys is None:
            raise InvalidClientError(description="The client has no registered keys.")
        return keys

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> dict[str, Any]:
        try:
            token = jwt.decode(assertion, resolve_key, algorithms=list(ASYMMETRIC_ALGORITHMS))
        except (JoseError, ValueError, TypeError):
            raise InvalidClientError(description="The client assertion is not validly signed.") from None
        self.verify_claims(token.claims)
        return token.claims

    def verify_claims(self, claims: Any) -> None:
        super().verify_claims(claims)
        now = time.time()
        if claims["exp"] > now + self._max_lifetime_s + self.leeway:
            raise InvalidClientError(
                description=f"The client assertion must expire within {self._max_lifetime_s} seconds."
            )
        iat = claims.get("iat")
        if isinstance(iat, int | float) and iat > now + self.leeway:
            raise InvalidClientError(description="The client assertion was issued in the future.")

    def validate_jti(self, claims: Any, jti: Any) -> bool:
        if not isinstance(jti, str) or not 0 < len(jti) <= _MAX_JTI_LENGTH:
            return False
        # Spent after Authlib returns (the replay store is async); see TokenService.issue.
        _verified_assertion.set({"sub": claims["sub"], "jti": jti, "exp": claims["exp"]})
        return True


class ClientCredentials(ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "private_key_jwt"]

    def validate_requested_scope(self) -> None:
        requested = self.request.payload.scope
        if requested is None:
            return
        wanted = requested.split()
        allowed = set(self.request.client.registered.policy.scopes)
        if not wanted or len(set(wanted)) != len(wanted) or not set(wanted) <= allowed:
            raise InvalidScopeError(description="The requested scope exceeds the client's scopes.")


class _FormRequest(OAuth2Request):
    def __init__(self, uri: str, headers: Headers, form: dict[str, str]) -> None:
        super().__init__("POST", uri, headers=headers)
        self.payload = BasicOAuth2Payload(form)
        self._form = form

    @property
    def args(self) -> dict[str, str]:
        return {}

    @property
    def form(self) -> dict[str, str]:
        return self._form


@dataclass(frozen=True, slots=True)
class IssuedToken:
    body: dict[str, Any]
    client: RegisteredClient


class AccessTokenIssuer:
    """Signs RFC 9068 access tokens: `typ: at+jwt`, `kid`, and the claims the bearer check demands."""

    def __init__(self, issuer: str, audience: str, keys: SigningKeys, lifetime_s: int) -> None:
        self._issuer = issuer
        self._audience = audience
        self._keys = keys
        self._lifetime_s = lifetime_s
        self._header = {"alg": keys.alg, "typ": "at+jwt", "kid": keys.kid}

    def __call__(
        self,
        grant_type: str,
        client: OAuthClient,
        user: Any = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = False,
    ) -> dict[str, Any]:
        now = int(time.time())
        granted = client.get_allowed_scope(scope)
        claims = {
            "iss": self._issuer,
            "sub": client.get_client_id(),
            "aud": self._audience,
            "exp": now + self._lifetime_s,
            "iat": now,
            "nbf": now,
            "jti": secrets.token_urlsafe(16),
            "client_id": client.get_client_id(),
            "scope": granted,
        }
        token = jwt.encode(self._header, claims, self._keys.private, algorithms=[self._keys.alg])
        return {"access_token": token, "token_type": "Bearer", "expires_in": self._lifetime_s, "scope": granted}


class TokenService(AuthorizationServer):
    def __init__(
        self,
        *,
        token_endpoint: str,
        issuer: str,
        audience: str,
        policies: PolicyStore,
        keys: SigningKeys,
        replay: ReplayGuard,
        token_lifetime_s: int,
        leeway_s: int,
        assertion_max_lifetime_s: int,
    ) -> None:
        super().__init__()
        self._token_endpoint = token_endpoint
        self._policies = policies
        self._replay = replay
        self._leeway_s = leeway_s
        self.register_grant(ClientCredentials)
        self.register_client_auth_method(
            "private_key_jwt", PrivateKeyJWT([token_endpoint, issuer], leeway_s, assertion_max_lifetime_s)
        )
        self.register_token_generator("default", AccessTokenIssuer(issuer, audience, keys, token_lifetime_s))

    # Authlib's framework hooks --------------------------------------------------------------------
    def query_client(self, client_id: str) -> OAuthClient | None:
        registered = self._policies.current.client(client_id) if isinstance(client_id, str) else None
        return OAuthClient(registered) if registered else None

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        return None  # self-contained JWTs: nothing to store

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None

    def create_oauth2_request(self, request: OAuth2Request) -> OAuth2Request:
        return request

    def handle_response(self, status: int, body: Any, headers: Any) -> tuple[int, Any, Any]:
        return status, body, headers

    # The gateway's entry point --------------------------------------------------------------------
    def claimed_client_id(self, headers: Headers, body: bytes) -> str | None:
        """The client id a failed request claimed, when it names a registered client (for the log, as
        `claimed_client_id` only: a claim is not an identity)."""
        try:
            form = _parse_form(headers, body)
            client_id = form.get("client_id") or _basic_credentials(headers)[0]
        except Problem:
            return None
        assertion = form.get("client_assertion")
        if client_id is None and assertion:
            try:
                payload = assertion.split(".")[1]
                claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            except Exception:  # any garbage: no claim
                return None
            client_id = claims.get("sub") if isinstance(claims, dict) else None
        # Only a registered client's id: anything else a caller types (a NIN, say) never reaches the log.
        return client_id if is_identifier(client_id) and self._policies.current.client(client_id) else None

    async def issue(self, headers: Headers, body: bytes) -> IssuedToken:
        """Authenticate the client and issue a token, or raise a Problem the contract names."""
        form = _parse_form(headers, body)
        basic = headers.get("authorization")
        if _is_basic(basic):
            _basic_credentials(headers)  # refuses a malformed header before Authlib sees it
        request = _FormRequest(self._token_endpoint, headers, form)
        token = _verified_assertion.set(None)
        try:
            status, payload, _ = self.create_token_response(request)
            verified = _verified_assertion.get()
        except (UnicodeError, ValueError, TypeError):  # whatever a header held that Authlib could not read
            raise _client_problem("The client credentials are malformed.", basic) from None
        finally:
            _verified_assertion.reset(token)
        if verified is not None:
            ttl = max(float(verified["exp"]) - time.time(), 0) + self._leeway_s
            try:
                fresh = await self._replay.first_use(f"{verified['sub']}:{verified['jti']}", ttl)
            except (RedisError, OSError):
                raise Problem("backend_unavailable", "the assertion replay store is unreachable") from None
            if not fresh:
                raise _client_problem("The client assertion has already been used.", basic)
        if status != 200:
            raise _oauth_problem(payload, basic)
        client = request.client.registered
        if form.get("client_id") not in (None, client.client_id):
            raise _client_problem("client_id does not match the authenticated client.", basic)
        return IssuedToken(body=payload, client=client)


def _parse_form(headers: Headers, body: bytes) -> dict[str, str]:
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise _request_problem("invalid_request", "the body must be application/x-www-form-urlencoded")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=_MAX_FORM_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise _request_problem("invalid_request", "the form body is malformed") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        if key in form:
            raise _request_problem("invalid_request", f"parameter {key!r} is repeated")
        form[key] = value
    return form


def _is_basic(authorization: str | None) -> bool:
    """The Basic scheme, however the scheme and its credentials are separated (Authlib splits on any
    whitespace, so this must too)."""
    parts = authorization.split(None, 1) if authorization else []
    return bool(parts) and parts[0].lower() == "basic"


def _basic_credentials(headers: Headers) -> tuple[str | None, str | None]:
    value = headers.get("authorization")
    if not _is_basic(value):
        return None, None
    parts = (value or "").split(None, 1)
    credentials = parts[1] if len(parts) == 2 else ""
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _client_problem("The Basic credentials are malformed.", value) from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise _client_problem("The Basic credentials are malformed.", value)
    return unquote(client_id), unquote(secret)


def _request_problem(error: str, description: str) -> Problem:
    return Problem("invalid_request", description, extra={"error": error, "error_description": description})


def _client_problem(description: str, authorization: str | None) -> Problem:
    headers = {}
    if _is_basic(authorization):
        headers["WWW-Authenticate"] = 'Basic realm="jamu"'
    return Problem(
        "invalid_client",
        description,
        headers=headers,
        extra={"error": "invalid_client", "error_description": description},
    )


def _oauth_problem(payload: dict[str, Any], authorization: str | None) -> Problem:
    error = str(payload.get("error", "invalid_request"))
    description = str(payload.get("error_description") or error.replace("_", " "))
    if error == "invalid_client":
        return _client_problem(description, authorization)
    return _request_problem(error, description)
