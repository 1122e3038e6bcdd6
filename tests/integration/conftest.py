"""One lab and one client namespace per module; the interceptor runs inside the client namespace,
whose only network is the lab. Everything carries the session prefix and is removed at the end,
however the tests ended."""

from __future__ import annotations

import pytest

from intercept_proxy import netns
from intercept_proxy.lab import Lab, LabSpec
from tests.integration.harness import Interceptor

LAB_SPEC = {
    "hosts": [
        {"name": "pypi.org"},
        {"name": "api.github.com"},
        {"name": "github.com", "git_repos": ["octo/hello", "octo/other"]},
        {"name": "api.anthropic.com"},
        {"name": "unknown.example"},
        {"name": "trust.test"},
        # Two names, one address, each with its own certificate (the multi-SNI bug).
        {"name": "a.shared.test", "ipv4": "198.18.5.5", "ipv6": "fd00::5:5"},
        {"name": "b.shared.test", "ipv4": "198.18.5.5", "ipv6": "fd00::5:5"},
    ]
}

POLICY = """\
allowed_domains: [pypi.org, a.shared.test, b.shared.test, trust.test]
unrestricted_domains: [api.anthropic.com]
github_read_access_enabled: true
github_allowed_repos: [octo/hello]
"""


@pytest.fixture(scope="module")
def lab(netns_prefix):
    with Lab(LabSpec.from_dict(LAB_SPEC, source="<integration>"), prefix=netns_prefix) as lab:
        yield lab


@pytest.fixture(scope="module")
def client_ns(lab, netns_prefix):
    name = f"{netns_prefix}-client"
    netns.create(name)
    try:
        lab.connect(name)
        yield name
    finally:
        netns.delete(name)


@pytest.fixture(scope="module")
def policy():
    """The interceptor's policy; a module overrides it with a fixture of the same name."""
    return POLICY


@pytest.fixture(scope="module")
def interceptor_options():
    """More of the interceptor's settings; a module overrides it with a fixture of the same
    name."""
    return {}


@pytest.fixture(scope="module")
def interceptor(lab, client_ns, policy, interceptor_options):
    icp = Interceptor(client_ns, policy, lab.ca_cert_path, lab.dns_servers, **interceptor_options)
    try:
        yield icp.start()
    finally:
        icp.close()
