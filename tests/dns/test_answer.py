"""The answer logic, without sockets: what each query gets back."""

from __future__ import annotations

import ipaddress
import random

import pytest
from dnslib import (
    CLASS,
    EDNS0,
    OPCODE,
    QTYPE,
    RCODE,
    RR,
    DNSHeader,
    DNSLabel,
    DNSQuestion,
    DNSRecord,
)

from intercept_proxy.dns import (
    SYNTHETIC_V4,
    SYNTHETIC_V6,
    TTL,
    Forward,
    Outcome,
    Reply,
    answer,
    synthetic_address,
)
from intercept_proxy.hostnames import HostnameError

SUFFIXES = frozenset({"cluster.local"})


def query(name: str | DNSLabel, qtype: int | str = "A", *, qid: int = 4242, **flags) -> bytes:
    qtype = getattr(QTYPE, qtype) if isinstance(qtype, str) else qtype
    qclass = flags.pop("qclass", CLASS.IN)
    header = DNSHeader(id=qid, rd=flags.pop("rd", 1), **flags)
    return DNSRecord(header, q=DNSQuestion(name, qtype, qclass)).pack()


def raw_query(labels: list[bytes], qid: int = 4242) -> bytes:
    """A query for `labels` as they are, even where dnslib would refuse to pack them."""
    header = qid.to_bytes(2, "big") + b"\x01\x00" + b"\x00\x01" + bytes(6)  # RD, one question
    name = b"".join(len(label).to_bytes(1, "big") + label for label in labels) + b"\x00"
    return header + name + b"\x00\x01\x00\x01"  # A, IN


def reply_to(data: bytes) -> tuple[DNSRecord, Reply]:
    result = answer(data, SUFFIXES)
    assert isinstance(result, Reply)
    return DNSRecord.parse(result.data), result


def addresses(record: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in record.rr]


@pytest.mark.parametrize(("qtype", "version"), [("A", 4), ("AAAA", 6)])
def test_address_is_synthetic_and_follows_the_name(qtype, version):
    record, result = reply_to(query("api.github.com", qtype))
    assert addresses(record) == [synthetic_address("api.github.com", version)]
    assert record.rr[0].ttl == TTL == 5
    assert QTYPE.get(record.rr[0].rtype) == qtype
    assert (result.event.name, result.event.qtype, result.event.outcome) == (
        "api.github.com",
        qtype,
        Outcome.SYNTHETIC,
    )
    # Asked again, in other letters and with the trailing dot: the same address.
    again, _ = reply_to(query("API.GitHub.COM.", qtype, qid=7))
    assert addresses(again) == addresses(record)


def test_synthetic_addresses_stay_in_the_documentation_ranges_and_spread():
    names = [f"host{i}.example" for i in range(2000)]
    v4 = {ipaddress.ip_address(synthetic_address(n, 4)) for n in names}
    v6 = {ipaddress.ip_address(synthetic_address(n, 6)) for n in names}
    assert all(a in SYNTHETIC_V4 for a in v4)
    assert all(a in SYNTHETIC_V6 for a in v6)
    assert SYNTHETIC_V4.network_address not in v4
    assert SYNTHETIC_V4.broadcast_address not in v4
    assert len(v4) == 254  # 2000 names fill every usable address
    assert len(v6) == 2000


def test_synthetic_address_normalises_and_refuses_non_host_names():
    assert synthetic_address("Example.COM.", 4) == synthetic_address("example.com", 4)
    assert synthetic_address("example.com", 4) != synthetic_address("example.org", 4)
    with pytest.raises(HostnameError):
        synthetic_address("1.2.3.4", 4)


def test_reply_echoes_id_flags_and_question_as_written():
    record, _ = reply_to(query("MiXeD.Example.com", qid=0xBEEF, rd=0))
    h = record.header
    assert (h.id, h.qr, h.aa, h.ra, h.rd, h.tc, h.rcode) == (0xBEEF, 1, 1, 1, 0, 0, RCODE.NOERROR)
    # The question keeps the client's letters (resolvers that randomise case check them).
    assert record.q.qname.label == (b"MiXeD", b"Example", b"com")
    assert record.rr[0].rname.label == (b"MiXeD", b"Example", b"com")
    assert record.header.rd == 0


