"""`intercept render cilium`: the policy as Cilium's HTTP rules, judged on the differential
corpus beside the agent.

Nothing here runs Cilium (no eBPF datapath, no cilium-envoy on this machine): the test evaluates
Cilium's documented semantics on each corpus request, as its agent hands them to its Envoy (read
in cilium v1.20.2, pkg/envoy/policy/envoy_l7_rules_translator.go and pkg/policy/api):

- the connection: the destination name must match a toFQDNs selector (`matchName` exact,
  `matchPattern` `*.` one label) on the port the client connected to (443 for TLS, 80 plain);
  a TLS port rule's `serverNames` must hold the SNI;
- a request passes when any HTTP rule of that port matches: each regular expression given is
  an Envoy header matcher (RE2, whole value) on `:method`, `:path` (with its query) and
  `:authority`. Cilium's Envoy normalises paths by default (RFC 3986, merged slashes); the test
  checks the raw and the normalised path, so a rule that matches either counts as allowing.

Every request Cilium may allow, the agent allows, but for the two kinds Cilium cannot check
(module docstring of intercept_proxy.policy.cilium); what the agent allows and Cilium denies
falls in the documented kinds; the figures are printed."""

from __future__ import annotations

import json
import os
import posixpath
import random
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from intercept_proxy.authz.service import check_input
from intercept_proxy.cluster.tools import INSTALL_HINT, Tools
from intercept_proxy.policy import cilium
from intercept_proxy.policy.engine import RegorusEngine
from intercept_proxy.policy.model import PolicyError, parse_policy
from intercept_proxy.policy.native import rego_facts
from tests.golden import assert_golden_text
from tests.integration.test_differential import POLICY, generate
from tests.integration.test_opa import CORPUS_SIZE, SEED, check_request
from tests.tools import tool

REPO = Path(__file__).resolve().parents[2]

# The differential's policy without its approvals (no one can be asked through Cilium).
CILIUM_POLICY = POLICY.split("# Denials a person may lift")[0]


def _normalised(path: str) -> str:
    """The path as Cilium's Envoy normalises it (dot segments removed, slashes merged)."""
    base, sep, query = path.partition("?")
    merged = re.sub("/+", "/", base)
    clean = posixpath.normpath(merged) if merged.startswith("/") else merged
    if merged.endswith("/") and clean != "/":
        clean += "/"
    return clean + sep + query


def _selects(fqdn: str, name: str) -> bool:
    if fqdn.startswith("*."):
        label, _, parent = name.partition(".")
        return parent == fqdn[2:] and bool(label)
    return name == fqdn


def _rule_matches(rule: cilium.HttpRule, method: str, path: str, authority: str) -> bool:
    return all(
        pattern is None or re.fullmatch(pattern, value) is not None
        for pattern, value in ((rule.method, method), (rule.path, path), (rule.host, authority))
    )


def cilium_allows(groups: list[cilium.Group], request: dict[str, Any]) -> tuple[bool, bool]:
    """(may allow, must allow): a rule matches the raw or the normalised path, or both."""
    tls = request["tls"]
    port = cilium.TLS_PORT if tls else cilium.PLAIN_PORT
    authority, path = _seen(request)
    sni = request.get("sni")
    dest = (sni if tls and sni else authority).lower()
    dest = re.sub(r":\d*$", "", dest).removesuffix(".")
    may = must = False
    for group in groups:
        if not _selects(group.fqdn, dest) or port not in group.ports:
            continue
        if tls and not (sni and _selects(group.fqdn, sni.lower())):
            continue
        for rule in group.ports[port]:
            raw = _rule_matches(rule, request["method"], path, authority)
            norm = _rule_matches(rule, request["method"], _normalised(path), authority)
            may, must = may or raw or norm, must or (raw and norm)
    return may, must


def _seen(request: dict[str, Any]) -> tuple[str, str]:
    """`:authority` and `:path` as the proxy sees them (an absolute-form target names both)."""
    absolute = re.match(r"^https?://([^/]*)(.*)$", request["path"])
    if absolute:
        return absolute.group(1), absolute.group(2) or "/"
    return request["host"], request["path"]


