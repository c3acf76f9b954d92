"""Offline work on a copy of the access log: `jamu audit verify` and `jamu audit export`.

Both read only, stream the log in seq order (constant memory whatever its size), and never need the
gateway running: a security officer can check a database copy with nothing but the checkpoint public key.
"""

from __future__ import annotations

import asyncio
import contextlib
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

from gateway.audit import notes
from gateway.audit.chain import GENESIS, MAX_PROBLEMS, ChainVerifier, IntegrityReport, canonical, key_id
from gateway.audit.index import AuditIndex, IndexFollower, forget_origin, import_legacy, legacy_head
from gateway.audit.merkle import Frontier, leaf_hash
from gateway.audit.origin import local_logs
from gateway.audit.rows import EventFilter
from gateway.audit.segment_store import (
    WITNESSED_FILE,
    hold_writer_lock,
    read_checkpoints,
    read_link,
    read_origin,
    read_vkey,
)
from gateway.audit.segments import CorruptLog, SegmentLog
from gateway.audit.store import AccessLogStore
from gateway.audit.tree import TREE_DIR, TreeStore
from gateway.storage.database import create_engine
from gateway.storage.tables import access_events

EXPORT_FIELDS = (
    "origin",
    "seq",
    "id",
    "time",
    "administration",
    "client_id",
    "operation",
    "purpose",
    "legal_basis",
    "consent_id",
    "subject_hash",
    "attributes_requested",
    "attributes_released",
    "decision",
    "reason",
    "status",
    "latency_ms",
    "trace_id",
    "prev_hash",
    "hash",
    "claimed_client_id",
    "evidence",
    "job_id",
    "count",
    "source",
)

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


RETIRED_LOG_KEYS = "retired-log-keys"


def retired_log_keys(private_key_path: Path) -> dict[str, Ed25519PublicKey]:
    """The public halves of log keys rotated out (`jamu audit rotate-key`): their logs stay checkable."""
    directory = private_key_path.parent / RETIRED_LOG_KEYS
    return load_public_keys(sorted(directory.glob("*.pem"))) if directory.is_dir() else {}


