"""The real data path: Envoy driven by the agent, terminating TLS with on-demand certificates,
asking ext_authz about every request, and forwarding allowed ones re-encrypted to the lab."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509

from intercept_proxy import netns, ports
from intercept_proxy.policy.model import parse_policy
from tests.integration.conftest import POLICY
from tests.integration.harness import WORKLOAD_UID, as_user

pytestmark = pytest.mark.netns


def received(lab, host: str) -> list[dict]:
    return [r for r in lab.receipts() if r["host"] == host]


def decision(icp, decision_id: str) -> dict:
    (match,) = icp.decisions(lambda d: d["decision_id"] == decision_id)
    return match


def test_allowed_get_is_forwarded_reencrypted(interceptor, lab):
    r = interceptor.curl("GET", "https://pypi.org/simple/requests/?page=2")
    assert r.status == 200, r.stderr
    echo = r.json()
    assert (echo["server"], echo["sni"], echo["method"]) == ("pypi.org", "pypi.org", "GET")
    assert echo["path"] == "/simple/requests/?page=2"
    # Nothing of the proxy goes upstream but the decision id.
    assert not {"x-forwarded-proto", "x-intercept-native", "x-envoy-expected-rq-timeout-ms"} & set(
        echo["headers"]
    )
    assert echo["headers"]["x-request-id"] == r.headers["x-intercept-decision-id"]
    d = decision(interceptor, r.headers["x-intercept-decision-id"])
    assert (d["allow"], d["rule"], d["host"], d["path"], d["sni"], d["judge"]) == (
        True, "allowed_domains", "pypi.org", "/simple/requests/", "pypi.org", "envoy",
    )  # fmt: skip


def test_certificate_is_minted_for_the_name_by_the_sandbox_ca(interceptor):
    out = netns.run(
        interceptor.ns,
        ["openssl", "s_client", "-connect", "127.0.0.1:15001", "-servername", "pypi.org",
         "-CAfile", str(interceptor.ca_cert), "-verify_return_error", "-showcerts"],
        input="", timeout=10,
    ).stdout  # fmt: skip
    assert "Verify return code: 0 (ok)" in out
    pem = out[out.index("-----BEGIN CERTIFICATE-----") : out.index("-----END CERTIFICATE-----")]
    cert = x509.load_pem_x509_certificate((pem + "-----END CERTIFICATE-----\n").encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["pypi.org"]
    ca = x509.load_pem_x509_certificate(interceptor.ca_cert.read_bytes())
    assert cert.issuer == ca.subject
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() <= 13 * 3600


def test_sandbox_ca_key_is_private_to_the_agent(interceptor):
    key = interceptor.ca_dir / "ca.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert key.stat().st_uid == 102
    result = subprocess.run(as_user(WORKLOAD_UID, ["cat", str(key)]), capture_output=True)
    assert result.returncode != 0
    assert b"PRIVATE KEY" not in result.stdout


def test_denied_post_answers_403_json_and_reaches_nothing(interceptor, lab):
    before = len(received(lab, "pypi.org"))
    r = interceptor.curl("POST", "https://pypi.org/legacy/", "--data", "x=1")
    assert r.status == 403
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert error["code"] == "POLICY_BLOCKED"
    assert "permits only GET and HEAD" in error["message"]
    assert error["decision_id"] == r.headers["x-intercept-decision-id"]
    d = decision(interceptor, error["decision_id"])
    assert (d["allow"], d["rule"], d["method"]) == (False, "method_not_allowed", "POST")
    time.sleep(0.2)
    assert len(received(lab, "pypi.org")) == before


@pytest.mark.parametrize(
    ("protocol", "size"),
    [
        ("--http1.1", 100_000),
        ("--http2", 100_000),
        ("--http1.1", 2_000_000),
        ("--http2", 2_000_000),
        # Beyond what Envoy reads (16 MiB), the same denial, early: HTTP/1.1 clients read it,
        # curl's HTTP/2 takes the reset that follows it for an error.
        ("--http1.1", 20_000_000),
    ],
)
def test_denied_upload_gets_its_explanation(interceptor, lab, protocol, size):
    """Envoy reads the upload before it answers: an HTTP/2 client such as curl takes an answer
    that overtakes its upload for a stream error."""
    before = len(received(lab, "pypi.org"))
    upload = interceptor.dir / f"upload-{size}"
    upload.write_bytes(b"x" * size)
    upload.chmod(0o644)
    r = interceptor.curl(
        "POST", "https://pypi.org/legacy/", protocol, "--data-binary", f"@{upload}"
    )
    assert r.status == 403, r.stderr
    error = r.json()["error"]
    assert (error["code"], error["rule"]) == ("POLICY_BLOCKED", "method_not_allowed")
    assert error["message"].startswith("POST pypi.org:443: pypi.org is in allowed_domains")
    d = decision(interceptor, error["decision_id"])
    assert (d["allow"], d["rule"], d["judge"]) == (False, "method_not_allowed", "envoy")
    assert len(received(lab, "pypi.org")) == before


def test_unknown_domain_is_denied_with_an_explanation_and_nothing_received(interceptor, lab):
    r = interceptor.curl("GET", "https://unknown.example/")
    assert r.status == 403
    assert r.json()["error"]["message"] == (
        "GET unknown.example:443 is not allowed by the policy (no rule matches it)"
    )
    time.sleep(0.2)
    assert received(lab, "unknown.example") == []  # not even a TCP connection


def test_plain_http_listener(interceptor, lab):
    r = interceptor.curl("GET", "http://pypi.org/simple/")
    assert r.status == 200
    echo = r.json()
    assert (echo["server"], echo["sni"]) == ("pypi.org", None)
    r = interceptor.curl("GET", "http://unknown.example/")
    assert r.status == 403
    assert r.json()["error"]["code"] == "POLICY_BLOCKED"


def test_http2_downstream(interceptor):
    r = interceptor.curl("GET", "https://pypi.org/h2", "--http2")
    assert r.status == 200
    assert r.json()["path"] == "/h2"
    r = interceptor.curl("DELETE", "https://pypi.org/h2", "--http2")
    assert r.status == 403


def test_host_that_differs_from_sni_is_denied(interceptor, lab):
    before = len(received(lab, "api.anthropic.com"))
    r = interceptor.curl("GET", "https://pypi.org/", "-H", "Host: api.anthropic.com")
    assert r.status == 403
    assert r.json()["error"]["rule"] == "sni_mismatch"
    assert len(received(lab, "api.anthropic.com")) == before


def test_unrestricted_domain_allows_post(interceptor, lab):
    r = interceptor.curl("POST", "https://api.anthropic.com/v1/messages", "--data", "{}")
    assert r.status == 200
    assert r.json()["body_bytes"] == 2


def test_path_is_judged_after_normalisation(interceptor):
    r = interceptor.curl(
        "POST", "https://api.github.com/repos/octo/hello/../../evil/repo/issues", "--path-as-is"
    )
    assert r.status == 403
    assert r.json()["error"]["rule"] == "github_write_not_allowed"
    d = decision(interceptor, r.json()["error"]["decision_id"])
    assert d["path"] == "/repos/evil/repo/issues"
    r = interceptor.curl(
        "POST", "https://api.github.com/repos/evil/repo/../../octo/hello/issues", "--path-as-is"
    )
    assert r.status == 200
    assert r.json()["path"] == "/repos/octo/hello/issues"


def test_several_names_on_one_address_in_any_order(interceptor):
    for name in ("a.shared.test", "b.shared.test", "a.shared.test", "b.shared.test"):
        r = interceptor.curl("GET", f"https://{name}/")
        assert r.status == 200, r.body
        assert (r.json()["server"], r.json()["sni"]) == (name, name)


def test_server_sent_events_stream_through(interceptor):
    argv = [
        "curl", "-sN", "--cacert", str(interceptor.ca_cert),
        "--connect-to", "::127.0.0.1:15001", "https://pypi.org/stream/3",
    ]  # fmt: skip
    proc = subprocess.Popen(
        netns.exec_argv(interceptor.ns, as_user(WORKLOAD_UID, argv)), stdout=subprocess.PIPE
    )
    arrivals = []
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(b"data:"):
            arrivals.append(time.monotonic())
    proc.wait(10)
    assert len(arrivals) == 3
    # Streamed as sent, one per second, not buffered until the end.
    assert arrivals[-1] - arrivals[0] > 1.5


def test_websocket_upgrade_is_judged_like_any_request(interceptor):
    script = Path(__file__).with_name("ws_client.py")
    hosts = ["api.anthropic.com", "pypi.org", "unknown.example"]
    result = netns.run(
        interceptor.ns,
        as_user(WORKLOAD_UID, [sys.executable, str(script), str(interceptor.ca_cert), *hosts]),
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["api.anthropic.com"] == "echo:hello"  # unrestricted: a two-way channel
    assert outcome["pypi.org"] == 403  # read-only: an upgrade is not a read
    assert outcome["unknown.example"] == 403
    rules = {d["host"]: d["rule"] for d in interceptor.decisions(lambda d: d["path"] == "/ws", 2)}
    assert rules == {
        "api.anthropic.com": "unrestricted_domains",
        "pypi.org": "not_read_only",
        "unknown.example": "default_deny",
    }


def test_read_only_hosts_get_no_request_body(interceptor, lab):
    before = len(received(lab, "pypi.org"))
    # With a length, or chunked: HTTP/1.1 shows it in its headers (the gate sends it to the
    # agent), HTTP/2 sends its body without any (the agent judges once the body is read).
    chunked = ["-H", "Transfer-Encoding: chunked"]
    for args in (["--http1.1"], ["--http1.1", *chunked], ["--http2"], ["--http2", *chunked]):
        r = interceptor.curl("GET", "https://pypi.org/with-body", *args, "--data", "x=1")
        assert r.status == 403, args
        assert r.json()["error"]["rule"] == "not_read_only"
    assert len(received(lab, "pypi.org")) == before
    judged = interceptor.decisions(lambda d: d["path"] == "/with-body", 4)
    assert [d["judge"] for d in judged] == ["agent"] * 4
    # An HTTP/2 read that sends nothing is Envoy's own decision: nothing to wait for.
    assert interceptor.curl("GET", "https://pypi.org/without-body", "--http2").status == 200
    [decision] = interceptor.decisions(lambda d: d["path"] == "/without-body")
    assert decision["judge"] == "envoy"


def h2_upload(interceptor, host: str, method: str, path: str, size: int) -> dict:
    script = Path(__file__).with_name("h2_upload.py")
    argv = [sys.executable, str(script), str(interceptor.ca_cert), "127.0.0.1",
            str(ports.ENVOY_TLS), host, method, path, str(size)]  # fmt: skip
    result = netns.run(interceptor.ns, as_user(WORKLOAD_UID, argv), timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_body_too_large_to_judge_is_refused_as_such(interceptor, lab):
    """An HTTP/2 read whose body has no length is read before it is judged (the agent decides a
    read that sent one); past what Envoy reads, it is refused for its size, 413, never with the
    allow rule of the route it took."""
    before = len(received(lab, "pypi.org"))
    small = h2_upload(interceptor, "pypi.org", "GET", "/small-body", 1000)
    assert (small["status"], json.loads(small["body"])["error"]["rule"]) == (403, "not_read_only")
    big = h2_upload(interceptor, "pypi.org", "GET", "/big-body", 20_000_000)
    assert big["status"] == 413, big
    error = json.loads(big["body"])["error"]
    assert (error["code"], error["rule"]) == ("POLICY_BLOCKED", "body_too_large")
    assert error["message"] == (
        "GET pypi.org:443: its body is larger than the sandbox reads before it forwards one"
        " (16 MiB to judge or count it, 1 MiB to sign it otherwise); nothing was forwarded"
    )
    d = decision(interceptor, error["decision_id"])
    assert (d["allow"], d["rule"], d["judge"], d["status"]) == (
        False, "body_too_large", "envoy", 413
    )  # fmt: skip
    assert len(received(lab, "pypi.org")) == before
    # An upstream's own 413 is the upstream's answer: the route's allow, one line.
    r = interceptor.curl("GET", "https://pypi.org/status/413")
    assert (r.status, r.json()["path"]) == (413, "/status/413")
    (line,) = interceptor.decisions(lambda d: d["path"] == "/status/413")
    assert (line["allow"], line["rule"], line["status"]) == (True, "allowed_domains", 413)
    # A denying route's oversized upload keeps its own denial (and its log line, one).
    denied = h2_upload(interceptor, "pypi.org", "POST", "/big-post", 20_000_000)
    assert denied["status"] == 403, denied
    rule = json.loads(denied["body"])["error"]["rule"]
    assert rule == "method_not_allowed"
    (logged,) = interceptor.decisions(lambda d: d["path"] == "/big-post")
    assert (logged["allow"], logged["rule"], logged["status"]) == (False, rule, 403)


@pytest.fixture
def github_relay(interceptor):
    """github.com:443 -> Envoy's TLS listener, for git (see relay.py)."""
    script = Path(__file__).with_name("relay.py")
    argv = [sys.executable, str(script), "127.0.0.2", "443", "127.0.0.1", "15001"]
    proc = subprocess.Popen(
        netns.exec_argv(interceptor.ns, argv), stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    yield "github.com:443:127.0.0.2"
    proc.kill()
    proc.wait()


def test_git_clone_allowed_push_refused(interceptor, github_relay):
    work = interceptor.dir / "git-work"
    work.mkdir()
    os.chown(work, WORKLOAD_UID, WORKLOAD_UID)
    env = [
        "env", f"HOME={work}", f"GIT_SSL_CAINFO={interceptor.ca_cert}",
        "git", "-c", f"http.curloptResolve={github_relay}",
        "-c", "user.name=t", "-c", "user.email=t@t",
    ]  # fmt: skip

    def git(*args: str, cwd: Path = work) -> subprocess.CompletedProcess[str]:
        argv = netns.exec_argv(interceptor.ns, as_user(WORKLOAD_UID, [*env, *args]))
        return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)

    clone = git("clone", "https://github.com/octo/other.git")
    assert clone.returncode == 0, clone.stderr
    repo = work / "other"
    assert (repo / "README.md").exists()
    assert git("commit", "--allow-empty", "-m", "change", cwd=repo).returncode == 0
    push = git("push", "origin", "HEAD", cwd=repo)
    assert push.returncode != 0
    assert "403" in push.stderr
    pushed = interceptor.decisions(lambda d: "/octo/other" in d["path"], 2)
    assert {d["rule"] for d in pushed} == {"github_read", "github_write_not_allowed"}


