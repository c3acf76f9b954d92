"""The access record: what one request did, filled stage by stage and appended once (docs/contract.md §7)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from time import perf_counter
from typing import Any, Literal

from gateway.policy.catalogue import RecordedOperation

Decision = Literal["permit", "deny", "error"]


def rfc3339(moment: datetime) -> str:
    """Fixed width, microseconds, `Z`: text order is time order, and the hashed form is stable."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"  # C-fast, same text


def new_id() -> str:
    """A random (version 4) UUID as text: a transaction id."""
    return str(uuid.uuid4())


def decision_for(status: int) -> Decision:
    """A 2xx/3xx performed the operation; a 4xx was refused; a 5xx failed."""
    if status >= 500:
        return "error"
    if status >= 400:
        return "deny"
    return "permit"


@dataclass(slots=True)
class AccessRecord:
    """Request-scoped; stages set fields, none of them writes the log (docs/architecture.md: one writer)."""

    id: str = field(default_factory=new_id)
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: float = field(default_factory=perf_counter)
    operation: RecordedOperation | None = None
    administration: str | None = None
    client_id: str | None = None
    purpose: str | None = None
    legal_basis: str | None = None
    consent_id: str | None = None
    subject_hash: str | None = None
    attributes_requested: list[str] = field(default_factory=list)
    attributes_released: list[str] = field(default_factory=list)
    decision: Decision | None = None
    reason: str | None = None
    status: int | None = None
    latency_ms: float | None = None
    trace_id: str | None = None
    # Set only where they apply (docs/contract.md §7, 1.1); hashed only when set, so older events keep their hashes.
    claimed_client_id: str | None = None
    evidence: dict[str, str] | None = None
    job_id: str | None = None
    count: int | None = None
    source: str | None = None
    releases_data: bool = False
    outcome: str | None = None  # what the log must say even when the answer does not (e.g. suspended)
    seq: int | None = None  # its place in the log, once durable (the response's Audit-Log-Position)

    def finish(self, status: int) -> None:
        self.status = status
        self.decision = decision_for(status)
        if self.decision == "permit":
            self.reason = None
        elif self.reason is None:
            self.reason = "internal_error" if status >= 500 else "invalid_request"
        if self.outcome is not None:
            self.reason = self.outcome
        if self.decision != "permit":
            self.attributes_released = []
        self.latency_ms = round((perf_counter() - self.started) * 1000, 3)

    def event(self) -> dict[str, Any]:
        """The fields that go into the log, in the contract's names (EVENT_FIELDS). Text is bounded
        and stripped of NULs, whatever a stage copied into it, so no event can fail to store."""
        return {
            "id": _text(self.id),
            "time": rfc3339(self.time),
            "operation": _text(self.operation),
            "administration": _text(self.administration),
            "client_id": _text(self.client_id),
            "purpose": _text(self.purpose),
            "legal_basis": _text(self.legal_basis),
            "consent_id": _text(self.consent_id),
            "subject_hash": _text(self.subject_hash),
            "attributes_requested": [_bounded(item) for item in self.attributes_requested[:_MAX_LIST]],
            "attributes_released": [_bounded(item) for item in self.attributes_released[:_MAX_LIST]],
            "decision": self.decision,
            "reason": _text(self.reason),
            "status": self.status,
            "latency_ms": self.latency_ms,
            "trace_id": _text(self.trace_id),
            "claimed_client_id": _text(self.claimed_client_id),
            "evidence": None if self.evidence is None else {k: _bounded(v) for k, v in self.evidence.items()},
            "job_id": _text(self.job_id),
            "count": self.count,
            "source": _text(self.source),
        }


# Every field but the request-scoped working ones: what `event` writes (a test holds the two together).
_WORKING_FIELDS = ("started", "releases_data", "outcome", "seq")
EVENT_FIELDS = tuple(f.name for f in fields(AccessRecord) if f.name not in _WORKING_FIELDS)


_MAX_TEXT = 512
_MAX_LIST = 64


def _text(value: str | None) -> str | None:
    return None if value is None else _bounded(value)


def _bounded(value: str) -> str:
    if len(value) <= _MAX_TEXT and "\x00" not in value:
        return value
    return value.replace("\x00", "")[:_MAX_TEXT]
