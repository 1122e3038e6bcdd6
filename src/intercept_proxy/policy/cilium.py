"""The policy as Cilium enforces it: a CiliumNetworkPolicy whose L7 HTTP rules terminate TLS
with certificates cert-manager issues (`intercept render cilium`).

Cilium's HTTP rules only allow (a request passes when any rule of its destination matches: a
regular expression each for `:method`, `:path` with its query, and `:authority`), and its Envoy
refuses a regular expression of more than 100 RE2 instructions (`re2.max_program_size`), which
would leave the pod without its policy: every expression here is measured by RE2 itself, and a
policy that would need a larger one is refused. So the translation is a subset of the policy
(docs/kubernetes.md#cilium lists what is lost, tests/policy/test_cilium.py measures it on the
differential corpus):

- a wildcard entry is one label deep (a certificate's `*.` covers one label, and so do Cilium's
  `*.` patterns); a host is matched as written (no trailing dot) with its port;
- where a rule names paths, a segment holds no `%` or backslash and does not begin with a dot;
- GitHub: the policy denies some requests whatever grants the host (writes to other
  repositories, administration, receive-pack discovery), so entries that name GitHub hosts
  grant reads and OPTIONS there; the github_* keys grant git's fetch and push, and REST writes
  only with github_admin_access_enabled (without it, no rule small enough leaves out the
  administration paths);
- AWS regional endpoints get no rule (no certificate can name `s3.*.amazonaws.com`);
- DNS resolves the policy's names only.

What Cilium cannot check makes it wider than the policy: a read that sends a body, a Host
other than the SNI within one wildcard, and a path deeper than the policy judges (64
segments). What Cilium cannot do at all (credentials, signing, rate limits, budgets,
approvals, custom Rego) is refused by name.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import re2

from intercept_proxy.policy.domains import DomainEntry
from intercept_proxy.policy.model import Policy, PolicyError
from intercept_proxy.policy.native import (
    AWS_SUFFIX,
    RECEIVE_PACK,
    REFS,
    REPOS,
    UPLOAD_PACK,
    rego_facts,
    repo_pattern,
)

# The policy's keys Cilium cannot enforce, and why.
UNTRANSLATABLE = {
    "rego_modules": "custom Rego runs in the agent only",
    "credentials": "Cilium's proxy would send the placeholder, not the secret",
    "aws_signing": "Cilium's proxy signs nothing",
    "rate_limits": "Cilium's HTTP rules count nothing",
    "budgets": "Cilium's HTTP rules count nothing",
    "approvals": "no one can be asked: Cilium denies",
}
READS = "GET|HEAD"
WRITES = "POST|PUT|PATCH|DELETE"
TLS_PORT, PLAIN_PORT = 443, 80
# The ports of an entry without one (and of the GitHub and AWS hosts).
DEFAULT_PORTS = (PLAIN_PORT, TLS_PORT)
# A host name's label (its length unbounded: a bounded repetition costs RE2 hundreds of
# instructions).
_LABEL = "[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?"
_QUERY = r"(?:\?[^#]*)?"

# A path segment where a rule names paths: no / ? # % or backslash, not beginning with a dot
# (so no dot segment: the upstream would resolve it).
SEGMENT = r"[^/?#%\\.][^/?#%\\]*"
SEGMENTS = f"(?:/{SEGMENT})*/?"
# Envoy's RE2 limit (re2.max_program_size.error_level), which Cilium's Envoy keeps.
MAX_PROGRAM_SIZE = 100


@dataclass(frozen=True)
class HttpRule:
    """Cilium's PortRuleHTTP: regular expressions (None: any)."""

    host: str
    method: str | None = None
    path: str | None = None

    def to_dict(self) -> dict[str, str]:
        out = {"method": self.method, "path": self.path, "host": self.host}
        return {k: v for k, v in out.items() if v is not None}


@dataclass
class Group:
    """One destination: an exact name or a one-label wildcard (`*.suffix`), with its rules per
    port. A TLS port has its own certificate for the name."""

    fqdn: str
    ports: dict[int, list[HttpRule]] = field(default_factory=dict)

    @property
    def tls_ports(self) -> list[int]:
        return [p for p in sorted(self.ports) if p != PLAIN_PORT]

    @property
    def slug(self) -> str:
        """The name in object names (no `*`, `.` or `_` there), with a digest of the name
        itself: `a.b.com` and `a-b.com` stay apart, and so do the rendered objects' own
        names. Long names are cut before the digest (an object name has 253 characters)."""
        readable = self.fqdn.replace("*.", "wildcard.").replace(".", "-").replace("_", "-")
        digest = hashlib.sha256(self.fqdn.encode()).hexdigest()[:10]
        return f"{readable[:200]}-{digest}"


def _authority(name: str, ports: tuple[int, ...], tls: bool) -> str:
    """`:authority` for host names matching `name` (a regular expression) on a connection of
    the given kind: the scheme's default port may be left out where the entry allows it."""
    port = ":(?:" + "|".join(str(p) for p in sorted(ports)) + ")"
    default = TLS_PORT if tls else PLAIN_PORT
    return f"(?i:{name})" + (f"(?:{port})?" if default in ports else port)


