"""The rules at work: a pod namespace whose default routes lead into an "outside" namespace,
listeners on both sides, and clients run as the workload's UID or a sidecar's, IPv4 and IPv6."""

import pytest

from intercept_proxy.netfilter import FAMILIES, CaptureConfig, apply, render, verify
from tests.netfilter.podnet import ADDRESSES, ALLOWED_CIDRS, WORKLOAD_UID, PodNet

pytestmark = [pytest.mark.netns, pytest.mark.parametrize("family", FAMILIES)]

ENVOY_UID, AGENT_UID = 101, 102
# 8080: a server of the workload's, open to the outside.
CONFIG = CaptureConfig(allowed_cidrs=ALLOWED_CIDRS, inbound_ports=(8080,))
SIDECAR_PORTS = (15000, 15001, 15002, 15020, 15021, 15053, 15090)
# A packet the rules refuse fails at once: a TCP reset, or for UDP and ICMP the local drop
# (EPERM) or the ICMP unreachable (ECONNREFUSED). A timeout would mean a silent drop.
NOT_SENT = {"PermissionError", "ConnectionRefusedError"}


@pytest.fixture(scope="module")
def net(prefix, tmp_path_factory):
    net = PodNet(f"{prefix}c", tmp_path_factory.mktemp("podnet"))
    try:
        net.setup()
        apply(render(CONFIG), net.pod)
        net.start_listeners()
        yield net
    finally:
        net.close()


def tcp(address, port):
    return {"op": "tcp", "address": address, "port": port}


def udp(address, port):
    return {"op": "udp", "address": address, "port": port}


def ping(address):
    return {"op": "ping", "address": address}


def landed(result):
    """Where a connection or datagram arrived: (side, port), or the client's error."""
    if "error" in result:
        return result["error"]
    return (result["reply"]["at"], result["reply"]["port"])


def test_rules_in_force_are_the_intended_ones(net, family):
    assert [d for d in verify(render(CONFIG), net.pod) if d.family == family] == []


def test_tls_and_http_land_on_envoy_with_their_original_destination(net, family):
    a = ADDRESSES[family]
    results = net.client(WORKLOAD_UID, tcp(a.remote, 443), tcp(a.remote, 80), tcp(a.allowed, 443))
    # An allowed CIDR (a cluster service) is reached directly, even on the TLS port.
    assert [landed(r) for r in results] == [("pod", 15001), ("pod", 15002), ("outside", 443)]
    assert [r["reply"]["orig"] for r in results[:2]] == [[a.remote, 443], [a.remote, 80]]


def test_dns_to_any_destination_lands_on_the_agent(net, family):
    a = ADDRESSES[family]
    addresses = (a.remote, a.allowed, a.loopback, a.pod)  # cluster DNS in an allowed CIDR too
    jobs = [op(address, 53) for address in addresses for op in (udp, tcp)]
    assert [landed(r) for r in net.client(WORKLOAD_UID, *jobs)] == [("pod", 15053)] * 8


def test_sidecars_reach_the_outside_and_their_own_ports_directly(net, family):
    a = ADDRESSES[family]
    # An empty neighbour cache: IPv6 now needs neighbour discovery, which the kernel sends.
    net.run(net.pod, "ip", "neigh", "flush", "all")
    echoes = net.icmp_echoes_received(family)
    outside = [
        tcp(a.remote, 443),
        tcp(a.remote, 80),
        tcp(a.remote, 22),
        udp(a.remote, 53),
        udp(a.remote, 443),
    ]
    own = [tcp(a.loopback, port) for port in SIDECAR_PORTS] + [udp(a.loopback, 15053)]
    for uid in (ENVOY_UID, AGENT_UID):
        results = net.client(uid, *outside, *own, ping(a.remote))
        assert [landed(r) for r in results[:-1]] == [
            ("outside", 443),
            ("outside", 80),
            ("outside", 22),
            ("outside", 53),
            ("outside", 443),
            *(("pod", port) for port in SIDECAR_PORTS),
            ("pod", 15053),
        ]
        assert results[-1] == {"reply": True}
    assert net.icmp_echoes_received(family) == echoes + 2


def test_the_workload_cannot_reach_sidecar_ports_directly(net, family):
    a = ADDRESSES[family]
    jobs = [tcp(address, port) for address in (a.loopback, a.pod) for port in SIDECAR_PORTS]
    jobs += [udp(a.loopback, 15053), udp(a.pod, 15090)]
    results = [landed(r) for r in net.client(WORKLOAD_UID, *jobs)]
    assert results[:-2] == ["ConnectionRefusedError"] * (len(jobs) - 2)
    assert set(results[-2:]) <= NOT_SENT
    # Not for want of listeners: the pod's sidecar ports answer Envoy on loopback.
    assert landed(net.client(ENVOY_UID, tcp(a.loopback, 15021))[0]) == ("pod", 15021)


def test_the_workload_reaches_its_own_local_servers(net, family):
    a = ADDRESSES[family]
    jobs = [tcp(a.loopback, 8080), tcp(a.pod, 8080), udp(a.loopback, 8080), tcp(a.loopback, 443)]
    # 443 on a local address is the workload's own server, not redirected to Envoy.
    assert [landed(r) for r in net.client(WORKLOAD_UID, *jobs)] == [
        ("pod", 8080),
        ("pod", 8080),
        ("pod", 8080),
        ("pod", 443),
    ]


def test_other_egress_is_refused_at_once_and_nothing_arrives_outside(net, family):
    a = ADDRESSES[family]
    seen, echoes = len(net.received("outside")), net.icmp_echoes_received(family)
    blocked = net.client(
        WORKLOAD_UID, tcp(a.remote, 22), tcp(a.remote, 5432), udp(a.remote, 443), ping(a.remote)
    )
    assert [landed(r) for r in blocked[:2]] == ["ConnectionRefusedError"] * 2
    assert {landed(r) for r in blocked[2:]} <= NOT_SENT
    # Envoy's packets take the same path after the workload's: only they arrive.
    assert [landed(r) for r in net.client(ENVOY_UID, tcp(a.remote, 22), udp(a.remote, 443))] == [
        ("outside", 22),
        ("outside", 443),
    ]
    arrived = [(entry["proto"], entry["port"]) for entry in net.received("outside")[seen:]]
    assert arrived == [("tcp", 22), ("udp", 443)]
    assert net.icmp_echoes_received(family) == echoes


def test_an_allowed_cidr_is_reachable_and_only_it(net, family):
    a = ADDRESSES[family]
    jobs = [tcp(a.allowed, 5432), udp(a.allowed, 443), ping(a.allowed), tcp(a.remote, 5432)]
    results = net.client(WORKLOAD_UID, *jobs)
    assert [landed(r) for r in results[:2]] == [("outside", 5432), ("outside", 443)]
    assert results[2] == {"reply": True}
    assert landed(results[3]) == "ConnectionRefusedError"


def test_inbound_connections_are_refused_but_to_the_open_ports(net, family):
    """In a cluster every pod can route to every other: a server of the workload's would be a
    channel the policy never sees, unless the operator opens it."""
    a = ADDRESSES[family]
    jobs = [tcp(a.pod, 15090), udp(a.pod, 15090), udp(a.pod, 8080), tcp(a.pod, 8080)]
    results = [landed(r) for r in net.client(0, *jobs, name=net.outside)]
    assert results == ["ConnectionRefusedError"] * 3 + [("pod", 8080)]
