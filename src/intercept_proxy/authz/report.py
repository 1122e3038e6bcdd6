"""Decision logs as a table a person reads at a glance."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

COLUMNS = (("#", 3), ("decision", 8), ("method", 6), ("host", 24), ("path", 28), ("rule", 24))


def read_decisions(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line another writer broke; the table shows the rest
    return records


def _cell(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def decision_table(records: Iterable[dict[str, Any]], reason_width: int = 70) -> str:
    header = "  ".join(name.ljust(width) for name, width in COLUMNS) + "  reason"
    lines = [header, "-" * (len(header) + reason_width - len("reason"))]
    for i, r in enumerate(records, 1):
        cells = [
            str(i),
            "ALLOW" if r.get("allow") else "DENY",
            str(r.get("method", "")),
            str(r.get("host", "")),
            str(r.get("path", "")),
            str(r.get("rule", "")),
        ]
        row = "  ".join(_cell(c, w).ljust(w) for c, (_, w) in zip(cells, COLUMNS, strict=True))
        lines.append(f"{row}  {_cell(str(r.get('reason', '')), reason_width)}")
    return "\n".join(lines)
