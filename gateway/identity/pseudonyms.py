"""Keyed pseudonyms of a NIN. The access log stores `subject_hash`, never the NIN: anyone holding the
key (the gateway) can find a person's events from their NIN, but a copy of the database names nobody.
"""

from __future__ import annotations

import base64
import hmac
import re
import unicodedata

NIN_PATTERN = re.compile(r"^[0-9A-Z]{6,32}$")


def normalise_nin(nin: str) -> str:
    """One spelling per NIN: compatibility forms folded (fullwidth digits), spaces dropped, upper case."""
    if nin.isascii():  # NFKC leaves ASCII as it is; the common case skips it
        return nin.upper() if nin.isalnum() else "".join(nin.split()).upper()
    return "".join(unicodedata.normalize("NFKC", nin).split()).upper()


class SubjectHasher:
    """HMAC-SHA256 of the normalised NIN under the gateway's subject key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the subject key needs at least 16 bytes")
        self._key = key

    def __call__(self, nin: str) -> str:
        return hmac.digest(self._key, normalise_nin(nin).encode(), "sha256").hex()


class SubjectRefs:
    """`subject_ref`: stable for one administration and one person, unlinkable across administrations
    (each administration's key is derived from the gateway's pseudonym secret and its id)."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the pseudonym secret needs at least 16 bytes")
        self._secret = secret
        self._keys: dict[str, bytes] = {}

    def __call__(self, administration: str, nin: str) -> str:
        key = self._keys.get(administration)
        if key is None:
            key = self._keys[administration] = hmac.digest(
                self._secret, f"subject_ref/v1/{administration}".encode(), "sha256"
            )
        return base64.urlsafe_b64encode(hmac.digest(key, normalise_nin(nin).encode(), "sha256")[:18]).decode()


def reference_names_person(reference: str, nin: str) -> bool:
    """Whether an evidence reference carries the person's NIN (in any spelling the NIN field accepts):
    a reference names the channel's own record (a form number), never an identity number."""
    return nin in _NOT_NIN_CHARACTERS.sub("", normalise_nin(reference))


_NOT_NIN_CHARACTERS = re.compile(r"[^0-9A-Z]")  # separators a NIN might be written with: . / - _ and others
