"""Life events (docs/contract.md §15, docs/life-events.md): declarations in, feeds out.

Every event released, pulled or pushed, is its own access-log event with the person's subject hash, so
a person's history shows that a death or a birth was passed on, and to whom.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.deps import access_record, idempotency_key, protected
from gateway.api.responses import FastJSONResponse
from gateway.api.routes import GuardedBodyRoute
from gateway.audit.log import AccessLogUnavailable
from gateway.audit.record import rfc3339
from gateway.auth.bearer import Caller
from gateway.errors import Problem, invalid_at
from gateway.events.declarations import DeclarationBody, FormProblem, parse
from gateway.events.feed import cloud_event, decode_cursor, encode_cursor, release_record, subscription_key
from gateway.events.register import KeyConflict, RegisterUnavailable, Submission, request_hash
from gateway.policy.model import IDENTIFIER_PATTERN, AdministrationPolicy, SubscriptionPolicy
from gateway.services import Services, services

router = APIRouter(tags=["Life events"])

SubscriptionName = Annotated[str, Query(pattern=IDENTIFIER_PATTERN, max_length=63)]


# The declarations route is served by the identity routes' lean handler (`GuardedBodyRoute`: request,
# body, caller), so its Idempotency-Key is read from the request rather than declared as a parameter; the
# OpenAPI document still names it.
_KEY_PARAMETER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
    "description": "the same key with the same body answers the first answer; with another, 409",
}


async def declare(
    request: Request,
    body: DeclarationBody,
    caller: Caller = Depends(protected("declaration", "register:declare")),  # noqa: B008
) -> FastJSONResponse:
    """The register change and the events for its subscribers commit together or not at all."""
    app = services(request)
    record = access_record(request)
    given = request.headers.get("idempotency-key")
    key = idempotency_key(given if given is None or len(given) <= 200 else "")
    try:
        declaration = parse(body)
    except FormProblem as exc:
        raise Problem("invalid_request", "the declaration is malformed", extra={"errors": exc.errors}) from None
    if app.events.register is None:
        raise Problem("backend_unavailable", "declarations need the embedded register; this gateway has none")
    submission = Submission(
        declaration, caller.administration, caller.client_id, key, request_hash(body.model_dump(mode="json"))
    )
    try:
        answer = await app.events.register.declare(submission)
    except KeyConflict:
        raise Problem("conflict", "this Idempotency-Key was used for another declaration") from None
    except RegisterUnavailable:
        raise Problem("backend_unavailable", "the register cannot be written now; nothing was changed") from None
    if answer.subject is not None:
        record.subject_hash = app.subjects(answer.subject)
    app.metrics.labelled(
        app.metrics.declarations, declaration.type, "accepted" if answer.status == 201 else "rejected"
    ).inc()
    if answer.status == 422:
        raise Problem("declaration_rejected", answer.body["detail"], extra={"reason": answer.body["reason"]})
    return FastJSONResponse({"transaction_id": record.id, **answer.body}, status_code=201)


router.add_api_route(
    "/v1/declarations",
    declare,
    methods=["POST"],
    name="declaration",
    status_code=201,
    route_class_override=GuardedBodyRoute,
    openapi_extra={"parameters": [_KEY_PARAMETER]},
    summary="Declare a birth, death, marriage, divorce, name change or displacement",
    responses={
        409: {"description": "Idempotency-Key reused with another body"},
        422: {"description": "`declaration_rejected`: an impossible fact, with `reason`"},
    },
)


def _subscription(app: Services, caller: Caller, name: str) -> tuple[AdministrationPolicy, SubscriptionPolicy]:
    administration = app.policies.current.administrations.get(caller.administration)
    subscription = None if administration is None else administration.subscriptions.get(name)
    if administration is None or subscription is None:
        raise Problem("not_found", "no such subscription")
    return administration, subscription


async def _position(app: Services, key: str, cursor: str | None, pointer: str) -> int:
    """The position a cursor names in this feed: one the feed has reached, never one ahead of it (which
    would skip the events still to come)."""
    if not cursor:
        return 0
    try:
        position = decode_cursor(key, cursor)
    except ValueError:
        raise invalid_at(pointer, "not a cursor of this feed") from None
    if position and position > (await app.events.feed.heads([key])).get(key, 0):
        raise invalid_at(pointer, "not a cursor of this feed")
    return position


@router.get("/v1/events", name="events.read", summary="Pull a subscription's events after a cursor")
async def read_events(
    request: Request,
    subscription: SubscriptionName,
    after: Annotated[str | None, Query(max_length=40)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    caller: Caller = Depends(protected("events.read", "events:read")),  # noqa: B008
) -> FastJSONResponse:
    """Cursors are opaque and stable; a replay from an old one gives the same events, minimised under the
    policy in force now."""
    app = services(request)
    record = access_record(request)
    administration, policy = _subscription(app, caller, subscription)
    record.purpose, record.legal_basis = policy.purpose, administration.purposes[policy.purpose].legal_basis
    key = subscription_key(administration.id, subscription)
    position = await _position(app, key, after, "/query/after")
    items = await app.events.feed.read(key, position, limit)
    events = [
        cloud_event(item, policy, app.subject_refs(administration.id, item.nin), app.events.deliveries.source)
        for item in items
    ]
    try:
        await app.log.access_log.append_many(
            [
                release_record(administration, policy, app.subjects(item.nin), "events.read", caller.client_id)
                for item in items
            ]
        )
    except AccessLogUnavailable:
        raise Problem("audit_unavailable") from None
    record.count = len(items)
    record.releases_data = True
    record.attributes_released = sorted(policy.attributes) if items else []
    return FastJSONResponse(
        {
            "transaction_id": record.id,
            "events": events,
            "next_cursor": encode_cursor(key, items[-1].sequence if items else position),
        }
    )


@router.get("/v1/events/signing-keys", name="events.keys", summary="The keys push deliveries are signed with")
async def signing_keys(
    request: Request,
    caller: Caller = Depends(protected("events.keys", None)),  # noqa: B008
) -> FastJSONResponse:
    """Ed25519 public keys as Standard Webhooks writes them (`whpk_<base64>`), for `v1a` signatures."""
    app = services(request)
    return FastJSONResponse({"transaction_id": access_record(request).id, "keys": app.events.deliveries.signer.keys()})


def _time(value: float | None) -> str | None:
    return None if value is None else rfc3339(datetime.fromtimestamp(value, UTC))


@router.get(
    "/v1/events/subscriptions/{name}",
    name="events.subscription",
    summary="A subscription's push state and dead letters",
)
async def subscription_status(
    request: Request,
    name: Annotated[str, Path(pattern=IDENTIFIER_PATTERN, max_length=63)],
    caller: Caller = Depends(protected("events.subscription", "events:read")),  # noqa: B008
) -> FastJSONResponse:
    """Where push stands (delivered up to which cursor, retries, a disabled endpoint) and the events set
    aside after the retry horizon, each with the cursor to replay it from."""
    app = services(request)
    administration, policy = _subscription(app, caller, name)
    key = subscription_key(administration.id, name)
    state, dead = await app.events.deliveries.store.status(key)
    head = (await app.events.feed.heads([key])).get(key, 0)
    push: dict[str, Any] | None = None
    if policy.endpoint is not None:
        push = {
            "delivered_cursor": encode_cursor(key, state.delivered),
            "backlog": max(0, head - state.delivered),
            "attempts": state.attempts,
            "next_attempt_at": _time(state.next_at) if state.attempts else None,
            "disabled": state.disabled,
            "last_error": state.last_error,
        }
    return FastJSONResponse(
        {
            "transaction_id": access_record(request).id,
            "name": name,
            "purpose": policy.purpose,
            "events": policy.events,
            "attributes": policy.attributes,
            "endpoint": policy.endpoint,
            "head_cursor": encode_cursor(key, head),
            "push": push,
            "dead_letters": [
                {
                    "event_id": d["event_id"],
                    "replay_from": encode_cursor(key, d["sequence"] - 1),
                    "failed_at": _time(d["failed_at"]),
                    "attempts": d["attempts"],
                    "last_error": d["last_error"],
                }
                for d in dead
            ],
        }
    )


class ReplayRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    after: str | None = Field(None, max_length=40, description="deliver again every event after this cursor")


@router.post(
    "/v1/events/subscriptions/{name}/replay",
    name="events.replay",
    status_code=202,
    summary="Push again from a cursor (and enable a disabled endpoint)",
)
async def replay(
    request: Request,
    body: ReplayRequest,
    name: Annotated[str, Path(pattern=IDENTIFIER_PATTERN, max_length=63)],
    caller: Caller = Depends(protected("events.replay", "events:read")),  # noqa: B008
) -> FastJSONResponse:
    app = services(request)
    administration, policy = _subscription(app, caller, name)
    if policy.endpoint is None:
        raise invalid_at("/", "this subscription has no endpoint: pull from any cursor instead")
    key = subscription_key(administration.id, name)
    position = await _position(app, key, body.after, "/after")
    await app.events.deliveries.store.replay(key, position)
    app.events.deliveries.notify()
    return FastJSONResponse(
        {"transaction_id": access_record(request).id, "delivering_after": encode_cursor(key, position)}, status_code=202
    )
