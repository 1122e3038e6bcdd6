"""Entry point of the lab server: bind every listener, then say so on the readiness pipe.

Run by the controller as `python -m intercept_proxy.lab.server --config FILE --ready-fd N`
inside the lab namespace. Any failure before readiness ends the process with a traceback on
stderr, which the controller reports.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from intercept_proxy.lab.config import (
    DNS_PORT,
    HTTP_PORT,
    HTTPS_PORT,
    READY,
    RECORD_TCP_PORTS,
    RECORD_UDP_PORTS,
    ServerConfig,
)
from intercept_proxy.lab.receipts import ReceiptLog
from intercept_proxy.lab.server.dns import DnsServer
from intercept_proxy.lab.server.http import HttpSite
from intercept_proxy.lab.server.recorders import Discard, RecordDatagrams, recording
from intercept_proxy.lab.server.site import Site
from intercept_proxy.lab.server.tls import SiteTls


def _bind(address: str, port: int, kind: socket.SocketKind) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(512)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"cannot bind {address} port {port}: {e.strerror}") from e
    return sock


async def serve(config: ServerConfig, ready_fd: int) -> None:
    loop = asyncio.get_running_loop()
    log = ReceiptLog(config.log_path)
    sites = [Site(address, tuple(hosts)) for address, hosts in config.addresses().items()]
    resolvers = [Site(address, ()) for address in config.dns_addresses]
    zone = {served.host.name: served.host for served in config.hosts}
    tls = SiteTls(sites)
    # Every socket is bound before any is served, so a failure leaves nothing half-started.
    stream: list[tuple[socket.socket, Site, int]] = []
    datagram: list[tuple[socket.socket, Site, int]] = []
    for site in sites:
        for port in (HTTP_PORT, HTTPS_PORT, *RECORD_TCP_PORTS):
            stream.append((_bind(site.address, port, socket.SOCK_STREAM), site, port))
        for port in RECORD_UDP_PORTS:
            datagram.append((_bind(site.address, port, socket.SOCK_DGRAM), site, port))
    for site in sites + resolvers:
        datagram.append((_bind(site.address, DNS_PORT, socket.SOCK_DGRAM), site, DNS_PORT))

    for sock, site, port in stream:
        if port in (HTTP_PORT, HTTPS_PORT):
            http = HttpSite(site, port, port == HTTPS_PORT, log, config.repos_root).server()
            context = tls.context(site) if port == HTTPS_PORT else None
            await loop.create_server(recording(log, site, port, http), sock=sock, ssl=context)
        else:
            await loop.create_server(recording(log, site, port, Discard), sock=sock)
    for sock, site, port in datagram:
        if port == DNS_PORT:
            await loop.create_datagram_endpoint(partial(DnsServer, log, site, zone), sock=sock)
        else:
            await loop.create_datagram_endpoint(
                partial(RecordDatagrams, log, site, port), sock=sock
            )

    os.write(ready_fd, READY)
    os.close(ready_fd)
    await asyncio.Event().wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m intercept_proxy.lab.server")
    parser.add_argument("--config", type=Path, required=True, help="the server config (JSON)")
    parser.add_argument("--ready-fd", type=int, required=True, help="where to write 'ready'")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    config = ServerConfig.from_json(args.config.read_text())
    asyncio.run(serve(config, args.ready_fd))
    return 0
