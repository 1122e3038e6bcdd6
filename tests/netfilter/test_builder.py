"""The rule builder: one golden file per scenario and family, and the properties goldens hide."""

import re

import pytest

from intercept_proxy.netfilter import FAMILIES, CaptureConfig, normalise, render
from tests.golden import assert_golden_text

SCENARIOS = {
    "default": CaptureConfig(),
    "ports-and-uids": CaptureConfig(
        tls_ports=(443, 8443, 9443), http_ports=(80, 8080), envoy_uid=1337, agent_uid=1338
    ),
    "allowed-cidrs": CaptureConfig(
        allowed_cidrs=("10.96.0.0/12", "fd00:10:96::/112", "192.168.7.7/32", "2001:db8::1/128")
    ),
    # Kubernetes: kubelet probes reach the agent's health port from outside the pod.
    "inbound-health": CaptureConfig(inbound_ports=(15020,)),
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_golden(scenario, family):
    assert_golden_text(
        f"netfilter/{scenario}.{family}.rules", render(SCENARIOS[scenario]).of(family)
    )


def test_rendering_is_deterministic():
    shuffled = CaptureConfig(
        tls_ports=(9443, 443, 8443),
        http_ports=(8080, 80),
        envoy_uid=1337,
        agent_uid=1338,
    )
    assert render(shuffled) == render(SCENARIOS["ports-and-uids"])
    assert render(CaptureConfig()) == render(CaptureConfig())


def test_each_family_gets_only_its_own_cidrs_and_icmp():
    rules = render(SCENARIOS["allowed-cidrs"])
    # Each CIDR twice: not redirected (nat), then accepted (filter).
    allowed = r" -d (\S+) -m comment --comment \"allowed CIDR"
    assert re.findall(allowed, rules.ipv4) == ["10.96.0.0/12", "192.168.7.7/32"] * 2
    assert re.findall(allowed, rules.ipv6) == ["2001:db8::1/128", "fd00:10:96::/112"] * 2
    assert "icmp6" not in rules.ipv4 and "ipv6-icmp" not in rules.ipv4
    # Neighbour discovery in (INPUT) and out (OUTPUT).
    assert re.findall(r"--icmpv6-type (\d+)", rules.ipv6) == ["133", "134", "135", "136"] * 2
    assert re.findall(r"reject-with (\S+)", rules.ipv6).count("icmp-port-unreachable") == 0


def test_layout_whole_tables_and_chain_order():
    for family in FAMILIES:
        tables = normalise(render(CaptureConfig()).of(family))
        assert list(tables) == ["nat", "filter"]
        assert " ".join(tables["nat"]) == "PREROUTING INPUT OUTPUT POSTROUTING INTERCEPT_REDIRECT"
        assert " ".join(tables["filter"]) == "INPUT FORWARD OUTPUT INTERCEPT_INPUT INTERCEPT_OUTPUT"
        output = [rule.split(" -m comment")[0] for rule in tables["filter"]["INTERCEPT_OUTPUT"]]
        # Envoy's limits first, then the sidecars, then replies (only replies: a packet in the
        # original direction of someone else's flow is not the workload's to send); the
        # sidecar range rejected only after our own redirections are let through, and the
        # final refusals last.
        sidecars = output.index("-A INTERCEPT_OUTPUT -m owner --uid-owner 101")
        assert all("--uid-owner 101" in rule for rule in output[1:sidecars])
        assert output[sidecars : sidecars + 3] == [
            "-A INTERCEPT_OUTPUT -m owner --uid-owner 101",
            "-A INTERCEPT_OUTPUT -m owner --uid-owner 102",
            "-A INTERCEPT_OUTPUT -m conntrack --ctstate RELATED,ESTABLISHED --ctdir REPLY",
        ]
        last_dnat = max(i for i, rule in enumerate(output) if "--ctstate DNAT" in rule)
        first_range = min(
            i for i, rule in enumerate(output) if "15000:15099" in rule and "owner" not in rule
        )
        assert last_dnat < first_range
        assert output[-2:] == ["-A INTERCEPT_OUTPUT -p tcp", "-A INTERCEPT_OUTPUT"]
