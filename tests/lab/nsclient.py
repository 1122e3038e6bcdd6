"""A test client run inside a namespace: `python nsclient.py JOBS_JSON` prints one JSON result
per job (a list). One process runs many jobs, so tests pay the interpreter start-up once."""

import asyncio
import json
import socket
import ssl
import sys
import time

import aiohttp
from dnslib import QTYPE, RCODE, DNSRecord


def dns(job):
    query = DNSRecord.question(job["name"], job["type"])
    family = socket.AF_INET6 if ":" in job["server"] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(job.get("timeout", 2))
        sock.sendto(query.pack(), (job["server"], 53))
        reply = DNSRecord.parse(sock.recv(4096))
    return {
        "id_matches": reply.header.id == query.header.id,
        "rcode": RCODE.get(reply.header.rcode),
        "aa": bool(reply.header.aa),
        "answers": [[QTYPE.get(rr.rtype), str(rr.rdata), str(rr.rname)] for rr in reply.rr],
    }


def tcp(job):
    family = socket.AF_INET6 if ":" in job["address"] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(job.get("timeout", 2))
        try:
            sock.connect((job["address"], job["port"]))
            sock.sendall(job.get("data", "").encode())
        except OSError as e:
            return {"connected": False, "error": type(e).__name__}
    return {"connected": True}


def udp(job):
    family = socket.AF_INET6 if ":" in job["address"] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sent = sock.sendto(job.get("data", "x").encode(), (job["address"], job["port"]))
    return {"sent": sent}


def tls(job):
    """The certificate served at address:443 for an SNI (None: send no SNI)."""
    context = ssl.create_default_context(cafile=job["cafile"])
    context.check_hostname = False  # verified against the lab CA; the test checks the names
    with (
        socket.create_connection((job["address"], 443), timeout=2) as raw,
        context.wrap_socket(raw, server_hostname=job["sni"]) as sock,
    ):
        cert = sock.getpeercert()
    return {"san": [value for kind, value in cert["subjectAltName"] if kind == "DNS"]}


async def sse(job, session):
    events = []
    async with session.get(job["url"]) as response:
        content_type = response.headers["Content-Type"]
        async for line in response.content:
            if line.startswith(b"data: "):
                events.append({"t": time.monotonic(), "data": json.loads(line[6:])})
    return {"status": response.status, "content_type": content_type, "events": events}


async def ws(job, session):
    echoed = []
    async with session.ws_connect(job["url"]) as conn:
        for message in job["messages"]:
            if isinstance(message, str):
                await conn.send_str(message)
            else:
                await conn.send_bytes(bytes(message))
            reply = await conn.receive(timeout=5)
            data = reply.data if isinstance(reply.data, str) else list(reply.data)
            echoed.append(data)
    return {"echoed": echoed}


async def run_async(job):
    context = ssl.create_default_context(cafile=job["cafile"])
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        return await {"sse": sse, "ws": ws}[job["op"]](job, session)


def main():
    results = []
    for job in json.loads(sys.argv[1]):
        if job["op"] in ("sse", "ws"):
            results.append(asyncio.run(run_async(job)))
        else:
            results.append({"dns": dns, "tcp": tcp, "udp": udp, "tls": tls}[job["op"]](job))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