def public_keys_of(private_key_path: Path) -> dict[str, Ed25519PublicKey]:
    """The checkpoint key's public half, derived from the private key file (read, never created), and the
    public halves of the keys it replaced."""
    try:
        key = load_pem_private_key(private_key_path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise OfflineError(f"{private_key_path}: no readable checkpoint key; pass --public-key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise OfflineError(f"{private_key_path}: not an Ed25519 private key")
    return {**retired_log_keys(private_key_path), key_id(key.public_key()): key.public_key()}


def rotate_log_key(private_key_path: Path) -> Ed25519PublicKey:
    """Replace the log key: the old one's public half is kept (its logs stay checkable), its private half
    deleted (nothing can sign those logs again); each log it signed is retired at the next start and
    continued under a new origin signed by the new key."""
    old = public_keys_of(private_key_path)[key_id(_private(private_key_path).public_key())]
    retired = private_key_path.parent / RETIRED_LOG_KEYS
    retired.mkdir(mode=0o700, exist_ok=True)
    (retired / f"{key_id(old)}.pem").write_bytes(public_pem_of(old))
    private_key_path.unlink()
    from gateway.keyfiles import load_or_create_ed25519

    return load_or_create_ed25519(private_key_path).public_key()


def _private(path: Path) -> Ed25519PrivateKey:
    key = load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise OfflineError(f"{path}: not an Ed25519 private key")
    return key


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
class Witnessing:
    """Who is trusted to cosign (`--witness-vkey`, or the witnesses file) and how many make a quorum."""

    verifiers: list[notes.Verifier]
    quorum: int


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


class TreeCheck:
    """A log's Merkle tree rebuilt from its entries, in one pass and constant memory (a frontier): every
    signed checkpoint's root must be the tree's root at its size (so every checkpoint is consistent with
    every other), every cosigned one too, with cosignatures that verify; the tree the gateway stored must
    hold the entries' leaves, which names the first entry rewritten under it."""

    BATCH = 4096

    def __init__(
        self,
        directory: Path,
        origin: str,
        keys: dict[str, Ed25519PublicKey],
        witnessing: Witnessing | None,
        outside: Sequence[str] = (),
    ) -> None:
        self.origin = origin
        self.problems: list[dict[str, Any]] = []
        self.frontier = Frontier()
        self.verifiers = [notes.Verifier(origin, notes.ED25519, _raw(k)) for k in keys.values()]
        self.witnessing = witnessing
        self.cosigned: dict[str, Any] | None = None  # the last cosigned checkpoint: size, witnesses, quorum
        recorded = read_vkey(directory)
        if recorded is not None and recorded not in {v.vkey() for v in self.verifiers}:
            self._problem(0, f"the log's key {recorded} is not among the keys given")
        self._notes: list[tuple[int, str, bool]] = []  # (size, note, witnessed)
        for checkpoint in read_checkpoints(directory):
            if checkpoint.note is not None:
                self._add(checkpoint.note, checkpoint.seq, witnessed=False)
        try:
            lines = (directory / WITNESSED_FILE).read_bytes().split(b"\n")
        except FileNotFoundError:
            lines = []
        for line in lines:
            try:
                found = orjson.loads(line)
                self._add(str(found["note"]), int(found["size"]) - 1, witnessed=True)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue  # a line cut by a crash
        for note in outside:  # checkpoints kept elsewhere (a receipt's, a witness's): the log must still hold them
            with contextlib.suppress(notes.NoteError):
                if notes.Checkpoint.parse(notes.parse(note)[0]).origin == origin:
                    self._add(note, notes.Checkpoint.parse(notes.parse(note)[0]).size - 1, witnessed=True)
        self._notes.sort(key=lambda n: n[0], reverse=True)
        self._stored = TreeStore(directory, writable=False) if (directory / TREE_DIR).is_dir() else None
        if self._stored is not None:
            self._stored.open()
        self._batch: list[bytes] = []
        self._batch_start = 0
        self.first_rewritten: int | None = None

    def _problem(self, seq: int, problem: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append({"seq": seq, "problem": problem})

    def _add(self, note: str, last_seq: int, *, witnessed: bool) -> None:
        try:
            checkpoint = notes.signed_checkpoint(note, self.verifiers)
        except notes.NoteError as exc:
            self._problem(max(last_seq, 0), f"a checkpoint that does not verify under the log's key: {exc}")
            return
        if checkpoint.origin != self.origin:
            self._problem(max(last_seq, 0), f"a checkpoint of another origin ({checkpoint.origin})")
            return
        self._notes.append((checkpoint.size, note, witnessed))

    def feed(self, seq: int, payload: bytes) -> None:
        leaf = leaf_hash(payload)
        if self._stored is not None and self.first_rewritten is None:
            if not self._batch:
                self._batch_start = seq
            self._batch.append(leaf)
            if len(self._batch) >= self.BATCH:
                self._compare_stored()
        self.frontier.append(leaf)
        while self._notes and self._notes[-1][0] <= self.frontier.size:
            if self._batch:  # the stored tree first: a checkpoint's mismatch then names the entry rewritten
                self._compare_stored()
            self._check(*self._notes.pop())

    def _compare_stored(self) -> None:
        assert self._stored is not None
        start = self._batch_start
        stored = self._stored.leaf_hashes(start, len(self._batch))
        for offset, leaf in enumerate(self._batch):
            if offset < len(stored) and stored[offset] != leaf:
                self.first_rewritten = start + offset
                self._problem(
                    start + offset, "entry rewritten: it is not the entry whose leaf the gateway's tree holds"
                )
                break
        self._batch = []

    def _check(self, size: int, note: str, witnessed: bool) -> None:
        checkpoint = notes.Checkpoint.parse(notes.parse(note)[0])
        if size == 0:
            return
        if checkpoint.root != self.frontier.root() or size != self.frontier.size:
            first = self.first_rewritten if self.first_rewritten is not None and self.first_rewritten < size else None
            where = f" (first entry rewritten: seq {first})" if first is not None else ""
            self._problem(
                first if first is not None else size - 1,
                f"the tree of the first {size} entries is not the one a "
                f"{'cosigned' if witnessed else 'signed'} checkpoint gives: history before seq {size} was "
                f"rewritten{where}",
            )
            return
        if witnessed and self.witnessing is not None:
            try:
                _, good = notes.verified(note, self.witnessing.verifiers)
                names = sorted({s.name for s in good})
            except notes.NoteError as exc:
                if "no known key" in str(exc):
                    names = []
                else:
                    self._problem(size - 1, f"a cosignature that does not verify: {exc}")
                    return
            self.cosigned = {"size": size, "witnesses": names, "quorum": len(names) >= self.witnessing.quorum}

    def finish(self) -> list[dict[str, Any]]:
        if self._batch:
            self._compare_stored()
        for size, _, witnessed in self._notes:
            self._problem(
                size - 1,
                f"a {'cosigned' if witnessed else 'signed'} checkpoint covers {size} entries, the "
                f"log holds {self.frontier.size}: entries were deleted from the end",
            )
        if self._stored is not None:
            self._stored.close()
        return self.problems


@dataclass
class OriginReport:
    origin: str
    report: IntegrityReport
    source: str  # "segments" (checked against the index too), "index" (another instance's), "1.0 log"
    tree: dict[str, Any] | None = None  # a segment log's tree: size, root, last cosigned checkpoint

    def as_dict(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "source": self.source,
            **self.report.as_dict(),
            **({"tree": self.tree} if self.tree is not None else {}),
        }


@dataclass
class Verification:
    origins: list[OriginReport]

    @property
    def ok(self) -> bool:
        return all(o.report.ok for o in self.origins)

    def problems(self) -> list[dict[str, Any]]:
        return [{"origin": o.origin, **p} for o in self.origins for p in o.report.problems]

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events_checked": sum(o.report.events_checked for o in self.origins),
            "problems": self.problems(),
            "origins": [o.as_dict() for o in self.origins],
        }


def _segment_walk(
    directory: Path,
    keys: dict[str, Ed25519PublicKey],
    require_sealed: bool,
    witnessing: Witnessing | None = None,
    outside: Sequence[str] = (),
) -> tuple[ChainVerifier, list[dict[str, Any]], dict[str, Any]]:
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
    verifier = ChainVerifier(
        checkpoints,
        keys,
        require_sealed=require_sealed and not extra,
        first_seq=0,
        start_hash=link.hash if link else GENESIS,
    )
    if recovery is not None and recovery.torn_bytes:
        extra.append(
            {
                "seq": recovery.next_seq,
                "problem": f"a torn write of {recovery.torn_bytes} bytes at the "
                "end (never acknowledged; the gateway cuts it at its next start)",
            }
        )
    tree = TreeCheck(directory, read_origin(directory) or directory.name, keys, witnessing, outside)
    for seq, payload in segments.records(0):
        verifier.feed(orjson.loads(payload))
        tree.feed(seq, payload)
    extra += tree.finish()
    return (
        verifier,
        extra,
        {"size": tree.frontier.size, "root": notes.b64encode(tree.frontier.root()), "cosigned": tree.cosigned},
    )


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


async def _legacy_report(
    engine: AsyncEngine, keys: dict[str, Ed25519PublicKey], require_sealed: bool
) -> IntegrityReport | None:
    async with engine.connect() as connection:
        tables = await connection.run_sync(lambda c: inspect(c).get_table_names())
        if "access_events" not in tables or not await connection.scalar(
            select(func.count()).select_from(access_events)
        ):
            return None
    store = AccessLogStore(engine, _NoSigner())  # type: ignore[arg-type]
    verifier = ChainVerifier(await store.checkpoints(), keys, require_sealed=require_sealed)
    async for event in store.stream():
        verifier.feed(event)
    return verifier.finish()


async def verify(
    url: str | None,
    schema: str | None,
    log_root: Path,
    keys: dict[str, Ed25519PublicKey],
    *,
    require_sealed: bool,
    legacy_name: str,
    witnessing: Witnessing | None = None,
    outside: Sequence[str] = (),
) -> Verification:
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
            verifier, extra, tree = await asyncio.to_thread(
                _segment_walk, directory, keys, require_sealed, witnessing, outside
            )
            report = verifier.finish()
            link = read_link(directory)
            if link is not None and link.origin == legacy_name and engine is not None and index is not None:
                head = await legacy_head(engine)
                if head != (link.seq, link.hash):
                    extra.append(
                        {
                            "seq": 0,
                            "problem": f"continues {link.origin} at seq {link.seq}, but that "
                            f"log's head is {'none' if head is None else f'seq {head[0]}'} with another hash",
                        }
                    )
                successor = next((o.continued_by for o in await index.origins() if o.origin == legacy_name), None)
                if successor is not None and successor != origin:
                    extra.append(
                        {
                            "seq": 0,
                            "problem": f"continues {link.origin}, which {successor} continues: the history forks",
                        }
                    )
            if index is not None:
                extra += await _compare_index(index, origin, directory)
            # By seq; at one seq, the entry the stored tree shows rewritten before what the chain says of it.
            report.problems = sorted(
                report.problems + extra, key=lambda p: (p["seq"], not p["problem"].startswith("entry rewritten"))
            )[:MAX_PROBLEMS]
            report.ok = not report.problems
            reports.append(OriginReport(origin, report, "segments", tree))
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
            successor = next(
                (o.continued_by for o in await AuditIndex(engine).origins() if o.origin == legacy_name), None
            )
            # The index may be the thing lost: the logs themselves say which one continues the 1.0 log.
            successor = successor or next(
                (
                    read_origin(d)
                    for d in local_logs(log_root)
                    if (link := read_link(d)) is not None and link.origin == legacy_name
                ),
                None,
            )
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
