"""The agent's control socket: pending approvals listed, answered and watched.

A Unix socket in a directory only the agent's container mounts (in a pod: the emptyDir
`intercept-control`; locally the same volume, under the pod's directory on the host). Only the
agent's own user and root may connect: the socket is mode 600 and each peer's credentials are
checked. The workload shares the pod's network, never this file.

The protocol is one JSON object per line. The client sends one request:
- `{"op": "list"}` → `{"questions": [...]}`;
- `{"op": "answer", "id": ID, "answer": "once" | "run" | "always" | "deny"}` →
  `{"question": {...}}` or `{"error": "..."}`;
- `{"op": "watch"}` → `{"questions": [...]}`, then one `{"event": ..., "question": ...}` per
  question asked or closed, until either side closes (or `{"event": "dropped"}`: the client
  read too slowly, and may watch again).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from intercept_proxy.authz.approvals import DROPPED, ID_BYTES, Answer, ApprovalError, Approvals

# The agent's control socket in an injected pod (the injector mounts its directory).
CONTROL_DIR = "/var/run/intercept/control"
CONTROL_SOCKET = f"{CONTROL_DIR}/agent.sock"
MAX_LINE = 4096


def approver_commands() -> str:
    """The commands a cluster's approvers may run in the agent's container (the chart's one
    exception to no-exec-into-sidecars), as a regex over the words joined by spaces: list,
    allow ID [--for once|run], deny ID. Never --socket, --policy or --for always: the agent's
    files are not theirs to write."""
    question = f"[0-9a-f]{{{2 * ID_BYTES}}}"
    scopes = f"{Answer.ONCE}|{Answer.RUN}"
    return f"^intercept approvals (list|allow {question}( --for ({scopes}))?|deny {question})$"


class ControlError(Exception):
    """The agent refused a request or could not be reached; the message says why."""


def _peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


async def serve_control(path: Path, approvals: Approvals) -> asyncio.Server:
    """Serve `approvals` on a socket at `path` (replacing a stale one)."""
    path.unlink(missing_ok=True)
    allowed = {0, os.getuid()}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if _peer_uid(writer.get_extra_info("socket")) not in allowed:
                return
            line = await reader.readline()
            try:
                request = json.loads(line)
            except ValueError:
                request = None
            if not isinstance(request, dict):
                await _send(writer, {"error": "expected one JSON object on a line"})
                return
            if request.get("op") == "watch":
                await _watch(approvals, writer)
            else:
                await _send(writer, _reply(approvals, request))
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # the client went away, or sent a line too long to read
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    # Made in a directory only this user enters, mode 600, then moved into place: no moment
    # where another user could connect.
    private = Path(tempfile.mkdtemp(dir=path.parent, prefix=".control-"))
    try:
        made = private / path.name
        server = await asyncio.start_unix_server(handle, path=str(made), limit=MAX_LINE)
        made.chmod(0o600)
        made.rename(path)
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return server


def _reply(approvals: Approvals, request: dict[str, Any]) -> dict[str, Any]:
    op = request.get("op")
    if op == "list":
        return {"questions": approvals.pending()}
    if op == "answer":
        try:
            return {
                "question": approvals.answer(str(request.get("id")), str(request.get("answer")))
            }
        except (ApprovalError, ValueError) as e:
            return {"error": str(e)}
    return {"error": f"unknown op {op!r}: expected list, answer or watch"}


async def _watch(approvals: Approvals, writer: asyncio.StreamWriter) -> None:
    queue = approvals.watch()
    try:
        await _send(writer, {"questions": approvals.pending()})
        while True:
            event = await queue.get()
            await _send(writer, event)
            if event["event"] == DROPPED:
                return
    finally:
        approvals.unwatch(queue)


async def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(json.dumps(message).encode() + b"\n")
    await writer.drain()


# -- the client (blocking: the command line and the asker's thread) --------------------------


def _connect(path: Path, message: dict[str, Any], timeout: float | None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
        sock.sendall(json.dumps(message).encode() + b"\n")
    except OSError as e:
        sock.close()
        raise ControlError(f"cannot reach the agent at {path}: {e.strerror or e}") from None
    return sock


def request(path: Path, message: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """One request, its reply; ControlError for an error reply or an unreachable agent."""
    with _connect(path, message, timeout) as sock, sock.makefile("rb") as lines:
        reply = _parse(lines.readline())
    if "error" in reply:
        raise ControlError(str(reply["error"]))
    return reply


def watch(path: Path) -> Iterator[dict[str, Any]]:
    """The pending questions (`{"questions": [...]}`), then each event, until the agent stops."""
    with _connect(path, {"op": "watch"}, None) as sock, sock.makefile("rb") as lines:
        for line in lines:
            yield _parse(line)


def _parse(line: bytes) -> dict[str, Any]:
    try:
        reply = json.loads(line)
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise ControlError("the agent's reply is not a JSON object (is this its socket?)")
    return reply
