"""Offline work on a copy of the access log: `jamu audit verify` and `jamu audit export`.

Both read only, stream the log in seq order (constant memory whatever its size), and never need the
gateway running: a security officer can check a database copy with nothing but the checkpoint public key.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)
from sqlalchemy import inspect

from gateway.audit.chain import ChainVerifier, IntegrityReport, key_id
from gateway.audit.store import AccessLogStore, EventFilter
from gateway.storage.database import create_engine

EXPORT_FIELDS = ("seq", "id", "time", "administration", "client_id", "operation", "purpose", "legal_basis",
                 "consent_id", "subject_hash", "attributes_requested", "attributes_released", "decision",
                 "reason", "status", "latency_ms", "trace_id", "prev_hash", "hash", "claimed_client_id",
                 "evidence", "job_id", "count", "source")

# What a spreadsheet would run as a formula when a cell starts with it (OWASP "CSV injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """A cell a spreadsheet shows as text: a leading formula character gets a `'` before it."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def csv_row(event: dict[str, Any]) -> dict[str, Any]:
    """One event as CSV cells: lists space-separated, objects as JSON, every cell formula-safe."""
    row: dict[str, Any] = {}
    for name in EXPORT_FIELDS:
        value = event.get(name)
        if isinstance(value, list):
            value = " ".join(value)
        elif isinstance(value, dict):
            value = orjson.dumps(value).decode()
        row[name] = spreadsheet_safe(value)
    return row


class OfflineError(Exception):
    """The copy cannot be read: no such database, no access log in it, or an unusable key."""


def load_public_keys(paths: Sequence[Path]) -> dict[str, Ed25519PublicKey]:
    keys: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        try:
            key = load_pem_public_key(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise OfflineError(f"{path}: not a readable PEM public key ({exc})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise OfflineError(f"{path}: not an Ed25519 public key")
        keys[key_id(key)] = key
    return keys


def public_keys_of(private_key_path: Path) -> dict[str, Ed25519PublicKey]:
    """The checkpoint key's public half, derived from the private key file (read, never created)."""
    try:
        key = load_pem_private_key(private_key_path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise OfflineError(f"{private_key_path}: no readable checkpoint key; pass --public-key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise OfflineError(f"{private_key_path}: not an Ed25519 private key")
    return {key_id(key.public_key()): key.public_key()}


def public_pem_of(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


class _NoSigner:
    """Offline stores never write; a signer is never asked for."""

    def sign(self, *_: Any) -> Any:
        raise OfflineError("read-only")


def require_database(url: str) -> None:
    """A missing SQLite file is an error here, not an empty log to create."""
    if url.startswith("sqlite") and not Path(url.split(":///", 1)[-1]).exists():
        raise OfflineError(f"no database at {url.split(':///', 1)[-1]}")


async def _open(url: str, schema: str | None) -> AccessLogStore:
    engine = create_engine(url, schema=schema)
    try:
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda c: inspect(c).get_table_names())
    except Exception as exc:
        await engine.dispose()
        raise OfflineError(f"cannot read the database: {exc}") from None
    if "access_events" not in tables:
        await engine.dispose()
        raise OfflineError("this database holds no access log")
    return AccessLogStore(engine, _NoSigner())  # type: ignore[arg-type]


async def verify(url: str, schema: str | None, keys: dict[str, Ed25519PublicKey], *,
                 require_sealed: bool) -> IntegrityReport:
    store = await _open(url, schema)
    try:
        verifier = ChainVerifier(await store.checkpoints(), keys, require_sealed=require_sealed)
        async for event in store.stream():
            verifier.feed(event)
        return verifier.finish()
    finally:
        await store.close()


async def export(url: str, schema: str | None, where: EventFilter, fmt: str, out: TextIO = sys.stdout) -> int:
    """Write every matching event as JSON Lines or CSV; returns how many."""
    store = await _open(url, schema)
    count = 0
    try:
        writer = csv.DictWriter(out, fieldnames=EXPORT_FIELDS) if fmt == "csv" else None
        if writer is not None:
            writer.writeheader()
        async for event in store.stream(where):
            if writer is not None:
                writer.writerow(csv_row(event))
            else:
                out.write(orjson.dumps(event).decode() + "\n")
            count += 1
    finally:
        await store.close()
    return count
