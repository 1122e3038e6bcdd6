"""Rate limits in the real data path: Envoy counts the requests to a host, refuses the one too
many with 429, Retry-After and RATE_LIMIT_EXCEEDED, forwards nothing of it, and logs and counts
it as the rate limit's decision; other hosts are not counted."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.netns

LIMIT = 3


@pytest.fixture(scope="module")
def policy():
    return f"""\
allowed_domains: [pypi.org]
unrestricted_domains: [api.anthropic.com]
github_read_access_enabled: true
rate_limits: [{{host: api.anthropic.com, requests_per_minute: {LIMIT}}}]
"""


def received(lab, path: str) -> int:
    return len([r for r in lab.receipts() if r["path"] == path])


# An HTTP/2 upload refused before its end may reach curl as a reset stream rather than the 429
# (docs/policy.md): HTTP/2 reads.
@pytest.mark.parametrize(("version", "method"), [("--http1.1", "POST"), ("--http2", "GET")])
def test_the_request_too_many_is_refused_and_explained(interceptor, lab, version, method):
    # The bucket was full; these and the HTTP/1.1 case's share it: refill one every 20 s.
    path = f"/limited-{version.strip('-')}"

    def count(result: str, rule: str) -> float:
        labels = f'judge="envoy",result="{result}",rule="{rule}"'
        return interceptor.metric("intercept_decisions_total", labels)

    before = count("deny", "rate_limit")
    statuses = []
    for _ in range(LIMIT + 1):
        body = ["--data", "x"] if method == "POST" else []
        r = interceptor.curl(method, f"https://api.anthropic.com{path}", version, *body)
        statuses.append(r.status)
        if r.status == 429:
            break
    assert statuses[-1] == 429 and set(statuses[:-1]) <= {200}, r.stderr
    assert r.headers["retry-after"] == "20"
    error = r.json()["error"]
    assert (error["code"], error["rule"]) == ("RATE_LIMIT_EXCEEDED", "rate_limit")
    assert error["message"].startswith(f"{method} api.anthropic.com:443: the policy's rate limit")
    assert received(lab, path) == len(statuses) - 1
    logged = interceptor.decisions(lambda d: d["path"] == path, len(statuses))
    assert [(d["allow"], d["rule"]) for d in logged][-1] == (False, "rate_limit")
    assert all(d["allow"] for d in logged[:-1])
    assert (logged[-1]["judge"], logged[-1]["status"], logged[-1]["flags"]) == ("envoy", 429, "RL")
    assert count("deny", "rate_limit") == before + 1
    # Another spelling of the host is the same host: no token for it either.
    for spelling in ("API.Anthropic.com", "api.anthropic.com:443"):
        url = f"https://api.anthropic.com{path}-spelled"
        r = interceptor.curl("GET", url, version, "-H", f"Host: {spelling}")
        assert r.status == 429, (spelling, r.body)


def test_other_hosts_are_not_counted(interceptor):
    statuses = {interceptor.curl("GET", f"https://pypi.org/free/{i}").status for i in range(8)}
    assert statuses == {200}
