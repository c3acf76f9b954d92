"""Bulk verification jobs (docs/contract.md §16, docs/bulk-verification.md): create, upload the input, follow,
read results and errors, cancel. Only the submitting administration sees a job; anyone else gets 404."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import time
import uuid
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Header, Path, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.requests import ClientDisconnect

from gateway.api.deps import access_record, protected
from gateway.api.deps import idempotency_key as required_key
from gateway.api.identity import PredicateRequest, Purpose
from gateway.api.responses import FastJSONResponse
from gateway.auth.bearer import Caller
from gateway.bulk.files import Upload
from gateway.bulk.records import JobSpec, errors_header, results_header
from gateway.bulk.store import IdempotencyConflict, Job, NotAwaitingInput, QuotaExceeded
from gateway.bulk.upload import InputSplitter, UploadRefused
from gateway.errors import Problem, invalid_at
from gateway.identity.decide import Predicate
from gateway.policy.catalogue import Claim
from gateway.policy.enforce import authorise
from gateway.policy.model import AdministrationPolicy
from gateway.services import Services, services

log = logging.getLogger(__name__)
router = APIRouter(tags=["Bulk verification"])

JobId = Annotated[str, Path(min_length=36, max_length=36, pattern=r"^[0-9a-f-]{36}$")]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)]
UPLOAD_PATH = re.compile(r"^/v1/verification-jobs/[^/]+/input$")  # the one route with large bodies
MEDIA = {"csv": "text/csv; charset=utf-8", "ndjson": "application/x-ndjson"}
_WRITE_BYTES = 1024 * 1024


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    purpose: Purpose
    claims: list[Claim] = Field(default_factory=list, max_length=16)
    predicates: list[PredicateRequest] = Field(default_factory=list, max_length=10)
    as_of: date | None = None
    format: Literal["csv", "ndjson"]
    records: int | None = Field(None, ge=1)

    @field_validator("claims")
    @classmethod
    def _unique_claims(cls, claims: list[str]) -> list[str]:
        if len(set(claims)) != len(claims):
            raise ValueError("a claim is listed twice")
        return claims

    @field_validator("predicates")
    @classmethod
    def _unique_predicates(cls, predicates: list[PredicateRequest]) -> list[PredicateRequest]:
        names = [p.name for p in predicates]
        if len(set(names)) != len(names):
            raise ValueError("a predicate is listed twice (each is one column of the results)")
        return predicates


def _input_url(job_id: str) -> str:
    return f"/v1/verification-jobs/{job_id}/input"


def _administration(app: Services, caller: Caller) -> AdministrationPolicy | None:
    return app.policies.current.administrations.get(caller.administration)


async def _job(request: Request, caller: Caller, job_id: str) -> tuple[Services, Job]:
    app = services(request)
    job = await app.bulk.jobs.get(job_id, caller.administration)
    if job is None:
        raise Problem("not_found", "no such job")
    access_record(request).job_id = job.id
    return app, job


async def _status(app: Services, job: Job) -> dict[str, Any]:
    progress = await app.bulk.jobs.progress(job.id)
    eta: float | None = None
    if job.status == "completed":
        eta = 0.0
    elif job.status == "running" and job.started_at and progress.processed and job.total:
        rate = progress.processed / max(time.time() - job.started_at, 1e-3)
        eta = round((job.total - progress.processed) / rate, 1)
    return {
        "id": job.id,
        "status": job.status,
        "total": job.total,
        "processed": progress.processed,
        "errors": progress.errors,
        "started_at": _time(job.started_at),
        "eta_s": eta,
        "created_at": _time(job.created_at),
        "finished_at": _time(job.finished_at),
        "results_expire_at": _time(job.expires_at),
        "purpose": job.spec.purpose,
        "format": job.format,
        "input_url": _input_url(job.id),
        "input_sha256": job.input_sha256,
        "reason": job.reason,
    }


def _time(moment: float | None) -> str | None:
    return (
        None
        if moment is None
        else datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


@router.post(
    "/v1/verification-jobs", name="verify.bulk.create", status_code=201, summary="Create a bulk verification job"
)
async def create_job(
    request: Request,
    body: JobRequest,
    idempotency_key: IdempotencyKey = None,
    caller: Caller = Depends(protected("verify.bulk.create", "identity:verify")),  # noqa: B008
) -> FastJSONResponse:
    """The job's purpose, claims and predicates are checked against the policy now, as a verification's
    would be; its evaluation date is fixed now for every record."""
    app = services(request)
    key = required_key(idempotency_key)
    record = access_record(request)
    request_hash = hashlib.sha256(orjson.dumps(body.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)).hexdigest()
    earlier = await app.bulk.jobs.by_key(caller.administration, key)
    if earlier is not None:  # the same request again answers the same job, whatever happened since
        if earlier.request_hash != request_hash:
            raise Problem("conflict", "this Idempotency-Key was used for another job request")
        record.job_id = earlier.id
        return FastJSONResponse(
            {
                "transaction_id": record.id,
                "id": earlier.id,
                "status": earlier.status,
                "input_url": _input_url(earlier.id),
            },
            status_code=201,
        )
    administration = _administration(app, caller)
    if administration is not None and body.purpose in administration.purposes:
        record.purpose = body.purpose
    policy = authorise(
        administration, body.purpose, "verify", claims=body.claims, predicates={p.name for p in body.predicates}
    )
    record.legal_basis = policy.legal_basis
    record.attributes_requested = sorted(body.claims)
    if policy.consent == "required":
        raise Problem(
            "consent_required",
            "a bulk job runs under a purpose whose legal basis allows the "
            "processing; a consent-based purpose needs each person's consent, one verification at a time",
        )
    if not body.claims and not body.predicates:
        raise invalid_at("/claims", "send at least one of claims, predicates")
    limit = administration.bulk_records_per_day if administration is not None else None
    left = await app.bulk.jobs.bulk_left(caller.administration, limit)
    if body.records is not None and left is not None and body.records > left:
        raise Problem(
            "rate_limited",
            f"{body.records} records declared; {left} bulk records left today",
            headers={"Retry-After": str(_seconds_to_midnight())},
        )
    if body.records is not None and body.records > app.settings.bulk_max_records:
        raise invalid_at("/records", f"at most {app.settings.bulk_max_records} records per job")
    today = datetime.now(UTC).date()
    # The job's one evaluation date; a predicate's own `as_of` still overrides it (decide.evaluate).
    spec = JobSpec(
        body.purpose,
        tuple(body.claims),
        tuple(Predicate(p.name, p.value, p.as_of) for p in body.predicates),
        body.as_of or today,
    )
    try:
        job, _ = await app.bulk.jobs.create(
            job_id=str(uuid.uuid4()),
            administration=caller.administration,
            client_id=caller.client_id,
            idempotency_key=key,
            request_hash=request_hash,
            spec=spec,
            fmt=body.format,
            declared_records=body.records,
        )
    except IdempotencyConflict:
        raise Problem("conflict", "this Idempotency-Key was used for another job request") from None
    record.job_id = job.id
    record.count = body.records
    return FastJSONResponse(
        {"transaction_id": record.id, "id": job.id, "status": job.status, "input_url": _input_url(job.id)},
        status_code=201,
    )


async def _discard(app: Services, job_id: str, upload: Upload) -> None:
    """An upload the request did not see accepted: gone, unless the job took it (a cancel that came just
    after the commit must not delete the job's input)."""
    current = await app.bulk.jobs.get(job_id)
    taken = current is not None and current.input_file == upload.name
    await asyncio.to_thread(upload.discard, taken)


def _seconds_to_midnight() -> int:
    now = datetime.now(UTC)
    return max(1, 86400 - (now.hour * 3600 + now.minute * 60 + now.second))


def _content_digest(header: str | None) -> str | None:
    """The SHA-256 a client sent in `Content-Digest` (RFC 9530: `sha-256=:<base64>:`), as hex."""
    if header is None:
        return None
    for member in header.split(","):
        name, _, value = member.strip().partition("=")
        if name.strip().lower() == "sha-256":
            value = value.strip()
            try:
                digest = base64.b64decode(value.strip(":"), validate=True)
            except ValueError:
                digest = b""
            if not (value.startswith(":") and value.endswith(":")) or len(digest) != 32:
                raise invalid_at("/headers/Content-Digest", "sha-256 must be 32 bytes in base64 between colons")
            return digest.hex()
    raise invalid_at("/headers/Content-Digest", "only sha-256 is accepted")


@router.put(
    "/v1/verification-jobs/{job_id}/input", name="verify.bulk.upload", status_code=202, summary="Upload a job's input"
)
async def upload_input(
    request: Request,
    job_id: JobId,
    content_digest: Annotated[str | None, Header(alias="Content-Digest")] = None,
    caller: Caller = Depends(protected("verify.bulk.upload", "identity:verify")),  # noqa: B008
) -> FastJSONResponse:
    """Streamed to disk and cut into chunks on the way; never held whole. Nothing is kept unless the whole
    file is accepted (checksum, record count, the day's allowance)."""
    app, job = await _job(request, caller, job_id)
    if job.status != "awaiting_input":
        raise Problem("conflict", f"the job is {job.status}: it takes no input now")
    wanted_sha = _content_digest(content_digest)
    settings = app.settings
    administration = _administration(app, caller)
    limit_per_day = administration.bulk_records_per_day if administration is not None else None
    if await app.bulk.jobs.bulk_left(caller.administration, limit_per_day) == 0:  # refused before any byte is kept
        raise Problem(
            "rate_limited", "no bulk records left today", headers={"Retry-After": str(_seconds_to_midnight())}
        )
    limit = min(settings.bulk_max_records, job.declared_records or settings.bulk_max_records)
    splitter = InputSplitter(job.format, job.spec, settings.bulk_chunk_records, limit)
    upload = await asyncio.to_thread(app.bulk.files.start_upload, job.id)
    accepted = False
    try:
        pending: list[bytes] = []
        size = 0
        async for piece in request.stream():
            if not piece:
                continue
            splitter.feed(piece)
            if splitter.received > settings.bulk_max_upload_bytes:
                raise invalid_at("/body", f"the input exceeds {settings.bulk_max_upload_bytes} bytes", 413)
            pending.append(piece)
            size += len(piece)
            if size >= _WRITE_BYTES:
                await asyncio.to_thread(upload.write, b"".join(pending))
                pending, size = [], 0
        if pending:
            await asyncio.to_thread(upload.write, b"".join(pending))
        chunks = splitter.finish()
        if wanted_sha is not None and wanted_sha != splitter.sha256:
            raise invalid_at("/headers/Content-Digest", "the body's SHA-256 differs from Content-Digest")
        input_file = await asyncio.to_thread(upload.keep)
        await app.bulk.jobs.accept_input(
            job,
            total=splitter.records,
            sha256=splitter.sha256,
            input_file=input_file,
            jobs_dir=app.bulk.files.identity,
            chunks=chunks,
            daily_limit=limit_per_day,
        )
        accepted = True
    except UploadRefused as exc:
        too_many = str(exc).startswith("more than")
        raise invalid_at("/body", str(exc), 413 if too_many and limit == settings.bulk_max_records else None) from None
    except QuotaExceeded as exc:
        raise Problem(
            "rate_limited",
            f"{splitter.records} records uploaded; {exc.left} bulk records left today",
            headers={"Retry-After": str(_seconds_to_midnight())},
        ) from None
    except NotAwaitingInput as exc:
        raise Problem("conflict", f"the job is {exc.status}: it takes no input now") from None
    except ClientDisconnect:
        raise Problem("invalid_request", "the upload was cut off before its end; nothing was kept") from None
    finally:
        if not accepted:  # nothing of a refused upload stays on disk (it holds NINs)
            await asyncio.shield(_discard(app, job.id, upload))
    record = access_record(request)
    record.count = splitter.records
    try:
        await app.bulk.queue.submit(job.id, [c.n for c in chunks])
    except Exception as exc:  # the job is queued in the database: the queue's own sweep finds its chunks
        log.warning("bulk job %s: chunks not dispatched at once: %s", job.id, exc)
    return FastJSONResponse(
        {
            "transaction_id": record.id,
            "id": job.id,
            "status": "queued",
            "total": splitter.records,
            "input_sha256": splitter.sha256,
        },
        status_code=202,
    )


@router.get("/v1/verification-jobs/{job_id}", name="verify.bulk.status", summary="A job's status")
async def job_status(
    request: Request,
    job_id: JobId,
    caller: Caller = Depends(protected("verify.bulk.status", "identity:verify")),  # noqa: B008
) -> FastJSONResponse:
    app, job = await _job(request, caller, job_id)
    return FastJSONResponse({"transaction_id": access_record(request).id, **await _status(app, job)})


@router.delete("/v1/verification-jobs/{job_id}", name="verify.bulk.cancel", summary="Cancel a job")
async def cancel_job(
    request: Request,
    job_id: JobId,
    caller: Caller = Depends(protected("verify.bulk.cancel", "identity:verify")),  # noqa: B008
) -> FastJSONResponse:
    """Chunks already finished keep their results; no further record is verified. A job that has ended
    is left as it is."""
    app, job = await _job(request, caller, job_id)
    if await app.bulk.jobs.cancel(job.id):
        app.bulk.files.delete_input(job.id)
        job = await app.bulk.jobs.get(job.id) or job
    return FastJSONResponse({"transaction_id": access_record(request).id, **await _status(app, job)})


async def _output(request: Request, caller: Caller, job_id: str, kind: str) -> StreamingResponse:
    app, job = await _job(request, caller, job_id)
    if not job.ended:
        raise Problem(
            "conflict", f"the job is {job.status}: its {kind} are ready when it ends", headers={"Retry-After": "5"}
        )
    chunks = await app.bulk.jobs.done_chunks(job.id)
    if job.expires_at is None or not await asyncio.to_thread(app.bulk.files.has_results, job.id, chunks):
        raise Problem("not_found", f"the job's {kind} were deleted after their retention")
    header = results_header(job.format, job.spec) if kind == "results" else errors_header(job.format)
    return StreamingResponse(
        app.bulk.files.stream(job.id, kind, chunks, header),
        media_type=MEDIA[job.format],
        headers={
            "Cache-Control": "no-store",
            "Content-Disposition": f'attachment; filename="{job.id}-{kind}.{job.format}"',
        },
    )


@router.get("/v1/verification-jobs/{job_id}/results", name="verify.bulk.results", summary="A job's results")
async def job_results(
    request: Request,
    job_id: JobId,
    caller: Caller = Depends(protected("verify.bulk.results", "identity:verify")),  # noqa: B008
) -> StreamingResponse:
    """One line per record, in input order: `ref`, `match`, one per predicate, `code`."""
    return await _output(request, caller, job_id, "results")


@router.get("/v1/verification-jobs/{job_id}/errors", name="verify.bulk.errors", summary="A job's invalid records")
async def job_errors(
    request: Request,
    job_id: JobId,
    caller: Caller = Depends(protected("verify.bulk.errors", "identity:verify")),  # noqa: B008
) -> StreamingResponse:
    """Line number, `ref` (when one could be read) and reason for each `invalid_input` record."""
    return await _output(request, caller, job_id, "errors")
