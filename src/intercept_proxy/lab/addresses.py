"""The lab's address plan: which addresses hosts may use, which the lab keeps, and who gets what.

Everything here is pure arithmetic, so the plan can be tested without a namespace.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

IPv4 = ipaddress.IPv4Address
IPv6 = ipaddress.IPv6Address

# The whole lab lives in the benchmarking range (RFC 2544) and in unique-local IPv6: neither is
# ever routed on the internet, so a lab address can never be confused with a real one.
LAB_NET_V4 = ipaddress.IPv4Network("198.18.0.0/15")
LAB_NET_V6 = ipaddress.IPv6Network("fd00::/8")
# As an interceptor's settings name them: the non-public ranges its upstreams may be in.
LAB_RANGES = (str(LAB_NET_V4), str(LAB_NET_V6))

# Kept by the lab itself: its resolver, and one link subnet per attached namespace.
SERVICES_NET_V4 = ipaddress.IPv4Network("198.18.0.0/24")
LINKS_NET_V4 = ipaddress.IPv4Network("198.19.0.0/16")
RESOLVER_V4 = IPv4("198.18.0.53")
RESOLVER_V6 = IPv6("fd00::53")
LINKS_NET_V6 = ipaddress.IPv6Network("fdff::/16")
RESERVED_V4 = (SERVICES_NET_V4, LINKS_NET_V4)
RESERVED_V6 = (ipaddress.IPv6Network(f"{RESOLVER_V6}/128"), LINKS_NET_V6)

# Addresses handed out to hosts that do not ask for one, in order.
AUTO_POOL_V4 = ipaddress.IPv4Network("198.18.1.0/24")
AUTO_POOL_V6 = ipaddress.IPv6Network("fd00::1:0/112")

# A /31 (RFC 3021) per link: 32768 links in LINKS_NET_V4; each also gets a /64 of LINKS_NET_V6.
MAX_LINKS = LINKS_NET_V4.num_addresses // 2


class AddressError(ValueError):
    """An address a host may not use; the message says why."""


def check_host_address(text: str, version: int) -> str:
    """The canonical spelling of `text` if a lab host may use it, else AddressError."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError as e:
        raise AddressError(f"{text!r} is not an IP address") from e
    if address.version != version:
        raise AddressError(f"{text!r} is not an IPv{version} address")
    lab_net, reserved = (LAB_NET_V4, RESERVED_V4) if version == 4 else (LAB_NET_V6, RESERVED_V6)
    if address not in lab_net:
        raise AddressError(f"{address} is outside the lab range {lab_net}")
    for net in reserved:
        if address in net:
            raise AddressError(f"{address} is inside {net}, which the lab reserves for itself")
    return str(address)


@dataclass(frozen=True)
class AddressRequest:
    """A host's requested addresses; None means "pick one for me"."""

    ipv4: str | None
    ipv6: str | None


def assign_addresses(requests: Sequence[AddressRequest]) -> list[tuple[str, str]]:
    """(ipv4, ipv6) for each request: given ones kept, the others taken in order from the pools.

    An automatic address is never one that any request names, so hosts share an address only
    when the spec says so.
    """
    taken_v4 = {r.ipv4 for r in requests if r.ipv4 is not None}
    taken_v6 = {r.ipv6 for r in requests if r.ipv6 is not None}
    free_v4 = _free(AUTO_POOL_V4.hosts(), taken_v4)
    free_v6 = _free(AUTO_POOL_V6.hosts(), taken_v6)
    assigned = []
    for r in requests:
        v4 = r.ipv4 if r.ipv4 is not None else _next(free_v4, AUTO_POOL_V4)
        v6 = r.ipv6 if r.ipv6 is not None else _next(free_v6, AUTO_POOL_V6)
        assigned.append((v4, v6))
    return assigned


def _free(pool: Iterator[IPv4] | Iterator[IPv6], taken: set[str]) -> Iterator[str]:
    return (str(a) for a in pool if str(a) not in taken)


def _next(free: Iterator[str], pool: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    try:
        return next(free)
    except StopIteration:
        raise AddressError(f"no free address left in {pool}; give hosts explicit ones") from None


@dataclass(frozen=True)
class LinkAddresses:
    """The two ends of one lab link: the lab side and the attached namespace's side."""

    lab_ipv4: str
    peer_ipv4: str
    ipv4_prefix: int
    lab_ipv6: str
    peer_ipv6: str
    ipv6_prefix: int


def link_addresses(slot: int) -> LinkAddresses:
    """Addresses of link number `slot` (0 <= slot < MAX_LINKS)."""
    if not 0 <= slot < MAX_LINKS:
        raise AddressError(f"link slot {slot} is outside 0..{MAX_LINKS - 1}")
    v4 = LINKS_NET_V4.network_address + 2 * slot
    v6 = LINKS_NET_V6.network_address + (slot << 64)
    return LinkAddresses(str(v4), str(v4 + 1), 31, str(v6 + 1), str(v6 + 2), 64)
