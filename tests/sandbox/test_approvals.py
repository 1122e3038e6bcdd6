"""Approvals on the real data path: requests the policy's `approvals` hold wait in the agent for
a person's answer through its control socket (the lab's receipts say what reached upstream)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from intercept_proxy.agent import control
from intercept_proxy.authz.approvals import MAX_QUESTIONS
from intercept_proxy.injector.pod import AGENT
from tests.sandbox.harness import Sandbox, sandbox_in_own_lab

pytestmark = pytest.mark.netns

HOSTS = ("once", "run", "deny", "late", "shared", "h2", "cli", "write", "always", "body")
LAB = {"hosts": [{"name": "pypi.org"}, *({"name": f"{h}.ask.example"} for h in HOSTS)]}
TIMEOUT_S = 8
POLICY = f"""\
allowed_domains: [pypi.org, write.ask.example, body.ask.example]
approvals:
  hosts: ["*.ask.example", "*.flood.example"]
  timeout_seconds: {TIMEOUT_S}
"""


@pytest.fixture(scope="module")
def box(netns_prefix):
    with sandbox_in_own_lab(LAB, f"{netns_prefix}a", POLICY) as sandbox:
        yield sandbox


class Background:
    """A workload command running while the test answers."""

    def __init__(self, box: Sandbox, script: str) -> None:
        self.result: Any = None
        self._thread = threading.Thread(target=lambda: setattr(self, "result", box.sh(script)))
        self._thread.start()

    def output(self, timeout: float = 30.0) -> str:
        self._thread.join(timeout)
        assert self.result is not None, "the command did not end"
        return str(self.result.stdout.decode())


def curl(url: str, *options: str) -> str:
    """Status, then body: the answer whatever it is."""
    return f"curl -sS -o - -w '\\n%{{http_code}}' {' '.join(options)} {url}"


def status_and_body(output: str) -> tuple[int, str]:
    body, _, status = output.rpartition("\n")
    return int(status), body


def questions(box: Sandbox) -> list[dict[str, Any]]:
    return list(control.request(box.pod.control_socket, {"op": "list"})["questions"])


def asked(box: Sandbox, match: Callable[[dict[str, Any]], bool], waiting: int = 1) -> dict:
    """The question `match` picks, once `waiting` requests wait for it."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        found = [q for q in questions(box) if match(q) and q["waiting"] >= waiting]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no such question: {questions(box)}")


def answer(box: Sandbox, question: dict, given: str) -> dict:
    message = {"op": "answer", "id": question["id"], "answer": given}
    return dict(control.request(box.pod.control_socket, message)["question"])


def about(host: str) -> Callable[[dict[str, Any]], bool]:
    return lambda q: q["request"].split()[1].startswith(f"{host}:")


def test_allowed_once_it_reaches_upstream_and_the_next_one_asks_again(box):
    request = Background(box, curl("https://once.ask.example/first?token=x"))
    question = asked(box, about("once.ask.example"))
    assert question["request"] == "GET once.ask.example:443/first"  # never the query
    assert question["grant"] == {"key": "allowed_domains", "entry": "once.ask.example"}
    assert 0 < question["expires_in_s"] <= TIMEOUT_S
    assert box.received("once.ask.example") == []
    answer(box, question, "once")
    status, body = status_and_body(request.output())
    assert status == 200 and json.loads(body)["path"] == "/first?token=x"
    [decision] = box.decisions(lambda d: d["path"] == "/first")
    assert (decision["judge"], decision["rule"]) == ("agent", "approved")
    assert decision["reason"] == "GET once.ask.example:443: a person allowed it once"
    again = Background(box, curl("https://once.ask.example/second"))
    answer(box, asked(box, about("once.ask.example")), "deny")
    assert status_and_body(again.output())[0] == 403


def test_allowed_for_the_run_it_joins_the_policy(box):
    write = Background(box, curl("https://run.ask.example/upload", "-d x"))
    question = asked(box, about("run.ask.example"))
    assert question["grant"] == {"key": "unrestricted_domains", "entry": "run.ask.example"}
    answer(box, question, "run")
    assert status_and_body(write.output())[0] == 200
    [decision] = box.decisions(lambda d: d["path"] == "/upload")
    assert decision["reason"] == (
        "POST run.ask.example:443: a person allowed unrestricted_domains: [run.ask.example] "
        "for this run"
    )
    # Granted by the policy itself now, soon by Envoy's compiled routes: no question.
    deadline = time.monotonic() + 20
    while True:
        out = box.sh(curl("https://run.ask.example/later", "-X PUT", "-d y")).stdout.decode()
        assert status_and_body(out)[0] == 200
        [later] = box.decisions(lambda d: d["path"] == "/later", count=1)[-1:]
        assert later["rule"] == "unrestricted_domains"
        if later["judge"] == "envoy" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert later["judge"] == "envoy"


