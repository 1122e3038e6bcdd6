"""Budgets in the real data path: the agent charges each request to a budgeted host before it is
forwarded, with its body read first (over HTTP/1.1 and HTTP/2, with a length or without), and
refuses the one that would overspend with 403 BUDGET_EXCEEDED; nothing of it reaches the host."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def policy():
    return """\
allowed_domains: [pypi.org]
unrestricted_domains: [api.anthropic.com]
budgets:
  - {host: pypi.org, requests: 3}
  - {host: api.anthropic.com, upload_bytes: 1000}
"""


def received(lab, path: str) -> int:
    return len([r for r in lab.receipts() if r["path"] == path])


def upload(interceptor, size: int, *args: str):
    body = interceptor.dir / f"body-{size}"
    body.write_bytes(b"x" * size)
    body.chmod(0o644)
    return interceptor.curl(
        "POST", "https://api.anthropic.com/upload", *args, "--data-binary", f"@{body}"
    )


def test_the_request_too_many_is_refused(interceptor, lab):
    statuses = [interceptor.curl("GET", "https://pypi.org/budget").status for _ in range(4)]
    assert statuses == [200, 200, 200, 403]
    r = interceptor.curl("GET", "https://pypi.org/budget", "--http2")
    error = r.json()["error"]
    assert (r.status, error["code"], error["rule"]) == (403, "BUDGET_EXCEEDED", "budget_exceeded")
    assert "3 of 3 requests are spent" in error["message"]
    assert received(lab, "/budget") == 3
    [*_, logged] = interceptor.decisions(lambda d: d["path"] == "/budget", 5)
    assert (logged["judge"], logged["allow"], logged["rule"]) == ("agent", False, "budget_exceeded")
    spent = interceptor.metric("intercept_budget_spent", 'host="pypi.org",kind="requests"')
    assert spent == 3
    # Another spelling of the host is the same budget.
    for spelling in ("PyPI.org", "pypi.org:443"):
        r = interceptor.curl("GET", "https://pypi.org/budget", "-H", f"Host: {spelling}")
        assert r.status == 403 and r.json()["error"]["code"] == "BUDGET_EXCEEDED", spelling
    assert received(lab, "/budget") == 3


def test_an_upload_that_would_overspend_is_refused_whatever_its_framing(interceptor, lab):
    chunked = ("-H", "Transfer-Encoding: chunked")
    assert upload(interceptor, 400, "--http1.1").status == 200  # 400
    assert upload(interceptor, 300, "--http2", *chunked).status == 200  # 700: no length sent
    refused = upload(interceptor, 400, "--http1.1", *chunked)  # 1100 > 1000
    assert refused.status == 403, refused.body
    error = refused.json()["error"]
    assert error["code"] == "BUDGET_EXCEEDED"
    assert "700 of 1000 bytes are spent, and it sends 400" in error["message"]
    assert upload(interceptor, 300, "--http2").status == 200  # 1000
    assert received(lab, "/upload") == 3
    # What cannot be counted is refused: a protocol upgrade (a WebSocket) sends no body at all.
    ws = interceptor.curl(
        "GET",
        "https://api.anthropic.com/ws",
        "--http1.1",
        "-H", "Upgrade: websocket",
        "-H", "Connection: Upgrade",
        "-H", "Sec-WebSocket-Version: 13",
        "-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    )  # fmt: skip
    assert ws.status == 403 and ws.json()["error"]["code"] == "BUDGET_EXCEEDED"
    assert "cannot be counted" in ws.json()["error"]["message"]
    assert received(lab, "/ws") == 0
    sent = interceptor.metric(
        "intercept_budget_spent", 'host="api.anthropic.com",kind="upload_bytes"'
    )
    assert sent == 1000
