"""Host names from configuration and from TLS ClientHellos."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intercept_proxy.hostnames import HostnameError, normalize_hostname
from intercept_proxy.policy.engine import RegorusEngine
from intercept_proxy.policy.input import http_input
from intercept_proxy.policy.model import Policy


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


NAMES = st.one_of(
    st.text(alphabet="abz09_-.XK", max_size=20),
    st.lists(st.from_regex(r"[a-z0-9_-]{1,4}", fullmatch=True), min_size=1, max_size=4).map(
        ".".join
    ),
    st.sampled_from(["a" * 63 + ".org", "a" * 64 + ".org", ".".join(["a" * 63] * 4)]),
)
ENGINE = RegorusEngine(Policy())


@settings(max_examples=300)
@given(NAMES)
def test_the_rego_and_python_agree_on_host_names(name):
    """One rule in two languages: a canonical name (lower case, no trailing dot) is a host name
    to the Rego exactly when normalize_hostname keeps it as it is."""
    try:
        python = normalize_hostname(name) == name
    except HostnameError:
        python = False
    request = http_input(
        method="GET",
        host=name,
        path="/",
        scheme="https",
        headers={":authority": name, ":method": "GET", ":path": "/", ":scheme": "https"},
        sni=name,
    )
    rego = ENGINE.evaluate(request).reason.startswith(f"GET {name}:443 ")
    assert rego == python, name
