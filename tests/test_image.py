"""The container image (built elsewhere: no Docker engine here): pinned and non-root."""

from __future__ import annotations

import re
from pathlib import Path

DOCKERFILE = Path(__file__).parent.parent / "images" / "Dockerfile"


def test_base_image_is_pinned_and_the_user_is_the_agents():
    text = DOCKERFILE.read_text()
    (base,) = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-bookworm", base), base
    assert re.findall(r"^USER (\S+)", text, re.MULTILINE) == ["102:102"]
    assert "iptables" in text
    assert ":latest" not in text
