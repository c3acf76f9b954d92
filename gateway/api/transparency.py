"""The verifiable access log (docs/contract.md §13): checkpoints, the logs' keys, inclusion and consistency
proofs, and receipts, all read from the logs' own files (`audit/proofs.py`), never from the query index's
copy: what is proven is what was signed.

An administration checks its own receipts with the checkpoint, the origins' keys and consistency proofs,
so any valid token reads those; inclusion proofs of arbitrary entries are for security officers.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Annotated, TypeVar

import orjson
from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy.exc import SQLAlchemyError
from starlette.responses import Response

from gateway.api.deps import protected
from gateway.api.responses import FastJSONResponse
from gateway.audit import merkle, notes
from gateway.audit.proofs import LogView, NotProvable, SignedHead, cosigned_count, receipt_proof
from gateway.auth.bearer import Caller
from gateway.errors import Problem
from gateway.services import Services, services

router = APIRouter(tags=["Verifiable access log"])
_T = TypeVar("_T")

Origin = Annotated[str | None, Query(max_length=300, pattern=r"^[^\x00-\x1f\x7f\s+]+$")]
Size = Annotated[int, Query(ge=0, lt=2**63)]
_TRANSACTION = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


async def _view(app: Services, origin: str | None) -> LogView:
    own = app.log.access_log.origin
    view = await asyncio.to_thread(app.log.views.get, origin or own)
    if view is None:
        raise Problem(
            "not_found",
            f"no log of origin {origin!r} on this instance" if origin else "this instance's log has no key yet",
        )
    return view


async def _signed(view: LogView) -> SignedHead:
    try:
        head = await asyncio.to_thread(view.signed)
    except notes.NoteError:
        raise Problem(
            "audit_unavailable", "the log's last checkpoint does not verify: see the integrity report"
        ) from None
    if head is None:
        raise Problem("conflict", "the log has not signed a checkpoint yet", headers={"Retry-After": "1"})
    return head


async def _proved(prove: Callable[[int, int], _T], first: int, second: int) -> _T:
    """A proof read off the loop, its failures as problems: not yet signed (409), asked wrongly (400), or
    a tree that does not hold what was signed (503, the integrity report says more)."""
    try:
        return await asyncio.to_thread(prove, first, second)
    except NotProvable as exc:
        raise Problem("conflict", str(exc), headers={"Retry-After": "1"}) from None
    except ValueError as exc:
        raise Problem("invalid_request", str(exc)) from None
    except (LookupError, notes.NoteError):
        raise _unprovable() from None


def _b64(hashes: list[bytes]) -> list[str]:
    return [notes.b64encode(h) for h in hashes]


@router.get(
    "/v1/audit/checkpoint",
    name="audit.proof",
    response_class=Response,
    summary="The latest signed checkpoint, with the witnesses' cosignatures (C2SP tlog-checkpoint)",
)
async def checkpoint(
    request: Request,
    caller: Annotated[Caller, Depends(protected("audit.proof", None))],
    origin: Origin = None,
) -> Response:
    head = await _signed(await _view(services(request), origin))
    return Response(head.note, media_type="text/plain; charset=utf-8", headers={"Cache-Control": "no-store"})


@router.get("/v1/audit/origins", name="audit.proof", summary="Each local log's origin and public key (vkey)")
async def origins(
    request: Request,
    caller: Annotated[Caller, Depends(protected("audit.proof", None))],
) -> FastJSONResponse:
    views = await asyncio.to_thread(services(request).log.views.all)
    return FastJSONResponse({"origins": [{"origin": v.origin, "vkey": v.vkey} for v in views if v.vkey]})


@router.get(
    "/v1/audit/proof/inclusion",
    name="audit.proof",
    summary="An entry's inclusion proof in a signed tree (security officers)",
)
async def inclusion(
    request: Request,
    caller: Annotated[Caller, Depends(protected("audit.proof", "audit:read"))],
    seq: Size,
    size: Size,
    origin: Origin = None,
) -> FastJSONResponse:
    view = await _view(services(request), origin)
    leaf, hashes = await _proved(view.inclusion, seq, size)
    return FastJSONResponse(
        {"origin": view.origin, "seq": seq, "size": size, "leaf_hash": notes.b64encode(leaf), "hashes": _b64(hashes)}
    )


@router.get(
    "/v1/audit/proof/consistency", name="audit.proof", summary="A proof that one signed tree extends an older one"
)
async def consistency(
    request: Request,
    caller: Annotated[Caller, Depends(protected("audit.proof", None))],
    old: Size,
    new: Size,
    origin: Origin = None,
) -> FastJSONResponse:
    view = await _view(services(request), origin)
    hashes = await _proved(view.consistency, old, new)
    return FastJSONResponse({"origin": view.origin, "old": old, "new": new, "hashes": _b64(hashes)})


TAIL_SCAN = 5000  # entries read past an origin's index watermark, looking for a transaction not yet indexed


class _NotYet(Exception):
    """The transaction may be in a tail longer than one scan reads: ask again when the index has caught up."""


async def _locate(app: Services, transaction_id: str) -> tuple[str, int] | None:
    """(origin, seq) of a transaction: this process's recent entries first, then the index (which only
    says where to look: the entry itself is read from the log), then the local logs' entries the index has
    not reached yet (another worker's, within the index's lag)."""
    store = app.log.store
    if (seq := store.recent.get(transaction_id)) is not None:
        return store.origin, seq
    if (indexed_at := await app.log.index.locate(transaction_id)) is not None:
        return indexed_at
    indexed = {state.origin: state.next_seq for state in await app.log.index.origins()}
    needle = transaction_id.encode()

    def tails() -> tuple[str, int] | None:
        for view in app.log.views.all():
            tail = view.entries.scan(indexed.get(view.origin, 0), TAIL_SCAN)
            for seq, payload in tail:
                if needle in payload and orjson.loads(payload).get("id") == transaction_id:
                    return view.origin, seq
            if len(tail) == TAIL_SCAN:
                raise _NotYet
        return None

    async with app.log.views.tail_scans:
        return await asyncio.to_thread(tails)


@router.get(
    "/v1/receipts/{transaction_id}",
    name="receipt",
    summary="Proof that one of your transactions was logged (C2SP tlog-proof)",
)
async def receipt(
    request: Request,
    caller: Annotated[Caller, Depends(protected("receipt", None))],
    transaction_id: str,
) -> FastJSONResponse:
    app = services(request)
    unknown = Problem("not_found", "no transaction of your administration with this id")
    if len(transaction_id) != 36 or not _is_transaction(transaction_id):
        raise unknown
    try:
        found = await _locate(app, transaction_id)
    except _NotYet:
        raise Problem(
            "conflict", "the access log's index is catching up; retry shortly", headers={"Retry-After": "1"}
        ) from None
    except SQLAlchemyError:
        raise Problem(
            "audit_unavailable", "the access log's index cannot be read; retry shortly", headers={"Retry-After": "1"}
        ) from None
    if found is None:
        raise unknown
    origin, seq = found
    view = await asyncio.to_thread(app.log.views.get, origin)
    if view is None:
        raise unknown
    entry = await asyncio.to_thread(view.entry, seq)
    if entry is None:
        raise unknown
    event = orjson.loads(entry)
    if event.get("id") != transaction_id or event.get("administration") != caller.administration:
        raise unknown
    try:
        head = await asyncio.to_thread(_receipt_head, app, view, seq)
        if head is None:
            raise Problem(
                "conflict", "the entry is durable but no signed checkpoint covers it yet", headers={"Retry-After": "1"}
            )
        proven, proof = await asyncio.to_thread(receipt_proof, view, seq, head)
    except (merkle.InvalidProof, notes.NoteError, LookupError):
        raise _unprovable() from None
    quorum = (
        app.log.witnesses is None
        or cosigned_count(head.note, app.log.witnesses.verifiers()) >= app.log.witnesses.quorum
    )
    return FastJSONResponse({"origin": origin, "seq": seq, "entry": proven.decode(), "proof": proof, "quorum": quorum})


def _unprovable() -> Problem:
    return Problem("audit_unavailable", "the log does not match its signed tree here: see the integrity report")


def _receipt_head(app: Services, view: LogView, seq: int) -> SignedHead | None:
    """The checkpoint a receipt proves against: the latest published one (a quorum cosigned it) that
    covers the entry; else the latest one that has some cosignatures; else the latest signed."""
    if app.log.witnesses is not None:
        verifiers, quorum = app.log.witnesses.verifiers(), app.log.witnesses.quorum
        covering = [head for head in view.witnessed() if head.size > seq]
        published = next((h for h in covering if cosigned_count(h.note, verifiers) >= quorum), None)
        partial = next((h for h in covering if cosigned_count(h.note, verifiers) > 0), None)
        if published is not None or partial is not None:
            return published or partial
    latest = view.signed()
    return latest if latest is not None and latest.size > seq else None


def _is_transaction(value: str) -> bool:
    return _TRANSACTION.fullmatch(value) is not None
