"""The policy compiled into Envoy's routes decides exactly as the Rego policy does, and the
egress gateway exactly as the sidecar.

A generated corpus of requests (names in every spelling, SNIs that match or not, every method,
GitHub and AWS paths with their traps, bodies on reads) goes through the real Envoy twice: once
with the policy compiled into routes, once with the agent judging everything (a custom module
that grants nothing forces that mode). Every decision must be the same: allow, rule, reason and
status. Requests Envoy must not decide itself must have gone to the agent. Then the corpus goes
through the gateway, as a proxy's clients send it, and through the listeners as intercepted:
again the same decisions.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from intercept_proxy import netns, ports
from intercept_proxy.identities import AGENT_UID
from intercept_proxy.policy.model import parse_policy
from intercept_proxy.policy.native import METHODS
from tests.decisions import read_decisions
from tests.integration.corpus_client import tunnel_target

pytestmark = pytest.mark.netns

POLICY = """\
allowed_domains: [pypi.org, "*.pythonhosted.org", "example.com:8443", "*.deep.example.net",
  # Every region the compiler samples: the other regional endpoints are left to the agent.
  "*.us-east-1.amazonaws.com", "*.eu-west-3.amazonaws.com", "*.ap-southeast-2.amazonaws.com",
  "*.us-gov-west-1.amazonaws.com", "*.ca-central-1.amazonaws.com",
  # Grants that must not decide GitHub writes.
  github.com]
unrestricted_domains: [api.anthropic.com, "*.corp.test", upload.pypi.org, "*.sub.deep.example.net",
  uploads.github.com]
github_read_access_enabled: true
github_allowed_repos: [octo/hello, Acme/Widgets]
github_allowed_users: [trusted]
aws_access_enabled: true
aws_allowed_services: [s3, sts, bedrock-runtime]
# Denials a person may lift (no one answers here: the agent refuses them at once).
approvals: {hosts: [example.com, gist.github.com, corp.test]}
"""
# Grants nothing the corpus asks for, but only the agent can run a custom module.
AGENT_ONLY_MODULE = """\
package intercept.custom

