"""DNS for lab names: A and AAAA from the spec, NXDOMAIN for everything else."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import cast

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSError, DNSRecord

from intercept_proxy.lab.config import DNS_PORT
from intercept_proxy.lab.receipts import ReceiptLog
from intercept_proxy.lab.server.site import Site
from intercept_proxy.lab.spec import LabHost

TTL = 60


def query_name(query: DNSRecord) -> str | None:
    """The normalised name asked about (lower case, no trailing dot), None without a question."""
    if not query.questions:
        return None
    return str(query.q.qname).rstrip(".").lower()


def answer(query: DNSRecord, zone: Mapping[str, LabHost]) -> DNSRecord:
    """The reply to `query`. A lab name without a record of the asked type gets an empty
    NOERROR answer, so resolvers do not conclude the name is missing."""
    reply = query.reply()
    name = query_name(query)
    if name is None:
        reply.header.rcode = RCODE.FORMERR
        return reply
    host = zone.get(name)
    if host is None:
        reply.header.rcode = RCODE.NXDOMAIN
    elif query.q.qtype == QTYPE.A:
        reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(host.ipv4), ttl=TTL))
    elif query.q.qtype == QTYPE.AAAA:
        reply.add_answer(RR(query.q.qname, QTYPE.AAAA, rdata=AAAA(host.ipv6), ttl=TTL))
    return reply


class DnsServer(asyncio.DatagramProtocol):
    def __init__(self, log: ReceiptLog, site: Site, zone: Mapping[str, LabHost]) -> None:
        self._log = log
        self._site = site
        self._zone = zone
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector transport is a datagram transport without declaring so (Python 3.11).
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        try:
            query = DNSRecord.parse(data)
        except DNSError:
            query = None
        name = None if query is None else query_name(query)
        self._log.record(
            "dns", self._site.address, DNS_PORT, host=self._site.sole_host, query_name=name
        )
        if query is not None and self._transport is not None:
            self._transport.sendto(answer(query, self._zone).pack(), addr)
