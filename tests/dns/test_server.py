"""The sinkhole on real loopback sockets: UDP, TCP, forwarding to a fake resolver, limits."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest
from dnslib import EDNS0, QTYPE, RCODE, RR, DNSHeader, DNSQuestion, DNSRecord

from intercept_proxy.dns import DnsSinkhole, Outcome, QueryEvent, synthetic_address

LOOPBACKS = ("127.0.0.1", "::1")
SERVICE = "kube-dns.kube-system.svc.cluster.local"
SERVICE_ADDRESS = "10.96.0.10"


def run(scenario: Coroutine[Any, Any, Any]) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(10):
            return await scenario

    return asyncio.run(bounded())


def free_port() -> int:
    """A port free for UDP and TCP on both loopback addresses."""
    for _ in range(100):
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
            port = probe.getsockname()[1]
        try:
            for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    with socket.socket(family, kind) as s:
                        s.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


def query(name: str, qtype: str = "A", qid: int = 1234) -> bytes:
    record = DNSRecord(DNSHeader(id=qid, rd=1), q=DNSQuestion(name, getattr(QTYPE, qtype)))
    record.add_ar(EDNS0(udp_len=1232))  # what many stub resolvers add
    return record.pack()


async def udp_ask(host: str, port: int, data: bytes) -> DNSRecord:
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[bytes] = loop.create_future()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            if not reply.done():
                reply.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=(host, port))
    try:
        transport.sendto(data)
        async with asyncio.timeout(3):
            return DNSRecord.parse(await reply)
    finally:
        transport.close()


async def tcp_send(writer: asyncio.StreamWriter, *messages: bytes) -> None:
    writer.write(b"".join(len(m).to_bytes(2, "big") + m for m in messages))
    await writer.drain()


async def tcp_read(reader: asyncio.StreamReader) -> DNSRecord:
    async with asyncio.timeout(3):
        size = int.from_bytes(await reader.readexactly(2), "big")
        return DNSRecord.parse(await reader.readexactly(size))


async def tcp_ask(host: str, port: int, data: bytes) -> DNSRecord:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        await tcp_send(writer, data)
        return await tcp_read(reader)
    finally:
        writer.close()


async def ask(transport: str, host: str, port: int, data: bytes) -> DNSRecord:
    return await (udp_ask if transport == "udp" else tcp_ask)(host, port, data)


def addresses(record: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in record.rr]


class FakeResolver:
    """The real resolver's stand-in on 127.0.0.1, UDP and TCP: records every query it gets and
    answers SERVICE_ADDRESS, unless silent. `stray_first` sends a reply with a wrong id first."""

    def __init__(self, *, silent: bool = False, stray_first: bool = False) -> None:
        self.silent = silent
        self.stray_first = stray_first
        self.received: list[tuple[str, DNSRecord]] = []
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"

    def _answer(self, transport: str, data: bytes) -> bytes | None:
        query = DNSRecord.parse(data)
        self.received.append((transport, query))
        if self.silent:
            return None
        reply = query.reply()
        reply.add_answer(*RR.fromZone(f"{query.q.qname} 30 A {SERVICE_ADDRESS}"))
        return reply.pack()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[FakeResolver]:
        fake = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: Any) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: Any) -> None:
                reply = fake._answer("udp", data)
                if reply is not None:
                    if fake.stray_first:
                        self.transport.sendto(bytes([reply[0] ^ 1]) + reply[1:], addr)
                    self.transport.sendto(reply, addr)

        async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            size = int.from_bytes(await reader.readexactly(2), "big")
            reply = fake._answer("tcp", await reader.readexactly(size))
            if reply is None:
                await reader.read()  # hold the connection open without answering
            else:
                await tcp_send(writer, reply)
            writer.close()

        loop = asyncio.get_running_loop()
        udp, _ = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", self.port))
        server = await asyncio.start_server(tcp, "127.0.0.1", self.port)
        try:
            yield self
        finally:
            udp.close()
            server.close()

    def names(self) -> list[str]:
        return [str(q.q.qname) for _, q in self.received]


@contextlib.asynccontextmanager
async def sinkhole(**options: Any) -> AsyncIterator[tuple[int, list[QueryEvent]]]:
    events: list[QueryEvent] = []
    server = DnsSinkhole(on_query=events.append, **options)
    port = free_port()
    await server.start(LOOPBACKS, port)
    try:
        yield port, events
    finally:
        await server.close()


@pytest.mark.parametrize("host", LOOPBACKS)
def test_udp_and_tcp_answers_on_both_loopbacks(host):
    async def scenario() -> None:
        async with sinkhole(upstream=[]) as (port, events):
            record = await udp_ask(host, port, query("pypi.org", qid=1))
            assert (record.header.id, addresses(record)) == (1, [synthetic_address("pypi.org", 4)])

            # Several queries on one connection: one at a time, then pipelined.
            reader, writer = await asyncio.open_connection(host, port)
            await tcp_send(writer, query("pypi.org", "AAAA", qid=2))
            record = await tcp_read(reader)
            assert (record.header.id, addresses(record)) == (2, [synthetic_address("pypi.org", 6)])
            await tcp_send(writer, query("example.com", "MX", qid=3), query("1.2.3.4", qid=4))
            nodata, nxdomain = await tcp_read(reader), await tcp_read(reader)
            writer.close()
            assert (nodata.header.id, nodata.header.rcode, nodata.rr) == (3, RCODE.NOERROR, [])
            assert (nxdomain.header.id, nxdomain.header.rcode) == (4, RCODE.NXDOMAIN)
            assert events == [
                QueryEvent("pypi.org", "A", Outcome.SYNTHETIC),
                QueryEvent("pypi.org", "AAAA", Outcome.SYNTHETIC),
                QueryEvent("example.com", "MX", Outcome.NODATA),
                QueryEvent("1.2.3.4", "A", Outcome.NXDOMAIN),
            ]

    run(scenario())


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_only_configured_suffixes_reach_the_resolver(transport):
    async def scenario() -> None:
        async with (
            FakeResolver().serving() as fake,
            sinkhole(forward_suffixes=["cluster.local"], upstream=[fake.address]) as (port, events),
        ):
            for name in ["example.com", "evilcluster.local", "cluster.local.evil.com"]:
                record = await ask(transport, "127.0.0.1", port, query(name, "TXT"))
                assert (record.header.rcode, record.rr) == (RCODE.NOERROR, [])
            record = await ask(transport, "::1", port, query(SERVICE.upper(), qid=99))

            assert record.header.id == 99
            assert addresses(record) == [SERVICE_ADDRESS]
            assert str(record.q.qname) == SERVICE.upper() + "."
            assert events[-1] == QueryEvent(SERVICE, "A", Outcome.FORWARDED)
            # The resolver saw that one question, over the client's transport, and nothing else
            # of the client's packet (its EDNS record stayed behind).
            [(seen_transport, seen)] = fake.received
            assert (seen_transport, fake.names(), seen.ar) == (
                transport,
                [SERVICE.upper() + "."],
                [],
            )

    run(scenario())


def test_a_dead_resolver_is_skipped_and_stray_answers_ignored():
    async def scenario() -> None:
        dead = f"127.0.0.1:{free_port()}"
        async with (
            FakeResolver(stray_first=True).serving() as fake,
            sinkhole(forward_suffixes=["svc.cluster.local"], upstream=[dead, fake.address]) as (
                port,
                events,
            ),
        ):
            started = time.monotonic()
            record = await udp_ask("127.0.0.1", port, query(SERVICE, qid=7))
            # Refused at once (ICMP), not after the two-second timeout.
            assert time.monotonic() - started < 1
            assert (record.header.id, addresses(record)) == (7, [SERVICE_ADDRESS])
            assert events == [QueryEvent(SERVICE, "A", Outcome.FORWARDED)]

    run(scenario())


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_a_silent_resolver_gives_servfail(transport):
    async def scenario() -> None:
        async with (
            FakeResolver(silent=True).serving() as fake,
            sinkhole(
                forward_suffixes=["cluster.local"], upstream=[fake.address], forward_timeout=0.2
            ) as (port, events),
        ):
            started = time.monotonic()
            record = await ask(transport, "127.0.0.1", port, query(SERVICE, qid=5))
            assert 0.2 <= time.monotonic() - started < 1.5
            assert (record.header.id, record.header.rcode) == (5, RCODE.SERVFAIL)
            assert str(record.q.qname) == SERVICE + "."
            assert events == [QueryEvent(SERVICE, "A", Outcome.SERVFAIL)]
            assert fake.names() == [SERVICE + "."]

    run(scenario())


def test_forwards_beyond_the_limit_fail_at_once():
    async def scenario() -> None:
        async with (
            FakeResolver(silent=True).serving() as fake,
            sinkhole(
                forward_suffixes=["cluster.local"],
                upstream=[fake.address],
                forward_timeout=0.6,
                max_forwards=1,
            ) as (port, _),
        ):
            first = asyncio.create_task(udp_ask("127.0.0.1", port, query(SERVICE, qid=1)))
            await asyncio.sleep(0.1)
            started = time.monotonic()
            second = await udp_ask("127.0.0.1", port, query(SERVICE, qid=2))
            assert time.monotonic() - started < 0.3
            assert (second.header.id, second.header.rcode) == (2, RCODE.SERVFAIL)
            assert not first.done()
            assert (await first).header.rcode == RCODE.SERVFAIL
            assert len(fake.received) == 1
            fake.silent = False  # the slot is free again once the first forward gave up
            third = await udp_ask("127.0.0.1", port, query(SERVICE, qid=3))
            assert addresses(third) == [SERVICE_ADDRESS]

    run(scenario())


def test_tcp_connection_limit_and_idle_timeout():
    async def scenario() -> None:
        async with sinkhole(upstream=[], max_connections=1, idle_timeout=0.3) as (port, _):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await tcp_send(writer, query("pypi.org"))
            assert (await tcp_read(reader)).rr  # this connection holds the only place

            refused_reader, refused = await asyncio.open_connection("127.0.0.1", port)
            async with asyncio.timeout(1):
                assert await refused_reader.read() == b""
            refused.close()

            started = time.monotonic()
            async with asyncio.timeout(2):
                assert await reader.read() == b""  # closed once idle
            assert time.monotonic() - started >= 0.2
            writer.close()
            assert (await tcp_ask("127.0.0.1", port, query("pypi.org"))).rr  # place is free

    run(scenario())


def test_malformed_messages_do_not_stop_the_server():
    async def scenario() -> None:
        async with sinkhole(upstream=[]) as (port, events):
            no_question = DNSRecord(DNSHeader(id=8)).pack()
            assert (await udp_ask("127.0.0.1", port, no_question)).header.rcode == RCODE.FORMERR
            for scrap in (b"", b"\x01", bytes(range(11))):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.sendto(scrap, ("127.0.0.1", port))
                sock.close()
            assert (await udp_ask("127.0.0.1", port, query("pypi.org"))).rr

            reader, writer = await asyncio.open_connection("::1", port)
            await tcp_send(writer, no_question, query("pypi.org", qid=9))
            assert (await tcp_read(reader)).header.rcode == RCODE.FORMERR
            assert (await tcp_read(reader)).header.id == 9
            await tcp_send(writer, b"")  # not a query: the connection ends
            async with asyncio.timeout(1):
                assert await reader.read() == b""
            writer.close()
            assert [e.outcome for e in events] == [
                Outcome.FORMERR,
                Outcome.SYNTHETIC,
                Outcome.FORMERR,
                Outcome.SYNTHETIC,
            ]

    run(scenario())


def test_close_cancels_forwards_and_frees_the_ports():
    async def scenario() -> None:
        async with FakeResolver(silent=True).serving() as fake:
            server = DnsSinkhole(["cluster.local"], [fake.address], forward_timeout=5)
            port = free_port()
            await server.start(LOOPBACKS, port)
            pending = asyncio.create_task(udp_ask("127.0.0.1", port, query(SERVICE)))
            reader, writer = await asyncio.open_connection("::1", port)
            while not fake.received:
                await asyncio.sleep(0.01)
            started = time.monotonic()
            await server.close()
            assert time.monotonic() - started < 1
            async with asyncio.timeout(1):
                assert await reader.read() == b""
            writer.close()
            pending.cancel()
            again = DnsSinkhole(upstream=[])  # a restart gets the same port at once
            await again.start(LOOPBACKS, port)
            assert (await udp_ask("::1", port, query("pypi.org"))).rr
            await again.close()

    run(scenario())


def test_start_fails_whole():
    async def scenario() -> None:
        port = free_port()
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as taken:
            taken.bind(("::1", port))
            server = DnsSinkhole(upstream=[])
            with pytest.raises(OSError):
                await server.start(LOOPBACKS, port)
        # The 127.0.0.1 listeners opened before the failure were closed again.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", port))

    run(scenario())
