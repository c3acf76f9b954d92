"""Reading the access log (docs/contract.md §7): security officers' listing, person search and integrity check,
and a citizen's access history through a channel. Every read is itself an access and is logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import re
import struct
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator
from sqlalchemy.exc import SQLAlchemyError

from gateway.api.deps import access_record, protected
from gateway.api.fields import Nin
from gateway.api.responses import FastJSONResponse
from gateway.audit import notes
from gateway.audit.index import OriginState, Position
from gateway.audit.record import rfc3339
from gateway.audit.rows import EventFilter
from gateway.auth.bearer import Caller
from gateway.errors import Problem
from gateway.identity.pseudonyms import reference_names_person
from gateway.policy.catalogue import RecordedOperation
from gateway.ratelimit.gcra import Window
from gateway.ratelimit.limiter import Outcome
from gateway.services import Services, services

log = logging.getLogger(__name__)
router = APIRouter(tags=["Access log"])

Decision = Literal["permit", "deny", "error"]
# What a citizen sees: every use of their record, but not security officers reading the log (an
# investigation is not announced to the person investigated).
HIDDEN_FROM_HISTORY = ("audit.", "console.")
HISTORY_LIMIT = 1000
_DAY_US = 86_400_000_000


_CURSOR_ORIGIN = re.compile(r"[^\x00-\x1f\x7f]{1,256}")
# Query values are compared with stored text: control characters (NUL above all) never match and some
# databases refuse them outright.
Text = Annotated[str, StringConstraints(max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")]


def _cursor(last: Position) -> str:
    """Where a page ended: the last event's place in the index, and its name (origin, seq)."""
    raw = orjson.dumps([last.position, last.origin, last.seq])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _after(cursor: str | None) -> Position | None:
    if cursor is None:
        return None
    try:
        value = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        position, origin, seq = value
        if not (
            type(position) is int
            and type(seq) is int
            and 0 <= position < 2**63
            and 0 <= seq < 2**63
            and isinstance(origin, str)
            and _CURSOR_ORIGIN.fullmatch(origin)
        ):
            raise ValueError
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise Problem(
            "invalid_request",
            "the cursor is not one this API handed out",
            extra={"errors": [{"in": "query", "parameter": "cursor", "detail": "unknown cursor"}]},
        ) from None
    return Position(position, origin, seq)


# Every running follower reports at least every second; a report older than this means its process died
# or hangs, and its origin's rows may be missing events: reads refuse until it is back (or another
# process finishes its log at start).
LAG_REPORT_FRESH_S = 10.0


async def index_current(request: Request) -> list[OriginState]:
    """Audit reads answer from the index. They wait for it to hold every event this process has answered
    (at once when it is current), and refuse while this process's index or any other process's, by its
    latest report, is further behind than the contract allows, rather than answer with events missing.
    Verification is never held back by the index. The origins as the index holds them."""
    app = services(request)
    max_lag = app.settings.audit_index_max_lag_s
    own_behind = not await app.log.follower.reach(max_lag)
    async with index_reads():
        states = await app.log.index.origins()
    now = time.time()
    behind = [
        why
        for state in states
        if state.origin != app.log.access_log.origin and (why := state.behind(max_lag, now, LAG_REPORT_FRESH_S))
    ]
    if own_behind or behind:
        log.warning("audit read refused: the index is behind (%s)", "; ".join(behind) or "this process's log")
        raise Problem(
            "audit_unavailable",
            "the access log's query index is behind the log; retry shortly",
            headers={"Retry-After": "1"},
        )
    return states


@contextlib.asynccontextmanager
async def index_reads() -> AsyncIterator[None]:
    """The index's database failing mid-read is the index being unavailable, not a gateway fault."""
    try:
        yield
    except (SQLAlchemyError, OSError) as exc:
        log.warning("access log index unreadable: %s", exc)
        raise Problem(
            "audit_unavailable",
            "the access log's query index cannot be read; retry shortly",
            headers={"Retry-After": "1"},
        ) from None


def _indexed_through(states: list[OriginState]) -> dict[str, int]:
    """Each origin's searchable events: an answer says how far it could see."""
    return {state.origin: state.indexed for state in states}


def _instant(moment: datetime | None, name: str, *, in_body: bool = False) -> str | None:
    """A time bound as the log writes times; one that has no UTC form (year 1 at +01:00) is refused."""
    if moment is None:
        return None
    try:
        return rfc3339(moment)
    except (OverflowError, ValueError):
        where = {"pointer": f"/{name}"} if in_body else {"in": "query", "parameter": name}
        raise Problem(
            "invalid_request", f"{name} is out of range", extra={"errors": [{**where, "detail": "out of range"}]}
        ) from None


