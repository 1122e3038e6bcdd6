"""The policy as Cilium enforces it: a CiliumNetworkPolicy whose L7 HTTP rules terminate TLS
with certificates cert-manager issues (`intercept render cilium`).

Cilium's HTTP rules only allow (a request passes when any rule of its destination matches: a
regular expression each for `:method`, `:path` with its query, and `:authority`), so the
translation is a subset of the policy, never more (docs/kubernetes.md#cilium lists what is
lost, tests/policy/test_cilium.py measures it on the differential corpus):

- a wildcard entry is one label deep (a certificate's `*.` covers one label, and so do Cilium's
  `*.` patterns); a host is matched as written (no trailing dot) with its port;
- paths never hold `%`, a backslash, or a `.` or `..` segment where a rule names paths;
- GitHub: where the policy denies some writes whatever grants the host (other repositories,
  administration, receive-pack discovery), the rules grant reads and the github_* writes only,
  and REST writes below a repository only under subresources that hold no administration path;
- AWS regional endpoints get no rule (no certificate can name `s3.*.amazonaws.com`).

Two things Cilium cannot check make it wider than the policy: a read that sends a body, and,
within a wildcard's group, a Host that differs from the SNI. What Cilium cannot do at all
(credentials, signing, rate limits, budgets, approvals, custom Rego) is refused by name.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

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
# A path segment: none of / ? # % \, and not a dot segment (`.`, `..`).
_CHARS = r"/?#%\\"
_LABEL = "[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_QUERY = r"(?:\?[^#]*)?"


def _char_class(excluded: Iterable[str]) -> str:
    return "[^" + _CHARS + "".join(re.escape(c) for c in sorted(set(excluded))) + "]"


def not_one_of(words: Iterable[str], case_insensitive: bool = True) -> str:
    """A regular expression (RE2) for one path segment that is none of `words` (in any case
    when `case_insensitive`): RE2 has no lookahead, so the complement is spelt out along the
    words' common prefixes."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for char in word.lower() if case_insensitive else word:
            node = node.setdefault(char, {})
        node[""] = {}  # a word ends here

    def rest(node: dict[str, Any], at_root: bool) -> str:
        children = sorted(c for c in node if c)
        branches = [_char_class(children) + _char_class(()) + "*"]
        branches += [re.escape(c) + rest(node[c], False) for c in children]
        body = "(?:" + "|".join(branches) + ")"
        # Ending here is outside `words` unless a word ends here; a segment is never empty.
        return body if at_root or "" in node else body + "?"

    pattern = rest(trie, True)
    # Under (?i), RE2 folds the case of classes too, negated ones included.
    return f"(?i:{pattern})" if case_insensitive else pattern


SEGMENT = not_one_of((".", ".."), case_insensitive=False)
SEGMENTS = f"(?:/{SEGMENT})*/?"


def _admin_first_segments() -> list[str]:
    """The first segment of every administration path of the Rego (read from it). The empty
    path (the repository itself) no rule matches: they name a segment below it."""
    words: list[str] = []
    for pattern in filter(None, rego_facts().github_admin_paths):
        match = re.match(r"/(?:\(\?:([a-z|-]+)\)|([a-z-]+))(?:/|\(|$)", pattern)
        if match is None:
            raise ValueError(f"cannot read the first segment of the admin path {pattern!r}")
        words += (match.group(1) or match.group(2)).split("|")
    return words


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
        """The name in object names: no object name holds `*`, `.` or `_` (a name with `_`
        gets a digest of itself, so `a_b` and `a--b` stay apart)."""
        slug = self.fqdn.replace("*.", "wildcard.").replace(".", "-")
        if "_" in slug:
            digest = hashlib.sha256(self.fqdn.encode()).hexdigest()[:8]
            slug = f"{slug.replace('_', '-')}-{digest}"
        return slug


def _authority(name: str, ports: tuple[int, ...], tls: bool) -> str:
    """`:authority` for host names matching `name` (a regular expression) on a connection of
    the given kind: the scheme's default port may be left out where the entry allows it."""
    port = ":(?:" + "|".join(str(p) for p in sorted(ports)) + ")"
    default = TLS_PORT if tls else PLAIN_PORT
    return f"(?i:{name})" + (f"(?:{port})?" if default in ports else port)


def _name(host: str, wildcard: bool) -> str:
    return (f"{_LABEL}\\." if wildcard else "") + re.escape(host)