def test_twenty_second_response_passes(interceptor):
    r = interceptor.curl("GET", "https://pypi.org/delay/20", timeout=40)
    assert r.status == 200
    assert r.json()["path"] == "/delay/20"


def test_the_decision_log_is_json_without_queries(interceptor):
    interceptor.curl("GET", "https://pypi.org/logged?token=hunter2")
    (entry,) = interceptor.decisions(lambda d: d["path"] == "/logged")
    assert (entry["status"], entry["allow"], entry["rule"]) == (200, True, "allowed_domains")
    assert entry["decision_id"]
    assert "hunter2" not in interceptor.decision_log.read_text()


def test_metrics(interceptor):
    """One place to scrape: the agent serves Envoy's count of decisions, whoever made them."""

    def count(judge: str, result: str, rule: str) -> float:
        labels = f'judge="{judge}",result="{result}",rule="{rule}"'
        return interceptor.metric("intercept_decisions_total", labels)

    before = {
        "envoy": count("envoy", "deny", "method_not_allowed"),
        "agent": count("agent", "allow", "allowed_domains"),
        "none": count("none", "deny", ""),
    }
    interceptor.curl("POST", "https://pypi.org/metrics-probe")
    # Judged by the agent: the gate sends a host name in capitals its way.
    interceptor.curl("GET", "https://pypi.org/metrics-probe", "-H", "Host: PyPI.org")
    # No route at all: Envoy's codec refuses a header name with a space.
    assert interceptor.curl("GET", "http://pypi.org/metrics-probe", "-H", "a b: c").status == 400
    assert count("envoy", "deny", "method_not_allowed") == before["envoy"] + 1
    assert count("agent", "allow", "allowed_domains") == before["agent"] + 1
    assert count("none", "deny", "") == before["none"] + 1
    assert interceptor.metric("intercept_certificates_minted_total") >= 1
    assert interceptor.metric("intercept_xds_acks_total", 'type="RouteConfiguration"') >= 1
    assert "intercept_decision_seconds_bucket" in interceptor.metrics()


