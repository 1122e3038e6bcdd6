"""The lab spec: which hosts exist, at which addresses, serving which git repositories.

Validation is strict because a typo in a test's spec should fail loudly at load time, not show
up later as a host that silently does not answer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from intercept_proxy.hostnames import HostnameError, normalize_hostname
from intercept_proxy.lab.addresses import (
    AddressError,
    AddressRequest,
    assign_addresses,
    check_host_address,
)

_TOP_KEYS = frozenset({"hosts"})
_HOST_KEYS = frozenset({"name", "ipv4", "ipv6", "git_repos", "external"})
# GitHub's own rule for owner and repository names, minus the ".git" suffix git adds itself.
_REPO_PART = re.compile(r"^[A-Za-z0-9_.-]+$")


class LabSpecError(ValueError):
    """An invalid spec; the message names the source, the key and the problem."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        super().__init__(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")


@dataclass(frozen=True)
class LabHost:
    """One lab host with its resolved addresses."""

    name: str
    ipv4: str
    ipv6: str
    git_repos: tuple[str, ...] = ()
    # The lab answers for the name (DNS, its addresses, a certificate) but serves nothing
    # there: another server (the benchmark's nginx) listens on its addresses.
    external: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ipv4": self.ipv4,
            "ipv6": self.ipv6,
            "git_repos": list(self.git_repos),
            "external": self.external,
        }


@dataclass(frozen=True)
class LabSpec:
    hosts: tuple[LabHost, ...]
    source: str = "<inline>"

    @classmethod
    def load(cls, path: Path) -> LabSpec:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise LabSpecError(source, "", f"cannot read the spec: {e.strerror}") from e
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise LabSpecError(source, "", f"invalid YAML: {e}") from e
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "<inline>") -> LabSpec:
        if not isinstance(data, Mapping):
            raise LabSpecError(source, "", f"expected a mapping with 'hosts', got {_kind(data)}")
        _check_keys(source, "", data, _TOP_KEYS)
        hosts = data.get("hosts")
        if not isinstance(hosts, list) or not hosts:
            raise LabSpecError(source, "hosts", f"expected a non-empty list, got {_kind(hosts)}")
        parsed = [_parse_host(source, f"hosts[{i}]", h) for i, h in enumerate(hosts)]
        seen: dict[str, int] = {}
        for i, (name, _, _, _) in enumerate(parsed):
            if name in seen:
                raise LabSpecError(
                    source, f"hosts[{i}].name", f"{name!r} is already hosts[{seen[name]}]"
                )
            seen[name] = i
        try:
            addresses = assign_addresses([request for _, request, _, _ in parsed])
        except AddressError as e:
            raise LabSpecError(source, "hosts", str(e)) from e
        resolved = tuple(
            LabHost(name, v4, v6, repos, external)
            for (name, _, repos, external), (v4, v6) in zip(parsed, addresses, strict=True)
        )
        _check_external(source, resolved)
        return cls(resolved, source)

    def to_dict(self) -> dict[str, Any]:
        return {"hosts": [host.to_dict() for host in self.hosts]}


def _check_external(source: str, hosts: tuple[LabHost, ...]) -> None:
    """An address is the lab's or another server's, never both."""
    served = {a: i for i, h in enumerate(hosts) if not h.external for a in (h.ipv4, h.ipv6)}
    for i, host in enumerate(hosts):
        if host.external and host.git_repos:
            raise LabSpecError(source, f"hosts[{i}].git_repos", "an external host serves none")
        for address in (host.ipv4, host.ipv6):
            if host.external and address in served:
                raise LabSpecError(
                    source,
                    f"hosts[{i}].external",
                    f"{address} is also hosts[{served[address]}]'s, which the lab serves",
                )


def _parse_host(
    source: str, key: str, data: Any
) -> tuple[str, AddressRequest, tuple[str, ...], bool]:
    if not isinstance(data, Mapping):
        raise LabSpecError(source, key, f"expected a mapping with 'name', got {_kind(data)}")
    _check_keys(source, key, data, _HOST_KEYS)
    if "name" not in data:
        raise LabSpecError(source, f"{key}.name", "missing (every host needs a name)")
    name = _string(source, f"{key}.name", data["name"])
    try:
        name = normalize_hostname(name)
    except HostnameError as e:
        raise LabSpecError(source, f"{key}.name", str(e)) from e
    ipv4 = _address(source, f"{key}.ipv4", data.get("ipv4"), 4)
    ipv6 = _address(source, f"{key}.ipv6", data.get("ipv6"), 6)
    repos = _repos(source, f"{key}.git_repos", data.get("git_repos", []))
    external = data.get("external", False)
    if not isinstance(external, bool):
        raise LabSpecError(
            source, f"{key}.external", f"expected true or false, got {_kind(external)}"
        )
    return name, AddressRequest(ipv4, ipv6), repos, external


def _address(source: str, key: str, value: Any, version: int) -> str | None:
    if value is None:
        return None
    try:
        return check_host_address(_string(source, key, value), version)
    except AddressError as e:
        raise LabSpecError(source, key, str(e)) from e


def _repos(source: str, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise LabSpecError(source, key, f"expected a list of 'owner/repo', got {_kind(value)}")
    repos: list[str] = []
    for i, item in enumerate(value):
        item_key = f"{key}[{i}]"
        repo = _string(source, item_key, item)
        parts = repo.split("/")
        if len(parts) != 2 or not all(_REPO_PART.match(p) and p not in {".", ".."} for p in parts):
            raise LabSpecError(source, item_key, f"{repo!r} is not of the form 'owner/repo'")
        if parts[1].endswith(".git"):
            raise LabSpecError(source, item_key, f"{repo!r}: leave out the '.git' suffix")
        if repo in repos:
            raise LabSpecError(source, item_key, f"{repo!r} is listed twice")
        repos.append(repo)
    return tuple(repos)


def _check_keys(source: str, key: str, data: Mapping[Any, Any], allowed: frozenset[str]) -> None:
    for k in data:
        if k not in allowed:
            where = f"{key}.{k}" if key else str(k)
            raise LabSpecError(
                source, where, f"unknown key (allowed: {', '.join(sorted(allowed))})"
            )


def _string(source: str, key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise LabSpecError(source, key, f"expected a string, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__
