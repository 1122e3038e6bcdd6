"""Good traffic through the transparent sandbox, with real clients that know nothing of it:
no proxy variables, no addresses; names resolve, connections are captured, TLS is trusted."""

from __future__ import annotations

import json
import time

import pytest

pytestmark = pytest.mark.netns


def run(sandbox, script: str, timeout: float = 60.0) -> str:
    result = sandbox.sh(script, timeout)
    assert result.returncode == 0, result.stderr.decode() + result.stdout.decode()
    return result.stdout.decode()


@pytest.mark.parametrize("flags", ["--http1.1", "--http2", "-4", "-6"])
def test_curl(sandbox, flags):
    echo = json.loads(run(sandbox, f"curl -sS --fail {flags} https://pypi.org/simple/{flags}"))
    assert (echo["server"], echo["sni"], echo["path"]) == (
        "pypi.org",
        "pypi.org",
        f"/simple/{flags}",
    )


def test_plain_http(sandbox):
    echo = json.loads(run(sandbox, "curl -sS --fail http://pypi.org/plain"))
    assert (echo["server"], echo["sni"]) == ("pypi.org", None)


def test_python_urllib(sandbox):
    script = (
        "import json, urllib.request\n"
        "print(json.load(urllib.request.urlopen('https://files.pythonhosted.org/p'))['server'])\n"
    )
    assert run(sandbox, f'python3 -c "{script}"').strip() == "files.pythonhosted.org"


def test_the_workload_trusts_the_sandbox_ca_through_the_usual_variables(sandbox):
    out = run(
        sandbox,
        "env | grep -E '^(SSL_CERT_FILE|REQUESTS_CA_BUNDLE|CURL_CA_BUNDLE|NODE_EXTRA_CA_CERTS"
        "|GIT_SSL_CAINFO)=' | sort",
    )
    assert len(out.splitlines()) == 5
    assert all(
        line.endswith("=/var/run/intercept/trust/ca-bundle.pem") for line in out.splitlines()
    )
    bundle = run(sandbox, "cat /var/run/intercept/trust/ca-bundle.pem")
    assert bundle.count("BEGIN CERTIFICATE") > 10  # the sandbox CA, then the system roots
    assert "PRIVATE KEY" not in bundle
    assert "HTTP_PROXY" not in run(sandbox, "env").upper().replace("NO_PROXY", "")


def test_git_clone_over_https(sandbox):
    out = run(
        sandbox,
        "cd $HOME && rm -rf hello && git clone -q https://github.com/octo/hello.git"
        " && cat hello/README*",
    )
    assert out.strip()
    rules = {d["rule"] for d in sandbox.decisions(lambda d: "/octo/hello" in d["path"], 2)}
    assert rules == {"github_read"}


def test_a_twenty_second_response(sandbox):
    started = time.monotonic()
    echo = json.loads(run(sandbox, "curl -sS --fail https://pypi.org/delay/20", timeout=60))
    assert echo["path"] == "/delay/20"
    assert time.monotonic() - started >= 20


def test_server_sent_events_stream(sandbox):
    script = (
        "curl -sSN --fail https://pypi.org/stream/3"
        " | while read -r line; do case $line in data:*) date +%s.%N;; esac; done"
    )
    stamps = [float(t) for t in run(sandbox, script).split()]
    assert len(stamps) == 3
    assert stamps[-1] - stamps[0] > 1.5  # delivered as sent, not buffered to the end


def test_every_request_is_in_the_decision_log(sandbox):
    run(
        sandbox,
        "curl -s https://pypi.org/logged?secret=1 >/dev/null;"
        " curl -s https://unknown.example/x >/dev/null",
    )
    logged = sandbox.decisions(lambda d: d["path"] in ("/logged", "/x"), 2)
    records = {d["path"]: d for d in logged}
    assert records["/logged"]["allow"] is True
    assert records["/x"]["allow"] is False and records["/x"]["rule"] == "default_deny"
    assert "secret" not in sandbox.decision_log.read_text()


def test_a_sidecar_that_dies_is_started_again(sandbox):
    """restartPolicy Always: the agent killed, the runtime starts it again and traffic flows."""
    from intercept_proxy.injector.pod import AGENT

    (agent,) = [r for r in sandbox.pod._sidecars if r.name == AGENT]
    dead = agent.process
    dead.kill()
    dead.wait(10)
    deadline = time.monotonic() + 30
    while agent.process is dead or agent.due is not None:
        assert time.monotonic() < deadline, sandbox.output(AGENT)
        time.sleep(0.1)
    assert agent.restarts == 1
    while sandbox.sh("curl -sS --fail https://pypi.org/after-restart", 10).returncode != 0:
        assert time.monotonic() < deadline, sandbox.output(AGENT)
        time.sleep(0.5)
