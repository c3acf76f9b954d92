"""A national IdP stand-in served on loopback: publishes a JWKS the test can rotate, and counts fetches."""

from __future__ import annotations

from typing import Any

from joserfc.jwk import Key
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
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
        return {"issuers": [{"issuer": self.issuer, "jwks_url": self.jwks_url, "audience": audience,
                             "algorithms": ["ES256"], "clients": clients}]}
