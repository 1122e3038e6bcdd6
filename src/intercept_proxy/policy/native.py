"""The policy compiled into routes that Envoy decides itself, without asking the agent.

The Rego policy stays the one definition of every decision: compiling asks it. Requests are
split into classes within which the policy cannot tell two requests apart (the same grants,
explanations and reason, but for the request's own method and host, which Envoy writes into the
reason itself). The policy is evaluated on representatives of each class, and the class becomes
a route with that decision. A class is only decided natively when two different representatives
get the same decision; otherwise, and for every request the classes do not describe, the route
asks the agent.

What a class is made of:

- the host: each exact name the policy mentions (its entries, the GitHub hosts, the allowed AWS
  services' global endpoints) is a class; each wildcard `*.s` holds the names below `s` that no
  more specific entry covers; `*` holds the rest. Envoy's virtual hosts make the same choice
  (the most specific domain wins), so a class is a virtual host;
- within a host: AWS regional endpoints (an authority pattern) and, on the GitHub hosts, the
  paths the policy judges (git smart HTTP, the REST API's repositories, unjudgeable paths);
- the method.

Only canonical requests are decided by these routes: the gate in front of them (in
`intercept_proxy.xds.routes`) sends anything else to the agent: a host name that is not lower
case, has a port or a trailing dot; an SNI that is not the host (a wildcard's routes have the
agent check that themselves); an unusual method or scheme; a
protocol upgrade; a path with more than 64 segments where the class's routes look at paths;
and, where the class decides a read otherwise when it sends a body, a read that sends one. For
those, the request's target is `METHOD host:port` with the listener's default port.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from intercept_proxy.policy.engine import PolicyEngine, rego_values
from intercept_proxy.policy.input import http_input
from intercept_proxy.policy.model import Policy

# The methods Envoy's gate lets through to native routes; any other goes to the agent.
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
# A read that sends a body (upgrades never reach the routes, see the gate in xds/routes.py).
_SENDING = {"content-length": "7"}
AWS_SUFFIX = "amazonaws.com"
# Regions for representatives of AWS regional endpoints.
_REGIONS = ("us-east-1", "eu-west-3", "ap-southeast-2", "us-gov-west-1", "ca-central-1")
# Labels for representative host names: underscores keep them clear of AWS service names.
_REP_LABELS = ("rep_a", "rep_b.rep_c")
_UNMATCHED = "intercept-unmatched"


@dataclass(frozen=True)
class RegoFacts:
    """What the compiler must know of the Rego's structure: read from it, never copied."""

    github_hosts: frozenset[str]  # github_read_hosts
    github_api_hosts: frozenset[str]
    aws_region: str  # a regular expression (RE2 and Python alike)
    # What follows /repos/{owner}/{repo} in a request that administers the repository: RE2
    # patterns over the lower-cased segments, each after a slash.
    github_admin_paths: tuple[str, ...]
    # Reads: whether one sends a body may change its decision.
    read_methods: tuple[str, ...]
    # Paths with more segments than this the policy cannot judge.
    max_segments: int

    @property
    def admin_suffix(self) -> str:
        """The administration paths as Envoy sees them: any case, a trailing slash or not."""
        return f"(?i:{'|'.join(self.github_admin_paths)})/?"


@functools.cache
def rego_facts() -> RegoFacts:
    values = rego_values(
        "github_read_hosts",
        "github_api_hosts",
        "aws_region",
        "github_admin_paths",
        "read_methods",
        "max_segments",
    )
    return RegoFacts(
        frozenset(values["github_read_hosts"]),
        frozenset(values["github_api_hosts"]),
        str(values["aws_region"]),
        tuple(values["github_admin_paths"]),
        tuple(sorted(values["read_methods"])),
        int(values["max_segments"]),
    )


@dataclass(frozen=True)
class Outcome:
    """A class's decision: `allow` None means the agent decides. `reason` is the policy's reason
    after the request's target (`METHOD host:port`), which Envoy prepends."""

    allow: bool | None
    rule: str = ""
    reason: str = ""


ASK_AGENT = Outcome(None)


@dataclass(frozen=True)
class Route:
    """Requests with one of `methods` whose path (without query), path with query and authority
    match the RE2 patterns given (None: any) get `outcome`. `bodyless`: only when they send
    nothing (they are reads, and a read that sends something gets another decision)."""

    methods: tuple[str, ...]
    outcome: Outcome
    path: str | None = None
    path_and_query: str | None = None
    authority: str | None = None
    bodyless: bool = False


@dataclass(frozen=True)
class VirtualHost:
    domain: str  # an exact name, `*.suffix`, or `*`
    routes: tuple[Route, ...]