@pytest.mark.parametrize("qtype", ["MX", "TXT", "SRV", "NS", "PTR", 65, "ANY", 4321])
def test_other_types_get_an_empty_authoritative_answer(qtype):
    record, result = reply_to(query("example.com", qtype))
    assert record.header.rcode == RCODE.NOERROR
    assert record.header.aa == 1
    assert record.rr == []
    assert record.q.qtype == (getattr(QTYPE, qtype) if isinstance(qtype, str) else qtype)
    assert result.event.outcome == Outcome.NODATA
    assert result.event.qtype == {65: "HTTPS", 4321: "other"}.get(qtype, qtype)


def test_service_names_with_underscores_exist():
    record, result = reply_to(query("_dmarc.example.com", "TXT"))
    assert (record.header.rcode, result.event.outcome) == (RCODE.NOERROR, Outcome.NODATA)
    record, _ = reply_to(query("_http._tcp.example.com", "A"))
    assert addresses(record) == [synthetic_address("_http._tcp.example.com", 4)]


def test_an_address_asked_in_another_class_gets_no_data():
    record, result = reply_to(query("example.com", "A", qclass=CLASS.CH))
    assert (record.header.rcode, record.rr, result.event.outcome) == (
        RCODE.NOERROR,
        [],
        Outcome.NODATA,
    )


@pytest.mark.parametrize(
    ("labels", "event_name"),
    [
        ([b"1", b"2", b"3", b"4"], "1.2.3.4"),
        ([b"host", b"123"], "host.123"),
        ([b"a b", b"com"], "a\\032b.com"),
        ([b"a.b", b"com"], "a\\046b.com"),  # joined up it would read as a.b.com
        ([b"-a", b"com"], "-a.com"),
        ([b"a\nb", b"com"], "a\\010b.com"),
        ([], ""),
    ],
)
def test_names_that_are_not_host_names_do_not_exist(labels, event_name):
    record, result = reply_to(raw_query(labels))
    assert record.header.rcode == RCODE.NXDOMAIN
    assert record.rr == []
    assert record.q.qname.label == tuple(labels)
    assert (result.event.name, result.event.outcome) == (event_name, Outcome.NXDOMAIN)


@pytest.mark.parametrize(
    ("name", "qtype", "expected"),
    [
        ("localhost", "A", ["127.0.0.1"]),
        ("localhost.", "AAAA", ["::1"]),
        ("Web.LocalHost", "A", ["127.0.0.1"]),
        ("a.b.localhost", "AAAA", ["::1"]),
        ("localhost", "MX", []),
    ],
)
def test_localhost_is_loopback(name, qtype, expected):
    record, _ = reply_to(query(name, qtype))
    assert (record.header.rcode, addresses(record)) == (RCODE.NOERROR, expected)


@pytest.mark.parametrize("name", ["localhost.example.com", "mylocalhost"])
def test_localhost_is_a_whole_label(name):
    record, _ = reply_to(query(name))
    assert addresses(record) == [synthetic_address(name, 4)]


def test_localhost_is_never_forwarded():
    assert isinstance(answer(query("a.localhost"), frozenset({"localhost"})), Reply)


@pytest.mark.parametrize(
    ("name", "forwarded"),
    [
        ("cluster.local", True),
        ("kube-dns.kube-system.svc.Cluster.Local.", True),
        ("_http._tcp.web.svc.cluster.local", True),
        ("evilcluster.local", False),
        ("cluster.local.evil.com", False),
        ("local", False),
    ],
)
def test_suffixes_match_whole_labels(name, forwarded):
    result = answer(query(name, "SRV"), SUFFIXES)
    assert isinstance(result, Forward) is forwarded
    if not forwarded:
        assert isinstance(result, Reply)
        assert result.event.outcome == Outcome.NODATA


def test_nothing_is_forwarded_without_suffixes():
    assert isinstance(answer(query("web.svc.cluster.local")), Reply)


