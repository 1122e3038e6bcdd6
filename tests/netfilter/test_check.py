"""`intercept proxy-init --check` (CNI mode's init container): as an ordinary user, in a namespace
of the test's own whose routes lead nowhere (a veth into itself), it passes when the
rules are in force and fails, naming every probe, when they are not or not for its ports."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from intercept_proxy import netns
from intercept_proxy.identities import CHECK_UID, ENVOY_UID
from intercept_proxy.netfilter import CaptureConfig, apply, render
from intercept_proxy.netfilter.check import CheckError, target

pytestmark = pytest.mark.netns

INTERCEPT = str(Path(sys.executable).with_name("intercept"))
PROBES = [
    f"{family} {what}"
    for family, loopback in (("ipv4", "127.0.0.1"), ("ipv6", "::1"))
    for what in (
        "tcp/443 (TLS)",
        "tcp/80 (HTTP)",
        "tcp/53 (DNS)",
        "udp/53 (DNS)",
        f"tcp/15001 on {loopback} (a sidecar's)",
        "tcp/9 (other)",
        "udp/443 (other)",
    )
]


LINK = "link add d0 type veth peer name d1\nlink set d0 up\nlink set d1 up\n"


@pytest.fixture
def routed(fresh_netns):
    """The namespace with a default route per family into a veth whose other end is its own
    (and answers nothing): whatever is not redirected goes nowhere."""
    netns.ip("-n", fresh_netns, "-batch", "-", input=f"{LINK}address add 10.9.0.1/24 dev d0\n"
             "address add fd00:9::1/64 dev d0 nodad\n"
             "route add default dev d0\nroute add ::/0 dev d0\n")  # fmt: skip
    return fresh_netns


def check(name: str, *args: str, uid: int = CHECK_UID):
    return netns.run(
        name,
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
         INTERCEPT, "proxy-init", "--check", *args],
    )  # fmt: skip


def test_the_rules_in_force_pass_the_check(routed):
    apply(render(CaptureConfig()), routed)
    result = check(routed)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        *(f"{p}: ok" for p in PROBES),
        "intercept proxy-init: capture checked (ipv4, ipv6)",
    ]


def test_without_the_rules_every_probe_fails_and_the_pod_must_not_start(routed):
    result = check(routed)
    assert result.returncode == 1
    failed = result.stderr.splitlines()
    assert [line.split(": ", 1)[0] for line in failed[:-1]] == PROBES
    assert "ipv4 tcp/443 (TLS): connected elsewhere: not redirected" in failed or any(
        line.startswith("ipv4 tcp/443 (TLS): the connection failed") for line in failed
    )
    assert "ipv6 udp/53 (DNS): nothing arrived at the agent's DNS port: not redirected" in failed
    sidecar = "ipv4 tcp/15001 on 127.0.0.1 (a sidecar's): not refused: the workload could reach it"
    assert sidecar in failed
    assert "ipv6 udp/443 (other): not refused (timed out): the filter rules are missing" in failed
    assert failed[-1] == "intercept proxy-init: the capture is not in force: the pod must not start"


def test_rules_for_other_ports_fail_for_the_ports_the_check_names(routed):
    apply(render(CaptureConfig(tls_ports=(8443,))), routed)
    result = check(routed, "--tls-port", "443", "--tls-port", "8443")
    assert result.returncode == 1
    failed = {line.split(": ", 1)[0] for line in result.stderr.splitlines()[:-1]}
    # 443 is not redirected, and the filter refuses it: refused instead of reaching Envoy.
    assert failed == {"ipv4 tcp/443 (TLS)", "ipv6 tcp/443 (TLS)"}
    assert "ipv4 tcp/8443 (TLS): ok" in result.stdout


def test_a_family_without_a_route_has_nothing_to_capture(fresh_netns):
    netns.ip("-n", fresh_netns, "-batch", "-", input=f"{LINK}address add 10.9.0.1/24 dev d0\n"
             "route add default dev d0\n")  # fmt: skip
    apply(render(CaptureConfig()), fresh_netns)
    result = check(fresh_netns)
    assert result.returncode == 0, result.stderr
    assert "ipv6 no route: nothing leaves: ok" in result.stdout.splitlines()


def test_a_pod_that_routes_nothing_proves_nothing(fresh_netns):
    apply(render(CaptureConfig()), fresh_netns)
    result = check(fresh_netns)
    assert result.returncode == 1
    assert "the pod routes nothing, in either family: nothing proves the capture" in result.stderr


def test_the_check_refuses_a_sidecars_user_and_busy_ports(routed):
    apply(render(CaptureConfig()), routed)
    result = check(routed, uid=ENVOY_UID)
    assert result.returncode == 1
    assert f"runs as UID {ENVOY_UID}, a sidecar's" in result.stderr
    # Envoy already listening: the check runs before the sidecars, on their ports.
    busy = netns.socket_in(routed, socket.AF_INET, socket.SOCK_STREAM)
    with busy:
        busy.bind(("127.0.0.1", 15001))
        busy.listen(1)
        result = check(routed)
    assert result.returncode == 1
    assert "cannot listen on 127.0.0.1 port 15001" in result.stderr


def test_the_probe_address_avoids_the_allowed_cidrs():
    assert target(CaptureConfig(), "ipv4") == "192.0.2.1"
    assert target(CaptureConfig(allowed_cidrs=("192.0.2.0/24",)), "ipv4") == "198.51.100.1"
    every = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
    with pytest.raises(CheckError, match="every ipv4 documentation address is in an allowed"):
        target(CaptureConfig(allowed_cidrs=every), "ipv4")