@dataclass(frozen=True)
class NativePolicy:
    tls: bool
    hosts: tuple[VirtualHost, ...]


@dataclass(frozen=True)
class _Subclass:
    """Part of a host class: the route's patterns and two representatives (host, path)."""

    representatives: tuple[tuple[str, str], ...]
    path: str | None = None
    path_and_query: str | None = None
    authority: str | None = None
    fixed: Outcome | None = None  # decided without asking the policy


@dataclass
class _Hosts:
    """The host classes of a policy: exact names and wildcard suffixes."""

    exact: set[str] = field(default_factory=set)
    suffixes: set[str] = field(default_factory=set)

    def owner(self, host: str) -> str:
        """The class a host belongs to, as Envoy picks its virtual host."""
        if host in self.exact:
            return host
        matching = [s for s in self.suffixes if host.endswith("." + s)]
        return f"*.{max(matching, key=len)}" if matching else "*"


def _host_classes(policy: Policy) -> _Hosts:
    facts = rego_facts()
    hosts = _Hosts(exact={*facts.github_hosts, *facts.github_api_hosts})
    asked = policy.approvals.hosts if policy.approvals is not None else ()
    for entry in (*policy.allowed_domains, *policy.unrestricted_domains, *asked):
        (hosts.suffixes if entry.wildcard else hosts.exact).add(entry.host)
    if policy.aws_access_enabled:
        hosts.exact |= {f"{s}.{AWS_SUFFIX}" for s in policy.aws_allowed_services}
    return hosts


def _in_class(hosts: _Hosts, domain: str, candidates: Iterable[str]) -> list[str]:
    return [h for h in candidates if hosts.owner(h) == domain]


def _first_in_class(hosts: _Hosts, domain: str, make: Callable[[str], str]) -> str:
    """make(padding) for the shortest padding that lands in the class (an entry could name the
    obvious candidate)."""
    padding = ""
    while hosts.owner(make(padding)) != domain:
        padding += "x"
    return make(padding)


def _representative_hosts(hosts: _Hosts, domain: str) -> tuple[str, ...]:
    if not domain.startswith("*"):
        return (domain,)

    def candidate(label: str) -> Callable[[str], str]:
        if domain == "*":
            return lambda pad: f"{label}.{_UNMATCHED}{pad}"
        return lambda pad: f"{label}{pad}.{domain[2:]}"

    return tuple(_first_in_class(hosts, domain, candidate(label)) for label in _REP_LABELS)


def _aws_subclasses(policy: Policy, hosts: _Hosts, domain: str) -> list[_Subclass]:
    """Regional endpoints (`{service}.{region}.amazonaws.com`) of allowed services in a wildcard
    or the `*` class: the only hosts there whose decision depends on the name."""
    if not policy.aws_access_enabled or not (domain == "*" or domain.startswith("*.")):
        return []
    out = []
    for service in policy.aws_allowed_services:
        candidates = [f"{service}.{r}.{AWS_SUFFIX}" for r in _REGIONS]
        if domain.startswith("*."):
            label = domain[2:].removesuffix("." + AWS_SUFFIX)
            if re.fullmatch(rego_facts().aws_region, label):  # `*.{region}.amazonaws.com`
                candidates.append(f"{service}.{label}.{AWS_SUFFIX}")
        hosts_here = _in_class(hosts, domain, candidates)[:2]
        region = rego_facts().aws_region
        pattern = rf"{re.escape(service)}\.{region}\.{re.escape(AWS_SUFFIX)}"
        if hosts_here:
            out.append(_Subclass(tuple((h, "/") for h in hosts_here), authority=pattern))
        elif _may_hold_regional(domain):
            # Other entries name every sample region: the agent decides what is left here.
            out.append(_Subclass((), authority=pattern, fixed=ASK_AGENT))
    return out


def _may_hold_regional(domain: str) -> bool:
    """Whether `{service}.{region}.amazonaws.com` can be in this wildcard (or `*`) class."""
    suffix = domain[2:]
    if domain == "*" or f".{AWS_SUFFIX}".endswith(f".{suffix}"):
        return True
    label = suffix.removesuffix(f".{AWS_SUFFIX}")
    return label != suffix and re.fullmatch(rego_facts().aws_region, label) is not None


def _case_variants(text: str) -> tuple[str, str]:
    return text, text.upper()


def repo_pattern(repos: Iterable[str]) -> str:
    return "(?i:" + "|".join(re.escape(r) for r in repos) + ")"


