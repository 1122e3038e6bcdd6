"""Host-name rules shared by the policy loader and the certificate minter.

The Rego policy applies the same rules to request input; these functions are for names that
come from configuration or from a TLS ClientHello.
"""

import re

_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_NUMERIC = re.compile(r"0x[0-9a-f]*|[0-9]+")
MAX_NAME_LENGTH = 253


class HostnameError(ValueError):
    """A host name that is not a plain ASCII DNS name."""


def normalize_hostname(name: str) -> str:
    """Lower-case `name`, drop one trailing dot, and check it is a DNS name (not an IP literal).

    Raises HostnameError naming what is wrong.
    """
    if not name:
        raise HostnameError("empty host name")
    if not name.isascii():
        raise HostnameError(f"{name!r} is not ASCII (write the punycode form, xn--...)")
    if ":" in name or name.startswith("["):
        raise HostnameError(f"{name!r} is an IP address literal, not a host name")
    host = name.lower()
    if host.endswith("."):
        host = host[:-1]
    if len(host) > MAX_NAME_LENGTH:
        raise HostnameError(f"{name!r} is longer than {MAX_NAME_LENGTH} characters")
    labels = host.split(".")
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise HostnameError(f"{name!r} has an invalid label {label!r}")
    # A name whose last label is numeric is an IPv4 literal in some spelling (1.2.3.4, 0x7f.1,
    # 2130706433): resolvers would treat it as an address, so it is never a host name.
    if _NUMERIC.fullmatch(labels[-1]):
        raise HostnameError(f"{name!r} is an IP address literal, not a host name")
    return host
