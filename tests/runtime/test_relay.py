"""The relays' word to the gateway about each client (a PROXY protocol v1 line), and the
dispatcher's choice of a relay by the client's address."""

from __future__ import annotations

import asyncio
import socket

import pytest

from intercept_proxy.runtime.relay import choose, hand_over, parse_routes, proxy_header, serve


def test_the_proxy_line_names_the_client_and_the_address_it_reached():
    assert proxy_header(("127.0.0.5", 40000), ("127.0.0.1", 3128)) == (
        b"PROXY TCP4 127.0.0.5 127.0.0.1 40000 3128\r\n"
    )
    assert proxy_header(("::1", 40001, 0, 0), ("::1", 3128, 0, 0)) == (
        b"PROXY TCP6 ::1 ::1 40001 3128\r\n"
    )
    assert proxy_header(("fe80::1%veth0", 40002, 0, 2), ("fe80::2%veth0", 3128, 0, 2)) == (
        b"PROXY TCP6 fe80::1 fe80::2 40002 3128\r\n"
    )


def test_a_client_goes_to_its_most_specific_range_else_to_the_fallback():
    routes, fallback = parse_routes(["10.0.0.0/8=5", "10.1.0.0/16=6", "fd00::/8=7", "*=4"])
    assert choose(routes, fallback, "10.1.2.3") == 6
    assert choose(routes, fallback, "10.2.0.1") == 5
    assert choose(routes, fallback, "fd00::1%veth0") == 7
    assert choose(routes, fallback, "192.0.2.1") == 4
    assert choose(routes, fallback, "::ffff:10.1.2.3") == 4  # a v6 socket's, not a v4 range's
    with pytest.raises(ValueError, match="fallback"):
        parse_routes(["10.0.0.0/8=5"])


def test_a_relay_too_busy_to_take_a_client_refuses_it_at_once():
    """Its queue full (it reads nothing): the dispatcher is told so, never waits."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs, socket.socket() as client:
        ours.setblocking(False)
        taken = 0
        while hand_over(ours, client):
            taken += 1
            assert taken < 100_000, "never full"
        assert taken > 0
    with socket.socket() as client:  # a relay gone: refused too
        assert not hand_over(ours, client)


def test_a_relay_passes_each_client_on_with_its_address_and_ends_with_the_dispatcher():
    """A connection handed over (its descriptor) reaches the gateway with the PROXY line of
    the client's own address; when the dispatcher's end closes, the relay ends."""

    async def scenario() -> bytes:
        async def gateway(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readline())  # what it was told of the client
            await writer.drain()
            writer.close()

        upstream = await asyncio.start_server(gateway, "127.0.0.1", 0)
        port = upstream.sockets[0].getsockname()[1]
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        relay = asyncio.create_task(serve(theirs, port))
        with socket.socket() as listening:
            listening.bind(("127.0.0.1", 0))
            listening.listen()
            reader, writer = await asyncio.open_connection(*listening.getsockname())
            accepted, _ = listening.accept()
            with accepted:
                assert hand_over(ours, accepted)
            told = await asyncio.wait_for(reader.readline(), 10)
            writer.close()
        ours.close()
        await asyncio.wait_for(relay, 10)  # ended with the dispatcher
        upstream.close()
        client = writer.get_extra_info("sockname")
        assert told.startswith(f"PROXY TCP4 127.0.0.1 127.0.0.1 {client[1]} ".encode())
        return told

    assert asyncio.run(scenario()).endswith(b"\r\n")
