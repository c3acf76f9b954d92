"""A throwaway policy set with real client keys, as an operator would deposit them."""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from joserfc.jwk import Key

from tests.support.keys import jwks_of, new_key


@dataclass
class Realm:
    policies_dir: Path
    data_dir: Path
    keys: dict[str, Key] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        # Tests send many unauthenticated calls from one address; the per-address limit has its own tests.
        return {
            "GATEWAY_POLICIES_DIR": str(self.policies_dir),
            "GATEWAY_DATA_DIR": str(self.data_dir),
            "GATEWAY_UNAUTHENTICATED_RATE_LIMITS": "burst:10000/1s",
            "GATEWAY_UNAUTHENTICATED_TOTAL_RATE_LIMITS": "burst:10000/1s",
            "GATEWAY_CONSOLE_LOGIN_RATE_LIMITS": "burst:10000/1s",
            **extra,
        }


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")


def build_realm(root: Path) -> Realm:
    policies = root / "policies"
    (policies / "keys").mkdir(parents=True)
    realm = Realm(policies_dir=policies, data_dir=root / "var")
    realm.keys["elections-app"] = new_key("Ed25519")
    realm.keys["elections-es"] = new_key("ES256")
    realm.keys["oversight-app"] = new_key("Ed25519")
    realm.keys["channel-app"] = new_key("Ed25519")
    secret = secrets.token_urlsafe(24)
    realm.secrets["health-app"] = secret
    (policies / "keys" / "elections-es.jwks.json").write_text(json.dumps(jwks_of(realm.keys["elections-es"])))
    _write(
        policies / "elections.yaml",
        {
            "id": "elections",
            "name": "Commission électorale",
            "sector": "electoral",
            "clients": [
                {
                    "client_id": "elections-app",
                    "auth": "private_key_jwt",
                    "jwks": jwks_of(realm.keys["elections-app"]),
                    "scopes": ["identity:verify", "identity:lookup"],
                },
                {
                    "client_id": "elections-es",
                    "auth": "private_key_jwt",
                    "jwks_file": "keys/elections-es.jwks.json",
                    "scopes": ["identity:verify"],
                },
            ],
            "purposes": {
                "voter_roll": {
                    "legal_basis": "Loi électorale",
                    "consent": "not_required",
                    "operations": ["verify"],
                    "claims": ["family_name"],
                    "predicates": ["alive"],
                }
            },
            "rate_limits": [{"name": "burst", "limit": 100, "window": "1s"}],
        },
    )
    _write(
        policies / "health.yaml",
        {
            "id": "health",
            "name": "Assurance maladie",
            "clients": [
                {
                    "client_id": "health-app",
                    "auth": "client_secret_basic",
                    "secret_hash": "sha256:" + hashlib.sha256(secret.encode()).hexdigest(),
                    "scopes": ["identity:verify"],
                }
            ],
            "purposes": {},
        },
    )
    _write(
        policies / "oversight.yaml",
        {
            "id": "oversight",
            "name": "Autorité de protection des données",
            "clients": [
                {
                    "client_id": "oversight-app",
                    "auth": "private_key_jwt",
                    "jwks": jwks_of(realm.keys["oversight-app"]),
                    "scopes": ["audit:read", "metrics:read"],
                }
            ],
        },
    )
    _write(
        policies / "channel.yaml",
        {
            "id": "channel",
            "name": "Centre d'état civil",
            "clients": [
                {
                    "client_id": "channel-app",
                    "auth": "private_key_jwt",
                    "jwks": jwks_of(realm.keys["channel-app"]),
                    "scopes": ["subject:history"],
                }
            ],
        },
    )
    return realm
