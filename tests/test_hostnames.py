"""Host names from configuration and from TLS ClientHellos."""

from __future__ import annotations

import pytest

from intercept_proxy.hostnames import HostnameError, normalize_hostname


@pytest.mark.parametrize(
    ("name", "normalized"),
    [
        ("PyPI.org.", "pypi.org"),
        ("a_b.example", "a_b.example"),
        ("xn--pyp-ana.org", "xn--pyp-ana.org"),
    ],
)
def test_valid(name, normalized):
    assert normalize_hostname(name) == normalized


@pytest.mark.parametrize(
    "name",
    [
        "",
        "pypi.org\n",
        "pypi..org",
        "-a.org",
        "a-.org",
        "pypí.org",
        "1.2.3.4",
        "0x7f.1",
        "::1",
        "[::1]",
        "a" * 64 + ".org",
        ".".join(["a" * 63] * 5),
    ],
)
def test_invalid(name):
    with pytest.raises(HostnameError):
        normalize_hostname(name)
