"""The sinkhole's UDP and TCP listeners, in the agent's event loop.

Memory is bounded: at most `max_connections` TCP clients and `max_forwards` queries waiting on
the real resolver (a query beyond that gets SERVFAIL at once, never a queue), one message per
connection at a time, and every TCP read or write under the idle timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import cast

from intercept_proxy import resolvconf
from intercept_proxy.dns.answer import Forward, QueryEvent, Reply, answer
from intercept_proxy.dns.upstream import ask, parse_upstream
from intercept_proxy.hostnames import normalize_hostname


class DnsSinkhole:
    """Answers every query itself, except names under `forward_suffixes` (whole labels), which
    go to `upstream` (ADDRESS, IPV4:PORT or [IPV6]:PORT; default: the nameservers of
    /etc/resolv.conf, read now). `on_query` hears of every answered query.

    Raises HostnameError for a suffix that is not a host name (the root would forward
    everything), ValueError for a bad upstream or for suffixes without any upstream.
    """

    def __init__(
        self,
        forward_suffixes: Sequence[str] = (),
        upstream: Sequence[str] | None = None,
        on_query: Callable[[QueryEvent], None] | None = None,
        *,
        forward_timeout: float = 2.0,
        idle_timeout: float = 10.0,
        max_connections: int = 64,
        max_forwards: int = 64,
    ) -> None:
        self._forward = frozenset(normalize_hostname(s) for s in forward_suffixes)
        servers = resolvconf.nameservers() if upstream is None else upstream
        self._upstreams = [parse_upstream(s) for s in servers]
        if self._forward and not self._upstreams:
            raise ValueError("forward suffixes are configured but there is no upstream resolver")
        self._on_query = on_query
        self._forward_timeout = forward_timeout
        self._idle_timeout = idle_timeout
        self._max_connections = max_connections
        self._max_forwards = max_forwards
        self._forwarding = 0
        self._servers: list[asyncio.Server] = []
        self._listeners: list[_UdpListener] = []
        self._tasks: set[asyncio.Task[None]] = set()  # TCP connections and UDP forwards
        self._connections = 0
        self._closing = False

    async def start(self, addresses: Sequence[str], port: int) -> None:
        """Listen on UDP and TCP `port` of every address (once per sinkhole); on failure nothing
        stays open."""
        loop = asyncio.get_running_loop()
        try:
            for address in addresses:
                _, listener = await loop.create_datagram_endpoint(
                    lambda: _UdpListener(self._datagram), local_addr=(address, port)
                )
                self._listeners.append(listener)
                self._servers.append(await asyncio.start_server(self._serve_tcp, address, port))
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop listening, end every connection and forward; return once the ports are free."""
        self._closing = True  # a connection accepted just now must not outlive close()
        for server in self._servers:
            server.close()
        for listener in self._listeners:
            await listener.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        self._listeners.clear()

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _report(self, reply: Reply) -> None:
        if self._on_query is not None:
            self._on_query(reply.event)

    def _forward_slot(self) -> bool:
        if self._forwarding >= self._max_forwards:
            return False
        self._forwarding += 1
        return True

    async def _ask(self, forward: Forward, *, tcp: bool) -> Reply:
        """Ask upstream in a slot taken by _forward_slot, and give the slot back."""
        try:
            return await ask(forward, self._upstreams, tcp=tcp, timeout=self._forward_timeout)
        finally:
            self._forwarding -= 1

    def _datagram(self, data: bytes, send: Callable[[bytes], None]) -> None:
        result = answer(data, self._forward)
        if isinstance(result, Forward):
            if self._forward_slot():
                self._track(asyncio.create_task(self._relay_datagram(result, send)))
                return
            result = result.servfail()
        if result is not None:
            send(result.data)
            self._report(result)

    async def _relay_datagram(self, forward: Forward, send: Callable[[bytes], None]) -> None:
        reply = await self._ask(forward, tcp=False)
        send(reply.data)
        self._report(reply)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closing or self._connections >= self._max_connections:
            writer.close()
            return
        self._connections += 1
        self._track(cast(asyncio.Task[None], asyncio.current_task()))
        try:
            while True:
                async with asyncio.timeout(self._idle_timeout):
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    data = await reader.readexactly(size)
                result = answer(data, self._forward)
                if isinstance(result, Forward):
                    if self._forward_slot():
                        result = await self._ask(result, tcp=True)
                    else:
                        result = result.servfail()
                if result is None:
                    return  # not a query: nothing more worth reading on this connection
                writer.write(len(result.data).to_bytes(2, "big") + result.data)
                async with asyncio.timeout(self._idle_timeout):
                    await writer.drain()
                self._report(result)
        except (EOFError, OSError, TimeoutError):
            return
        finally:
            self._connections -= 1
            writer.close()


class _UdpListener(asyncio.DatagramProtocol):
    def __init__(self, handle: Callable[[bytes, Callable[[bytes], None]], None]) -> None:
        self._handle = handle
        self._transport: asyncio.DatagramTransport | None = None
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector transport is a datagram transport without declaring so (Python 3.11).
        self._transport = cast(asyncio.DatagramTransport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed.set_result(None)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        transport = self._transport
        if transport is not None:
            self._handle(data, lambda reply: transport.sendto(reply, addr))

    async def close(self) -> None:
        """Close the socket, and return once it is (the port is free again)."""
        if self._transport is not None:
            self._transport.close()
            await self._closed
