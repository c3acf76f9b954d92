"""A national IdP stand-in served on loopback: publishes a JWKS the test can rotate, and counts fetches."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode

from joserfc import jwt
from joserfc.jwk import Key
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.support.keys import jwks_of, new_key
from tests.support.servers import ThreadedServer


class FakeIdP:
    def __init__(self) -> None:
        self.keys: list[Key] = [new_key("ES256")]
        self.fetches = 0

        async def jwks(_: Request) -> JSONResponse:
            self.fetches += 1
            return JSONResponse(jwks_of(*self.keys))

        self.server = ThreadedServer(Starlette(routes=[Route("/jwks.json", jwks)]), "fake IdP")
        self.port = self.server.port
        self.issuer = self.server.base
        self.jwks_url = f"{self.issuer}/jwks.json"

    def start(self) -> FakeIdP:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def rotate(self) -> Key:
        key = new_key("ES256")
        self.keys = [key, *self.keys]
        return key

    def config(self, audience: str, **clients: Any) -> dict[str, Any]:
        return {
            "issuers": [
                {
                    "issuer": self.issuer,
                    "jwks_url": self.jwks_url,
                    "audience": audience,
                    "algorithms": ["ES256"],
                    "clients": clients,
                }
            ]
        }


class FakeOidcProvider:
    """An OpenID Connect provider on loopback for the console's sign-in: discovery, an authorization
    endpoint that signs in `user` at once (no page), a token endpoint that checks the client's secret, the
    code's redirect URI and its PKCE verifier (S256), and the keys the ID token is signed with."""

    def __init__(self, client_id: str = "jamu-console", client_secret: str = "console-secret") -> None:
        self.key = new_key("ES256")
        self.client_id, self.client_secret = client_id, client_secret
        self.user: dict[str, Any] = {"sub": "u-1", "preferred_username": "awa", "jamu_role": "officer"}
        self.codes: dict[str, dict[str, Any]] = {}
        self.refusals: list[str] = []  # why the token endpoint refused, newest last
        self.nonce_override: str | None = None

        async def discovery(_: Request) -> JSONResponse:
            return JSONResponse(
                {
                    "issuer": self.issuer,
                    "authorization_endpoint": f"{self.issuer}/authorize",
                    "token_endpoint": f"{self.issuer}/token",
                    "jwks_uri": f"{self.issuer}/jwks.json",
                    "response_types_supported": ["code"],
                    "code_challenge_methods_supported": ["S256"],
                    "id_token_signing_alg_values_supported": ["ES256"],
                }
            )

        async def authorize(request: Request) -> Response:
            q = request.query_params
            if (
                q.get("client_id") != self.client_id
                or q.get("code_challenge_method") != "S256"
                or not q.get("code_challenge")
                or q.get("response_type") != "code"
            ):
                return JSONResponse({"error": "invalid_request"}, status_code=400)
            code = secrets.token_urlsafe(16)
            self.codes[code] = {
                "challenge": q["code_challenge"],
                "redirect_uri": q["redirect_uri"],
                "nonce": q.get("nonce"),
                "user": dict(self.user),
            }
            return RedirectResponse(
                f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q.get('state', '')})}", status_code=302
            )

        async def token(request: Request) -> JSONResponse:
            form = dict(parse_qsl((await request.body()).decode()))
            auth = request.headers.get("authorization", "")
            expected = "Basic " + base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
            granted = self.codes.pop(form.get("code", ""), None)
            verifier = form.get("code_verifier", "")
            challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            why = (
                "client authentication"
                if auth != expected
                else "unknown code"
                if granted is None
                else "redirect_uri"
                if form.get("redirect_uri") != granted["redirect_uri"]
                else "PKCE verifier"
                if challenge != granted["challenge"]
                else None
            )
            if why is not None:
                self.refusals.append(why)
                return JSONResponse({"error": "invalid_grant", "error_description": why}, status_code=400)
            now = int(time.time())
            claims = {
                "iss": self.issuer,
                "aud": self.client_id,
                "iat": now,
                "exp": now + 300,
                "nonce": self.nonce_override or granted["nonce"],
                **granted["user"],
            }
            header = {"alg": "ES256", "kid": self.key.thumbprint()}
            id_token = jwt.encode(header, claims, self.key, algorithms=["ES256"])
            return JSONResponse(
                {
                    "access_token": secrets.token_urlsafe(16),
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "id_token": id_token,
                }
            )

        async def jwks(_: Request) -> JSONResponse:
            return JSONResponse(jwks_of(self.key))

        self.server = ThreadedServer(
            Starlette(
                routes=[
                    Route("/.well-known/openid-configuration", discovery),
                    Route("/authorize", authorize),
                    Route("/token", token, methods=["POST"]),
                    Route("/jwks.json", jwks),
                ]
            ),
            "fake OpenID provider",
        )
        self.issuer = self.server.base

    def start(self) -> FakeOidcProvider:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()