def sends_body(request: dict[str, Any]) -> bool:
    return request.get("body") is not None or bool(request.get("chunked"))


def _name(request: dict[str, Any]) -> str:
    """The Host's name: lower case, without its port and one trailing dot."""
    return re.sub(r":\d*$", "", _seen(request)[0].lower()).removesuffix(".")


GITHUB = rego_facts().github_hosts | rego_facts().github_api_hosts
REGIONAL = re.compile(rf"[a-z0-9-]+\.{rego_facts().aws_region}\.amazonaws\.com")
WILDCARDS = ("pythonhosted.org", "deep.example.net", "corp.test")  # the policy's `*.` entries

# Requests Cilium may allow and the agent denies (request, the agent's rule): what Cilium's
# rules cannot see.
WIDER: dict[str, Callable[[dict[str, Any], str], bool]] = {
    "a read that sends a body": lambda r, rule: sends_body(r) and r["method"] in ("GET", "HEAD"),
}
# Requests the agent allows and Cilium's rules do not: the translation's documented losses.
NARROWER: dict[str, Callable[[dict[str, Any], str], bool]] = {
    "an AWS regional endpoint": lambda r, rule: (
        rule == "aws" and bool(REGIONAL.fullmatch(_name(r)))
    ),
    "a wildcard's name more than one label deep": lambda r, rule: any(
        _name(r).endswith("." + w) and _name(r).count(".") > w.count(".") + 1 for w in WILDCARDS
    ),
    "a Host with a trailing dot or a port other than 80 and 443": lambda r, rule: bool(
        re.search(r"\.(:\d*)?$|:(?!(443|80)$)\d*$", _seen(r)[0])
    ),
    "a path with %, a backslash, or a dot or empty segment": lambda r, rule: bool(
        re.search(r"[%\\]|//|/\.\.?(/|$|\?)", _seen(r)[1])
    ),
    "a read of github.com with a query other than git's fetch": lambda r, rule: (
        _name(r) == "github.com"
        and "?" in _seen(r)[1]
        and rule in ("allowed_domains", "github_read")
    ),
    "a method but reads and OPTIONS on a GitHub host an unrestricted entry names": (
        lambda r, rule: rule == "unrestricted_domains" and _name(r) in GITHUB
    ),
    "a REST write to an allowed repository, without github_admin_access_enabled": (
        lambda r, rule: rule == "github_write" and _seen(r)[1].lower().startswith("/repos/")
    ),
}


def _kind(
    kinds: dict[str, Callable[[dict[str, Any], str], bool]], request: dict[str, Any], rule: str
) -> str | None:
    return next((name for name, test in kinds.items() if test(request, rule)), None)


@pytest.fixture(scope="module")
def judged() -> list[tuple[dict[str, Any], str, bool, bool, bool]]:
    """(request, the agent's rule, whether it allows, whether Cilium may allow, must allow)
    for the whole corpus."""
    policy = parse_policy(CILIUM_POLICY, "<differential>")
    engine = RegorusEngine(policy)
    groups = cilium.translate(policy)
    rng = random.Random(SEED)
    out = []
    for request in generate(CORPUS_SIZE, seed=SEED):
        decision = engine.evaluate(check_input(check_request(request, rng)))
        may, must = cilium_allows(groups, request)
        out.append((request, decision.rule, decision.allow, may, must))
    return out


def test_cilium_allows_nothing_the_agent_denies_but_what_it_cannot_see(judged):
    wider = [(r, _kind(WIDER, r, rule)) for r, rule, agent, may, _ in judged if may and not agent]
    unexplained = [r for r, kind in wider if kind is None]
    assert not unexplained, unexplained[:5]
    counts = Counter(kind for _, kind in wider)
    print(f"\nCilium wider than the agent: {dict(counts)} of {len(judged)}")
    assert counts["a read that sends a body"] > 0  # the corpus has them: the kind is real


