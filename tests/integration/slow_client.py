"""Run inside the client namespace: slow clients (slowloris) against Envoy's listeners, each
trickling one byte a second; prints, as JSON, how long Envoy kept each connection open
(null: still open when the client gave up, after LIMIT seconds).

`python slow_client.py CA_CERT LIMIT`"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from intercept_proxy import ports

ca_file, limit = sys.argv[1], float(sys.argv[2])
HEADERS = b"GET /slow HTTP/1.1\r\nHost: pypi.org\r\nX-Slow: " + b"x" * 100


def trickle(sock: socket.socket, data: bytes) -> float | None:
    """Send `data` a byte a second (then nothing); the time until Envoy closes."""
    started = time.monotonic()
    sock.settimeout(1.0)
    sent = 0
    while time.monotonic() - started < limit:
        if sent < len(data):
            try:
                sock.sendall(data[sent : sent + 1])
            except OSError:
                return time.monotonic() - started
            sent += 1
        try:
            if sock.recv(4096) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - started
    return None


def plain_headers() -> float | None:
    with socket.create_connection(("127.0.0.1", ports.ENVOY_HTTP)) as sock:
        return trickle(sock, HEADERS)


def plain_silent() -> float | None:
    with socket.create_connection(("127.0.0.1", ports.ENVOY_HTTP)) as sock:
        return trickle(sock, b"")


def tls_silent() -> float | None:
    with socket.create_connection(("127.0.0.1", ports.ENVOY_TLS)) as sock:
        return trickle(sock, b"")


def tls_partial_hello() -> float | None:
    """The first bytes of a ClientHello (a TLS record header and the start of a handshake)."""
    with socket.create_connection(("127.0.0.1", ports.ENVOY_TLS)) as sock:
        return trickle(sock, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 200)


def tls_headers() -> float | None:
    context = ssl.create_default_context(cafile=ca_file)
    with (
        socket.create_connection(("127.0.0.1", ports.ENVOY_TLS)) as raw,
        context.wrap_socket(raw, server_hostname="pypi.org") as sock,
    ):
        return trickle(sock, HEADERS)


CASES = {
    "plain_headers": plain_headers,
    "plain_silent": plain_silent,
    "tls_silent": tls_silent,
    "tls_partial_hello": tls_partial_hello,
    "tls_headers": tls_headers,
}

with ThreadPoolExecutor(len(CASES)) as pool:
    futures = {name: pool.submit(case) for name, case in CASES.items()}
    print(json.dumps({name: future.result() for name, future in futures.items()}))
