"""Credentials (red team, receipts and echoes as ground truth): the operator's secret reaches the
named host over TLS, from Envoy, and nothing the workload can read holds it; the workload's
placeholder goes everywhere else; a request that carries the secret itself is refused."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pytest

from tests.sandbox.harness import TESTS, Sandbox

pytestmark = pytest.mark.netns

PLACEHOLDER = "intercept-proxy-placeholder"
POLICY = """\
allowed_domains: [pypi.org, "*.pythonhosted.org"]
unrestricted_domains: [api.anthropic.com, example.com]
credentials:
  - host: api.anthropic.com
    header: x-api-key
    env: ANTHROPIC_API_KEY
  - host: "*.pythonhosted.org"
    env: INDEX_TOKEN
    methods: [GET]
    paths: [/simple/]
"""
ANTHROPIC = "sk-ant-" + secrets.token_hex(16)
INDEX = "index-" + secrets.token_hex(16)
SECRETS = (ANTHROPIC, INDEX)


@pytest.fixture(scope="module")
def box(sandbox_lab):
    # The operator's environment: the two secrets, and a copy of one under another name.
    environ = {**os.environ, "ANTHROPIC_API_KEY": ANTHROPIC, "INDEX_TOKEN": INDEX}
    environ["COPIED_KEY"] = ANTHROPIC
    sandbox = Sandbox(sandbox_lab, POLICY, environ).start()
    try:
        yield sandbox
    finally:
        sandbox.close()


def run(box, script: str) -> str:
    result = box.sh(script)
    assert result.returncode == 0, result.stderr.decode() + result.stdout.decode()
    return result.stdout.decode()


def echo(box, *curl: str) -> dict:
    return json.loads(run(box, "curl -sS --fail-with-body " + " ".join(curl)))


def halves(secret: str) -> str:
    """The secret as two shell words: no command line holds it whole."""
    return f"{secret[:8]} {secret[8:]}"


def test_the_workload_holds_placeholders(box):
    env = dict(line.split("=", 1) for line in run(box, "env").splitlines() if "=" in line)
    assert env["ANTHROPIC_API_KEY"] == env["INDEX_TOKEN"] == PLACEHOLDER
    assert "COPIED_KEY" not in env


@pytest.mark.parametrize("secret", SECRETS, ids=["env", "bearer"])
def test_nothing_the_workload_can_read_holds_the_secret(box, secret):
    probe = Path(TESTS, "sandbox", "secret_probe.py")
    report = json.loads(run(box, f"python3 {probe} {halves(secret)}"))
    assert report["found"] == [] and report["mem"] == []
    # The sidecars' environments were there to read, and refused.
    assert report["read"] > 100 and report["unreadable"] > 0


@pytest.mark.parametrize("version", ["--http1.1", "--http2"])
def test_the_named_host_gets_the_secret_from_envoy(box, version):
    url = f"https://api.anthropic.com/v1{version.replace('--', '/')}"
    sent = echo(box, version, '-H "x-api-key: $ANTHROPIC_API_KEY"', url)
    assert sent["headers"]["x-api-key"] == ANTHROPIC
    # With the placeholder, Envoy decides: no agent call.
    [decision] = box.decisions(lambda d: d["path"] == url.split(".com")[1])
    assert decision["judge"] == "envoy"
    # Without the header, it is added; with another value, the agent looks at it first.
    assert echo(box, version, url)["headers"]["x-api-key"] == ANTHROPIC
    other = f"{url}-other"
    assert echo(box, version, '-H "x-api-key: mine"', other)["headers"]["x-api-key"] == ANTHROPIC
    [decision] = box.decisions(lambda d: d["path"] == other.split(".com")[1])
    assert (decision["judge"], decision["allow"]) == ("agent", True)


def test_a_wildcard_host_gets_a_bearer_token_for_its_methods_and_paths_only(box):
    sent = echo(box, "https://files.pythonhosted.org/simple/")
    assert sent["headers"]["authorization"] == f"Bearer {INDEX}"
    for options in (
        "https://files.pythonhosted.org/packages/",
        "-I https://a.pythonhosted.org/simple/",
    ):
        result = box.sh(f"curl -sS -D - {options}")
        assert result.returncode == 0, result.stderr
        assert INDEX not in result.stdout.decode(), options
    sent = echo(box, "https://files.pythonhosted.org/packages/x.whl")
    assert "authorization" not in sent["headers"]


def test_other_hosts_and_plain_http_get_the_placeholder(box):
    header = '-H "x-api-key: $ANTHROPIC_API_KEY"'
    for url in ("https://example.com/elsewhere", "http://api.anthropic.com/plain"):
        assert echo(box, header, url)["headers"]["x-api-key"] == PLACEHOLDER, url
    # Another spelling of the host (the agent allows it): the credential's host is one name.
    for spelling in ("API.anthropic.com", "api.anthropic.com:443"):
        sent = echo(box, header, f'-H "Host: {spelling}"', "https://api.anthropic.com/spelled")
        assert sent["headers"]["x-api-key"] == PLACEHOLDER, spelling
    assert "authorization" not in echo(box, "https://pypi.org/simple/")["headers"]


def test_a_redirect_to_another_host_carries_the_placeholder(box):
    sent = echo(
        box,
        "-L",
        '-H "x-api-key: $ANTHROPIC_API_KEY"',
        "https://api.anthropic.com/redirect/example.com/landed",
    )
    assert (sent["server"], sent["path"]) == ("example.com", "/landed")
    assert sent["headers"]["x-api-key"] == PLACEHOLDER


@pytest.mark.parametrize(
    "header, url",
    [
        ("x-api-key: ", "https://api.anthropic.com/leaked/1"),
        ("x-api-key: ", "https://example.com/leaked/2"),
        ("authorization: Bearer ", "https://files.pythonhosted.org/leaked/3"),
        ("x-api-key: ", "http://example.com/leaked/4"),
    ],
)
def test_a_request_that_carries_a_secret_is_refused(box, header, url):
    secret = INDEX if header.startswith("authorization") else ANTHROPIC
    script = f'set -- {halves(secret)}; curl -sS -w "\\n%{{http_code}}" -H "{header}$1$2" {url}'
    body, status = run(box, script).rsplit("\n", 1)
    assert status == "403"
    assert json.loads(body)["error"]["rule"] == "credential_leaked"
    path = "/" + url.split("/", 3)[3]
    assert [r for r in box.lab.receipts() if r["path"] == path] == []
    [decision] = box.decisions(lambda d: d["path"] == path)
    assert (decision["judge"], decision["allow"]) == ("agent", False)


def test_no_log_holds_a_secret(box):
    echo(box, "https://api.anthropic.com/logged")
    box.decisions(lambda d: d["path"] == "/logged")
    logs = box.decision_log.read_text() + box.output()
    assert not [s for s in SECRETS if s in logs]