def test_policy_hot_reload(interceptor):
    assert interceptor.curl("GET", "https://api.github.com/user").status == 200
    try:
        interceptor.write_policy(POLICY.replace("github_read_access_enabled: true", ""))
        written = time.monotonic()
        while interceptor.curl("GET", "https://api.github.com/user").status != 403:
            assert time.monotonic() - written < 5, "the policy change never applied"
        applied = time.monotonic() - written
        print(f"policy change applied after {applied * 1000:.0f} ms")
        assert applied < 1.0

        # An invalid change is reported and the last good policy stays in force.
        errors = interceptor.metric("intercept_policy_reloads_total", 'result="error"')
        interceptor.write_policy("allowed_domains: [pypi.org, 'not a domain']\n")
        deadline = time.monotonic() + 5
        while interceptor.metric("intercept_policy_reloads_total", 'result="error"') == errors:
            assert time.monotonic() < deadline, interceptor.logs()
            time.sleep(0.1)
        assert "policy change rejected" in (interceptor.dir / "agent.log").read_text()
        assert interceptor.curl("GET", "https://pypi.org/").status == 200
        assert interceptor.curl("GET", "https://api.github.com/user").status == 403
    finally:
        interceptor.write_policy(POLICY)
        deadline = time.monotonic() + 5
        while interceptor.curl("GET", "https://api.github.com/user").status != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        # Compiled into Envoy's routes again.
        interceptor.wait_ready(revision=parse_policy(POLICY).revision)


