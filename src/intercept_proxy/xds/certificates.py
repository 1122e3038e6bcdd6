"""Certificates on demand: a leaf for whatever server name Envoy's TLS listener sees.

Envoy's on-demand certificate selector pauses each handshake with a new SNI and subscribes (over
ADS) to a secret named after it; the resolver answers with a leaf minted for that name, renewed
at half of its validity. A name that is no host name (an IP literal, non-ASCII, malformed) gets
the placeholder certificate: the handshake completes at once, and no client accepts it.

Envoy keeps every certificate it is sent (about 31 KiB each) until it is told to drop it: the ADS
server removes a certificate Envoy has not asked for in `RELEASE_AFTER`, and the least recently
asked-for beyond the agent's own leaf cache size, so Envoy holds at most as many certificates as
the agent keeps leaves, and a name it asks for again finds its leaf in the agent's cache.
"""

from __future__ import annotations

import datetime as dt
import hashlib

from intercept_proxy.hostnames import HostnameError, normalize_hostname
from intercept_proxy.pki import LeafCache
from intercept_proxy.xds.protos import leaf_secret
from intercept_proxy.xds.resources import NO_SNI_SECRET
from intercept_proxy.xds.server import OnDemand, Resource

# A certificate Envoy has not asked for in this long is removed from Envoy (it asks again, on the
# next handshake with that name, and gets the same leaf while the agent's cache has it).
RELEASE_AFTER = dt.timedelta(minutes=10)


def certificate_resolver(
    cache: LeafCache, release_after: dt.timedelta | None = RELEASE_AFTER
) -> OnDemand:
    def resolve(name: str) -> Resource | None:
        if " " in name:  # no server name: a credential's secret, which only the snapshot holds
            return None
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

    return OnDemand(resolve, max_held=cache.max_entries, release_after=release_after)