def test_denied_it_is_refused_and_so_is_the_next_one_at_once(box):
    request = Background(box, curl("https://deny.ask.example/x"))
    answer(box, asked(box, about("deny.ask.example")), "deny")
    status, body = status_and_body(request.output())
    assert status == 403
    error = json.loads(body)["error"]
    assert (error["code"], error["rule"]) == ("POLICY_BLOCKED", "approval_denied")
    started = time.monotonic()
    status, body = status_and_body(box.sh(curl("https://deny.ask.example/y")).stdout.decode())
    assert status == 403 and json.loads(body)["error"]["rule"] == "approval_denied"
    assert time.monotonic() - started < 5
    assert box.received("deny.ask.example") == []


def test_unanswered_it_is_refused_hitl_required_saying_how_to_allow_it(box):
    started = time.monotonic()
    out = box.sh(curl("https://late.ask.example/late"), timeout=TIMEOUT_S + 30)
    waited = time.monotonic() - started
    status, body = status_and_body(out.stdout.decode())
    assert status == 403 and TIMEOUT_S - 1 <= waited < TIMEOUT_S + 5
    error = json.loads(body)["error"]
    assert (error["code"], error["rule"]) == ("HITL_REQUIRED", "approval_required")
    assert error["message"].startswith("GET late.ask.example:443 is not allowed by the policy")
    assert f"no one answered within {TIMEOUT_S} s" in error["message"]
    assert "`intercept approvals allow " in error["message"]
    assert "add allowed_domains: [late.ask.example] to the policy" in error["message"]
    [decision] = box.decisions(lambda d: d["path"] == "/late")
    assert (decision["judge"], decision["rule"]) == ("agent", "approval_required")
    assert box.received("late.ask.example") == []
    assert not any(about("late.ask.example")(q) for q in questions(box))  # expired


def test_the_same_request_again_waits_for_the_same_question(box):
    urls = " ".join("https://shared.ask.example/same" for _ in range(5))
    request = Background(
        box, f"curl -sS --parallel --parallel-immediate -w '%{{http_code}} ' {urls}"
    )
    question = asked(box, about("shared.ask.example"), waiting=5)
    assert len([q for q in questions(box) if about("shared.ask.example")(q)]) == 1
    answer(box, question, "once")
    assert request.output().count("200 ") == 5
    assert len([r for r in box.received("shared.ask.example") if r["protocol"] == "https"]) == 5


def test_a_held_stream_holds_nothing_else_of_its_connection(box):
    """HTTP/2: one connection, a held stream and an allowed one; the allowed one is answered
    while the other waits (Envoy holds a pending check, not a worker)."""
    script = (
        curl("https://h2.ask.example/held", "--http2")
        + " & sleep 1; "
        + curl("https://pypi.org/simple/", "--http2")
    )
    request = Background(box, script + "; wait")
    question = asked(box, about("h2.ask.example"))
    reads = box.lab.wait_for_receipts(
        lambda r: r["host"] == "pypi.org" and r.get("path") == "/simple/", timeout=10
    )
    assert reads and [q["id"] for q in questions(box)] == [question["id"]]  # still held
    answer(box, question, "once")
    assert request.output().count("200") == 2


def test_a_read_host_asks_for_a_write(box):
    request = Background(box, curl("https://write.ask.example/w", "-X DELETE"))
    question = asked(box, about("write.ask.example"))
    assert question["reason"] == (
        "DELETE write.ask.example:443: write.ask.example is in allowed_domains, which permits "
        "only GET and HEAD; a person may allow it (approvals)"
    )
    assert question["grant"]["key"] == "unrestricted_domains"
    answer(box, question, "deny")
    assert status_and_body(request.output())[0] == 403


def test_a_read_that_streams_a_body_is_held_on_the_body_check_too(box):
    """HTTP/2 without a length: Envoy reads the body, then its composite filter's check asks the
    agent, which holds it longer than that check's own timeout."""
    request = Background(
        box, "echo data | " + curl("https://body.ask.example/read", "--http2", "-X GET", "-T -")
    )
    question = asked(box, about("body.ask.example"))
    assert question["grant"]["key"] == "unrestricted_domains"  # it sends something
    time.sleep(2)  # past the agent check's own second
    answer(box, question, "once")
    assert status_and_body(request.output())[0] == 200
    [decision] = box.decisions(lambda d: d["path"] == "/read")
    assert (decision["judge"], decision["rule"]) == ("agent", "approved")


