"""Failure modes: the agent dies (Envoy keeps to the policy it holds, and whatever needs the agent
fails closed), and a flood of names (memory bounded)."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from intercept_proxy import netns, ports
from intercept_proxy.policy.model import parse_policy
from intercept_proxy.procfs import memory_mib, status
from tests.integration.conftest import POLICY
from tests.integration.harness import WORKLOAD_UID, as_user

pytestmark = pytest.mark.netns


def agent_pid(icp) -> int:
    """The agent process itself (setpriv execs it; `ip netns exec` execs setpriv)."""
    assert icp.agent is not None
    return icp.agent.pid


def test_agent_down_fails_closed_and_recovers(interceptor, lab):
    assert interceptor.curl("GET", "https://pypi.org/before").status == 200
    interceptor.stop_process(interceptor.agent, signal.SIGKILL)
    before = len([r for r in lab.receipts() if r["host"] == "pypi.org"])
    try:
        # What the agent judges: a host name not in its canonical spelling.
        for url in ("https://pypi.org/during", "http://pypi.org/during"):
            r = interceptor.curl("GET", url, "-H", "Host: PyPI.org")
            assert r.status == 503, r.body
            error = r.json()["error"]
            assert (error["code"], error["rule"]) == ("RETRY_LATER", "policy_unavailable")
            assert "fail closed" in error["message"]
            assert r.headers["retry-after"] == "1"
        (logged,) = interceptor.decisions(
            lambda d: d["path"] == "/during" and d["scheme"] == "http"
        )
        assert (logged["allow"], logged["rule"], logged["judge"]) == (False, "no_decision", "none")
        assert (logged["flags"], logged["status"]) == ("UAEX", 503)
        time.sleep(0.2)
        assert len([r for r in lab.receipts() if r["host"] == "pypi.org"]) == before
        # Envoy still applies the policy compiled into its routes, both ways.
        assert interceptor.curl("POST", "https://pypi.org/during").status == 403
        assert interceptor.curl("GET", "https://pypi.org/still").status == 200
        # No certificate for a name it has not seen yet: the handshake fails.
        r = interceptor.curl("GET", "https://never-seen.example/", timeout=3)
        assert r.status == 0
    finally:
        interceptor.start_agent()
    # Envoy reconnects to the restarted agent (same CA on disk) and traffic flows again.
    interceptor.wait_ready()
    deadline = time.monotonic() + 15
    while (status := interceptor.curl("GET", "https://pypi.org/after").status) != 200:
        assert time.monotonic() < deadline, status
        time.sleep(0.2)


def test_agent_down_an_sni_check_fails_closed_and_logs_no_decision(interceptor):
    """A wildcard's route that decides in Envoy asks the agent about an SNI that is not the
    host: without the agent, 503, logged as no decision (not as the route's allow)."""
    policy = POLICY.replace("a.shared.test, b.shared.test", '"*.shared.test"')
    assert policy != POLICY  # a wildcard's virtual host, not two exact names' gates
    interceptor.write_policy(policy)
    interceptor.wait_ready(revision=parse_policy(policy).revision)
    try:
        # Both names' certificates reach Envoy while the agent is up.
        for name in ("a", "b"):
            assert interceptor.curl("GET", f"https://{name}.shared.test/up").status == 200
        interceptor.stop_process(interceptor.agent, signal.SIGKILL)
        try:
            r = interceptor.curl(
                "GET", "https://a.shared.test/fronted", "-H", "Host: b.shared.test"
            )
            assert r.status == 503, r.body
            assert r.json()["error"]["rule"] == "policy_unavailable"
            # The same SNI and host: Envoy's own route still decides.
            assert interceptor.curl("GET", "https://b.shared.test/same-name").status == 200
            (logged,) = interceptor.decisions(lambda d: d["path"] == "/fronted")
            verdict = (logged["allow"], logged["rule"], logged["judge"], logged["flags"])
            assert verdict == (False, "no_decision", "none", "UAEX")
            assert logged["policy_revision"] == parse_policy(policy).revision
            (still,) = interceptor.decisions(lambda d: d["path"] == "/same-name")
            assert (still["judge"], still["rule"]) == ("envoy", "allowed_domains")
        finally:
            interceptor.start_agent()
        interceptor.wait_ready()
    finally:
        interceptor.write_policy(POLICY)
        interceptor.wait_ready(revision=parse_policy(POLICY).revision)


def test_flood_of_names_keeps_the_agent_bounded(interceptor):
    """Distinct SNIs, each a real handshake through Envoy and a certificate minted on demand."""
    names = 1500
    script = Path(__file__).with_name("sni_flood.py")
    start_rss = memory_mib(status(agent_pid(interceptor)))
    started = time.monotonic()
    result = netns.run(
        interceptor.ns,
        as_user(WORKLOAD_UID, [sys.executable, str(script), str(interceptor.ca_cert), str(names)]),
        timeout=300,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    handshakes = int(result.stdout)
    assert handshakes == names
    end_rss = memory_mib(status(agent_pid(interceptor)))
    minted = interceptor.metric("intercept_certificates_minted_total")
    cached = interceptor.metric("intercept_certificates_cached")
    print(
        f"{names} names in {elapsed:.1f}s ({names / elapsed:.0f} handshakes/s); agent RSS "
        f"{start_rss:.1f} -> {end_rss:.1f} MiB; minted {minted:.0f}, cached {cached:.0f}"
    )
    assert minted >= names
    assert cached <= 200  # the harness runs the agent with --cert-cache-size 200
    # Envoy holds no more certificates than the agent keeps leaves: the agent removes the least
    # recently asked-for, and Envoy's selector releases them.
    deadline = time.monotonic() + 10
    while (held := envoy_certificates(interceptor)) > 200:
        assert time.monotonic() < deadline, held
        time.sleep(0.2)
    print(f"Envoy holds {held} certificates")


def envoy_certificates(icp) -> int:
    url = f"http://127.0.0.1:{ports.ENVOY_ADMIN}/stats?filter=on_demand_secret.cert_active$"
    out = netns.run(icp.ns, ["curl", "-s", url], timeout=5).stdout
    return sum(int(line.rsplit(" ", 1)[1]) for line in out.splitlines() if line.strip())
