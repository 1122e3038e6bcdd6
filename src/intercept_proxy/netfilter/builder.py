"""proxy-init's rules as a pure function: a `CaptureConfig` in, `iptables-restore` text out.

Each family gets whole `nat` and `filter` tables (restoring them replaces what was there, so
applying twice leaves one copy of every rule). Both families have the same layout:

    nat     OUTPUT -> INTERCEPT_REDIRECT   sidecars untouched; DNS (any destination) to the agent;
                                           local destinations and allowed CIDRs untouched; TLS and
                                           HTTP ports to Envoy
    filter  INPUT  -> INTERCEPT_INPUT      loopback; replies; the inbound ports; (IPv6) neighbour
                                           discovery; every other connection from outside refused
            OUTPUT -> INTERCEPT_OUTPUT     sidecars; replies; our redirections; the sidecar range
                                           rejected; local; allowed CIDRs; (IPv6) neighbour
                                           discovery; everything else rejected

Rules are written the way iptables-save prints them (match order, quoting aside), so `verify`
can compare them with the rules in force line by line.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from intercept_proxy.netfilter.config import DNS, CaptureConfig

Family = Literal["ipv4", "ipv6"]
FAMILIES: tuple[Family, ...] = ("ipv4", "ipv6")

REDIRECT_CHAIN = "INTERCEPT_REDIRECT"
OUTPUT_CHAIN = "INTERCEPT_OUTPUT"
INPUT_CHAIN = "INTERCEPT_INPUT"

_BUILTIN_CHAINS = {
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
}
_UNREACHABLE = {"ipv4": "icmp-port-unreachable", "ipv6": "icmp6-port-unreachable"}
# Router solicitation/advertisement, neighbour solicitation/advertisement: sent by the kernel
# (no socket, so no UID), and IPv6 stops working for the sidecars without them.
_NEIGHBOUR_DISCOVERY = (133, 134, 135, 136)


@dataclass(frozen=True)
class Rules:
    """`iptables-restore` input for each family."""

    ipv4: str
    ipv6: str

    def of(self, family: Family) -> str:
        return self.ipv4 if family == "ipv4" else self.ipv6


def render(config: CaptureConfig) -> Rules:
    return Rules(ipv4=_render_family(config, "ipv4"), ipv6=_render_family(config, "ipv6"))


def _render_family(config: CaptureConfig, family: Family) -> str:
    nat = _table(
        family,
        "nat",
        "workload egress redirected to the sidecars",
        (REDIRECT_CHAIN,),
        _nat_rules(config, family),
    )
    filter_ = _table(
        family,
        "filter",
        "nothing leaves the pod but through the sidecars",
        (INPUT_CHAIN, OUTPUT_CHAIN),
        _filter_rules(config, family),
    )
    return "\n".join(nat + filter_) + "\n"


def _table(
    family: Family, table: str, purpose: str, chains: tuple[str, ...], rules: list[str]
) -> list[str]:
    return [
        f"# intercept proxy-init, {family} {table}: {purpose}",
        f"*{table}",
        *(f":{chain} ACCEPT [0:0]" for chain in _BUILTIN_CHAINS[table]),
        *(f":{chain} - [0:0]" for chain in chains),
        *rules,
        "COMMIT",
    ]


def _rule(chain: str, match: str, comment: str, target: str) -> str:
    # No quotes in comments: iptables-save escapes them in its own way.
    match = f"{match} " if match else ""
    return f'-A {chain} {match}-m comment --comment "{comment}" -j {target}'


def _cidrs(config: CaptureConfig, family: Family) -> list[str]:
    version = 4 if family == "ipv4" else 6
    return [c for c in config.allowed_cidrs if ipaddress.ip_network(c).version == version]


def _nat_rules(config: CaptureConfig, family: Family) -> list[str]:
    chain = REDIRECT_CHAIN
    rules = [_rule("OUTPUT", "", "intercept: redirect the workload egress", chain)]
    rules += _sidecar_rules(config, chain, "never redirected", "RETURN")
    for proto in ("udp", "tcp"):
        rules.append(
            _rule(
                chain,
                f"-p {proto} --dport {DNS}",
                "DNS to any destination: the agent sinkhole",
                f"REDIRECT --to-ports {config.dns_port}",
            )
        )
    rules.append(
        _rule(chain, "-m addrtype --dst-type LOCAL", "local destinations: not redirected", "RETURN")
    )
    # Allowed CIDRs (cluster services) are reached directly, TLS and HTTP included; their DNS
    # still goes through the sinkhole, which forwards the cluster's suffixes.
    rules += [
        _rule(chain, f"-d {cidr}", "allowed CIDR: not redirected", "RETURN")
        for cidr in _cidrs(config, family)
    ]
    for ports, target, what in (
        (config.tls_ports, config.tls_redirect_port, "TLS: the Envoy TLS listener"),
        (config.http_ports, config.http_redirect_port, "plain HTTP: the Envoy HTTP listener"),
    ):
        rules += [
            _rule(chain, f"-p tcp --dport {port}", what, f"REDIRECT --to-ports {target}")
            for port in ports
        ]
    return rules


def _filter_rules(config: CaptureConfig, family: Family) -> list[str]:
    sidecar_ports = "{}:{}".format(*config.sidecar_port_range)
    reset = "REJECT --reject-with tcp-reset"
    unreachable = f"REJECT --reject-with {_UNREACHABLE[family]}"
    rules = [
        _rule("INPUT", "", "intercept: nothing reaches the pod but replies", INPUT_CHAIN),
        _rule("OUTPUT", "", "intercept: nothing leaves but through the sidecars", OUTPUT_CHAIN),
    ]

    # Inbound: anyone who can route to the pod (in a cluster, every pod) could otherwise talk to
    # the workload's servers, a channel the policy never sees.
    chain = INPUT_CHAIN
    rules += [
        _rule(chain, "-i lo", "loopback: the pod itself", "RETURN"),
        _rule(
            chain,
            "-m conntrack --ctstate RELATED,ESTABLISHED",
            "replies to connections of the pod",
            "RETURN",
        ),
        *(
            _rule(chain, f"-p tcp --dport {port}", "inbound port: open", "RETURN")
            for port in config.inbound_ports
        ),
    ]
    if family == "ipv6":
        rules += _neighbour_discovery(chain, "RETURN")
    rules += [
        _rule(chain, "-p tcp", "inbound: refused", reset),
        _rule(chain, "", "inbound: refused", unreachable),
    ]

    chain = OUTPUT_CHAIN
    # Envoy goes wherever an allowed name resolves: never to the cloud's metadata service or to
    # the pod's own servers, whatever a name's owner makes it resolve to; new connections only,
    # its answers to the workload are local too. (Match order as iptables-save prints it.)
    envoy = f"-m owner --uid-owner {config.envoy_uid} -m conntrack --ctstate NEW"
    rules += [
        _rule(chain, f"-d {cidr} -p tcp {envoy}", "envoy: no link-local or metadata", reset)
        for cidr in _ENVOY_FORBIDDEN[family]
    ]
    rules.append(
        _rule(
            chain,
            f"-p tcp {envoy} -m addrtype --dst-type LOCAL ! --dport {sidecar_ports}",
            "envoy: no local servers but the sidecars",
            reset,
        )
    )
    rules += _sidecar_rules(config, chain, "unrestricted", "ACCEPT")
    # Replies only: a packet in the original direction of a flow someone else opened (a
    # sidecar's DNS query, say, re-sent from the same port) is the workload's, and refused.
    rules.append(
        _rule(
            chain,
            "-m conntrack --ctstate RELATED,ESTABLISHED --ctdir REPLY",
            "replies of connections made to the pod",
            "ACCEPT",
        )
    )
    # Checked after NAT: the destination already is the sidecar, which the next rules forbid.
    for proto, port in (
        ("tcp", config.tls_redirect_port),
        ("tcp", config.http_redirect_port),
        ("udp", config.dns_port),
        ("tcp", config.dns_port),
    ):
        rules.append(
            _rule(
                chain,
                f"-p {proto} --dport {port} -m conntrack --ctstate DNAT",
                f"redirected to a sidecar by {REDIRECT_CHAIN}",
                "ACCEPT",
            )
        )
    rules += [
        _rule(chain, f"-p tcp --dport {sidecar_ports}", "sidecar ports: not directly", reset),
        _rule(chain, f"-p udp --dport {sidecar_ports}", "sidecar ports: not directly", unreachable),
        _rule(
            chain,
            "-m addrtype --dst-type LOCAL",
            "local: loopback and pod addresses",
            "ACCEPT",
        ),
    ]
    rules += [
        _rule(chain, f"-d {cidr}", "allowed CIDR", "ACCEPT") for cidr in _cidrs(config, family)
    ]
    if family == "ipv6":
        rules += _neighbour_discovery(chain, "ACCEPT")
    rules += [
        _rule(chain, "-p tcp", "everything else: refused", reset),
        _rule(chain, "", "everything else: refused", unreachable),
    ]
    return rules


_ENVOY_FORBIDDEN = {
    "ipv4": ("169.254.0.0/16",),
    "ipv6": ("fe80::/10", "fd00:ec2::254/128"),
}


def _neighbour_discovery(chain: str, target: str) -> list[str]:
    return [
        _rule(chain, f"-p ipv6-icmp --icmpv6-type {icmp_type}", "neighbour discovery", target)
        for icmp_type in _NEIGHBOUR_DISCOVERY
    ]


def _sidecar_rules(config: CaptureConfig, chain: str, what: str, target: str) -> list[str]:
    return [
        _rule(chain, f"-m owner --uid-owner {uid}", f"{name} (sidecar): {what}", target)
        for uid, name in ((config.envoy_uid, "envoy"), (config.agent_uid, "agent"))
    ]
