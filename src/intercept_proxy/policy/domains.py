"""Domain entries: how the policy names hosts (`pypi.org`, `*.example.com`, either with a port)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from intercept_proxy.hostnames import HostnameError, normalize_hostname


@dataclass(frozen=True)
class DomainEntry:
    """`pypi.org`, `*.example.com` (any depth of subdomain, not the apex) or either with `:port`."""

    entry: str
    host: str
    wildcard: bool
    port: int | None

    def to_data(self) -> dict[str, Any]:
        return {
            "entry": self.entry,
            "host": self.host,
            "wildcard": self.wildcard,
            "port": self.port,
        }


def parse_domain(value: str) -> DomainEntry:
    """Parse one domain entry; raises ValueError with a message fit for a PolicyError."""
    text = value.strip()
    if text != value or not text:
        raise ValueError(f"{value!r} is not a domain (empty or surrounded by spaces)")
    if "://" in text or "/" in text:
        raise ValueError(f"{value!r} is a URL; write the host name only, e.g. 'pypi.org'")
    host, port = text, None
    if text.count(":") == 1:
        host, port_text = text.split(":")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{value!r} has an invalid port {port_text!r}")
        port = int(port_text)
    wildcard = host.startswith("*.")
    if wildcard:
        host = host[2:]
    if "*" in host:
        raise ValueError(f"{value!r}: a wildcard is only allowed as the whole first label ('*.')")
    try:
        normalized = normalize_hostname(host)
    except HostnameError as e:
        raise ValueError(str(e)) from None
    if wildcard and "." not in normalized:
        raise ValueError(f"{value!r} would match a whole top-level domain")
    return DomainEntry(entry=text.lower(), host=normalized, wildcard=wildcard, port=port)
