"""The scraper's listener (`GATEWAY_METRICS_PORT`): `/metrics` without a token, on a port of its own that
the cluster's Service for clients does not expose. Served by uvicorn in the gateway's own event loop;
with several workers each binds the port with SO_REUSEPORT, so a scrape reaches one of them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn
from starlette.types import Receive, Scope, Send

from gateway.lifecycle import Component
from gateway.metrics import Metrics
from gateway.settings import Settings

log = logging.getLogger(__name__)


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server inside another's loop: the main server owns the process's signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ScrapeListener:
    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self._metrics = metrics
        self._host, self._port = host, port
        self._server = _EmbeddedServer(
            uvicorn.Config(
                self._app,
                host=host,
                port=port,
                lifespan="off",
                interface="asgi3",
                access_log=False,
                log_config=None,
                server_header=False,
            )
        )
        self._task: asyncio.Task[None] | None = None

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/metrics" and scope["method"] in ("GET", "HEAD"):
            status, body, content_type = 200, self._metrics.render(), self._metrics.content_type
        else:
            status, body, content_type = 404, b"only /metrics is served here\n", "text/plain"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body if scope["method"] != "HEAD" else b""})

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((self._host, self._port))
        sock.setblocking(False)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="metrics-listener")
        while not self._server.started and not self._task.done():  # noqa: ASYNC110 (uvicorn offers a flag only)
            await asyncio.sleep(0.01)
        if self._task.done():
            self._task.result()  # raise what stopped it
        log.info("metrics for the scraper on %s:%d", self._host, self._port)

    async def close(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._task, 5)
        self._task = None


def build_metrics_listener(settings: Settings, metrics: Metrics) -> Component:
    """The listener when `GATEWAY_METRICS_PORT` is set; otherwise a component that does nothing."""
    if not settings.metrics_port:
        return Component("metrics listener")
    listener = ScrapeListener(metrics, settings.metrics_host, settings.metrics_port)
    return Component("metrics listener", listener.start, listener.close)
