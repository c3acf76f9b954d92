"""The token endpoint and the discovery documents (docs/contract.md §2)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from gateway.api.deps import request_context
from gateway.api.responses import FastJSONResponse
from gateway.errors import Problem
from gateway.policy.catalogue import ASYMMETRIC_ALGORITHMS, CLIENT_AUTH_METHODS, SCOPES
from gateway.services import services

router = APIRouter(tags=["OAuth 2.0"])

_TOKEN_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "required": ["grant_type"],
                    "properties": {
                        "grant_type": {"type": "string", "enum": ["client_credentials"]},
                        "scope": {"type": "string", "description": "space-separated subset of the client's scopes"},
                        "client_assertion_type": {
                            "type": "string",
                            "enum": ["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"],
                        },
                        "client_assertion": {"type": "string", "description": "RFC 7523 JWT (private_key_jwt)"},
                    },
                }
            }
        },
    }
}


@router.post(
    "/oauth2/token",
    name="token",
    summary="Issue an access token (client_credentials)",
    openapi_extra=_TOKEN_FORM,
    responses={400: {"description": "invalid_request"}, 401: {"description": "invalid_client"}},
)
async def token(request: Request) -> FastJSONResponse:
    context = request_context(request)
    record = context.record
    record.operation = "token"
    if context.admission is None:  # reached on a path the access log does not record
        raise Problem("audit_unavailable", "this route is reached on a path the access log does not record")
    tokens = services(request).auth.tokens  # admission has already applied the per-source limit
    body = await request.body()
    try:
        issued = await tokens.issue(request.headers, body)
    except Problem:
        # Whoever failed to authenticate is not that client: the claim goes in its own field.
        record.claimed_client_id = tokens.claimed_client_id(request.headers, body)
        raise
    record.client_id, record.administration = issued.client.client_id, issued.client.administration
    return FastJSONResponse(
        {**issued.body, "transaction_id": record.id},
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


@router.get("/.well-known/jwks.json", summary="Public keys that sign access tokens")
async def jwks(request: Request) -> FastJSONResponse:
    return FastJSONResponse(services(request).auth.signing_keys.jwks(), headers={"Cache-Control": "public, max-age=60"})


@router.get("/.well-known/oauth-authorization-server", summary="Authorization-server metadata (RFC 8414)")
async def metadata(request: Request) -> FastJSONResponse:
    settings = services(request).settings
    return FastJSONResponse(
        {
            "issuer": settings.issuer,
            "token_endpoint": settings.token_endpoint,
            "jwks_uri": f"{settings.issuer}/.well-known/jwks.json",
            "grant_types_supported": ["client_credentials"],
            "response_types_supported": [],
            "token_endpoint_auth_methods_supported": list(CLIENT_AUTH_METHODS),
            "token_endpoint_auth_signing_alg_values_supported": list(ASYMMETRIC_ALGORITHMS),
            "scopes_supported": list(SCOPES),
            "service_documentation": f"{settings.issuer}/docs",
        },
        headers={"Cache-Control": "public, max-age=300"},
    )
