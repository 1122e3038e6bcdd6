"""Smart-HTTP git through `git http-backend` (CGI), both bodies streamed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from pathlib import Path

from aiohttp import web

from intercept_proxy.lab.repos import git_env

GIT_HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"
_CHUNK = 64 * 1024
# /{owner}/{repo}.git/... and /{owner}/{repo}/...: git tries both spellings of a clone URL.
_REPO_PATH = re.compile(r"^/([^/]+)/([^/]+?)(?:\.git)?(/.*)$")
# Headers the CGI environment carries under their own names, or must not carry at all
# ("Proxy" would become HTTP_PROXY, which many programs take as their proxy setting).
_NOT_HTTP_VARS = frozenset({"content-type", "content-length", "proxy"})

logger = logging.getLogger(__name__)


def match_repo(path: str, repos: tuple[str, ...]) -> tuple[str, str] | None:
    """(repo, rest of the path) when `path` is inside one of `repos` ("owner/name")."""
    m = _REPO_PATH.match(path)
    if m is None:
        return None
    repo = f"{m.group(1)}/{m.group(2)}"
    return (repo, m.group(3)) if repo in repos else None


def cgi_environment(request: web.BaseRequest, project_root: Path, path_info: str) -> dict[str, str]:
    env = {
        **git_env(),
        "GIT_PROJECT_ROOT": str(project_root),
        "GIT_HTTP_EXPORT_ALL": "1",
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_PROTOCOL": f"HTTP/{request.version.major}.{request.version.minor}",
        "REQUEST_METHOD": request.method,
        "PATH_INFO": path_info,
        "QUERY_STRING": request.rel_url.raw_query_string,
        "REMOTE_ADDR": request.remote or "",
    }
    if "Content-Type" in request.headers:
        env["CONTENT_TYPE"] = request.headers["Content-Type"]
    # Without a length (a chunked body) http-backend reads to end of file, which is what we send.
    if request.content_length is not None:
        env["CONTENT_LENGTH"] = str(request.content_length)
    # HTTP_CONTENT_ENCODING tells it to gunzip; HTTP_GIT_PROTOCOL selects protocol v2.
    for name, value in request.headers.items():
        if name.lower() not in _NOT_HTTP_VARS:
            key = "HTTP_" + name.upper().replace("-", "_")
            env[key] = f"{env[key]}, {value}" if key in env else value
    return env


async def serve(
    request: web.BaseRequest, project_root: Path, repo: str, rest: str
) -> web.StreamResponse:
    env = cgi_environment(request, project_root, f"/{repo}.git{rest}")
    process = await asyncio.create_subprocess_exec(
        GIT_HTTP_BACKEND,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        # Its complaints go to the lab server's own stderr log.
    )
    assert process.stdin is not None and process.stdout is not None
    feeder = asyncio.create_task(_feed(request, process.stdin))
    try:
        response = await _response_head(process.stdout)
        if response is None:
            logger.error(
                "git http-backend answered %s %s without CGI headers", request.method, rest
            )
            return web.Response(status=502, text="git http-backend failed\n")
        await response.prepare(request)
        while chunk := await process.stdout.read(_CHUNK):
            await response.write(chunk)
        await response.write_eof()
        await process.wait()
        return response
    finally:
        # By the end of its output the backend has read all the input it wanted.
        feeder.cancel()
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        await process.wait()


async def _feed(request: web.BaseRequest, stdin: asyncio.StreamWriter) -> None:
    """Stream the request body into the CGI, then close its stdin (its end of file)."""
    try:
        async for chunk in request.content.iter_chunked(_CHUNK):
            stdin.write(chunk)
            await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the backend stopped reading; its answer says why
    finally:
        stdin.close()


async def _response_head(stdout: asyncio.StreamReader) -> web.StreamResponse | None:
    """Turn the CGI header block (ending in an empty line) into a response to send."""
    status, reason = 200, "OK"
    headers: list[tuple[str, str]] = []
    while True:
        line = (await stdout.readline()).decode("latin-1").rstrip("\r\n")
        if not line:
            break
        name, _, value = line.partition(":")
        value = value.strip()
        if name.lower() == "status":
            code, _, reason = value.partition(" ")
            status = int(code)
        else:
            headers.append((name, value))
    if not headers and status == 200:
        return None
    response = web.StreamResponse(status=status, reason=reason or None)
    for name, value in headers:
        response.headers.add(name, value)
    return response
