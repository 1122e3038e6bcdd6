"""The agent's settings: each declared once, with its command-line option (`intercept agent
run`'s options, and the command lines the injector, the tests and the bench write, derive from
here)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from intercept_proxy import ports
from intercept_proxy.options import command_line, group, option
from intercept_proxy.pki.files import SYSTEM_TRUST
from intercept_proxy.policy.combined import OverrideMode, UnknownClients
from intercept_proxy.xds.resources import DataPlane

COMMAND = ("intercept", "agent", "run")


def _hours(text: str) -> dt.timedelta:
    return dt.timedelta(hours=float(text))


def _show_hours(value: dt.timedelta) -> str:
    return f"{value.total_seconds() / 3600:g}"


def _port(text: str) -> int:
    return int(text)


@dataclass(frozen=True)
class AgentSettings:
    policy: Path = option("--policy", "policy file (watched)", parse=Path)
    ca_cert: Path = option("--ca-cert", "CA certificate (PEM)", parse=Path)
    ca_key: Path = option(
        "--ca-key",
        "CA private key (PEM); when neither CA file exists, a CA is generated there",
        parse=Path,
    )
    upstream_ca: Path = option(
        "--upstream-ca",
        "CA bundle that upstream servers are verified against (watched)",
        default=SYSTEM_TRUST,
        parse=Path,
    )
    trust_bundle: Path | None = option(
        "--trust-bundle",
        "write the workload's CA bundle here: the sandbox CA, then the system roots",
        default=None,
        parse=Path,
    )
    # Where health and metrics listen: loopback, or "::" for kubelet probes and scrapers (in a
    # pod, proxy-init's rules decide which of the two ports is open from outside).
    health_addresses: tuple[str, ...] = option(
        "--health-address",
        "where health and metrics listen (repeatable)",
        default=("127.0.0.1",),
        repeatable=True,
        metavar="ADDRESS",
    )
    # A pod's own policy (from its annotation, through a downwardAPI file) and what it may do.
    pod_policy: Path | None = option(
        "--pod-policy",
        "the pod's own policy (watched; empty or missing: none), e.g. from the "
        "intercept-proxy/opa-data annotation",
        default=None,
        parse=Path,
        metavar="FILE",
    )
    pod_policy_mode: OverrideMode = option(
        "--pod-policy-mode",
        "replace the default policy, narrow it (both must allow), or ignore the pod's",
        default=OverrideMode.NARROW,
        parse=OverrideMode,
        show=lambda mode: str(mode.value),
        choices=tuple(m.value for m in OverrideMode),
    )
    # The egress gateway's clients in a cluster, each judged by its pod's policy too
    # (agent/clients.py): the pods are read from the API server, with the pod's service account.
    gateway_pod_policy: OverrideMode = option(
        "--gateway-pod-policy",
        "narrow: a client of the gateway whose pod has its own policy (the intercept-proxy/"
        "opa-data annotation) is judged by both (pods read from the API server); none: every "
        "client by --policy alone",
        default=OverrideMode.NONE,
        parse=OverrideMode,
        show=lambda mode: str(mode.value),
        choices=(OverrideMode.NONE.value, OverrideMode.NARROW.value),
    )
    gateway_unknown_clients: UnknownClients = option(
        "--gateway-unknown-clients",
        "with --gateway-pod-policy narrow, a client at an address no pod holds: judged by "
        "--policy (default), or refused (refuse)",
        default=UnknownClients.DEFAULT,
        parse=UnknownClients,
        show=lambda value: str(value.value),
        choices=tuple(u.value for u in UnknownClients),
    )
    xds_port: int = option(
        "--xds-port", "xDS (ADS) for Envoy", default=ports.AGENT_XDS, parse=_port
    )
    health_port: int = option(
        "--health-port", "health (probes)", default=ports.AGENT_HTTP, parse=_port
    )
    metrics_port: int = option(
        "--metrics-port", "metrics", default=ports.AGENT_METRICS, parse=_port
    )
    cert_validity: dt.timedelta = option(
        "--cert-validity-hours",
        "leaf certificate validity",
        default=dt.timedelta(hours=12),
        parse=_hours,
        show=_show_hours,
    )
    cert_cache_size: int = option(
        "--cert-cache-size",
        "leaf certificates kept in memory, and held by Envoy (beyond, the least recently used "
        "are released)",
        default=1024,
        parse=int,
    )
    # The DNS sinkhole (0: off), the names it resolves for real, and whom it asks (None: the
    # nameservers of resolv.conf).
    dns_port: int = option(
        "--dns-port",
        "the DNS sinkhole's port on 127.0.0.1 and ::1 (0: no sinkhole)",
        default=ports.AGENT_DNS,
        parse=_port,
    )
    dns_forward_suffixes: tuple[str, ...] = option(
        "--dns-forward-suffix",
        "names under SUFFIX are resolved for real (repeatable, e.g. cluster.local)",
        default=(),
        repeatable=True,
        metavar="SUFFIX",
    )
    dns_upstream: tuple[str, ...] | None = option(
        "--dns-upstream",
        "resolver for forwarded names (repeatable; default: resolv.conf)",
        default=None,
        repeatable=True,
        metavar="ADDRESS",
    )
    control_socket: Path | None = option(
        "--control-socket",
        "serve pending approvals on a Unix socket here (intercept approvals); none: no one "
        "can answer, and requests needing approval are refused at once",
        default=None,
        parse=Path,
        metavar="PATH",
    )
    data_plane: DataPlane = group(DataPlane)


def agent_command(**values: Any) -> list[str]:
    """`intercept agent run` with `values` (AgentSettings' and DataPlane's field names)."""
    return [*COMMAND, *command_line(AgentSettings, **values)]
