"""The gateway's token-signing key: read from a PEM file, made on first start, rotated without breaking
tokens already handed out.

The private key lives in one PEM file (`GATEWAY_SIGNING_KEY_FILE`). Beside it, in the data dir, a small
history of published public keys keeps a replaced key in the JWKS until every token it signed has
expired, so rotation never invalidates a token mid-flight.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey, Key, KeySet, OKPKey, RSAKey

from gateway.keyfiles import create_exclusive
from gateway.settings import SigningAlgorithm

log = logging.getLogger(__name__)

HISTORY_FILE = "published-keys.json"


def generate_private_key(alg: SigningAlgorithm) -> OKPKey | ECKey:
    if alg == "ES256":
        return ECKey.generate_key("P-256", private=True)
    return OKPKey.generate_key("Ed25519", private=True)


def algorithm_of(key: Key) -> SigningAlgorithm:
    if isinstance(key, OKPKey) and key.curve_name == "Ed25519":
        return "Ed25519"
    if isinstance(key, ECKey) and key.curve_name == "P-256":
        return "ES256"
    raise ValueError("signing key must be Ed25519 or EC P-256")


def write_private_pem(path: Path, key: ECKey | OKPKey | RSAKey) -> bool:
    """Write a new private key readable by its owner only; False if the file already exists."""
    return create_exclusive(path, key.as_pem(private=True))


def public_jwk(key: Key, alg: str) -> dict[str, Any]:
    return key.as_dict(private=False, kid=key.thumbprint(), alg=alg, use="sig")


def _atomic_write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class SigningKeys:
    """The current private key and every public key a valid token may still carry."""

    private: Key
    alg: SigningAlgorithm
    kid: str
    published: list[dict[str, Any]]  # public JWKs, current first
    _by_kid: dict[str, Key]

    @classmethod
    def build(cls, private: Key, retired: list[dict[str, Any]]) -> SigningKeys:
        alg = algorithm_of(private)
        current = public_jwk(private, alg)
        published = [current] + [jwk for jwk in retired if jwk["kid"] != current["kid"]]
        by_kid = {jwk["kid"]: KeySet.import_key_set({"keys": [jwk]}).keys[0] for jwk in published}
        return cls(private=private, alg=alg, kid=current["kid"], published=published, _by_kid=by_kid)

    def jwks(self) -> dict[str, Any]:
        return {"keys": self.published}

    def public_key(self, kid: str) -> Key | None:
        return self._by_kid.get(kid)


def load_signing_keys(
    key_path: Path,
    keys_dir: Path,
    generate_alg: SigningAlgorithm,
    retire_after_s: float,
    now: float | None = None,
) -> SigningKeys:
    """Load (or create) the signing key and reconcile the history of published public keys.

    When the key file holds a new key, the previous ones stay published for `retire_after_s`
    (the longest token lifetime plus clock leeway) and then drop out.
    """
    now = time.time() if now is None else now
    if not key_path.exists() and write_private_pem(key_path, generate_private_key(generate_alg)):
        log.info("generated a new %s signing key at %s", generate_alg, key_path)
    pem = key_path.read_bytes()
    private: Key
    try:
        private = OKPKey.import_key(pem)
    except Exception:  # not an OKP key: try EC
        private = ECKey.import_key(pem)
    if not private.is_private:
        raise ValueError(f"{key_path} holds a public key; the signing key must be private")
    alg = algorithm_of(private)
    kid = private.thumbprint()

    history_path = keys_dir / HISTORY_FILE
    entries: list[dict[str, Any]] = []
    with contextlib.suppress(FileNotFoundError, ValueError):
        entries = json.loads(history_path.read_text(encoding="utf-8")).get("keys", [])
    changed = False
    if not any(e.get("jwk", {}).get("kid") == kid for e in entries):
        for entry in entries:
            if entry.get("not_after") is None:
                entry["not_after"] = now + retire_after_s
        entries.insert(0, {"jwk": public_jwk(private, alg), "not_after": None})
        changed = True
    live = [e for e in entries if e.get("not_after") is None or e["not_after"] > now]
    changed = changed or len(live) != len(entries)
    if changed:
        try:
            keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            _atomic_write_json(history_path, {"keys": live})
        except OSError as exc:  # a read-only data dir still serves; only rotation history is lost
            log.warning("cannot record published keys in %s: %s", history_path, exc)
    retired = [e["jwk"] for e in live if e["jwk"]["kid"] != kid]
    return SigningKeys.build(private, retired)


def rotate_signing_key(key_path: Path, alg: SigningAlgorithm) -> str:
    """Replace the signing key file with a fresh key; returns the new key id.

    The old public key stays in the JWKS (see `load_signing_keys`) once the gateway restarts.
    """
    key = generate_private_key(alg)
    tmp = key_path.with_name(f".{key_path.name}.new")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    if not write_private_pem(tmp, key):
        raise FileExistsError(tmp)
    os.replace(tmp, key_path)
    return key.thumbprint()
