"""What proxy-init captures and where it sends it: a frozen configuration, validated as a whole.

An invalid configuration cannot be built: every problem raises `CaptureConfigError` naming the
field. Collections are normalised (sorted, without duplicates) so that two configurations meaning
the same thing are equal and render the same rules.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from intercept_proxy import ports
from intercept_proxy.identities import AGENT_UID, ENVOY_UID, MAX_ID
from intercept_proxy.options import option

DNS = 53


# The most ports, or CIDRs, of one kind a capture names.
MAX_ENTRIES = 64


class CaptureConfigError(ValueError):
    """An invalid configuration; `field` names the offending field."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"{field_name}: {problem}")
        self.field = field_name
        self.problem = problem


@dataclass(frozen=True)
class CaptureConfig:
    """The workload's traffic capture in a pod's network namespace (both IP families)."""

    envoy_uid: int = option(
        "--envoy-uid", "Envoy's UID", default=ENVOY_UID, parse=int, metavar="UID"
    )
    agent_uid: int = option(
        "--agent-uid", "the agent's UID", default=AGENT_UID, parse=int, metavar="UID"
    )
    tls_ports: tuple[int, ...] = option(
        "--tls-port",
        "TCP port redirected to Envoy's TLS listener (repeatable; replaces the default)",
        default=(443,),
        parse=int,
        repeatable=True,
        metavar="PORT",
    )
    http_ports: tuple[int, ...] = option(
        "--http-port",
        "TCP port redirected to Envoy's HTTP listener (repeatable; replaces the default)",
        default=(80,),
        parse=int,
        repeatable=True,
        metavar="PORT",
    )
    tls_redirect_port: int = ports.ENVOY_TLS
    http_redirect_port: int = ports.ENVOY_HTTP
    dns_port: int = ports.AGENT_DNS
    sidecar_port_range: tuple[int, int] = ports.SIDECAR_RANGE
    # Cluster-internal destinations the workload may reach directly, IPv4 and IPv6 mixed.
    allowed_cidrs: tuple[str, ...] = option(
        "--allow-cidr",
        "a destination the workload may reach directly, IPv4 or IPv6 (repeatable)",
        default=(),
        repeatable=True,
        metavar="CIDR",
    )
    # TCP ports of the pod open to connections from outside it (the agent's health port, for
    # kubelet probes; a server of the workload's); every other inbound connection is refused.
    inbound_ports: tuple[int, ...] = option(
        "--inbound-port",
        "a TCP port of the pod open to connections from outside it, e.g. the agent's health "
        "port for kubelet probes (repeatable); every other inbound connection is refused",
        default=(),
        parse=int,
        repeatable=True,
        metavar="PORT",
    )

    def __post_init__(self) -> None:
        for name in ("envoy_uid", "agent_uid"):
            _check_int(name, getattr(self, name), 1, MAX_ID, "a UID (root is not a sidecar)")
        if self.envoy_uid == self.agent_uid:
            raise CaptureConfigError("agent_uid", f"must differ from envoy_uid ({self.envoy_uid})")

        span = self._set("sidecar_port_range", _port_tuple("sidecar_port_range", self))
        if len(span) != 2 or span[0] > span[1]:
            raise CaptureConfigError("sidecar_port_range", f"{span} is not (first, last)")
        low, high = span

        targets: dict[int, str] = {}
        for name in ("tls_redirect_port", "http_redirect_port", "dns_port"):
            port = getattr(self, name)
            _check_int(name, port, 1, 65535, "a port")
            if not low <= port <= high:
                raise CaptureConfigError(name, f"{port} is outside the sidecar range {low}-{high}")
            if port in targets:
                raise CaptureConfigError(name, f"{port} is already {targets[port]}")
            targets[port] = name

        intercepted: dict[int, str] = {}
        for name in ("tls_ports", "http_ports"):
            for port in self._set(name, tuple(sorted(set(_port_tuple(name, self))))):
                if port == DNS:
                    raise CaptureConfigError(name, "53 is DNS, always redirected to dns_port")
                if low <= port <= high:
                    raise CaptureConfigError(
                        name,
                        f"{port} is in the sidecar range {low}-{high}, which is never captured",
                    )
                if port in intercepted:
                    raise CaptureConfigError(name, f"{port} is also in {intercepted[port]}")
                intercepted[port] = name

        self._set("allowed_cidrs", _networks("allowed_cidrs", self.allowed_cidrs))
        for port in self._set(
            "inbound_ports", tuple(sorted(set(_port_tuple("inbound_ports", self))))
        ):
            if port in targets:
                raise CaptureConfigError(
                    "inbound_ports", f"{port} is {targets[port]}: only the pod's own may reach it"
                )

    def _set(self, name: str, value: Any) -> Any:
        object.__setattr__(self, name, value)  # normalising a frozen dataclass in __post_init__
        return value


def _check_int(name: str, value: object, low: int, high: int, what: str) -> None:
    # bool is an int to Python, never to a user.
    if not isinstance(value, int) or isinstance(value, bool):
        raise CaptureConfigError(name, f"{value!r} is not {what}")
    if not low <= value <= high:
        raise CaptureConfigError(name, f"{value} is outside {low}-{high}")


def _bounded(name: str, values: tuple[Any, ...]) -> tuple[Any, ...]:
    # Whoever writes a pod names them (CNI mode: the node's plugin, root, renders them).
    if len(values) > MAX_ENTRIES:
        raise CaptureConfigError(name, f"{len(values)} entries: at most {MAX_ENTRIES}")
    return values


def _port_tuple(name: str, config: CaptureConfig) -> tuple[int, ...]:
    values = getattr(config, name)
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise CaptureConfigError(name, f"{values!r} is not a list of ports")
    ports_ = _bounded(name, tuple(values))
    for port in ports_:
        _check_int(name, port, 1, 65535, "a port")
    return ports_


def _networks(name: str, values: object) -> tuple[str, ...]:
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise CaptureConfigError(name, f"{values!r} is not a list of CIDRs")
    networks = set()
    for value in _bounded(name, tuple(values)):
        try:
            if not isinstance(value, str):
                raise TypeError("not a string")
            networks.add(ipaddress.ip_network(value, strict=True))
        except (TypeError, ValueError) as e:
            raise CaptureConfigError(name, f"{value!r} is not a CIDR ({e})") from None
    return tuple(str(n) for n in sorted(networks, key=lambda n: (n.version, n)))