def test_allowed_always_from_the_command_line_after_the_diff(box, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("# mine\nunrestricted_domains: []\n")
    cli = [sys.executable, "-m", "intercept_proxy", "approvals"]
    cli += ["--socket", str(box.pod.control_socket), "allow"]
    for typed, method, key in (("n\n", "GET", "allowed"), ("y\n", "PUT", "unrestricted")):
        request = Background(box, curl("https://always.ask.example/a", f"-X {method}"))
        question = asked(box, about("always.ask.example"))
        done = subprocess.run(
            [*cli, question["id"], "--for", "always", "--policy", str(policy)],
            input=typed,
            capture_output=True,
            text=True,
            check=False,
        )
        assert f"+{key}_domains:" in done.stdout and "always.ask.example" in done.stdout
        if typed == "n\n":  # declined: nothing written, nothing answered
            assert done.returncode == 1, done.stderr
            assert policy.read_text() == "# mine\nunrestricted_domains: []\n"
            assert question["id"] in [q["id"] for q in questions(box)]
            answer(box, question, "deny")
            assert status_and_body(request.output())[0] == 403
        else:
            assert done.returncode == 0, done.stderr
            assert policy.read_text() == "# mine\nunrestricted_domains: [always.ask.example]\n"
            assert status_and_body(request.output())[0] == 200


def test_a_flood_of_names_is_bounded(box):
    names = [f"https://n{i}.flood.example/" for i in range(MAX_QUESTIONS + 8)]
    script = f"curl -sS --parallel --parallel-max 64 -w '%{{http_code}} ' {' '.join(names)}"
    request = Background(box, script)
    deadline = time.monotonic() + 15
    while len(questions(box)) < MAX_QUESTIONS and time.monotonic() < deadline:
        time.sleep(0.1)
    flood = [q for q in questions(box) if ".flood.example:" in q["request"]]
    assert len(flood) == MAX_QUESTIONS
    refused = box.decisions(lambda d: "refused at once" in (d["reason"] or ""), count=8)
    assert {d["rule"] for d in refused} == {"approval_required"}
    for question in flood:
        answer(box, question, "deny")
    assert request.output().count("403 ") == MAX_QUESTIONS + 8
    assert questions(box) == []


def test_intercept_approvals_in_the_agents_container(box):
    """`kubectl exec -c intercept-agent -- intercept approvals ...`, locally."""
    request = Background(box, curl("https://cli.ask.example/cli"))
    question = asked(box, about("cli.ask.example"))
    listed = box.pod.exec(AGENT, ["intercept", "approvals", "list"])
    assert listed.returncode == 0, listed.stderr
    assert f"{question['id']}  GET cli.ask.example:443/cli" in listed.stdout.decode()
    allowed = box.pod.exec(AGENT, ["intercept", "approvals", "allow", question["id"]])
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.decode() == "allowed (once): GET cli.ask.example:443/cli\n"
    assert status_and_body(request.output())[0] == 200


def test_intercept_approvals_on_this_machine_finds_the_sandbox(box):
    request = Background(box, curl("https://cli.ask.example/host"))
    question = asked(box, about("cli.ask.example"))
    intercept = [sys.executable, "-m", "intercept_proxy", "approvals"]
    listed = subprocess.run([*intercept, "list"], capture_output=True, text=True, check=False)
    assert question["id"] in listed.stdout, listed.stderr
    missing = subprocess.run(
        [*intercept, "deny", "0000"], capture_output=True, text=True, check=False
    )
    assert missing.returncode == 1
    assert "no question '0000' is pending (answered or expired)" in missing.stderr
    denied = subprocess.run(
        [*intercept, "deny", question["id"]], capture_output=True, text=True, check=False
    )
    assert denied.returncode == 0, denied.stderr
    assert status_and_body(request.output())[0] == 403


def test_the_workload_cannot_reach_the_control_socket(box):
    """Not in its filesystem, not through the agent's /proc root, not on this machine's path
    (its /tmp is its own)."""
    host_path = box.pod.control_socket
    probe = f"""
import glob, socket
paths = ["/var/run/intercept/control/agent.sock", "{host_path}"]
paths += glob.glob("/proc/*/root/var/run/intercept/control/agent.sock")
for path in paths:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        print("CONNECTED", path)
    except OSError as e:
        print(type(e).__name__, path)
"""
    out = box.exec(["python3", "-c", probe]).stdout.decode()
    assert "CONNECTED" not in out and "FileNotFoundError /var/run" in out, out


def test_the_socket_is_for_root_and_the_agent_alone(box):
    path = box.pod.control_socket
    assert path.stat().st_mode & 0o777 == 0o600
    agent = next(c for c in box.pod.spec["initContainers"] if c["name"] == AGENT)
    assert path.stat().st_uid == agent["securityContext"]["runAsUser"]
