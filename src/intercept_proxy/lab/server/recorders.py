"""Receipts below HTTP: every accepted TCP connection, and datagrams on record-only UDP ports."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from intercept_proxy.lab.receipts import ReceiptLog
from intercept_proxy.lab.server.site import Site


def recording(
    log: ReceiptLog, site: Site, port: int, factory: Callable[[], asyncio.BaseProtocol]
) -> Callable[[], asyncio.BaseProtocol]:
    """Wrap a protocol factory so each accepted connection is recorded as `tcp`.

    asyncio calls the factory on accept, before any TLS handshake: a connection is recorded
    even when the handshake then fails.
    """

    def accept() -> asyncio.BaseProtocol:
        log.record("tcp", site.address, port, host=site.sole_host)
        return factory()

    return accept


class Discard(asyncio.Protocol):
    """A record-only TCP port: keep the connection open, ignore what arrives."""

    def data_received(self, data: bytes) -> None:
        pass


class RecordDatagrams(asyncio.DatagramProtocol):
    """A record-only UDP port: one `udp` receipt per datagram, no answer."""

    def __init__(self, log: ReceiptLog, site: Site, port: int) -> None:
        self._log = log
        self._site = site
        self._port = port

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self._log.record("udp", self._site.address, self._port, host=self._site.sole_host)
