"""Where a cluster named NAME keeps its state, and the names it gives what it creates.

Everything a cluster makes on this machine is found again from NAME alone: its state directory
(`/tmp/intercept-cluster-NAME`, root's only), and one short prefix derived from NAME that starts
the name of every network namespace and interface it creates (pods, the lab), every local pod's
directory and record, and the comment of every host rule of a pod's uplink. So `down` cleans up
after a cluster whose supervisor died without a word.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import secrets
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_PARENT = Path("/tmp")
STATE_PREFIX = "intercept-cluster-"
DEFAULT_NAME = "intercept"
_NAME = re.compile(r"[a-z]([-a-z0-9]{0,30}[a-z0-9])?")
_ALPHABET = string.ascii_lowercase + string.digits
# A prefix is "k" and 5 characters: pods get PREFIX + "p" + 3 characters (10); the lab is
# PREFIX + "l" (7, a lab allows 9); the node's network PREFIX + "n", whose host uplink's
# interfaces add one more (8 of 15).
PREFIX_STEM = "k"
POD_SUBNETS = ("10.244.0.0/24", "fc00:10:244::/64")


class LayoutError(ValueError):
    pass


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise LayoutError(
            f"cluster name {name!r}: use 1-32 lower-case letters, digits and '-', a letter "
            "first (it names a directory and the cluster's node)"
        )
    return name


def prefix_for(name: str) -> str:
    """The prefix of every namespace and interface of cluster `name` (stable, 6 characters)."""
    digest = int.from_bytes(hashlib.sha256(f"intercept-cluster/{name}".encode()).digest(), "big")
    chars = []
    for _ in range(5):
        digest, index = divmod(digest, len(_ALPHABET))
        chars.append(_ALPHABET[index])
    return PREFIX_STEM + "".join(chars)


def state_dir_for(name: str, parent: Path = STATE_PARENT) -> Path:
    return parent / f"{STATE_PREFIX}{check_name(name)}"


def pod_prefix(cluster_prefix: str) -> str:
    return cluster_prefix + "p" + "".join(secrets.choice(_ALPHABET) for _ in range(3))


@dataclass
class Ports:
    etcd_client: int = 0
    etcd_peer: int = 0
    apiserver: int = 0
    kyverno_webhook: int = 0


@dataclass
class Config:
    """What the supervisor and the node agent read from `config.json` in the state dir."""

    name: str
    prefix: str
    state_dir: str
    node_name: str
    ports: Ports
    lab_spec: dict[str, Any] | None = None
    service_cidr: str = "10.96.0.0/16"
    # The node's pods: outside the lab's ranges, so an interceptor allowed the lab's addresses
    # is not thereby allowed its neighbours.
    pod_subnets: list[str] = field(default_factory=lambda: list(POD_SUBNETS))
    # The kube-dns Service's ClusterIP, and the node's own address its pods reach it behind
    # (CoreDNS listens there: outside the pods' subnet, neither loopback nor link-local, which
    # an endpoint may not be).
    dns_service_ip: str = "10.96.0.10"
    node_service_address: str = "10.244.255.1"
    cluster_domain: str = "cluster.local"

    @property
    def dir(self) -> Path:
        return Path(self.state_dir)

    def path(self, *parts: str) -> Path:
        return self.dir.joinpath(*parts)

    @property
    def api_service_ip(self) -> str:
        """The `kubernetes` Service's ClusterIP: the first address of the Service range."""
        return str(ipaddress.ip_network(self.service_cidr)[1])

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    @property
    def lab_prefix(self) -> str:
        return self.prefix + "l"

    @property
    def node_netns(self) -> str:
        return self.prefix + "n"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def load(cls, state_dir: Path) -> Config:
        data = json.loads((state_dir / "config.json").read_text())
        data["ports"] = Ports(**data["ports"])
        return cls(**data)