class PersonSearch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    nin: Nin
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None
    limit: int = Field(100, ge=1, le=1000)
    cursor: str | None = Field(None, max_length=512)


class HistoryEvidence(BaseModel):
    """How the channel knows the person is the one asking: present at the counter, an OTP, a signed form."""

    model_config = ConfigDict(extra="forbid")
    method: Literal["in_person", "otp", "signed_form"]
    reference: Annotated[str, StringConstraints(min_length=1, max_length=200)]


class HistoryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    nin: Nin
    evidence: HistoryEvidence

    @model_validator(mode="after")
    def _reference_is_not_an_identity_number(self) -> HistoryRequest:
        if reference_names_person(self.evidence.reference, self.nin):
            raise ValueError("evidence.reference must name the channel's own record, not the person's NIN")
        return self


async def _page(request: Request, where: EventFilter, cursor: str | None, limit: int) -> FastJSONResponse:
    after = _after(cursor)
    states = await index_current(request)
    async with index_reads():
        events, last = await services(request).log.index.page(where, after, limit)
    next_cursor = _cursor(last) if len(events) == limit and last is not None else None
    return FastJSONResponse(
        {
            "transaction_id": access_record(request).id,
            "events": events,
            "next_cursor": next_cursor,
            "indexed_through": _indexed_through(states),
        }
    )


