"""A TCP relay for `intercept gateway`: it accepts on listening sockets it inherits (bound in
this machine's network namespace, where the clients are) and connects, from the gateway's own
namespace, to the gateway's listener there.

    python -m intercept_proxy.runtime.relay PORT FD [FD...]
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys

CHUNK = 65536


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():  # a half-close goes through: the other way may still talk
            writer.write_eof()


async def serve(listening: list[socket.socket], port: int) -> None:
    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            up_writer.close()
            writer.close()

    servers = [await asyncio.start_server(relay, sock=s) for s in listening]
    await asyncio.gather(*(s.serve_forever() for s in servers))


def main(argv: list[str]) -> None:
    port, *fds = (int(a) for a in argv)
    asyncio.run(serve([socket.socket(fileno=fd) for fd in fds], port))


if __name__ == "__main__":
    main(sys.argv[1:])
