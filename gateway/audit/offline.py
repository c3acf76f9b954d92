"""Offline work on a copy of the access log: `jamu audit verify` and `jamu audit export`.

Both read only, stream the log in seq order (constant memory whatever its size), and never need the
gateway running: a security officer can check a database copy with nothing but the checkpoint public key.
"""

from __future__ import annotations

import asyncio
import csv
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
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
from sqlalchemy import func, inspect, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.chain import GENESIS, MAX_PROBLEMS, ChainVerifier, IntegrityReport, canonical, key_id
from gateway.audit.index import AuditIndex, IndexFollower, forget_origin, import_legacy, legacy_head
from gateway.audit.origin import local_logs
from gateway.audit.rows import EventFilter
from gateway.audit.segment_store import hold_writer_lock, read_checkpoints, read_link, read_origin
from gateway.audit.segments import CorruptLog, SegmentLog
from gateway.audit.store import AccessLogStore
from gateway.storage.database import create_engine
from gateway.storage.tables import access_events

EXPORT_FIELDS = ("origin", "seq", "id", "time", "administration", "client_id", "operation", "purpose", "legal_basis",
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


async def _engine(url: str, schema: str | None) -> AsyncEngine:
    engine = create_engine(url, schema=schema)
    try:
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda c: inspect(c).get_table_names())
    except Exception as exc:
        await engine.dispose()
        raise OfflineError(f"cannot read the database: {exc}") from None
    if "audit_index" not in tables:
        await engine.dispose()
        raise OfflineError("this database holds no access log index")
    return engine


@dataclass
class OriginReport:
    origin: str
    report: IntegrityReport
    source: str  # "segments" (checked against the index too), "index" (another instance's), "1.0 log"

    def as_dict(self) -> dict[str, Any]:
        return {"origin": self.origin, "source": self.source, **self.report.as_dict()}


@dataclass
class Verification:
    origins: list[OriginReport]

    @property
    def ok(self) -> bool:
        return all(o.report.ok for o in self.origins)

    def problems(self) -> list[dict[str, Any]]:
        return [{"origin": o.origin, **p} for o in self.origins for p in o.report.problems]

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "events_checked": sum(o.report.events_checked for o in self.origins),
                "problems": self.problems(), "origins": [o.as_dict() for o in self.origins]}


def _segment_walk(directory: Path, keys: dict[str, Ed25519PublicKey], require_sealed: bool
                  ) -> tuple[ChainVerifier, list[dict[str, Any]], int]:
    """Check one local log: frames (CRC, numbering), chain, checkpoints. Returns the verifier, extra
    problems (damage that stops the walk, a torn tail) and how many entries were read."""
    extra: list[dict[str, Any]] = []
    segments = SegmentLog(directory, read_only=True)
    checkpoints = read_checkpoints(directory)
    try:
        recovery = segments.open(protect_through=checkpoints[-1].seq if checkpoints else -1)
    except CorruptLog as exc:
        extra.append({"seq": exc.seq, "problem": f"log damaged: {exc}"})
        recovery = None
    link = read_link(directory)
    # A walk cut short by damage leaves the rest unchecked: that is the damage, not an unsealed tail.
    verifier = ChainVerifier(checkpoints, keys, require_sealed=require_sealed and not extra,
                             first_seq=0, start_hash=link.hash if link else GENESIS)
    if recovery is not None and recovery.torn_bytes:
        extra.append({"seq": recovery.next_seq, "problem": f"a torn write of {recovery.torn_bytes} bytes at the "
                      "end (never acknowledged; the gateway cuts it at its next start)"})
    count = 0
    for _, payload in segments.records(0):
        verifier.feed(orjson.loads(payload))
        count += 1
    return verifier, extra, count


async def _compare_index(index: AuditIndex, origin: str, directory: Path) -> list[dict[str, Any]]:
    """Every index row of `origin` against the log's entry of the same seq: changed, missing, or extra."""
    problems: list[dict[str, Any]] = []
    state = next((o for o in await index.origins() if o.origin == origin), None)
    if state is None:
        held = sum(1 for _ in SegmentLog(directory, read_only=True).records(0))
        if held:
            problems.append({"seq": 0, "problem": f"the index holds none of this log's {held} entries"})
        return problems
    entries = SegmentLog(directory, read_only=True).records(0)
    pending = next(entries, None)

    def missing_before(seq: int | None) -> None:
        nonlocal pending
        while pending is not None and (seq is None or pending[0] < seq):
            if pending[0] < state.next_seq:
                problems.append({"seq": pending[0], "problem": "index row missing: the log has this entry"})
            pending = next(entries, None)

    async for row in index.origin_entries(origin):
        missing_before(row["seq"])
        if pending is None or pending[0] != row["seq"]:
            problems.append({"seq": row["seq"], "problem": "index row with no entry in the log"})
            continue
        entry = orjson.loads(pending[1])
        if canonical(entry) != canonical(row) or entry["hash"] != row["hash"]:
            problems.append({"seq": row["seq"], "problem": "index row differs from the log's entry"})
        pending = next(entries, None)
    missing_before(None)
    return problems


