"""A Standard Webhooks receiver on loopback, as a subscriber would run one: it checks each delivery's
`v1a` (Ed25519) signature against the keys it was given out of band, the timestamp's tolerance, and
dedupes on `webhook-id`. What it answers is set by the test (a status, `Retry-After`, a delay)."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

TOLERANCE_S = 300


class SignatureRefused(Exception):
    pass


def verify_v1a(public_keys: list[str], headers: dict[str, str], body: bytes, now: float | None = None) -> None:
    """Standard Webhooks' asymmetric scheme: `v1a,<base64 Ed25519>` over `id.timestamp.body`."""
    msg_id, timestamp, signatures = (
        headers.get("webhook-id"),
        headers.get("webhook-timestamp"),
        headers.get("webhook-signature"),
    )
    if not (msg_id and timestamp and signatures):
        raise SignatureRefused("missing webhook headers")
    if abs((now or time.time()) - int(timestamp)) > TOLERANCE_S:
        raise SignatureRefused("timestamp outside tolerance")
    signed = f"{msg_id}.{timestamp}.".encode() + body
    keys = [Ed25519PublicKey.from_public_bytes(base64.b64decode(k.removeprefix("whpk_"))) for k in public_keys]
    for entry in signatures.split(" "):
        version, _, value = entry.partition(",")
        if version != "v1a":
            continue
        for key in keys:
            try:
                key.verify(base64.b64decode(value), signed)
                return
            except InvalidSignature:
                continue
    raise SignatureRefused("no valid v1a signature")


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    event: dict[str, Any]
    at: float


@dataclass
class Receiver:
    public_keys: list[str] = field(default_factory=list)
    answer: Callable[[Delivery], tuple[int, dict[str, str], float]] = lambda d: (204, {}, 0.0)
    received: list[Delivery] = field(default_factory=list)  # every signed delivery, duplicates included
    refused: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def accepted(self) -> list[Delivery]:
        """Each event once, in the order first acknowledged (the receiver's dedupe on webhook-id)."""
        seen: set[str] = set()
        out = []
        with self.lock:
            for delivery in self.received:
                if delivery.headers.get("x-acknowledged") and delivery.headers["webhook-id"] not in seen:
                    seen.add(delivery.headers["webhook-id"])
                    out.append(delivery)
        return out

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    verify_v1a(receiver.public_keys, headers, body)
                    event = from_http_event(HTTPMessage(headers=headers, body=body))  # a valid CloudEvent 1.0
                    assert event.get_specversion() == "1.0"
                except Exception as exc:
                    with receiver.lock:
                        receiver.refused.append(str(exc))
                    self.send_response(401)
                    self.end_headers()
                    return
                delivery = Delivery(headers, body, orjson.loads(body), time.time())
                status, extra, delay = receiver.answer(delivery)
                if delay:
                    time.sleep(delay)
                if 200 <= status < 300:
                    delivery.headers["x-acknowledged"] = "1"
                with receiver.lock:
                    receiver.received.append(delivery)
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
