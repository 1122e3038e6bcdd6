"""The decision log: one JSON line per decision, never a header value or a query string."""

from __future__ import annotations

import datetime as dt
import json
import sys
import threading
from pathlib import Path
from typing import IO, Any

from intercept_proxy.policy.engine import Decision


def decision_record(
    *,
    decision_id: str,
    decision: Decision,
    method: str,
    scheme: str,
    host: str,
    path: str,
    sni: str | None,
    eval_ms: float,
    policy_revision: str,
) -> dict[str, Any]:
    return {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "decision_id": decision_id,
        "allow": decision.allow,
        "rule": decision.rule,
        "reason": decision.reason,
        "method": method,
        "scheme": scheme,
        "host": host,
        "path": path.split("?", 1)[0],
        "sni": sni,
        "eval_ms": round(eval_ms, 3),
        "policy_revision": policy_revision,
    }


class DecisionLog:
    """Appends records to a file (or stdout for "-"), a whole line per write."""

    def __init__(self, target: str | Path = "-") -> None:
        self._lock = threading.Lock()
        if str(target) == "-":
            self._stream: IO[str] = sys.stdout
            self._owned = False
        else:
            self._stream = Path(target).open("a", buffering=1)  # noqa: SIM115 - closed in close()
            self._owned = True

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            self._stream.write(line)
            self._stream.flush()

    def close(self) -> None:
        if self._owned:
            self._stream.close()