@router.get("/v1/audit/events", name="audit.search", summary="List access events (security officers)")
async def list_events(
    request: Request,
    caller: Annotated[Caller, Depends(protected("audit.search", "audit:read"))],
    administration: Annotated[Text | None, Query()] = None,
    client_id: Annotated[Text | None, Query()] = None,
    operation: RecordedOperation | None = None,
    decision: Decision | None = None,
    since: AwareDatetime | None = None,
    until: AwareDatetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> FastJSONResponse:
    """Every origin's events in the order they became searchable (oldest first). `next_cursor` is set
    when the page is full; pass it back for the next page: an event indexed meanwhile comes on a later
    page. `since` is inclusive, `until` exclusive."""
    where = EventFilter(
        administration=administration,
        client_id=client_id,
        operation=operation,
        decision=decision,
        since=_instant(since, "since"),
        until=_instant(until, "until"),
    )
    return await _page(request, where, cursor, limit)


@router.post("/v1/audit/search", name="audit.search", summary="Every access to one person's record")
async def search_person(
    request: Request,
    body: PersonSearch,
    caller: Annotated[Caller, Depends(protected("audit.search", "audit:read"))],
) -> FastJSONResponse:
    subject = services(request).subjects(body.nin)
    access_record(request).subject_hash = subject
    where = EventFilter(
        subject_hash=subject,
        since=_instant(body.since, "since", in_body=True),
        until=_instant(body.until, "until", in_body=True),
    )
    return await _page(request, where, body.cursor, body.limit)


@router.get("/v1/audit/integrity", name="audit.integrity", summary="Check the hash chain and checkpoints")
async def integrity(
    request: Request,
    caller: Annotated[Caller, Depends(protected("audit.integrity", "audit:read"))],
) -> FastJSONResponse:
    """Walks every origin's chain as the index holds it, against its signed checkpoints. The tail
    written since an origin's last checkpoint is reported in `unsealed_events`, not as a problem: a
    running log always has one. The top-level fields are this process's own log's (and `problems` all
    origins', each naming its origin)."""
    states = await index_current(request)
    report = await integrity_report(services(request), states)
    return FastJSONResponse({"transaction_id": access_record(request).id, **report})


async def integrity_report(app: Services, states: list[OriginState]) -> dict[str, Any]:
    """Every origin's chain walked against its checkpoints (the API's and the console's report)."""
    own_origin = app.log.access_log.origin
    origins: list[dict[str, Any]] = []
    problems: list[dict[str, Any]] = []
    own: dict[str, Any] | None = None
    checked = 0
    for state in states:
        async with index_reads():
            report = (await app.log.index.verify(state, app.log.checkpoint_keys)).finish()
        checked += report.events_checked
        named = [{"origin": state.origin, **problem} for problem in report.problems]
        problems += named
        # This process knows its own log's size; of another's, what the index holds.
        tree_size = app.log.follower.durable_end() if state.origin == own_origin else state.indexed
        signed, cosignatures = await _signed_head(app, state.origin)
        if state.origin == own_origin:
            mine = _own_log_problems(app, state.origin)
            named += mine
            problems += mine
        last_checkpoint = report.last_checkpoint if signed is None else {**(report.last_checkpoint or {}), **signed}
        entry = {
            "origin": state.origin,
            "tree_size": tree_size,
            "indexed_through": state.indexed,
            "last_seq": report.last_seq,
            "last_checkpoint": last_checkpoint,
            "unsealed_events": report.unsealed_events,
            "cosignatures": cosignatures,
            "problems": named,
        }
        if state.link is not None:
            entry["continues"] = {"origin": state.link.origin, "seq": state.link.seq}
        origins.append(entry)
        if state.origin == own_origin:
            own = entry
    own = own or {"last_seq": None, "last_checkpoint": None, "unsealed_events": 0}
    return {
        "ok": not problems,
        "events_checked": checked,
        "last_seq": own["last_seq"],
        "last_checkpoint": own["last_checkpoint"],
        "unsealed_events": own["unsealed_events"],
        "problems": problems[:100],
        "origins": origins,
    }


async def _signed_head(app: Any, origin: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The origin's last signed checkpoint (size, note) as its log holds it, and the cosignatures on the
    latest checkpoint witnesses cosigned (each with that checkpoint's size: witnesses are asked once a
    second, checkpoints come up to twice); (None, []) for a log this instance cannot read."""
    view = app.log.views.get(origin) if app.log.views is not None else None
    if view is None:
        return None, []
    try:
        head = await asyncio.to_thread(view.signed)
        witnessed = await asyncio.to_thread(view.witnessed) if app.log.witnesses is not None else []
    except Exception as exc:  # a checkpoint that no longer verifies: the report's problems say so
        log.warning("access log %s: its last checkpoint cannot be read: %s", origin, exc)
        return None, []
    if head is None:
        return None, []
    cosignatures: list[dict[str, Any]] = []
    if witnessed:
        with contextlib.suppress(notes.NoteError):
            _, good = notes.verified(witnessed[0].note, app.log.witnesses.verifiers())
            cosignatures = [
                {"witness": s.name, "size": witnessed[0].size, "time": struct.unpack(">Q", s.blob[4:12])[0]}
                for s in good
            ]
    return {"size": head.size, "root": notes.b64encode(head.root), "note": head.note}, cosignatures


def _own_log_problems(app: Services, origin: str) -> list[dict[str, Any]]:
    """What this process knows of its own log that no walk of the index shows: a refusal to sign, and the
    witnesses' complaints and lag."""
    found: list[dict[str, Any]] = []
    store = app.log.store
    if store.refusal:
        found.append({"origin": origin, "seq": store.next_seq, "problem": store.refusal})
    client = app.log.witness_client
    if client is not None:
        found += [{"origin": origin, "seq": store.next_seq, "problem": p} for p in client.problems()]
        lag = client.lag()
        if lag > app.settings.witness_max_lag_s:
            found.append(
                {
                    "origin": origin,
                    "seq": store.next_seq if store else 0,
                    "problem": f"no checkpoint has reached its witness quorum for {lag:.0f} s",
                }
            )
    return found


@router.post(
    "/v1/subjects/access-history",
    name="subject.history",
    summary="Who used a person's record, for the person (through a channel)",
)
async def access_history(
    request: Request,
    body: HistoryRequest,
    caller: Annotated[Caller, Depends(protected("subject.history", "subject:history"))],
) -> FastJSONResponse:
    """The latest uses of the person's record, oldest first, this read included: the channel's reads of
    histories show in the person's own. The channel must say how it knows the person is asking
    (`evidence`, recorded in the event), and its policy may cap such reads a day."""
    app = services(request)
    record = access_record(request)
    subject = app.subjects(body.nin)
    record.subject_hash = subject
    record.evidence = body.evidence.model_dump()
    admin = app.policies.current.administrations.get(caller.administration)
    if admin is not None and admin.history_reads_per_day is not None:
        window = Window("history_daily", admin.history_reads_per_day, _DAY_US)
        verdict = await app.rate_limits.limiter.acquire(f"hist:{caller.administration}", (window,))
        if not verdict.allowed:
            raise Outcome(verdict, []).refusal() or Problem("rate_limited")
    states = await index_current(request)
    async with index_reads():
        events = await app.log.index.subject_events(subject, HIDDEN_FROM_HISTORY, HISTORY_LIMIT)
    names = {a.id: a.name for a in app.policies.current.administrations.values()}
    this_read: dict[str, Any] = {
        "time": rfc3339(record.time),
        "administration": caller.administration,
        "operation": "subject.history",
        "purpose": None,
        "attributes_released": [],
        "decision": "permit",
    }
    history: list[dict[str, Any]] = [
        {
            "time": e["time"],
            "administration": e["administration"],
            "administration_name": names.get(e["administration"] or ""),
            "operation": e["operation"],
            "purpose": e["purpose"],
            "attributes_released": e["attributes_released"],
            "decision": e["decision"],
        }
        for e in [*events[-(HISTORY_LIMIT - 1) :], this_read]
    ]
    return FastJSONResponse(
        {"transaction_id": record.id, "events": history, "indexed_through": _indexed_through(states)}
    )