def test_envoy_rejects_a_bad_push_and_keeps_serving(interceptor):
    """A broken upstream CA bundle reaches Envoy in a cluster it must refuse (a NACK)."""
    nacks = interceptor.metric("intercept_xds_nacks_total", 'type="Cluster"')
    with interceptor.upstream_ca_replaced(b"-----BEGIN CERTIFICATE-----\nnot base64\n"):
        interceptor.until(
            lambda: interceptor.metric("intercept_xds_nacks_total", 'type="Cluster"') > nacks
        )
        log = (interceptor.dir / "agent.log").read_text()
        assert "Envoy rejected Cluster upstream_tls" in log
        assert "Failed to load trusted CA" in log
        assert interceptor.readiness()["envoy_in_sync"] is False
        # The previous clusters stay in force.
        assert interceptor.curl("GET", "https://pypi.org/after-nack").status == 200
    interceptor.until(lambda: interceptor.readiness().get("envoy_in_sync"))


def test_an_empty_upstream_ca_bundle_is_not_pushed(interceptor):
    """A bundle caught empty (truncated, not yet written) keeps the previous one in force."""
    nacks = interceptor.metric("intercept_xds_nacks_total", 'type="Cluster"')
    with interceptor.upstream_ca_replaced(b""):
        interceptor.until(
            lambda: "upstream-ca.pem is empty" in (interceptor.dir / "agent.log").read_text()
        )
        assert interceptor.curl("GET", "https://pypi.org/after-empty").status == 200
        assert interceptor.metric("intercept_xds_nacks_total", 'type="Cluster"') == nacks
        assert interceptor.readiness()["envoy_in_sync"] is True


