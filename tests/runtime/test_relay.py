"""The relays' word to the gateway about each client (a PROXY protocol v1 line), and the
dispatcher's choice of a relay by the client's address."""

from __future__ import annotations

import pytest

from intercept_proxy.runtime.relay import choose, parse_routes, proxy_header


def test_the_proxy_line_names_the_client_and_the_address_it_reached():
    assert proxy_header(("127.0.0.5", 40000), ("127.0.0.1", 3128)) == (
        b"PROXY TCP4 127.0.0.5 127.0.0.1 40000 3128\r\n"
    )
    assert proxy_header(("::1", 40001, 0, 0), ("::1", 3128, 0, 0)) == (
        b"PROXY TCP6 ::1 ::1 40001 3128\r\n"
    )
    assert proxy_header(("fe80::1%veth0", 40002, 0, 2), ("fe80::2%veth0", 3128, 0, 2)) == (
        b"PROXY TCP6 fe80::1 fe80::2 40002 3128\r\n"
    )


def test_a_client_goes_to_its_most_specific_range_else_to_the_fallback():
    routes, fallback = parse_routes(["10.0.0.0/8=5", "10.1.0.0/16=6", "fd00::/8=7", "*=4"])
    assert choose(routes, fallback, "10.1.2.3") == 6
    assert choose(routes, fallback, "10.2.0.1") == 5
    assert choose(routes, fallback, "fd00::1%veth0") == 7
    assert choose(routes, fallback, "192.0.2.1") == 4
    assert choose(routes, fallback, "::ffff:10.1.2.3") == 4  # a v6 socket's, not a v4 range's
    with pytest.raises(ValueError, match="fallback"):
        parse_routes(["10.0.0.0/8=5"])
