"""What the controller hands the lab server process: one JSON file, read once at start."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from intercept_proxy.lab.spec import LabHost

HTTP_PORT = 80
HTTPS_PORT = 443
DNS_PORT = 53
RECORD_TCP_PORTS = (22, 8080, 8443)
RECORD_UDP_PORTS = (443, 8125)
# What the server writes on its readiness pipe once every listener is bound.
READY = b"ready\n"


@dataclass(frozen=True)
class ServedHost:
    host: LabHost
    cert_path: Path
    key_path: Path


@dataclass(frozen=True)
class ServerConfig:
    hosts: tuple[ServedHost, ...]
    dns_addresses: tuple[str, ...]
    log_path: Path
    repos_root: Path

    def repo_dir(self, host: str) -> Path:
        """GIT_PROJECT_ROOT of `host`: its repositories live at `owner/repo.git` below."""
        return self.repos_root / host

    def to_json(self) -> str:
        return json.dumps(
            {
                "hosts": [
                    {**s.host.to_dict(), "cert": str(s.cert_path), "key": str(s.key_path)}
                    for s in self.hosts
                ],
                "dns_addresses": list(self.dns_addresses),
                "log_path": str(self.log_path),
                "repos_root": str(self.repos_root),
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> ServerConfig:
        data: dict[str, Any] = json.loads(text)
        hosts = tuple(
            ServedHost(
                LabHost(h["name"], h["ipv4"], h["ipv6"], tuple(h["git_repos"]), h["external"]),
                Path(h["cert"]),
                Path(h["key"]),
            )
            for h in data["hosts"]
        )
        return cls(
            hosts,
            tuple(data["dns_addresses"]),
            Path(data["log_path"]),
            Path(data["repos_root"]),
        )

    def addresses(self) -> dict[str, list[ServedHost]]:
        """Every address the lab serves with the hosts on it, in spec order (the first is the
        default); not those of external hosts."""
        by_address: dict[str, list[ServedHost]] = {}
        for served in self.hosts:
            if served.host.external:
                continue
            for address in (served.host.ipv4, served.host.ipv6):
                by_address.setdefault(address, []).append(served)
        return by_address