def _name(host: str, wildcard: bool) -> str:
    return (f"{_LABEL}\\." if wildcard else "") + re.escape(host)


def _host(name: str, port: int) -> str:
    """`:authority` for the host `name` on its default ports, connected to on `port`."""
    return _authority(_name(name, False), DEFAULT_PORTS, port != PLAIN_PORT)


def _entry_ports(entry: DomainEntry) -> tuple[int, ...]:
    return (entry.port,) if entry.port else DEFAULT_PORTS


class _Builder:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.groups: dict[str, Group] = {}
        self.suffixes = {
            e.host for e in (*policy.allowed_domains, *policy.unrestricted_domains) if e.wildcard
        }
        facts = rego_facts()
        self.github_hosts = sorted(facts.github_hosts | facts.github_api_hosts)

    def fqdn(self, name: str) -> str:
        """The group of an exact name: the wildcard one label above it, if any (one
        certificate per destination)."""
        parent = name.partition(".")[2]
        return f"*.{parent}" if parent in self.suffixes else name

    def add(self, fqdn: str, port: int, rule: HttpRule) -> None:
        rules = self.groups.setdefault(fqdn, Group(fqdn)).ports.setdefault(port, [])
        if rule not in rules:
            rules.append(rule)

    def entry(self, entry: DomainEntry, methods: str | None) -> None:
        """A domain entry's grant: `methods` (None: any). An entry of any method that names a
        GitHub host grants reads and OPTIONS only (its writes are the github_* keys'): the
        whole wildcard so, if it is one (no rule small enough leaves those hosts out)."""
        fqdn = f"*.{entry.host}" if entry.wildcard else self.fqdn(entry.host)
        if methods is None and any(_covers(entry, h) for h in self.github_hosts):
            methods = f"{READS}|OPTIONS"
        ports = _entry_ports(entry)
        for port in ports:
            host = _authority(_name(entry.host, entry.wildcard), ports, port != PLAIN_PORT)
            for path in _read_paths(entry.host) if methods and not entry.wildcard else [None]:
                self.add(fqdn, port, HttpRule(host, methods, path))

    def github(self) -> None:
        policy = self.policy
        for name in sorted(rego_facts().github_hosts) if policy.github_read_access_enabled else ():
            for port in DEFAULT_PORTS:
                host = _host(name, port)
                for path in _read_paths(name):
                    self.add(self.fqdn(name), port, HttpRule(host, READS, path))
                if name == "github.com":
                    fetch = f"/{SEGMENT}/{SEGMENT}/{UPLOAD_PACK}/?"
                    self.add(self.fqdn(name), port, HttpRule(host, "POST", fetch))
        repos = [repo_pattern([r]) for r in policy.github_allowed_repos]
        repos += [f"{repo_pattern([o])}/{SEGMENT}" for o in policy.github_allowed_users]
        dot_git = r"(?i:\.git)?"
        for repo, port in ((r, p) for r in repos for p in DEFAULT_PORTS):  # a rule each: RE2
            git = _host("github.com", port)
            discovery = rf"/{repo}{dot_git}{REFS}\?service=git-receive-pack"
            self.add(self.fqdn("github.com"), port, HttpRule(git, READS, discovery))
            push = f"/{repo}{dot_git}/{RECEIVE_PACK}/?"
            self.add(self.fqdn("github.com"), port, HttpRule(git, "POST", push))
            for name in (
                sorted(rego_facts().github_api_hosts) if policy.github_admin_access_enabled else ()
            ):
                path = f"{REPOS}/{repo}{SEGMENTS}{_QUERY}"
                self.add(self.fqdn(name), port, HttpRule(_host(name, port), WRITES, path))

    def aws(self) -> None:
        for service in self.policy.aws_allowed_services if self.policy.aws_access_enabled else ():
            name = f"{service}.{AWS_SUFFIX}"
            for port in DEFAULT_PORTS:
                self.add(self.fqdn(name), port, HttpRule(_host(name, port)))


def _covers(entry: DomainEntry, name: str) -> bool:
    """Whether `entry` names `name` (a wildcard: one label below it, as Cilium matches)."""
    if not entry.wildcard:
        return entry.host == name
    label, _, parent = name.partition(".")
    return parent == entry.host and bool(label)


def _read_paths(name: str) -> list[str | None]:
    """The paths a read of `name` may have: any, but on github.com no query except git's fetch
    (receive-pack discovery is a write's first step, which the policy denies for other
    repositories whatever grants the host)."""
    if name != "github.com":
        return [None]
    return [r"/[^?#%\\]*", rf"/{SEGMENT}/{SEGMENT}{REFS}\?service=git-upload-pack"]


