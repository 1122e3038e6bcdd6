"""`make demo`, the README's first command, tells the story it promises."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

pytestmark = pytest.mark.netns


def test_demo():
    result = subprocess.run(
        [ROOT / "scripts" / "demo"], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    out = result.stdout
    assert result.returncode == 0, result.stderr
    # allowed reads, an allowed LLM API POST
    assert "GET https://api.github.com/repos/octo/hello -> HTTP 200" in out
    assert "POST https://api.anthropic.com/v1/messages -> HTTP 200" in out
    # a denied write, a denied unknown host
    assert "POST https://api.github.com/repos/octo/hello/issues -> HTTP 403" in out
    assert "POST https://pypi.org/legacy/ -> HTTP 403" in out  # an upload, explained
    assert "GET https://exfil.attacker.example/collect?token=secret -> HTTP 403" in out
    # raw-socket exfiltration blocked
    assert "raw TCP to exfil.attacker.example:4444 -> refused" in out
    # git clone works, git push refused
    assert "cloned: README.md" in out
    assert "returned error: 403" in out
    # the table, and the proof from the lab's side
    assert "DENY      GET     exfil.attacker.example" in out
    assert "exfil.attacker.example   nothing" in out
    assert "token=secret" not in out.split("== every decision")[1]  # queries never logged
