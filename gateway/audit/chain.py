"""The access log's hash chain and signed checkpoints: pure functions, no I/O.

Each event's `hash` is SHA-256 over a canonical serialisation of its fields (`prev_hash` included, `hash`
excluded): JSON with sorted keys, no spaces, UTF-8, no NaN. A checkpoint signs (Ed25519) the sequence
number and head hash at that point, so rewriting history and recomputing the chain is still caught.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from gateway.audit.notes import Signer

GENESIS = "0" * 64
HASHED_FIELDS = (
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
)
# Fields added after the log's first version: hashed only when set, so every earlier event, which has
# none of them, keeps the hash it was written with.
OPTIONAL_HASHED_FIELDS = ("claimed_client_id", "evidence", "job_id", "count", "source")
MAX_PROBLEMS = 100


def canonical(event: Mapping[str, Any]) -> bytes:
    """The bytes an event's hash covers. orjson: sorted keys, compact, UTF-8, refuses NaN/Infinity."""
    hashed = {name: event[name] for name in HASHED_FIELDS}
    for name in OPTIONAL_HASHED_FIELDS:
        value = event.get(name)
        if value is not None:
            hashed[name] = value
    return orjson.dumps(hashed, option=orjson.OPT_SORT_KEYS)


def event_hash(event: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(event)).hexdigest()


def link(events: Iterable[dict[str, Any]], head_seq: int, head_hash: str) -> list[dict[str, Any]]:
    """Number and chain `events` after the head (seq, hash); each gets `seq`, `prev_hash`, `hash`."""
    linked = []
    seq, prev = head_seq, head_hash
    for event in events:
        seq += 1
        event = {**event, "seq": seq, "prev_hash": prev}
        event["hash"] = prev = event_hash(event)
        linked.append(event)
    return linked


def checkpoint_message(seq: int, head_hash: str) -> bytes:
    return f"jamu-access-log-checkpoint/v1\n{seq}\n{head_hash}".encode()


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    head_hash: str
    time: str
    key_id: str
    signature: str  # base64url, unpadded
    note: str | None = None  # the C2SP checkpoint over the Merkle tree at size seq + 1, signed by the same key


class CheckpointSigner:
    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

    def note_signer(self, origin: str) -> Signer:
        """The same key signing C2SP notes under the log's origin (its vkey names the origin)."""
        return Signer(origin, self._private)

    def private_bytes(self) -> bytes:
        """The raw key, for handing to the access-log writer process over its pipe."""
        return self._private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def sign(self, seq: int, head_hash: str, time: str) -> Checkpoint:
        signature = self._private.sign(checkpoint_message(seq, head_hash))
        return Checkpoint(seq, head_hash, time, self.key_id, base64.urlsafe_b64encode(signature).rstrip(b"=").decode())


def checkpoint_valid(checkpoint: Checkpoint, keys: Mapping[str, Ed25519PublicKey]) -> str | None:
    """None when the signature holds, else why not."""
    public = keys.get(checkpoint.key_id)
    if public is None:
        return f"checkpoint signed by an unknown key {checkpoint.key_id}"
    try:
        signature = base64.urlsafe_b64decode(checkpoint.signature + "=" * (-len(checkpoint.signature) % 4))
        public.verify(signature, checkpoint_message(checkpoint.seq, checkpoint.head_hash))
    except (InvalidSignature, ValueError):
        return "checkpoint signature is not valid"
    return None


@dataclass
class IntegrityReport:
    ok: bool
    events_checked: int
    last_seq: int
    last_checkpoint: dict[str, Any] | None
    problems: list[dict[str, Any]]
    unsealed_events: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events_checked": self.events_checked,
            "last_seq": self.last_seq,
            "last_checkpoint": self.last_checkpoint,
            "problems": self.problems,
            "unsealed_events": self.unsealed_events,
        }


