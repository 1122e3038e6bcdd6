"""The sinkhole's answers as a pure function of the query bytes: no sockets, no clock.

Only the header and the question are parsed: a query needs nothing else, and the other
sections (EDNS options included) are ignored rather than trusted or relayed.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from enum import StrEnum

from dnslib import (
    AAAA,
    CLASS,
    OPCODE,
    QTYPE,
    RCODE,
    RR,
    A,
    DNSBuffer,
    DNSError,
    DNSHeader,
    DNSLabel,
    DNSQuestion,
    DNSRecord,
)

from intercept_proxy.hostnames import MAX_NAME_LENGTH, HostnameError, normalize_hostname

TTL = 5  # short: a synthetic answer is cheap to ask again, and nothing should hold on to it
# Documentation ranges (RFC 5737, RFC 3849): never a real destination, and iptables sends any
# TCP 80/443 connection to them to Envoy, which routes by SNI or Host, never by address.
SYNTHETIC_V4 = ipaddress.IPv4Network("198.51.100.0/24")
SYNTHETIC_V6 = ipaddress.IPv6Network("2001:db8::/32")
_SYNTHETIC: dict[int, ipaddress.IPv4Network | ipaddress.IPv6Network] = {
    4: SYNTHETIC_V4,
    6: SYNTHETIC_V6,
}
_LOCALHOST = {QTYPE.A: A("127.0.0.1"), QTYPE.AAAA: AAAA("::1")}
# Label bytes shown as themselves in event names; anything else is written \DDD (RFC 1035).
_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-_")


class Outcome(StrEnum):
    SYNTHETIC = "synthetic"  # an address: synthetic, or loopback for localhost
    NODATA = "nodata"  # the name exists, the type does not
    NXDOMAIN = "nxdomain"  # not a host name
    FORMERR = "formerr"
    NOTIMP = "notimp"  # an opcode other than QUERY
    FORWARDED = "forwarded"  # a configured suffix, answered by the real resolver
    SERVFAIL = "servfail"  # a configured suffix the real resolver did not answer


@dataclass(frozen=True)
class QueryEvent:
    """What the sinkhole tells the agent about one answered query, and nothing more.

    `name` is lower case without the trailing dot, odd bytes escaped as \\DDD; `qtype` is a
    mnemonic ("A", "HTTPS") or "other", so it is safe as a metric label. Both are None for a
    packet without a readable question.
    """

    name: str | None
    qtype: str | None
    outcome: Outcome


@dataclass(frozen=True)
class Reply:
    data: bytes
    event: QueryEvent


@dataclass(frozen=True)
class Forward:
    """A query for a configured suffix: to be asked upstream, never sent on as the client wrote
    it (only its question travels, so nothing else in the packet can leave the pod)."""

    header: DNSHeader
    question: DNSQuestion
    name: str
    qtype: str

    def upstream_query(self, query_id: int) -> bytes:
        header = DNSHeader(id=query_id, rd=self.header.rd)
        packed: bytes = DNSRecord(header, q=self.question).pack()
        return packed

    def is_answer(self, data: bytes, query_id: int) -> bool:
        """Whether `data` answers upstream_query(query_id): same id, a response, same question."""
        try:
            header, question = _parse(data)
        except DNSError:
            return False
        return (
            header.id == query_id
            and header.qr == 1
            and (question.qname, question.qtype, question.qclass)
            == (self.question.qname, self.question.qtype, self.question.qclass)
        )

    def relay(self, data: bytes) -> Reply:
        """The upstream answer `data`, given back under the client's query id."""
        event = QueryEvent(self.name, self.qtype, Outcome.FORWARDED)
        return Reply(self.header.id.to_bytes(2, "big") + data[2:], event)

    def servfail(self) -> Reply:
        return _reply(self.header, self.question, Outcome.SERVFAIL, RCODE.SERVFAIL, aa=False)


def synthetic_address(name: str, version: int) -> str:
    """The address `name` resolves to for IP `version` (4 or 6): a hash of the normalised name
    into the synthetic range, skipping its first and last address.

    Raises HostnameError for a name that is not a host name.
    """
    net = _SYNTHETIC[version]
    digest = hashlib.sha256(normalize_hostname(name).encode()).digest()
    return str(net[1 + int.from_bytes(digest[:16], "big") % (net.num_addresses - 2)])


