"""Liveness and readiness, and metrics, over HTTP: two servers on two ports, so that the probes'
port may be open to the kubelet while the metrics stay closed to whoever else can route to the
pod.

Their clients are the kubelet and a Prometheus scraper asking for a few fixed paths, so the
server is asyncio's own: one GET or HEAD per connection, its head bounded in size and time,
answered with a length and closed. (aiohttp's server cost the agent 11 MB of memory for this.)
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

# An answer: status, content type, body.
Answer = tuple[int, str, bytes]
Handler = Callable[[], Awaitable[Answer]]

MAX_HEAD = 8192  # the request line and headers
TIMEOUT = 5.0  # to send the head, and to take the answer
_JSON = "application/json"
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def health_routes(readiness: Callable[[], dict[str, Any]]) -> dict[str, Handler]:
    """`readiness()` returns a JSON-able status whose "ready" key decides 200 or 503."""

    async def live() -> Answer:
        return 200, _JSON, b'{"live": true}'

    async def ready() -> Answer:
        status = readiness()
        return (200 if status["ready"] else 503), _JSON, json.dumps(status).encode()

    return {"/healthz": live, "/readyz": ready}


def metrics_routes(
    registry: CollectorRegistry, before_scrape: Callable[[], Awaitable[None]] | None = None
) -> dict[str, Handler]:
    """`/metrics`; `before_scrape` gathers what the registry reports from elsewhere (Envoy)."""

    async def metrics() -> Answer:
        if before_scrape is not None:
            await before_scrape()
        return 200, CONTENT_TYPE_LATEST, generate_latest(registry)

    return {"/metrics": metrics}


async def _answer(routes: Mapping[str, Handler], head: bytes) -> Answer:
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return 400, _JSON, b'{"error": "not an HTTP/1 request line"}'
    method, target = parts[0], parts[1]
    handler = routes.get(target.split(b"?", 1)[0].decode("latin-1"))
    if handler is None:
        return 404, _JSON, b'{"error": "no such path"}'
    if method not in (b"GET", b"HEAD"):
        return 405, _JSON, b'{"error": "GET or HEAD only"}'
    try:
        return await handler()
    except Exception:  # one failed answer, not a failed server
        log.exception("answering %s", target.decode("latin-1"))
        return 500, _JSON, b'{"error": "internal error"}'


async def _serve_one(
    routes: Mapping[str, Handler], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        except asyncio.LimitOverrunError:
            head = b""
            status, content_type, body = 431, _JSON, b'{"error": "request head too large"}'
        else:
            status, content_type, body = await _answer(routes, head)
        writer.write(
            f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + (b"" if head.startswith(b"HEAD ") else body)
        )
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), TIMEOUT)
    except (asyncio.IncompleteReadError, TimeoutError, ConnectionError, asyncio.CancelledError):
        # The client left, stalled or stopped reading, or the agent is stopping: drop the
        # connection with what is unsent. (A cancelled handler would be logged as an error.)
        writer.transport.abort()


async def serve(
    routes: Mapping[str, Handler], addresses: Iterable[str], port: int
) -> list[asyncio.Server]:
    """Listen on `port` of each address (an IPv6 one the host lacks is skipped with a warning)."""
    servers = []
    for address in addresses:
        try:
            servers.append(
                await asyncio.start_server(
                    lambda r, w: _serve_one(routes, r, w), address, port, limit=MAX_HEAD
                )
            )
        except OSError as e:
            if ":" not in address:
                raise
            log.warning("%d on IPv4 only (%s: %s)", port, address, e)  # no IPv6 here
    return servers
