"""Upstream resolver addresses: command-line spellings and resolv.conf."""

from __future__ import annotations

import pytest

from intercept_proxy.dns import DnsSinkhole
from intercept_proxy.dns.upstream import parse_upstream
from intercept_proxy.hostnames import HostnameError
from intercept_proxy.resolvconf import nameservers


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("10.96.0.10", ("10.96.0.10", 53)),
        ("10.96.0.10:5353", ("10.96.0.10", 5353)),
        ("fd00::a", ("fd00::a", 53)),
        ("[FD00::A]", ("fd00::a", 53)),
        ("[fd00::a]:5353", ("fd00::a", 5353)),
    ],
)
def test_upstream_spellings(text, parsed):
    assert parse_upstream(text) == parsed


@pytest.mark.parametrize(
    "text", ["kube-dns", "10.96.0.10:", "10.96.0.10:0", "10.96.0.10:65536", "[fd00::a]x", "[x]:53"]
)
def test_bad_upstreams(text):
    with pytest.raises(ValueError):
        parse_upstream(text)


def test_nameservers(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# generated\nsearch default.svc.cluster.local svc.cluster.local\n"
        "nameserver 10.96.0.10\nnameserver   fd00::10  \nnameserver bogus\n"
        "nameserver\noptions ndots:5\n"
    )
    assert nameservers(conf) == ["10.96.0.10", "fd00::10"]
    assert nameservers(tmp_path / "missing") == []


def test_suffixes_must_be_host_names_below_the_root():
    with pytest.raises(HostnameError):
        DnsSinkhole(["."], upstream=["10.96.0.10"])
    with pytest.raises(ValueError, match="no upstream"):
        DnsSinkhole(["cluster.local"], upstream=[])
    DnsSinkhole([], upstream=[])  # nothing to forward, nothing to forward to