def _entry_ports(entry: DomainEntry) -> tuple[int, ...]:
    return (entry.port,) if entry.port else (PLAIN_PORT, TLS_PORT)


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
        """A domain entry's grant: `methods` (None: any). On the GitHub hosts an entry of any
        method covers, it grants reads and OPTIONS only (their writes are the github_* keys'),
        and reads of github.com skip receive-pack discovery."""
        fqdn = f"*.{entry.host}" if entry.wildcard else self.fqdn(entry.host)
        covered = [h for h in self.github_hosts if _covers(entry, h)] if methods is None else []
        ports = _entry_ports(entry)
        for port in ports:
            tls = port != PLAIN_PORT
            if not covered:
                path = None if entry.wildcard else _github_read_path(entry.host)
                name = _name(entry.host, entry.wildcard)
                self.add(fqdn, port, HttpRule(_authority(name, ports, tls), methods, path))
            elif entry.wildcard:
                labels = [h.removesuffix("." + entry.host) for h in covered]
                name = f"{not_one_of(labels)}\\.{re.escape(entry.host)}"
                self.add(fqdn, port, HttpRule(_authority(name, ports, tls)))
            for host in covered:
                rule = HttpRule(
                    _authority(_name(host, False), ports, tls),
                    f"{READS}|OPTIONS",
                    _github_read_path(host),
                )
                self.add(fqdn, port, rule)

    def github(self) -> None:
        policy = self.policy
        hosts = rego_facts().github_hosts
        both = (PLAIN_PORT, TLS_PORT)
        for name in sorted(hosts) if policy.github_read_access_enabled else ():
            for port in both:
                host = _authority(_name(name, False), both, port != PLAIN_PORT)
                self.add(self.fqdn(name), port, HttpRule(host, READS, _github_read_path(name)))
                if name == "github.com":
                    fetch = f"/{SEGMENT}/{SEGMENT}/{UPLOAD_PACK}/?"
                    self.add(self.fqdn(name), port, HttpRule(host, "POST", fetch))
        patterns = [repo_pattern([r]) for r in policy.github_allowed_repos]
        patterns += [f"{repo_pattern([o])}/{SEGMENT}" for o in policy.github_allowed_users]
        if not patterns:
            return
        repos = "(?:" + "|".join(patterns) + ")"
        dot_git = r"(?i:\.git)?"
        below = (
            SEGMENTS
            if policy.github_admin_access_enabled
            else f"/{not_one_of(_admin_first_segments())}{SEGMENTS}"
        )
        for port in both:
            tls = port != PLAIN_PORT
            git = _authority(_name("github.com", False), both, tls)
            discovery = rf"/{repos}{dot_git}{REFS}\?service=git-receive-pack"
            self.add(self.fqdn("github.com"), port, HttpRule(git, READS, discovery))
            push = f"/{repos}{dot_git}/{RECEIVE_PACK}/?"
            self.add(self.fqdn("github.com"), port, HttpRule(git, "POST", push))
            for name in sorted(rego_facts().github_api_hosts):
                api = _authority(_name(name, False), both, tls)
                path = f"{REPOS}/{repos}{below}{_QUERY}"
                self.add(self.fqdn(name), port, HttpRule(api, WRITES, path))

    def aws(self) -> None:
        both = (PLAIN_PORT, TLS_PORT)
        for service in self.policy.aws_allowed_services if self.policy.aws_access_enabled else ():
            name = f"{service}.{AWS_SUFFIX}"
            for port in both:
                host = _authority(_name(name, False), both, port == TLS_PORT)
                self.add(self.fqdn(name), port, HttpRule(host))


def _covers(entry: DomainEntry, name: str) -> bool:
    """Whether `entry` names `name` (a wildcard: one label below it, as Cilium matches)."""
    if not entry.wildcard:
        return entry.host == name
    label, _, parent = name.partition(".")
    return parent == entry.host and bool(label)


def _github_read_path(name: str) -> str | None:
    """Reads of github.com skip receive-pack discovery (a write's first step, which the policy
    denies for other repositories whatever grants the host): no query, or git's fetch."""
    if name != "github.com":
        return None
    fetch = rf"/{SEGMENT}/{SEGMENT}{REFS}\?service=git-upload-pack"
    return f"(?:/[^?#%\\\\]*|{fetch})"


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
    return [builder.groups[k] for k in sorted(builder.groups)]


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


def _egress(group: Group, target: Target) -> dict[str, Any]:
    selector = "matchPattern" if group.fqdn.startswith("*.") else "matchName"
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
    return {"toFQDNs": [{selector: group.fqdn}], "toPorts": to_ports}


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
    dns = {
        "toEndpoints": [{"matchLabels": KUBE_DNS}],
        "toPorts": [
            {
                "ports": [{"port": "53", "protocol": "ANY"}],
                "rules": {"dns": [{"matchPattern": "*"}]},
            }
        ],
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
