"""An HTTP/2 request with a body and no content-length (curl cannot send one: it always writes
the length, and takes a reset that follows an answer for an error), run in the sandbox as the
workload. Prints the answer as JSON: its status and body, whether the stream was reset, and how
many bytes of the body went out before the answer.

    h2_upload.py CA_FILE ADDRESS PORT HOST METHOD PATH SIZE
"""

from __future__ import annotations

import json
import select
import socket
import ssl
import sys

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, ResponseReceived, StreamEnded, StreamReset
from h2.exceptions import StreamClosedError


def main(
    ca: str, address: str, port: int, host: str, method: str, path: str, size: int
) -> dict[str, object]:
    context = ssl.create_default_context(cafile=ca)
    context.set_alpn_protocols(["h2"])
    raw = socket.create_connection((address, port), timeout=30)
    sock = context.wrap_socket(raw, server_hostname=host)
    conn = H2Connection(H2Configuration(client_side=True))
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    headers = [(":method", method), (":scheme", "https"), (":authority", host), (":path", path)]
    conn.send_headers(stream, headers)
    sock.sendall(conn.data_to_send())
    out: dict[str, object] = {"status": None, "body": "", "reset": False}
    body, sent, sending, ended = b"", 0, True, False
    while not ended:
        if sending:
            window = min(conn.local_flow_control_window(stream), conn.max_outbound_frame_size)
            step = min(window, size - sent)
            try:
                if step > 0:
                    conn.send_data(stream, b"x" * step)
                    sent += step
                if sent == size:
                    conn.end_stream(stream)
                    sending = False
            except StreamClosedError:
                sending = False
            sock.sendall(conn.data_to_send())
        readable, _, _ = select.select([sock], [], [], 0 if sending and step > 0 else 30)
        if not readable:
            if sending:
                continue
            break
        data = sock.recv(65536)
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, ResponseReceived):
                out["status"] = int(dict(event.headers)[b":status"])
                sending = False  # answered: the rest of the body is not wanted
            elif isinstance(event, DataReceived):
                body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, stream)
            elif isinstance(event, StreamEnded):
                ended = True
            elif isinstance(event, StreamReset):
                out["reset"] = True
                ended = True
        sock.sendall(conn.data_to_send())
    out["body"] = body.decode(errors="replace")
    out["sent"] = sent
    sock.close()
    return out


if __name__ == "__main__":
    ca, address, port, host, method, path, size = sys.argv[1:8]
    print(json.dumps(main(ca, address, int(port), host, method, path, int(size))))
