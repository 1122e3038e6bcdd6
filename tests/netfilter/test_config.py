"""CaptureConfig: defaults, normalisation, and validation errors naming the field."""

import dataclasses

import pytest

from intercept_proxy import ports
from intercept_proxy.netfilter import CaptureConfig, CaptureConfigError


def test_defaults_follow_the_port_conventions():
    config = CaptureConfig()
    assert (config.envoy_uid, config.agent_uid) == (101, 102)
    assert (config.tls_ports, config.http_ports) == ((443,), (80,))
    assert (config.tls_redirect_port, config.http_redirect_port, config.dns_port) == (
        ports.ENVOY_TLS,
        ports.ENVOY_HTTP,
        ports.AGENT_DNS,
    )
    assert config.sidecar_port_range == ports.SIDECAR_RANGE
    assert config.allowed_cidrs == ()


def test_collections_are_normalised_so_equal_meanings_are_equal():
    config = CaptureConfig(
        tls_ports=[8443, 443, 8443],
        sidecar_port_range=[15000, 15099],
        allowed_cidrs=["2001:DB8::/32", "10.0.0.0/8", "10.0.0.0/8", "192.168.0.0/16"],
    )
    assert config.tls_ports == (443, 8443)
    assert config.sidecar_port_range == (15000, 15099)
    assert config.allowed_cidrs == ("10.0.0.0/8", "192.168.0.0/16", "2001:db8::/32")
    assert config == CaptureConfig(
        tls_ports=(443, 8443), allowed_cidrs=("2001:db8::/32", "192.168.0.0/16", "10.0.0.0/8")
    )
    assert hash(config)  # frozen and made of tuples


def test_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        CaptureConfig().tls_ports = (8443,)


@pytest.mark.parametrize(
    ("kwargs", "field", "problem"),
    [
        ({"envoy_uid": 0}, "envoy_uid", "0 is outside 1-2147483647"),
        # Kubernetes' limit, as the chart and the runtime: beyond it the kernel's -1 aliases.
        ({"agent_uid": 2**31}, "agent_uid", "2147483648 is outside 1-2147483647"),
        ({"agent_uid": -1}, "agent_uid", "-1 is outside"),
        ({"agent_uid": 2**32 - 1}, "agent_uid", "4294967295 is outside"),
        ({"envoy_uid": "101"}, "envoy_uid", "'101' is not a UID"),
        ({"agent_uid": 101}, "agent_uid", "must differ from envoy_uid"),
        ({"tls_ports": (0,)}, "tls_ports", "0 is outside 1-65535"),
        ({"http_ports": (80, 65536)}, "http_ports", "65536 is outside 1-65535"),
        ({"tls_ports": ("443",)}, "tls_ports", "'443' is not a port"),
        ({"tls_ports": (True,)}, "tls_ports", "True is not a port"),
        ({"tls_ports": 443}, "tls_ports", "443 is not a list of ports"),
        # Whoever writes a pod names them; in CNI mode root renders them on the node.
        ({"tls_ports": tuple(range(1000, 1065))}, "tls_ports", "65 entries: at most 64"),
        (
            {"allowed_cidrs": tuple(f"10.0.{i}.0/24" for i in range(65))},
            "allowed_cidrs",
            "65 entries: at most 64",
        ),
        ({"http_ports": (53,)}, "http_ports", "53 is DNS"),
        ({"http_ports": (15001,)}, "http_ports", "15001 is in the sidecar range 15000-15099"),
        ({"http_ports": (443, 8080)}, "http_ports", "443 is also in tls_ports"),
        ({"tls_redirect_port": 15100}, "tls_redirect_port", "outside the sidecar range"),
        ({"dns_port": 53}, "dns_port", "53 is outside the sidecar range 15000-15099"),
        ({"http_redirect_port": 15001}, "http_redirect_port", "already tls_redirect_port"),
        ({"dns_port": 15002}, "dns_port", "15002 is already http_redirect_port"),
        ({"sidecar_port_range": (15099, 15000)}, "sidecar_port_range", "is not (first, last)"),
        ({"sidecar_port_range": (15000,)}, "sidecar_port_range", "is not (first, last)"),
        ({"sidecar_port_range": (0, 99)}, "sidecar_port_range", "0 is outside 1-65535"),
        ({"sidecar_port_range": (20000, 20099)}, "tls_redirect_port", "15001 is outside"),
        (
            {"allowed_cidrs": ("10.0.0.1/8",)},
            "allowed_cidrs",
            "'10.0.0.1/8' is not a CIDR (10.0.0.1/8 has host bits set)",
        ),
        ({"allowed_cidrs": ("fd00::/129",)}, "allowed_cidrs", "'fd00::/129' is not a CIDR"),
        ({"allowed_cidrs": ("cluster",)}, "allowed_cidrs", "'cluster' is not a CIDR"),
        ({"allowed_cidrs": (167772160,)}, "allowed_cidrs", "167772160 is not a CIDR"),
        ({"allowed_cidrs": "10.0.0.0/8"}, "allowed_cidrs", "is not a list of CIDRs"),
    ],
)
def test_invalid_configurations_name_the_field(kwargs, field, problem):
    with pytest.raises(CaptureConfigError, match=rf"^{field}: ") as error:
        CaptureConfig(**kwargs)
    assert error.value.field == field
    assert problem in error.value.problem


@pytest.mark.parametrize(
    ("ports_", "problem"),
    [
        ((15001,), "15001 is tls_redirect_port: only the pod's own may reach it"),
        ((15053,), "15053 is dns_port"),
        ((0,), "outside 1-65535"),
    ],
)
def test_inbound_ports_are_services_not_the_redirect_targets(ports_, problem):
    with pytest.raises(CaptureConfigError) as e:
        CaptureConfig(inbound_ports=ports_)
    assert e.value.field == "inbound_ports"
    assert problem in e.value.problem
    assert CaptureConfig(inbound_ports=(8080, 15020, 8080)).inbound_ports == (8080, 15020)
