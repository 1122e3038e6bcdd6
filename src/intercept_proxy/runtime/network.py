"""A pod's network: its own namespace (loopback up) and one uplink.

- `LabUplink`: the lab's fake internet (tests, demos): DNS and upstream trust from the lab.
- `HostUplink`: the real internet through this machine: a veth pair on a subnet that clashes
  with nothing on the host, forwarding and masquerading for that subnet only, all removed again
  on teardown (the rules carry a comment naming the pod, and are deleted by it).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from intercept_proxy import netns, resolvconf
from intercept_proxy.lab import Lab, LabSpec
from intercept_proxy.lab.addresses import LAB_RANGES
from intercept_proxy.xds.resources import cidr

# One file per pod routed through this host: forwarding is restored when the last one leaves.
UPLINKS = Path("/run/intercept-proxy/uplinks")
# systemd-resolved's real upstreams, when /etc/resolv.conf names its loopback stub.
RESOLVED_UPSTREAMS = Path("/run/systemd/resolve/resolv.conf")


FORWARDING = ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding")
# Where pod uplinks take their /30 from, skipping whatever the host already routes.
CANDIDATES = ipaddress.IPv4Network("10.213.0.0/16")


class NetworkError(RuntimeError):
    pass


def _uplinked() -> bool:
    """Whether a pod of ours routes through this host (one file per pod in UPLINKS)."""
    return UPLINKS.is_dir() and any(not p.name.startswith(".") for p in UPLINKS.iterdir())


class Uplink(Protocol):
    def attach(self, pod_netns: str) -> None: ...

    def detach(self) -> None: ...

    @property
    def nameservers(self) -> tuple[str, ...]: ...

    @property
    def search(self) -> tuple[str, ...]:
        """Search domains for the pod's resolv.conf (a cluster's)."""
        ...

    @property
    def extra_trust(self) -> Path | None: ...


@dataclass
class LabUplink:
    lab: Lab

    def attach(self, pod_netns: str) -> None:
        self.lab.connect(pod_netns)

    def detach(self) -> None:
        """The veth pair goes with the pod's namespace."""

    @property
    def nameservers(self) -> tuple[str, ...]:
        return self.lab.dns_servers

    @property
    def search(self) -> tuple[str, ...]:
        return ()

    @property
    def extra_trust(self) -> Path | None:
        return self.lab.ca_cert_path


def host_nameservers(resolv_conf: Path = resolvconf.RESOLV_CONF) -> tuple[str, ...]:
    """Nameservers a pod can reach: loopback stubs are useless from another namespace."""

    def read(path: Path) -> list[str]:
        return [s for s in resolvconf.nameservers(path) if not ipaddress.ip_address(s).is_loopback]

    servers = read(resolv_conf) or read(RESOLVED_UPSTREAMS)
    if not servers:
        raise NetworkError(
            f"no nameserver reachable from a pod in {resolv_conf} or {RESOLVED_UPSTREAMS}"
        )
    return tuple(servers)


def _used_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    used = []
    for family in ("-4", "-6"):
        for entry in json.loads(netns.ip("-j", family, "route", "show", "table", "all") or "[]"):
            dst = entry.get("dst")
            if dst and dst not in ("default", "local", "broadcast", "multicast"):
                with contextlib.suppress(ValueError):
                    used.append(ipaddress.ip_network(dst, strict=False))
    return used