# Percent-encoded slashes or backslashes, or a backslash: the policy cannot judge the path.
_UNJUDGEABLE = r".*(%2[fF]|%5[cC]|\\).*"
# Any other percent-encoding: the upstream decodes it (`hoo%6bs` is `hooks`), and so does the
# policy; these paths go to the agent.
_ENCODED = r".*%.*"
_SEGMENT = "[^/]+"
# Zero or more segments, and a trailing slash: the policy judges segments.
_SEGMENTS = rf"(/{_SEGMENT})*/?"
REPOS = "/(?i:repos)"


def _github_subclasses(policy: Policy, host: str) -> list[_Subclass]:
    """The paths the policy judges on a GitHub host, most specific first."""
    out = [
        _Subclass((("", "/a%2Fb/c"), ("", r"/x/y%5cz")), path=_UNJUDGEABLE),
        _Subclass((), path=_ENCODED, fixed=ASK_AGENT),
    ]
    if host in rego_facts().github_api_hosts:
        out += _api_subclasses(policy)
    if host == "github.com":
        out += _git_subclasses(policy.github_allowed_repos, policy.github_allowed_users)
    out.append(_Subclass((("", "/"), ("", "/rep_a/rep_b/issues"))))
    return out


def _repository_subclasses(
    pattern: str, admin: tuple[str, str], other: tuple[str, str]
) -> list[_Subclass]:
    """The REST API of the repositories `pattern` matches: their administration (represented
    by the paths `admin`), then everything else below them (`other`)."""
    return [
        _Subclass(tuple(("", p) for p in admin), path=pattern + rego_facts().admin_suffix),
        _Subclass(tuple(("", p) for p in other), path=pattern + _SEGMENTS),
    ]


def _api_subclasses(policy: Policy) -> list[_Subclass]:
    """The REST API's repositories: each allowed one (the reason names it), each allowed owner's,
    then any other."""
    out = []
    for repo in policy.github_allowed_repos:
        upper, lower = _case_variants(repo)
        out += _repository_subclasses(
            f"{REPOS}/{repo_pattern([repo])}",
            (f"/repos/{lower}", f"/REPOS/{upper}/Hooks/1/"),
            (f"/repos/{lower}/issues", f"/Repos/{upper}/pulls/1/"),
        )
    for owner in policy.github_allowed_users:
        out += _repository_subclasses(
            f"{REPOS}/{repo_pattern([owner])}/{_SEGMENT}",
            (f"/repos/{owner}/rep_a/", f"/repos/{owner}/rep_b/keys"),
            (f"/repos/{owner}/rep_a/issues", f"/repos/{owner}/rep_b/x/y"),
        )
    out.append(
        _Subclass(
            (("", "/repos/rep_a/rep_b/issues"), ("", "/repos/rep_c/rep_d/pulls/1/")),
            path=f"{REPOS}/{_SEGMENT}/{_SEGMENT}{_SEGMENTS}",
        )
    )
    return out


RECEIVE_PACK = "(?i:git-receive-pack)"
UPLOAD_PACK = "(?i:git-upload-pack)"
REFS = "/(?i:info/refs)/?"


def _push_subclasses(pattern: str, first: str, second: str) -> list[_Subclass]:
    """Pushes (discovery, then the pack) to the repositories `pattern` matches, represented by
    the repository paths `first` and `second`."""
    return [
        _Subclass(
            (
                ("", f"{first}/info/refs?service=git-receive-pack"),
                ("", f"{second}/Info/Refs/?service=git-receive-pack"),
            ),
            path_and_query=rf"/{pattern}{REFS}\?service=git-receive-pack",
        ),
        _Subclass(
            (("", f"{first}/git-receive-pack"), ("", f"{second}/Git-Receive-Pack/")),
            path=f"/{pattern}/{RECEIVE_PACK}/?",
        ),
    ]


