"""The agent's control socket over a real Unix socket, with the client the command line uses."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from intercept_proxy.agent import control
from intercept_proxy.authz.approvals import Approvals
from intercept_proxy.identities import AGENT_UID
from intercept_proxy.policy.approvals import Grant
from intercept_proxy.policy.engine import Decision
from intercept_proxy.runtime import pod, state


class Agent:
    """The broker and its control socket, on an event loop of their own."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.granted: list[Grant] = []
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.approvals = self.call(self._start())

    async def _start(self) -> Approvals:
        approvals = Approvals(self.granted.append)
        self.server = await control.serve_control(self.path, approvals)
        return approvals

    def call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    def hold(self, host: str) -> asyncio.Future[Decision]:
        grant = Grant("allowed_domains", host)
        decision = Decision(False, "approval_required", f"GET {host}:443: no", grant=grant)
        decide = self.approvals.decide(decision, f"GET {host}:443", "/", 0, 30, {})
        return asyncio.run_coroutine_threadsafe(decide, self.loop)

    def close(self) -> None:
        self.call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)

    async def _stop(self) -> None:
        self.server.close()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)


@pytest.fixture
def agent() -> Iterator[Agent]:
    # Not pytest's tmp_path: its parents are root's alone, and another user must reach this.
    directory = Path(tempfile.mkdtemp(prefix="intercept-control-", dir="/tmp"))
    directory.chmod(0o755)
    running = Agent(directory / "agent.sock")
    yield running
    running.close()
    shutil.rmtree(directory)


def pending(agent: Agent) -> list[dict]:
    return list(control.request(agent.path, {"op": "list"})["questions"])


def wait_for_question(agent: Agent) -> dict:
    for _ in range(200):
        if questions := pending(agent):
            return questions[0]
        threading.Event().wait(0.02)
    raise AssertionError("no question")


def test_list_and_answer(agent):
    assert pending(agent) == []
    request = agent.hold("a.test")
    question = wait_for_question(agent)
    reply = control.request(agent.path, {"op": "answer", "id": question["id"], "answer": "run"})
    assert reply["question"]["id"] == question["id"]
    assert request.result(5).allow
    assert agent.granted == [Grant("allowed_domains", "a.test")]


@pytest.mark.parametrize(
    "message, error",
    [
        ({"op": "answer", "id": "x", "answer": "once"}, "no question 'x' is pending"),
        ({"op": "drop"}, "unknown op 'drop': expected list, answer or watch"),
    ],
)
def test_errors_are_replies(agent, message, error):
    with pytest.raises(control.ControlError, match=error):
        control.request(agent.path, message)


def test_a_line_that_is_no_request(agent):
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(agent.path))
        sock.sendall(b"[1, 2]\n")
        assert json.loads(sock.makefile().readline()) == {
            "error": "expected one JSON object on a line"
        }
    with socket.socket(socket.AF_UNIX) as sock:  # longer than a line may be: closed
        sock.connect(str(agent.path))
        sock.sendall(b"x" * (control.MAX_LINE * 2) + b"\n")
        assert sock.recv(100) == b""


def test_watch_sees_what_is_asked_and_closed(agent):
    events = control.watch(agent.path)
    assert next(events) == {"questions": []}
    request = agent.hold("w.test")
    asked = next(events)
    assert asked["event"] == "asked" and asked["question"]["request"] == "GET w.test:443/"
    control.request(agent.path, {"op": "answer", "id": asked["question"]["id"], "answer": "deny"})
    assert next(events)["event"] == "closed"
    assert request.result(5).rule == "approval_denied"
    events.close()


def test_an_agent_that_is_not_there(tmp_path):
    with pytest.raises(control.ControlError, match="cannot reach the agent at"):
        control.request(tmp_path / "none.sock", {"op": "list"})


PROBE = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
try:
    s.sendall(b'{"op": "list"}\\n')
    print(repr(s.recv(100)))
except (ConnectionResetError, BrokenPipeError):  # closed before or after the write
    print("dropped")
"""
AS_OTHER = ["setpriv", "--reuid=23456", "--regid=23456", "--clear-groups", "/usr/bin/python3"]


def test_only_its_user_and_root_may_connect(agent):
    """Mode 600 from the start; opened to all, the agent still refuses other users (it checks
    each peer's credentials)."""
    assert agent.path.stat().st_mode & 0o777 == 0o600
    refused = subprocess.run(
        [*AS_OTHER, "-c", PROBE, str(agent.path)], capture_output=True, text=True, check=False
    )
    assert "PermissionError" in refused.stderr
    agent.path.chmod(0o666)
    dropped = subprocess.run(
        [*AS_OTHER, "-c", PROBE, str(agent.path)], capture_output=True, text=True, check=False
    )
    assert dropped.stdout.strip() in ("b''", "dropped"), dropped.stderr
    assert pending(agent) == []  # root still may


def test_this_machines_sandboxes_are_found_only_under_roots_own_directories(monkeypatch):
    """Anyone may write into /tmp: a socket planted there must not be asked, nor answered; a
    gateway's agents are found as the gateway recorded them, made as it makes them."""
    root = Path(tempfile.mkdtemp(prefix="icp-", dir="/tmp"))
    monkeypatch.setattr(pod, "POD_ROOT", root)
    monkeypatch.setattr(state, "STATE_DIR", root / "state")
    bound = []

    def gateway(name: str, top_owner: int = 0, control_owner: int = AGENT_UID) -> Path:
        control_dir = root / name / "control"
        control_dir.mkdir(parents=True, mode=0o700)
        os.chown(root / name, top_owner, top_owner)
        os.chown(control_dir, control_owner, control_owner)
        path = control_dir / "agent.sock"
        listening = socket.socket(socket.AF_UNIX)
        listening.bind(str(path))
        bound.append(listening)
        state.register(name, f"{name}-gw", path)
        return path

    def sandbox(name: str, mode: int, owner: int = 0) -> Path:
        directory = root / name / "volumes" / pod.CONTROL_VOLUME
        directory.mkdir(parents=True)
        path = directory / Path(control.CONTROL_SOCKET).name
        listening = socket.socket(socket.AF_UNIX)
        listening.bind(str(path))
        bound.append(listening)
        os.chown(root / name, owner, owner)
        (root / name).chmod(mode)
        return path

    try:
        good = sandbox("intercept-pod-good", 0o700)
        sandbox("intercept-pod-open", 0o755)
        sandbox("intercept-pod-theirs", 0o700, owner=23456)
        (root / "intercept-pod-link").symlink_to(root / "intercept-pod-good")
        assert pod.control_sockets() == [good]
        recorded = gateway("gw-good")
        gateway("gw-theirs", top_owner=23456)
        gateway("gw-control-theirs", control_owner=23456)
        state.register("gw-missing", "gw-missing-gw", root / "gw-missing" / "control" / "a.sock")
        gone = gateway("gw-gone")
        record = root / "state" / "gw-gone.json"
        record.write_text(json.dumps({**json.loads(record.read_text()), "pid": 2**22 + 1}))
        assert pod.control_sockets() == sorted([good, recorded])
        assert gone not in pod.control_sockets()
    finally:
        for listening in bound:
            listening.close()
        shutil.rmtree(root)
