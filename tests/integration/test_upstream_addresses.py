"""Envoy connects to no non-public address but the ranges it is told (xds/resources.py,
`refused_ranges`): a name of the policy's that resolves elsewhere in the lab, outside the
interceptor's allowed ranges, stands for one that resolves to a metadata service or to the
node. It fails as a name that does not resolve, and reaches nothing. So does a name in a range
it is told to refuse, allowed or public (the egress gateway's Kubernetes API addresses)."""

from __future__ import annotations

import pytest

from tests.integration.harness import Interceptor

pytestmark = pytest.mark.netns

# The lab's pool of automatic addresses (pypi.org's); a.shared.test is at 198.18.5.5, fd00::5:5.
ALLOWED = ("198.18.1.0/24", "fd00::1:0/112")
# (allowed ranges, refused ranges)
CASES = {
    "outside the allowed ranges": (ALLOWED, ()),
    "in a refused range": (("198.18.0.0/15", "fd00::/8"), ("198.18.5.5/32", "fd00::5:5/128")),
}


@pytest.fixture(scope="module")
def policy():
    return "allowed_domains: [pypi.org, a.shared.test]\n"


@pytest.fixture(scope="module", params=list(CASES))
def interceptor(request, lab, client_ns, policy):
    allowed, refused = CASES[request.param]
    icp = Interceptor(
        client_ns,
        policy,
        lab.ca_cert_path,
        lab.dns_servers,
        upstream_private_ranges=allowed,
        upstream_refused_ranges=refused,
    )
    try:
        yield icp.start()
    finally:
        icp.close()


def test_an_allowed_name_in_a_refused_range_reaches_nothing(interceptor, lab):
    assert interceptor.curl("GET", "https://pypi.org/public").status == 200
    for url in ("https://a.shared.test/inside", "http://a.shared.test/inside"):
        r = interceptor.curl("GET", url)
        assert r.status == 502, r.stderr
        error = r.json()["error"]
        assert (error["code"], error["rule"]) == ("RETRY_LATER", "upstream_dns_failure")
    [logged, _] = interceptor.decisions(lambda d: d["path"] == "/inside", 2)
    # The policy allowed it; the address did not.
    assert (logged["allow"], logged["rule"], logged["status"]) == (True, "allowed_domains", 502)
    lab.wait_for_receipts(lambda r: r["path"] == "/public")
    assert not [r for r in lab.receipts() if r["path"] == "/inside"]
    # The name did resolve (the lab answers it): its addresses were filtered out.
    stats = interceptor.envoy_stats("dns_address_filter_out")["stats"]
    assert sum(s["value"] for s in stats if "value" in s) >= 2, stats
