"""The token-signing key: made once, owner-only, stable across restarts, rotated without breaking tokens."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest
from joserfc import jwt

from gateway.auth.keys import HISTORY_FILE, load_signing_keys, rotate_signing_key


def _load(tmp_path: Path, alg: str = "Ed25519", now: float | None = None):
    return load_signing_keys(tmp_path / "keys" / "signing-key.pem", tmp_path / "keys", alg, retire_after_s=330, now=now)


def test_first_start_generates_an_owner_only_key(tmp_path: Path) -> None:
    keys = _load(tmp_path)
    pem = tmp_path / "keys" / "signing-key.pem"
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    assert keys.alg == "Ed25519"
    assert [k["kid"] for k in keys.jwks()["keys"]] == [keys.kid]
    assert all("d" not in k for k in keys.jwks()["keys"])


def test_restart_keeps_the_same_key(tmp_path: Path) -> None:
    assert _load(tmp_path).kid == _load(tmp_path).kid


def test_es256_is_selectable(tmp_path: Path) -> None:
    keys = _load(tmp_path, "ES256")
    assert keys.alg == "ES256"
    assert keys.jwks()["keys"][0]["crv"] == "P-256"


def test_rotation_keeps_the_old_public_key_until_its_tokens_expire(tmp_path: Path) -> None:
    old = _load(tmp_path)
    token = jwt.encode({"alg": old.alg, "kid": old.kid}, {"sub": "x"}, old.private, algorithms=[old.alg])
    rotate_signing_key(tmp_path / "keys" / "signing-key.pem", "Ed25519")
    now = time.time()
    new = _load(tmp_path, now=now)
    assert new.kid != old.kid
    assert [k["kid"] for k in new.jwks()["keys"]] == [new.kid, old.kid]
    # A token signed before the rotation still verifies with the published key.
    retired = new.public_key(old.kid)
    assert retired is not None
    assert jwt.decode(token, retired, algorithms=["Ed25519"]).claims == {"sub": "x"}
    # After the longest token lifetime, the old key is gone.
    later = _load(tmp_path, now=now + 331)
    assert [k["kid"] for k in later.jwks()["keys"]] == [new.kid]
    history = json.loads((tmp_path / "keys" / HISTORY_FILE).read_text())
    assert [e["jwk"]["kid"] for e in history["keys"]] == [new.kid]


def test_a_public_key_is_refused_as_signing_key(tmp_path: Path) -> None:
    keys = _load(tmp_path)
    (tmp_path / "keys" / "signing-key.pem").write_bytes(keys.private.as_pem(private=False))
    with pytest.raises(ValueError, match="public key"):
        _load(tmp_path)
