"""The verified-token cache: one signature check per token, never past expiry or a policy change."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from gateway.auth.bearer import BearerValidator
from gateway.auth.keys import load_signing_keys
from gateway.errors import Problem
from gateway.policy.loader import load_policies
from gateway.policy.store import PolicyStore
from tests.support.keys import access_claims, sign
from tests.support.realm import build_realm

ISSUER = "http://127.0.0.1:8000"


@pytest.fixture
def setup(tmp_path: Path):
    realm = build_realm(tmp_path)
    keys = load_signing_keys(tmp_path / "k.pem", tmp_path / "keys", "Ed25519", retire_after_s=330)
    store = PolicyStore(load_policies(realm.policies_dir))
    validator = BearerValidator(
        issuer=ISSUER,
        audience=ISSUER,
        signing_keys=keys,
        policies=store,
        trusted=None,
        leeway_s=0,
        max_token_bytes=8192,
        cache_size=2,
    )

    def token(**overrides) -> str:
        claims = access_claims(ISSUER, "elections-app", "identity:verify", **overrides)
        return sign({"alg": "Ed25519", "typ": "at+jwt", "kid": keys.kid}, claims, keys.private)

    return validator, store, token


async def test_one_signature_check_per_token(setup) -> None:
    validator, _, token = setup
    value = token()
    for _ in range(5):
        caller = await validator.authenticate(f"Bearer {value}")
    assert caller.administration == "elections"
    assert validator.signature_checks == 1


@pytest.mark.slow
async def test_cached_token_still_expires(setup) -> None:
    validator, _, token = setup
    value = token(exp=int(time.time()) + 2)
    await validator.authenticate(f"Bearer {value}")
    await asyncio.sleep(2.1)
    with pytest.raises(Problem) as refused:
        await validator.authenticate(f"Bearer {value}")
    assert refused.value.code == "invalid_token"


async def test_policy_change_revalidates(setup) -> None:
    validator, store, token = setup
    value = token()
    await validator.authenticate(f"Bearer {value}")
    store.replace(store.current)
    await validator.authenticate(f"Bearer {value}")
    assert validator.signature_checks == 2


async def test_cache_is_bounded(setup) -> None:
    validator, _, token = setup
    for _ in range(5):
        await validator.authenticate(f"Bearer {token()}")
    assert len(validator._cache) <= 2
