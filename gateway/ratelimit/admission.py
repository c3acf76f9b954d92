"""Admission: who is calling a logged path, and whether a limit lets the call in, decided before routing
and before the body is read (docs/contract.md §8).

Every request to a logged path costs a durable event, so nobody may cause one without passing a limit:
a caller with a valid bearer token is limited per administration, anyone else (no token, a bad token,
the token endpoint) per source address. The source is the peer's address, or the client named in
`X-Forwarded-For` when the peer is a proxy listed in `GATEWAY_TRUSTED_PROXIES`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

from gateway.auth.bearer import BearerValidator, Caller
from gateway.errors import Problem
from gateway.ratelimit.limiter import Outcome, RateLimits

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_MAX_FORWARDED_HOPS: Final = 32


def parse_networks(spec: str) -> tuple[Network, ...]:
    """`10.0.0.0/8, 2001:db8::/32` → networks (the trusted-proxies setting); a bad entry raises ValueError."""
    networks = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{part!r} is not an address or CIDR") from None
    return tuple(networks)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address, an IPv4-mapped IPv6 one (a dual-stack listener's peers) as IPv4."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address, proxies: tuple[Network, ...]) -> bool:
    return any(address.version == net.version and address in net for net in proxies)


def client_address(peer: str | None, forwarded_for: list[bytes], proxies: tuple[Network, ...]) -> str | None:
    """The caller's address: the peer's, unless the peer is a trusted proxy; then the first hop of
    `X-Forwarded-For`, read from the right, that is not itself a trusted proxy. A hop that is not an
    address ends the walk at the last proxy seen: the request is charged to that proxy."""
    if not proxies or peer is None:
        return peer
    address = _address(peer)
    if address is None or not _trusted(address, proxies):
        return peer
    hops = [hop for value in forwarded_for for hop in value.decode("latin-1").split(",")]
    current = address
    for hop in reversed(hops[-_MAX_FORWARDED_HOPS:]):
        forwarded = _address(hop)
        if forwarded is None:
            break
        current = forwarded
        if not _trusted(forwarded, proxies):
            break
    return str(current)


def source_address(host: str | None) -> str:
    """How a source is named in limits and events: the address, an IPv6 address by its /64 (one host
    commonly holds a whole /64), an IPv4-mapped IPv6 address as IPv4."""
    if not host:
        return "unknown"
    address = _address(host)
    if address is None:
        return host[:64]
    if isinstance(address, ipaddress.IPv6Address):
        return f"{ipaddress.ip_network(f'{address}/64', strict=False).network_address}/64"
    return str(address)


@dataclass(slots=True)
class Admission:
    """What admission found, for the route's guard: the caller, or why there is none."""

    caller: Caller | None
    problem: Problem | None  # the bearer check's refusal, raised by the guard once the route is known
    limit: Outcome | None  # the verdict of the limit applied, with its header fields


class Admitter:
    def __init__(self, bearer: BearerValidator, rate_limits: RateLimits) -> None:
        self._bearer = bearer
        self._limits = rate_limits

    async def admit(self, authorization: str | None, source: str, *, token_endpoint: bool) -> Admission:
        """Authenticate a bearer token if one is sent, then apply the caller's limit. A refusal is in
        `limit.refusal()`; the caller decides how to answer it."""
        caller = problem = None
        if not token_endpoint:
            try:
                caller = await self._bearer.authenticate(authorization)
            except Problem as exc:
                problem = exc
        if caller is not None:
            outcome = await self._limits.administration(caller.administration)
        else:
            outcome = await self._limits.source(source, token_endpoint=token_endpoint)
        return Admission(caller, problem, outcome)
