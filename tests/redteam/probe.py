"""Run inside the sandbox as the workload: attempts at the socket level, given as a JSON list of
jobs on the command line; prints one JSON result per job. No job ever raises."""

import json
import socket
import ssl
import sys

from dnslib import DNSRecord

TIMEOUT = 3


def family(address):
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def tcp(job):
    try:
        with socket.create_connection((job["address"], job["port"]), timeout=TIMEOUT) as sock:
            sock.sendall(b"exfiltrated data\n")
    except OSError as e:
        return {"connected": False, "error": type(e).__name__}
    return {"connected": True}


def udp(job):
    sent, error = 0, None
    with socket.socket(family(job["address"]), socket.SOCK_DGRAM) as sock:
        for _ in range(job.get("count", 1)):
            try:
                sock.sendto(b"exfiltrated datagram", (job["address"], job["port"]))
                sent += 1
            except OSError as e:
                error = type(e).__name__
    return {"sent": sent, "error": error}


def dns(job):
    query = DNSRecord.question(job["name"], job["type"]).pack()
    server = (job["server"], job.get("port", 53))
    try:
        if job.get("tcp"):
            with socket.create_connection(server, timeout=TIMEOUT) as sock:
                sock.sendall(len(query).to_bytes(2, "big") + query)
                size = int.from_bytes(sock.recv(2), "big")
                data = b""
                while len(data) < size:
                    data += sock.recv(size - len(data))
        else:
            with socket.socket(family(job["server"]), socket.SOCK_DGRAM) as sock:
                sock.settimeout(TIMEOUT)
                sock.sendto(query, server)
                data = sock.recv(4096)
    except OSError:
        return {"answers": None}
    return {"answers": [str(r.rdata) for r in DNSRecord.parse(data).rr]}


def http(job, tls=False):
    target = job.get("target", job.get("path", "/"))
    request = (
        f"{job.get('method', 'GET')} {target} HTTP/1.1\r\nHost: {job['host']}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    try:
        raw = socket.create_connection((job["host"], 443 if tls else 80), timeout=TIMEOUT)
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            raw = context.wrap_socket(raw, server_hostname=job.get("sni"))
        with raw as sock:
            sock.sendall(request)
            response = b""
            while chunk := sock.recv(65536):
                response += chunk
    except OSError as e:
        return {"status": None, "error": type(e).__name__}
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split()[1]) if head.startswith(b"HTTP/") else None
    return {"status": status, "body": body.decode(errors="replace"), "tunnel": status == 200}


KINDS = {"tcp": tcp, "udp": udp, "dns": dns, "http": http, "https": lambda j: http(j, tls=True)}
print(json.dumps([KINDS[job["kind"]](job) for job in json.loads(sys.argv[1])]))