def free_subnet(
    candidates: ipaddress.IPv4Network, used: list[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> ipaddress.IPv4Network:
    """The first /30 of `candidates` that overlaps nothing routed on this host."""
    for subnet in candidates.subnets(new_prefix=30):
        if not any(subnet.overlaps(n) for n in used if n.version == 4):
            return subnet
    raise NetworkError(f"no free /30 left in {candidates}")


@dataclass
class HostUplink:
    """The pod reaches the real network through this machine (NAT)."""

    name: str  # unique, short: interface names and rule comments derive from it
    candidates: ipaddress.IPv4Network = CANDIDATES
    _host_if: str = ""

    @property
    def nameservers(self) -> tuple[str, ...]:
        return host_nameservers()

    @property
    def search(self) -> tuple[str, ...]:
        return ()

    @property
    def extra_trust(self) -> Path | None:
        return None

    def attach(self, pod_netns: str) -> None:
        subnet4 = free_subnet(self.candidates, _used_networks())
        host4, pod4 = list(subnet4.hosts())
        # A ULA /64 derived from the IPv4 subnet: unique per pod on this host.
        index = int(subnet4.network_address) & 0xFFFF
        subnet6 = ipaddress.ip_network(f"fd7a:1e7:{index:x}::/64")
        host6, pod6 = subnet6[1], subnet6[2]
        self._host_if = f"{self.name}h"
        netns.add_veth(self._host_if, None, f"{self.name}p", pod_netns)
        netns.ip("-batch", "-", input=f"address add {host4}/30 dev {self._host_if}\n"
                 f"address add {host6}/64 dev {self._host_if} nodad\n"
                 f"link set {self._host_if} up\n")  # fmt: skip
        netns.ip("-n", pod_netns, "-batch", "-", input=f"address add {pod4}/30 dev {self.name}p\n"
                 f"address add {pod6}/64 dev {self.name}p nodad\n"
                 f"link set {self.name}p up\n"
                 f"route add default via {host4}\n"
                 f"route add default via {host6}\n")  # fmt: skip
        UPLINKS.mkdir(parents=True, exist_ok=True)
        original = UPLINKS / ".forwarding"
        if not _uplinked():
            values = {k: (Path("/proc/sys") / k).read_text().strip() for k in FORWARDING}
            original.write_text(json.dumps(values))
        UPLINKS.joinpath(self.name).touch()
        for key in FORWARDING:
            (Path("/proc/sys") / key).write_text("1")
        comment = ["-m", "comment", "--comment", f"intercept-proxy {self.name}"]
        for tool, subnet in (("iptables", subnet4), ("ip6tables", subnet6)):
            self._add(
                tool,
                [
                    "-t",
                    "nat",
                    "-I",
                    "POSTROUTING",
                    "-s",
                    str(subnet),
                    "!",
                    "-o",
                    self._host_if,
                    "-j",
                    "MASQUERADE",
                    *comment,
                ],
            )
            self._add(tool, ["-I", "FORWARD", "-i", self._host_if, "-j", "ACCEPT", *comment])
            self._add(tool, ["-I", "FORWARD", "-o", self._host_if, "-m", "conntrack",
                             "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT",
                             *comment])  # fmt: skip

    def _add(self, tool: str, rule: list[str]) -> None:
        subprocess.run([tool, *rule], check=True, capture_output=True)

    def detach(self) -> None:
        release_host_uplink(self.name)


def _rules_commented(tool: str, comment: str) -> list[list[str]]:
    """`-t TABLE -D CHAIN ...` for every rule of `tool` (iptables or ip6tables) whose comment is
    `comment`, read from the rules in force."""
    saved = subprocess.run([f"{tool}-save"], capture_output=True, text=True, check=False).stdout
    table, found = "filter", []
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith("-A ") and f'--comment "{comment}"' in line:
            found.append(["-t", table, "-D", *shlex.split(line)[1:]])
    return found


def release_host_uplink(name: str) -> None:
    """Undo `HostUplink(name).attach`, from what is in force: also after a crash."""
    for tool in ("iptables", "ip6tables"):
        for rule in _rules_commented(tool, f"intercept-proxy {name}"):
            subprocess.run([tool, *rule], check=False, capture_output=True)
    if f"{name}h" in netns.links():
        netns.ip("link", "delete", f"{name}h")
    # Restore forwarding unless another pod still routes through this host.
    UPLINKS.joinpath(name).unlink(missing_ok=True)
    original = UPLINKS / ".forwarding"
    if not _uplinked() and original.exists():
        for key, value in json.loads(original.read_text()).items():
            (Path("/proc/sys") / key).write_text(value)
        original.unlink()


def for_namespace(up: Uplink, name: str) -> Uplink:
    """`up` for one more namespace: a lab takes any number; this machine's network one per
    name (its interfaces and rules are named after it)."""
    return HostUplink(name) if isinstance(up, HostUplink) else up


@contextlib.contextmanager
def uplink(lab: Path | None, lab_log: Path | None, prefix: str) -> Iterator[Uplink]:
    """A lab's, started from its spec `lab` (its receipts in `lab_log`), or this machine's."""
    if lab is None:
        yield HostUplink(prefix)
        return
    with Lab(LabSpec.load(lab), prefix=f"{prefix}l", log_path=lab_log) as running:
        yield LabUplink(running)


def add_uplink_options(parser: argparse.ArgumentParser) -> None:
    """The options of a command that runs the interceptor on this machine (`intercept run`,
    `intercept gateway`): its uplink, and the non-public ranges its upstreams may be in."""
    parser.add_argument("--lab", type=Path, metavar="SPEC", help="use a lab as the internet")
    parser.add_argument("--lab-log", type=Path, metavar="FILE", help="the lab's receipt log")
    parser.add_argument(
        "--upstream-private-range",
        action="append",
        default=[],
        metavar="CIDR",
        help="a non-public range an allowed upstream may be in, e.g. an internal registry's "
        "(repeatable; Envoy connects to no other non-public address)",
    )


def private_ranges(args: argparse.Namespace) -> tuple[str, ...]:
    """The non-public ranges Envoy may connect to: the operator's, and a lab's (its hosts'
    addresses are non-public). NetworkError for one that is not a CIDR, or for options of
    `add_uplink_options` that do not go together."""
    if args.lab is None and args.lab_log is not None:
        raise NetworkError("--lab-log needs --lab")
    for text in args.upstream_private_range:
        try:
            cidr(text)
        except ValueError as e:
            raise NetworkError(f"--upstream-private-range {text}: {e}") from None
    return (*(LAB_RANGES if args.lab else ()), *args.upstream_private_range)
