"""Run inside the client namespace: COUNT sequential GETs on one keep-alive TLS connection to
Envoy's TLS listener for HOST; prints the client-side latencies (ms) as JSON."""

import http.client
import json
import socket
import ssl
import sys
import time

ca_file, host, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
context = ssl.create_default_context(cafile=ca_file)


class ToEnvoy(http.client.HTTPSConnection):
    def connect(self) -> None:
        raw = socket.create_connection(("127.0.0.1", 15001))
        self.sock = context.wrap_socket(raw, server_hostname=host)


conn = ToEnvoy(host, context=context)
latencies = []
for i in range(count):
    started = time.perf_counter()
    conn.request("GET", f"/bench/{i}")
    response = conn.getresponse()
    response.read()
    assert response.status == 200, response.status
    latencies.append((time.perf_counter() - started) * 1000)
print(json.dumps(latencies))
