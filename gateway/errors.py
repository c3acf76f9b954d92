"""Problem details (RFC 9457) and the catalogue of stable error codes (docs/contract.md §1).

A stage that refuses a request raises `Problem(code, detail)`; one handler turns it into
`application/problem+json`. Codes are a closed set so clients can branch on them safely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from starlette.types import Send

PROBLEM_MEDIA_TYPE = "application/problem+json"


@dataclass(frozen=True, slots=True)
class ProblemType:
    code: str
    status: int
    title: str
    description: str


_CATALOGUE = (
    ProblemType(
        "invalid_request",
        400,
        "Invalid request",
        "The request is malformed: bad JSON, a wrong type, a missing or unknown field, a body too "
        "large, a method the resource does not allow. `errors` points at each fault.",
    ),
    ProblemType(
        "invalid_token",
        401,
        "Invalid access token",
        "The bearer token is missing, malformed, expired, not yet valid, signed by an unknown key, "
        "or meant for another issuer or audience.",
    ),
    ProblemType(
        "invalid_client",
        401,
        "Client authentication failed",
        "The token endpoint could not authenticate the client: unknown client, wrong secret, bad or "
        "replayed client assertion.",
    ),
    ProblemType(
        "insufficient_scope",
        403,
        "Insufficient scope",
        "The token is valid but does not carry the scope this operation needs.",
    ),
    ProblemType(
        "purpose_not_permitted", 403, "Purpose not permitted", "The administration's policy has no such purpose."
    ),
    ProblemType(
        "operation_not_permitted", 403, "Operation not permitted", "The purpose does not allow this operation."
    ),
    ProblemType(
        "attribute_not_permitted",
        403,
        "Attribute not permitted",
        "The purpose does not grant the claims, predicates or attributes listed in `attributes`; nothing was released.",
    ),
    ProblemType(
        "consent_required", 403, "Consent required", "The purpose is consent-based and the request names no consent."
    ),
    ProblemType(
        "consent_invalid",
        403,
        "Consent invalid",
        "The consent is expired, revoked, used up, or does not cover this grantee, purpose, operation, "
        "these attributes or what these predicates read (`attributes`); another person's consent is "
        "answered as an unknown one.",
    ),
    ProblemType("not_found", 404, "Not found", "No such resource, or not visible to this caller."),
    ProblemType(
        "conflict",
        409,
        "Conflict",
        "An Idempotency-Key used before with another body; or not answerable yet: a receipt asked for "
        "before a signed checkpoint covers its event (within 2 s of the answer), a job's results before "
        "it ends; retry after `Retry-After` seconds.",
    ),
    ProblemType(
        "declaration_rejected",
        422,
        "Declaration rejected",
        "The declaration is well formed but cannot be true of the register (a second death, a death "
        "before birth, a marriage of a deceased person); `reason` says which. Nothing was changed.",
    ),
    ProblemType("subject_not_found", 404, "Subject not found", "No usable record for this person (lookup only)."),
    ProblemType(
        "rate_limited",
        429,
        "Rate limited",
        "The administration's rate limit is exhausted; retry after `Retry-After` seconds.",
    ),
    ProblemType("backend_error", 502, "Backend error", "A register backend gave a malformed answer."),
    ProblemType(
        "backend_unavailable", 503, "Backend unavailable", "A register backend is down or too slow; retry later."
    ),
    ProblemType(
        "audit_unavailable",
        503,
        "Access log unavailable",
        "The access log could not be written, so nothing was released.",
    ),
    ProblemType("internal_error", 500, "Internal error", "An unexpected failure; the transaction id locates it."),
)

CATALOGUE: dict[str, ProblemType] = {p.code: p for p in _CATALOGUE}


class Problem(Exception):
    """A refusal with a stable code. `status` defaults to the catalogue's; `extra` adds members."""

    def __init__(
        self,
        code: str,
        detail: str | None = None,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        kind = CATALOGUE[code]
        super().__init__(detail or kind.title)
        self.code = code
        self.status = status or kind.status
        self.detail = detail or kind.title
        self.headers = headers or {}
        self.extra = extra or {}


def invalid_at(pointer: str, detail: str, status: int | None = None) -> Problem:
    """`invalid_request` naming where the fault is (a JSON pointer, or `/headers/<name>`) and why."""
    return Problem("invalid_request", detail, status=status, extra={"errors": [{"pointer": pointer, "detail": detail}]})


def problem_document(problem: Problem, transaction_id: str | None, type_base: str) -> dict[str, Any]:
    kind = CATALOGUE[problem.code]
    doc: dict[str, Any] = {
        "type": f"{type_base}/problems/{problem.code}",
        "title": kind.title,
        "status": problem.status,
        "detail": problem.detail,
        "code": problem.code,
        "transaction_id": transaction_id,
    }
    doc.update(problem.extra)
    return doc


def problem_bytes(problem: Problem, transaction_id: str | None, type_base: str) -> bytes:
    return orjson.dumps(problem_document(problem, transaction_id, type_base))


async def send_problem(send: Send, problem: Problem, transaction_id: str | None, type_base: str) -> None:
    """Answer with a problem straight from ASGI middleware, where no Response object is at hand."""
    body = problem_bytes(problem, transaction_id, type_base)
    headers = [
        (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in problem.headers.items()]
    await send({"type": "http.response.start", "status": problem.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
