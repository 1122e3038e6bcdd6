"""Certificates on demand: a leaf for whatever server name Envoy's TLS listener sees.

Envoy's on-demand certificate selector pauses each handshake with a new SNI and subscribes (over
ADS) to a secret named after it; the resolver answers with a leaf minted for that name, renewed
at half of its validity. A name that is no host name (an IP literal, non-ASCII, malformed) gets
the placeholder certificate: the handshake completes at once, and no client accepts it.
"""

from __future__ import annotations

import hashlib

from intercept_proxy.hostnames import HostnameError, normalize_hostname
from intercept_proxy.pki import LeafCache
from intercept_proxy.xds.protos import leaf_secret
from intercept_proxy.xds.resources import NO_SNI_SECRET
from intercept_proxy.xds.server import Resolver, Resource


def certificate_resolver(cache: LeafCache) -> Resolver:
    def resolve(name: str) -> Resource:
        try:
            host = normalize_hostname(name)
        except HostnameError:
            host = NO_SNI_SECRET
        leaf = cache.get(host)
        return Resource(
            message=leaf_secret(name, leaf.cert_pem, leaf.key_pem),
            version=hashlib.sha256(leaf.cert_pem).hexdigest()[:16],
            # When the cache itself renews it (half of the validity after minting).
            renew_at=leaf.not_after - cache.validity / 2,
        )

    return resolve