def _git_subclasses(repos: tuple[str, ...], owners: tuple[str, ...]) -> list[_Subclass]:
    """git smart HTTP on github.com: discovery (info/refs), fetch, push."""
    out = []
    dot_git = r"(?i:\.git)?"
    for repo in repos:
        upper, lower = _case_variants(repo)
        out += _push_subclasses(repo_pattern([repo]) + dot_git, f"/{lower}", f"/{upper}.GIT")
    for owner in owners:
        pattern = f"{repo_pattern([owner])}/{_SEGMENT}"
        out += _push_subclasses(pattern, f"/{owner}/rep_a", f"/{owner}/rep_b.git")
    any_repo = f"/{_SEGMENT}/{_SEGMENT}"
    return [
        *out,
        _Subclass(
            (
                ("", "/rep_a/rep_b/info/refs?service=git-upload-pack"),
                ("", "/rep_c/rep_d.git/INFO/refs/"),
            ),
            path_and_query=rf"{any_repo}{REFS}(\?service=git-upload-pack)?",
        ),
        # Any other query of a discovery: only the agent parses it as the policy does.
        _Subclass((), path=rf"{any_repo}{REFS}", fixed=ASK_AGENT),
        _Subclass(
            (
                ("", "/rep_a/rep_b/git-receive-pack"),
                ("", "/rep_c/rep_d.git/GIT-receive-pack/"),
            ),
            path=f"{any_repo}/{RECEIVE_PACK}/?",
        ),
        _Subclass(
            (("", "/rep_a/rep_b/git-upload-pack"), ("", "/rep_c/rep_d.git/git-Upload-pack/")),
            path=f"{any_repo}/{UPLOAD_PACK}/?",
        ),
    ]


def _subclasses(policy: Policy, hosts: _Hosts, domain: str) -> list[_Subclass]:
    representatives = _representative_hosts(hosts, domain)
    if domain in rego_facts().github_hosts | rego_facts().github_api_hosts:
        subclasses = _github_subclasses(policy, domain)
    else:
        subclasses = [*_aws_subclasses(policy, hosts, domain), _Subclass((("", "/"),) * 2)]
    out = []
    for sub in subclasses:
        # Subclasses name paths; their hosts are the class's own unless they name one.
        pairs = tuple(
            dict.fromkeys(
                (host or representatives[i % len(representatives)], path)
                for i, (host, path) in enumerate(sub.representatives)
            )
        )
        out.append(_Subclass(pairs, sub.path, sub.path_and_query, sub.authority, sub.fixed))
    return out


def _outcome(
    engine: PolicyEngine,
    tls: bool,
    method: str,
    host: str,
    path: str,
    sending: Mapping[str, str] | None = None,
) -> Outcome:
    port = 443 if tls else 80
    scheme = "https" if tls else "http"
    headers = {":authority": host, ":method": method, ":path": path, ":scheme": scheme}
    request = http_input(
        method=method,
        host=host,
        path=path,
        scheme=scheme,
        headers=headers | dict(sending or {}),
        sni=host if tls else None,
    )
    request["attributes"]["contextExtensions"] = {"intercept_transport": "tls" if tls else "plain"}
    decision = engine.evaluate(request)
    target = f"{method} {host}:{port}"
    # A question for a person: the agent holds the request until someone answers.
    if (
        decision.grant is not None
        or decision.rule == "evaluation_error"
        or not decision.reason.startswith(target)
    ):
        return ASK_AGENT
    return Outcome(decision.allow, decision.rule, decision.reason[len(target) :])


def _decided(engine: PolicyEngine, tls: bool, sub: _Subclass, method: str) -> tuple[Outcome, bool]:
    """The method's outcome in the class, and whether it holds only for reads that send
    nothing."""
    if sub.fixed is not None:
        return sub.fixed, False
    outcomes = {_outcome(engine, tls, method, h, p) for h, p in sub.representatives}
    outcome = outcomes.pop() if len(outcomes) == 1 else ASK_AGENT
    if outcome == ASK_AGENT or method not in rego_facts().read_methods:
        return outcome, False
    sending = {_outcome(engine, tls, method, h, p, _SENDING) for h, p in sub.representatives}
    return outcome, sending != {outcome}


def _routes(engine: PolicyEngine, tls: bool, sub: _Subclass) -> list[Route]:
    by_outcome: dict[tuple[Outcome, bool], list[str]] = {}
    for method in METHODS:
        by_outcome.setdefault(_decided(engine, tls, sub, method), []).append(method)
    return [
        Route(tuple(methods), outcome, sub.path, sub.path_and_query, sub.authority, bodyless)
        for (outcome, bodyless), methods in by_outcome.items()
    ]


def compile_policy(policy: Policy, engine: PolicyEngine, *, tls: bool) -> NativePolicy:
    """`engine` evaluates `policy` alone (no custom modules: those only the agent can run)."""
    if policy.rego_modules:
        raise ValueError("a policy with custom Rego modules is judged by the agent alone")
    hosts = _host_classes(policy)
    domains = sorted(hosts.exact) + sorted(f"*.{s}" for s in hosts.suffixes) + ["*"]
    virtual_hosts = []
    for domain in domains:
        routes = [
            route
            for sub in _subclasses(policy, hosts, domain)
            for route in _routes(engine, tls, sub)
        ]
        virtual_hosts.append(VirtualHost(domain, tuple(routes)))
    return NativePolicy(tls, tuple(virtual_hosts))
