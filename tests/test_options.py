"""Settings declared once: the command line written from settings reads back as those settings."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import pytest

from intercept_proxy.agent.settings import AgentSettings
from intercept_proxy.netfilter.config import CaptureConfig
from intercept_proxy.options import add_arguments, command_line, flag_of, from_arguments
from intercept_proxy.policy.combined import OverrideMode
from intercept_proxy.xds.resources import DataPlane


def parse(cls: type, argv: list[str]) -> object:
    parser = argparse.ArgumentParser()
    add_arguments(parser, cls)
    return from_arguments(cls, parser.parse_args(argv))


def test_agent_settings_read_back_as_written():
    values = {
        "policy": Path("/p.yaml"),
        "ca_cert": Path("/ca.pem"),
        "ca_key": Path("/ca.key"),
        "health_addresses": ("0.0.0.0", "::"),
        "pod_policy_mode": OverrideMode.REPLACE,
        "cert_validity": dt.timedelta(hours=1.5),
        "dns_forward_suffixes": ("cluster.local", "svc.test"),
        "tls_port": 15101,  # a DataPlane field: its options are the agent's too
        "dns_resolvers": ("198.18.0.53",),
    }
    settings = parse(AgentSettings, command_line(AgentSettings, **values))
    dp = {k: values.pop(k) for k in ("tls_port", "dns_resolvers")}
    assert settings == AgentSettings(**values, data_plane=DataPlane(**dp))


def test_options_not_given_keep_the_declared_defaults():
    settings = parse(AgentSettings, ["--policy", "p", "--ca-cert", "c", "--ca-key", "k"])
    assert settings == AgentSettings(Path("p"), Path("c"), Path("k"))
    assert parse(CaptureConfig, []) == CaptureConfig()


def test_a_repeated_option_replaces_the_default():
    config = parse(CaptureConfig, ["--tls-port", "8443", "--tls-port", "443"])
    assert config == CaptureConfig(tls_ports=(443, 8443))


def test_unknown_settings_are_refused_and_flags_are_named():
    with pytest.raises(TypeError, match="no option cert_lifetime"):
        command_line(AgentSettings, cert_lifetime=3)
    assert flag_of(CaptureConfig, "allowed_cidrs") == "--allow-cidr"
    assert flag_of(AgentSettings, "http_port") == "--plain-port"
