"""The schema's pattern for a network against Python's reading (proxy-init's): it never accepts
a text ip_network(strict=True) refuses, and accepts every network in the spellings it names."""

from __future__ import annotations

import ipaddress

from hypothesis import example, given
from hypothesis import strategies as st

from intercept_proxy.injector.networks import network_schema
from intercept_proxy.injector.values import HelmValidator

# As `intercept inject` checks it: `$` ends the text, as in Helm's Go engine.
VALIDATOR = HelmValidator(network_schema("a network"))


def accepted(text: str) -> bool:
    return VALIDATOR.is_valid(text)


def strict(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=True)
    except ValueError:
        return False
    return True


@st.composite
def networks(draw: st.DrawFn) -> tuple[int, int, int]:
    """(version, address, prefix length), host bits cleared or not."""
    version = draw(st.sampled_from([4, 6]))
    bits = 32 if version == 4 else 128
    prefix = draw(st.integers(0, bits))
    address = draw(st.integers(0, 2**bits - 1))
    if draw(st.booleans()):
        address &= ~((1 << (bits - prefix)) - 1)
    return version, address, prefix


def spellings(version: int, address: int, prefix: int) -> set[str]:
    ip = ipaddress.ip_address(address) if version == 4 else ipaddress.IPv6Address(address)
    return {f"{ip}/{prefix}", f"{ip.exploded}/{prefix}", f"{str(ip).upper()}/{prefix}"}


def named_spelling(text: str) -> bool:
    """What the schema's description promises: IPv4, or IPv6 in lower case written in full or
    as its leading groups then ::, any lower-case spelling for a /128."""
    address, _, prefix = text.partition("/")
    if "." in address:
        return True
    return address == address.lower() and (
        prefix == "128" or "::" not in address or address.endswith("::")
    )


@given(networks())
@example((4, 0x0A000001, 8))  # 10.0.0.1/8: host bits
@example((6, 0xFD00 << 112, 8))  # fd00::/8
@example((6, (0xFD00 << 112) | (0x10 << 96) | (0x96 << 80), 112))  # fd00:10:96::/112
def test_the_pattern_accepts_what_proxy_init_accepts_in_its_spellings(network):
    for text in spellings(*network):
        if accepted(text):
            assert strict(text), text
        elif strict(text):
            assert not named_spelling(text), text


@given(st.text(alphabet="0123456789abcdef.:/-x \n", max_size=45))
@example("10.0.0.0/8\n")
def test_the_pattern_accepts_no_text_proxy_init_refuses(text):
    if accepted(text):
        assert strict(text), text
