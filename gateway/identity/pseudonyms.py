"""Keyed pseudonyms of a NIN. The access log stores `subject_hash`, never the NIN: anyone holding the
key (the gateway) can find a person's events from their NIN, but a copy of the database names nobody.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata

NIN_PATTERN = re.compile(r"^[0-9A-Z]{6,32}$")


def normalise_nin(nin: str) -> str:
    """One spelling per NIN: compatibility forms folded (fullwidth digits), spaces dropped, upper case."""
    return "".join(unicodedata.normalize("NFKC", nin).split()).upper()


def valid_nin(nin: str) -> bool:
    return bool(NIN_PATTERN.match(normalise_nin(nin)))


class SubjectHasher:
    """HMAC-SHA256 of the normalised NIN under the gateway's subject key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the subject key needs at least 16 bytes")
        self._key = key

    def __call__(self, nin: str) -> str:
        return hmac.new(self._key, normalise_nin(nin).encode(), hashlib.sha256).hexdigest()
