"""Where the gateway sends what it knows: https, or plain http to this machine only (a sidecar, a test
peer). NINs and tokens never cross a network in clear."""

from __future__ import annotations

import ipaddress
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def secure_url(value: str) -> str:
    """`value` when it is https, or http to a loopback host; otherwise ValueError."""
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        raise ValueError("not a URL") from None
    if not host:
        raise ValueError("a URL with a host is required")
    if parts.scheme == "https" or (parts.scheme == "http" and is_loopback_host(host)):
        return value
    raise ValueError("must be https (plain http only to a loopback address)")


SecureUrl = Annotated[str, AfterValidator(secure_url)]
