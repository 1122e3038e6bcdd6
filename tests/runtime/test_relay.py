"""The relay's word to the gateway about each client: a PROXY protocol v1 line."""

from __future__ import annotations

from intercept_proxy.runtime.relay import proxy_header


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
