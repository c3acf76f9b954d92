"""Keyed pseudonyms of a NIN. The access log stores `subject_hash`, never the NIN: anyone holding the
key (the gateway) can find a person's events from their NIN, but a copy of the database names nobody.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import unicodedata

NIN_PATTERN = re.compile(r"^[0-9A-Z]{6,32}$")


def normalise_nin(nin: str) -> str:
    """One spelling per NIN: compatibility forms folded (fullwidth digits), spaces dropped, upper case."""
    if nin.isascii():  # NFKC leaves ASCII as it is; the common case skips it
        return nin.upper() if nin.isalnum() else "".join(nin.split()).upper()
    return "".join(unicodedata.normalize("NFKC", nin).split()).upper()


class KeyedSha256:
    """HMAC-SHA256 under one key (RFC 2104), built from two SHA-256 states that have already absorbed the
    padded key. Each MAC copies them: half the cost of copying a `hmac.HMAC`, whose Python wrapper
    dominates at the size of a NIN. Tested against `hmac` for keys shorter and longer than a block."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > 64:  # SHA-256's block size: longer keys are hashed first
            key = hashlib.sha256(key).digest()
        key = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def digest(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


class SubjectHasher:
    """HMAC-SHA256 of the normalised NIN under the gateway's subject key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the subject key needs at least 16 bytes")
        self._keyed = KeyedSha256(key)

    def __call__(self, nin: str) -> str:
        return self._keyed.digest(normalise_nin(nin).encode()).hex()


class SubjectRefs:
    """`subject_ref`: stable for one administration and one person, unlinkable across administrations
    (each administration's key is derived from the gateway's pseudonym secret and its id)."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the pseudonym secret needs at least 16 bytes")
        self._secret = secret
        self._keyed: dict[str, KeyedSha256] = {}

    def __call__(self, administration: str, nin: str) -> str:
        keyed = self._keyed.get(administration)
        if keyed is None:
            key = hmac.new(self._secret, f"subject_ref/v1/{administration}".encode(), hashlib.sha256).digest()
            keyed = self._keyed[administration] = KeyedSha256(key)
        return base64.urlsafe_b64encode(keyed.digest(normalise_nin(nin).encode())[:18]).decode()


def reference_names_person(reference: str, nin: str) -> bool:
    """Whether an evidence reference carries the person's NIN (in any spelling the NIN field accepts):
    a reference names the channel's own record (a form number), never an identity number."""
    return nin in _NOT_NIN_CHARACTERS.sub("", normalise_nin(reference))


_NOT_NIN_CHARACTERS = re.compile(r"[^0-9A-Z]")  # separators a NIN might be written with: . / - _ and others
