"""TLS for lab sites: the certificate is chosen by SNI among the hosts of the address dialled."""

from __future__ import annotations

import asyncio
import ssl
import weakref

from intercept_proxy.lab.config import ServedHost
from intercept_proxy.lab.server.site import Site

# The SNI each server-side connection sent; Python exposes it only inside the SNI callback.
_sni: weakref.WeakKeyDictionary[ssl.SSLObject, str] = weakref.WeakKeyDictionary()


def _context(served: ServedHost) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(served.cert_path, served.key_path)
    # HTTP/1.1 only: the echo reports requests as HTTP/1 parsed them.
    context.set_alpn_protocols(["http/1.1"])
    return context


class SiteTls:
    """One server context per site (its default certificate is the site's first host) plus one
    context per host, swapped in when the client's SNI names another host of the same site."""

    def __init__(self, sites: list[Site]) -> None:
        self._hosts = {
            served.host.name: _context(served) for site in sites for served in site.hosts
        }
        self._sites = {site.address: self._site_context(site) for site in sites if site.hosts}

    def context(self, site: Site) -> ssl.SSLContext:
        return self._sites[site.address]

    def _site_context(self, site: Site) -> ssl.SSLContext:
        context = _context(site.hosts[0])

        def choose(ssl_object: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
            if server_name is None:
                return
            _sni[ssl_object] = server_name
            served = site.find(server_name)
            if served is not None:
                ssl_object.context = self._hosts[served.host.name]

        context.sni_callback = choose
        return context


def sni_of(transport: asyncio.BaseTransport | None) -> str | None:
    """The SNI the client sent on `transport`, or None (plain TCP, or a ClientHello without it)."""
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    return None if ssl_object is None else _sni.get(ssl_object)
