"""Listeners run as root inside a namespace: `python listener.py NAME LOG SPEC_JSON`.

SPEC is {"tcp": [[address, port], ...], "udp": [...]}. Every TCP connection and UDP datagram is
answered with JSON naming this side, the port it arrived on and (TCP) its original destination
before any NAT, and recorded as one JSON line in LOG first. Prints "ready" once bound.
"""

import json
import selectors
import socket
import struct
import sys
from pathlib import Path

SO_ORIGINAL_DST = 80  # same value for IPv4 (SOL_IP) and IPv6 (IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST)


def bind(kind, address, port):
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((address, port))
    if kind == socket.SOCK_STREAM:
        sock.listen(64)
    return sock


def original_destination(conn):
    """Where the client sent it, before a REDIRECT (conntrack's original tuple)."""
    try:
        if conn.family == socket.AF_INET:
            raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            return [socket.inet_ntop(socket.AF_INET, raw[4:8]), struct.unpack("!H", raw[2:4])[0]]
        raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
        return [socket.inet_ntop(socket.AF_INET6, raw[8:24]), struct.unpack("!H", raw[2:4])[0]]
    except OSError:
        return None


def main():
    name, log_path, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    selector = selectors.DefaultSelector()
    for kind, key in ((socket.SOCK_STREAM, "tcp"), (socket.SOCK_DGRAM, "udp")):
        for address, port in spec.get(key, []):
            selector.register(bind(kind, address, port), selectors.EVENT_READ, key)
    print("ready", flush=True)
    with Path(log_path).open("a") as log:
        while True:
            for key, _ in selector.select():
                sock = key.fileobj
                port = sock.getsockname()[1]
                if key.data == "tcp":
                    conn, peer = sock.accept()
                    entry = {"proto": "tcp", "port": port, "peer": list(peer[:2])}
                    entry["orig"] = original_destination(conn)
                else:
                    _, peer = sock.recvfrom(4096)
                    entry = {"proto": "udp", "port": port, "peer": list(peer[:2])}
                log.write(json.dumps(entry) + "\n")
                log.flush()
                reply = json.dumps({"at": name, **entry}).encode()
                if key.data == "tcp":
                    with conn:
                        conn.sendall(reply)
                else:
                    sock.sendto(reply, peer)


if __name__ == "__main__":
    main()
