"""The policy's limits on a host: `rate_limits` (requests per minute, counted by Envoy) and
`budgets` (requests and uploaded bytes over the agent's lifetime, a run or a pod, counted by the
agent)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from intercept_proxy.policy.errors import PolicyError, check_keys

KEYS = ("host", "requests_per_minute")
BUDGET_KEYS = ("host", "requests", "upload_bytes")
# Envoy refills its token buckets at most every 50 ms: 20 tokens a second at one per fill.
MAX_PER_MINUTE = 1_000_000


@dataclass(frozen=True)
class RateLimit:
    # An exact host name, or `*.suffix`: one budget shared by every name below it.
    host: str
    requests_per_minute: int


@dataclass(frozen=True)
class Budget:
    # An exact host name, or `*.suffix`: one budget for every name below it.
    host: str
    requests: int | None  # None: not counted
    upload_bytes: int | None


def host_matches(pattern: str, name: str) -> bool:
    """Whether host `name` is `pattern`'s (an exact name, or `*.suffix`: any name below it)."""
    return pattern == name or (pattern.startswith("*.") and name.endswith(pattern[1:]))


def _count(entry: dict[str, Any], key: str, source: str, where: str) -> int | None:
    value = entry.get(key)
    if value is not None and (type(value) is not int or value < 1):
        raise PolicyError(
            source, f"{where}.{key}", f"expected a whole number above 0, got {value!r}"
        )
    return value


def parse_budget(entry: dict[str, Any], source: str, where: str, host: str) -> Budget:
    """One entry of `budgets`; `host` is its `host`, already a checked domain entry."""
    check_keys(entry, BUDGET_KEYS, source, where)
    requests = _count(entry, "requests", source, where)
    upload = _count(entry, "upload_bytes", source, where)
    if requests is None and upload is None:
        raise PolicyError(source, where, "name a budget: requests, upload_bytes or both")
    return Budget(host, requests, upload)


def parse_rate_limit(entry: dict[str, Any], source: str, where: str, host: str) -> RateLimit:
    """One entry of `rate_limits`; `host` is its `host`, already a checked domain entry."""
    check_keys(entry, KEYS, source, where)
    rate = entry.get("requests_per_minute")
    if type(rate) is not int or not 1 <= rate <= MAX_PER_MINUTE:
        raise PolicyError(
            source,
            f"{where}.requests_per_minute",
            f"expected a whole number from 1 to {MAX_PER_MINUTE}, got {rate!r}",
        )
    return RateLimit(host, rate)