@dataclass
class ChainVerifier:
    """Walks events in seq order in constant memory, checking each against the one before and against
    the signed checkpoints; every problem is located by sequence number.

    `require_sealed`: events after the last valid checkpoint are a problem (an appended forgery with a
    recomputed chain looks exactly like them). A running gateway always has a short unsealed tail, so a
    live check passes False; a copy of a log that was shut down cleanly passes True.
    """

    checkpoints: list[Checkpoint]
    keys: Mapping[str, Ed25519PublicKey]
    require_sealed: bool = True
    first_seq: int = 1  # the SQL log counts from 1; segment logs from 0, as proofs number their leaves
    start_hash: str = GENESIS  # a log that continues another starts from that one's head
    problems: list[dict[str, Any]] = field(default_factory=list)
    checked: int = 0
    _prev_seq: int = 0
    _prev_hash: str = GENESIS
    _pending: list[Checkpoint] = field(default_factory=list)
    _sealed_seq: int = 0
    _last_checkpoint: Checkpoint | None = None
    _rewritten: bool = False

    def __post_init__(self) -> None:
        self._pending = sorted(self.checkpoints, key=lambda c: c.seq, reverse=True)
        self._prev_seq = self._sealed_seq = self.first_seq - 1
        self._prev_hash = self.start_hash

    def _problem(self, seq: int, problem: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append({"seq": seq, "problem": problem})

    def feed(self, event: Mapping[str, Any]) -> None:
        seq = event["seq"]
        self.checked += 1
        if seq <= self._prev_seq:
            self._problem(seq, f"out of order: follows seq {self._prev_seq}")
        elif seq != self._prev_seq + 1:
            self._problem(seq, f"events missing: expected seq {self._prev_seq + 1}")
        if event_hash(event) != event["hash"]:
            self._problem(seq, "event altered: its content does not match its hash")
        elif event["prev_hash"] != self._prev_hash:
            self._problem(seq, f"chain broken: prev_hash does not match seq {self._prev_seq}")
        self._prev_seq, self._prev_hash = seq, event["hash"]
        while self._pending and self._pending[-1].seq <= seq:
            self._check_checkpoint(self._pending.pop(), seq, event["hash"])

    def _check_checkpoint(self, checkpoint: Checkpoint, seq: int, head_hash: str) -> None:
        invalid = checkpoint_valid(checkpoint, self.keys)
        if invalid:
            self._problem(checkpoint.seq, invalid)
        elif checkpoint.seq != seq:
            self._problem(checkpoint.seq, "checkpointed event is missing")
        elif checkpoint.head_hash != head_hash:
            self._rewritten = True
            self._problem(
                seq, f"chain differs from the signed checkpoint: history after seq {self._sealed_seq} was rewritten"
            )
        else:
            self._sealed_seq = seq
            self._last_checkpoint = checkpoint

    def finish(self) -> IntegrityReport:
        truncated = False
        for checkpoint in reversed(self._pending):
            invalid = checkpoint_valid(checkpoint, self.keys)
            truncated = truncated or not invalid
            self._problem(
                checkpoint.seq,
                invalid
                or f"events deleted from the end: the log stops at seq "
                f"{self._prev_seq} but a checkpoint covers seq {checkpoint.seq}",
            )
        self._pending = []
        unsealed = self._prev_seq - self._sealed_seq if self._prev_seq > self._sealed_seq else 0
        # Entries before a valid checkpoint past the end were sealed; the fault is the missing end.
        if self.require_sealed and unsealed and not truncated and not self._rewritten:
            self._problem(self._sealed_seq + 1, f"{unsealed} events are not covered by a signed checkpoint")
        last = self._last_checkpoint
        return IntegrityReport(
            ok=not self.problems,
            events_checked=self.checked,
            last_seq=self._prev_seq,
            last_checkpoint=None if last is None else {"seq": last.seq, "time": last.time, "key_id": last.key_id},
            problems=list(self.problems),
            unsealed_events=unsealed,
        )
