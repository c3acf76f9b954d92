"""Client keys, assertions and hand-made tokens for tests."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, Key, OKPKey

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def new_key(alg: str = "Ed25519") -> Key:
    return ECKey.generate_key("P-256", private=True) if alg == "ES256" else OKPKey.generate_key("Ed25519", private=True)


def alg_of(key: Key) -> str:
    return "ES256" if isinstance(key, ECKey) else "Ed25519"


def jwks_of(*keys: Key) -> dict[str, Any]:
    return {"keys": [k.as_dict(private=False, kid=k.thumbprint(), alg=alg_of(k), use="sig") for k in keys]}


def assertion(client_id: str, key: Key, audience: str, *, lifetime: int = 60, **overrides: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": now,
        "exp": now + lifetime,
        "jti": secrets.token_urlsafe(12),
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    alg = alg_of(key)
    return jwt.encode({"alg": alg, "kid": key.thumbprint()}, claims, key, algorithms=[alg])


def token_form(client_id: str, key: Key, audience: str, scope: str | None = None, **overrides: Any) -> dict[str, str]:
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion(client_id, key, audience, **overrides),
    }
    if scope is not None:
        form["scope"] = scope
    return form


def b64(data: bytes | dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode() if isinstance(data, dict) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def sign(header: dict[str, Any], claims: dict[str, Any], key: Key) -> str:
    return jwt.encode(header, claims, key, algorithms=[header["alg"]], default_type=None)


def hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{b64(header)}.{b64(claims)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def load_pem(path: Path) -> Key:
    data = path.read_bytes()
    try:
        return OKPKey.import_key(data)
    except Exception:
        return ECKey.import_key(data)


def access_claims(issuer: str, client_id: str, scope: str, *, audience: str | None = None, **overrides: Any) -> dict:
    now = int(time.time())
    claims = {
        "iss": issuer,
        "sub": client_id,
        "aud": audience or issuer,
        "exp": now + 120,
        "iat": now,
        "nbf": now,
        "jti": secrets.token_urlsafe(8),
        "client_id": client_id,
        "scope": scope,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def gateway_token(data_dir: Path, issuer: str, client_id: str, scope: str) -> str:
    """An access token signed with a gateway's own signing key, as its token endpoint would issue it."""
    key = load_pem(data_dir / "keys" / "signing-key.pem")
    return sign(
        {"alg": "Ed25519", "typ": "at+jwt", "kid": key.thumbprint()}, access_claims(issuer, client_id, scope), key
    )
