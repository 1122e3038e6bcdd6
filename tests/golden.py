"""Golden files: the expected output of a configuration generator, reviewed like code.

Run with UPDATE_GOLDEN=1 to rewrite them after an intended change, then review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

GOLDEN_DIR = Path(__file__).parent / "golden"


def assert_golden(name: str, value: Any) -> None:
    path = GOLDEN_DIR / name
    text = json.dumps(value, indent=2, sort_keys=True) + "\n"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} is missing; run with UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), (
        f"{name} differs from its golden file (UPDATE_GOLDEN=1 rewrites)"
    )
