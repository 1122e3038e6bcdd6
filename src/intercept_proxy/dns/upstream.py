"""Asking the real resolver about a configured suffix.

Each query gets a fresh socket (a new source port) and a random id, goes over the transport the
client used (a truncated UDP answer makes the client retry over TCP, and so do we), and only an
answer to that very question is relayed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
from collections.abc import Callable, Sequence
from functools import partial

from intercept_proxy.dns.answer import Forward, Reply

DNS_PORT = 53

Upstream = tuple[str, int]


def parse_upstream(text: str) -> Upstream:
    """`ADDRESS`, `IPV4:PORT` or `[IPV6]:PORT` as (address, port); ValueError otherwise."""
    host, port = text, DNS_PORT
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r} is not ADDRESS, IPV4:PORT or [IPV6]:PORT")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"{text!r}: port {port} is out of range")
    return str(ipaddress.ip_address(host)), port


async def ask(
    forward: Forward, upstreams: Sequence[Upstream], *, tcp: bool, timeout: float
) -> Reply:
    """The first upstream answer, giving each resolver in turn up to `timeout` seconds;
    SERVFAIL when none answers."""
    for upstream in upstreams:
        query_id = secrets.randbits(16)
        query = forward.upstream_query(query_id)
        try:
            async with asyncio.timeout(timeout):
                if tcp:
                    data = await _exchange_tcp(upstream, query)
                else:
                    data = await _exchange_udp(
                        upstream, query, partial(forward.is_answer, query_id=query_id)
                    )
        except (OSError, EOFError, TimeoutError):
            continue
        if forward.is_answer(data, query_id):
            return forward.relay(data)
    return forward.servfail()


async def _exchange_tcp(upstream: Upstream, query: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(*upstream)
    try:
        writer.write(len(query).to_bytes(2, "big") + query)
        await writer.drain()
        size = int.from_bytes(await reader.readexactly(2), "big")
        data = await reader.readexactly(size)
    finally:
        writer.close()
    return data


async def _exchange_udp(
    upstream: Upstream, query: bytes, is_answer: Callable[[bytes], bool]
) -> bytes:
    """The first datagram that `is_answer`: others (stray or forged) are ignored, not fatal."""
    loop = asyncio.get_running_loop()
    # A connected socket: the kernel drops datagrams from any other address.
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _Exchange(is_answer), remote_addr=upstream
    )
    try:
        transport.sendto(query)
        return await protocol.answer
    finally:
        transport.close()


class _Exchange(asyncio.DatagramProtocol):
    def __init__(self, is_answer: Callable[[bytes], bool]) -> None:
        self._is_answer = is_answer
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if not self.answer.done() and self._is_answer(data):
            self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP unreachable: no resolver there, try the next one now rather than at the timeout.
        if not self.answer.done():
            self.answer.set_exception(exc)