async def _legacy_report(engine: AsyncEngine, keys: dict[str, Ed25519PublicKey], require_sealed: bool
                         ) -> IntegrityReport | None:
    async with engine.connect() as connection:
        tables = await connection.run_sync(lambda c: inspect(c).get_table_names())
        if "access_events" not in tables or not await connection.scalar(select(func.count()).select_from(
                access_events)):
            return None
    store = AccessLogStore(engine, _NoSigner())  # type: ignore[arg-type]
    verifier = ChainVerifier(await store.checkpoints(), keys, require_sealed=require_sealed)
    async for event in store.stream():
        verifier.feed(event)
    return verifier.finish()


async def verify(url: str | None, schema: str | None, log_root: Path, keys: dict[str, Ed25519PublicKey], *,
                 require_sealed: bool, legacy_name: str) -> Verification:
    """Every origin: each local log from its segments (and its index rows against them), every other
    origin the index holds from the index, and a migrated 1.0 log from its SQL chain."""
    reports: list[OriginReport] = []
    engine = await _engine(url, schema) if url is not None else None
    try:
        index = AuditIndex(engine) if engine is not None else None
        local: set[str] = set()
        for directory in local_logs(log_root):
            origin = read_origin(directory) or directory.name
            local.add(origin)
            verifier, extra, _ = await asyncio.to_thread(_segment_walk, directory, keys, require_sealed)
            report = verifier.finish()
            link = read_link(directory)
            if link is not None and link.origin == legacy_name and engine is not None and index is not None:
                head = await legacy_head(engine)
                if head != (link.seq, link.hash):
                    extra.append({"seq": 0, "problem": f"continues {link.origin} at seq {link.seq}, but that "
                                  f"log's head is {'none' if head is None else f'seq {head[0]}'} with another hash"})
                successor = next((o.continued_by for o in await index.origins() if o.origin == legacy_name), None)
                if successor is not None and successor != origin:
                    extra.append({"seq": 0, "problem": f"continues {link.origin}, which {successor} continues: "
                                  "the history forks"})
            if index is not None:
                extra += await _compare_index(index, origin, directory)
            report.problems = sorted(report.problems + extra, key=lambda p: p["seq"])[:MAX_PROBLEMS]
            report.ok = not report.problems
            reports.append(OriginReport(origin, report, "segments"))
        if engine is not None and index is not None:
            legacy = await _legacy_report(engine, keys, require_sealed)
            if legacy is not None:
                reports.append(OriginReport(legacy_name, legacy, "1.0 log"))
                local.add(legacy_name)
            for state in await index.origins():
                if state.origin not in local:
                    verifier = await index.verify(state, keys, require_sealed=require_sealed)
                    reports.append(OriginReport(state.origin, verifier.finish(), "index"))
    finally:
        if engine is not None:
            await engine.dispose()
    return Verification(reports)


async def reindex(url: str, schema: str | None, log_root: Path, legacy_name: str) -> dict[str, int]:
    """Rebuild the query index from the logs: each local origin dropped and indexed again from its
    segments, a migrated 1.0 log copied again. How many events each origin has now."""
    engine = await _engine(url, schema)
    counts: dict[str, int] = {}
    try:
        for directory in local_logs(log_root):
            held = hold_writer_lock(directory)  # a running gateway's follower keeps its own index current
            if held is None:
                raise OfflineError(f"{read_origin(directory)}: a running gateway writes this log; stop it first")
            try:
                follower = IndexFollower(engine, directory)
                await follower.forget()
                counts[follower.origin] = await follower.catch_up()
            finally:
                os.close(held)
        if await legacy_head(engine) is not None:
            successor = next((o.continued_by for o in await AuditIndex(engine).origins()
                              if o.origin == legacy_name), None)
            # The index may be the thing lost: the logs themselves say which one continues the 1.0 log.
            successor = successor or next((read_origin(d) for d in local_logs(log_root)
                                           if (link := read_link(d)) is not None and link.origin == legacy_name), None)
            await forget_origin(engine, legacy_name)
            link = await import_legacy(engine, legacy_name, continued_by=successor)
            counts[legacy_name] = 0 if link is None else link.seq
    finally:
        await engine.dispose()
    return counts


async def export(url: str, schema: str | None, where: EventFilter, fmt: str, out: TextIO = sys.stdout) -> int:
    """Write every matching event (every origin, in time order) as JSON Lines or CSV; returns how many."""
    engine = await _engine(url, schema)
    count = 0
    try:
        writer = csv.DictWriter(out, fieldnames=EXPORT_FIELDS) if fmt == "csv" else None
        if writer is not None:
            writer.writeheader()
        async for event in AuditIndex(engine).stream(where):
            if writer is not None:
                writer.writerow(csv_row(event))
            else:
                out.write(orjson.dumps(event).decode() + "\n")
            count += 1
    finally:
        await engine.dispose()
    return count