def _program_sizes(groups: list[Group]) -> Iterable[tuple[str, int, str, int]]:
    """(destination, port, field, RE2 program size) of every expression of the rules."""
    for group in groups:
        for port, rules in group.ports.items():
            for rule in rules:
                for key, pattern in rule.to_dict().items():
                    yield group.fqdn, port, key, re2.compile(pattern).programsize


def translate(policy: Policy) -> list[Group]:
    """The policy's destinations and their rules, or a PolicyError naming each key Cilium
    cannot enforce."""
    refused = [key for key in UNTRANSLATABLE if getattr(policy, key)]
    if refused:
        reasons = "; ".join(f"{k}: {UNTRANSLATABLE[k]}" for k in refused)
        raise PolicyError(policy.source, None, f"Cilium cannot enforce {reasons}")
    builder = _Builder(policy)
    for entry in policy.unrestricted_domains:
        builder.entry(entry, None)
    for entry in policy.allowed_domains:
        builder.entry(entry, READS)
    builder.github()
    builder.aws()
    groups = [builder.groups[k] for k in sorted(builder.groups)]
    large = [t for t in _program_sizes(groups) if t[3] > MAX_PROGRAM_SIZE]
    if large:
        named = "; ".join(f"{d}:{p} {k} ({n})" for d, p, k, n in large)
        raise PolicyError(
            policy.source,
            None,
            f"Cilium's Envoy refuses a regular expression of more than {MAX_PROGRAM_SIZE} RE2 "
            f"instructions, and these need more: {named}",
        )
    return groups


@dataclass(frozen=True)
class Target:
    """Where the rendered objects go and what they select (`intercept render cilium`'s
    options)."""

    name: str = "intercept"
    namespace: str = "default"
    selector: tuple[tuple[str, str], ...] = (("app", "intercept-workload"),)
    secrets_namespace: str = "cilium-secrets"
    issuer: str = "intercept-proxy-ca"
    upstream_ca: str = "intercept-upstream-ca"

    def secret(self, group: Group) -> str:
        return f"{self.name}-{group.slug}"


# Lookups go through Cilium's DNS proxy, which learns the addresses toFQDNs allows.
KUBE_DNS = {"k8s:io.kubernetes.pod.namespace": "kube-system", "k8s-app": "kube-dns"}


def _selector(group: Group) -> str:
    return "matchPattern" if group.fqdn.startswith("*.") else "matchName"


def _egress(group: Group, target: Target) -> dict[str, Any]:
    to_ports = []
    for port, rules in sorted(group.ports.items()):
        rule: dict[str, Any] = {"ports": [{"port": str(port), "protocol": "TCP"}]}
        if port in group.tls_ports:
            rule["serverNames"] = [group.fqdn]
            rule["terminatingTLS"] = {
                "secret": {"namespace": target.secrets_namespace, "name": target.secret(group)}
            }
            rule["originatingTLS"] = {
                "secret": {"namespace": target.secrets_namespace, "name": target.upstream_ca}
            }
        rule["rules"] = {"http": [r.to_dict() for r in rules]}
        to_ports.append(rule)
    return {"toFQDNs": [{_selector(group): group.fqdn}], "toPorts": to_ports}


def _certificate(group: Group, target: Target) -> dict[str, Any]:
    return {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": {"name": target.secret(group), "namespace": target.secrets_namespace},
        "spec": {
            "secretName": target.secret(group),
            "dnsNames": [group.fqdn],
            "issuerRef": {
                "group": "cert-manager.io",
                "kind": "ClusterIssuer",
                "name": target.issuer,
            },
            "duration": "8760h",
            "renewBefore": "720h",
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
        },
    }


def render(policy: Policy, target: Target, upstream_ca_pem: str) -> list[dict[str, Any]]:
    """The objects to apply: the CA issuer, a Certificate per TLS destination, the upstream CA
    bundle Cilium's proxy re-encrypts with, and the CiliumNetworkPolicy."""
    groups = translate(policy)
    issuer = {
        "apiVersion": "cert-manager.io/v1",
        "kind": "ClusterIssuer",
        "metadata": {"name": target.issuer},
        "spec": {"ca": {"secretName": target.issuer}},
    }
    upstream = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": target.upstream_ca, "namespace": target.secrets_namespace},
        "type": "Opaque",
        "stringData": {"ca.crt": upstream_ca_pem},
    }
    # The policy's names only: any other lookup is refused (the sandbox's sinkhole answers
    # none either), so DNS carries nothing out.
    names = [{_selector(g): g.fqdn} for g in groups]
    dns = {
        "toEndpoints": [{"matchLabels": KUBE_DNS}],
        "toPorts": [{"ports": [{"port": "53", "protocol": "ANY"}], "rules": {"dns": names}}],
    }
    policy_object = {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": target.name, "namespace": target.namespace},
        "spec": {
            "endpointSelector": {"matchLabels": dict(target.selector)},
            "egress": [dns, *(_egress(g, target) for g in groups)],
        },
    }
    certificates = [_certificate(g, target) for g in groups if g.tls_ports]
    return [issuer, *certificates, upstream, policy_object]