def answer(data: bytes, forward: frozenset[str] = frozenset()) -> Reply | Forward | None:
    """The reply to the query `data`, a Forward for a name under a suffix in `forward`
    (normalised, see normalize_hostname), or None for a packet to drop (a response, or too short
    to answer)."""
    try:
        header = DNSHeader.parse(DNSBuffer(data))
    except DNSError:
        return None
    if header.qr:
        return None  # never answer an answer: two responders must not loop
    if header.opcode != OPCODE.QUERY:
        return _reply(header, None, Outcome.NOTIMP, RCODE.NOTIMP, aa=False)
    try:
        _, question = _parse(data)
    except DNSError:
        return _reply(header, None, Outcome.FORMERR, RCODE.FORMERR, aa=False)
    host = _host_name(question.qname)
    if host is None:
        return _reply(header, question, Outcome.NXDOMAIN, RCODE.NXDOMAIN)
    if host == "localhost" or host.endswith(".localhost"):  # RFC 6761: never forwarded
        rdata = _LOCALHOST.get(question.qtype)
    elif not forward.isdisjoint(_parents(host)):
        return Forward(header, question, host, _type_name(question.qtype))
    elif question.qtype == QTYPE.A:
        rdata = A(synthetic_address(host, 4))
    elif question.qtype == QTYPE.AAAA:
        rdata = AAAA(synthetic_address(host, 6))
    else:
        rdata = None
    if rdata is None or question.qclass != CLASS.IN:
        return _reply(header, question, Outcome.NODATA, RCODE.NOERROR)
    answer_rr = RR(question.qname, question.qtype, rdata=rdata, ttl=TTL)
    return _reply(header, question, Outcome.SYNTHETIC, RCODE.NOERROR, answer_rr=answer_rr)


def _parse(data: bytes) -> tuple[DNSHeader, DNSQuestion]:
    """Header and sole question; DNSError unless there is exactly one (RFC 9619) and its name
    keeps to the limits of RFC 1035 (dnslib reads longer names but cannot echo them)."""
    buffer = DNSBuffer(data)
    header = DNSHeader.parse(buffer)
    if header.q != 1:
        raise DNSError(f"{header.q} questions")
    question = DNSQuestion.parse(buffer)
    qname = question.qname
    if len(qname) > MAX_NAME_LENGTH or any(len(label) > 63 for label in qname.label):
        raise DNSError("name or label too long")
    return header, question


def _host_name(qname: DNSLabel) -> str | None:
    """The normalised name if it is a host name (normalize_hostname, which admits `_` so that
    service names such as _dmarc.example.com exist), else None. A label holding a dot byte is
    refused first: joined up, it would read as a different name."""
    if any(b"." in label for label in qname.label):
        return None
    try:
        return normalize_hostname(b".".join(qname.label).decode("ascii"))
    except (HostnameError, UnicodeDecodeError):
        return None


def _parents(host: str) -> list[str]:
    """`host` and every domain above it: a.b.c, b.c, c (so suffixes match whole labels)."""
    labels = host.split(".")
    return [".".join(labels[i:]) for i in range(len(labels))]


def _event_name(qname: DNSLabel) -> str:
    return ".".join(
        "".join(chr(b) if b in _PLAIN else f"\\{b:03d}" for b in label.lower())
        for label in qname.label
    )


def _type_name(qtype: int) -> str:
    return str(QTYPE.forward.get(qtype, "other"))


def _reply(
    query: DNSHeader,
    question: DNSQuestion | None,
    outcome: Outcome,
    rcode: int,
    *,
    aa: bool = True,
    answer_rr: RR | None = None,
) -> Reply:
    """A response echoing the query's id, opcode, RD bit and question. AA: the sinkhole is the
    authority for every name it answers itself; RA: to the workload it is its recursive
    resolver."""
    header = DNSHeader(
        id=query.id, qr=1, opcode=query.opcode, aa=int(aa), rd=query.rd, ra=1, rcode=rcode
    )
    record = DNSRecord(header, q=question, a=answer_rr)
    if question is None:
        event = QueryEvent(None, None, outcome)
    else:
        event = QueryEvent(_event_name(question.qname), _type_name(question.qtype), outcome)
    return Reply(record.pack(), event)