def test_what_cilium_denies_of_what_the_agent_allows_is_documented(judged):
    allowed = [r for r, _, agent, _, _ in judged if agent]
    narrower = [
        (r, _kind(NARROWER, r, rule)) for r, rule, agent, _, must in judged if agent and not must
    ]
    unexplained = [r for r, kind in narrower if kind is None]
    assert not unexplained, "\n".join(map(str, unexplained[:20]))
    counts = Counter(kind for _, kind in narrower)
    print(
        f"\nagent allows {len(allowed)}, Cilium too {len(allowed) - len(narrower)}; "
        f"lost: {dict(counts)}"
    )
    assert len(allowed) - len(narrower) > len(allowed) // 2


@pytest.mark.parametrize("key", sorted(cilium.UNTRANSLATABLE))
def test_what_cilium_cannot_enforce_is_refused_by_name(key, tmp_path):
    (tmp_path / "custom.rego").write_text("package intercept.custom\n")
    policies = {
        "rego_modules": "rego_modules: [custom.rego]\n",
        "credentials": "credentials: [{host: api.example.com, env: TOKEN}]\n",
        "aws_signing": "aws_signing: [{host: s3.amazonaws.com, service: s3, region: us-east-1}]\n",
        "rate_limits": "rate_limits: [{host: pypi.org, requests_per_minute: 5}]\n",
        "budgets": "budgets: [{host: pypi.org, requests: 5}]\n",
        "approvals": "approvals: {hosts: [example.com]}\n",
    }
    policy = parse_policy("allowed_domains: [pypi.org]\n" + policies[key], base=tmp_path)
    assert getattr(policy, key)
    with pytest.raises(PolicyError, match=f"Cilium cannot enforce {key}: "):
        cilium.translate(policy)


def test_an_expression_too_large_for_ciliums_envoy_is_refused():
    """RE2 measures every expression; one over Envoy's limit would leave the pod without its
    policy, so the whole policy is refused, naming it."""
    repo = "octo/" + "r" * 100
    policy = parse_policy(f"github_allowed_repos: [{repo}]\n")
    with pytest.raises(PolicyError, match=r"more than 100 RE2 instructions.*github\.com:443 path"):
        cilium.translate(policy)
    # The differential's policy, many grants and all, fits: a rule per repository.
    sizes = [s for *_, s in cilium._program_sizes(cilium.translate(parse_policy(CILIUM_POLICY)))]
    assert max(sizes) <= cilium.MAX_PROGRAM_SIZE


def test_dns_resolves_the_policys_names_only():
    objects = cilium.render(parse_policy(CILIUM_POLICY), cilium.Target(), "")
    (network_policy,) = [o for o in objects if o["kind"] == "CiliumNetworkPolicy"]
    (dns,) = [r for r in network_policy["spec"]["egress"] if "toEndpoints" in r]
    names = dns["toPorts"][0]["rules"]["dns"]
    fqdns = [r["toFQDNs"][0] for r in network_policy["spec"]["egress"] if "toFQDNs" in r]
    assert names == fqdns and {"matchPattern": "*"} not in names


def test_a_host_other_than_the_sni_within_a_wildcard_is_wider():
    """The one other thing Cilium cannot check: Host and SNI are each one of the wildcard's
    names, not the same one (the agent refuses it as domain fronting)."""
    policy = parse_policy("unrestricted_domains: ['*.corp.test']\n")
    request = {
        "tls": True,
        "host": "b.corp.test",
        "sni": "a.corp.test",
        "method": "GET",
        "path": "/",
    }
    decision = RegorusEngine(policy).evaluate(check_input(check_request(request, random.Random(1))))
    assert (decision.allow, decision.rule) == (False, "sni_mismatch")
    assert cilium_allows(cilium.translate(policy), request) == (True, True)


# -- the objects `intercept render cilium` prints, validated against the CRDs ------------------