def test_a_forward_sends_only_the_question_and_relays_under_the_client_id():
    client = DNSRecord(DNSHeader(id=77, rd=1), q=DNSQuestion("Web.Svc.Cluster.Local", QTYPE.A))
    client.add_ar(EDNS0(opts=[]))  # nothing but the question may travel upstream
    forward = answer(client.pack(), SUFFIXES)
    assert isinstance(forward, Forward)
    assert (forward.name, forward.qtype) == ("web.svc.cluster.local", "A")

    sent = DNSRecord.parse(forward.upstream_query(9))
    assert (sent.header.id, sent.header.rd, sent.header.qr) == (9, 1, 0)
    assert sent.questions == client.questions and sent.ar == [] and sent.rr == []

    upstream = sent.reply()
    upstream.add_answer(*RR.fromZone("web.svc.cluster.local 30 A 10.0.0.7"))
    assert forward.is_answer(upstream.pack(), 9)
    assert not forward.is_answer(upstream.pack(), 10)  # another id
    assert not forward.is_answer(sent.pack(), 9)  # not a response
    other = DNSRecord(DNSHeader(id=9, qr=1), q=DNSQuestion("other.cluster.local")).pack()
    assert not forward.is_answer(other, 9)  # another question
    assert not forward.is_answer(b"\x00\x09", 9)

    relayed = forward.relay(upstream.pack())
    record = DNSRecord.parse(relayed.data)
    assert (record.header.id, addresses(record)) == (77, ["10.0.0.7"])
    assert relayed.event.outcome == Outcome.FORWARDED

    failed = forward.servfail()
    record = DNSRecord.parse(failed.data)
    assert (record.header.id, record.header.rcode, record.header.aa) == (77, RCODE.SERVFAIL, 0)
    assert record.questions == client.questions
    assert (failed.event.name, failed.event.outcome) == ("web.svc.cluster.local", Outcome.SERVFAIL)


def formerr(data: bytes) -> DNSRecord:
    result = answer(data, SUFFIXES)
    assert isinstance(result, Reply)
    assert result.event.outcome == Outcome.FORMERR
    assert (result.event.name, result.event.qtype) == (None, None)
    record = DNSRecord.parse(result.data)
    assert (record.header.rcode, record.header.qr, record.questions) == (RCODE.FORMERR, 1, [])
    return record


def test_malformed_queries_get_formerr_under_their_id():
    two = DNSRecord(DNSHeader(id=5), questions=[DNSQuestion("a.com"), DNSQuestion("b.com")])
    assert formerr(two.pack()).header.id == 5
    assert formerr(DNSRecord(DNSHeader(id=6)).pack()).header.id == 6  # no question
    assert formerr(query("example.com", qid=7)[:-3]).header.id == 7  # cut short
    # A name that points at itself (a compression loop).
    assert formerr(query("example.com", qid=8)[:12] + b"\xc0\x0c\x00\x01\x00\x01").header.id == 8
    assert formerr(raw_query([b"caf\xc3", b"com"], qid=9)).header.id == 9  # not UTF-8
    assert formerr(raw_query([b"a" * 64, b"com"], qid=10)).header.id == 10  # label too long
    too_long = [b"a" * 63] * 3 + [b"a" * 62]  # 254 characters, 256 bytes on the wire
    assert formerr(raw_query(too_long, qid=11)).header.id == 11


def test_other_opcodes_are_not_implemented():
    result = answer(query("example.com", opcode=OPCODE.UPDATE), SUFFIXES)
    assert isinstance(result, Reply)
    record = DNSRecord.parse(result.data)
    assert (record.header.rcode, record.header.opcode) == (RCODE.NOTIMP, OPCODE.UPDATE)
    assert result.event.outcome == Outcome.NOTIMP


def test_responses_and_scraps_are_dropped():
    assert answer(query("example.com", qr=1), SUFFIXES) is None
    assert answer(b"", SUFFIXES) is None
    assert answer(b"\x12\x34\x01", SUFFIXES) is None


def test_garbage_never_raises():
    rng = random.Random(53)
    valid = query("example.com")
    for _ in range(5000):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        result = answer(bytes(data[: rng.randint(0, len(data))]), SUFFIXES)
        assert result is None or isinstance(result, Reply | Forward)
        result = answer(rng.randbytes(rng.randint(0, 64)), SUFFIXES)
        assert result is None or isinstance(result, Reply | Forward)
