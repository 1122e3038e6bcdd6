"""Run inside the client namespace: TLS handshakes with COUNT distinct server names
(PREFIX{i}.flood.test) against Envoy's TLS listener, each certificate verified for its name;
prints how many succeeded. `python sni_flood.py CA_CERT COUNT [PREFIX]`"""

import socket
import ssl
import sys
from concurrent.futures import ThreadPoolExecutor

ca_file, count = sys.argv[1], int(sys.argv[2])
prefix = sys.argv[3] if len(sys.argv) > 3 else "host"
context = ssl.create_default_context(cafile=ca_file)


def handshake(i: int) -> bool:
    name = f"{prefix}{i}.flood.test"
    with (
        socket.create_connection(("127.0.0.1", 15001), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=name) as tls,
    ):
        return name in str(tls.getpeercert()["subjectAltName"])


with ThreadPoolExecutor(8) as pool:
    print(sum(pool.map(handshake, range(count))))
