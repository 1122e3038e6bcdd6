"""The receipt log: one JSON object per line for everything a lab host received.

Tests use it to prove what did and did not get through, so it holds receipts and nothing else.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

RECEIPT_KEYS = (
    "time",
    "host",
    "address",
    "protocol",
    "port",
    "sni",
    "method",
    "path",
    "query_name",
)


class ReceiptLog:
    """Appends receipts; each line goes out in one write(2) on an O_APPEND descriptor, so it is
    on disk (and whole) by the time the sender sees an answer."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def record(
        self,
        protocol: str,
        address: str,
        port: int,
        *,
        host: str | None = None,
        sni: str | None = None,
        method: str | None = None,
        path: str | None = None,
        query_name: str | None = None,
    ) -> None:
        receipt = {
            "time": time.time(),
            "host": host,
            "address": address,
            "protocol": protocol,
            "port": port,
            "sni": sni,
            "method": method,
            "path": path,
            "query_name": query_name,
        }
        os.write(self._fd, (json.dumps(receipt) + "\n").encode())


def read_receipts(path: Path) -> list[dict[str, Any]]:
    """The receipts in `path` so far (a line still being written is left for the next read)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    complete = data[: data.rfind(b"\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line]
