"""Pseudonyms of a NIN: stored `subject_hash` values and the `subject_ref` given to administrations are
fixed formulas (HMAC-SHA256 of the normalised NIN) that must never change."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

import pytest

from gateway.identity.pseudonyms import SubjectHasher, SubjectRefs


def test_subject_hash_is_the_hmac_of_the_normalised_nin() -> None:
    key = secrets.token_bytes(32)
    subjects = SubjectHasher(key)
    expected = hmac.new(key, b"AB1234567", hashlib.sha256).hexdigest()
    fullwidth = "".join(chr(ord(c) + 0xFEE0) for c in "AB1234567")
    for spelling in ("AB1234567", "ab1234567", "AB 1234 567", fullwidth):
        assert subjects(spelling) == expected
    assert subjects("AB1234568") != expected


def test_subject_ref_is_derived_per_administration_and_unlinkable_across_them() -> None:
    secret = secrets.token_bytes(32)
    refs = SubjectRefs(secret)
    key = hmac.new(secret, b"subject_ref/v1/elections", hashlib.sha256).digest()
    expected = base64.urlsafe_b64encode(hmac.new(key, b"AB1234567", hashlib.sha256).digest()[:18]).decode()
    assert refs("elections", "ab 1234567") == expected == refs("elections", "AB1234567")
    assert refs("health", "AB1234567") != expected
    with pytest.raises(ValueError):
        SubjectRefs(b"short")
