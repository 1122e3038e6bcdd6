"""The policy's `approvals`: hosts a person may allow while the sandbox runs.

A request to such a host that the policy would deny for want of a grant (no rule matches it, or
its host allows only reads, or another port) is decided `approval_required` by the Rego policy;
the agent holds it until a person answers or `timeout_seconds` pass (authz/approvals.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from intercept_proxy.policy.domains import DomainEntry, parse_domain
from intercept_proxy.policy.errors import PolicyError, check_keys

KEYS = ("hosts", "timeout_seconds")
# In `hosts`: every host name (IP literals and malformed names stay denied).
ANY_HOST = "*"
DEFAULT_TIMEOUT_SECONDS = 60
# A held request sends nothing: Envoy closes a stream idle for 300 s (resources.py).
MAX_TIMEOUT_SECONDS = 240


@dataclass(frozen=True)
class Grant:
    """What allowing a request for the run adds to the policy: a domain entry under a key (the
    Rego policy names it with its `approval_required` decision)."""

    key: str  # allowed_domains (a read) or unrestricted_domains
    entry: str  # host, or host:port for another port than 80 and 443

    def __str__(self) -> str:
        return f"{self.key}: [{self.entry}]"


@dataclass(frozen=True)
class Approvals:
    hosts: tuple[DomainEntry, ...]
    any_host: bool
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS

    def to_data(self) -> dict[str, Any]:
        return {"hosts": [e.to_data() for e in self.hosts], "any_host": self.any_host}


def parse_approvals(value: Any, source: str, where: str = "approvals") -> Approvals | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise PolicyError(source, where, f"expected a mapping, got {value!r}")
    check_keys(value, KEYS, source, where)
    hosts = value.get("hosts")
    if not isinstance(hosts, list) or not hosts:
        raise PolicyError(
            source, f"{where}.hosts", f"expected a list of hosts (or {ANY_HOST!r}), got {hosts!r}"
        )
    entries, any_host = [], False
    for i, item in enumerate(hosts):
        if not isinstance(item, str):
            raise PolicyError(source, f"{where}.hosts[{i}]", f"expected a string, got {item!r}")
        if item == ANY_HOST:
            any_host = True
            continue
        try:
            entries.append(parse_domain(item))
        except ValueError as e:
            raise PolicyError(source, f"{where}.hosts[{i}]", str(e)) from None
    timeout = value.get("timeout_seconds", DEFAULT_TIMEOUT_SECONDS)
    if type(timeout) is not int or not 1 <= timeout <= MAX_TIMEOUT_SECONDS:
        raise PolicyError(
            source,
            f"{where}.timeout_seconds",
            f"expected a whole number from 1 to {MAX_TIMEOUT_SECONDS}, got {timeout!r}",
        )
    return Approvals(tuple(entries), any_host, timeout)
