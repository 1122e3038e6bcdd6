"""A regular expression for a network with no host bits set (`10.0.0.0/8`, `fd00:10:96::/112`),
for the chart's schema: Helm then refuses the CIDRs proxy-init refuses (`ipaddress.ip_network`
with strict=True), instead of every injected pod failing at start-up.

JSON Schema has only patterns, so the prefix length and the address are checked together: one
alternative per prefix length, each naming what its address may hold. IPv6 networks are accepted
in lower case, as their leading groups followed by `::` or in full (any spelling for a /128);
other spellings (`::ffff:0:0/96`, upper case) are refused, which is safe: the schema refuses more
than proxy-init, never less.
"""

from __future__ import annotations

from typing import Any

_HEX = "[0-9a-f]"
_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_GROUP = f"{_HEX}{{1,4}}"
_ZERO_GROUP = "0{1,4}"


def _octet_multiple_of(step: int) -> str:
    """An IPv4 octet whose value is a multiple of `step` (a power of two)."""
    return "(" + "|".join(str(v) for v in range(0, 256, step)) + ")"


def _ipv4(prefix: int) -> str:
    full, bits = divmod(prefix, 8)
    octets = [_OCTET] * full
    if bits:
        octets.append(_octet_multiple_of(2 ** (8 - bits)))
    octets += ["0"] * (4 - len(octets))
    return r"\.".join(octets)


def _group_multiple_of(host_bits: int) -> str:
    """An IPv6 group (1 to 4 hex digits) whose low `host_bits` bits are zero (0 < bits < 16)."""
    zeros, bits = divmod(host_bits, 4)
    digits = "".join(f"{d:x}" for d in range(0, 16, 2**bits))
    return f"({_HEX}{{0,{3 - zeros}}}[{digits}]{'0' * zeros}|{_ZERO_GROUP})"


def _ipv6(prefix: int) -> str:
    if prefix == 128:
        return _any_ipv6()
    full, bits = divmod(prefix, 16)
    groups = [_GROUP] * full
    if bits:
        groups.append(_group_multiple_of(16 - bits))
    groups += [_ZERO_GROUP] * (8 - len(groups))
    # Or the first k groups (k < 8), each as its position allows, then `::`.
    tail = ""
    for group in reversed(groups[1:7]):
        tail = f"(:{group}{tail})?"
    return f"({':'.join(groups)}|({groups[0]}{tail})?::)"


def _any_ipv6() -> str:
    """Any IPv6 address without an embedded IPv4 part."""
    g = _GROUP
    forms = [f"({g}:){{7}}{g}", f"({g}:){{1,7}}:"]
    forms += [f"({g}:){{1,{7 - n}}}(:{g}){{1,{n}}}" for n in range(1, 7)]
    forms.append(f":((:{g}){{1,7}}|:)")
    return "(" + "|".join(forms) + ")"


def network_schema(description: str) -> dict[str, Any]:
    """A network in CIDR notation, IPv4 or IPv6, with no host bits set: the address's pattern
    chosen by its prefix length, so that Helm's message quotes that one alone."""
    prefixes = []
    for length in range(129):
        forms = [_ipv4(length), _ipv6(length)] if length <= 32 else [_ipv6(length)]
        prefixes.append(
            {
                "if": {"pattern": f"/{length}$"},
                "then": {"pattern": f"^({'|'.join(forms)})/{length}$"},
            }
        )
    return {
        "type": "string",
        "description": description,
        "pattern": "^[0-9a-f.:]+/(0|[1-9][0-9]?|1[01][0-9]|12[0-8])$",
        "allOf": prefixes,
    }
