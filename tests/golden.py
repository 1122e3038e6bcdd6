"""Golden files: the expected output of a configuration generator, reviewed like code.

Run with UPDATE_GOLDEN=1 to rewrite them after an intended change, then review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

GOLDEN_DIR = Path(__file__).parent / "golden"


def assert_golden_text(name: str, text: str) -> None:
    """Text as itself (iptables-restore input reads best as it is, not as a JSON string)."""
    path = GOLDEN_DIR / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} is missing; run with UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), (
        f"{name} differs from its golden file (UPDATE_GOLDEN=1 rewrites)"
    )


def assert_golden(name: str, value: Any) -> None:
    """A JSON-able value, stored as sorted, indented JSON."""
    assert_golden_text(name, json.dumps(value, indent=2, sort_keys=True) + "\n")
