"""Decision logs as a table a person reads at a glance."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from intercept_proxy.decision import DecisionEvent, parse_log

COLUMNS = (("#", 3), ("decision", 8), ("method", 6), ("host", 24), ("path", 28), ("rule", 24))


def read_decisions(path: Path) -> list[DecisionEvent]:
    """Every event of the log; a line another writer broke is left out, the table shows the rest."""
    return list(parse_log(path.read_text()))


def _cell(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def decision_table(events: Iterable[DecisionEvent], reason_width: int = 70) -> str:
    header = "  ".join(name.ljust(width) for name, width in COLUMNS) + "  reason"
    lines = [header, "-" * (len(header) + reason_width - len("reason"))]
    for i, e in enumerate(events, 1):
        cells = [
            str(i),
            "ALLOW" if e.allow else "DENY",
            e.method or "",
            e.host or "",
            e.path or "",
            e.rule or "",
        ]
        row = "  ".join(_cell(c, w).ljust(w) for c, (_, w) in zip(cells, COLUMNS, strict=True))
        lines.append(f"{row}  {_cell(e.reason or '', reason_width)}")
    return "\n".join(lines)
