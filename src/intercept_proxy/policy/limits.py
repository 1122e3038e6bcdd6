"""The policy's `rate_limits`: requests per minute to a host, counted by Envoy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from intercept_proxy.policy.errors import PolicyError

KEYS = ("host", "requests_per_minute")
# Envoy refills its token buckets at most every 50 ms: 20 tokens a second at one per fill.
MAX_PER_MINUTE = 1_000_000


@dataclass(frozen=True)
class RateLimit:
    # An exact host name, or `*.suffix`: one budget shared by every name below it.
    host: str
    requests_per_minute: int


def parse_rate_limit(entry: dict[str, Any], source: str, where: str, host: str) -> RateLimit:
    """One entry of `rate_limits`; `host` is its `host`, already a checked domain entry."""
    unknown = sorted(set(entry) - set(KEYS))
    if unknown:
        raise PolicyError(
            source, f"{where}.{unknown[0]}", f"unknown key; valid keys are {', '.join(KEYS)}"
        )
    rate = entry.get("requests_per_minute")
    if type(rate) is not int or not 1 <= rate <= MAX_PER_MINUTE:
        raise PolicyError(
            source,
            f"{where}.requests_per_minute",
            f"expected a whole number from 1 to {MAX_PER_MINUTE}, got {rate!r}",
        )
    return RateLimit(host, rate)
