"""resolv.conf: the one reader and the one writer of its `nameserver` lines."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from pathlib import Path

RESOLV_CONF = Path("/etc/resolv.conf")


def nameservers(path: Path = RESOLV_CONF) -> list[str]:
    """The `nameserver` addresses of a resolv.conf, normalised (an IPv6 scope kept); like the C
    library, skip what is not one. A missing or unreadable file names none."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    servers = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                servers.append(str(ipaddress.ip_address(fields[1])))
            except ValueError:
                continue
    return servers


def text(servers: Iterable[str], search: Sequence[str] = ()) -> str:
    """A resolv.conf naming `servers`, in order; with `search` domains, the kubelet's options
    (a name of fewer than five dots is tried in them first)."""
    lines = [f"nameserver {server}\n" for server in servers]
    if search:
        lines += [f"search {' '.join(search)}\n", "options ndots:5\n"]
    return "".join(lines)
