"""Send a corpus of requests to Envoy's listeners, exactly as written (host header, SNI, method,
target, extra headers, body, plain or chunked), and print each response's status and decision
id as JSON lines.

Runs inside the test's namespace: `python corpus_client.py CA_CERT < corpus.json`. Requests go
one at a time over keep-alive connections, one per (listener, SNI); those marked `h2` go over
HTTP/2, one connection each, with the method as written (`get` included: HTTP/1's codec refuses
a lower-case method before any decision), a body with its length or streamed without one."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import sys

import h2.config
import h2.connection
import h2.events

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


def _send_h2(context: ssl.SSLContext, request: dict) -> tuple[int, str]:
    """One request on its own HTTP/2 connection. Envoy may answer before it has read the body
    and then reset the stream, as RFC 9113 allows; curl 7.88 reported that as a stream error
    without the answer, this client reads the answer."""
    sock = socket.create_connection(("127.0.0.1", ports.ENVOY_TLS), timeout=30)
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
    connections: dict[tuple[bool, str | None], http.client.HTTPConnection] = {}
    for request in json.load(sys.stdin):
        if request.get("h2"):
            status, decision_id = _send_h2(h2_context, request)
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
