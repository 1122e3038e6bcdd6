"""Failure modes: the agent dies (requests fail closed), and a flood of names (memory bounded)."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from intercept_proxy import netns
from tests.integration.harness import WORKLOAD_UID, as_user

pytestmark = pytest.mark.netns


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def agent_pid(icp) -> int:
    """The agent process itself (setpriv execs it; `ip netns exec` execs setpriv)."""
    assert icp.agent is not None
    return icp.agent.pid


def test_agent_down_fails_closed_and_recovers(interceptor, lab):
    assert interceptor.curl("GET", "https://pypi.org/before").status == 200
    interceptor.stop_process(interceptor.agent, signal.SIGKILL)
    before = len([r for r in lab.receipts() if r["host"] == "pypi.org"])
    try:
        for url in ("https://pypi.org/during", "http://pypi.org/during"):
            r = interceptor.curl("GET", url)
            assert r.status == 503, r.body
            error = r.json()["error"]
            assert error["code"] == "POLICY_UNAVAILABLE"
            assert "fail closed" in error["message"]
        time.sleep(0.2)
        assert len([r for r in lab.receipts() if r["host"] == "pypi.org"]) == before
    finally:
        interceptor.start_agent()
    # Envoy reconnects to the restarted agent (same CA on disk) and traffic flows again.
    interceptor.wait_ready()
    deadline = time.monotonic() + 15
    while (status := interceptor.curl("GET", "https://pypi.org/after").status) != 200:
        assert time.monotonic() < deadline, status
        time.sleep(0.2)


def test_flood_of_names_keeps_the_agent_bounded(interceptor):
    """Distinct SNIs, each a real handshake through Envoy and a certificate minted on demand."""
    names = 1500
    script = Path(__file__).with_name("sni_flood.py")
    start_rss = rss_mib(agent_pid(interceptor))
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
    end_rss = rss_mib(agent_pid(interceptor))
    minted = interceptor.metric("intercept_certificates_minted_total")
    cached = interceptor.metric("intercept_certificates_cached")
    print(
        f"{names} names in {elapsed:.1f}s ({names / elapsed:.0f} handshakes/s); agent RSS "
        f"{start_rss:.1f} -> {end_rss:.1f} MiB; minted {minted:.0f}, cached {cached:.0f}"
    )
    assert minted >= names
    assert cached <= 200  # the harness runs the agent with --cert-cache-size 200