allow contains {"rule": "never", "reason": "never used"} if {
\tdata.intercept.request.host == "never.invalid"
}
"""

HOSTS = [
    "pypi.org", "upload.pypi.org", "files.pythonhosted.org", "a.b.pythonhosted.org",
    "pythonhosted.org", "example.com", "x.deep.example.net", "y.sub.deep.example.net",
    "sub.deep.example.net", "api.anthropic.com", "x.corp.test", "corp.test", "github.com",
    "api.github.com", "raw.githubusercontent.com", "codeload.github.com",
    "objects.githubusercontent.com", "gist.github.com", "uploads.github.com", "s3.amazonaws.com",
    "s3.us-east-1.amazonaws.com", "s3.eu-central-2.amazonaws.com", "sts.amazonaws.com",
    "ec2.amazonaws.com", "s3.badregion.amazonaws.com",
    "bedrock-runtime.us-gov-west-1.amazonaws.com", "x.s3.amazonaws.com", "unknown.example",
    "evil-pypi.org", "pypi.org.evil.test",
    "xn--bcher-kva.example", "198.18.1.1", "[fd00::1]", "under_score.corp.test", "-bad.corp.test",
]  # fmt: skip
PATHS = [
    "/", "/simple/requests/", "/a/./b/../c", "//double//slash", "/x?y=1&z=2",
    "/repos/octo/hello/issues", "/repos/OCTO/Hello/pulls/1/", "/repos/octo/hello",
    "/repos/octo/hello/", "/repos/octo/other/issues", "/repos/trusted/x/issues",
    "/repos/Trusted/y/git/refs", "/repos/acme/widgets/releases", "/repos/octo",
    "/repos/octo/hello/../other/issues", "/repos//octo/hello/issues",
    "/repos/octo%2Fhello/issues", "/repos/octo/hello%2f..%2fx", "/repos/octo/hello\\x",
    "/octo/hello.git/info/refs?service=git-upload-pack",
    "/octo/hello/info/refs?service=git-receive-pack", "/octo/hello/info/refs/",
    "/octo/other/info/refs?service=git-receive-pack",
    "/octo/hello/info/refs?service=git-receive-pack&x=1",
    "/octo/hello/info/refs?x=1&service=git-receive-pack", "/octo/hello/info/refs?service=",
    "/Octo/Hello.git/git-receive-pack", "/octo/hello/git-receive-pack/",
    "/octo/other/git-receive-pack", "/trusted/repo/git-receive-pack",
    "/trusted/repo.git/info/refs?service=git-receive-pack", "/octo/hello/git-upload-pack",
    "/acme/widgets.git/git-receive-pack", "/octo/hello.git.git/git-receive-pack",
    "/" + "/".join(["d"] * 70), "/repos/octo/hello/%2e%2e/%2e%2e/evil/repo/issues",
    "/repos/trusted/%2E%2E/octo/other/issues", "/octo/hello%2egit/git-receive-pack",
    "/repos/octo/hell%6f/issues", "https://pypi.org/absolute-form", "http://github.com/x",
    # Repository administration, and its traps.
    "/repos/octo/hello/hooks", "/repos/OCTO/hello/Keys/1",
    "/repos/trusted/x/branches/a/b/protection", "/repos/octo/hello/actions/secrets/T",
    "/repos/octo/hello/pages", "/repos/octo/hello/pages/builds",
    "/repos/acme/widgets/%68ooks", "/repos/octo/other/collaborators/u", "/repos/Trusted/y/transfer",
    "/REPOS/octo/hello/issues", "/octo/other/INFO/refs?service=git-receive-pack",
    "/octo/hello.GIT/Git-Receive-Pack",
]  # fmt: skip
EXTRA_METHODS = ("PROPFIND", "TRACE", "MKCOL")
# Methods are case-sensitive: over HTTP/1 Envoy's codec refuses these before any decision, over
# HTTP/2 they reach one (and go upstream as written).
ODD_CASE_METHODS = ("get", "Get", "post", "pOST", "delete", "Patch", "put", "options")


def _spellings(host: str) -> list[str]:
    return [host, host.upper(), host.capitalize(), host + ".", f"{host}:443", f"{host}:80",
            f"{host}:8443", f"{host}:444"]  # fmt: skip


def generate(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    corpus = []
    for _ in range(count):
        base = rng.choice(HOSTS)
        tls = rng.random() < 0.8
        host = base if rng.random() < 0.6 else rng.choice(_spellings(base))
        method = rng.choice(METHODS) if rng.random() < 0.9 else rng.choice(EXTRA_METHODS)
        request = {"tls": tls, "host": host, "method": method, "path": rng.choice(PATHS)}
        if tls:
            roll = rng.random()
            request["sni"] = (
                base.strip("[]") if roll < 0.85 else None if roll < 0.9 else rng.choice(HOSTS)
            )
        roll = rng.random()
        h2_able = tls and request["sni"] and ":" not in request["sni"]
        if h2_able and request["path"].startswith("/") and roll < 0.12:
            # Over HTTP/2, with a method in any case.
            request["h2"] = True
            request["method"] = rng.choice((*ODD_CASE_METHODS, *METHODS[:4]))
            if request["method"] in ("HEAD", "head"):
                request["method"] = "GET"
            if rng.random() < 0.4:  # a body, with its length or streamed without one
                request["body"] = "payload"
                request["chunked"] = rng.random() < 0.5
            corpus.append(request)
            continue
        roll = rng.random()
        if roll < 0.08:
            request["body"] = "payload"
        elif roll < 0.11:
            request["chunked"] = True
        elif roll < 0.13:  # a second Host header
            request["headers"] = [["Host", rng.choice(HOSTS)]]
        elif roll < 0.15:  # a forged fact: the listener removes it before writing its own
            name, value = rng.choice(FORGED)
            request["headers"] = [[name, host if value is None else value]]
        elif roll < 0.21:  # the credential's header: its placeholder, another value, the secret
            request["headers"] = [["x-api-key", rng.choice(API_KEYS)]]
        corpus.append(request)
    return corpus


_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9_.-]+$")
# The credential of the policy (`credentials` below): the secret is the agent's, in a file.
API_KEY = "sk-differential-0123456789"
PLACEHOLDER = "intercept-proxy-placeholder"
API_KEYS = (PLACEHOLDER, f"Bearer {PLACEHOLDER}", "sk-another-key", API_KEY, f"Bearer {API_KEY}")
# None: the request's own host (an SNI that would pass an exact name's gate).
FORGED = (
    ("X-Intercept-SNI", None),
    ("X-Intercept-Protocol", "HTTP/1.1"),
    ("X-Intercept-Transfer-Encoding", ""),
)
# An SNI of another name in the same wildcard: no gate sees it, the routes' own check does.
SIBLINGS = [
    {"tls": True, "host": host, "sni": sni, "method": method, "path": "/simple/requests/", **h2}
    for host, sni in (
        ("files.pythonhosted.org", "a.b.pythonhosted.org"),
        ("x.corp.test", "under_score.corp.test"),
        ("x.deep.example.net", "z.deep.example.net"),
        ("s3.us-east-1.amazonaws.com", "sts.us-east-1.amazonaws.com"),
    )
    for method in ("GET", "POST")
    for h2 in ({}, {"h2": True})
]


def gate_may_mark(request: dict) -> bool:
    """What the gate could let Envoy decide: anything else must reach the agent. (A read that
    sends a body may be decided by Envoy where that does not change its decision: the corpus
    has both kinds of hosts, and the decisions must be the agent's.)"""
    # An absolute-form target names the host (Envoy ignores Host then); one trailing dot goes.
    absolute = re.match(r"^https?://([^/]*)", request["path"])
    host = (absolute.group(1) if absolute else request["host"]).removesuffix(".")
    if not _NAME.match(host) or (request["tls"] and request.get("sni") != host):
        return False
    headers = request.get("headers", [])
    twice = any(k == "Host" for k, _ in headers)
    # Anything but the placeholder in a credential's header: the agent looks for the secret.
    key = [v for k, v in headers if k == "x-api-key" and v.removeprefix("Bearer ") != PLACEHOLDER]
    return request["method"] in METHODS and not twice and not key


@pytest.fixture(scope="module")
def interceptor_options():
    return {"gateway_port": ports.ENVOY_GATEWAY}


def run_corpus(interceptor, corpus: list[dict], *, gateway: bool = False) -> list[dict]:
    """Each request's decision record, found by the decision id of its response (`gateway`:
    sent through the gateway)."""
    client = [sys.executable, str(Path(__file__).with_name("corpus_client.py"))]
    client += [str(interceptor.ca_cert), *([str(ports.ENVOY_GATEWAY)] if gateway else [])]
    result = subprocess.run(
        netns.exec_argv(interceptor.ns, client),
        input=json.dumps(corpus),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    responses = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(responses) == len(corpus)
    ids = [r["decision_id"] for r in responses]
    undecided = [(c, r) for c, r in zip(corpus, responses, strict=True) if not r["decision_id"]]
    assert not undecided, undecided[:5]
    wanted = set(ids)
    deadline = time.monotonic() + 10  # Envoy flushes its log every second
    while True:
        records = read_decisions(interceptor.decision_log)
        by_id = {r["decision_id"]: r for r in records}
        missing = wanted - by_id.keys()
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not missing, f"{len(missing)} decisions not logged"
    # One line per request, whoever decided (the log's kinds of line select apart).
    assert len(by_id) == len(records), "a decision logged twice"
    for record, response in zip((by_id[i] for i in ids), responses, strict=True):
        assert record["status"] == response["status"]
    return [by_id[i] for i in ids]


def _decision(record: dict) -> tuple:
    return (record["allow"], record["rule"], record["reason"], record["status"])


def judged_both_ways(interceptor, policy: str, corpus: list[dict]) -> list[dict]:
    """Each request's record with `policy` compiled into routes, after checking that the agent
    judging everything decides every request alike."""
    interceptor.write_policy(policy)
    interceptor.wait_ready(judged_by="envoy", revision=parse_policy(policy).revision)
    native = run_corpus(interceptor, corpus)

    module = interceptor.dir / "agent_only.rego"
    module.write_text(AGENT_ONLY_MODULE)
    with_module = policy + f"rego_modules: [{module}]\n"
    interceptor.write_policy(with_module)
    interceptor.wait_ready(judged_by="agent", revision=parse_policy(with_module).revision)
    agent = run_corpus(interceptor, corpus)

    assert {r["judge"] for r in agent} == {"agent"}
    differences = [
        (request, _decision(n), _decision(a))
        for request, n, a in zip(corpus, native, agent, strict=True)
        if _decision(n) != _decision(a)
    ]
    assert not differences, f"{len(differences)} differ, first ones: {differences[:5]}"
    return native


def credentials(interceptor) -> str:
    """The policy's credentials: the API key's, in a file of the agent's."""
    key = interceptor.dir / "api-key"
    key.write_text(API_KEY)
    key.chmod(0o600)
    os.chown(key, AGENT_UID, AGENT_UID)
    return f"credentials: [{{host: api.anthropic.com, header: x-api-key, file: {key}}}]\n"


def test_compiled_routes_decide_as_the_agent(interceptor):
    corpus = generate(1800, seed=20261203) + SIBLINGS
    native = judged_both_ways(interceptor, POLICY + credentials(interceptor), corpus)
    siblings = native[-len(SIBLINGS) :]
    assert {(r["rule"], r["judge"]) for r in siblings} == {("sni_mismatch", "agent")}

    wrongly_native = [
        request
        for request, record in zip(corpus, native, strict=True)
        if record["judge"] == "envoy" and not gate_may_mark(request)
    ]
    assert not wrongly_native, wrongly_native[:5]
    # Not counted: HTTP/2 bodies, which Envoy reads first and the agent judges where the body
    # changes the decision, and what a person may allow, which the agent holds (both below).
    counted = [
        (q, r)
        for q, r in zip(corpus, native, strict=True)
        if not (q.get("h2") and "body" in q) and r["rule"] != "approval_required"
    ]
    by_envoy = sum(record["judge"] == "envoy" for _, record in counted)
    eligible = sum(gate_may_mark(request) for request, _ in counted)
    # Most canonical requests are Envoy's own; only a few path classes ask the agent.
    assert by_envoy >= 0.8 * eligible, (by_envoy, eligible)
    # Both outcomes, many rules: the corpus exercises the policy, not one corner of it.
    assert {r["allow"] for r in native} == {True, False}
    assert len({r["rule"] for r in native}) >= 8
    # Reads that sent a body (with a length, or chunked) to a host that grants reads only.
    not_read_only = [r for r in native if r["rule"] == "not_read_only"]
    assert len(not_read_only) >= 3 and {r["judge"] for r in not_read_only} == {"agent"}
    # HTTP/2 bodies, with a length and without: a read that sends one where that changes its
    # decision is the agent's.
    h2_bodies = [(q, r) for q, r in zip(corpus, native, strict=True) if q.get("h2") and "body" in q]
    assert {bool(q["chunked"]) for q, _ in h2_bodies} == {True, False}
    h2_not_read_only = [r for _, r in h2_bodies if r["rule"] == "not_read_only"]
    assert h2_not_read_only and {r["judge"] for r in h2_not_read_only} == {"agent"}
    # Methods in other cases than their canonical one got decisions, from the agent.
    odd = [r for q, r in zip(corpus, native, strict=True) if q["method"] in ODD_CASE_METHODS]
    assert len(odd) > 50 and {r["judge"] for r in odd} == {"agent"}
    assert not any(r["allow"] and r["rule"] in ("allowed_domains", "github_read") for r in odd)
    # What a person may allow is never Envoy's own decision: the agent holds it.
    asked = [r for r in native if r["rule"] == "approval_required"]
    assert len(asked) >= 10 and {r["judge"] for r in asked} == {"agent"}
    # The secret from inside is refused, whatever the host; a placeholder costs no agent call.
    carried = [
        (value, r)
        for q, r in zip(corpus, native, strict=True)
        for name, value in q.get("headers", [])
        if name == "x-api-key"
    ]
    leaked = [r for value, r in carried if API_KEY in value]
    assert len(leaked) >= 10 and {(r["rule"], r["judge"]) for r in leaked} == {
        ("credential_leaked", "agent")
    }
    assert not [
        r for value, r in carried if API_KEY not in value and r["rule"] == "credential_leaked"
    ]


def through_the_gateway_as_written(request: dict) -> bool:
    """A request a proxy's client sends as the corpus writes it: TLS in its tunnel, or plain
    HTTP whose target and Host can be one absolute-form URL (not an absolute one already, which
    names another host or scheme, nor one with a second Host). To a name Envoy's codec takes:
    it answers `CONNECT under_score.test:443` and `GET http://under_score.test/` with its plain
    400, before any decision."""
    if "_" in (tunnel_target(request) if request["tls"] else request["host"]):
        return False
    if request["tls"]:
        return True
    return request["path"].startswith("/") and not any(
        name == "Host" for name, _ in request.get("headers", [])
    )


def test_the_gateway_decides_as_the_sidecar(interceptor):
    """The same requests through the gateway and intercepted: the same decisions (allow, rule,
    reason, status), whoever decides. A tunnel to a host the policy names nowhere (nor its
    approvals) is refused before it opens: only where the sidecar refuses the request inside."""
    corpus = [
        r for r in generate(1000, seed=20261204) + SIBLINGS if through_the_gateway_as_written(r)
    ]
    policy = POLICY + credentials(interceptor)
    interceptor.write_policy(policy)
    interceptor.wait_ready(judged_by="envoy", revision=parse_policy(policy).revision)
    intercepted = run_corpus(interceptor, corpus)
    proxied = run_corpus(interceptor, corpus, gateway=True)
    refused_tunnels = []
    differences = []
    for request, direct, gateway in zip(corpus, intercepted, proxied, strict=True):
        if gateway["method"] == "CONNECT":
            refused_tunnels.append((request, direct, gateway))
        elif _decision(direct) != _decision(gateway):
            differences.append((request, _decision(direct), _decision(gateway)))
    assert not differences, f"{len(differences)} differ, first ones: {differences[:5]}"
    wrongly_refused = [(q, d) for q, d, _ in refused_tunnels if d["allow"]]
    assert not wrongly_refused, wrongly_refused[:5]
    assert {(g["rule"], g["status"], g["judge"]) for _, _, g in refused_tunnels} == {
        ("default_deny", 403, "envoy")
    }
    # The corpus went both ways through tunnels and in absolute form, allowed and denied.
    tunneled = [
        g for q, g in zip(corpus, proxied, strict=True) if q["tls"] and g["method"] != "CONNECT"
    ]
    plain = [g for q, g in zip(corpus, proxied, strict=True) if not q["tls"]]
    assert len(refused_tunnels) >= 50 and len(plain) >= 50
    assert {g["allow"] for g in tunneled} == {g["allow"] for g in plain} == {True, False}
    assert {g["client"] for g in proxied} == {"127.0.0.1"}
    assert {d["client"] for d in intercepted} == {None}
