"""Container logs: kept per container in the state dir (one line per line the container wrote,
with its time), and served over HTTPS at the node's endpoint the way the API server asks a
kubelet for them (`kubectl logs`): GET /containerLogs/NAMESPACE/POD/CONTAINER with follow,
tailLines, limitBytes, timestamps, sinceSeconds and sinceTime. Only the API server's client
certificate (issued by the cluster CA) is served.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import shutil
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

log = logging.getLogger(__name__)

FOLLOW_POLL = 0.2


def timestamp() -> str:
    ns = time.time_ns()
    stamp = dt.datetime.fromtimestamp(ns // 1_000_000_000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ns % 1_000_000_000:09d}Z"


def _parse_time(text: str) -> float:
    """Seconds since the epoch of an RFC 3339 time (nanoseconds cut to microseconds)."""
    text = text.strip()
    if "." in text:
        head, frac = text.split(".", 1)
        frac = frac.rstrip("Z")[:6]
        text = f"{head}.{frac}+00:00"
    else:
        text = text.replace("Z", "+00:00")
    return dt.datetime.fromisoformat(text).timestamp()


class PodLogs:
    """The log files of one pod (by UID)."""

    def __init__(self, directory: Path, namespace: str, name: str) -> None:
        self.dir = directory
        self.namespace = namespace
        self.name = name
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self.known: set[str] = set()  # containers of the pod
        self.active: set[str] = set()  # containers that may still write
        self.finished = threading.Event()  # the pod's containers are all done

    def path(self, container: str) -> Path:
        return self.dir / f"{container}.log"

    def write(self, container: str, data: bytes) -> None:
        text = data.decode("utf-8", errors="replace")
        if not text.endswith("\n"):
            text += "\n"
        with self._lock:
            lock = self._locks.setdefault(container, threading.Lock())
        with lock, self.path(container).open("a") as f:
            f.write(f"{timestamp()} {text}")

    def started(self, container: str) -> None:
        self.path(container).touch()
        self.active.add(container)

    def stopped(self, container: str) -> None:
        self.active.discard(container)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class LogStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._pods: dict[tuple[str, str], PodLogs] = {}
        self._lock = threading.Lock()

    def open(self, namespace: str, name: str, uid: str) -> PodLogs:
        logs = PodLogs(self.root / namespace / name / uid, namespace, name)
        with self._lock:
            self._pods[(namespace, name)] = logs
        return logs

    def find(self, namespace: str, name: str) -> PodLogs | None:
        with self._lock:
            return self._pods.get((namespace, name))

    def close(self, logs: PodLogs) -> None:
        with self._lock:
            if self._pods.get((logs.namespace, logs.name)) is logs:
                del self._pods[(logs.namespace, logs.name)]
        logs.remove()
        with contextlib.suppress(OSError):  # the pod's (and namespace's) now empty directories
            logs.dir.parent.rmdir()
            logs.dir.parent.parent.rmdir()


def select_lines(
    lines: list[str],
    *,
    tail: int | None,
    since: float | None,
    timestamps: bool,
) -> list[str]:
    """The stored lines `lines` ("TIME TEXT\\n") a query asks for, as it asks for them."""
    if since is not None:
        lines = [ln for ln in lines if _parse_time(ln.split(" ", 1)[0]) >= since]
    if tail is not None:
        lines = lines[-tail:] if tail > 0 else []
    return lines if timestamps else [ln.split(" ", 1)[1] if " " in ln else ln for ln in lines]


class _Handler(BaseHTTPRequestHandler):
    server: LogServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        self.request.settimeout(30)
        self.request = self.server.context.wrap_socket(self.request, server_side=True)
        super().setup()

    def log_message(self, format: str, *args: object) -> None:
        log.debug("log endpoint: " + format, *args)

    def _send(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _allowed(self) -> bool:
        cert = self.request.getpeercert() or {}
        names = {v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"}
        if self.server.client_name not in names:
            self._send(403, "forbidden: only the API server may read logs here\n")
            return False
        return True

    def _unsupported(self) -> None:
        if self._allowed():
            path = urllib.parse.urlsplit(self.path).path
            self._send(
                501,
                f"{path}: this node (intercept-cluster) runs no streaming server: kubectl exec, "
                "attach and port-forward are not supported; it serves container logs only\n",
            )

    def do_POST(self) -> None:  # exec, attach, port-forward
        self._unsupported()

    def do_PUT(self) -> None:
        self._unsupported()

    def do_GET(self) -> None:
        if not self._allowed():
            return
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if url.path in ("/healthz", "/readyz"):
            self._send(200, "ok")
            return
        if len(parts) != 4 or parts[0] != "containerLogs":
            self._send(
                404,
                f"{url.path}: not served by this node (it serves container logs only: no exec, "
                "attach, port-forward, stats or metrics)\n",
            )
            return
        namespace, pod, container = parts[1:]
        query = dict(urllib.parse.parse_qsl(url.query))
        logs = self.server.store.find(namespace, pod)
        if logs is None:
            self._send(404, f'pod "{pod}" in namespace "{namespace}" is not on this node\n')
            return
        if container not in logs.known:
            self._send(400, f'container "{container}" in pod "{pod}" is not valid for pod {pod}\n')
            return
        if query.get("previous") == "true":
            self._send(
                400,
                f'previous terminated container "{container}" in pod "{pod}" not found (this '
                "node keeps one log per container, restarts appended)\n",
            )
            return
        path = logs.path(container)
        if not path.exists():
            self._send(
                400,
                f'container "{container}" in pod "{pod}" is waiting to start: PodInitializing\n',
            )
            return
        with contextlib.suppress(OSError, ssl.SSLError):  # the client may go away
            self._serve(logs, container, path, query)

    def _serve(self, logs: PodLogs, container: str, path: Path, query: dict[str, str]) -> None:
        tail = int(query["tailLines"]) if "tailLines" in query else None
        limit = int(query["limitBytes"]) if "limitBytes" in query else None
        since = None
        if "sinceSeconds" in query:
            since = time.time() - int(query["sinceSeconds"])
        elif "sinceTime" in query:
            since = _parse_time(query["sinceTime"])
        timestamps = query.get("timestamps") == "true"
        follow = query.get("follow") == "true"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        sent = 0
        for chunk in _stream(path, logs, container, follow, tail, since, timestamps):
            data = chunk.encode()
            if limit is not None:
                data = data[: max(0, limit - sent)]
            if data:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                sent += len(data)
            if limit is not None and sent >= limit:
                break
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        self.close_connection = True


def _stream(
    path: Path,
    logs: PodLogs,
    container: str,
    follow: bool,
    tail: int | None,
    since: float | None,
    timestamps: bool,
) -> Iterator[str]:
    with path.open() as f:
        lines = f.readlines()
        partial = ""
        if lines and not lines[-1].endswith("\n"):
            partial = lines.pop()
        text = "".join(select_lines(lines, tail=tail, since=since, timestamps=timestamps))
        if text:
            yield text
        while follow:
            line = f.readline()
            if line:
                line = partial + line
                partial = ""
                if not line.endswith("\n"):
                    partial = line
                    continue
                yield "".join(select_lines([line], tail=None, since=since, timestamps=timestamps))
                continue
            if container not in logs.active or logs.finished.is_set():
                rest = f.read()
                if rest:
                    yield "".join(
                        select_lines(rest.splitlines(keepends=True), tail=None, since=since,
                                     timestamps=timestamps)
                    )  # fmt: skip
                return
            time.sleep(FOLLOW_POLL)


class LogServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        store: LogStore,
        cert: Path,
        key: Path,
        ca: Path,
        client_name: str,
        address: tuple[str, int] = ("127.0.0.1", 0),
    ) -> None:
        super().__init__(address, _Handler)
        self.store = store
        self.client_name = client_name
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca))
        context.load_cert_chain(str(cert), str(key))
        context.verify_mode = ssl.CERT_REQUIRED
        self.context = context

    @property
    def port(self) -> int:
        return self.server_address[1]

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: object
    ) -> None:
        log.debug("log endpoint: a request from %s failed", client_address, exc_info=True)

    def serve_in_background(self) -> Callable[[], None]:
        thread = threading.Thread(target=self.serve_forever, name="log-endpoint", daemon=True)
        thread.start()

        def stop() -> None:
            self.shutdown()
            self.server_close()

        return stop
