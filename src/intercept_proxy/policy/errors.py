"""The policy's one error type."""

from __future__ import annotations


class PolicyError(ValueError):
    """An invalid policy. `str()` reads `FILE: KEY: what is wrong`."""

    def __init__(self, source: str, key: str | None, message: str) -> None:
        self.source = source
        self.key = key
        self.message = message
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {message}")
