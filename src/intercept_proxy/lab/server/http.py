"""HTTP(S) for lab hosts: a JSON echo of every request, a few special paths, and git."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from intercept_proxy.lab.config import ServedHost
from intercept_proxy.lab.receipts import ReceiptLog
from intercept_proxy.lab.server import git
from intercept_proxy.lab.server.site import Site
from intercept_proxy.lab.server.tls import sni_of

MAX_DELAY_SECONDS = 600
MAX_BYTES = 1 << 30
MAX_STREAM_EVENTS = 3600
_CHUNK = 64 * 1024
_DELAY = re.compile(r"^/delay/(\d+(?:\.\d+)?)$")
_BYTES = re.compile(r"^/bytes/(\d+)$")
_STREAM = re.compile(r"^/stream/(\d+)$")
# /status/CODE: the echo with that status (an upstream's own errors).
_STATUS = re.compile(r"^/status/([2-5][0-9][0-9])$")
# /redirect/HOST/PATH: a redirect to that host, same scheme.
_REDIRECT = re.compile(r"^/redirect/([a-z0-9.-]+)(/.*)?$")


def host_header_name(value: str | None) -> str | None:
    """The name in a Host header (port dropped); None for a missing header or an IP literal."""
    if not value or value.startswith("["):
        return None
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class HttpSite:
    """The HTTP or HTTPS listener of one site."""

    def __init__(self, site: Site, port: int, tls: bool, log: ReceiptLog, repos_root: Path) -> None:
        self._site = site
        self._port = port
        self._tls = tls
        self._log = log
        self._repos_root = repos_root

    def server(self) -> web.Server:
        # Bodies reach handlers as sent: git's gzip bodies go to http-backend still compressed,
        # and body_bytes counts what was on the wire.
        return web.Server(self._handle, auto_decompress=False, access_log=None)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        sni = sni_of(request.transport) if self._tls else None
        served = self._site.pick(
            sni if self._tls else host_header_name(request.headers.get("Host"))
        )
        self._log.record(
            "https" if self._tls else "http",
            self._site.address,
            self._port,
            host=served.host.name,
            sni=sni,
            method=request.method,
            path=request.raw_path,
        )
        repo = git.match_repo(request.path, served.host.git_repos)
        if repo is not None:
            return await git.serve(request, self._repos_root / served.host.name, *repo)
        if request.path == "/ws":
            ws = web.WebSocketResponse()
            if ws.can_prepare(request).ok:
                return await _websocket_echo(request, ws)
        body_bytes = await _drain(request)
        if m := _BYTES.match(request.path):
            size = int(m.group(1))
            _check_limit(size, MAX_BYTES, "size")
            return await _send_bytes(request, size)
        if m := _STREAM.match(request.path):
            count = int(m.group(1))
            _check_limit(count, MAX_STREAM_EVENTS, "event count")
            return await _send_events(request, served, count)
        if m := _REDIRECT.match(request.path):
            scheme = "https" if self._tls else "http"
            raise web.HTTPFound(f"{scheme}://{m.group(1)}{m.group(2) or '/'}")
        if m := _DELAY.match(request.path):
            seconds = float(m.group(1))
            _check_limit(seconds, MAX_DELAY_SECONDS, "delay")
            await asyncio.sleep(seconds)
        status = int(m.group(1)) if (m := _STATUS.match(request.path)) else 200
        return web.json_response(_echo(request, served, sni, body_bytes), status=status)


def _echo(
    request: web.BaseRequest, served: ServedHost, sni: str | None, body_bytes: int
) -> dict[str, Any]:
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return {
        "server": served.host.name,
        "host": request.headers.get("Host"),
        "sni": sni,
        "method": request.method,
        "path": request.raw_path,
        "headers": headers,
        "body_bytes": body_bytes,
    }


async def _drain(request: web.BaseRequest) -> int:
    """Read the whole body without keeping it; its length in bytes."""
    total = 0
    async for chunk in request.content.iter_chunked(_CHUNK):
        total += len(chunk)
    return total


def _check_limit(value: float, limit: int, what: str) -> None:
    if value > limit:
        raise web.HTTPBadRequest(text=f"{what} is limited to {limit}\n")


async def _send_bytes(request: web.BaseRequest, size: int) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = size
    await response.prepare(request)
    block = b"x" * _CHUNK
    for start in range(0, size, _CHUNK):
        await response.write(block[: min(_CHUNK, size - start)])
    await response.write_eof()
    return response


async def _send_events(
    request: web.BaseRequest, served: ServedHost, count: int
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    for index in range(count):
        if index:
            await asyncio.sleep(1)
        data = json.dumps({"event": index + 1, "of": count, "server": served.host.name})
        # Each write goes to the socket at once: nothing buffers a chunk of a streamed body.
        await response.write(f"id: {index + 1}\ndata: {data}\n\n".encode())
    await response.write_eof()
    return response


async def _websocket_echo(
    request: web.BaseRequest, ws: web.WebSocketResponse
) -> web.WebSocketResponse:
    await ws.prepare(request)
    async for message in ws:
        if message.type == WSMsgType.TEXT:
            await ws.send_str(message.data)
        elif message.type == WSMsgType.BINARY:
            await ws.send_bytes(message.data)
    return ws
