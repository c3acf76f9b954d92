"""A national IdP stand-in served on loopback: publishes a JWKS the test can rotate, and counts fetches."""

from __future__ import annotations

import threading
from typing import Any

import uvicorn
from joserfc.jwk import Key
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.support.keys import jwks_of, new_key
from tests.support.servers import free_port, wait_until


class FakeIdP:
    def __init__(self) -> None:
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.jwks_url = f"{self.issuer}/jwks.json"
        self.keys: list[Key] = [new_key("ES256")]
        self.fetches = 0

        async def jwks(_: Request) -> JSONResponse:
            self.fetches += 1
            return JSONResponse(jwks_of(*self.keys))

        config = uvicorn.Config(Starlette(routes=[Route("/jwks.json", jwks)]), host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> FakeIdP:
        self.thread.start()
        wait_until(lambda: self.server.started, 10, "fake IdP")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def rotate(self) -> Key:
        key = new_key("ES256")
        self.keys = [key, *self.keys]
        return key

    def config(self, audience: str, **clients: Any) -> dict[str, Any]:
        return {"issuers": [{"issuer": self.issuer, "jwks_url": self.jwks_url, "audience": audience,
                             "algorithms": ["ES256"], "clients": clients}]}
