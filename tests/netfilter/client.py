"""A workload's (or a sidecar's) client, run inside a namespace under some UID:
`python client.py JOBS_JSON` prints one JSON result per job, {"reply": ...} or {"error": ...}.

Jobs: {"op": "tcp"|"udp", "address", "port"} and {"op": "ping", "address"}. Refusals arrive at
once (a reset or an ICMP error), so the timeout only matters when something is silently lost.
"""

import json
import socket
import sys

TIMEOUT = 2


def family(address):
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def tcp(job):
    with socket.create_connection((job["address"], job["port"]), timeout=TIMEOUT) as sock:
        sock.sendall(b"hello")
        return json.loads(sock.recv(4096))


def udp(job):
    with socket.socket(family(job["address"]), socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect((job["address"], job["port"]))  # connected: ICMP errors are reported
        sock.send(b"hello")
        return json.loads(sock.recv(4096))


def ping(job):
    """One ICMP echo over a ping socket (net.ipv4.ping_group_range must include our GID)."""
    v6 = family(job["address"]) == socket.AF_INET6
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    with socket.socket(family(job["address"]), socket.SOCK_DGRAM, proto) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect((job["address"], 0))  # connected: ICMP errors are reported
        sock.send(bytes([128 if v6 else 8, 0, 0, 0, 0, 0, 0, 1]) + b"hello")
        return sock.recv(4096)[0] == (129 if v6 else 0)  # an echo reply


def main():
    results = []
    for job in json.loads(sys.argv[1]):
        try:
            results.append({"reply": {"tcp": tcp, "udp": udp, "ping": ping}[job["op"]](job)})
        except OSError as e:
            results.append({"error": type(e).__name__})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
