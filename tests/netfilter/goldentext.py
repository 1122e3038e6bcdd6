"""Text golden files (iptables-restore input reads best as itself, not as a JSON string)."""

from __future__ import annotations

import os

from tests.golden import GOLDEN_DIR


def assert_golden_text(name: str, text: str) -> None:
    path = GOLDEN_DIR / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} is missing; run with UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), (
        f"{name} differs from its golden file (UPDATE_GOLDEN=1 rewrites)"
    )
