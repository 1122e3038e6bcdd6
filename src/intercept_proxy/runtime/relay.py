"""The TCP relays of `intercept gateway`. The dispatcher accepts on the listening sockets it
inherits (bound in this machine's network namespace, where the clients are) and hands each
connection, by its client's address, to the relay of the gateway that serves the client's
policy (a descriptor passed over a Unix socket: no address to reach, nothing to forge). That
relay, in its gateway's network namespace, connects to the gateway's listener there and tells
it who the client is (the PROXY protocol: the gateway matches it against its clients, its
decision log names it).

    python -I -m intercept_proxy.runtime.relay dispatch LISTEN_FD[,FD...] [CIDR=CHANNEL_FD...] \
        *=CHANNEL_FD
    python -I -m intercept_proxy.runtime.relay relay PORT CHANNEL_FD

Envoy bounds every connection (its timeouts, its connection limit): once Envoy's side ends, the
client's goes too, and a relay holds no more connections than it has descriptors for.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import ipaddress
import resource
import socket
import sys
from collections.abc import Sequence
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


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def choose(routes: Sequence[tuple[Network, int]], fallback: int, address: str) -> int:
    """The channel of the client at `address`: its most specific range's, else `fallback`."""
    client = ipaddress.ip_address(address.partition("%")[0])
    best: tuple[int, int] | None = None
    for network, channel in routes:
        if client in network and (best is None or network.prefixlen > best[0]):
            best = (network.prefixlen, channel)
    return fallback if best is None else best[1]


def hand_over(channel: socket.socket, client: socket.socket) -> bool:
    """`client` passed to the relay at the other end of `channel`, never waiting: False when
    its queue is full (or it is gone), and the caller refuses the client."""
    rights = array.array("i", [client.fileno()])
    try:
        channel.sendmsg(
            [b"c"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)], socket.MSG_DONTWAIT
        )
    except OSError:
        return False
    return True


# accept(2)'s errors that end one connection, not the listener; the first four are a shortage,
# which a second may ease.
SHORTAGE = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
PASSING = (
    errno.ECONNABORTED, errno.EPROTO, errno.ENETDOWN, errno.ENETUNREACH, errno.EHOSTDOWN,
    errno.EHOSTUNREACH, errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EPERM, errno.ENONET,
)  # fmt: skip


async def dispatch(
    listening: list[socket.socket], routes: Sequence[tuple[Network, int]], fallback: int
) -> None:
    """Hand each accepted connection to its client's relay, which owns it from then on."""
    loop = asyncio.get_running_loop()
    channels = {fd: socket.socket(fileno=fd) for fd in {fallback, *(c for _, c in routes)}}
    for sock in (*listening, *channels.values()):
        sock.setblocking(False)

    async def accept(server: socket.socket) -> None:
        while True:
            try:
                client, peer = await loop.sock_accept(server)
            except OSError as e:
                if e.errno not in (*SHORTAGE, *PASSING):
                    raise
                await asyncio.sleep(1 if e.errno in SHORTAGE else 0)
                continue
            with client:  # ours closed: the relay's copy, if it took one, is the client's
                hand_over(channels[choose(routes, fallback, peer[0])], client)

    await asyncio.gather(*(accept(s) for s in listening))


async def serve(channel: socket.socket, port: int) -> None:
    """Relay each connection the dispatcher hands over `channel` to the gateway at `port`."""
    slots = asyncio.Semaphore(_capacity())
    loop = asyncio.get_running_loop()
    handed: asyncio.Queue[socket.socket | None] = asyncio.Queue()

    def receive() -> None:
        """Every connection handed over so far; on the dispatcher's end (or any failure of
        the channel), the relay's: no new client can come."""
        while True:
            try:
                message, fds, flags, _ = socket.recv_fds(channel, 1, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                print(f"relay: the dispatcher's channel failed: {e}", file=sys.stderr)
                message, fds, flags = b"", [], 0
            for fd in fds:
                handed.put_nowait(socket.socket(fileno=fd))
            if flags & socket.MSG_CTRUNC:  # the kernel closed it: no descriptor left for it
                print("relay: a client refused: out of descriptors", file=sys.stderr)
            if not message:
                loop.remove_reader(channel)
                handed.put_nowait(None)
                return

    async def relay(client: socket.socket) -> None:
        reader, writer = await asyncio.open_connection(sock=client)
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

    channel.setblocking(False)
    loop.add_reader(channel, receive)
    tasks: set[asyncio.Task[None]] = set()
    while (client := await handed.get()) is not None:
        task = asyncio.create_task(relay(client))
        tasks.add(task)  # held until done: the loop keeps weak references only
        task.add_done_callback(tasks.discard)


def parse_routes(texts: Sequence[str]) -> tuple[list[tuple[Network, int]], int]:
    """`CIDR=FD ... *=FD`: the clients' ranges and the fallback's channel."""
    routes, fallback = [], None
    for text in texts:
        target, _, fd = text.partition("=")
        if target == "*":
            fallback = int(fd)
        else:
            routes.append((ipaddress.ip_network(target), int(fd)))
    if fallback is None:
        raise ValueError("no fallback channel (*=FD)")
    return routes, fallback


def main(argv: list[str]) -> None:
    match argv:
        case ["dispatch", listening, *routes]:
            sockets = [socket.socket(fileno=int(fd)) for fd in listening.split(",")]
            asyncio.run(dispatch(sockets, *parse_routes(routes)))
        case ["relay", port, channel]:
            asyncio.run(serve(socket.socket(fileno=int(channel)), int(port)))
        case _:
            raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
