"""The policy's one error type, and the check every mapping of the policy gets."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class PolicyError(ValueError):
    """An invalid policy. `str()` reads `FILE: KEY: what is wrong`."""

    def __init__(self, source: str, key: str | None, message: str) -> None:
        self.source = source
        self.key = key
        self.message = message
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {message}")


def check_keys(entry: dict[str, Any], keys: Iterable[str], source: str, where: str) -> None:
    """PolicyError naming the first key of `entry` that is not one of `keys`."""
    keys = tuple(keys)
    unknown = sorted(set(entry) - set(keys))
    if unknown:
        raise PolicyError(
            source, f"{where}.{unknown[0]}", f"unknown key; valid keys are {', '.join(keys)}"
        )
