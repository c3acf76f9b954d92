"""Request field types shared by every body that names a person."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

from gateway.identity.pseudonyms import NIN_PATTERN, normalise_nin


def _nin(value: str) -> str:
    nin = normalise_nin(value)
    if not NIN_PATTERN.match(nin):
        raise ValueError("not a NIN: 6 to 32 digits or capital letters")
    return nin


# A NIN in a request body (never a URL): checked, then in its one normalised spelling.
Nin = Annotated[str, Field(max_length=64, description="the person's NIN; never sent in a URL"), AfterValidator(_nin)]
