"""A TCP relay for `intercept gateway`: it accepts on listening sockets it inherits (bound in
this machine's network namespace, where the clients are) and connects, from the gateway's own
namespace, to the gateway's listener there, telling it who each client is (the PROXY
protocol: the gateway's decision log names the client).

    python -I -m intercept_proxy.runtime.relay PORT FD [FD...]

Envoy bounds every connection (its timeouts, its connection limit): once Envoy's side ends, the
client's goes too, and the relay holds no more connections than it has descriptors for.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import sys
from typing import Any

CHUNK = 65536
MAX_CONNECTIONS = 8192  # relayed at once; Envoy accepts 10,000 in all


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():  # a client's half-close goes through: Envoy still answers
            writer.write_eof()


def _capacity() -> int:
    """Connections the relay may hold: two descriptors each, within its raised limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return max(1, min(MAX_CONNECTIONS, (soft - 64) // 2))


def proxy_header(client: tuple[Any, ...], server: tuple[Any, ...]) -> bytes:
    """The PROXY protocol (v1) line that tells the gateway who the client is (an address
    without its zone: `fe80::1%eth0` is no address to the protocol)."""
    family = "TCP6" if ":" in client[0] else "TCP4"
    source, destination = (a.partition("%")[0] for a in (client[0], server[0]))
    return f"PROXY {family} {source} {destination} {client[1]} {server[1]}\r\n".encode()


async def serve(listening: list[socket.socket], port: int) -> None:
    slots = asyncio.Semaphore(_capacity())

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if slots.locked():  # full: refused at once, never queued
            writer.close()
            return
        async with slots:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                writer.close()
                return
            peer, here = writer.get_extra_info("peername"), writer.get_extra_info("sockname")
            inward: asyncio.Future[Any] | None = None
            try:
                if peer is None or here is None:  # the client is gone already
                    return
                up_writer.write(proxy_header(peer, here))
                inward = asyncio.create_task(_pipe(reader, up_writer))
                await _pipe(up_reader, writer)  # Envoy's side ended: so does the client's
            finally:
                if inward is not None:
                    inward.cancel()
                    await asyncio.gather(inward, return_exceptions=True)
                up_writer.close()
                writer.close()

    servers = [await asyncio.start_server(relay, sock=s) for s in listening]
    await asyncio.gather(*(s.serve_forever() for s in servers))


def main(argv: list[str]) -> None:
    port, *fds = (int(a) for a in argv)
    asyncio.run(serve([socket.socket(fileno=fd) for fd in fds], port))


if __name__ == "__main__":
    main(sys.argv[1:])
