"""The hardening issue, through the real data path: GitHub writes decided by the github_* keys
whatever else matches, methods judged case-sensitively, no DNS lookup for what is denied, a
server name that is not UTF-8, Envoy's certificates bounded, slow clients cut off."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from intercept_proxy import netns, ports
from intercept_proxy.policy.model import parse_policy
from tests.integration.harness import WORKLOAD_UID, as_user

pytestmark = pytest.mark.netns

POLICY = """\
allowed_domains: [pypi.org, github.com, "*.wild.test"]
unrestricted_domains: [api.anthropic.com, api.github.com]
github_read_access_enabled: true
github_allowed_repos: [octo/hello]
"""


@pytest.fixture(scope="module")
def policy():
    return POLICY


def received(lab, host: str) -> list[dict]:
    return [r for r in lab.receipts() if r["host"] == host]


def settle() -> None:
    time.sleep(0.5)  # receipts are written as they arrive; this is their delivery time


# -- GitHub writes (tasks 1 and 2) -----------------------------------------------------------


def test_a_push_to_another_repository_is_denied_from_its_first_step(interceptor, lab):
    """github.com is in allowed_domains: its reads pass, but the ref advertisement of a push
    (a GET) to a repository that is not allowed is a write, and never reaches GitHub."""
    before = received(lab, "github.com")
    fetch = interceptor.curl(
        "GET", "https://github.com/octo/other.git/info/refs?service=git-upload-pack"
    )
    assert fetch.status == 200, fetch.body
    push = interceptor.curl(
        "GET", "https://github.com/octo/other.git/info/refs?service=git-receive-pack"
    )
    assert push.status == 403
    error = push.json()["error"]
    assert error["rule"] == "github_write_not_allowed"
    assert (
        "add octo/other to github_allowed_repos or octo to github_allowed_users" in error["message"]
    )
    settle()
    paths = [r["path"] for r in received(lab, "github.com")[len(before) :]]
    assert paths and not any("receive-pack" in (p or "") for p in paths), paths


def test_unrestricted_api_github_com_writes_no_other_repository(interceptor, lab):
    before = len(received(lab, "api.github.com"))
    other = interceptor.curl(
        "POST", "https://api.github.com/repos/octo/other/issues", "--data", "{}"
    )
    assert (other.status, other.json()["error"]["rule"]) == (403, "github_write_not_allowed")
    admin = interceptor.curl("DELETE", "https://api.github.com/repos/octo/hello")
    assert (admin.status, admin.json()["error"]["rule"]) == (403, "github_admin_not_allowed")
    hooks = interceptor.curl(
        "POST", "https://api.github.com/repos/octo/hello/hoo%6bs", "--data", "{}"
    )
    assert (hooks.status, hooks.json()["error"]["rule"]) == (403, "github_admin_not_allowed")
    settle()
    assert len(received(lab, "api.github.com")) == before
    issue = interceptor.curl(
        "POST", "https://api.github.com/repos/octo/hello/issues", "--data", "{}"
    )
    assert issue.status == 200
    graphql = interceptor.curl("POST", "https://api.github.com/graphql", "--data", "{}")
    assert graphql.status == 200  # no repository named: unrestricted_domains decides


# -- methods are case-sensitive (task 3) ------------------------------------------------------


def test_a_lower_case_method_is_no_read(interceptor, lab):
    """HTTP/2 lets a client send `:method: get`, which Envoy forwards as it is: judged as
    written, it is not GET, so it is no read."""
    before = len(received(lab, "pypi.org"))
    for method in ("get", "Get", "hEAD"):
        r = interceptor.curl(method, "https://pypi.org/case", "--http2")
        assert r.status == 403, (method, r.body)
        assert r.json()["error"]["rule"] == "method_not_allowed"
        assert r.json()["error"]["message"].startswith(f"{method} pypi.org:443: ")
    settle()
    assert len(received(lab, "pypi.org")) == before
    decided = interceptor.decisions(lambda d: d["path"] == "/case", 3)
    assert {d["judge"] for d in decided} == {"agent"}  # the gate marks only GET, HEAD, ...
    assert interceptor.curl("GET", "https://pypi.org/case", "--http2").status == 200


# -- a wildcard's names reach the resolver only when allowed (task 4) -------------------------


def dns_queries(lab, name: str) -> list[dict]:
    return [
        r
        for r in lab.receipts()
        if r["protocol"] == "dns" and (r["query_name"] or "").rstrip(".") == name
    ]


def test_denied_requests_to_a_wildcard_resolve_nothing(interceptor, lab):
    """`*.wild.test` allows reads of any name below it. A request the policy denies, whoever
    denies it (Envoy's routes, the agent), must not make Envoy look the name up: a label is
    data, and a lookup carries it to the resolvers."""
    labels = {}

    def name(kind: str) -> str:
        labels[kind] = f"{kind}-{secrets.token_hex(6)}.wild.test"
        return labels[kind]

    attempts = [
        ("POST", f"https://{name('post')}/x", "--data", "secret"),  # Envoy's route
        ("DELETE", f"https://{name('delete')}/x", "--http2"),
        ("GET", f"https://{name('body')}/x", "--data-binary", "secret"),  # the agent
        # (HTTP/1.1: over HTTP/2, curl drops these connection headers.)
        (
            "GET",
            f"https://{name('upgrade')}/x",
            "--http1.1",
            "-H",
            "Upgrade: websocket",
            "-H",
            "Connection: Upgrade",
        ),
        ("get", f"https://{name('lowercase')}/x", "--http2"),
        ("GET", f"https://{name('port')}:8443/x"),
        ("GET", "https://pypi.org/x", "-H", f"Host: {name('fronted')}"),  # sni_mismatch
        ("GET", f"http://{name('plain')}/x", "-H", "Transfer-Encoding: chunked", "--data", "x"),
    ]
    for method, url, *args in attempts:
        r = interceptor.curl(method, url, *args)
        assert r.status == 403, (method, url, r.body)
    allowed = name("allowed")
    r = interceptor.curl("GET", f"https://{allowed}/x")
    assert r.status == 502  # allowed: looked up, and the lab has no such name
    settle()
    assert dns_queries(lab, allowed), "the allowed request's lookup is the control"
    looked_up = {kind: n for kind, n in labels.items() if kind != "allowed" and dns_queries(lab, n)}
    assert looked_up == {}


def test_a_request_a_custom_module_denies_resolves_nothing(interceptor, lab):
    """The agent judges everything under a custom module; what it denies is never looked up."""
    module = interceptor.dir / "deny_path.rego"
    module.write_text(
        "package intercept.custom\n\n"
        'deny contains {"rule": "no_secrets", "reason": "not that path"} if {\n'
        '\tdata.intercept.request.segments[0] == "refused"\n}\n'
    )
    with_module = POLICY + f"rego_modules: [{module}]\n"
    interceptor.write_policy(with_module)
    try:
        interceptor.wait_ready(judged_by="agent", revision=parse_policy(with_module).revision)
        refused = f"refused-{secrets.token_hex(6)}.wild.test"
        r = interceptor.curl("GET", f"https://{refused}/refused/x")
        assert (r.status, r.json()["error"]["rule"]) == (403, "no_secrets")
        allowed = f"allowed-{secrets.token_hex(6)}.wild.test"
        assert interceptor.curl("GET", f"https://{allowed}/fine").status == 502
        settle()
        assert dns_queries(lab, allowed)
        assert not dns_queries(lab, refused)
    finally:
        interceptor.write_policy(POLICY)
        interceptor.wait_ready(revision=parse_policy(POLICY).revision)


# -- a server name that is not UTF-8 (task 5) ------------------------------------------------


def handshakes(interceptor, names: int, prefix: str) -> int:
    script = Path(__file__).with_name("sni_flood.py")
    argv = [sys.executable, str(script), str(interceptor.ca_cert), str(names), prefix]
    result = netns.run(interceptor.ns, as_user(WORKLOAD_UID, argv), timeout=120)
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def envoy_stat(interceptor, name: str) -> int:
    url = f"http://127.0.0.1:{ports.ENVOY_ADMIN}/stats?filter={name}"
    out = netns.run(interceptor.ns, ["curl", "-s", url], timeout=5).stdout
    values = [int(line.split(": ")[1]) for line in out.splitlines() if ": " in line]
    return sum(values)


def test_a_server_name_that_is_not_utf8_affects_only_its_own_handshake(interceptor):
    """It used to reach the agent as a certificate name no proto3 string can hold: the ADS
    stream broke, Envoy reconnected and asked for the same name again, forever, and no new name
    got a certificate."""
    assert handshakes(interceptor, 5, "before") == 5
    started = time.monotonic()
    bad = subprocess.run(
        netns.exec_argv(
            interceptor.ns,
            [b"openssl", b"s_client", b"-connect", b"127.0.0.1:15001",
             b"-servername", b"bad\xff\xfe.example"],
        ),
        input=b"",
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    assert time.monotonic() - started < 5  # refused at once, not left to time out
    assert b"BEGIN CERTIFICATE" not in bad.stdout
    assert handshakes(interceptor, 20, "after") == 20
    assert envoy_stat(interceptor, "control_plane.connected_state") == 1
    log = (interceptor.dir / "agent.log").read_text()
    assert "Exception deserializing" not in log


# -- slow clients (task 7) -------------------------------------------------------------------


def test_slow_clients_are_cut_off(interceptor):
    """A client trickling a byte a second holds a connection for seconds, not forever: its
    first bytes, its TLS handshake and its headers each have 10 s."""
    script = Path(__file__).with_name("slow_client.py")
    argv = [sys.executable, str(script), str(interceptor.ca_cert), "30"]
    result = netns.run(interceptor.ns, as_user(WORKLOAD_UID, argv), timeout=60)
    assert result.returncode == 0, result.stderr
    closed_after = json.loads(result.stdout)
    print(closed_after)
    for case, seconds in closed_after.items():
        assert seconds is not None and 8 < seconds < 16, (case, seconds)
