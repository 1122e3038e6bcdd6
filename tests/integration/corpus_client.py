"""Send a corpus of requests to Envoy's listeners, exactly as written (host header, SNI, method,
target, extra headers, body, plain or chunked), and print each response's status and decision
id as JSON lines.

Runs inside the test's namespace: `python corpus_client.py CA_CERT < corpus.json`. Requests go
one at a time over keep-alive connections, one per (listener, SNI); those marked `h2` go over
HTTP/2 with curl (which sends the method as written, `get` included: HTTP/1's codec refuses a
lower-case method before any decision), a body with its length or streamed without one."""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import subprocess
import sys

from intercept_proxy import ports


def _connect(context: ssl.SSLContext, tls: bool, sni: str | None) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection(
        "127.0.0.1", ports.ENVOY_TLS if tls else ports.ENVOY_HTTP, timeout=30
    )
    sock = socket.create_connection((conn.host, conn.port), timeout=30)
    conn.sock = context.wrap_socket(sock, server_hostname=sni) if tls else sock
    return conn


def _send(conn: http.client.HTTPConnection, request: dict) -> tuple[int, str]:
    conn.putrequest(request["method"], request["path"], skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", request["host"])
    for name, value in request.get("headers", []):
        conn.putheader(name, value)
    body = request.get("body")
    if body is not None:
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body.encode())
    elif request.get("chunked"):
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders(b"7\r\npayload\r\n0\r\n\r\n")
    else:
        conn.endheaders()
    response = conn.getresponse()
    response.read()
    decision_id = response.getheader("x-intercept-decision-id") or ""
    return response.status, decision_id


def _send_h2(ca_file: str, request: dict) -> tuple[int, str]:
    argv = [
        "curl", "-sS", "--http2", "--path-as-is", "-k", "--cacert", ca_file,
        "-X", request["method"], "-H", f"Host: {request['host']}",
        "--connect-to", f"::127.0.0.1:{ports.ENVOY_TLS}",
        "-o", "/dev/null", "-D", "-", "--max-time", "30",
        f"https://{request['sni']}{request['path']}",
    ]  # fmt: skip
    body = request.get("body")
    if body is not None:  # with its length, or streamed without one (`-T -`)
        argv += ["--data-binary", body] if not request.get("chunked") else ["-T", "-"]
    out = subprocess.run(
        argv, input=body if request.get("chunked") else None, capture_output=True, text=True,
        check=True,
    ).stdout  # fmt: skip
    status = re.search(r"^HTTP/2 (\d+)", out, re.M)
    decision_id = re.search(r"^x-intercept-decision-id: (\S+)", out, re.M | re.I)
    return int(status.group(1)) if status else 0, decision_id.group(1) if decision_id else ""


def main() -> None:
    context = ssl.create_default_context(cafile=sys.argv[1])
    context.check_hostname = False  # the SNI may be absent or differ from the host on purpose
    connections: dict[tuple[bool, str | None], http.client.HTTPConnection] = {}
    for request in json.load(sys.stdin):
        if request.get("h2"):
            status, decision_id = _send_h2(sys.argv[1], request)
            print(json.dumps({"status": status, "decision_id": decision_id}), flush=True)
            continue
        key = (request["tls"], request.get("sni"))
        for attempt in (1, 2):  # Envoy may close a connection after an error reply
            conn = connections.get(key) or _connect(context, *key)
            connections[key] = conn
            try:
                status, decision_id = _send(conn, request)
                break
            except (http.client.HTTPException, OSError):
                conn.close()
                del connections[key]
                if attempt == 2:
                    raise
        print(json.dumps({"status": status, "decision_id": decision_id}), flush=True)


if __name__ == "__main__":
    main()