def test_upstream_certificates_are_verified(interceptor):
    """With the system roots instead of the lab's CA, no lab server is trusted: 502, explained."""
    with interceptor.upstream_ca_replaced(Path("/etc/ssl/certs/ca-certificates.crt").read_bytes()):
        r = interceptor.until(
            lambda: (
                (r := interceptor.curl("GET", "https://trust.test/untrusted")).status == 502 and r
            )
        )
        error = r.json()["error"]
        assert (error["code"], error["rule"]) == ("RETRY_LATER", "upstream_connect_failure")
    interceptor.until(lambda: interceptor.curl("GET", "https://trust.test/again").status == 200)


def test_dns_sinkhole_answers_every_name_with_a_synthetic_address(interceptor):
    script = (
        "import socket, sys\n"
        "from dnslib import DNSRecord\n"
        "for name, qtype, server in (('pypi.org', 'A', '127.0.0.1'),"
        " ('unknown.example', 'AAAA', '::1'), ('x.example', 'TXT', '127.0.0.1')):\n"
        "    family = socket.AF_INET6 if ':' in server else socket.AF_INET\n"
        "    with socket.socket(family, socket.SOCK_DGRAM) as s:\n"
        "        s.settimeout(2)\n"
        "        s.sendto(DNSRecord.question(name, qtype).pack(), (server, 15053))\n"
        "        reply = DNSRecord.parse(s.recv(4096))\n"
        "    print(name, qtype, [str(r.rdata) for r in reply.rr])\n"
    )
    result = netns.run(interceptor.ns, as_user(WORKLOAD_UID, [sys.executable, "-c", script]))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("pypi.org A ['198.51.100.")
    assert lines[1].startswith("unknown.example AAAA ['2001:db8:")
    assert lines[2] == "x.example TXT []"  # nothing but addresses, never forwarded
    assert interceptor.metric("intercept_dns_queries_total", 'outcome="synthetic",type="A"') >= 1
