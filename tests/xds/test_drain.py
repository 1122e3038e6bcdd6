"""`intercept envoy drain`, the gateway agent's preStop hook, where no Envoy is needed: a hook
run alone (the agent restarting, the pod not stopping) drains nothing and marks nothing; an
Envoy that has gone counts as drained. (A real Envoy drained mid-stream: tests/cluster/
test_gateway_ca.py.)"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from intercept_proxy.xds.cli import WHEN_WAIT_S


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drain(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    argv = [sys.executable, "-m", "intercept_proxy", "envoy", "drain", "--grace", "30"]
    argv += ["--admin-port", str(closed_port()), "--done", str(tmp_path / "drained"), *args]
    start = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    return done, time.monotonic() - start


def test_a_hook_run_alone_drains_nothing(tmp_path):
    done, took = drain(tmp_path, "--when", str(tmp_path / "stopping"))
    assert done.returncode == 0, done.stderr
    assert WHEN_WAIT_S <= took < WHEN_WAIT_S + 5
    assert not (tmp_path / "drained").exists()


def test_an_envoy_that_has_gone_is_drained(tmp_path):
    (tmp_path / "stopping").touch()
    done, _ = drain(tmp_path, "--when", str(tmp_path / "stopping"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "drained").read_text() == "drained\n"