TARGET = cilium.Target(name="agents", namespace="agents", selector=(("app", "agent"),))
UPSTREAM_CA = "-----BEGIN CERTIFICATE-----\n(the upstream CA bundle)\n-----END CERTIFICATE-----\n"
RENDERED = {
    "differential": CILIUM_POLICY,
    "differential-admin": CILIUM_POLICY + "github_admin_access_enabled: true\n",
    "example": (REPO / "examples" / "policy.yaml").read_text(),
}


def _rendered(name: str) -> str:
    objects = cilium.render(parse_policy(RENDERED[name], f"<{name}>"), TARGET, UPSTREAM_CA)
    return yaml.safe_dump_all(objects, sort_keys=False)


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_rendered_objects_golden(name):
    assert_golden_text(f"cilium/{name}.yaml", _rendered(name))


def kubectl_validate(path: Path) -> list[dict[str, Any]]:
    """kubectl-validate's verdict on each document of `path`: Kubernetes 1.30's own schemas
    (the newest it holds offline) and Cilium's and cert-manager's CRDs of the pinned modules."""
    tools = Tools(Path(os.environ.get("INTERCEPT_TOOLS", "/opt/intercept-tools")))
    crds = [tools.cilium_crds, tools.cert_manager_crds]
    if not all(d.is_dir() for d in crds):
        pytest.fail(f"{crds} missing: {INSTALL_HINT}")
    argv = [str(tool("kubectl-validate")), str(path), "--version", "1.30", "-o", "json"]
    argv += ["--local-crds", ",".join(map(str, crds))]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    return json.loads(result.stdout)[str(path)]


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_rendered_objects_validate_against_the_crds(name, tmp_path):
    path = tmp_path / f"{name}.yaml"
    path.write_text(_rendered(name))
    verdicts = kubectl_validate(path)
    kinds = [d["kind"] for d in yaml.safe_load_all(path.read_text())]
    assert len(verdicts) == len(kinds)
    assert all(v["status"] == "Success" for v in verdicts), verdicts
    assert {"CiliumNetworkPolicy", "Certificate", "ClusterIssuer", "Secret"} <= set(kinds)


def test_the_validator_refuses_what_a_crd_refuses(tmp_path):
    """kubectl-validate reads the CRDs given: an object they refuse is refused."""
    path = tmp_path / "broken.yaml"
    objects = list(yaml.safe_load_all(_rendered("example")))
    network_policy = next(o for o in objects if o["kind"] == "CiliumNetworkPolicy")
    network_policy["spec"]["egress"][1]["toFQDNs"][0] = {"matchName": "not a name!"}
    certificate = next(o for o in objects if o["kind"] == "Certificate")
    certificate["spec"]["issuerRef"]["kindd"] = "typo"
    path.write_text(yaml.safe_dump_all(objects))
    failures = [v["message"] for v in kubectl_validate(path) if v["status"] != "Success"]
    assert len(failures) == 2, failures
    assert "toFQDNs[0].matchName" in failures[1] and "issuerRef.kindd" in failures[0]


def test_render_cilium_prints_the_objects_and_names_what_it_refuses(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("allowed_domains: [pypi.org]\n")
    ca = tmp_path / "ca.pem"
    ca.write_text(UPSTREAM_CA)
    argv = [sys.executable, "-m", "intercept_proxy", "render", "cilium", "--policy", str(policy)]
    argv += ["--upstream-ca", str(ca), "--selector", "app=agent", "--namespace", "agents"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    objects = list(yaml.safe_load_all(done.stdout))
    network_policy = objects[-1]
    assert network_policy["metadata"] == {"name": "intercept", "namespace": "agents"}
    assert network_policy["spec"]["endpointSelector"] == {"matchLabels": {"app": "agent"}}
    policy.write_text("allowed_domains: [pypi.org]\nbudgets: [{host: pypi.org, requests: 5}]\n")
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert "Cilium cannot enforce budgets: Cilium's HTTP rules count nothing" in done.stderr
    bad = [*argv, "--selector", "novalue"]
    done = subprocess.run(bad, capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "--selector 'novalue': expected KEY=VALUE" in done.stderr
