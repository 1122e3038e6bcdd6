"""Reading the decision log Envoy writes: a line reaches the file when its request is over and
Envoy flushes (every second), so readers wait for the lines they expect."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from intercept_proxy.decision import parse_log

Record = dict[str, Any]


def read_decisions(path: Path) -> list[Record]:
    """Every line, each a decision event of the one schema (an error otherwise)."""
    return [event.as_dict() for event in parse_log(path.read_text(), strict=True)]


def decisions(
    path: Path,
    match: Callable[[Record], bool] | None = None,
    count: int = 1,
    timeout: float = 5.0,
) -> list[Record]:
    """Every record, or (with `match`) the matching ones once there are at least `count`."""
    if match is None:
        return read_decisions(path)
    deadline = time.monotonic() + timeout
    while True:
        records = read_decisions(path)
        found = [r for r in records if match(r)]
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"{count} matching decisions expected: {records[-5:]}"
        time.sleep(0.1)
