"""Send a corpus of requests to Envoy's listeners, exactly as written (host header, SNI, method,
target, extra headers, body, plain or chunked), and print each response's status and decision
id as JSON lines.

Runs inside the test's namespace: `python corpus_client.py CA_CERT [GATEWAY_PORT] <
corpus.json`. Requests go one at a time over keep-alive connections, one per (listener, SNI);
those marked `h2` go over HTTP/2, one connection each, with the method as written (`get`
included: HTTP/1's codec refuses a lower-case method before any decision), a body with its
length or streamed without one.

With GATEWAY_PORT, through the egress gateway as a proxy's clients send them: TLS in a CONNECT
tunnel to the server name (else the Host's name), port 443; plain HTTP in absolute form. A
refused tunnel's status and decision id (from its JSON body) stand for the request's."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import sys
from typing import Any

import h2.config
import h2.connection
import h2.events

from intercept_proxy import ports


class TunnelRefusedError(Exception):
    def __init__(self, status: int, decision_id: str) -> None:
        self.status, self.decision_id = status, decision_id


def tunnel_target(request: dict[str, Any]) -> str:
    """What a proxy's client names in CONNECT: the server name, else the Host's name."""
    name = request.get("sni") or request["host"]
    if name.startswith("["):
        return name.partition("]")[0] + "]:443"
    if name.count(":") > 1:  # an IPv6 address as a server name
        return f"[{name}]:443"
    return name.partition(":")[0] + ":443"


def _tunnel(gateway: int, target: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gateway), timeout=30)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError(f"the gateway closed the tunnel to {target}")
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    if status == 200:
        return sock
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(65536)
    sock.close()
    try:
        raise TunnelRefusedError(status, json.loads(body)["error"]["decision_id"])
    except ValueError:
        raise OSError(f"CONNECT {target}: {answer!r}") from None


def _socket(tls: bool, target: str | None, gateway: int | None) -> socket.socket:
    """A connection to the listener: directly, else through the gateway (a tunnel to `target`
    for TLS, the gateway itself for plain HTTP)."""
    if gateway is None:
        port = ports.ENVOY_TLS if tls else ports.ENVOY_HTTP
        return socket.create_connection(("127.0.0.1", port), timeout=30)
    if tls and target is not None:
        return _tunnel(gateway, target)
    return socket.create_connection(("127.0.0.1", gateway), timeout=30)


def _connect(
    context: ssl.SSLContext, tls: bool, sni: str | None, target: str | None, gateway: int | None
) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", timeout=30)
    sock = _socket(tls, target, gateway)
    conn.sock = context.wrap_socket(sock, server_hostname=sni) if tls else sock
    return conn


def _send(
    conn: http.client.HTTPConnection, request: dict[str, Any], absolute: bool
) -> tuple[int, str]:
    target = f"http://{request['host']}{request['path']}" if absolute else request["path"]
    conn.putrequest(request["method"], target, skip_host=True, skip_accept_encoding=True)
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


def _send_h2(
    context: ssl.SSLContext, request: dict[str, Any], sock: socket.socket
) -> tuple[int, str]:
    """One request on its own HTTP/2 connection. Envoy may answer before it has read the body
    and then reset the stream, as RFC 9113 allows; curl 7.88 reported that as a stream error
    without the answer, this client reads the answer."""
    with context.wrap_socket(sock, server_hostname=request["sni"]) as tls:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding="utf-8"))
        conn.initiate_connection()
        body = request.get("body")
        headers = [
            (":method", request["method"]), (":scheme", "https"),
            (":authority", request["host"]), (":path", request["path"]),
        ]  # fmt: skip
        if body is not None and not request.get("chunked"):
            headers.append(("content-length", str(len(body))))
        conn.send_headers(1, headers, end_stream=body is None)
        if body is not None:
            if request.get("chunked"):  # streamed: the body follows the headers, no length
                tls.sendall(conn.data_to_send())
            conn.send_data(1, body.encode(), end_stream=True)
        tls.sendall(conn.data_to_send())
        status, decision_id = 0, ""
        while True:
            data = tls.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    fields = dict(event.headers)
                    status = int(fields[":status"])
                    decision_id = fields.get("x-intercept-decision-id", "")
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    return status, decision_id
            tls.sendall(conn.data_to_send())
        return status, decision_id


def main() -> None:
    context = ssl.create_default_context(cafile=sys.argv[1])
    context.check_hostname = False  # the SNI may be absent or differ from the host on purpose
    h2_context = ssl.create_default_context(cafile=sys.argv[1])
    h2_context.check_hostname = False
    h2_context.set_alpn_protocols(["h2"])
    gateway = int(sys.argv[2]) if len(sys.argv) > 2 else None
    connections: dict[tuple[bool, str | None, str | None], http.client.HTTPConnection] = {}
    for request in json.load(sys.stdin):
        target = tunnel_target(request) if gateway and request["tls"] else None
        try:
            status, decision_id = _request(
                context, h2_context, request, target, gateway, connections
            )
        except TunnelRefusedError as refused:
            status, decision_id = refused.status, refused.decision_id
        print(json.dumps({"status": status, "decision_id": decision_id}), flush=True)


def _request(
    context: ssl.SSLContext,
    h2_context: ssl.SSLContext,
    request: dict[str, Any],
    target: str | None,
    gateway: int | None,
    connections: dict[tuple[bool, str | None, str | None], http.client.HTTPConnection],
) -> tuple[int, str]:
    if request.get("h2"):
        return _send_h2(h2_context, request, _socket(True, target, gateway))
    key = (request["tls"], request.get("sni"), target)
    absolute = gateway is not None and not request["tls"]
    conn = connections.get(key)
    if conn is not None:
        try:
            return _send(conn, request, absolute)
        except (http.client.HTTPException, OSError):  # Envoy closed it after an error reply
            conn.close()
    conn = connections[key] = _connect(context, *key, gateway)
    return _send(conn, request, absolute)


if __name__ == "__main__":
    main()
