"""A reference witness (C2SP tlog-witness), for the data-protection authority to run beside the gateway:
`jamu witness init` makes its key, `jamu witness serve` answers `POST /add-checkpoint`.

For each log it is told of (origin and vkey), it keeps the latest checkpoint it cosigned, in a file per
origin replaced atomically (written aside, synced, renamed, directory synced) before it answers, under a
per-origin lock, so two requests can never roll it back. It cosigns only a checkpoint signed by the log's
key and proven, by the consistency proof sent with it, to extend the one it holds; anything else gets the
protocol's refusal (`404` unknown origin, `403` no valid log signature, `400` old size above the new,
`409` with its size when `old` is not its size, when the tree differs at that size, or when the proof
does not show the checkpoint extends the one it holds).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from gateway.audit import merkle, notes
from gateway.audit.segment_store import write_synced
from gateway.keyfiles import create_exclusive, load_or_create_ed25519

KEY_FILE = "witness-key.pem"
NAME_FILE = "name"
MAX_BODY = 64 * 1024
SIZE_TYPE = "text/x.tlog.size"
_SIZE = re.compile(r"0|[1-9][0-9]{0,18}")


def init_witness(state: Path, name: str, *, rotate: bool = False) -> notes.Verifier:
    """Make (or, with `rotate`, replace) the witness's key; its vkey. A rotated key is kept aside, never
    deleted: cosignatures it made stay checkable."""
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path = state / KEY_FILE
    if (state / NAME_FILE).exists() and (state / NAME_FILE).read_text().strip() != name:
        raise ValueError(f"{state} is the witness {(state / NAME_FILE).read_text().strip()!r}, not {name!r}")
    if rotate and key_path.exists():
        old = notes.Cosigner(name, load_or_create_ed25519(key_path)).verifier
        os.replace(key_path, state / f"witness-key-{old.key_id.hex()}.retired.pem")
    if not key_path.exists():
        create_exclusive(
            key_path, Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        )
    create_exclusive(state / NAME_FILE, name.encode() + b"\n")
    return notes.Cosigner(name, load_or_create_ed25519(key_path)).verifier


@dataclass
class _Held:
    size: int
    root: bytes


class Witness:
    def __init__(self, state: Path, logs: dict[str, list[notes.Verifier]]) -> None:
        self.state = state
        name = (state / NAME_FILE).read_text(encoding="utf-8").strip()
        self.cosigner = notes.Cosigner(name, load_or_create_ed25519(state / KEY_FILE))
        self.logs = logs
        self._locks = {origin: asyncio.Lock() for origin in logs}
        (state / "logs").mkdir(exist_ok=True, mode=0o700)

    def _path(self, origin: str) -> Path:
        return self.state / "logs" / (hashlib.sha256(origin.encode()).hexdigest() + ".json")

    def held(self, origin: str) -> _Held:
        try:
            raw = orjson.loads(self._path(origin).read_bytes())
        except FileNotFoundError:
            return _Held(0, merkle.EMPTY_ROOT)
        return _Held(int(raw["size"]), base64.b64decode(raw["root"]))

    async def add_checkpoint(self, body: bytes) -> Response:
        try:
            text = body.decode("utf-8")
            head, blank, note = text.partition("\n\n")
            lines = head.split("\n")
            if not blank or not lines[0].startswith("old "):
                raise ValueError("the body is `old <size>`, proof lines, a blank line and a checkpoint")
            raw_old = lines[0][4:]
            if not _SIZE.fullmatch(raw_old):
                raise ValueError("the old size is a decimal with no leading zeroes")
            old = int(raw_old)
            if len(lines) - 1 > 63:
                raise ValueError("at most 63 proof lines")
            proof = [base64.b64decode(line, validate=True) for line in lines[1:]]
            if any(len(h) != 32 for h in proof):
                raise ValueError("a proof line is one SHA-256 hash")
            checkpoint_text, _ = notes.parse(note)
            checkpoint = notes.Checkpoint.parse(checkpoint_text)
        except (UnicodeDecodeError, ValueError, binascii.Error) as exc:
            return PlainTextResponse(f"{exc}\n", status_code=400)
        verifiers = self.logs.get(checkpoint.origin)
        if verifiers is None:
            return PlainTextResponse("unknown log origin\n", status_code=404)
        try:
            notes.verified(note, verifiers)
        except notes.NoteError:
            return PlainTextResponse("no valid signature of the log's key\n", status_code=403)
        if old > checkpoint.size:
            return PlainTextResponse("the old size is larger than the checkpoint's\n", status_code=400)
        async with self._locks[checkpoint.origin]:
            held = self.held(checkpoint.origin)
            if old != held.size or (old == checkpoint.size and checkpoint.root != held.root):
                return Response(f"{held.size}\n", status_code=409, media_type=SIZE_TYPE)
            if old == 0 and proof:
                return PlainTextResponse("a proof from the empty tree is empty\n", status_code=400)
            if old != 0:
                try:
                    merkle.verify_consistency(old, checkpoint.size, held.root, checkpoint.root, proof)
                except merkle.InvalidProof:
                    # Not an extension of what it holds: refused with its size, as any inconsistency is
                    # (C2SP says 422 here; the size tells the log, or its operator, where it stands).
                    return Response(f"{held.size}\n", status_code=409, media_type=SIZE_TYPE)
            await asyncio.to_thread(
                write_synced,
                self._path(checkpoint.origin),
                orjson.dumps(
                    {
                        "origin": checkpoint.origin,
                        "size": checkpoint.size,
                        "root": base64.b64encode(checkpoint.root).decode(),
                        "time": int(time.time()),
                    }
                ),
            )
        line = self.cosigner.signature_line(checkpoint_text, int(time.time()))
        return PlainTextResponse(line)


def create_witness_app(state: Path, logs: dict[str, list[notes.Verifier]]) -> Starlette:
    witness = Witness(state, logs)

    async def add_checkpoint(request: Request) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
            return PlainTextResponse("the body is too large\n", status_code=413)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return PlainTextResponse("the body is too large\n", status_code=413)
        return await witness.add_checkpoint(body)

    app = Starlette(routes=[Route("/add-checkpoint", add_checkpoint, methods=["POST"])])
    app.state.witness = witness
    return app


def parse_log_arguments(values: list[str]) -> dict[str, list[notes.Verifier]]:
    """`ORIGIN=VKEY` pairs, or `ORIGIN VKEY` lines as `jamu audit origins` prints them (a vkey names its
    origin, so a bare `VKEY` works too); several keys per origin are all trusted."""
    logs: dict[str, list[notes.Verifier]] = {}
    for value in [line.strip() for raw in values for line in raw.splitlines() if line.strip()]:
        origin, sep, vkey = value.partition(" ") if " " in value else value.partition("=")
        if not sep or "+" in origin:
            origin, vkey = "", value
        verifier = notes.Verifier.parse(vkey)
        if verifier.kind != notes.ED25519:
            raise ValueError(f"{value}: a log's vkey is an Ed25519 key (type 0x01)")
        if origin and verifier.name != origin:
            raise ValueError(f"{value}: the vkey names {verifier.name!r}, not {origin!r}")
        logs.setdefault(verifier.name, []).append(verifier)
    return logs
