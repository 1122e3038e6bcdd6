"""A site is one lab address and the hosts that share it."""

from __future__ import annotations

from dataclasses import dataclass

from intercept_proxy.lab.config import ServedHost


@dataclass(frozen=True)
class Site:
    address: str
    hosts: tuple[ServedHost, ...]  # empty for the resolver's own address

    @property
    def sole_host(self) -> str | None:
        """The host a connection to this address is for, when the address alone tells."""
        return self.hosts[0].host.name if len(self.hosts) == 1 else None

    def find(self, name: str | None) -> ServedHost | None:
        if name is None:
            return None
        name = name.lower().removesuffix(".")
        return next((s for s in self.hosts if s.host.name == name), None)

    def pick(self, name: str | None) -> ServedHost:
        """The host called `name` on this address, else the address's first host."""
        return self.find(name) or self.hosts[0]
